"""Smooth activation layers of dlcpu.nn: Tanh, Sigmoid, Swish and GELU (tanh form), each in the
flavour `activation_impl` = "exact" | "fast" | "ktanh" of dlcpu.approx.

Design: one small class per function over one shared base.  A layer takes what its neighbours
pass: an activation BlockedTensor between convolutions (the blocked data is mapped element-wise
in place of a copy to NCHW) or a plain float array after Linear or GlobalAvgPool.  Padded
channels of a BlockedTensor must stay zero: tanh, swish and GELU map 0 to 0, sigmoid maps it to
1/2, so Sigmoid writes the padded lanes back to zero (and their gradient is zero because dy's is).
The backward reads what dlcpu.approx's backward wants: the output for Tanh and Sigmoid, the input
for Swish and GELU.
"""
import math

import numpy as np

from .. import _validate, approx
from ..layout import CB, BlockedTensor
from .module import Module, check_float, register


def _data(x, layer, what="input"):
    """(float32 array to map, how to wrap a result like it) for a BlockedTensor or a float array."""
    if isinstance(x, BlockedTensor):
        if x.kind != "activation":
            raise TypeError(f"{layer}: expected an activation BlockedTensor or a float array, got a {x.kind} "
                            "BlockedTensor")
        return x.data, (lambda a: BlockedTensor(a, x.shape))
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise TypeError(f"{layer}: {what} must be a float array or an activation BlockedTensor, got dtype {a.dtype} "
                        f"with shape {a.shape}")
    if a.size > 1 << 27:   # (over 1 GiB with the result: a huge broadcast view would end in a MemoryError)
        _validate.fits_in_memory(8 * a.size, f"{what} of shape {a.shape} (its float32 copy and the result)", layer)
    return np.asarray(a, dtype=np.float32, order="C"), (lambda r: r)   # (ascontiguousarray makes 0-d 1-d)


def _kind(x):
    """('blocked', logical shape) or ('array', shape): what a dy must match."""
    if isinstance(x, BlockedTensor):
        return "a BlockedTensor", tuple(x.shape)
    return "an array", tuple(np.shape(x))


class _Activation(Module):
    """Parameterless element-wise layer: subclasses set `op` (dlcpu.approx's function name) and
    `saves_output` (the backward reads y rather than x)."""

    op = None
    saves_output = False

    def __init__(self, activation_impl="exact"):
        super().__init__()
        self.args = {}
        self.activation_impl = activation_impl
        self._saved = None

    @property
    def activation_impl(self):
        return self.args["activation_impl"]

    @activation_impl.setter
    def activation_impl(self, value):
        """Checked, and kept in the configuration nn.save writes (a flavour changed after
        construction, to fine-tune with another one, is what the saved model runs)."""
        self.args["activation_impl"] = approx.check_impl(value, self.name, "activation_impl")

    def describe(self):
        return f"{self.name}(activation_impl={self.activation_impl})"

    def _call(self, a):
        return getattr(approx, self.op)(a, impl=self.activation_impl)

    def _grad(self, d, saved):
        backward = getattr(approx, f"{self.op}_backward")
        if self.saves_output:   # tanh, sigmoid: the derivative from the output, the same for every flavour
            return backward(d, saved)
        return backward(d, saved, impl=self.activation_impl)

    def forward(self, x):
        a, wrap = _data(x, self.describe())
        y = self._call(a)
        if isinstance(x, BlockedTensor) and self.op == "sigmoid" and x.shape[1] % CB:
            y[:, -1, ..., x.shape[1] % CB:] = 0.0
        self._saved = (y if self.saves_output else a, _kind(x))
        return wrap(y)

    def backward(self, dy):
        saved, kind = self._require_forward(self._saved)
        d, wrap = _data(dy, self.describe(), "dy")
        if _kind(dy) != kind:
            raise ValueError(f"{self.describe()}: dy must match the forward's output ({kind[0]} of shape {kind[1]}), "
                             f"got {_kind(dy)[0]} of shape {_kind(dy)[1]}")
        return wrap(self._grad(d, saved))


@register
class Tanh(_Activation):
    op = "tanh"
    saves_output = True


@register
class Sigmoid(_Activation):
    op = "sigmoid"
    saves_output = True


@register
class Swish(_Activation):
    """x sigmoid(beta x); beta=1 is PyTorch's SiLU."""

    op = "swish"

    def __init__(self, beta=1.0, activation_impl="exact"):
        super().__init__(activation_impl)
        self.beta = approx._check_beta(check_float(self.name, "beta", beta, -math.inf), self.name)
        self.args["beta"] = self.beta

    def describe(self):
        return f"Swish(beta={self.beta:g}, activation_impl={self.activation_impl})"

    def _call(self, a):
        return approx.swish(a, self.beta, impl=self.activation_impl)

    def _grad(self, d, x):
        return approx.swish_backward(d, x, self.beta, impl=self.activation_impl)


@register
class GELU(_Activation):
    """GELU in its tanh form (PyTorch's approximate='tanh')."""

    op = "gelu"
