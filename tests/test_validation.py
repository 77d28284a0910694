"""Bad input gets a clear error naming the rule and the shapes — never a crash or a wrong result.

Each case here is one the issue tracker found crashing, hanging or silently wrong; the broad
random sweep over every entry point is tests/test_fuzz.py.
"""
import time

import numpy as np
import pytest
from conftest import assert_close

import dlcpu
from dlcpu import _reference as ref
from dlcpu import gemm, norm, rnn


def test_relu_backward_mismatched_y_is_refused():
    dy = dlcpu.to_blocked(np.ones((4, 16, 32, 32), np.float32))
    y = dlcpu.to_blocked(np.ones((1, 16, 1, 1), np.float32))
    with pytest.raises(ValueError, match=r"relu_backward: dy has shape \(4, 16, 32, 32\).*\(1, 16, 1, 1\)"):
        norm.relu_backward(dy, y)
    with pytest.raises(TypeError, match="BlockedTensor"):
        norm.relu_backward(dy, np.ones((4, 16, 32, 32), np.float32))


def test_batchnorm_backward_needs_its_own_saved_state(rng):
    g = np.ones(16, np.float32)
    z = np.zeros(16, np.float32)
    xb = dlcpu.to_blocked(rng.standard_normal((2, 16, 3, 3)).astype(np.float32))
    y, saved = norm.batchnorm_forward(xb, g, z, z.copy(), g.copy(), True)
    with pytest.raises(TypeError, match="BatchNormSaved"):
        norm.batchnorm_backward(y, (1, 2, 3))
    with pytest.raises(ValueError, match="forward input was"):
        norm.batchnorm_backward(dlcpu.to_blocked(np.ones((3, 16, 3, 3), np.float32)), saved)
    with pytest.raises(TypeError, match="gamma must be float32"):
        norm.batchnorm_forward(xb, g.astype(np.float64), z, z.copy(), g.copy(), True)


@pytest.mark.parametrize("r", [1, 3])
def test_conv_out_aliasing_input_is_refused(rng, r):
    xb = dlcpu.to_blocked(rng.standard_normal((1, 16, 6, 6)).astype(np.float32))
    wb = dlcpu.block_weights(rng.standard_normal((16, 16, r, r)).astype(np.float32))
    with pytest.raises(ValueError, match="out= overlaps x"):
        dlcpu.conv2d(xb, wb, padding=r // 2, out=xb)
    out = dlcpu.conv2d(xb, wb, padding=r // 2)
    res = dlcpu.conv2d(xb, wb, padding=r // 2, out=out)
    assert res is out
    assert_close(out.numpy(), ref.conv2d_forward(xb.numpy(), wb.numpy(), padding=(r // 2, r // 2)))


@pytest.mark.parametrize("stride", [10**7, 10**9, (1, 10**9)])
def test_huge_strides_are_exact_and_quick(rng, stride):
    """A stride beyond the padded input leaves one output window: forward and backward must give
    the reference result at once (the backward's phase loop was O(stride^2), the forward asked
    for a 179 GiB tile)."""
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    t0 = time.perf_counter()
    y = dlcpu.conv2d(x, w, stride=stride, padding=1)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = dlcpu.conv2d_backward(dy, x, w, stride=stride, padding=1)
    assert time.perf_counter() - t0 < 10
    st = (stride, stride) if isinstance(stride, int) else stride
    assert_close(y, ref.conv2d_forward(x, w, stride=st, padding=(1, 1)))
    rdx, rdw, rdb = ref.conv2d_backward(dy, x, w, st, (1, 1))
    assert_close(dx, rdx)
    assert_close(dw, rdw)
    assert_close(db, rdb)


def test_absurd_padding_is_refused_with_the_size_needed():
    x = np.ones((1, 1, 4, 4), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"conv2d: this convolution .* would need [0-9.e+]+ GiB"):
        dlcpu.conv2d(x, w, padding=10**6)
    with pytest.raises(ValueError, match="would need"):
        dlcpu.matmul(np.ones((10**6, 1), np.float32), np.ones((1, 10**6), np.float32))


def test_packed_matrix_extent_is_checked():
    p = gemm.pack_matmul_operand(np.ones((20, 33), np.float32))
    with pytest.raises(ValueError, match="PackedMatrix: data must be"):
        gemm.PackedMatrix(p.data, (200, 33))
    with pytest.raises(ValueError, match="positive ints"):
        gemm.PackedMatrix(p.data, (20, -1))


def test_recurrent_backward_needs_a_cache_from_its_own_cell(rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    K = 5
    lw = [rng.standard_normal(s).astype(np.float32) for s in ((4 * K, 4), (4 * K, K))]
    gw = [rng.standard_normal(s).astype(np.float32) for s in ((3 * K, 4), (3 * K, K))]
    y, _, lcache = rnn.lstm_forward(x, *lw, train=True)
    _, _, gcache = rnn.gru_forward(x, *gw, train=True)
    with pytest.raises(TypeError, match="lstm_backward: cache must be what lstm_forward"):
        rnn.lstm_backward(y, gcache)
    with pytest.raises(TypeError, match="cache must be"):
        rnn.gru_backward(y, {"G": None})
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 3, 5\)"):
        rnn.lstm_backward(y[:, :2], lcache)


def test_blocked_tensor_refuses_non_arrays():
    with pytest.raises(TypeError, match="numpy array"):
        dlcpu.BlockedTensor([1, 2], (1, 1, 1, 1))
    with pytest.raises(ValueError, match="4 positive ints"):
        dlcpu.BlockedTensor(np.zeros((1, 1, 1, 1, 16), np.float32), (1, 1, 1, 0))
    with pytest.raises(ValueError, match="4 positive ints"):
        dlcpu.BlockedTensor(np.zeros((1, 1, 1, 1, 16), np.float32), (1, True, 1, 1))


def _blocked(rng, *shape):
    return dlcpu.to_blocked(rng.uniform(-1, 1, shape).astype(np.float32))


def test_tampered_max_pool_saved_state_is_refused(rng):
    """The backward re-checks the saved winners: out-of-range positions would be written
    outside dx, a wrong input shape would size dx wrongly (both segfaulted)."""
    from dlcpu import pool

    y, saved = pool.max_pool2d(_blocked(rng, 2, 16, 8, 8), 2)
    want = pool.max_pool2d_backward(y, saved).data
    saved._arg[0, 0, 0, 0, 0] = 10**8      # skipped by the kernel: only that lane's gradient is lost
    got = pool.max_pool2d_backward(y, saved).data
    assert np.count_nonzero(got != want) <= 1
    y, saved = pool.max_pool2d(_blocked(rng, 2, 16, 8, 8), 2)
    saved._x_shape = (2, 16, 2, 2)
    with pytest.raises(ValueError, match="not a consistent MaxPoolSaved"):
        pool.max_pool2d_backward(y, saved)


def test_tampered_batchnorm_saved_state_is_refused(rng):
    x = _blocked(rng, 1, 10, 2, 2)
    c = 16
    _, saved = norm.batchnorm_forward(x, np.ones(c, np.float32), np.zeros(c, np.float32), np.zeros(c, np.float32),
                                      np.ones(c, np.float32), True)
    big = dlcpu.BlockedTensor(np.zeros((1, 4000, 1, 1, 16), np.float32), (1, 64000, 1, 1))
    saved.x = big
    with pytest.raises(ValueError, match="not a consistent BatchNormSaved"):
        norm.batchnorm_backward(big, saved)


def test_backward_dy_must_match_the_logical_shape(rng):
    """Padded data shapes agree for C = 10 and 16, so the logical shapes must be compared."""
    from dlcpu import pool

    _, saved = pool.max_pool2d(_blocked(rng, 2, 16, 8, 8), 2)
    with pytest.raises(ValueError, match="dy has shape"):
        pool.max_pool2d_backward(_blocked(rng, 2, 10, 4, 4), saved)
    c = 16
    _, saved = norm.batchnorm_forward(_blocked(rng, 2, 10, 3, 3), np.ones(c, np.float32), np.zeros(c, np.float32),
                                      np.zeros(c, np.float32), np.ones(c, np.float32), True)
    with pytest.raises(ValueError, match="dy has shape"):
        norm.batchnorm_backward(_blocked(rng, 2, 16, 3, 3), saved)
    with pytest.raises(ValueError, match="dy has shape"):
        norm.relu_backward(_blocked(rng, 2, 16, 3, 3), _blocked(rng, 2, 10, 3, 3))


def test_batchnorm_flags_and_eps_are_checked(rng):
    c = 16
    args = (_blocked(rng, 1, 16, 2, 2), np.ones(c, np.float32), np.zeros(c, np.float32), np.zeros(c, np.float32),
            np.ones(c, np.float32))
    with pytest.raises(TypeError, match="training must be True or False"):
        norm.batchnorm_forward(*args, "no")
    with pytest.raises(TypeError, match="relu must be True or False"):
        norm.batchnorm_forward(*args, True, relu="no")
    with pytest.raises(TypeError, match="eps must be a number"):
        norm.batchnorm_forward(*args, True, eps="a")
    with pytest.raises(ValueError, match="eps must be finite"):
        norm.batchnorm_forward(*args, True, eps=np.inf)


@pytest.mark.parametrize("kw", [{"stride": 10**12}, {"stride": (1, 2**70)}])
def test_pool_huge_strides_are_exact(rng, kw):
    """A stride beyond the padded extent pools one window per row/column, like stride = extent."""
    from dlcpu import pool

    x = _blocked(rng, 1, 16, 7, 9)
    want = pool.max_pool2d(x, 3, stride=(7 if kw["stride"] == 10**12 else 1, 9))[0].numpy()
    assert np.array_equal(pool.max_pool2d(x, 3, **kw)[0].numpy(), want)
    want = pool.avg_pool2d(x, 3, stride=(7 if kw["stride"] == 10**12 else 1, 9)).numpy()
    assert np.array_equal(pool.avg_pool2d(x, 3, **kw).numpy(), want)


def test_pool_kernel_area_beyond_int_range_is_refused(rng):
    from dlcpu import pool

    with pytest.raises(ValueError, match="area must be below 2"):
        pool.avg_pool2d(_blocked(rng, 1, 16, 2, 2), (2**16, 2**16), padding=(2**15, 2**15))


def test_blocked_tensors_of_other_dtypes_are_refused():
    with pytest.raises(TypeError, match="a fp32 weight holds float32 data, got float64"):
        dlcpu.BlockedTensor(np.zeros((1, 1, 1, 1, 16, 16), np.float64), (16, 16, 1, 1), "weight")
    with pytest.raises(TypeError, match="only float32"):
        dlcpu.unblock_weights(dlcpu.block_weights_bf16(np.ones((16, 16, 1, 1), np.float32)))


def test_tampered_recurrent_cache_is_refused(rng):
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    w = [rng.standard_normal(s).astype(np.float32) for s in ((4 * 5, 4), (4 * 5, 5))]
    y, _, cache = rnn.lstm_forward(x, *w, train=True)
    cache["G"] = cache["G"][:1].copy()
    with pytest.raises(ValueError, match="not a consistent RecurrentCache"):
        rnn.lstm_backward(y, cache)
    y, _, cache = rnn.lstm_forward(x, *w, train=True)
    cache["T"] = 300
    with pytest.raises(ValueError, match="not a consistent RecurrentCache"):
        rnn.lstm_backward(y, cache)
    y, _, cache = rnn.lstm_forward(x, *w, train=True)
    cache["n_threads"] = 10**9
    with pytest.raises(ValueError, match="between 1 and 1024"):
        rnn.lstm_backward(y, cache)
