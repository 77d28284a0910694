"""`dlcpu train {digits,digits-rnn}`: train dlcpu.nn models on scikit-learn's digits
(dlcpu.train), with a progress bar on stderr and a summary table or JSON on stdout.

--out, --from and --prune are checked before any training starts (--out's directory exists and
is writable, --from is a dlcpu model of the command's kind, --prune is in [0, 1)), so a bad value
fails in a second, not after an epoch.  With --from or --prune, a per-layer table of the trained
model's weight sparsity follows the summary; --json always carries it."""
from dataclasses import asdict
from typing import Annotated

import typer
from rich.progress import TextColumn
from rich.table import Table

from .. import cpu, nn
from ..nn.prune import check_sparsity
from ._output import JsonFlag, bad_option, check_output_path, command, emit_json, err, group, out, progress

app = group("Train models on dlcpu kernels.")

#: --seed range: scikit-learn's and numpy's legacy seeds are 32-bit unsigned
MAX_SEED = 2**32 - 1

def _check_prune(sparsity):
    if sparsity is not None:
        try:
            check_sparsity(sparsity, "train")
        except (TypeError, ValueError) as exc:
            raise bad_option("--prune", str(exc).removeprefix("train: ")) from None
    return sparsity


def _load_from(path, model):
    """--from: the model to fine-tune, loaded and checked up front (a bad option value)."""
    if path is None:
        return None
    from .. import train as training

    try:
        return training.load_pretrained(path, model)
    except (TypeError, ValueError) as exc:
        raise bad_option("--from", str(exc)) from None


def _sparsity_table(report):
    t = Table(title="weight sparsity of the trained model (logical weights, channel padding not counted)")
    for col, justify in (("weight", "left"), ("layer", "left"), ("shape", "left"), ("weights", "right"),
                         ("zeros", "right"), ("sparsity", "right"), ("masked", "left")):
        t.add_column(col, justify=justify)
    for i, r in enumerate(report):
        t.add_row(r.name, r.layer, "x".join(map(str, r.shape)), str(r.size), str(r.zeros), f"{100 * r.sparsity:.2f}%",
                  "yes" if r.masked else "no", end_section=i == len(report) - 1)
    size, zeros = sum(r.size for r in report), sum(r.zeros for r in report)
    t.add_row("total", "", "", str(size), str(zeros), f"{100 * nn.total_sparsity(report):.2f}%", "")
    return t


def _train(model, epochs, batch, lr, threads, seed, out_path, as_json, sparsity=None, from_path=None,
           prune_scope="layer"):
    """Shared body of the `dlcpu train` commands (model 'cnn' or 'rnn')."""
    from threadpoolctl import threadpool_limits

    from .. import train as training

    check_output_path(out_path)
    _check_prune(sparsity)
    if prune_scope not in ("layer", "global"):
        raise bad_option("--prune-scope", f"must be 'layer' or 'global', got {prune_scope!r}")
    initial = _load_from(from_path, model)
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
                                           on_step=on_step, on_epoch=on_epoch, model=model,
                                           prune=sparsity, init_from=initial, prune_scope=prune_scope)
    summary = {"dataset": "sklearn digits (1797 8x8 images)",
               "model": "digits_resnet (CNN)" if model == "cnn" else "digits_rnn (LSTM over image rows)",
               "train_images": len(data.x_train),
               "test_images": len(data.x_test), "threads": n_threads, "epochs": epochs, "batch": batch,
               "lr": lr, "seed": seed, "test_accuracy": result.test_accuracy,
               "seconds": result.total_seconds, "saved_to": out_path, "from": from_path, "prune": sparsity,
               "prune_scope": prune_scope if sparsity is not None else None,
               "history": [s.__dict__ for s in result.epochs],
               "sparsity": {"total": nn.total_sparsity(result.sparsity), "layers": [asdict(r) for r in result.sparsity]}}
    if as_json:
        emit_json(summary)
        return
    saved = f", model saved to {out_path}" if out_path else ""
    start = f"fine-tuning {from_path}" if from_path else "training"
    where = "of each weight tensor" if prune_scope == "layer" else "of all weights (one threshold)"
    pruned = f", {100 * sparsity:g}% {where} pruned" if sparsity is not None else ""
    out.print(f"test accuracy {100 * result.test_accuracy:.2f}% after {epochs} epochs of {start}{pruned} in "
              f"{result.total_seconds:.1f} s on {n_threads} thread(s){saved}", highlight=False)
    if sparsity is not None or from_path:
        out.print(_sparsity_table(result.sparsity))


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
        from_path: Annotated[str | None, typer.Option(
            "--from", metavar="<file>",
            help="Fine-tune this saved model (a --out file of the same command) instead of a fresh one.")] = None,
        sparsity: Annotated[float | None, typer.Option(
            "--prune", metavar="<fraction>",
            help="Before training, set this fraction in [0, 1) of each weight tensor's smallest weights to zero "
                 "and keep them zero while training (magnitude pruning).")] = None,
        prune_scope: Annotated[str, typer.Option(
            "--prune-scope", metavar="<scope>",
            help="layer: the same fraction in every weight tensor; global: one magnitude threshold over all.")] = "layer",
        as_json: JsonFlag = False,
    ):
        _train(model, epochs, batch, lr, threads, seed, out_path, as_json, sparsity, from_path, prune_scope)

    train_command.__doc__ = doc
    train_command.__name__ = f"train_{name.replace('-', '_')}"
    command(app, name)(train_command)


_register("digits", "cnn", 15, 0.05,
          "Train a small ResNet-style CNN on scikit-learn's handwritten digits (8x8, no download).")
_register("digits-rnn", "rnn", 30, 0.1,
          "Train an LSTM that reads each digit image row by row (T=8 steps of 8 pixels).")
