"""Whole-model benchmarks behind `dlcpu bench train resnet50`, `dlcpu bench infer resnet50` and
`dlcpu bench train gnmt`: dlcpu's nn.resnet50 / nn.gnmt against their PyTorch twins (same initial
weights, through state dicts), model against model and step against step.

Timed regions (DESIGN.md section 9): a training step is everything a user's loop does once the
batch is in memory: the NCHW images converted to the layout each side computes in (dlcpu: the
blocked layout; PyTorch: channels_last, oneDNN's fast path), forward, loss, backward, SGD with
momentum and weight decay, and zeroing the gradients.  Inference is an eval-mode forward (the
peer under torch.inference_mode).  Both sides are timed interleaved, step by step, in one
process; medians are reported.

Peak memory is measured apart from the timing, one fresh process per side (multiprocessing,
spawn): the process's peak RSS after its steps, and that peak minus the RSS after the imports
(what the model, its optimizer state and one step's activations cost).

--breakdown: dlcpu's time per layer kind, from timers put around the library calls the layers
make (conv forward, backward-data and weight update; batch norm; pooling; eltwise; fc; layout
conversions; optimizer) for a few extra steps, and the peer's from torch.profiler's self CPU time
per operator, grouped into the same kinds.
"""
import functools
import multiprocessing
import queue as _queue
import resource
import time
from contextlib import contextmanager

import numpy as np

from . import _peers
from .benchmarks import SETTLE_SECONDS, int8_activation_bits, summarize, time_interleaved, torch_threads

TRAIN_TIMED_REGION = ("one training step each side: NCHW float32 images -> the computing layout (dlcpu blocked, "
                      "PyTorch channels_last), forward, softmax cross-entropy, backward, SGD (momentum 0.9, "
                      "weight decay 1e-4), zero_grad; same initial weights (state dict), same images and labels")
INFER_TIMED_REGION = ("eval-mode forward of NCHW float32 images to logits (dlcpu: blocked layout inside, under "
                      "nn.inference_mode; PyTorch: channels_last model and input, under torch.inference_mode)")
#: the layer kinds of --breakdown, in display order
KINDS = ("conv fwd", "conv bwd-data", "conv bwd-weights", "conv bwd (data+weights)", "batch norm", "pooling",
         "eltwise", "fc", "loss", "layout conversion", "optimizer", "other")


def _model(name, num_classes, seed=0):
    from . import nn

    if name != "resnet50":
        raise ValueError(f"bench: model must be 'resnet50', got {name!r}")
    return nn.resnet50(num_classes=num_classes, seed=seed)


def _problem(batch, image, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, image, image)).astype(np.float32)
    return x, rng.integers(0, num_classes, batch)


def resnet_final_size(image):
    """Height (= width) of ResNet-50's last stage for square images: the 7x7/2 stem, the 3x3/2
    pool and three stride-2 stages.  Training needs batch * size**2 > 1 (BatchNorm)."""
    size = (image + 2 * 3 - 7) // 2 + 1
    for _ in range(4):
        size = (size + 2 - 3) // 2 + 1
    return size


def model_flops(model, x, train):
    """FLOPs of one forward (or training step) of a dlcpu model on images x: every Conv2d and
    the fc at full taps (2*N*K*P*Q*C*R*S), from output shapes seen in one eval forward; a
    training step adds backward-data (not for the stem, which needs no input gradient) and the
    weight gradient, each as many FLOPs as the forward."""
    from .nn import Conv2d, Linear

    convs, handles = [], []

    def record(m, y):
        convs.append((m, y.shape))
        return y

    for m in _modules(model):
        if isinstance(m, (Conv2d, Linear)):
            handles.append(m.register_output_hook(record))
    mode = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(mode)
        for h in handles:
            h.remove()
    total = 0.0
    for m, shape in convs:
        if isinstance(m, Linear):
            f = 2.0 * shape[0] * m.args["in_features"] * m.args["out_features"]
            total += 3 * f if train else f
            continue
        r, s = (m.args["kernel_size"],) * 2 if isinstance(m.args["kernel_size"], int) else m.args["kernel_size"]
        f = 2.0 * shape[0] * shape[1] * shape[2] * shape[3] * m.args["in_channels"] * r * s
        total += f * ((2 + bool(m.needs_input_grad)) if train else 1)
    return total


def _modules(module):
    yield module
    for child in module.children():
        yield from _modules(child)


def _resnet_steps(spec, train, sides, torch=None):
    """{side: step} for ResNet-50 on `spec` (batch, image, num_classes): a training step (SGD
    with momentum and weight decay) or an eval-mode inference, for 'dlcpu' and/or 'torch' (the
    channels_last twin, holding the dlcpu model's initial weights)."""
    from . import nn

    model = _model("resnet50", spec["num_classes"])
    x, labels = _problem(spec["batch"], spec["image"], spec["num_classes"])
    precision = spec.get("precision", "fp32")
    if precision == "int8" and train:
        raise ValueError("bench: int8 times inference only (nn.quantize), not training")
    steps = {}
    if "torch" in sides:
        twin = _peers.resnet_from(torch, model, memory_format=torch.channels_last)
        twin.train(train)
        xt, lt = torch.from_numpy(x), torch.from_numpy(labels)
        int8_path = None
        if precision == "int8":      # calibrated on the timed images, as dlcpu's side below
            twin, int8_path = _peers.quantized_model(torch, twin, xt.contiguous(memory_format=torch.channels_last),
                                                     int8_activation_bits() == 7)
        # bf16: PyTorch's own mixed precision, autocast (bf16 convolutions and GEMMs, fp32 weights)
        autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
        if train:
            topt = torch.optim.SGD(twin.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)

            def peer():
                with autocast():
                    loss = torch.nn.functional.cross_entropy(twin(xt.contiguous(memory_format=torch.channels_last)), lt)
                topt.zero_grad()
                loss.backward()
                topt.step()
        else:
            def peer():
                with torch.inference_mode(), autocast():
                    return twin(xt.contiguous(memory_format=torch.channels_last))
        peer.int8_path = int8_path              # (the peer's name says which int8 path ran)
        steps["torch"] = peer
    runs = model
    if precision == "int8":
        model.eval()
        runs = nn.quantize(model, "int8", [x], act_bits=int8_activation_bits())
    else:
        model.set_precision(precision)
    if "dlcpu" in sides:
        if train:
            opt = nn.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)

            def ours():
                _, g = nn.softmax_cross_entropy(model(x), labels)
                model.backward(g)
                opt.step()
                opt.zero_grad()
            ours.opt = opt                      # dlcpu_breakdown times its calls
        else:
            model.eval()

            def ours():
                with nn.inference_mode():      # as the peer's torch.inference_mode: nothing kept for a backward
                    return runs(x)
        ours.model, ours.x = model, x          # (the fp32 model: FLOPs and the breakdown's layers)
        steps["dlcpu"] = ours
    return steps


def _tokens(spec, seed=0):
    rng = np.random.default_rng(seed)
    shape = (spec["seq"], spec["batch"])
    return rng.integers(0, spec["vocab"], shape), rng.integers(0, spec["vocab"], shape)


def _gnmt_steps(spec, train, sides, torch=None):
    """{side: training step} of the GNMT-style model on `spec` (vocab, hidden, layers, seq,
    batch), SGD with momentum, the twin holding the dlcpu model's initial weights."""
    from . import nn

    if not train:
        raise ValueError("bench: the GNMT workload times training steps only")
    model = nn.gnmt(spec["vocab"], spec["hidden"], spec["layers"])
    ids, targets = _tokens(spec)
    steps = {}
    if "torch" in sides:
        twin = _peers.gnmt_from(torch, model)
        topt = torch.optim.SGD(twin.parameters(), lr=1e-3, momentum=0.9)
        it, tt = torch.from_numpy(ids), torch.from_numpy(targets)

        def peer():
            loss = twin.loss(it, tt)
            topt.zero_grad()
            loss.backward()
            topt.step()
        steps["torch"] = peer
    if "dlcpu" in sides:
        opt = nn.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def ours():
            model.loss(ids, targets)
            model.backward()
            opt.step()
            opt.zero_grad()
        steps["dlcpu"] = ours
    return steps


def _steps(spec, train, sides, torch=None):
    """{side: step} of a workload spec ({'model': 'resnet50', ...} or {'model': 'gnmt', ...})."""
    return (_resnet_steps if spec["model"] == "resnet50" else _gnmt_steps)(spec, train, sides, torch)


def gnmt_flops(vocab, hidden, layers, seq, batch):
    """FLOPs of one GNMT training step: every LSTM layer's GEMMs (2*T*N*4K*(C+K) forward per
    direction) and the vocabulary projection (2*T*N*hidden*vocab), each 3x for forward and
    backward (dx included, as the layers compute it)."""
    tokens = seq * batch
    k = hidden // 2
    fwd = 2 * 2.0 * tokens * 4 * k * (hidden + k)                       # the bidirectional first layer
    fwd += (layers - 1) * 2.0 * tokens * 4 * hidden * (2 * hidden)
    fwd += 2.0 * tokens * hidden * vocab
    return 3 * fwd


# ------------------------------------------------------------------------------------ memory
def _rss_bytes():
    """Resident set size now (Linux /proc), bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes():
    """This process's RSS high-water mark (VmHWM), bytes.  Not getrusage's ru_maxrss: that one
    survives exec, so a child started by spawn (fork + exec) would report its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM line in /proc/self/status")


def _memory_child(side, spec, steps, n_threads, train, queue):
    """Run in a fresh process: peak RSS of `steps` steps of one side."""
    try:
        from threadpoolctl import threadpool_limits

        torch = None
        if side == "torch":
            import torch

            torch.set_num_threads(n_threads)
        from . import nn  # noqa: F401  (imported before the baseline, like torch on the other side)

        base = _rss_bytes()
        with threadpool_limits(limits=n_threads, user_api="openmp"):
            step = _steps(spec, train, (side,), torch)[side]
            for _ in range(steps):
                step()
        peak = _peak_rss_bytes()
        queue.put({"peak_rss_bytes": peak, "rss_after_imports_bytes": base, "step_bytes": peak - base})
    except (ValueError, TypeError, RuntimeError, MemoryError, OSError, ImportError) as exc:
        queue.put({"error": f"{type(exc).__name__}: {exc}"})     # the parent names the side


def peak_memory(side, spec, n_threads, train, steps=2):
    """{'peak_rss_bytes', 'rss_after_imports_bytes', 'step_bytes'} of one side on a workload spec
    (see _steps), measured in a fresh process (so neither side's allocations or caches count
    against the other)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(side, spec, steps, n_threads, train, queue))
    proc.start()
    result = None
    try:
        while result is None:
            try:
                result = queue.get(timeout=1.0)
            except _queue.Empty:
                if not proc.is_alive():   # died without a word (killed, out of memory)
                    result = {"error": f"the process ended with exit code {proc.exitcode}"}
    finally:
        proc.join()
    if "error" in result:
        raise RuntimeError(f"peak memory of the {side} side failed: {result['error']}")
    return result


def _memories(out, spec, n_threads, train, compare):
    out["memory"] = peak_memory("dlcpu", spec, n_threads, train)
    if compare:
        out["peer"]["memory"] = peak_memory("torch", spec, n_threads, train)
        out["peer"]["memory_ratio"] = out["memory"]["step_bytes"] / out["peer"]["memory"]["step_bytes"]


# --------------------------------------------------------------------------------- breakdown
class _Timers:
    """Seconds per kind, with nesting resolved: time inside an inner timed call is charged to the
    inner kind only (a conv forward inside backward-data counts once, as backward-data)."""

    def __init__(self):
        self.seconds = dict.fromkeys(KINDS, 0.0)
        self.stack = []

    def wrap(self, kind, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            self.stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                inner = self.stack.pop()
                spent = time.perf_counter() - start
                self.seconds[kind] += spent - inner
                if self.stack:
                    self.stack[-1] += spent
        return timed


@contextmanager
def _patched(targets):
    """Replace (object, attribute) -> new value for the duration of the block."""
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in targets]
    try:
        for obj, attr, value in targets:
            setattr(obj, attr, value)
        yield
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)


class _TimedWU:
    """A stand-in for the weight-update extension module whose kernel entry is timed."""

    def __init__(self, module, timers):
        self._module = module
        self.conv2d_weight_grad_f32 = timers.wrap("conv bwd-weights", module.conv2d_weight_grad_f32)
        self.conv2d_weight_grad_bf16_values = timers.wrap("conv bwd-weights", module.conv2d_weight_grad_bf16_values)

    def __getattr__(self, name):
        return getattr(self._module, name)


def dlcpu_breakdown(step, steps=2):
    """Seconds per layer kind of a dlcpu training step (from _resnet_steps; averaged over
    `steps`), with 'other' the rest of each step's wall time (Python between the calls,
    residual adds done in NumPy)."""
    opt = step.opt
    from . import conv, nn, norm, pool
    from .nn import layers, resnet

    timers = _Timers()
    w = timers.wrap
    targets = [(layers, "conv2d", w("conv fwd", layers.conv2d)),
               (conv, "_backward_data", w("conv bwd-data", conv._backward_data)),
               (conv, "_wu", _TimedWU(conv._wu, timers))]
    targets += [(norm, f, w("batch norm" if "batchnorm" in f else "eltwise", getattr(norm, f)))
                for f in ("batchnorm_forward", "batchnorm_backward", "relu_backward")]
    targets += [(pool, f, w("pooling", getattr(pool, f))) for f in
                ("max_pool2d", "max_pool2d_backward", "global_avg_pool", "global_avg_pool_backward")]
    targets += [(layers, "matmul", w("fc", layers.matmul)), (layers, "pack_matmul_operand",
                                                              w("fc", layers.pack_matmul_operand)),
                (resnet, "to_blocked", w("layout conversion", resnet.to_blocked)),
                (nn, "softmax_cross_entropy", w("loss", nn.softmax_cross_entropy)),
                (opt, "step", w("optimizer", opt.step)), (opt, "zero_grad", w("optimizer", opt.zero_grad))]
    with _patched(targets):
        step()                                       # warm-up, not counted
        timers.seconds = dict.fromkeys(KINDS, 0.0)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - start
    out = {k: v / steps for k, v in timers.seconds.items()}
    out["other"] = max(0.0, wall / steps - sum(out.values()))
    return out


#: torch operator names (self CPU time) -> kinds; anything unlisted counts as 'other'
_TORCH_KINDS = (
    ("convolution_backward", "conv bwd (data+weights)"), ("foreach", "optimizer"), ("sgd", "optimizer"),
    ("zero_", "optimizer"),
    ("conv", "conv fwd"), ("batch_norm", "batch norm"), ("max_pool", "pooling"), ("avg_pool", "pooling"),
    ("adaptive_avg", "pooling"), ("mean", "pooling"), ("relu", "eltwise"), ("threshold", "eltwise"),
    ("add", "eltwise"), ("mul", "eltwise"), ("addmm", "fc"), ("mm", "fc"), ("linear", "fc"),
    ("cross_entropy", "loss"), ("log_softmax", "loss"), ("nll_loss", "loss"),
    ("copy_", "layout conversion"), ("contiguous", "layout conversion"), ("clone", "layout conversion"),
    ("to_copy", "layout conversion"),
)


def torch_breakdown(torch, step, steps=2):
    """Seconds per layer kind of PyTorch steps from torch.profiler (self CPU time of each
    operator, averaged over `steps`); the optimizer's foreach kernels count as optimizer."""
    from torch.profiler import ProfilerActivity, profile

    step()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    wall = time.perf_counter() - start
    out = dict.fromkeys(KINDS, 0.0)
    for ev in prof.key_averages():
        name = ev.key.lower()
        kind = next((k for key, k in _TORCH_KINDS if key in name), "other")
        out[kind] += ev.self_cpu_time_total / 1e6 / steps
    out["profiler_wall_s"] = wall / steps
    return out


# ------------------------------------------------------------------------------------ timing
def _compare(steps, torch, n_threads, items, flops, peak_gflops, rate, peer_name, repeats, warmup, fp32_step=None):
    """Time {side: step} interleaved at n_threads: the dlcpu side's figures, and under 'peer'
    PyTorch's with the ratio of the rates (dlcpu / PyTorch, above 1: dlcpu faster).  fp32_step
    (a run in another precision): dlcpu's fp32 step, timed in the same rounds, under 'fp32'
    with the speedup of the precision over it."""
    from threadpoolctl import threadpool_limits

    fns = [steps["dlcpu"]] + ([steps["torch"]] if torch is not None else []) + ([fp32_step] if fp32_step else [])
    with threadpool_limits(limits=n_threads, user_api="openmp"), \
            (torch_threads(torch, n_threads) if torch is not None else _nothing()):
        times = time_interleaved(fns, repeats, warmup, settle=SETTLE_SECONDS)
    out = _side(times[0], items, flops, peak_gflops, rate)
    if torch is not None:
        peer = _side(times[1], items, flops, peak_gflops, rate)
        peer["name"] = f"torch {torch.__version__}{peer_name}"
        peer["ratio"] = out[rate] / peer[rate]
        out["peer"] = peer
    if fp32_step:
        fp32 = _side(times[-1], items, flops, peak_gflops, rate)
        fp32["speedup"] = out[rate] / fp32[rate]
        out["fp32"] = fp32
    return out


def _fp32_reference(spec, train, precision):
    """dlcpu's fp32 step on the same workload, to time beside a run in another precision."""
    if precision == "fp32":
        return None
    return _steps({**spec, "precision": "fp32"}, train, ("dlcpu",))["dlcpu"]


def _peer_suffix(precision, mode="", peer=None):
    """The peer's name after its version: layout, mode and low-precision path (int8: the one
    _peers.quantized_model took)."""
    int8_path = getattr(peer, "int8_path", None)
    return ", channels_last" + mode + {"bf16": ", autocast bf16", "int8": f", {int8_path}"}.get(precision, "")


def bench_train_resnet50(batch, image, n_threads, peak_gflops, *, compare=None, repeats=5, warmup=1,
                         breakdown=False, memory=True, num_classes=1000, precision="fp32"):
    """Training images/s of nn.resnet50 and (compare='torch') its PyTorch twin in channels_last,
    timed interleaved; FLOPs, % of the FMA peak, peak memory (fresh process per side) and, with
    breakdown, time per layer kind for both sides.  precision='bf16': dlcpu's set_precision and
    PyTorch's autocast, with dlcpu's fp32 step timed in the same rounds for the speedup."""
    from threadpoolctl import threadpool_limits

    torch = _peers.require_torch("--compare torch") if compare == "torch" else None
    spec = {"model": "resnet50", "batch": batch, "image": image, "num_classes": num_classes, "precision": precision}
    steps = _steps(spec, True, ("dlcpu", "torch") if torch is not None else ("dlcpu",), torch)
    flops = model_flops(steps["dlcpu"].model, steps["dlcpu"].x, train=True)
    out = {"model": "resnet50", "batch": batch, "image": image, "threads": n_threads, "gflop_per_step": flops / 1e9,
           "precision": precision, "timed_region": TRAIN_TIMED_REGION}
    out.update(_compare(steps, torch, n_threads, batch, flops, peak_gflops, "images_per_second",
                        _peer_suffix(precision), repeats, warmup, _fp32_reference(spec, True, precision)))
    if breakdown:
        with threadpool_limits(limits=n_threads, user_api="openmp"):
            out["breakdown"] = dlcpu_breakdown(steps["dlcpu"])
            if torch is not None:
                with torch_threads(torch, n_threads):
                    out["peer"]["breakdown"] = torch_breakdown(torch, steps["torch"])
    if memory:
        _memories(out, spec, n_threads, True, torch is not None)
    return out


def bench_infer_resnet50(batch, image, n_threads, peak_gflops, *, compare=None, repeats=5, warmup=1,
                         num_classes=1000, memory=True, precision="fp32"):
    """Eval-mode images/s of nn.resnet50 (under nn.inference_mode) and its twin (channels_last,
    torch.inference_mode), with each side's peak memory (fresh process per side); precision as
    bench_train_resnet50, or 'int8': nn.quantize's model against PyTorch's quantized twin
    (_peers.quantized_model: PT2E + inductor where torchao is installed, else FX), both
    calibrated once on the timed images outside the timer, with each side's logits error
    against the fp32 model."""
    torch = _peers.require_torch("--compare torch") if compare == "torch" else None
    spec = {"model": "resnet50", "batch": batch, "image": image, "num_classes": num_classes, "precision": precision}
    steps = _steps(spec, False, ("dlcpu", "torch") if torch is not None else ("dlcpu",), torch)
    flops = model_flops(steps["dlcpu"].model, steps["dlcpu"].x, train=False)
    out = {"model": "resnet50", "batch": batch, "image": image, "threads": n_threads,
           "gflop_per_step": flops / 1e9, "precision": precision, "timed_region": INFER_TIMED_REGION}
    fp32_step = _fp32_reference(spec, False, precision)
    out.update(_compare(steps, torch, n_threads, batch, flops, peak_gflops, "images_per_second",
                        _peer_suffix(precision, ", inference_mode", steps.get("torch")), repeats, warmup, fp32_step))
    if precision == "int8":
        # what the quantization costs in the logits, each side against dlcpu's fp32 model (the
        # same weights; PyTorch's fp32 twin agrees with it to ~1e-6)
        exact = fp32_step()
        out["error_vs_fp32"] = {side: float(np.linalg.norm(np.asarray(step()) - exact) / np.linalg.norm(exact))
                                for side, step in steps.items()}
    if memory:
        _memories(out, spec, n_threads, False, torch is not None)
    return out


GNMT_TIMED_REGION = ("one training step each side on the same (T, N) token ids and next-token targets: embedding, "
                     "LSTM layers (bidirectional first), vocabulary projection and mean cross-entropy (dlcpu: fused, "
                     "in blocks of 32 tokens; PyTorch: Linear + cross_entropy on the dense logits), backward, SGD "
                     "(momentum 0.9), zero_grad; same initial weights (state dict)")


def bench_train_gnmt(vocab, hidden, layers, seq, batch, n_threads, peak_gflops, *, compare=None, repeats=5,
                     warmup=1, memory=True):
    """Training tokens/s of nn.gnmt and (compare='torch') its PyTorch twin, timed interleaved,
    with FLOPs, % of peak and peak memory (fresh process per side)."""
    torch = _peers.require_torch("--compare torch") if compare == "torch" else None
    spec = {"model": "gnmt", "vocab": vocab, "hidden": hidden, "layers": layers, "seq": seq, "batch": batch}
    steps = _steps(spec, True, ("dlcpu", "torch") if torch is not None else ("dlcpu",), torch)
    flops = gnmt_flops(vocab, hidden, layers, seq, batch)
    out = {"model": "gnmt", **spec, "threads": n_threads, "gflop_per_step": flops / 1e9,
           "timed_region": GNMT_TIMED_REGION}
    out.update(_compare(steps, torch, n_threads, seq * batch, flops, peak_gflops, "tokens_per_second", "",
                        repeats, warmup))
    if memory:
        _memories(out, spec, n_threads, True, torch is not None)
    return out


@contextmanager
def _nothing():
    yield


def _side(seconds, items, flops, peak_gflops, rate="images_per_second"):
    s = summarize(seconds)
    gflops = flops / s["median_s"] / 1e9
    return {"seconds": s, rate: items / s["median_s"], "gflops": gflops, "pct_peak": 100.0 * gflops / peak_gflops}


def machine_peak(n_threads):
    """The measured FMA peak at n_threads (GFLOP/s), as every other bench reports against."""
    from .benchmarks import measure_peak

    return measure_peak(n_threads, seconds=0.1, repeats=3)["gflops"]


