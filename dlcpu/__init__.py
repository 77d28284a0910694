"""dlcpu: a CPU deep-learning backend built on one batch-reduce GEMM.

Public API (small on purpose; the `dlcpu` command mirrors it):
    conv2d, conv2d_backward, prepare_winograd, brgemm, matmul    kernels
    to_blocked, from_blocked, block_weights, unblock_weights,    layouts (BlockedTensor carries
    BlockedTensor, to_bf16_blocked, block_weights_bf16           the logical shape; bf16 operands)
    info                                                         machine, build, ISA, threads
    dlcpu.precision                                              bf16, DFP-16, int8, ternary formats
    dlcpu.nn, dlcpu.train                                        layers, SGD, save/load, training
"""
from ._version import __version__
from .conv import conv2d, conv2d_backward, prepare_winograd
from .cpu import info
from .gemm import brgemm, matmul
from .layout import BlockedTensor, block_weights, block_weights_bf16, from_blocked, to_bf16_blocked, to_blocked, unblock_weights

__all__ = [
    "BlockedTensor",
    "__version__",
    "block_weights",
    "block_weights_bf16",
    "brgemm",
    "conv2d",
    "conv2d_backward",
    "from_blocked",
    "info",
    "matmul",
    "prepare_winograd",
    "to_bf16_blocked",
    "to_blocked",
    "unblock_weights",
]
