"""Magnitude pruning of dlcpu.nn models, kept through fine-tuning.

Design: the prunable weights are the `weight` of every Conv2d and Linear and the `weight_ih_*` /
`weight_hh_*` matrices of LSTM, GRU and RNN layers (plain (gates*hidden, in) arrays, so they
prune like Linear weights); biases, BatchNorm scales and shifts are never pruned.  Each is named
as model.named_parameters() names it ("0.weight", "2.0.weight", "0.weight_ih_l0").

Ranking is on the logical weights: a Conv2d stores its weights blocked and channel-padded
(W[K/16][C/16][R][S][16][16]); its padded entries are always zero and are neither ranked nor
counted, so the weights are unblocked (KCRS), ranked there, and the mask is blocked back to the
stored layout (its padded entries are False).  Exactly round(sparsity * n) elements are pruned,
the smallest |w| first, ties broken by position (a stable sort), so the result is deterministic:
per tensor with scope="layer", over all prunable weights together with scope="global".

The mask is a bool array (True = kept) in `Parameter.mask`, shaped like `Parameter.data`.
`nn.SGD` zeroes the masked gradient, velocity and weights after every step, so pruned weights
stay exactly 0 through fine-tuning; a Parameter without a mask (mask None) costs nothing.  A new
`prune` replaces the earlier masks (sparsity 0 removes them).  Masks are not saved by `nn.save`:
a loaded model has the zeros but no masks; `sparsity_report` reports the zeros of any model.
"""
import math
from dataclasses import dataclass

import numpy as np

from ..layout import block_weights, unblock_weights
from .layers import Conv2d, Linear
from .module import Module
from .recurrent import _Recurrent

SCOPES = ("layer", "global")


@dataclass
class LayerSparsity:
    """One prunable weight tensor: its name in named_parameters(), the layer it belongs to, its
    logical shape and element count (no padding), how many of them are zero, that fraction, and
    whether a mask keeps them at zero in training."""
    name: str
    layer: str
    shape: tuple
    size: int
    zeros: int
    sparsity: float
    masked: bool


def check_sparsity(value, where="prune"):
    """A finite real number in [0, 1): TypeError for a non-number, ValueError otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: sparsity must be a number, got {value!r}")
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ValueError(f"{where}: sparsity must be >= 0 and < 1 (the fraction of weights set to zero), got {value!r}")
    return float(value)


def _check_model(model, where):
    if not isinstance(model, Module):
        raise TypeError(f"{where}: model must be a dlcpu.nn Module, got {type(model).__name__}")


class _Weight:
    """A prunable weight: name, layer, Parameter, and how to read it in the logical layout and
    turn a logical mask into one shaped like Parameter.data."""

    def __init__(self, name, layer, param, own_name="weight"):
        self.name, self.layer, self.param, self.own_name = name, layer, param, own_name
        self.blocked = isinstance(layer, Conv2d)
        self.packed = isinstance(layer, _Recurrent)

    def logical(self):
        if self.blocked:
            return unblock_weights(self.layer.weight_b)
        if self.packed:
            return self.layer.to_torch_layout(self.own_name, self.param.data)
        return self.param.data

    def stored_mask(self, keep):
        if self.blocked:
            return block_weights(keep.astype(np.float32)).data != 0
        if self.packed:   # the kernels' layout; padding (always zero) is left unmasked
            mask = np.ones(self.param.data.shape, bool)
            rows, cols = np.indices(keep.shape)
            mask.reshape(-1)[self.layer.stored_offsets(self.own_name, rows.ravel(), cols.ravel())] = keep.ravel()
            return mask
        return keep


def _weights(module, prefix=""):
    """The prunable weights of a module tree, in named_parameters() order."""
    out = []
    if isinstance(module, (Conv2d, Linear)):
        out.append(_Weight(prefix + "weight", module, module.weight))
    elif isinstance(module, _Recurrent):
        out += [_Weight(prefix + k, module, p, k) for k, p in module.own_parameters().items() if k.startswith("weight_")]
    for i, child in enumerate(module.children()):
        out += _weights(child, f"{prefix}{i}.")
    return out


def _record(w, logical):
    size = int(logical.size)
    zeros = size - int(np.count_nonzero(logical))
    return LayerSparsity(w.name, w.layer.describe(), tuple(logical.shape), size, zeros,
                         zeros / size if size else 0.0, w.param.mask is not None)


def prune(model, sparsity, scope="layer"):
    """Set the `sparsity` fraction of smallest-magnitude prunable weights to zero and keep them
    there through training (a mask that nn.SGD applies); returns sparsity_report(model).

    scope="layer": each weight tensor loses round(sparsity * its size) elements;
    scope="global": round(sparsity * all prunable elements) go, by one ranking over all of them,
    so layers with many small weights lose more.  Which weights are prunable, ties and padding:
    see the module docstring."""
    _check_model(model, "prune")
    sparsity = check_sparsity(sparsity)
    if not isinstance(scope, str) or scope not in SCOPES:
        raise ValueError(f"prune: scope must be 'layer' or 'global', got {scope!r}")
    weights = _weights(model)
    if not weights:
        raise ValueError("prune: the model has no prunable weights (Conv2d, Linear, LSTM, GRU or RNN layers)")
    logical = [np.asarray(w.logical()) for w in weights]
    if scope == "layer":
        keeps = [_keep_mask(np.abs(a).ravel(), sparsity).reshape(a.shape) for a in logical]
    else:
        flat = _keep_mask(np.concatenate([np.abs(a).ravel() for a in logical]), sparsity)
        ends = np.cumsum([a.size for a in logical])
        keeps = [part.reshape(a.shape) for part, a in zip(np.split(flat, ends[:-1]), logical)]
    for w, keep in zip(weights, keeps):
        p = w.param
        if keep.all():
            p.mask = None
            continue
        p.mask = w.stored_mask(keep)
        np.copyto(p.data, 0.0, where=~p.mask)   # +0.0 (data *= mask would leave -0.0)
        p.grad[~p.mask] = 0.0
    return sparsity_report(model)


def _keep_mask(magnitudes, sparsity):
    """bool mask of `magnitudes` (1-d), False for the round(sparsity * n) smallest, ties by
    position (NaN ranks largest, so it is never pruned)."""
    keep = np.ones(magnitudes.size, dtype=bool)
    k = round(sparsity * magnitudes.size)
    if k:
        keep[np.argsort(magnitudes, kind="stable")[:k]] = False
    return keep


def sparsity_report(model):
    """[LayerSparsity] of the model's prunable weights (in named_parameters() order): the zeros
    it has now, pruned or not (a model loaded from a file included)."""
    _check_model(model, "sparsity_report")
    return [_record(w, np.asarray(w.logical())) for w in _weights(model)]


def total_sparsity(report):
    """The fraction of zeros over all the weights of a sparsity report (0.0 for an empty one)."""
    size = sum(r.size for r in report)
    return sum(r.zeros for r in report) / size if size else 0.0
