"""`dlcpu bench {peak,conv,gemm,lstm,train}`: the library's benchmark harness (dlcpu.benchmarks),
rendered as tables or JSON.  No timing logic here: every number comes from dlcpu.benchmarks."""
import functools
from typing import Annotated

import typer
from rich.table import Table

from .. import bench_models, benchmarks, cpu, workloads
from ..conv import winograd_applies
from ..precision import native_formats
from ._output import JsonFlag, ThreadList, bad_option, command, emit_json, err, group, out, parse_choices, parse_threads, progress

app = group("Benchmarks against the machine's peak and a peer library.")
train_app = group("Training throughput against PyTorch.")
app.add_typer(train_app, name="train")
infer_app = group("Inference throughput against PyTorch.")
app.add_typer(infer_app, name="infer")

ALGORITHMS = ("direct", "winograd2", "winograd4")
#: shortest --seconds for `bench peak`: below it, the probe's start-up dominates the timing
MIN_PEAK_SECONDS = benchmarks.MIN_PEAK_SECONDS
#: longest --seconds (typer refuses inf and larger values with exit 2)
MAX_PEAK_SECONDS = benchmarks.MAX_PEAK_SECONDS

Compare = Annotated[str | None, typer.Option("--compare", metavar="<peer>", help="Peer library to time in the same run: torch.")]
ModelPrecision = Annotated[str, typer.Option(
    "--precision", metavar="<format>",
    help="fp32, or bf16: dlcpu's Module.set_precision against PyTorch's autocast, with dlcpu's fp32 step timed in "
         "the same rounds for the speedup.")]
Repeats = Annotated[int, typer.Option("--repeats", min=1, max=1000,
                                      help="Timed repeats per measurement (the median is reported).")]


def _compare(value):
    if value not in (None, "torch"):
        raise bad_option("--compare", f"must be 'torch', got {value!r}")
    return value


def _by_name(items, name_filter, option, what):
    """Items whose name contains one of the comma list's keys; none is a bad option value."""
    if not name_filter:
        return items
    keys = [k.strip() for k in name_filter.split(",") if k.strip()]
    chosen = [i for i in items if any(k in i.name for k in keys)]
    if not chosen:
        raise bad_option(option, f"{name_filter!r} matches no {what}")
    return chosen


def _each_with_progress(items, what, n_threads, measure):
    """[measure(item) for item in items] (layers or grid rows, each with a .name; measure a
    functools.partial holding the run's settings), with a progress bar on stderr."""
    results = []
    with progress() as bar:
        task = bar.add_task(f"{what}, {n_threads} thread(s)", total=len(items))
        for item in items:
            bar.update(task, description=f"{what} {item.name} ({n_threads}T)")
            results.append(measure(item))
            bar.advance(task)
    return results


# ------------------------------------------------------------------------------------------ peak
@command(app, "peak")
def bench_peak(
    threads: Annotated[str | None, typer.Option("--threads", metavar="<list>",
                                                help="Comma list of thread counts (default: 1 up to all cores).")] = None,
    seconds: Annotated[float, typer.Option("--seconds", min=MIN_PEAK_SECONDS, max=MAX_PEAK_SECONDS,
                                           help="Seconds per measurement (best of 5 is reported).")] = 0.25,
    as_json: JsonFlag = False,
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
        try:
            layers = [workloads.parse_conv_descriptor(d) for d in layer_descs]
        except ValueError as exc:
            raise bad_option("--layer", str(exc)) from None
    else:
        layers = workloads.resnet50_layers()
    return _by_name(layers, name_filter, "--layers", "layer")


def _check_layer_sizes(selected, batch, counts, from_descriptors, compare, check, command="bench conv"):
    """Before any timing: every layer's geometry and memory at every run's minibatch
    (benchmarks.conv_layer_shape).  A layer that cannot run is a bad option value (exit 2), as
    an unparseable --layer is: the fault is --batch when the layer runs at minibatch 1, else
    --layer (or --threads, the default minibatch, for the built-in table)."""
    for n_threads in counts:
        mb = batch or n_threads
        for l in selected:
            run_layer = l.without_batch() if batch else l
            try:
                benchmarks.conv_layer_shape(run_layer, mb, compare=compare, check=check, command=command)
            except ValueError as exc:
                option = "--layer" if from_descriptors else "--threads"
                if batch:
                    try:
                        benchmarks.conv_layer_shape(run_layer, 1, compare=compare, check=check)
                        option = "--batch"
                    except ValueError:
                        pass
                raise bad_option(option, str(exc)) from None


@command(app, "conv")
def bench_conv(
    layer: Annotated[list[str] | None, typer.Option(
        "--layer", metavar="<descriptor>",
        help="benchdnn-style descriptor, e.g. mb4ic64ih56oc64oh56kh3ph1 (repeatable). Default: the ResNet-50 v1.5 table.")] = None,
    layers: Annotated[str | None, typer.Option(
        "--layers", metavar="<names>", help="Only layers whose name contains one of these (comma list).")] = None,
    batch: Annotated[int | None, typer.Option(
        "--batch", min=1, help="Minibatch (default: the thread count; a descriptor's mb wins unless --batch is given).")] = None,
    threads: ThreadList = None,
    passes: Annotated[str, typer.Option(
        "--pass", metavar="<list>", help="Comma list of passes: fwd, bwd_d (input gradient), bwd_w (weight gradient).")] = "fwd",
    algs: Annotated[str, typer.Option(
        "--alg", metavar="<list>", help="Comma list of forward algorithms: direct, winograd2, winograd4 (3x3 stride-1 layers only).")] = "direct",
    compare: Compare = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Verify every layer against the float64 reference (bounds: dlcpu._tolerances); exit 1 if one fails.")] = False,
    show_plan: Annotated[bool, typer.Option("--show-plan", help="Print each layer's blocking plan.")] = False,
    precision: Annotated[str, typer.Option(
        "--precision", metavar="<formats>",
        help="Comma list of formats: fp32, bf16, dfp16 (mixed-precision training: x in the format, dy and the fp32 "
        "weights converted in the timed call; the direct algorithm). The bf16 peer runs on bf16 tensors.")] = "fp32",
    repeats: Repeats = 7,
    as_json: JsonFlag = False,
):
    """Convolution GFLOP/s per layer and pass, % of measured peak, peer and ratio."""
    compare = _compare(compare)
    directions = parse_choices(passes, benchmarks.PASSES, "--pass")
    algorithms = parse_choices(algs, ALGORITHMS, "--alg")
    precisions = parse_choices(precision, benchmarks.CONV_PRECISIONS, "--precision")
    if precisions != ["fp32"] and algorithms != ["direct"]:
        raise bad_option("--alg", f"the bf16 and DFP-16 convolutions run the direct algorithm only, got {algs!r}")
    if "dfp16" in precisions and check:
        raise bad_option("--check", "DFP-16 quantizes dy and each stride phase's weights per call; its error "
                         "against float64 is in `dlcpu bench precision`")
    selected = _select_layers(layer, layers)
    counts = parse_threads(threads)
    _check_layer_sizes(selected, batch, counts, bool(layer), compare, check)
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
        for direction, algorithm, fmt in [(d, a, p) for d in directions for a in (algorithms if d == "fwd" else ["direct"])
                                          for p in precisions]:
            layers_run = selected_run
            if algorithm != "direct":  # Winograd covers 3x3 stride-1 layers only
                layers_run = [l for l in selected_run if winograd_applies(l.shape(mb))]
                if not layers_run:
                    continue
            results = _each_with_progress(layers_run, f"conv {direction} {algorithm}", n_threads, functools.partial(
                benchmarks.bench_conv_layer, batch=mb, n_threads=n_threads, peak_gflops=peak["gflops"],
                direction=direction, algorithm=algorithm, compare=compare, check=check, repeats=repeats,
                precision=fmt))
            total = benchmarks.conv_totals(results)
            any_failed |= any(r.check and not r.check["passed"] for r in results)
            runs.append({"threads": n_threads, "batch": mb, "isa": isa, "pass": direction,
                         "algorithm": algorithm, "precision": fmt, "peak_gflops": peak["gflops"],
                         "format_peak_gflops": peak["gflops"] * benchmarks.peak_factor(fmt),
                         "layers": [r.__dict__ for r in results], "total": total})
            if not as_json:
                _render_conv(runs[-1], compare, check, show_plan)
    if as_json:
        emit_json({"flop_convention": benchmarks.FLOP_CONVENTION, "dtype": "f32" if precisions == ["fp32"] else
                   ",".join(precisions), "precisions": precisions, "timed_region": benchmarks.CONV_TIMED_REGION,
                   "timed_path": "blocked in, blocked out (no layout conversion)", "runs": runs})
    if any_failed:
        raise typer.Exit(1)


def _render_conv(run, compare, check, show_plan):
    alg = "" if run["algorithm"] == "direct" else f" {run['algorithm']}"
    fmt = {"fp32": "f32"}.get(run["precision"], run["precision"])
    t = Table(title=f"conv {run['pass']}{alg} {fmt} | {run['threads']} thread(s), batch {run['batch']}, isa {run['isa']}, "
                    f"peak {run['format_peak_gflops']:.0f} GFLOP/s")
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
           f"{tot['gflops']:.1f}", f"{100 * tot['gflops'] / run['format_peak_gflops']:.1f}"]
    if compare:
        row += [f"{tot.get('peer_gflops', 0):.1f}", "", f"{tot.get('ratio', 0):.2f}"]
    if check:
        row.append("")
    t.add_row(*row, style="bold")
    out.print(t)
    peer_format = {"bf16": " on bf16 tensors", "dfp16": " in fp32 (PyTorch has no DFP-16)"}.get(run["precision"], "")
    out.print(f"ratio = peer time / dlcpu time (>1: dlcpu faster). FLOPs: {benchmarks.FLOP_CONVENTION}. "
              f"dlcpu timed blocked-in/blocked-out; the peer{peer_format} in the faster of NCHW and channels_last."
              + (" x in the format, dy and the fp32 weights converted in the timed call; % peak of the format's "
                 "dot-product peak." if run["precision"] != "fp32" else ""), highlight=False)
    if show_plan:
        tc = cpu.TILE_CONSTANTS
        out.print(f"plans ({run['pass']}{alg}); register budgets from pyx/kernels/tiles.h: "
                  + ", ".join(f"{isa} {n} accumulators" for isa, n in tc["max_acc"].items())
                  + f"; tiles up to mv={tc['br_max_mv']} x nr={tc['br_max_nr']} x nc={tc['br_max_nc']} "
                  f"(transposed nc={tc['brt_max_nc']})", highlight=False)
        for r in run["layers"]:
            out.print(f"[bold]{r['name']}[/] {r['descriptor']}", highlight=False)
            out.print("  " + r["plan"].replace("\n", "\n  "), highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------- precision
@command(app, "precision")
def bench_precision(
    layers: Annotated[str | None, typer.Option(
        "--layers", metavar="<names>", help="Only ResNet-50 layers whose name contains one of these (comma list).")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Minibatch of the convolutions.")] = 4,
    threads: ThreadList = None,
    formats: Annotated[str, typer.Option(
        "--formats", metavar="<list>",
        help=f"Comma list of formats: {', '.join(benchmarks.PRECISION_FORMATS)} (ternary has its own "
        "timing: docs/performance.md).")]
        = ",".join(benchmarks.PRECISION_FORMATS),
    gemm: Annotated[int, typer.Option("--gemm", min=0, max=16384,
                                      help="Size of the square GEMM also timed (0: none).")] = 1024,
    compare: Compare = None,
    repeats: Repeats = 5,
    as_json: JsonFlag = False,
):
    """The ResNet-50 convolutions and a GEMM in every format, one run: GFLOP/s (GOP/s for the
    integer formats), speedup over fp32, error against float64, and PyTorch's bf16 convolution
    and int8 quantized convolution as the peers.  int8 activations are as wide as the peer's: 8
    bits, or 7 on a CPU without avx512_vnni (PyTorch's reduce_range)."""
    compare = _compare(compare)
    fmts = parse_choices(formats, benchmarks.PRECISION_FORMATS, "--formats")
    selected = [l.without_batch() for l in _by_name(workloads.resnet50_layers(), layers, "--layers", "layer")]
    counts = parse_threads(threads)
    _check_layer_sizes(selected, batch, counts, False, compare, False, "bench precision")
    isa = cpu.resolve_isa()
    runs = []
    for n_threads in counts:
        peak = benchmarks.measure_peak(n_threads, seconds=0.1, repeats=3)
        results = _each_with_progress(selected, "precision", n_threads, functools.partial(
            benchmarks.bench_precision_layer, batch=batch, n_threads=n_threads, peak_gflops=peak["gflops"],
            formats=fmts, compare=compare, repeats=repeats))
        run = {"threads": n_threads, "batch": batch, "isa": isa, "peak_gflops": peak["gflops"],
               "native": native_formats(), "int8_activation_bits": benchmarks.int8_activation_bits(),
               "layers": results, "total": benchmarks.precision_totals(results, fmts)}
        if gemm:
            with err.status(f"gemm {gemm}^3, {n_threads} thread(s)"):
                run["gemm"] = benchmarks.bench_precision_gemm(gemm, n_threads, peak["gflops"], formats=fmts,
                                                              compare=compare, repeats=repeats)
        runs.append(run)
        if not as_json:
            _render_precision(run, fmts, compare)
    if as_json:
        emit_json({"flop_convention": benchmarks.FLOP_CONVENTION,
                   "peak_factor": {f: benchmarks.peak_factor(f) for f in fmts},
                   "timed_path": "blocked activations in the format (arriving so from the layer before; "
                                 "the conversion of a bf16 or dfp16 input is not timed), weights converted once; "
                                 "output fp32, int8's u8 (requantized in the epilogue with a calibrated scale); "
                                 "GEMM: the right operand packed once, the fp32 left one converted inside every "
                                 "call (PyTorch's bf16 matmul too: its right operand cast once, its left one "
                                 "in the call)",
                   "runs": runs})


def _render_precision(run, fmts, compare):
    t = Table(title=f"conv fwd by format | {run['threads']} thread(s), batch {run['batch']}, isa {run['isa']}, "
                    f"fp32 peak {run['peak_gflops']:.0f} GFLOP/s"
                    + (f", int8 activations {run['int8_activation_bits']}-bit" if "int8" in fmts else ""))
    t.add_column("layer", justify="left")
    t.add_column("x", justify="right")
    peered = [f for f in benchmarks.PEER_FORMATS if f in fmts] if compare else []
    for f in fmts:
        t.add_column(f"{f} G/s", justify="right")
        t.add_column(f"{f} err", justify="right")
    for f in fmts:
        if f != "fp32" and "fp32" in fmts:
            t.add_column(f"{f}/fp32", justify="right")
    for f in peered:
        t.add_column(f"torch {f} G/s", justify="right")
        t.add_column(f"{f}/torch", justify="right")

    def cells(gflops, errs, peers, secs):
        row = []
        for f in fmts:
            row += [f"{gflops[f]:.1f}", errs[f] if isinstance(errs[f], str) else f"{errs[f]:.1e}"]
        row += [f"{secs['fp32'] / secs[f]:.2f}" for f in fmts if f != "fp32" and "fp32" in fmts]
        for f in peered:
            row += [f"{peers[f]['gflops']:.1f}", f"{peers[f]['seconds'] / secs[f]:.2f}"] if f in peers else ["", ""]
        return row

    for r in run["layers"]:
        fr = r["formats"]
        peers = {f: {"gflops": p["gflops"], "seconds": p["seconds"]["median_s"]} for f, p in r.get("peers", {}).items()}
        t.add_row(r["name"], str(r["count"]), *cells(
            {f: fr[f]["gflops"] for f in fmts}, {f: fr[f]["rel_l2"] for f in fmts}, peers,
            {f: fr[f]["seconds"]["median_s"] for f in fmts}))
    tot = run["total"]
    tf = tot["formats"]
    t.add_row("total (count-weighted)", "", *cells(
        {f: tf[f]["gflops"] for f in fmts}, {f: "" for f in fmts}, tot.get("peers", {}),
        {f: tf[f]["seconds"] for f in fmts}), style="bold")
    out.print(t)
    if "gemm" in run:
        g = run["gemm"]
        line = ", ".join(f"{f} {g['formats'][f]['gflops']:.1f} G/s ({g['formats'][f]['pct_peak']:.0f}% of its peak, "
                         f"rel err {g['formats'][f]['rel_l2']:.1e})" for f in fmts)
        if "peer" in g:
            line += f"; torch bf16 {g['peer']['gflops']:.1f} GFLOP/s (rel err {g['peer']['rel_l2']:.1e})"
        out.print(f"GEMM {g['size']}^3: {line}", highlight=False)
    out.print("G/s: GFLOP/s, or GOP/s for the integer formats (2 per multiply-add). Speedups and ratios are time "
              "ratios within this run (>1: the named format / dlcpu faster). err: relative L2 against float64 on "
              "the fp32 inputs (first image). Peaks per instruction: bf16 and dfp16 2x, int8 4x the fp32 FMA peak "
              "(1x emulated). fp32: the direct algorithm. dlcpu bf16 reads bf16 activations and writes fp32; "
              "dfp16 reads int16 mantissas and writes fp32 (the conversions of bf16 and dfp16 inputs are "
              "passes of their own, not timed); int8 reads u8 and writes u8 (requantized in the epilogue, "
              "calibrated scale), as PyTorch's int8 does. "
              + ("GEMM: the right operand packed once; the fp32 left one converted inside every call, on both "
                 "sides (PyTorch casts it to bf16 in its call). " if "gemm" in run else "")
              + "Kernel paths: "
              + "; ".join(f"{k} {v or 'no kernel yet'}" for k, v in run["native"].items()), highlight=False)


# ------------------------------------------------------------------------------------------ gemm
@command(app, "gemm")
def bench_gemm(
    size: Annotated[int, typer.Option("--size", min=1, help="Matrix size: m = n = k.")] = 2048,
    threads: ThreadList = None,
    compare: Annotated[bool, typer.Option("--compare/--no-compare", help="Time numpy.matmul in the same run.")] = True,
    repeats: Repeats = 5,
    as_json: JsonFlag = False,
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
@command(app, "lstm")
def bench_lstm(
    cell: Annotated[str, typer.Option("--cell", metavar="<cell>", help="Recurrent cell: lstm, gru or rnn (tanh).")] = "lstm",
    layers: Annotated[str | None, typer.Option(
        "--layers", metavar="<names>", help="Only grid rows whose name contains one of these (comma list).")] = None,
    threads: ThreadList = None,
    compare: Compare = None,
    repeats: Repeats = 5,
    precision: Annotated[str, typer.Option(
        "--precision", metavar="<formats>",
        help="Comma list of number formats to time in the same run, each on its own copy of the layer: fp32, "
             "bf16, dfp16 (inference and training step), int8 (inference). The first training format fills the "
             "main table; every format gets its speed-up over fp32 and, with --compare torch, PyTorch's same "
             "format (fp32; bf16 under autocast; int8 quantize_dynamic; none for dfp16).",
    )] = "fp32",
    as_json: JsonFlag = False,
):
    """nn.LSTM/GRU/RNN inference and training step (with SGD) over the LSTM grid, module against
    torch.nn.LSTM/GRU/RNN."""
    compare = _compare(compare)
    if cell not in benchmarks.RNN_CELLS:
        raise bad_option("--cell", f"must be one of {', '.join(benchmarks.RNN_CELLS)}, got {cell!r}")
    precisions = _recurrent_precisions(precision)
    grid = _by_name(workloads.lstm_layers(), layers, "--layers", "row of the LSTM grid")
    counts = parse_threads(threads)
    runs = []
    for n_threads in counts:
        peak = benchmarks.measure_peak(n_threads, seconds=0.1, repeats=3)
        rows = _each_with_progress(grid, cell, n_threads, functools.partial(
            benchmarks.bench_lstm_layer, n_threads=n_threads, peak_gflops=peak["gflops"], cell=cell,
            compare=compare, repeats=repeats, precisions=precisions))
        run = {"threads": n_threads, "cell": cell, "peak_gflops": peak["gflops"], "precisions": list(precisions),
               "rows": rows}
        if compare:
            run["geomean_ratio"] = {k: benchmarks.geomean([r[k]["peer"]["ratio"] for r in rows])
                                    for k in ("infer", "train")}
        runs.append(run)
        if not as_json:
            _render_lstm(run, compare)
    if as_json:
        emit_json({"lstm": runs})


def _recurrent_precisions(value):
    """--precision of bench lstm: distinct formats, a training one first (it fills the main table)."""
    from ..rnn import TRAINING_PRECISIONS

    timed = TRAINING_PRECISIONS + ("int8",)       # ternary: rnn.lstm_forward(precision='ternary') by hand
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    bad = [v for v in names if v not in timed]
    if not names or bad:
        raise bad_option("--precision", f"must be a comma list of {', '.join(timed)}, got {value!r}")
    names = list(dict.fromkeys(names))
    training = [v for v in names if v in TRAINING_PRECISIONS]
    if not training:
        raise bad_option("--precision", f"int8 times inference only; list a training format "
                                        f"({', '.join(TRAINING_PRECISIONS)}) with it")
    return tuple([training[0]] + [v for v in names if v != training[0]])


def _render_lstm_precisions(run):
    t = Table(title=f"number formats | {run['threads']} thread(s): GFLOP/s (speed-up over fp32 in the same run)"
                    "; PyTorch's same format: GFLOP/s, ratio = its time / ours")
    for col in ["row"] + [f"{p} {kind}" for p in run["precisions"] for kind in ("infer", "train")]:
        t.add_column(col, justify="left" if col == "row" else "right")
    for r in run["rows"]:
        cells = [r["name"]]
        for p in run["precisions"]:
            for kind in ("infer", "train"):
                e = r["precisions"][p].get(kind)
                text = "-" if e is None else f"{e['gflops']:.1f}" + (f" ({e['vs_fp32']:.2f}x)" if "vs_fp32" in e else "")
                if e is not None and "peer" in e:
                    text += f"; torch {e['peer']['gflops']:.1f}, ratio {e['peer']['ratio']:.2f}"
                cells.append(text)
        t.add_row(*cells)
    out.print(t)


def _render_lstm(run, compare):
    cell, rows = run["cell"], run["rows"]
    gates = benchmarks.RNN_CELLS[cell]
    t = Table(title=f"nn.{cell.upper()} {run['precisions'][0]} | {run['threads']} thread(s), peak "
                    f"{run['peak_gflops']:.0f} GFLOP/s "
                    f"(forward FLOPs 2*T*N*{gates}K*(C+K); training step 3x that)")
    cols = ["row", "N", "C", "K", "T", "infer GFLOP/s", "% peak"]
    if compare:
        cols += ["torch infer", "ratio"]
    cols += ["train GFLOP/s", "% peak"]
    if compare:
        cols += ["torch train", "ratio"]
    for col in cols:
        t.add_column(col, justify="left" if col == "row" else "right")
    for r in rows:
        cells = [r["name"], str(r["N"]), str(r["C"]), str(r["K"]), str(r["T"])]
        for kind in ("infer", "train"):
            cells += [f"{r[kind]['gflops']:.1f}", f"{r[kind]['pct_peak']:.1f}"]
            if compare:
                cells += [f"{r[kind]['peer']['gflops']:.1f}", f"{r[kind]['peer']['ratio']:.2f}"]
        t.add_row(*cells)
    if compare:
        gm = run["geomean_ratio"]
        t.add_row("geometric mean", "", "", "", "", "", "", "", f"{gm['infer']:.2f}", "", "", "",
                  f"{gm['train']:.2f}", style="bold")
    out.print(t)
    if len(run["precisions"]) > 1:
        _render_lstm_precisions(run)
    out.print(f"timed: {benchmarks.LSTM_TIMED_REGION}.", highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------- train
@command(train_app, "digits")
def bench_train_digits(
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Timed epochs per framework (median reported).")] = 3,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per training step.")] = 64,
    threads: ThreadList = None,
    precision: Annotated[str, typer.Option(
        "--precision", metavar="<format>",
        help="fp32, bf16 or dfp16: dlcpu's Module.set_precision, with its fp32 model timed in the same rounds for the "
             "speed-up; PyTorch runs bf16 under autocast (dfp16, which it lacks: fp32).")] = "fp32",
    as_json: JsonFlag = False,
):
    """Training images/s of the digits CNN: dlcpu vs the same model in PyTorch, same data and run."""
    precision = _model_precision(precision)
    rows = []
    for n_threads in parse_threads(threads):
        with err.status(f"training throughput, {n_threads} thread(s)"):
            rows.append(benchmarks.bench_train_digits(epochs, batch, n_threads, precision=precision))
    if as_json:
        emit_json({"train_digits": rows})
        return
    t = Table(title=f"digits CNN training throughput, {precision} (batch {batch}, forward+backward+SGD, median of "
                    f"{epochs} epochs)")
    cols = ["threads", f"dlcpu {precision} img/s"] + (["dlcpu fp32 img/s", f"{precision}/fp32"]
                                                       if precision != "fp32" else [])
    for col in cols + [rows[0]["peer"]["name"] + " img/s", "ratio"]:
        t.add_column(col, justify="right")
    for r in rows:
        cells = [str(r["threads"]), f"{r['images_per_second']:.0f}"]
        if "fp32" in r:
            cells += [f"{r['fp32']['images_per_second']:.0f}", f"{r['fp32']['speedup']:.2f}"]
        t.add_row(*cells, f"{r['peer']['images_per_second']:.0f}", f"{r['peer']['ratio']:.2f}")
    out.print(t)
    out.print("ratio = dlcpu images/s / torch images/s (>1: dlcpu faster)", highlight=False)


Batch = Annotated[int, typer.Option("--batch", min=1, max=4096, help="Images per step.")]
Image = Annotated[int, typer.Option("--image", min=32, max=1024, help="Image height and width (square).")]


@command(train_app, "resnet50")
def bench_train_resnet50(
    batch: Batch = 4,
    image: Image = 224,
    threads: ThreadList = None,
    compare: Compare = None,
    repeats: Repeats = 5,
    breakdown: Annotated[bool, typer.Option("--breakdown", help="Time per layer kind, both sides (torch.profiler "
                                                                "for the peer).")] = False,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Measure each side's peak RSS in a fresh "
                                                                      "process.")] = True,
    precision: ModelPrecision = "fp32",
    as_json: JsonFlag = False,
):
    """ResNet-50 v1.5 training steps (forward, loss, backward, SGD with momentum) in images/s, against
    the same model in PyTorch (channels_last), with FLOPs, % of peak and peak memory."""
    compare = _compare(compare)
    precision = _model_precision(precision)
    final = bench_models.resnet_final_size(image)
    if batch * final * final < 2:
        raise bad_option("--batch", f"at --image {image} the last stage is {final}x{final}, so batch norm in training "
                                    f"needs --batch >= 2, got {batch}")
    def measure(n_threads, peak, _):
        return bench_models.bench_train_resnet50(batch, image, n_threads, peak, compare=compare, repeats=repeats,
                                                 breakdown=breakdown, memory=memory, precision=precision)

    _model_runs(threads, [None], measure, lambda n, _: f"ResNet-50 training, batch {batch}, {image}x{image}, {n} thread(s)",
                f"ResNet-50 training | batch {batch}, {image}x{image}", "train_resnet50", as_json)


@command(infer_app, "resnet50")
def bench_infer_resnet50(
    batch: Annotated[str, typer.Option("--batch", metavar="<list>", help="Comma list of batch sizes.")] = "1,4",
    image: Image = 224,
    threads: ThreadList = None,
    compare: Compare = None,
    repeats: Repeats = 5,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Measure each side's peak RSS in a fresh "
                                                                      "process.")] = True,
    precision: Annotated[str, typer.Option(
        "--precision", metavar="<format>",
        help="fp32; bf16: dlcpu's Module.set_precision against PyTorch's autocast; int8: nn.quantize's model "
             "(u8 activations between layers, calibrated on the images) against PyTorch's quantized one (PT2E "
             "compiled by inductor where torchao is installed, else FX); dlcpu's fp32 model timed in the same "
             "rounds for the speedup.")] = "fp32",
    as_json: JsonFlag = False,
):
    """ResNet-50 v1.5 eval-mode inference in images/s at each batch size, against the same model in
    PyTorch (channels_last, inference_mode), with each side's peak memory."""
    compare = _compare(compare)
    precision = _model_precision(precision, inference=True)
    batches = parse_threads(batch, option="--batch", maximum=4096)

    def measure(n_threads, peak, b):
        return bench_models.bench_infer_resnet50(b, image, n_threads, peak, compare=compare, repeats=repeats,
                                                 memory=memory, precision=precision)

    _model_runs(threads, batches, measure, lambda n, b: f"ResNet-50 inference, batch {b}, {image}x{image}, {n} thread(s)",
                f"ResNet-50 inference | {image}x{image}", "infer_resnet50", as_json)


@command(train_app, "gnmt")
def bench_train_gnmt(
    vocab: Annotated[int, typer.Option("--vocab", min=2, max=1_000_000, help="Vocabulary size.")] = 8192,
    hidden: Annotated[int, typer.Option("--hidden", min=2, max=8192, help="Hidden size (even).")] = 512,
    layers: Annotated[int, typer.Option("--layers", min=2, max=16, help="LSTM layers (the first bidirectional).")] = 4,
    seq: Annotated[int, typer.Option("--seq", min=1, max=10_000, help="Time steps T.")] = 25,
    batch: Annotated[int, typer.Option("--batch", min=1, max=4096, help="Sequences per step N.")] = 32,
    threads: ThreadList = None,
    compare: Compare = None,
    repeats: Repeats = 5,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Measure each side's peak RSS in a fresh "
                                                                      "process.")] = True,
    as_json: JsonFlag = False,
):
    """Training tokens/s of the GNMT-style LSTM model (Embedding, a bidirectional then unidirectional
    LSTM layers, vocabulary cross-entropy in blocks), against its PyTorch twin."""
    compare = _compare(compare)
    if hidden % 2:
        raise bad_option("--hidden", f"must be even (hidden/2 units per direction in the first layer), got {hidden}")
    def measure(n_threads, peak, _):
        return bench_models.bench_train_gnmt(vocab, hidden, layers, seq, batch, n_threads, peak, compare=compare,
                                             repeats=repeats, memory=memory)

    what = f"GNMT training | {layers} LSTM layers of {hidden}, vocabulary {vocab}, T={seq}"
    _model_runs(threads, [None], measure, lambda n, _: f"{what}, {n} thread(s)", what, "train_gnmt", as_json)


def _model_precision(value, inference=False):
    """--precision of the whole-model benchmarks (digits, ResNet-50): a format Module.set_precision
    takes, or for inference int8 (nn.quantize)."""
    from ..nn import Conv2d

    allowed = Conv2d.PRECISIONS + (("int8",) if inference else ())
    if value not in allowed:
        raise bad_option("--precision", f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _model_runs(threads, cases, measure, status, title, key, as_json):
    """The loop every whole-model benchmark shares: per thread count, the machine's peak, then
    measure(n_threads, peak, case) for each case (a batch size, or None), each run rendered as
    it ends, or all of them as JSON under `key`."""
    runs = []
    for n_threads in parse_threads(threads):
        peak = bench_models.machine_peak(n_threads)
        for case in cases:
            with err.status(status(n_threads, case)):
                run = measure(n_threads, peak, case)
            run["peak_gflops"] = peak
            runs.append(run)
            if not as_json:
                _render_model_run(run, title)
    if as_json:
        emit_json({key: runs})


def _gib(n):
    return f"{n / 2**30:.2f} GiB"


def _render_model_run(run, title):
    rate, unit = (("tokens_per_second", "tokens/s") if "tokens_per_second" in run else ("images_per_second", "images/s"))
    precision = f", {run['precision']}" if run.get("precision", "fp32") != "fp32" else ""
    t = Table(title=f"{title}{precision} | batch {run['batch']}, {run['threads']} thread(s), {run['gflop_per_step']:.1f} "
                    f"GFLOP per step, peak {run['peak_gflops']:.0f} GFLOP/s")
    cols = ["side", unit, "ms/step", "GFLOP/s", "% peak"]
    mem = "memory" in run
    if mem:
        cols += ["peak RSS", "step memory"]
    for col in cols:
        t.add_column(col, justify="left" if col == "side" else "right")
    sides = ([(f"dlcpu {run['precision']}" if precision else "dlcpu", run)]
             + ([(run["peer"]["name"], run["peer"])] if "peer" in run else [])
             + ([("dlcpu fp32 (same rounds)", run["fp32"])] if "fp32" in run else []))
    for name, side in sides:
        cells = [name, f"{side[rate]:.2f}", f"{side['seconds']['median_s'] * 1e3:.1f}",
                 f"{side['gflops']:.1f}", f"{side['pct_peak']:.1f}"]
        if mem:
            m = side.get("memory")
            cells += [_gib(m["peak_rss_bytes"]), _gib(m["step_bytes"])] if m else ["", ""]
        t.add_row(*cells)
    out.print(t)
    if "peer" in run:
        line = f"ratio (dlcpu {unit} / torch {unit}): {run['peer']['ratio']:.2f}"
        if "memory_ratio" in run["peer"]:
            line += f"; step memory dlcpu / torch: {run['peer']['memory_ratio']:.2f}"
        out.print(line, highlight=False)
    if "fp32" in run:
        out.print(f"{run['precision']} / fp32 (dlcpu {unit}): {run['fp32']['speedup']:.2f}", highlight=False)
    if "error_vs_fp32" in run:
        out.print("logits error against the fp32 model (relative L2): " + ", ".join(
            f"{side} {e:.4f}" for side, e in run["error_vs_fp32"].items()), highlight=False)
    if "breakdown" in run:
        b = Table(title="time per step by layer kind (ms)")
        b.add_column("kind")
        b.add_column("dlcpu", justify="right")
        peer = run.get("peer", {}).get("breakdown")
        if peer:
            b.add_column("torch (profiler, self CPU)", justify="right")
        for kind in bench_models.KINDS:
            cells = [kind, f"{run['breakdown'][kind] * 1e3:.1f}"]
            if peer:
                cells.append(f"{peer[kind] * 1e3:.1f}")
            if any(c not in ("0.0",) for c in cells[1:]):
                b.add_row(*cells)
        out.print(b)
    out.print(f"timed: {run['timed_region']}.", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------- faults
@command(app, "faults")
def bench_faults(
    model_path: Annotated[str | None, typer.Option("--model", metavar="<file>",
                                                   help="A digits CNN saved by `dlcpu train digits` (default: train one "
                                                        "for 3 epochs first, outside the timed region).")] = None,
    compare: Annotated[str | None, typer.Option("--compare", metavar="<peer>",
                                                help="Peer to time in the same run: pytorchfi.")] = None,
    n: Annotated[int, typer.Option("--n", min=100, max=10_000_000, help="Injections of the activation campaign.")] = 20000,
    n_weights: Annotated[int, typer.Option("--n-weights", min=10, max=1_000_000,
                                           help="Injections of the weight campaign.")] = 1000,
    threads: ThreadList = "1,2",
    as_json: JsonFlag = False,
):
    """Fault-injection campaigns/s on the digits CNN: activation and weight campaigns, and PyTorchFI."""
    from .. import train

    if compare not in (None, "pytorchfi"):
        raise bad_option("--compare", f"must be 'pytorchfi', got {compare!r}")
    thread_counts = parse_threads(threads)
    if model_path is not None:        # a bad model file fails before the data is loaded
        model, inputs = train.digits_model(model_path)
        if inputs is not train.image_batch:
            raise ValueError(f"{model_path} is a recurrent model; bench faults runs on the digits CNN")
    data = train.load_digits_split(0)
    if model_path is None:
        with err.status("training a digits CNN for 3 epochs (not timed)"):
            model = train.train_digits(epochs=3, data=data).model.eval()
    rows = []
    for n_threads in thread_counts:
        with err.status(f"fault-injection campaigns, {n_threads} thread(s)"):
            rows += benchmarks.bench_faults(model, data, n_threads, n_activations=n, n_weights=n_weights, compare=compare)
    if as_json:
        emit_json({"faults": rows, "timed_region": benchmarks.FAULTS_TIMED_REGION})
        return
    t = Table(title="single-bit fault-injection campaigns on the digits CNN (sklearn digits test split)")
    for col in ("threads", "campaign", "framework", "injections", "injections/s", "dlcpu / peer", "SDC-1 %", "outcomes agree"):
        t.add_column(col, justify="left" if col in ("campaign", "framework") else "right")
    for r in rows:
        t.add_row(str(r["threads"]), r["campaign"], r["framework"], f"{r['injections']:,}", f"{r['per_second']:,.0f}",
                  f"{r['dlcpu_ratio']:.1f}" if "dlcpu_ratio" in r else "", f"{100 * r['sdc1_rate']:.2f}",
                  f"{100 * r['outcome_agreement']:.1f}%" if "outcome_agreement" in r else "")
    out.print(t)
    out.print(f"timed: {benchmarks.FAULTS_TIMED_REGION}.", highlight=False, soft_wrap=True)
    if compare:
        out.print("PyTorchFI 0.6.0's random_neuron_single_bit_inj fails (it calls a method it lacks) and its bit flip is "
                  "a fixed-point model; the peer runs declare_neuron_fi with an IEEE bit-flip function of ours on the "
                  "same faults.", highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------ activations
def _parse_sizes(text):
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise bad_option("--sizes", f"must be a comma list of element counts, got {text!r}") from None
    if not sizes or any(not 1 <= s <= 1 << 30 for s in sizes):
        raise bad_option("--sizes", f"element counts must be between 1 and {1 << 30}, got {text!r}")
    return sizes


def _parse_matrix(text):
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise bad_option("--softmax", f"must be ROWSxCLASSES such as 4096x1000, got {text!r}") from None
    if not (1 <= rows <= 1 << 20 and 1 <= cols <= 1 << 20 and rows * cols <= 1 << 28):
        raise bad_option("--softmax", f"rows and classes must be >= 1 with at most 2^28 elements, got {text!r}")
    return rows, cols


@command(app, "act")
def bench_act(
    accuracy: Annotated[bool, typer.Option("--accuracy", help="Instead of timing: errors of every flavour against "
                                           "float64 over every finite bf16 input and 10^7 fp32 inputs in [-9, 9].")] = False,
    sizes: Annotated[str, typer.Option("--sizes", metavar="<list>", help="Element counts to time (comma list).")] =
        ",".join(map(str, benchmarks.ACT_SIZES)),
    softmax: Annotated[str, typer.Option("--softmax", metavar="<rows x classes>", help="Logits matrix of the softmax rows, as 4096x1000.")] =
        "4096x1000",
    layers: Annotated[str | None, typer.Option(
        "--layers", metavar="<names>", help="LSTM grid rows to time (names containing one of these; 'none': skip).")] = None,
    threads: ThreadList = "1,2",
    compare: Compare = None,
    repeats: Repeats = 7,
    as_json: JsonFlag = False,
):
    """Activation approximations: K-TanH, fast and exact tanh, sigmoid, swish, GELU, Taylor softmax, LSTM flavours."""
    # every option is checked first: a bad value is exit 2 with --accuracy too, not silently ignored
    compare = _compare(compare)
    counts = parse_threads(threads)
    size_list = _parse_sizes(sizes)
    rows_cols = _parse_matrix(softmax)
    grid = [] if layers == "none" else _by_name(workloads.lstm_layers(), layers, "--layers", "row of the LSTM grid")
    if accuracy:
        _act_accuracy(as_json)
        return
    result = {"activations": [], "softmax": [], "lstm": [], "timed_region": {
        "activations": benchmarks.ACT_TIMED_REGION, "softmax": benchmarks.SOFTMAX_TIMED_REGION,
        "lstm": benchmarks.LSTM_ACT_TIMED_REGION}}
    with progress() as bar:
        task = bar.add_task("activations", total=len(counts) * (len(size_list) + 1 + len(grid)))
        for n_threads in counts:
            for n in size_list:
                bar.update(task, description=f"activations, {n:,} elements ({n_threads}T)")
                rows = benchmarks.bench_activations(n, n_threads, compare=compare, repeats=repeats)
                result["activations"].append({"elements": n, "threads": n_threads, "rows": rows,
                                              "ratios": benchmarks.activation_ratios(rows)})
                bar.advance(task)
            bar.update(task, description=f"softmax {rows_cols[0]}x{rows_cols[1]} ({n_threads}T)")
            result["softmax"] += benchmarks.bench_softmax(*rows_cols, n_threads, compare=compare, repeats=repeats)
            bar.advance(task)
            for g in grid:
                bar.update(task, description=f"lstm {g.name} ({n_threads}T)")
                result["lstm"].append(benchmarks.bench_lstm_flavours(g, n_threads, repeats=repeats))
                bar.advance(task)
    if as_json:
        emit_json(result)
        return
    _render_act(result)


def _render_act(result):
    for run in result["activations"]:
        t = Table(title=f"activations over {run['elements']:,} elements, {run['threads']} thread(s)")
        for col in ("function", "library", "dtype", "Gelem/s", "GB/s in+out"):
            t.add_column(col, justify="right" if col in ("Gelem/s", "GB/s in+out") else "left")
        for r in run["rows"]:
            width = 2 if r["dtype"] == "bf16" else 4
            t.add_row(r["name"], r["library"], r["dtype"], f"{r['elements_per_s'] / 1e9:.2f}",
                      f"{2 * width * r['elements_per_s'] / 1e9:.1f}")
        out.print(t)
        out.print("K-TanH bf16: " + ", ".join(f"{k.removeprefix('ktanh_bf16_vs_').replace('_', ' ')} {v:.2f}x"
                                             for k, v in run["ratios"].items()), highlight=False)
    if result["softmax"]:
        r0 = result["softmax"][0]
        t = Table(title=f"softmax rows of a {r0['rows']}x{r0['classes']} logits matrix")
        for col in ("threads", "kind", "library", "ms", "Gelem/s", "vs dlcpu softmax"):
            t.add_column(col, justify="left" if col in ("kind", "library") else "right")
        for r in result["softmax"]:
            t.add_row(str(r["threads"]), r["kind"], r["library"], f"{r['seconds']['median_s'] * 1e3:.3f}",
                      f"{r['elements_per_s'] / 1e9:.2f}", f"{r['speedup_vs_dlcpu_softmax']:.2f}x")
        out.print(t)
    if result["lstm"]:
        t = Table(title="LSTM forward by activation_impl (weights prepared once)")
        for col in ("threads", "row", "N", "C", "K", "T", "exact ms", "fast ms", "ktanh ms", "fast speedup",
                    "ktanh speedup"):
            t.add_column(col, justify="left" if col == "row" else "right")
        for r in result["lstm"]:
            t.add_row(str(r["threads"]), r["name"], str(r["N"]), str(r["C"]), str(r["K"]), str(r["T"]),
                      *(f"{r[i]['seconds']['median_s'] * 1e3:.2f}" for i in ("exact", "fast", "ktanh")),
                      f"{r['fast']['speedup_vs_exact']:.2f}x", f"{r['ktanh']['speedup_vs_exact']:.2f}x")
        out.print(t)
    tr = result["timed_region"]
    out.print(f"timed: activations: {tr['activations']}; softmax: {tr['softmax']}; lstm: {tr['lstm']}.",
              highlight=False, soft_wrap=True)


def _act_accuracy(as_json):
    from ..approx import accuracy

    with err.status("accuracy: every bf16 input and 10^7 fp32 inputs per function and flavour"):
        kt = accuracy.ktanh_bits_exhaustive()
        rows = accuracy.measure()
    if as_json:
        emit_json({"ktanh_bf16": kt, "functions": [r.as_dict() for r in rows]})
        return
    pub = kt["published"]
    out.print(f"K-TanH, bf16 in and out, all {kt['inputs']:,} inputs against float64 tanh: max abs error "
              f"{kt['max_abs']:.3g} (at x = {kt['worst_input']:g}; paper {pub['max_abs']:.3g}), mean abs error over "
              f"the {kt['points']} inputs in [0.25, 3.75] {kt['mean_abs_table_region']:.3g} (paper "
              f"{pub['mean_abs_table_region']:.3g}); NaN -> NaN {kt['nan_to_nan']}, +-Inf -> +-1 {kt['inf_to_pm1']}, "
              f"signed zeros kept {kt['signed_zeros_kept']}", highlight=False, soft_wrap=True)
    t = Table(title="activation flavours against float64 (fp32 in and out)")
    for col in ("function", "flavour", "bf16 inputs: max abs", "mean abs", "over", "fp32 sample: max abs", "mean abs",
                "points"):
        t.add_column(col, justify="left" if col in ("function", "flavour", "over") else "right")
    for r in rows:
        t.add_row(r.function, r.impl, accuracy.fmt(r.bf16_max_abs), accuracy.fmt(r.bf16_mean_abs),
                  f"{r.bf16_region} ({r.bf16_points:,})", accuracy.fmt(r.fp32_max_abs), accuracy.fmt(r.fp32_mean_abs),
                  f"{r.fp32_points:,}")
    out.print(t)
    out.print("bf16 inputs: every finite bf16 value; fp32 sample: every 217th fp32 bit pattern in [0, 9] and the "
              "negatives (every binade represented), max over all of them, mean over |x| >= 0.25.  swish has "
              "beta = 1; GELU is the tanh form.",
              highlight=False, soft_wrap=True)
