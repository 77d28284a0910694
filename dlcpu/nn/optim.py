"""Optimizers of dlcpu.nn.

Design: an optimizer holds a list of Parameters and updates their `data` in place from their
`grad`, so blocked convolution weights are updated in their blocked layout without copies.
A pruned Parameter (its `mask` set by nn.prune) has its masked gradient, velocity and weights
zeroed at every step, so pruned weights stay exactly 0 and momentum cannot regrow them; the
others pay one `is None` test.
"""
import numpy as np

from .module import Parameter, check_float


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

    def step(self):
        for p, v in zip(self.params, self.velocity):
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
