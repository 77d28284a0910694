"""Bit flips on numpy arrays: the fault models of dlcpu.faults.

Design: a fault is (element, bit) on the array's own storage.  `flip_bits` validates the array
and the (flat offset, bit) lists here, then one call of the kernel (dlcpu._ext.faults) XORs the
bits in place and returns the old bit patterns, so every injection can be undone exactly
(`Flips.undo`, the same XOR again) and logged as old/new patterns.  Supported storage: float32,
int32/uint32 (32-bit words), bf16 (ml_dtypes.bfloat16; raw uint16 bf16 patterns are flipped as
16-bit integers, so name their bits by position), int16/uint16, int8/uint8.  Bit 0 is the least significant bit of the element; the IEEE classes are
`BIT_CLASSES` (fp32: sign 31, exponent 30..23, mantissa 22..0; bf16: 15, 14..7, 6..0).

Locations are drawn in Python from a seeded numpy Generator (`random_flips`, `bit_error_flips`),
never inside a kernel, so one seed flips the same bits at any thread count.

`fixed_point_flip` is a second, labelled fault model: PyTorchFI's single_bit_flip_signed (a flip
in the n-bit two's-complement fixed-point image of a value, given a per-layer range), so results
can be set beside PyTorchFI's.  It is not an IEEE-754 flip.
"""
from dataclasses import dataclass

import numpy as np

from .._ext import faults as _kernel

#: unsigned word types of each storage width: what the kernel XORs
_WORDS = {1: np.uint8, 2: np.uint16, 4: np.uint32}

#: named bit classes per float format (element width in bits)
BIT_CLASSES = {
    32: {"sign": [31], "exponent": list(range(23, 31)), "mantissa": list(range(23))},
    16: {"sign": [15], "exponent": list(range(7, 15)), "mantissa": list(range(7))},
}


def storage_width(dtype):
    """Bits per element of a dtype the fault models accept; ValueError for others."""
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16" or (dtype.kind in "fiu" and dtype.itemsize in (1, 2, 4) and dtype.name != "float16"):
        return 8 * dtype.itemsize
    raise ValueError(f"bit flips need float32, bfloat16, int8/16/32 or uint8/16/32 storage, got {dtype}")


def is_float_storage(dtype, assume_bf16=False):
    """True for float32 and bfloat16 storage (uint16 counts as bf16 bit patterns with
    assume_bf16): the dtypes whose bits split into sign/exponent/mantissa."""
    dtype = np.dtype(dtype)
    return dtype == np.float32 or dtype.name == "bfloat16" or (assume_bf16 and dtype == np.uint16)


def parse_bits(spec, width, float_format=True):
    """The sorted bit positions a spec names: 'all', 'sign', 'exponent', 'mantissa' (float formats
    only), a position '30', a range '23-30', or a comma list of these.  ValueError for a bit
    beyond the element width or a malformed spec."""
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        spec = str(int(spec))
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"bits: expected 'all', 'sign', 'exponent', 'mantissa', N or N-M, got {spec!r}")
    out = set()
    for part in spec.replace(" ", "").lower().split(","):
        if part == "all":
            out.update(range(width))
        elif part in ("sign", "exponent", "mantissa"):
            if part == "sign" and not float_format:
                out.add(width - 1)
            elif not float_format or width not in BIT_CLASSES:
                raise ValueError(f"bits: {part!r} names a float field, but the target is {width}-bit integer storage "
                                 f"(use 'all', 'sign' or positions 0-{width - 1})")
            else:
                out.update(BIT_CLASSES[width][part])
        else:
            lo, sep, hi = part.partition("-")
            if not lo.isdigit() or (sep and not hi.isdigit()):
                raise ValueError(f"bits: cannot read {part!r} in {spec!r} (use 'all', 'sign', 'exponent', "
                                 f"'mantissa', N or N-M)")
            a, b = int(lo), int(hi) if sep else int(lo)
            if a > b:
                raise ValueError(f"bits: range {part!r} runs backwards")
            if b >= width:
                raise ValueError(f"bits: bit {b} is beyond the {width}-bit elements of the target (bits 0-{width - 1})")
            out.update(range(a, b + 1))
    return sorted(out)


def _words(array):
    """A flat unsigned-word view of a C-contiguous array's storage (no copy)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"flip_bits: array must be a numpy array, got {type(array).__name__}")
    width = storage_width(array.dtype)
    if not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError(f"flip_bits: the array must be C-contiguous and writable to be flipped in place "
                         f"(shape {array.shape}, strides {array.strides})")
    return array.reshape(-1).view(_WORDS[width // 8]), width


@dataclass
class Flips:
    """Flips applied to `array` (in place): flat offsets, bit positions, and the words as they
    were before (old) and after (new).  undo() restores the array bitwise."""

    array: np.ndarray
    offsets: np.ndarray
    bits: np.ndarray
    old: np.ndarray
    new: np.ndarray
    undone: bool = False
    after_undo: object = None   # called after undo (a layer refreshing what it derives from the array)

    def undo(self):
        if not self.undone:
            words, _ = _words(self.array)
            # XOR is its own inverse and the flips commute: the same list again restores the storage
            _kernel.flip_bits(words, self.offsets, self.bits, np.empty(len(self.offsets), np.uint32))
            self.undone = True
            if self.after_undo:
                self.after_undo()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.undo()


def flip_bits(array, offsets, bits):
    """Flip bit bits[i] of flat element offsets[i] of `array`, in place; returns Flips (with the
    old and new bit patterns, and undo()).  One offset and one bit may be plain ints."""
    words, width = _words(array)
    offsets = np.atleast_1d(np.asarray(offsets))
    bits = np.atleast_1d(np.asarray(bits))
    if offsets.ndim != 1 or bits.shape != offsets.shape:
        raise ValueError(f"flip_bits: offsets and bits must be equally long 1-d lists, got shapes {offsets.shape} "
                         f"and {bits.shape}")
    if offsets.size and (offsets.dtype.kind not in "iu" or bits.dtype.kind not in "iu"):
        raise TypeError(f"flip_bits: offsets and bits must be integers, got {offsets.dtype} and {bits.dtype}")
    if offsets.size and (offsets.min() < 0 or offsets.max() >= words.size):
        bad = offsets[(offsets < 0) | (offsets >= words.size)][0]
        raise ValueError(f"flip_bits: element offset {bad} is outside the array's {words.size} elements (shape {array.shape})")
    if bits.size and (bits.min() < 0 or bits.max() >= width):
        bad = bits[(bits < 0) | (bits >= width)][0]
        raise ValueError(f"flip_bits: bit {bad} is beyond the {width}-bit elements of a {array.dtype} array (bits 0-{width - 1})")
    offsets = np.ascontiguousarray(offsets, np.int64)
    bits = np.ascontiguousarray(bits, np.uint8)
    old = np.empty(len(offsets), np.uint32)
    _kernel.flip_bits(words, offsets, bits, old)
    return Flips(array, offsets, bits, old, old ^ (np.uint32(1) << bits.astype(np.uint32)))


def flat_offset(shape, index):
    """Row-major flat offset of `index` in an array of `shape`; ValueError naming the dimension
    that is out of range."""
    index = tuple(int(i) for i in np.atleast_1d(index))
    if len(index) != len(shape):
        raise ValueError(f"index {list(index)} has {len(index)} coordinates, the tensor has shape {tuple(shape)} "
                         f"({len(shape)} dimensions)")
    for d, (i, n) in enumerate(zip(index, shape)):
        if not 0 <= i < n:
            raise ValueError(f"index {list(index)}: coordinate {d} is {i}, outside 0..{n - 1} of shape {tuple(shape)}")
    return int(np.ravel_multi_index(index, shape))


def flip(array, index, bit):
    """Flip one bit of array[index] (a logical index into a plain array); returns Flips."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"flip: array must be a numpy array, got {type(array).__name__}")
    return flip_bits(array, flat_offset(array.shape, index), int(bit))


def draw_flips(size, width, is_float, k, rng, bits="all"):
    """(elements, bits): k distinct (element, bit) pairs drawn uniformly by `rng` among `size`
    elements and the bit positions `bits` (a parse_bits spec) of `width`-bit elements."""
    allowed = np.asarray(parse_bits(bits, width, is_float), np.int64)
    space = size * len(allowed)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 <= k <= space:
        raise ValueError(f"random_flips: k must be an int in 0..{space} (elements x allowed bits), got {k!r}")
    pick = rng.choice(space, size=k, replace=False)
    return pick // len(allowed), allowed[pick % len(allowed)]


def bit_error_count(size, width, is_float, rate, rng, bits="all"):
    """How many bits a bit error rate flips: Binomial(allowed bits in `size` elements, rate)."""
    if not isinstance(rate, (int, float, np.floating)) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"bit_error_flips: rate must be a probability in [0, 1], got {rate!r}")
    return int(rng.binomial(size * len(parse_bits(bits, width, is_float)), rate))


def random_flips(array, k, rng, bits="all"):
    """k simultaneous flips at distinct (element, bit) pairs drawn uniformly by `rng` (a numpy
    Generator) among the bit positions `bits` (a parse_bits spec); returns Flips.  For plain
    arrays: every element is a target.  A model's stored tensors carry padding; draw on them with
    WeightTensor.random_flips, which maps logical elements to the stored ones."""
    width = storage_width(array.dtype)
    elements, chosen = draw_flips(array.size, width, is_float_storage(array.dtype), k, rng, bits)
    return flip_bits(array, elements, chosen)


def bit_error_flips(array, rate, rng, bits="all"):
    """Flip each allowed bit of every element independently with probability `rate` (a bit error
    rate, as Ares sweeps it): the count is Binomial(bits in the array, rate), the positions
    distinct and uniform.  Returns Flips.  Plain arrays only, as random_flips; for a model's
    tensors use WeightTensor.bit_error_flips."""
    width = storage_width(array.dtype)
    k = bit_error_count(array.size, width, is_float_storage(array.dtype), rate, rng, bits)
    return random_flips(array, k, rng, bits)


def fixed_point_codes(values, bits, value_range, total_bits=8):
    """The steps of `fixed_point_flip`: (codes before, codes after the flip, new float32 values),
    the codes as signed int64."""
    values = np.asarray(values, np.float64)
    bits = np.asarray(bits, np.int64)
    if not 2 <= total_bits <= 32:
        raise ValueError(f"fixed_point_flip: total_bits must be in 2..32, got {total_bits}")
    if np.any((bits < 0) | (bits >= total_bits)):
        raise ValueError(f"fixed_point_flip: bit positions must be in 0..{total_bits - 1}, got {bits}")
    value_range = np.asarray(value_range, np.float64)
    if not np.all(np.isfinite(value_range) & (value_range > 0)):
        raise ValueError(f"fixed_point_flip: value_range must be finite and > 0, got {value_range}")
    half = 2.0 ** (total_bits - 1)
    q = np.trunc(np.nan_to_num(values / value_range * half, nan=0.0, posinf=half - 1, neginf=-half))
    q = np.clip(q, -half, half - 1).astype(np.int64)
    mask = (1 << total_bits) - 1
    flipped = (q & mask) ^ (np.int64(1) << bits)
    signed = np.where(flipped >= int(half), flipped - (1 << total_bits), flipped)
    return q, signed, (signed / half * value_range).astype(np.float32)


def fixed_point_flip(values, bits, value_range, total_bits=8):
    """PyTorchFI's bit-flip model (single_bit_flip_signed): quantize each value to a signed
    `total_bits` fixed-point integer relative to `value_range` (q = trunc(v / range * 2^(b-1))),
    flip bit `bits` of its two's complement (0 = least significant, as PyTorchFI counts), and
    dequantize.  Returns the new float32 values.

    Values at or beyond +-range saturate to the end of the integer range (q = 2^(b-1) becomes
    2^(b-1) - 1); PyTorchFI stops with an AssertionError on them, and the layer's maximum, which
    it is given as the range, is such a value.  The quotient is formed in float64 (PyTorchFI: in
    the tensor's float32), so a value within an ulp of a code boundary may truncate differently."""
    return fixed_point_codes(values, bits, value_range, total_bits)[2]
