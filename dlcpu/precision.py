"""Number formats below fp32, and the exact conversions between them and fp32.

    bits = fp32_to_bf16_bits(x)              # uint16 patterns, round to nearest even
    x16 = bf16_bits_to_fp32(bits)            # exact
    (bf16 activations and weights for the kernels: dlcpu.to_bf16_blocked, dlcpu.block_weights_bf16)

    d = to_dfp16(x, headroom=2)              # int16 mantissas + one shared exponent: I * 2**E
    d = to_dfp16(g, rounding="stochastic", seed=7)
    p = dfp_multiply(a, b); s = dfp_add(a, b); dfp_downconvert(s)    # the DFP-16 arithmetic rules

    scales = int8_weight_scales(w)           # symmetric, one per output channel
    cal = ActivationCalibrator(); cal.observe(batch) ...; q = to_int8(x, cal.scale, unsigned=cal.unsigned)

    tw = ternarize(w, block=16, residual=1)  # W ~ sum_l alpha_l * t_l, alpha per (out channel, block)
    tw.to_float32(levels=1)                  # residual levels switched off, least important first

The formats (papers.md §3-§5):

* **bf16** -- fp32's top 16 bits.  fp32 -> bf16 follows VCVTNEPS2BF16 on every ISA path, bit
  for bit: round to nearest even; zero and denormal inputs become a zero of the same sign (the
  instruction's DAZ/FTZ rule, chosen so that the AVX-512 path can use the instruction itself);
  +-Inf is kept; a NaN keeps its sign and top payload bits and gets the quiet bit (0x0040), so it
  never turns into Inf; a finite value that rounds past the largest bf16 becomes Inf.  bf16 ->
  fp32 appends 16 zero bits.  Tested over all 2**32 fp32 patterns against a scalar reference.
* **DFP-16** -- int16 mantissas I and one shared exponent E per tensor: x ~ I * 2**E.  E = e_max
  - (P - 2) + headroom, where e_max is the binary exponent of max|x| (max|x| = 1.m * 2**e_max),
  P = 16, so max|x| / 2**E lies in [2**(14 - headroom), 2**(15 - headroom)).  The issue writes
  "- headroom"; with P = 16 that puts max|x| at 2**16 and overflows int16, so headroom here
  *raises* E, as LIBXSMM's add_shift does (GxM trains with 2).  Mantissas round to nearest even
  or stochastically (|v| rounds up with probability frac(|v|), seeded, independent of threads),
  and are clamped so that neither the int16 nor the value I * 2**E can overflow; E is at least
  -149, so I * 2**E is always an exact fp32 (to_float32 is exact).
* **int8** -- symmetric scales: per output channel for weights (max|w_k| / 127), per tensor for
  activations (max|x| / 127, or max / 255 unsigned after a ReLU), from a calibration over a few
  batches.  q = round-half-even(x / scale) clamped to the range.
* **ternary** -- per block of N weights along the input channels (one alpha per (output channel,
  channel block, kernel tap)), the exact minimizer of ||w - alpha*t||^2 (sort-based, papers.md
  §3.3); r residual levels ternarize what the previous levels left.

NaN or Inf in a tensor being quantized to DFP-16 or int8 is refused: the shared exponent or the
scale would be undefined and the result garbage.  bf16 represents both, so it converts them.
"""
import math
from dataclasses import dataclass

import numpy as np

from . import cpu
from ._ext import precision as _precision
from ._validate import flag, float32_array, not_aliased, positive_int

CB = cpu.CHANNEL_BLOCK

#: The names `precision=` accepts across dlcpu (fp32 plus the formats of this module).
PRECISIONS = ("fp32", "bf16", "dfp16", "int8", "ternary")
#: DFP-16 mantissa bits (P of papers.md §4.2) and the default exponent headroom (GxM's add_shift).
DFP16_BITS = 16
DFP16_HEADROOM = 2
#: The smallest shared exponent: I * 2**E stays a multiple of fp32's smallest denormal, so exact.
DFP_MIN_EXPONENT = -149
ROUNDINGS = ("nearest", "stochastic")
#: most residual levels ternarize() makes (each pass costs a sort of every block)
MAX_RESIDUAL = 15
_FP32_NONFINITE = 0x7F800000


def check_precision(precision, fn):
    """precision as one of PRECISIONS (ValueError naming the choices otherwise)."""
    if not isinstance(precision, str) or precision.lower() not in PRECISIONS:
        raise ValueError(f"{fn}: unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision.lower()


#: the formats with convolution and GEMM kernels (ternary weights: convolution only, conv2d)
KERNEL_FORMATS = ("fp32", "bf16", "dfp16", "int8")


def native_formats(features=None, isa=None):
    """{format: how dlcpu's kernels run it on the ISA path in use (DLCPU_ISA or the best the
    CPU has)}: the instruction of its dot products, 'emulated' (a kernel without the
    instruction: slower).  features: a dict as cpu.features() gives
    (for tests); isa: a path name, by default the one in use."""
    if features is not None and not isinstance(features, dict):
        raise TypeError(f"native_formats: features must be a dict like cpu.features(), got {type(features).__name__}")
    f = cpu.features() if features is None else features
    if isa is None:
        isa = cpu.resolve_isa() if features is None else ("avx512" if f.get("avx512f") else "avx2")
    fp32 = {"avx512": "vfmadd231ps (AVX-512)", "avx2": "vfmadd231ps (AVX2)"}.get(isa)
    vnni = isa == "avx512" and f.get("avx512_vnni")
    instructions = {"fp32": fp32,
                    "bf16": "vdpbf16ps, vcvtneps2bf16 (avx512_bf16)" if isa == "avx512" and f.get("avx512_bf16") else None,
                    "dfp16": "vpdpwssd (avx512_vnni)" if vnni else None,
                    "int8": "vpdpbusd (avx512_vnni)" if vnni else None,
                    "ternary": "vpdpbusd on +-1 codes (avx512_vnni)" if vnni else None}
    return {fmt: instructions.get(fmt) or "emulated" for fmt in PRECISIONS}


def native_bf16(isa_name):
    """Whether bf16 products run on VDPBF16PS: the AVX-512 path of a CPU with avx512_bf16 (the
    other paths widen each pair to fp32 and use two FMAs)."""
    return isa_name == "avx512" and cpu.features()["avx512_bf16"]


def _threads_and_isa(isa, n_threads):
    return cpu.isa_code(isa), cpu.resolve_threads(n_threads)


# ------------------------------------------------------------------------------------- bf16
def fp32_to_bf16_bits(a, *, isa=None, n_threads=None, native=None):
    """float32 array -> uint16 array of the same shape: the bf16 patterns (see the module doc).
    native: on the AVX-512 path, use VCVTNEPS2BF16 (default: when the CPU has avx512_bf16; the
    integer recipe gives the same bits)."""
    fn = "fp32_to_bf16_bits"
    a = float32_array(a, "a", fn)
    code, threads = _threads_and_isa(isa, n_threads)
    on_avx512 = code == cpu.ISA_CODES["avx512"]
    if native is None:           # the instruction where the path and the CPU have it
        native = on_avx512 and cpu.features()["avx512_bf16"]
    elif flag(native, "native", fn):
        if not cpu.features()["avx512_bf16"]:
            raise ValueError(f"{fn}: native=True needs avx512_bf16, which this CPU lacks")
        if not on_avx512:
            raise ValueError(f"{fn}: native=True runs on the avx512 path, not {cpu.ISA_BY_CODE[code]}")
    out = np.empty(a.shape, np.uint16)
    _precision.f32_to_bf16(a.reshape(-1), out.reshape(-1), code, native, threads)
    return out


def _out_array(out, shape, dtype, fn, inputs):
    """A fresh array, or `out` checked to be a writeable C-contiguous array of that shape and
    dtype that overlaps none of `inputs` (callers converting every step reuse one buffer
    instead of faulting in a new one)."""
    if out is None:
        return np.empty(shape, dtype)
    # (the message is built only on failure: this runs on every small conversion of a step)
    if not isinstance(out, np.ndarray) or isinstance(out, np.matrix) or out.dtype != dtype:
        raise TypeError(f"{fn}: out must be {_out_wanted(shape, dtype)}, got {type(out).__name__}"
                        + (f" of {out.dtype}" if isinstance(out, np.ndarray) else ""))
    flags = out.flags
    if out.shape != tuple(shape) or not flags.c_contiguous or not flags.writeable:
        why = ("its shape is " + str(out.shape) if out.shape != tuple(shape) else
               "it is not C-contiguous" if not flags.c_contiguous else "it is read-only")
        raise ValueError(f"{fn}: out must be {_out_wanted(shape, dtype)}, but {why}")
    not_aliased(out, inputs, fn)
    return out


def _out_wanted(shape, dtype):
    return f"a writeable C-contiguous {np.dtype(dtype)} array of shape {tuple(shape)}"


def fp32_blocks_to_bf16_vnni(blocks, *, n_threads=None, out=None):
    """float32 (..., 16, 16) weight blocks [16c][16k] -> uint16 bf16 blocks of the same shape in
    VNNI pairs [8][16k][2] (the layout of dlcpu.block_weights_bf16), one pass; into `out` if given."""
    fn = "fp32_blocks_to_bf16_vnni"
    blocks = float32_array(blocks, "blocks", fn)
    if blocks.ndim < 2 or blocks.shape[-2:] != (CB, CB):
        raise ValueError(f"{fn}: blocks must end in ({CB}, {CB}), got shape {blocks.shape}")
    code, threads = _threads_and_isa(None, n_threads)
    out = _out_array(out, blocks.shape, np.uint16, fn, {"blocks": blocks})
    _precision.f32_to_bf16_vnni(blocks.reshape(-1), out.reshape(-1), code, native_bf16(cpu.ISA_BY_CODE[code]), threads)
    return out


def bf16_bits_to_fp32(b, *, isa=None, n_threads=None, out=None):
    """uint16 bf16 patterns -> float32 of the same shape (exact); into `out` if given."""
    fn = "bf16_bits_to_fp32"
    if not isinstance(b, np.ndarray) or b.dtype != np.uint16:
        raise TypeError(f"{fn}: b must be a uint16 numpy array of bf16 patterns, got "
                        f"{getattr(b, 'dtype', type(b).__name__)}")
    b = np.ascontiguousarray(b).reshape(b.shape)     # (a 0-d array stays 0-d)
    code, threads = _threads_and_isa(isa, n_threads)
    out = _out_array(out, b.shape, np.float32, fn, {"b": b})
    _precision.bf16_to_f32(b.reshape(-1), out.reshape(-1), code, threads)
    return out


def round_to_bf16(a, **kw):
    """float32 values rounded to the nearest bf16 (returned as float32)."""
    return bf16_bits_to_fp32(fp32_to_bf16_bits(a, **kw))


# ------------------------------------------------------------------------------------ DFP-16
@dataclass(frozen=True)
class DFPTensor:
    """Dynamic fixed point: integer mantissas sharing one exponent, value = mantissas * 2**exponent.
    int16 mantissas are DFP-16; products and sums (dfp_multiply, dfp_add) carry int64 ones until
    dfp_downconvert brings them back to 16 bits."""
    mantissas: np.ndarray
    exponent: int

    def __post_init__(self):
        m = self.mantissas
        if not isinstance(m, np.ndarray) or m.dtype.kind != "i":
            raise TypeError(f"DFPTensor: mantissas must be a numpy array of signed integers, got "
                            f"{getattr(m, 'dtype', type(m).__name__)}")
        if isinstance(self.exponent, (bool, np.bool_)) or not isinstance(self.exponent, (int, np.integer)):
            raise TypeError(f"DFPTensor: exponent must be an int, got {self.exponent!r}")

    @property
    def format(self):
        """'dfp16' for int16 mantissas, 'dfp32' / 'dfp64' for the wide ones of a product or sum."""
        return f"dfp{self.mantissas.dtype.itemsize * 8}"

    @property
    def shape(self):
        return self.mantissas.shape

    def to_float64(self):
        return np.ldexp(self.mantissas.astype(np.float64), self.exponent)

    def to_float32(self):
        """The values as float32: exact for a DFP-16 tensor made by to_dfp16 (see the module doc)."""
        return self.to_float64().astype(np.float32)


def _absmax_bits(a, code, threads):
    return int(_precision.absmax_bits(a.reshape(-1), code, threads))


def _refuse_nonfinite(a, fn, what):
    bad = np.flatnonzero(~np.isfinite(a.reshape(-1)))
    index = np.unravel_index(bad[0], a.shape)
    raise ValueError(f"{fn}: {what} is undefined for a tensor holding NaN or Inf: {a.reshape(-1)[bad[0]]} at "
                     f"index {tuple(int(i) for i in index)} of shape {a.shape} ({bad.size} such values)")


def dfp16_exponent(absmax, headroom=DFP16_HEADROOM):
    """The shared exponent E for a tensor whose largest magnitude is absmax (see the module doc);
    0 for an all-zero tensor."""
    fn = "dfp16_exponent"
    headroom = _headroom(headroom, fn)
    if isinstance(absmax, (bool, np.bool_)) or not isinstance(absmax, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: absmax must be a real number, got {absmax!r}")
    try:
        absmax = float(absmax)
    except OverflowError:        # an int past float64's range
        absmax = math.inf
    if not math.isfinite(absmax) or absmax < 0:
        raise ValueError(f"{fn}: absmax must be finite and >= 0, got {absmax}")
    if absmax == 0.0:
        return 0
    e_max = math.frexp(absmax)[1] - 1            # absmax = 1.m * 2**e_max
    return max(DFP_MIN_EXPONENT, e_max - (DFP16_BITS - 2) + headroom)


def _headroom(headroom, fn):
    headroom = positive_int(headroom, "headroom", fn, minimum=0)
    if headroom > DFP16_BITS - 2:
        raise ValueError(f"{fn}: headroom must be <= {DFP16_BITS - 2} bits, got {headroom}")
    return headroom


#: the largest shared exponent dfp16_exponent gives: e_max 127 with the largest headroom
DFP_MAX_EXPONENT = 127 - (DFP16_BITS - 2) + (DFP16_BITS - 2)


def dfp16_limit(exponent):
    """The largest mantissa magnitude for shared exponent E: int16's 32767, or less where
    I * 2**E would pass fp32's largest value (E > 113)."""
    exponent = positive_int(exponent, "exponent", "dfp16_limit", minimum=DFP_MIN_EXPONENT)
    if exponent > DFP_MAX_EXPONENT:
        raise ValueError(f"dfp16_limit: exponent must be <= {DFP_MAX_EXPONENT} (fp32's largest binary exponent), "
                         f"got {exponent}")
    return min(2 ** (DFP16_BITS - 1) - 1, 2 ** (128 - exponent) - 1)


def to_dfp16(a, *, headroom=DFP16_HEADROOM, rounding="nearest", seed=0, isa=None, n_threads=None):
    """float32 array -> DFPTensor with int16 mantissas and the shared exponent of dfp16_exponent.
    rounding: 'nearest' (ties to even) or 'stochastic' (seeded by seed, a uint32; the same bits
    on every ISA path and thread count)."""
    fn = "to_dfp16"
    a = float32_array(a, "a", fn)
    headroom, seed = _dfp16_arguments(headroom, rounding, seed, fn)
    code, threads = _threads_and_isa(isa, n_threads)
    return _to_dfp16(a, headroom, rounding, seed, code, threads, fn)[0]


def _dfp16_arguments(headroom, rounding, seed, fn):
    """(headroom, seed) checked, and the rounding name, for every DFP-16 conversion."""
    headroom = _headroom(headroom, fn)
    if rounding not in ROUNDINGS:
        raise ValueError(f"{fn}: rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    seed = positive_int(seed, "seed", fn, minimum=0)
    if seed >= 2 ** 32:
        raise ValueError(f"{fn}: seed must be < 2**32, got {seed}")
    return headroom, seed


def _absmax(a, code, threads, fn, what):
    """max|a| of a float32 array (0.0 when empty); NaN/Inf refused, naming `what` is undefined."""
    bits = _absmax_bits(a, code, threads) if a.size else 0
    if bits >= _FP32_NONFINITE:
        _refuse_nonfinite(a, fn, what)
    return float(np.array([bits], np.uint32).view(np.float32)[0])


def _to_dfp16(a, headroom, rounding, seed, code, threads, fn, within_headroom=False):
    """to_dfp16 on checked arguments -> (DFPTensor, its largest |mantissa| or a bound on it:
    rounding is monotonic, so with 'nearest' the largest is max|a| / 2**E rounded half-even,
    exactly; a stochastic rounding is at most its ceiling; both clamped).  within_headroom: clamp
    to 2**(15 - headroom) - 1 as well (the kernels' operands, dlcpu.quantized: the one value that
    can round up to 2**(15 - headroom) loses an ulp, and int32 chains get twice as long)."""
    absmax = _absmax(a, code, threads, fn, "the shared exponent")
    exponent = dfp16_exponent(absmax, headroom)
    limit = dfp16_limit(exponent)
    if within_headroom:
        limit = min(limit, 2 ** (DFP16_BITS - 1 - headroom) - 1)
    out = np.zeros(a.shape, np.int16)
    if a.size:
        _precision.dfp16_quantize(a.reshape(-1), out.reshape(-1), math.ldexp(1.0, -exponent), limit,
                                  rounding == "stochastic", seed, code, threads)
    top = math.ldexp(absmax, -exponent)                 # exact in float64
    return DFPTensor(out, exponent), min(limit, round(top) if rounding == "nearest" else math.ceil(top))


def _dfp_pair(a, b, fn):
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, DFPTensor):
            raise TypeError(f"{fn}: {name} must be a DFPTensor (from to_dfp16), got {type(t).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"{fn}: shapes differ: a {a.shape}, b {b.shape}")


def _largest(t):
    """max |mantissa| of t as a Python int (0 when empty)."""
    return max(abs(int(t.mantissas.max())), abs(int(t.mantissas.min()))) if t.mantissas.size else 0


def _fits_int64(bound, fn):
    if bound >= 2 ** 63:
        raise ValueError(f"{fn}: the result's mantissas could reach {bound}, past int64; bring the operands back to "
                         "16 bits with dfp_downconvert first")


def dfp_multiply(a, b):
    """Elementwise product: mantissas multiply (int64, exact), exponents add.  Refused when the
    products could pass int64 (wide operands: dfp_downconvert them first)."""
    _dfp_pair(a, b, "dfp_multiply")
    _fits_int64(_largest(a) * _largest(b), "dfp_multiply")
    return DFPTensor(a.mantissas.astype(np.int64) * b.mantissas.astype(np.int64), a.exponent + b.exponent)


def dfp_add(a, b):
    """Elementwise sum at the larger exponent: the other operand's mantissas shift right
    (arithmetically, rounding toward -Inf) by the exponent difference, then add (int64)."""
    _dfp_pair(a, b, "dfp_add")
    _fits_int64(_largest(a) + _largest(b), "dfp_add")
    hi, lo = (a, b) if a.exponent >= b.exponent else (b, a)
    shift = min(hi.exponent - lo.exponent, 63)
    return DFPTensor(hi.mantissas.astype(np.int64) + (lo.mantissas.astype(np.int64) >> shift), hi.exponent)


def dfp_downconvert(t, bits=DFP16_BITS):
    """Wide mantissas (a product or a sum) -> `bits`-bit ones: shift right by the fewest bits R
    that bring max|I| below 2**(bits-1) (arithmetic shift, toward -Inf), exponent + R."""
    fn = "dfp_downconvert"
    if not isinstance(t, DFPTensor):
        raise TypeError(f"{fn}: t must be a DFPTensor, got {type(t).__name__}")
    bits = positive_int(bits, "bits", fn, minimum=2)
    if bits > 32:
        raise ValueError(f"{fn}: bits must be <= 32, got {bits}")
    m = t.mantissas.astype(np.int64)
    # after an arithmetic shift the most negative value may keep one more bit than the positive
    # one: shift until both the min and max fit in [-(2**(bits-1) - 1), 2**(bits-1) - 1]
    limit = 2 ** (bits - 1) - 1
    shift = 0
    if m.size:
        while max(int(m.max()) >> shift, -(int(m.min()) >> shift)) > limit:
            shift += 1
    dtype = np.int16 if bits <= 16 else np.int32
    return DFPTensor((m >> shift).astype(dtype), t.exponent + shift)


# -------------------------------------------------------------------------------------- int8
@dataclass(frozen=True)
class Int8Tensor:
    """8-bit integers and their scale(s): value = data * scale.  data is int8 (symmetric) or
    uint8 (unsigned, after a ReLU); scale is a float32 scalar or, with axis set, one per index
    along that axis (per output channel for weights)."""
    data: np.ndarray
    scale: np.ndarray
    axis: int | None = None

    format = "int8"

    @property
    def shape(self):
        return self.data.shape

    @property
    def unsigned(self):
        return self.data.dtype == np.uint8

    def to_float32(self):
        return (self.data.astype(np.float32) * _broadcast_scale(self.scale, self.axis, self.data.ndim)).astype(np.float32)


def _broadcast_scale(scale, axis, ndim):
    if axis is None:
        return np.float32(scale)
    shape = [1] * ndim
    shape[axis] = -1
    return np.asarray(scale, np.float32).reshape(shape)


def _axis(axis, ndim, fn):
    if axis is None:
        return None
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"{fn}: axis must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{fn}: axis must be an int in [{-ndim}, {ndim}) for a {ndim}-d tensor, got {axis!r}")
    return int(axis) % ndim


def int8_weight_scales(w, axis=0):
    """Symmetric per-channel scales max|w_k| / 127 along `axis` (the output channel; an all-zero
    channel gets 1.0, its values quantize to 0 either way)."""
    fn = "int8_weight_scales"
    w = float32_array(w, "w", fn)
    if w.ndim < 1 or w.size == 0:
        raise ValueError(f"{fn}: w must be a non-empty array with an output-channel axis, got shape {w.shape}")
    if axis is None:
        raise TypeError(f"{fn}: axis must be an int (the output-channel axis), got None")
    axis = _axis(axis, w.ndim, fn)
    if not np.isfinite(w).all():
        _refuse_nonfinite(w, fn, "an int8 scale")
    absmax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
    return _int8_scales(absmax, 127)


def _int8_scales(absmax, levels):
    """_int8_scale over an array of maxima (vectorized: a GEMM operand has thousands of columns)."""
    a = np.asarray(absmax, np.float64)
    s = (a / levels).astype(np.float32)
    s = np.where(s.astype(np.float64) * levels > a, np.nextafter(s, np.float32(0)), s)
    s = np.maximum(s, np.finfo(np.float32).smallest_subnormal)
    return np.where(a == 0.0, np.float32(1.0), s).astype(np.float32)


def _int8_scale(absmax, levels):
    """absmax / levels as a positive float32 that neither underflows to 0 (tiny values) nor
    rounds up past absmax / levels (levels * scale must stay finite for fp32's largest value)."""
    if absmax == 0.0:
        return np.float32(1.0)
    scale = np.float32(absmax / levels)
    if float(scale) * levels > absmax:          # rounded up: take the float32 below
        scale = np.nextafter(scale, np.float32(0))
    return max(scale, np.float32(np.finfo(np.float32).smallest_subnormal))


def to_int8(x, scale, *, axis=None, unsigned=False):
    """float32 array -> Int8Tensor: round-half-even(x / scale), clamped to [-127, 127] (or
    [0, 255] with unsigned=True).  scale: a positive number, or one per index along axis."""
    fn = "to_int8"
    x = float32_array(x, "x", fn)
    unsigned = flag(unsigned, "unsigned", fn)
    axis = _axis(axis, x.ndim, fn)
    if isinstance(scale, (str, bytes)) or np.asarray(scale).dtype.kind not in "fiu":
        raise TypeError(f"{fn}: scale must be a positive real number or an array of them, got {scale!r}")
    scale = np.asarray(scale, np.float32)
    want = () if axis is None else (x.shape[axis],)
    if scale.shape != want:
        raise ValueError(f"{fn}: scale must have shape {want} (one per index along axis={axis}) for x of shape "
                         f"{x.shape}, got {scale.shape}")
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(f"{fn}: scales must be finite and > 0, got {scale.ravel()[:8].tolist()}")
    if not np.isfinite(x).all():
        _refuse_nonfinite(x, fn, "int8 quantization")
    lo, hi, dtype = (0, 255, np.uint8) if unsigned else (-127, 127, np.int8)
    # the quotient in float64 is exact enough to round half-even correctly (a float32 quotient
    # one ulp off a .5 tie rounds the wrong way)
    q = np.rint(x.astype(np.float64) / _broadcast_scale(scale, axis, x.ndim).astype(np.float64))
    return Int8Tensor(np.clip(q, lo, hi).astype(dtype), scale, axis)


#: the widths of u8 activation codes: 8 bits, or 7 (codes 0..127, zero point 64 for signed
#: data; PyTorch's reduce_range), which the AVX2 int8 kernels multiply in half the instructions
#: (dlcpu.quantized.u8_format; the AVX-512 paths run both alike)
ACTIVATION_BITS = (8, 7)


def check_activation_bits(bits, fn, name="bits"):
    """bits as a Python int in ACTIVATION_BITS (a NumPy int8 would shift in its own width), or
    ValueError."""
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, (bool, np.bool_)) or bits not in ACTIVATION_BITS:
        raise ValueError(f"{fn}: {name} must be 8 or 7 (the u8 codes' width), got {bits!r}")
    return int(bits)


def u8_code_range(bits, unsigned):
    """(levels, zero point) of u8 codes `bits` wide: unsigned data spans codes 0..2**bits - 1
    from zero point 0; signed data +-(2**(bits-1) - 1) around zero point 2**(bits-1)."""
    top = (1 << bits) - 1
    return (top, 0) if unsigned else (top >> 1, 1 << (bits - 1))


class ActivationCalibrator:
    """Per-tensor int8 activation scale from a few batches: observe() each batch; scale is the
    largest |x| seen / 127, or / 255 when every value seen was >= 0 (after a ReLU: unsigned)."""

    def __init__(self):
        self.absmax = 0.0
        self.minimum = math.inf
        self.batches = 0

    def observe(self, x):
        fn = "ActivationCalibrator.observe"
        x = float32_array(x, "x", fn)
        if x.size == 0:
            raise ValueError(f"{fn}: x is empty (shape {x.shape})")
        if not np.isfinite(x).all():
            _refuse_nonfinite(x, fn, "an activation scale")
        self.absmax = max(self.absmax, float(np.abs(x).max()))
        self.minimum = min(self.minimum, float(x.min()))
        self.batches += 1
        return self

    @property
    def unsigned(self):
        self._require()
        return self.minimum >= 0.0

    @property
    def scale(self):
        return self.scale_for(8)

    def scale_for(self, bits, signed=False):
        """The scale of codes `bits` wide: 8 (`scale`), or 7 (quantized.to_int8_blocked(bits=7):
        the largest |x| / 127 unsigned, / 63 signed), unsigned when every value seen was >= 0
        (`unsigned`) unless signed=True asks for signed codes (a tensor that may go negative)."""
        self._require()
        if not isinstance(signed, (bool, np.bool_)):
            raise TypeError(f"ActivationCalibrator.scale_for: signed must be True or False, got {signed!r}")
        levels, _ = u8_code_range(check_activation_bits(bits, "ActivationCalibrator.scale_for"),
                                  self.unsigned and not signed)
        return _int8_scale(self.absmax, levels)

    def _require(self):
        if not self.batches:
            raise RuntimeError("ActivationCalibrator: observe() at least one batch before asking for the scale")


# ----------------------------------------------------------------------------------- ternary
def _blocks(blocks, fn):
    """A finite, non-empty (B, N) float32 array of weight blocks."""
    w = float32_array(blocks, "blocks", fn)
    if w.ndim != 2 or 0 in w.shape:
        raise ValueError(f"{fn}: blocks must be a non-empty 2-d (B, N) array, got shape {w.shape}")
    if not np.isfinite(w).all():
        _refuse_nonfinite(w, fn, "ternarization")
    return w


def ternarize_blocks(blocks):
    """The exact minimizer of ||w - alpha*t||^2 over alpha >= 0, t in {-1, 0, 1}^N, for each row of
    blocks (B, N): returns alpha (B,) float32, t (B, N) int8 and the threshold T (B,) float32 with
    t = sign(w) where |w| > T.  Sort |w| descending (a_1 >= a_2 >= ...); the best support is the
    top k* with k* = argmax (a_1 + ... + a_k)^2 / k, alpha* its mean, T* = a_(k*+1).  Only k that
    end a run of equal magnitudes are candidates (the objective is quasi-convex within a run, so
    an optimum never splits one), which makes the support exactly {|w| > T*}."""
    w = _blocks(blocks, "ternarize_blocks")
    mag = np.abs(w.astype(np.float64))
    a = -np.sort(-mag, axis=1)
    sums = np.cumsum(a, axis=1)
    k = np.arange(1, w.shape[1] + 1, dtype=np.float64)
    nxt = np.concatenate([a[:, 1:], np.zeros((w.shape[0], 1))], axis=1)
    candidate = (a > nxt) & (a > 0)
    score = np.where(candidate, sums * sums / k, -1.0)
    kstar = score.argmax(axis=1)
    rows = np.arange(w.shape[0])
    found = candidate[rows, kstar]
    alpha = np.where(found, sums[rows, kstar] / (kstar + 1), 0.0)
    threshold = np.where(found, nxt[rows, kstar], np.inf)
    t = (np.sign(w) * (mag > threshold[:, None])).astype(np.int8)
    return alpha.astype(np.float32), t, np.where(found, threshold, 0.0).astype(np.float32)


def ternarize_blocks_twn(blocks):
    """The TWN heuristic (Li & Liu 2016) for comparison: T = 0.7 * mean|w| per block, alpha the
    mean |w| over the support.  Returns alpha, t like ternarize_blocks."""
    w = _blocks(blocks, "ternarize_blocks_twn").astype(np.float64)
    mag = np.abs(w)
    support = mag > 0.7 * mag.mean(axis=1, keepdims=True)
    count = support.sum(axis=1)
    alpha = np.where(count > 0, (mag * support).sum(axis=1) / np.maximum(count, 1), 0.0)
    return alpha.astype(np.float32), (np.sign(w) * support).astype(np.int8)


@dataclass(frozen=True)
class TernaryWeights:
    """Block-ternary weights with residual levels: W ~ sum over levels l of alpha_l * t_l.

    shape: the weight's (K, C, *taps); block: N input channels per block (C is zero-padded to
    whole 16-channel blocks, and N must divide that); alphas: (levels, K, C_pad/N, *taps) float32;
    codes: (levels, K, C_pad, *taps) int8 in {-1, 0, 1}.  Level 0 is the base ternarization, level l
    ternarizes what levels < l left; levels are switched off from the last (the least important:
    each level's residual is smaller than the one before)."""
    shape: tuple
    block: int
    alphas: np.ndarray
    codes: np.ndarray

    format = "ternary"

    def __post_init__(self):
        fn = "TernaryWeights"
        shape, block, alphas, codes = self.shape, self.block, self.alphas, self.codes
        if (not isinstance(shape, tuple) or len(shape) < 2 or not isinstance(block, (int, np.integer))
                or block < 1 or not isinstance(alphas, np.ndarray) or not isinstance(codes, np.ndarray)):
            raise TypeError(f"{fn}: expected shape (K, C, *taps), an int block and numpy alphas and codes "
                            "(make them with ternarize)")
        c_pad = -(-shape[1] // CB) * CB
        levels = alphas.shape[0] if alphas.ndim else 0
        if (c_pad % block or levels < 1 or codes.shape != (levels, shape[0], c_pad, *shape[2:])
                or alphas.shape != (levels, shape[0], c_pad // block, *shape[2:])):
            raise ValueError(f"{fn}: codes {codes.shape} and alphas {alphas.shape} do not describe weights of shape "
                             f"{shape} in blocks of {block} (make them with ternarize)")
        if codes.dtype != np.int8 or not np.isin(codes, (-1, 0, 1)).all() or not np.isfinite(alphas).all():
            raise ValueError(f"{fn}: codes must be int8 in {{-1, 0, 1}} and alphas finite")

    @property
    def levels(self):
        return self.alphas.shape[0]

    def _levels(self, levels, fn):
        if levels is None:
            return self.levels
        levels = positive_int(levels, "levels", fn, minimum=1)
        if levels > self.levels:
            raise ValueError(f"{fn}: levels must be <= {self.levels} (1 base + {self.levels - 1} residual), got {levels}")
        return levels

    def to_float32(self, levels=None):
        """The reconstructed weight from the first `levels` levels (all by default), shape self.shape."""
        n = self._levels(levels, "TernaryWeights.to_float32")
        C = self.shape[1]
        scale = np.repeat(self.alphas[:n], self.block, axis=2)          # (n, K, C_pad, *taps)
        w = (scale * self.codes[:n]).sum(axis=0, dtype=np.float64)
        return w[:, :C].astype(np.float32)

    def relative_error(self, w, levels=None):
        """||W - W_hat||_F / ||W||_F for the first `levels` levels."""
        w = float32_array(w, "w", "TernaryWeights.relative_error")
        if w.shape != tuple(self.shape):
            raise ValueError(f"TernaryWeights.relative_error: w has shape {w.shape}, these weights {tuple(self.shape)}")
        norm = float(np.linalg.norm(w.astype(np.float64)))
        diff = float(np.linalg.norm(w.astype(np.float64) - self.to_float32(levels)))
        return diff / norm if norm else diff

    def multiplications(self, levels=None):
        """Multiplications per output position: one per block and level (the block's +-1 terms
        are additions), against K * C * taps for the dense weight."""
        n = self._levels(levels, "TernaryWeights.multiplications")
        return n * int(np.prod(self.alphas.shape[1:]))


def ternarize(w, *, block=16, residual=0):
    """Weights (K, C, *taps) float32 -> TernaryWeights with 1 + residual levels, blocks of `block`
    input channels per (output channel, tap)."""
    fn = "ternarize"
    w = float32_array(w, "w", fn)
    if w.ndim < 2 or 0 in w.shape:
        raise ValueError(f"{fn}: w must be (K, C, *taps) with no empty dimension, got shape {w.shape}")
    block = positive_int(block, "block", fn)
    residual = positive_int(residual, "residual", fn, minimum=0)
    if residual > MAX_RESIDUAL:
        raise ValueError(f"{fn}: residual must be <= {MAX_RESIDUAL} levels (each level shrinks what is left; "
                         f"the Ternary Residual Networks paper uses a few), got {residual}")
    K, C = w.shape[:2]
    taps = w.shape[2:]
    c_pad = -(-C // CB) * CB
    if c_pad % block:
        raise ValueError(f"{fn}: block={block} does not divide the padded input channels ({C} -> {c_pad}, "
                         f"whole blocks of {CB})")
    if not np.isfinite(w).all():
        _refuse_nonfinite(w, fn, "ternarization")
    padded = np.zeros((K, c_pad) + taps, np.float32)
    padded[:, :C] = w
    nb = c_pad // block
    # rows of `block` channels: (K, nb, block, *taps) -> (K, nb, *taps, block)
    grouped = np.moveaxis(padded.reshape((K, nb, block) + taps), 2, -1)
    rows = grouped.reshape(-1, block)
    alphas, codes = [], []
    rest = rows
    for _ in range(residual + 1):
        alpha, t, _ = ternarize_blocks(rest)
        alphas.append(alpha.reshape((K, nb) + taps))
        codes.append(np.moveaxis(t.reshape((K, nb) + taps + (block,)), -1, 2).reshape((K, c_pad) + taps))
        rest = (rest.astype(np.float64) - alpha[:, None].astype(np.float64) * t).astype(np.float32)
    return TernaryWeights(tuple(w.shape), block, np.stack(alphas), np.stack(codes))
