"""Optimizers of dlcpu.nn.

Design: an optimizer holds a list of Parameters and updates their `data` in place from their
`grad`, so blocked convolution weights are updated in their blocked layout without copies.
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
            d = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            v *= self.momentum
            v += d
            p.data -= self.lr * v

    def zero_grad(self):
        for p in self.params:
            p.grad.fill(0.0)
