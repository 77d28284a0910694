"""Statistics for fault-injection campaigns: how many injections, and how sure the rates are.

Design
------
* ``normal_quantile`` is Acklam's rational approximation of the inverse standard normal CDF
  (relative error ~1e-9) refined by one Halley step on ``math.erfc``, which brings it to ~1e-15
  absolute over the whole open interval. scipy is not a dependency.
* ``sample_size`` is the statistical fault injection formula of Leveugle et al. (DATE 2009)::

      n = N t^2 p(1-p) / (e^2 (N-1) + t^2 p(1-p))      (N -> inf:  n = t^2 p(1-p) / e^2)

  Rounding convention (``convention="published"``, the default): ``t`` is the two-sided normal
  quantile rounded to 4 decimals (1.96 for 95 %, 2.5758 for 99 %, as the usual tables use)
  and ``n`` is rounded to the nearest integer (halves up). This is the only simple convention that
  reproduces all the commonly quoted values at p = 0.5: 9604, 16587 and 384 (N -> inf) and 9513,
  16316 and 623875 (N = 1e6). Ceiling the value computed with the exact quantile would give 385,
  16588, 16317 and 623880 instead. ``convention="exact"`` does exactly that (exact quantile, round
  up), which guarantees the margin is met at the stated confidence; it can ask for a few more
  injections (385 instead of 384, 16588 instead of 16587). Either way 1 <= n <= N.
* ``wilson_interval`` is the Wilson score interval, vectorised over NumPy arrays; its coverage is
  close to nominal for the rates a campaign reports (unlike the Wald interval near 0 and 1).

Every function checks its arguments first and raises ``ValueError`` (``TypeError`` for a value that
is not a number at all) with one line naming the rule and the offending value.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["normal_quantile", "sample_size", "wilson_interval", "z_for_confidence"]

# Acklam's coefficients for the inverse normal CDF.
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
      1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
      6.680131188771972e01, -1.328068155288572e01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
      -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00,
      3.754408661907416e00)
_P_LOW = 0.02425


def _real(name: str, value) -> float:
    """``value`` as a float, refusing bools, non-numbers and NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    x = float(value)
    if math.isnan(x):
        raise ValueError(f"{name} must not be NaN")
    return x


def _open_unit(name: str, value) -> float:
    x = _real(name, value)
    if not 0.0 < x < 1.0:
        raise ValueError(f"{name} must be in the open interval (0, 1), got {x!r}")
    return x


def normal_quantile(p: float) -> float:
    """Inverse standard normal CDF: the x with P(Z <= x) = p. 0 -> -inf, 1 -> inf."""
    p = _real("normal_quantile: p", p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"normal_quantile: p must be in [0, 1], got {p!r}")
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    if p < _P_LOW:
        q = math.sqrt(-2.0 * math.log(p))
        x = ((((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5])
             / ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0))
    elif p <= 1.0 - _P_LOW:
        q = p - 0.5
        r = q * q
        x = (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q / (
            ((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0)
    else:
        q = math.sqrt(-2.0 * math.log1p(-p))
        x = -((((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5])
              / ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0))
    # One Halley step on f(x) = Phi(x) - p, with Phi from erfc (accurate in both tails).
    # In the upper tail work with the complement so that 1 - p does not lose digits.
    if x > 0.0:
        e = -(0.5 * math.erfc(x / math.sqrt(2.0)) - (1.0 - p))
    else:
        e = 0.5 * math.erfc(-x / math.sqrt(2.0)) - p
    u = e * math.sqrt(2.0 * math.pi) * math.exp(0.5 * x * x)
    return x - u / (1.0 + 0.5 * x * u)


def z_for_confidence(confidence: float) -> float:
    """Two-sided normal quantile t for a confidence level: 0.95 -> 1.959964, 0.99 -> 2.575829."""
    c = _open_unit("confidence", confidence)
    # Phi(t) = 1 - (1 - c)/2; pass the small tail so that no digits are lost near c = 1.
    return -normal_quantile(0.5 * (1.0 - c))


def sample_size(population=None, margin: float = 0.01, confidence: float = 0.95,
                p: float = 0.5, *, convention: str = "published") -> int:
    """Number of injections for a rate within +/- ``margin`` at ``confidence`` (Leveugle 2009).

    ``population`` is the size N of the fault space (None or math.inf: infinite); ``p`` the
    expected rate (0.5 is the conservative choice). See the module docstring for ``convention``.
    """
    e = _open_unit("margin", margin)
    c = _open_unit("confidence", confidence)
    pr = _open_unit("p", p)
    if convention not in ("published", "exact"):
        raise ValueError(f"convention must be 'published' or 'exact', got {convention!r}")
    if population is not None:
        population = _real("population", population)
        if population < 1:
            raise ValueError(f"population must be >= 1 (or None for an infinite one), got {population!r}")
        if math.isfinite(population) and population != math.floor(population):
            raise ValueError(f"population must be a whole number of faults, got {population!r}")
        if math.isinf(population):
            population = None
    t = z_for_confidence(c)
    if convention == "published":
        t = round(t, 4)
    a = t * t * pr * (1.0 - pr)
    if population is None:
        n = a / (e * e)
    else:
        n = population * a / (e * e * (population - 1.0) + a)
    n_int = math.ceil(n) if convention == "exact" else math.floor(n + 0.5)
    n_int = max(1, n_int)
    if population is not None:
        n_int = min(n_int, int(population))
    return int(n_int)


def _counts(name: str, value) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"wilson_interval: {name} must be numeric counts, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"wilson_interval: {name} must not be NaN")
    if (arr < 0).any():
        raise ValueError(f"wilson_interval: {name} must be >= 0, got {arr.min()!r}")
    if (~np.isfinite(arr)).any() or (arr != np.floor(arr)).any():
        bad = arr[(~np.isfinite(arr)) | (arr != np.floor(arr))].flat[0]
        raise ValueError(f"wilson_interval: {name} must be whole numbers, got {bad!r}")
    return arr


def wilson_interval(successes, n, confidence: float = 0.95):
    """Wilson score interval (low, high) for ``successes`` out of ``n`` trials.

    Scalars give a pair of floats; arrays (broadcast together) give a pair of float64 arrays.
    ``n == 0`` gives (0, 1): no data, no information.
    """
    c = _open_unit("confidence", confidence)
    scalar = np.ndim(successes) == 0 and np.ndim(n) == 0
    x = _counts("successes", successes)
    m = _counts("n", n)
    try:
        x, m = np.broadcast_arrays(x, m)
    except ValueError:
        raise ValueError(f"wilson_interval: successes shape {np.shape(successes)} does not "
                         f"broadcast with n shape {np.shape(n)}") from None
    if (x > m).any():
        i = np.flatnonzero(x > m)[0]
        raise ValueError(f"wilson_interval: successes must be <= n, got {x.flat[i]:g} > {m.flat[i]:g}")
    z = z_for_confidence(c)
    z2 = z * z
    safe = np.where(m > 0, m, 1.0)
    denom = safe + z2
    centre = (x + 0.5 * z2) / denom
    half = z / denom * np.sqrt(x * (safe - x) / safe + 0.25 * z2)
    low = np.clip(centre - half, 0.0, 1.0)
    high = np.clip(centre + half, 0.0, 1.0)
    low = np.where((x == 0) | (m == 0), 0.0, low)
    high = np.where((x == m) | (m == 0), 1.0, high)
    if scalar:
        return float(low), float(high)
    return low, high


def mean_fraction_interval(total, total_sq, n, confidence: float = 0.95):
    """(mean, low, high) of n per-injection fractions in [0, 1] given their sum and sum of
    squares: the normal interval over the injections (the independent units when each fault is
    evaluated on several inputs), clipped to [0, 1].  n = 0 gives (NaN, 0, 1)."""
    if n <= 0:
        return float("nan"), 0.0, 1.0
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
    half = z_for_confidence(confidence) * math.sqrt(var / n)
    low, high = max(0.0, mean - half), min(1.0, mean + half)
    if var == 0.0:
        # every fraction equal (typically all 0: no fault changed any input): the normal interval
        # collapses to a point; the Wilson interval of that many 0/1 outcomes bounds the mean,
        # since a fraction lies between 0 and 1 whenever its indicator does
        wl, wh = wilson_interval(round(mean * n), n, confidence)
        low, high = min(low, wl), max(high, wh)
    return mean, low, high

