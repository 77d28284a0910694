"""dlcpu: a CPU deep-learning backend built on one batch-reduce GEMM.

Public API (small on purpose; the `dlcpu` command mirrors it):
    conv2d, conv2d_backward, brgemm, matmul    kernels
    to_blocked, from_blocked, block_weights,   layouts (BlockedTensor carries the logical shape)
    unblock_weights, BlockedTensor
    info                                       machine, build, ISA path, threads
"""
__version__ = "0.1.0"

from .conv import conv2d, conv2d_backward
from .cpu import info
from .gemm import brgemm, matmul
from .layout import BlockedTensor, block_weights, from_blocked, to_blocked, unblock_weights

__all__ = [
    "BlockedTensor", "block_weights", "brgemm", "conv2d", "conv2d_backward", "from_blocked", "info", "matmul",
    "to_blocked", "unblock_weights", "__version__",
]
