"""dlcpu.nn: layers with forward and backward passes on dlcpu's kernels, a ResNet basic block,
SGD, and parameter save/load.

Activations flow between layers as activation BlockedTensors (I[N][C/16][H][W][16]); there is
no NCHW round trip inside a model.  Convolution weights live in the blocked weight layout, and
their gradients arrive in it, so the optimizer updates them in place.  Padded channels stay zero
through every layer: padded weights, BatchNorm scales and biases are zero and receive zero
gradients.

    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), ...)
    logits = model(xb)                       # forward, remembers what backward needs
    loss, dlogits = nn.softmax_cross_entropy(logits, labels)
    model.backward(dlogits)                  # accumulates .grad on every Parameter
    opt.step(); opt.zero_grad()

A layer's backward must follow its own forward (layers keep the forward's inputs).  Files written
by `save` carry FORMAT_VERSION and the model's configuration; `load` rebuilds the model from them
and refuses other versions, corrupt files and mismatched shapes with a clear error.
"""
import json
import os
import zipfile

import numpy as np

from . import norm, pool
from .conv import conv2d, conv2d_backward
from .gemm import matmul
from .layout import CB, BlockedTensor, block_weights, n_blocks, unblock_weights

FORMAT_VERSION = 1

_REGISTRY = {}


def _register(cls):
    _REGISTRY[cls.__name__] = cls
    return cls


class Parameter:
    """A trainable array and its gradient (same shape, accumulated by backward)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = data
        self.grad = np.zeros_like(data)


class Module:
    """Base class: parameters, children, train/eval mode, configuration for save/load."""

    def __init__(self):
        self.training = True
        self.name = type(self).__name__

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

    def __call__(self, x):
        return self.forward(x)

    # -- save/load ----------------------------------------------------------------------------
    def config(self):
        """{'type': class name, 'args': constructor arguments} (JSON-serializable)."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its configuration")

    def state(self):
        """{name: array in the logical layout} for save (buffers included)."""
        out = {}
        for i, child in enumerate(self.children()):
            out.update({f"{i}.{k}": v for k, v in child.state().items()})
        return out

    def load_state(self, state, prefix=""):
        for i, child in enumerate(self.children()):
            child.load_state(state, f"{prefix}{i}.")

    def describe(self):
        return self.name


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


# ============================================================================================
# Layers
# ============================================================================================
@_register
class Conv2d(Module):
    """2-D convolution, weights in the blocked layout, optional bias; He-normal initialization."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, seed=0):
        super().__init__()
        self.args = {"in_channels": in_channels, "out_channels": out_channels, "kernel_size": kernel_size,
                         "stride": stride, "padding": padding, "bias": bias, "seed": seed}
        k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.stride, self.padding = stride, padding
        self.needs_input_grad = True
        rng = np.random.default_rng(seed)
        w = rng.standard_normal((out_channels, in_channels, *k)) * np.sqrt(2.0 / (in_channels * k[0] * k[1]))
        self.weight_b = block_weights(w.astype(np.float32))
        self.weight = Parameter(self.weight_b.data)
        self.bias = Parameter(np.zeros(out_channels, np.float32)) if bias else None
        self._x = None

    def forward(self, x):
        _expect_blocked(x, self.describe(), self.args["in_channels"])
        self._x = x
        return conv2d(x, self.weight_b, None if self.bias is None else self.bias.data,
                      stride=self.stride, padding=self.padding)

    def backward(self, dy):
        need = ("dx", "dw", "db") if self.needs_input_grad else ("dw", "db")
        g = conv2d_backward(dy, self._x, self.weight_b, self.stride, self.padding, need=need)
        self.weight.grad += g.dw.data
        if self.bias is not None:
            self.bias.grad += g.db
        return g.dx

    def config(self):
        return {"type": "Conv2d", "args": self.args}

    def state(self):
        out = {"weight": unblock_weights(self.weight_b)}
        if self.bias is not None:
            out["bias"] = self.bias.data.copy()
        return out

    def load_state(self, state, prefix=""):
        shape = self.weight_b.shape
        self.weight.data[...] = block_weights(_take(state, prefix + "weight", shape, self.describe())).data
        if self.bias is not None:
            self.bias.data[...] = _take(state, prefix + "bias", self.bias.data.shape, self.describe())

    def describe(self):
        a = self.args
        return f"Conv2d({a['in_channels']}->{a['out_channels']}, k={a['kernel_size']}, s={a['stride']}, p={a['padding']})"


@_register
class BatchNorm2d(Module):
    """Batch normalization over (N, H, W) per channel, fp32 statistics; relu=True fuses a
    following ReLU into the same passes (forward and backward).

    Training mode normalizes with the batch's mean and biased variance and updates the running
    estimates (unbiased variance, momentum 0.1, as PyTorch); eval mode uses the running ones."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, relu=False):
        super().__init__()
        self.args = {"num_features": num_features, "eps": eps, "momentum": momentum, "relu": relu}
        self.relu = bool(relu)
        self.C, self.eps, self.momentum = num_features, eps, momentum
        padded = n_blocks(num_features) * CB
        gamma = np.zeros(padded, np.float32)
        gamma[:num_features] = 1.0
        self.weight = Parameter(gamma)
        self.bias = Parameter(np.zeros(padded, np.float32))
        self.running_mean = np.zeros(padded, np.float32)
        self.running_var = np.zeros(padded, np.float32)
        self.running_var[:num_features] = 1.0
        self._saved = None

    def forward(self, x):
        _expect_blocked(x, self.describe(), self.C)
        y, self._saved = norm.batchnorm_forward(x, self.weight.data, self.bias.data, self.running_mean,
                                                self.running_var, self.training, eps=self.eps,
                                                momentum=self.momentum, relu=self.relu)
        return y

    def backward(self, dy):
        dx, dgamma, dbeta = norm.batchnorm_backward(dy, self._saved)
        self.weight.grad += dgamma
        self.bias.grad += dbeta
        return dx

    def config(self):
        return {"type": "BatchNorm2d", "args": self.args}

    def state(self):
        c = self.C
        return {"weight": self.weight.data[:c].copy(), "bias": self.bias.data[:c].copy(),
                "running_mean": self.running_mean[:c].copy(), "running_var": self.running_var[:c].copy()}

    def load_state(self, state, prefix=""):
        c = self.C
        for key, target in (("weight", self.weight.data), ("bias", self.bias.data),
                            ("running_mean", self.running_mean), ("running_var", self.running_var)):
            target[:c] = _take(state, prefix + key, (c,), self.describe())

    def describe(self):
        return f"BatchNorm2d({self.C}{', relu' if self.relu else ''})"


@_register
class ReLU(Module):
    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x):
        _expect_blocked(x, "ReLU", None)
        self._y = BlockedTensor(np.maximum(x.data, np.float32(0.0)), x.shape)
        return self._y

    def backward(self, dy):
        return norm.relu_backward(dy, self._y)

    def config(self):
        return {"type": "ReLU", "args": {}}


@_register
class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.args = {"kernel_size": kernel_size, "stride": stride, "padding": padding}
        self._cache = None

    def forward(self, x):
        _expect_blocked(x, self.describe(), None)
        a = self.args
        y, self._cache = pool.max_pool2d(x, a["kernel_size"], a["stride"], a["padding"])
        return y

    def backward(self, dy):
        return pool.max_pool2d_backward(dy, self._cache)

    def config(self):
        return {"type": "MaxPool2d", "args": self.args}

    def describe(self):
        return f"MaxPool2d(k={self.args['kernel_size']})"


@_register
class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.args = {"kernel_size": kernel_size, "stride": stride, "padding": padding}
        self._x_shape = None

    def forward(self, x):
        _expect_blocked(x, self.describe(), None)
        self._x_shape = x.shape
        a = self.args
        return pool.avg_pool2d(x, a["kernel_size"], a["stride"], a["padding"])

    def backward(self, dy):
        a = self.args
        return pool.avg_pool2d_backward(dy, self._x_shape, a["kernel_size"], a["stride"], a["padding"])

    def config(self):
        return {"type": "AvgPool2d", "args": self.args}

    def describe(self):
        return f"AvgPool2d(k={self.args['kernel_size']})"


@_register
class GlobalAvgPool(Module):
    """Blocked (N, C, H, W) -> plain (N, C) means: the bridge to Linear layers."""

    def __init__(self):
        super().__init__()
        self._x_shape = None

    def forward(self, x):
        _expect_blocked(x, "GlobalAvgPool", None)
        self._x_shape = x.shape
        return pool.global_avg_pool(x)

    def backward(self, dy):
        return pool.global_avg_pool_backward(dy, self._x_shape)

    def config(self):
        return {"type": "GlobalAvgPool", "args": {}}


@_register
class Linear(Module):
    """Fully connected layer on (N, in) float32 arrays; all three products on dlcpu.matmul."""

    def __init__(self, in_features, out_features, bias=True, seed=0):
        super().__init__()
        self.args = {"in_features": in_features, "out_features": out_features, "bias": bias, "seed": seed}
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(in_features)
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(np.float32))
        self.bias = Parameter(np.zeros(out_features, np.float32)) if bias else None
        self._x = None

    def forward(self, x):
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != self.args["in_features"]:
            shape = getattr(x, "shape", None)
            raise ValueError(f"{self.describe()}: expected a (N, {self.args['in_features']}) array, got shape {shape}")
        self._x = np.ascontiguousarray(x, dtype=np.float32)
        y = matmul(self._x, np.ascontiguousarray(self.weight.data.T))
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, dy):
        dy = np.ascontiguousarray(dy, dtype=np.float32)
        self.weight.grad += matmul(np.ascontiguousarray(dy.T), self._x)
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=0, dtype=np.float64).astype(np.float32)
        return matmul(dy, self.weight.data)

    def config(self):
        return {"type": "Linear", "args": self.args}

    def state(self):
        out = {"weight": self.weight.data.copy()}
        if self.bias is not None:
            out["bias"] = self.bias.data.copy()
        return out

    def load_state(self, state, prefix=""):
        self.weight.data[...] = _take(state, prefix + "weight", self.weight.data.shape, self.describe())
        if self.bias is not None:
            self.bias.data[...] = _take(state, prefix + "bias", self.bias.data.shape, self.describe())

    def describe(self):
        return f"Linear({self.args['in_features']}->{self.args['out_features']})"


@_register
class Sequential(Module):
    def __init__(self, *modules):
        super().__init__()
        self.modules = list(modules)

    def children(self):
        return self.modules

    def forward(self, x):
        for i, m in enumerate(self.modules):
            try:
                x = m.forward(x)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"layer {i} ({m.describe()}): {exc}") from None
        return x

    def backward(self, dy):
        for m in reversed(self.modules):
            dy = m.backward(dy)
        return dy

    def config(self):
        return {"type": "Sequential", "args": {"modules": [m.config() for m in self.modules]}}


@_register
class BasicBlock(Module):
    """ResNet basic block: relu(bn2(conv3x3(relu(bn1(conv3x3_s(x))))) + shortcut(x)), the
    shortcut a strided 1x1 conv + BN when the shape changes, else the identity (the first ReLU
    is fused into bn1)."""

    def __init__(self, in_channels, out_channels, stride=1, seed=0):
        super().__init__()
        self.args = {"in_channels": in_channels, "out_channels": out_channels, "stride": stride, "seed": seed}
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, 1, bias=False, seed=seed)
        self.bn1 = BatchNorm2d(out_channels, relu=True)
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, 1, bias=False, seed=seed + 1)
        self.bn2 = BatchNorm2d(out_channels)
        self.relu_out = ReLU()
        self.shortcut = []
        if stride != 1 or in_channels != out_channels:
            self.shortcut = [Conv2d(in_channels, out_channels, 1, stride, 0, bias=False, seed=seed + 2),
                             BatchNorm2d(out_channels)]

    def children(self):
        return [self.conv1, self.bn1, self.conv2, self.bn2, self.relu_out, *self.shortcut]

    def forward(self, x):
        _expect_blocked(x, self.describe(), self.args["in_channels"])
        h = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        s = x
        for m in self.shortcut:
            s = m(s)
        # Residual add: padded channels are zero on both sides, so they stay zero.
        return self.relu_out(BlockedTensor(h.data + s.data, h.shape))

    def backward(self, dy):
        g = self.relu_out.backward(dy)
        dx = self.conv1.backward(self.bn1.backward(self.conv2.backward(self.bn2.backward(g))))
        ds = g
        for m in reversed(self.shortcut):
            ds = m.backward(ds)
        if dx is None:
            return None
        return BlockedTensor(dx.data + ds.data, dx.shape)

    def config(self):
        return {"type": "BasicBlock", "args": self.args}

    def describe(self):
        a = self.args
        return f"BasicBlock({a['in_channels']}->{a['out_channels']}, s={a['stride']})"


# ============================================================================================
# Loss, optimizer
# ============================================================================================
def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels; returns (loss, dlogits)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"softmax_cross_entropy: logits must be (N, classes) and labels (N,), got {logits.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"softmax_cross_entropy: labels must lie in [0, {logits.shape[1]})")
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = logits.shape[0]
    loss = -logp[np.arange(n), labels].mean()
    grad = np.exp(logp)
    grad[np.arange(n), labels] -= 1.0
    return float(loss), (grad / n).astype(np.float32)


class SGD:
    """SGD with momentum and weight decay, PyTorch's formulation:
    d = grad + wd*p;  v = momentum*v + d;  p -= lr*v."""

    def __init__(self, params, lr=0.1, momentum=0.9, weight_decay=0.0):
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: need lr > 0, momentum >= 0, weight_decay >= 0 (got {lr}, {momentum}, {weight_decay})")
        self.params = list(params)
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


# ============================================================================================
# Save / load
# ============================================================================================
def build(config):
    """A module from its config() dict."""
    kind = config.get("type") if isinstance(config, dict) else None
    if kind not in _REGISTRY:
        raise ValueError(f"unknown layer type {kind!r} in model configuration")
    args = dict(config.get("args", {}))
    if kind == "Sequential":
        return Sequential(*[build(c) for c in args["modules"]])
    return _REGISTRY[kind](**args)


def save(model, path):
    """Write the model (configuration + parameters + buffers) to an .npz file, atomically: a
    crash mid-write leaves the previous file intact."""
    arrays = {f"param:{k}": v for k, v in model.state().items()}
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, __format_version__=np.int64(FORMAT_VERSION),
                 __config__=np.array(json.dumps(model.config())), **arrays)
    os.replace(tmp, path)


def load(path):
    """Rebuild a model saved by `save`; ValueError for another format version or a bad file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            files = dict(f.items())
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: not a readable dlcpu model file ({exc})") from None
    if "__format_version__" not in files or "__config__" not in files:
        raise ValueError(f"{path}: not a dlcpu model file (no format version or configuration)")
    version = int(files["__format_version__"])
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: model file format version {version}, this dlcpu reads version {FORMAT_VERSION}")
    try:
        config = json.loads(str(files["__config__"]))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt model configuration ({exc})") from None
    model = build(config)
    model.load_state({k[len("param:"):]: v for k, v in files.items() if k.startswith("param:")})
    return model


def digits_resnet(width=16, classes=10, seed=0):
    """The small ResNet-style CNN `dlcpu train digits` trains on 1x8x8 images."""
    first = Conv2d(1, width, 3, 1, 1, bias=False, seed=seed)
    first.needs_input_grad = False  # nothing upstream of the first layer wants dx
    return Sequential(
        first, BatchNorm2d(width, relu=True),
        BasicBlock(width, width, 1, seed=seed + 10),
        BasicBlock(width, 2 * width, 2, seed=seed + 20),
        GlobalAvgPool(),
        Linear(2 * width, classes, seed=seed + 30),
    )


# ============================================================================================
# Recurrent layers
# ============================================================================================
def _cell_ops(cell, nonlinearity):
    """(prepare, forward, backward) of dlcpu.rnn for a cell, with uniform signatures:
    forward(x, weights, train) -> (y, cache); backward(dy, cache, need_dx) -> (dx or None, dw_ih,
    dw_hh, db_ih, db_hh)."""
    from . import rnn

    if cell == "lstm":
        def fwd(x, w, train):
            y, (_h, _c), *cache = rnn.lstm_forward(x, weights=w, train=train)
            return y, (cache[0] if cache else None)
        return rnn.prepare_lstm, fwd, lambda dy, c, need_dx: rnn.lstm_backward(dy, c, need_dx=need_dx)[:5]
    if cell == "gru":
        def fwd(x, w, train):
            y, _h, *cache = rnn.gru_forward(x, weights=w, train=train)
            return y, (cache[0] if cache else None)
        return rnn.prepare_gru, fwd, lambda dy, c, need_dx: rnn.gru_backward(dy, c, need_dx=need_dx)[:5]

    def fwd(x, w, train):
        y, _h, *cache = rnn.rnn_forward(x, weights=w, nonlinearity=nonlinearity, train=train)
        return y, (cache[0] if cache else None)
    return rnn.prepare_rnn, fwd, lambda dy, c, need_dx: rnn.rnn_backward(dy, c, need_dx=need_dx)[:5]


class _Recurrent(Module):
    """Multi-layer, optionally bidirectional recurrent layer with PyTorch's parameter layout
    (weight_ih_l{k}[_reverse], ...); input (T, N, C), or (N, T, C) with batch_first; output the
    last layer's hidden states, directions concatenated.  Initial states are zero.  Set
    needs_input_grad = False on a first layer (its input is data): backward then skips the
    first layer's dx GEMM and returns None, as PyTorch's autograd does for an input that does
    not require grad."""

    cell = None
    gates = None

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False, batch_first=False,
                 seed=0, nonlinearity="tanh"):
        super().__init__()
        if min(input_size, hidden_size, num_layers) < 1:
            raise ValueError(f"{type(self).__name__}: sizes must be >= 1, got input {input_size}, "
                             f"hidden {hidden_size}, layers {num_layers}")
        self.args = {"input_size": input_size, "hidden_size": hidden_size, "num_layers": num_layers,
                         "bidirectional": bidirectional, "batch_first": batch_first, "seed": seed}
        if self.cell == "rnn":
            self.args["nonlinearity"] = nonlinearity
        self.nonlinearity = nonlinearity
        self.directions = 2 if bidirectional else 1
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(hidden_size)
        self.params = {}
        for layer in range(num_layers):
            cin = input_size if layer == 0 else hidden_size * self.directions
            for d in range(self.directions):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                g = self.gates * hidden_size
                for name, shape in ((f"weight_ih{sfx}", (g, cin)), (f"weight_hh{sfx}", (g, hidden_size)),
                                    (f"bias_ih{sfx}", (g,)), (f"bias_hh{sfx}", (g,))):
                    self.params[name] = Parameter(rng.uniform(-bound, bound, shape).astype(np.float32))
        self._caches = None
        self.needs_input_grad = True

    def own_parameters(self):
        return dict(self.params)

    def forward(self, x):
        a = self.args
        if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[2] != a["input_size"]:
            raise ValueError(f"{self.describe()}: expected a ({'N, T' if a['batch_first'] else 'T, N'}, "
                             f"{a['input_size']}) array, got shape {getattr(x, 'shape', None)}")
        seq = np.ascontiguousarray(x.transpose(1, 0, 2) if a["batch_first"] else x, dtype=np.float32)
        prepare, fwd, _ = _cell_ops(self.cell, self.nonlinearity)
        self._caches = []
        for layer in range(a["num_layers"]):
            outs, caches = [], []
            for d in range(self.directions):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                p = [self.params[f"{n}{sfx}"].data for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                inp = seq[::-1] if d else seq
                y, cache = fwd(np.ascontiguousarray(inp), prepare(*p), self.training)
                outs.append(y[::-1] if d else y)
                caches.append(cache)
            seq = np.ascontiguousarray(np.concatenate(outs, axis=2)) if self.directions > 1 else outs[0]
            self._caches.append(caches)
        return np.ascontiguousarray(seq.transpose(1, 0, 2)) if a["batch_first"] else seq

    def backward(self, dy):
        a = self.args
        _, _, bwd = _cell_ops(self.cell, self.nonlinearity)
        if self._caches is None or self._caches[0][0] is None:
            raise ValueError(f"{self.describe()}: backward needs a forward in training mode")
        g = np.ascontiguousarray(dy.transpose(1, 0, 2) if a["batch_first"] else dy, dtype=np.float32)
        K = a["hidden_size"]
        for layer in reversed(range(a["num_layers"])):
            dx = None
            for d in range(self.directions):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                part = np.ascontiguousarray(g[:, :, d * K:(d + 1) * K])
                if d:
                    part = np.ascontiguousarray(part[::-1])
                need_dx = layer > 0 or self.needs_input_grad
                grads = bwd(part, self._caches[layer][d], need_dx)
                for name, grad in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), grads[1:]):
                    self.params[f"{name}{sfx}"].grad += grad
                if need_dx:
                    gx = grads[0][::-1] if d else grads[0]
                    dx = gx if dx is None else dx + gx
            if dx is None:
                return None
            g = np.ascontiguousarray(dx)
        return np.ascontiguousarray(g.transpose(1, 0, 2)) if a["batch_first"] else g

    def config(self):
        return {"type": type(self).__name__, "args": self.args}

    def state(self):
        return {k: p.data.copy() for k, p in self.params.items()}

    def load_state(self, state, prefix=""):
        for k, p in self.params.items():
            p.data[...] = _take(state, prefix + k, p.data.shape, self.describe())

    def describe(self):
        a = self.args
        return (f"{type(self).__name__}({a['input_size']}->{a['hidden_size']}, layers={a['num_layers']}"
                f"{', bidirectional' if a['bidirectional'] else ''})")


@_register
class LSTM(_Recurrent):
    cell, gates = "lstm", 4


@_register
class GRU(_Recurrent):
    cell, gates = "gru", 3


@_register
class RNN(_Recurrent):
    cell, gates = "rnn", 1


@_register
class LastTimeStep(Module):
    """(T, N, F) -> (N, F): the last step of a sequence (N, T, F with batch_first)."""

    def __init__(self, batch_first=False):
        super().__init__()
        self.args = {"batch_first": batch_first}
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        return np.ascontiguousarray(x[:, -1] if self.args["batch_first"] else x[-1])

    def backward(self, dy):
        g = np.zeros(self._shape, np.float32)
        if self.args["batch_first"]:
            g[:, -1] = dy
        else:
            g[-1] = dy
        return g

    def config(self):
        return {"type": "LastTimeStep", "args": self.args}


def digits_rnn(hidden=64, classes=10, seed=0):
    """`dlcpu train digits-rnn`: an LSTM reading the 8x8 digits row by row (T=8 steps of 8
    pixels), classifying from its last hidden state."""
    lstm = LSTM(8, hidden, seed=seed)
    lstm.needs_input_grad = False  # its input is the image rows
    return Sequential(lstm, LastTimeStep(), Linear(hidden, classes, seed=seed + 1))
