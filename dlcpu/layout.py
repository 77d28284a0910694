"""Blocked tensor layouts and the small tensor type that carries them.

  activations  NCHW  <->  I[N][ceil(C/16)][H][W][16]          (to_blocked / from_blocked)
  conv weights KCRS  <->  W[ceil(K/16)][ceil(C/16)][R][S][16c][16k]  (block_weights / unblock_weights)

Channels that do not fill a block are zero-padded, and every dlcpu op keeps them zero, so a
blocked tensor can flow from op to op without conversions.  Round trips are exact (pure copies).

bf16 tensors (to_bf16_blocked, block_weights_bf16) are BlockedTensors of uint16 bf16 patterns
with the same data shapes: activations in the same layout, weights with each 16x16 block in
VNNI pairs, W[K/16][C/16][R][S][8][16k][2] (channels 2q and 2q+1 of output k side by side, the
operand of one VDPBF16PS).  Their numpy() gives the fp32 values back (exactly the bf16 values).
"""
from dataclasses import KW_ONLY, InitVar, dataclass

import numpy as np

from . import cpu
from ._ext import layout as _layout
from .precision import bf16_bits_to_fp32, fp32_blocks_to_bf16_vnni, fp32_to_bf16_bits

CB = cpu.CHANNEL_BLOCK


def n_blocks(channels):
    return -(-channels // CB)


@dataclass(frozen=True)
class BlockedTensor:
    """A tensor in a blocked layout: padded `data` plus the logical `shape` it stands for.

    kind 'activation': shape (N, C, H, W), data (N, C/16, H, W, 16)
    kind 'weight':     shape (K, C, R, S), data (K/16, C/16, R, S, 16, 16)
    precision 'fp32' (float32 data) or 'bf16' (uint16 bf16 patterns, weights in VNNI pairs: see
    the module doc; to_bf16_blocked, block_weights_bf16), or the integer formats of
    dlcpu.quantized: 'int8' (uint8 activations with scale (s_x, zero point); int8 weights in VNNI
    quads with scale (per-channel scales, per-channel sums)) and 'dfp16' (int16 mantissas, weights
    in VNNI pairs, scale (shared exponent, bound on |mantissa|)).  The data type must match the
    precision, so a tensor in another layout of the same width cannot pass for one.
    """

    data: np.ndarray
    shape: tuple
    kind: str = "activation"
    scale: object = None
    precision: str = "fp32"
    _: KW_ONLY
    #: passed by dlcpu's own quantizer (quantized._dfp16_blocked), whose scale comes from the
    #: data: the DFP-16 bound is then not checked by a scan of the data (that scan, three NumPy
    #: passes, cost more than quantizing dy in a DFP-16 weight update at 2 threads).  An init-only
    #: argument, so dataclasses.replace(t, data=...) scans the new data again.
    _bound_from_data: InitVar[bool] = False
    #: passed by dlcpu's makers of u8 activation codes that are 7-bit by construction
    #: (to_int8_blocked(bits=7), conv2d(out_bits=7), the u8 max pool of such codes): 127, the
    #: largest code the data holds, so the AVX2 kernels take VPMADDUBSW without a scan of the
    #: codes (quantized.u8_format: 2.1 of a 139 ms int8 ResNet-50 forward, batch 4, 2 threads).
    #: Init-only like _bound_from_data: dataclasses.replace scans again; read it as code_bound.
    _code_bound: InitVar[int] = None

    def __post_init__(self, _bound_from_data, _code_bound):
        if self.kind not in ("activation", "weight"):
            raise ValueError(f"BlockedTensor: kind must be 'activation' or 'weight', got {self.kind!r}")
        if not isinstance(self.data, np.ndarray):
            raise TypeError(f"BlockedTensor: data must be a numpy array, got {type(self.data).__name__}")
        if (not isinstance(self.shape, tuple) or len(self.shape) != 4
                or not all(isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d >= 1
                           for d in self.shape)):
            raise ValueError(f"BlockedTensor: shape must be a tuple of 4 positive ints, got {self.shape!r}")
        expected = blocked_shape(self.shape, self.kind)
        if tuple(self.data.shape) != expected:
            raise ValueError(
                f"BlockedTensor: data shape {tuple(self.data.shape)} does not match logical "
                f"{self.kind} shape {tuple(self.shape)} (expected {expected})"
            )
        if not self.data.flags.c_contiguous:
            raise ValueError("BlockedTensor: data must be C-contiguous")
        if self.precision not in _DTYPES:
            raise ValueError(f"BlockedTensor: precision must be one of {', '.join(_DTYPES)}, got {self.precision!r}")
        dtype = _DTYPES[self.precision][self.kind]
        if self.data.dtype != dtype:
            raise TypeError(f"BlockedTensor: a {self.precision} {self.kind} holds {np.dtype(dtype)} data, got "
                            f"{self.data.dtype} (make one with {_MAKERS[self.precision]})")
        if (self.scale is None) != (self.precision in ("fp32", "bf16")):
            raise ValueError(f"BlockedTensor: a {self.precision} tensor " + ("has no scale" if self.scale is not None
                             else "needs its scale (exponent or scales)") + f", got scale={self.scale!r}")
        if self.scale is not None:
            _check_scale(self, scan=not _bound_from_data)
        if _code_bound is not None:
            ok = (self.precision == "int8" and self.kind == "activation" and self.scale[1] in (0, 64)
                  and isinstance(_code_bound, (int, np.integer)) and _code_bound == 127)
            if not ok:
                raise ValueError(f"BlockedTensor: a code bound (127) is for 7-bit u8 activations (zero point 0 or 64), "
                                 f"got {_code_bound!r} on a {self.precision} {self.kind} of scale {self.scale!r}")
            _code_bound = int(_code_bound)
        object.__setattr__(self, "_codes_at_most", _code_bound)

    @property
    def code_bound(self):
        """The largest u8 code the data holds, as its maker guarantees it (127 for 7-bit codes
        made by dlcpu), or None: not known (quantized.u8_format then scans the codes).  It is
        trusted, not checked: code that writes codes above 127 into `data` in place must wrap
        them anew (dataclasses.replace drops the bound), or the AVX2 kernels' VPMADDUBSW pairs
        saturate and give wrong sums."""
        return self._codes_at_most

    @property
    def dtype(self):
        return self.data.dtype

    def numpy(self):
        """The logical tensor as a plain NCHW (or KCRS) float32 array (the values a bf16, int8 or
        DFP-16 tensor stands for)."""
        if self.precision in ("int8", "dfp16"):
            from .quantized import dequantize
            t = BlockedTensor(dequantize(self), tuple(self.shape), self.kind)
        else:
            t = self if self.precision == "fp32" else _bf16_to_fp32_blocked(self)
        return from_blocked(t) if self.kind == "activation" else unblock_weights(t)

    def __repr__(self):
        return f"BlockedTensor(kind={self.kind!r}, shape={tuple(self.shape)}, dtype={self.dtype}, data={tuple(self.data.shape)})"


def _check_scale(t, scan=True):
    """The scale tuple of an int8 / dfp16 BlockedTensor must describe its data (the kernels read
    per-channel arrays by position and trust the DFP-16 bound for their int32 chains; scan=False:
    the bound was computed from the data by the quantizer, and is not re-checked)."""
    from .precision import DFP_MAX_EXPONENT, DFP_MIN_EXPONENT

    where = f"BlockedTensor: the scale of a {t.precision} {t.kind}"
    if not isinstance(t.scale, tuple) or len(t.scale) != 2:
        raise TypeError(f"{where} must be a pair, got {t.scale!r}")
    a, b = t.scale
    if t.precision == "dfp16":
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in (a, b))
        if not ok or not DFP_MIN_EXPONENT <= a <= DFP_MAX_EXPONENT or not 0 <= b <= 32767:
            raise ValueError(f"{where} must be (exponent in [{DFP_MIN_EXPONENT}, {DFP_MAX_EXPONENT}], bound on "
                             f"|mantissa| in [0, 32767]), got {t.scale!r}")
        top = max(int(t.data.max(initial=0)), -int(t.data.min(initial=0))) if scan else 0
        if top > b:
            raise ValueError(f"{where} says |mantissa| <= {b}, but the data holds {top}")
    elif t.kind == "activation":
        # zero point 0 (unsigned data), 128 (signed) or 64 (signed in 7-bit codes)
        ok = isinstance(a, (float, np.floating)) and np.isfinite(a) and a > 0 and b in (0, 64, 128) and \
            isinstance(b, (int, np.integer)) and not isinstance(b, (bool, np.bool_))
        if not ok:
            raise ValueError(f"{where} must be (scale, zero point): a finite float > 0 and 0, 64 or 128, got "
                             f"{t.scale!r}")
    else:
        k_pad = t.data.shape[0] * CB
        ok = (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (k_pad,) and isinstance(b, np.ndarray)
              and b.dtype.kind == "i" and b.shape == (k_pad,))
        if not ok or not (np.isfinite(a).all() and (a > 0).all()):
            raise ValueError(f"{where} must be (float32 scales > 0, integer sums), each of shape ({k_pad},) (one per "
                             "padded output channel); make it with dlcpu.quantized.block_weights_int8")


#: the element type of each precision's activations and weights, and what makes them
_DTYPES = {"fp32": {"activation": np.float32, "weight": np.float32},
           "bf16": {"activation": np.uint16, "weight": np.uint16},
           "int8": {"activation": np.uint8, "weight": np.int8},
           "dfp16": {"activation": np.int16, "weight": np.int16}}
_MAKERS = {"fp32": "to_blocked / block_weights", "bf16": "to_bf16_blocked / block_weights_bf16",
           "int8": "dlcpu.quantized.to_int8_blocked / block_weights_int8",
           "dfp16": "dlcpu.quantized.to_dfp16_blocked / block_weights_dfp16"}


def blocked_shape(shape, kind="activation"):
    if kind == "activation":
        n, c, h, w = shape
        return (n, n_blocks(c), h, w, CB)
    k, c, r, s = shape
    return (n_blocks(k), n_blocks(c), r, s, CB, CB)


def _as_float32_4d(x, name, what):
    if isinstance(x, BlockedTensor):
        raise TypeError(f"{name}: expected a plain numpy array, got a BlockedTensor")
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray ({what}), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-d {what} array, got shape {x.shape}")
    if x.dtype != np.float32:
        raise TypeError(f"{name}: expected dtype float32, got {x.dtype} (convert with .astype(np.float32))")
    if any(d < 1 for d in x.shape):
        raise ValueError(f"{name}: every dimension must be >= 1, got shape {x.shape}")
    # Strided or Fortran-ordered input is copied once, explicitly, never read out of bounds.
    return np.ascontiguousarray(x)


def to_blocked(x, n_threads=None):
    """NCHW float32 -> BlockedTensor I[N][C/16][H][W][16]."""
    x = _as_float32_4d(x, "to_blocked", "NCHW")
    out = np.empty(blocked_shape(x.shape), dtype=np.float32)
    _layout.nchw_to_blocked(x, out, cpu.resolve_threads(n_threads))
    return BlockedTensor(out, tuple(x.shape), "activation")


def _unblocked(t, kind, fn, convert, n_threads):
    """The logical array of a float32 BlockedTensor of `kind`, by the driver `convert`."""
    if not isinstance(t, BlockedTensor) or t.kind != kind:
        raise TypeError(f"{fn}: expected {'an activation' if kind == 'activation' else 'a weight'} BlockedTensor")
    if t.dtype != np.float32:
        raise TypeError(f"{fn}: only float32 tensors convert here, got {t.dtype}")
    out = np.empty(t.shape, dtype=np.float32)
    convert(t.data, out, cpu.resolve_threads(n_threads))
    return out


def from_blocked(t, n_threads=None):
    """BlockedTensor (activation) -> NCHW float32."""
    return _unblocked(t, "activation", "from_blocked", _layout.blocked_to_nchw, n_threads)


def block_weights(w, n_threads=None):
    """KCRS float32 -> BlockedTensor W[K/16][C/16][R][S][16c][16k]."""
    w = _as_float32_4d(w, "block_weights", "KCRS")
    out = np.empty(blocked_shape(w.shape, "weight"), dtype=np.float32)
    _layout.kcrs_to_blocked(w, out, cpu.resolve_threads(n_threads))
    return BlockedTensor(out, tuple(w.shape), "weight")


def unblock_weights(t, n_threads=None):
    """BlockedTensor (weight) -> KCRS float32."""
    return _unblocked(t, "weight", "unblock_weights", _layout.blocked_to_kcrs, n_threads)


# ------------------------------------------------------------------------------------- bf16
def _bf16_to_fp32_blocked(t):
    data = t.data
    if t.kind == "weight":      # undo the VNNI pairing: (..., 8, 16k, 2) -> (..., 16c, 16k)
        lead = data.shape[:-2]
        data = np.ascontiguousarray(data.reshape(*lead, 8, CB, 2).swapaxes(-1, -2)).reshape(*lead, CB, CB)
    return BlockedTensor(bf16_bits_to_fp32(data), tuple(t.shape), t.kind)


def to_bf16_blocked(x, n_threads=None):
    """NCHW float32 array or fp32 activation BlockedTensor -> bf16 activation BlockedTensor
    (round to nearest even, dlcpu.precision's rule)."""
    if isinstance(x, BlockedTensor):
        if x.kind != "activation" or x.precision != "fp32":
            raise TypeError(f"to_bf16_blocked: expected an fp32 activation, got a {x.precision} {x.kind} BlockedTensor")
    else:
        x = to_blocked(x, n_threads)
    return BlockedTensor(fp32_to_bf16_bits(x.data, n_threads=n_threads), tuple(x.shape), "activation", precision="bf16")


def block_weights_bf16(w, n_threads=None):
    """KCRS float32 array or fp32 weight BlockedTensor -> bf16 weight BlockedTensor in VNNI pairs."""
    if isinstance(w, BlockedTensor):
        if w.kind != "weight" or w.precision != "fp32":
            raise TypeError(f"block_weights_bf16: expected fp32 weights, got a {w.precision} {w.kind} BlockedTensor")
    else:
        w = block_weights(w, n_threads)
    return BlockedTensor(fp32_blocks_to_bf16_vnni(w.data, n_threads=n_threads), tuple(w.shape), "weight",
                         precision="bf16")
