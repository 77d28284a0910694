"""Compressed variants of a model for the resilience study, and the study itself (LASCAS 2020:
pruning, quantization and both against single-bit faults).

Design:
- `quantize_int8(model)` returns a copy whose Conv2d and Linear weights are *stored* as int8
  codes with one scale per output channel (symmetric, scale = max|w| / 127).  The codes are
  what faults hit (sites.layer_weights asks the layer's `fault_targets`); the kernels still run
  in fp32 on the dequantized weights (codes x scale), refreshed element by element after every
  flip and its undo.  Activations stay fp32; an activation campaign on an int8 variant uses
  the fixed8 fault model, i.e. the fault hits the 8-bit fixed-point image of the value with the
  layer's range, which is what an int8 activation with a per-tensor scale would store.
- `compare(...)` runs one campaign (same seed, same n, same targeted layers) on the dense model,
  magnitude-pruned and fine-tuned variants, the int8 variant and pruned + int8, and reports SDC
  rates with Wilson intervals, accuracy and resilience factors (dense rate / variant rate).
"""
from dataclasses import dataclass, field

import numpy as np

from ..layout import block_weights, unblock_weights
from ..nn import io as nn_io
from ..nn.layers import Conv2d, Linear
from .bitflip import parse_bits
from .sites import WeightTensor, _conv_weight_offsets, model_layers
from .stats import wilson_interval

#: the paper's resilience factors (dense SDC rate / variant SDC rate), for the side-by-side table
PAPER_FACTORS = {"pruning": 9.0, "quantization": 27.4, "both": 108.7}


def copy_model(model):
    """An independent copy of a dlcpu.nn model (through its configuration and state)."""
    model_copy = nn_io.build(model.config())
    model_copy.load_state(model.state())
    return model_copy


class Int8Weights:
    """int8 codes (logical layout: KCRS or (out, in)) and per-output-channel float32 scales of one
    layer; `refresh(offsets)` rewrites those elements of the layer's fp32 weights."""

    def __init__(self, layer):
        self.layer = layer
        w = unblock_weights(layer.weight_b) if isinstance(layer, Conv2d) else layer.weight.data
        flat = w.reshape(w.shape[0], -1).astype(np.float64)
        peak = np.abs(flat).max(axis=1)
        self.scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        self.codes = np.clip(np.rint(flat / self.scales[:, None]), -127, 127).astype(np.int8).reshape(w.shape)
        self.shape = tuple(w.shape)
        self._write_all()

    def dequantized(self):
        per_row = self.codes.reshape(self.shape[0], -1).astype(np.float32) * self.scales[:, None]
        return per_row.reshape(self.shape)

    def _write_all(self):
        w = self.dequantized()
        if isinstance(self.layer, Conv2d):
            self.layer.weight.data[...] = block_weights(w).data
        else:
            self.layer.weight.data[...] = w

    def refresh(self, offsets):
        """After codes.flat[offsets] changed: the same elements of the fp32 compute weights."""
        idx = np.stack(np.unravel_index(np.asarray(offsets), self.shape), axis=1)
        values = self.codes.reshape(-1)[offsets].astype(np.float32) * self.scales[idx[:, 0]]
        if isinstance(self.layer, Conv2d):
            self.layer.weight.data.reshape(-1)[_conv_weight_offsets(self.shape, idx)] = values
        else:
            self.layer.weight.data.reshape(-1)[offsets] = values

    def fault_targets(self, ref):
        """The layer's fault targets: the int8 codes in place of the fp32 weight, the rest as is."""
        out = [WeightTensor(ref, "weight", self.shape, self.codes, after_change=self.refresh)]
        if getattr(self.layer, "bias", None) is not None:
            out.append(WeightTensor(ref, "bias", self.layer.bias.data.shape, self.layer.bias.data))
        return out


def quantize_int8(model):
    """A copy of `model` with every Conv2d and Linear weight stored as int8 codes + per-channel
    scales (see the module docstring); returns (copy, {layer name: Int8Weights})."""
    q = copy_model(model)
    layers = {}
    for ref in model_layers(q):
        if isinstance(ref.module, (Conv2d, Linear)):
            ref.module.int8 = layers[ref.name] = Int8Weights(ref.module)
            ref.module.fault_targets = ref.module.int8.fault_targets
    return q, layers


@dataclass
class VariantResult:
    """One row of the resilience study.  The SDC-1 rate is per (fault, input) pair: for weight
    faults, the fraction of the evaluation inputs whose top-1 changed, averaged over faults (the
    rate at which a fault misclassifies an input); `any_input_rate` is the fraction of weight
    faults that changed at least one of them, which one borderline input can dominate."""

    name: str
    kind: str                 # dense | pruning | quantization | both
    sparsity: float
    accuracy: float
    n: int
    rate: float
    low: float
    high: float
    any_input_rate: float
    due_rate: float
    fault_model: str
    bits_per_element: int
    factor: float = None      # dense SDC-1 rate / this one
    factor_low: float = None  # conservative: dense rate's lower limit / this rate's upper limit
    extra: dict = field(default_factory=dict)

    def as_dict(self):
        return {"variant": self.name, "kind": self.kind, "sparsity": self.sparsity, "accuracy": self.accuracy,
                "fault_model": self.fault_model, "bits_per_element": self.bits_per_element, "n": self.n,
                "sdc1_rate": self.rate, "sdc1_low": self.low, "sdc1_high": self.high,
                "any_input_sdc1_rate": self.any_input_rate, "due_rate": self.due_rate,
                "resilience_factor": self.factor, "resilience_factor_low": self.factor_low,
                "paper_factor": PAPER_FACTORS.get(self.kind), **self.extra}


def _variant_campaign(model, inputs, target, fault_model, bits, n, seed, confidence, margin, batch, layers, out):
    from .campaign import Campaign

    params = ("weight",) if target == "weights" else None
    camp = Campaign(model, inputs, target=target, bits=bits, layers=layers, params=params, fault_model=fault_model,
                    n=n, confidence=confidence, margin=margin, seed=seed, batch=batch)
    return camp, camp.run(out, resume=True) if out else camp.run()


def compare(model, data, *, target="weights", sparsities=(0.5, 0.75, 0.9), prune_scope="global", finetune_epochs=3,
            finetune_lr=0.01,
            n="auto", bits="all", seed=0, confidence=0.95, margin=0.01, images=64, batch=2048, out_dir=None,
            on_variant=None):
    """The LASCAS 2020 study on a trained digits CNN: the same single-bit campaign on the dense
    model, on magnitude-pruned and fine-tuned variants at each sparsity, on the int8 variant and
    on pruned + int8.  Returns [VariantResult].  Pruning is nn.prune's magnitude pruning at
    `prune_scope` ('global': one threshold over all weights, which spares small layers such as
    the 144-weight first convolution; 'layer': the same sparsity in every layer), then
    `finetune_epochs` of SGD at `finetune_lr` with the masks kept.

    data: dlcpu.train.DigitsData (fine-tuning uses its training split; accuracy and the campaign
    its test split: activation faults over all test images, weight faults evaluated on the first
    `images`).  With out_dir, fine-tuned models and each variant's results file are kept there
    and an interrupted study resumes from them."""
    import os

    from .. import nn
    from ..train import evaluate, image_batch, train_digits

    if target not in ("weights", "activations"):
        raise ValueError(f"compare: target must be 'weights' or 'activations', got {target!r}")
    for s in sparsities:
        if not isinstance(s, (int, float)) or not 0.0 < s < 1.0:
            raise ValueError(f"compare: sparsities must be fractions in (0, 1), got {s!r}")
    if out_dir is not None and not os.path.isdir(out_dir):
        raise ValueError(f"compare: {out_dir} is not a directory")
    x_eval = data.x_test if target == "activations" else data.x_test[:images]
    inputs = image_batch(x_eval)
    weight_layers = [r.name for r in model_layers(model) if isinstance(r.module, (Conv2d, Linear))]
    layers = weight_layers if target == "weights" else None

    variants = [("dense fp32", "dense", 0.0, lambda: copy_model(model))]

    parse_bits(bits, 32, True)           # a bad spec fails now, not after the first variants ran
    parse_bits(bits, 8, False)            # the int8 variants' targets are 8-bit codes (or fixed8 values)
    done = {}

    def pruned(s):
        """The pruned, fine-tuned model at sparsity s: trained once per study; with out_dir kept
        there, written under a temporary name and renamed after the last epoch, so a file
        there is always a finished model (training saves after every epoch)."""
        if s in done:
            return done[s]
        path = os.path.join(out_dir, f"pruned-{prune_scope}-{round(100 * s)}.npz") if out_dir else None
        if path and os.path.exists(path):
            done[s] = nn.load(path)
            return done[s]
        partial = f"{path}.partial.npz" if path else None
        res = train_digits(epochs=finetune_epochs, lr=finetune_lr, seed=seed, data=data, init_from=copy_model(model),
                           prune=s, prune_scope=prune_scope, out=partial)
        if path:
            os.replace(partial, path)
        done[s] = res.model
        return done[s]

    for s in sparsities:
        variants.append((f"pruned {round(100 * s)}%", "pruning", s, lambda s=s: pruned(s)))
    variants.append(("int8", "quantization", 0.0, lambda: quantize_int8(model)[0]))
    for s in sparsities:
        variants.append((f"pruned {round(100 * s)}% + int8", "both", s, lambda s=s: quantize_int8(pruned(s))[0]))

    results, dense, planned_n = [], None, n
    for name, kind, sparsity, make in variants:
        variant = make()
        int8 = kind in ("quantization", "both")
        fault_model = "fixed8" if int8 and target == "activations" else "ieee"
        slug = name.replace(" + ", "-").replace(" ", "-").replace("%", "")
        if kind in ("pruning", "both"):
            slug = f"{prune_scope}-{slug}"
        out = os.path.join(out_dir, f"{target}-{slug}.jsonl") if out_dir else None
        camp, state = _variant_campaign(variant, inputs, target, fault_model, bits, planned_n, seed, confidence,
                                        margin, batch, layers, out)
        if planned_n == "auto":
            planned_n = camp.n           # every variant runs the dense campaign's sample size
        accuracy = evaluate(variant, data.x_test, data.y_test)
        rate, low, high = state.per_image_rate(confidence)
        if target == "activations":         # one input per fault: a binomial proportion
            low, high = wilson_interval(state.sdc1, state.done, confidence)
        row = VariantResult(name, kind, float(sparsity), accuracy, state.done, rate, low, high,
                            state.sdc1 / state.done, state.due / state.done, fault_model, 8 if int8 else 32,
                            extra={"population": camp.population, "sparsity_measured": _sparsity(variant)})
        if dense is None:
            dense = row
        elif row.rate > 0:
            row.factor = dense.rate / row.rate
            row.factor_low = dense.low / row.high if row.high > 0 else None
        results.append(row)
        if on_variant:
            on_variant(row)
    return results


def _sparsity(model):
    """Fraction of exact zeros over the Conv2d and Linear weights (logical, unpadded)."""
    zeros = total = 0
    for ref in model_layers(model):
        m = ref.module
        if isinstance(m, (Conv2d, Linear)):
            w = m.int8.codes if hasattr(m, "int8") else (unblock_weights(m.weight_b) if isinstance(m, Conv2d) else m.weight.data)
            zeros += int((w == 0).sum())
            total += w.size
    return zeros / total if total else 0.0
