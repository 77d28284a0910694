"""Fast activation approximations and the Taylor softmax family.

    y = approx.ktanh(x)                        # uint16 bf16 bits -> bits; float32 -> float32
    y = approx.tanh(x, impl="fast")            # impl: "exact" | "fast" | "ktanh"
    y = approx.sigmoid(x, impl="ktanh")        # 1/2 + tanh(x/2)/2 for fast and ktanh
    y = approx.swish(x, beta=1.0, impl=...)    # x sigmoid(beta x)
    y = approx.gelu(x, impl=...)               # tanh form: x/2 (1 + tanh(0.79788 (x + 0.044715 x^3)))
    dx = approx.tanh_backward(dy, y)           # from the forward's output (also sigmoid_backward)
    dx = approx.gelu_backward(dy, x, impl=...) # from the forward's input (also swish_backward)
    p = approx.softmax(z, kind="taylor:4")     # rows of z; kind "softmax" or "taylor:n", n even
    dz = approx.softmax_backward(dp, z, kind="taylor:4", gradient="exact")

Three flavours of every tanh-based function (pyx/kernels/approx_f32.h says how each is built):
"exact" (about 1e-7 relative), "fast" (the rational 7/8 Pade tanh, 9.6e-5 absolute) and "ktanh"
(K-TanH: integer operations on bf16 bit patterns; 8.9e-3 absolute on bf16 inputs, 1.2e-2 on fp32
inputs, which it indexes by their bf16 truncation).  The LSTM, GRU and RNN take
the same names as `activation_impl`.

Arrays of any shape are accepted (float inputs other than float32 are converted to float32,
except by ktanh, which takes bf16 patterns or float32 only; integer, bool and complex inputs are
refused) and results have the input's shape.  `out=` takes a
preallocated C-contiguous float32 array of that shape (uint16 for bf16 K-TanH).  Everything is
validated here; the kernels run without the GIL, split across `n_threads` (default: dlcpu's
thread count) and on the ISA path `isa` (default: the best this CPU has; DLCPU_ISA forces one).

Taylor softmax replaces exp by f_n(z) = sum_{k<=n} z^k/k!; for even n f_n > 0 everywhere, odd n
goes negative and is refused.  It is not shift-invariant, so nothing subtracts the row maximum
(the exp softmax does, as usual).  Soft-margin variants need the labels: they are losses,
dlcpu.nn.softmax_cross_entropy(kind="sm-taylor:n:m").
"""
import math

import numpy as np

from .. import cpu
from .._ext import approx as _approx
from .._validate import fits_in_memory
from .kinds import TAYLOR_ORDERS, parse_loss_kind
from .ktanh_table import PUBLISHED_TABLE, KTanhTable

__all__ = [
    "IMPLS",
    "TAYLOR_ORDERS",
    "check_impl",
    "check_taylor_order",
    "gelu",
    "gelu_backward",
    "ktanh",
    "parse_softmax_kind",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "softmax_backward",
    "swish",
    "swish_backward",
    "tanh",
    "tanh_backward",
]

#: activation flavours, in the order of the kernels' codes
IMPLS = tuple(_approx.IMPLS)


def impl_code(impl):
    """The kernels' code of a flavour name (DLCPU_ACT_* in approx_f32.h)."""
    return _approx.IMPLS[impl]


def check_impl(impl, fn, argument="impl"):
    """An activation flavour name ('exact', 'fast', 'ktanh'); every layer that takes one checks it
    here (`argument`: the name the caller knows it by, such as activation_impl)."""
    if not isinstance(impl, str) or impl not in _approx.IMPLS:
        raise ValueError(f"{fn}: {argument} must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    return impl


def check_taylor_order(n, fn):
    """An order of the Taylor softmax: an even integer in 2..10 (the rules of kinds.parse_loss_kind)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{fn}: the Taylor order must be an integer, got {n!r}")
    return parse_softmax_kind(f"taylor:{int(n)}", fn)[1]


def parse_softmax_kind(kind, fn="softmax"):
    """'softmax' -> ('softmax', None); 'taylor:n' -> ('taylor', n), n even in 2..10.  The margin
    kinds need labels and are refused here (they are losses)."""
    try:
        spec = parse_loss_kind(kind)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{fn}: {exc}") from None
    if spec.name.startswith("sm-"):
        raise ValueError(f"{fn}: kind {kind!r} has a margin on the target class and needs the labels; "
                         "use dlcpu.nn.softmax_cross_entropy(logits, labels, kind=...)")
    return spec.name, spec.order


def _fits(a, buffers, itemsize, fn, name):
    """Refuse (ValueError) a call whose `buffers` arrays of a's size (its contiguous copy, the
    result, temporaries) could never fit in this machine's memory, before anything is allocated:
    a huge np.broadcast_to view would otherwise end in numpy's MemoryError.  (Below 1 GiB the
    question is skipped: asking the OS costs 0.6 us, 10% of a small call.)"""
    n_bytes = buffers * itemsize * a.size
    if n_bytes > 1 << 30:
        fits_in_memory(n_bytes, f"{name} of shape {a.shape} ({buffers} buffers of its size)", fn)


def _float_input(x, fn, name="x", buffers=2):
    """x as a C-contiguous float32 array (float inputs converted), or a TypeError naming the dtype.
    buffers: how many float32 arrays of x's size the call holds at once (input, result, ...)."""
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise TypeError(f"{fn}: {name} must be a floating-point array, got dtype {a.dtype} with shape {a.shape}")
    _fits(a, buffers, 4, fn, name)
    return np.asarray(a, dtype=np.float32, order="C")      # (ascontiguousarray would make 0-d 1-d)


def _output(out, shape, dtype, fn, inputs=()):
    """The result array: a new one, or `out` checked.  `out` may be one of `inputs` itself (the
    kernels are element-wise, or read a row before writing it) but must not partly overlap one:
    they would read values they already overwrote."""
    if out is None:
        return np.empty(shape, dtype)
    flags = out.flags if isinstance(out, np.ndarray) else None
    if flags is None or out.dtype != dtype or out.shape != shape or not flags.c_contiguous:
        got = (f"{out.dtype} {out.shape}{'' if flags.c_contiguous else ' (not C-contiguous)'}"
               if flags is not None else type(out).__name__)
        raise ValueError(f"{fn}: out must be a C-contiguous {np.dtype(dtype)} array of shape {shape}, got {got}")
    if not flags.writeable:
        raise ValueError(f"{fn}: out is read-only")
    for name, a in inputs:   # (all C-contiguous, of out's shape and item size: same start = same memory)
        if out is not a and np.may_share_memory(out, a) and out.ctypes.data != a.ctypes.data:
            raise ValueError(f"{fn}: out partly overlaps {name}; pass {name} itself (in place) or a separate buffer")
    return out


def _flat(a):
    return a if a.ndim == 1 else a.reshape(-1)


def _run_args(n_threads, isa, fn):
    try:
        return cpu.isa_code(isa), cpu.resolve_threads(n_threads)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{fn}: {exc}") from None


def _table_words(table, fn):
    if table is None:
        table = PUBLISHED_TABLE
    if not isinstance(table, KTanhTable):
        raise TypeError(f"{fn}: table must be a dlcpu.approx.ktanh_table.KTanhTable, got {type(table).__name__}")
    if table.mantissa_bits != 7 or table.exponent_bias != 127 or tuple(table.thresholds) != (0.25, 3.75):
        raise ValueError(f"{fn}: the kernels run bf16 tables (mantissa_bits=7, thresholds (0.25, 3.75)), got "
                         f"mantissa_bits={table.mantissa_bits}, thresholds={tuple(table.thresholds)}")
    base, shift = table.combined()
    return np.ascontiguousarray(base, np.uint16), np.ascontiguousarray(shift, np.uint16)


def ktanh(x, *, table=None, out=None, n_threads=None, isa=None):
    """K-TanH of an array of bf16 bit patterns (uint16, or ml_dtypes.bfloat16) or of float32.

    bf16: integer operations on the patterns only; |x| < 0.25 (and denormals, zeros) pass through,
    |x| > 3.75 and +-Inf give +-1, NaN stays the same NaN.  float32: the same regions decided on
    the fp32 value, the identity region returning x unchanged and the table indexed by the bf16
    truncation of x.  Bit-identical on every ISA path.  `table` is a KTanhTable for bf16
    (default: the published one; dlcpu.approx.ktanh_table.fit_ktanh_table makes others)."""
    fn = "ktanh"
    a = np.asarray(x)
    bf16 = a.dtype == np.uint16 or a.dtype.name == "bfloat16"
    if not bf16 and a.dtype != np.float32:
        raise TypeError(f"ktanh: x must be uint16 bf16 bit patterns, ml_dtypes.bfloat16 or float32, got dtype "
                        f"{a.dtype} with shape {a.shape} (convert other floats to float32 first)")
    words = (None, None) if table is None else _table_words(table, fn)
    isa_code, threads = _run_args(n_threads, isa, fn)
    _fits(a, 2, a.dtype.itemsize, fn, "x")
    if bf16:
        plain = a.dtype == np.uint16        # (views only where needed: each costs 0.2 us of a small call)
        bits = a if plain and a.flags.c_contiguous else np.asarray(a, order="C").view(np.uint16)
        y = _output(out.view(np.uint16) if not plain and isinstance(out, np.ndarray) and out.dtype == a.dtype
                    else out, a.shape, np.uint16, fn, (("x", bits),))
        _approx.ktanh_bf16(isa_code, threads, _flat(bits), _flat(y), *words)
        if out is not None:
            return out
        return y.view(a.dtype) if a.dtype != np.uint16 else y
    a = np.asarray(a, order="C")
    y = _output(out, a.shape, np.float32, fn, [("x", a)])
    _approx.activation_f32(isa_code, threads, _approx.OPS["tanh"], 0, _approx.IMPLS["ktanh"], _flat(a),
                           _EMPTY, _flat(y), 1.0, *words)
    return y


_EMPTY = np.empty(0, np.float32)


_FLT_MAX = float(np.finfo(np.float32).max)


def _check_beta(beta, fn):
    """A finite number that stays finite in float32 (the kernels take a float beta: 1e39 would be inf)."""
    try:
        ok = (not isinstance(beta, bool) and isinstance(beta, (int, float, np.floating, np.integer))
              and abs(float(beta)) <= _FLT_MAX)
    except OverflowError:      # an int too large for a float
        ok = False
    if not ok:
        raise ValueError(f"{fn}: beta must be a finite number with |beta| <= {_FLT_MAX:.6g} (float32), got {beta!r}")
    return float(beta)


def _forward(op, x, impl, beta, out, n_threads, isa):
    fn = op
    code = _approx.IMPLS[check_impl(impl, fn)]
    beta = _check_beta(beta, fn)
    a = _float_input(x, fn)
    isa_code, threads = _run_args(n_threads, isa, fn)
    y = _output(out, a.shape, np.float32, fn, [("x", a)])
    _approx.activation_f32(isa_code, threads, _approx.OPS[op], 0, code, _flat(a), _EMPTY, _flat(y), beta,
                           None, None)
    return y


def _backward(op, dy, saved, saved_name, impl, beta, out, n_threads, isa):
    fn = f"{op}_backward"
    code = _approx.IMPLS[check_impl(impl, fn)]
    beta = _check_beta(beta, fn)
    d = _float_input(dy, fn, "dy", buffers=3)
    s = _float_input(saved, fn, saved_name, buffers=3)
    if d.shape != s.shape:
        raise ValueError(f"{fn}: dy must have the shape of the forward's {saved_name}, got dy {d.shape} and "
                         f"{saved_name} {s.shape}")
    isa_code, threads = _run_args(n_threads, isa, fn)
    dx = _output(out, d.shape, np.float32, fn, [("dy", d), (saved_name, s)])
    _approx.activation_f32(isa_code, threads, _approx.OPS[op], 1, code, _flat(s), _flat(d), _flat(dx),
                           beta, None, None)
    return dx


def tanh(x, impl="exact", *, out=None, n_threads=None, isa=None):
    """tanh(x) in the flavour `impl` ('exact', 'fast', 'ktanh')."""
    return _forward("tanh", x, impl, 1.0, out, n_threads, isa)


def sigmoid(x, impl="exact", *, out=None, n_threads=None, isa=None):
    """sigmoid(x); 'fast' and 'ktanh' compute 1/2 + tanh(x/2)/2 with that flavour's tanh."""
    return _forward("sigmoid", x, impl, 1.0, out, n_threads, isa)


def swish(x, beta=1.0, impl="exact", *, out=None, n_threads=None, isa=None):
    """swish(x) = x sigmoid(beta x) (beta=1: SiLU)."""
    return _forward("swish", x, impl, beta, out, n_threads, isa)


def gelu(x, impl="exact", *, out=None, n_threads=None, isa=None):
    """GELU, tanh form: x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return _forward("gelu", x, impl, 1.0, out, n_threads, isa)


def tanh_backward(dy, y, *, out=None, n_threads=None, isa=None):
    """dy (1 - y^2) from the forward's output y (any flavour: the derivative of tanh evaluated at
    the flavour's value, as the recurrent cells do)."""
    return _backward("tanh", dy, y, "y", "exact", 1.0, out, n_threads, isa)


def sigmoid_backward(dy, y, *, out=None, n_threads=None, isa=None):
    """dy y (1 - y) from the forward's output y."""
    return _backward("sigmoid", dy, y, "y", "exact", 1.0, out, n_threads, isa)


def swish_backward(dy, x, beta=1.0, impl="exact", *, out=None, n_threads=None, isa=None):
    """dy (s + beta x s (1 - s)), s = sigmoid(beta x) in the flavour `impl`, from the forward's input."""
    return _backward("swish", dy, x, "x", impl, beta, out, n_threads, isa)


def gelu_backward(dy, x, impl="exact", *, out=None, n_threads=None, isa=None):
    """dy ((1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 0.044715 x^2)), t the flavour's tanh, from the
    forward's input."""
    return _backward("gelu", dy, x, "x", impl, 1.0, out, n_threads, isa)


def _rows(z, fn, name="z", buffers=2):
    a = _float_input(z, fn, name, buffers)
    if a.ndim == 0:
        raise ValueError(f"{fn}: {name} must have at least one axis (the classes), got a scalar")
    return a, a.reshape(math.prod(a.shape[:-1]), a.shape[-1])


def softmax(z, kind="softmax", *, out=None, n_threads=None, isa=None):
    """Softmax-family probabilities along the last axis of z: 'softmax' (max-shifted exp) or
    'taylor:n' (f_n(z) / sum f_n(z), n even in 2..10, never shifted)."""
    fn = "softmax"
    name, order = parse_softmax_kind(kind, fn)
    a, z2 = _rows(z, fn)
    isa_code, threads = _run_args(n_threads, isa, fn)
    p = _output(out, a.shape, np.float32, fn, [("z", a)])
    _approx.softmax_rows_f32(isa_code, threads, _approx.SOFTMAX_KINDS[name], order or 0, z2, p.reshape(z2.shape))
    return p


#: float32 arrays of z's size softmax_backward holds at once (z, dp, dz)
_BACKWARD_BUFFERS = 3


def softmax_backward(dp, z, kind="softmax", gradient="exact", *, n_threads=None, isa=None):
    """dL/dz from dL/dp for p = softmax(z, kind), along the last axis.

    gradient='exact' differentiates the kind's own function (Taylor: f_n' = f_{n-1}, so
    dz_i = f_{n-1}(z_i)/S (dp_i - sum_j dp_j p_j)); gradient='softmax' treats f_n as exp
    (dz_i = p_i (dp_i - sum_j dp_j p_j)), the paper's 'infinite series' rule.  For 'softmax' both
    are the same."""
    fn = "softmax_backward"
    name, order = parse_softmax_kind(kind, fn)
    if not isinstance(gradient, str) or gradient not in ("exact", "softmax"):
        raise ValueError(f"{fn}: gradient must be 'exact' or 'softmax', got {gradient!r}")
    a, z2 = _rows(z, fn, buffers=_BACKWARD_BUFFERS)
    d = _float_input(dp, fn, "dp", buffers=_BACKWARD_BUFFERS)
    if d.shape != a.shape:
        raise ValueError(f"{fn}: dp must have the shape of z, got dp {d.shape} and z {a.shape}")
    isa_code, threads = _run_args(n_threads, isa, fn)
    dz = np.empty(a.shape, np.float32)
    _approx.softmax_rows_backward_f32(isa_code, threads, _approx.SOFTMAX_KINDS[name], order or 0,
                                      int(gradient == "exact"), z2, d.reshape(z2.shape), dz.reshape(z2.shape))
    return dz
