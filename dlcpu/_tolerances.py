"""Accuracy bounds, written once: the tests (tests/conftest.py), `dlcpu bench conv --check` and
the user's guide (docs/guide.md) all cite this module.

Every bound is a relative L2 error, ||got - want|| / ||want||, against the float64 reference
(dlcpu._reference) with inputs drawn uniformly from [-1, 1].
"""

#: fp32 results of any kernel (accumulations of up to 4608 terms, the ResNet-50 3x3 C=512 layers)
F32 = 1e-5
#: bf16 results (8 mantissa bits) against the float64 product of the unrounded fp32 inputs
BF16 = 1e-2
#: fp32 results of a whole network against its PyTorch twin (both in fp32, neither exact): each
#: layer is within F32, and the differences compound through depth and BatchNorm's division by
#: the batch's standard deviation (ResNet-18 stem-conv gradient at 64x64, batch 2: 1.1e-5)
MODEL_F32 = 1e-4
#: by dtype name, for tests parameterised over dtypes
RTOL = {"f32": F32, "bf16": BF16, "model_f32": MODEL_F32}

#: the fp32 convolution accuracy contract per algorithm on ResNet-style layers with C <= 256
#: (measured on the ResNet-50 layers: direct 2e-7 - 8e-7, winograd2 2e-7 - 7e-7, winograd4
#: 1.7e-6 - 3.5e-6).  Winograd's transforms add error, F(4x4) most.
CONV_F32 = {"direct": 1e-6, "winograd2": 2e-6, "winograd4": 2e-5}


def conv_check_f32(algorithm):
    """The bound `dlcpu bench conv --check` applies to one fp32 layer: the contract, relaxed to
    the general fp32 bound for layers beyond it (direct measured 1.1e-6 at C = 512)."""
    return max(CONV_F32[algorithm], F32)
