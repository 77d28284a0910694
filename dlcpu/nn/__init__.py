"""dlcpu.nn: layers with forward and backward passes on dlcpu's kernels, a ResNet basic block,
recurrent layers, a loss, SGD, save/load, magnitude pruning and the models `dlcpu train` trains.

    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), ...)
    logits = model(xb)                       # forward, remembers what backward needs
    loss, dlogits = nn.softmax_cross_entropy(logits, labels)
    model.backward(dlogits)                  # accumulates .grad on every Parameter
    opt.step(); opt.zero_grad()

One room per concern: module (Parameter, Module, the layer registry), layers (feed-forward
layers on blocked activations), recurrent (LSTM, GRU, RNN), losses, optim, io (save/load),
prune (magnitude pruning whose masks SGD keeps), activations (Tanh, Sigmoid, Swish, GELU in
exact/fast/K-TanH flavours), models, resnet (ResNet-18/50 with torchvision's names), sequence (Embedding, a fused
vocabulary cross-entropy, the GNMT-style LSTM model).  Everything public is re-exported
here, so `from dlcpu import nn; nn.Conv2d` is the API.
"""
from .activations import GELU, Sigmoid, Swish, Tanh
from .io import build, check_writable, load, save
from .layers import AvgPool2d, BasicBlock, BatchNorm2d, Conv2d, GlobalAvgPool, Linear, MaxPool2d, ReLU, Sequential
from .losses import LossKind, parse_loss_kind, predict_classes, softmax_cross_entropy
from .models import digits_resnet, digits_rnn
from .module import FORMAT_VERSION, Module, Parameter, grad_enabled, inference_mode
from .optim import SGD
from .prune import LayerSparsity, prune, sparsity_report, total_sparsity
from .quantize import TARGETS as QUANTIZE_TARGETS
from .quantize import Quantized, quantize
from .quantize import layer_costs as quantize_costs
from .quantize import weight_report as quantize_weight_report
from .recurrent import GRU, LSTM, RNN, LastTimeStep
from .resnet import Bottleneck, ResNet, resnet18, resnet50
from .sequence import GNMT, Embedding, LinearCrossEntropy, gnmt

__all__ = [
    "FORMAT_VERSION",
    "GELU",
    "GNMT",
    "GRU",
    "LSTM",
    "QUANTIZE_TARGETS",
    "RNN",
    "SGD",
    "AvgPool2d",
    "BasicBlock",
    "BatchNorm2d",
    "Bottleneck",
    "Conv2d",
    "Embedding",
    "GlobalAvgPool",
    "LastTimeStep",
    "LayerSparsity",
    "Linear",
    "LinearCrossEntropy",
    "LossKind",
    "MaxPool2d",
    "Module",
    "Parameter",
    "Quantized",
    "ReLU",
    "ResNet",
    "Sequential",
    "Sigmoid",
    "Swish",
    "Tanh",
    "build",
    "check_writable",
    "digits_resnet",
    "digits_rnn",
    "gnmt",
    "grad_enabled",
    "inference_mode",
    "load",
    "parse_loss_kind",
    "predict_classes",
    "prune",
    "quantize",
    "quantize_costs",
    "quantize_weight_report",
    "resnet18",
    "resnet50",
    "save",
    "softmax_cross_entropy",
    "sparsity_report",
    "total_sparsity",
]
