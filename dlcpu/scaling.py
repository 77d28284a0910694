"""Scaling sweeps behind `dlcpu scale ...`: thread scaling of one workload, with Amdahl and
Gustafson fits.

Design.  A sweep has three independent parts, each usable on its own from Python:

1. Workloads.  `parse_workload(text)` turns the command line's WORKLOAD into a `Workload`:
       mb4ic256ih14oc256oh14kh3ph1n"res4b_branch2b"   a conv layer descriptor (benchdnn syntax,
                                                      dlcpu.workloads.parse_conv_descriptor)
       res4b_branch2b                                 a layer of the shipped ResNet-50 v1.5 table
       lstm:T,N,C,K                                   an LSTM training step
       gemm:M,N,K                                     dlcpu.matmul of (M, K) @ (K, N)
       train:digits                                   one training step of the digits CNN
   `Workload.scaled(f)` is the same problem with its batch dimension multiplied by f (N for conv,
   LSTM and train, M for GEMM): weak scaling grows the problem with the thread count this way.
   `make_step(workload, n_threads)` allocates and first-touches the inputs outside the timed
   region and returns the zero-argument callable that is timed.  What one call does:
       conv   the direct forward convolution, blocked in and blocked out (as `bench conv`), at
              the descriptor's mb, else `batch` (the CLI's --batch: the largest thread count)
       lstm   a training step: the weights re-blocked (a training loop's weights change every
              step), forward (train=True), backward incl. dx, exact activations
       gemm   dlcpu.matmul, operand packing included (as `bench gemm`)
       train  forward, softmax cross-entropy, backward and an SGD step (momentum 0.9) of
              dlcpu.nn.digits_resnet(16) on 64 training images (cycling through the data set)
2. Measurement.  `measure_threads` times the step at each thread count in turn with
   dlcpu.benchmarks.time_interleaved (warm-up, steady-state samples, median of repeats), under a
   threadpoolctl OpenMP limit as well as an explicit n_threads where the API takes one.
3. Analysis, pure arithmetic on (threads, seconds): `speedups` (S = T(1)/T(N) strong,
   N*T(1)/T(N) weak, efficiency S/N), `fit_amdahl` (least squares for p in
   1/S = (1-p) + p/N, clamped to [0, 1]), `fit_gustafson` (least squares for s in
   S = N - s(N-1), clamped to [0, 1]) and their predictions at 2x and 4x the largest thread
   count.  Every fit needs thread count 1 (the baseline) and at least one more.

`thread_scaling` runs 2 then 3 and returns one JSON-ready dict; `plot_scaling` draws it (matplotlib,
the optional `plot` extra, imported lazily).  Thread counts above the cores available are allowed
(oversubscription is worth seeing) but produce a warning in the result.
"""
import os
import re
from dataclasses import dataclass, replace

import numpy as np

from . import benchmarks, cpu, workloads
from ._validate import fits_in_memory

MODES = ("strong", "weak")
#: what WORKLOAD may be, for error messages and --help
WORKLOAD_FORMS = ('a conv descriptor such as mb4ic256ih14oc256oh14kh3ph1n"res4b_branch2b", '
                  "a ResNet-50 layer name such as res4b_branch2b, lstm:T,N,C,K, gemm:M,N,K or train:digits")
#: images per step of the train:digits workload (before weak scaling)
TRAIN_BATCH = 64
#: the thread-count multiples the fits predict at
PREDICT_AT = (2, 4)

TIMED_REGION = {
    "conv": "direct forward convolution, blocked in and blocked out, output preallocated",
    "lstm": "LSTM training step: weights re-blocked (they change every step), forward (train=True), backward "
            "incl. dx, exact activations",
    "gemm": "dlcpu.matmul (operand packing + BRGEMM)",
    "train": f"digits CNN training step: forward, softmax cross-entropy, backward, SGD (batch {TRAIN_BATCH})",
}


# ------------------------------------------------------------------------------------ workloads
@dataclass(frozen=True)
class Workload:
    """One problem to scale.  kind: 'conv', 'lstm', 'gemm' or 'train'; dims: the sizes (conv: a
    dlcpu.workloads.ConvLayer; lstm: (T, N, C, K); gemm: (M, N, K); train: (batch,)); text: the
    WORKLOAD as given."""

    kind: str
    text: str
    dims: object

    @property
    def batch(self):
        """The dimension weak scaling multiplies: N (conv, lstm, train) or M (gemm)."""
        if self.kind == "conv":
            return self.dims.mb
        return self.dims[1] if self.kind == "lstm" else self.dims[0]

    def scaled(self, factor):
        """The same workload with its batch dimension multiplied by `factor`."""
        if factor == 1:
            return self
        if self.kind == "conv":
            d = replace(self.dims, problem=replace(self.dims.problem, N=self.dims.mb * factor))
        elif self.kind == "lstm":
            d = (self.dims[0], self.dims[1] * factor, *self.dims[2:])
        else:
            d = (self.dims[0] * factor, *self.dims[1:])
        return replace(self, dims=d)

    def describe(self):
        """A short, exact description of the problem, e.g. 'gemm M=64 N=64 K=64'."""
        if self.kind == "conv":
            return f"conv {self.dims.descriptor(self.dims.mb)}"
        if self.kind == "lstm":
            return "lstm " + " ".join(f"{k}={v}" for k, v in zip("TNCK", self.dims))
        if self.kind == "gemm":
            return "gemm " + " ".join(f"{k}={v}" for k, v in zip("MNK", self.dims))
        return f"train digits batch={self.dims[0]}"


def _int_list(src, rest, names):
    """'64,32,16' -> (64, 32, 16): len(names) positive integers, else ValueError naming the form."""
    try:
        values = tuple(int(p) for p in rest.split(","))
    except ValueError:
        values = ()
    if len(values) != len(names) or any(v < 1 for v in values):
        form = f"{src.partition(':')[0]}:{','.join(names)}"
        raise ValueError(f"workload {src!r}: expected {len(names)} positive integers {','.join(names)} "
                         f"(the form {form}), got {rest!r}")
    return values


#: how a conv descriptor starts (benchdnn field + digits, e.g. mb4, ic3, g1): anything else that is
#: not a layer name is an unknown workload, not a descriptor with a parse error
_DESCRIPTOR_START = re.compile(r"_?(g|mb|ic|ih|iw|oc|oh|ow|kh|kw|sh|sw|ph|pw)\d")


def parse_workload(text, batch=None):
    """WORKLOAD text -> Workload; ValueError lists the accepted forms.  `batch`: the minibatch of a
    conv layer given by name or by a descriptor without mb (default 1); a descriptor's mb wins."""
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    src = (text or "").strip()
    kind, sep, rest = src.partition(":")
    kind = kind.lower()
    if sep and kind == "lstm":
        return Workload("lstm", src, _int_list(src, rest, "TNCK"))
    if sep and kind == "gemm":
        return Workload("gemm", src, _int_list(src, rest, "MNK"))
    if sep and kind == "train":
        if rest.strip().lower() != "digits":
            raise ValueError(f"workload {src!r}: the only training workload is train:digits")
        return Workload("train", src, (TRAIN_BATCH,))
    if not sep and src:
        by_name = {l.name: l for l in workloads.resnet50_layers()}
        if src in by_name:
            return Workload("conv", src, replace(by_name[src], problem=replace(by_name[src].problem, N=batch or 1)))
        if _DESCRIPTOR_START.match(src):
            try:
                layer = workloads.parse_conv_descriptor(src)
            except ValueError as exc:
                raise ValueError(f"{exc}; a workload is {WORKLOAD_FORMS}") from None
            return Workload("conv", src, replace(layer, problem=replace(layer.problem, N=layer.mb or batch or 1)))
    raise ValueError(f"unknown workload {src!r}: a workload is {WORKLOAD_FORMS} "
                     f"(ResNet-50 layers: {', '.join(l.name for l in workloads.resnet50_layers())})")


def check_memory(workload):
    """Refuse (ValueError) a gemm or LSTM workload whose buffers could never be allocated, before
    anything is (the float64 draws of the inputs, the float32 copies, outputs and packed operands;
    conv layers are checked by benchmarks.conv_layer_shape when their step is made)."""
    if workload.kind == "gemm":
        m, n, k = workload.dims
        need = 16 * (m * k + k * n) + 8 * m * n
    elif workload.kind == "lstm":
        T, N, C, K = workload.dims
        need = 16 * T * N * (C + K) + 24 * 4 * K * (C + K) + 40 * T * N * 4 * K
    else:
        return
    fits_in_memory(need, f"workload {workload.describe()}", "scale threads")


def make_step(workload, n_threads, seed=0):
    """The timed callable of `workload` at `n_threads`, inputs allocated and first-touched."""
    rng = np.random.default_rng(seed)
    if workload.kind == "conv":
        return _conv_step(workload.dims, n_threads, rng)
    if workload.kind == "lstm":
        return _lstm_step(*workload.dims, n_threads, rng)
    if workload.kind == "gemm":
        m, n, k = workload.dims
        x = rng.uniform(-1, 1, (m, k)).astype(np.float32)
        y = rng.uniform(-1, 1, (k, n)).astype(np.float32)
        from .gemm import matmul

        return lambda: matmul(x, y, n_threads=n_threads)
    return _train_step(workload.dims[0], rng)


def _conv_step(layer, n_threads, rng):
    from .conv import conv2d
    from .layout import block_weights, to_blocked

    shape = benchmarks.conv_layer_shape(layer, layer.mb)      # geometry and memory, before allocating
    x = rng.uniform(-1, 1, (shape.N, shape.C, shape.H, shape.W)).astype(np.float32)
    w = rng.uniform(-1, 1, (shape.K, shape.C, shape.R, shape.S)).astype(np.float32)
    xb, wb = to_blocked(x, n_threads), block_weights(w, n_threads)
    kw = {"stride": (shape.stride_h, shape.stride_w), "padding": (shape.pad_h, shape.pad_w), "n_threads": n_threads,
          "algorithm": "direct"}      # as TIMED_REGION says (the default "auto" picks Winograd for 3x3 layers)
    out = conv2d(xb, wb, **kw)
    return lambda: conv2d(xb, wb, out=out, **kw)


def _lstm_step(T, N, C, K, n_threads, rng):
    from . import rnn

    x, dy, w_ih, w_hh, b = benchmarks.recurrent_problem(T, N, C, K, 4, int(rng.integers(2**31)))

    def step():
        # a training step's weights changed at the last update: re-blocked inside the step
        weights = rnn.prepare_lstm(w_ih, w_hh, b, b, n_threads=n_threads)
        cache = rnn.lstm_forward(x, weights=weights, train=True, n_threads=n_threads)[-1]
        rnn.lstm_backward(dy, cache)

    return step


def _train_step(batch, rng):
    from . import nn
    from .train import image_batch, load_digits_split

    data = load_digits_split(0)
    model = nn.digits_resnet(16, seed=0)
    opt = nn.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    order = np.resize(rng.permutation(len(data.x_train)), batch)     # cycles when batch > the data set
    x, y = image_batch(data.x_train[order]), data.y_train[order]

    def step():
        logits = model(x)
        _, g = nn.softmax_cross_entropy(logits, y)
        model.backward(g)
        opt.step()
        opt.zero_grad()

    return step


# ---------------------------------------------------------------------------------- measurement
def available_cores():
    """CPUs this process may run on (its affinity mask; os.cpu_count() where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_thread_counts(cores=None):
    """1, 2, 4, ... up to the cores available, and the core count itself."""
    cores = cores or available_cores()
    counts = [1 << i for i in range(cores.bit_length()) if 1 << i <= cores]
    return counts + ([cores] if counts[-1] != cores else [])


def check_thread_counts(threads):
    """A list of distinct thread counts in [1, MAX_THREADS] that includes 1 and one more."""
    threads = list(threads)
    if any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) for t in threads):
        raise TypeError(f"thread counts must be integers, got {threads}")
    if any(not 1 <= t <= cpu.MAX_THREADS for t in threads):
        raise ValueError(f"thread counts must be between 1 and {cpu.MAX_THREADS}, got {threads}")
    if len(set(threads)) != len(threads):
        raise ValueError(f"thread counts must be distinct, got {threads}")
    if 1 not in threads or len(threads) < 2:
        raise ValueError(f"thread counts must include 1 (the baseline of every speedup) and at least one "
                         f"more, got {threads}")
    return sorted(int(t) for t in threads)


def core_warnings(threads, cores=None):
    """One warning per thread count above the cores available (oversubscribed)."""
    cores = cores or available_cores()
    return [f"{t} threads exceed the {cores} cores available: the threads share cores, so this point "
            f"measures oversubscription, not scaling" for t in threads if t > cores]


def measure_threads(workload, threads, mode="strong", *, repeats=5, warmup=1, on_point=None):
    """Median seconds of `workload`'s step at each thread count (weak mode: the workload scaled
    by the thread count).  Returns one dict per thread count: threads, problem, seconds
    (dlcpu.benchmarks.summarize).  on_point(threads) is called after each one (progress)."""
    from threadpoolctl import threadpool_limits

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    points = []
    for t in threads:
        w = workload.scaled(t) if mode == "weak" else workload
        with threadpool_limits(limits=t, user_api="openmp"):
            step = make_step(w, t)
            seconds = benchmarks.time_interleaved([step], repeats, warmup)[0]
        points.append({"threads": t, "problem": w.describe(), "seconds": benchmarks.summarize(seconds)})
        if on_point:
            on_point(t)
    return points


# ------------------------------------------------------------------------------------- analysis
def _check_series(threads, seconds):
    """Validated float arrays (thread counts, values), in the order given."""
    threads = list(threads)
    check_thread_counts(threads)
    values = np.asarray(seconds, dtype=np.float64)
    if values.shape != (len(threads),):
        raise ValueError(f"need one value per thread count, got {values.size} for {len(threads)} thread counts")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"times and speedups must be finite and positive, got {list(map(float, values))}")
    return np.asarray(threads, dtype=np.float64), values


def speedups(threads, seconds, mode="strong"):
    """(speedup, efficiency) arrays: strong S = T(1)/T(N), weak S = N*T(1)/T(N); efficiency S/N."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    n, t = _check_series(threads, seconds)
    s = t[n == 1][0] / t
    if mode == "weak":
        s = s * n
    return s, s / n


def _clamped(value, what):
    clamped = min(1.0, max(0.0, value))
    note = None
    if clamped != value:
        note = f"the least-squares {what} {value:.4g} lies outside [0, 1] and was clamped to {clamped:g}"
    return clamped, note


def fit_amdahl(threads, speedup):
    """Amdahl's parallel fraction p by least squares on 1/S = (1-p) + p/N (strong scaling).
    Writing x = 1 - 1/N, 1 - 1/S = p*x: p = sum(x*(1 - 1/S)) / sum(x^2), clamped to [0, 1].
    Returns a dict: p, p_unclamped, clamped (a note or None), rms_residual (of 1/S)."""
    n, s = _check_series(threads, speedup)
    x, y = 1.0 - 1.0 / n, 1.0 - 1.0 / s
    raw = float(np.dot(x, y) / np.dot(x, x))
    p, note = _clamped(raw, "parallel fraction p")
    resid = (1.0 - p * x) - 1.0 / s
    return {"model": "amdahl", "p": p, "p_unclamped": raw, "clamped": note,
            "rms_residual": float(np.sqrt(np.mean(resid ** 2)))}


def fit_gustafson(threads, scaled_speedup):
    """Gustafson's serial fraction s by least squares on S = N - s(N-1) (weak scaling):
    s = sum((N-1)(N-S)) / sum((N-1)^2), clamped to [0, 1].  Returns a dict: s, s_unclamped,
    clamped (a note or None), rms_residual (of S)."""
    n, sp = _check_series(threads, scaled_speedup)
    x, y = n - 1.0, n - sp
    raw = float(np.dot(x, y) / np.dot(x, x))
    s, note = _clamped(raw, "serial fraction s")
    resid = (n - s * x) - sp
    return {"model": "gustafson", "s": s, "s_unclamped": raw, "clamped": note,
            "rms_residual": float(np.sqrt(np.mean(resid ** 2)))}


def amdahl_speedup(p, n):
    """Amdahl's speedup 1 / ((1-p) + p/N) at N threads."""
    return 1.0 / ((1.0 - p) + p / np.asarray(n, dtype=np.float64))


def gustafson_speedup(s, n):
    """Gustafson's scaled speedup N - s(N-1) at N threads."""
    n = np.asarray(n, dtype=np.float64)
    return n - s * (n - 1.0)


def predict(fit, n):
    """The fitted model's speedup at N threads (array or scalar)."""
    if fit["model"] == "amdahl":
        return amdahl_speedup(fit["p"], n)
    return gustafson_speedup(fit["s"], n)


def analyse(threads, seconds, mode="strong"):
    """Speedups, efficiencies, the mode's fit (Amdahl for strong, Gustafson for weak) and its
    predictions at PREDICT_AT times the largest thread count."""
    s, e = speedups(threads, seconds, mode)
    fit = (fit_amdahl if mode == "strong" else fit_gustafson)(threads, s)
    top = max(threads)
    fit["predicted"] = [{"threads": f * top, "speedup": float(predict(fit, f * top))} for f in PREDICT_AT]
    return {"speedup": [float(v) for v in s], "efficiency": [float(v) for v in e], "fit": fit}


def thread_scaling(workload, threads, mode="strong", *, repeats=5, warmup=1, on_point=None):
    """The whole sweep: measure_threads, then analyse.  `workload` is a Workload or its text.
    Returns a JSON-ready dict (see `dlcpu scale threads --json`)."""
    if isinstance(workload, str):
        workload = parse_workload(workload)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    threads = check_thread_counts(threads)
    check_memory(workload.scaled(max(threads)) if mode == "weak" else workload)
    cores = available_cores()
    points = measure_threads(workload, threads, mode, repeats=repeats, warmup=warmup, on_point=on_point)
    result = analyse(threads, [p["seconds"]["median_s"] for p in points], mode)
    for p, s, e in zip(points, result.pop("speedup"), result.pop("efficiency")):
        p.update(speedup=s, efficiency=e)
    return {"workload": workload.text, "kind": workload.kind, "mode": mode, "cores": cores,
            "timed_region": TIMED_REGION[workload.kind], "repeats": repeats,
            "weak_scaling": "batch (N; M for gemm) times the thread count" if mode == "weak" else None,
            "points": points, "fit": result["fit"], "warnings": core_warnings(threads, cores)}


def plot_scaling(result, path):
    """Write speedup vs threads (measured, ideal, fitted curve to 4x the largest count) as a PNG
    at `path` (returns `path`).  Needs matplotlib (``pip install 'dlcpu[plot]'``)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'dlcpu[plot]'") from None
    threads = [p["threads"] for p in result["points"]]
    measured = [p["speedup"] for p in result["points"]]
    fit = result["fit"]
    top = max(PREDICT_AT) * max(threads)
    grid = np.unique(np.geomspace(1, top, 200))
    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([1, top], [1, top], "--", color="grey", label="ideal")
    label = (f"Amdahl fit, p = {fit['p']:.3f}" if fit["model"] == "amdahl"
             else f"Gustafson fit, s = {fit['s']:.3f}")
    ax.plot(grid, predict(fit, grid), "-", color="tab:blue", label=label)
    ax.plot(threads, measured, "o", color="tab:red", label="measured")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("threads")
    ax.set_ylabel("speedup" if result["mode"] == "strong" else "scaled speedup")
    ax.set_title(f"{result['mode']} scaling: {result['workload']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path
