"""Max and average pooling on blocked activations (forward and backward), kernels in pyx/pool.pyx.

    y, saved = max_pool2d(xb, kernel, stride=None, padding=0)   dx = max_pool2d_backward(dy, saved)
    y = avg_pool2d(xb, kernel, stride=None, padding=0)          dx = avg_pool2d_backward(dy, x_shape, ...)
    y = global_avg_pool(xb) -> (N, C) array                     dx = global_avg_pool_backward(dy, x_shape)

Inputs and outputs are activation BlockedTensors (no layout conversion); stride defaults to the
kernel size and padding must be at most half the kernel, as in PyTorch.  Max pooling hands its
backward an opaque MaxPoolSaved (winning positions plus the input shape), so the two cannot be
mismatched; every extent is checked here before a nogil kernel runs.
"""
import numpy as np

from . import cpu
from ._ext import pool as _pool
from ._validate import blocked_activation, fits_in_memory, float32_array, pair, shape4
from .layout import CB, BlockedTensor, blocked_shape

# Pool kinds of pyx/pool.pyx's drivers, and the unused `arg` operand of average pooling.
_MAX, _AVG = 0, 1
_NO_ARG = np.empty((0, 1, 1, 1, CB), np.int32)


class MaxPoolSaved:
    """What max_pool2d_backward needs from its forward; opaque to callers.  The backward checks
    its parts against each other again (_check), since a caller can still reach them."""

    __slots__ = ("_arg", "_geo", "_x_shape")

    def __init__(self, arg, geo, x_shape):
        self._arg, self._geo, self._x_shape = arg, geo, tuple(x_shape)

    def __repr__(self):
        return f"MaxPoolSaved(x_shape={self._x_shape}, y_blocks={self._arg.shape})"

    def _check(self, fn):
        """The winners' array must have the forward output's blocked shape (the kernel itself
        skips a recorded position outside the input plane)."""
        arg, geo, x_shape = self._arg, self._geo, self._x_shape
        ok = (isinstance(arg, np.ndarray) and arg.dtype == np.int32 and arg.flags.c_contiguous
              and isinstance(geo, tuple) and len(geo) == 6 and len(x_shape) == 4)
        if ok:
            n, c, h, w = x_shape
            r, s, sh, sw, ph, pw = geo
            p, q = (h + 2 * ph - r) // sh + 1, (w + 2 * pw - s) // sw + 1
            ok = arg.shape == (n, -(-c // CB), p, q, CB)
        if not ok:
            raise ValueError(f"{fn}: saved is not a consistent MaxPoolSaved (its parts were changed after "
                             "max_pool2d made it)")


def _geometry(x, kernel, stride, padding, fn, precision="fp32"):
    blocked_activation(x, "x", fn, precision)
    r, s = pair(kernel, "kernel", fn)
    sh, sw = pair(kernel if stride is None else stride, "stride", fn)
    ph, pw = pair(padding, "padding", fn)
    if min(r, s, sh, sw) < 1:
        raise ValueError(f"{fn}: kernel and stride must be >= 1, got kernel ({r}, {s}), stride ({sh}, {sw})")
    if ph < 0 or pw < 0 or 2 * ph > r or 2 * pw > s:
        raise ValueError(f"{fn}: padding must be in [0, kernel/2], got padding ({ph}, {pw}) for kernel ({r}, {s})")
    n, c, h, w = x.shape
    if r > h + 2 * ph or s > w + 2 * pw:
        raise ValueError(f"{fn}: output size would be <= 0: kernel ({r}, {s}) on a {h}x{w} input with padding ({ph}, {pw})")
    # A stride beyond the padded extent leaves one output row (column) whatever its value, so it
    # is the same pooling as that extent, which keeps every value in the kernel's C int range.
    sh, sw = min(sh, h + 2 * ph), min(sw, w + 2 * pw)
    if r * s >= 2**31:
        raise ValueError(f"{fn}: the kernel's area must be below 2**31 taps, got kernel ({r}, {s})")
    p = (h + 2 * ph - r) // sh + 1
    q = (w + 2 * pw - s) // sw + 1
    return (r, s, sh, sw, ph, pw), (n, c, p, q)


def max_pool2d(x, kernel, stride=None, padding=0, *, n_threads=None):
    """Returns (y, saved): y a BlockedTensor, saved what max_pool2d_backward needs.  u8 codes (an
    int8 activation BlockedTensor: a quantized model's) pool to codes of the same scale, with
    saved None (inference only): the max code is the max value's code."""
    if isinstance(x, BlockedTensor) and x.precision == "int8":
        geo, out_shape = _geometry(x, kernel, stride, padding, "max_pool2d", "int8")
        y = np.empty((out_shape[0], x.data.shape[1], out_shape[2], out_shape[3], CB), np.uint8)
        _pool.max_pool_u8(x.data, y, *geo, cpu.resolve_threads(n_threads))
        return BlockedTensor(y, out_shape, "activation", scale=x.scale, precision="int8",
                             _code_bound=x.code_bound), None      # (a maximum of codes is no larger)
    geo, out_shape = _geometry(x, kernel, stride, padding, "max_pool2d")
    y = np.empty((out_shape[0], x.data.shape[1], out_shape[2], out_shape[3], CB), np.float32)
    arg = np.empty(y.shape, np.int32)
    _pool.pool_pass(x.data, y, arg, _MAX, False, *geo, cpu.resolve_threads(n_threads), cpu.isa_code(None))
    return BlockedTensor(y, out_shape), MaxPoolSaved(arg, geo, x.shape)


def max_pool2d_backward(dy, saved, *, n_threads=None):
    """dx: dy routed to the positions that won the forward's max."""
    fn = "max_pool2d_backward"
    if not isinstance(saved, MaxPoolSaved):
        raise TypeError(f"{fn}: saved must be the MaxPoolSaved that max_pool2d returned, got {type(saved).__name__}")
    saved._check(fn)
    blocked_activation(dy, "dy", fn)
    y_shape = (saved._x_shape[0], saved._x_shape[1]) + saved._arg.shape[2:4]
    if tuple(dy.shape) != y_shape:
        raise ValueError(f"{fn}: dy has shape {tuple(dy.shape)} but the forward output was {y_shape}")
    dx = np.empty(blocked_shape(saved._x_shape), np.float32)
    _pool.pool_pass(dy.data, dx, saved._arg, _MAX, True, *saved._geo, cpu.resolve_threads(n_threads))
    return BlockedTensor(dx, saved._x_shape)


def avg_pool2d(x, kernel, stride=None, padding=0, *, n_threads=None):
    geo, out_shape = _geometry(x, kernel, stride, padding, "avg_pool2d")
    y = np.empty((out_shape[0], x.data.shape[1], out_shape[2], out_shape[3], CB), np.float32)
    _pool.pool_pass(x.data, y, _NO_ARG, _AVG, False, *geo, cpu.resolve_threads(n_threads))
    return BlockedTensor(y, out_shape)


def avg_pool2d_backward(dy, x_shape, kernel, stride=None, padding=0, *, n_threads=None):
    """dx for y = avg_pool2d(x, kernel, stride, padding), x of logical shape x_shape."""
    fn = "avg_pool2d_backward"
    blocked_activation(dy, "dy", fn)
    x_shape = shape4(x_shape, "x_shape", fn)
    if tuple(dy.shape[:2]) != x_shape[:2]:
        raise ValueError(f"{fn}: dy has shape {tuple(dy.shape)}, which cannot come from an input of shape {x_shape}")
    fits_in_memory(4 * int(np.prod(blocked_shape(x_shape), dtype=np.float64)), f"dx of shape {x_shape}", fn)
    x_like = BlockedTensor(np.zeros(blocked_shape(x_shape), np.float32), x_shape)
    geo, out_shape = _geometry(x_like, kernel, stride, padding, fn)
    if tuple(dy.shape) != out_shape:
        raise ValueError(f"{fn}: dy has shape {tuple(dy.shape)}, the forward output is {out_shape}")
    _pool.pool_pass(dy.data, x_like.data, _NO_ARG, _AVG, True, *geo, cpu.resolve_threads(n_threads))
    return x_like


def global_avg_pool(x, *, n_threads=None):
    """(N, C) float32 means over H and W of an activation BlockedTensor."""
    blocked_activation(x, "x", "global_avg_pool")
    n, c, _h, _w = x.shape
    y = np.empty((n, c), np.float32)
    _pool.global_avg_pool_forward(x.data, y, cpu.resolve_threads(n_threads))
    return y


def global_avg_pool_backward(dy, x_shape, *, n_threads=None):
    fn = "global_avg_pool_backward"
    n, c, h, w = shape4(x_shape, "x_shape", fn)
    dy = float32_array(dy, "dy", fn, shape=(n, c))
    fits_in_memory(4 * int(np.prod(blocked_shape((n, c, h, w)), dtype=np.float64)), f"dx of shape {(n, c, h, w)}", fn)
    dx = np.empty(blocked_shape((n, c, h, w)), np.float32)
    _pool.global_avg_pool_backward(dy, dx, cpu.resolve_threads(n_threads))
    return BlockedTensor(dx, (n, c, h, w))
