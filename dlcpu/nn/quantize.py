"""Post-training quantization of a model's convolutions: int8 or block-ternary weights with
calibrated u8 activations, saved and loaded like any model.

    q = nn.quantize(model, "ternary", calibration=[xb1, xb2], block=16, residual=1)
    nn.save(q, "digits-ternary.npz"); q = nn.load("digits-ternary.npz")
    q.set_levels(1)                         # residual levels off, least important first

What changes: every Conv2d runs on the integer kernels (conv2d(precision='int8' | 'ternary')):
int8 weights symmetric per output channel, or TernaryWeights (alpha per output channel, block of
N input channels and tap; 1 + residual levels); its input quantized to u8 with a per-tensor
scale calibrated on a few batches (max |x| seen; unsigned when no value seen was negative, after
a ReLU).  Batch norm, pooling, the residual adds and the classifier stay fp32 (the classifier of
the digits CNN is 320 multiplications of 5,000).  Inference only: backward is refused.

Design: a Quantized module wraps the original model, whose configuration it keeps, and hangs a
ConvQuantization on each of its Conv2d (by position in the walk), so any model built of Conv2d
layers quantizes without knowing its structure, and nn.load rebuilds it from the configuration.
The file holds the quantized weights (int8 codes or ternary codes and alphas) and activation
scales instead of the fp32 convolution weights; a file for another architecture or shape is
refused by the shape checks of load.
"""
import numpy as np

from .. import precision as formats
from .. import quantized
from .._validate import positive_int
from ..conv import conv2d
from ..layout import BlockedTensor, unblock_weights
from .module import Module, _take, register

#: the formats quantize() converts to
TARGETS = ("int8", "ternary")


class ConvQuantization:
    """The quantized form of one Conv2d: its weights in `fmt` and its input's u8 scale."""

    def __init__(self, conv, fmt, block, residual):
        self.conv, self.fmt, self.block, self.residual = conv, fmt, block, residual
        self.levels = residual + 1
        self.act_scale, self.act_unsigned = 1.0, True
        self.weights = None       # BlockedTensor (int8) or TernaryBlocked
        self.ternary = None       # TernaryWeights (the logical codes and alphas, for state())

    def set_weights(self, w):
        """Quantize fp32 KCRS weights."""
        if self.fmt == "int8":
            self.weights = quantized.block_weights_int8(w)
        else:
            self.ternary = formats.ternarize(w, block=self.block, residual=self.residual)
            self.weights = quantized.block_ternary_weights(self.ternary)

    def forward(self, x):
        conv = self.conv
        xq = quantized.to_int8_blocked(x, self.act_scale, unsigned=self.act_unsigned)
        bias = None if conv.bias is None else conv.bias.data
        if self.fmt == "int8":
            return conv2d(xq, self.weights, bias, conv.stride, conv.padding, precision="int8")
        return conv2d(xq, self.weights, bias, conv.stride, conv.padding, precision="ternary", levels=self.levels)

    def state(self):
        out = {"act_scale": np.array(self.act_scale, np.float32), "act_unsigned": np.array(self.act_unsigned)}
        if self.fmt == "int8":
            scales, _ = self.weights.scale
            k = self.conv.args["out_channels"]
            out["weight_q"] = _int8_codes(self.weights)
            out["weight_scale"] = scales[:k].copy()
        else:
            out["codes"], out["alphas"] = self.ternary.codes, self.ternary.alphas
        return out

    def state_shapes(self):
        k, c = self.conv.args["out_channels"], self.conv.args["in_channels"]
        r, s = self.conv.weight_b.shape[2:]
        if self.fmt == "int8":
            return {"weight_q": (k, c, r, s), "weight_scale": (k,)}
        c_pad = -(-c // quantized.CB) * quantized.CB
        return {"codes": (self.levels, k, c_pad, r, s), "alphas": (self.levels, k, c_pad // self.block, r, s)}

    def load_state(self, state, prefix, where):
        scale = _take(state, prefix + "act_scale", (), where)
        unsigned = state.get(prefix + "act_unsigned")
        if unsigned is None or np.asarray(unsigned).shape != ():
            raise ValueError(f"model file has no scalar entry {prefix + 'act_unsigned'!r} for {where}")
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"model file entry {prefix + 'act_scale'!r} for {where} must be finite and > 0, got {scale}")
        self.act_scale, self.act_unsigned = float(scale), bool(unsigned)
        shapes = self.state_shapes()
        raw = {}
        for name, shape in shapes.items():
            arr = np.asarray(state.get(prefix + name, np.empty(0)))
            if prefix + name not in state or arr.shape != shape:
                raise ValueError(f"model file entry {prefix + name!r} for {where} has shape "
                                 f"{arr.shape if prefix + name in state else 'missing'}, expected {shape} (a "
                                 "quantized model file for another shape)")
            raw[name] = arr
        if self.fmt == "int8":
            try:
                self.weights = quantized.int8_weights_from_codes(raw["weight_q"], raw["weight_scale"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"model file entries {prefix + 'weight_q'!r} / 'weight_scale' for {where}: {exc}") from None
        else:
            codes, alphas = raw["codes"], raw["alphas"].astype(np.float32)
            if codes.dtype != np.int8 or not np.isin(codes, (-1, 0, 1)).all() or not np.isfinite(alphas).all():
                raise ValueError(f"model file entries for {where}: ternary codes must be int8 in {{-1, 0, 1}} and "
                                 "alphas finite")
            self.ternary = formats.TernaryWeights(tuple(self.conv.weight_b.shape), self.block, alphas, codes)
            self.weights = quantized.block_ternary_weights(self.ternary)


def _int8_codes(wq):
    """The int8 codes of a block_weights_int8 tensor in KCRS."""
    data = quantized._from_vnni_groups(wq.data, quantized.GROUP["int8"]).astype(np.float32)
    return unblock_weights(BlockedTensor(data, wq.shape, "weight")).astype(np.int8)


def _convs(model):
    from .layers import Conv2d

    return [m for m in model._walk() if isinstance(m, Conv2d)]


@register
class Quantized(Module):
    """A model whose convolutions run quantized (see the module doc); args: the wrapped model's
    configuration, the format ('int8' or 'ternary') and, for ternary, block and residual."""

    def __init__(self, model, to="int8", block=16, residual=0):
        super().__init__()
        from .io import build

        if to not in TARGETS:
            raise ValueError(f"Quantized: to must be one of {', '.join(TARGETS)}, got {to!r}")
        if to == "ternary":
            block = positive_int(block, "block", "Quantized")
            residual = positive_int(residual, "residual", "Quantized", minimum=0)
            if block % quantized.GROUP["int8"]:
                raise ValueError(f"Quantized: block must be a multiple of 4 (the kernels sum channels in groups of 4), "
                                 f"got {block}")
            if residual > formats.MAX_RESIDUAL:
                raise ValueError(f"Quantized: residual must be <= {formats.MAX_RESIDUAL}, got {residual}")
        self.inner = build(model, "Quantized model") if isinstance(model, dict) else model
        self.args = {"model": self.inner.config(), "to": to, "block": block, "residual": residual}
        convs = _convs(self.inner)
        if not convs:
            raise ValueError("Quantized: the model has no Conv2d to quantize")
        for conv in convs:
            conv.quant = ConvQuantization(conv, to, block, residual)
        self.eval()

    def train(self, mode=True):
        """Always in eval mode (batch norm on its running statistics): inference only."""
        if mode:
            raise RuntimeError("Quantized.train: a quantized model runs inference only")
        return super().train(False)

    def children(self):
        return [self.inner]

    def forward(self, x):
        return self.inner(x)

    def backward(self, dy):
        raise RuntimeError("Quantized.backward: a quantized model runs inference only")

    def set_levels(self, levels):
        """Ternary: run the first `levels` levels (1 = no residual); returns self."""
        if self.args["to"] != "ternary":
            raise ValueError("Quantized.set_levels: only ternary models have residual levels")
        levels = positive_int(levels, "levels", "Quantized.set_levels")
        if levels > self.args["residual"] + 1:
            raise ValueError(f"Quantized.set_levels: levels must be <= {self.args['residual'] + 1} (1 base + "
                             f"{self.args['residual']} residual), got {levels}")
        for conv in _convs(self.inner):
            conv.quant.levels = levels
        return self

    def describe(self):
        a = self.args
        return f"Quantized({a['to']}" + (f", block {a['block']}, residual {a['residual']})" if a["to"] == "ternary"
                                         else ")")


def quantize(model, to, calibration, *, block=16, residual=0):
    """A Quantized copy of `model` (left as it is): calibration is an iterable of input batches
    (blocked activations) that set each convolution's u8 input scale."""
    from .io import build

    if to not in TARGETS:
        raise ValueError(f"quantize: to must be one of {', '.join(TARGETS)}, got {to!r}")
    if isinstance(model, Quantized):
        raise ValueError("quantize: the model is quantized already")  # noqa: TRY004 (a state, not a type)
    copy = build(model.config(), "quantize: model configuration")
    copy.load_state(model.state())
    model = copy
    convs = _convs(model)
    calibrators = {id(c): formats.ActivationCalibrator() for c in convs}
    originals = {}
    for conv in convs:
        originals[id(conv)] = conv.forward

        def observe(x, conv=conv):
            calibrators[id(conv)].observe(x.data)
            return originals[id(conv)](x)
        conv.forward = observe
    seen = 0
    try:
        from .module import inference_mode

        was = [m.training for m in model._walk()]
        for m in model._walk():
            m.training = False
        with inference_mode():
            for batch in calibration:
                model(batch)
                seen += 1
    finally:
        for conv in convs:
            del conv.forward
        for m, t in zip(model._walk(), was):
            m.training = t
    if not seen:
        raise ValueError("quantize: calibration gave no batches")
    q = Quantized(model, to, block, residual)
    for conv in convs:
        cal = calibrators[id(conv)]
        conv.quant.act_scale, conv.quant.act_unsigned = float(cal.scale), bool(cal.unsigned)
        conv.quant.set_weights(unblock_weights(conv.weight_b))
    return q


# ------------------------------------------------------------------------------------ report
def conv_costs(model, x):
    """Per Conv2d of `model` (in walk order): (K, C, R, S, output positions per image), from one
    forward of x (a batch of one image is enough)."""
    convs = _convs(model)
    seen = {}
    handles = [c.register_output_hook(lambda m, y: seen.__setitem__(id(m), y.shape[2] * y.shape[3]) or y) for c in convs]
    try:
        from .module import inference_mode

        with inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [(c.args["out_channels"], c.args["in_channels"], *c.weight_b.shape[2:], seen[id(c)]) for c in convs]


def weight_report(model, costs, to="fp32", block=16, residual=0, levels=None):
    """For the convolutions of `model` (costs from conv_costs) in format `to`: relative weight
    error ||W - W_q|| / ||W|| over all of them, multiplications per image (dense: one per
    weight and output position; ternary blocks: one per block of N channels, tap, output
    channel, level and output position -- the +-1 terms are additions), and bytes of weights
    (fp32 4; int8 1 + a 4-byte scale per output channel; ternary 2 bits per code per level + a
    4-byte alpha per block)."""
    err2 = norm2 = 0.0
    mults = size = 0
    levels = residual + 1 if levels is None else levels
    for conv, (k, c, r, s, positions) in zip(_convs(model), costs):
        w = unblock_weights(conv.weight_b).astype(np.float64)
        norm2 += float((w * w).sum())
        if to == "fp32":
            mults += k * c * r * s * positions
            size += 4 * w.size
        elif to == "int8":
            q = quantized.block_weights_int8(w.astype(np.float32))
            err2 += float(((q.numpy().astype(np.float64) - w) ** 2).sum())
            mults += k * c * r * s * positions
            size += w.size + 4 * k
        else:
            tw = formats.ternarize(w.astype(np.float32), block=block, residual=residual)
            err2 += float(((tw.to_float32(levels).astype(np.float64) - w) ** 2).sum())
            c_pad = tw.codes.shape[2]
            mults += levels * k * (c_pad // block) * r * s * positions
            size += levels * (k * c_pad * r * s * 2 // 8 + 4 * k * (c_pad // block) * r * s)
    return {"rel_weight_error": (err2 / norm2) ** 0.5 if norm2 else 0.0, "multiplications": int(mults),
            "weight_bytes": int(size)}
