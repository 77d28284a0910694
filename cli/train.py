"""`dlcpu train {digits,digits-rnn}`: train dlcpu.nn models on scikit-learn's digits
(dlcpu.train), with a progress bar on stderr and a summary table or JSON on stdout.

--out, --from and --prune are checked before any training starts (--out's directory exists and
is writable, --from is a dlcpu model of the command's kind, --prune is in [0, 1)), so a bad value
fails in a second, not after an epoch.  With --from or --prune, a per-layer table of the trained
model's weight sparsity follows the summary; --json always carries it.

--loss picks the cross-entropy (softmax, Taylor, soft-margin or SM-Taylor softmax, see
dlcpu.nn.losses) and --loss-gradient its gradient; digits-rnn also takes --cell (LSTM or GRU) and
--activation-impl (how the cell evaluates sigmoid/tanh).  The CNN has neither, so `train digits`
does not offer them.  All are checked before any work, like the options above.

Sweeps: --loss, --cell and --activation-impl take comma lists, and --seeds a list of seeds (instead
of --seed); with more than one run the command trains every combination (cell x activation_impl x
loss x seed, dlcpu.train.sweep_digits) in turn, prints each finished run as a line on stderr and
then one table row per configuration: the test accuracy's mean ± sample std (ddof=1) over the
seeds, min, max, runs and mean training time.  A value listed twice is refused; --out is refused
(one file, many models); --from is allowed (every run fine-tunes a fresh copy of it).  Ctrl-C
prints the table of the runs finished so far and exits 130.  One run (single values) prints and
writes exactly what it always did."""
import inspect
import math
import os
import traceback
from dataclasses import asdict
from typing import Annotated

import typer
from rich.progress import TextColumn
from rich.table import Table

from .. import _config, cpu, nn
from ..approx import IMPLS as ACTIVATION_IMPLS
from ..nn.losses import GRADIENTS
from ..nn.models import RNN_CELLS
from ..nn.prune import check_sparsity
from ._dist import CommCore, Compress, DistArgs, FusionThreshold, Overlap, dist_options
from ._output import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    JsonFlag,
    bad_option,
    check_output_path,
    command,
    emit_json,
    err,
    group,
    out,
    print_error,
    progress,
)

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
        from ..distributed import launcher_rank

        # under a launcher a file can be missing on one node only: name the rank (and the error
        # of a rank above 0 is then not taken for a duplicate of rank 0's)
        where = f" (on rank {launcher_rank()})" if launcher_rank() is not None else ""
        raise bad_option("--from", f"{exc}{where}") from None


def _check_rank0_paths(comm, out_path, timeline):
    """--out and --timeline, which rank 0 alone writes: its checks (bad option values there),
    every rank told (distributed.Communicator.on_rank0)."""
    for option, path in (("--out", out_path), ("--timeline", timeline)):
        if path is not None:
            comm.on_rank0(lambda option=option, path=path: check_output_path(path, option), option)


def _initial_model_on_ranks(comm, from_path, model, cells):
    """_initial_model on every rank (each reads --from from its own file system); when it fails
    on some rank, every rank stops (exit 2): if all failed alike rank 0 says why, else each
    failing rank does, naming itself."""
    try:
        return_value, message = _initial_model(from_path, model, cells), None
    except typer.BadParameter as exc:
        return_value, message = None, " ".join(exc.format_message().split())
    failed = comm.allgather([message is not None], "the check of --from")[:, 0].astype(bool)
    if not failed.any():
        return return_value
    if message is not None and (comm.rank == 0 or not failed.all()):
        print_error(message)
    raise typer.Exit(EXIT_USAGE)


def _initial_model(from_path, model, cells):
    """--from loaded and checked against --cell (bad option values), or None without --from."""
    from .. import train as training

    initial = _load_from(from_path, model)
    if initial is not None and model == "rnn":
        for c in cells:
            try:
                training.check_cell(initial, c, from_path)
            except ValueError as exc:
                raise bad_option("--cell", str(exc)) from None
    return initial


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


def _items(text):
    """A comma list option's items, blanks dropped; a text with no item at all stays one item, so
    that it gets the single value's message ('' is an unknown loss kind)."""
    items = [v.strip() for v in text.split(",") if v.strip()]
    return items or [text]


def _distinct(option, values):
    """Each value of a comma list once: a repeated one (after canonicalization) is a bad value,
    not a silent second set of runs that would weigh its configuration twice."""
    for i, v in enumerate(values):
        if v in values[:i]:
            raise bad_option(option, f"lists {v!r} twice; give each value once")
    return values


def _check_losses(text):
    """--loss: a comma list of kinds, each canonical (nn.parse_loss_kind) and listed once."""
    return _distinct("--loss", [_check_loss(kind) for kind in _items(text)])


def _check_choices(option, text, choices):
    """--cell / --activation-impl: None (the default) or a comma list of `choices`, each once."""
    if text is None:
        return [None]
    return _distinct(option, [_check_choice(option, v, choices) for v in _items(text)])


def _check_seeds(seed, seeds):
    """--seed N or --seeds a,b,c (not both) -> the list of seeds; neither: [0]."""
    if seeds is None:
        return [0 if seed is None else seed]
    if seed is not None:
        raise bad_option("--seeds", "cannot be combined with --seed; list every seed in --seeds")
    try:
        values = [int(v) for v in _items(seeds)]
    except ValueError:
        raise bad_option("--seeds", f"must be a comma list of integers, e.g. 0,1,2, got {seeds!r}") from None
    if any(not 0 <= v <= MAX_SEED for v in values):
        raise bad_option("--seeds", f"seeds must be between 0 and {MAX_SEED}, got {seeds!r}")
    return _distinct("--seeds", values)


def _join_ranks(options, batch, threads):
    """Start MPI for --dist: (communicator, compute threads per rank).  --batch is the global
    batch: it must divide by the rank count.  Warns (rank 0) when the node's ranks ask for more
    threads than it has cores."""
    from .. import distributed

    try:
        comm = distributed.world(options.timeout, options.comm_core)
    except distributed.DistributedError as exc:
        raise bad_option("--dist", str(exc)) from None
    if batch % comm.size:
        raise bad_option("--batch", f"{batch} does not divide by the {comm.size} ranks: --batch is the global batch, "
                                    f"{comm.size} equal slices per step; use a multiple of {comm.size} (an epoch's "
                                    "last, shorter batch is split as evenly as possible)")
    per_rank, warning = distributed.rank_threads(threads, comm, options.comm_core)
    if warning and comm.rank == 0:
        err.print(f"warning: {warning}", highlight=False, soft_wrap=True)
    return comm, per_rank


def _train(model, epochs, batch, lr, threads, seed, out_path, as_json, sparsity=None, from_path=None,
           prune_scope="layer", loss="softmax", loss_gradient="exact", cell=None, activation_impl=None, seeds=None,
           dist_args=None, precision="fp32"):
    """Shared body of the `dlcpu train` commands (model 'cnn' or 'rnn'): one run, or with more
    than one value of --loss/--cell/--activation-impl/--seeds a sweep over their product."""
    from .. import distributed
    from .. import train as training

    options = dist_options(dist_args or DistArgs())
    launched = distributed.launcher_size()
    if options is None and launched and launched > 1 and not distributed.launcher_rank():
        err.print(f"warning: started by an MPI launcher with {launched} ranks but without --dist: every rank trains "
                  "its own model; add --dist to train one model data-parallel", highlight=False, soft_wrap=True)
    if not math.isfinite(lr):
        raise bad_option("--lr", f"must be a finite number > 0, got {lr}")
    if options is not None and options.timeline is not None:
        for option, path in (("--out", out_path), ("--from", from_path)):
            if path is not None and os.path.abspath(path) == os.path.abspath(options.timeline):
                raise bad_option("--timeline", f"names the same file as {option} ({path}): the trace would overwrite "
                                               "the model; give the timeline a file of its own")
    if options is None:
        check_output_path(out_path)     # data-parallel: rank 0's check, once MPI runs (_join_ranks)
    _check_prune(sparsity)
    if prune_scope not in ("layer", "global"):
        raise bad_option("--prune-scope", f"must be 'layer' or 'global', got {prune_scope!r}")
    losses = _check_losses(loss)
    _check_choice("--loss-gradient", loss_gradient, GRADIENTS)
    try:
        precision = training.check_training_precision(model, precision)
    except ValueError as exc:
        raise bad_option("--precision", str(exc).removeprefix("train: ")) from None
    cells = _check_choices("--cell", cell, tuple(RNN_CELLS))
    impls = _check_choices("--activation-impl", activation_impl, ACTIVATION_IMPLS)
    seed_list = _check_seeds(seed, seeds)
    runs = len(losses) * len(cells) * len(impls) * len(seed_list)
    if runs > 1 and out_path is not None:
        raise bad_option("--out", f"saves one model, but this sweep trains {runs} (one per combination of "
                                  "--loss, --cell, --activation-impl and --seeds); drop --out, or train the "
                                  "configuration to keep on its own")
    if options is not None and runs > 1:
        raise bad_option("--dist", f"trains one configuration, but this sweep has {runs} runs; run them one at a time")
    if options is not None:
        # MPI starts before --from is read: a file missing on one node is then reported by that
        # rank, which ends the job (a rank that exits before MPI_Init leaves the others in it)
        comm, n_threads = _join_ranks(options, batch, threads)
        try:
            _check_rank0_paths(comm, out_path, options.timeline)
        except distributed.DistributedError:
            raise typer.Exit(EXIT_USAGE) from None      # rank 0 refused a path and says why
        initial = _initial_model_on_ranks(comm, from_path, model, cells)
        _train_one(model, epochs, batch, lr, n_threads, seed_list[0], out_path, as_json, sparsity, from_path, initial,
                   prune_scope, losses[0], loss_gradient, cells[0], impls[0], options, comm, precision=precision)
        return
    initial = _initial_model(from_path, model, cells)
    n_threads = threads or cpu.resolve_threads()
    if runs > 1:
        configs = training.sweep_configs(losses, cells, impls)
        _sweep(model, configs, seed_list, epochs=epochs, batch=batch, lr=lr, n_threads=n_threads, as_json=as_json,
               sparsity=sparsity, from_path=from_path, prune_scope=prune_scope, loss_gradient=loss_gradient,
               precision=precision)
        return
    _train_one(model, epochs, batch, lr, n_threads, seed_list[0], out_path, as_json, sparsity, from_path, initial,
               prune_scope, losses[0], loss_gradient, cells[0], impls[0], precision=precision)


def _train_one(model, epochs, batch, lr, n_threads, seed, out_path, as_json, sparsity, from_path, initial,
               prune_scope, loss, loss_gradient, cell, activation_impl, dist=None, comm=None, precision="fp32"):
    """One training run: epoch lines on stderr, a summary line (or JSON) on stdout.  Data-parallel
    (dist, comm), rank 0 alone reports; an error on one rank ends the whole job."""
    if comm is None:
        return _run_training(model, epochs, batch, lr, n_threads, seed, out_path, as_json, sparsity, from_path,
                             initial, prune_scope, loss, loss_gradient, cell, activation_impl, precision=precision)
    from .. import train as training

    try:
        _run_training(model, epochs, batch, lr, n_threads, seed, out_path, as_json, sparsity, from_path, initial,
                      prune_scope, loss, loss_gradient, cell, activation_impl, dist, comm.rank, precision=precision)
    except training.TrainingDiverged:
        # every rank saw the same global loss and stops at the same step: rank 0 says so
        if comm.rank == 0:
            raise
        raise typer.Exit(1) from None
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001  (any failure of one rank must end every rank)
        # this rank alone may have failed: say which, then end every rank (they would wait for it)
        if _config.env_debug():
            traceback.print_exc()
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc) or type(exc).__name__
        who = f"rank {comm.rank} of {comm.size}"
        print_error(what if what.startswith(who) else f"{who}: {what}")
        if comm.size > 1:
            comm.abort(EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else 1)
        raise typer.Exit(1) from None


def _run_training(model, epochs, batch, lr, n_threads, seed, out_path, as_json, sparsity, from_path, initial,
                  prune_scope, loss, loss_gradient, cell, activation_impl, dist=None, rank=0, precision="fp32"):
    """The training run itself (one process, or one rank of a data-parallel job: `rank`)."""
    from threadpoolctl import threadpool_limits

    from .. import train as training

    data = training.load_digits_split(seed)
    quiet = rank != 0           # data-parallel: only rank 0 shows progress and the result
    with progress(TextColumn("{task.fields[status]}")) as bar:
        task = bar.add_task("epoch 1", total=epochs * -(-len(data.x_train) // batch), status="")
        last = {"acc": ""}

        def on_step(epoch, step, steps, loss):
            bar.update(task, advance=1, description=f"epoch {epoch}/{epochs}",
                       status=f"loss {loss:.4f} {last['acc']}")

        def on_epoch(stats):
            last["acc"] = f"test acc {100 * stats.test_accuracy:.2f}%"
            if not as_json and not quiet:
                err.print(f"epoch {stats.epoch:3d}  loss {stats.loss:.4f}  train acc {100 * stats.train_accuracy:6.2f}%  "
                          f"test acc {100 * stats.test_accuracy:6.2f}%  {stats.images_per_second:8.0f} img/s", highlight=False)

        with threadpool_limits(limits=n_threads, user_api="openmp"):
            result = training.train_digits(epochs, batch, lr, seed=seed, out=out_path, data=data,
                                           on_step=None if quiet else on_step, on_epoch=on_epoch, model=model,
                                           prune=sparsity, init_from=initial, prune_scope=prune_scope, loss=loss,
                                           loss_gradient=loss_gradient, cell=cell, activation_impl=activation_impl,
                                           dist=dist, precision=precision)
    if quiet:
        return
    summary = {"dataset": "sklearn digits (1797 8x8 images)",
               "model": "digits_resnet (CNN)" if model == "cnn" else
                        f"digits_rnn ({(result.cell or 'lstm').upper()} over image rows)",
               "loss": result.loss, "loss_gradient": result.loss_gradient, "cell": result.cell,
               "precision": result.precision,
               "activation_impl": result.activation_impl,
               "train_images": len(data.x_train),
               "test_images": len(data.x_test), "threads": n_threads, "epochs": epochs, "batch": batch,
               "lr": lr, "seed": seed, "test_accuracy": result.test_accuracy,
               "seconds": result.total_seconds, "saved_to": out_path, "from": from_path, "prune": sparsity,
               "prune_scope": prune_scope if sparsity is not None else None,
               "ranks": result.ranks, "communication": result.communication,
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
    where = f"{n_threads} thread(s)" if dist is None else f"{result.ranks} rank(s) x {n_threads} thread(s)"
    out.print(f"test accuracy {100 * result.test_accuracy:.2f}% after {epochs} epochs of {start}{pruned} in "
              f"{result.total_seconds:.1f} s on {where}{saved}", highlight=False)
    if result.communication:
        out.print(_communication_line(result.communication), highlight=False)
    if sparsity is not None or from_path:
        out.print(_sparsity_table(result.sparsity))


def _communication_line(c):
    """One line on a data-parallel run's communication (DataParallel.comm_summary)."""
    ms = lambda v: f"{1e3 * v:.2f} ms"
    return (f"per step (median of {c['steps']}, rank 0): {ms(c['step_seconds'])}; allreduce in flight "
            f"{ms(c['comm_seconds'])} ({100 * c['comm_share']:.1f}% of the step), exposed {ms(c['exposed_seconds'])} "
            f"({100 * c['exposed_share']:.1f}% of the step, {100 * c['exposed_of_comm']:.0f}% of the allreduce time); "
            f"{c['buckets']} fusion bucket(s), compression {c['compression']}"
            f"{', communication core' if c['comm_core'] else ''}")


def _config_columns(model):
    """The configuration columns of a sweep's tables: the RNN's cell and activations, the loss."""
    return (("cell", "cell"), ("activation_impl", "activations"), ("loss", "loss")) if model == "rnn" else \
        (("loss", "loss"),)


def _run_label(model, config):
    label = f"loss {config.loss}"
    if model == "rnn":
        label = f"{(config.cell or 'lstm').upper()} {config.activation_impl or 'exact'}, {label}"
    return label


def _sweep(model, configs, seeds, *, epochs, batch, lr, n_threads, as_json, sparsity, from_path, prune_scope,
           loss_gradient, precision="fp32"):
    """A sweep: every (configuration, seed) in turn, each finished run a line on stderr; then the
    table of mean ± std per configuration (or JSON).  Ctrl-C or a failing run still reports the
    runs finished so far (exit 130, or 1 with the error's line)."""
    from threadpoolctl import threadpool_limits

    from .. import train as training

    total = len(configs) * len(seeds)
    settings = {"command": "digits" if model == "cnn" else "digits-rnn", "model": model, "epochs": epochs,
                "batch": batch, "lr": lr, "threads": n_threads, "loss_gradient": loss_gradient, "from": from_path,
                "prune": sparsity, "prune_scope": prune_scope if sparsity is not None else None, "seeds": seeds,
                "precision": precision}
    done, stopped, failure = [], None, None
    try:
        with progress(TextColumn("{task.fields[status]}")) as bar:
            task = bar.add_task(f"run 1/{total}", total=total, status="")
            current = {"index": 0, "label": ""}

            def on_start(index, total, config, seed):
                current.update(index=index, label=f"{_run_label(model, config)}, seed {seed}")
                bar.update(task, completed=index, description=f"run {index + 1}/{total}", status=current["label"])

            def on_step(epoch, step, steps, loss):
                bar.update(task, completed=current["index"] + ((epoch - 1) * steps + step) / (epochs * steps),
                           status=f"{current['label']}: epoch {epoch}/{epochs}, loss {loss:.4f}")

            with threadpool_limits(limits=n_threads, user_api="openmp"):
                for run in training.sweep_digits(configs, seeds, model=model, on_start=on_start, on_step=on_step,
                                                 epochs=epochs, batch=batch, lr=lr, loss_gradient=loss_gradient,
                                                 prune=sparsity, prune_scope=prune_scope, init_from=from_path,
                                                 precision=precision):
                    done.append(run)
                    bar.update(task, completed=len(done))
                    err.print(f"run {len(done)}/{total}  {_run_label(model, run.config)}, seed {run.seed}: "
                              f"test acc {100 * run.test_accuracy:6.2f}%  final loss {run.final_loss:.4f}  "
                              f"{run.seconds:.1f} s", highlight=False, soft_wrap=True)
    except KeyboardInterrupt:
        stopped = f"interrupted after {len(done)} of {total} runs"
    except (ValueError, TypeError, OSError, MemoryError, training.TrainingDiverged) as exc:
        # a diverged run, ...: report the runs finished, then fail as a single run does (`handled`)
        stopped, failure = f"stopped by an error after {len(done)} of {total} runs", exc
    summary = training.summarize_runs(done)
    if as_json and done:
        data = {"settings": settings, "runs": [r.as_dict() for r in done], "summary": [s.as_dict() for s in summary]}
        if stopped:
            data["incomplete"] = stopped
        emit_json(data)
    elif done:
        out.print(_sweep_table(model, summary, settings, total, stopped))
    if failure is not None:
        raise failure
    if stopped:
        raise typer.Exit(EXIT_INTERRUPTED)


def _plural(n, noun):
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _sweep_table(model, summary, settings, total, stopped):
    runs = sum(s.runs for s in summary)
    what = "digits CNN" if model == "cnn" else "digits RNN"
    seeds = settings["seeds"]
    contiguous = len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    title = (f"{what}: test accuracy over seeds {f'{seeds[0]}-{seeds[-1]}' if contiguous else ','.join(map(str, seeds))} "
             f"({_plural(runs, 'run')}, {_plural(settings['epochs'], 'epoch')}, batch {settings['batch']}, lr {settings['lr']:g}, "
             f"{settings['loss_gradient']} loss gradient, {settings['threads']} thread(s))")
    if stopped:
        title += f"; {stopped}"
    t = Table(title=title, caption="± is the sample standard deviation (ddof=1) over a row's runs (seeds), "
                                   "n/a for a single run; time: the mean training time of one run")
    columns = _config_columns(model)
    for _, header in columns:
        t.add_column(header)
    for header in ("test acc % (mean ± std)", "min %", "max %", "runs", "mean time s"):
        t.add_column(header, justify="right")
    for s in summary:
        config = s.config.as_dict()
        std = "n/a" if s.runs < 2 else f"{100 * s.std:.2f}"
        t.add_row(*(str(config[key]) for key, _ in columns), f"{100 * s.mean:.2f} ± {std}", f"{100 * s.min:.2f}",
                  f"{100 * s.max:.2f}", str(s.runs), f"{s.mean_seconds:.1f}")
    return t


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
        seed: Annotated[int | None, typer.Option("--seed", min=0, max=MAX_SEED,
                                                  help="Seeds the split, the initialization and the shuffling "
                                                       "(default 0).")] = None,
        seeds: Annotated[str | None, typer.Option(
            "--seeds", metavar="<list>",
            help="Comma list of seeds, e.g. 0,1,2: one run per seed (a sweep; not with --seed).")] = None,
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
                 "softmax, margin M >= 0 on the true class); sm-taylor:N:M (both).  A comma list sweeps them.")] = "softmax",
        loss_gradient: Annotated[str, typer.Option(
            "--loss-gradient", metavar="<kind>",
            help="exact: the loss's derivative; softmax: p - onehot (the Taylor series treated as exp). "
                 "The same for the exp kinds.")] = "exact",
        cell: Annotated[str | None, typer.Option(
            "--cell", metavar="<cell>",
            help="lstm or gru (default: lstm, or the --from model's); a comma list sweeps both.")] = None,
        activation_impl: Annotated[str | None, typer.Option(
            "--activation-impl", metavar="<impl>",
            help="How the cell computes sigmoid/tanh: exact, fast (rational approximations) or ktanh "
                 "(default: exact, or the --from model's); a comma list sweeps them.")] = None,
        dist: Annotated[bool, typer.Option(
            "--dist", help="Train data-parallel over MPI: launch with mpiexec -n <ranks>; --batch is the global batch, "
                           "split over the ranks, and --threads is per rank.  Needs pip install \"dlcpu[mpi]\".")] = False,
        fusion_threshold: FusionThreshold = None,
        compress: Compress = None,
        comm_core: CommCore = False,
        timeline: Annotated[str | None, typer.Option(
            "--timeline", metavar="<file>",
            help="With --dist: write every rank's compute and communication spans as chrome-trace JSON "
                 "(chrome://tracing, ui.perfetto.dev).")] = None,
        comm_timeout: Annotated[float | None, typer.Option(
            "--comm-timeout", metavar="<seconds>", min=0.001, max=86400.0,
            help="With --dist: a collective that takes longer ends the job with an error (a rank died or "
                 "stalled; default 120).")] = None,
        check_replicas: Annotated[bool, typer.Option(
            "--check-replicas", help="With --dist: after every step, check that all ranks' weights are bitwise "
                                     "identical (a checksum allgather).")] = False,
        overlap: Overlap = True,
        precision: Annotated[str, typer.Option(
            "--precision", metavar="<format>",
            help="fp32, or bf16 / dfp16 for mixed precision: convolutions, the recurrent layers and the classifier "
                 "multiply bf16-rounded (DFP-16-quantized) operands; weights, batch-norm statistics, states, loss, "
                 "gradients and SGD stay fp32.")] = "fp32",
        as_json: JsonFlag = False,
    ):
        _train(model, epochs, batch, lr, threads, seed, out_path, as_json, sparsity, from_path, prune_scope,
               loss, loss_gradient, cell, activation_impl, seeds,
               DistArgs(dist, fusion_threshold, compress, comm_core, timeline, comm_timeout, check_replicas, overlap),
               precision)

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
