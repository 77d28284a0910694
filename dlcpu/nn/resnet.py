"""ResNet-18 and ResNet-50 (v1.5) on dlcpu.nn, with torchvision's module names, so a torchvision
state dict loads as it is (Module.load_state_dict) and a model's state_dict() loads into
torchvision.

    model = nn.resnet50(num_classes=1000)          # Bottleneck blocks [3, 4, 6, 3], stride on the 3x3
    logits = model(images)                          # (N, 3, H, W) float32 array, or a BlockedTensor
    model.backward(dlogits)                         # accumulates .grad; returns None (no input grad)

Design: the layers are the library's (Conv2d on blocked weights, BatchNorm2d, pools, Linear);
the model adds the fusions a training step can use:
  - every BN followed by a ReLU has it fused into its passes (forward and backward);
  - a block's last BN, the residual add and the ReLU are one pass (layers.residual_end);
  - activations stay blocked from the first conv to the global average pool, which reads the
    blocked maps directly into the (N, C) features of fc: no NCHW tensor inside the model;
  - the stem conv needs no input gradient (its input is the images), so its dx is skipped.
Module names follow torchvision: conv1, bn1, (relu), maxpool, layer1..layer4 (blocks by
index; in a block conv1, bn1, conv2, bn2, [conv3, bn3,] relu, downsample.0/.1), avgpool, fc.
"""
import numpy as np

from ..layout import BlockedTensor, to_blocked
from .layers import (
    BasicBlock,
    BatchNorm2d,
    Conv2d,
    GlobalAvgPool,
    Linear,
    MaxPool2d,
    ReLU,
    ResidualBlock,
    Sequential,
    link_batchnorm,
    link_residual,
    quantized_block,
    residual_backward,
    residual_end,
    shared_input,
    shortcut_forward,
)
from .module import Module, _expect_blocked, check_int, check_ints, register


@register
class Bottleneck(ResidualBlock):
    """ResNet v1.5 bottleneck: relu(bn3(conv1x1(relu(bn2(conv3x3_s(relu(bn1(conv1x1(x))))))))
    + shortcut(x)), width = planes, output 4*planes channels; the stride sits on the 3x3 conv
    (v1.5), and the shortcut is a strided 1x1 conv + BN when the shape changes."""

    expansion = 4

    def __init__(self, in_channels, planes, stride=1, seed=0):
        super().__init__()
        check_ints("Bottleneck", in_channels=in_channels, planes=planes, stride=stride, seed=seed)
        self.args = {"in_channels": in_channels, "planes": planes, "stride": stride, "seed": seed}
        out = planes * self.expansion
        self.conv1 = Conv2d(in_channels, planes, 1, 1, 0, bias=False, seed=seed)
        self.bn1 = BatchNorm2d(planes, relu=True)
        self.conv2 = Conv2d(planes, planes, 3, stride, 1, bias=False, seed=seed + 1)
        self.bn2 = BatchNorm2d(planes, relu=True)
        self.conv3 = Conv2d(planes, out, 1, 1, 0, bias=False, seed=seed + 2)
        self.bn3 = BatchNorm2d(out)
        self.relu = ReLU()
        self.downsample = []
        if stride != 1 or in_channels != out:
            self.downsample = [Conv2d(in_channels, out, 1, stride, 0, bias=False, seed=seed + 3), BatchNorm2d(out)]
        self._y = None

    def children(self):
        return [self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3, self.relu, *self.downsample]

    def named_state_children(self):
        names = ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu"]
        names += [f"downsample.{j}" for j in range(len(self.downsample))]
        return list(zip(names, self.children()))

    def forward(self, x):
        _expect_blocked(x, self.describe(), self.args["in_channels"])
        y = quantized_block(self.conv1, self.conv3, lambda v: self.bn2(self.conv2(self.bn1(self.conv1(v)))), x)
        if y is not None:
            self._y = y
            return y
        x = shared_input(self.conv1, self.downsample, x)
        h = self.conv3(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        self._y = residual_end(self.bn3, self.relu, h, shortcut_forward(self.downsample, x))
        return self._y

    def backward(self, dy):
        self._require_forward(self._y)
        return residual_backward(self.relu, dy, lambda g: self.conv1.backward(self.bn1.backward(self.conv2.backward(
            self.bn2.backward(self.conv3.backward(self.bn3.backward(g)))))), self.downsample)

    def link_formats(self):
        link_batchnorm(self.bn1, self.conv1, self.conv2)
        link_batchnorm(self.bn2, self.conv2, self.conv3)
        link_batchnorm(self.bn3, self.conv3, None)      # its output: the residual sum
        if self.downsample:
            link_batchnorm(self.downsample[1], self.downsample[0], None)
        link_residual(self.conv3, self.bn3, self.relu, self.downsample)

    def describe(self):
        a = self.args
        return f"Bottleneck({a['in_channels']}->{a['planes'] * self.expansion}, s={a['stride']})"


#: the block types a ResNet is built of, by the name its configuration saves
BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
#: blocks per stage of the standard depths
DEPTHS = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3]),
          101: ("bottleneck", [3, 4, 23, 3]), 152: ("bottleneck", [3, 8, 36, 3])}


@register
class ResNet(Module):
    """An ImageNet-style ResNet (torchvision's layout): 7x7/2 stem conv, BN + ReLU, 3x3/2 max
    pool, four stages of blocks (64, 128, 256, 512 planes; stride 2 from the second stage), a
    global average pool and fc.  Input: (N, in_channels, H, W) float32 images (converted to the
    blocked layout once) or an activation BlockedTensor; output: (N, num_classes) logits."""

    def __init__(self, block="bottleneck", layers=(3, 4, 6, 3), num_classes=1000, in_channels=3, seed=0):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"ResNet: block must be one of {', '.join(BLOCKS)}, got {block!r}")
        if (not isinstance(layers, (list, tuple)) or len(layers) != 4
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in layers)):
            raise ValueError(f"ResNet: layers must be four block counts >= 1, got {layers!r}")
        check_ints("ResNet", num_classes=num_classes, in_channels=in_channels)
        check_int("ResNet", "seed", seed, minimum=0)
        self.args = {"block": block, "layers": list(layers), "num_classes": num_classes,
                     "in_channels": in_channels, "seed": seed}
        cls = BLOCKS[block]
        expansion = getattr(cls, "expansion", 1)
        self.conv1 = Conv2d(in_channels, 64, 7, 2, 3, bias=False, seed=seed)
        self.conv1.needs_input_grad = False        # its input is the images
        self.bn1 = BatchNorm2d(64, relu=True)
        self.maxpool = MaxPool2d(3, 2, 1)
        stages, channels, s = [], 64, seed + 1
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(count):
                stride = 2 if (i > 0 and j == 0) else 1
                if block == "bottleneck":
                    blocks.append(Bottleneck(channels, planes, stride, seed=s))
                else:
                    blocks.append(BasicBlock(channels, planes, stride, seed=s))
                channels = planes * expansion
                s += 10
            stages.append(Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = GlobalAvgPool()
        self.fc = Linear(channels, num_classes, seed=seed + 7)
        # torchvision's zero-initialised biases and unit BN scales are the layers' defaults;
        # its fc init is uniform(+-1/sqrt(in)), as Linear's.

    def children(self):
        return [self.conv1, self.bn1, self.maxpool, self.layer1, self.layer2, self.layer3, self.layer4,
                self.avgpool, self.fc]

    def named_state_children(self):
        names = ["conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
        return list(zip(names, self.children()))

    def forward(self, x):
        c = self.args["in_channels"]
        if isinstance(x, BlockedTensor):
            _expect_blocked(x, self.describe(), c)
        else:
            if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1] != c or min(x.shape) < 1:
                raise ValueError(f"{self.describe()}: expected (N, {c}, H, W) images, got "
                                 f"{type(x).__name__} of shape {getattr(x, 'shape', None)}")
            if x.dtype != np.float32:
                raise TypeError(f"{self.describe()}: images must be float32, got {x.dtype}")
            x = to_blocked(x)
        h = self.maxpool(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            h = stage(h)
        return self.fc(self.avgpool(h))

    def backward(self, dy):
        g = self.avgpool.backward(self.fc.backward(dy))
        for stage in (self.layer4, self.layer3, self.layer2, self.layer1):
            g = stage.backward(g)
        self.conv1.backward(self.bn1.backward(self.maxpool.backward(g)))   # no input gradient: None

    def link_formats(self):
        # its output: the max pool, then the first block (a quantized stem hands it u8 codes)
        link_batchnorm(self.bn1, self.conv1, self.layer1.modules[0], through=[self.maxpool])

    def describe(self):
        a = self.args
        return f"ResNet({a['block']}, {a['layers']}, classes={a['num_classes']})"


def resnet18(num_classes=1000, seed=0):
    """ResNet-18: BasicBlocks [2, 2, 2, 2], torchvision's names."""
    return ResNet("basic", DEPTHS[18][1], num_classes=num_classes, seed=seed)


def resnet50(num_classes=1000, seed=0):
    """ResNet-50 v1.5: Bottleneck blocks [3, 4, 6, 3] with the stride on the 3x3 conv, torchvision's
    names."""
    return ResNet("bottleneck", DEPTHS[50][1], num_classes=num_classes, seed=seed)
