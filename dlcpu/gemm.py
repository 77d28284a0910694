"""The batch-reduce GEMM, exposed, and a plain GEMM built on it.

    dlcpu.brgemm(a, b, c=None, *, variant='strd', a_index=None, b_index=None, beta=0,
                 bias=None, relu=False)
        C = beta*C + sum_i B_i @ A_i  (+ bias) (ReLU)
        a: (blocks, k, M) float32, M a multiple of 16 (output channels); k <= 16 (one channel block)
        b: (blocks, n, k) float32 (n pixels);  c: (n, M) float32
        variant 'strd' reduces over blocks i = 0..batch-1 in order; 'offs' and 'addr' reduce over
        the blocks named by a_index/b_index (as offset or pointer arrays, LIBXSMM's three flavours).

    dlcpu.matmul(x, y): (m, K) @ (K, n) float32, on BRGEMM calls over packed operands; y may be
        a tuple of operands sharing one packed x (one product each); out=PackedMatrix writes (or,
        with accumulate=True, adds) the product straight into packed form, the layout in which
        the recurrent layers keep their weights and receive their gradients.
        precision='bf16' rounds both operands to bf16 (y may be packed so once, with
        pack_matmul_operand(y, precision='bf16')) and accumulates in fp32: VDPBF16PS where the
        CPU has avx512_bf16, the same sums as FMAs elsewhere.  'int8', 'dfp16' and 'ternary'
        (a PackedTernary of block-ternary weights, levels= at run time) sum integers in int32
        chains on brgemm_int.h's kernels.
"""
import functools
from dataclasses import dataclass

import numpy as np

from . import cpu, quantized
from . import precision as formats
from ._ext import brgemm as _brgemm
from ._plans import Plan
from ._validate import fits_in_memory, flag, not_aliased, positive_int
from ._workspace import scratch

CB = cpu.CHANNEL_BLOCK
VARIANTS = {"strd": 0, "offs": 1, "addr": 2}



def _f32(arr, name, ndim, fn):
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy array, got {type(arr).__name__}")
    if arr.ndim != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-d, got shape {arr.shape}")
    if arr.dtype != np.float32:
        raise TypeError(f"{fn}: {name} must be float32, got {arr.dtype}")
    return np.ascontiguousarray(arr)


def _block_index(index, name, blocks, fn):
    """An index array of blocks -> contiguous int64, each in [0, blocks).  Integers only (a float
    or bool would be truncated silently); the range is checked before the int64 conversion, so
    an index beyond int64 is a ValueError naming the rule, not an OverflowError."""
    try:
        arr = np.asarray(index)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{fn}: {name} must be an array of ints, got {type(index).__name__} ({e})") from None
    arr = arr.reshape(-1)
    if arr.size == 0:   # refused by the caller, which names both index arrays
        return np.empty(0, np.int64)
    # Python ints beyond int64 (e.g. 2**70) make an object array; they are compared exactly below.
    ints = arr.dtype.kind in "iu" or (arr.dtype.kind == "O" and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in arr))
    if not ints:
        raise TypeError(f"{fn}: {name} must hold ints, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= blocks:
        raise ValueError(f"{fn}: {name} must lie in [0, {blocks}) (blocks of the batch; int64), "
                         f"got range [{arr.min()}, {arr.max()}]")
    return np.ascontiguousarray(arr, dtype=np.int64)


def brgemm(a, b, c=None, *, variant="strd", a_index=None, b_index=None, beta=0, bias=None,
           relu=False, isa=None):
    """Batch-reduce GEMM on one (n x M) output tile; returns C.  See the module docstring."""
    fn = "brgemm"
    a = _f32(a, "a", 3, fn)
    b = _f32(b, "b", 3, fn)
    na, k, M = a.shape
    nb, n, kb = b.shape
    if variant not in VARIANTS:
        raise ValueError(f"{fn}: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if M % CB or M == 0:
        raise ValueError(f"{fn}: M (a.shape[2]) must be a positive multiple of {CB}, got a {a.shape}")
    if not 1 <= k <= CB:
        raise ValueError(f"{fn}: k (a.shape[1]) must be in 1..{CB} (one channel block), got a {a.shape}")
    if kb != k:
        raise ValueError(f"{fn}: b's k={kb} (b.shape[2]) does not match a's k={k} (a {a.shape}, b {b.shape})")
    if n < 1 or na < 1 or nb < 1:
        raise ValueError(f"{fn}: empty operands (a {a.shape}, b {b.shape})")
    if variant == "strd":
        if a_index is not None or b_index is not None:
            raise ValueError(f"{fn}: variant 'strd' takes no a_index/b_index")
        if na != nb:
            raise ValueError(f"{fn}: 'strd' reduces block i of a with block i of b: a has {na}, b has {nb} blocks")
        a_index = b_index = np.arange(na, dtype=np.int64)
    else:
        if a_index is None or b_index is None:
            raise ValueError(f"{fn}: variant {variant!r} needs a_index and b_index")
        a_index = _block_index(a_index, "a_index", na, fn)
        b_index = _block_index(b_index, "b_index", nb, fn)
        if a_index.shape != b_index.shape or a_index.size == 0:
            raise ValueError(f"{fn}: a_index and b_index must be non-empty and of equal length, got {a_index.size} and {b_index.size}")
    if beta not in (0, 1):
        raise ValueError(f"{fn}: beta must be 0 or 1, got {beta!r}")
    if c is None:
        if beta == 1:
            raise ValueError(f"{fn}: beta=1 accumulates into c, so c must be given")
        c = np.empty((n, M), dtype=np.float32)
    else:
        if not isinstance(c, np.ndarray) or c.dtype != np.float32 or c.shape != (n, M) or not c.flags.c_contiguous:
            raise ValueError(f"{fn}: c must be a C-contiguous float32 array of shape ({n}, {M})")
        if not c.flags.writeable:
            raise ValueError(f"{fn}: c is written in place and must be writeable (got a read-only array)")
    if bias is None:
        bias = np.empty(0, dtype=np.float32)
    else:
        bias = _f32(bias, "bias", 1, fn)
        if bias.shape != (M,):
            raise ValueError(f"{fn}: bias must have shape ({M},), got {bias.shape}")
    # The kernel reads bias while it writes c (a and b are repacked first, but an output that
    # overlaps an input is refused as everywhere else).
    not_aliased(c, {"a": a, "b": b, "bias": bias}, fn)
    relu = flag(relu, "relu", fn)
    # Microkernel layouts: A groups of 16 columns with rows of 16; B pixels 16 floats apart.
    a_packed = np.ascontiguousarray(a.reshape(na, k, M // CB, CB).transpose(0, 2, 1, 3))
    b_packed = np.zeros((nb, n, CB), dtype=np.float32)
    b_packed[:, :, :k] = b
    err = _brgemm.brgemm_f32(a_packed, b_packed, c, a_index, b_index, VARIANTS[variant], k,
                             int(beta), bias, relu, cpu.isa_code(isa))
    if err:
        raise RuntimeError(f"{fn}: internal error: no microkernel for a tile (a {a.shape}, b {b.shape})")
    return c


class GemmPlan(Plan, struct=_brgemm.GemmPlanStruct, family="gemm"):
    """How one GEMM is cut into BRGEMM calls and split over threads (struct dlcpu_gemm_plan_t;
    see choose_gemm_split)."""

    __slots__ = ()

    def summary(self):
        return (f"isa={self.isa_name} threads={self.n_threads} {self.m}x{self.K} @ {self.K}x{self.n}: row tiles of "
                f"{self.rows}, K chunks of {self.kc_blocks * CB}, column groups of {self.group_cols}, threads split "
                f"{'row tiles' if self.split_rows else 'column-block pairs'}")


# K chunk and column group of the GEMM driver: a 512-deep chunk of a 256-column group is
# 512 KiB of Yp, half of Zen 5's 1 MiB L2, and a 14-row Xp chunk is 28 KiB, within its 48 KiB L1.
_GEMM_KC_BLOCKS = 32
_GEMM_GROUP_COLS = 256


@functools.lru_cache(maxsize=256)
def choose_gemm_split(m, n, K, isa, n_threads):
    """The GEMM plan for (m x K) @ (K x n) on an ISA path (name or code) and thread count."""
    isa_name = isa if isinstance(isa, str) else cpu.ISA_BY_CODE[isa]
    # Rows per row tile: the pixel budget of one mv=2 call (tiles.h: 14 on AVX-512, 3 on AVX2).
    rows = cpu.max_accumulators(isa_name) // 2
    n_tiles = -(-m // rows)
    n_pairs = (-(-n // CB) + 1) // 2
    # Threads split the row tiles when there are plenty of them; a short x (the T=1 LSTM's 64
    # rows are 5 tiles: 3 + 2 on two threads, 17% idle) splits the column-block pairs instead.
    split_rows = n_tiles >= 8 * n_threads or n_pairs < n_threads
    why = [f"row tile: {rows} rows = one mv=2 call ({cpu.max_accumulators(isa_name)} accumulators on {isa_name}, tiles.h)",
           (f"blocking: K chunks of {_GEMM_KC_BLOCKS * CB} x column groups of {_GEMM_GROUP_COLS}: 512 KiB of Yp in L2, "
           "a 28 KiB Xp chunk in L1"),
           (f"threads: split {'row tiles' if split_rows else 'column-block pairs'} ({n_tiles} row tiles, {n_pairs} "
           f"column pairs, {n_threads} thread(s); 5 row tiles on 2 threads left 17% idle)")]
    return GemmPlan(why, isa=cpu.ISA_CODES[isa_name], n_threads=n_threads, rows=rows, kc_blocks=_GEMM_KC_BLOCKS,
                    group_cols=_GEMM_GROUP_COLS, split_rows=int(split_rows), m=m, n=n, K=K)


@dataclass(frozen=True, eq=False)
class PackedMatrix:
    """The right-hand operand of matmul, packed once (weights reused across calls):
    data[n/16][K/16][16][16] of a (K, n) matrix; float32, or for precision 'bf16' uint16 bf16
    patterns with each block in VNNI pairs (flat index q*32 + m*2 + e holds row 2q + e, column m),
    'dfp16' int16 mantissas in the same pairs, 'int8' int8 values in VNNI quads (q*64 + m*4 + e
    holds row 4q + e) with per-column scales (dlcpu.quantized)."""

    data: np.ndarray
    shape: tuple
    precision: str = "fp32"
    #: int8: (per-column scales, per-(K block, column) int32 sums of the int8 values, for the
    #: zero-point compensation); dfp16: (shared exponent, bound on |mantissa|); None otherwise
    scale: object = None

    def __post_init__(self):
        # The kernels trust data's extent: check it against the logical shape once, here.
        ok = (isinstance(self.shape, tuple) and len(self.shape) == 2
              and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= 1
                      for v in self.shape))
        if not ok:
            raise ValueError(f"PackedMatrix: shape must be a (K, n) pair of positive ints, got {self.shape!r}")
        K, n = self.shape
        if not isinstance(self.precision, str) or self.precision not in _PACKED_DTYPES:
            raise ValueError(f"PackedMatrix: precision must be one of {', '.join(_PACKED_DTYPES)}, got {self.precision!r}")
        dtype = _PACKED_DTYPES[self.precision]
        expected = (-(-n // CB), -(-K // CB), CB, CB)
        if (not isinstance(self.data, np.ndarray) or self.data.dtype != dtype
                or self.data.shape != expected or not self.data.flags.c_contiguous):
            raise ValueError(f"PackedMatrix: data must be a C-contiguous {np.dtype(dtype).name} array of shape "
                             f"{expected} for a ({K}, {n}) {self.precision} matrix; use pack_matmul_operand")
        if (self.scale is None) != (self.precision in ("fp32", "bf16")):
            raise ValueError(f"PackedMatrix: a {self.precision} matrix " + ("has no scale" if self.scale is not None
                             else "needs its scales or exponent") + "; use pack_matmul_operand")
        if self.scale is not None:
            self._check_scale(K)

    def _check_scale(self, K):
        """The kernels read the per-column arrays by position and trust the DFP-16 bound."""
        where = f"PackedMatrix: the scale of a {self.precision} matrix"
        n_pad, kb = self.data.shape[0] * CB, self.data.shape[1]
        ok = isinstance(self.scale, tuple) and len(self.scale) == 2
        if ok and self.precision == "int8":
            a, b = self.scale
            ok = (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (n_pad,) and bool(np.isfinite(a).all())
                  and bool((a > 0).all()) and isinstance(b, np.ndarray) and b.dtype == np.int32 and b.shape == (kb, n_pad))
        elif ok:
            e, bound = self.scale
            ok = (all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in (e, bound))
                  and formats.DFP_MIN_EXPONENT <= e <= formats.DFP_MAX_EXPONENT and 0 <= bound <= 32767
                  and int(np.abs(self.data.astype(np.int32)).max(initial=0)) <= bound)
        if not ok:
            raise ValueError(f"{where} does not describe its data (int8: float32 scales > 0 of shape ({n_pad},) and "
                             f"int32 sums of shape ({kb}, {n_pad}); dfp16: (exponent, bound on |mantissa| that holds)); "
                             "use pack_matmul_operand")


#: the dtype of a PackedMatrix in each precision (ternary operands are a PackedTernary)
_PACKED_DTYPES = {"fp32": np.float32, "bf16": np.uint16, "dfp16": np.int16, "int8": np.int8}


@dataclass(frozen=True, eq=False)
class PackedTernary:
    """A block-ternary right-hand operand of matmul (pack_matmul_operand(y, precision='ternary',
    block=N, residual=r)): y (K, n) ~ sum over levels of alpha * t, with the ternarization of
    dlcpu.precision.ternarize -- blocks of N rows of one column (the reduction runs along the
    rows, as a convolution's blocks run along input channels), one alpha per (column, block,
    level).  codes [n/16][levels*K/16][16][16] int8 in VNNI quads, the levels one after another
    along K (so a product on the first l levels reads the first l*K/16 blocks of each column
    block), alphas [n/16][levels*K/16][groups][16] float32 beside them, code_sums (levels, n)
    alpha * sum(t) per column (the zero-point compensation).  Made only by pack_matmul_operand."""

    shape: tuple
    block: int
    codes: np.ndarray
    alphas: np.ndarray
    code_sums: np.ndarray
    _made: bool = False

    def __post_init__(self):
        if not self._made:       # the kernels read these arrays by the shape
            raise TypeError("PackedTernary: make it with pack_matmul_operand(y, precision='ternary', block=N, "
                            "residual=r)")
        # and a copy with fields replaced must still describe itself (dataclasses.replace passes _made)
        K, n = self.shape
        L = self.code_sums.shape[0] if isinstance(self.code_sums, np.ndarray) and self.code_sums.ndim == 2 else 0
        kb, nb = -(-K // CB), -(-n // CB)
        ok = (L >= 1 and isinstance(self.codes, np.ndarray) and self.codes.dtype == np.int8
              and self.codes.shape == (nb, L * kb, CB, CB) and isinstance(self.alphas, np.ndarray)
              and self.alphas.dtype == np.float32 and self.block in (4, 8) + tuple(range(16, kb * CB + 1, 16))
              and (kb * CB) % self.block == 0 and self.alphas.shape == (nb, L * kb, max(1, CB // self.block), CB)
              and self.code_sums.shape[1] >= n)
        if not ok:
            raise ValueError(f"PackedTernary: codes, alphas and code_sums do not describe a ({K}, {n}) matrix in "
                             f"blocks of {self.block}; use pack_matmul_operand(y, precision='ternary', ...)")

    @property
    def levels(self):
        return self.code_sums.shape[0]

    precision = "ternary"


def _pack_ternary(y, block, residual):
    """pack_matmul_operand for ternary: y (K, n) ternarized as the weights of a (n, K, 1, 1)
    convolution (blocks along K)."""
    return packed_ternary_from(formats.ternarize(np.ascontiguousarray(y.T)[:, :, None, None], block=block,
                                                 residual=residual))


def packed_ternary_from(tw):
    """The PackedTernary of y (K, n) from the TernaryWeights of its transpose as (n, K, 1, 1)
    convolution weights (what nn.quantize keeps of a Linear layer): blocked as a convolution's,
    then reordered column block first."""
    if not isinstance(tw, formats.TernaryWeights) or tuple(tw.shape[2:]) != (1, 1):
        raise ValueError(f"packed_ternary_from: expected the TernaryWeights of (n, K, 1, 1) weights, got "
                         f"{getattr(tw, 'shape', type(tw).__name__)}")
    tb = quantized.block_ternary_weights(tw)
    L, nb, kb = tb.codes.shape[:3]
    codes = np.ascontiguousarray(tb.codes.reshape(L, nb, kb, CB, CB).swapaxes(0, 1).reshape(nb, L * kb, CB, CB))
    groups = tb.alphas.shape[-2]
    alphas = np.ascontiguousarray(tb.alphas.reshape(L, nb, kb, groups, CB).swapaxes(0, 1)
                                  .reshape(nb, L * kb, groups, CB))
    return PackedTernary((tw.shape[1], tw.shape[0]), tb.block, codes, alphas, tb.code_sums, _made=True)


def pack_matmul_operand(y, *, transpose=False, precision="fp32", n_threads=None, block=16, residual=0):
    """Pack y (K, n) for repeated matmul(x, packed) calls; transpose=True packs y.T from y given
    as (n, K), without a transposed copy.  precision='bf16' rounds y to bf16 (nearest even);
    'int8' quantizes it symmetrically per column, 'dfp16' to int16 mantissas with one exponent;
    'ternary' ternarizes it in blocks of `block` rows per column with `residual` extra levels
    (a PackedTernary; block and residual are for ternary only)."""
    fn = "pack_matmul_operand"
    transpose = flag(transpose, "transpose", fn)
    precision = formats.check_precision(precision, fn)
    y = _f32(y, "y", 2, fn)
    K, n = y.shape[::-1] if transpose else y.shape
    if min(K, n) < 1:
        raise ValueError(f"pack_matmul_operand: empty operand {y.shape}")
    if precision == "ternary":
        return _pack_ternary(y.T if transpose else y, block, residual)
    if (block, residual) != (16, 0):
        raise ValueError(f"{fn}: block= and residual= are for precision='ternary', not {precision!r}")
    if precision in quantized.INTEGER_FORMATS:
        return _pack_integer(y.T if transpose else y, precision, cpu.resolve_threads(n_threads))
    if precision == "bf16":
        n_threads = cpu.resolve_threads(n_threads)
        yp = np.empty((-(-n // CB), -(-K // CB), CB, CB), dtype=np.uint16)
        _brgemm.pack_gemm_b_bf16(formats.fp32_to_bf16_bits(y, n_threads=n_threads), yp, transpose, n_threads)
        return PackedMatrix(yp, (K, n), "bf16")
    yp = np.empty((-(-n // CB), -(-K // CB), CB, CB), dtype=np.float32)
    pack = _brgemm.pack_gemm_b_transposed if transpose else _brgemm.pack_gemm_b
    pack(y, yp, cpu.resolve_threads(n_threads))
    return PackedMatrix(yp, (K, n))


def transpose_packed(packed, *, n_threads=None):
    """The PackedMatrix of y.T from the PackedMatrix of y, in one pass over the tiles (no
    unpacking): the recurrent backward needs W_ih and W_hh^T from weights kept as W^T."""
    if not isinstance(packed, PackedMatrix):
        raise TypeError(f"transpose_packed: expected a PackedMatrix, got {type(packed).__name__}")
    if packed.precision != "fp32":
        raise ValueError(f"transpose_packed: transposes fp32 packed matrices, got a {packed.precision} one")
    K, n = packed.shape
    data = np.empty((packed.data.shape[1], packed.data.shape[0], CB, CB), np.float32)
    _brgemm.transpose_packed(packed.data, data, cpu.resolve_threads(n_threads))
    return PackedMatrix(data, (n, K))


_NO_BIAS = np.empty(0, dtype=np.float32)


def matmul(x, y, *, bias=None, transpose_x=False, out=None, accumulate=False, precision="fp32", n_threads=None,
           isa=None, levels=None, x_scale=None, x_unsigned=None, x_bits=8):
    """x @ y (+ bias) for float32 matrices (m, K) and (K, n), on BRGEMM calls over packed
    operands; y may be a PackedMatrix from pack_matmul_operand (packed once, reused).
    transpose_x=True computes x.T @ y from x of shape (K, m), packing x transposed on the fly.
    y may also be a tuple of right-hand operands (no bias then): x is packed once and the tuple
    of products x @ y_i comes back (the RNN weight gradients dG^T @ x and dG^T @ h share dG^T).

    out: a PackedMatrix of shape (m, n) that receives the product in packed form (its padding
    left zero) and is returned; accumulate=True adds the product to it instead (a gradient
    accumulated in the layout its weight is kept in).  One right-hand operand and no bias then.

    precision='bf16': x and y are rounded to bf16 and the products summed in fp32 (the result
    is float32); a packed y must have been packed with precision='bf16'.  precision='int8': x
    quantized per tensor to u8 (zero point 128 when it holds negative values), y per column to
    s8; 'dfp16': both to int16 mantissas with shared exponents; products summed in int32 chains
    that provably cannot overflow (dlcpu.quantized), output float32; out= takes fp32 and bf16.
    'ternary': y a PackedTernary (or dense y, ternarized with blocks of 16 and no residual), x
    quantized to u8; levels= runs the first `levels` levels (default all).  int8 and ternary
    take a calibrated x_scale (with x_unsigned: zero point 0, else 128) in place of x's own
    max|x|, as a statically quantized layer does (values beyond its range saturate; with
    x_unsigned=True that range starts at 0, so negative values become 0).  x_bits=7 quantizes x
    to 7-bit codes (quantized.to_int8_blocked's bits=7; zero point 64 for signed values), which
    the AVX2 kernels multiply in half the instructions.  Outside fp32, transpose_x copies x
    transposed first."""
    fn = "matmul"
    precision = formats.check_precision(precision, fn)
    if levels is not None and precision != "ternary":
        raise ValueError(f"{fn}: levels= chooses the residual levels of ternary weights, not of {precision}")
    u8_scale = None
    x_bits = quantized.check_activation_bits(x_bits, fn, "x_bits")
    if x_bits != 8 and precision not in ("int8", "ternary"):
        raise ValueError(f"{fn}: x_bits= sets the u8 codes of x for precision 'int8' or 'ternary', not {precision!r}")
    if x_scale is not None or x_unsigned is not None:
        if precision not in ("int8", "ternary"):
            raise ValueError(f"{fn}: x_scale= and x_unsigned= set the u8 quantization of x for precision 'int8' "
                             f"or 'ternary', not {precision!r}")
        if x_scale is None:
            raise ValueError(f"{fn}: x_unsigned= goes with a calibrated x_scale")
        u8_scale = quantized.calibrated_u8_scale(x_scale, x_unsigned, fn, ("x_scale", "x_unsigned"), x_bits)
    transpose_x = flag(transpose_x, "transpose_x", fn)
    accumulate = flag(accumulate, "accumulate", fn)
    x = _f32(x, "x", 2, fn)
    many = isinstance(y, tuple)
    ys = y if many else (y,)
    if many and (bias is not None or not ys):
        raise ValueError(f"{fn}: a tuple of right-hand operands must be non-empty and takes no bias")
    if out is None and accumulate:
        raise ValueError(f"{fn}: accumulate=True adds to `out`, so out must be given")
    if out is not None and (many or bias is not None):
        raise ValueError(f"{fn}: out= takes one right-hand operand and no bias")
    if transpose_x and precision != "fp32":
        # a transposed copy first: the low-precision packers read rows (the operands this serves,
        # gradient matrices of the recurrent layers, are small next to their products)
        x, transpose_x = np.ascontiguousarray(x.T), False
    m, K = x.shape[::-1] if transpose_x else x.shape
    checked = []
    for yi in ys:
        if isinstance(yi, PackedTernary) and precision != "ternary":
            raise ValueError(f"{fn}: y was packed for precision 'ternary', but the product runs in {precision!r}")
        if precision == "ternary" and isinstance(yi, PackedMatrix):
            raise ValueError(f"{fn}: y was packed for precision {yi.precision!r}; pack it with "
                             "pack_matmul_operand(y, precision='ternary', block=N, residual=r)")
        if isinstance(yi, PackedMatrix) and yi.precision != precision:
            raise ValueError(f"{fn}: y was packed for precision {yi.precision!r}, but the product runs in "
                             f"{precision!r}; pack it with pack_matmul_operand(y, precision={precision!r})")
        if not isinstance(yi, (PackedMatrix, PackedTernary)):
            yi = _f32(yi, "y", 2, fn)
        K2, n = yi.shape
        if K != K2:
            raise ValueError(f"{fn}: inner dimensions differ: x{'.T' if transpose_x else ''} {(m, K)} @ y {(K2, n)}")
        if min(m, K, n) < 1:
            raise ValueError(f"{fn}: empty operands: x {x.shape} @ y {(K2, n)}")
        checked.append(yi)
    fits_in_memory(4.0 * m * sum(-(-yi.shape[1] // CB) * CB for yi in checked), f"the product of x {x.shape}", fn)
    if out is not None:
        _check_packed_out(out, (m, checked[0].shape[1]), x, checked[0], fn)
    n_threads = cpu.resolve_threads(n_threads)
    isa_name = cpu.resolve_isa(isa)
    T = choose_gemm_split(m, 16, K, isa_name, n_threads).rows   # rows per row tile depend on the ISA only
    kc = -(-K // CB)
    if precision == "ternary":
        if out is not None:
            raise ValueError(f"{fn}: out= and accumulate= take the fp32 product; precision='ternary' returns a new array")
        outs = tuple(_ternary_product(x, yi if isinstance(yi, PackedTernary) else _pack_ternary(yi, 16, 0), m, T, bias,
                                      levels, n_threads, isa_name, fn, u8_scale, x_bits) for yi in checked)
        return outs if many else outs[0]
    if precision in quantized.INTEGER_FORMATS:
        if out is not None:
            raise ValueError(f"{fn}: out= and accumulate= take the fp32 product; precision={precision!r} returns a new "
                             "array")
        outs = tuple(_integer_product(x, yi if isinstance(yi, PackedMatrix) else
                                      pack_matmul_operand(yi, precision=precision, n_threads=n_threads),
                                      m, kc, T, bias, n_threads, isa_name, precision, fn, u8_scale, x_bits)
                     for yi in checked)
        return outs if many else outs[0]
    if precision == "bf16":
        native = formats.native_bf16(isa_name)
        xp = scratch("gemm.x16", (-(-m // T), kc, T, CB), np.uint16)
        _brgemm.pack_gemm_a_bf16(x, xp, cpu.ISA_CODES[isa_name], native, n_threads)
        outs = tuple(_product(xp, yi if isinstance(yi, PackedMatrix) else
                              pack_matmul_operand(yi, precision="bf16", n_threads=n_threads),
                              m, kc, bias, n_threads, isa_name, fn, out, accumulate, native) for yi in checked)
        return outs if many else outs[0]
    xp = scratch("gemm.x", (-(-m // T), kc, T, CB))
    if transpose_x:
        _brgemm.pack_gemm_a_transposed(x, xp, n_threads)
    else:
        _brgemm.pack_gemm_a(x, xp, n_threads)
    outs = tuple(_product(xp, yi, m, kc, bias, n_threads, isa_name, fn, out, accumulate) for yi in checked)
    return outs if many else outs[0]


def _row_tiles(q, T, kc):
    """(m, K) -> row tiles [m/T][K/16][T][16], zero-padded (numpy: the integer operands are small
    next to their products)."""
    m, K = q.shape
    padded = np.zeros((-(-m // T) * T, kc * CB), q.dtype)
    padded[:m, :K] = q
    return np.ascontiguousarray(padded.reshape(-1, T, kc, CB).transpose(0, 2, 1, 3))


def _pack_integer(y, precision, n_threads):
    """pack_matmul_operand for int8 / dfp16: quantize y (K, n), pad, block [n/16][K/16][16k][16n]
    and group the rows of each block for VNNI."""
    fn = "pack_matmul_operand"
    y = np.ascontiguousarray(y)
    K, n = y.shape
    if precision == "int8":
        scales = formats.int8_weight_scales(y, axis=1)
        return packed_int8_from(formats.to_int8(y, scales, axis=1).data, scales)
    d, bound = formats._to_dfp16(y, formats.DFP16_HEADROOM, "nearest", 0, cpu.isa_code(None), n_threads, fn,
                                 within_headroom=True)
    return PackedMatrix(_integer_blocks(d.mantissas, "dfp16"), (K, n), "dfp16", (d.exponent, int(bound)))


def _integer_blocks(q, precision):
    """Integer codes q (K, n), zero-padded and blocked [n/16][K/16][16k][16n], the rows of each
    block grouped for VNNI."""
    K, n = q.shape
    kb, nb = -(-K // CB), -(-n // CB)
    padded = np.zeros((kb * CB, nb * CB), q.dtype)
    padded[:K, :n] = q
    blocks = np.ascontiguousarray(padded.reshape(kb, CB, nb, CB).transpose(2, 0, 1, 3))   # [nb][kb][16k][16n]
    return quantized._vnni_groups(blocks, quantized.GROUP[precision])


def packed_int8_from(q, scales):
    """The int8 PackedMatrix of y (K, n) from its codes q (K, n) int8 and per-column scales (n,)
    (pack_matmul_operand's quantization, or codes nn.quantize kept), with the per-(K block,
    column) sums of the codes that give the zero-point compensation."""
    fn = "packed_int8_from"
    if not isinstance(q, np.ndarray) or q.ndim != 2 or min(q.shape) < 1:
        raise ValueError(f"{fn}: q must be a non-empty (K, n) int8 array, got {getattr(q, 'shape', type(q).__name__)}")
    scales = quantized.check_int8_codes(np.ascontiguousarray(q.T), scales, 2, "(n, K)", fn)
    K, n = q.shape
    kb, nb = -(-K // CB), -(-n // CB)
    padded = np.zeros((kb * CB, nb * CB), np.int64)
    padded[:K, :n] = q
    sums = padded.reshape(kb, CB, nb * CB).sum(axis=1).astype(np.int32)                     # (kb, n_pad)
    pad_scales = np.ones(nb * CB, np.float32)
    pad_scales[:n] = scales
    return PackedMatrix(_integer_blocks(q, "int8"), (K, n), "int8", (pad_scales, sums))


def _u8_activations(x, code, n_threads, fn, u8_scale, bits=8):
    """quantize_u8 of x in codes `bits` wide: from its own max|x|, or with a calibrated (scale,
    zero point), NaN/Inf refused either way."""
    if u8_scale is None:
        return quantized.quantize_u8(x, code, n_threads, fn, bits=bits)
    quantized._absmax(x, code, n_threads, fn, "int8 quantization")
    return quantized.quantize_u8(x, code, n_threads, fn, *u8_scale, bits=bits)


def _integer_product(x, y, m, kc, T, bias, n_threads, isa_name, precision, fn, u8_scale=None, x_bits=8):
    """x @ y on the integer kernels: x quantized and packed here, y a PackedMatrix of the format."""
    n = y.shape[1]
    yp = y.data
    n_pad = yp.shape[0] * CB
    plan = choose_gemm_split(m, n, y.shape[0], isa_name, n_threads)
    code = cpu.ISA_CODES[isa_name]
    if precision == "int8":
        q, s_x, z = _u8_activations(x, code, n_threads, fn, u8_scale, x_bits)
        xp = _row_tiles(q, T, kc)       # (padded with code 0)
        s_y, sums = y.scale
        steps, blocks = quantized.chain_schedule("int8")
        if plan.kc_blocks > blocks:
            raise ValueError(f"{fn}: a K chunk of {plan.kc_blocks} blocks is longer than an int32 chain holds")
        comp = None
        if z:
            starts = np.arange(0, kc, plan.kc_blocks)
            comp = np.ascontiguousarray((z * np.add.reduceat(sums.astype(np.int64), starts, axis=0)).astype(np.int32))
        scale = _float32_multipliers(np.float64(s_x) * s_y.astype(np.float64), fn)
        spec = (quantized.u8_codes_format(q, z, isa_name), steps, blocks, scale, None, 0,
                None if comp is None else comp.reshape(-1))
        view = yp.view(np.uint8)
    else:
        d, bound = formats._to_dfp16(x, formats.DFP16_HEADROOM, "nearest", 0, code, n_threads, fn,
                                     within_headroom=True)
        xp = _row_tiles(d.mantissas, T, kc)
        e_y, bound_y = y.scale
        steps, blocks = quantized.chain_schedule("dfp16", bound, bound_y)
        spec = (quantized._S16, steps, blocks, np.full(n_pad, quantized.product_exponent(d.exponent, e_y, fn), np.float32),
                None, 0, None)
        view = yp
    if xp.shape[2] != plan.rows:
        raise ValueError(f"{fn}: x was packed in row tiles of {xp.shape[2]}, the plan needs {plan.rows}")
    return _fresh_product(xp, view, m, n, n_pad, bias, plan, fn, quantized.native_vnni(isa_name), spec)


def _float32_multipliers(values, fn):
    """float64 multipliers (x's scale times the weights') or shifts of a product as the float32
    the kernels apply: refused where they overflow float32 (an x_scale or weight scale too large)."""
    values = np.asarray(values, np.float64)
    if not (np.abs(values) <= np.finfo(np.float32).max).all():
        raise ValueError(f"{fn}: x's scale times the weights' scales overflows float32; use a smaller x_scale")
    return values.astype(np.float32)


def _ternary_product(x, y, m, T, bias, levels, n_threads, isa_name, fn, u8_scale=None, x_bits=8):
    """x @ y for a PackedTernary y on its first `levels` levels: x quantized to u8 and repeated
    once per level along K (each copy meets one level's codes), every N-row block summed in its
    own int32 chain and multiplied by alpha * s_x (found beside the block), the zero point's
    shift added to the bias."""
    levels = y.levels if levels is None else positive_int(levels, "levels", fn)
    if levels > y.levels:
        raise ValueError(f"{fn}: levels must be <= {y.levels} (1 base + {y.levels - 1} residual), got {levels}")
    K, n = y.shape
    kb = y.codes.shape[1] // y.levels
    code = cpu.ISA_CODES[isa_name]
    q, s_x, z = _u8_activations(x, code, n_threads, fn, u8_scale, x_bits)
    rep = np.full((m, levels, kb * CB), z, np.uint8)
    rep[:, :, :K] = q[:, None, :]
    xp = _row_tiles(rep.reshape(m, levels * kb * CB), T, levels * kb)
    plan = choose_gemm_split(m, n, levels * kb * CB, isa_name, n_threads)
    N = y.block
    steps, blocks = (N // quantized.GROUP["int8"], 1) if N < CB else (CB // quantized.GROUP["int8"], N // CB)
    if plan.kc_blocks < levels * kb and plan.kc_blocks % blocks:
        raise ValueError(f"{fn}: a K chunk of {plan.kc_blocks} blocks would split a ternary block of {N} rows; "
                         "use block=4, 8 or 16 for this shape")
    if xp.shape[2] != plan.rows:
        raise ValueError(f"{fn}: x was packed in row tiles of {xp.shape[2]}, the plan needs {plan.rows}")
    if bias is not None and (_f32(bias, "bias", 1, fn).shape != (n,)):
        raise ValueError(f"{fn}: bias must have shape ({n},), got {np.shape(bias)}")
    shift = -s_x * z * y.code_sums[:levels].sum(axis=0).astype(np.float64) if z else np.zeros(n)
    total = shift if bias is None else shift + bias
    multipliers = _float32_multipliers(y.alphas.astype(np.float64) * s_x, fn)
    total = _float32_multipliers(total, fn)
    spec = (quantized.ternary_format(isa_name), steps, blocks, None, multipliers.reshape(-1),
            y.alphas.shape[2], None)
    return _fresh_product(xp, y.codes.view(np.uint8), m, n, y.codes.shape[0] * CB, total, plan,
                          fn, quantized.native_vnni(isa_name), spec)


def _fresh_product(xp, yp, m, n, n_pad, bias, plan, fn, native, integer=None):
    """A new (m, n) product of packed operands, with the bias padded to n_pad."""
    bias_p = _NO_BIAS
    if bias is not None:
        bias = _f32(bias, "bias", 1, fn)
        if bias.shape != (n,):
            raise ValueError(f"{fn}: bias must have shape ({n},), got {bias.shape}")
        bias_p = np.zeros(n_pad, np.float32)
        bias_p[:n] = bias
    out = np.empty((m, n_pad), dtype=np.float32)
    if _brgemm.gemm_packed(xp, yp, out, bias_p, plan.c, 0, False, native, integer):
        raise RuntimeError(f"{fn}: a BRGEMM call failed ({plan.summary()})")
    return out if n_pad == n else np.ascontiguousarray(out[:, :n])


def _check_packed_out(out, shape, x, y, fn):
    if not isinstance(out, PackedMatrix):
        raise TypeError(f"{fn}: out must be a PackedMatrix, got {type(out).__name__}")
    if out.precision != "fp32":
        raise ValueError(f"{fn}: out receives the fp32 product, so it must be an fp32 PackedMatrix, got a "
                         f"{out.precision} one")
    if tuple(out.shape) != shape:
        raise ValueError(f"{fn}: out is a packed {tuple(out.shape)} matrix, the product is {shape}")
    if not out.data.flags.writeable:
        raise ValueError(f"{fn}: out is written in place and must be writeable (got a read-only array)")
    operands = {"x": x, "y": y.data if isinstance(y, PackedMatrix) else y}
    not_aliased(out.data, operands, fn)


def _product(xp, y, m, kc, bias, n_threads, isa_name, fn, packed_out=None, accumulate=False, native=False):
    """One x @ y on an already packed x (into packed_out's packed form when given)."""
    n = y.shape[1]
    if isinstance(y, PackedMatrix):
        yp = y.data
    else:
        yp = scratch("gemm.y", (-(-n // CB), kc, CB, CB))
        _brgemm.pack_gemm_b(y, yp, n_threads)
    n_pad = yp.shape[0] * CB
    plan = choose_gemm_split(m, n, y.shape[0], isa_name, n_threads)
    if xp.shape[2] != plan.rows:
        raise ValueError(f"{fn}: x was packed in row tiles of {xp.shape[2]}, the plan needs {plan.rows}")
    if packed_out is not None:
        # out[n/16][m/16][16][16] is the product's packed form: the kernels write each column
        # block's rows 16 floats apart, and the padded rows (m % 16) are left as they are.
        data = packed_out.data
        c_rows = data.shape[1] * CB
        if _brgemm.gemm_packed(xp, yp, data.reshape(data.shape[0], c_rows * CB), _NO_BIAS, plan.c,
                               c_rows, accumulate, native):
            raise RuntimeError(f"{fn}: a BRGEMM call failed ({plan.summary()})")
        if not accumulate and m % CB:
            data[:, m // CB, m % CB:] = 0.0
        return packed_out
    return _fresh_product(xp, yp, m, n, n_pad, bias, plan, fn, native)
