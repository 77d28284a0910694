"""Integer operands of the BRGEMM kernels (pyx/kernels/brgemm_int.h): int8 and DFP-16 tensors in
the blocked layouts, and the description of one integer call -- its flush schedule, multipliers
and zero-point compensation -- with the proof that its int32 sums cannot overflow.

    xq = to_int8_blocked(x)                  # u8 activations: scale s_x, zero point 0 or 128
    wq = block_weights_int8(w)               # s8 weights in VNNI quads, one scale per output channel
    xd = to_dfp16_blocked(x); wd = block_weights_dfp16(w)   # int16 mantissas, shared exponents
    conv2d(xq, wq, precision="int8"); conv2d(xd, wd, precision="dfp16")

Layouts (DESIGN.md §3): activations keep I[N][C/16][H][W][16] with uint8 or int16 elements;
weights keep W[K/16][C/16][R][S] blocks of 256 elements, each block as VNNI groups -- int8 quads
[4][16k][4] (channels 4q..4q+3 of output k side by side: one VPDPBUSD operand), int16 pairs
[8][16k][2] (one VPDPWSSD operand).  Padded channels hold zero weights, so whatever the padded
activation channels hold adds nothing.

int8: x ~ s_x * (q_x - z) with z = 0 when every value is >= 0 (after a ReLU: u8 spans [0, 255]
for [0, max]) and z = 128 otherwise (u8 = round(x / s_x) + 128 with s_x = max|x| / 127, so that
VPDPBUSD's unsigned operand can carry signed data); w ~ s_w[k] * q_w, symmetric, |q_w| <= 127.
7-bit activations (to_int8_blocked(bits=7)) use codes 0..127 and z = 0 or 64: coarser, and
exact in AVX2's VPMADDUBSW, which the kernels then use (u8_format).
Then  y[k] = s_x * s_w[k] * (sum q_w * q_x  -  z * sum q_w[k])  (+ bias): the kernel sums in
int32, subtracts the compensation z * sum q_w[k] (exact, in int32) and multiplies once.  Zero
padding around the image must be the value 0, so the tile copies pad with the byte z.

DFP-16: x = I_x * 2**E_x, w = I_w * 2**E_w, y = 2**(E_x + E_w) * sum I_x * I_w, with
dlcpu.precision.to_dfp16's exponent and rounding and one more clamp: |I| <= 2**(15 - headroom) - 1
(only a value within half an ulp of the top can round up to 2**(15 - headroom); clamped, it loses
that ulp, and the int32 chains get twice as long: 16 pairs instead of 15 with 2 bits).

Why the sums cannot overflow: one VPDPBUSD adds four products of at most 255 * 128, one
VPDPWSSD two of at most M_x * M_w, where M_x, M_w bound the mantissa magnitudes (M = 2**13 - 1
with the default 2 bits of headroom).  A chain of n instructions stays below 2**31 when
n * (that) <= 2**31 - 1; the kernel converts its int32 tile to fp32 and adds it into C after
every such chain (int8: 4112 channel blocks, far beyond a ResNet layer's 4608 channels x taps /
16 = 288; DFP-16 with 2 bits of headroom: 16 pairs, two channel blocks).  chain_schedule below is
that arithmetic; tests check it against the worst case.
"""
import math
from dataclasses import dataclass

import numpy as np

from . import cpu
from ._ext import precision as _precision
from .layout import CB, BlockedTensor, block_weights, to_blocked
from .precision import (
    DFP16_HEADROOM,
    TernaryWeights,
    _absmax,
    _dfp16_arguments,
    _headroom,
    _int8_scale,
    _to_dfp16,
    check_activation_bits,
    check_precision,
    u8_code_range,
)

INT32_MAX = 2 ** 31 - 1
#: the zero point of u8 activations that hold signed values
U8_ZERO_POINT = 128
#: the largest |q| of a symmetric int8 weight and the largest u8 activation; the chain bound
#: takes 128 (a hand-made int8 weight may hold -128)
INT8_WEIGHT_MAX, U8_MAX = 127, 255
INT8_CODE_BOUND = 128
#: the integer formats with kernels, the element type of their activations and weights, and the
#: channels one VNNI instruction sums per output (its group)
INTEGER_FORMATS = ("int8", "dfp16")
ACTIVATION_DTYPES = {"int8": np.uint8, "dfp16": np.int16}
WEIGHT_DTYPES = {"int8": np.int8, "dfp16": np.int16}
GROUP = {"int8": 4, "dfp16": 2}
#: formats of brgemm_int.h's call description (U7S8: u8 codes that are all <= 127)
_U8S8, _S16, _U7S8 = 0, 1, 2
#: the largest 7-bit code (ACTIVATION_BITS, from dlcpu.precision: the widths to_int8_blocked
#: quantizes to)
U7_MAX = 127


def native_vnni(isa_name):
    """Whether the integer kernels run VPDPBUSD / VPDPWSSD: the AVX-512 path of a CPU with
    avx512_vnni (the other paths form the same integer sums with VPMADDWD)."""
    return isa_name == "avx512" and cpu.features()["avx512_vnni"]


# ---------------------------------------------------------------------------------- layouts
def _vnni_groups(blocks, group, n_threads=None):
    """(..., 16c, 16k) -> (..., 16c/group, 16k, group), returned as (..., 16, 16)."""
    if blocks.dtype in (np.int8, np.uint8, np.int16) and blocks.size:
        src = np.ascontiguousarray(blocks)
        as_signed = np.int16 if src.dtype == np.int16 else np.int8
        out = np.empty(src.shape, src.dtype)
        _precision.group_block_rows(src.reshape(-1).view(as_signed), out.reshape(-1).view(as_signed), group,
                                    cpu.resolve_threads(n_threads))
        return out
    lead = blocks.shape[:-2]
    g = blocks.reshape(*lead, CB // group, group, CB)
    return np.ascontiguousarray(np.swapaxes(g, -1, -2)).reshape(*lead, CB, CB)


def _from_vnni_groups(blocks, group):
    lead = blocks.shape[:-2]
    g = blocks.reshape(*lead, CB // group, CB, group)
    return np.ascontiguousarray(np.swapaxes(g, -1, -2)).reshape(*lead, CB, CB)


def _fp32_activation(x, fn, n_threads):
    if isinstance(x, BlockedTensor):
        if x.kind != "activation" or x.precision != "fp32":
            raise TypeError(f"{fn}: expected an NCHW float32 array or an fp32 activation BlockedTensor, got a "
                            f"{x.precision} {x.kind} BlockedTensor")
        return x
    return to_blocked(x, n_threads)


def _fp32_weight(w, fn, n_threads):
    if isinstance(w, BlockedTensor):
        if w.kind != "weight" or w.precision != "fp32":
            raise TypeError(f"{fn}: expected KCRS float32 weights or an fp32 weight BlockedTensor, got a "
                            f"{w.precision} {w.kind} BlockedTensor")
        return w
    return block_weights(w, n_threads)


# ------------------------------------------------------------------------------------- int8
def to_int8_blocked(x, scale=None, *, unsigned=None, bits=8, n_threads=None, isa=None):
    """NCHW float32 (or an fp32 activation BlockedTensor) -> u8 activation BlockedTensor with
    scale (s_x, zero_point).  scale=None: from this tensor (max|x| / 255 when no value is
    negative, else max|x| / 127 with zero point 128); or a calibrated scale with `unsigned`
    (dlcpu.precision.ActivationCalibrator's scale and unsigned).  bits=7: codes 0..127 (max|x| /
    127, or max|x| / 63 with zero point 64; a calibrated scale's codes clamped at 127), which
    the AVX2 kernels multiply in half the instructions (precision.ACTIVATION_BITS).  NaN/Inf are refused."""
    fn = "to_int8_blocked"
    bits = check_activation_bits(bits, fn)
    xb = _fp32_activation(x, fn, n_threads)
    code, threads = cpu.isa_code(isa), cpu.resolve_threads(n_threads)
    if scale is None:
        if unsigned is not None:
            raise ValueError(f"{fn}: unsigned= goes with a calibrated scale; without one it follows the data")
        data, scale, zero_point = quantize_u8(xb.data, code, threads, fn, bits=bits)
        return BlockedTensor(data, tuple(xb.shape), "activation", scale=(scale, zero_point), precision="int8",
                             _code_bound=code_bound_of(bits))
    scale, zero_point = calibrated_u8_scale(scale, unsigned, fn, bits=bits)
    _absmax(xb.data, code, threads, fn, "int8 quantization")         # NaN/Inf refused
    data, _, _ = quantize_u8(xb.data, code, threads, fn, scale, zero_point, bits=bits)
    return BlockedTensor(data, tuple(xb.shape), "activation", scale=(scale, zero_point), precision="int8",
                         _code_bound=code_bound_of(bits))


def code_bound_of(bits):
    """BlockedTensor's _code_bound for codes `bits` wide: 127 for 7-bit codes, None for 8-bit
    ones (every byte is a code: nothing to say)."""
    return U7_MAX if bits == 7 else None


def calibrated_u8_scale(scale, unsigned, fn, names=("scale", "unsigned"), bits=8):
    """(scale, zero point) of a calibrated per-tensor u8 quantization, checked: scale a finite
    positive number (as float32), unsigned a bool (zero point 0; else 128, or 64 for 7 bits)."""
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: {names[0]} must be a positive real number, got {scale!r}")
    scale = float(np.float32(scale))
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{fn}: {names[0]} must be finite and > 0, got {scale}")
    if unsigned is None:
        raise ValueError(f"{fn}: a calibrated {names[0]} needs {names[1]}=True/False (ActivationCalibrator.unsigned)")
    if not isinstance(unsigned, (bool, np.bool_)):
        raise TypeError(f"{fn}: {names[1]} must be True or False, got {unsigned!r}")
    return scale, u8_code_range(bits, unsigned)[1]


def quantize_u8(a, code, threads, fn, scale=None, zero_point=None, bits=8):
    """(u8 array of a's shape, scale, zero point) of a float32 array: with scale None, the
    per-tensor rule of the module doc (NaN/Inf refused); else that scale and zero point.
    bits=7: codes 0..127 (from the data: max|x| / 127, or / 63 with zero point 64; a given
    scale's codes clamped at 127)."""
    if scale is None:
        absmax = _absmax(a, code, threads, fn, "int8 quantization")
        unsigned = not bool((a < 0).any())
        levels, zero_point = u8_code_range(bits, unsigned)
        scale = float(_int8_scale(absmax, levels))
    out = np.empty(a.shape, np.uint8)
    _precision.quantize_u8(a.reshape(-1), out.reshape(-1), scale, zero_point, code, threads)
    if bits == 7:
        # a given scale can put codes past 127, and so can a scale from the data when it is
        # subnormal (_int8_scale rounds it down): the clamp keeps every code 7 bits wide
        np.minimum(out, U7_MAX, out=out)
    return out, scale, zero_point


def u8_format(xq, isa_name):
    """The integer call format for u8 activations xq on the `isa_name` path: U7S8 where the AVX2
    kernels can form pairs of products in VPMADDUBSW exactly (every code, and the zero point that
    fills the padding, at most 127: any tensor of 7-bit codes, whatever made it), else U8S8.
    The other paths sum both alike, so they skip the scan of the codes, and so does a tensor
    whose maker bounds its codes (BlockedTensor.code_bound)."""
    if isa_name == "avx2" and xq.code_bound is not None and xq.code_bound <= U7_MAX and xq.scale[1] <= U7_MAX:
        return _U7S8
    return u8_codes_format(xq.data, xq.scale[1], isa_name)


def u8_codes_format(codes, zero_point, isa_name):
    """u8_format for a u8 array and its zero point (matmul's packed activations)."""
    if isa_name != "avx2" or zero_point > U7_MAX:
        return _U8S8
    return _U7S8 if int(codes.max(initial=0)) <= U7_MAX else _U8S8


def ternary_format(isa_name):
    """The integer call format of ternary weights on the `isa_name` path: U7S8 on AVX2 for any u8
    codes, since a VPMADDUBSW pair of a u8 code and a code in {-1, 0, 1} is at most 2 * 255 in
    magnitude, far from int16 saturation, so the exact sums need no scan of the codes.  It
    spends half the AVX2 multiply-type instructions per quad of U8S8 (which widens both
    operands): 94 against 105 ms over seven ResNet-50 layers at batch 4, 2 threads, the same
    bits (measured 2026-12-03, /work/bench21/tern_fmt.py)."""
    return _U7S8 if isa_name == "avx2" else _U8S8


def product_exponent(e_x, e_w, fn):
    """2**(E_x + E_w), the multiplier of a DFP-16 product, as float32; refused outside fp32's
    normal range (the operands' magnitudes are then too far apart or too extreme)."""
    e = e_x + e_w
    if not -126 <= e <= 127:
        raise ValueError(f"{fn}: the product's exponent E_x + E_w = {e_x} + {e_w} = {e} is outside fp32's normal "
                         "range [-126, 127]; rescale the operands")
    return np.float32(math.ldexp(1.0, e))


def block_weights_int8(w, *, n_threads=None):
    """KCRS float32 (or an fp32 weight BlockedTensor) -> s8 weight BlockedTensor in VNNI quads,
    scale = (per-output-channel scales, per-output-channel sums of the int8 weights) -- the sums
    give the zero-point compensation.  Padded output channels get scale 1 and zero weights."""
    fn = "block_weights_int8"
    wb = _fp32_weight(w, fn, n_threads)
    data = wb.data                                          # (Kb, Cb, R, S, 16c, 16k)
    if not np.isfinite(data).all():
        _absmax(data, cpu.isa_code(None), cpu.resolve_threads(n_threads), fn, "an int8 scale")
    per_k = np.abs(np.moveaxis(data, -1, 1)).reshape(data.shape[0], CB, -1).max(axis=2).reshape(-1)
    scales = np.array([_int8_scale(float(m), INT8_WEIGHT_MAX) for m in per_k], np.float32)
    k_scale = scales.reshape(data.shape[0], 1, 1, 1, 1, CB).astype(np.float64)
    q = np.clip(np.rint(data.astype(np.float64) / k_scale), -INT8_WEIGHT_MAX, INT8_WEIGHT_MAX).astype(np.int8)
    return _int8_weight_tensor(q, scales, tuple(wb.shape))


def _int8_weight_tensor(q, scales, shape):
    """The int8 weight BlockedTensor of blocked codes q (Kb, Cb, R, S, 16c, 16k) and padded scales."""
    sums = np.moveaxis(q.astype(np.int64), -1, 1).reshape(q.shape[0], CB, -1).sum(axis=2).reshape(-1)
    return BlockedTensor(_vnni_groups(q, 4), shape, "weight", scale=(scales, sums), precision="int8")


def int8_weights_from_codes(codes, scales):
    """The int8 weight BlockedTensor of KCRS int8 codes in [-127, 127] and their per-output-channel
    scales (a saved quantized model: the codes are kept, not quantized again)."""
    fn = "int8_weights_from_codes"
    scales = check_int8_codes(codes, scales, 4, "KCRS", fn)
    q = block_weights(codes.astype(np.float32)).data.astype(np.int8)        # small integers: exact
    padded = np.ones(q.shape[0] * CB, np.float32)
    padded[: codes.shape[0]] = scales
    return _int8_weight_tensor(q, padded, tuple(codes.shape))


def check_int8_codes(codes, scales, ndim, layout, fn):
    """Symmetric int8 weight codes (an ndim-d int8 array, `layout` naming its axes, output
    channel first) and their per-output-channel scales, checked: codes in [-127, 127], scales
    finite and > 0.  Returns the scales as float32."""
    if not isinstance(codes, np.ndarray) or codes.dtype != np.int8 or codes.ndim != ndim:
        raise TypeError(f"{fn}: codes must be a {ndim}-d int8 {layout} array, got "
                        f"{getattr(codes, 'dtype', type(codes).__name__)}")
    if np.abs(codes.astype(np.int16)).max(initial=0) > INT8_WEIGHT_MAX:
        raise ValueError(f"{fn}: codes must lie in [-127, 127] (symmetric int8)")
    if np.asarray(scales).dtype.kind not in "fiu":
        raise TypeError(f"{fn}: scales must be real numbers, got {np.asarray(scales).dtype}")
    scales = np.asarray(scales, np.float32)
    if scales.shape != (codes.shape[0],) or not (np.isfinite(scales).all() and (scales > 0).all()):
        raise ValueError(f"{fn}: scales must be {codes.shape[0]} finite values > 0, got shape {scales.shape}")
    return scales


# ------------------------------------------------------------------------------------ DFP-16
def to_dfp16_blocked(x, *, headroom=DFP16_HEADROOM, rounding="nearest", seed=0, n_threads=None, isa=None):
    """NCHW float32 (or an fp32 activation BlockedTensor) -> int16 activation BlockedTensor,
    scale = (shared exponent E, bound on |mantissa|); dlcpu.precision.to_dfp16's rules."""
    fn = "to_dfp16_blocked"
    xb = _fp32_activation(x, fn, n_threads)
    return _dfp16_blocked(xb, "activation", headroom, rounding, seed, n_threads, isa, fn)


def block_weights_dfp16(w, *, headroom=DFP16_HEADROOM, rounding="nearest", seed=0, n_threads=None, isa=None):
    """KCRS float32 (or an fp32 weight BlockedTensor) -> int16 weight BlockedTensor in VNNI pairs,
    scale = (shared exponent E, bound on |mantissa|)."""
    fn = "block_weights_dfp16"
    wb = _fp32_weight(w, fn, n_threads)
    return _dfp16_blocked(wb, "weight", headroom, rounding, seed, n_threads, isa, fn)


def _dfp16_blocked(t, kind, headroom, rounding, seed, n_threads, isa, fn):
    headroom, seed = _dfp16_arguments(headroom, rounding, seed, fn)
    d, bound = _to_dfp16(t.data, headroom, rounding, seed, cpu.isa_code(isa), cpu.resolve_threads(n_threads), fn,
                         within_headroom=True)
    data = _vnni_groups(d.mantissas, 2) if kind == "weight" else d.mantissas
    return BlockedTensor(data, tuple(t.shape), kind, scale=(d.exponent, bound), precision="dfp16",
                         _bound_from_data=True)


def round_to_dfp16(a, *, headroom=DFP16_HEADROOM, n_threads=None, isa=None):
    """The float32 values the DFP-16 kernels multiply for the float32 array a: its mantissas
    (with the kernels' clamp, module doc) times 2**E; for weight updates that take DFP-16 values
    in fp32."""
    fn = "round_to_dfp16"
    headroom = _headroom(headroom, fn)
    a = np.ascontiguousarray(a)
    if a.dtype != np.float32:
        raise TypeError(f"{fn}: expected a float32 array, got {a.dtype}")
    d, _ = _to_dfp16(a, headroom, "nearest", 0, cpu.isa_code(isa), cpu.resolve_threads(n_threads), fn,
                     within_headroom=True)
    return d.to_float32()


# ----------------------------------------------------------------------------------- ternary
@dataclass(frozen=True, eq=False)
class TernaryBlocked:
    """Block-ternary weights (dlcpu.precision.TernaryWeights) in the kernels' layout: codes
    (levels, K/16, C/16, R, S, 16, 16) int8 in VNNI quads, alphas (levels, K/16, C/16, R, S,
    groups, 16) float32 -- one 16-lane vector of alpha per (16-channel block, sub-block of N
    channels), replicated over the blocks of one N-channel block when N > 16 -- and per level the
    per-output-channel sums alpha * sum(t) (the zero-point compensation).  Its arrays are
    read-only: ternary_call keeps the float32 multipliers of its last call on the object, which
    a changed alpha would leave stale."""
    shape: tuple
    block: int
    codes: np.ndarray
    alphas: np.ndarray
    code_sums: np.ndarray
    _made: bool = False

    def __post_init__(self):
        if not self._made:        # the kernels read these arrays by the shape: only block_ternary_weights makes one
            raise TypeError("TernaryBlocked: make it with dlcpu.quantized.block_ternary_weights(TernaryWeights)")
        for a in (self.codes, self.alphas, self.code_sums):
            a.flags.writeable = False

    @property
    def levels(self):
        return self.codes.shape[0]


def block_ternary_weights(tw):
    """TernaryWeights of a (K, C, R, S) convolution -> TernaryBlocked."""
    fn = "block_ternary_weights"
    if not isinstance(tw, TernaryWeights):
        raise TypeError(f"{fn}: expected dlcpu.precision.TernaryWeights (precision.ternarize), got {type(tw).__name__}")
    if len(tw.shape) != 4:
        raise ValueError(f"{fn}: expected the weights of a 2-d convolution (K, C, R, S), got shape {tw.shape}")
    n = tw.block
    if n % GROUP["int8"] or (CB % n and n % CB):
        raise ValueError(f"{fn}: the kernels sum channels in groups of 4 (VPDPBUSD) within blocks of {CB}, so "
                         f"the block size must be 4, 8, 16 or a multiple of 16, got {n}")
    K, _, R, S = tw.shape
    L, c_pad = tw.codes.shape[0], tw.codes.shape[2]
    kb, cb = -(-K // CB), c_pad // CB
    codes = np.zeros((L, kb * CB, c_pad, R, S), np.int8)
    codes[:, :K] = tw.codes
    # (L, Kb, 16k, Cb, 16c, R, S) -> (L, Kb, Cb, R, S, 16c, 16k)
    blocks = codes.reshape(L, kb, CB, cb, CB, R, S).transpose(0, 1, 3, 5, 6, 4, 2)
    groups = max(1, CB // n)
    alphas = np.zeros((L, kb * CB, c_pad // n, R, S), np.float32)
    alphas[:, :K] = tw.alphas
    # one vector per (block, sub-block): the alpha of the N-block holding channels sub*N.. of block cb
    first_channel = np.arange(cb)[:, None] * CB + np.arange(groups)[None, :] * min(n, CB)      # (Cb, groups)
    a = alphas[:, :, first_channel // n]                                   # (L, Kpad, Cb, groups, R, S)
    a = a.reshape(L, kb, CB, cb, groups, R, S).transpose(0, 1, 3, 5, 6, 4, 2)   # (L, Kb, Cb, R, S, groups, 16k)
    sums = (tw.alphas.astype(np.float64) * tw.codes.reshape(L, K, c_pad // n, n, R, S).sum(axis=3)).reshape(L, K, -1)
    return TernaryBlocked(tuple(tw.shape), n, _vnni_groups(np.ascontiguousarray(blocks), 4), np.ascontiguousarray(a),
                          sums.sum(axis=2), _made=True)


def scale_ternary_outputs(tb, factors):
    """TernaryBlocked `tb` with output channel k's alphas (every level and block) times
    factors[k] -- a batch norm's gamma / sqrt(var + eps) folded in -- sharing tb's codes; None
    where a scaled alpha leaves float32.  A factor may be negative: the kernels apply alpha as a
    plain multiplier."""
    if not isinstance(tb, TernaryBlocked):
        raise TypeError(f"scale_ternary_outputs: expected a TernaryBlocked (block_ternary_weights), got "
                        f"{type(tb).__name__}")
    factors = np.asarray(factors, np.float64)
    K = tb.shape[0]
    if factors.shape != (K,):
        raise ValueError(f"scale_ternary_outputs: expected {K} factors (one per output channel), got {factors.shape}")
    padded = np.ones(tb.alphas.shape[1] * CB)
    padded[:K] = factors
    alphas = tb.alphas * padded.reshape(1, -1, 1, 1, 1, 1, CB)
    if not (np.abs(alphas) <= np.finfo(np.float32).max).all():
        return None
    return TernaryBlocked(tb.shape, tb.block, tb.codes, alphas.astype(np.float32), tb.code_sums * factors,
                          _made=True)


def ternary_call(xq, tb, levels, k_pad, isa_name=None, out_scale=None, out_bits=8):
    """(spec, fill, bias shift) for a ternary convolution on `levels` levels: the multipliers are
    alpha * s_x per block (found beside each block), the flush schedule one chain per N-channel
    block; u8 activations with zero point z shift every output by -s_x * z * sum(alpha * t),
    returned to be added to the bias (per output channel, float64).  isa_name: the path that runs
    it (ternary_format).  out_scale: the call writes u8 output codes of that scale, as
    integer_call's, so the multipliers are alpha * s_x / out_scale, each rounded once from
    float64 (the shift stays in value units: output_code_bias converts the whole bias)."""
    s_x, z = xq.scale
    n = tb.block
    steps, blocks = (n // GROUP["int8"], 1) if n < CB else (CB // GROUP["int8"], n // CB)
    key = (levels, s_x, out_scale)
    cached = tb.__dict__.get("_multipliers")
    if cached is not None and cached[0] == key:
        block_scale = cached[1]
    else:
        # a pass over every alpha (0.3 ms per call on a 512 -> 512 3x3 layer with 3 levels, 2.4 ms
        # with out_scale): kept for the next call, whose s_x and out_scale a calibrated model repeats
        product = tb.alphas[:levels].astype(np.float64) * np.float64(s_x)
        if out_scale is not None:
            product /= np.float64(out_scale)
        block_scale = np.ascontiguousarray(_multipliers(product, out_scale, "alpha * s_x").reshape(-1))
        object.__setattr__(tb, "_multipliers", (key, block_scale))
    shift = np.zeros(k_pad)
    if z:
        shift[: tb.code_sums.shape[1]] = -s_x * z * tb.code_sums[:levels].sum(axis=0)
    groups = tb.alphas.shape[-2]
    spec = (ternary_format(isa_name), steps, blocks, None, block_scale, groups, None)
    return spec + _output_codes(out_scale, out_bits), z, shift


def _multipliers(product, out_scale, what):
    """A call's float64 multipliers as the float32 the kernels apply, each rounded once; refused
    where one leaves float32's range (out_scale too small for the operands: codes would be
    undefined)."""
    if out_scale is not None and not np.all(np.abs(product) <= np.finfo(np.float32).max):
        raise ValueError(f"conv2d: out_scale={out_scale!r} is too small for these operands: {what} / out_scale "
                         f"reaches {np.abs(product).max():.3g}, past float32's range (codes would be undefined)")
    return product.astype(np.float32)


def _output_codes(out_scale, out_bits):
    """The call description's last element: u8 ("u8") or 7-bit ("u7") output codes, or none."""
    return () if out_scale is None else ("u8",) if out_bits == 8 else ("u7",)


def dfp16_values(mantissas, exponent):
    """float32 mantissas * 2**exponent, rounded once (the product is exact in float64)."""
    return np.ldexp(mantissas.astype(np.float64), exponent).astype(np.float32)


def dequantize(t):
    """The float32 values a quantized BlockedTensor stands for, in its blocked fp32 layout."""
    if t.precision == "int8":
        if t.kind == "activation":
            s, z = t.scale
            return ((t.data.astype(np.float64) - z) * s).astype(np.float32)
        q = _from_vnni_groups(t.data, 4).astype(np.float64)
        return (q * t.scale[0].reshape(q.shape[0], 1, 1, 1, 1, CB)).astype(np.float32)
    if t.precision == "dfp16":
        m = t.data if t.kind == "activation" else _from_vnni_groups(t.data, 2)
        return dfp16_values(m, t.scale[0])
    raise ValueError(f"dequantize: expected an int8 or dfp16 BlockedTensor, got {t.precision}")


# ---------------------------------------------------------------------------- call description
def chain_schedule(precision, x_bound=U8_MAX, w_bound=INT8_CODE_BOUND):
    """(flush_steps, flush_blocks): how many VNNI groups inside a 16-channel block, and how many
    blocks, one int32 chain may sum before it must be flushed into fp32 (module doc).  x_bound,
    w_bound: the largest |activation| and |weight| integers."""
    groups = CB // GROUP[precision]                           # instructions per full block
    per_step = GROUP[precision] * int(x_bound) * int(w_bound)   # the most one instruction adds
    steps = INT32_MAX // max(1, per_step)
    if steps < 1:
        raise ValueError(f"{precision}: one instruction can overflow int32 ({GROUP[precision]} x {x_bound} x {w_bound})")
    if steps >= groups:
        return groups, steps // groups
    return steps, 1


def integer_call(precision, xq, wq, n_blocks_per_call, k_pad, out_scale=None, isa_name=None, out_bits=8):
    """(spec, fill) for the integer kernels: spec is the tuple pyx's integer_call reads (format,
    flush_steps, flush_blocks, per-output-channel multipliers, None, 0, compensation[, "u8"]) and
    fill the byte that pads the activations.  n_blocks_per_call: the blocks one call reduces.
    out_scale (int8): the call writes u8 output codes of that scale, so its multipliers are
    s_x * s_w[k] / out_scale, each rounded once from float64 (the bias must be in code units
    too: output_code_bias), at most 255, or 127 with out_bits=7.  isa_name: the path that runs
    it (int8: u8_format's choice)."""
    if precision == "int8":
        s_x, z = xq.scale
        s_w, sums = wq.scale
        steps, blocks = chain_schedule("int8")
        if n_blocks_per_call > blocks:
            raise ValueError(f"int8: one output sums {n_blocks_per_call} blocks of {CB} channels (channels x taps), "
                             f"more than the {blocks} an int32 chain provably holds (255 x 128 x {CB * blocks} < 2**31)")
        scale = np.float64(s_x) * s_w.astype(np.float64)
        if out_scale is not None:
            scale = scale / np.float64(out_scale)
        comp = (z * sums).astype(np.int32) if z else None
        spec = (u8_format(xq, isa_name), steps, blocks, _padded(_multipliers(scale, out_scale, "s_x * s_w"), k_pad, 1.0),
                None, 0,
                _padded(comp, k_pad, 0))
        return spec + _output_codes(out_scale, out_bits), z
    if out_scale is not None:
        raise ValueError(f"integer_call: u8 output codes come from int8 calls, not {precision}")
    e_x, m_x = xq.scale
    e_w, m_w = wq.scale
    steps, blocks = chain_schedule("dfp16", m_x, m_w)
    scale = np.full(k_pad, product_exponent(e_x, e_w, "dfp16"), np.float32)
    return (_S16, steps, blocks, scale, None, 0, None), 0


def output_code_bias(bias, k_pad, out_scale, zero_point):
    """The bias of a call writing u8 output codes, in code units with the zero point inside:
    bias / out_scale + zero_point per output channel (padded channels: the zero point), each
    rounded once from float64, so that the kernels' epilogue is one FMA, a clamp and a
    conversion (pyx/kernels/brgemm_int.h)."""
    b = np.zeros(k_pad)
    if bias is not None:
        b[: len(bias)] = np.asarray(bias, dtype=np.float64) / np.float64(out_scale)
    b += zero_point       # (a residual's zero point shifts it too: conv2d(residual=))
    if not np.all(np.abs(b) <= np.finfo(np.float32).max):
        raise ValueError(f"conv2d: out_scale={out_scale!r} is too small for this bias: bias / out_scale (+ the zero "
                         f"points) reaches {np.abs(b).max():.3g}, past float32's range (codes would be undefined)")
    return b.astype(np.float32)


def _padded(a, n, value):
    if a is None or a.shape[0] == n:
        return a
    out = np.full(n, value, a.dtype)
    out[: a.shape[0]] = a[:n]
    return out


def quantize_operands(precision, xb, wb, w, *, headroom=DFP16_HEADROOM, n_threads=None, isa=None):
    """(activation, weight) BlockedTensors of `precision` for a convolution or GEMM, converting
    whichever operand is not one already (xb: an activation BlockedTensor; wb: a weight
    BlockedTensor or None with w the KCRS array)."""
    precision = check_precision(precision, "quantize_operands")
    if precision not in INTEGER_FORMATS:
        raise ValueError(f"quantize_operands: expected one of {', '.join(INTEGER_FORMATS)}, got {precision!r}")
    if precision == "int8":
        xq = xb if xb.precision == "int8" else to_int8_blocked(xb, n_threads=n_threads, isa=isa)
        wq = wb if wb is not None and wb.precision == "int8" else block_weights_int8(
            wb if wb is not None else w, n_threads=n_threads)
    else:
        xq = xb if xb.precision == "dfp16" else to_dfp16_blocked(xb, headroom=headroom, n_threads=n_threads, isa=isa)
        wq = wb if wb is not None and wb.precision == "dfp16" else block_weights_dfp16(
            wb if wb is not None else w, headroom=headroom, n_threads=n_threads, isa=isa)
    return xq, wq


def kernel_view(t):
    """The array the kernels read: int8 weights as uint8 (the same bytes; Cython's fused type
    pairs them with the u8 activations)."""
    data = t.data.reshape(-1)
    return data.view(np.uint8) if data.dtype == np.int8 else data


__all__ = [
    "INTEGER_FORMATS",
    "TernaryBlocked",
    "block_ternary_weights",
    "block_weights_dfp16",
    "block_weights_int8",
    "chain_schedule",
    "dequantize",
    "int8_weights_from_codes",
    "native_vnni",
    "output_code_bias",
    "product_exponent",
    "quantize_u8",
    "round_to_dfp16",
    "to_dfp16_blocked",
    "to_int8_blocked",
]
