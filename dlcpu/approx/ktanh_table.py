"""K-TanH parameter tables: the published bf16 table, the procedure that fits one, and checks.

K-TanH (Kundu et al., arXiv 1909.07729) approximates tanh on 0.25 <= |x| <= 3.75 without any
floating-point arithmetic.  The inputs there have one of four exponents (2^-2 .. 2^1), so a 5-bit
index t made of the low 2 exponent bits and the top 3 mantissa bits splits that range into 32
intervals (8 per octave).  Each interval t has three small integers: an output exponent Et, a
right shift rt and an additive bias bt, and the output is assembled straight from the input bits:

    y = sign | Et << mb | ((M >> rt) + bt)          (M: input mantissa, mb: mantissa bits)

which is a straight line in M with a power-of-two slope.  Outside the range tanh is replaced by x
(|x| < 0.25) or by sign(x) (|x| > 3.75).

Design:

* `KTanhTable` is an immutable record of the three 32-entry arrays plus the format they belong to
  (mantissa bits, exponent bias, thresholds).  It validates itself when made: a row whose output
  mantissa could leave [0, 2^mb - 1] for an input of its own interval is refused with a
  `ValueError` naming the row, so no kernel ever sees a table that would carry into the exponent.
* `KTanhTable.combined()` folds Et and bt into one word per row, the form a vector kernel looks up
  (two `vpermw` tables instead of three).
* `PUBLISHED_TABLE` is the table as published; it is what the kernels use.
* `fit_ktanh_table` regenerates a table from tanh itself (the fitting procedure of the paper), so
  that formats other than bf16 (fp16-like 10-bit or fp32's 23-bit mantissas with an 8-bit exponent)
  get a table too.  For bf16 it reproduces 27 of the 32 published rows; see
  `FIT_DIFFERS_FROM_PUBLISHED`.
* `table_error` measures a table against float64 tanh over every representable input of its
  format in [T1, T2].
"""
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np

__all__ = ["FIT_DIFFERS_FROM_PUBLISHED", "PUBLISHED_TABLE", "KTanhTable", "fit_ktanh_table", "table_error"]

#: number of rows of every table: 2 low exponent bits x 3 top mantissa bits
N_ROWS = 32
#: width of the exponent field of every format handled here (bf16, fp32 and the fitted variants)
EXPONENT_BITS = 8


def _interval_mantissas(t, mantissa_bits):
    """First and last input mantissa of interval t (its top 3 mantissa bits are t & 7)."""
    width = 1 << (mantissa_bits - 3)
    lo = (t & 7) * width
    return lo, lo + width - 1


def _interval_exponent(t, exponent_bias):
    """The biased input exponent of interval t: the one of bias-2 .. bias+1 whose low 2 bits are t >> 3."""
    return next(e for e in range(exponent_bias - 2, exponent_bias + 2) if e & 3 == t >> 3)


def _check_int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def _check_thresholds(thresholds):
    try:
        t1, t2 = (float(v) for v in thresholds)
    except (TypeError, ValueError):
        raise ValueError(f"thresholds must be a pair of numbers, got {thresholds!r}") from None
    if t1 != 0.25 or not 0.25 < t2 < 4.0:
        raise ValueError(f"thresholds must be (0.25, T2) with 0.25 < T2 < 4, got {thresholds!r}")
    return t1, t2


def _frozen_int_array(name, values):
    a = np.array(values)
    if a.shape != (N_ROWS,):
        raise ValueError(f"KTanhTable: {name} must have {N_ROWS} entries, got shape {a.shape}")
    if a.dtype.kind not in "iu" and (a.dtype.kind not in "f" or not np.all(np.isfinite(a)) or np.any(a != np.round(a))):
        raise ValueError(f"KTanhTable: {name} must hold integers")
    a = a.astype(np.int64)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class KTanhTable:
    """The three K-TanH parameter arrays, indexed by t = (low 2 exponent bits << 3) | top 3 mantissa bits.

    exponent: output exponent Et (biased, 0..254; 255 would encode Inf/NaN)
    shift:    right shift rt of the input mantissa, 0..mantissa_bits
    bias:     signed addend bt of the output mantissa
    mantissa_bits: mantissa width of the format (7 = bf16)
    exponent_bias: exponent bias of the format (127 for bf16/fp32)
    thresholds: (T1, T2); identity below T1, sign(x) above T2.  T1 must be 0.25 = 2^-2 (the index
        assumes four live exponents) and T2 must lie in (0.25, 4).

    The arrays are stored as read-only int64.  Construction checks, row by row, that
    (M >> rt) + bt stays in [0, 2^mantissa_bits - 1] for every mantissa M of the row's own interval
    (top 3 bits equal to t & 7); the published table satisfies this.
    """

    exponent: np.ndarray
    shift: np.ndarray
    bias: np.ndarray
    mantissa_bits: int = 7
    exponent_bias: int = 127
    thresholds: tuple = field(default=(0.25, 3.75))

    def __post_init__(self):
        mb = _check_int("mantissa_bits", self.mantissa_bits, 3, 23)
        eb = _check_int("exponent_bias", self.exponent_bias, 3, 253)
        object.__setattr__(self, "mantissa_bits", mb)
        object.__setattr__(self, "exponent_bias", eb)
        object.__setattr__(self, "thresholds", _check_thresholds(self.thresholds))
        for name in ("exponent", "shift", "bias"):
            object.__setattr__(self, name, _frozen_int_array(name, getattr(self, name)))
        top = (1 << mb) - 1
        for t in range(N_ROWS):
            e, r, b = int(self.exponent[t]), int(self.shift[t]), int(self.bias[t])
            row = f"row t={t} ({t:05b}: Et={e}, rt={r}, bt={b})"
            if not 0 <= e <= 254:
                raise ValueError(f"KTanhTable: {row}: exponent must be in [0, 254]")
            if not 0 <= r <= mb:
                raise ValueError(f"KTanhTable: {row}: shift must be in [0, {mb}]")
            m_lo, m_hi = _interval_mantissas(t, mb)
            out_lo, out_hi = (m_lo >> r) + b, (m_hi >> r) + b
            if out_lo < 0 or out_hi > top:
                raise ValueError(f"KTanhTable: {row}: output mantissa (M >> rt) + bt spans [{out_lo}, {out_hi}] "
                                 f"for the interval's mantissas M in [{m_lo}, {m_hi}], outside [0, {top}]")

    def combined(self):
        """(base, shift) as the vector kernel looks them up: base = (Et << mantissa_bits) + bt.

        The output bits of a row are then sign | (base + (M >> shift)).  base is taken modulo the
        word size (two's complement wrap), which is harmless: the true sum is a valid non-negative
        pattern (checked at construction), and modular addition gives it back.  The words are
        uint16 when sign, exponent and mantissa fit in 16 bits (bf16, mantissa_bits <= 7), uint32
        otherwise.
        """
        dtype = np.uint16 if 1 + EXPONENT_BITS + self.mantissa_bits <= 16 else np.uint32
        mod = 1 << (8 * np.dtype(dtype).itemsize)
        base = ((self.exponent << self.mantissa_bits) + self.bias) % mod
        return base.astype(dtype), self.shift.astype(dtype)

    def row(self, t):
        """(Et, rt, bt) of row t as Python ints."""
        return int(self.exponent[t]), int(self.shift[t]), int(self.bias[t])

    def __eq__(self, other):
        if not isinstance(other, KTanhTable):
            return NotImplemented
        return (self.mantissa_bits == other.mantissa_bits and self.exponent_bias == other.exponent_bias
                and self.thresholds == other.thresholds
                and all(np.array_equal(getattr(self, n), getattr(other, n)) for n in ("exponent", "shift", "bias")))

    __hash__ = None


# The published bf16 table (K-TanH paper, as quoted in shared/reference/papers.md section 1.2), in
# row order t = 0b00000 .. 0b11111.  Rows 0-7 serve [2, 4), 8-15 [0.25, 0.5), 16-23 [0.5, 1),
# 24-31 [1, 2).
_PUBLISHED_ROWS = (
    # t = 00000 .. 00111: x in [2, 4)
    (126, 2, 119), (126, 4, 122), (126, 4, 123), (126, 4, 123),
    (126, 6, 126), (126, 6, 126), (126, 6, 126), (126, 6, 126),
    # t = 01000 .. 01111: x in [0.25, 0.5)
    (125, 1, 1), (125, 0, -4), (125, 0, -6), (125, 0, -7),
    (125, 0, -10), (125, 0, -12), (125, 0, -15), (125, 0, -18),
    # t = 10000 .. 10111: x in [0.5, 1)
    (125, 0, 112), (126, 1, -4), (126, 1, -1), (126, 1, 2),
    (126, 1, 3), (126, 1, 4), (126, 1, 4), (126, 1, 4),
    # t = 11000 .. 11111: x in [1, 2)
    (126, 0, 65), (126, 1, 72), (126, 1, 73), (126, 1, 73),
    (126, 2, 88), (126, 2, 89), (126, 2, 89), (126, 4, 110),
)

#: the paper's bf16 table; what the kernels use
PUBLISHED_TABLE = KTanhTable(exponent=[r[0] for r in _PUBLISHED_ROWS], shift=[r[1] for r in _PUBLISHED_ROWS],
                             bias=[r[2] for r in _PUBLISHED_ROWS])

#: rows t where fit_ktanh_table() (bf16, default arguments) differs from PUBLISHED_TABLE
#: (measured; see fit_ktanh_table's docstring for the values)
FIT_DIFFERS_FROM_PUBLISHED = (5, 6, 7, 11, 31)


def _round_to_format(y, mantissa_bits, exponent_bias):
    """Positive normal float64 values -> (biased exponent, mantissa) rounded to nearest, ties to even."""
    f, e = np.frexp(y)                                       # y = f * 2^e, f in [0.5, 1)
    q = np.rint((2.0 * f - 1.0) * float(1 << mantissa_bits))  # exact scaling; rint rounds ties to even
    carry = q >= (1 << mantissa_bits)
    exponent = np.where(carry, e, e - 1) + exponent_bias
    return exponent.astype(np.int64), np.where(carry, 0, q).astype(np.int64)


def _value(exponent, mantissa, mantissa_bits, exponent_bias):
    return (1.0 + np.asarray(mantissa, np.float64) / float(1 << mantissa_bits)) * np.exp2(
        np.asarray(exponent, np.float64) - exponent_bias)


def _fit_row(t, mb, eb, r_max):
    lo, hi = _interval_mantissas(t, mb)
    m = np.arange(lo, hi + 1, dtype=np.int64)
    x = _value(_interval_exponent(t, eb), m, mb, eb)
    y = np.tanh(x)
    e_i, m_i = _round_to_format(y, mb, eb)
    top = (1 << mb) - 1

    # step 2: one output exponent for the interval, from the targets' own exponents
    best = None
    for e in np.unique(e_i):  # ascending: on a tie the smaller exponent wins
        m_hat = np.where(e_i == e, m_i, np.where(e > e_i, 0, top))
        sse = float(np.sum((y - _value(e, m_hat, mb, eb)) ** 2))
        if best is None or sse < best[0]:
            best = (sse, int(e), m_hat.astype(np.float64))
    _, e_out, m_hat = best

    # step 3: shift and bias, least squares on the mantissa with the real-valued slope m / 2^r;
    # b is limited so that the integer result (m >> r) + b stays inside [0, top] for the interval
    best = None
    for r in range(r_max + 1):
        b_min, b_max = -int(m[0] >> r), top - int(m[-1] >> r)
        if b_min > b_max:
            continue
        d = m_hat - m / float(1 << r)
        mu = float(d.mean())
        for b in sorted({min(max(v, b_min), b_max) for v in (int(np.floor(mu)), int(np.ceil(mu)))}):
            sse = float(np.sum((d - b) ** 2))
            if best is None or sse < best[0]:  # ascending r, then b: ties go to the smaller
                best = (sse, r, b)
    return e_out, best[1], best[2]


def fit_ktanh_table(mantissa_bits=7, exponent_bias=127, r_max=None, thresholds=(0.25, 3.75)):
    """Fit a K-TanH table to tanh for a format with 8 exponent bits and `mantissa_bits` mantissa bits.

    For every interval t (the 2^(mantissa_bits-3) representable inputs x_i whose low 2 exponent
    bits and top 3 mantissa bits are t):

    1. targets: y_i = tanh(x_i) in float64, rounded to nearest-even in the format -> (E_i, M_i);
    2. one output exponent E, chosen among the E_i, minimising sum (y_i - yhat_i)^2 where yhat_i
       has exponent E and mantissa M_i if E = E_i, 0 if E > E_i, 2^mb - 1 if E < E_i (clamping);
    3. integers r in [0, r_max] and b minimising sum (Mhat_i - (m_i / 2^r + b))^2 (the slope taken
       real-valued, m_i the full input mantissa), with b limited to [-(m_lo >> r), 2^mb-1 - (m_hi >> r)]
       so that the kernel's (m >> r) + b can neither underflow nor overflow the mantissa field.

    Ties go to the smaller exponent, then the smaller r, then the smaller b.  All work is
    vectorised per interval: mantissa_bits=23 (2^20 points per interval) takes a few seconds.
    float64 tanh is trusted to decide the rounding of the targets (it cannot misplace a tie by more
    than one float64 ulp).

    bf16 (the defaults) reproduces 27 of the 32 published rows.  It differs on
    t=5 (126, 5, 124) vs published (126, 6, 126), t=6 (127, 5, -3) vs (126, 6, 126),
    t=7 (127, 4, -7) vs (126, 6, 126) -- in [3.25, 4) tanh rounds to 1.0 in bf16, and the fit
    follows it where the paper keeps 0.99609375 --, t=11 (125, 0, -8) vs (125, 0, -7) and
    t=31 (126, 3, 103) vs (126, 4, 110).  (papers.md reports a fit that also differs on t=4; this
    one matches t=4.  Row t=24 is an exact tie between (126, 0, 65), kept, and (126, 1, 69).)
    Over the 497 bf16 points of [0.25, 3.75], against float64 tanh: fitted max 8.92e-3, mean
    2.03e-3; published max 8.92e-3, mean 1.99e-3 (the fit minimises squared mantissa error against
    rounded targets, not the error against tanh itself).  The two tables' outputs differ on 57 of
    the 497 points, by at most 3.91e-3 (one bf16 ulp near 1; mean 3.9e-4 over all 497).

    Wider mantissas lower the mean error but not the maximum: mantissa_bits=10 gives max 9.71e-3,
    mean 1.27e-3 (3969 points); 23 gives max 9.83e-3, mean 1.21e-3 (fit ~4 s).  The maximum sits
    in t=16 ([0.5, 0.5625)), where tanh' ~ 0.78 lies between the only slopes a shift can give
    (0.5 and 1), so it is a property of the power-of-two slope, not of the format's precision.

    Returns a validated `KTanhTable`.  Raises TypeError/ValueError naming a bad argument.
    """
    mb = _check_int("mantissa_bits", mantissa_bits, 3, 23)
    eb = _check_int("exponent_bias", exponent_bias, 3, 253)
    r_max = mb if r_max is None else _check_int("r_max", r_max, 0, mb)
    thresholds = _check_thresholds(thresholds)
    rows = [_fit_row(t, mb, eb, r_max) for t in range(N_ROWS)]
    return KTanhTable(exponent=[r[0] for r in rows], shift=[r[1] for r in rows], bias=[r[2] for r in rows],
                      mantissa_bits=mb, exponent_bias=eb, thresholds=thresholds)


def table_error(table):
    """(max abs error, mean abs error, number of points) of `table` against float64 tanh over every
    positive input of its format in [T1, T2] (the points the table serves; the identity and
    saturation branches are not included)."""
    if not isinstance(table, KTanhTable):
        raise TypeError(f"table must be a KTanhTable, got {type(table).__name__}")
    mb, eb = table.mantissa_bits, table.exponent_bias
    t1, t2 = table.thresholds
    worst, total, count = 0.0, 0.0, 0
    for t in range(N_ROWS):
        lo, hi = _interval_mantissas(t, mb)
        m = np.arange(lo, hi + 1, dtype=np.int64)
        x = _value(_interval_exponent(t, eb), m, mb, eb)
        keep = (x >= t1) & (x <= t2)
        if not keep.any():
            continue
        e, r, b = table.row(t)
        err = np.abs(_value(e, (m[keep] >> r) + b, mb, eb) - np.tanh(x[keep]))
        worst = max(worst, float(err.max()))
        total += float(err.sum())
        count += int(keep.sum())
    return worst, total / count, count
