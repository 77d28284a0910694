"""dlcpu.matmul (plain GEMM on the BRGEMM) against float64 NumPy."""
import numpy as np
import pytest
from conftest import ISAS, assert_close, max_threads

import dlcpu
from dlcpu import _reference as ref


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (13, 17, 31), (14, 16, 16), (29, 600, 33), (100, 40, 70)])
def test_matmul(rng, isa, shape):
    m, k, n = shape
    x = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    y = rng.uniform(-1, 1, (k, n)).astype(np.float32)
    assert_close(dlcpu.matmul(x, y, isa=isa), ref.matmul(x, y))


def test_matmul_threads_bitwise(rng):
    x = rng.uniform(-1, 1, (97, 530)).astype(np.float32)
    y = rng.uniform(-1, 1, (530, 300)).astype(np.float32)
    assert np.array_equal(dlcpu.matmul(x, y, n_threads=1), dlcpu.matmul(x, y, n_threads=max_threads()))


def test_matmul_errors():
    with pytest.raises(ValueError, match="inner dimensions differ"):
        dlcpu.matmul(np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32))
    with pytest.raises(TypeError, match="float32"):
        dlcpu.matmul(np.zeros((2, 3)), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="2-d"):
        dlcpu.matmul(np.zeros(3, np.float32), np.zeros((3, 2), np.float32))


def test_matmul_transposed_packed_and_bias(rng):
    from dlcpu.gemm import pack_matmul_operand

    xt = rng.uniform(-1, 1, (37, 29)).astype(np.float32)   # x = xt.T is (29, 37)
    y = rng.uniform(-1, 1, (37, 21)).astype(np.float32)
    b = rng.uniform(-1, 1, 21).astype(np.float32)
    want = xt.T.astype(np.float64) @ y + b
    assert_close(dlcpu.matmul(xt, y, bias=b, transpose_x=True), want)
    assert_close(dlcpu.matmul(np.ascontiguousarray(xt.T), pack_matmul_operand(y), bias=b), want)
    with pytest.raises(ValueError, match="bias must have shape"):
        dlcpu.matmul(xt, y, bias=b[:3], transpose_x=True)


@pytest.mark.parametrize("shape", [(1, 1), (16, 16), (17, 33), (45, 30), (64, 200)])
def test_pack_transposed_equals_pack_of_the_transpose(rng, shape):
    """pack_matmul_operand(yt, transpose=True) packs yt.T exactly as packing a transposed copy,
    padding included (partial 16-blocks on both sides)."""
    from dlcpu.gemm import pack_matmul_operand

    yt = rng.uniform(-1, 1, shape).astype(np.float32)          # y = yt.T is (shape[1], shape[0])
    direct = pack_matmul_operand(yt, transpose=True, n_threads=max_threads())
    copied = pack_matmul_operand(np.ascontiguousarray(yt.T), n_threads=1)
    assert direct.shape == copied.shape == shape[::-1]
    assert np.array_equal(direct.data, copied.data)
    x = rng.uniform(-1, 1, (5, shape[1])).astype(np.float32)
    assert_close(dlcpu.matmul(x, direct), x.astype(np.float64) @ yt.T)


def test_matmul_tuple_shares_packed_x(rng):
    """A tuple of right-hand operands: one product each, bitwise equal to separate calls."""
    from dlcpu.gemm import pack_matmul_operand

    xt = rng.uniform(-1, 1, (45, 30)).astype(np.float32)   # x = xt.T is (30, 45)
    y1 = rng.uniform(-1, 1, (45, 17)).astype(np.float32)
    y2 = rng.uniform(-1, 1, (45, 32)).astype(np.float32)
    p1, p2 = dlcpu.matmul(xt, (y1, pack_matmul_operand(y2)), transpose_x=True)
    assert p1.shape == (30, 17) and p2.shape == (30, 32)
    assert np.array_equal(p1, dlcpu.matmul(xt, y1, transpose_x=True))
    assert np.array_equal(p2, dlcpu.matmul(xt, y2, transpose_x=True))
    assert_close(p2, xt.T.astype(np.float64) @ y2)
    with pytest.raises(ValueError, match="inner dimensions differ"):
        dlcpu.matmul(xt, (y1, y2[:40]), transpose_x=True)
    with pytest.raises(ValueError, match="takes no bias"):
        dlcpu.matmul(xt, (y1,), bias=np.zeros(17, np.float32), transpose_x=True)
    with pytest.raises(ValueError, match="non-empty"):
        dlcpu.matmul(xt, (), transpose_x=True)
