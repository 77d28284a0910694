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
from dlcpu import faults, gemm, nn, norm, pool, rnn

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
                                                           bidirectional=bool(rng.integers(2)))
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


ENTRY_POINTS = {
    "faults.flip_bits": (b_flip_bits, faults.flip_bits),
    "faults.fixed_point_flip": (b_fixed_point_flip, faults.fixed_point_flip),
    "faults.activation_faults": (b_activation_faults, faults.activation_faults),
    "faults.weight_fault": (b_weight_fault, faults.weight_fault),
    "conv2d": (b_conv2d, dlcpu.conv2d),
    "conv2d(out=)": (b_conv2d_out, dlcpu.conv2d),
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
    keys = [k for k, v in kw.items() if k in ("stride", "padding", "kernel")]
    if not keys:
        return None, False
    k = keys[int(rng.integers(len(keys)))]
    kw[k] = [0, -1, 10**9, 10**7, True, (1,), (1, 2, 3), 2.5, (2, 10**8)][int(rng.integers(9))]
    return f"{k}={kw[k]!r}", False


def m_swap(rng, kw, build):
    """Another problem's saved state / dy / shape: a mismatched pair."""
    other, _ = build(rng)
    keys = [k for k in kw if k in ("saved", "cache", "dy", "x_shape", "y", "out")]
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
