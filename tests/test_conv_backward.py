"""conv2d_backward (bwd-data, weight update, bias) against the float64 twin, finite differences,
PyTorch, every ISA and thread counts."""
import numpy as np
import pytest
from conftest import ISAS, assert_close, max_threads, needs_torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import dlcpu
from dlcpu import _reference as ref


def problem(rng, n, c, k, h, w, r, s, stride, pad):
    x = rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)
    wt = rng.uniform(-1, 1, (k, c, r, s)).astype(np.float32)
    y = dlcpu.conv2d(x, wt, stride=stride, padding=pad)
    dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    return x, wt, dy


def pairs(v):
    return v if isinstance(v, tuple) else (v, v)


def check_against_reference(g, x, wt, dy, stride, pad):
    dx, dw, db = ref.conv2d_backward(dy, x, wt, pairs(stride), pairs(pad))
    assert_close(g.dx, dx)
    assert_close(g.dw, dw)
    assert_close(g.db, db)


CASES = [
    # n, c, k, h, w, r, s, stride, padding
    (2, 3, 5, 9, 9, 3, 3, 1, 1),
    (1, 17, 33, 10, 7, 3, 2, 2, 0),
    (2, 33, 15, 11, 13, 3, 3, 3, 3),
    (1, 16, 32, 14, 14, 3, 3, 2, 1),     # strided 3x3 (ResNet downsampling)
    (1, 32, 48, 14, 14, 1, 1, 2, 0),     # strided 1x1: odd dx positions get no gradient
    (1, 3, 32, 23, 23, 7, 7, 2, 3),      # first layer
    (2, 20, 20, 8, 8, 1, 1, 1, 1),       # 1x1 with padding: the sub-problem crops
    (2, 16, 16, 8, 8, 1, 1, 1, 0),       # flat 1x1
    (1, 5, 7, 6, 9, 2, 4, (2, 1), (1, 2)),
    (1, 4, 4, 5, 5, 5, 5, 1, 0),         # filter as large as the input
    (1, 2, 3, 1, 12, 1, 3, (1, 3), 0),   # one-row image
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_against_reference(rng, isa, case):
    n, c, k, h, w, r, s, stride, pad = case
    x, wt, dy = problem(rng, n, c, k, h, w, r, s, stride, pad)
    g = dlcpu.conv2d_backward(dy, x, wt, stride, pad, isa=isa)
    check_against_reference(g, x, wt, dy, stride, pad)


@pytest.mark.parametrize("c", [1, 3, 15, 16, 17, 33])
@pytest.mark.parametrize("k", [1, 16, 17, 33])
def test_channel_block_boundaries(rng, c, k):
    x, wt, dy = problem(rng, 2, c, k, 6, 7, 3, 3, 1, 1)
    check_against_reference(dlcpu.conv2d_backward(dy, x, wt, 1, 1), x, wt, dy, 1, 1)


@pytest.mark.parametrize("case", CASES[:6], ids=str)
def test_finite_differences(rng, case):
    """L = <conv2d(x, w) + b, dy> is linear in x, w and b, so a central difference along a
    random direction equals the directional derivative up to float32 rounding."""
    n, c, k, h, w, r, s, stride, pad = case
    x, wt, dy = problem(rng, n, c, k, h, w, r, s, stride, pad)
    b = rng.uniform(-1, 1, k).astype(np.float32)
    g = dlcpu.conv2d_backward(dy, x, wt, stride, pad)

    def loss(x_, w_, b_):
        y = dlcpu.conv2d(x_, w_, b_, stride=stride, padding=pad)
        return float(np.sum(y.astype(np.float64) * dy))

    eps = 0.25
    for grad, which in ((g.dx, 0), (g.dw, 1), (g.db, 2)):
        args = [x, wt, b]
        v = rng.standard_normal(args[which].shape).astype(np.float32)
        plus, minus = list(args), list(args)
        plus[which] = (args[which] + eps * v).astype(np.float32)
        minus[which] = (args[which] - eps * v).astype(np.float32)
        fd = (loss(*plus) - loss(*minus)) / (2 * eps)
        analytic = float(np.sum(grad.astype(np.float64) * v))
        assert abs(fd - analytic) <= 1e-4 * (abs(analytic) + np.abs(grad).sum() * 1e-2), (which, fd, analytic)


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5]], ids=str)
def test_thread_count_bitwise(rng, case):
    n, c, k, h, w, r, s, stride, pad = case
    x, wt, dy = problem(rng, n, c, k, h, w, r, s, stride, pad)
    g1 = dlcpu.conv2d_backward(dy, x, wt, stride, pad, n_threads=1)
    gn = dlcpu.conv2d_backward(dy, x, wt, stride, pad, n_threads=max_threads())
    g3 = dlcpu.conv2d_backward(dy, x, wt, stride, pad, n_threads=3)
    for a, b, c3 in zip(g1, gn, g3):
        assert np.array_equal(a, b) and np.array_equal(a, c3)


def test_weight_grad_grouping_ignores_threads():
    """How each dW element's sum is grouped into calls must not depend on the thread count."""
    from dlcpu.conv import choose_weight_grad_blocking, conv_shape
    from dlcpu.workloads import resnet50_layers

    for layer in resnet50_layers():
        plans = [choose_weight_grad_blocking(layer.shape(4), "avx512", t) for t in (1, 2, 3, 16)]
        assert len({(p.rows_per_block, p.images_per_block, p.row_blocks, p.image_splits) for p in plans}) == 1, layer.name
    shape = conv_shape((2, 256, 14, 14), (256, 256, 3, 3), 1, 1)
    assert len({choose_weight_grad_blocking(shape, "avx512", t).rows_per_block for t in (1, 2, 5)}) == 1


def test_weight_grad_bitwise_on_budget_bound_shape(rng):
    x, wt, dy = problem(rng, 2, 256, 64, 14, 14, 3, 3, 1, 1)
    dws = [dlcpu.conv2d_backward(dy, x, wt, 1, 1, need="dw", n_threads=t).dw for t in (1, 2, 3)]
    assert np.array_equal(dws[0], dws[1]) and np.array_equal(dws[0], dws[2])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n, c, k, hw, stride", [(64, 16, 16, 8, 1), (9, 16, 16, 8, 1), (24, 3, 20, 9, 2),
                                                 (20, 16, 32, 6, 1)])
def test_weight_grad_image_ranges(rng, isa, n, c, k, hw, stride):
    """Few dW blocks (Kb*Cb < 4) split the images into ranges reduced separately and summed:
    against the float64 twin, added onto an existing gradient, and bitwise the same at 1, 2, 3
    threads (the ranges come from the shape).  9 images in blocks of 4 give uneven ranges."""
    from dlcpu.conv import choose_weight_grad_blocking, conv_shape

    shape = conv_shape((n, c, hw, hw), (k, c, 3, 3), stride, 1)
    plans = [choose_weight_grad_blocking(shape, isa, t) for t in (1, 2, 3)]
    assert len({p.image_splits for p in plans}) == 1 and plans[0].image_splits > 1, plans[0]
    x, wt, dy = problem(rng, n, c, k, hw, hw, 3, 3, stride, 1)
    _, dw_ref, _ = ref.conv2d_backward(dy, x, wt, (stride, stride), (1, 1))
    xb, wb, dyb = dlcpu.to_blocked(x), dlcpu.block_weights(wt), dlcpu.to_blocked(dy)
    start = dlcpu.block_weights(rng.uniform(-1, 1, wt.shape).astype(np.float32))
    grads = []
    for t in (1, 2, 3):
        grad = start.data.copy()
        dlcpu.conv2d_backward(dyb, xb, wb, stride, 1, need="dw", accumulate_dw=grad, n_threads=t, isa=isa)
        grads.append(grad)
    assert np.array_equal(grads[0], grads[1]) and np.array_equal(grads[0], grads[2])
    got = dlcpu.unblock_weights(dlcpu.BlockedTensor(grads[0], wb.shape, "weight")) - start.numpy()
    assert_close(got, dw_ref)
    if c % 16:
        padded = grads[0] - start.data
        assert not padded[:, -1, :, :, c % 16:, :].any(), "padded input channels of dW stay untouched"


def test_weight_grad_plan_refuses_bad_image_splits():
    from dlcpu.conv import WeightGradPlan, choose_weight_grad_blocking, conv_shape

    fields = choose_weight_grad_blocking(conv_shape((9, 16, 8, 8), (16, 16, 3, 3), 1, 1), "scalar", 2).as_dict()
    assert fields["images_per_block"] == 4 and fields["image_splits"] == 3      # 3 blocks of images
    for bad in (0, 4):
        with pytest.raises(ValueError, match="image_splits"):
            WeightGradPlan(**{**fields, "image_splits": bad})
    with pytest.raises(ValueError, match="images_per_block=0"):
        WeightGradPlan(**{**fields, "images_per_block": 0})


def test_stride_phase_scatter_refuses_a_phase_that_does_not_fit():
    """The strided backward-data pass writes each phase's result into dx with a Cython
    scatter; a phase that would land outside dx is refused before any write."""
    from dlcpu._ext import conv_direct

    dx = np.zeros((2, 1, 7, 7, 16), np.float32)
    part = np.ones((2, 1, 4, 4, 16), np.float32)
    conv_direct.scatter_stride_phase(part, dx, 0, 0, 2, 2, True, 1)     # rows 0, 2, 4, 6
    assert dx[:, :, ::2, ::2].all() and not dx[:, :, 1::2].any() and not dx[:, :, :, 1::2].any()
    for h0, w0, sh in ((1, 0, 2), (0, 1, 2), (0, 0, 3)):
        with pytest.raises(ValueError, match="does not fit dx"):
            conv_direct.scatter_stride_phase(part, dx, h0, w0, sh, 2, False, 1)
    with pytest.raises(ValueError, match="does not fit dx"):
        conv_direct.scatter_stride_phase(part[:1], dx, 0, 0, 2, 2, False, 1)


def test_blocked_path_and_need(rng):
    x, wt, dy = problem(rng, 2, 20, 24, 8, 9, 3, 3, 1, 1)
    xb, wb, dyb = dlcpu.to_blocked(x), dlcpu.block_weights(wt), dlcpu.to_blocked(dy)
    g = dlcpu.conv2d_backward(dyb, xb, wb, 1, 1)
    assert isinstance(g.dx, dlcpu.BlockedTensor) and isinstance(g.dw, dlcpu.BlockedTensor)
    assert not g.dx.data[:, 1, :, :, 4:].any(), "padded input channels of dx must stay zero"
    assert not g.dw.data[1, :, :, :, :, 8:].any() and not g.dw.data[:, 1, :, :, 4:, :].any()
    plain = dlcpu.conv2d_backward(dy, x, wt, 1, 1)
    assert np.array_equal(g.dx.numpy(), plain.dx) and np.array_equal(g.dw.numpy(), plain.dw)
    only_w = dlcpu.conv2d_backward(dy, x, wt, 1, 1, need=("dw",))
    assert only_w.dx is None and only_w.db is None and np.array_equal(only_w.dw, plain.dw)


def test_accumulate_dw_adds_in_place(rng):
    """accumulate_dw: dW is added by the kernels to the given blocked gradient (what Conv2d does
    with its .grad), padding untouched; bad targets are refused before any kernel runs."""
    x, wt, dy = problem(rng, 2, 20, 24, 8, 9, 3, 3, 1, 1)
    xb, wb, dyb = dlcpu.to_blocked(x), dlcpu.block_weights(wt), dlcpu.to_blocked(dy)
    plain = dlcpu.conv2d_backward(dyb, xb, wb, 1, 1, need=("dw",))
    start = dlcpu.block_weights(rng.standard_normal(wt.shape).astype(np.float32)).data
    acc = start.copy()
    got = dlcpu.conv2d_backward(dyb, xb, wb, 1, 1, need=("dw",), accumulate_dw=acc)
    assert got.dw.data is acc
    np.testing.assert_allclose(acc, start + plain.dw.data, rtol=1e-6, atol=1e-6)
    assert not acc[1, :, :, :, :, 8:].any() and not acc[:, 1, :, :, 4:, :].any()
    for bad in (acc[..., :8], acc.astype(np.float64), np.zeros((1, 2, 3, 3, 16, 16), np.float32)):
        with pytest.raises(ValueError, match="accumulate_dw must be a writeable C-contiguous float32 array of the "
                                             r"blocked weight shape \(2, 2, 3, 3, 16, 16\)"):
            dlcpu.conv2d_backward(dyb, xb, wb, 1, 1, accumulate_dw=bad)
    with pytest.raises(ValueError, match="accumulate_dw needs BlockedTensor inputs"):
        dlcpu.conv2d_backward(dy, x, wt, 1, 1, accumulate_dw=acc)
    frozen = acc.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="accumulate_dw must be a writeable.*it is read-only"):
        dlcpu.conv2d_backward(dyb, xb, wb, 1, 1, accumulate_dw=frozen)
    with pytest.raises(ValueError, match="it is dtype float64"):
        dlcpu.conv2d_backward(dyb, xb, wb, 1, 1, accumulate_dw=acc.astype(np.float64))


@needs_torch
@pytest.mark.parametrize("case", CASES, ids=str)
def test_against_torch(rng, case):
    import torch

    n, c, k, h, w, r, s, stride, pad = case
    x, wt, dy = problem(rng, n, c, k, h, w, r, s, stride, pad)
    g = dlcpu.conv2d_backward(dy, x, wt, stride, pad)
    tdy = torch.from_numpy(dy)
    assert_close(g.dx, torch.nn.grad.conv2d_input(x.shape, torch.from_numpy(wt), tdy, stride=stride, padding=pad).numpy())
    assert_close(g.dw, torch.nn.grad.conv2d_weight(torch.from_numpy(x), wt.shape, tdy, stride=stride, padding=pad).numpy())


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 36), k=st.integers(1, 36), h=st.integers(1, 10),
       w=st.integers(1, 10), r=st.integers(1, 4), s=st.integers(1, 4), sh=st.integers(1, 3),
       sw=st.integers(1, 3), ph=st.integers(0, 3), pw=st.integers(0, 3))
def test_random_shapes(n, c, k, h, w, r, s, sh, sw, ph, pw):
    assume(r <= h + 2 * ph and s <= w + 2 * pw)
    rng = np.random.default_rng(c * 100 + k)
    x, wt, dy = problem(rng, n, c, k, h, w, r, s, (sh, sw), (ph, pw))
    g = dlcpu.conv2d_backward(dy, x, wt, (sh, sw), (ph, pw))
    check_against_reference(g, x, wt, dy, (sh, sw), (ph, pw))


def test_bad_input(rng):
    x, wt, dy = problem(rng, 1, 3, 4, 5, 5, 3, 3, 1, 0)
    with pytest.raises(ValueError, match=r"dy has shape \(1, 4, 4, 3\) but the forward problem .* gives y of shape \(1, 4, 3, 3\)"):
        dlcpu.conv2d_backward(np.zeros((1, 4, 4, 3), np.float32), x, wt)
    with pytest.raises(ValueError, match="need must name"):
        dlcpu.conv2d_backward(dy, x, wt, need=("dz",))
    with pytest.raises(TypeError, match="all numpy arrays or all BlockedTensors"):
        dlcpu.conv2d_backward(dlcpu.to_blocked(dy), x, wt)
    with pytest.raises(TypeError, match="float32"):
        dlcpu.conv2d_backward(dy.astype(np.float64), x, wt)
    with pytest.raises(ValueError, match="weights expect C=3"):
        dlcpu.conv2d_backward(dy, x[:, :2], wt)
