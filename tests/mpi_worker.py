"""Run by test_mpi.py under mpiexec: data-parallel training of a digits model on a fixed subset,
every rank's weights saved afterwards so the test can compare them with each other and with a
single-process twin.  Every rank starts from its own initial weights (seed INIT_SEED + rank), so
the results match the twin (which starts from INIT_SEED's) only if rank 0's are broadcast.

    mpiexec -n R python mpi_worker.py MODEL N_IMAGES BATCH EPOCHS COMPRESSION FUSION OUTDIR
"""
import sys

import numpy as np

from dlcpu import distributed, nn, train

INIT_SEED = 100


def subset(n):
    d = train.load_digits_split(0)
    return train.DigitsData(d.x_train[:n], d.y_train[:n], d.x_test, d.y_test)


def initial_model(model, seed=INIT_SEED):
    return nn.digits_resnet(16, seed=seed) if model == "cnn" else nn.digits_rnn(seed=seed)


def main():
    model, n, batch, epochs, compression, fusion, outdir = sys.argv[1:8]
    options = distributed.DataParallelOptions(compression=compression, fusion_threshold=int(fusion),
                                              check_replicas=True, timeout=60)
    rank = distributed.launcher_rank() or 0
    result = train.train_digits(epochs=int(epochs), batch=int(batch), data=subset(int(n)), model=model, seed=0,
                                init_from=initial_model(model, INIT_SEED + rank), dist=options)
    weights = {f"p{i}": p.data for i, p in enumerate(result.model.parameters())}
    np.savez(f"{outdir}/rank{result.rank}.npz", ranks=result.ranks, loss=result.epochs[-1].loss,
             test_accuracy=result.test_accuracy, **weights)


if __name__ == "__main__":
    with distributed.abort_on_error():
        main()
