"""Where faults go in a dlcpu.nn model: its layers, their weight tensors, their output activations,
and the map from a logical index to the offset the kernels store.

Design: a layer is named by its path of child indices from the root ("0", "2.0", "3.5"), the
same prefix save() gives its parameters, so `--layer 2.0` and the parameter "2.0.weight" in a
model file are the same layer.  Users give logical indices (KCRS for convolution weights, (C,)
for batch-norm scale/shift, (out, in) for Linear, PyTorch's gate-row layout (gates*hidden, in)
for recurrent weights, (C, H, W) / (F,) / (T, F) per sample for activations); the mapping
functions below turn them into flat offsets of the storage the kernels read:

  conv weight  (k, c, r, s) -> W[k/16][c/16][r][s][c%16][k%16]   (blocked, channel-padded)
  activation   (c, h, w)    -> I[n][c/16][h][w][c%16]             (blocked, channel-padded)
  batch norm   (c,)         -> c of the channel-padded scale/shift vectors
  recurrent weight (row, col) -> the packed operand of x @ W^T (dlcpu.rnn.pack_gate_weights:
                                 gates padded to 16 units), what the kernels read
  Linear weights, biases, (N, F) and (T, N, F) activations: row-major

so a padded lane can never be a target, and a flip lands in what the kernels read on the next call.
"""
from dataclasses import dataclass, field

import numpy as np

from ..layout import CB, BlockedTensor
from ..nn.layers import BatchNorm2d, Conv2d
from ..nn.module import Module
from ..nn.recurrent import _Recurrent
from .bitflip import bit_error_count, draw_flips, flip_bits, is_float_storage, storage_width


@dataclass(frozen=True)
class LayerRef:
    """One layer of a model: its name (path of child indices), the path and the module."""

    name: str
    path: tuple
    module: Module = field(compare=False)

    @property
    def kind(self):
        return type(self.module).__name__

    @property
    def is_leaf(self):
        return not self.module.children()


def model_layers(model):
    """Every layer below the root, depth first in model order (a BasicBlock, then its children)."""
    if not isinstance(model, Module):
        raise TypeError(f"faults: model must be a dlcpu.nn Module, got {type(model).__name__}")
    out = []

    def walk(m, path):
        for i, child in enumerate(m.children()):
            out.append(LayerRef(".".join(map(str, path + (i,))), path + (i,), child))
            walk(child, path + (i,))

    walk(model, ())
    return out


def find_layer(model, name):
    """The LayerRef called `name`; ValueError listing the model's layers otherwise."""
    layers = model_layers(model)
    for ref in layers:
        if ref.name == str(name):
            return ref
    listing = ", ".join(f"{r.name} ({r.module.describe()})" for r in layers)
    raise ValueError(f"layer {name!r} is not in the model; its layers are: {listing}")


# -- weights ----------------------------------------------------------------------------------
def _conv_weight_offsets(shape, idx):
    """(n, 4) logical KCRS indices -> offsets in W[K/16][C/16][R][S][16c][16k]."""
    _, C, R, S = shape
    cb = -(-C // CB)
    k, c, r, s = idx.T
    return (((((k // CB) * cb + c // CB) * R + r) * S + s) * CB + c % CB) * CB + k % CB


def _row_major_offsets(shape, idx):
    return np.ravel_multi_index(tuple(idx.T), shape).astype(np.int64)


@dataclass
class WeightTensor:
    """One parameter tensor of a layer as a fault target.

    shape: the logical shape users index; storage: the array the kernels read (flipped in place);
    to_offsets(idx) maps (n, ndim) logical indices to flat storage offsets; after_change(offsets),
    when set, refreshes what is derived from the storage (an int8 layer's dequantized weights)."""

    layer: LayerRef
    param: str
    shape: tuple
    storage: np.ndarray
    to_offsets: object = _row_major_offsets
    after_change: object = None

    @property
    def name(self):
        return f"{self.layer.name}.{self.param}"

    @property
    def size(self):
        return int(np.prod(self.shape))

    def offsets(self, idx):
        idx = np.asarray(idx, np.int64).reshape(-1, len(self.shape))
        return np.asarray(self.to_offsets(self.shape, idx), np.int64)

    def random_flips(self, k, rng, bits="all"):
        """k simultaneous flips at distinct (logical element, bit) pairs drawn by `rng`, applied
        to the stored tensor (never to padding); returns Flips, whose undo() also refreshes what
        is derived from the storage."""
        width = storage_width(self.storage.dtype)
        return self._flip_drawn(draw_flips(self.size, width, is_float_storage(self.storage.dtype), k, rng, bits))

    def bit_error_flips(self, rate, rng, bits="all"):
        """Each allowed bit of every logical element flipped independently with probability
        `rate`, on the stored tensor; returns Flips as random_flips does."""
        width = storage_width(self.storage.dtype)
        is_float = is_float_storage(self.storage.dtype)
        k = bit_error_count(self.size, width, is_float, rate, rng, bits)
        return self._flip_drawn(draw_flips(self.size, width, is_float, k, rng, bits))

    def _flip_drawn(self, drawn):
        elements, bits = drawn
        offsets = self.offsets(np.stack(np.unravel_index(elements, self.shape), axis=1))
        flips = flip_bits(self.storage, offsets, bits)
        if self.after_change:
            self.after_change(offsets)
            flips.after_undo = lambda: self.after_change(offsets)
        return flips


def layer_weights(ref):
    """The WeightTensors of one layer (none for a layer without parameters)."""
    m = ref.module
    if hasattr(m, "fault_targets"):          # layers that store weights in another form (int8)
        return list(m.fault_targets(ref))
    out = []
    for param, p in m.own_parameters().items():
        if param == "weight" and isinstance(m, Conv2d):          # blocked, channel-padded storage
            out.append(WeightTensor(ref, param, tuple(m.weight_b.shape), p.data, _conv_weight_offsets))
        elif isinstance(m, BatchNorm2d):                           # channel-padded vectors
            out.append(WeightTensor(ref, param, (m.C,), p.data))
        elif isinstance(m, _Recurrent) and param.startswith("weight"):   # packed gate matrices
            offsets = lambda shape, idx, m=m, param=param: m.stored_offsets(param, idx[:, 0], idx[:, 1])
            out.append(WeightTensor(ref, param, m.logical_shape(param), p.data, offsets))
        else:
            out.append(WeightTensor(ref, param, tuple(p.data.shape), p.data))
    return out


def weight_tensors(model, layers=None):
    """Every WeightTensor of the model, or of the named layers (a block names all the layers in
    it), in model order."""
    everything = model_layers(model)
    if layers is None:
        return [w for ref in everything for w in layer_weights(ref)]
    names = [find_layer(model, name).name for name in layers]
    within = lambda ref, name: ref.name == name or ref.name.startswith(name + ".")
    empty = [name for name in names if not any(layer_weights(r) for r in everything if within(r, name))]
    if empty:
        raise ValueError(f"layer(s) {', '.join(empty)} have no weights to inject into")
    return [w for ref in everything if any(within(ref, name) for name in names) for w in layer_weights(ref)]


# -- activations ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActivationFormat:
    """How one layer's output stores a batch: 'blocked' (N, C, H, W as I[N][C/16][H][W][16]),
    'rows' ((N, F) arrays) or 'sequence' ((T, N, F) arrays, (N, T, F) with batch_first).
    sample_shape is the logical shape of one sample's activation."""

    layout: str
    sample_shape: tuple
    batch_first: bool = False

    @property
    def size(self):
        return int(np.prod(self.sample_shape))

    def offsets(self, batch, rows, idx):
        """Flat offsets of logical per-sample indices idx (n, ndim) of batch rows `rows` (n,) in
        an output of `batch` samples."""
        rows = np.asarray(rows, np.int64)
        idx = np.asarray(idx, np.int64).reshape(len(rows), -1)
        if self.layout == "blocked":
            C, H, W = self.sample_shape
            c, h, w = idx.T
            return ((((rows * -(-C // CB) + c // CB) * H + h) * W + w) * CB + c % CB).astype(np.int64)
        if self.layout == "rows":
            return rows * self.sample_shape[0] + idx[:, 0]
        T, F = self.sample_shape
        t, f = idx.T
        return ((rows * T + t) * F + f) if self.batch_first else ((t * batch + rows) * F + f)

    def storage(self, y):
        """The array whose elements the offsets address."""
        return y.data if self.layout == "blocked" else y


def activation_format(y, module=None):
    """The ActivationFormat of a layer output (or a model input) `y`; `module` (the producer or
    consumer) says whether a 3-d sequence is batch-first."""
    if isinstance(y, BlockedTensor):
        return ActivationFormat("blocked", tuple(int(d) for d in y.shape[1:]))
    if isinstance(y, np.ndarray) and y.ndim == 2:
        return ActivationFormat("rows", (int(y.shape[1]),))
    if isinstance(y, np.ndarray) and y.ndim == 3:
        first = bool(getattr(module, "args", {}).get("batch_first", False))
        T, F = (y.shape[1], y.shape[2]) if first else (y.shape[0], y.shape[2])
        return ActivationFormat("sequence", (int(T), int(F)), first)
    raise TypeError(f"faults: cannot inject into a layer output of type {type(y).__name__} "
                    f"with shape {getattr(y, 'shape', None)}")


def batch_size(y, fmt):
    if fmt.layout == "blocked":
        return int(y.shape[0])
    if fmt.layout == "sequence" and not fmt.batch_first:
        return int(y.shape[1])
    return int(y.shape[0])


def take_rows(y, fmt, rows):
    """A copy of the samples `rows` of a batch (so flips never reach the cached golden run)."""
    rows = np.asarray(rows, np.int64)
    if fmt.layout == "blocked":
        return BlockedTensor(np.ascontiguousarray(y.data[rows]), (len(rows), *y.shape[1:]))
    if fmt.layout == "sequence" and not fmt.batch_first:
        return np.ascontiguousarray(y[:, rows])
    return np.ascontiguousarray(y[rows])


def check_index(shape, idx, what):
    """The logical index (or (n, ndim) indices) as an int64 array; ValueError naming the
    coordinate when one is outside `shape`, TypeError for non-integers."""
    idx = np.asarray(idx)
    if idx.size and idx.dtype.kind not in "iu":
        raise TypeError(f"{what}: an index must be integers, got {idx.tolist()!r}")
    idx = idx.astype(np.int64).reshape(-1, idx.shape[-1] if idx.ndim else 1)
    if idx.shape[1] != len(shape):
        raise ValueError(f"{what}: index {idx[0].tolist()} has {idx.shape[1]} coordinates, but the tensor has "
                         f"shape {tuple(shape)} ({len(shape)} coordinates)")
    bad = (idx < 0) | (idx >= np.asarray(shape))
    if bad.any():
        row, dim = np.argwhere(bad)[0]
        raise ValueError(f"{what}: index {idx[row].tolist()} is out of range: coordinate {dim} must be in "
                         f"0..{shape[dim] - 1} for shape {tuple(shape)}")
    return idx
