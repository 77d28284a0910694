"""Post-training quantization of a model's convolutions and Linear layers: int8 or block-ternary
weights with calibrated u8 activations, saved and loaded like any model.

    q = nn.quantize(model, "ternary", calibration=[xb1, xb2], block=16, residual=1)
    nn.save(q, "digits-ternary.npz"); q = nn.load("digits-ternary.npz")
    q.set_levels(1)                         # residual levels off, least important first

What changes: every Conv2d runs on the integer kernels (conv2d(precision='int8' | 'ternary')),
every Linear layer on matmul's: int8 weights symmetric per output channel (unit), or
TernaryWeights (alpha per output channel, block of N input channels and tap; 1 + residual
levels); each layer's input quantized to u8 with a per-tensor scale calibrated on a few batches
(max |x| seen; unsigned when no value seen was negative, after a ReLU).  A batch norm after a
quantized convolution folds into it and the codes pass to the next layer as u8 where the
containers link them (ConvQuantization); elsewhere batch norm, pooling and the residual adds
run in fp32.  Inference only: backward is refused.  Recurrent layers are
refused: they quantize dynamically (set_precision('int8'), as PyTorch's quantize_dynamic).

Design: a Quantized module wraps the original model, whose configuration it keeps, and hangs a
ConvQuantization or LinearQuantization on each of its Conv2d and Linear layers (by position in
the walk), so any model built of them quantizes without knowing its structure, and nn.load
rebuilds it from the configuration.  The file holds the quantized weights (int8 codes or ternary
codes and alphas) and activation scales instead of the fp32 weights; a file for another
architecture or shape is refused by the shape checks of load.  Files written before Linear
layers were quantized (their configuration has no `linear`) load with fp32 Linear layers.
"""
import math

import numpy as np

from .. import precision as formats
from .. import quantized
from .._validate import positive_int
from ..conv import conv2d
from ..gemm import matmul, packed_int8_from, packed_ternary_from
from ..layout import BlockedTensor, unblock_weights
from .module import Module, _take, _widened, register
from .recurrent import _Recurrent

#: the formats quantize() converts to
TARGETS = ("int8", "ternary")


class _Quantization:
    """What the quantized form of a Conv2d or Linear layer holds: its weights in `fmt` and the
    u8 scale of its input.  The subclasses say how the weights are laid out and run."""

    def __init__(self, layer, fmt, block, residual):
        self.layer, self.fmt, self.block, self.residual = layer, fmt, block, residual
        self.levels = residual + 1
        self.act_scale, self.act_unsigned, self.act_bits = 1.0, True, 8
        self.weights = None       # what the kernel reads (set_weights / load_state)
        self.ternary = None       # TernaryWeights (the logical codes and alphas, for state())

    def weight_shape(self):
        """The layer's weights as (K, C, R, S) convolution weights."""
        return _weight_shape(self.layer)

    def int8_shape(self):
        """The shape the int8 codes are saved in."""
        return self.weight_shape()

    def set_weights(self, w):
        """Quantize the layer's fp32 weights (its own layout: KCRS or (out, in))."""
        if self.fmt == "int8":
            self._set_int8(w)
        else:
            self._set_ternary(formats.ternarize(w.reshape(self.weight_shape()), block=self.block,
                                                residual=self.residual))

    def state(self):
        out = {"act_scale": np.array(self.act_scale, np.float32), "act_unsigned": np.array(self.act_unsigned)}
        if self.fmt == "int8":
            out["weight_q"], out["weight_scale"] = self._int8_state()
        else:
            out["codes"], out["alphas"] = self.ternary.codes, self.ternary.alphas
        return out

    def state_shapes(self):
        k, c, r, s = self.weight_shape()
        if self.fmt == "int8":
            return {"weight_q": self.int8_shape(), "weight_scale": (k,)}
        c_pad = -(-c // quantized.CB) * quantized.CB
        return {"codes": (self.levels, k, c_pad, r, s), "alphas": (self.levels, k, c_pad // self.block, r, s)}

    def load_state(self, state, prefix, where):
        raw_scale = state.get(prefix + "act_scale")
        if raw_scale is None or np.asarray(raw_scale).dtype.kind != "f":
            raise ValueError(f"model file entry {prefix + 'act_scale'!r} for {where} must be a float scalar, got "
                             f"{'nothing' if raw_scale is None else np.asarray(raw_scale).dtype}")
        scale = _take(state, prefix + "act_scale", (), where)
        unsigned = state.get(prefix + "act_unsigned")
        if unsigned is None or np.asarray(unsigned).shape != () or np.asarray(unsigned).dtype != np.bool_:
            raise ValueError(f"model file has no boolean scalar entry {prefix + 'act_unsigned'!r} for {where}")
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
                self._int8_from_codes(raw["weight_q"], raw["weight_scale"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"model file entries {prefix + 'weight_q'!r} / 'weight_scale' for {where}: {exc}") from None
        else:
            codes, alphas = raw["codes"], raw["alphas"].astype(np.float32)
            if (codes.dtype != np.int8 or not np.isin(codes, (-1, 0, 1)).all() or raw["alphas"].dtype.kind != "f"
                    or not (np.isfinite(alphas).all() and (alphas >= 0).all())):
                raise ValueError(f"model file entries for {where}: ternary codes must be int8 in {{-1, 0, 1}} and "
                                 "alphas finite floats >= 0")
            self._set_ternary(formats.TernaryWeights(self.weight_shape(), self.block, alphas, codes))


class ConvQuantization(_Quantization):
    """A Conv2d's: int8 weights symmetric per output channel (a blocked int8 weight tensor) or
    block-ternary (TernaryBlocked), run by conv2d on u8 input.

    Activations stay u8 from layer to layer where the model's containers say who reads what
    (their link_formats): a batch norm right after a quantized convolution folds into that
    convolution's epilogue -- gamma / sqrt(var + eps) joins the per-channel weight scales (int8)
    or every alpha of the output channel (ternary), the shift the bias, as PyTorch's fused
    quantized modules hold them -- and the convolution writes u8 codes (conv2d's out_scale) for
    the reader:
      - bn1 / bn2 of a block (ReLU fused): the next convolution's input codes;
      - a shortcut's batch norm: signed codes at its calibrated output scale, for the block end;
      - the block end relu(bn(conv(h)) + shortcut) of a block's last convolution: the shortcut
        codes join in the same epilogue (conv2d's residual), and the block hands u8 codes at
        the calibrated scale of its output to the next block (a layer that wants fp32 widens
        them: module._widened).
    That removes, per block, the fp32 outputs' trips through memory, the batch-norm and
    residual passes and the next layers' quantization passes.  Where a fold cannot apply at a
    call (an output hook on a layer inside it; gamma <= 0 in some channel of an int8 layer,
    whose weight scales must stay positive; `folding` off), the layers run one by one.  Outside
    a block, codes are invisible: an output hook sees fp32 (Module.__call__), and so does the
    caller of a Quantized model."""

    #: False runs the layers one by one (dlcpu.faults, whose golden run hooks every layer,
    #: turns it off so that its faulty runs take the same arithmetic)
    folding = True

    #: (batch norm, reader, through) when this layer folds the batch norm after it: reader the
    #: Conv2d reading its output past the layers `through` (a max pool), or RESIDUAL (a
    #: shortcut's: the block end reads it); None: no fold
    fold = None
    #: (batch norm, ReLU, shortcut layers) when this layer ends a residual block (link_residual)
    ends_block = None
    #: the calibrated scale of the u8 codes a RESIDUAL fold or a block end writes (None: not
    #: calibrated, e.g. a file from before they were saved: the layers run one by one)
    out_scale = None

    def _set_int8(self, w):
        self.weights = quantized.block_weights_int8(w)

    def _int8_state(self):
        scales, _ = self.weights.scale
        return _int8_codes(self.weights), scales[:self.layer.args["out_channels"]].copy()

    def _int8_from_codes(self, codes, scales):
        self.weights = quantized.int8_weights_from_codes(codes, scales)

    def _set_ternary(self, tw):
        self.ternary, self.weights = tw, quantized.block_ternary_weights(tw)

    def link_output(self, bn, after, through=()):
        """Fold `bn` (this layer's only reader) into this layer's epilogue when it can: `after`
        (bn's only reader, past the layers `through`) is a quantized Conv2d with bn ending in a
        ReLU, or RESIDUAL (bn is a shortcut's).  Sets bn.folded, which lets the u8 codes
        through."""
        from .layers import Conv2d

        ok = after is RESIDUAL or (bn.relu and isinstance(after, Conv2d) and after.quant is not None)
        self.fold = (bn, after, tuple(through)) if ok else None
        bn.folded = ok

    def link_residual(self, bn, relu, shortcut):
        """This layer ends a residual block: relu(bn(this) + shortcut(x)), `shortcut` the
        block's shortcut layers ([]: the identity)."""
        ok = all(m.quant is not None for m in shortcut[:1])
        self.ends_block = (bn, relu, list(shortcut)) if ok else None
        bn.folded = bn.folded or ok

    def input_format(self):
        """(scale, zero point, bits) of this layer's u8 input codes."""
        return (*quantized.calibrated_u8_scale(self.act_scale, self.act_unsigned, "ConvQuantization",
                                               bits=self.act_bits), self.act_bits)

    def input_codes(self, x):
        """x as this layer's u8 input codes: an fp32 activation quantized with the calibrated
        scale; codes another layer wrote (a folded batch norm, a block's output, pooled or not,
        or its input shared with the shortcut) as they are: the kernels take their scale and
        zero point, whatever they are (a max pool that drops the largest value keeps its
        input's scale, larger than the calibrated one of its output)."""
        if x.precision != "int8":
            return quantized.to_int8_blocked(x, self.act_scale, unsigned=self.act_unsigned, bits=self.act_bits)
        return x

    def _folded_weights(self, bn):
        """(weights, bias) with `bn` (eval mode) folded in, or None where a scale leaves float32
        or, for int8, gamma / sqrt(var + eps) is not > 0 in every channel (an int8 weight scale
        must be a positive float32; a ternary alpha may be negative).  Kept while the weights
        and the batch norm's values stay the same: made anew at every call, they were 3.8 of a
        160 ms int8 ResNet-50 forward (57 folds)."""
        k = self.layer.args["out_channels"]
        key = (bn.eps, bn.weight.data[:k].tobytes(), bn.bias.data[:k].tobytes(),
               bn.running_mean[:k].tobytes(), bn.running_var[:k].tobytes(),
               None if self.layer.bias is None else self.layer.bias.data.tobytes())
        cached = self.__dict__.get("_fold_cache")
        if cached is not None and cached[0] is self.weights and cached[1] == key:
            return cached[2]
        folded = self._fold_weights(bn, k)
        self._fold_cache = (self.weights, key, folded)
        return folded

    def _fold_weights(self, bn, k):
        inv = bn.weight.data[:k].astype(np.float64) / np.sqrt(bn.running_var[:k].astype(np.float64) + bn.eps)
        if not np.isfinite(inv).all():
            return None
        shift = bn.bias.data[:k] - bn.running_mean[:k] * inv
        if self.layer.bias is not None:
            shift += self.layer.bias.data * inv
        if self.fmt == "ternary":
            weights = quantized.scale_ternary_outputs(self.weights, inv)
            return None if weights is None else (weights, shift.astype(np.float32))
        s_w, sums = self.weights.scale
        scales = s_w.copy()
        scales[:k] = s_w[:k] * inv
        if not (np.isfinite(scales).all() and (scales > 0).all()):
            return None
        weights = BlockedTensor(self.weights.data, self.weights.shape, "weight", scale=(scales, sums), precision="int8")
        return weights, shift.astype(np.float32)

    def _fold_now(self, in_block_end=False):
        """conv2d's (weights, bias, activation, out_scale) for this call's fold, or None: no fold,
        or one that cannot apply now (the class doc).  A shortcut's fold applies only inside its
        block's folded end (in_block_end): else the block runs one by one."""
        if self.fold is None or not self.folding:
            return None
        bn, reader, through = self.fold
        if self.layer._output_hooks or bn._output_hooks or any(m._output_hooks for m in through):
            return None
        if reader is RESIDUAL:
            if not in_block_end:
                return None
            scale, activation = self.out_scale, None
        elif reader.quant.act_unsigned and reader.quant.act_bits == self.act_bits:
            scale, activation = reader.quant.act_scale, "relu"
        else:
            scale = None
        folded = None if scale is None else self._folded_weights(bn)
        return None if folded is None else (*folded, activation, scale)

    def _levels(self):
        """conv2d's levels= for this layer: the ternary levels switched on, None for int8."""
        return self.levels if self.fmt == "ternary" else None

    def forward(self, x, fold=None):
        """The layer on x; fold: a _fold_now result to apply (default: this call's own)."""
        conv = self.layer
        xq = self.input_codes(x)
        fold = fold or self._fold_now()
        if fold is None:
            bias = None if conv.bias is None else conv.bias.data
            return conv2d(xq, self.weights, bias, conv.stride, conv.padding, precision=self.fmt, levels=self._levels())
        weights, shift, activation, scale = fold
        return conv2d(xq, weights, shift, conv.stride, conv.padding, activation, precision=self.fmt,
                      out_scale=scale, out_bits=self.act_bits, levels=self._levels())

    def block_end(self, first):
        """The folded end of the residual block this layer ends, for this call: a function
        (h, x) -> the block's output codes, h this layer's input and x the block's (fp32 or
        u8), or None where the block must run its layers one by one (the class doc).  `first`:
        the block's first convolution, whose input codes the shortcut shares."""
        if (self.ends_block is None or self.out_scale is None or first.quant is None or not self.folding
                or self.layer._output_hooks):
            return None
        bn, relu, shortcut = self.ends_block
        if bn._output_hooks or relu._output_hooks:
            return None
        shortcut_fold = None
        if shortcut:
            shortcut_fold = shortcut[0].quant._fold_now(in_block_end=True)
            if shortcut_fold is None or shortcut[0].quant.input_format() != first.quant.input_format():
                return None
        folded = self._folded_weights(bn)
        if folded is None:
            return None
        weights, shift = folded
        conv = self.layer

        def end(h, xq):
            # the shortcut: its convolution with its batch norm folded in (that module passes)
            s = shortcut[0].quant.forward(xq, shortcut_fold) if shortcut else xq
            return conv2d(self.input_codes(h), weights, shift, conv.stride, conv.padding, "relu", precision=self.fmt,
                          out_scale=self.out_scale, out_bits=self.act_bits, residual=s, levels=self._levels())
        return end

    def state(self):
        out = super().state()
        if self.out_scale is not None:
            out["out_scale"] = np.array(self.out_scale, np.float32)
        return out

    def load_state(self, state, prefix, where):
        super().load_state(state, prefix, where)
        self.out_scale = None
        if prefix + "out_scale" in state:       # files from before u8 block ends have none
            raw = np.asarray(state[prefix + "out_scale"])
            value = float(raw) if raw.shape == () and raw.dtype.kind == "f" else math.nan
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"model file entry {prefix + 'out_scale'!r} for {where} must be a finite float "
                                 f"scalar > 0, got {raw!r}")
            self.out_scale = value


#: ConvQuantization.fold's reader for a shortcut's batch norm: the block end
RESIDUAL = "residual"


class LinearQuantization(_Quantization):
    """A Linear layer's: W^T packed once for matmul -- int8 per output unit, or block-ternary
    with blocks of N inputs (a 1x1 convolution's blocks) -- and x quantized to u8 with the
    calibrated scale (PyTorch's static quantized Linear; set_precision's dynamic int8 instead
    quantizes both at every call)."""

    def int8_shape(self):
        return self.weight_shape()[:2]

    def _set_int8(self, w):
        scales = formats.int8_weight_scales(w, axis=0)
        self._int8_from_codes(formats.to_int8(w, scales, axis=0).data, scales)

    def _int8_state(self):
        return self.codes.copy(), self.scales.copy()

    def _int8_from_codes(self, codes, scales):
        scales = quantized.check_int8_codes(codes, scales, 2, "(out, in)", "int8 Linear weights")
        self.codes, self.scales = codes, scales
        self.weights = packed_int8_from(np.ascontiguousarray(codes.T), scales)

    def _set_ternary(self, tw):
        self.ternary, self.weights = tw, packed_ternary_from(tw)

    def forward(self, x):
        lin = self.layer
        bias = None if lin.bias is None else lin.bias.data
        return matmul(x, self.weights, bias=bias, precision=self.fmt, x_scale=self.act_scale,
                      x_unsigned=self.act_unsigned, x_bits=self.act_bits,
                      levels=self.levels if self.fmt == "ternary" else None)


def _int8_codes(wq):
    """The int8 codes of a block_weights_int8 tensor in KCRS."""
    data = quantized._from_vnni_groups(wq.data, quantized.GROUP["int8"]).astype(np.float32)
    return unblock_weights(BlockedTensor(data, wq.shape, "weight")).astype(np.int8)


def _layers(model, linear=True):
    """The layers quantize() converts, in walk order: every Conv2d and (linear) every Linear."""
    from .layers import Conv2d, Linear

    kinds = (Conv2d, Linear) if linear else (Conv2d,)
    return [m for m in model._walk() if isinstance(m, kinds)]


def _quantization(layer, to, block, residual, act_bits=8):
    """The quantized form of a Conv2d or Linear layer, its input codes act_bits wide."""
    from .layers import Conv2d

    q = (ConvQuantization if isinstance(layer, Conv2d) else LinearQuantization)(layer, to, block, residual)
    q.act_bits = act_bits
    return q


def _fp32_weights(layer):
    """A Conv2d's KCRS or a Linear's (out, in) fp32 weights."""
    from .layers import Conv2d

    return unblock_weights(layer.weight_b) if isinstance(layer, Conv2d) else layer.weight.data


@register
class Quantized(Module):
    """A model whose convolutions and Linear layers run quantized (see the module doc); args:
    the wrapped model's configuration, the format ('int8' or 'ternary'), for ternary block and
    residual, and `linear`: True quantizes the Linear layers too (what quantize() does by
    default); the default False keeps them fp32, as files written before Linear layers were
    quantized (their configuration has no `linear`) need; act_bits 8 or 7: the width of the
    quantized layers' u8 input codes (7: PyTorch's reduce_range, which the AVX2 kernels multiply
    in half the instructions).  A quantized layer's fp32 weight parameter is not used (after
    nn.load it holds its initialization): its quantized form is its `quant`."""

    def __init__(self, model, to="int8", block=16, residual=0, linear=False, act_bits=8):
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
        if not isinstance(linear, (bool, np.bool_)):
            raise TypeError(f"Quantized: linear must be True or False, got {linear!r}")
        act_bits = quantized.check_activation_bits(act_bits, "Quantized", "act_bits")
        self.inner = build(model, "Quantized model") if isinstance(model, dict) else model
        self.args = {"model": self.inner.config(), "to": to, "block": block, "residual": residual,
                     "linear": bool(linear), "act_bits": act_bits}
        recurrent = [m.describe() for m in self.inner._walk() if isinstance(m, _Recurrent)]
        if recurrent:
            raise ValueError(f"Quantized: {recurrent[0]} is a recurrent layer; recurrent layers quantize dynamically "
                             "(weights quantized once, activations per call) through set_precision('int8' or "
                             "'ternary') where the layers support it")
        layers = _layers(self.inner, linear)
        if not layers:
            raise ValueError("Quantized: the model has no Conv2d" + (" or Linear" if linear else
                                                                   " (linear=True quantizes Linear layers)")
                             + " to quantize")
        for layer in layers:
            layer.quant = _quantization(layer, to, block, residual, act_bits)
        self.link_formats()
        self.eval()

    def link_formats(self):
        """Batch norms linked to bf16 convolutions hand over fp32 again; those after a quantized
        convolution fold into it (ConvQuantization.link_output)."""
        for m in self.inner._walk():
            m.link_formats()

    def train(self, mode=True):
        """Always in eval mode (batch norm on its running statistics): inference only."""
        if mode:
            raise RuntimeError("Quantized.train: a quantized model runs inference only")
        return super().train(False)

    def children(self):
        return [self.inner]

    def forward(self, x):
        y = self.inner(x)       # a model ending in a block hands back its u8 codes' values
        return _widened(y, "fp32") if isinstance(y, BlockedTensor) else y

    def backward(self, dy):
        raise RuntimeError("Quantized.backward: a quantized model runs inference only")

    def set_precision(self, precision):
        """Refused: the quantized layers run their own format (the precision of the fp32 model
        is set before quantizing it)."""
        raise ValueError(f"Quantized.set_precision: a quantized model runs {self.args['to']}; set the precision of "
                         f"the fp32 model instead, got {precision!r}")

    def set_levels(self, levels):
        """Ternary: run the first `levels` levels (1 = no residual); returns self."""
        if self.args["to"] != "ternary":
            raise ValueError("Quantized.set_levels: only ternary models have residual levels")
        levels = positive_int(levels, "levels", "Quantized.set_levels")
        if levels > self.args["residual"] + 1:
            raise ValueError(f"Quantized.set_levels: levels must be <= {self.args['residual'] + 1} (1 base + "
                             f"{self.args['residual']} residual), got {levels}")
        for layer in _layers(self.inner, self.args["linear"]):
            layer.quant.levels = levels
        return self

    def describe(self):
        a = self.args
        return (f"Quantized({a['to']}" + (f", block {a['block']}, residual {a['residual']}" if a["to"] == "ternary"
                                          else "") + ("" if a["linear"] else ", fp32 Linear")
                + (f", {a['act_bits']}-bit activations" if a.get("act_bits", 8) != 8 else "") + ")")



def quantize(model, to, calibration, *, block=16, residual=0, linear=True, act_bits=8):
    """A Quantized copy of `model` (left as it is): calibration is an iterable of input batches
    (what the model takes) that set each quantized layer's u8 input scale.  linear=False keeps
    the Linear layers fp32, as ternary networks usually keep their last layer (with residual
    levels switched off, the classifier's format moved the digits CNN's accuracy by 20 points
    on one trained model; docs/performance.md).  One calibration
    batch then runs through the quantized copy, so that a shape its kernels refuse (a ternary
    block that splits a Linear layer's K chunk) is named here rather than at first use.
    act_bits=7 quantizes the quantized layers' inputs to 7-bit codes (Quantized)."""
    from .io import build
    from .module import inference_mode

    if to not in TARGETS:
        raise ValueError(f"quantize: to must be one of {', '.join(TARGETS)}, got {to!r}")
    if not isinstance(linear, (bool, np.bool_)):
        raise TypeError(f"quantize: linear must be True or False, got {linear!r}")
    if isinstance(model, Quantized):
        raise ValueError("quantize: the model is quantized already")  # noqa: TRY004 (a state, not a type)
    copy = build(model.config(), "quantize: model configuration")
    copy.load_state(model.state())
    model = copy
    # the wrapper first: it refuses what it cannot quantize (and puts the copy in eval mode)
    # before any calibration; its layers' quantizations are made again below, once calibrated
    q = Quantized(model, to, block, residual, linear=linear, act_bits=act_bits)
    act_bits = q.args["act_bits"]
    layers = _layers(model, linear)
    # the outputs whose u8 codes a layer writes for a block end (ConvQuantization.out_scale),
    # as the links found them: a block's final ReLU, and a shortcut's batch norm (signed codes)
    outputs = {}          # layer -> (the module whose output it stands for, signed)
    for layer in layers:
        quant = layer.quant
        if getattr(quant, "ends_block", None) is not None:
            outputs[layer] = (quant.ends_block[1], False)
        elif getattr(quant, "fold", None) is not None and quant.fold[1] is RESIDUAL:
            outputs[layer] = (quant.fold[0], True)
    handles = []
    for layer, (module, _) in outputs.items():
        cal = layer.out_calibrator = formats.ActivationCalibrator()

        def observe_output(module, y, cal=cal):
            cal.observe(y.data)
            return y
        handles.append(module.register_output_hook(observe_output))
    for layer in layers:
        layer.quant, layer.calibrator = None, formats.ActivationCalibrator()

        def observe(x, layer=layer, forward=layer.forward):
            layer.calibrator.observe(x.data if isinstance(x, BlockedTensor) else x)
            return forward(x)
        layer.forward = observe
    first = None
    try:
        with inference_mode():
            for batch in calibration:
                model(batch)
                first = batch if first is None else first
    finally:
        for layer in layers:
            del layer.forward
        for handle in handles:
            handle.remove()
    if first is None:
        raise ValueError("quantize: calibration gave no batches")
    for layer in layers:
        cal = layer.__dict__.pop("calibrator")
        layer.quant = _quantization(layer, to, block, residual, act_bits)
        layer.quant.act_scale = float(cal.scale_for(act_bits))
        layer.quant.act_unsigned = bool(cal.unsigned)
        if layer in outputs:
            layer.quant.out_scale = float(layer.__dict__.pop("out_calibrator").scale_for(act_bits,
                                                                                        outputs[layer][1]))
        try:
            layer.quant.set_weights(_fp32_weights(layer))
        except ValueError as exc:
            raise ValueError(f"quantize: {layer.describe()}: {exc}" + ("; linear=False keeps Linear layers fp32"
                                                                       if isinstance(layer.quant, LinearQuantization)
                                                                       else "")) from None
    q.link_formats()                     # the calibrated layers' quantizations are new
    try:
        with inference_mode():
            q(first)
    except ValueError as exc:
        raise ValueError(f"quantize: the quantized model does not run: {exc}") from None
    return q


# ------------------------------------------------------------------------------------ report
def layer_costs(model, x):
    """Per Conv2d and Linear layer of `model` (in walk order, as quantize() converts them): (K,
    C, R, S, output positions per image) -- a Linear layer is (out, in, 1, 1, 1) -- from one
    forward of x (a batch of one image is enough).  The forward runs in eval mode, each
    module's mode restored after: in training mode it would fold x's batch statistics into
    the model's batch-norm running estimates (a loaded model is in training mode; one image
    of the digits test set so moved the fp32 accuracy dlcpu quantize reported from 98.89% to
    98.33%)."""
    from .module import inference_mode

    layers = _layers(model)
    seen = {}

    def positions(m, y):
        seen[id(m)] = y.shape[2] * y.shape[3] if isinstance(y, BlockedTensor) else 1
        return y
    handles = [m.register_output_hook(positions) for m in layers]
    modes = [(m, m.training) for m in model._walk()]
    try:
        model.eval()
        with inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return [(*_weight_shape(m), seen[id(m)]) for m in layers]


def _weight_shape(layer):
    from .layers import Conv2d

    if isinstance(layer, Conv2d):
        return (layer.args["out_channels"], layer.args["in_channels"], *layer.weight_b.shape[2:])
    return (layer.args["out_features"], layer.args["in_features"], 1, 1)


def weight_report(model, costs, to="fp32", block=16, residual=0, levels=None, linear=True):
    """For the Conv2d and Linear layers of `model` (costs from layer_costs) in format `to` (with
    linear=False, the Linear layers in fp32): relative weight error ||W - W_q|| / ||W|| over
    all of them, multiplications per image (dense: one per weight and output position; ternary
    blocks: one per block of N channels, tap, output channel, level and output position -- the
    +-1 terms are additions), and bytes of weights (fp32 4; int8 1 + a 4-byte scale per output
    channel; ternary 2 bits per code per level + a 4-byte alpha per block)."""
    from .layers import Linear

    err2 = norm2 = 0.0
    mults = size = 0
    levels = residual + 1 if levels is None else levels
    for layer, (k, c, r, s, positions) in zip(_layers(model), costs):
        w = _fp32_weights(layer).reshape(k, c, r, s).astype(np.float64)
        norm2 += float((w * w).sum())
        if to == "fp32" or (isinstance(layer, Linear) and not linear):
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
