"""Benchmark harness behind `dlcpu bench ...` (and the asv-shaped suites in bench/).

Rules (DESIGN.md section 9): inputs are made and first-touched outside the timed region; each
timed function is warmed up; dlcpu and the peer are timed interleaved, repeat by repeat, in the
same process, so machine noise hits both; medians are reported (min kept too).  FLOPs: full taps
(2*N*K*P*Q*C*R*S, padding taps included), as LIBXSMM counts.
"""
import os
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from . import _peers, _tolerances, cpu, quantized, rnn
from ._peers import torch_threads
from ._validate import fits_in_memory
from .conv import conv2d, conv2d_backward, conv_shape, describe_plan, prepare_winograd
from .layout import CB, block_weights, block_weights_bf16, n_blocks, to_bf16_blocked, to_blocked
from .precision import KERNEL_FORMATS, native_bf16

FLOP_CONVENTION = "full taps: 2*N*K*P*Q*C*R*S (padding taps counted, as LIBXSMM)"


# Pause between timed calls of different libraries.  Each library's idle OpenMP/BLAS workers
# spin for a while after a parallel region and, on a 2-core machine, steal the cores from the
# next library's threads.  libgomp (ours, torch's) spins briefly: 20 ms is plenty.  OpenBLAS
# spins for about 2^28 cycles: measured, dlcpu.matmul at 2 threads ran at 244 / 280 / 435
# GFLOP/s when started 0 / 20 / 40 ms after a numpy.matmul, so the GEMM bench waits 150 ms.
SETTLE_SECONDS = 0.02
SETTLE_AFTER_OPENBLAS = 0.15


def time_interleaved(fns, repeats=7, warmup=2, settle=SETTLE_SECONDS, sample_seconds=0.02):
    """Time several callables round-robin; returns one list of per-call seconds per callable.

    One sample is a run of back-to-back calls lasting about `sample_seconds` (the per-call mean
    is recorded), so a 1 ms layer is measured in its steady state, threads awake and caches
    warm, as benchdnn does; the pause `settle` between samples of different libraries keeps one
    library's spinning workers off the other's cores.  With several callables each sample also
    starts with one untimed call: the first call after another library pays for that library's
    allocator churn (measured: after a torch LSTM training step, the next dlcpu training step
    took 41-50 ms instead of 25, 1000-2700 page faults and 16-27 ms of system time), which a
    training loop running one library never sees.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    inner = []
    for fn in fns:  # calibrate calls per sample
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        inner.append(max(1, min(1000, int(sample_seconds / one))))
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if len(fns) > 1:
                if settle:
                    time.sleep(settle)
                fn()
            t0 = time.perf_counter()
            for _ in range(inner[i]):
                fn()
            times[i].append((time.perf_counter() - t0) / inner[i])
    return times


def summarize(seconds):
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "repeats": len(seconds)}


# -------------------------------------------------------------------------------------- peak
#: shortest measurement `measure_peak` accepts: below it the probe's thread start-up dominates
#: (measured: --seconds 0 reported 0.3 GFLOP/s)
MIN_PEAK_SECONDS = 0.01
#: longest measurement `measure_peak` accepts (seconds=inf ran forever); 5 repeats of a minute
#: already take five minutes per thread count
MAX_PEAK_SECONDS = 60.0


def measure_peak(n_threads, isa=None, seconds=0.25, repeats=5):
    """Measured fp32 FMA peak (GFLOP/s) on n_threads threads: best of `repeats` runs of about
    `seconds` each (between MIN_PEAK_SECONDS and MAX_PEAK_SECONDS)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.integer, np.floating)):
        raise TypeError(f"measure_peak: seconds must be a number, got {seconds!r}")
    if not MIN_PEAK_SECONDS <= seconds <= MAX_PEAK_SECONDS:  # NaN and Inf fail this too
        raise ValueError(f"measure_peak: seconds must be between {MIN_PEAK_SECONDS} and {MAX_PEAK_SECONDS}, "
                         f"got {seconds}")
    if repeats < 1 or n_threads < 1:
        raise ValueError(f"measure_peak: need n_threads >= 1 and repeats >= 1, got {n_threads} and {repeats}")
    iters = 1 << 16
    while True:  # calibrate: a run of about `seconds`
        t0 = time.perf_counter()
        cpu.run_fma_probe(iters, n_threads, isa)
        dt = time.perf_counter() - t0
        if dt > seconds / 4 or iters > 1 << 34:
            break
        iters *= 4
    iters = max(1, int(iters * seconds / max(dt, 1e-9)))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        flops = cpu.run_fma_probe(iters, n_threads, isa)
        rates.append(flops / (time.perf_counter() - t0) / 1e9)
    return {"threads": n_threads, "gflops": max(rates), "median_gflops": statistics.median(rates),
            "per_thread_gflops": max(rates) / n_threads}


# -------------------------------------------------------------------------------------- conv
@dataclass
class ConvResult:
    name: str
    count: int
    descriptor: str
    gflop: float
    seconds: dict
    gflops: float
    pct_peak: float
    plan: str = ""
    peer: dict = field(default_factory=dict)
    check: dict = field(default_factory=dict)


PASSES = ("fwd", "bwd_d", "bwd_w")
#: what `bench conv` times, for its JSON
CONV_TIMED_REGION = ("dlcpu: one conv2d / conv2d_backward call, blocked in and out; bf16 / dfp16: x in the format "
                     "(converted once, as a layer's forward keeps it), the fp32 weights and dy converted inside the "
                     "call. Peer: one torch call in the faster of NCHW and channels_last; for bf16 the same region: x in "
                     "bf16 made once, the fp32 weights and dy cast to bf16 inside the timed call.")
#: the formats `bench conv --precision` times every pass in (the training formats: int8 has no
#: backward; its forward is in `bench precision`)
CONV_PRECISIONS = ("fp32", "bf16", "dfp16")


def bench_conv_layer(layer, batch, n_threads, peak_gflops, *, direction="fwd", algorithm="direct",
                     compare=None, check=False, repeats=7, warmup=2, isa=None, seed=0, precision="fp32"):
    """Time one convolution pass in the blocked path (and the peer, interleaved).

    direction: 'fwd' (y from x, w), 'bwd_d' (dx from dy, w) or 'bwd_w' (dW from x, dy).  Every
    pass does the same FLOPs as the forward.  Peers: torch conv2d, torch.nn.grad.conv2d_input,
    torch.nn.grad.conv2d_weight, each in the faster of NCHW and channels_last.

    precision 'bf16' / 'dfp16' (direct algorithm): each pass as a mixed-precision nn.Conv2d
    step calls it.  x arrives in the format (the layer's forward converts it once and keeps it
    for dW); fp32 dy and the fp32 master weights are converted inside the timed call.  % of
    peak is against the format's dot-product peak (peak_factor).  The bf16 peer runs
    PyTorch on bf16 tensors with the same timed region: bf16 x made once, the fp32 weights and dy
    cast inside (.to(bfloat16) is a no-op in fp32).  PyTorch has no DFP-16, so that peer is its
    fp32 pass."""
    if direction not in PASSES:
        raise ValueError(f"--pass must be among {', '.join(PASSES)}, got {direction!r}")
    if precision not in CONV_PRECISIONS:
        raise ValueError(f"--precision must be among {', '.join(CONV_PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and algorithm != "direct":
        raise ValueError(f"--precision {precision} runs the direct algorithm only, got --alg {algorithm}")
    if precision == "dfp16" and check:
        raise ValueError("--check compares with float64 on the operands' values, which a DFP-16 backward quantizes "
                         "per call (dy, each stride phase's weights); check DFP-16 with `dlcpu bench precision`")
    shape = conv_layer_shape(layer, batch, compare=compare, check=check)
    mb = shape.N
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (mb, layer.C, layer.H, layer.W)).astype(np.float32)
    w = rng.uniform(-1, 1, (layer.K, layer.C, layer.R, layer.S)).astype(np.float32)
    dy = rng.uniform(-1, 1, (mb, layer.K, shape.P, shape.Q)).astype(np.float32)
    xb, wb, dyb = to_blocked(x, n_threads), block_weights(w, n_threads), to_blocked(dy, n_threads)
    stride, pad = (layer.stride_h, layer.stride_w), (layer.pad_h, layer.pad_w)
    kw = {"n_threads": n_threads, "isa": isa}
    # x as a layer's forward hands it on (and keeps it for dW): in the format, converted once
    xin = {"fp32": lambda: xb, "bf16": lambda: to_bf16_blocked(xb, n_threads),
           "dfp16": lambda: quantized.to_dfp16_blocked(xb, n_threads=n_threads)}[precision]()
    if direction == "fwd" and precision != "fp32":
        out = conv2d(xin, wb, stride=stride, padding=pad, precision=precision, **kw)  # first touch

        def ours():
            conv2d(xin, wb, stride=stride, padding=pad, out=out, precision=precision, **kw)
    elif direction == "fwd":
        # Winograd weights are transformed once, outside the timed region (as a oneDNN user
        # creates the primitive once).
        wk = wb if algorithm == "direct" else prepare_winograd(wb, algorithm, n_threads=n_threads)
        out = conv2d(xb, wk, stride=stride, padding=pad, algorithm=algorithm, **kw)  # first touch

        def ours():
            conv2d(xb, wk, stride=stride, padding=pad, out=out, algorithm=algorithm, **kw)
    else:
        need = ("dx",) if direction == "bwd_d" else ("dw",)

        def ours():
            conv2d_backward(dyb, xin, wb, stride, pad, need=need, precision=precision, **kw)

    fns, peer_layouts, peer_name = [ours], [], ""
    torch = None
    if compare == "torch":
        torch = _peers.require_torch("--compare torch")
        peer_layouts = ["nchw", "channels_last"]
        # The same timed region as ours: x in the format (made once, as the layer's forward keeps
        # it), the fp32 weights and fp32 dy cast inside the call, as dlcpu converts them inside its
        # own.  (Under autocast, a backward gets bf16 dy and reuses the forward's bf16 weights.)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        for fmt in (torch.contiguous_format, torch.channels_last):
            xt = torch.from_numpy(x).to(dtype).contiguous(memory_format=fmt)
            wt = torch.from_numpy(w).contiguous(memory_format=fmt)
            dyt = torch.from_numpy(dy).contiguous(memory_format=fmt)
            if direction == "fwd":
                peer_name = "conv2d"
                fns.append(lambda xt=xt, wt=wt: torch.nn.functional.conv2d(xt, wt.to(dtype), stride=stride, padding=pad))
            elif direction == "bwd_d":
                peer_name = "nn.grad.conv2d_input"
                fns.append(lambda wt=wt, dyt=dyt: torch.nn.grad.conv2d_input(x.shape, wt.to(dtype), dyt.to(dtype),
                                                                             stride=stride, padding=pad))
            else:
                peer_name = "nn.grad.conv2d_weight"
                fns.append(lambda xt=xt, dyt=dyt: torch.nn.grad.conv2d_weight(xt, w.shape, dyt.to(dtype), stride=stride,
                                                                              padding=pad))
    flops = shape.flops()
    if torch is not None:
        with torch_threads(torch, n_threads), torch.inference_mode():
            times = time_interleaved(fns, repeats, warmup)
    else:
        times = time_interleaved(fns, repeats, warmup)
    ours_t = summarize(times[0])
    gflops = flops / ours_t["median_s"] / 1e9
    res = ConvResult(
        name=layer.name, count=layer.count, descriptor=layer.descriptor(mb), gflop=flops / 1e9,
        seconds=ours_t, gflops=gflops, pct_peak=100.0 * gflops / (peak_gflops * peak_factor(precision)),
        plan=_format_plan(shape, direction, isa, n_threads, algorithm, precision),
    )
    if peer_layouts:
        per_layout = {lay: summarize(t) for lay, t in zip(peer_layouts, times[1:])}
        best = min(per_layout, key=lambda k: per_layout[k]["median_s"])
        peer_s = per_layout[best]["median_s"]
        res.peer = {"name": f"torch {torch.__version__} {peer_name}" + (" bf16" if precision == "bf16" else ""),
                    "layout": best,
                    "seconds": per_layout[best], "gflops": flops / peer_s / 1e9,
                    "ratio": peer_s / ours_t["median_s"],
                    "gflops_by_layout": {k: flops / v["median_s"] / 1e9 for k, v in per_layout.items()}}
    if check:
        res.check = check_conv_layer(x, w, dy, stride, pad, direction, n_threads, isa, algorithm, precision)
    return res


def _format_plan(shape, direction, isa, n_threads, algorithm, precision):
    """What `--show-plan` prints for a pass in `precision`: the plan its kernels run (the fp32
    blocking, which the bf16 kernels share; the integer kernels' own AVX2 tile), or the pair
    weight update, which has no plan of its own."""
    if direction != "bwd_w":
        plan = describe_plan(shape, direction, isa, n_threads, algorithm, precision)
        return plan if precision == "fp32" else f"{precision} kernels with the blocking of:\n{plan}"
    plan = describe_plan(shape, direction, isa, n_threads, algorithm)
    if precision == "fp32":
        return plan
    from .conv import _pair_weight_update_pays

    if _pair_weight_update_pays(shape):
        return (f"{precision} pair weight update (pyx/conv_wu.pyx): dy in VNNI pixel pairs, x in channel-major copies "
                "per tap column and row phase, one chain per tap of up to 16 input channels x 2 output blocks")
    return f"fp32 weight-update kernels on the {precision} values (below the pair kernels' size):\n{plan}"


def conv_layer_shape(layer, batch, *, compare=None, check=False, command="bench conv"):
    """The ConvShape `bench_conv_layer` runs for `layer` at minibatch `batch`, after the checks
    that come before any allocation: the convolution's geometry (dlcpu.conv.conv_shape's rules)
    and the memory the benchmark's buffers need (dlcpu._validate.fits_in_memory): the float64
    random draws, the float32 x, w, dy, their blocked copies and the output, and with `compare`
    the peer's copies, with `check` the float64 reference.  ValueError names the layer."""
    fn = f"{command}, layer {layer.name} ({layer.descriptor(layer.shape(batch).N)})"
    shape = layer.shape(batch)
    try:
        conv_shape((shape.N, shape.C, shape.H, shape.W), (shape.K, shape.C, shape.R, shape.S),
                   (shape.stride_h, shape.stride_w), (shape.pad_h, shape.pad_w))
    except ValueError as exc:
        raise ValueError(f"{fn}: {exc}") from None
    n, c, k = shape.N, shape.C, shape.K
    x, w, dy = n * c * shape.H * shape.W, k * c * shape.R * shape.S, n * k * shape.P * shape.Q
    cp, kp = n_blocks(c) * CB, n_blocks(k) * CB
    blocked = n * cp * shape.H * shape.W + kp * cp * shape.R * shape.S + 2 * n * kp * shape.P * shape.Q
    n_bytes = 8 * max(x, w, dy) + 4 * (x + w + dy) + 4 * blocked
    if compare:
        n_bytes += 2 * 4 * (x + w + dy)      # the peer's NCHW and channels_last copies
    if check:
        n_bytes += 8 * (x + w + 2 * dy)      # the float64 reference and its result
    fits_in_memory(n_bytes, f"x {(n, c, shape.H, shape.W)}, w {(k, c, shape.R, shape.S)} and y "
                            f"{(n, k, shape.P, shape.Q)} with the benchmark's copies", fn)
    return shape


def check_conv_layer(x, w, dy, stride, pad, direction, n_threads, isa=None, algorithm="direct", precision="fp32"):
    """The pass against float64 on the values it multiplies (bf16: x, w and dy rounded to bf16,
    whose products fp32 holds exactly, so the fp32 bound applies)."""
    from . import _reference
    from .precision import round_to_bf16

    tolerance = _tolerances.conv_check_f32(algorithm)
    kw = {"n_threads": n_threads, "isa": isa, "precision": precision}
    if direction == "fwd":
        got = conv2d(x, w, stride=stride, padding=pad, algorithm=algorithm, **kw)
    else:
        g = conv2d_backward(dy, x, w, stride, pad, need=("dx",) if direction == "bwd_d" else ("dw",), **kw)
    if precision == "bf16":
        x, w, dy = round_to_bf16(x), round_to_bf16(w), round_to_bf16(dy)
    if direction == "fwd":
        want = _reference.conv2d_forward(x, w, None, stride, pad)
    else:
        dx, dw, _ = _reference.conv2d_backward(dy, x, w, stride, pad)
        got, want = (g.dx, dx) if direction == "bwd_d" else (g.dw, dw)
    err = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))
    return {"rel_l2": err, "tolerance": tolerance, "passed": bool(err <= tolerance)}


def conv_totals(results):
    """Count-weighted totals: the whole network's forward convolutions."""
    flops = sum(r.count * r.gflop for r in results)
    secs = sum(r.count * r.seconds["median_s"] for r in results)
    total = {"gflop": flops, "seconds": secs, "gflops": flops / secs if secs else 0.0}
    if results and all(r.peer for r in results):
        peer_secs = sum(r.count * r.peer["seconds"]["median_s"] for r in results)
        total["peer_seconds"] = peer_secs
        total["peer_gflops"] = flops / peer_secs
        total["ratio"] = peer_secs / secs
    return total


# -------------------------------------------------------------------------------------- gemm
def bench_gemm(m, n, k, n_threads, peak_gflops, *, compare_numpy=True, repeats=5, warmup=1, isa=None):
    """dlcpu.matmul (BRGEMM over packed operands, packing timed) vs numpy.matmul, interleaved."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from .gemm import matmul

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    y = rng.uniform(-1, 1, (k, n)).astype(np.float32)
    fns = [lambda: matmul(x, y, n_threads=n_threads, isa=isa)]
    if compare_numpy:
        fns.append(lambda: np.matmul(x, y))
    with threadpool_limits(limits=n_threads, user_api="blas"):
        times = time_interleaved(fns, repeats, warmup, settle=SETTLE_AFTER_OPENBLAS)
        blas = [
            {k: v for k, v in d.items() if k in ("internal_api", "version", "architecture", "num_threads")}
            for d in threadpool_info() if d.get("user_api") == "blas"
        ]
    flops = 2.0 * m * n * k
    ours = summarize(times[0])
    out = {"m": m, "n": n, "k": k, "threads": n_threads, "seconds": ours,
           "gflops": flops / ours["median_s"] / 1e9}
    out["pct_peak"] = 100.0 * out["gflops"] / peak_gflops
    if compare_numpy:
        peer = summarize(times[1])
        out["peer"] = {"name": f"numpy {np.__version__} matmul", "blas": blas, "seconds": peer,
                       "gflops": flops / peer["median_s"] / 1e9,
                       "ratio": peer["median_s"] / ours["median_s"]}
    err = float(np.abs(matmul(x[:64], y, n_threads=n_threads, isa=isa) - x[:64].astype(np.float64) @ y).max())
    out["check_max_abs_err_first64rows"] = err
    return out


# --------------------------------------------------------------------------------- precision
#: the formats `bench precision` times: those the convolution and GEMM kernels run so far
PRECISION_FORMATS = KERNEL_FORMATS
#: the formats with a PyTorch peer in `bench precision --compare torch`
PEER_FORMATS = ("bf16", "int8")


def peak_factor(fmt):
    """A format's dot-product peak as a multiple of the measured fp32 FMA peak, per instruction
    and lane: VDPBF16PS and VPDPWSSD do 2 multiply-adds where VFMADD231PS does 1, VPDPBUSD 4
    (papers.md §5; measured here: the four instructions issue at the same rate).  Emulated paths
    (no avx512_bf16 / avx512_vnni): 1."""
    isa = cpu.resolve_isa()
    if fmt == "bf16":
        return 2.0 if native_bf16(isa) else 1.0
    if fmt in quantized.INTEGER_FORMATS:
        return (4.0 if fmt == "int8" else 2.0) if quantized.native_vnni(isa) else 1.0
    return 1.0


def _precision_step(x, w, fmt, stride, pad, n_threads):
    """The forward step of a layer in `fmt`, as a network hands it its operands: blocked x in the
    format (fp32, bf16, DFP-16 int16 or u8, arriving so from the layer before), the weights
    converted once.  int8 writes u8 (requantized in the epilogue with an output scale calibrated
    beforehand: the next int8 layer's input), the others fp32.  bf16 and DFP-16 layers write
    fp32, so in a network their input conversion is a separate pass (not timed here; see
    docs/performance.md for the step with it)."""
    xb, wb = to_blocked(x, n_threads), block_weights(w, n_threads)
    kw = {"stride": stride, "padding": pad, "algorithm": "direct", "precision": fmt, "n_threads": n_threads}
    if fmt == "bf16":
        xb, wb = to_bf16_blocked(xb, n_threads), block_weights_bf16(wb, n_threads)
    if fmt == "int8":   # activations as wide as the peer's (int8_activation_bits)
        xq = quantized.to_int8_blocked(xb, bits=int8_activation_bits(), n_threads=n_threads)
        wq = quantized.block_weights_int8(wb, n_threads=n_threads)
    elif fmt in quantized.INTEGER_FORMATS:
        xq, wq = quantized.quantize_operands(fmt, xb, wb, None, n_threads=n_threads)
    if fmt in quantized.INTEGER_FORMATS:
        out = conv2d(xq, wq, **kw)
        if fmt == "int8":
            out_scale = float(np.abs(out.data).max()) / quantized.INT8_WEIGHT_MAX or 1.0
            out8 = conv2d(xq, wq, out_scale=out_scale, **kw)

            def step():
                conv2d(xq, wq, out_scale=out_scale, out=out8, **kw)
        else:
            def step():
                conv2d(xq, wq, out=out, **kw)
        return step
    out = conv2d(xb, wb, **kw)
    return lambda: conv2d(xb, wb, out=out, **kw)


def int8_peer_full_range():
    """Whether PyTorch's x86 int8 engine sums u8 x s8 products exactly on this CPU: with
    avx512_vnni (VPDPBUSD).  Without it, FBGEMM forms pairs of products in saturating int16
    (VPMADDUBSW; 2 * 255 * 127 > 32767) and PyTorch's docs ask for 7-bit activations
    (reduce_range), which the peer then gets: on an AVX2-only CPU, full-range codes put its error
    at 0.18 against float64 (res2a_branch2b, measured)."""
    return bool(cpu.features()["avx512_vnni"])


def int8_activation_bits():
    """The code width of `bench precision`'s int8 activations: the peer's, so both quantize
    alike -- 8 bits with avx512_vnni, 7 without (PyTorch's reduce_range there; dlcpu's AVX2
    kernels then pair products in VPMADDUBSW, quantized.u8_format)."""
    return 8 if int8_peer_full_range() else 7


def _torch_int8_conv(torch, x, w, stride, pad):
    """PyTorch's quantized convolution on its x86 engine (FBGEMM/oneDNN): the input quantized
    to quint8 once (a quantized network's layers hand u8 to each other), s8 weights per output
    channel, the output requantized to quint8, channels_last.  Returns (run, dequantized output
    of the first image)."""
    from torch.ao.nn.quantized import Conv2d

    torch.backends.quantized.engine = "x86"
    k = w.shape[0]
    s_w = np.maximum(np.abs(w).reshape(k, -1).max(axis=1), 1e-30) / 127
    conv = Conv2d(x.shape[1], k, w.shape[2:], stride=stride, padding=pad)
    qw = torch.quantize_per_channel(torch.from_numpy(w), torch.from_numpy(s_w.astype(np.float64)),
                                    torch.zeros(k, dtype=torch.long), 0, torch.qint8)
    conv.set_weight_bias(qw, None)
    absmax = float(np.abs(x).max()) or 1.0
    signed = bool((x < 0).any())
    s_x, z_x = (absmax / 127, 128) if signed else (absmax / 255, 0)
    if not int8_peer_full_range():      # 7-bit codes, its reduce_range rule for such CPUs
        s_x, z_x = (absmax / 63, 64) if signed else (absmax / 127, 0)
    with torch.inference_mode():
        probe = torch.nn.functional.conv2d(torch.from_numpy(x[:1]), torch.from_numpy(w), stride=stride, padding=pad)
        conv.scale, conv.zero_point = float(probe.abs().max()) / 127 or 1.0, 128
        xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        qx = torch.quantize_per_tensor(xt, s_x, z_x, torch.quint8)
        first = conv(torch.quantize_per_tensor(torch.from_numpy(x[:1]), s_x, z_x, torch.quint8)).dequantize().numpy()
    return (lambda: conv(qx)), first


def _relative_error(got, want):
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def bench_precision_layer(layer, batch, n_threads, peak_gflops, *, formats=PRECISION_FORMATS, compare=None,
                          repeats=7, warmup=2, seed=0):
    """One convolution forward in every format, interleaved (and, with `compare`, PyTorch's bf16
    convolution in channels_last and its int8 quantized convolution for those formats), plus
    each one's relative L2 error against the float64 convolution of the fp32 inputs on the
    first image.  Inputs are drawn from [-1, 1]."""
    from . import _reference

    shape = conv_layer_shape(layer, batch, compare=compare, command="bench precision")
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (shape.N, layer.C, layer.H, layer.W)).astype(np.float32)
    w = rng.uniform(-1, 1, (layer.K, layer.C, layer.R, layer.S)).astype(np.float32)
    stride, pad = (layer.stride_h, layer.stride_w), (layer.pad_h, layer.pad_w)
    fns = [_precision_step(x, w, fmt, stride, pad, n_threads) for fmt in formats]
    peers, peer_out = [], {}
    torch = None
    if compare == "torch":
        torch = _peers.require_torch("--compare torch")
        with torch_threads(torch, n_threads), torch.inference_mode():
            if "bf16" in formats:
                xt = torch.from_numpy(x).bfloat16().contiguous(memory_format=torch.channels_last)
                wt = torch.from_numpy(w).bfloat16().contiguous(memory_format=torch.channels_last)
                fns.append(lambda: torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad))
                peers.append(("bf16", f"torch {torch.__version__} conv2d bf16 channels_last"))
                peer_out["bf16"] = torch.nn.functional.conv2d(
                    torch.from_numpy(x[:1]).bfloat16(), torch.from_numpy(w).bfloat16(), stride=stride,
                    padding=pad).float().numpy()
            if "int8" in formats:
                run, peer_out["int8"] = _torch_int8_conv(torch, x, w, stride, pad)
                fns.append(run)
                peers.append(("int8", f"torch {torch.__version__} quantized conv2d int8 (x86 engine), channels_last"
                              + ("" if int8_peer_full_range() else ", 7-bit activations (reduce_range: no VNNI)")))
            times = time_interleaved(fns, repeats, warmup)
    else:
        times = time_interleaved(fns, repeats, warmup)
    flops = shape.flops()
    want = _reference.conv2d_forward(x[:1], w, None, stride, pad)
    rows = {}
    for fmt, t in zip(formats, times):
        sec = summarize(t)
        gflops = flops / sec["median_s"] / 1e9
        got = conv2d(x[:1], w, stride=stride, padding=pad, algorithm="direct", precision=fmt, n_threads=n_threads)
        if fmt == "int8":       # the error of what the timed step writes: u8, requantized as the peer's
            xq1 = quantized.to_int8_blocked(x[:1], bits=int8_activation_bits())
            wq = quantized.block_weights_int8(w)
            out_scale = float(np.abs(got).max()) / quantized.INT8_WEIGHT_MAX or 1.0
            got = conv2d(xq1, wq, stride=stride, padding=pad, precision="int8", out_scale=out_scale).numpy()
        rows[fmt] = {"seconds": sec, "gflops": gflops, "pct_peak": 100.0 * gflops / (peak_factor(fmt) * peak_gflops),
                     "rel_l2": _relative_error(got, want)}
    res = {"name": layer.name, "count": layer.count, "descriptor": layer.descriptor(shape.N), "gflop": flops / 1e9,
           "formats": rows}
    if peers:
        res["peers"] = {}
        for (fmt, name), t in zip(peers, times[len(formats):]):
            sec = summarize(t)
            res["peers"][fmt] = {"name": name, "seconds": sec, "gflops": flops / sec["median_s"] / 1e9,
                                 "rel_l2": _relative_error(peer_out[fmt], want)}
    return res


def precision_totals(results, formats):
    """Count-weighted GFLOP/s per format, its speedup over fp32 and, where every layer has a
    PyTorch peer of that format, the peer's GFLOP/s and the format's ratio to it (peer time /
    dlcpu time)."""
    flops = sum(r["count"] * r["gflop"] for r in results)
    secs = {f: sum(r["count"] * r["formats"][f]["seconds"]["median_s"] for r in results) for f in formats}
    total = {"gflop": flops, "formats": {f: {"seconds": secs[f], "gflops": flops / secs[f]} for f in formats}}
    if "fp32" in secs:
        for f in formats:
            total["formats"][f]["speedup_vs_fp32"] = secs["fp32"] / secs[f]
    for f in formats:
        if results and all(f in r.get("peers", {}) for r in results):
            peer = sum(r["count"] * r["peers"][f]["seconds"]["median_s"] for r in results)
            total.setdefault("peers", {})[f] = {"seconds": peer, "gflops": flops / peer}
            total["formats"][f]["ratio_vs_peer"] = peer / secs[f]
    return total


def bench_precision_gemm(size, n_threads, peak_gflops, *, formats=PRECISION_FORMATS, compare=None, repeats=5,
                         warmup=1, seed=0):
    """A size^3 GEMM in every format (the right-hand operand packed once, as a layer's weights;
    the left one packed, and converted to bf16 or quantized to int8 / DFP-16, inside the timed
    call), and PyTorch's bf16 matmul with `compare` in the same region (the right-hand operand
    cast to bf16 once, the fp32 left one cast inside the timed call); errors against float64 on
    the first 64 rows."""
    from .gemm import matmul, pack_matmul_operand

    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (size, size)).astype(np.float32)
    y = rng.uniform(-1, 1, (size, size)).astype(np.float32)
    packed = {f: pack_matmul_operand(y, precision=f, n_threads=n_threads) for f in formats}
    fns = [lambda f=f: matmul(x, packed[f], precision=f, n_threads=n_threads) for f in formats]
    torch = None
    if compare == "torch":
        torch = _peers.require_torch("--compare torch")
        # dlcpu converts the fp32 left operand inside its call: so does the peer (before, its x
        # was cast outside the timer, and its region held less than dlcpu's)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y).bfloat16()
        fns.append(lambda: xt.bfloat16() @ yt)
        with torch_threads(torch, n_threads), torch.inference_mode():
            times = time_interleaved(fns, repeats, warmup)
    else:
        times = time_interleaved(fns, repeats, warmup)
    flops = 2.0 * size ** 3
    want = x[:64].astype(np.float64) @ y
    rows = {}
    for f, t in zip(formats, times):
        sec = summarize(t)
        gflops = flops / sec["median_s"] / 1e9
        rows[f] = {"seconds": sec, "gflops": gflops, "pct_peak": 100.0 * gflops / (peak_factor(f) * peak_gflops),
                   "rel_l2": _relative_error(matmul(x[:64], packed[f], precision=f, n_threads=n_threads), want)}
    res = {"size": size, "threads": n_threads, "formats": rows}
    if torch is not None:
        sec = summarize(times[-1])
        got = (torch.from_numpy(x[:64]).bfloat16() @ torch.from_numpy(y).bfloat16()).float().numpy()
        res["peer"] = {"name": f"torch {torch.__version__} matmul bf16", "seconds": sec,
                       "gflops": flops / sec["median_s"] / 1e9, "rel_l2": _relative_error(got, want)}
        if "bf16" in rows:
            rows["bf16"]["ratio_vs_peer"] = sec["median_s"] / rows["bf16"]["seconds"]["median_s"]
    return res


# -------------------------------------------------------------------------------------- train
def train_throughput(framework, data, epochs, batch, lr=0.05, seed=0, threads=1, precision="fp32"):
    """Images/s of the training loop (forward, loss, backward, SGD step) for 'dlcpu' or 'torch'
    (the digits_resnet twin from dlcpu._peers), and the per-epoch seconds.  precision: dlcpu's
    set_precision (mixed precision); for torch, "bf16" runs under autocast and the rest in fp32."""
    n = len(data.x_train)
    rng = np.random.default_rng(seed)
    if framework == "dlcpu":
        from . import nn

        model = nn.digits_resnet(16, seed=seed).set_precision(precision)
        opt = nn.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)

        def step(idx):
            logits = model(to_blocked(data.x_train[idx]))
            _, g = nn.softmax_cross_entropy(logits, data.y_train[idx])
            model.backward(g)
            opt.step()
            opt.zero_grad()
    else:
        torch = _peers.require_torch("bench train")
        torch.set_num_threads(threads)
        step = _peers.digits_train_step(torch, data.x_train, data.y_train, lr=lr, seed=seed,
                                        autocast=precision == "bf16")
    times = []
    for _ in range(epochs):
        perm = rng.permutation(n)
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            step(perm[s:s + batch])
        times.append(time.perf_counter() - t0)
    return n / float(np.median(times)), times


def bench_train_digits(epochs, batch, n_threads, seed=0, precision="fp32"):
    """Digits CNN training images/s, dlcpu vs the same model in PyTorch (alternating epochs).
    precision bf16 / dfp16: dlcpu's mixed-precision model, with dlcpu fp32 timed in the same
    rounds for the speed-up, against PyTorch under autocast bf16 (for dfp16, which PyTorch
    lacks: its fp32 model)."""
    from threadpoolctl import threadpool_limits

    from . import train

    torch = _peers.require_torch("bench train")
    data = train.load_digits_split(seed)
    runs = {"ours": precision, "peer": precision if precision == "bf16" else "fp32"}
    if precision != "fp32":
        runs["fp32"] = "fp32"
    rates = {k: [] for k in runs}

    def epoch(kind):
        framework = "torch" if kind == "peer" else "dlcpu"
        return train_throughput(framework, data, 1, batch, seed=seed, threads=n_threads, precision=runs[kind])[0]

    with threadpool_limits(limits=n_threads, user_api="openmp"), torch_threads(torch, n_threads):
        for kind in runs:
            epoch(kind)                        # warm-up (plans, pages)
        for _ in range(epochs):
            for kind in runs:
                rates[kind].append(epoch(kind))
                time.sleep(SETTLE_SECONDS)
    mine, theirs = statistics.median(rates["ours"]), statistics.median(rates["peer"])
    peer_name = f"torch {torch.__version__}" + (" under autocast bf16" if runs["peer"] == "bf16" else "")
    row = {"threads": n_threads, "batch": batch, "epochs": epochs, "precision": precision, "images_per_second": mine,
           "peer": {"name": peer_name, "images_per_second": theirs, "ratio": mine / theirs}}
    if "fp32" in rates:
        fp32 = statistics.median(rates["fp32"])
        row["fp32"] = {"images_per_second": fp32, "speedup": mine / fp32}
    return row


# -------------------------------------------------------------------------------------- lstm
RNN_CELLS = {"lstm": 4, "gru": 3, "rnn": 1}
LSTM_TIMED_REGION = ("module against module, same initial weights: inference = an eval-mode nn.LSTM/GRU/RNN "
                     "call on fixed weights (kept in the kernels' layout, so nothing is re-packed) against "
                     "torch.nn.LSTM/GRU/RNN under torch.inference_mode; training step = zero_grad, forward, "
                     "backward with the input gradient (dx), and an SGD step with momentum 0.9 that updates "
                     "the weights (so each step's transposed operands are made from new weights) against the "
                     "same torch step (x.requires_grad, torch.optim.SGD). Other formats (--precision): bf16 and "
                     "dfp16 modules convert their weights inside every call, as a training step must; int8 "
                     "inference is timed on weights quantized once (dlcpu.rnn's forward on prepared weights); "
                     "with --compare torch each format has PyTorch's own where one exists: bf16 = the same "
                     "module and step under torch.autocast(cpu, bfloat16), int8 = quantize_dynamic (qint8 "
                     "weights, activations quantized per call; LSTM and GRU)")


def recurrent_problem(T, N, C, K, gates=4, seed=0):
    """x (T, N, C) and dy (T, N, K) uniform in [-1, 1], and PyTorch-initialised weights w_ih, w_hh
    and one bias b (used for both biases) of a cell with `gates` gates."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (T, N, C)).astype(np.float32)
    dy = rng.uniform(-1, 1, (T, N, K)).astype(np.float32)
    bound = 1.0 / np.sqrt(K)
    w_ih = rng.uniform(-bound, bound, (gates * K, C)).astype(np.float32)
    w_hh = rng.uniform(-bound, bound, (gates * K, K)).astype(np.float32)
    b = rng.uniform(-bound, bound, gates * K).astype(np.float32)
    return x, dy, w_ih, w_hh, b


def bench_lstm_layer(layer, n_threads, peak_gflops, *, cell="lstm", compare=None, repeats=5,
                     warmup=1, seed=0, precisions=("fp32",)):
    """Module against module for cell 'lstm', 'gru' or 'rnn' (tanh) on one row of the LSTM grid:
    eval-mode inference on fixed weights, and a whole training step (forward, backward with dx,
    SGD with momentum; 3x the forward GEMM FLOPs) that updates the weights, as a training loop
    does (DESIGN.md section 9).  The peer is torch.nn.LSTM / GRU / RNN loaded with the same state
    dict, timed interleaved.  precisions: the number formats to time (rnn.RECURRENT_PRECISIONS;
    int8 infers only, on weights quantized once: rnn's forward with prepared weights), each on
    its own copy of the layer in the same interleaved run; the first
    fills the row's infer/train entries, and every format gets an entry under "precisions" with
    its speed-up over fp32 when fp32 is among them."""
    from threadpoolctl import threadpool_limits

    from . import nn

    if cell not in RNN_CELLS:
        raise ValueError(f"--cell must be one of {', '.join(RNN_CELLS)}, got {cell!r}")
    gates = RNN_CELLS[cell]
    T, N, C, K = layer.T, layer.N, layer.C, layer.K
    x, dy, _, _, _ = recurrent_problem(T, N, C, K, gates, seed)
    kinds = []      # (precision, "infer" | "train") of each of our timed functions, in order
    fns = []
    for precision in precisions:
        m = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell](C, K, seed=seed).set_precision(precision)
        o = nn.SGD(m.parameters(), lr=1e-4, momentum=0.9)

        def ours_infer(m=m):
            m.eval()
            m(x)

        def ours_train(m=m, o=o):
            m.train()
            m.zero_grad()
            m(x)
            m.backward(dy)
            o.step()

        if precision == "int8":
            # int8 inference with the weights quantized once, as a deployed model runs (nn.quantize
            # does the same for convolutions); the module would re-quantize them at every call
            params = [m.params[f"{n}_l0"].data for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            prepared = rnn.weights_from_packed(m.cell, *params, C, K)
            forward = {"lstm": rnn.lstm_forward, "gru": rnn.gru_forward, "rnn": rnn.rnn_forward}[cell]

            def ours_infer(prepared=prepared, forward=forward):
                forward(x, weights=prepared, precision="int8")
        fns.append(ours_infer)
        kinds.append((precision, "infer"))
        if precision in rnn.TRAINING_PRECISIONS:
            fns.append(ours_train)
            kinds.append((precision, "train"))
        if precision == precisions[0]:
            model = m
    ours = len(fns)
    torch = None
    if compare == "torch":
        torch = _peers.require_torch("--compare torch")
        twin = _peers.recurrent(torch, cell, model.state())
        topt = torch.optim.SGD(twin.parameters(), lr=1e-4, momentum=0.9)
        # x requires grad so the peer's backward computes dx too, as nn's layer does (a layer
        # inside a network): without it torch skips the dx GEMM and the work differs.
        xt, dyt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)

        def peer_infer():
            with torch.inference_mode():
                twin(xt)

        def peer_train():
            topt.zero_grad()
            y, _ = twin(xt)
            y.backward(dyt)
            topt.step()

        fns += [peer_infer, peer_train]
        format_peers = _recurrent_format_peers(torch, cell, model.state(), xt, dyt, precisions)
        fns += [fn for _, _, fn, _ in format_peers]
    with threadpool_limits(limits=n_threads, user_api="openmp"):
        if torch is not None:
            with torch_threads(torch, n_threads):
                times = time_interleaved(fns, repeats, warmup)
        else:
            times = time_interleaved(fns, repeats, warmup)
    flops = layer.forward_flops() * gates // 4
    out = {"name": layer.name, "cell": cell, "N": N, "C": C, "K": K, "T": T, "gflop_forward": flops / 1e9,
           "timed_region": LSTM_TIMED_REGION, "precisions": {}}
    work = {"infer": flops, "train": 3 * flops}
    for i, (precision, kind) in enumerate(kinds):
        s = summarize(times[i])
        entry = {"seconds": s, "gflops": work[kind] / s["median_s"] / 1e9,
                 "pct_peak": 100.0 * work[kind] / s["median_s"] / 1e9 / peak_gflops}
        out["precisions"].setdefault(precision, {})[kind] = entry
        if precision == precisions[0]:
            out[kind] = entry
    if torch is not None:
        # each format against PyTorch's own (fp32 module; bf16 under autocast; int8 quantize_dynamic),
        # timed right after ours; the first format's entries are also the row's, so the main table
        # compares like with like.  A format PyTorch lacks (DFP-16; int8 RNN) gets none.
        fp32_peer = f"torch {torch.__version__} nn.{cell.upper()}"
        peer_runs = [("fp32", "infer", fp32_peer), ("fp32", "train", fp32_peer)]
        peer_runs += [(precision, kind, name) for precision, kind, _, name in format_peers]
        for j, (precision, kind, name) in enumerate(peer_runs):
            entry = out["precisions"].get(precision, {}).get(kind)
            if entry is not None:
                ps = summarize(times[ours + j])
                entry["peer"] = {"name": name, "seconds": ps, "gflops": work[kind] / ps["median_s"] / 1e9,
                                 "ratio": ps["median_s"] / entry["seconds"]["median_s"]}
        for j, kind in enumerate(("infer", "train")):
            if kind in out and "peer" not in out[kind]:      # a first format PyTorch lacks: its fp32 module
                ps = summarize(times[ours + j])
                out[kind]["peer"] = {"name": f"{fp32_peer} fp32 (PyTorch has no {precisions[0]})", "seconds": ps,
                                     "gflops": work[kind] / ps["median_s"] / 1e9,
                                     "ratio": ps["median_s"] / out[kind]["seconds"]["median_s"]}
    fp32 = out["precisions"].get("fp32", {})
    for entries in out["precisions"].values():
        for kind, entry in entries.items():
            if kind in fp32:
                entry["vs_fp32"] = fp32[kind]["seconds"]["median_s"] / entry["seconds"]["median_s"]
    return out


def _recurrent_format_peers(torch, cell, state, xt, dyt, precisions):
    """PyTorch's own version of each format we time, as (precision, kind, fn, name): bf16 inference
    and training step under torch.autocast("cpu", dtype=torch.bfloat16) (PyTorch's own choice of bf16
    kernels for the cell);
    int8 inference by torch.ao.quantization.quantize_dynamic (qint8 weights, activations
    quantized per call; LSTM and GRU only: it has no quantized nn.RNN).  DFP-16 has no PyTorch
    counterpart."""
    peers = []
    if "bf16" in precisions:
        twin = _peers.recurrent(torch, cell, state)
        opt = torch.optim.SGD(twin.parameters(), lr=1e-4, momentum=0.9)

        def bf16_infer():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                twin(xt)

        def bf16_train():
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y, _ = twin(xt)
            y.float().backward(dyt)
            opt.step()

        name = f"torch {torch.__version__} nn.{cell.upper()} under autocast bf16"
        peers += [("bf16", "infer", bf16_infer, name), ("bf16", "train", bf16_train, name)]
    if "int8" in precisions and cell in ("lstm", "gru"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # quantize_dynamic's deprecation notice
            qtwin = torch.ao.quantization.quantize_dynamic(_peers.recurrent(torch, cell, state),
                                                           {torch.nn.LSTM, torch.nn.GRU}, dtype=torch.qint8)

        def int8_infer():
            with torch.inference_mode():
                qtwin(xt.detach())

        name = f"torch {torch.__version__} quantize_dynamic nn.{cell.upper()} (qint8 weights, dynamic activations)"
        peers.append(("int8", "infer", int8_infer, name))
    return peers


def geomean(values):
    values = [v for v in values if v > 0]
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


# -------------------------------------------------------------------------------------- faults
FAULTS_TIMED_REGION = ("dlcpu: the whole campaign (golden run, drawing, batched faulty inferences, outcomes, "
                       "one JSONL line written and flushed per injection); PyTorchFI: per declared injection "
                       "its declare_neuron_fi (a deep copy of the model plus hooks) and the faulty inference, "
                       "outcomes against golden logits computed once outside the timed region")


def _timed_campaign(model, inputs, repeats=3, **kwargs):
    """(median injections/s over `repeats` runs, Campaign, records) of one campaign, each run
    written to a fresh temporary JSONL file."""
    import tempfile

    from . import faults

    rates = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "results.jsonl")
            t0 = time.perf_counter()
            camp = faults.Campaign(model, inputs, **kwargs)
            camp.run(path)
            rates.append(camp.n / (time.perf_counter() - t0))
            records = faults.read_results(path).records
        time.sleep(SETTLE_SECONDS)
    return statistics.median(rates), camp, records


def bench_faults(model, data, n_threads, *, n_activations=20000, n_weights=1000, images=64, compare=None,
                 n_peer=1000, n_peer_batched=8192, peer_batch=256, seed=0):
    """Injections/s of single-bit campaigns on a digits CNN at `n_threads`: an activation
    campaign over the conv layers' outputs (each fault one test image), a weight campaign over
    all weights (each fault evaluated on `images` test images) and, with compare='pytorchfi', the
    first faults of the same activation campaign run by PyTorchFI on the PyTorch twin with the
    same weights: n_peer of them one image per injection, n_peer_batched of them `peer_batch`
    per injection (its batched mode), with how often its outcomes agree with dlcpu's."""
    from threadpoolctl import threadpool_limits

    from . import faults
    from .train import image_batch

    convs = [r.name for r in faults.model_layers(model) if r.kind == "Conv2d"]
    rows = []
    with threadpool_limits(limits=n_threads, user_api="openmp"):
        rate, camp, records = _timed_campaign(model, image_batch(data.x_test), target="activations", layers=convs,
                                              n=n_activations, seed=seed)
        rows.append({"campaign": "activations (conv outputs), 1 image per fault", "framework": "dlcpu",
                     "threads": n_threads, "injections": camp.n, "per_second": rate,
                     "sdc1_rate": sum(r["outcome"] in ("sdc1", "sdc5") for r in records) / len(records)})
        w_rate, w_camp, w_records = _timed_campaign(model, image_batch(data.x_test[:images]), target="weights",
                                                    n=n_weights, seed=seed)
        rows.append({"campaign": f"weights (all layers), {images} images per fault", "framework": "dlcpu",
                     "threads": n_threads, "injections": w_camp.n, "per_second": w_rate,
                     "sdc1_rate": sum(r["outcome"] in ("sdc1", "sdc5") for r in w_records) / len(w_records)})
    if compare == "pytorchfi":
        rows += _pytorchfi_rows(model, data, n_threads, records, convs, {1: n_peer, peer_batch: n_peer_batched}, rate)
    return rows


def _pytorchfi_rows(model, data, n_threads, records, convs, runs, dlcpu_rate):
    """PyTorchFI on the first runs[batch] faults of `records`, for each batch size in `runs`."""
    from . import faults

    torch = _peers.require_torch("bench faults --compare pytorchfi")
    found = _peers.pytorchfi_or_none()
    if found is None:
        raise ValueError("bench faults --compare pytorchfi needs PyTorchFI: pip install pytorchfi==0.6.0")
    core, version = found
    twin = _peers.digits_resnet_from(torch, model)
    rows = []
    with torch_threads(torch, n_threads), torch.no_grad():
        golden = twin(torch.from_numpy(data.x_test)).numpy()
        for batch, count in runs.items():
            chosen = records[:count]
            plan = [(convs.index(r["layer"]), r["sample"], *r["index"], r["bit"]) for r in chosen]
            ours = np.array([faults.OUTCOMES.index(r["outcome"]) for r in chosen])
            t0 = time.perf_counter()
            logits = _peers.pytorchfi_bitflip_campaign(torch, core, twin, data.x_test, plan, batch=batch)
            seconds = time.perf_counter() - t0
            outcome, _ = faults.classify(golden[[p[1] for p in plan]], logits)
            rate = len(plan) / seconds
            rows.append({"campaign": f"activations (conv outputs), {'1 image' if batch == 1 else f'{batch} faults'} "
                                     f"per injection", "framework": f"pytorchfi {version} (torch {torch.__version__})",
                         "threads": n_threads, "injections": len(plan), "per_second": rate,
                         "dlcpu_ratio": dlcpu_rate / rate, "outcome_agreement": float((outcome == ours).mean()),
                         "sdc1_rate": float(np.isin(outcome, (1, 2)).mean())})
    return rows


# ----------------------------------------------------------------------------------- activations
ACT_TIMED_REGION = ("one call into a preallocated output (out=) for every library (dlcpu, numpy, torch.tanh/"
                    "sigmoid, torch's aten silu/gelu out= overloads), inputs first-touched outside the timed "
                    "region; elements/s of the input; 'copy' is numpy.copyto of the same bytes")
#: in cache (L1/L2), the issue's K-TanH target size, and streaming from memory
ACT_SIZES = (16 * 1024, 64 * 1024, 16 * 1024 * 1024)
SOFTMAX_TIMED_REGION = ("rows of a (rows x classes) float32 logits matrix into a preallocated output (torch: "
                        "aten._softmax.out, the kernel of torch.softmax)")


def _act_inputs(n, seed=0):
    """fp32 inputs ~ N(0, 2^2) (most of them inside K-TanH's table region) and their bf16
    truncations as uint16 patterns, with outputs, all first-touched."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 2.0).astype(np.float32)
    b = (x.view(np.uint32) >> 16).astype(np.uint16)
    return x, np.zeros_like(x), b, np.zeros_like(b)


def bench_activations(n, n_threads, *, compare=None, repeats=7):
    """Elements/s of every activation flavour over n elements at n_threads, with numpy and the
    peer (torch's vectorized math library) in the same interleaved run.  Returns a list of row
    dicts: name, library, dtype, elements_per_s, seconds."""
    from . import approx

    x, y, b, yb = _act_inputs(n)
    kw = {"n_threads": n_threads}
    rows = [("copy bf16", "numpy", "bf16", lambda: np.copyto(yb, b)),
            ("copy fp32", "numpy", "fp32", lambda: np.copyto(y, x)),
            ("ktanh", "dlcpu", "bf16", lambda: approx.ktanh(b, out=yb, **kw)),
            ("ktanh", "dlcpu", "fp32", lambda: approx.ktanh(x, out=y, **kw))]
    for op in ("tanh", "sigmoid", "swish", "gelu"):
        for impl in approx.IMPLS:
            if not (op == "tanh" and impl == "ktanh"):       # that is the row above
                rows.append((f"{op} {impl}", "dlcpu", "fp32",
                             lambda op=op, impl=impl: getattr(approx, op)(x, impl=impl, out=y, **kw)))
    rows.append(("tanh", "numpy", "fp32", lambda: np.tanh(x, out=y)))
    torch = _peers.require_torch("--compare torch") if compare == "torch" else None
    if torch is not None:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        aten = torch.ops.aten
        rows += [("tanh", "torch", "fp32", lambda: torch.tanh(xt, out=yt)),
                 ("sigmoid", "torch", "fp32", lambda: torch.sigmoid(xt, out=yt)),
                 # the functional forms have no out= and allocate (at 16M elements that cost torch
                 # 5x); their aten out= overloads are the peer at its best
                 ("swish (silu)", "torch", "fp32", lambda: aten.silu.out(xt, out=yt)),
                 ("gelu tanh", "torch", "fp32", lambda: aten.gelu.out(xt, approximate="tanh", out=yt))]
    fns = [r[3] for r in rows]
    if torch is not None:
        with torch_threads(torch, n_threads):
            times = time_interleaved(fns, repeats, warmup=2)
    else:
        times = time_interleaved(fns, repeats, warmup=2)
    out = []
    for (name, lib, dtype, _), t in zip(rows, times):
        s = summarize(t)
        out.append({"name": name, "library": lib, "dtype": dtype, "elements": n, "threads": n_threads,
                    "seconds": s, "elements_per_s": n / s["median_s"]})
    return out


def activation_ratios(rows):
    """The issue's headline ratios from one bench_activations run: K-TanH bf16 against torch.tanh,
    dlcpu's fast fp32 tanh and a copy of the same bytes."""
    rate = {(r["name"], r["library"], r["dtype"]): r["elements_per_s"] for r in rows}
    k = rate[("ktanh", "dlcpu", "bf16")]
    ratios = {"ktanh_bf16_vs_fast_tanh": k / rate[("tanh fast", "dlcpu", "fp32")],
              "ktanh_bf16_vs_copy": k / rate[("copy bf16", "numpy", "bf16")],
              "ktanh_bf16_vs_numpy_tanh": k / rate[("tanh", "numpy", "fp32")]}
    if ("tanh", "torch", "fp32") in rate:
        ratios["ktanh_bf16_vs_torch_tanh"] = k / rate[("tanh", "torch", "fp32")]
    return ratios


def bench_softmax(rows, classes, n_threads, *, orders=(2, 4, 6, 8, 10), compare=None, repeats=7):
    """Softmax against Taylor softmax of each order over a (rows x classes) logits matrix."""
    from . import approx

    rng = np.random.default_rng(0)
    z = rng.standard_normal((rows, classes)).astype(np.float32)
    p = np.zeros_like(z)
    kinds = ["softmax"] + [f"taylor:{n}" for n in orders]
    fns = [lambda kind=kind: approx.softmax(z, kind, out=p, n_threads=n_threads) for kind in kinds]
    names = [(kind, "dlcpu") for kind in kinds]
    torch = _peers.require_torch("--compare torch") if compare == "torch" else None
    if torch is not None:
        zt, pt = torch.from_numpy(z), torch.from_numpy(np.zeros_like(z))
        fns.append(lambda: torch.ops.aten._softmax.out(zt, 1, False, out=pt))   # torch.softmax's kernel, into out=
        names.append(("softmax", "torch"))
        with torch_threads(torch, n_threads):
            times = time_interleaved(fns, repeats, warmup=2)
    else:
        times = time_interleaved(fns, repeats, warmup=2)
    out = []
    base = statistics.median(times[0])
    for (kind, lib), t in zip(names, times):
        s = summarize(t)
        out.append({"kind": kind, "library": lib, "rows": rows, "classes": classes, "threads": n_threads,
                    "seconds": s, "elements_per_s": rows * classes / s["median_s"],
                    "speedup_vs_dlcpu_softmax": base / s["median_s"]})
    return out


LSTM_ACT_TIMED_REGION = ("LSTM forward (inference) on weights prepared once, one call per activation flavour; "
                         "speedup: median over repeats of that repeat's exact / flavour time")


def bench_lstm_flavours(layer, n_threads, *, repeats=5, seed=0):
    """The LSTM forward of one grid row with activation_impl = exact, fast and ktanh, interleaved;
    times and each flavour's speedup over 'exact'."""
    from . import approx, rnn

    T, N, C, K = layer.T, layer.N, layer.C, layer.K
    x, _, w_ih, w_hh, b = recurrent_problem(T, N, C, K, 4, seed)
    weights = rnn.prepare_lstm(w_ih, w_hh, b, b, n_threads=n_threads)
    fns = [lambda impl=impl: rnn.lstm_forward(x, weights=weights, n_threads=n_threads, activation_impl=impl)
           for impl in approx.IMPLS]
    times = time_interleaved(fns, repeats, warmup=1)
    out = {"name": layer.name, "N": N, "C": C, "K": K, "T": T, "threads": n_threads,
           "gflop_forward": layer.forward_flops() / 1e9, "timed_region": LSTM_ACT_TIMED_REGION}
    for impl, t in zip(approx.IMPLS, times):
        # the speedup is the median of per-repeat ratios: the flavours' samples of one repeat are
        # taken back to back, so a slow stretch of the shared machine hits both sides of a ratio
        # (the activations are a few % of the step: the difference is smaller than the noise)
        out[impl] = {"seconds": summarize(t),
                     "speedup_vs_exact": statistics.median(e / f for e, f in zip(times[0], t))}
    return out
