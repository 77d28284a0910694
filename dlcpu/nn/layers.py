"""Feed-forward layers of dlcpu.nn on the blocked kernels: Conv2d, BatchNorm2d, ReLU, pools,
GlobalAvgPool, Linear, Sequential and the ResNet BasicBlock.

Design: activations flow between layers as activation BlockedTensors (I[N][C/16][H][W][16]);
there is no NCHW round trip inside a model.  Convolution weights live in the blocked weight
layout and their gradients arrive in it, so the optimizer updates them in place.  Padded
channels stay zero through every layer: padded weights, BatchNorm scales and biases are zero
and receive zero gradients.  GlobalAvgPool is the bridge from blocked maps to (N, C) arrays.
"""
import numpy as np

from .. import norm, pool
from ..conv import conv2d, conv2d_backward
from ..gemm import matmul, pack_matmul_operand
from ..layout import CB, BlockedTensor, block_weights, n_blocks, to_bf16_blocked, unblock_weights
from ..quantized import to_dfp16_blocked
from .module import (
    Module,
    Parameter,
    _expect_blocked,
    _take,
    _widened,
    check_bool,
    check_float,
    check_float32,
    check_int,
    check_int_pair,
    check_ints,
    check_parameter_memory,
    grad_enabled,
    register,
)


@register
class Conv2d(Module):
    """2-D convolution, weights in the blocked layout, optional bias; He-normal initialization.
    `algorithm` is conv2d's (default 'auto'); dlcpu.faults pins it to 'direct' while it runs."""

    algorithm = "auto"
    PRECISIONS = ("fp32", "bf16", "dfp16")
    #: None, or the nn.quantize ConvQuantization this layer runs instead (inference only)
    quant = None

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, seed=0):
        super().__init__()
        check_ints("Conv2d", in_channels=in_channels, out_channels=out_channels, seed=seed)
        k = check_int_pair("Conv2d", "kernel_size", kernel_size)
        check_int_pair("Conv2d", "stride", stride)
        check_int_pair("Conv2d", "padding", padding, minimum=0)
        check_bool("Conv2d", "bias", bias)
        self.args = {"in_channels": in_channels, "out_channels": out_channels, "kernel_size": kernel_size,
                     "stride": stride, "padding": padding, "bias": bias, "seed": seed}
        self.stride, self.padding = stride, padding
        self.needs_input_grad = True
        # the float64 draw and its scaled copy, the float32 weights, the blocked (channel-padded)
        # weights and their gradient, the bias and its gradient
        n = out_channels * in_channels * k[0] * k[1]
        padded = n_blocks(out_channels) * n_blocks(in_channels) * CB * CB * k[0] * k[1]
        check_parameter_memory("Conv2d", f"the parameters of {self.describe()} (weight {(out_channels, in_channels, *k)})",
                               20 * n + 8 * padded + 8 * out_channels)
        rng = np.random.default_rng(seed)
        w = rng.standard_normal((out_channels, in_channels, *k)) * np.sqrt(2.0 / (in_channels * k[0] * k[1]))
        self.weight_b = block_weights(w.astype(np.float32))
        self.weight = Parameter(self.weight_b.data)
        self.bias = Parameter(np.zeros(out_channels, np.float32)) if bias else None
        self._x = None

    def forward(self, x):
        _expect_blocked(x, self.describe(), self.args["in_channels"])
        if self.quant is not None:      # (a bf16 input: from a batch norm linked before quantization)
            return self.quant.forward(_widened(x, "int8"))
        x = self.format_input(x)
        self._x = x
        # bf16 / dfp16: the fp32 master weights are converted on every call (they change every step)
        return conv2d(x, self.weight_b, None if self.bias is None else self.bias.data, stride=self.stride,
                      padding=self.padding, algorithm="direct" if self.precision != "fp32" else self.algorithm,
                      precision=self.precision)

    def format_input(self, x):
        """x in this layer's format: an fp32 activation converted once (the forward reads it,
        the backward's dW reuses it); one already in the format as it is.  A block whose
        shortcut reads the same x converts it once for both (shared_input).  A bf16 activation
        reaching a layer of another format is widened first (exact)."""
        x = _widened(x, self.precision)
        if x.precision == "fp32" and self.quant is None:
            if self.precision == "bf16":
                return to_bf16_blocked(x)
            if self.precision == "dfp16":
                return to_dfp16_blocked(x)
        return x

    def backward(self, dy):
        if self.quant is not None:
            raise RuntimeError(f"{self.describe()}: a quantized convolution runs inference only")
        x = self._require_forward(self._x)
        # db is a reduction over all of dy: skipped for bias-free convolutions (every ResNet
        # conv; it took 35 ms of a 1.2 s ResNet-50 step at 224x224, batch 4)
        need = (("dx",) if self.needs_input_grad else ()) + ("dw",) + (("db",) if self.bias is not None else ())
        # dW is added to weight.grad by the kernels (no zeroed temporary, no extra pass)
        g = conv2d_backward(_widened(dy, self.precision), x, self.weight_b, self.stride, self.padding, need=need,
                            accumulate_dw=self.weight.grad, precision=self.precision)
        if self.bias is not None:
            self.bias.grad += g.db
        return g.dx

    def state(self):
        out = self.quant.state() if self.quant is not None else {"weight": unblock_weights(self.weight_b)}
        if self.bias is not None:
            out["bias"] = self.bias.data.copy()
        return out

    def to_torch_layout(self, name, value):
        if name == "weight":
            return unblock_weights(BlockedTensor(value, self.weight_b.shape, "weight"))
        return value

    def load_state(self, state, prefix=""):
        shape = self.weight_b.shape
        if self.quant is not None:
            self.quant.load_state(state, prefix, self.describe())
        else:
            self.weight.data[...] = block_weights(_take(state, prefix + "weight", shape, self.describe())).data
        if self.bias is not None:
            self.bias.data[...] = _take(state, prefix + "bias", self.bias.data.shape, self.describe())

    def describe(self):
        a = self.args
        return f"Conv2d({a['in_channels']}->{a['out_channels']}, k={a['kernel_size']}, s={a['stride']}, p={a['padding']})"


def _reads_bf16(layer, gradient=False):
    """'bf16' when `layer` is a convolution that reads bf16 activations (or, gradient=True, its
    output gradient) as they are: its precision is bf16, and for the gradient it has no bias,
    whose gradient sums dy in fp32 (a near-zero sum of rounded values would be mostly rounding
    noise).  Else 'fp32'."""
    ok = isinstance(layer, Conv2d) and layer.quant is None and layer.precision == "bf16"
    return "bf16" if ok and not (gradient and layer.bias is not None) else "fp32"


def link_batchnorm(bn, before, after, through=()):
    """Mixed precision: `bn` writes its output in `after`'s format and its input gradient in
    `before`'s, where that layer is a bf16 convolution that reads it directly (None: no such
    layer, or the tensor has other readers: a residual sum, a pool; `before` with a bias keeps
    an fp32 gradient).  The bf16 patterns are the ones that convolution would round the fp32
    tensor to, without the fp32 tensor's pass through memory: 2 of the digits CNN's 5 forward
    conversions and 6 of its backward ones.  In a quantized model, a quantized `before` folds `bn`
    when `bn` ends in a ReLU and a quantized convolution reads its output: `after` itself, or
    the first_conv of the block `after`, past `through` (a max pool, which pools u8 codes as
    they are)."""
    bn.dx_precision = _reads_bf16(before, gradient=True)
    bn.out_precision = "fp32" if through else _reads_bf16(after)
    if isinstance(before, Conv2d) and before.quant is not None:
        reader = after if isinstance(after, Conv2d) else getattr(after, "first_conv", None)
        before.quant.link_output(bn, reader, through)   # nn.quantize: folded into its epilogue
    else:
        bn.folded = False


def link_residual(last, bn, relu, shortcut):
    """A block's end relu(bn(last(h)) + shortcut(x)), after link_batchnorm on its batch norms:
    in a quantized model, the block's last convolution folds the end into its epilogue and the
    shortcut's convolution its batch norm (nn.quantize's ConvQuantization)."""
    from .quantize import RESIDUAL

    if last.quant is None:
        return
    if shortcut and shortcut[0].quant is not None:
        shortcut[0].quant.link_output(shortcut[1], RESIDUAL)
    last.quant.link_residual(bn, relu, shortcut)


def quantized_block(first, last, main, x):
    """A quantized block's output as u8 codes, its end folded into `last` (link_residual), or
    None where that cannot apply at this call (the block then runs its layers one by one).
    main(codes): the input of `last` from the block input's codes, which `first` and the
    shortcut share."""
    end = None if last.quant is None else last.quant.block_end(first)
    if end is None:
        return None
    x = first.quant.input_codes(x)
    return end(main(x), x)


@register
class BatchNorm2d(Module):
    """Batch normalization over (N, H, W) per channel, fp32 statistics; relu=True fuses a
    following ReLU into the same passes (forward and backward).

    Training mode normalizes with the batch's mean and biased variance and updates the running
    estimates (unbiased variance, momentum 0.1, as PyTorch); eval mode uses the running ones.
    out_precision / dx_precision: the formats of its output and input gradient ('fp32'; 'bf16'
    where a container's link_formats found a bf16 convolution reading them; an output hook
    always sees fp32)."""

    out_precision = "fp32"
    dx_precision = "fp32"
    #: True in a quantized model where the quantized convolution before it applies it (and its ReLU)
    #: in its epilogue (nn.quantize's ConvQuantization.link_output / link_residual): the u8
    #: codes that convolution writes then pass through this layer unchanged
    folded = False

    def __init__(self, num_features, eps=1e-5, momentum=0.1, relu=False):
        super().__init__()
        check_int("BatchNorm2d", "num_features", num_features)
        check_float("BatchNorm2d", "eps", eps, 0.0)
        check_float("BatchNorm2d", "momentum", momentum, 0.0, 1.0, low_inclusive=True)
        check_bool("BatchNorm2d", "relu", relu)
        self.args = {"num_features": num_features, "eps": eps, "momentum": momentum, "relu": relu}
        self.relu = bool(relu)
        self.C, self.eps, self.momentum = num_features, eps, momentum
        padded = n_blocks(num_features) * CB
        # gamma, beta, their gradients and the two running statistics, float32
        check_parameter_memory("BatchNorm2d", f"the parameters of {self.describe()}", 6 * 4 * padded)
        gamma = np.zeros(padded, np.float32)
        gamma[:num_features] = 1.0
        self.weight = Parameter(gamma)
        self.bias = Parameter(np.zeros(padded, np.float32))
        self.running_mean = np.zeros(padded, np.float32)
        self.running_var = np.zeros(padded, np.float32)
        self.running_var[:num_features] = 1.0
        self.num_batches_tracked = 0      # training-mode forwards, as PyTorch counts them
        self._saved = None

    def forward(self, x, residual=None, relu=None):
        """relu(bn(x) (+ residual)); residual and relu (default: the layer's own) are for a
        ResNet block's fused end (residual_end), whose backward takes the gradient of the sum."""
        _expect_blocked(x, self.describe(), self.C)
        if self.folded and x.precision == "int8":
            return x            # applied by the quantized convolution that wrote these codes
        x = _widened(x, "fp32")
        y, self._saved = norm.batchnorm_forward(x, self.weight.data, self.bias.data, self.running_mean,
                                                self.running_var, self.training, eps=self.eps,
                                                momentum=self.momentum,
                                                relu=self.relu if relu is None else relu, residual=residual,
                                                out_precision="fp32" if self._output_hooks else self.out_precision)
        self.num_batches_tracked += bool(self.training)     # counted once the forward succeeded
        return y

    def backward(self, dy):
        dx, dgamma, dbeta = norm.batchnorm_backward(dy, self._require_forward(self._saved),
                                                    out_precision=self.dx_precision)
        self.weight.grad += dgamma
        self.bias.grad += dbeta
        return dx

    def state(self):
        c = self.C
        return {"weight": self.weight.data[:c].copy(), "bias": self.bias.data[:c].copy(),
                "running_mean": self.running_mean[:c].copy(), "running_var": self.running_var[:c].copy()}

    def load_state(self, state, prefix=""):
        c = self.C
        for key, target in (("weight", self.weight.data), ("bias", self.bias.data),
                            ("running_mean", self.running_mean), ("running_var", self.running_var)):
            target[:c] = _take(state, prefix + key, (c,), self.describe())

    def extra_state_dict(self):
        return {"num_batches_tracked": np.array(self.num_batches_tracked, dtype=np.int64)}

    def to_torch_layout(self, name, value):
        return value[:self.C]

    def describe(self):
        return f"BatchNorm2d({self.C}{', relu' if self.relu else ''})"


class _OneCall(Module):
    """A parameterless layer whose forward is one library call: subclasses define
    _forward(x) -> (y, what the backward needs) and _backward(dy, that).  `reads`: the format
    its input is widened to unless it is in it already (the max pool takes u8 codes too)."""

    reads = "fp32"

    def __init__(self):
        super().__init__()
        self.args = {}
        self._saved = None

    def forward(self, x):
        _expect_blocked(x, self.describe(), None)
        y, self._saved = self._forward(_widened(x, self.reads))
        return y

    def backward(self, dy):
        return self._backward(dy, self._require_forward(self._saved))


@register
class ReLU(_OneCall):
    def _forward(self, x):
        y = BlockedTensor(np.maximum(x.data, np.float32(0.0)), x.shape)
        return y, y

    def _backward(self, dy, y):
        return norm.relu_backward(dy, y)


class _Pool2d(_OneCall):
    """The 2-D pools: kernel_size, stride (None: the kernel size), padding (at most half the
    kernel, as in PyTorch)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        k = check_int_pair(self.name, "kernel_size", kernel_size)
        if stride is not None:
            check_int_pair(self.name, "stride", stride)
        p = check_int_pair(self.name, "padding", padding, minimum=0)
        if p[0] > k[0] // 2 or p[1] > k[1] // 2:
            raise ValueError(f"{self.name}: padding must be at most half the kernel size, got padding {padding!r} "
                             f"for kernel_size {kernel_size!r}")
        self.args = {"kernel_size": kernel_size, "stride": stride, "padding": padding}

    def describe(self):
        return f"{self.name}(k={self.args['kernel_size']})"

    def _window(self):
        a = self.args
        return a["kernel_size"], a["stride"], a["padding"]


@register
class MaxPool2d(_Pool2d):
    reads = "int8"          # u8 codes pool as they are (a quantized model's stem: pool.max_pool2d)

    def _forward(self, x):
        return pool.max_pool2d(x, *self._window())   # (y, MaxPoolSaved)

    def _backward(self, dy, saved):
        return pool.max_pool2d_backward(dy, saved)


@register
class AvgPool2d(_Pool2d):
    def _forward(self, x):
        return pool.avg_pool2d(x, *self._window()), x.shape

    def _backward(self, dy, x_shape):
        return pool.avg_pool2d_backward(dy, x_shape, *self._window())


@register
class GlobalAvgPool(_OneCall):
    """Blocked (N, C, H, W) -> plain (N, C) means: the bridge to Linear layers."""

    def _forward(self, x):
        return pool.global_avg_pool(x), x.shape

    def _backward(self, dy, x_shape):
        return pool.global_avg_pool_backward(dy, x_shape)


@register
class Linear(Module):
    """Fully connected layer on (N, in) float32 arrays; all three products on dlcpu.matmul.
    precision (set_precision): 'bf16' or 'dfp16' run y, dx and dW on that format's GEMM (fp32
    sums and master weights); 'int8' and 'ternary' are dynamic quantization for inference, as
    PyTorch's quantize_dynamic: the weights quantized at each forward (int8 per output unit,
    ternary in blocks of 16 inputs), x per tensor to u8; backward refuses them.  nn.quantize
    quantizes it statically instead: weights quantized once and kept, x with a calibrated
    scale (its `quant`, which the forward then runs)."""

    PRECISIONS = ("fp32", "bf16", "dfp16", "int8", "ternary")
    #: None, or the nn.quantize LinearQuantization this layer runs instead (inference only)
    quant = None

    def __init__(self, in_features, out_features, bias=True, seed=0):
        super().__init__()
        check_ints("Linear", in_features=in_features, out_features=out_features, seed=seed)
        check_bool("Linear", "bias", bias)
        self.args = {"in_features": in_features, "out_features": out_features, "bias": bias, "seed": seed}
        # the float64 draw, the float32 weights and their gradient, the bias and its gradient
        check_parameter_memory("Linear", f"the parameters of {self.describe()} (weight {(out_features, in_features)})",
                               16 * out_features * in_features + 8 * out_features)
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(in_features)
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(np.float32))
        self.bias = Parameter(np.zeros(out_features, np.float32)) if bias else None
        self._x = None

    def forward(self, x):
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != self.args["in_features"]:
            shape = getattr(x, "shape", None)
            raise ValueError(f"{self.describe()}: expected a (N, {self.args['in_features']}) array, got shape {shape}")
        check_float32(self.describe(), "x", x)
        if self.quant is not None:
            return self.quant.forward(np.ascontiguousarray(x))
        self._x = np.ascontiguousarray(x)
        # W^T packed straight from W (one pass; a transposed copy first was a second one)
        p = self.precision
        y = matmul(self._x, pack_matmul_operand(self.weight.data, transpose=True, precision=p), precision=p)
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, dy):
        if self.quant is not None:
            raise RuntimeError(f"{self.describe()}: a quantized Linear layer runs inference only")
        x = self._require_forward(self._x)
        want = (x.shape[0], self.args["out_features"])
        if getattr(dy, "shape", None) != want:
            raise ValueError(f"{self.describe()}: dy has shape {getattr(dy, 'shape', None)}, "
                             f"but the forward output has shape {want}")
        dy = np.ascontiguousarray(check_float32(self.describe(), "dy", dy))
        p = self.precision
        if p in ("int8", "ternary"):
            raise RuntimeError(f"{self.describe()}: precision {p!r} runs inference only; train in fp32, bf16 or dfp16")
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=0, dtype=np.float64).astype(np.float32)
        dx = matmul(dy, self.weight.data, precision=p)
        self.weight.grad += matmul(dy, x, transpose_x=True, precision=p)
        return dx

    def state(self):
        out = self.quant.state() if self.quant is not None else {"weight": self.weight.data.copy()}
        if self.bias is not None:
            out["bias"] = self.bias.data.copy()
        return out

    def load_state(self, state, prefix=""):
        if self.quant is not None:
            self.quant.load_state(state, prefix, self.describe())
        else:
            self.weight.data[...] = _take(state, prefix + "weight", self.weight.data.shape, self.describe())
        if self.bias is not None:
            self.bias.data[...] = _take(state, prefix + "bias", self.bias.data.shape, self.describe())

    def describe(self):
        return f"Linear({self.args['in_features']}->{self.args['out_features']})"


@register
class Sequential(Module):
    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: layer {i} must be a dlcpu.nn Module, got {type(m).__name__}")
        self.modules = list(modules)

    def children(self):
        return self.modules

    def forward(self, x):
        for i, m in enumerate(self.modules):
            try:
                x = m(x)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"layer {i} ({m.describe()}): {exc}") from None
        return x

    def backward(self, dy):
        for m in reversed(self.modules):
            dy = m.backward(dy)
        return dy

    def link_formats(self):
        mods = self.modules
        for i, m in enumerate(mods):
            if isinstance(m, BatchNorm2d):
                link_batchnorm(m, mods[i - 1] if i > 0 else None, mods[i + 1] if i + 1 < len(mods) else None)

    def config(self):
        return {"type": "Sequential", "args": {"modules": [m.config() for m in self.modules]}}


def residual_end(bn, relu, h, shortcut):
    """relu(bn(h) + shortcut), a ResNet block's end, in one pass (norm.batchnorm_forward with a
    residual).  Its layers stay separate modules for names, state and hooks: when `bn` has an
    output hook (a fault injected on its output) the three steps run one by one so the hook sees
    bn's output; `relu`'s hooks run on the fused result.  Returns relu's output."""
    if bn._output_hooks:
        return relu(BlockedTensor(bn(h).data + shortcut.data, h.shape))
    y = bn.forward(h, residual=shortcut, relu=True)
    if grad_enabled():
        relu._saved = y      # what ReLU's own backward masks with
    else:
        bn._saved = relu._saved = None
        relu._forward_kept_nothing = True
    for hook in relu._output_hooks:
        y = hook(relu, y)
    return y


def shortcut_forward(shortcut, x):
    """A residual block's shortcut: its layers in turn (a strided 1x1 conv + BN), or x itself,
    as fp32 (the residual sum's operand)."""
    for m in shortcut:
        x = m(x)
    return _widened(x, "fp32")


def shared_input(first, shortcut, x):
    """x for a block's first conv and its shortcut conv, both of which read it: converted once
    when both run in the same low-precision format (a second conversion of the same activation
    was 12-19 us of a digits step's 16 -> 32 block at batch 64), quantized once to u8 when both
    are quantized with the same input scale, else x as it is (each layer converts its own)."""
    if not (shortcut and isinstance(shortcut[0], Conv2d)):
        return x
    if first.quant is not None and shortcut[0].quant is not None:
        # nn.quantize: both calibrated on this tensor, so their u8 codes are the same
        same = first.quant.input_format() == shortcut[0].quant.input_format()
        return first.quant.input_codes(x) if same else x
    if shortcut[0].precision == first.precision != "fp32" and first.quant is None and shortcut[0].quant is None:
        return first.format_input(x)
    return x


def residual_backward(relu, dy, main_backward, shortcut):
    """The backward of relu(main(x) + shortcut(x)) ended by residual_end: the gradient of the
    sum (ReLU's mask on dy) goes through main_backward and through the shortcut's layers, and
    their input gradients add (None when the block computes no input gradient)."""
    g = relu.backward(dy)
    dx = main_backward(g)
    ds = g
    for m in reversed(shortcut):
        ds = m.backward(ds)
    return None if dx is None else BlockedTensor(dx.data + ds.data, dx.shape)


class ResidualBlock(Module):
    """What the residual blocks (BasicBlock, resnet.Bottleneck) share: the convolution that
    reads the block's input, with the shortcut, is conv1."""

    @property
    def first_conv(self):
        return self.conv1


@register
class BasicBlock(ResidualBlock):
    """ResNet basic block: relu(bn2(conv3x3(relu(bn1(conv3x3_s(x))))) + shortcut(x)), the
    shortcut a strided 1x1 conv + BN when the shape changes, else the identity (the first ReLU
    is fused into bn1)."""

    def __init__(self, in_channels, out_channels, stride=1, seed=0):
        super().__init__()
        check_ints("BasicBlock", in_channels=in_channels, out_channels=out_channels, stride=stride, seed=seed)
        self.args = {"in_channels": in_channels, "out_channels": out_channels, "stride": stride, "seed": seed}
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, 1, bias=False, seed=seed)
        self.bn1 = BatchNorm2d(out_channels, relu=True)
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, 1, bias=False, seed=seed + 1)
        self.bn2 = BatchNorm2d(out_channels)
        self.relu_out = ReLU()
        self._y = None
        self.shortcut = []
        if stride != 1 or in_channels != out_channels:
            self.shortcut = [Conv2d(in_channels, out_channels, 1, stride, 0, bias=False, seed=seed + 2),
                             BatchNorm2d(out_channels)]

    def children(self):
        return [self.conv1, self.bn1, self.conv2, self.bn2, self.relu_out, *self.shortcut]

    def named_state_children(self):
        """torchvision's names: conv1, bn1, conv2, bn2 and the shortcut as downsample.0/.1."""
        names = ["conv1", "bn1", "conv2", "bn2", "relu"] + [f"downsample.{j}" for j in range(len(self.shortcut))]
        return list(zip(names, self.children()))

    def forward(self, x):
        _expect_blocked(x, self.describe(), self.args["in_channels"])
        y = quantized_block(self.conv1, self.conv2, lambda v: self.bn1(self.conv1(v)), x)
        if y is not None:
            self._y = y
            return y
        x = shared_input(self.conv1, self.shortcut, x)
        h = self.conv2(self.bn1(self.conv1(x)))
        self._y = residual_end(self.bn2, self.relu_out, h, shortcut_forward(self.shortcut, x))
        return self._y

    def backward(self, dy):
        self._require_forward(self._y)
        return residual_backward(self.relu_out, dy, lambda g: self.conv1.backward(self.bn1.backward(
            self.conv2.backward(self.bn2.backward(g)))), self.shortcut)

    def link_formats(self):
        link_batchnorm(self.bn1, self.conv1, self.conv2)
        link_batchnorm(self.bn2, self.conv2, None)      # its output: the residual sum
        if self.shortcut:
            link_batchnorm(self.shortcut[1], self.shortcut[0], None)
        link_residual(self.conv2, self.bn2, self.relu_out, self.shortcut)

    def describe(self):
        a = self.args
        return f"BasicBlock({a['in_channels']}->{a['out_channels']}, s={a['stride']})"

