"""`dlcpu train {digits,digits-rnn}`: train dlcpu.nn models on scikit-learn's digits
(dlcpu.train), with a progress bar on stderr and a summary table or JSON on stdout.

--out, --from and --prune are checked before any training starts (--out's directory exists and
is writable, --from is a dlcpu model of the command's kind, --prune is in [0, 1)), so a bad value
fails in a second, not after an epoch.  With --from or --prune, a per-layer table of the trained
model's weight sparsity follows the summary; --json always carries it.

--loss picks the cross-entropy (softmax, Taylor, soft-margin or SM-Taylor softmax, see
dlcpu.nn.losses) and --loss-gradient its gradient; digits-rnn also takes --cell (LSTM or GRU) and
--activation-impl (how the cell evaluates sigmoid/tanh).  The CNN has neither, so `train digits`
does not offer them.  All are checked before any work, like the options above."""
import inspect
from dataclasses import asdict
from typing import Annotated

import typer
from rich.progress import TextColumn
from rich.table import Table

from .. import cpu, nn
from ..nn.losses import GRADIENTS
from ..nn.models import RNN_CELLS
from ..nn.prune import check_sparsity
from ..nn.recurrent import ACTIVATION_IMPLS
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


def _check_choice(option, value, choices):
    if value is not None and value not in choices:
        raise bad_option(option, f"must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")
    return value


def _check_loss(kind):
    """--loss: the canonical kind string (nn.parse_loss_kind), else a bad option value."""
    try:
        return str(nn.parse_loss_kind(kind))
    except (TypeError, ValueError) as exc:
        raise bad_option("--loss", str(exc)) from None


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
           prune_scope="layer", loss="softmax", loss_gradient="exact", cell=None, activation_impl=None):
    """Shared body of the `dlcpu train` commands (model 'cnn' or 'rnn')."""
    from threadpoolctl import threadpool_limits

    from .. import train as training

    check_output_path(out_path)
    _check_prune(sparsity)
    if prune_scope not in ("layer", "global"):
        raise bad_option("--prune-scope", f"must be 'layer' or 'global', got {prune_scope!r}")
    loss = _check_loss(loss)
    _check_choice("--loss-gradient", loss_gradient, GRADIENTS)
    _check_choice("--cell", cell, tuple(RNN_CELLS))
    _check_choice("--activation-impl", activation_impl, ACTIVATION_IMPLS)
    initial = _load_from(from_path, model)
    if initial is not None and model == "rnn":
        try:
            training.check_cell(initial, cell, from_path)
        except ValueError as exc:
            raise bad_option("--cell", str(exc)) from None
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
                                           prune=sparsity, init_from=initial, prune_scope=prune_scope, loss=loss,
                                           loss_gradient=loss_gradient, cell=cell, activation_impl=activation_impl)
    summary = {"dataset": "sklearn digits (1797 8x8 images)",
               "model": "digits_resnet (CNN)" if model == "cnn" else
                        f"digits_rnn ({(result.cell or 'lstm').upper()} over image rows)",
               "loss": result.loss, "loss_gradient": result.loss_gradient, "cell": result.cell,
               "activation_impl": result.activation_impl,
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
    if result.loss != "softmax":
        pruned += f", {result.loss} loss ({result.loss_gradient} gradient)"
    if result.cell is not None and (result.cell, result.activation_impl) != ("lstm", "exact"):
        pruned += f", {result.cell.upper()} cell with {result.activation_impl} activations"
    out.print(f"test accuracy {100 * result.test_accuracy:.2f}% after {epochs} epochs of {start}{pruned} in "
              f"{result.total_seconds:.1f} s on {n_threads} thread(s){saved}", highlight=False)
    if sparsity is not None or from_path:
        out.print(_sparsity_table(result.sparsity))


#: the options only the RNN command has (the CNN has no recurrent cell and no tanh)
RNN_ONLY = ("cell", "activation_impl")


def _register(name, model, epochs_default, lr_default, doc):
    """Declare `dlcpu train <name>`: the same options for every model, its own defaults; the
    RNN_ONLY options only for the RNN (they are cut from the CNN command's signature, which is
    what typer reads, so its --help does not offer them and they keep their None defaults)."""
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
        loss: Annotated[str, typer.Option(
            "--loss", metavar="<kind>",
            help="Cross-entropy of: softmax; taylor:N (Taylor softmax, N even in 2..10); sm-softmax:M (soft-margin "
                 "softmax, margin M >= 0 on the true class); sm-taylor:N:M (both).")] = "softmax",
        loss_gradient: Annotated[str, typer.Option(
            "--loss-gradient", metavar="<kind>",
            help="exact: the loss's derivative; softmax: p - onehot (the Taylor series treated as exp). "
                 "The same for the exp kinds.")] = "exact",
        cell: Annotated[str | None, typer.Option(
            "--cell", metavar="<cell>", help="lstm or gru (default: lstm, or the --from model's).")] = None,
        activation_impl: Annotated[str | None, typer.Option(
            "--activation-impl", metavar="<impl>",
            help="How the cell computes sigmoid/tanh: exact, fast (rational approximations) or ktanh "
                 "(default: exact, or the --from model's).")] = None,
        as_json: JsonFlag = False,
    ):
        _train(model, epochs, batch, lr, threads, seed, out_path, as_json, sparsity, from_path, prune_scope,
               loss, loss_gradient, cell, activation_impl)

    if model != "rnn":
        sig = inspect.signature(train_command)
        train_command.__signature__ = sig.replace(
            parameters=[p for p in sig.parameters.values() if p.name not in RNN_ONLY])
    train_command.__doc__ = doc
    train_command.__name__ = f"train_{name.replace('-', '_')}"
    command(app, name)(train_command)


_register("digits", "cnn", 15, 0.05,
          "Train a small ResNet-style CNN on scikit-learn's handwritten digits (8x8, no download).")
_register("digits-rnn", "rnn", 30, 0.1,
          "Train an LSTM (or a GRU) that reads each digit image row by row (T=8 steps of 8 pixels).")
