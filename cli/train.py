"""`dlcpu train {digits,digits-rnn}`: train dlcpu.nn models on scikit-learn's digits
(dlcpu.train), with a progress bar on stderr and a summary table or JSON on stdout.

--out is checked before any training starts (its directory exists and is writable, it is not a
directory), so a bad path fails in a second, not after an epoch."""
from typing import Annotated

import typer
from rich.progress import TextColumn

from .. import cpu
from ._output import JsonFlag, check_output_path, command, emit_json, err, group, out, progress

app = group("Train models on dlcpu kernels.")

#: --seed range: scikit-learn's and numpy's legacy seeds are 32-bit unsigned
MAX_SEED = 2**32 - 1

def _train(model, epochs, batch, lr, threads, seed, out_path, as_json):
    """Shared body of the `dlcpu train` commands (model 'cnn' or 'rnn')."""
    from threadpoolctl import threadpool_limits

    from .. import train as training

    check_output_path(out_path)
    n_threads = threads or cpu.resolve_threads()
    data = training.load_digits_split(seed)
    with progress(TextColumn("{task.fields[status]}")) as bar:
        task = bar.add_task("epoch 1", total=epochs * -(-len(data.x_train) // batch), status="")
        last = {"acc": ""}

        def on_step(epoch, step, steps, loss):
            bar.update(task, advance=1, description=f"epoch {epoch}/{epochs}",
                       status=f"loss {loss:.4f} {last['acc']}")

        def on_epoch(stats):
            last["acc"] = f"test acc {100 * stats.test_accuracy:.2f}%"
            if not as_json:
                err.print(f"epoch {stats.epoch:3d}  loss {stats.loss:.4f}  train acc {100 * stats.train_accuracy:6.2f}%  "
                          f"test acc {100 * stats.test_accuracy:6.2f}%  {stats.images_per_second:8.0f} img/s", highlight=False)

        with threadpool_limits(limits=n_threads, user_api="openmp"):
            result = training.train_digits(epochs, batch, lr, seed=seed, out=out_path, data=data,
                                           on_step=on_step, on_epoch=on_epoch, model=model)
    summary = {"dataset": "sklearn digits (1797 8x8 images)",
               "model": "digits_resnet (CNN)" if model == "cnn" else "digits_rnn (LSTM over image rows)",
               "train_images": len(data.x_train),
               "test_images": len(data.x_test), "threads": n_threads, "epochs": epochs, "batch": batch,
               "lr": lr, "seed": seed, "test_accuracy": result.test_accuracy,
               "seconds": result.total_seconds, "saved_to": out_path,
               "history": [s.__dict__ for s in result.epochs]}
    if as_json:
        emit_json(summary)
        return
    saved = f", model saved to {out_path}" if out_path else ""
    out.print(f"test accuracy {100 * result.test_accuracy:.2f}% after {epochs} epochs in "
              f"{result.total_seconds:.1f} s on {n_threads} thread(s){saved}", highlight=False)


def _register(name, model, epochs_default, lr_default, doc):
    """Declare `dlcpu train <name>`: the same options for every model, its own defaults."""
    def train_command(
        epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the 1437 training images.")] = epochs_default,
        batch: Annotated[int, typer.Option("--batch", min=1, help="Images per training step.")] = 64,
        lr: Annotated[float, typer.Option("--lr", min=1e-12,
                                          help="SGD learning rate (momentum 0.9, weight decay 5e-4).")] = lr_default,
        threads: Annotated[int | None, typer.Option("--threads", min=1, max=cpu.MAX_THREADS, help="Kernel threads (default: all cores).")] = None,
        seed: Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED,
                                           help="Seeds the split, the initialization and the shuffling.")] = 0,
        out_path: Annotated[str | None, typer.Option(
            "--out", metavar="<file>",
            help="Save the model here (.npz) after every epoch; the directory must exist and be writable.")] = None,
        as_json: JsonFlag = False,
    ):
        _train(model, epochs, batch, lr, threads, seed, out_path, as_json)

    train_command.__doc__ = doc
    train_command.__name__ = f"train_{name.replace('-', '_')}"
    command(app, name)(train_command)


_register("digits", "cnn", 15, 0.05,
          "Train a small ResNet-style CNN on scikit-learn's handwritten digits (8x8, no download).")
_register("digits-rnn", "rnn", 30, 0.1,
          "Train an LSTM that reads each digit image row by row (T=8 steps of 8 pixels).")
