"""Shared test settings: tolerances (from dlcpu._tolerances, their one definition), ISA list, seeds."""
import numpy as np
import pytest

from dlcpu import cpu
from dlcpu._tolerances import CONV_F32, RTOL  # noqa: F401  (CONV_F32: the convolution contract)

#: every microkernel path this CPU can run; tests loop over all of them
ISAS = cpu.supported_isas()


def rel_l2(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (denom if denom > 0 else 1.0))


def assert_close(actual, expected, dtype="f32"):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = rel_l2(actual, expected)
    assert err <= RTOL[dtype], f"relative L2 error {err:.3e} > {RTOL[dtype]:.0e}"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def max_threads():
    return max(2, cpu.resolve_threads())


try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch (the peer oracle) is not installed")


def randomize_batch_norms(torch, model, shift):
    """Give every torch BatchNorm2d of `model` non-trivial running statistics and affine
    parameters (means and biases in [-shift, shift], variances and scales in [0.5, 1.5]), so a
    state dict carries values a fresh layer would not have."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-shift, shift)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-shift, shift)
    return model
