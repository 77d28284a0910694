"""`dlcpu scale ...`: scaling sweeps (dlcpu.scaling), rendered as tables, JSON and plots.

    dlcpu scale threads WORKLOAD --threads 1,2,4 --mode strong|weak [--plot FILE.png] [--json]
    dlcpu scale buckets [--ranks 2,4] [--batch-per-rank 32] [--buckets 5] [--json]
    dlcpu scale ranks train:digits --ranks 1,2 --mode weak|strong [--batch 64] [--threads 1] [--json]
    dlcpu scale timeline FILE.json [--json]      (a `dlcpu train --dist --timeline` trace, summarized)

One section per command; a command parses its options, calls dlcpu.scaling and renders.  No
timing or fitting logic here.
"""
from typing import Annotated

import typer
from rich.table import Table

from .. import scaling
from ._dist import CommCore, Compress, DistArgs, FusionThreshold, Overlap, dist_options
from ._output import JsonFlag, bad_option, check_output_path, command, emit_json, err, group, out, progress

app = group("Scaling sweeps: thread scaling with Amdahl and Gustafson fits; data-parallel bucketing.")

Repeats = Annotated[int, typer.Option("--repeats", min=1, help="Timed repeats per thread count (the median is reported).")]
Plot = Annotated[str | None, typer.Option("--plot", metavar="<file>",
                                          help="Save a PNG of speedup vs threads, with the ideal line and the fit.")]


def _warn(lines):
    for line in lines:
        err.print(f"[bold yellow]warning:[/] {line}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------- threads
def _thread_counts(text):
    """--threads: a comma list that includes 1 and one more count; else a bad option value."""
    if text is None:
        return scaling.default_thread_counts()
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise bad_option("--threads", f"must be a comma list of integers, got {text!r}") from None
    try:
        return scaling.check_thread_counts(values)
    except ValueError as exc:
        raise bad_option("--threads", str(exc)) from None


@command(app, "threads")
def scale_threads(
    workload: Annotated[str, typer.Argument(metavar="WORKLOAD", help=f"What to time: {scaling.WORKLOAD_FORMS}.",
                                            show_default=False)],
    threads: Annotated[str | None, typer.Option(
        "--threads", metavar="<list>",
        help="Comma list of thread counts including 1, e.g. 1,2,4 (default: 1, 2, 4, ... up to the cores).")] = None,
    mode: Annotated[str, typer.Option(
        "--mode", metavar="<mode>",
        help="strong: the same problem at every thread count; weak: the batch (N; M for gemm) times the thread count.")] = "strong",
    batch: Annotated[int | None, typer.Option(
        "--batch", min=1, help="Minibatch of a conv layer named without mb (default: the largest thread count, "
                               "so that every thread has an image, as `bench conv`).")] = None,
    plot: Plot = None,
    repeats: Repeats = 5,
    as_json: JsonFlag = False,
):
    """Thread scaling of one workload: speedup, efficiency, Amdahl (strong) or Gustafson (weak) fit."""
    if mode not in scaling.MODES:
        raise bad_option("--mode", f"must be one of {', '.join(scaling.MODES)}, got {mode!r}")
    counts = _thread_counts(threads)
    try:
        work = scaling.parse_workload(workload, batch=batch or max(counts))
    except ValueError as exc:
        raise bad_option("WORKLOAD", str(exc)) from None
    check_output_path(plot, "--plot")
    _warn(scaling.core_warnings(counts))
    with progress() as bar:
        task = bar.add_task(f"{mode} scaling, {work.describe()}", total=len(counts))
        result = scaling.thread_scaling(work, counts, mode, repeats=repeats,
                                        on_point=lambda t: bar.advance(task))
    if plot:
        scaling.plot_scaling(result, plot)
        err.print(f"plot saved to {plot}", highlight=False)
    if as_json:
        emit_json(result)
        return
    _render_threads(result)


def _render_threads(result):
    strong = result["mode"] == "strong"
    t = Table(title=f"{result['mode']} thread scaling: {result['workload']} ({result['cores']} cores available)")
    for col in ("threads", "problem", "ms (median)", "speedup" if strong else "scaled speedup", "efficiency"):
        t.add_column(col, justify="left" if col == "problem" else "right")
    for p in result["points"]:
        t.add_row(str(p["threads"]), p["problem"], f"{p['seconds']['median_s'] * 1e3:.3f}",
                  f"{p['speedup']:.2f}", f"{100 * p['efficiency']:.1f}%")
    out.print(t)
    fit = result["fit"]
    if fit["model"] == "amdahl":
        head = f"Amdahl fit: parallel fraction p = {fit['p']:.4f}"
    else:
        head = f"Gustafson fit: serial fraction s = {fit['s']:.4f}"
    pred = ", ".join(f"{q['speedup']:.2f}x at {q['threads']} threads" for q in fit["predicted"])
    out.print(f"{head} (rms residual {fit['rms_residual']:.3g}); predicted: {pred}", highlight=False)
    if fit["clamped"]:
        out.print(f"note: {fit['clamped']}", highlight=False)
    out.print(f"timed: {result['timed_region']}.", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------- buckets
@command(app, "buckets")
def scale_buckets(
    ranks: Annotated[str, typer.Option("--ranks", metavar="<list>", help="Rank counts to simulate (comma list).")] = "2,4",
    batch_per_rank: Annotated[int, typer.Option("--batch-per-rank", min=1, help="Sequences per rank per step.")] = 32,
    buckets: Annotated[int, typer.Option("--buckets", min=1, max=1000, help="Length buckets.")] = 5,
    bucket_width: Annotated[str, typer.Option(
        "--bucket-width", metavar="<width>",
        help="Bucket width: auto = the 99th-percentile length / --buckets; max = the longest / --buckets "
             "(TF-NMT's rule); or a number of tokens.")] = "auto",
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Shuffle seed, shared by all ranks.")] = 0,
    as_json: JsonFlag = False,
):
    """Padding waste and cross-rank imbalance of naive, per-rank and load-balanced bucketing."""
    from .. import data

    try:
        rank_counts = [int(v) for v in ranks.split(",") if v.strip()]
    except ValueError:
        raise bad_option("--ranks", f"must be a comma list of integers, got {ranks!r}") from None
    if not rank_counts or any(not 1 <= r <= 4096 for r in rank_counts):
        raise bad_option("--ranks", f"rank counts must be between 1 and 4096, got {ranks!r}")
    if bucket_width not in ("auto", "max"):
        try:
            width = int(bucket_width)
        except ValueError:
            raise bad_option("--bucket-width", f"must be auto, max or a positive integer, got {bucket_width!r}") from None
        if width < 1:
            raise bad_option("--bucket-width", f"must be auto, max or a positive integer, got {bucket_width!r}")
    text_name, text_lengths = data.text_sentence_lengths()
    sets = [("synthetic log-normal (20,000 sentences, mean 25)", data.synthetic_lengths()), (text_name, text_lengths)]
    rows = []
    for name, lengths in sets:
        width = data.bucket_width_for(lengths, buckets, bucket_width)
        for r in rank_counts:
            for res in data.bucket_study(lengths, r, batch_per_rank, buckets, seed, bucket_width=width):
                rows.append({"lengths": name, "sentences": len(lengths), "ranks": r, "bucket_width": width, **res})
    if as_json:
        emit_json({"rows": rows, "batch_per_rank": batch_per_rank, "buckets": buckets})
        return
    t = Table(title=f"data-parallel batching: {batch_per_rank} sequences per rank, {buckets} buckets")
    for col in ("lengths", "ranks", "width", "scheme", "steps", "padding waste", "imbalance mean", "imbalance max"):
        t.add_column(col, justify="left" if col in ("lengths", "scheme") else "right")
    for r in rows:
        t.add_row(r["lengths"], str(r["ranks"]), str(r["bucket_width"]), r["scheme"], str(r["steps"]),
                  f"{100 * r['padding_waste']:.1f}%", f"{r['imbalance_mean']:.3f}", f"{r['imbalance_max']:.3f}")
    out.print(t)
    out.print("padding waste: padded tokens / all tokens computed; imbalance: per step, the longest rank slice's padded "
              "length over the ranks' mean (the straggler factor at the allreduce), mean and max over the epoch.",
              highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------- ranks
@command(app, "ranks")
def scale_ranks(
    workload: Annotated[str, typer.Argument(
        metavar="WORKLOAD", help="What to train: train:digits (the CNN) or train:digits-rnn (the LSTM).",
        show_default=False)],
    ranks: Annotated[str, typer.Option("--ranks", metavar="<list>",
                                       help="Comma list of rank counts including 1, e.g. 1,2.")] = "1,2",
    mode: Annotated[str, typer.Option(
        "--mode", metavar="<mode>",
        help="weak: a fixed batch per rank (the global batch grows with the ranks); strong: a fixed global "
             "batch, split over the ranks.")] = "weak",
    batch: Annotated[int, typer.Option("--batch", min=1, max=16384,
                                       help="Images per rank (weak) or per step (strong).")] = 64,
    threads: Annotated[int, typer.Option("--threads", min=1, max=1024, help="Compute threads per rank.")] = 1,
    steps: Annotated[int, typer.Option("--steps", min=3, max=100_000, help="Timed steps per launch.")] = 40,
    warmup: Annotated[int, typer.Option("--warmup", min=0, max=10_000, help="Untimed steps first.")] = 5,
    repeats: Annotated[int, typer.Option("--repeats", min=1, max=100,
                                         help="Launches per rank count, interleaved; the median is reported.")] = 3,
    fusion_threshold: FusionThreshold = None,
    compress: Compress = None,
    comm_core: CommCore = False,
    overlap: Overlap = True,
    compare: Annotated[str | None, typer.Option(
        "--compare", metavar="<peer>",
        help="torch: after every launch, the same launch of the PyTorch twin (DistributedDataParallel over "
             "gloo for several ranks); adds its images/s, efficiency and dlcpu's ratio to it.")] = None,
    bind: Annotated[bool, typer.Option(
        "--bind/--no-bind", help="Pin each rank (the 1-rank baseline too) to cores of its own, as mpiexec "
                                 "-bind-to core does (default).")] = True,
    as_json: JsonFlag = False,
):
    """Data-parallel training throughput at 1, 2, ... MPI ranks (launches itself under mpiexec)."""
    from .. import distributed, scaling_ranks

    if (distributed.launcher_size() or 1) > 1:
        raise bad_option("--ranks", "scale ranks launches its own ranks under mpiexec: run it without mpiexec")
    try:
        scaling_ranks.parse_rank_workload(workload)
    except ValueError as exc:
        raise bad_option("WORKLOAD", str(exc)) from None
    if mode not in scaling.MODES:
        raise bad_option("--mode", f"must be one of {', '.join(scaling.MODES)}, got {mode!r}")
    try:
        counts = scaling_ranks.check_rank_counts([int(v) for v in ranks.split(",") if v.strip()])
        scaling_ranks.check_batch(mode, batch, counts)
    except ValueError as exc:
        option = "--batch" if "batch" in str(exc) else "--ranks"
        message = str(exc) if option == "--batch" else (
            f"must be a comma list of distinct integers including 1, e.g. 1,2; got {ranks!r}"
            + (f" ({exc})" if "rank counts" in str(exc) else ""))
        raise bad_option(option, message) from None
    if compare not in (None, "torch"):
        raise bad_option("--compare", f"must be torch, got {compare!r}")
    options = dist_options(DistArgs(True, fusion_threshold, compress, comm_core, overlap=overlap))
    if max(counts) > 1:
        try:
            scaling_ranks.find_mpiexec()
        except distributed.DistributedError as exc:
            raise bad_option("--ranks", str(exc)) from None
    with progress() as bar:
        task = bar.add_task(f"{mode} rank scaling, {workload}", total=len(counts) * repeats)
        result = scaling_ranks.rank_scaling(workload, counts, mode, batch, threads, steps, warmup, repeats, options,
                                            bind=bind, compare=compare, on_point=lambda r: bar.advance(task))
    if as_json:
        emit_json(result)
        return
    _render_ranks(result)


def _render_ranks(result):
    def ms(seconds):
        return f"{1e3 * seconds:.2f}"

    o = result["options"]
    t = Table(title=f"{result['mode']} rank scaling: {result['workload']}, {result['threads_per_rank']} thread(s) per "
                    f"rank ({result['cores']} cores available); fusion {o['fusion_threshold']} B, compression "
                    f"{o['compression']}, overlap {'on' if o['overlap'] else 'off'}"
                    f"{', communication core' if o['comm_core'] else ''}{', ranks pinned to cores' if result['bind'] else ''}")
    peer = result.get("peer")
    columns = ["ranks", "global batch", "step ms (median)", "images/s", "speedup", "efficiency", "allreduce ms",
               "allreduce % of step", "exposed ms", "exposed % of step", "exposed % of allreduce"]
    if peer:
        columns += ["torch images/s", "torch efficiency", "dlcpu / torch"]
    for col in columns:
        t.add_column(col, justify="right")
    for p in result["points"]:
        c = p["communication"]
        comm = ("-",) * 5
        if c:
            comm = (ms(c["comm_seconds"]), f"{100 * c['comm_share']:.1f}%", ms(c["exposed_seconds"]),
                    f"{100 * c['exposed_share']:.1f}%", f"{100 * c['exposed_of_comm']:.0f}%")
        versus = ()
        if peer:
            versus = (f"{p['peer']['images_per_second']:.0f}", f"{100 * p['peer']['efficiency']:.1f}%",
                      f"{p['ratio_to_peer']:.2f}x")
        t.add_row(str(p["ranks"]), str(p["global_batch"]), ms(p["seconds"]["median_s"]), f"{p['images_per_second']:.0f}",
                  f"{p['speedup']:.2f}", f"{100 * p['efficiency']:.1f}%", *comm, *versus)
    out.print(t)
    fit = result["fit"]
    head = (f"Amdahl fit: parallel fraction p = {fit['p']:.4f}" if fit["model"] == "amdahl"
            else f"Gustafson fit: serial fraction s = {fit['s']:.4f}")
    pred = ", ".join(f"{q['speedup']:.2f}x at {q['threads']} ranks" for q in fit["predicted"])
    out.print(f"{head}; predicted: {pred}", highlight=False)
    if peer:
        out.print(f"peer: {peer['name']}, the same steps, shards and batch, launched right after each dlcpu launch.",
                  highlight=False, soft_wrap=True)
    out.print(f"timed: {result['timed_region']}; median of {result['steps']} steps per launch, median launch of "
              f"{result['repeats']}.  1 rank is one process without MPI.", highlight=False, soft_wrap=True)
    _warn(result["warnings"])


# -------------------------------------------------------------------------------------- timeline
@command(app, "timeline")
def scale_timeline(
    path: Annotated[str, typer.Argument(metavar="FILE", help="A chrome-trace JSON written by dlcpu train --dist "
                                                             "--timeline.", show_default=False)],
    skip: Annotated[int, typer.Option("--skip", min=0, max=1_000_000, help="Leading steps to leave out (warm-up).")] = 1,
    as_json: JsonFlag = False,
):
    """Per rank: median step, compute, allreduce in flight and exposed communication of a timeline."""
    from .. import distributed

    rows = distributed.summarize_timeline(path, skip=skip)
    if as_json:
        emit_json({"timeline": path, "ranks": rows})
        return
    t = Table(title=f"timeline {path}: medians over steps (the first {skip} left out)")
    for col in ("rank", "steps", "step ms", "compute ms", "allreduce in flight ms", "exposed ms", "exposed % of step",
                "exposed % of allreduce"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["rank"]), str(r["steps"]), f"{1e3 * r['step_seconds']:.2f}", f"{1e3 * r['compute_seconds']:.2f}",
                  f"{1e3 * r['comm_seconds']:.2f}", f"{1e3 * r['exposed_seconds']:.2f}",
                  f"{100 * r['exposed_share']:.1f}%", f"{100 * r['exposed_of_comm']:.0f}%")
    out.print(t)
    out.print("allreduce in flight: the union of the fusion buckets' spans, from each start (during backward) to its "
              "observed completion; exposed: the wait after backward for the buckets still in flight.",
              highlight=False, soft_wrap=True)
