"""The module base of dlcpu.nn: Parameter, Module and the registry of layer types.

Design: a Module owns its Parameters (`weight`, `bias`, or a dict for recurrent layers) and its
children; named_parameters() walks the tree in a fixed order, which SGD and save/load rely on.
Every concrete layer is registered by class name with `register`, so a saved configuration
({'type': name, 'args': constructor arguments}) rebuilds the model in `io.build` without pickles.
A layer keeps what its backward needs from its own forward; calling backward first is an error
(`require_forward`).  Under `inference_mode()` (PyTorch's torch.inference_mode) a layer drops
that state as soon as its call returns, so an inference holds only the activations still in
use, and a backward is refused with an error that says why.
Every backward a subclass defines is wrapped (`__init_subclass__`) to run the module's backward
hooks once it returns, i.e. once this module's parameter gradients are complete: data-parallel
training (dlcpu.distributed) starts a gradient bucket's allreduce there, while the layers in
front of it still compute theirs.
"""
import functools
import math

import numpy as np

from .. import _validate
from ..layout import BlockedTensor
from ..precision import bf16_bits_to_fp32
from ..quantized import dequantize

FORMAT_VERSION = 1


def _widened(t, precision):
    """An activation BlockedTensor in a form a layer of `precision` reads: bf16 as fp32 for a
    layer that does not run bf16 (exact), u8 codes (a quantized block's output) as the fp32
    values they stand for for a layer that does not read them, else t as it is."""
    if t.precision == "bf16" and precision != "bf16":
        return BlockedTensor(bf16_bits_to_fp32(t.data), t.shape)
    if t.precision == "int8" and precision != "int8":
        return BlockedTensor(dequantize(t), t.shape)
    return t

_REGISTRY = {}

#: what layers keep for their backward (cleared after each call under inference_mode)
_SAVED_STATE = ("_x", "_saved", "_y", "_caches", "_ids")
_GRAD = {"enabled": True}


class inference_mode:
    """Context manager: forwards inside keep nothing for a backward (each layer drops what it
    saved as soon as its call returns), as torch.inference_mode; backward afterwards is refused.
    Use it for inference to hold only the activations still in use (ResNet-50, batch 4: the
    saved inputs of every layer otherwise stay alive until the next forward)."""

    def __enter__(self):
        self._before = _GRAD["enabled"]
        _GRAD["enabled"] = False
        return self

    def __exit__(self, *exc):
        _GRAD["enabled"] = self._before


def grad_enabled():
    """False inside inference_mode()."""
    return _GRAD["enabled"]


def register(cls):
    """Class decorator: make a layer type buildable from a saved configuration."""
    _REGISTRY[cls.__name__] = cls
    return cls


class Parameter:
    """A trainable array and its gradient (same shape, accumulated by backward); `mask`, set by
    nn.prune, is None or a bool array of that shape whose False entries the optimizer keeps at 0."""

    __slots__ = ("data", "grad", "mask")

    def __init__(self, data):
        self.data = data
        self.grad = np.zeros_like(data)
        self.mask = None


class _HookHandle:
    """What register_output_hook returns: remove() unregisters the hook (once)."""

    def __init__(self, hooks, hook):
        self._hooks, self._hook = hooks, hook

    def remove(self):
        if self._hook in self._hooks:
            self._hooks.remove(self._hook)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _run_backward_hooks(backward):
    """`backward` followed by the module's backward hooks.  A subclass's backward that calls its
    parent's (super().backward) is wrapped at both levels: the depth count runs the hooks once,
    when the outermost call returns and the subclass has written all of its gradients."""
    @functools.wraps(backward)
    def backward_then_hooks(self, *args, **kwargs):   # dy, or a loss layer's optional dloss
        self._backward_depth = getattr(self, "_backward_depth", 0) + 1
        try:
            dx = backward(self, *args, **kwargs)
        finally:
            self._backward_depth -= 1
        if self._backward_depth == 0:
            for hook in self._backward_hooks:
                hook(self)
        return dx

    return backward_then_hooks


class Module:
    """Base class: parameters, children, train/eval mode, configuration for save/load."""

    #: output and backward hooks (register_output_hook, register_backward_hook); class-level empty
    #: defaults keep subclasses that do not call Module.__init__ working
    _output_hooks = ()
    _backward_hooks = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "backward" in cls.__dict__:
            cls.backward = _run_backward_hooks(cls.__dict__["backward"])

    def __init__(self):
        self.training = True
        self.name = type(self).__name__
        self._output_hooks = []
        self._backward_hooks = []

    # -- structure --------------------------------------------------------------------------
    def children(self):
        return []

    def own_parameters(self):
        """{name: Parameter} of this module alone: its `weight` and `bias` when it has them."""
        return {name: p for name in ("weight", "bias") if isinstance(p := getattr(self, name, None), Parameter)}

    def named_parameters(self, prefix=""):
        out = [(prefix + k, p) for k, p in self.own_parameters().items()]
        for i, child in enumerate(self.children()):
            out += child.named_parameters(f"{prefix}{i}.")
        return out

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        for p in self.parameters():
            p.grad.fill(0.0)

    def train(self, mode=True):
        self.training = bool(mode)
        for child in self.children():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    #: the number format of this layer's products ('fp32'; Conv2d and Linear also run 'bf16')
    precision = "fp32"
    #: the formats a layer with products (convolution, GEMM, recurrence) runs; None for layers
    #: without (batch norm, pooling, activations, embeddings), which stay fp32 under set_precision
    PRECISIONS = None

    def set_precision(self, precision):
        """Mixed-precision training and inference: every Conv2d and Linear in the tree runs its
        products in `precision` ('fp32', 'bf16' or 'dfp16': operands rounded to bf16 or
        quantized to DFP-16; sums, weights, gradients and the optimizer in fp32, dlcpu.quantized
        has the DFP-16 rules), and so do the recurrent layers (states and cell math in fp32);
        every other layer (batch norm, pooling, the loss) stays fp32.  'int8' and 'ternary'
        (Linear and recurrent layers; not a ReLU RNN) are dynamic quantization for inference:
        weights quantized at each forward, activations per tensor; nn.quantize quantizes
        convolutions and Linear layers statically instead (weights once, activation scales
        calibrated).  A layer that has no kernel for the format is refused, naming the
        first, before anything changes.  Returns self.  The precision is
        a way of running the model, not part of it: nn.save does not keep it, so call this again
        after nn.load."""
        from ..precision import check_precision

        precision = check_precision(precision, "set_precision")
        tree = list(self._walk())
        for m in tree:
            if m.PRECISIONS is not None and precision not in m.PRECISIONS:
                raise ValueError(f"set_precision: {m.describe()} has no {precision} kernels (it runs "
                                 f"{', '.join(m.PRECISIONS)}); the model is left as it was")
        for m in tree:
            if m.PRECISIONS is not None:
                m.precision = precision
        for m in tree:
            m.link_formats()
        return self

    def link_formats(self):
        """After set_precision: tell this container's batch-norm layers which neighbours read
        bf16 activations as they are (layers.link_batchnorm), so they write bf16 themselves
        instead of fp32 that the neighbour rounds.  Containers override it; others have none."""

    def _walk(self):
        yield self
        for child in self.children():
            yield from child._walk()

    def __call__(self, x):
        y = self.forward(x)
        self._forward_kept_nothing = not _GRAD["enabled"]
        if self._forward_kept_nothing:
            for attr in _SAVED_STATE:
                if getattr(self, attr, None) is not None:
                    setattr(self, attr, None)
        if self._output_hooks and isinstance(y, BlockedTensor):
            # a quantized block's u8 codes: a hook sees (and may change) the values they stand for
            y = _widened(y, "fp32")
        for hook in self._output_hooks:
            y = hook(self, y)
        return y

    def register_output_hook(self, hook):
        """Run hook(module, y) -> y on this module's output every time it is called (as PyTorch's
        forward hooks); returns a handle whose remove() takes it off again.  dlcpu.faults flips
        activation bits this way."""
        if not callable(hook):
            raise TypeError(f"{self.name}.register_output_hook: hook must be callable, got {type(hook).__name__}")
        if not isinstance(self._output_hooks, list):
            self._output_hooks = []
        self._output_hooks.append(hook)
        return _HookHandle(self._output_hooks, hook)

    def register_backward_hook(self, hook):
        """Run hook(module) every time this module's backward returns, when the gradients of its
        own parameters are complete for the step; returns a handle whose remove() takes it off."""
        if not callable(hook):
            raise TypeError(f"{self.name}.register_backward_hook: hook must be callable, got {type(hook).__name__}")
        if not isinstance(self._backward_hooks, list):
            self._backward_hooks = []
        self._backward_hooks.append(hook)
        return _HookHandle(self._backward_hooks, hook)

    # -- save/load ----------------------------------------------------------------------------
    def config(self):
        """{'type': class name, 'args': constructor arguments} (JSON-serializable): a layer keeps
        its constructor arguments in `self.args`."""
        args = getattr(self, "args", None)
        if args is None:
            raise NotImplementedError(f"{type(self).__name__} does not describe its configuration (no self.args)")
        return {"type": type(self).__name__, "args": args}

    def state(self):
        """{name: array in the logical layout} for save (buffers included)."""
        out = {}
        for i, child in enumerate(self.children()):
            out.update({f"{i}.{k}": v for k, v in child.state().items()})
        return out

    # -- PyTorch-compatible state dicts ------------------------------------------------------
    def named_state_children(self):
        """(name, child) for every child, in children() order, under the name PyTorch gives the
        same submodule (Sequential: its index; a layer with named parts overrides this)."""
        return [(str(i), c) for i, c in enumerate(self.children())]

    def extra_state_dict(self):
        """Entries a PyTorch twin has that dlcpu does not save (BatchNorm's num_batches_tracked)."""
        return {}

    def _state_names(self, torch_prefix="", own_prefix=""):
        """[(PyTorch name, state() name)] of every saved array, and [(prefix, module)] of the
        modules with extra_state_dict entries."""
        children = self.children()
        if not children:
            return [(torch_prefix + k, own_prefix + k) for k in self.state()], [(torch_prefix, self)]
        names, modules = [], []
        for i, (name, child) in enumerate(self.named_state_children()):
            n, m = child._state_names(f"{torch_prefix}{name}.", f"{own_prefix}{i}.")
            names += n
            modules += m
        return names, modules

    def state_dict(self):
        """{PyTorch name: float32 numpy array in PyTorch's layout}: what torch's load_state_dict
        of the same architecture takes (after torch.from_numpy).  Convolution weights are
        unblocked to KCRS, channel padding is cut, BatchNorm adds num_batches_tracked."""
        names, modules = self._state_names()
        own = self.state()
        out = {t: own[i] for t, i in names}
        for prefix, m in modules:
            out.update({prefix + k: v for k, v in m.extra_state_dict().items()})
        return out

    def to_torch_layout(self, name, value):
        """A parameter-shaped array (the data or the gradient of own parameter `name`) in
        PyTorch's layout; layers that store a parameter in another layout override this."""
        return value

    def _parameter_owners(self, prefix=""):
        """(state() name, own name, Parameter, owning module) of every parameter."""
        out = [(prefix + k, k, p, self) for k, p in self.own_parameters().items()]
        for i, child in enumerate(self.children()):
            out += child._parameter_owners(f"{prefix}{i}.")
        return out

    def grad_dict(self):
        """{PyTorch name: gradient in PyTorch's layout} of every parameter: what p.grad holds in
        a PyTorch twin after the same backward (blocked convolution weights unblocked, channel
        padding cut, recurrent weights unpacked)."""
        torch_name = {internal: t for t, internal in self._state_names()[0]}
        return {torch_name[internal]: np.array(owner.to_torch_layout(own, p.grad))
                for internal, own, p, owner in self._parameter_owners()}

    def load_state_dict(self, state_dict, strict=True):
        """Load {PyTorch name: numpy array or torch tensor}, e.g. a PyTorch twin's state_dict().
        Keys ending in num_batches_tracked are accepted and ignored.  strict: missing and
        unexpected keys are refused (ValueError naming them); strict=False loads the keys that
        match and keeps the rest.  Shapes are checked for every key and floating dtypes are
        converted to float32; anything else is refused before a value is written."""
        if not hasattr(state_dict, "items"):
            raise TypeError(f"{self.name}.load_state_dict: expected a mapping of names to arrays, "
                            f"got {type(state_dict).__name__}")
        names, _ = self._state_names()
        internal = dict(names)
        ignored = [k for k in state_dict if isinstance(k, str) and k.endswith("num_batches_tracked")]
        given = {k: v for k, v in state_dict.items() if k not in ignored}
        missing = [t for t, _ in names if t not in given]
        unexpected = [k for k in given if k not in internal]
        if strict and (missing or unexpected):
            parts = ([f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}"] if missing else []) + \
                    ([f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"] if unexpected else [])
            raise ValueError(f"{self.name}.load_state_dict: the state dict does not match this model "
                             f"({'; '.join(parts)}); pass strict=False to load the keys that match")
        current = self.state()
        state, wrong = {}, []
        for t, i in names:
            if t not in given:
                state[i] = current[i]
                continue
            arr = _as_float_array(given[t], t, self.name)
            if arr.shape != current[i].shape:
                wrong.append(f"{t}: {arr.shape}, expected {current[i].shape}")
            state[i] = arr
        if wrong:
            raise ValueError(f"{self.name}.load_state_dict: wrong shapes: {'; '.join(wrong[:8])}")
        self.load_state(state)
        return {"missing_keys": missing, "unexpected_keys": unexpected}

    def load_state(self, state, prefix=""):
        for i, child in enumerate(self.children()):
            child.load_state(state, f"{prefix}{i}.")

    def describe(self):
        return self.name

    def _require_forward(self, value):
        """What this layer's forward kept for backward; RuntimeError when there is none."""
        if value is None:
            if getattr(self, "_forward_kept_nothing", False):
                raise RuntimeError(f"{self.name}.backward: the last forward ran under nn.inference_mode(), which keeps "
                                   "nothing for a backward")
            raise RuntimeError(f"{self.name}.backward called before forward")
        return value


def _as_float_array(value, key, where):
    """A state dict value (numpy array, torch tensor, nested list) as a float32 numpy array;
    TypeError naming the key for non-floating data (ints, bools, objects)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):       # a torch tensor
        t = value.detach().cpu()
        if not t.is_floating_point():
            raise TypeError(f"{where}.load_state_dict: {key} holds {t.dtype} values; parameters are floating point")
        value = t.float().numpy()
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{where}.load_state_dict: {key} holds {arr.dtype} values; parameters are floating point")
    return arr.astype(np.float32)


# -- argument checks of the layer constructors: TypeError for a wrong type, ValueError for a
# wrong value, both naming the layer and the rule.  The int and int-or-pair rules are the shared
# ones of dlcpu._validate (the same that conv2d and the pooling functions apply).
def check_int(layer, name, value, minimum=1):
    """An int >= minimum."""
    return _validate.positive_int(value, name, layer, minimum=minimum)


def check_ints(layer, **values):
    """check_int on each keyword: sizes and strides >= 1, a `seed` >= 0."""
    for name, value in values.items():
        check_int(layer, name, value, minimum=0 if name == "seed" else 1)


def check_int_pair(layer, name, value, minimum=1):
    """An int or an (h, w) pair of ints, each >= minimum; returns the pair."""
    pair = _validate.pair(value, name, layer)
    if min(pair) < minimum:
        raise ValueError(f"{layer}: {name} must be >= {minimum}, got {value!r}")
    return pair


def check_bool(layer, name, value):
    return _validate.flag(value, name, layer)


def check_float(layer, name, value, low, high=None, low_inclusive=False):
    """A finite real number in (low, high] (or [low, high] with low_inclusive); NaN and Inf are
    refused (an infinite eps or learning rate only turns every result into NaN)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{layer}: {name} must be a number, got {value!r}")
    above = value >= low if low_inclusive else value > low
    if not (math.isfinite(value) and above and (high is None or value <= high)):
        rule = f"{'>=' if low_inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else " and finite")
        raise ValueError(f"{layer}: {name} must be {rule}, got {value!r}")
    return float(value)


def check_parameter_memory(layer, what, n_bytes):
    """Refuse up front (ValueError, dlcpu._validate.fits_in_memory) parameters whose `n_bytes`
    (initialization temporaries, data and gradients) could never be allocated, before numpy fails
    deep inside the initialization, e.g. building Linear(60000, 60000) from a small model file."""
    _validate.fits_in_memory(n_bytes, what, layer)


def check_float32(layer, name, a):
    """A float32 numpy array: other dtypes are refused, never silently converted (design.md
    section 8, as dlcpu.conv2d and dlcpu.matmul do)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{layer}: {name} must be a float32 numpy array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{layer}: {name} must be float32, got {a.dtype} with shape {a.shape} "
                        f"(convert with .astype(np.float32))")
    return a


def _expect_blocked(x, layer, channels):
    if not isinstance(x, BlockedTensor) or x.kind != "activation":
        raise TypeError(f"{layer}: expected an activation BlockedTensor, got {type(x).__name__}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{layer}: input has {x.shape[1]} channels (shape {tuple(x.shape)}) "
                         f"but the layer expects {channels}")


def _take(state, key, shape, layer):
    if key not in state:
        raise ValueError(f"model file has no entry {key!r} for {layer}")
    arr = np.asarray(state[key])
    if arr.shape != tuple(shape):
        raise ValueError(f"model file entry {key!r} for {layer} has shape {arr.shape}, expected {tuple(shape)}")
    return arr.astype(np.float32)
