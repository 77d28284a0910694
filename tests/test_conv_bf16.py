"""conv2d(precision='bf16'): the direct convolution on bf16 operands with fp32 accumulation,
against the float64 convolution of the bf16-rounded operands (every ISA path, the AVX-512 path
with and without VDPBF16PS), PyTorch's bf16 convolution, and across thread counts."""
import numpy as np
import pytest
from conftest import ISAS, assert_close, max_threads, needs_torch

import dlcpu
from dlcpu import _reference as ref
from dlcpu import conv, cpu, layout
from dlcpu import precision as P
from dlcpu._ext import conv_wu as _wu

NATIVE = cpu.features()["avx512_bf16"] and "avx512" in ISAS
PATHS = [(isa, isa == "avx512" and NATIVE) for isa in ISAS] + ([("avx512", False)] if NATIVE else [])

GEOMETRY = [
    # n, c, k, h, w, r, s, stride, padding
    (2, 3, 5, 9, 9, 3, 3, 1, 1),           # first layer: 3 channels, one odd pair padded by zeros
    (1, 1, 1, 4, 4, 1, 1, 1, 0),
    (2, 17, 33, 7, 6, 3, 3, 1, 1),         # one past the channel blocks
    (1, 16, 16, 8, 8, 1, 1, 1, 0),         # 1x1 in place
    (2, 20, 33, 11, 13, 3, 3, 2, 1),       # strided, padded tile
    (1, 32, 48, 14, 14, 1, 1, 2, 0),       # strided 1x1: subsampled tile
    (1, 8, 20, 10, 10, 7, 7, 2, 3),        # 7x7 stride 2
    (1, 64, 64, 14, 14, 3, 3, 1, 1),       # res4-like 3x3, mv=2 with several rows per call
    (1, 5, 7, 1, 40, 1, 3, (1, 3), 0),     # one-row image, stride 3 in w
]


def bf16_reference(x, w, b, stride, pad, relu=False):
    st2 = stride if isinstance(stride, tuple) else (stride, stride)
    pd2 = pad if isinstance(pad, tuple) else (pad, pad)
    return ref.conv2d_forward(P.round_to_bf16(x).astype(np.float64), P.round_to_bf16(w).astype(np.float64), b,
                              st2, pd2, relu)


@pytest.mark.parametrize("isa,native", PATHS)
@pytest.mark.parametrize("case", GEOMETRY, ids=str)
def test_bf16_conv_against_float64(rng, monkeypatch, isa, native, case):
    monkeypatch.setattr(P, "native_bf16", lambda name: native)
    n, c, k, h, w, r, s, stride, pad = case
    x = rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)
    wt = rng.uniform(-1, 1, (k, c, r, s)).astype(np.float32)
    b = rng.uniform(-1, 1, k).astype(np.float32)
    for relu in (False, True):
        y = dlcpu.conv2d(x, wt, b, stride, pad, "relu" if relu else None, precision="bf16", isa=isa)
        assert y.dtype == np.float32
        assert_close(y, bf16_reference(x, wt, b, stride, pad, relu))           # fp32 accumulation only
    assert_close(y, ref.conv2d_forward(x, wt, b, *(((v, v) if not isinstance(v, tuple) else v)
                                                  for v in (stride, pad)), True), dtype="bf16")


def test_bf16_conv_blocked_operands_are_reused_and_match(rng):
    x = rng.uniform(-1, 1, (2, 20, 9, 9)).astype(np.float32)
    w = rng.uniform(-1, 1, (24, 20, 3, 3)).astype(np.float32)
    x16, w16 = layout.to_bf16_blocked(x), layout.block_weights_bf16(w)
    assert x16.precision == w16.precision == "bf16" and x16.dtype == w16.dtype == np.uint16
    assert np.array_equal(x16.numpy(), P.round_to_bf16(x)) and np.array_equal(w16.numpy(), P.round_to_bf16(w))
    assert np.array_equal(layout.block_weights_bf16(layout.block_weights(w)).data, w16.data)
    yb = dlcpu.conv2d(x16, w16, None, 1, 1, precision="bf16")
    assert isinstance(yb, layout.BlockedTensor) and yb.precision == "fp32"
    assert np.array_equal(yb.numpy(), dlcpu.conv2d(x, w, None, 1, 1, precision="bf16"))
    out = layout.BlockedTensor(np.empty_like(yb.data), yb.shape)
    assert dlcpu.conv2d(x16, w16, None, 1, 1, precision="bf16", out=out) is out
    assert np.array_equal(out.data, yb.data)


def test_bf16_conv_paths_agree_bit_for_bit(rng, monkeypatch):
    x = rng.uniform(-1, 1, (2, 20, 11, 13)).astype(np.float32)
    w = rng.uniform(-1, 1, (33, 20, 3, 3)).astype(np.float32)
    results = []
    for isa, native in PATHS:
        monkeypatch.setattr(P, "native_bf16", lambda name, native=native: native)
        results.append(dlcpu.conv2d(x, w, None, 2, 1, precision="bf16", isa=isa))
    assert all(np.array_equal(r, results[0]) for r in results[1:])


def test_hand_made_uint16_tensors_are_refused():
    bits = P.fp32_to_bf16_bits(layout.block_weights(np.ones((4, 3, 3, 3), np.float32)).data)
    with pytest.raises(TypeError, match="a fp32 weight holds float32 data, got uint16"):
        layout.BlockedTensor(bits, (4, 3, 3, 3), "weight")        # not VNNI-paired: must not pass for bf16
    with pytest.raises(TypeError, match="a bf16 activation holds uint16 data, got float32"):
        layout.BlockedTensor(np.zeros((1, 1, 2, 2, 16), np.float32), (1, 3, 2, 2), precision="bf16")


def test_bf16_conv_is_thread_independent(rng):
    x = rng.uniform(-1, 1, (3, 40, 15, 15)).astype(np.float32)
    w = rng.uniform(-1, 1, (48, 40, 3, 3)).astype(np.float32)
    one = dlcpu.conv2d(x, w, None, 2, 1, precision="bf16", n_threads=1)
    assert np.array_equal(one, dlcpu.conv2d(x, w, None, 2, 1, precision="bf16", n_threads=max_threads()))


@needs_torch
def test_bf16_conv_against_pytorch(rng):
    import torch

    x = rng.uniform(-1, 1, (2, 32, 12, 12)).astype(np.float32)
    w = rng.uniform(-1, 1, (40, 32, 3, 3)).astype(np.float32)
    with torch.inference_mode():
        theirs = torch.nn.functional.conv2d(torch.from_numpy(x).bfloat16(), torch.from_numpy(w).bfloat16(),
                                            stride=1, padding=1).float().numpy()
    ours = dlcpu.conv2d(x, w, None, 1, 1, precision="bf16")
    assert_close(theirs, ours.astype(np.float64), dtype="bf16")     # PyTorch rounds its output to bf16


@pytest.mark.parametrize("call,error,match", [
    (lambda x, w: dlcpu.conv2d(x, w, precision="fp8"), ValueError, "unknown precision 'fp8'"),
    (lambda x, w: dlcpu.conv2d(x, w, precision="ternary"), TypeError, "takes w as dlcpu.precision.TernaryWeights"),
    (lambda x, w: dlcpu.conv2d(x, w, algorithm="winograd4", precision="bf16"), ValueError, "direct algorithm only"),
    (lambda x, w: dlcpu.conv2d(layout.to_bf16_blocked(x), w), TypeError, "fp32 activation BlockedTensor"),
    (lambda x, w: dlcpu.conv2d(x, layout.block_weights_bf16(w)), TypeError, "fp32 weight BlockedTensor"),
    (lambda x, w: dlcpu.conv2d(layout.to_blocked(x), layout.block_weights_bf16(w[:, :2]), precision="bf16"),
     ValueError, "channels"),
    (lambda x, w: layout.to_bf16_blocked(layout.to_bf16_blocked(x)), TypeError, "expected an fp32 activation"),
    (lambda x, w: layout.block_weights_bf16(layout.to_blocked(x)), TypeError, "expected fp32 weights"),
])
def test_bf16_conv_bad_input(call, error, match):
    x = np.ones((1, 3, 6, 6), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    with pytest.raises(error, match=match):
        call(x, w)


# ------------------------------------------------------------------ mixed-precision backward
@pytest.mark.parametrize("isa,native", PATHS)
@pytest.mark.parametrize("case", GEOMETRY + [(1, 17, 16, 8, 8, 1, 1, 1, 0), (3, 40, 70, 5, 7, 3, 3, 1, 1)], ids=str)
def test_bf16_backward_against_float64(rng, monkeypatch, isa, native, case):
    """dx, dW and db of precision='bf16' equal the float64 gradients of the bf16-rounded dy, x
    and w to fp32 accumulation, and the true gradients to bf16's precision.  dW runs on the bf16
    weight-update kernels (the fp32 ones are not called): pixel counts P*Q off the blocks of 16
    (odd 35, 81), strides in one direction, 7x7 taps, channel counts off the blocks, odd K blocks."""
    monkeypatch.setattr(P, "native_bf16", lambda name: native)
    monkeypatch.setattr(conv, "PAIR_WU_MIN_MACS", 0)
    monkeypatch.setattr(conv, "PAIR_WU_MIN_K", 0)                   # the pair kernels at every size
    monkeypatch.setattr(_wu, "conv2d_weight_grad_f32", None)          # finite input: never the fp32 route
    n, c, k, h, w, r, s, stride, pad = case
    st2 = stride if isinstance(stride, tuple) else (stride, stride)
    pd2 = pad if isinstance(pad, tuple) else (pad, pad)
    x = rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)
    wt = rng.uniform(-1, 1, (k, c, r, s)).astype(np.float32)
    dy = rng.uniform(-1, 1, dlcpu.conv2d(x, wt, None, stride, pad).shape).astype(np.float32)
    g = dlcpu.conv2d_backward(dy, x, wt, stride, pad, precision="bf16", isa=isa)
    rounded = [P.round_to_bf16(a).astype(np.float64) for a in (dy, x, wt)]
    dx, dw, _ = ref.conv2d_backward(*rounded, st2, pd2)
    assert_close(g.dx, dx)
    assert_close(g.dw, dw)
    assert_close(g.db, dy.astype(np.float64).sum(axis=(0, 2, 3)))      # db from the fp32 dy
    exact = ref.conv2d_backward(dy, x, wt, st2, pd2)
    assert_close(g.dx, exact[0], dtype="bf16")
    assert_close(g.dw, exact[1], dtype="bf16")


@pytest.mark.parametrize("precision", ["bf16", "dfp16"])
@pytest.mark.parametrize("k", [16, 40])
def test_pair_weight_update_row_tiles_for_every_leftover_channel_count(rng, monkeypatch, precision, k):
    """The pair weight update puts input channels on the rows of its row tiles (AVX-512: 1 to 16
    rows with one K block, up to 14 with two), so every channel count mod 16 picks another tile:
    C = 1..16 and 30 against the float64 gradient of the format's values of dy and x, on every
    ISA path.  K = 16 calls the one-K-block tiles, K = 40 the two-block ones plus a leftover."""
    from dlcpu import quantized as Q

    monkeypatch.setattr(conv, "PAIR_WU_MIN_MACS", 0)
    monkeypatch.setattr(conv, "PAIR_WU_MIN_K", 0)
    monkeypatch.setattr(_wu, "conv2d_weight_grad_f32", None)          # never the fp32 route
    to_format = P.round_to_bf16 if precision == "bf16" else Q.round_to_dfp16
    for isa in ISAS:
        for c in list(range(1, 17)) + [30]:
            x = rng.uniform(-1, 1, (2, c, 7, 5)).astype(np.float32)
            wt = rng.uniform(-1, 1, (k, c, 3, 3)).astype(np.float32)
            dy = rng.uniform(-1, 1, (2, k, 7, 5)).astype(np.float32)
            dw = dlcpu.conv2d_backward(dy, x, wt, 1, 1, need="dw", precision=precision, isa=isa).dw
            want = ref.conv2d_backward(to_format(dy).astype(np.float64), to_format(x).astype(np.float64),
                                       wt.astype(np.float64), (1, 1), (1, 1))[1]
            assert_close(dw, want)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_bf16_bwd_data_weights_are_the_flipped_weights_rounded(rng, stride):
    """The fused flip + bf16 VNNI pass of a bf16 bwd-data phase gives the bits of the fp32 flip
    followed by fp32_blocks_to_bf16_vnni, on every ISA path, for every stride phase (rounding
    ties, NaN, Inf and denormals included)."""
    from dlcpu._ext import conv_direct as _direct

    w = rng.uniform(-1, 1, (40, 20, 3, 3)).astype(np.float32)
    w.reshape(-1)[:6] = [np.nan, np.inf, -np.inf, 1e-40, 1 + 2.0 ** -8, -(1 + 3 * 2.0 ** -8)]
    wb = layout.block_weights(w).data
    kb, cb = wb.shape[:2]
    for isa in ISAS:
        code = dlcpu.cpu.ISA_CODES[isa]
        for rho_h in range(stride):
            for rho_w in range(stride):
                taps_h, taps_w = len(range(rho_h, 3, stride)), len(range(rho_w, 3, stride))
                flipped = np.empty((cb, kb, taps_h, taps_w, 16, 16), np.float32)
                _direct.flip_transpose_weights(wb, flipped, rho_h, rho_w, stride, stride, 2)
                fused = np.empty(flipped.shape, np.uint16)
                _direct.flip_transpose_weights(wb, fused, rho_h, rho_w, stride, stride, max_threads(), code,
                                               P.native_bf16(isa))
                assert np.array_equal(fused, P.fp32_blocks_to_bf16_vnni(flipped))
    wrong = np.empty((cb, kb, 1, 3, 16, 16), np.uint16)       # not the taps of any phase at stride 2
    with pytest.raises(ValueError, match="is not phase"):
        _direct.flip_transpose_weights(wb, wrong, 0, 0, 2, 2, 1)
    with pytest.raises(ValueError, match="is not phase"):              # a phase past the stride
        _direct.flip_transpose_weights(wb, np.empty((cb, kb, 1, 1, 16, 16), np.float32), 2, 2, 2, 2, 1)


def test_bf16_weight_update_is_thread_independent_and_keeps_nan_inf(rng, monkeypatch):
    """dW of precision='bf16' is the same bits on 1 and all threads (each dW block is summed by one
    thread in a fixed order); with Inf/NaN in x or dy it is exactly the fp32 weight update of the
    bf16 values (the zero padding of the pixel pairs would otherwise add 0 * Inf terms)."""
    monkeypatch.setattr(conv, "PAIR_WU_MIN_MACS", 0)
    monkeypatch.setattr(conv, "PAIR_WU_MIN_K", 0)
    x = rng.uniform(-1, 1, (2, 40, 13, 11)).astype(np.float32)
    w = rng.uniform(-1, 1, (48, 40, 3, 3)).astype(np.float32)
    dy = rng.uniform(-1, 1, (2, 48, 7, 6)).astype(np.float32)
    one = dlcpu.conv2d_backward(dy, x, w, 2, 1, need="dw", precision="bf16", n_threads=1).dw
    assert np.array_equal(one, dlcpu.conv2d_backward(dy, x, w, 2, 1, need="dw", precision="bf16",
                                                     n_threads=max_threads()).dw)
    for name in ("x", "dy"):
        for bad in (np.inf, np.nan, 3.4e38):             # 3.4e38 is finite in fp32 and rounds to bf16's Inf
            xx, dd = x.copy(), dy.copy()
            (xx if name == "x" else dd)[1, 5, 3, 4] = bad
            got = dlcpu.conv2d_backward(dd, xx, w, 2, 1, need="dw", precision="bf16").dw
            want = dlcpu.conv2d_backward(P.round_to_bf16(dd), P.round_to_bf16(xx), w, 2, 1, need="dw").dw
            assert np.array_equal(got, want, equal_nan=True) and not np.isfinite(got).all()


@pytest.mark.parametrize("precision", ["bf16", "dfp16"])
@pytest.mark.parametrize("case", [(8, 3, 1, 1), (8, 1, 2, 0), (9, 1, 2, 0), (9, 1, (2, 3), 0), (7, 1, 2, 1)], ids=str)
def test_small_weight_updates_take_the_fp32_kernels_on_the_formats_values(rng, monkeypatch, precision, case):
    """Below conv.PAIR_WU_MIN_MACS multiply-adds, or below conv.PAIR_WU_MIN_K output channels at
    any size, dW runs the fp32 kernels on the bf16 / DFP-16 values (the pair kernels'
    reformatting would cost more): the same gradient to fp32 summation order, and the pair
    kernels are not called.  Strided 1x1 without padding converts only the pixels it reads and
    runs as a stride-1 1x1 on them (odd sizes, unequal strides); with padding it does not."""
    h, r, stride, pad = case
    x = rng.uniform(-1, 1, (4, 16, h, h)).astype(np.float32)
    w = rng.uniform(-1, 1, (32, 16, r, r)).astype(np.float32)
    dy = rng.uniform(-1, 1, dlcpu.conv2d(x, w, None, stride, pad).shape).astype(np.float32)
    assert 4 * 32 * 16 * 9 * 64 < conv.PAIR_WU_MIN_MACS
    monkeypatch.setattr(conv, "PAIR_WU_MIN_MACS", 0)
    monkeypatch.setattr(conv, "PAIR_WU_MIN_K", 0)
    pairs = dlcpu.conv2d_backward(dy, x, w, stride, pad, need="dw", precision=precision).dw
    monkeypatch.undo()
    monkeypatch.setattr(conv, "PAIR_WU_MIN_MACS", 0)         # large enough, but 32 < PAIR_WU_MIN_K channels
    monkeypatch.setattr(_wu, "conv2d_weight_grad_pairs", None)
    assert 32 < conv.PAIR_WU_MIN_K
    small = dlcpu.conv2d_backward(dy, x, w, stride, pad, need="dw", precision=precision).dw
    assert_close(small, pairs.astype(np.float64))
    monkeypatch.undo()
    monkeypatch.setattr(_wu, "conv2d_weight_grad_pairs", None)
    small = dlcpu.conv2d_backward(dy, x, w, stride, pad, need="dw", precision=precision).dw
    assert_close(small, pairs.astype(np.float64))
    if precision == "bf16":      # the float64 gradient of the rounded operands
        st2, pd2 = (stride, stride) if isinstance(stride, int) else stride, (pad, pad)
        want = ref.conv2d_backward(P.round_to_bf16(dy).astype(np.float64), P.round_to_bf16(x).astype(np.float64),
                                   w.astype(np.float64), st2, pd2)[1]
        assert_close(small, want)


# Shapes whose small bf16 weight updates reach every branch of the driver at 2 threads (checked
# by the test after the next): 9 images of 16 -> 16 (image ranges, several images per block),
# 48 -> 80 (K groups), 40 -> 16 and 48 -> 16 (K inner, C groups; the second with row blocks),
# a padded strided 1x1 (the subsampled tile; without padding it runs as a stride-1 1x1).
WIDEN_CASES = GEOMETRY + [(9, 16, 16, 8, 8, 3, 3, 1, 1), (3, 48, 80, 5, 5, 3, 3, 1, 1), (5, 40, 16, 6, 6, 3, 3, 1, 1),
                          (2, 48, 16, 30, 30, 3, 3, 1, 1), (3, 20, 24, 9, 9, 1, 1, 2, 1)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", WIDEN_CASES, ids=str)
def test_small_bf16_weight_updates_widen_inside_their_work_items_bit_for_bit(rng, monkeypatch, isa, case):
    """The fp32 weight update on bf16 values reads the bf16 patterns and widens each block of
    images inside its work item (conv2d_weight_grad_bf16_values): dW is bit for bit the fp32
    update of the rounded x and dy, on every ISA path, at 1 and all threads, and added to an
    accumulated gradient.  Neither the fp32 entry nor the pair kernels are called."""
    monkeypatch.setattr(_wu, "conv2d_weight_grad_pairs", None)          # (every case is below the pair sizes)
    n, c, k, h, w, r, s, stride, pad = case
    x = rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)
    wt = rng.uniform(-1, 1, (k, c, r, s)).astype(np.float32)
    dy = rng.uniform(-1, 1, dlcpu.conv2d(x, wt, None, stride, pad).shape).astype(np.float32)
    want = dlcpu.conv2d_backward(P.round_to_bf16(dy), P.round_to_bf16(x), wt, stride, pad, need="dw", isa=isa).dw
    wb, start = layout.block_weights(wt), rng.uniform(-1, 1, layout.block_weights(wt).data.shape).astype(np.float32)
    want_acc = dlcpu.conv2d_backward(layout.to_blocked(P.round_to_bf16(dy)), layout.to_blocked(P.round_to_bf16(x)),
                                     wb, stride, pad, need="dw", isa=isa, accumulate_dw=start.copy()).dw.data
    monkeypatch.setattr(_wu, "conv2d_weight_grad_f32", None)
    for threads in (1, max_threads()):
        got = dlcpu.conv2d_backward(dy, x, wt, stride, pad, need="dw", precision="bf16", isa=isa, n_threads=threads)
        assert np.array_equal(got.dw, want)
        acc = start.copy()
        dlcpu.conv2d_backward(layout.to_blocked(dy), layout.to_blocked(x), wb, stride, pad, need="dw",
                              precision="bf16", isa=isa, n_threads=threads, accumulate_dw=acc)
        assert np.array_equal(acc, want_acc)


def test_the_widening_cases_reach_every_branch_of_the_driver(rng, monkeypatch):
    """WIDEN_CASES at 2 threads plan every input tile (0 in place, 1 padded, 2 subsampled), K
    outer and inner, several K groups, C groups, row blocks, image ranges and images per block."""
    seen = []
    plan_for = conv._cached_weight_grad_plan

    def recorded(shape, isa, n_threads):
        plan = plan_for(shape, isa, n_threads)
        seen.append(plan.c.fields())
        return plan

    monkeypatch.setattr(conv, "_cached_weight_grad_plan", recorded)
    for n, c, k, h, w, r, s, stride, pad in WIDEN_CASES:
        x = rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)
        wt = rng.uniform(-1, 1, (k, c, r, s)).astype(np.float32)
        dy = rng.uniform(-1, 1, dlcpu.conv2d(x, wt, None, stride, pad).shape).astype(np.float32)
        dlcpu.conv2d_backward(dy, x, wt, stride, pad, need="dw", precision="bf16", n_threads=2)
    assert len(seen) == len(WIDEN_CASES)
    assert {f["tile_mode"] for f in seen} == {0, 1, 2} and {f["k_inner"] for f in seen} == {0, 1}
    for field in ("k_groups", "c_groups", "row_blocks", "image_splits", "images_per_block"):
        assert max(f[field] for f in seen) > 1, field


def test_bf16_values_weight_update_refuses_operands_of_another_shape(rng):
    plan = conv._cached_weight_grad_plan(conv.conv_shape((2, 16, 8, 8), (16, 16, 3, 3), 1, 1), cpu.isa_code(None), 1)
    x16 = np.zeros(2 * 8 * 8 * 16, np.uint16)
    dw = np.zeros(16 * 16 * 9, np.float32)
    with pytest.raises(ValueError, match="x16 has 2032 elements and dy16 2048; the plan's shape needs 2048 and 2048"):
        _wu.conv2d_weight_grad_bf16_values(x16[:-16], x16, dw, plan.c, 1)
    with pytest.raises(ValueError, match="the plan's shape needs 2048 and 2048"):
        _wu.conv2d_weight_grad_bf16_values(x16, x16[:-16], dw, plan.c, 1)
    with pytest.raises(ValueError, match="dw has 2303 elements; the plan's shape needs 2304"):
        _wu.conv2d_weight_grad_bf16_values(x16, x16, dw[:-1], plan.c, 1)


def test_bf16_backward_blocked_with_the_forward_bf16_input_and_accumulate(rng):
    x = rng.uniform(-1, 1, (2, 20, 9, 9)).astype(np.float32)
    w = rng.uniform(-1, 1, (24, 20, 3, 3)).astype(np.float32)
    dy = rng.uniform(-1, 1, (2, 24, 9, 9)).astype(np.float32)
    xb, wb, dyb = layout.to_blocked(x), layout.block_weights(w), layout.to_blocked(dy)
    acc = np.zeros_like(wb.data)
    g16 = dlcpu.conv2d_backward(dyb, layout.to_bf16_blocked(xb), wb, 1, 1, precision="bf16", accumulate_dw=acc)
    g32 = dlcpu.conv2d_backward(dyb, xb, wb, 1, 1, precision="bf16")
    assert np.array_equal(g16.dw.data, g32.dw.data) and np.array_equal(g16.dx.data, g32.dx.data)
    assert g16.dw.data is acc
    with pytest.raises(TypeError, match="fp32 weight BlockedTensor"):
        dlcpu.conv2d_backward(dyb, xb, layout.block_weights_bf16(w), 1, 1, precision="bf16")
    with pytest.raises(TypeError, match="fp32 activation BlockedTensor"):
        dlcpu.conv2d_backward(dyb, layout.to_bf16_blocked(xb), wb, 1, 1)        # bf16 x needs precision='bf16'
    with pytest.raises(ValueError, match="no backward kernels yet"):
        dlcpu.conv2d_backward(dyb, xb, wb, 1, 1, precision="int8")
