"""Max and average pooling on blocked activations (forward and backward), kernels in pyx/pool.pyx.

    y, arg = max_pool2d(xb, kernel, stride=None, padding=0)     dx = max_pool2d_backward(dy, arg, x_shape)
    y = avg_pool2d(xb, kernel, stride=None, padding=0)          dx = avg_pool2d_backward(dy, x_shape, ...)
    y = global_avg_pool(xb) -> (N, C) array                     dx = global_avg_pool_backward(dy, x_shape)

Inputs and outputs are activation BlockedTensors (no layout conversion); stride defaults to the
kernel size and padding must be at most half the kernel, as in PyTorch.
"""
import numpy as np

from . import cpu
from ._ext import pool as _pool
from .layout import CB, BlockedTensor


def _pair(v, name, fn):
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be an int or an (h, w) pair of ints, got {v!r}")
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(e, (int, np.integer)) for e in v):
        return int(v[0]), int(v[1])
    raise TypeError(f"{fn}: {name} must be an int or an (h, w) pair of ints, got {v!r}")


def _geometry(x, kernel, stride, padding, fn):
    if not isinstance(x, BlockedTensor) or x.kind != "activation" or x.dtype != np.float32:
        raise TypeError(f"{fn}: x must be a float32 activation BlockedTensor")
    r, s = _pair(kernel, "kernel", fn)
    sh, sw = _pair(kernel if stride is None else stride, "stride", fn)
    ph, pw = _pair(padding, "padding", fn)
    if min(r, s, sh, sw) < 1:
        raise ValueError(f"{fn}: kernel and stride must be >= 1, got kernel ({r}, {s}), stride ({sh}, {sw})")
    if ph < 0 or pw < 0 or 2 * ph > r or 2 * pw > s:
        raise ValueError(f"{fn}: padding must be in [0, kernel/2], got padding ({ph}, {pw}) for kernel ({r}, {s})")
    n, c, h, w = x.shape
    p = (h + 2 * ph - r) // sh + 1
    q = (w + 2 * pw - s) // sw + 1
    if p < 1 or q < 1:
        raise ValueError(f"{fn}: output size would be <= 0: kernel ({r}, {s}) on a {h}x{w} input with padding ({ph}, {pw})")
    return (r, s, sh, sw, ph, pw), (n, c, p, q)


def max_pool2d(x, kernel, stride=None, padding=0, *, n_threads=None):
    """Returns (y, arg): y a BlockedTensor, arg the winning positions for max_pool2d_backward."""
    geo, out_shape = _geometry(x, kernel, stride, padding, "max_pool2d")
    y = np.empty((out_shape[0], x.data.shape[1], out_shape[2], out_shape[3], CB), np.float32)
    arg = np.empty(y.shape, np.int32)
    _pool.max_pool_forward(x.data, y, arg, *geo, cpu.resolve_threads(n_threads))
    return BlockedTensor(y, out_shape), arg


def max_pool2d_backward(dy, arg, x_shape, *, n_threads=None):
    if not isinstance(dy, BlockedTensor) or arg.shape != dy.data.shape:
        raise ValueError("max_pool2d_backward: dy must be a BlockedTensor matching the forward output")
    n, _c, h, w = x_shape
    dx = np.empty((n, dy.data.shape[1], h, w, CB), np.float32)
    _pool.max_pool_backward(dy.data, arg, dx, cpu.resolve_threads(n_threads))
    return BlockedTensor(dx, tuple(x_shape))


def avg_pool2d(x, kernel, stride=None, padding=0, *, n_threads=None):
    geo, out_shape = _geometry(x, kernel, stride, padding, "avg_pool2d")
    y = np.empty((out_shape[0], x.data.shape[1], out_shape[2], out_shape[3], CB), np.float32)
    _pool.avg_pool_forward(x.data, y, *geo, cpu.resolve_threads(n_threads))
    return BlockedTensor(y, out_shape)


def avg_pool2d_backward(dy, x_shape, kernel, stride=None, padding=0, *, n_threads=None):
    n, _c, h, w = x_shape
    x_like = BlockedTensor(np.zeros((n, dy.data.shape[1], h, w, CB), np.float32), tuple(x_shape))
    geo, out_shape = _geometry(x_like, kernel, stride, padding, "avg_pool2d_backward")
    if tuple(dy.shape) != out_shape:
        raise ValueError(f"avg_pool2d_backward: dy has shape {tuple(dy.shape)}, the forward output is {out_shape}")
    _pool.avg_pool_backward(dy.data, x_like.data, *geo, cpu.resolve_threads(n_threads))
    return x_like


def global_avg_pool(x):
    """(N, C) float32 means over H and W of an activation BlockedTensor."""
    if not isinstance(x, BlockedTensor) or x.kind != "activation":
        raise TypeError("global_avg_pool: x must be an activation BlockedTensor")
    n, c, _h, _w = x.shape
    return x.data.mean(axis=(2, 3), dtype=np.float32).reshape(n, -1)[:, :c].copy()


def global_avg_pool_backward(dy, x_shape):
    n, c, h, w = x_shape
    if dy.shape != (n, c):
        raise ValueError(f"global_avg_pool_backward: dy must have shape {(n, c)}, got {dy.shape}")
    cbs = -(-c // CB)
    g = np.zeros((n, cbs * CB), np.float32)
    g[:, :c] = dy / (h * w)
    dx = np.broadcast_to(g.reshape(n, cbs, 1, 1, CB), (n, cbs, h, w, CB))
    return BlockedTensor(np.ascontiguousarray(dx), tuple(x_shape))
