"""The `dlcpu` command: parse, call the library, render.  No maths here.

    dlcpu info [--json]
    dlcpu bench peak [--threads 1,2] [--json]
    dlcpu bench conv [--layer DESC ...] [--layers FILTER] [--batch N] [--threads 1,2]
                     [--compare torch] [--check] [--show-plan] [--json]
    dlcpu bench gemm [--size 2048] [--threads 2] [--no-compare] [--json]

Exit codes: 0 success, 1 handled error (one line on stderr; DLCPU_DEBUG=1 for the traceback),
2 usage error.  --json prints JSON on stdout only; progress and logs go to stderr.
"""
import functools
import json
import sys

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import _config, benchmarks, cpu, workloads
from ..conv import winograd_applies
from ..train import TrainingDiverged

app = typer.Typer(add_completion=False, no_args_is_help=True, help="dlcpu: CPU deep-learning kernels, benchmarks and tools.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks against the machine's peak and a peer library.")
app.add_typer(bench_app, name="bench")
train_app = typer.Typer(no_args_is_help=True, help="Train models on dlcpu kernels.")
app.add_typer(train_app, name="train")
bench_train_app = typer.Typer(no_args_is_help=True, help="Training throughput against PyTorch.")
bench_app.add_typer(bench_train_app, name="train")

# Tables are wide; when stdout is not a terminal (CI logs, files) do not squeeze them to 80 columns.
out = Console()
if not out.is_terminal:
    out = Console(width=160)
err = Console(stderr=True)


class CliError(Exception):
    """A handled error: printed as one line, exit code 1."""


def handled(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError, CliError, MemoryError, TrainingDiverged) as exc:
            if _config.env_debug():
                raise
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1)

    return wrapper


def parse_threads(text):
    if text is None:
        return [cpu.resolve_threads()]
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"--threads must be a comma list of integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise CliError(f"--threads values must be >= 1, got {text!r}")
    return values


def emit_json(obj):
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def progress():
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=True)


# ------------------------------------------------------------------------------------------ info
@app.command()
@handled
def info(as_json: bool = typer.Option(False, "--json", help="JSON on stdout.")):
    """Version, build, OpenMP, threads, CPU features and the ISA path in use."""
    data = cpu.info()
    if as_json:
        emit_json(data)
        return
    table = Table(show_header=False, title="dlcpu info")
    for key, value in data.items():
        if key == "features":
            value = " ".join(f"{k}{'' if v else '(no)'}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(value)
        table.add_row(key, str(value))
    out.print(table)


# ------------------------------------------------------------------------------------------ peak
@bench_app.command("peak")
@handled
def bench_peak(
    threads: str | None = typer.Option(None, help="Comma list of thread counts (default 1..all)."),
    seconds: float = typer.Option(0.25, help="Seconds per measurement."),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout."),
):
    """This machine's fp32 FMA peak in GFLOP/s, per thread count."""
    counts = parse_threads(threads) if threads else list(range(1, cpu.resolve_threads() + 1))
    rows = []
    with progress() as bar:
        task = bar.add_task("FMA peak", total=len(counts))
        for n in counts:
            rows.append(benchmarks.measure_peak(n, seconds=seconds))
            bar.advance(task)
    isa = cpu.resolve_isa()
    if as_json:
        emit_json({"isa": isa, "peak": rows})
        return
    table = Table(title=f"fp32 FMA peak ({isa}, independent FMA chains, best of 5)")
    for col in ("threads", "GFLOP/s", "median", "per thread"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["threads"]), f"{r['gflops']:.1f}", f"{r['median_gflops']:.1f}", f"{r['per_thread_gflops']:.1f}")
    out.print(table)


# ------------------------------------------------------------------------------------------ conv
def _select_layers(layer_descs, name_filter):
    if layer_descs:
        layers = [workloads.parse_conv_descriptor(d) for d in layer_descs]
    else:
        layers = workloads.resnet50_layers()
    if name_filter:
        keys = [k.strip() for k in name_filter.split(",") if k.strip()]
        layers = [l for l in layers if any(k in l.name for k in keys)]
        if not layers:
            raise CliError(f"--layers {name_filter!r} matches no layer")
    return layers


@bench_app.command("conv")
@handled
def bench_conv(
    layer: list[str] | None = typer.Option(None, "--layer", help="benchdnn-style descriptor, e.g. mb4ic64ih56oc64oh56kh3ph1 (repeatable). Default: the ResNet-50 v1.5 table."),
    layers: str | None = typer.Option(None, "--layers", help="Only layers whose name contains one of these (comma list)."),
    batch: int | None = typer.Option(None, "--batch", min=1, help="Minibatch (default: the thread count; a descriptor's mb wins unless --batch is given)."),
    threads: str | None = typer.Option(None, "--threads", help="Comma list of thread counts, e.g. 1,2 (default: all)."),
    passes: str = typer.Option("fwd", "--pass", help="Comma list of passes: fwd, bwd_d (input gradient), bwd_w (weight gradient)."),
    algs: str = typer.Option("direct", "--alg", help="Comma list of forward algorithms: direct, winograd2, winograd4 (3x3 stride-1 layers only)."),
    compare: str | None = typer.Option(None, "--compare", help="Peer to time in the same run: torch."),
    check: bool = typer.Option(False, "--check", help="Verify every layer against the float64 reference."),
    show_plan: bool = typer.Option(False, "--show-plan", help="Print each layer's blocking plan."),
    repeats: int = typer.Option(7, "--repeats", min=1, help="Timed repeats per layer (median reported)."),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout."),
):
    """Convolution GFLOP/s per layer and pass, % of measured peak, peer and ratio."""
    if compare not in (None, "torch"):
        raise CliError(f"--compare must be 'torch', got {compare!r}")
    directions = [p.strip() for p in passes.split(",") if p.strip()]
    if not directions or any(p not in benchmarks.PASSES for p in directions):
        raise CliError(f"--pass must be a comma list of {', '.join(benchmarks.PASSES)}, got {passes!r}")
    algorithms = [a.strip() for a in algs.split(",") if a.strip()]
    if not algorithms or any(a not in ("direct", "winograd2", "winograd4") for a in algorithms):
        raise CliError(f"--alg must be a comma list of direct, winograd2, winograd4, got {algs!r}")
    selected = _select_layers(layer, layers)
    counts = parse_threads(threads)
    isa = cpu.resolve_isa()
    runs = []
    any_failed = False
    for n_threads in counts:
        mb = batch or n_threads
        if batch:
            selected_run = [layer.without_batch() for layer in selected]
        else:
            selected_run = selected
        peak = benchmarks.measure_peak(n_threads, seconds=0.1, repeats=3)
        for direction, algorithm in [(d, a) for d in directions for a in (algorithms if d == "fwd" else ["direct"])]:
            layers_run = selected_run
            if algorithm != "direct":  # Winograd covers 3x3 stride-1 layers only
                layers_run = [l for l in selected_run if winograd_applies(l.shape(mb))]
                if not layers_run:
                    continue
            results = []
            with progress() as bar:
                task = bar.add_task(f"conv {direction}, {n_threads} thread(s)", total=len(layers_run))
                for l in layers_run:
                    bar.update(task, description=f"conv {direction} {algorithm} {l.name} ({n_threads}T)")
                    results.append(benchmarks.bench_conv_layer(
                        l, mb, n_threads, peak["gflops"], direction=direction, algorithm=algorithm,
                        compare=compare, check=check, repeats=repeats))
                    bar.advance(task)
            total = benchmarks.conv_totals(results)
            any_failed |= any(r.check and not r.check["passed"] for r in results)
            runs.append({"threads": n_threads, "batch": mb, "isa": isa, "pass": direction,
                         "algorithm": algorithm, "peak_gflops": peak["gflops"],
                         "layers": [r.__dict__ for r in results], "total": total})
            if not as_json:
                _render_conv(runs[-1], compare, check, show_plan)
    if as_json:
        emit_json({"flop_convention": benchmarks.FLOP_CONVENTION, "dtype": "f32",
                   "timed_path": "blocked in, blocked out (no layout conversion)", "runs": runs})
    if any_failed:
        raise typer.Exit(1)


def _render_conv(run, compare, check, show_plan):
    alg = "" if run["algorithm"] == "direct" else f" {run['algorithm']}"
    t = Table(title=f"conv {run['pass']}{alg} f32 | {run['threads']} thread(s), batch {run['batch']}, isa {run['isa']}, "
                    f"peak {run['peak_gflops']:.0f} GFLOP/s")
    for col in ("layer", "x", "GFLOP", "ms", "GFLOP/s", "% peak"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    if compare:
        for col in ("peer GFLOP/s", "peer layout", "ratio"):
            t.add_column(col, justify="right")
    if check:
        t.add_column("check", justify="right")
    for r in run["layers"]:
        row = [r["name"], str(r["count"]), f"{r['gflop']:.3f}", f"{r['seconds']['median_s'] * 1e3:.3f}",
               f"{r['gflops']:.1f}", f"{r['pct_peak']:.1f}"]
        if compare:
            p = r["peer"]
            row += [f"{p['gflops']:.1f}", p["layout"], f"{p['ratio']:.2f}"]
        if check:
            c = r["check"]
            row.append(("ok " if c["passed"] else "FAIL ") + f"{c['rel_l2']:.1e}")
        t.add_row(*row)
    tot = run["total"]
    row = ["total (count-weighted)", "", f"{tot['gflop']:.2f}", f"{tot['seconds'] * 1e3:.2f}",
           f"{tot['gflops']:.1f}", f"{100 * tot['gflops'] / run['peak_gflops']:.1f}"]
    if compare:
        row += [f"{tot.get('peer_gflops', 0):.1f}", "", f"{tot.get('ratio', 0):.2f}"]
    if check:
        row.append("")
    t.add_row(*row, style="bold")
    out.print(t)
    out.print(f"ratio = peer time / dlcpu time (>1: dlcpu faster). FLOPs: {benchmarks.FLOP_CONVENTION}. "
              "dlcpu timed blocked-in/blocked-out; the peer in the faster of NCHW and channels_last.",
              highlight=False)
    if show_plan:
        tc = cpu.TILE_CONSTANTS
        out.print(f"plans ({run['pass']}{alg}); register budgets from pyx/kernels/tiles.h: "
                  + ", ".join(f"{isa} {n} accumulators" for isa, n in tc["max_acc"].items())
                  + f"; tiles up to mv={tc['br_max_mv']} x nr={tc['br_max_nr']} x nc={tc['br_max_nc']} "
                  f"(transposed nc={tc['brt_max_nc']})", highlight=False)
        for r in run["layers"]:
            out.print(f"[bold]{r['name']}[/] {r['descriptor']}", highlight=False)
            out.print("  " + r["plan"].replace("\n", "\n  "), highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------ gemm
@bench_app.command("gemm")
@handled
def bench_gemm(
    size: int = typer.Option(2048, "--size", min=1, help="m = n = k."),
    threads: str | None = typer.Option(None, "--threads", help="Comma list of thread counts (default: all)."),
    compare: bool = typer.Option(True, "--compare/--no-compare", help="Time numpy.matmul in the same run."),
    repeats: int = typer.Option(5, "--repeats", min=1),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout."),
):
    """A large plain GEMM on the BRGEMM vs numpy.matmul (OpenBLAS), same run."""
    rows = []
    for n_threads in parse_threads(threads):
        peak = benchmarks.measure_peak(n_threads, seconds=0.1, repeats=3)
        with err.status(f"gemm {size}^3, {n_threads} thread(s)"):
            r = benchmarks.bench_gemm(size, size, size, n_threads, peak["gflops"],
                                      compare_numpy=compare, repeats=repeats)
        r["peak_gflops"] = peak["gflops"]
        rows.append(r)
    if as_json:
        emit_json({"gemm": rows})
        return
    t = Table(title=f"sgemm {size}^3 (dlcpu.matmul: packing + BRGEMM; numpy: its BLAS)")
    for col in ("threads", "dlcpu GFLOP/s", "% peak", "numpy GFLOP/s", "ratio", "BLAS kernel"):
        t.add_column(col, justify="right")
    for r in rows:
        p = r.get("peer")
        blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} {b.get('architecture')}" for b in p["blas"]) if p else ""
        t.add_row(str(r["threads"]), f"{r['gflops']:.1f}", f"{r['pct_peak']:.1f}",
                  f"{p['gflops']:.1f}" if p else "-", f"{p['ratio']:.2f}" if p else "-", blas)
    out.print(t)


# ------------------------------------------------------------------------------------------ lstm
@bench_app.command("lstm")
@handled
def bench_lstm(
    cell: str = typer.Option("lstm", "--cell", help="Recurrent cell: lstm, gru or rnn (tanh)."),
    layers: str | None = typer.Option(None, "--layers", help="Only grid rows whose name contains one of these (comma list)."),
    threads: str | None = typer.Option(None, "--threads", help="Comma list of thread counts (default: all)."),
    compare: str | None = typer.Option(None, "--compare", help="Peer to time in the same run: torch."),
    repeats: int = typer.Option(5, "--repeats", min=1),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout."),
):
    """LSTM/GRU forward (inference) and training step over the LSTM grid, vs torch.nn.LSTM/GRU."""
    if compare not in (None, "torch"):
        raise CliError(f"--compare must be 'torch', got {compare!r}")
    if cell not in benchmarks.RNN_CELLS:
        raise CliError(f"--cell must be one of {', '.join(benchmarks.RNN_CELLS)}, got {cell!r}")
    grid = workloads.lstm_layers()
    if layers:
        keys = [k.strip() for k in layers.split(",") if k.strip()]
        grid = [g for g in grid if any(k in g.name for k in keys)]
        if not grid:
            raise CliError(f"--layers {layers!r} matches no row of the LSTM grid")
    runs = []
    for n_threads in parse_threads(threads):
        peak = benchmarks.measure_peak(n_threads, seconds=0.1, repeats=3)
        rows = []
        with progress() as bar:
            task = bar.add_task(f"lstm, {n_threads} thread(s)", total=len(grid))
            for g in grid:
                bar.update(task, description=f"lstm {g.name} ({n_threads}T)")
                rows.append(benchmarks.bench_lstm_layer(g, n_threads, peak["gflops"], cell=cell,
                                                        compare=compare, repeats=repeats))
                bar.advance(task)
        run = {"threads": n_threads, "cell": cell, "peak_gflops": peak["gflops"], "rows": rows}
        if compare:
            run["geomean_ratio"] = {k: benchmarks.geomean([r[k]["peer"]["ratio"] for r in rows]) for k in ("forward", "train")}
        runs.append(run)
        if not as_json:
            gates = benchmarks.RNN_CELLS[cell]
            t = Table(title=f"{cell.upper()} f32 | {n_threads} thread(s), peak {peak['gflops']:.0f} GFLOP/s "
                            f"(forward FLOPs 2*T*N*{gates}K*(C+K); training step 3x that)")
            cols = ["row", "N", "C", "K", "T", "fwd GFLOP/s", "% peak"]
            if compare:
                cols += ["torch fwd", "ratio"]
            cols += ["train GFLOP/s", "% peak"]
            if compare:
                cols += ["torch train", "ratio"]
            for col in cols:
                t.add_column(col, justify="left" if col == "row" else "right")
            for r in rows:
                cells = [r["name"], str(r["N"]), str(r["C"]), str(r["K"]), str(r["T"]),
                         f"{r['forward']['gflops']:.1f}", f"{r['forward']['pct_peak']:.1f}"]
                if compare:
                    cells += [f"{r['forward']['peer']['gflops']:.1f}", f"{r['forward']['peer']['ratio']:.2f}"]
                cells += [f"{r['train']['gflops']:.1f}", f"{r['train']['pct_peak']:.1f}"]
                if compare:
                    cells += [f"{r['train']['peer']['gflops']:.1f}", f"{r['train']['peer']['ratio']:.2f}"]
                t.add_row(*cells)
            if compare:
                gm = run["geomean_ratio"]
                t.add_row("geometric mean", "", "", "", "", "", "", "", f"{gm['forward']:.2f}", "", "", "",
                          f"{gm['train']:.2f}", style="bold")
            out.print(t)
    if as_json:
        emit_json({"lstm": runs})


# ----------------------------------------------------------------------------------------- train
def _train(model, epochs, batch, lr, threads, seed, out_path, as_json):
    """Shared body of the `dlcpu train` commands (model 'cnn' or 'rnn')."""
    from threadpoolctl import threadpool_limits

    from .. import train as training

    n_threads = threads or cpu.resolve_threads()
    data = training.load_digits_split(seed)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
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


_OPTS = {
    "threads": typer.Option(None, "--threads", min=1, help="Kernel threads (default: all)."),
    "seed": typer.Option(0, "--seed", help="Seeds the split, the initialization and the shuffling."),
    "out_path": typer.Option(None, "--out", help="Save the model here (.npz) after every epoch."),
    "as_json": typer.Option(False, "--json", help="JSON on stdout."),
}


@train_app.command("digits")
@handled
def train_digits(
    epochs: int = typer.Option(15, "--epochs", min=1),
    batch: int = typer.Option(64, "--batch", min=1),
    lr: float = typer.Option(0.05, "--lr", min=1e-12),
    threads: int | None = _OPTS["threads"],
    seed: int = _OPTS["seed"],
    out_path: str | None = _OPTS["out_path"],
    as_json: bool = _OPTS["as_json"],
):
    """Train a small ResNet-style CNN on scikit-learn's handwritten digits (8x8, no download)."""
    _train("cnn", epochs, batch, lr, threads, seed, out_path, as_json)


@train_app.command("digits-rnn")
@handled
def train_digits_rnn(
    epochs: int = typer.Option(30, "--epochs", min=1),
    batch: int = typer.Option(64, "--batch", min=1),
    lr: float = typer.Option(0.1, "--lr", min=1e-12),
    threads: int | None = _OPTS["threads"],
    seed: int = _OPTS["seed"],
    out_path: str | None = _OPTS["out_path"],
    as_json: bool = _OPTS["as_json"],
):
    """Train an LSTM that reads each digit image row by row (T=8 steps of 8 pixels)."""
    _train("rnn", epochs, batch, lr, threads, seed, out_path, as_json)


@bench_train_app.command("digits")
@handled
def bench_train_digits(
    epochs: int = typer.Option(3, "--epochs", min=1, help="Timed epochs per framework (median reported)."),
    batch: int = typer.Option(64, "--batch", min=1),
    threads: str | None = typer.Option(None, "--threads", help="Comma list of thread counts (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout."),
):
    """Training images/s of the digits CNN: dlcpu vs the same model in PyTorch, same data and run."""
    rows = []
    for n_threads in parse_threads(threads):
        with err.status(f"training throughput, {n_threads} thread(s)"):
            rows.append(benchmarks.bench_train_digits(epochs, batch, n_threads))
    if as_json:
        emit_json({"train_digits": rows})
        return
    t = Table(title=f"digits CNN training throughput (batch {batch}, forward+backward+SGD, median of {epochs} epochs)")
    for col in ("threads", "dlcpu img/s", "torch img/s", "ratio"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["threads"]), f"{r['images_per_second']:.0f}", f"{r['peer']['images_per_second']:.0f}",
                  f"{r['peer']['ratio']:.2f}")
    out.print(t)
    out.print("ratio = dlcpu images/s / torch images/s (>1: dlcpu faster)", highlight=False)


def main():
    app()


if __name__ == "__main__":
    main()
