"""Pooling and batch normalization kernels against float64 twins, PyTorch and thread counts."""
import numpy as np
import pytest
from conftest import ISAS, assert_close, max_threads, needs_torch

import dlcpu
from dlcpu import _reference as ref
from dlcpu import norm, pool

POOLS = [  # n, c, h, w, kernel, stride, padding
    (2, 20, 9, 7, (3, 3), (2, 2), (1, 1)),
    (1, 16, 8, 8, (2, 2), (2, 2), (0, 0)),
    (3, 3, 5, 6, (3, 2), (1, 2), (1, 1)),
    (1, 33, 4, 4, (4, 4), (4, 4), (2, 0)),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", POOLS, ids=str)
def test_max_pool(monkeypatch, rng, isa, case):
    monkeypatch.setenv("DLCPU_ISA", isa)
    n, c, h, w, k, s, p = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    y, arg = pool.max_pool2d(dlcpu.to_blocked(x), k, s, p)
    assert_close(y.numpy(), ref.max_pool2d(x, k, s, p))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = pool.max_pool2d_backward(dlcpu.to_blocked(dy), arg)
    assert_close(dx.numpy(), ref.max_pool2d_backward(dy, x, k, s, p))
    assert not dx.data[:, -1, :, :, (c - 1) % 16 + 1:].any() if c % 16 else True


@pytest.mark.parametrize("case", POOLS, ids=str)
@pytest.mark.parametrize("bits", [8, 7])
def test_max_pool_of_u8_codes(monkeypatch, rng, case, bits):
    """u8 codes (a quantized model's) pool to the codes of the pooled values, exactly: the max
    code of each window, with the input's scale and zero point, at 1 and all threads; the
    padded channels keep the zero point; no backward."""
    n, c, h, w, k, s, p = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    xq = dlcpu.quantized.to_int8_blocked(x, bits=bits)
    want = ref.max_pool2d(dlcpu.layout.from_blocked(dlcpu.layout.BlockedTensor(xq.data.astype(np.float32), x.shape)),
                          k, s, p)
    for threads in ("1", str(max_threads())):
        monkeypatch.setenv("DLCPU_NUM_THREADS", threads)
        y, saved = pool.max_pool2d(xq, k, s, p)
        assert saved is None and y.precision == "int8" and y.scale == xq.scale
        codes = dlcpu.layout.from_blocked(dlcpu.layout.BlockedTensor(y.data.astype(np.float32), y.shape))
        assert np.array_equal(codes, want)
        assert np.array_equal(y.numpy(), ref.max_pool2d(xq.numpy(), k, s, p))
        if c % 16:
            assert (y.data[:, -1, :, :, c % 16:] == xq.scale[1]).all()
    with pytest.raises(TypeError, match="MaxPoolSaved"):
        pool.max_pool2d_backward(dlcpu.to_blocked(np.zeros(y.shape, np.float32)), saved)


@pytest.mark.parametrize("case", POOLS, ids=str)
def test_avg_pool(rng, case):
    n, c, h, w, k, s, p = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    y = pool.avg_pool2d(dlcpu.to_blocked(x), k, s, p)
    assert_close(y.numpy(), ref.avg_pool2d(x, k, s, p))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = pool.avg_pool2d_backward(dlcpu.to_blocked(dy), x.shape, k, s, p)
    assert_close(dx.numpy(), ref.avg_pool2d_backward(dy, x.shape, k, s, p))


@needs_torch
def test_pools_against_torch(rng):
    import torch

    x = rng.standard_normal((2, 20, 9, 7)).astype(np.float32)
    xb = dlcpu.to_blocked(x)
    assert np.array_equal(pool.max_pool2d(xb, 3, 2, 1)[0].numpy(), torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1).numpy())
    assert_close(pool.avg_pool2d(xb, 3, 2, 1).numpy(), torch.nn.functional.avg_pool2d(torch.from_numpy(x), 3, 2, 1).numpy())


@pytest.mark.parametrize("isa", ISAS)
def test_max_pool_nan_propagates_and_ties_keep_the_first(monkeypatch, isa):
    """The first NaN of a window wins and stays (as PyTorch); equal values route the gradient to
    the first tap in row-major window order; every ISA path."""
    monkeypatch.setenv("DLCPU_ISA", isa)
    x = np.zeros((1, 16, 2, 2), np.float32)
    x[0, 0, 1, 0] = np.nan
    x[0, 1, 0, 1] = np.nan
    x[0, 1, 1, 1] = 5.0          # a larger value after a NaN does not replace it
    x[0, 2] = [[1.0, 3.0], [3.0, 2.0]]   # a tie: the first 3.0 wins
    x[0, 3] = [[-np.inf, -np.inf], [-np.inf, -np.inf]]
    y, saved = pool.max_pool2d(dlcpu.to_blocked(x), 2)
    out = y.numpy()[0, :, 0, 0]
    assert np.isnan(out[0]) and np.isnan(out[1]) and out[2] == 3.0 and out[3] == -np.inf
    dx = pool.max_pool2d_backward(dlcpu.to_blocked(np.ones((1, 16, 1, 1), np.float32)), saved).numpy()[0]
    assert dx[2, 0, 1] == 1.0 and dx[2, 1, 0] == 0.0 and dx[3, 0, 0] == 1.0 and dx[1, 0, 1] == 1.0


def test_pool_errors():
    xb = dlcpu.to_blocked(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"padding must be in \[0, kernel/2\]"):
        pool.max_pool2d(xb, 2, padding=2)
    with pytest.raises(ValueError, match="output size would be <= 0"):
        pool.avg_pool2d(xb, 5)
    with pytest.raises(TypeError, match="BlockedTensor"):
        pool.max_pool2d(np.zeros((1, 2, 4, 4), np.float32), 2)


@pytest.mark.parametrize("shape", [(3, 20, 5, 4), (2, 16, 1, 1), (5, 33, 3, 7), (1, 1, 2, 2)])
@pytest.mark.parametrize("threads", [1, None])
def test_global_avg_pool(rng, shape, threads):
    """Against the float64 twin, at and around block boundaries, 1 and all threads; the padding
    lanes of dx stay 0 (a later layer sums over them)."""
    x = rng.standard_normal(shape).astype(np.float32)
    y = pool.global_avg_pool(dlcpu.to_blocked(x), n_threads=threads)
    assert y.shape == shape[:2] and y.dtype == np.float32
    assert_close(y, ref.global_avg_pool(x))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = pool.global_avg_pool_backward(dy, shape, n_threads=threads)
    assert_close(dx.numpy(), ref.global_avg_pool_backward(dy, shape))
    n, cb, h, w, _ = dx.data.shape
    channels_last = dx.data.transpose(0, 2, 3, 1, 4).reshape(n, h, w, cb * 16)
    assert np.all(channels_last[..., shape[1]:] == 0)


def test_blocked_data_reshaped_after_the_fact_is_refused():
    """BlockedTensor is frozen but its array is not: a re-viewed data array must not reach a
    kernel that indexes it by the logical shape (global_avg_pool wrote past its output)."""
    xb = dlcpu.to_blocked(np.ones((2, 16, 4, 4), np.float32))
    xb.data.shape = (16, 1, 1, 2, 16)
    for call in (lambda: pool.global_avg_pool(xb), lambda: pool.max_pool2d(xb, 2),
                 lambda: norm.batchnorm_forward(xb, *bn_args(16), True)):
        with pytest.raises(ValueError, match="was its data reshaped"):
            call()


@needs_torch
def test_global_avg_pool_matches_torch(rng):
    import torch
    x = rng.standard_normal((4, 40, 7, 7)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, 1).flatten(1)
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    assert_close(pool.global_avg_pool(dlcpu.to_blocked(x)), yt.detach().numpy())
    assert_close(pool.global_avg_pool_backward(dy, x.shape).numpy(), xt.grad.numpy())


def bn_args(c):
    cb = -(-c // 16) * 16
    gamma = np.zeros(cb, np.float32)
    beta = np.zeros(cb, np.float32)
    gamma[:c] = np.linspace(0.5, 1.5, c)
    beta[:c] = np.linspace(-0.2, 0.3, c)
    return gamma, beta, np.zeros(cb, np.float32), np.ones(cb, np.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("c", [1, 16, 20, 33])
@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_training(monkeypatch, rng, isa, c, relu):
    monkeypatch.setenv("DLCPU_ISA", isa)
    x = (rng.standard_normal((4, c, 5, 6)) * 3 + 1).astype(np.float32)
    gamma, beta, rm, rv = bn_args(c)
    y, saved = norm.batchnorm_forward(dlcpu.to_blocked(x), gamma, beta, rm, rv, True, relu=relu)
    y_ref, mean, var = ref.batchnorm_forward(x, gamma[:c], beta[:c])
    if relu:
        y_ref = np.maximum(y_ref, 0)
    assert_close(y.numpy(), y_ref)
    assert not y.data[:, -1, :, :, (c - 1) % 16 + 1:].any() if c % 16 else True
    assert_close(rm[:c], 0.1 * mean)
    assert_close(rv[:c], 0.9 + 0.1 * var * (4 * 30) / (4 * 30 - 1))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, dgamma, dbeta = norm.batchnorm_backward(dlcpu.to_blocked(dy), saved)
    dyr = dy * (y_ref > 0) if relu else dy
    dx_ref, dg_ref, db_ref = ref.batchnorm_backward(dyr, x, gamma[:c])
    assert_close(dx.numpy(), dx_ref)
    assert_close(dgamma[:c], dg_ref)
    assert_close(dbeta[:c], db_ref)
    assert not dgamma[c:].any() and not dbeta[c:].any()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("c", [1, 16, 20, 33])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_with_residual(monkeypatch, rng, isa, c, relu, training):
    """relu(bn(x) + r) in one pass (a ResNet block's end) against the float64 twin; its backward
    takes the gradient of the sum (relu_backward(dy, y)), which is also r's gradient."""
    monkeypatch.setenv("DLCPU_ISA", isa)
    x = (rng.standard_normal((3, c, 4, 5)) * 3 + 1).astype(np.float32)
    r = rng.standard_normal(x.shape).astype(np.float32)
    gamma, beta, rm, rv = bn_args(c)
    y, saved = norm.batchnorm_forward(dlcpu.to_blocked(x), gamma, beta, rm, rv, training, relu=relu,
                                      residual=dlcpu.to_blocked(r))
    if training:
        bn_ref, _, _ = ref.batchnorm_forward(x, gamma[:c], beta[:c])
    else:
        bn_ref = (x.astype(np.float64) * (gamma[:c] / np.sqrt(1.0 + 1e-5))[None, :, None, None]
                  + beta[:c][None, :, None, None])
    s_ref = bn_ref + r
    y_ref = np.maximum(s_ref, 0) if relu else s_ref
    assert_close(y.numpy(), y_ref)
    assert not y.data[:, -1, :, :, (c - 1) % 16 + 1:].any() if c % 16 else True
    if not training:
        return
    dy = rng.standard_normal(x.shape).astype(np.float32)
    g = norm.relu_backward(dlcpu.to_blocked(dy), y) if relu else dlcpu.to_blocked(dy)
    dx, dgamma, dbeta = norm.batchnorm_backward(g, saved)
    dx_ref, dg_ref, db_ref = ref.batchnorm_backward(dy * (s_ref > 0) if relu else dy, x, gamma[:c])
    assert_close(dx.numpy(), dx_ref)
    assert_close(dgamma[:c], dg_ref)
    assert_close(dbeta[:c], db_ref)


def test_batchnorm_residual_must_match(rng):
    x = dlcpu.to_blocked(rng.standard_normal((2, 16, 3, 3)).astype(np.float32))
    gamma, beta, rm, rv = bn_args(16)
    with pytest.raises(ValueError, match=r"residual has shape \(2, 16, 3, 4\) but x has \(2, 16, 3, 3\)"):
        norm.batchnorm_forward(x, gamma, beta, rm, rv, True,
                               residual=dlcpu.to_blocked(np.zeros((2, 16, 3, 4), np.float32)))
    with pytest.raises(TypeError, match="residual must be an activation BlockedTensor"):
        norm.batchnorm_forward(x, gamma, beta, rm, rv, True, residual=np.zeros((2, 16, 3, 3), np.float32))


def test_batchnorm_eval_uses_running_stats(rng):
    x = rng.standard_normal((2, 16, 3, 3)).astype(np.float32)
    gamma, beta, rm, rv = bn_args(16)
    rm[:] = 0.5
    rv[:] = 4.0
    y, saved = norm.batchnorm_forward(dlcpu.to_blocked(x), gamma, beta, rm, rv, False)
    assert_close(y.numpy(), (x - 0.5) / np.sqrt(4.0 + 1e-5) * gamma[None, :, None, None] + beta[None, :, None, None])
    assert (rm == 0.5).all()
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, _, _ = norm.batchnorm_backward(dlcpu.to_blocked(dy), saved)
    assert_close(dx.numpy(), dy * (gamma / np.sqrt(4.0 + 1e-5))[None, :, None, None])


@needs_torch
def test_batchnorm_against_torch(rng):
    import torch

    x = rng.standard_normal((4, 20, 5, 6)).astype(np.float32)
    gamma, beta, rm, rv = bn_args(20)
    y, saved = norm.batchnorm_forward(dlcpu.to_blocked(x), gamma, beta, rm, rv, True)
    bn = torch.nn.BatchNorm2d(20)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(gamma[:20]))
        bn.bias.copy_(torch.from_numpy(beta[:20]))
    xt = torch.from_numpy(x).requires_grad_()
    yt = bn(xt)
    assert_close(y.numpy(), yt.detach().numpy())
    assert_close(rv[:20], bn.running_var.numpy())
    dy = rng.standard_normal(x.shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    dx, dgamma, _ = norm.batchnorm_backward(dlcpu.to_blocked(dy), saved)
    assert_close(dx.numpy(), xt.grad.numpy())
    assert_close(dgamma[:20], bn.weight.grad.numpy())


def test_batchnorm_statistics_update_as_numpy_does(monkeypatch, rng):
    """The per-channel step of the forward (running statistics, invstd, scale, shift) runs in
    one kernel call; its float32/float64 arithmetic is the NumPy sequence it replaced, bit for
    bit.  On the scalar path (separate multiplies and adds, as NumPy) the statistics are sums in
    the kernel's order (image, then pixel; float64), so everything can be compared exactly."""
    monkeypatch.setenv("DLCPU_ISA", "scalar")
    n, c, h, w = 3, 20, 4, 5
    x = (rng.standard_normal((n, c, h, w)) * 2 + 0.5).astype(np.float32)
    gamma, beta, rm, rv = bn_args(c)
    rm[:c] = rng.standard_normal(c).astype(np.float32)
    rv[:c] = rng.uniform(0.5, 2, c).astype(np.float32)
    want_rm, want_rv = rm.copy(), rv.copy()
    y, saved = norm.batchnorm_forward(dlcpu.to_blocked(x), gamma, beta, rm, rv, True, momentum=0.3, eps=1e-3)

    def kernel_order_sum(v):                    # per channel, sequential over (n, h, w)
        return np.cumsum(v.transpose(1, 0, 2, 3).reshape(c, -1), axis=1)[:, -1]

    m = n * h * w
    mean, var = np.zeros(gamma.shape), np.zeros(gamma.shape)      # padding lanes: 0 and 0
    mean[:c] = kernel_order_sum(x.astype(np.float64)) / m
    var[:c] = kernel_order_sum((x.astype(np.float64) - mean[None, :c, None, None]) ** 2) / m
    want_rm *= np.float32(0.7)
    want_rm += (0.3 * mean).astype(np.float32)
    want_rv *= np.float32(0.7)
    want_rv += (0.3 * (var * (m / (m - 1)))).astype(np.float32)
    assert np.array_equal(rm, want_rm) and np.array_equal(rv, want_rv)
    mean32, var32 = mean.astype(np.float32), var.astype(np.float32)

    def coefficients(mu, variance, eps):
        invstd = (1.0 / np.sqrt(variance.astype(np.float64) + eps)).astype(np.float32)
        scale = gamma * invstd
        return invstd, scale, beta - mu * scale

    invstd, scale, shift = coefficients(mean32, var32, 1e-3)
    assert np.array_equal(saved.mean.reshape(-1), mean32) and np.array_equal(saved.invstd.reshape(-1), invstd)
    assert np.array_equal(y.numpy(), x * scale[:c, None, None] + shift[:c, None, None])
    # eval mode: the same coefficients from the running statistics
    y, saved = norm.batchnorm_forward(dlcpu.to_blocked(x), gamma, beta, rm, rv, False)
    invstd, scale, shift = coefficients(rm, rv, 1e-5)
    assert np.array_equal(saved.invstd.reshape(-1), invstd) and np.array_equal(saved.mean.reshape(-1), rm)
    assert np.array_equal(y.numpy(), x * scale[:c, None, None] + shift[:c, None, None])


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_running_statistics_strided_or_read_only(rng, training):
    """Running statistics that are strided views are updated in place like contiguous ones;
    read-only ones work in eval mode (nothing is written) and are refused in training."""
    x = dlcpu.to_blocked(rng.standard_normal((2, 20, 3, 3)).astype(np.float32))
    gamma, beta, rm, rv = bn_args(20)
    srm, srv = np.repeat(rm, 2)[::2], np.repeat(rv, 2)[::2]
    y, _ = norm.batchnorm_forward(x, gamma, beta, rm, rv, training)
    ys, _ = norm.batchnorm_forward(x, gamma, beta, srm, srv, training)
    assert np.array_equal(y.data, ys.data)
    assert np.array_equal(srm, rm) and np.array_equal(srv, rv)
    assert training == bool(rm.any())
    frozen_rm, frozen_rv = rm.copy(), rv.copy()
    frozen_rm.flags.writeable = frozen_rv.flags.writeable = False
    if training:
        with pytest.raises(ValueError, match="running_mean is updated in place in training mode"):
            norm.batchnorm_forward(x, gamma, beta, frozen_rm, frozen_rv, True)
    else:
        yf, _ = norm.batchnorm_forward(x, gamma, beta, frozen_rm, frozen_rv, False)
        assert np.array_equal(yf.data, y.data)


@pytest.mark.parametrize("isa", ISAS)
def test_batchnorm_threads_bitwise(monkeypatch, rng, isa):
    monkeypatch.setenv("DLCPU_ISA", isa)
    x = rng.standard_normal((8, 40, 6, 6)).astype(np.float32)
    dy = dlcpu.to_blocked(rng.standard_normal(x.shape).astype(np.float32))
    outs = []
    for t in (1, max_threads(), 3):
        gamma, beta, rm, rv = bn_args(40)
        y, saved = norm.batchnorm_forward(dlcpu.to_blocked(x), gamma, beta, rm, rv, True, relu=True, n_threads=t)
        outs.append((y.data, *norm.batchnorm_backward(dy, saved, n_threads=t)))
    for other in outs[1:]:
        assert np.array_equal(outs[0][0], other[0]) and np.array_equal(outs[0][1].data, other[1].data)
        assert np.array_equal(outs[0][2], other[2])


@pytest.mark.parametrize("isa", ISAS)
def test_relu_backward(monkeypatch, rng, isa):
    monkeypatch.setenv("DLCPU_ISA", isa)
    y = dlcpu.to_blocked(np.maximum(rng.standard_normal((2, 17, 3, 3)), 0).astype(np.float32))
    y.data[0, 0, 0, 0, :3] = [np.nan, -0.0, np.inf]
    dy = dlcpu.to_blocked(rng.standard_normal((2, 17, 3, 3)).astype(np.float32))
    assert np.array_equal(norm.relu_backward(dy, y).data, np.where(y.data > 0, dy.data, 0))


def test_pool_backward_mismatches_refused():
    """The issue's crash: max_pool2d on (8, 16, 64, 64), backward with another shape's state."""
    xb = dlcpu.to_blocked(np.zeros((8, 16, 64, 64), np.float32))
    y, saved = pool.max_pool2d(xb, 2)
    small = dlcpu.to_blocked(np.zeros((8, 16, 2, 2), np.float32))
    with pytest.raises(ValueError, match="dy has shape"):
        pool.max_pool2d_backward(small, saved)
    with pytest.raises(TypeError, match="MaxPoolSaved"):
        pool.max_pool2d_backward(y, np.zeros(y.data.shape, np.int32))
    with pytest.raises(ValueError, match="x_shape"):
        pool.avg_pool2d_backward(y, (8, 16, 64), 2)
    with pytest.raises(ValueError, match="cannot come from an input"):
        pool.avg_pool2d_backward(y, (8, 32, 64, 64), 2)
    with pytest.raises(ValueError, match="shape"):
        pool.global_avg_pool_backward(np.zeros((8, 15), np.float32), (8, 16, 4, 4))
    with pytest.raises(TypeError, match="float32"):
        pool.global_avg_pool_backward(np.zeros((8, 16)), (8, 16, 4, 4))


def test_batchnorm_training_needs_two_values_per_channel():
    gamma, beta, rm, rv = bn_args(16)
    x = dlcpu.to_blocked(np.ones((1, 16, 1, 1), np.float32))
    with pytest.raises(ValueError, match=r"more than one value per channel.*\(1, 16, 1, 1\)"):
        norm.batchnorm_forward(x, gamma, beta, rm, rv, True)
    y, _ = norm.batchnorm_forward(x, gamma, beta, rm, rv, False)   # eval mode is fine
    assert y.shape == (1, 16, 1, 1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("c", [1, 16, 33])
@pytest.mark.parametrize("relu,residual", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_bf16_outputs_are_the_rounded_fp32_ones(monkeypatch, rng, isa, c, relu, residual, training):
    """out_precision='bf16': y and dx are the patterns of rounding the fp32 results (the
    conversion dlcpu.precision makes), on every ISA path and thread count; the backward of a
    fused ReLU masks by the bf16 output with the same result; the statistics do not change."""
    monkeypatch.setenv("DLCPU_ISA", isa)
    x = dlcpu.to_blocked((rng.standard_normal((3, c, 5, 7)) * 2 + 0.5).astype(np.float32))
    x.data[0, 0, 0, 0, 0] = np.nan      # IEEE propagation through both paths
    r = dlcpu.to_blocked(rng.standard_normal((3, c, 5, 7)).astype(np.float32)) if residual else None
    dy = dlcpu.to_blocked(rng.standard_normal((3, c, 5, 7)).astype(np.float32))
    for threads in (1, max_threads()):
        out = {}
        for fmt in ("fp32", "bf16"):
            gamma, beta, rm, rv = bn_args(c)
            y, saved = norm.batchnorm_forward(x, gamma, beta, rm, rv, training, relu=relu, residual=r,
                                              out_precision=fmt, n_threads=threads)
            assert y.precision == fmt and y.shape == x.shape
            # the gradient the fused-ReLU block end hands back: dy masked by its output
            g = norm.relu_backward(dy, y, n_threads=threads) if residual else dy
            out[fmt] = (y, rm, rv, norm.batchnorm_backward(g, saved, n_threads=threads),
                        norm.batchnorm_backward(g, saved, out_precision="bf16", n_threads=threads))
        (y32, rm32, rv32, b32, b32h), (y16, rm16, rv16, b16, b16h) = out["fp32"], out["bf16"]
        assert np.array_equal(y16.data, dlcpu.precision.fp32_to_bf16_bits(y32.data))
        assert np.array_equal(rm32, rm16, equal_nan=True) and np.array_equal(rv32, rv16, equal_nan=True)
        for grads in (b16, b32h, b16h):     # the mask by the bf16 output, the bf16 dx
            dx = grads[0] if grads[0].precision == "fp32" else None
            if dx is not None:
                assert np.array_equal(dx.data, b32[0].data, equal_nan=True)
            else:
                assert np.array_equal(grads[0].data, dlcpu.precision.fp32_to_bf16_bits(b32[0].data))
            assert np.array_equal(grads[1], b32[1], equal_nan=True)
            assert np.array_equal(grads[2], b32[2], equal_nan=True)


def test_batchnorm_bf16_relu_mask_drops_outputs_that_round_to_zero():
    """The documented difference of masking by the bf16 output: an fp32 denormal output is a
    bf16 zero (the conversion's denormal rule), so the ReLU's backward stops its gradient."""
    c = 16
    x = dlcpu.to_blocked(np.full((1, c, 2, 2), 1e-39, np.float32))    # an fp32 denormal
    gamma, beta, rm, rv = np.ones(c, np.float32), np.zeros(c, np.float32), np.zeros(c, np.float32), np.ones(c, np.float32)
    # eval mode with variance 1 and eps far below its ulp: scale 1, shift 0, y = x exactly
    y32, s32 = norm.batchnorm_forward(x, gamma, beta, rm, rv, False, relu=True, eps=1e-30)
    y16, s16 = norm.batchnorm_forward(x, gamma, beta, rm, rv, False, relu=True, eps=1e-30, out_precision="bf16")
    assert (y32.data[:, :, :, :, :c] > 0).all() and not y16.data.any()
    dy = dlcpu.to_blocked(np.ones((1, c, 2, 2), np.float32))
    assert (norm.batchnorm_backward(dy, s32)[0].data == 1).all()
    assert not norm.batchnorm_backward(dy, s16)[0].data.any()


def test_batchnorm_out_precision_errors(rng):
    x = dlcpu.to_blocked(rng.standard_normal((2, 16, 3, 3)).astype(np.float32))
    gamma, beta, rm, rv = bn_args(16)
    for bad in ("fp16", "int8", None, 16):
        with pytest.raises(ValueError, match="out_precision must be one of fp32, bf16"):
            norm.batchnorm_forward(x, gamma, beta, rm, rv, True, out_precision=bad)
    y, saved = norm.batchnorm_forward(x, gamma, beta, rm, rv, True, relu=True, out_precision="bf16")
    with pytest.raises(ValueError, match="out_precision must be one of fp32, bf16"):
        norm.batchnorm_backward(x, saved, out_precision="dfp16")
    with pytest.raises(TypeError, match="dy must be float32"):     # a bf16 gradient is not read
        norm.batchnorm_backward(y, saved)


def test_relu_backward_checks_a_bf16_output_and_reset_dtypes(rng):
    """A bf16 y is checked as bf16 (its data shape), then widened; an array whose dtype was re-set
    after its tensor was made is refused, not reinterpreted."""
    y = dlcpu.to_bf16_blocked(np.maximum(rng.standard_normal((2, 17, 3, 3)), 0).astype(np.float32))
    dy = dlcpu.to_blocked(rng.standard_normal((2, 17, 3, 3)).astype(np.float32))
    widened = dlcpu.BlockedTensor(dlcpu.precision.bf16_bits_to_fp32(y.data), y.shape)
    assert np.array_equal(norm.relu_backward(dy, y).data, norm.relu_backward(dy, widened).data)
    y.data.shape = (2, 2, 9, 1, 16)
    with pytest.raises(ValueError, match="relu_backward: y's data has shape"):
        norm.relu_backward(dy, y)
    bad = dlcpu.to_blocked(np.ones((2, 17, 3, 3), np.float32))
    bad.data.dtype = np.int32
    with pytest.raises(TypeError, match="relu_backward: y must be float32, got int32"):
        norm.relu_backward(dy, bad)
