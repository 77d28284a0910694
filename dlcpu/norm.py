"""Batch normalization and ReLU on blocked activations (kernels in pyx/norm.pyx).

    y, saved = batchnorm_forward(xb, gamma, beta, running_mean, running_var, training, relu=False)
    dx, dgamma, dbeta = batchnorm_backward(dy, saved)      # relu=True: the ReLU's backward too
    dx = relu_backward(dy, y)

gamma, beta and the running statistics are padded to whole channel blocks (C/16*16 floats);
padded channels have gamma = beta = 0, so they stay zero.  Statistics are float64 sums in a
fixed order per channel block: results do not depend on the thread count.
"""
import numpy as np

from . import cpu
from ._ext import norm as _norm
from .layout import CB, BlockedTensor

_NO_OUTPUT = np.empty((0, 1, 1, 1, CB), np.float32)


def _blocks(v, cb):
    return np.ascontiguousarray(v, dtype=np.float32).reshape(cb, CB)


def batchnorm_forward(x, gamma, beta, running_mean, running_var, training, *, eps=1e-5,
                      momentum=0.1, relu=False, n_threads=None):
    """Normalize (training: batch statistics, updating the running ones in place; eval: the
    running ones), scale, shift, optional fused ReLU.  Returns (y, saved-for-backward)."""
    if not isinstance(x, BlockedTensor) or x.kind != "activation" or x.dtype != np.float32:
        raise TypeError("batchnorm_forward: x must be a float32 activation BlockedTensor")
    cb = x.data.shape[1]
    for name, v in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
        if v.shape != (cb * CB,):
            raise ValueError(f"batchnorm_forward: {name} must have {cb * CB} entries (padded channels), got {v.shape}")
    n_threads = cpu.resolve_threads(n_threads)
    if training:
        mean = np.empty((cb, CB))
        var = np.empty((cb, CB))
        _norm.batchnorm_stats(x.data, mean, var, n_threads)
        m = x.data.shape[0] * x.data.shape[2] * x.data.shape[3]
        unbiased = var * (m / max(m - 1, 1))
        running_mean *= 1 - momentum
        running_mean += (momentum * mean.reshape(-1)).astype(np.float32)
        running_var *= 1 - momentum
        running_var += (momentum * unbiased.reshape(-1)).astype(np.float32)
        mean = mean.astype(np.float32).reshape(-1)
        var = var.astype(np.float32).reshape(-1)
    else:
        mean, var = running_mean, running_var
    invstd = (1.0 / np.sqrt(var.astype(np.float64) + eps)).astype(np.float32)
    scale = gamma * invstd
    shift = beta - mean * scale
    y = np.empty_like(x.data)
    _norm.batchnorm_apply(x.data, _blocks(scale, cb), _blocks(shift, cb), y, bool(relu), n_threads)
    saved = (x, _blocks(mean, cb), _blocks(invstd, cb), _blocks(gamma, cb), bool(training),
             y if relu else _NO_OUTPUT)
    return BlockedTensor(y, x.shape), saved


def batchnorm_backward(dy, saved, *, n_threads=None):
    """(dx, dgamma, dbeta) with dgamma/dbeta padded like gamma (float32)."""
    x, mean, invstd, gamma, training, y = saved
    if not isinstance(dy, BlockedTensor) or dy.data.shape != x.data.shape:
        raise ValueError(f"batchnorm_backward: dy must be a BlockedTensor shaped like the forward input {tuple(x.shape)}")
    cb = x.data.shape[1]
    dx = np.empty_like(x.data)
    dgamma = np.empty((cb, CB))
    dbeta = np.empty((cb, CB))
    _norm.batchnorm_backward(dy.data, x.data, mean, invstd, gamma, dx, dgamma, dbeta, training, y,
                             cpu.resolve_threads(n_threads))
    return BlockedTensor(dx, x.shape), dgamma.reshape(-1).astype(np.float32), dbeta.reshape(-1).astype(np.float32)


def relu_backward(dy, y, *, n_threads=None):
    """dx = dy where y > 0 (y: the ReLU's output), else 0."""
    dx = np.empty_like(dy.data)
    _norm.relu_backward(dy.data, y.data, dx, cpu.resolve_threads(n_threads))
    return BlockedTensor(dx, dy.shape)
