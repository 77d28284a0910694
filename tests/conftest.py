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
