"""Accuracy of every activation flavour against float64, measured exhaustively (`dlcpu bench act
--accuracy`).

Two input sets per function and flavour, both run through the same kernels users call:
  * every finite bf16 value (65536 patterns less the NaNs and Infs), as float32 inputs: K-TanH's
    own domain, where the paper's figures are stated (max abs error over all inputs; mean abs
    error over the 497 table points 0.25 <= x <= 3.75 (odd functions: the negatives are the
    same), or over 0.25 <= |x| <= 8 for the derived functions, whose interesting range is wider);
  * at least 10^7 fp32 inputs in [-9, 9]: every STRIDE-th fp32 bit pattern of [0, 9], and their
    negatives, so every binade from the smallest denormal up is represented in proportion to
    its share of fp32 values (max abs error over all of them, mean over |x| >= 0.25).
The references are float64 (numpy's tanh and exp); the GELU reference is the tanh form itself,
the function the flavours approximate.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

from .. import _reference as ref
from . import IMPLS, gelu, sigmoid, swish, tanh

#: the paper's figures for the published table (papers.md section 1.4)
PUBLISHED_KTANH = {"max_abs": 8.92e-3, "mean_abs_table_region": 1.99e-3, "points": 497}
#: fp32 sampling: 9.0's bit pattern / STRIDE positive inputs, mirrored: just over 10^7 in all
FP32_STRIDE = 217
TABLE_REGION = (0.25, 3.75)
DERIVED_REGION = 8.0

_FUNCTIONS = {
    "tanh": (lambda x, impl: tanh(x, impl), lambda x: np.tanh(x)),
    "sigmoid": (lambda x, impl: sigmoid(x, impl), ref.sigmoid),
    "swish": (lambda x, impl: swish(x, 1.0, impl), lambda x: ref.swish(x, 1.0)),
    "gelu": (lambda x, impl: gelu(x, impl), ref.gelu_tanh),
}


@dataclass(frozen=True)
class AccuracyRow:
    function: str
    impl: str
    bf16_max_abs: float      # over every finite bf16 input
    bf16_mean_abs: float     # over the region below
    bf16_region: str
    bf16_points: int
    fp32_max_abs: float      # over the fp32 sample in [-9, 9]
    fp32_mean_abs: float     # over its inputs with |x| >= 0.25
    fp32_points: int         # the whole sample

    def as_dict(self):
        return asdict(self)


def finite_bf16_inputs():
    """Every finite bf16 value as float32 (NaN and Inf patterns left out)."""
    bits = np.arange(1 << 16, dtype=np.uint32)
    x = (bits << 16).view(np.float32)
    return x[np.isfinite(x)]


def fp32_sample(limit=9.0, stride=FP32_STRIDE):
    """Every `stride`-th fp32 bit pattern in [0, limit] and the negatives of those (0 once)."""
    top = int(np.float32(limit).view(np.uint32))
    pos = np.arange(0, top + 1, stride, dtype=np.uint32).view(np.float32)
    return np.concatenate([pos, -pos[1:]])


def _errors(fn, ref_fn, x, impl, region):
    y = fn(x, impl).astype(np.float64)
    err = np.abs(y - ref_fn(x.astype(np.float64)))
    return float(err.max()), float(err[region].mean()), int(region.sum())


def measure(functions=tuple(_FUNCTIONS), impls=IMPLS, n_threads=None):
    """One AccuracyRow per (function, flavour)."""
    rows = []
    xb = finite_bf16_inputs()
    xf = fp32_sample()
    # the means skip |x| < 0.25, where every flavour is x-like and near exact: the bit-pattern
    # sample is 96% such inputs, and they would average any real error away
    away = np.abs(xf) >= TABLE_REGION[0]
    for name in functions:
        fn, ref_fn = _FUNCTIONS[name]
        if name == "tanh":
            region, label = (xb >= TABLE_REGION[0]) & (xb <= TABLE_REGION[1]), "0.25<=x<=3.75"
        else:
            region = (np.abs(xb) >= TABLE_REGION[0]) & (np.abs(xb) <= DERIVED_REGION)
            label = f"0.25<=|x|<={DERIVED_REGION:g}"
        for impl in impls:
            bmax, bmean, bn = _errors(fn, ref_fn, xb, impl, region)
            fmax, fmean, _ = _errors(fn, ref_fn, xf, impl, away)
            rows.append(AccuracyRow(name, impl, bmax, bmean, label, bn, fmax, fmean, int(xf.size)))
    return rows


def ktanh_bits_exhaustive():
    """K-TanH on all 65536 bf16 patterns (bf16 in, bf16 out) against float64 tanh: the paper's
    two figures, and the special values checked."""
    from . import ktanh

    bits = np.arange(1 << 16, dtype=np.uint16)
    y = ktanh(bits)
    with np.errstate(invalid="ignore"):          # signalling-NaN patterns
        x = (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        out = (y.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    finite = np.isfinite(x)
    err = np.abs(out[finite] - np.tanh(x[finite]))
    xf = x[finite]
    table = (xf >= TABLE_REGION[0]) & (xf <= TABLE_REGION[1])   # the paper's 497 points (x > 0)
    nan_ok = bool(np.all(np.isnan(out[np.isnan(x)])))
    inf_ok = bool(np.all(out[np.isinf(x)] == np.sign(x[np.isinf(x)])))
    zero_ok = bool(y[0] == 0 and y[0x8000] == 0x8000)
    return {"max_abs": float(err.max()), "mean_abs_table_region": float(err[table].mean()),
            "points": int(table.sum()), "worst_input": float(x[finite][np.argmax(err)]),
            "nan_to_nan": nan_ok, "inf_to_pm1": inf_ok, "signed_zeros_kept": zero_ok,
            "published": PUBLISHED_KTANH, "inputs": 1 << 16}


def fmt(v):
    return "0" if v == 0 else f"{v:.2e}" if math.isfinite(v) else str(v)
