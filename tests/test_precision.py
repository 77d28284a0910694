"""Number formats (dlcpu.precision): bf16 over every fp32 pattern, DFP-16 against Python
arithmetic, int8 scales and calibration, and exact block ternarization against brute force."""
import itertools
import math

import ml_dtypes
import numpy as np
import pytest

from dlcpu import _reference, cpu
from dlcpu import precision as P

ISAS = cpu.supported_isas()
NATIVE = cpu.features()["avx512_bf16"] and "avx512" in ISAS
# every way fp32 -> bf16 can run here: (isa, native instruction)
BF16_PATHS = [(isa, False) for isa in ISAS] + ([("avx512", True)] if NATIVE else [])
THREADS = sorted({1, cpu.resolve_threads(None)})


def bits32(values):
    return np.array(values, np.uint32).view(np.float32)


# ------------------------------------------------------------------------------------- bf16
@pytest.mark.parametrize("isa,native", BF16_PATHS)
@pytest.mark.parametrize("pattern,want", [
    (0x7FC00001, 0x7FC0),      # quiet NaN with payload only in the low half: stays NaN
    (0x7F800001, 0x7FC0),      # signalling NaN: quietened, never Inf
    (0xFF800001, 0xFFC0),      # the sign of a NaN is kept
    (0x3F808000, 0x3F80),      # tie, even: stays
    (0x3F818000, 0x3F82),      # tie, odd: rounds up
    (0x3F808001, 0x3F81),      # just above the tie
    (0x00000001, 0x0000),      # denormal: flushed to zero
    (0x807FFFFF, 0x8000),      # negative denormal: -0
    (0x7F7FFFFF, 0x7F80),      # max finite rounds to Inf (RNE overflow)
    (0x7F800000, 0x7F80),      # +Inf
    (0xFF800000, 0xFF80),      # -Inf
    (0x00800000, 0x0080),      # the smallest normal stays
])
def test_bf16_special_cases(isa, native, pattern, want):
    got = P.fp32_to_bf16_bits(bits32([pattern] * 19), isa=isa, native=native)    # 19: a masked tail too
    assert got.tolist() == [want] * 19
    assert _reference.bf16_bits_one(pattern) == want


@pytest.mark.slow
def test_bf16_every_fp32_pattern_on_every_path():
    """All 2**32 patterns: each path against the scalar pseudocode (numpy), and every finite
    normal value against ml_dtypes.bfloat16 (which rounds denormals instead of flushing them)."""
    n = 1 << 24
    mismatches = {path: 0 for path in BF16_PATHS}
    ml_mismatch = 0
    for start in range(0, 1 << 32, n):
        u = np.arange(start, start + n, dtype=np.uint32)
        x = u.view(np.float32)
        want = _reference.bf16_bits(u)
        for isa, native in BF16_PATHS:
            got = P.fp32_to_bf16_bits(x, isa=isa, native=native)
            mismatches[(isa, native)] += int(np.count_nonzero(got != want))
        exponent = (u >> 23) & 0xFF
        normal = (exponent != 0) & (exponent != 0xFF)
        ml = x[normal].astype(ml_dtypes.bfloat16).view(np.uint16)
        ml_mismatch += int(np.count_nonzero(ml != want[normal]))
    assert mismatches == {path: 0 for path in BF16_PATHS}
    assert ml_mismatch == 0


@pytest.mark.parametrize("isa", ISAS)
def test_bf16_to_fp32_is_exact_for_every_pattern(isa):
    b = np.arange(1 << 16, dtype=np.uint16)
    got = P.bf16_bits_to_fp32(b, isa=isa)
    assert np.array_equal(got.view(np.uint32), b.astype(np.uint32) << 16)
    finite = np.isfinite(got) & (np.abs(got) >= np.float32(2.0 ** -126)) | (got == 0)
    assert np.array_equal(P.fp32_to_bf16_bits(got[finite], isa=isa), b[finite])     # round trip


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 31, 33, 65536 + 7, 200_003])
def test_bf16_any_length_and_thread_count(n, threads):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 3
    want = _reference.bf16_bits(x.view(np.uint32))
    for isa, native in BF16_PATHS:
        assert np.array_equal(P.fp32_to_bf16_bits(x, isa=isa, native=native, n_threads=threads), want)
        assert np.array_equal(P.bf16_bits_to_fp32(want, isa=isa, n_threads=threads).view(np.uint32),
                              want.astype(np.uint32) << 16)


def test_bf16_keeps_shape_and_reads_strided_input():
    x = np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32)[:, ::2]
    bits = P.fp32_to_bf16_bits(x)
    assert bits.shape == x.shape and bits.dtype == np.uint16
    assert np.array_equal(P.round_to_bf16(x), x.astype(ml_dtypes.bfloat16).astype(np.float32))


# ------------------------------------------------------------------------------------ DFP-16
@pytest.mark.parametrize("headroom", [0, 1, 2, 5])
@pytest.mark.parametrize("absmax", [1.0, 1.999, 0.75, 3.0e-3, 6.0e4, 1e-41, 3.4e38])
def test_dfp16_exponent_puts_the_max_below_the_headroom(absmax, headroom):
    e = P.dfp16_exponent(absmax, headroom)
    v = math.ldexp(absmax, -e)
    if e > P.DFP_MIN_EXPONENT:
        assert 2 ** (14 - headroom) <= v < 2 ** (15 - headroom)
    else:      # a tiny tensor: the exponent stops where fp32 does, the mantissas are just smaller
        assert v < 2 ** (15 - headroom)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("rounding", P.ROUNDINGS)
def test_dfp16_matches_python_arithmetic(isa, threads, rounding):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(70_001) * np.exp(rng.uniform(-12, 4, 70_001))).astype(np.float32)
    x[:4] = [0.0, -0.0, np.float32(2.0 ** -149), -np.float32(1e-30)]
    t = P.to_dfp16(x, rounding=rounding, seed=11, isa=isa, n_threads=threads)
    assert t.mantissas.dtype == np.int16 and t.exponent == P.dfp16_exponent(np.abs(x).max())
    draws = _reference.stochastic_draws(11, x.size) if rounding == "stochastic" else None
    want = _reference.dfp16_quantize(x, t.exponent, P.dfp16_limit(t.exponent), rounding, draws)
    assert np.array_equal(t.mantissas, want)
    err = np.abs(t.to_float64() - x)
    bound = 2.0 ** (t.exponent - 1) if rounding == "nearest" else 2.0 ** t.exponent
    assert err.max() <= bound


@pytest.mark.parametrize("isa", ISAS)
def test_dfp16_nearest_rounds_ties_to_even_on_every_path(isa):
    """Codes k + 1/2 (exact in fp32 after the power-of-two scale) round to the even neighbour, on
    the fp32 path (AVX-512, scales that are fp32 normals) as on the double ones."""
    e = P.dfp16_exponent(8.0)
    k = np.arange(-2000, 2000, dtype=np.float64)
    x = np.concatenate([[8.0], (k + 0.5) * 2.0 ** e, k * 2.0 ** e + 2.0 ** (e - 30)]).astype(np.float32)
    t = P.to_dfp16(x, isa=isa)
    assert t.exponent == e
    halves = t.mantissas[1:4001].astype(np.int64)
    assert np.array_equal(halves, np.where(k % 2 == 0, k, k + 1).astype(np.int64))   # ties to even
    assert np.array_equal(t.mantissas[4001:], k.astype(np.int16))                      # just above k: k


def test_dfp16_to_float32_is_exact_at_the_ends_of_fp32():
    for x in (np.array([3.4028235e38, -1.0e38, 5.0], np.float32),          # FLT_MAX: must not round to Inf
              np.array([2.0 ** -149, 3 * 2.0 ** -149, -1e-44, 0.0], np.float32),   # denormals only
              np.array([1.1754942e-38, 7e-39], np.float32)):
        for headroom in (0, 2):
            t = P.to_dfp16(x, headroom=headroom)
            back = t.to_float32()
            assert np.isfinite(back).all()
            assert np.array_equal(back.astype(np.float64), t.to_float64())          # I * 2**E exactly
            assert np.abs(t.mantissas.astype(np.int64)).max() <= P.dfp16_limit(t.exponent)
    t = P.to_dfp16(np.array([2.0 ** -149, 3 * 2.0 ** -149], np.float32))
    assert t.exponent == -149 and t.mantissas.tolist() == [1, 3]


def test_dfp16_headroom_zero_clamps_instead_of_overflowing():
    x = np.array([np.nextafter(np.float32(2), np.float32(0)), -1.0], np.float32)   # 1.99999988 -> 32768
    t = P.to_dfp16(x, headroom=0)
    assert t.mantissas.tolist() == [32767, -16384]


def test_stochastic_rounding_is_unbiased_and_seeded():
    x = np.full(200_000, 1.0 / 3.0, np.float32)
    x[0] = 8.0                       # fixes E so that 1/3 falls between two mantissas
    t = P.to_dfp16(x, rounding="stochastic", seed=5)
    v = math.ldexp(float(np.float32(1 / 3)), -t.exponent)
    got = t.mantissas[1:].astype(np.float64)
    assert set(np.unique(got)) == {math.floor(v), math.floor(v) + 1}
    assert abs(got.mean() - v) < 4 * math.sqrt(0.25 / got.size)
    assert np.array_equal(P.to_dfp16(x, rounding="stochastic", seed=5).mantissas, t.mantissas)
    assert not np.array_equal(P.to_dfp16(x, rounding="stochastic", seed=6).mantissas, t.mantissas)


def test_dfp_arithmetic_rules():
    rng = np.random.default_rng(2)
    a = P.to_dfp16(rng.standard_normal(1000).astype(np.float32))
    b = P.to_dfp16((rng.standard_normal(1000) * 1e-3).astype(np.float32))
    p = P.dfp_multiply(a, b)                       # exponents add, mantissas multiply exactly
    assert p.exponent == a.exponent + b.exponent
    assert np.array_equal(p.to_float64(), a.to_float64() * b.to_float64())
    s = P.dfp_add(a, b)                             # at the larger exponent, the smaller shifted
    assert s.exponent == max(a.exponent, b.exponent)
    exact = a.to_float64() + b.to_float64()
    assert ((s.to_float64() <= exact) & (exact - s.to_float64() < 2.0 ** s.exponent)).all()   # floor
    same = P.dfp_add(a, a)
    assert np.array_equal(same.to_float64(), 2 * a.to_float64())    # no bits lost: exact
    assert p.format == s.format == "dfp64" and a.format == "dfp16"
    d = P.dfp_downconvert(p)
    assert d.mantissas.dtype == np.int16 and d.format == "dfp16" and np.abs(d.mantissas.astype(np.int64)).max() <= 32767
    assert np.abs(d.mantissas.astype(np.int64)).max() > 16383                  # the fewest bits shifted
    assert (np.abs(d.to_float64() - p.to_float64()) < 2.0 ** d.exponent).all()
    assert P.dfp_downconvert(P.DFPTensor(np.array([-40000, 3]), 0)).mantissas.tolist() == [-20000, 1]


# -------------------------------------------------------------------------------------- int8
def test_int8_weight_scales_and_round_trip():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    w[2] = 0.0
    scales = P.int8_weight_scales(w)
    want = np.abs(w.reshape(6, -1)).max(axis=1) / 127
    assert np.allclose(scales[[0, 1, 3, 4, 5]], want[[0, 1, 3, 4, 5]], rtol=1e-7) and scales[2] == 1.0
    q = P.to_int8(w, scales, axis=0)
    assert q.data.dtype == np.int8 and np.abs(q.data.astype(int)).max() == 127
    ref = np.clip(np.rint(w.astype(np.float64) / scales.reshape(-1, 1, 1, 1)), -127, 127)
    assert np.array_equal(q.data, ref)
    assert (np.abs(q.to_float32() - w) <= scales.reshape(-1, 1, 1, 1) / 2 * (1 + 1e-6)).all()


def test_int8_rounds_half_even_on_the_exact_quotient():
    scale = np.float32(0.1)
    k = np.arange(-120, 121, dtype=np.float64)
    # values at and one float32 ulp around every x.5 tie of x / scale
    ties = ((k + 0.5) * float(scale)).astype(np.float32)
    x = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])
    want = np.clip(np.rint(x.astype(np.float64) / np.float64(scale)), -127, 127)
    assert np.array_equal(P.to_int8(x, scale).data, want)


def test_int8_scales_stay_positive_and_finite_at_the_ends_of_fp32():
    tiny = np.array([[1e-45, 0.0]], np.float32)
    scale = P.int8_weight_scales(tiny)
    assert scale[0] > 0 and P.to_int8(tiny, scale, axis=0).data.tolist() == [[1, 0]]
    big = np.array([[3.4028235e38, -3.4028235e38]], np.float32)
    back = P.to_int8(big, P.int8_weight_scales(big), axis=0).to_float32()
    assert np.isfinite(back).all() and np.allclose(back, big, rtol=1e-6)
    assert P.ActivationCalibrator().observe(np.array([1e-45], np.float32)).scale > 0


def test_zero_dimensional_arrays_keep_their_shape():
    x = np.array(1.5, np.float32)
    assert P.fp32_to_bf16_bits(x).shape == () and P.round_to_bf16(x).shape == ()
    assert P.to_dfp16(x).mantissas.shape == () and P.to_int8(x, 0.1).data.shape == ()


def test_activation_calibration_over_batches():
    rng = np.random.default_rng(4)
    cal = P.ActivationCalibrator()
    batches = [np.maximum(rng.standard_normal((8, 16)), 0).astype(np.float32) * s for s in (1, 3, 2)]
    for b in batches:
        cal.observe(b)
    assert cal.unsigned and cal.batches == 3
    assert cal.scale == np.float32(max(float(b.max()) for b in batches) / 255)
    q = P.to_int8(batches[1], cal.scale, unsigned=True)
    assert q.data.dtype == np.uint8 and q.data.max() == 255 and q.unsigned
    cal.observe(np.array([-1.0], np.float32))
    assert not cal.unsigned
    assert P.to_int8(np.array([1e9, -1e9], np.float32), np.float32(1.0)).data.tolist() == [127, -127]
    with pytest.raises(RuntimeError, match="observe"):
        _ = P.ActivationCalibrator().scale


# ----------------------------------------------------------------------------------- ternary
def _error(w, alpha, t):
    return float(np.sum((w.astype(np.float64) - float(alpha) * t) ** 2))


@pytest.mark.parametrize("n", range(1, 9))
def test_exact_ternarization_matches_brute_force(n):
    rng = np.random.default_rng(n)
    blocks = [rng.standard_normal(n), rng.uniform(-1, 1, n) ** 3, np.full(n, 0.5), np.zeros(n),
              np.round(rng.standard_normal(n)), np.r_[np.full(n - 1, 0.3), 2.0][:n] * rng.choice([-1, 1], n)]
    blocks += [rng.standard_normal(n) * rng.integers(0, 2, n) for _ in range(20)]
    w = np.array(blocks, np.float32)
    alpha, t, threshold = P.ternarize_blocks(w)
    twn_alpha, twn_t = P.ternarize_blocks_twn(w)
    for i, row in enumerate(w):
        best = _reference.ternary_brute_force(row)
        got = _error(row, alpha[i], t[i])
        assert got <= best + 1e-6 * max(1.0, float(row @ row)), (row, got, best)
        assert got <= _error(row, twn_alpha[i], twn_t[i]) + 1e-6
        assert np.array_equal(t[i], np.sign(row) * (np.abs(row) > threshold[i]))   # the support is |w| > T*


def test_ternarize_layout_and_residual_levels():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 20, 3, 3)).astype(np.float32)          # C = 20 pads to 32
    tw = P.ternarize(w, block=8, residual=3)
    assert tw.levels == 4 and tw.alphas.shape == (4, 8, 4, 3, 3) and tw.codes.shape == (4, 8, 32, 3, 3)
    assert set(np.unique(tw.codes)) <= {-1, 0, 1} and not tw.codes[:, :, 20:].any()
    errors = [tw.relative_error(w, levels) for levels in range(1, 5)]
    assert all(b < a for a, b in itertools.pairwise(errors)) and errors[-1] < 0.25 * errors[0]
    assert tw.multiplications(1) * 4 == tw.multiplications() == 4 * 8 * 4 * 9
    # block (k, c-block, r, s) holds channels c-block*8 ... +8 at tap (r, s), with its own alpha
    alpha, t, _ = P.ternarize_blocks(np.pad(w, ((0, 0), (0, 12), (0, 0), (0, 0)))[3, 8:16, 1, 2][None])
    assert tw.alphas[0, 3, 1, 1, 2] == alpha[0] and np.array_equal(tw.codes[0, 3, 8:16, 1, 2], t[0])
    lin = rng.standard_normal((5, 48)).astype(np.float32)
    assert P.ternarize(lin, block=16).to_float32().shape == (5, 48)


# --------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,error,match", [
    (lambda: P.check_precision("fp8", "f"), ValueError, "unknown precision 'fp8'; choose one of fp32, bf16"),
    (lambda: P.fp32_to_bf16_bits(np.zeros(3)), TypeError, "must be float32"),
    (lambda: P.fp32_to_bf16_bits([1.0]), TypeError, "numpy array"),
    (lambda: P.bf16_bits_to_fp32(np.zeros(3, np.int16)), TypeError, "uint16"),
    (lambda: P.to_dfp16(np.array([1.0, np.nan], np.float32)), ValueError, r"shared exponent.*nan at index \(1,\)"),
    (lambda: P.to_dfp16(np.array([[np.inf]], np.float32)), ValueError, r"inf at index \(0, 0\)"),
    (lambda: P.to_dfp16(np.ones(2, np.float32), rounding="up"), ValueError, "rounding must be one of"),
    (lambda: P.to_dfp16(np.ones(2, np.float32), headroom=15), ValueError, "headroom must be <= 14"),
    (lambda: P.to_dfp16(np.ones(2, np.float32), seed=-1), ValueError, "seed must be >= 0"),
    (lambda: P.to_dfp16(np.ones(2, np.float32), seed=2 ** 32), ValueError, "seed must be < 2"),
    (lambda: P.to_int8(np.array([np.nan], np.float32), 1.0), ValueError, "int8 quantization"),
    (lambda: P.to_int8(np.ones((2, 3), np.float32), np.ones(3), axis=0), ValueError, r"scale must have shape \(2,\)"),
    (lambda: P.to_int8(np.ones(2, np.float32), 0.0), ValueError, "finite and > 0"),
    (lambda: P.to_int8(np.ones(2, np.float32), 1.0, axis=1), ValueError, "axis must be an int in"),
    (lambda: P.int8_weight_scales(np.array([[np.inf]], np.float32)), ValueError, "int8 scale"),
    (lambda: P.ActivationCalibrator().observe(np.array([np.nan], np.float32)), ValueError, "activation scale"),
    (lambda: P.ternarize(np.ones((4, 20), np.float32), block=12), ValueError, r"block=12 does not divide .*20 -> 32"),
    (lambda: P.ternarize(np.ones((4, 16), np.float32), residual=-1), ValueError, "residual must be >= 0"),
    (lambda: P.ternarize(np.ones(4, np.float32)), ValueError, r"\(K, C, \*taps\)"),
    (lambda: P.ternarize(np.ones((2, 16), np.float32), residual=1).to_float32(levels=3), ValueError,
     "levels must be <= 2"),
    (lambda: P.dfp_add(P.to_dfp16(np.ones(2, np.float32)), P.to_dfp16(np.ones(3, np.float32))), ValueError,
     "shapes differ"),
    (lambda: P.dfp_multiply(np.ones(2), P.to_dfp16(np.ones(2, np.float32))), TypeError, "DFPTensor"),
    (lambda: P.DFPTensor(np.ones(2, np.uint64), 0), TypeError, "signed integers"),
    (lambda: P.DFPTensor(np.ones(2, np.int16), 0.5), TypeError, "exponent must be an int"),
    (lambda: P.dfp_multiply(*[P.DFPTensor(np.array([2 ** 40]), 0)] * 2), ValueError, "past int64.*dfp_downconvert"),
    (lambda: P.dfp_add(*[P.DFPTensor(np.array([2 ** 62]), 0)] * 2), ValueError, "past int64"),
    (lambda: P.dfp16_exponent("3"), TypeError, "real number"),
    (lambda: P.dfp16_limit(200), ValueError, "exponent must be <= 127"),
    (lambda: P.ternarize(np.ones((2, 16), np.float32), residual=16), ValueError, "residual must be <= 15"),
    (lambda: P.ternarize_blocks_twn(np.array([[1.0, np.nan]], np.float32)), ValueError, "ternarization"),
    (lambda: P.ternarize_blocks_twn(np.ones(4, np.float32)), ValueError, r"\(B, N\)"),
    (lambda: P.int8_weight_scales(np.ones((2, 2), np.float32), axis=None), TypeError, "axis must be an int"),
    (lambda: P.to_int8(np.ones(2, np.float32), "0.5"), TypeError, "scale must be a positive real number"),
    (lambda: P.to_int8(np.ones(2, np.float32), 1.0, axis=True), TypeError, "axis must be an int"),
    (lambda: P.fp32_to_bf16_bits(np.ones(2, np.float32), isa="avx2", native=True), ValueError,
     "runs on the avx512 path" if cpu.features()["avx512_bf16"] else "lacks"),
    (lambda: P.native_formats("avx2"), TypeError, "features must be a dict"),
])
def test_bad_input_is_refused_with_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_native_formats_names_the_instructions_of_existing_kernels():
    nf = P.native_formats({"avx512f": True, "fma": True, "avx512_bf16": True, "avx512_vnni": True})
    assert nf["bf16"].startswith("vdpbf16ps") and nf["fp32"].startswith("vfmadd231ps")
    assert nf["int8"].startswith("vpdpbusd") and nf["dfp16"].startswith("vpdpwssd")
    assert nf["ternary"].startswith("vpdpbusd")
    old = P.native_formats({"avx512f": True, "fma": True, "avx512_bf16": False, "avx512_vnni": False})
    assert old["bf16"] == old["int8"] == old["dfp16"] == old["ternary"] == "emulated"
    assert P.native_formats({"avx2": True, "fma": True}, isa="avx2")["int8"] == "emulated"
    assert set(P.native_formats()) == set(P.PRECISIONS)


def test_vnni_blocks_pair_channels_for_each_output():
    blocks = np.random.default_rng(6).standard_normal((3, 2, 16, 16)).astype(np.float32)     # [..][16c][16k]
    got = P.fp32_blocks_to_bf16_vnni(blocks).reshape(3, 2, 8, 16, 2)                        # [..][q][k][e]
    bits = P.fp32_to_bf16_bits(blocks)
    for q, k, e in ((0, 0, 0), (0, 0, 1), (3, 7, 1), (7, 15, 0), (5, 2, 1)):
        assert np.array_equal(got[:, :, q, k, e], bits[:, :, 2 * q + e, k])
    with pytest.raises(ValueError, match=r"must end in \(16, 16\)"):
        P.fp32_blocks_to_bf16_vnni(np.ones((4, 16), np.float32))


def test_bf16_conversions_write_into_out():
    """out= (the conv backward's reused buffers): the same values as a fresh result, in the
    caller's array; a buffer of the wrong kind, or one overlapping the input, is refused."""
    rng = np.random.default_rng(8)
    blocks = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    out = np.full(blocks.shape, 7, np.uint16)
    assert P.fp32_blocks_to_bf16_vnni(blocks, out=out) is out
    assert np.array_equal(out, P.fp32_blocks_to_bf16_vnni(blocks))
    bits = P.fp32_to_bf16_bits(rng.standard_normal((5, 33)).astype(np.float32))
    wide = np.full(bits.shape, np.nan, np.float32)
    assert P.bf16_bits_to_fp32(bits, out=wide) is wide
    assert np.array_equal(wide, P.bf16_bits_to_fp32(bits))
    read_only = np.zeros(bits.shape, np.float32)
    read_only.flags.writeable = False
    for arr, error, why in ((np.zeros(bits.shape, np.float64), TypeError, "got ndarray of float64"),
                            (np.zeros(bits.shape, np.float32).view(np.matrix), TypeError, "got matrix"),
                            (np.zeros((5, 32), np.float32), ValueError, r"its shape is \(5, 32\)"),
                            (np.zeros((33, 5), np.float32).T, ValueError, "not C-contiguous"),
                            (read_only, ValueError, "read-only")):
        with pytest.raises(error, match=r"out must be a writeable C-contiguous float32 array of shape \(5, 33\).*"
                           + why):
            P.bf16_bits_to_fp32(bits, out=arr)
    with pytest.raises(TypeError, match="out must be .*uint16"):
        P.fp32_blocks_to_bf16_vnni(blocks, out=np.zeros(blocks.shape, np.int16))
    buf = np.zeros(1024, np.uint16)                         # out's bytes cover the patterns
    with pytest.raises(ValueError, match="overlaps b"):
        P.bf16_bits_to_fp32(buf[:256], out=buf.view(np.float32)[:256])
