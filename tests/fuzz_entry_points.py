"""Fuzz every public entry point with random shapes, dtypes, strides and mismatched pairs.

Run by tests/test_fuzz.py in a subprocess (a segfault must fail the test, not kill the run):

    python fuzz_entry_points.py --seed 0 --cases 40

Each entry point has a builder that makes a valid call at a random small size; a case then applies
one random mutation (a wrong shape, dtype, layout, type, hyperparameter or another problem's
saved state) or none.  Every call must either raise a ValueError/TypeError whose message names
the function, or return a result equal to the float64 reference computed on the same arguments.
Before each call the case is written to stderr, so a crash points at its cause.  The summary is
one JSON object on stdout.
"""
import argparse
import json
import sys
import traceback

import numpy as np

import dlcpu
from dlcpu import _reference as ref
from dlcpu import approx, faults, gemm, nn, norm, pool, quantized, rnn
from dlcpu.approx.ktanh_table import PUBLISHED_TABLE, fit_ktanh_table

try:
    import ml_dtypes
except ImportError:  # optional: the bf16 dtype of K-TanH's bits path
    ml_dtypes = None

RTOL = 1e-4  # relative L2: loose enough for any size here, tight enough to catch a wrong index


def close(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False
    if not (np.isfinite(a) == np.isfinite(b)).all():
        return False
    f = np.isfinite(b)
    d = np.linalg.norm(b[f])
    return np.linalg.norm(a[f] - b[f]) <= RTOL * max(d, 1e-6)


def f32(rng, *shape):
    return rng.uniform(-1, 1, shape).astype(np.float32)


def plain(v):
    return v.numpy() if isinstance(v, dlcpu.BlockedTensor) else v


# ---------------------------------------------------------------- builders: name -> (args, check)
# A builder returns (kwargs, reference) where reference(kwargs, result) -> bool, or None when the
# result cannot be checked independently (then only "no crash, clear error" is asserted).

def conv_problem(rng, blocked):
    n, c, k = rng.integers(1, 3), rng.choice([1, 3, 16, 17]), rng.choice([1, 15, 16, 33])
    r = rng.choice([1, 3])
    stride, pad = int(rng.integers(1, 3)), int(rng.integers(0, 2))
    h, w = int(rng.integers(r, 9)), int(rng.integers(r, 9))
    x, wt = f32(rng, n, c, h, w), f32(rng, k, c, r, r)
    if blocked:
        x, wt = dlcpu.to_blocked(x), dlcpu.block_weights(wt)
    return {"x": x, "w": wt, "stride": stride, "padding": pad}


def b_conv2d(rng):
    kw = conv_problem(rng, bool(rng.integers(2)))
    kw["bias"] = f32(rng, plain(kw["w"]).shape[0])

    def check(kw, y):
        s = dlcpu.conv.conv_shape(plain(kw["x"]).shape, plain(kw["w"]).shape, kw["stride"], kw["padding"])
        return close(plain(y), ref.conv2d_forward(plain(kw["x"]), plain(kw["w"]), kw["bias"],
                                                  (s.stride_h, s.stride_w), (s.pad_h, s.pad_w)))
    return kw, check


def b_conv2d_integer(rng):
    """int8 / dfp16 / ternary: fp32 operands, or operands quantized beforehand (int8 sometimes
    with a u8 output); checked against float64 on the values the kernels multiply."""
    kw = conv_problem(rng, bool(rng.integers(2)))
    precision = str(rng.choice(["int8", "dfp16", "ternary"]))
    kw["precision"] = precision
    if precision == "ternary":
        tw = dlcpu.precision.ternarize(plain(kw["w"]), block=int(rng.choice([4, 8, 16])),
                                       residual=int(rng.integers(0, 3)))
        kw["w"] = tw if rng.integers(2) else quantized.block_ternary_weights(tw)
        kw["levels"] = int(rng.integers(1, tw.levels + 1))
    elif rng.integers(2):
        xb = kw["x"] if isinstance(kw["x"], dlcpu.BlockedTensor) else dlcpu.to_blocked(kw["x"])
        kw["x"], kw["w"] = quantized.quantize_operands(precision, xb, None, plain(kw["w"]))

    def values(kw):
        """(x, w) as float64 NCHW / KCRS values of what the kernels multiply."""
        x = kw["x"] if isinstance(kw["x"], dlcpu.BlockedTensor) else dlcpu.to_blocked(kw["x"])
        if precision == "ternary":
            xq = x if x.precision == "int8" else quantized.to_int8_blocked(x)
            tw = kw["w"] if isinstance(kw["w"], dlcpu.precision.TernaryWeights) else None
            return xq.numpy(), (tw.to_float32(kw["levels"]) if tw is not None else None)
        w = kw["w"]
        xq, wq = quantized.quantize_operands(precision, x, w if isinstance(w, dlcpu.BlockedTensor) else None,
                                             None if isinstance(w, dlcpu.BlockedTensor) else w)
        return xq.numpy(), wq.numpy()

    def check(kw, y):
        x, w = values(kw)
        if w is None:                 # TernaryBlocked: no logical weights kept to compare with
            return True
        s = dlcpu.conv.conv_shape(x.shape, w.shape, kw["stride"], kw["padding"])
        return close(plain(y), ref.conv2d_forward(x, w, None, (s.stride_h, s.stride_w), (s.pad_h, s.pad_w)))
    return kw, check


def b_matmul_integer(rng):
    m, k, n = (int(v) for v in rng.integers(1, 40, 3))
    precision = str(rng.choice(["int8", "dfp16"]))
    kw = {"x": f32(rng, m, k), "y": f32(rng, k, n), "precision": precision}
    if rng.integers(2):
        kw["y"] = gemm.pack_matmul_operand(kw["y"], precision=precision)
    if precision == "int8" and rng.integers(2):          # a calibrated activation scale
        kw["x_scale"], kw["x_unsigned"] = float(rng.uniform(1e-3, 2e-2)), bool(rng.integers(2))
    return kw, None


def b_conv2d_out(rng):
    """out= on the blocked path, sometimes aliasing the input."""
    kw = conv_problem(rng, True)
    kw["padding"] = 0 if plain(kw["w"]).shape[2] == 1 else 1
    kw["stride"] = 1
    y = dlcpu.conv2d(kw["x"], kw["w"], padding=kw["padding"])
    kw["out"] = y if rng.integers(2) or y.data.shape != kw["x"].data.shape else kw["x"]

    def check(kw, res):
        return close(plain(res), ref.conv2d_forward(plain(kw["x"]), plain(kw["w"]), None, (1, 1),
                                                    (kw["padding"],) * 2)) if res is kw["out"] else False
    return kw, None if kw["out"] is kw["x"] else check


def b_conv2d_backward(rng):
    kw = conv_problem(rng, bool(rng.integers(2)))
    y = dlcpu.conv2d(kw["x"], kw["w"], stride=kw["stride"], padding=kw["padding"])
    kw["dy"] = f32(rng, *plain(y).shape)
    if isinstance(kw["x"], dlcpu.BlockedTensor):
        kw["dy"] = dlcpu.to_blocked(kw["dy"])

    def check(kw, res):
        s = dlcpu.conv.conv_shape(plain(kw["x"]).shape, plain(kw["w"]).shape, kw["stride"], kw["padding"])
        dx, dw, db = ref.conv2d_backward(plain(kw["dy"]), plain(kw["x"]), plain(kw["w"]),
                                         (s.stride_h, s.stride_w), (s.pad_h, s.pad_w))
        return close(plain(res.dx), dx) and close(plain(res.dw), dw) and close(res.db, db)
    return kw, check


def b_prepare_winograd(rng):
    return {"w": f32(rng, int(rng.integers(1, 20)), int(rng.integers(1, 20)), 3, 3),
            "algorithm": str(rng.choice(["winograd2", "winograd4"]))}, None


def b_matmul(rng):
    m, k, n = (int(v) for v in rng.integers(1, 40, 3))
    kw = {"x": f32(rng, m, k), "y": f32(rng, k, n)}
    if rng.integers(2):
        kw["y"] = gemm.pack_matmul_operand(kw["y"])
    return kw, lambda kw, z: isinstance(kw["y"], gemm.PackedMatrix) or close(z, ref.matmul(kw["x"], kw["y"]))


def b_brgemm(rng):
    nb, k, m16, n = int(rng.integers(1, 4)), int(rng.integers(1, 17)), int(rng.integers(1, 3)), int(rng.integers(1, 20))
    kw = {"a": f32(rng, nb, k, 16 * m16), "b": f32(rng, nb, n, k)}
    return kw, lambda kw, c: close(c, ref.brgemm(kw["a"], kw["b"]))


def b_layout(rng):
    x = f32(rng, *(int(v) for v in rng.integers(1, 20, 4)))
    return {"x": x}, lambda kw, t: close(dlcpu.from_blocked(t), kw["x"])


def b_block_weights(rng):
    w = f32(rng, *(int(v) for v in rng.integers(1, 20, 2)), 3, 3)
    return {"w": w}, lambda kw, t: close(dlcpu.unblock_weights(t), kw["w"])


def b_from_blocked(rng):
    return {"t": dlcpu.to_blocked(f32(rng, 2, int(rng.integers(1, 33)), 3, 4))}, None


def b_blocked_tensor(rng):
    x = f32(rng, 1, 17, 2, 2)
    t = dlcpu.to_blocked(x)
    return {"data": t.data, "shape": t.shape}, lambda kw, t: close(t.numpy(), x) if kw["shape"] == x.shape else True


def pool_problem(rng):
    x = f32(rng, int(rng.integers(1, 3)), int(rng.integers(1, 20)), int(rng.integers(2, 9)), int(rng.integers(2, 9)))
    return x, int(rng.integers(1, 3)), int(rng.integers(1, 3))


def b_max_pool2d(rng):
    x, k, s = pool_problem(rng)
    return ({"x": dlcpu.to_blocked(x), "kernel": k, "stride": s},
            lambda kw, res: close(res[0].numpy(), ref.max_pool2d(plain(kw["x"]), *_geo(kw))))


def _geo(kw):
    k = kw["kernel"]
    s = kw.get("stride")
    p = kw.get("padding", 0)
    pair = dlcpu._validate.pair
    return pair(k, "k", "t"), pair(k if s is None else s, "s", "t"), pair(p, "p", "t")


def b_max_pool2d_backward(rng):
    x, k, s = pool_problem(rng)
    xb = dlcpu.to_blocked(x)
    y, saved = pool.max_pool2d(xb, k, s)
    dy = f32(rng, *y.shape)
    kw = {"dy": dlcpu.to_blocked(dy), "saved": saved}
    return kw, lambda kw, dx: kw["saved"] is not saved or close(dx.numpy(), ref.max_pool2d_backward(
        plain(kw["dy"]), x, (k, k), (s, s), (0, 0)))


def b_avg_pool2d(rng):
    x, k, s = pool_problem(rng)
    return ({"x": dlcpu.to_blocked(x), "kernel": k, "stride": s},
            lambda kw, y: close(y.numpy(), ref.avg_pool2d(plain(kw["x"]), *_geo(kw))))


def b_avg_pool2d_backward(rng):
    x, k, s = pool_problem(rng)
    y = pool.avg_pool2d(dlcpu.to_blocked(x), k, s)
    kw = {"dy": dlcpu.to_blocked(f32(rng, *y.shape)), "x_shape": x.shape, "kernel": k, "stride": s}
    return kw, lambda kw, dx: close(dx.numpy(), ref.avg_pool2d_backward(plain(kw["dy"]), kw["x_shape"], *_geo(kw)))


def b_global_avg_pool_backward(rng):
    x, _, _ = pool_problem(rng)
    return {"dy": f32(rng, *x.shape[:2]), "x_shape": x.shape}, None


def bn_problem(rng):
    x = f32(rng, int(rng.integers(1, 4)), int(rng.integers(1, 20)), 3, 2)
    cp = -(-x.shape[1] // 16) * 16
    params = [np.zeros(cp, np.float32) for _ in range(4)]
    params[0][: x.shape[1]] = 1.0
    params[3][: x.shape[1]] = 1.0
    return x, params


def b_batchnorm_forward(rng):
    x, (g, b, m, v) = bn_problem(rng)
    kw = {"x": dlcpu.to_blocked(x), "gamma": g, "beta": b, "running_mean": m, "running_var": v, "training": True}
    return kw, lambda kw, res: close(res[0].numpy(), ref.batchnorm_forward(plain(kw["x"]), kw["gamma"][:x.shape[1]],
                                                                        kw["beta"][:x.shape[1]])[0])


def b_batchnorm_backward(rng):
    x, (g, b, m, v) = bn_problem(rng)
    _, saved = norm.batchnorm_forward(dlcpu.to_blocked(x), g, b, m, v, True)
    dy = f32(rng, *x.shape)
    kw = {"dy": dlcpu.to_blocked(dy), "saved": saved}
    return kw, lambda kw, res: kw["saved"] is not saved or close(res[0].numpy(), ref.batchnorm_backward(
        plain(kw["dy"]), x, g[: x.shape[1]])[0])


def b_relu_backward(rng):
    x = f32(rng, 2, int(rng.integers(1, 20)), 3, 3)
    return ({"dy": dlcpu.to_blocked(f32(rng, *x.shape)), "y": dlcpu.to_blocked(np.maximum(x, 0))},
            lambda kw, dx: close(dx.numpy(), np.where(plain(kw["y"]) > 0, plain(kw["dy"]), 0)))


RNN_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def rnn_problem(rng, cell):
    T, N, C, K = (int(v) for v in rng.integers(1, 6, 4))
    K += int(rng.choice([0, 14]))
    g = RNN_GATES[cell]
    return {"x": f32(rng, T, N, C), "w_ih": f32(rng, g * K, C), "w_hh": f32(rng, g * K, K),
            "b_ih": f32(rng, g * K), "b_hh": f32(rng, g * K)}


def rnn_forward_builder(cell):
    fwd = {"lstm": rnn.lstm_forward, "gru": rnn.gru_forward, "rnn": rnn.rnn_forward}[cell]
    reff = {"lstm": ref.lstm_forward, "gru": ref.gru_forward, "rnn": ref.rnn_forward}[cell]

    def build(rng):
        kw = rnn_problem(rng, cell)

        def check(kw, res):
            _, N, _ = kw["x"].shape
            K = kw["w_hh"].shape[1]
            z = np.zeros((N, K), np.float32)
            args = (kw["x"], kw["w_ih"], kw["w_hh"], kw["b_ih"], kw["b_hh"], z) + ((z,) if cell == "lstm" else ())
            return close(res[0], reff(*args)[0])
        return kw, check
    build.__name__ = f"{cell}_forward"
    return build, fwd


def rnn_backward_builder(cell):
    fwd = {"lstm": rnn.lstm_forward, "gru": rnn.gru_forward, "rnn": rnn.rnn_forward}[cell]
    bwd = {"lstm": rnn.lstm_backward, "gru": rnn.gru_backward, "rnn": rnn.rnn_backward}[cell]

    def build(rng):
        kw = rnn_problem(rng, cell)
        out = fwd(**kw, train=True)
        return {"dy": f32(rng, *out[0].shape), "cache": out[-1]}, None
    build.__name__ = f"{cell}_backward"
    return build, bwd


def b_nn_layer(rng):
    """A layer, forward on a random input, then backward on a random dy."""
    c = int(rng.integers(1, 20))
    layer = [nn.Conv2d(c, int(rng.integers(1, 20)), 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
             nn.AvgPool2d(2), nn.GlobalAvgPool()][int(rng.integers(6))]
    return {"layer": layer, "x": dlcpu.to_blocked(f32(rng, 2, c, 4, 4))}, None


def nn_forward_backward(layer, x):
    y = layer(x)
    dy = dlcpu.to_blocked(np.ones(y.shape, np.float32)) if isinstance(y, dlcpu.BlockedTensor) else np.ones_like(y)
    return layer.backward(dy)


def b_nn_recurrent(rng):
    C, K = int(rng.integers(1, 9)), int(rng.integers(1, 20))
    layer = [nn.LSTM, nn.GRU, nn.RNN][int(rng.integers(3))](C, K, num_layers=int(rng.integers(1, 3)),
                                                           bidirectional=bool(rng.integers(2)),
                                                           activation_impl=str(rng.choice(IMPLS)))
    return {"layer": layer, "x": f32(rng, 3, 2, C)}, None


def nn_linear(layer, x):
    y = layer(x)
    return layer.backward(np.ones_like(y))


def b_nn_linear(rng):
    c = int(rng.integers(1, 40))
    return {"layer": nn.Linear(c, int(rng.integers(1, 20))), "x": f32(rng, 3, c)}, None


FLIP_DTYPES = [np.float32, np.int32, np.uint16, np.int16, np.int8, np.uint8]


def b_flip_bits(rng):
    dtype = np.dtype(FLIP_DTYPES[int(rng.integers(len(FLIP_DTYPES)))])
    a = rng.integers(-100, 100, int(rng.integers(1, 40))).astype(dtype)
    n = int(rng.integers(1, 4))
    kw = {"array": a, "offsets": rng.integers(0, a.size, n), "bits": rng.integers(0, 8 * dtype.itemsize, n)}

    def check(kw, flips):
        return np.array_equal(flips.old ^ flips.new, np.uint32(1) << np.asarray(kw["bits"], np.uint32))
    return kw, check


def b_fixed_point_flip(rng):
    total = int(rng.choice([8, 16]))
    kw = {"values": f32(rng, int(rng.integers(1, 20))) * 3, "bits": None, "value_range": float(rng.uniform(0.5, 2)),
          "total_bits": total}
    kw["bits"] = rng.integers(0, total, kw["values"].shape)

    def check(kw, new):
        want = [ref.fixed_point_flip(float(v), int(b), kw["value_range"], kw["total_bits"])
                for v, b in zip(kw["values"], kw["bits"])]
        return np.array_equal(new, np.asarray(want, np.float32))
    return kw, check


def fault_model_problem(rng):
    c = int(rng.choice([1, 5, 17]))
    model = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c, relu=True), nn.GlobalAvgPool(),
                          nn.Linear(c, 4)).eval()
    return faults.GoldenRun(model, dlcpu.to_blocked(f32(rng, 3, 1, 4, 4)))


def b_activation_faults(rng):
    golden = fault_model_problem(rng)
    layer = str(rng.integers(4))
    shape = golden.formats[layer].sample_shape
    n = int(rng.integers(1, 4))
    return {"golden": golden, "layer": layer, "rows": rng.integers(0, 3, n),
            "indices": np.stack([rng.integers(0, d, n) for d in shape], axis=1), "bits": rng.integers(0, 32, n)}, None


def b_weight_fault(rng):
    golden = fault_model_problem(rng)
    tensors = faults.weight_tensors(golden.model)
    t = tensors[int(rng.integers(len(tensors)))]
    return {"golden": golden, "tensor": t, "index": np.array([int(rng.integers(d)) for d in t.shape]),
            "bit": int(rng.integers(32))}, None


# ------------------------------------------------------------- dlcpu.approx and the activation layers
# The twins are dlcpu._reference's float64 flavours (tanh_flavour, sigmoid_flavour, ...), fed the
# float32 inner argument a kernel forms where one exists (beta x for swish, the GELU polynomial):
# K-TanH indexes its table by the bf16 truncation of that argument, and a float64 argument can
# truncate to the neighbouring bf16 value, one table step (~0.02) away (tests/test_approx.py).
IMPLS = ("exact", "fast", "ktanh")
BAD_IMPLS = ("bogus", "EXACT", None, 1)
ACT_OPS = ("tanh", "sigmoid", "swish", "gelu")
#: |got - twin| / max(1, |twin|) per flavour: the measured maxima of tests/test_approx.py (2.2e-7,
#: 1.1e-6, 6e-8) with a margin; backward three times that
ACT_TOL = {"exact": 2e-6, "fast": 6e-6, "ktanh": 2e-6}
SOFTMAX_KINDS = ("softmax",) + tuple(f"taylor:{n}" for n in approx.TAYLOR_ORDERS)
BAD_SOFTMAX_KINDS = ("taylor:3", "taylor:12", "taylor:0", "sm-taylor:4:0.5", "sm-softmax:0.1", "exp", "", None, 4)
KTANH_STEP = 2.0 ** -7   # the largest step between neighbouring K-TanH outputs
_FITTED = []


def fitted_table():
    if not _FITTED:
        _FITTED.append(fit_ktanh_table())
    return _FITTED[0]


def act_array(rng, scale=None):
    """A float32 array of 0 to 3 axes (sometimes empty, sometimes long enough for two threads),
    values uniform in +-scale (scale up to 10: the saturated regions too)."""
    scale = float(rng.choice([1.0, 4.0, 10.0])) if scale is None else scale
    if rng.integers(8) == 0:
        return f32(rng, int(rng.integers(8192, 20000))) * np.float32(scale)
    shape = tuple(int(v) for v in rng.integers(0 if rng.integers(6) == 0 else 1, 9, int(rng.integers(0, 4))))
    return f32(rng, *shape) * np.float32(scale)


def saved_grad_twin(op, dy, y):
    """tanh/sigmoid backward from the forward's output y."""
    d, y = np.asarray(dy, np.float64), np.asarray(y, np.float64)
    return d * ((1.0 - y * y) if op == "tanh" else y * (1.0 - y))


def act_close(got, want, tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape or not np.array_equal(np.isnan(got), np.isnan(want)):
        return False
    f = ~np.isnan(want)
    return bool(np.all(np.abs(got[f] - want[f]) <= tol * np.maximum(1.0, np.abs(want[f]))))


def pick(rng, good, bad, p_bad=5):
    """One of `good`, or one of `bad` one time in p_bad: (value, valid)."""
    if rng.integers(p_bad) == 0:
        return bad[int(rng.integers(len(bad)))], False
    return good[int(rng.integers(len(good)))], True


def b_ktanh(rng):
    """bf16 bit patterns (uint16 or ml_dtypes.bfloat16; every pattern: NaN, Inf, denormals) or
    float32 (values and random bit patterns), published or fitted table, sometimes out= (in place)."""
    kind = int(rng.integers(3 if ml_dtypes is not None else 2))
    n = int(rng.integers(0, 300)) if rng.integers(8) else int(rng.integers(8192, 20000))
    if kind == 1:
        x = (f32(rng, n) * np.float32(rng.choice([1.0, 4.0])) if rng.integers(2)
             else rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32))
    else:
        x = rng.integers(0, 1 << 16, n).astype(np.uint16)
        if kind == 2:
            x = x.view(ml_dtypes.bfloat16)
    if rng.integers(2):
        x = x.reshape(-1, 3) if n % 3 == 0 else x
    x0 = x.copy()
    kw = {"x": x, "n_threads": int(rng.integers(1, 3))}
    table = [None, PUBLISHED_TABLE, fitted_table()][int(rng.integers(3))]
    if table is not None:
        kw["table"] = table
    kw["out"] = None if rng.integers(4) else x if rng.integers(2) else np.empty_like(x)

    def check(kw, y):
        if x0.dtype == np.float32:
            return np.array_equal(np.asarray(y).view(np.uint32), ref.ktanh_f32(x0, table).view(np.uint32))
        return (y.dtype == x0.dtype or kw["out"] is not None) and np.array_equal(
            np.asarray(y).view(np.uint16), ref.ktanh_bf16_bits(x0.view(np.uint16), table))
    return kw, check


def act_forward_builder(op):
    def build(rng):
        x = act_array(rng)
        x0 = x.copy()
        impl, ok = pick(rng, IMPLS, BAD_IMPLS)
        kw = {"x": x, "impl": impl, "n_threads": int(rng.integers(1, 3))}
        beta = 1.0
        if op == "swish" and rng.integers(2):
            beta = kw["beta"] = float(np.float32(rng.choice([0.0, 0.5, 1.7, -2.0, 10.0])))
        kw["out"] = None if rng.integers(4) else x if rng.integers(2) else np.empty_like(x)

        def check(kw, y):
            return ok and act_close(y, ref.kernel_flavour(op, x0, impl, beta), ACT_TOL[impl])
        return kw, check
    build.__name__ = op
    return build, getattr(approx, op)


def act_backward_builder(op):
    """dy and what the backward reads (y = the forward's output for tanh/sigmoid, x for swish/GELU);
    one time in six a dy of another shape (a broadcastable one included), which must be refused."""
    saved_name = "y" if op in ("tanh", "sigmoid") else "x"

    def build(rng):
        x = act_array(rng)
        impl, ok = pick(rng, IMPLS, BAD_IMPLS) if saved_name == "x" else ("exact", True)
        saved = getattr(approx, op)(x, impl="fast") if saved_name == "y" else x
        dy = f32(rng, *saved.shape)
        if rng.integers(6) == 0:
            # (at most 3 axes, as act_array: m_type blocks 4-d arrays, which an empty one cannot be)
            shapes = [s for s in [(1,), (*saved.shape[:-1], saved.shape[-1] + 1) if saved.ndim else (2,),
                                  (saved.size + 1,), saved.shape[::-1], (*saved.shape[1:], 1)] if s != saved.shape]
            dy, ok = f32(rng, *shapes[int(rng.integers(len(shapes)))]), False
        d0, s0 = dy.copy(), saved.copy()
        kw = {"dy": dy, saved_name: saved, "n_threads": int(rng.integers(1, 3))}
        beta = 1.0
        if saved_name == "x":
            kw["impl"] = impl
            if op == "swish" and rng.integers(2):
                beta = kw["beta"] = float(np.float32(rng.choice([0.5, 1.7, -2.0])))
        kw["out"] = None if rng.integers(4) else dy if rng.integers(2) else np.empty_like(dy)

        def check(kw, dx):
            if not ok:
                return False
            if saved_name == "y":
                return act_close(dx, saved_grad_twin(op, d0, s0), ACT_TOL["exact"])
            return act_close(dx, d0.astype(np.float64) * ref.kernel_flavour_grad(op, s0, impl, beta), 3 * ACT_TOL[impl])
        return kw, check
    build.__name__ = f"{op}_backward"
    return build, getattr(approx, f"{op}_backward")


def softmax_twin(z, kind):
    rows = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
    p = ref.softmax(rows) if kind == "softmax" else ref.taylor_softmax(rows, int(kind.split(":")[1]))
    return p.reshape(z.shape)


def softmax_problem(rng):
    shape = tuple(int(v) for v in rng.integers(0 if rng.integers(6) == 0 else 1, 7, int(rng.integers(0, 3))))
    return f32(rng, *shape, int(rng.integers(1, 40))) * np.float32(rng.choice([1.0, 3.0]))


def b_softmax(rng):
    z = softmax_problem(rng)
    z0 = z.copy()
    kind, ok = pick(rng, SOFTMAX_KINDS, BAD_SOFTMAX_KINDS, 4)
    kw = {"z": z, "kind": kind, "n_threads": int(rng.integers(1, 3))}
    kw["out"] = None if rng.integers(4) else z if rng.integers(2) else np.empty_like(z)
    return kw, lambda kw, p: ok and close(p, softmax_twin(z0, kind))


def b_softmax_backward(rng):
    z = softmax_problem(rng)
    dp = f32(rng, *z.shape)
    kind, ok = pick(rng, SOFTMAX_KINDS, BAD_SOFTMAX_KINDS, 4)
    gradient, ok_g = pick(rng, ("exact", "softmax"), ("taylor", None, "EXACT"), 6)
    if rng.integers(6) == 0:
        shapes = [s for s in [(*z.shape[:-1], z.shape[-1] + 1), z.shape[-1:], (1,), (*z.shape[1:], 1)] if s != z.shape]
        dp, ok = f32(rng, *shapes[int(rng.integers(len(shapes)))]), False
    kw = {"dp": dp, "z": z, "kind": kind, "gradient": gradient, "n_threads": int(rng.integers(1, 3))}
    d0, z0 = dp.copy(), z.copy()

    def check(kw, dz):
        if not (ok and ok_g):
            return False
        rows, d2 = z0.reshape(-1, z0.shape[-1]), d0.reshape(-1, z0.shape[-1])
        if kind == "softmax":
            p = ref.softmax(rows)
            want = p * (d2 - (d2 * p).sum(axis=1, keepdims=True))
        else:
            want = ref.taylor_softmax_backward(d2, rows, int(kind.split(":")[1]), gradient)
        # (relative L2 as close(), floored at 1e-3 |dp|: with one class the gradient is 0 and the
        # float32 dp - sum(dp p) leaves a rounding residue of a few 1e-8)
        dz, want = np.asarray(dz, np.float64), want.reshape(z0.shape)
        return dz.shape == want.shape and bool(np.linalg.norm(dz - want) <= RTOL * max(
            np.linalg.norm(want), 1e-3 * np.linalg.norm(d0), 1e-6))
    return kw, check


ACT_LAYERS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "swish": nn.Swish, "gelu": nn.GELU}


def b_nn_activation(rng):
    """nn.Tanh/Sigmoid/Swish/GELU, forward on a BlockedTensor (padded channels) or a plain array,
    then backward on a dy of the same kind; the result is (y, dx)."""
    op = ACT_OPS[int(rng.integers(4))]
    impl = str(rng.choice(IMPLS))
    beta = float(np.float32(rng.choice([1.0, 0.5, 1.7]))) if op == "swish" else 1.0
    layer = nn.Swish(beta, impl) if op == "swish" else ACT_LAYERS[op](impl)
    blocked = bool(rng.integers(2))
    x = f32(rng, int(rng.integers(1, 3)), int(rng.integers(1, 20)), int(rng.integers(1, 4)), int(rng.integers(1, 4))) \
        if blocked else act_array(rng, 4.0)
    x = x * np.float32(3)
    dy = f32(rng, *x.shape)
    x0, d0 = x.copy(), dy.copy()
    if blocked:
        x, dy = dlcpu.to_blocked(x), dlcpu.to_blocked(dy)

    def check(kw, res):
        y, dx = res
        if isinstance(kw["x"], dlcpu.BlockedTensor) != isinstance(y, dlcpu.BlockedTensor):
            return False
        if isinstance(y, dlcpu.BlockedTensor) and x0.shape[1] % 16 and np.any(y.data[:, -1, ..., x0.shape[1] % 16:]):
            return False   # padded channels must stay zero (sigmoid(0) = 1/2)
        yv = plain(y)
        if not act_close(yv, ref.kernel_flavour(op, x0, impl, beta), ACT_TOL[impl]):
            return False
        if op in ("tanh", "sigmoid"):
            return act_close(plain(dx), saved_grad_twin(op, d0, yv), ACT_TOL["exact"])
        return act_close(plain(dx), d0.astype(np.float64) * ref.kernel_flavour_grad(op, x0, impl, beta), 3 * ACT_TOL[impl])
    return {"layer": layer, "x": x, "dy": dy}, check


def nn_activation_forward_backward(layer, x, dy):
    y = layer(x)
    return y, layer.backward(dy)


def b_lstm_flavour(rng):
    """rnn.lstm_forward with a random activation_impl against ref.lstm_forward of that flavour.
    K-TanH: the twin truncates the float64 pre-activation, the kernel its float32 GEMM sum, so an
    element can land one table step away and carry it through the recurrence: the result must be
    within 4 steps of the K-TanH twin and (relative L2) at least 4x closer to it than to the exact
    twin (measured over 3000 such problems: at most 0.063x, max 0.0022 abs)."""
    kw = rnn_problem(rng, "lstm")
    impl, ok = pick(rng, IMPLS, BAD_IMPLS)
    kw["activation_impl"] = impl
    kw["n_threads"] = int(rng.integers(1, 3))

    def check(kw, res):
        if not ok:
            return False
        _, N, _ = kw["x"].shape
        z = np.zeros((N, kw["w_hh"].shape[1]), np.float32)
        args = (kw["x"], kw["w_ih"], kw["w_hh"], kw["b_ih"], kw["b_hh"], z, z)
        y, h, c, _ = ref.lstm_forward(*args, impl=impl)
        got, want = (res[0], *res[1]), (y, h, c)
        if impl != "ktanh":
            return all(close(a, b) for a, b in zip(got, want))
        exact = ref.lstm_forward(*args)[:3]
        rel = [np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-6) for a, b in zip(got, want)]
        rel_e = [np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-6) for a, b in zip(got, exact)]
        return all(np.abs(a - b).max() <= 4 * KTANH_STEP and r <= 0.25 * max(re, 1e-9)
                   for a, b, r, re in zip(got, want, rel, rel_e))
    return kw, check


ENTRY_POINTS = {
    "faults.flip_bits": (b_flip_bits, faults.flip_bits),
    "faults.fixed_point_flip": (b_fixed_point_flip, faults.fixed_point_flip),
    "faults.activation_faults": (b_activation_faults, faults.activation_faults),
    "faults.weight_fault": (b_weight_fault, faults.weight_fault),
    "conv2d": (b_conv2d, dlcpu.conv2d),
    "conv2d(out=)": (b_conv2d_out, dlcpu.conv2d),
    "conv2d(precision=int8|dfp16|ternary)": (b_conv2d_integer, dlcpu.conv2d),
    "matmul(precision=int8|dfp16)": (b_matmul_integer, dlcpu.matmul),
    "conv2d_backward": (b_conv2d_backward, dlcpu.conv2d_backward),
    "prepare_winograd": (b_prepare_winograd, dlcpu.prepare_winograd),
    "matmul": (b_matmul, dlcpu.matmul),
    "brgemm": (b_brgemm, dlcpu.brgemm),
    "to_blocked": (b_layout, dlcpu.to_blocked),
    "block_weights": (b_block_weights, dlcpu.block_weights),
    "from_blocked": (b_from_blocked, dlcpu.from_blocked),
    "BlockedTensor": (b_blocked_tensor, dlcpu.BlockedTensor),
    "max_pool2d": (b_max_pool2d, pool.max_pool2d),
    "max_pool2d_backward": (b_max_pool2d_backward, pool.max_pool2d_backward),
    "avg_pool2d": (b_avg_pool2d, pool.avg_pool2d),
    "avg_pool2d_backward": (b_avg_pool2d_backward, pool.avg_pool2d_backward),
    "global_avg_pool_backward": (b_global_avg_pool_backward, pool.global_avg_pool_backward),
    "batchnorm_forward": (b_batchnorm_forward, norm.batchnorm_forward),
    "batchnorm_backward": (b_batchnorm_backward, norm.batchnorm_backward),
    "relu_backward": (b_relu_backward, norm.relu_backward),
    "nn layer": (b_nn_layer, nn_forward_backward),
    "nn.Linear": (b_nn_linear, nn_linear),
    "nn recurrent": (b_nn_recurrent, nn_forward_backward),
}
for _cell in RNN_GATES:
    ENTRY_POINTS[f"{_cell}_forward"] = rnn_forward_builder(_cell)
    ENTRY_POINTS[f"{_cell}_backward"] = rnn_backward_builder(_cell)
ENTRY_POINTS["approx.ktanh"] = (b_ktanh, approx.ktanh)
for _op in ACT_OPS:
    ENTRY_POINTS[f"approx.{_op}"] = act_forward_builder(_op)
    ENTRY_POINTS[f"approx.{_op}_backward"] = act_backward_builder(_op)
ENTRY_POINTS["approx.softmax"] = (b_softmax, approx.softmax)
ENTRY_POINTS["approx.softmax_backward"] = (b_softmax_backward, approx.softmax_backward)
ENTRY_POINTS["nn activation"] = (b_nn_activation, nn_activation_forward_backward)
ENTRY_POINTS["lstm_forward(activation_impl=)"] = (b_lstm_flavour, rnn.lstm_forward)


# ---------------------------------------------------------------------------------- mutations
def m_none(rng, kw, build):
    return "valid", True


def m_shape(rng, kw, build):
    keys = [k for k, v in kw.items() if isinstance(v, np.ndarray) and v.ndim]
    if not keys:
        return None, False
    k = keys[int(rng.integers(len(keys)))]
    shape = list(kw[k].shape)
    axis = int(rng.integers(len(shape)))
    shape[axis] = int(rng.choice([0, 1, shape[axis] + 1, shape[axis] + 16]))
    kw[k] = f32(rng, *shape)
    return f"{k}.shape={tuple(shape)}", False


def m_dtype(rng, kw, build):
    keys = [k for k, v in kw.items() if isinstance(v, np.ndarray)]
    if not keys:
        return None, False
    k = keys[int(rng.integers(len(keys)))]
    dt = rng.choice([np.float64, np.float16, np.int32, np.uint8])
    kw[k] = kw[k].astype(dt)
    return f"{k}.dtype={np.dtype(dt).name}", False


def m_noncontig(rng, kw, build):
    """Same values, strided view: must give the same (correct) result or a clear refusal."""
    keys = [k for k, v in kw.items() if isinstance(v, np.ndarray) and v.ndim and v.shape[-1] > 0]
    if not keys:
        return None, False
    k = keys[int(rng.integers(len(keys)))]
    kw[k] = np.repeat(kw[k], 2, axis=-1)[..., ::2]
    return f"{k} non-contiguous", True


def m_type(rng, kw, build):
    k = list(kw)[int(rng.integers(len(kw)))]
    v = kw[k]
    choices = [None, "text", [1, 2, 3], 3.5]
    if isinstance(v, np.ndarray) and v.ndim == 4:
        choices.append(dlcpu.to_blocked(v.astype(np.float32)))
    if isinstance(v, dlcpu.BlockedTensor):
        choices.append(v.data)
    kw[k] = choices[int(rng.integers(len(choices)))]
    return f"{k}={type(kw[k]).__name__}", False


def m_int(rng, kw, build):
    keys = [k for k, v in kw.items() if k in ("stride", "padding", "kernel", "n_threads")]
    if not keys:
        return None, False
    k = keys[int(rng.integers(len(keys)))]
    kw[k] = [0, -1, 10**9, 10**7, True, (1,), (1, 2, 3), 2.5, (2, 10**8)][int(rng.integers(9))]
    return f"{k}={kw[k]!r}", False


def m_swap(rng, kw, build):
    """Another problem's saved state / dy / shape: a mismatched pair."""
    other, _ = build(rng)
    keys = [k for k in kw if k in ("saved", "cache", "dy", "dp", "x_shape", "y", "out")]
    if not keys:
        return None, False
    k = keys[int(rng.integers(len(keys)))]
    kw[k] = other[k]
    return f"{k} from another problem", False


def m_nonfinite(rng, kw, build):
    keys = [k for k, v in kw.items() if isinstance(v, np.ndarray) and v.dtype == np.float32 and v.size]
    if not keys:
        return None, False
    k = keys[int(rng.integers(len(keys)))]
    flat = kw[k].reshape(-1)
    flat[int(rng.integers(flat.size))] = rng.choice([np.nan, np.inf, -np.inf])
    return f"{k} has a NaN/Inf", False


MUTATIONS = [m_none, m_none, m_shape, m_dtype, m_noncontig, m_type, m_int, m_swap, m_nonfinite]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=30, help="cases per entry point")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    summary = {"cases": 0, "refused": 0, "accepted": 0, "checked": 0, "failures": []}
    for name, (build, fn) in ENTRY_POINTS.items():
        for i in range(args.cases):
            kw, check = build(rng)
            what, checkable = MUTATIONS[int(rng.integers(len(MUTATIONS)))](rng, kw, build)
            if what is None:
                what, checkable = "valid", True
            case = f"{name} #{i}: {what}"
            print(case, file=sys.stderr, flush=True)
            summary["cases"] += 1
            try:
                res = fn(**kw)
            except (ValueError, TypeError) as exc:
                summary["refused"] += 1
                text = str(exc)
                if not text or len(text.splitlines()) > 3:
                    summary["failures"].append(f"{case}: unclear {type(exc).__name__}: {text!r}")
                continue
            except Exception as exc:  # noqa: BLE001 -- any other exception is the finding being recorded
                summary["failures"].append(f"{case}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
                continue
            summary["accepted"] += 1
            if checkable and check is not None:
                summary["checked"] += 1
                try:
                    ok = check(kw, res)
                except Exception as exc:  # noqa: BLE001 -- a check that raises is a wrong result
                    ok = False
                    summary["failures"].append(f"{case}: check raised {type(exc).__name__}: {exc}")
                if not ok:
                    summary["failures"].append(f"{case}: wrong result")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
