"""Optimizers of dlcpu.nn.

Design: an optimizer holds a list of Parameters and updates their `data` in place from their
`grad`, so blocked convolution weights are updated in their blocked layout without copies.
A pruned Parameter (its `mask` set by nn.prune) has its masked gradient, velocity and weights
zeroed at every step, so pruned weights stay exactly 0 and momentum cannot regrow them; the
others pay one `is None` test.
"""
import numpy as np

from .. import cpu
from .._ext import optim as _optim
from .module import Parameter, check_float


def _fusable(p, v):
    """The fused kernel takes three distinct C-contiguous float32 arrays of one size; anything
    else (a parameter whose arrays were replaced by the user) takes the NumPy loop."""
    arrays = (p.data, p.grad, v)
    return (all(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous for a in arrays)
            and p.data.size == p.grad.size == v.size and p.data.flags.writeable and v.flags.writeable
            and not np.may_share_memory(p.data, p.grad) and not np.may_share_memory(p.data, v)
            and not np.may_share_memory(p.grad, v))


class SGD:
    """SGD with momentum and weight decay, PyTorch's formulation:
    d = grad + wd*p;  v = momentum*v + d;  p -= lr*v."""

    def __init__(self, params, lr=0.1, momentum=0.9, weight_decay=0.0):
        lr = check_float("SGD", "lr", lr, 0.0)
        momentum = check_float("SGD", "momentum", momentum, 0.0, low_inclusive=True)
        weight_decay = check_float("SGD", "weight_decay", weight_decay, 0.0, low_inclusive=True)
        self.params = list(params)
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"SGD: params must be dlcpu.nn Parameters (model.parameters()), item {i} is {type(p).__name__}")
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity = [np.zeros_like(p.data) for p in self.params]
        # per parameter, the (data, grad, velocity) arrays last found fusable: the same objects
        # keep their memory, so they cannot start to overlap, and need only the properties NumPy
        # lets a user change in place (dtype, strides, writeable) checked again.  The full check
        # (three overlap tests and more) cost 2.4 us per parameter: half of the digits CNN's
        # 20-parameter step.
        self._fusable_arrays = [None] * len(self.params)

    def _fused(self, i, p, v):
        known = self._fusable_arrays[i]
        if known is not None and known[0] is p.data and known[1] is p.grad and known[2] is v:
            return (all(a.dtype == np.float32 and a.flags.c_contiguous for a in known)
                    and p.data.flags.writeable and v.flags.writeable)
        ok = _fusable(p, v)
        self._fusable_arrays[i] = (p.data, p.grad, v) if ok else None
        return ok

    def step(self):
        n_threads, isa = cpu.resolve_threads(None), cpu.isa_code(None)
        for i, (p, v) in enumerate(zip(self.params, self.velocity)):
            if p.mask is None and self._fused(i, p, v):
                # one fused pass (pyx/optim.pyx), the same arithmetic as the loop below
                _optim.sgd_momentum_f32(p.data.reshape(-1), p.grad.reshape(-1), v.reshape(-1), self.lr,
                                        self.momentum, self.weight_decay, isa, n_threads)
                continue
            pruned = None if p.mask is None else ~p.mask
            if pruned is not None:
                np.copyto(p.grad, 0.0, where=pruned)
            d = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            v *= self.momentum
            v += d
            if pruned is not None:
                # zeroed, not multiplied (inf * 0 is NaN); the velocity too, since one from
                # before the pruning would regrow the weights
                np.copyto(v, 0.0, where=pruned)
            p.data -= self.lr * v
            if pruned is not None:
                np.copyto(p.data, 0.0, where=pruned)

    def zero_grad(self):
        for p in self.params:
            p.grad.fill(0.0)
