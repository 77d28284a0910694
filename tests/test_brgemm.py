"""The batch-reduce GEMM: three addressing variants, beta, fused epilogue, every ISA, every tile."""
import numpy as np
import pytest
from conftest import ISAS, assert_close

import dlcpu
from dlcpu import _reference as ref


def operands(rng, blocks, k, m, n):
    a = rng.uniform(-1, 1, (blocks, k, m)).astype(np.float32)
    b = rng.uniform(-1, 1, (blocks, n, k)).astype(np.float32)
    return a, b


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [16, 32, 48])
@pytest.mark.parametrize("n", [1, 5, 6, 7, 13, 14, 15, 28, 29])
@pytest.mark.parametrize("k", [1, 5, 16])
def test_strd_tiles(rng, isa, m, n, k):
    a, b = operands(rng, 3, k, m, n)
    c = dlcpu.brgemm(a, b, isa=isa)
    assert_close(c, ref.brgemm(a, b))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("variant", ["offs", "addr"])
def test_indexed_variants(rng, isa, variant):
    a, b = operands(rng, 6, 16, 32, 14)
    ai = np.array([5, 0, 3, 3, 1])
    bi = np.array([1, 2, 0, 5, 4])
    c = dlcpu.brgemm(a, b, variant=variant, a_index=ai, b_index=bi, isa=isa)
    assert_close(c, ref.brgemm(a, b, a_index=ai, b_index=bi))


@pytest.mark.parametrize("isa", ISAS)
def test_beta_bias_relu(rng, isa):
    a, b = operands(rng, 4, 16, 32, 9)
    c0 = rng.uniform(-1, 1, (9, 32)).astype(np.float32)
    bias = rng.uniform(-1, 1, 32).astype(np.float32)
    c = dlcpu.brgemm(a, b, c0.copy(), beta=1, bias=bias, relu=True, isa=isa)
    assert_close(c, ref.brgemm(a, b, c0, beta=1, bias=bias, relu=True))
    assert (c >= 0).all() and (c == 0).any()


def test_variants_agree_bitwise(rng):
    a, b = operands(rng, 4, 16, 32, 14)
    idx = np.arange(4)
    s = dlcpu.brgemm(a, b)
    o = dlcpu.brgemm(a, b, variant="offs", a_index=idx, b_index=idx)
    d = dlcpu.brgemm(a, b, variant="addr", a_index=idx, b_index=idx)
    assert np.array_equal(s, o) and np.array_equal(s, d)


@pytest.mark.parametrize("kwargs,match", [
    ({"a": np.zeros((2, 16, 20), np.float32)}, "multiple of 16"),
    ({"a": np.zeros((2, 17, 16), np.float32)}, "k .* must be in 1..16"),
    ({"b": np.zeros((2, 4, 8), np.float32)}, "does not match"),
    ({"b": np.zeros((3, 4, 16), np.float32)}, "'strd' reduces block i"),
    ({"variant": "offs"}, "needs a_index and b_index"),
    ({"variant": "offs", "a_index": [0, 2], "b_index": [0, 1]}, r"a_index must lie in \[0, 2\)"),
    ({"variant": "xyz"}, "variant must be one of"),
    ({"beta": 1}, "c must be given"),
    ({"beta": 2}, "beta must be 0 or 1"),
    ({"bias": np.zeros(8, np.float32)}, r"bias must have shape \(16,\)"),
    ({"c": np.zeros((4, 8), np.float32)}, "c must be a C-contiguous float32 array of shape"),
])
def test_bad_input(kwargs, match):
    args = {"a": np.zeros((2, 16, 16), np.float32), "b": np.zeros((2, 4, 16), np.float32)}
    args.update(kwargs)
    a, b = args.pop("a"), args.pop("b")
    with pytest.raises((ValueError, TypeError), match=match):
        dlcpu.brgemm(a, b, **args)
