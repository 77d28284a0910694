"""Integer kernels (int8: u8 x s8 -> int32; DFP-16: int16 x int16 -> int32) under conv2d and
matmul: against the float64 product of the dequantized operands (the kernels add no error beyond
fp32 rounding of int32 sums), against the float64 product of the fp32 operands (the format's own
error), bit for bit across ISA paths, VNNI and its emulation, and thread counts; the int32 chain
bound; PyTorch's quantized convolution; bad input."""
import dataclasses

import numpy as np
import pytest
from conftest import ISAS, assert_close, max_threads, needs_torch, rel_l2

import dlcpu
from dlcpu import _reference as ref
from dlcpu import benchmarks, cpu, gemm, layout, pool
from dlcpu import precision as P
from dlcpu import quantized as Q

VNNI = cpu.features()["avx512_vnni"] and "avx512" in ISAS
PATHS = [(isa, isa == "avx512" and VNNI) for isa in ISAS] + ([("avx512", False)] if VNNI else [])
FORMATS = ("int8", "dfp16")
#: relative L2 error of the format itself against fp32 operands (uniform data in [-1, 1])
FORMAT_RTOL = {"int8": 2e-2, "dfp16": 1e-3}

GEOMETRY = [
    # n, c, k, h, w, r, s, stride, padding
    (2, 3, 5, 9, 9, 3, 3, 1, 1),           # first layer: 3 channels, one partial quad / pair
    (1, 1, 1, 4, 4, 1, 1, 1, 0),
    (2, 17, 33, 7, 6, 3, 3, 1, 1),         # one past the channel blocks
    (1, 16, 16, 8, 8, 1, 1, 1, 0),         # 1x1 in place
    (2, 20, 33, 11, 13, 3, 3, 2, 1),       # strided, padded tile
    (1, 32, 48, 14, 14, 1, 1, 2, 0),       # strided 1x1: subsampled tile
    (1, 8, 20, 10, 10, 7, 7, 2, 3),        # 7x7 stride 2
    (1, 64, 64, 14, 14, 3, 3, 1, 1),       # res4-like 3x3, mv=2 with several rows per call
]


def set_native(monkeypatch, native):
    monkeypatch.setattr(Q, "native_vnni", lambda name: native)


def dequantized_reference(x, w, b, stride, pad, precision, relu=False):
    """The float64 convolution of exactly the values the kernels multiply."""
    xq, wq = Q.quantize_operands(precision, layout.to_blocked(x), None, w)
    st2, pd2 = (stride, stride), (pad, pad)
    return ref.conv2d_forward(xq.numpy().astype(np.float64), wq.numpy().astype(np.float64), b, st2, pd2, relu)


@pytest.mark.parametrize("precision", FORMATS)
@pytest.mark.parametrize("isa,native", PATHS)
@pytest.mark.parametrize("case", GEOMETRY, ids=str)
def test_integer_conv_against_float64(rng, monkeypatch, precision, isa, native, case):
    set_native(monkeypatch, native)
    n, c, k, h, w, r, s, stride, pad = case
    for signed in (True, False):                 # zero point 128, or unsigned activations
        x = rng.uniform(-1 if signed else 0, 1, (n, c, h, w)).astype(np.float32)
        wt = rng.uniform(-1, 1, (k, c, r, s)).astype(np.float32)
        b = rng.uniform(-1, 1, k).astype(np.float32)
        for relu in (False, True):
            y = dlcpu.conv2d(x, wt, b, stride, pad, "relu" if relu else None, precision=precision, isa=isa)
            assert y.dtype == np.float32
            assert_close(y, dequantized_reference(x, wt, b, stride, pad, precision, relu))   # fp32 rounding only
        full = ref.conv2d_forward(x, wt, b, (stride, stride), (pad, pad), True)
        assert rel_l2(y, full) <= FORMAT_RTOL[precision]


@pytest.mark.parametrize("precision", FORMATS)
def test_integer_conv_paths_and_threads_agree_bit_for_bit(rng, monkeypatch, precision):
    x = rng.uniform(-1, 1, (2, 20, 11, 13)).astype(np.float32)
    w = rng.uniform(-1, 1, (33, 20, 3, 3)).astype(np.float32)
    results = []
    for isa, native in PATHS:
        set_native(monkeypatch, native)
        results.append(dlcpu.conv2d(x, w, None, 2, 1, precision=precision, isa=isa))
    results.append(dlcpu.conv2d(x, w, None, 2, 1, precision=precision, n_threads=1))
    results.append(dlcpu.conv2d(x, w, None, 2, 1, precision=precision, n_threads=max_threads()))
    assert all(np.array_equal(r, results[0]) for r in results[1:])


def test_int8_zero_point_pads_with_the_value_zero(rng):
    """Signed activations are stored as q + 128: the padding around the image must be 128 too,
    or the border outputs would see -128 * w (a padded 7x7 makes most taps border taps)."""
    x = rng.uniform(-1, 1, (1, 16, 5, 5)).astype(np.float32)
    w = rng.uniform(-1, 1, (16, 16, 7, 7)).astype(np.float32)
    y = dlcpu.conv2d(x, w, None, 1, 3, precision="int8")
    assert_close(y, dequantized_reference(x, w, None, 1, 3, "int8"))


@pytest.mark.parametrize("precision", FORMATS)
def test_quantized_operands_are_reused_and_round_trip(rng, precision):
    x = rng.uniform(-1, 1, (2, 20, 9, 9)).astype(np.float32)
    w = rng.uniform(-1, 1, (24, 20, 3, 3)).astype(np.float32)
    xq, wq = Q.quantize_operands(precision, layout.to_blocked(x), None, w)
    assert xq.precision == wq.precision == precision
    assert xq.dtype == Q.ACTIVATION_DTYPES[precision] and wq.dtype == Q.WEIGHT_DTYPES[precision]
    assert rel_l2(xq.numpy(), x) < FORMAT_RTOL[precision] and rel_l2(wq.numpy(), w) < FORMAT_RTOL[precision]
    yb = dlcpu.conv2d(xq, wq, None, 1, 1, precision=precision)
    assert isinstance(yb, layout.BlockedTensor) and yb.precision == "fp32"
    assert np.array_equal(yb.numpy(), dlcpu.conv2d(x, w, None, 1, 1, precision=precision))
    out = layout.BlockedTensor(np.empty_like(yb.data), yb.shape)
    assert dlcpu.conv2d(xq, wq, None, 1, 1, precision=precision, out=out) is out
    assert np.array_equal(out.data, yb.data)


def test_int8_weights_follow_the_symmetric_per_channel_rule(rng):
    w = rng.uniform(-1, 1, (20, 5, 3, 3)).astype(np.float32)
    wq = Q.block_weights_int8(w)
    scales = P.int8_weight_scales(w, axis=0)
    assert np.array_equal(wq.scale[0][:20], scales) and np.all(wq.scale[0][20:] == 1)
    assert np.array_equal(wq.numpy(), P.to_int8(w, scales, axis=0).to_float32())
    codes = P.to_int8(w, scales, axis=0).data.astype(np.int64)
    assert np.array_equal(wq.scale[1][:20], codes.reshape(20, -1).sum(axis=1))


def test_int8_activations_follow_to_int8(rng):
    x = rng.uniform(-1, 1, (2, 5, 4, 4)).astype(np.float32)
    xq = Q.to_int8_blocked(x)
    s, z = xq.scale
    assert z == 128 and s == P._int8_scale(float(np.abs(x).max()), 127)
    assert np.array_equal(xq.numpy(), P.to_int8(x, s).to_float32())
    pos = np.abs(x)
    xq = Q.to_int8_blocked(pos)
    assert xq.scale[1] == 0 and np.array_equal(xq.numpy(), P.to_int8(pos, xq.scale[0], unsigned=True).to_float32())
    cal = P.ActivationCalibrator()
    cal.observe(pos)
    xq = Q.to_int8_blocked(pos, cal.scale, unsigned=cal.unsigned)
    assert xq.scale == (float(np.float32(cal.scale)), 0)


@pytest.mark.parametrize("isa,native", PATHS)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("out_bits", [8, 7])
def test_int8_u8_output_codes_are_the_float64_codes(rng, monkeypatch, isa, native, relu, out_bits):
    """out_scale: the epilogue writes clamp(rint(v / s_out + z), 0, top) of the convolution v of
    the quantized operands (z = 0 after a ReLU, else 128; out_bits=7: top 127 and z 0 or 64,
    to_int8_blocked(bits=7)'s codes), with the scales folded into one float32 FMA: equal to the
    float64 code away from ties, never more than one code off, the clamps exact; the codes feed
    the next layer; out= reuses them."""
    set_native(monkeypatch, native)
    top = (1 << out_bits) - 1
    for signed in (True, False):
        x = rng.uniform(-1 if signed else 0, 1, (2, 20, 9, 9)).astype(np.float32)
        w = rng.uniform(-1, 1, (33, 20, 3, 3)).astype(np.float32)
        b = rng.uniform(-1, 1, 33).astype(np.float32)
        xq, wq = Q.to_int8_blocked(x), Q.block_weights_int8(w)
        act = "relu" if relu else None
        y32 = dlcpu.conv2d(xq, wq, b, 1, 1, act, precision="int8", isa=isa)
        s_out = float(np.float32(np.abs(y32.data).max() / 300))      # codes past 255 and below 0
        y8 = dlcpu.conv2d(xq, wq, b, 1, 1, act, precision="int8", isa=isa, out_scale=s_out, out_bits=out_bits)
        z = 0 if relu else (top + 1) // 2
        assert y8.precision == "int8" and y8.dtype == np.uint8 and y8.scale == (s_out, z)
        v = dequantized_reference(x, w, None, 1, 1, "int8") / s_out + (b.astype(np.float64) / s_out)[None, :, None, None]
        if relu:
            v = np.maximum(v, 0)
        want = np.clip(np.rint(v + z), 0, top)
        got = layout.from_blocked(layout.BlockedTensor(y8.data.astype(np.float32), y8.shape)).astype(np.float64)
        assert np.abs(got - want).max() <= 1
        away = np.abs(np.abs(v + z - np.floor(v + z)) - 0.5) > 1e-3
        assert np.array_equal(got[away], want[away])
        assert (got == top).any() and (got == 0).any()                # both clamps were exercised
    w2 = rng.uniform(-1, 1, (8, 33, 1, 1)).astype(np.float32)
    nxt = dlcpu.conv2d(y8, w2, precision="int8")                                   # u8 feeds the next layer
    assert_close(nxt.numpy(), ref.conv2d_forward(y8.numpy().astype(np.float64), Q.block_weights_int8(w2).numpy(),
                                                 None, (1, 1), (0, 0)))
    again = dlcpu.conv2d(xq, wq, b, 1, 1, act, precision="int8", isa=isa, out_scale=s_out, out_bits=out_bits, out=y8)
    assert again.data is y8.data and np.array_equal(again.data, y8.data)


@pytest.mark.parametrize("out_bits", [8, 7])
@pytest.mark.parametrize("relu", [False, True])
def test_int8_residual_joins_the_u8_epilogue(rng, monkeypatch, out_bits, relu):
    """residual: u8 codes r (scale s_r, zero point z_r) join before the clamp, code =
    clamp(rint(v / s_out + (s_r / s_out) (r - z_r) + z), 0, top) -- a ResNet block end in the
    epilogue -- within one code of float64 and equal away from ties, bit for bit on every path;
    signed and unsigned residuals, 1x1 and strided 3x3 layers."""
    top = (1 << out_bits) - 1
    reached = set()
    for c, k, r, stride, pad in ((64, 40, 1, 1, 0), (20, 33, 3, 2, 1)):
        x = rng.uniform(0, 1, (2, c, 9, 11)).astype(np.float32)
        w = rng.uniform(-1, 1, (k, c, r, r)).astype(np.float32)
        b = rng.uniform(-1, 1, k).astype(np.float32)
        xq, wq = Q.to_int8_blocked(x), Q.block_weights_int8(w)      # as dequantized_reference quantizes them
        y32 = dlcpu.conv2d(xq, wq, b, stride, pad, precision="int8", isa="scalar")
        for signed in (True, False):
            res = rng.uniform(-1 if signed else 0, 1, y32.shape).astype(np.float32) * float(np.abs(y32.data).max())
            rq = Q.to_int8_blocked(res, bits=out_bits)
            s_out = float(np.float32(np.abs(y32.data).max() / 150))    # both clamps reached
            act = "relu" if relu else None
            codes = []
            for isa, native in PATHS:
                set_native(monkeypatch, native)
                codes.append(dlcpu.conv2d(xq, wq, b, stride, pad, act, precision="int8", isa=isa, out_scale=s_out,
                                          out_bits=out_bits, residual=rq))
            assert all(np.array_equal(cd.data, codes[0].data) for cd in codes[1:])
            z = 0 if relu else (top + 1) // 2
            assert codes[0].scale == (s_out, z)
            v = (dequantized_reference(x, w, None, stride, pad, "int8") + b.astype(np.float64)[None, :, None, None]
                 + rq.numpy().astype(np.float64)) / s_out
            v = np.maximum(v, 0) if relu else v
            want = np.clip(np.rint(v + z), 0, top)
            got = layout.from_blocked(layout.BlockedTensor(codes[0].data.astype(np.float32), y32.shape))
            assert np.abs(got - want).max() <= 1
            away = np.abs(np.abs(v + z - np.floor(v + z)) - 0.5) > 1e-3
            assert np.array_equal(got[away], want[away])
            reached.update({top} & set(np.unique(got)) | {0} & set(np.unique(got)))
    assert reached == {0, top}                                           # both clamps were exercised


def test_int8_residual_bad_input(rng):
    x = Q.to_int8_blocked(rng.uniform(0, 1, (1, 16, 6, 6)).astype(np.float32))
    w = Q.block_weights_int8(rng.uniform(-1, 1, (16, 16, 1, 1)).astype(np.float32))
    y = dlcpu.conv2d(x, w, precision="int8", out_scale=0.1)
    with pytest.raises(ValueError, match="go with out_scale"):
        dlcpu.conv2d(x, w, precision="int8", residual=y)
    with pytest.raises(TypeError, match="u8 activation BlockedTensor"):
        dlcpu.conv2d(x, w, precision="int8", out_scale=0.1, residual=layout.to_blocked(np.ones((1, 16, 6, 6),
                                                                                              np.float32)))
    with pytest.raises(ValueError, match="the output's shape"):
        dlcpu.conv2d(x, w, precision="int8", out_scale=0.1, stride=2, residual=y)
    with pytest.raises(ValueError, match="out= and residual|overlap|alias"):
        dlcpu.conv2d(x, w, precision="int8", out_scale=0.1, residual=y, out=y)
    tw = P.ternarize(rng.uniform(-1, 1, (16, 16, 1, 1)).astype(np.float32))
    with pytest.raises(ValueError, match="go with out_scale"):
        dlcpu.conv2d(x, tw, precision="ternary", residual=y)
    with pytest.raises(ValueError, match="the output's shape"):
        dlcpu.conv2d(x, tw, precision="ternary", out_scale=0.1, stride=2, residual=y)
    with pytest.raises(ValueError, match="overlap|alias"):
        dlcpu.conv2d(x, tw, precision="ternary", out_scale=0.1, residual=y, out=y)


# ---------------------------------------------------------------------------- int32 chain bound
def test_chain_schedule_is_the_int32_bound():
    steps, blocks = Q.chain_schedule("int8")
    assert steps == 4 and blocks == (2 ** 31 - 1) // (4 * 255 * 128) // 4
    for mx, mw in [(8192, 8192), (8191, 8192), (4096, 8192), (32767, 32767), (1, 1)]:
        steps, blocks = Q.chain_schedule("dfp16", mx, mw)
        longest = steps * blocks * 2 * mx * mw            # the most one chain can sum
        assert longest <= 2 ** 31 - 1
        # and it is the longest: one step (inside a block) or one block more would break the bound
        more = (steps + 1) * 2 * mx * mw if steps < 8 else (blocks + 1) * 8 * 2 * mx * mw
        assert more > 2 ** 31 - 1


@pytest.mark.parametrize("isa,native", PATHS)
def test_dfp16_worst_case_chain_does_not_overflow(monkeypatch, isa, native):
    """Every mantissa at its bound with the same sign, over 64 channels x 9 taps: the sums would
    pass 2**31 in one int32 chain; flushed, the result is exact."""
    set_native(monkeypatch, native)
    x = np.full((1, 64, 5, 5), 1.0, np.float32)
    w = np.full((16, 64, 3, 3), 1.0, np.float32)
    for headroom in (0, 2):
        xq = Q.to_dfp16_blocked(x, headroom=headroom)
        wq = Q.block_weights_dfp16(w, headroom=headroom)
        assert 2 * 64 * 9 * xq.scale[1] * wq.scale[1] > 2 ** 31
        y = dlcpu.conv2d(xq, wq, None, 1, 0, precision="dfp16", isa=isa)
        assert np.array_equal(y.numpy(), np.full((1, 16, 3, 3), 576.0, np.float32))


def test_int8_reduction_longer_than_a_chain_is_refused():
    _, blocks = Q.chain_schedule("int8")
    c = (blocks + 1) * 16
    x = np.ones((1, c, 1, 1), np.float32)
    w = np.ones((1, c, 1, 1), np.float32)
    with pytest.raises(ValueError, match="int32 chain provably holds"):
        dlcpu.conv2d(x, w, precision="int8")


# ---------------------------------------------------------------------------------------- GEMM
def kernel_dfp16(a, headroom=P.DFP16_HEADROOM):
    """to_dfp16's values with the kernels' extra clamp |I| <= 2**(15 - headroom) - 1."""
    d = P.to_dfp16(a, headroom=headroom)
    top = 2 ** (15 - headroom) - 1
    return np.ldexp(np.clip(d.mantissas, -top, top).astype(np.float64), d.exponent)


def test_dfp16_kernel_operands_stay_within_the_headroom(rng):
    x = rng.uniform(-1, 1, (1, 20, 8, 8)).astype(np.float32)
    x[0, 0, 0, 0] = 1.0 - 2.0 ** -20        # rounds up to 2**13 without the clamp
    xq = Q.to_dfp16_blocked(x)
    assert xq.scale[1] == 2 ** 13 - 1 == np.abs(xq.data).max()
    assert np.array_equal(xq.numpy(), kernel_dfp16(x).astype(np.float32))
    assert Q.chain_schedule("dfp16", xq.scale[1], xq.scale[1]) == (8, 2)     # 16 pairs: two channel blocks


def test_dfp16_bound_is_trusted_only_as_the_quantizer_made_it(rng):
    """The quantizer's DFP-16 tensors skip the scan of their data against their bound; a copy
    with other data (dataclasses.replace) or one built by hand is scanned again, so mantissas
    past the bound the kernels trust for their int32 chains are refused."""
    xq = Q.to_dfp16_blocked(rng.uniform(-1, 1, (1, 20, 8, 8)).astype(np.float32))
    big = np.full_like(xq.data, 32767)
    with pytest.raises(ValueError, match="but the data holds 32767"):
        dataclasses.replace(xq, data=big)
    with pytest.raises(ValueError, match="but the data holds 32767"):
        layout.BlockedTensor(big, xq.shape, "activation", xq.scale, "dfp16")
    assert dataclasses.replace(xq).scale == xq.scale            # its own data passes the scan


@pytest.mark.parametrize("precision", FORMATS)
@pytest.mark.parametrize("isa,native", PATHS)
@pytest.mark.parametrize("m,k,n", [(5, 3, 7), (33, 40, 20), (100, 300, 70), (40, 1100, 33)])
def test_integer_matmul_against_float64(rng, monkeypatch, precision, isa, native, m, k, n):
    set_native(monkeypatch, native)
    for signed in (True, False):
        x = rng.uniform(-1 if signed else 0, 1, (m, k)).astype(np.float32)
        y = rng.uniform(-1, 1, (k, n)).astype(np.float32)
        b = rng.uniform(-1, 1, n).astype(np.float32)
        packed = gemm.pack_matmul_operand(y, precision=precision)
        got = gemm.matmul(x, packed, bias=b, precision=precision, isa=isa)
        if precision == "int8":
            s = P._int8_scale(float(np.abs(x).max()), 127 if signed else 255)
            xd = P.to_int8(x, s, unsigned=not signed).to_float32()
            yd = P.to_int8(y, P.int8_weight_scales(y, axis=1), axis=1).to_float32()
        else:
            xd, yd = kernel_dfp16(x), kernel_dfp16(y)
        assert_close(got, xd.astype(np.float64) @ yd + b)
        assert rel_l2(got, x.astype(np.float64) @ y + b) <= FORMAT_RTOL[precision]
        assert np.array_equal(got, gemm.matmul(x, y, bias=b, precision=precision, isa=isa))


def test_integer_matmul_is_thread_independent(rng):
    x = rng.uniform(-1, 1, (70, 300)).astype(np.float32)
    y = rng.uniform(-1, 1, (300, 90)).astype(np.float32)
    for precision in FORMATS:
        one = gemm.matmul(x, y, precision=precision, n_threads=1)
        assert np.array_equal(one, gemm.matmul(x, y, precision=precision, n_threads=max_threads()))


# ------------------------------------------------------------------------------------- PyTorch
@needs_torch
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_int8_conv_against_pytorch_quantized_conv(rng):
    """The same u8 activations and s8 per-channel weights through PyTorch's x86 quantized
    convolution and dlcpu's: PyTorch requantizes its output to u8 (scale s_out, zero point 128),
    so the two agree to half an output step.  Without avx512_vnni, PyTorch's x86 engine sums
    pairs of u8 x s8 products in saturating int16, so x gets the 7-bit codes its docs ask for
    there (benchmarks.int8_peer_full_range)."""
    import torch

    x = rng.uniform(0, 1, (2, 32, 10, 10)).astype(np.float32)
    w = rng.uniform(-1, 1, (40, 32, 3, 3)).astype(np.float32)
    seven_bit = not benchmarks.int8_peer_full_range()
    xq = Q.to_int8_blocked(x, float(x.max()) / 127, unsigned=True) if seven_bit else Q.to_int8_blocked(x)
    wq = Q.block_weights_int8(w)
    ours = dlcpu.conv2d(xq, wq, None, 1, 1, precision="int8").numpy()
    s_out = float(np.abs(ours).max()) / 127
    theirs = torch_quantized_conv(torch, x, w, xq.scale[0], wq.scale[0][:40], s_out)
    assert np.abs(theirs - ours).max() <= 0.5 * s_out * 1.001


def torch_quantized_conv(torch, x, w, s_x, s_w, s_out):
    from torch.ao.nn.quantized import Conv2d

    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = "x86"
    try:
        conv = Conv2d(x.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2)
        qw = torch.quantize_per_channel(torch.from_numpy(w), torch.from_numpy(s_w.astype(np.float64)),
                                        torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
        conv.set_weight_bias(qw, None)
        conv.scale, conv.zero_point = s_out, 128
        qx = torch.quantize_per_tensor(torch.from_numpy(x), float(s_x), 0, torch.quint8)
        with torch.inference_mode():
            return conv(qx).dequantize().numpy()
    finally:
        torch.backends.quantized.engine = old


# ----------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,error,match", [
    (lambda x, w: dlcpu.conv2d(np.full_like(x, np.nan), w, precision="int8"), ValueError,
     "undefined for a tensor holding NaN or Inf"),
    (lambda x, w: dlcpu.conv2d(x, np.full_like(w, np.inf), precision="int8"), ValueError, "NaN or Inf"),
    (lambda x, w: dlcpu.conv2d(np.full_like(x, np.inf), w, precision="dfp16"), ValueError, "shared exponent"),
    (lambda x, w: dlcpu.conv2d(x, w, precision="int8", algorithm="winograd4"), ValueError, "direct algorithm only"),
    (lambda x, w: dlcpu.conv2d(Q.to_int8_blocked(x), w), TypeError, "fp32 activation BlockedTensor"),
    (lambda x, w: dlcpu.conv2d(Q.to_int8_blocked(x), Q.block_weights_dfp16(w), precision="int8"), TypeError,
     "fp32 or int8 weight BlockedTensor"),
    (lambda x, w: dlcpu.conv2d(layout.to_blocked(x), Q.block_weights_int8(w[:, :2]), precision="int8"),
     ValueError, "channels"),
    (lambda x, w: dlcpu.conv2d_backward(np.ones((1, 4, 6, 6), np.float32), x, w, 1, 1, precision="int8"),
     ValueError, "no backward kernels"),
    (lambda x, w: Q.to_int8_blocked(x, 0.1), ValueError, "needs unsigned"),
    (lambda x, w: Q.to_int8_blocked(x, -1.0, unsigned=True), ValueError, "finite and > 0"),
    (lambda x, w: Q.to_int8_blocked(x, unsigned=True), ValueError, "goes with a calibrated scale"),
    (lambda x, w: Q.to_dfp16_blocked(x, headroom=-1), ValueError, "headroom"),
    (lambda x, w: Q.to_dfp16_blocked(x, rounding="up"), ValueError, "rounding"),
    (lambda x, w: Q.block_weights_int8(layout.to_blocked(x)), TypeError, "expected KCRS float32 weights"),
    (lambda x, w: layout.BlockedTensor(np.zeros((1, 1, 6, 6, 16), np.uint8), (1, 3, 6, 6), precision="int8"),
     ValueError, "needs its scale"),
    (lambda x, w: layout.BlockedTensor(np.zeros((1, 1, 6, 6, 16), np.int8), (1, 3, 6, 6), scale=(1.0, 0),
                                       precision="int8"), TypeError, "holds uint8 data"),
    (lambda x, w: gemm.matmul(x[0, 0], gemm.pack_matmul_operand(w[:, 0, 0].T, precision="int8"), precision="dfp16"),
     ValueError, "packed for precision 'int8'"),
    (lambda x, w: dlcpu.conv2d(x, w, precision="int8", out_scale=0.1), ValueError, "x must be a BlockedTensor"),
    (lambda x, w: dlcpu.conv2d(layout.to_blocked(x), w, precision="dfp16", out_scale=0.1), ValueError,
     "not a dfp16 one"),
    (lambda x, w: dlcpu.conv2d(layout.to_blocked(x), w, precision="int8", out_scale=0.0), ValueError, "finite and > 0"),
    (lambda x, w: dlcpu.conv2d(layout.to_blocked(np.abs(x) * 1000), w * 127, precision="int8", out_scale=3e-39),
     ValueError, "is too small for these operands"),
    (lambda x, w: dlcpu.conv2d(layout.to_blocked(np.abs(x)), w, np.full(w.shape[0], 1e30, np.float32),
                               precision="int8", out_scale=1e-10), ValueError, "too small for this bias"),
    (lambda x, w: dlcpu.conv2d(layout.to_blocked(x), w, precision="int8", out_scale="1"), TypeError, "real number"),
    (lambda x, w: dlcpu.conv2d(layout.to_blocked(x), w, precision="int8", out_scale=0.1, out_bits=6), ValueError,
     "out_bits must be 8 or 7"),
    (lambda x, w: dlcpu.conv2d(layout.to_blocked(x), w, precision="int8", out_bits=7), ValueError,
     "without out_scale the output is fp32"),
    (lambda x, w: dlcpu.conv2d(x, P.ternarize(w), precision="ternary", out_bits=7), ValueError,
     "without out_scale the output is fp32"),
    (lambda x, w: dlcpu.conv2d(x, P.ternarize(w), precision="ternary", out_scale=0.1), ValueError,
     "x must be a BlockedTensor"),
    (lambda x, w: dlcpu.conv2d(layout.to_blocked(x * 1e4), P.ternarize(w), precision="ternary", out_scale=2e-38),
     ValueError, "is too small for these operands"),
    (lambda x, w: dlcpu.conv2d(layout.to_blocked(x), P.ternarize(w), precision="ternary", out_scale=0.1,
                               out=dlcpu.conv2d(layout.to_blocked(x), P.ternarize(w), precision="ternary",
                                                out_scale=0.2)), ValueError, "this call writes"),
    (lambda x, w: dlcpu.conv2d(layout.to_blocked(x), P.ternarize(w), precision="ternary", out_scale=0.1,
                               out=layout.to_blocked(np.ones((1, 4, 4, 4), np.float32))), ValueError,
     "uint8 activation BlockedTensor"),
    (lambda x, w: dlcpu.conv2d(layout.to_blocked(x), w, precision="int8", out_scale=0.1, out_bits=7,
                               out=dlcpu.conv2d(layout.to_blocked(x), w, precision="int8", out_scale=0.1)),
     ValueError, "this call writes"),
    (lambda x, w: dlcpu.conv2d(layout.to_blocked(x), w, precision="int8", out_scale=0.1,
                               out=dlcpu.conv2d(layout.to_blocked(x), w, padding=1)), ValueError, "uint8 activation"),
    (lambda x, w: gemm.matmul(np.full((2, 3), np.nan, np.float32), np.ones((3, 2), np.float32), precision="int8"),
     ValueError, "NaN or Inf"),
    (lambda x, w: gemm.pack_matmul_operand(np.full((3, 2), np.inf, np.float32), precision="dfp16"),
     ValueError, "NaN or Inf"),
    (lambda x, w: dlcpu.conv2d(np.full_like(x, 1e-30), np.full_like(w, 1e-30), precision="dfp16"), ValueError,
     "outside fp32's normal range"),
])
def test_integer_bad_input(call, error, match):
    x = np.ones((1, 3, 6, 6), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    with pytest.raises(error, match=match):
        call(x, w)


# ------------------------------------------------------------------------------------- ternary
def ternary_problem(rng, case, block, residual, signed):
    """(x, bias, TernaryWeights, their TernaryBlocked) of a convolution case (n, c, k, h, w, r,
    s, stride, padding): uniform x (signed or >= 0), weights and bias."""
    n, c, k, h, w, r, s = case[:7]
    x = rng.uniform(-1 if signed else 0, 1, (n, c, h, w)).astype(np.float32)
    tw = P.ternarize(rng.uniform(-1, 1, (k, c, r, s)).astype(np.float32), block=block, residual=residual)
    return x, rng.uniform(-1, 1, k).astype(np.float32), tw, Q.block_ternary_weights(tw)


@pytest.mark.parametrize("isa,native", PATHS)
@pytest.mark.parametrize("case,block,residual", [
    ((2, 3, 20, 9, 9, 3, 3, 1, 1), 16, 0),        # first layer: one quad of 3 channels per block
    ((1, 32, 48, 7, 7, 3, 3, 2, 1), 8, 1),        # two sub-blocks per 16-channel block
    ((2, 16, 16, 6, 6, 1, 1, 1, 0), 4, 2),        # a flush after every VPDPBUSD
    ((1, 64, 33, 8, 8, 3, 3, 1, 1), 32, 1),       # one alpha over two adjacent channel blocks
    ((1, 64, 20, 6, 6, 1, 1, 1, 0), 64, 0),
], ids=str)
def test_ternary_conv_against_float64(rng, monkeypatch, isa, native, case, block, residual):
    """Every residual level count against the float64 convolution of the u8 activations' values
    and the weights those levels reconstruct (TernaryWeights.to_float32(levels))."""
    set_native(monkeypatch, native)
    stride, pad = case[-2:]
    for signed in (True, False):
        x, b, tw, tb = ternary_problem(rng, case, block, residual, signed)
        xd = Q.to_int8_blocked(x).numpy().astype(np.float64)
        for levels in range(1, residual + 2):
            want = ref.conv2d_forward(xd, tw.to_float32(levels).astype(np.float64), b, (stride, stride), (pad, pad),
                                      True)
            got = dlcpu.conv2d(x, tb, b, stride, pad, "relu", precision="ternary", levels=levels, isa=isa)
            assert_close(got, want)
        assert np.array_equal(got, dlcpu.conv2d(x, tw, b, stride, pad, "relu", precision="ternary", isa=isa))


@pytest.mark.parametrize("out_bits", [8, 7])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case,block,residual", [
    ((2, 3, 20, 9, 9, 3, 3, 1, 1), 16, 1),        # first layer: one quad of 3 channels per block
    ((1, 32, 40, 7, 7, 3, 3, 2, 1), 8, 1),        # two sub-blocks per 16-channel block, strided
    ((1, 64, 33, 6, 6, 1, 1, 1, 0), 32, 0),       # one alpha over two adjacent channel blocks
], ids=str)
def test_ternary_u8_output_codes_are_the_float64_codes(rng, monkeypatch, case, block, residual, relu, out_bits):
    """out_scale / residual on ternary weights: the epilogue writes clamp(rint(v / s_out + (s_r /
    s_out)(r - z_r) + z), 0, top) of the convolution v of the u8 values and the weights the levels
    reconstruct -- within one code of float64 and equal away from ties -- bit for bit on every
    path, for every level count; the codes feed the next layer and out= reuses them."""
    k, stride, pad = case[2], case[-2], case[-1]
    top = (1 << out_bits) - 1
    z = 0 if relu else (top + 1) // 2
    act = "relu" if relu else None
    reached = set()
    for signed in (True, False):
        x, b, tw, tb = ternary_problem(rng, case, block, residual, signed)
        xq = Q.to_int8_blocked(x)
        xd = xq.numpy().astype(np.float64)
        for levels in range(1, residual + 2):
            v = ref.conv2d_forward(xd, tw.to_float32(levels).astype(np.float64), b, (stride, stride), (pad, pad))
            s_out = float(np.float32(np.abs(v).max() / 300))             # codes past 255 and below 0
            res = rng.uniform(-1 if signed else 0, 1, v.shape).astype(np.float32) * float(np.abs(v).max())
            for rq in (None, Q.to_int8_blocked(res, bits=out_bits)):
                codes = []
                for isa, native in PATHS:
                    set_native(monkeypatch, native)
                    codes.append(dlcpu.conv2d(xq, tb, b, stride, pad, act, precision="ternary", levels=levels,
                                              isa=isa, out_scale=s_out, out_bits=out_bits, residual=rq))
                assert all(np.array_equal(cd.data, codes[0].data) for cd in codes[1:])
                y8 = codes[0]
                assert y8.precision == "int8" and y8.dtype == np.uint8 and y8.scale == (s_out, z)
                u = (v + (0 if rq is None else rq.numpy().astype(np.float64))) / s_out
                u = np.maximum(u, 0) if relu else u
                want = np.clip(np.rint(u + z), 0, top)
                got = layout.from_blocked(layout.BlockedTensor(y8.data.astype(np.float32), y8.shape))
                assert np.abs(got - want).max() <= 1
                away = np.abs(np.abs(u + z - np.floor(u + z)) - 0.5) > 1e-3
                assert np.array_equal(got[away], want[away])
                reached.update({0, top} & set(np.unique(got)))
    assert reached == {0, top}                                           # both clamps were exercised
    t2 = P.ternarize(rng.uniform(-1, 1, (8, k, 1, 1)).astype(np.float32))
    assert_close(dlcpu.conv2d(y8, t2, precision="ternary").numpy(),     # u8 feeds the next layer
                 ref.conv2d_forward(y8.numpy().astype(np.float64), t2.to_float32().astype(np.float64), None,
                                    (1, 1), (0, 0)))
    kept = y8.data.copy()
    y8.data[...] = 0
    again = dlcpu.conv2d(xq, tb, b, stride, pad, act, precision="ternary", out_scale=s_out, out_bits=out_bits,
                         residual=rq, out=y8)
    assert again is y8 and np.array_equal(y8.data, kept)                # out= was written again
    assert not (tb.codes.flags.writeable or tb.alphas.flags.writeable)  # (ternary_call keeps multipliers)


def test_ternary_format_pairs_any_u8_codes(rng, monkeypatch):
    """Ternary weights take VPMADDUBSW (U7S8) on AVX2 whatever the codes, since a pair sums to at
    most 2 * 255: codes at 255 give the scalar path's bits, as int8's U7S8 needs codes <= 127."""
    assert Q.ternary_format("avx2") == Q._U7S8 and Q.ternary_format("scalar") == Q._U8S8
    x = np.full((1, 64, 5, 5), 1.0, np.float32)
    x[0, :, 0, 0] = -1.0                                  # signed: zero point 128, codes 1..255
    w = np.sign(rng.uniform(-1, 1, (16, 64, 3, 3))).astype(np.float32)
    tb = Q.block_ternary_weights(P.ternarize(w, block=64))
    xq = Q.to_int8_blocked(x)
    assert xq.data.max() == 255
    results = [dlcpu.conv2d(xq, tb, None, 1, 1, precision="ternary", isa=isa) for isa in ISAS]
    assert all(np.array_equal(r.data, results[0].data) for r in results[1:])
    assert_close(results[0].numpy(), ref.conv2d_forward(xq.numpy().astype(np.float64),
                                                        P.ternarize(w, block=64).to_float32().astype(np.float64),
                                                        None, (1, 1), (1, 1)))


def test_ternary_conv_paths_agree_and_levels_trade_error(rng, monkeypatch):
    x = rng.uniform(0, 1, (1, 32, 9, 9)).astype(np.float32)
    w = rng.uniform(-1, 1, (16, 32, 3, 3)).astype(np.float32)
    tb = Q.block_ternary_weights(P.ternarize(w, block=16, residual=2))
    results = []
    for isa, native in PATHS:
        set_native(monkeypatch, native)
        results.append(dlcpu.conv2d(x, tb, None, 1, 1, precision="ternary", isa=isa))
    assert all(np.array_equal(r, results[0]) for r in results[1:])
    exact = ref.conv2d_forward(x, w, None, (1, 1), (1, 1))
    errors = [rel_l2(dlcpu.conv2d(x, tb, None, 1, 1, precision="ternary", levels=lv), exact) for lv in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("call,error,match", [
    (lambda x, w: dlcpu.conv2d(x, w, precision="ternary"), TypeError, "TernaryWeights"),
    (lambda x, w: dlcpu.conv2d(x, P.ternarize(w, block=2), precision="ternary"), ValueError, "must be 4, 8, 16"),
    (lambda x, w: dlcpu.conv2d(np.ones((1, 48, 6, 6), np.float32), P.ternarize(np.ones((4, 48, 3, 3), np.float32),
                                                                               block=12), precision="ternary"),
     ValueError, "must be 4, 8, 16 or a multiple of 16, got 12"),
    (lambda x, w: Q.TernaryBlocked((4, 3, 3, 3), 16, None, None, None), TypeError, "block_ternary_weights"),
    (lambda x, w: P.TernaryWeights((4, 64, 3, 3), 16, P.ternarize(w).alphas, P.ternarize(w).codes), ValueError,
     "do not describe weights of shape"),
    (lambda x, w: layout.BlockedTensor(Q.to_dfp16_blocked(x).data * 2, (1, 3, 6, 6), scale=Q.to_dfp16_blocked(x).scale,
                                       precision="dfp16"), ValueError, "but the data holds"),
    (lambda x, w: layout.BlockedTensor(Q.to_int8_blocked(x).data, (1, 3, 6, 6), scale=(0.1, 300), precision="int8"),
     ValueError, "0, 64 or 128"),
    (lambda x, w: layout.BlockedTensor(Q.block_weights_int8(w).data, (4, 3, 3, 3), "weight",
                                       scale=(np.ones(1, np.float32), np.zeros(1, np.int64)), precision="int8"),
     ValueError, "one per padded output"),
    (lambda x, w: gemm.PackedMatrix(gemm.pack_matmul_operand(w[:, 0, 0], precision="int8").data, (4, 3), "int8",
                                    (np.ones(1, np.float32), np.zeros((1, 1), np.int32))), ValueError,
     "does not describe its data"),
    (lambda x, w: gemm.matmul(x[0, 0], np.ones((6, 2), np.float32), precision="int8",
                              out=gemm.pack_matmul_operand(np.ones((6, 2), np.float32))), ValueError, "out= and accumulate="),
    (lambda x, w: dlcpu.conv2d(layout.to_blocked(x), w, precision="int8", out_scale=0.5,
                               out=dlcpu.conv2d(layout.to_blocked(x), w, precision="int8", out_scale=0.25)),
     ValueError, "this call writes"),
    (lambda x, w: dlcpu.conv2d(x, P.ternarize(w, residual=1), precision="ternary", levels=3), ValueError,
     "levels must be <= 2"),
    (lambda x, w: dlcpu.conv2d(x, P.ternarize(w), precision="ternary", levels=0), ValueError, "levels"),
    (lambda x, w: dlcpu.conv2d(x, w, precision="int8", levels=1), ValueError, "levels= chooses"),
    (lambda x, w: dlcpu.conv2d(x, P.ternarize(w), precision="ternary", algorithm="winograd4"), ValueError,
     "direct algorithm only"),
    (lambda x, w: dlcpu.conv2d(x[:, :2], P.ternarize(w), precision="ternary"), ValueError, "channels"),
    (lambda x, w: dlcpu.conv2d(np.full_like(x, np.nan), P.ternarize(w), precision="ternary"), ValueError, "NaN"),
    (lambda x, w: P.ternarize(w, block=5), ValueError, "does not divide the padded input channels"),
    (lambda x, w: P.ternarize(w, residual=-1), ValueError, "residual"),
    (lambda x, w: Q.block_ternary_weights(w), TypeError, "expected dlcpu.precision.TernaryWeights"),
    (lambda x, w: Q.scale_ternary_outputs(P.ternarize(w), np.ones(4)), TypeError, "expected a TernaryBlocked"),
    (lambda x, w: Q.scale_ternary_outputs(Q.block_ternary_weights(P.ternarize(w)), np.ones(3)), ValueError,
     "expected 4 factors"),
])
def test_ternary_bad_input(call, error, match):
    x = np.ones((1, 3, 6, 6), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    with pytest.raises(error, match=match):
        call(x, w)


# ---------------------------------------------------------------------------------- ternary GEMM
@pytest.mark.parametrize("isa,native", PATHS)
@pytest.mark.parametrize("shape,block,residual", [
    ((5, 3, 7), 16, 0), ((33, 40, 20), 8, 1), ((17, 16, 48), 4, 2), ((64, 64, 33), 32, 1), ((20, 64, 16), 64, 0),
], ids=str)
def test_ternary_matmul_against_float64(rng, monkeypatch, isa, native, shape, block, residual):
    """matmul(precision='ternary') on every level count against the float64 product of x's u8
    values and the weights those levels reconstruct."""
    set_native(monkeypatch, native)
    m, K, n = shape
    for signed in (True, False):
        x = rng.uniform(-1 if signed else 0, 1, (m, K)).astype(np.float32)
        y = rng.uniform(-1, 1, (K, n)).astype(np.float32)
        b = rng.uniform(-1, 1, n).astype(np.float32)
        yt = gemm.pack_matmul_operand(y, precision="ternary", block=block, residual=residual)
        q, s, z = Q.quantize_u8(x, cpu.isa_code(None), 1, "test")
        xd = (q.astype(np.float64) - z) * s
        tw = P.ternarize(np.ascontiguousarray(y.T)[:, :, None, None], block=block, residual=residual)
        for levels in range(1, residual + 2):
            want = xd @ tw.to_float32(levels)[:, :, 0, 0].T.astype(np.float64) + b
            got = dlcpu.matmul(x, yt, bias=b, precision="ternary", levels=levels, isa=isa)
            assert_close(got, want)
        assert np.array_equal(got, dlcpu.matmul(x, yt, bias=b, precision="ternary", isa=isa, n_threads=1))


def test_ternary_matmul_levels_trade_error_and_bad_input(rng):
    x = rng.uniform(-1, 1, (40, 64)).astype(np.float32)
    y = rng.uniform(-1, 1, (64, 24)).astype(np.float32)
    yt = gemm.pack_matmul_operand(y, precision="ternary", block=16, residual=2)
    exact = x.astype(np.float64) @ y
    errors = [rel_l2(dlcpu.matmul(x, yt, precision="ternary", levels=lv), exact) for lv in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]
    y48 = np.ascontiguousarray(y[:48])          # one K chunk holds the whole block of 48 rows
    assert dlcpu.matmul(x[:, :48], gemm.pack_matmul_operand(y48, precision="ternary", block=48),
                        precision="ternary").shape == (40, 24)
    assert np.array_equal(dlcpu.matmul(x, y, precision="ternary"),
                          dlcpu.matmul(x, gemm.pack_matmul_operand(y, precision="ternary"), precision="ternary"))
    for call, match in [
        (lambda: dlcpu.matmul(x, yt, precision="ternary", levels=4), "levels must be <= 3"),
        (lambda: dlcpu.matmul(x, yt, precision="ternary", levels=0), "levels"),
        (lambda: dlcpu.matmul(x, yt, precision="int8"), "packed for precision 'ternary'"),
        (lambda: dlcpu.matmul(x, gemm.pack_matmul_operand(y), precision="ternary"), "packed for precision 'fp32'"),
        (lambda: dlcpu.matmul(x[:, :10], yt, precision="ternary"), "inner dimensions"),
        (lambda: dlcpu.matmul(x, yt, bias=np.ones(3, np.float32), precision="ternary"), "bias must have shape"),
        (lambda: gemm.pack_matmul_operand(y, precision="ternary", block=12), "block=12 does not divide"),
        (lambda: gemm.pack_matmul_operand(y, precision="ternary", block=2), "must be 4, 8, 16"),
        (lambda: gemm.pack_matmul_operand(y, precision="ternary", residual=-1), "residual"),
        (lambda: gemm.pack_matmul_operand(y, precision="int8", block=8), "for precision='ternary'"),
        (lambda: gemm.PackedTernary((4, 4), 16, None, None, None), "make it with pack_matmul_operand"),
        (lambda: __import__("dataclasses").replace(yt, block=4), "do not describe"),
        (lambda: dlcpu.matmul(np.full_like(x, np.nan), yt, precision="ternary"), "NaN"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            call()


@pytest.mark.parametrize("precision", ["int8", "ternary"])
@pytest.mark.parametrize("unsigned", [True, False])
def test_matmul_with_a_calibrated_activation_scale(rng, precision, unsigned):
    """x_scale= quantizes x with a fixed (calibrated) scale: x's u8 codes are rint(x/s) (+128 when
    signed), saturating past the scale's range; the product is then the float64 product of
    those codes' values.  With x's own scale it is the dynamic product, bit for bit."""
    m, K, n = 19, 40, 24
    x = rng.uniform(0 if unsigned else -1, 1, (m, K)).astype(np.float32)
    y = rng.uniform(-1, 1, (K, n)).astype(np.float32)
    b = rng.uniform(-1, 1, n).astype(np.float32)
    packed = gemm.pack_matmul_operand(y, precision=precision, **({"residual": 1} if precision == "ternary" else {}))
    if precision == "int8":
        s_w = P.int8_weight_scales(y, axis=1)
        w = P.to_int8(y, s_w, axis=1).data.astype(np.float64) * s_w
    else:
        w = P.ternarize(np.ascontiguousarray(y.T)[:, :, None, None], block=16, residual=1).to_float32()[:, :, 0, 0].T
    z = 0 if unsigned else 128
    for scale in (0.5 / (255 if unsigned else 127), 2.0 / 255):        # half the range (saturates), twice it
        q = np.clip(np.rint(x.astype(np.float64) / np.float32(scale)) + z, 0, 255)
        want = ((q - z) * np.float32(scale)) @ w + b
        got = dlcpu.matmul(x, packed, bias=b, precision=precision, x_scale=scale, x_unsigned=unsigned)
        assert_close(got, want)
    _, s_own, _ = Q.quantize_u8(x, cpu.isa_code(None), 1, "test")
    assert np.array_equal(dlcpu.matmul(x, packed, bias=b, precision=precision, x_scale=s_own, x_unsigned=unsigned),
                          dlcpu.matmul(x, packed, bias=b, precision=precision))


@pytest.mark.parametrize("kw,error,match", [
    ({"precision": "fp32", "x_scale": 0.1, "x_unsigned": True}, ValueError, "'int8' or 'ternary', not 'fp32'"),
    ({"precision": "int8", "x_unsigned": True}, ValueError, "x_unsigned= goes with a calibrated x_scale"),
    ({"precision": "int8", "x_scale": 0.1}, ValueError, "needs x_unsigned=True/False"),
    ({"precision": "int8", "x_scale": 0.0, "x_unsigned": True}, ValueError, "x_scale must be finite and > 0"),
    ({"precision": "int8", "x_scale": float("nan"), "x_unsigned": True}, ValueError, "x_scale must be finite"),
    ({"precision": "ternary", "x_scale": "1", "x_unsigned": True}, TypeError, "x_scale must be a positive real"),
    ({"precision": "int8", "x_scale": 0.1, "x_unsigned": "no"}, TypeError, "x_unsigned must be True or False"),
])
def test_matmul_calibrated_scale_bad_input(rng, kw, error, match):
    x = rng.uniform(-1, 1, (8, 32)).astype(np.float32)
    y = rng.uniform(-1, 1, (32, 16)).astype(np.float32)
    with pytest.raises(error, match=match):
        dlcpu.matmul(x, y, **kw)


def test_static_quantization_helpers_bad_input(rng):
    """packed_int8_from / packed_ternary_from check what they are given; a scale whose
    products overflow float32 is refused; unsigned= of a calibrated scale is a bool."""
    q = rng.integers(-127, 128, (32, 16)).astype(np.int8)
    s = np.full(16, 0.01, np.float32)
    assert gemm.packed_int8_from(q, s).shape == (32, 16)
    for args, error, match in [
        ((np.full((32, 16), -128, np.int8), s), ValueError, r"\[-127, 127\]"),
        ((q, s[:3]), ValueError, "16 finite values > 0"),
        ((q, np.zeros(16, np.float32)), ValueError, "finite values > 0"),
        ((q[0], s), ValueError, r"\(K, n\) int8 array"),
        ((q.astype(np.int16), s), TypeError, "int8"),
        ((q, np.full(16, "a")), TypeError, "real numbers"),
    ]:
        with pytest.raises(error, match=match):
            gemm.packed_int8_from(*args)
    conv_tw = P.ternarize(rng.uniform(-1, 1, (16, 16, 3, 3)).astype(np.float32), block=16)
    with pytest.raises(ValueError, match=r"\(n, K, 1, 1\)"):
        gemm.packed_ternary_from(conv_tw)
    x = rng.uniform(-1, 1, (8, 32)).astype(np.float32)
    yt = gemm.pack_matmul_operand(rng.uniform(-1, 1, (32, 16)).astype(np.float32), precision="ternary")
    with pytest.raises(ValueError, match="overflows float32"):
        dlcpu.matmul(x, yt, precision="ternary", x_scale=1e37, x_unsigned=False)
    with pytest.raises(TypeError, match="unsigned must be True or False"):
        Q.to_int8_blocked(rng.uniform(0, 1, (1, 16, 4, 4)).astype(np.float32), 0.01, unsigned=1)


def test_matmul_calibrated_scale_refuses_nan_in_x(rng):
    x = rng.uniform(-1, 1, (8, 32)).astype(np.float32)
    x[3, 5] = np.inf
    y = gemm.pack_matmul_operand(rng.uniform(-1, 1, (32, 16)).astype(np.float32), precision="int8")
    with pytest.raises(ValueError, match="Inf"):
        dlcpu.matmul(x, y, precision="int8", x_scale=0.01, x_unsigned=False)


def test_int8_7bit_activations_follow_the_rule(rng):
    """bits=7: codes 0..127; max|x| / 63 with zero point 64 for signed data, max|x| / 127 with
    zero point 0 for unsigned; a calibrated scale's codes clamp at 127.  Against the float64
    rule (round half to even)."""
    x = rng.uniform(-1, 1, (2, 5, 4, 4)).astype(np.float32)
    for data, levels, zero in ((x, 63, 64), (np.abs(x), 127, 0)):
        xq = Q.to_int8_blocked(data, bits=7)
        s, z = xq.scale
        assert z == zero and s == P._int8_scale(float(np.abs(data).max()), levels)
        codes = np.clip(np.rint(data.astype(np.float64) / s) + z, 0, 127)
        assert np.array_equal(xq.numpy(), ((codes - z) * s).astype(np.float32))
        assert int(xq.data.max()) <= 127
    pos = np.abs(x)
    small = float(pos.max()) / 300        # a calibrated scale that the data overflows
    xq = Q.to_int8_blocked(pos, small, unsigned=True, bits=7)
    assert xq.scale == (float(np.float32(small)), 0) and int(xq.data.max()) == 127
    assert Q.to_int8_blocked(x, small, unsigned=False, bits=7).scale[1] == 64
    assert int(Q.to_int8_blocked(pos, small, unsigned=True).data.max()) == 255      # 8 bits: clamps at 255
    for bad in (6, 9, True, 7.0, "7", np.array([7, 8])):
        with pytest.raises(ValueError, match="bits must be 8 or 7"):
            Q.to_int8_blocked(x, bits=bad)
    for small_int in (np.int8(8), np.uint8(8), np.int16(7), np.int8(7)):     # NumPy ints: as Python's
        for data in (x, pos):
            got = Q.to_int8_blocked(data, bits=small_int)
            want = Q.to_int8_blocked(data, bits=int(small_int))
            assert got.scale == want.scale and type(got.scale[1]) is int and np.array_equal(got.data, want.data)
    tiny = np.full((1, 3, 2, 2), 2.65e-43, np.float32)     # a subnormal scale, rounded down: still <= 127
    assert int(Q.to_int8_blocked(tiny, bits=7).data.max()) <= 127
    assert int(Q.to_int8_blocked(-tiny, bits=7).data.min()) >= 0


def test_u8_format_takes_the_7bit_kernels_only_where_they_are_exact(rng):
    """The AVX2 path pairs products in VPMADDUBSW for tensors whose codes and zero point are all
    <= 127; other paths and other tensors keep the widening kernels."""
    x = rng.uniform(-1, 1, (1, 20, 5, 5)).astype(np.float32)
    seven, eight = Q.to_int8_blocked(x, bits=7), Q.to_int8_blocked(x)
    assert Q.u8_format(seven, "avx2") == Q._U7S8
    assert Q.u8_format(eight, "avx2") == Q._U8S8           # codes up to 255, zero point 128
    assert Q.u8_format(seven, "avx512") == Q._U8S8 and Q.u8_format(seven, "scalar") == Q._U8S8
    small = Q.to_int8_blocked(np.abs(x) * 0.1, 1.0, unsigned=True)    # 8-bit codes that happen to be small
    assert int(small.data.max()) <= 127 and Q.u8_format(small, "avx2") == Q._U7S8
    padded = dataclasses.replace(small, scale=(small.scale[0], 128))  # the padding fill 128 does not fit
    assert Q.u8_format(padded, "avx2") == Q._U8S8


@pytest.mark.parametrize("case", GEOMETRY, ids=str)
def test_int8_7bit_conv_agrees_on_every_path_bit_for_bit(rng, monkeypatch, case):
    """7-bit activations run the VPMADDUBSW kernels on AVX2 and the 8-bit ones elsewhere: the
    same exact int32 sums, so the same bits on every path and thread count, and the float64
    convolution of the dequantized operands.  The extreme operands (every code 127 against
    weights of +-127, pairs summing to 32,258 in int16) included."""
    n, c, k, h, w, r, s, stride, pad = case
    wt = rng.uniform(-1, 1, (k, c, r, s)).astype(np.float32)
    extreme = np.where(rng.uniform(size=(k, c, r, s)) < 0.5, -1.0, 1.0).astype(np.float32)
    for signed, weights in ((True, wt), (False, wt), (False, extreme)):
        x = rng.uniform(-1 if signed else 0, 1, (n, c, h, w)).astype(np.float32)
        if weights is extreme:
            x[...] = 1.0                                   # every code 127
        xq, wq = Q.to_int8_blocked(x, bits=7), Q.block_weights_int8(weights)
        want = ref.conv2d_forward(xq.numpy().astype(np.float64), wq.numpy().astype(np.float64), None,
                                  (stride, stride), (pad, pad))
        results = []
        for isa, native in PATHS:
            set_native(monkeypatch, native)
            results.append(dlcpu.conv2d(xq, wq, None, stride, pad, precision="int8", isa=isa).numpy())
        results.append(dlcpu.conv2d(xq, wq, None, stride, pad, precision="int8", n_threads=1).numpy())
        assert all(np.array_equal(r_, results[0]) for r_ in results[1:])
        assert_close(results[0], want)


def test_ternary_conv_on_7bit_activations_agrees_on_every_path(rng, monkeypatch):
    x = Q.to_int8_blocked(rng.uniform(-1, 1, (2, 32, 9, 9)).astype(np.float32), bits=7)
    tw = P.ternarize(rng.uniform(-1, 1, (20, 32, 3, 3)).astype(np.float32), block=8, residual=1)
    tb = Q.block_ternary_weights(tw)
    results = []
    for isa, native in PATHS:
        set_native(monkeypatch, native)
        results.append(dlcpu.conv2d(x, tb, None, 1, 1, precision="ternary", isa=isa).numpy())
    assert all(np.array_equal(r_, results[0]) for r_ in results[1:])
    want = ref.conv2d_forward(x.numpy().astype(np.float64), tw.to_float32().astype(np.float64), None, (1, 1), (1, 1))
    assert_close(results[0], want)


@pytest.mark.parametrize("precision", ["int8", "ternary"])
@pytest.mark.parametrize("calibrated", [False, True])
def test_matmul_7bit_x_agrees_on_every_path(rng, monkeypatch, precision, calibrated):
    """matmul(x_bits=7): x in 7-bit codes (the VPMADDUBSW kernels on AVX2), the same bits on
    every path, and the float64 product of the values it multiplies."""
    x = rng.uniform(-1, 1, (37, 70)).astype(np.float32)
    w = rng.uniform(-1, 1, (70, 40)).astype(np.float32)
    y = gemm.pack_matmul_operand(w, precision=precision)
    kw = {"x_scale": float(np.abs(x).max()) / 50, "x_unsigned": False} if calibrated else {}
    results = []
    for isa, native in PATHS:
        set_native(monkeypatch, native)
        results.append(gemm.matmul(x, y, precision=precision, isa=isa, x_bits=7, **kw))
    assert all(np.array_equal(r_, results[0]) for r_ in results[1:])
    if calibrated:      # codes clamped at 127: zero point 64, scale x_scale
        s = np.float32(kw["x_scale"])
        xv = (np.clip(np.rint(x.astype(np.float64) / s) + 64, 0, 127) - 64) * s
    else:
        s = P._int8_scale(float(np.abs(x).max()), 63)
        xv = (np.rint(x.astype(np.float64) / s)) * s
    wv = Q.block_weights_int8(w.T[:, :, None, None]).numpy()[:, :, 0, 0].T if precision == "int8" else \
        P.ternarize(w.T[:, :, None, None], block=16, residual=0).to_float32()[:, :, 0, 0].T
    assert_close(results[0], xv @ wv.astype(np.float64))
    with pytest.raises(ValueError, match="x_bits must be 8 or 7"):
        gemm.matmul(x, y, precision=precision, x_bits=6)
    with pytest.raises(ValueError, match="x_bits= sets the u8 codes of x"):
        gemm.matmul(x, w, precision="bf16", x_bits=7)


def test_bench_precision_quantizes_int8_as_wide_as_its_peer(monkeypatch):
    monkeypatch.setattr(benchmarks, "int8_peer_full_range", lambda: False)
    assert benchmarks.int8_activation_bits() == 7
    monkeypatch.setattr(benchmarks, "int8_peer_full_range", lambda: True)
    assert benchmarks.int8_activation_bits() == 8


def test_7bit_codes_carry_their_bound_and_skip_the_scan(rng, monkeypatch):
    """7-bit codes made by dlcpu say so (code_bound 127): to_int8_blocked(bits=7), conv2d's int8
    and ternary epilogues with out_bits=7 and the u8 max pool of such codes; u8_format then picks
    VPMADDUBSW on AVX2 without scanning the codes.  8-bit codes, a replaced copy and hand-made
    tensors carry no bound (and are scanned); a wrong bound and an 8-bit write into a 7-bit out=
    are refused."""
    x = rng.uniform(-1, 1, (2, 20, 8, 8)).astype(np.float32)
    w = rng.uniform(-1, 1, (24, 20, 3, 3)).astype(np.float32)
    x7, x8 = Q.to_int8_blocked(x, bits=7), Q.to_int8_blocked(x)
    assert x7.code_bound == 127 and x8.code_bound is None
    wq, tw = Q.block_weights_int8(w), P.ternarize(w)
    made = [dlcpu.conv2d(x7, wq, None, 1, 1, "relu", precision="int8", out_scale=0.05, out_bits=7),
            dlcpu.conv2d(x7, tw, None, 1, 1, precision="ternary", out_scale=0.05, out_bits=7)]
    made.append(pool.max_pool2d(made[0], 3, 2, 1)[0])
    assert all(t.code_bound == 127 and t.data.max() <= 127 for t in made)
    assert dlcpu.conv2d(x7, wq, None, 1, 1, precision="int8", out_scale=0.05).code_bound is None
    assert dataclasses.replace(x7, data=x7.data.copy()).code_bound is None
    scans = []
    monkeypatch.setattr(Q, "u8_codes_format", lambda *a: scans.append(a) or Q._U8S8)
    assert [Q.u8_format(t, "avx2") for t in (x7, *made)] == [Q._U7S8] * 4 and not scans
    Q.u8_format(x8, "avx2")
    assert len(scans) == 1
    for bound, scale in ((255, (0.1, 0)), (127, (0.1, 128)), (127.0, (0.1, 0))):
        with pytest.raises(ValueError, match="code bound .127. is for 7-bit u8 activations"):
            layout.BlockedTensor(x7.data, x7.shape, scale=scale, precision="int8", _code_bound=bound)
    assert type(layout.BlockedTensor(x7.data, x7.shape, scale=x7.scale, precision="int8",
                                     _code_bound=np.uint8(127)).code_bound) is int
    with pytest.raises(ValueError, match="out holds 7-bit codes"):
        dlcpu.conv2d(x7, wq, None, 1, 1, "relu", precision="int8", out_scale=0.05, out=made[0])


@pytest.mark.parametrize("bits", [8, 7])
@pytest.mark.parametrize("out_bits", [8, 7])
def test_int8_u8_output_codes_agree_on_every_path(rng, monkeypatch, bits, out_bits):
    """The vector epilogues (AVX-512: VPMOVUSDB, with a clamp at 127 for 7-bit codes; AVX2: two
    unsigned packs) write the scalar path's u8 codes bit for bit, both clamps and ties included,
    after a 1x1 layer whose outputs sum few quads and a 3x3 one."""
    top_code = (1 << out_bits) - 1
    for c, k, r, pad in ((64, 40, 1, 0), (20, 33, 3, 1)):
        x = rng.uniform(-1, 1, (2, c, 7, 9)).astype(np.float32)
        xq = Q.to_int8_blocked(x, bits=bits)
        wq = Q.block_weights_int8(rng.uniform(-1, 1, (k, c, r, r)).astype(np.float32))
        b = rng.uniform(-1, 1, k).astype(np.float32)
        y32 = dlcpu.conv2d(xq, wq, b, 1, pad, precision="int8", isa="scalar")
        top = float(np.abs(y32.data).max() / 300)          # codes past 255 and below 0
        for act, s_out in ((None, top), ("relu", top),
                           (None, 0.5 * float(xq.scale[0] * wq.scale[0].min()))):    # the last: many ties
            codes = []
            for isa, native in PATHS:
                set_native(monkeypatch, native)
                codes.append(dlcpu.conv2d(xq, wq, b, 1, pad, act, precision="int8", isa=isa, out_scale=s_out,
                                          out_bits=out_bits).data)
            assert all(np.array_equal(cd, codes[0]) for cd in codes[1:])
            assert (codes[0] == top_code).any() and (codes[0] == 0).any() and codes[0].max() == top_code
