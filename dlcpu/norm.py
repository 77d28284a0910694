"""Batch normalization and ReLU on blocked activations (kernels in pyx/norm.pyx).

    y, saved = batchnorm_forward(xb, gamma, beta, running_mean, running_var, training, relu=False)
    dx, dgamma, dbeta = batchnorm_backward(dy, saved)      # relu=True: the ReLU's backward too
    dx = relu_backward(dy, y)

    # a ResNet block's end, relu(bn(x) + shortcut), in one pass; its backward:
    y, saved = batchnorm_forward(xb, ..., relu=True, residual=shortcut)
    g = relu_backward(dy, y)                                # the gradient of the sum (and the shortcut's)
    dx, dgamma, dbeta = batchnorm_backward(g, saved)

out_precision='bf16' (mixed-precision training) writes y or dx as a bf16 BlockedTensor: the
patterns dlcpu.precision.fp32_to_bf16_bits gives for the fp32 result, rounded inside the kernel
(no fp32 tensor in memory), for a bf16 convolution that reads them as they are.  A fused ReLU's
backward then masks by the bf16 output: it passes dy where that is > 0, which differs from the
fp32 output only where y was an fp32 denormal (bf16 conversion makes those zero).

`saved` is an opaque BatchNormSaved; every argument is checked before a nogil kernel runs.
gamma, beta and the running statistics are padded to whole channel blocks (C/16*16 floats);
padded channels have gamma = beta = 0, so they stay zero.  Statistics are float64 sums in a
fixed order per channel block: results do not depend on the thread count (they may differ in
the last bits between ISA paths, whose reductions are vectorized differently).
"""
import numpy as np

from . import cpu
from . import precision as formats
from ._ext import norm as _norm
from ._validate import blocked_activation, flag, float32_array
from .layout import CB, BlockedTensor

_NO_OUTPUT = np.empty((0, 1, 1, 1, CB), np.float32)
_NO_BF16 = np.empty((0, 1, 1, 1, CB), np.uint16)
#: the formats batchnorm_forward and batchnorm_backward write (out_precision)
OUT_PRECISIONS = ("fp32", "bf16")


def _out_precision(value, fn):
    if value not in OUT_PRECISIONS:
        raise ValueError(f"{fn}: out_precision must be one of {', '.join(OUT_PRECISIONS)}, got {value!r}")
    return value


class BatchNormSaved:
    """What batchnorm_backward needs from its forward; opaque to callers."""

    __slots__ = ("gamma", "invstd", "mean", "training", "x", "y")

    def __init__(self, x, mean, invstd, gamma, training, y):
        self.x, self.mean, self.invstd, self.gamma, self.training, self.y = x, mean, invstd, gamma, training, y

    def __repr__(self):
        return f"BatchNormSaved(x_shape={tuple(self.x.shape)}, training={self.training})"

    def _check(self, fn):
        """Its parts must still agree with each other (a caller can reach them): the kernel
        indexes the statistics by x's channel blocks and reads y where x is."""
        x = self.x
        ok = isinstance(x, BlockedTensor) and x.kind == "activation" and x.dtype == np.float32
        if ok:
            stats = (x.data.shape[1], CB)
            ok = all(isinstance(v, np.ndarray) and v.dtype == np.float32 and v.flags.c_contiguous and v.shape == stats
                     for v in (self.mean, self.invstd, self.gamma))
            ok = (ok and isinstance(self.training, bool) and isinstance(self.y, np.ndarray)
                  and self.y.dtype in (np.float32, np.uint16) and self.y.flags.c_contiguous
                  and self.y.shape in (x.data.shape, _NO_OUTPUT.shape))
        if not ok:
            raise ValueError(f"{fn}: saved is not a consistent BatchNormSaved (its parts were changed after "
                             "batchnorm_forward made it)")


def _blocks(v, cb):
    return np.ascontiguousarray(v, dtype=np.float32).reshape(cb, CB)


def batchnorm_forward(x, gamma, beta, running_mean, running_var, training, *, eps=1e-5,
                      momentum=0.1, relu=False, residual=None, out_precision="fp32", n_threads=None):
    """Normalize (training: batch statistics, updating the running ones in place; eval: the
    running ones), scale, shift, optional fused ReLU.  Returns (y, saved-for-backward).

    residual: a blocked tensor of x's shape added before the ReLU (a ResNet block's shortcut).
    Its backward takes the gradient of the sum, relu_backward(dy, y) with relu=True, which is
    also the residual's gradient: batchnorm_backward then applies no mask of its own.
    out_precision: 'fp32' or 'bf16' (y as a bf16 BlockedTensor; see the module doc)."""
    fn = "batchnorm_forward"
    blocked_activation(x, "x", fn)
    out_precision = _out_precision(out_precision, fn)
    if residual is not None:
        blocked_activation(residual, "residual", fn)
        if tuple(residual.shape) != tuple(x.shape):
            raise ValueError(f"{fn}: residual has shape {tuple(residual.shape)} but x has {tuple(x.shape)}")
    cb = x.data.shape[1]
    gamma, beta = (float32_array(v, name, fn, shape=(cb * CB,)) for name, v in (("gamma", gamma), ("beta", beta)))
    for name, v in (("running_mean", running_mean), ("running_var", running_var)):
        float32_array(v, name, fn, shape=(cb * CB,))
        if training and not v.flags.writeable:
            raise ValueError(f"{fn}: {name} is updated in place in training mode and must be writeable")
    training, relu = flag(training, "training", fn), flag(relu, "relu", fn)
    for name, v in (("eps", eps), ("momentum", momentum)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{fn}: {name} must be a number, got {v!r}")
    if not 0 < eps < np.inf:
        raise ValueError(f"{fn}: eps must be finite and > 0, got {eps}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{fn}: momentum must be in [0, 1], got {momentum}")
    n_threads = cpu.resolve_threads(n_threads)
    if training and x.shape[0] * x.shape[2] * x.shape[3] < 2:
        # one value per channel: normalized to exactly 0, output beta, every gradient 0 (PyTorch
        # refuses the same)
        raise ValueError(f"{fn}: training mode needs more than one value per channel to normalize over, got x of "
                         f"shape {tuple(x.shape)} (N*H*W = 1)")
    isa = cpu.isa_code(None)
    # the kernel's outputs mean, invstd, scale, shift: (C/16, 16) rows of one array
    coefficients = np.empty((4, cb, CB), np.float32)
    mean, invstd, scale, shift = coefficients
    # the kernel updates the running statistics in place in training mode; it takes contiguous,
    # writeable arrays: others (a strided view, a read-only array in eval mode) go through a
    # copy, written back after an update
    running = [v if v.flags.c_contiguous and v.flags.writeable else v.copy() for v in (running_mean, running_var)]
    _norm.batchnorm_coefficients(x.data, gamma, beta, *running, training, float(momentum), float(eps),
                                 mean, invstd, scale, shift, n_threads, isa)
    for given, used in zip((running_mean, running_var), running):
        if training and used is not given:
            given[...] = used
    res = None if residual is None else residual.data
    if out_precision == "bf16":
        y = np.empty(x.data.shape, np.uint16)
        _norm.batchnorm_apply_bf16(x.data, scale, shift, y, relu, n_threads, res, isa,
                                   formats.native_bf16(cpu.ISA_BY_CODE[isa]))
    else:
        y = np.empty_like(x.data)
        _norm.batchnorm_apply(x.data, scale, shift, y, relu, n_threads, res, isa)
    saved = BatchNormSaved(x, mean, invstd, _blocks(gamma, cb), training, y if relu and residual is None else _NO_OUTPUT)
    return BlockedTensor(y, x.shape, "activation", precision=out_precision), saved


def batchnorm_backward(dy, saved, *, out_precision="fp32", n_threads=None):
    """(dx, dgamma, dbeta) with dgamma/dbeta padded like gamma (float32); out_precision 'bf16'
    returns dx as a bf16 BlockedTensor (see the module doc)."""
    fn = "batchnorm_backward"
    out_precision = _out_precision(out_precision, fn)
    if not isinstance(saved, BatchNormSaved):
        raise TypeError(f"{fn}: saved must be the BatchNormSaved that batchnorm_forward returned, got {type(saved).__name__}")
    saved._check(fn)
    x, mean, invstd, gamma, training, y = saved.x, saved.mean, saved.invstd, saved.gamma, saved.training, saved.y
    blocked_activation(dy, "dy", fn)
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"{fn}: dy has shape {tuple(dy.shape)} but the forward input was {tuple(x.shape)}")
    cb = x.data.shape[1]
    bf16 = out_precision == "bf16"
    dx = _NO_OUTPUT if bf16 else np.empty_like(x.data)
    dx16 = np.empty(x.data.shape, np.uint16) if bf16 else _NO_BF16
    dgamma = np.empty((cb, CB))
    dbeta = np.empty((cb, CB))
    isa = cpu.isa_code(None)
    y32, y16 = (_NO_OUTPUT, y) if y.dtype == np.uint16 else (y, _NO_BF16)
    _norm.batchnorm_backward(dy.data, x.data, mean, invstd, gamma, dx, dgamma, dbeta, training, y32,
                             cpu.resolve_threads(n_threads), isa, y16, dx16, formats.native_bf16(cpu.ISA_BY_CODE[isa]))
    return (BlockedTensor(dx16 if bf16 else dx, x.shape, "activation", precision=out_precision),
            dgamma.reshape(-1).astype(np.float32), dbeta.reshape(-1).astype(np.float32))


def relu_backward(dy, y, *, n_threads=None):
    """dx = dy where y > 0 (y: the ReLU's output, fp32 or a bf16 one from
    batchnorm_forward(out_precision='bf16'), which is widened first), else 0."""
    fn = "relu_backward"
    blocked_activation(dy, "dy", fn)
    if isinstance(y, BlockedTensor) and y.precision == "bf16":
        blocked_activation(y, "y", fn, "bf16")
        y = BlockedTensor(formats.bf16_bits_to_fp32(y.data, n_threads=n_threads), y.shape)
    blocked_activation(y, "y", fn)
    if tuple(dy.shape) != tuple(y.shape):
        raise ValueError(f"{fn}: dy has shape {tuple(dy.shape)} but the ReLU's output y has shape {tuple(y.shape)}")
    dx = np.empty_like(dy.data)
    _norm.relu_backward(dy.data, y.data, dx, cpu.resolve_threads(n_threads), cpu.isa_code(None))
    return BlockedTensor(dx, dy.shape)
