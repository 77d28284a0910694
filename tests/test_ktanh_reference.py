"""K-TanH parameter table, its fit, and the float64/bitwise reference twins of the activation kernels.

Numbers from shared/reference/papers.md sections 1.2-1.4 (K-TanH) and 9.3 (rational 7/8 Pade tanh).
"""
import numpy as np
import pytest

from dlcpu import _reference as ref
from dlcpu.approx.ktanh_table import (
    FIT_DIFFERS_FROM_PUBLISHED,
    PUBLISHED_TABLE,
    KTanhTable,
    fit_ktanh_table,
    table_error,
)

ALL_BF16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def bf16_value(bits):
    with np.errstate(invalid="ignore"):  # signalling NaN patterns
        return (np.asarray(bits, np.uint32) << 16).view(np.float32).astype(np.float64)


def bf16_bits(values):
    f = np.asarray(values, np.float32)
    assert np.all((f.view(np.uint32) & 0xFFFF) == 0), "not a bf16 value"
    return (f.view(np.uint32) >> 16).astype(np.uint16)


@pytest.fixture(scope="module")
def all_out():
    return ref.ktanh_bf16_bits(ALL_BF16)


# -- the published table ------------------------------------------------------------------------
def test_published_table_rows_and_combined_words():
    assert PUBLISHED_TABLE.row(0b00000) == (126, 2, 119)
    assert PUBLISHED_TABLE.row(0b01111) == (125, 0, -18)
    assert PUBLISHED_TABLE.row(0b10000) == (125, 0, 112)
    assert PUBLISHED_TABLE.row(0b11000) == (126, 0, 65)
    assert PUBLISHED_TABLE.row(0b11111) == (126, 4, 110)
    assert PUBLISHED_TABLE.mantissa_bits == 7 and PUBLISHED_TABLE.thresholds == (0.25, 3.75)
    base, shift = PUBLISHED_TABLE.combined()
    assert base.dtype == np.uint16 and shift.dtype == np.uint16 and base.shape == (32,)
    assert base[15] == 125 * 128 - 18 and shift[0] == 2
    with pytest.raises(ValueError):
        PUBLISHED_TABLE.exponent[0] = 1  # read-only


def test_table_validation_names_the_row():
    rows = [PUBLISHED_TABLE.row(t) for t in range(32)]
    e, r, b = (list(c) for c in zip(*rows))
    b[0] = 125  # (15 >> 2) + 125 = 128 overflows the 7-bit mantissa
    with pytest.raises(ValueError, match="t=0 "):
        KTanhTable(exponent=e, shift=r, bias=b)
    b[0], b[9] = 119, -17  # 16 - 17 = -1 underflows
    with pytest.raises(ValueError, match="t=9 "):
        KTanhTable(exponent=e, shift=r, bias=b)
    b[9] = -4
    with pytest.raises(ValueError, match="shift"):
        KTanhTable(exponent=e, shift=r[:-1] + [8], bias=b)
    with pytest.raises(ValueError, match="32 entries"):
        KTanhTable(exponent=e[:31], shift=r, bias=b)
    assert KTanhTable(exponent=e, shift=r, bias=b) == PUBLISHED_TABLE


# -- regression vectors (papers.md 1.4) ---------------------------------------------------------
VECTORS = [(0.5, 0.46875), (2.0, 0.96484375), (1.0, 0.75390625), (3.75, 0.99609375), (0.2, 0.2), (8.5, 1.0)]


@pytest.mark.parametrize("x, want", VECTORS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_regression_vectors(x, want, sign):
    x32, want32 = np.float32(sign * x), np.float32(sign * want)
    # 0.2 is not a bf16 value: the bits path gets its truncation, which stays in the identity branch
    xb = (np.array([x32]).view(np.uint32) >> 16).astype(np.uint16)
    got_bits = ref.ktanh_bf16_bits(xb)
    want_bits = (np.array([want32 if x != 0.2 else x32]).view(np.uint32) >> 16).astype(np.uint16)
    assert got_bits[0] == want_bits[0]
    got = ref.ktanh_f32(np.array([x32]))
    assert got.dtype == np.float32 and got[0] == want32


def test_regression_vector_fields():
    out = int(ref.ktanh_bf16_bits(bf16_bits([0.5]))[0])
    assert (out >> 7, out & 0x7F) == (125, 112)
    out = int(ref.ktanh_bf16_bits(bf16_bits([2.0]))[0])
    assert (out >> 7, out & 0x7F) == (126, 119)


# -- exhaustive over bf16 -----------------------------------------------------------------------
def test_exhaustive_accuracy(all_out):
    x, y = bf16_value(ALL_BF16), bf16_value(all_out)
    finite = np.isfinite(x)
    err = np.abs(y[finite] - np.tanh(x[finite]))
    assert f"{err.max():.2e}" == "8.92e-03"
    live = (x >= 0.25) & (x <= 3.75)
    assert live.sum() == 497  # positive points: 3 octaves of 128 + [2, 3.75] (mantissa 0..112)
    mean = np.abs(y[live] - np.tanh(x[live])).mean()
    assert f"{mean:.2e}" == "1.99e-03"
    # the same numbers from the table module's own evaluator
    mx, mn, n = table_error(PUBLISHED_TABLE)
    assert n == 497 and abs(mx - 8.92e-3) < 5e-6 and abs(mn - mean) < 1e-12


def test_special_values(all_out):
    x = bf16_value(ALL_BF16)
    nan = np.isnan(x)
    assert nan.sum() == 2 * 127
    assert np.array_equal(all_out[nan], ALL_BF16[nan])
    assert ref.ktanh_bf16_bits(np.array([0x7F80, 0xFF80]))[0] == 0x3F80
    assert ref.ktanh_bf16_bits(np.array([0x7F80, 0xFF80]))[1] == 0xBF80
    assert list(ref.ktanh_bf16_bits(np.array([0x0000, 0x8000, 0x0001, 0x807F]))) == [0x0000, 0x8000, 0x0001, 0x807F]
    assert ref.ktanh_bf16_bits(np.array([0x3E80]))[0] != 0x3E80  # 0.25 itself goes to the table
    assert ref.ktanh_bf16_bits(np.array([0x3E7F]))[0] == 0x3E7F  # just below: identity
    assert ref.ktanh_bf16_bits(np.array([0x4071]))[0] == 0x3F80  # just above 3.75: 1.0
    with pytest.raises(ValueError):
        ref.ktanh_bf16_bits(np.array([70000]))


def test_odd_symmetry_bitwise(all_out):
    flipped = ref.ktanh_bf16_bits(ALL_BF16 ^ np.uint16(0x8000))
    assert np.array_equal(flipped, all_out ^ np.uint16(0x8000))


def test_f32_matches_bits_on_bf16_values(all_out):
    x = (ALL_BF16.astype(np.uint32) << 16).view(np.float32)
    got = ref.ktanh_f32(x).view(np.uint32)
    assert np.array_equal(got, all_out.astype(np.uint32) << 16)


def test_f32_uses_only_the_top_16_bits_inside_the_range(rng):
    x = rng.uniform(0.25, 3.75, 4000).astype(np.float32) * rng.choice([-1, 1], 4000).astype(np.float32)
    low = rng.integers(0, 1 << 16, 4000, dtype=np.uint32)
    u = (x.view(np.uint32) & 0xFFFF0000) | low
    x = u.view(np.float32)
    inside = (np.abs(x) >= 0.25) & (np.abs(x) <= 3.75)
    truncated = (u & 0xFFFF0000).view(np.float32)
    got, want = ref.ktanh_f32(x), ref.ktanh_f32(truncated)
    assert inside.sum() > 3900
    assert np.array_equal(got[inside].view(np.uint32), want[inside].view(np.uint32))
    assert np.all((got.view(np.uint32)[inside] & 0xFFFF) == 0)
    # outside, the float32 value decides: just above 3.75 saturates although its truncation is 3.75
    above = np.nextafter(np.float32(3.75), np.float32(4))
    assert ref.ktanh_f32(np.array([above, -above])).tolist() == [1.0, -1.0]
    below = np.nextafter(np.float32(0.25), np.float32(0))
    assert ref.ktanh_f32(np.array([below]))[0] == below
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
    out = ref.ktanh_f32(specials)
    assert np.isnan(out[0]) and out[0].view(np.uint32) == specials[0].view(np.uint32)
    assert out[1:3].tolist() == [1.0, -1.0]
    assert out[3:].view(np.uint32).tolist() == [0, 0x80000000]


# -- the fit ------------------------------------------------------------------------------------
def test_fit_reproduces_published_rows_except_documented():
    fitted = fit_ktanh_table()
    differ = tuple(t for t in range(32) if fitted.row(t) != PUBLISHED_TABLE.row(t))
    assert differ == FIT_DIFFERS_FROM_PUBLISHED
    assert len(differ) == 5
    assert fitted.row(11) == (125, 0, -8)  # off by one in bt
    # valid: every row keeps its interval's output mantissa in [0, 127]
    for t in range(32):
        _, r, b = fitted.row(t)
        m = np.arange((t & 7) * 16, (t & 7) * 16 + 16)
        assert 0 <= ((m >> r) + b).min() and ((m >> r) + b).max() <= 127
    mx, mn, _ = table_error(fitted)
    assert mx < 9e-3 and mn < 2.1e-3
    # the fitted table runs through the reference like the published one
    assert ref.ktanh_bf16_bits(bf16_bits([1.0]), fitted)[0] == ref.ktanh_bf16_bits(bf16_bits([1.0]))[0]


def test_fit_wider_mantissa():
    t10 = fit_ktanh_table(mantissa_bits=10)
    assert t10.mantissa_bits == 10
    mx10, mn10, n10 = table_error(t10)
    mx7, mn7, _ = table_error(PUBLISHED_TABLE)
    assert n10 == 3 * 1024 + 1 + 7 * 128  # 3 octaves + [2, 3.75] at 10 bits
    assert mn10 < 0.7 * mn7
    # the maximum is set by the power-of-two slopes (t=16, tanh' ~ 0.78 between 0.5 and 1), not by
    # the output precision: it stays within 10% of the bf16 table's instead of dropping below it
    assert mx10 < 1.1 * mx7
    base, _ = t10.combined()
    assert base.dtype == np.uint32 and int(base[0]) == (t10.row(0)[0] << 10) + t10.row(0)[2]
    with pytest.raises(ValueError, match="mantissa_bits=7"):
        ref.ktanh_bf16_bits(ALL_BF16[:4], t10)


@pytest.mark.parametrize("kwargs, name", [
    ({"mantissa_bits": 2}, "mantissa_bits"), ({"mantissa_bits": 24}, "mantissa_bits"),
    ({"exponent_bias": 1}, "exponent_bias"), ({"r_max": -1}, "r_max"), ({"r_max": 8}, "r_max"),
    ({"thresholds": (0.5, 3.75)}, "thresholds"), ({"thresholds": (0.25, 4.5)}, "thresholds"),
])
def test_fit_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        fit_ktanh_table(**kwargs)


def test_fit_non_integer_argument():
    with pytest.raises(TypeError, match="mantissa_bits"):
        fit_ktanh_table(mantissa_bits=7.5)


def test_fit_r_max_limits_shift():
    t = fit_ktanh_table(r_max=2)
    assert int(t.shift.max()) <= 2


# -- rational tanh and the exact activation twins -------------------------------------------------
def test_tanh_pade_error_and_specials():
    x = np.linspace(-9, 9, 400001)
    err = np.abs(ref.tanh_pade(x) - np.tanh(x)).max()
    assert 5e-5 < err < 1.2e-4
    out = ref.tanh_pade(np.array([np.nan, np.inf, -np.inf, 5.0, -0.0]))
    assert np.isnan(out[0]) and out[1:4].tolist() == [1.0, -1.0, 1.0]
    assert np.signbit(out[4])


@pytest.mark.parametrize("f, df", [
    (ref.sigmoid, ref.sigmoid_grad),
    (lambda x: ref.swish(x, 1.7), lambda x: ref.swish_grad(x, 1.7)),
    (ref.gelu_tanh, ref.gelu_tanh_grad),
])
def test_derivative_twins(f, df):
    x = np.linspace(-6, 6, 241)
    h = 1e-5
    fd = (f(x + h) - f(x - h)) / (2 * h)
    assert np.abs(fd - df(x)).max() < 1e-8


def test_exact_twins_values():
    assert ref.sigmoid(np.array([0.0]))[0] == 0.5
    assert np.all(np.isfinite(ref.sigmoid(np.array([-1000.0, 1000.0]))))
    assert abs(ref.gelu_tanh(np.array([1.0]))[0] - 0.8411919906) < 1e-9
    x = np.linspace(-5, 5, 101)
    assert np.allclose(ref.swish(x, 1.0), x / (1 + np.exp(-x)), rtol=0, atol=1e-15)


@pytest.mark.parametrize("impl, tol", [("exact", 1e-15), ("fast", 1.2e-4), ("ktanh", 1.3e-2)])
def test_flavours(impl, tol):
    x = np.linspace(-8, 8, 3201).astype(np.float32).astype(np.float64)
    assert np.abs(ref.tanh_flavour(x, impl) - np.tanh(x)).max() < tol
    assert np.abs(ref.sigmoid_flavour(x, impl) - ref.sigmoid(x)).max() < tol / 2 + 1e-15
    assert np.abs(ref.swish_flavour(x, impl, 0.5) - ref.swish(x, 0.5)).max() < 8 * tol / 2 + 1e-15
    assert np.abs(ref.gelu_flavour(x, impl) - ref.gelu_tanh(x)).max() < 8 * tol / 2 + 1e-15


def test_ktanh_flavour_is_the_bit_recipe():
    x = np.array([0.5, -2.0, 1.0], np.float32)
    assert ref.tanh_flavour(x, "ktanh").tolist() == [0.46875, -0.96484375, 0.75390625]
    assert ref.sigmoid_flavour(np.array([1.0]), "ktanh")[0] == 0.5 + 0.5 * 0.46875
    with pytest.raises(ValueError, match="impl"):
        ref.tanh_flavour(x, "svml")
    with pytest.raises(ValueError, match="impl"):
        ref.gelu_flavour(x, "svml")


def test_kernel_table_is_the_published_table():
    """The kernels compile the table from an X-macro (approx_f32.h); it must be ktanh_table's."""
    from dlcpu._ext import approx as kernels

    base, shift = kernels.published_table()
    want_base, want_shift = PUBLISHED_TABLE.combined()
    assert base == [int(v) for v in want_base]
    assert shift == [int(v) for v in want_shift]
