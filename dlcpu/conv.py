"""Direct convolution on blocked layouts, built on the batch-reduce GEMM.

    y = dlcpu.conv2d(x, w, bias=None, stride=1, padding=0, activation=None)

x, w plain float32 NCHW/KCRS arrays -> NCHW array; or BlockedTensors -> BlockedTensor (no layout
conversion at all in that path).  Every argument is checked here, before any kernel runs.

Blocking is decided once per (shape, ISA, threads) by one choose_* function per plan family and
cached by shape: choose_conv_blocking (forward, and backward-data, which is a forward on dy),
choose_weight_grad_blocking (weight update) and choose_winograd_blocking.  Each returns a typed
plan (dlcpu/_plans.py) backed by the C struct of pyx/kernels/plans.h that its driver reads:
pyx/conv_direct.pyx (forward, bwd-data weight flip), pyx/conv_wu.pyx (weight update) and
pyx/winograd.pyx (Winograd).  This module is the only importer of those three extensions.
Register budgets and tile modes come from the compiled pyx/kernels/tiles.h (cpu.TILE_CONSTANTS);
every rule below names the measurement behind it, and records itself in the plan's `rules`,
which `dlcpu bench conv --show-plan` prints.

Non-finite input: Winograd's transforms turn an Inf into NaN (Inf - Inf) in most outputs of its
tiles.  algorithm='auto' therefore keeps IEEE propagation identical to direct convolution: the
Winograd transforms report non-finite inputs (one FMA per loaded vector, no extra pass) and the
call is recomputed by the direct algorithm when they do.  An explicit 'winograd2'/'winograd4'
does not fall back (see conv2d).
"""
import functools
from dataclasses import dataclass

import numpy as np

from . import cpu, quantized
from . import precision as formats
from ._ext import conv_direct as _direct
from ._ext import conv_wu as _wu
from ._ext import precision as _convert
from ._ext import winograd as _wino
from ._plans import Plan
from ._validate import fits_in_memory, not_aliased, pair, positive_int
from ._workspace import scratch
from .layout import CB, BlockedTensor, block_weights, from_blocked, n_blocks, to_bf16_blocked, to_blocked

_TC = cpu.TILE_CONSTANTS

# Bytes of input tile (or of input rows read in place) one work item keeps hot.  Zen 5 has 1 MiB of
# L2 per core.  Measured at 1 thread, batch 4: 64 / 192 / 512 KiB gave 251 / 250 / 251 GFLOP/s on
# res2a_branch2b and 257 / 250 / 254 on res3b_branch2b (the same within this machine's noise);
# 192 KiB is kept as the middle, leaving most of L2 to the weights.
_TILE_BYTES = 192 * 1024

# How a work item gets its input (pyx/kernels/tiles.h, DLCPU_TILE_*): in place, a padded
# phase-split tile, or a dense subsampled tile (strided 1x1).
TILE_NONE, TILE_PADDED, TILE_SUBSAMPLED = (_TC["tile_modes"][m] for m in ("none", "padded", "subsampled"))
_TILE_MODE_NAMES = {TILE_NONE: "in place", TILE_PADDED: "padded phase-split tile",
                    TILE_SUBSAMPLED: "subsampled tile"}


def _ceil_div(a, b):
    return -(-a // b)


def _input_mode(s):
    """TILE_* for a shape: 1x1/s1/unpadded reads in place, other 1x1s subsample, the rest pad."""
    if s.R == 1 and s.S == 1:
        if s.stride_h == s.stride_w == 1 and s.pad_h == s.pad_w == s.pad_b == s.pad_r == 0:
            return TILE_NONE
        return TILE_SUBSAMPLED
    return TILE_PADDED


def _phase_width(s):
    """Padded columns per stride phase of a TILE_PADDED tile."""
    return -(-((s.Q - 1) * s.stride_w + s.S) // s.stride_w)


def _tile_geometry(s, mode, rows, cbs):
    """(tile rows, columns per phase, floats) of a tile holding `rows` output rows of cbs blocks."""
    if mode == TILE_NONE:
        return 0, 0, 0
    if mode == TILE_SUBSAMPLED:
        return rows, s.Q, cbs * rows * s.Q * CB
    tile_rows = (rows - 1) * s.stride_h + s.R
    return tile_rows, _phase_width(s), cbs * tile_rows * s.stride_w * _phase_width(s) * CB


def _tile_row_bytes(s, mode, cbs):
    """Bytes of tile (or in-place input) per output row."""
    if mode == TILE_NONE:
        return cbs * s.W * CB * 4
    if mode == TILE_SUBSAMPLED:
        return cbs * s.Q * CB * 4
    return cbs * s.stride_h * s.stride_w * _phase_width(s) * CB * 4


@dataclass(frozen=True)
class ConvShape:
    N: int
    C: int
    K: int
    H: int
    W: int
    R: int
    S: int
    stride_h: int = 1
    stride_w: int = 1
    pad_h: int = 0
    pad_w: int = 0
    # Bottom/right padding when it differs from top/left (None: symmetric).  Only the backward
    # pass builds such shapes (its per-phase sub-problems); users' padding is symmetric.
    pad_bottom: int = None
    pad_right: int = None

    @property
    def pad_b(self):
        return self.pad_h if self.pad_bottom is None else self.pad_bottom

    @property
    def pad_r(self):
        return self.pad_w if self.pad_right is None else self.pad_right

    @property
    def P(self):
        return (self.H + self.pad_h + self.pad_b - self.R) // self.stride_h + 1

    @property
    def Q(self):
        return (self.W + self.pad_w + self.pad_r - self.S) // self.stride_w + 1

    @property
    def Cb(self):
        return n_blocks(self.C)

    @property
    def Kb(self):
        return n_blocks(self.K)

    def flops(self):
        """Forward FLOPs, full taps (every r, s counted, padding included: LIBXSMM's convention)."""
        return 2 * self.N * self.K * self.P * self.Q * self.C * self.R * self.S

    def geometry(self):
        """The shape as the plans' C struct dlcpu_conv_shape_t holds it (pyx/kernels/plans.h)."""
        return {"N": self.N, "C": self.C, "K": self.K, "Cb": self.Cb, "Kb": self.Kb, "H": self.H, "W": self.W,
                "P": self.P, "Q": self.Q, "R": self.R, "S": self.S, "stride_h": self.stride_h,
                "stride_w": self.stride_w, "pad_h": self.pad_h, "pad_w": self.pad_w, "pad_b": self.pad_b,
                "pad_r": self.pad_r}


class ConvPlan(Plan, struct=_direct.ConvPlanStruct, family="direct conv"):
    """How one forward convolution is cut into BRGEMM calls (struct dlcpu_conv_plan_t; see
    choose_conv_blocking).  Fields: isa, n_threads, tile_mode, the register tile mv x nr x nc,
    k, relu, rows_per_item/row_blocks, kb_per_group/k_groups, tile_rows/tile_phase_width/
    tile_floats, and the shape `s`."""

    __slots__ = ()

    def summary(self):
        return (f"isa={self.isa_name} threads={self.n_threads} input={_TILE_MODE_NAMES[self.tile_mode]} "
                f"tile={self.mv}x16ch x {self.nr}x{self.nc}px k={self.k} rows/item={self.rows_per_item} "
                f"({self.row_blocks} blocks) kb/item={self.kb_per_group} ({self.k_groups} groups) "
                f"scratch={self.tile_floats * 4 // 1024} KiB/thread")


def choose_conv_blocking(shape, isa="avx512", n_threads=1, relu=False, integer=False):
    """Pick the register block, work decomposition and input handling for one forward conv.
    integer: the call runs the integer kernels (int8, ternary, DFP-16: pyx/kernels/brgemm_int.h),
    whose AVX2 register tile differs from the fp32 one (below)."""
    if isinstance(isa, str):
        isa_name, isa_code = isa, cpu.ISA_CODES[isa]
    else:
        isa_name, isa_code = cpu.ISA_BY_CODE[isa], isa
    s = shape
    P, Q, Cb, Kb = s.P, s.Q, s.Cb, s.Kb
    why = []

    # mv=2 shares each input broadcast between two output-channel blocks: 262 vs 243 GFLOP/s
    # (99% vs 92% of peak) on the res2 3x3 rows, measured with the standalone kernel.
    mv = 2 if Kb >= 2 and isa_name != "scalar" else 1
    # AVX2's integer kernels hold more per output block than the FMA kernels: the 7-bit flavour
    # keeps the block's 2 weight vectors in registers (as VPMADDUBSW's memory operand, through
    # inline asm, they measured slower), the broadcast, the vector of ones that sums its pairs
    # and a product.  mv=2 x 3 pixels needs 18 of the 16 ymm and spilled 3 accumulators in the
    # quad loop; mv=1 x 6 pixels spills one.  The folded int8 ResNet-50 (batch 4, 7-bit codes)
    # ran its convolutions 7% faster with mv=1 (114.9 against 123.0 ms, 2 threads; 8-bit codes
    # 187.1 against 200.2 ms), 6 pixels ahead of 5.
    integer_avx2 = integer and isa_name == "avx2"
    if integer_avx2:
        mv = 1
    budget = cpu.max_accumulators(isa_name) // mv
    why.append(f"mv={mv}: " + ("Kb>=2, each broadcast feeds 2 FMAs (262 vs 243 GFLOP/s on res2 3x3)" if mv == 2
                               else "AVX2 integer kernels: the weights of two blocks and 6 pixels would spill"
                               if integer_avx2 else ("one K block" if Kb < 2 else "scalar path")))
    why.append(f"register budget: {cpu.max_accumulators(isa_name)} accumulators on {isa_name} "
               f"(tiles.h) -> {budget} pixels per call")

    mode = _input_mode(s)
    if mode != TILE_PADDED:
        # Dense rows (1x1: in place, or subsampled when strided/padded): the rows of one item
        # are a contiguous run of pixels, so pixel tiles need not stop at row ends (the 7x7 and
        # 14x14 layers get full 14-pixel tiles).
        nr, nc = 1, budget
        why.append(f"input {_TILE_MODE_NAMES[mode]}: 1x1, pixel tiles run across rows (full tiles on 7x7/14x14)")
    else:
        # Equalized column blocks (LIBXSMM find_rb): ceil(Q/budget) blocks of near-equal width,
        # so no call runs with a handful of accumulators.  Short rows stack rows instead.
        col_blocks = -(-Q // budget)
        nc = -(-Q // col_blocks)
        nr = max(1, min(4, budget // nc, P))
        why.append(f"input padded tile: pad/stride folded into a per-item copy; Q={Q} in {col_blocks} "
                   f"equal column block(s) of <= {nc} (LIBXSMM find_rb), {nr} row(s) per call")
    row_bytes = _tile_row_bytes(s, mode, Cb)

    # Rows per work item: as many as fit the tile budget, a multiple of nr.
    per_item_rows = max(1, _TILE_BYTES // max(1, row_bytes))
    hb = max(nr, (min(per_item_rows, P) // nr) * nr)
    row_blocks = -(-P // hb)
    # Equalize the row blocks (13+13+13+13+4 -> 12+11+11+11+11 rows), and when there are few
    # items, prefer a count that splits evenly over the threads: with static scheduling the
    # slowest thread sets the time.
    for extra in range(row_blocks + 1):
        blocks = row_blocks + extra
        if s.N * blocks % n_threads == 0 or s.N * blocks >= 8 * n_threads or blocks >= P:
            row_blocks = blocks
            break
    hb = _ceil_div(_ceil_div(P, row_blocks), nr) * nr   # equal blocks, a multiple of nr rows
    row_blocks = -(-P // hb)
    # Enough work items to keep every thread busy: first smaller row blocks, then K groups.
    while s.N * row_blocks < n_threads and hb > nr:
        hb = max(nr, hb // 2)
        row_blocks = -(-P // hb)
    k_groups = 1
    while s.N * row_blocks * k_groups < n_threads and k_groups * mv < Kb:
        k_groups += 1
    kb_per_group = -(-Kb // k_groups)
    if kb_per_group > mv and kb_per_group % mv:
        kb_per_group += 1
    k_groups = -(-Kb // kb_per_group)
    why.append(f"rows/item={hb}: input of one item within {_TILE_BYTES // 1024} KiB of L2 (64/192/512 KiB "
               "measured equal), equalized")
    why.append(f"work items: {s.N} image(s) x {k_groups} K group(s) x {row_blocks} row block(s) for "
               f"{n_threads} thread(s), static schedule")

    tile_rows, phase_width, tile_floats = _tile_geometry(s, mode, hb, Cb)
    return ConvPlan(
        why, s=s.geometry(), isa=isa_code, n_threads=n_threads, tile_mode=mode, mv=mv, nr=nr, nc=nc,
        k=s.C if Cb == 1 else CB, rows_per_item=hb, row_blocks=row_blocks,
        kb_per_group=kb_per_group, k_groups=k_groups, tile_rows=tile_rows,
        tile_phase_width=phase_width, tile_floats=tile_floats, relu=int(bool(relu)),
    )


def batch_offsets(shape, plan):
    """Element offsets of every (C block, r, s) A/B block one BRGEMM call reduces over."""
    s = shape
    cb, r, q = np.meshgrid(np.arange(s.Cb), np.arange(s.R), np.arange(s.S), indexing="ij")
    cb, r, q = cb.ravel(), r.ravel(), q.ravel()
    a_offs = ((cb * s.R + r) * s.S + q) * CB * CB
    if plan.tile_mode == TILE_PADDED:
        sw, pw = s.stride_w, plan.tile_phase_width
        b_offs = ((cb * plan.tile_rows + r) * sw + q % sw) * pw * CB + (q // sw) * CB
    elif plan.tile_mode == TILE_SUBSAMPLED:
        b_offs = cb * plan.tile_rows * plan.tile_phase_width * CB
    else:
        b_offs = cb * s.H * s.W * CB
    return np.ascontiguousarray(a_offs, dtype=np.int64), np.ascontiguousarray(b_offs, dtype=np.int64)


@functools.lru_cache(maxsize=256)
def _cached_plan(shape, isa, n_threads, relu, integer=False):
    """Plan (with its C struct) and offset arrays, built once per shape: building the driver's
    arguments on every call cost ~30 us, 10% of a 0.3 ms layer."""
    plan = choose_conv_blocking(shape, isa, n_threads, relu, integer)
    a_offs, b_offs = batch_offsets(shape, plan)
    a_offs.setflags(write=False)
    b_offs.setflags(write=False)
    return plan, a_offs, b_offs


def get_plan(shape, isa=None, n_threads=None, activation=None, precision="fp32"):
    """The cached plan for a ConvShape (what conv2d would run in that precision)."""
    return _cached_plan(shape, cpu.isa_code(isa), cpu.resolve_threads(n_threads), activation == "relu",
                        _integer_kernels(precision, "get_plan"))[0]


def _integer_kernels(precision, fn):
    """Whether a precision's convolutions run the integer kernels (their own AVX2 tile); the
    name is checked as conv2d checks it."""
    return formats.check_precision(precision, fn) in quantized.INTEGER_FORMATS + ("ternary",)


def conv_shape(x_shape, w_shape, stride=1, padding=0):
    """Validate the geometry and return the ConvShape; raises ValueError naming the rule."""
    key = (tuple(x_shape), tuple(w_shape), stride, padding)
    if _plain_ints(key):    # a layer asks again on every call: 7.6 us of checks, 1.8 us cached
        return _cached_conv_shape(*key)
    return _checked_conv_shape(*key)


def _plain_ints(key):
    """Whether key holds only Python ints (nested in tuples): those hash as the same value only
    when equal, so a cached answer is the right one (True == 1 would share 1's entry)."""
    return all(type(v) is int or (type(v) is tuple and _plain_ints(v)) for v in key)


def _checked_conv_shape(x_shape, w_shape, stride, padding):
    fn = "conv2d"
    sh, sw = pair(stride, "stride", fn)
    ph, pw = pair(padding, "padding", fn)
    if sh < 1 or sw < 1:
        raise ValueError(f"{fn}: stride must be >= 1, got ({sh}, {sw})")
    if ph < 0 or pw < 0:
        raise ValueError(f"{fn}: padding must be >= 0, got ({ph}, {pw})")
    n, c, h, w = x_shape
    k, wc, r, s = w_shape
    if min(n, c, h, w) < 1 or min(k, wc, r, s) < 1:
        raise ValueError(f"{fn}: every dimension must be >= 1, got x {tuple(x_shape)}, w {tuple(w_shape)}")
    if wc != c:
        raise ValueError(f"{fn}: input has C={c} channels but weights expect C={wc} (x {tuple(x_shape)}, w {tuple(w_shape)})")
    if r > h + 2 * ph or s > w + 2 * pw:
        raise ValueError(
            f"{fn}: output size would be <= 0: filter {r}x{s} is larger than the padded input "
            f"{h + 2 * ph}x{w + 2 * pw} (x {tuple(x_shape)}, w {tuple(w_shape)}, padding ({ph}, {pw}))"
        )
    # A stride at least as large as the padded input leaves a single output window whatever its
    # value, but the phase-split input tiles and the bwd-data phase loop grow with it (stride 10**9
    # asked for a 179 GiB tile): such strides are replaced by the padded extent, which gives the
    # same single window, so results are exact for any stride.
    sh, sw = min(sh, h + 2 * ph), min(sw, w + 2 * pw)
    shape = ConvShape(n, c, k, h, w, r, s, sh, sw, ph, pw)
    # Absurd paddings make absurd outputs: say how much memory the blocked input, weights and
    # output would take (float64 products, so nothing overflows on the way).
    floats = (float(shape.N) * shape.Cb * (h + 2 * ph) * (w + 2 * pw) + float(shape.Kb) * shape.Cb * r * s * CB
              + float(shape.N) * shape.Kb * shape.P * shape.Q) * CB
    fits_in_memory(4 * floats, lambda: f"this convolution (x {tuple(x_shape)}, w {tuple(w_shape)}, stride ({sh}, "
                                       f"{sw}), padding ({ph}, {pw}), y {(n, k, shape.P, shape.Q)})", fn)
    return shape


_cached_conv_shape = functools.lru_cache(maxsize=512)(_checked_conv_shape)


# ==============================================================================================
# Winograd F(m x m, 3 x 3), stride 1
# ==============================================================================================
ALGORITHMS = ("auto", "direct", "winograd2", "winograd4")
_ALPHA = {"winograd2": 4, "winograd4": 6}


@dataclass(frozen=True, eq=False)
class WinogradWeights:
    """3x3 weights transformed once for Winograd: data[K/16][alpha^2][C/16][16c][16k].
    `finite`: the weights held no Inf/NaN (else 'auto' runs such weights by the direct algorithm)."""

    data: np.ndarray
    shape: tuple   # logical (K, C, 3, 3)
    alpha: int
    finite: bool = True

    def __post_init__(self):
        # conv2d hands data to the Winograd driver sized by shape and alpha: check them against
        # each other once, here (a stale or hand-made object must not reach the kernel).
        fn = "WinogradWeights"
        if not isinstance(self.shape, tuple) or len(self.shape) != 4:
            raise ValueError(f"{fn}: shape must be a logical (K, C, 3, 3) tuple of ints, got {self.shape!r}")
        shape = tuple(positive_int(v, f"shape[{i}]", fn) for i, v in enumerate(self.shape))
        if shape[2:] != (3, 3):
            raise ValueError(f"{fn}: Winograd F(m, 3x3) weights are 3x3, got shape {shape}")
        alpha = positive_int(self.alpha, "alpha", fn)
        if alpha not in _ALPHA.values():
            raise ValueError(f"{fn}: alpha must be 4 (winograd2) or 6 (winograd4), got {alpha}")
        if not isinstance(self.finite, (bool, np.bool_)):
            raise TypeError(f"{fn}: finite must be True or False, got {self.finite!r}")
        if not isinstance(self.data, np.ndarray):
            raise TypeError(f"{fn}: data must be a numpy array, got {type(self.data).__name__}")
        if self.data.dtype != np.float32:
            raise TypeError(f"{fn}: data must be float32, got {self.data.dtype}")
        K, C = shape[:2]
        expected = (n_blocks(K), alpha * alpha, n_blocks(C), CB, CB)
        if tuple(self.data.shape) != expected or not self.data.flags.c_contiguous:
            raise ValueError(f"{fn}: data must be a C-contiguous array of shape {expected} for weights {shape} "
                             f"and alpha={alpha}, got {tuple(self.data.shape)}; use dlcpu.prepare_winograd")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "finite", bool(self.finite))

    @property
    def algorithm(self):
        return "winograd2" if self.alpha == 4 else "winograd4"


def prepare_winograd(w, algorithm="winograd4", *, n_threads=None):
    """Transform 3x3 weights (KCRS array or weight BlockedTensor) for conv2d(..., algorithm=...):
    do it once per weight tensor, as a oneDNN user creates a primitive once."""
    if algorithm not in _ALPHA:
        raise ValueError(f"prepare_winograd: algorithm must be 'winograd2' or 'winograd4', got {algorithm!r}")
    wb, w_shape = _operand(w, "weight", "prepare_winograd", "w")
    if w_shape[2:] != (3, 3):
        raise ValueError(f"prepare_winograd: Winograd F(m, 3x3) needs 3x3 filters, got w {tuple(w_shape)}")
    n_threads = cpu.resolve_threads(n_threads)
    if wb is None:
        wb = block_weights(w, n_threads)
    kb, cb = wb.data.shape[:2]
    alpha = _ALPHA[algorithm]
    u = np.empty((kb, alpha * alpha, cb, CB, CB), dtype=np.float32)
    nonfinite = _wino.winograd_filter_transform(wb.data.reshape(-1), u.reshape(-1), kb, cb, alpha, n_threads)
    return WinogradWeights(u, tuple(w_shape), alpha, finite=nonfinite == 0)


class WinogradPlan(Plan, struct=_wino.WinogradPlanStruct, family="winograd"):
    """How one Winograd F(m x m, 3x3) convolution is cut into transforms and BRGEMM calls (struct
    dlcpu_wino_plan_t; see choose_winograd_blocking)."""

    __slots__ = ()

    def summary(self):
        m = self.alpha - 2
        return (f"F({m}x{m},3x3) isa={self.isa_name} threads={self.n_threads} tiles={self.tiles_h}x{self.tiles_w}/image, "
                f"{self.tiles_per_item} tiles/item, kb/item={self.kb_per_item} ({self.k_groups} groups), "
                f"{self.alpha ** 2} BRGEMMs of {self.mv}x16ch x <= {self.nc} tiles")


# Most V scratch (alpha^2 * C * 64 B per tile) one Winograd work item may use: about L2 (1 MiB
# on Zen 5) plus what the L3 serves without stalls; 0.25 / 1 / 2 MiB measured within noise of
# each other on res3b/res4b_branch2b, so the larger value, which cuts U re-reads, is used.
_WINO_V_BYTES = 2 * 1024 * 1024


def choose_winograd_blocking(shape, alpha, isa="avx512", n_threads=1, relu=False):
    isa_name = isa if isinstance(isa, str) else cpu.ISA_BY_CODE[isa]
    s = shape
    m = alpha - 2
    mv = 2 if s.Kb >= 2 and isa_name != "scalar" else 1
    nc = cpu.max_accumulators(isa_name) // mv
    why = [(f"mv={mv}, nc={nc}: the direct kernels' register budget ({cpu.max_accumulators(isa_name)} "
           f"accumulators on {isa_name}, tiles.h), tiles as pixels")]
    tiles_h, tiles_w = -(-s.P // m), -(-s.Q // m)
    total = s.N * tiles_h * tiles_w
    per_tile = alpha * alpha * s.Cb * CB * 4
    # Items are (tile block, K group) pairs.  Each item streams U (alpha^2/9 times the weights)
    # for its K blocks and transforms the input of its tiles, so pick the split with the least
    # traffic, tile_blocks * |U| + k_groups * |V|, among those whose V scratch fits the budget
    # and whose items divide evenly over the threads (static schedule).  Measured: 3 items on
    # 2 threads ran res4b_branch2b at 1.08x direct instead of 1.8x; splitting tiles rather than
    # K on res5b_branch2b left both threads streaming all of its 37 MB of U.
    u_bytes = alpha * alpha * s.Kb * s.Cb * CB * CB * 4
    v_bytes = total * per_tile
    best = None
    for tile_blocks in range(1, total + 1):
        t = -(-total // tile_blocks)
        if t * per_tile > _WINO_V_BYTES and t > nc:
            continue
        for k_groups in range(1, max(1, s.Kb // mv) + 1):
            items = tile_blocks * k_groups
            if items % n_threads and items < 4 * n_threads:
                continue
            cost = tile_blocks * u_bytes + k_groups * v_bytes
            if best is None or cost < best[0]:
                best = (cost, t, k_groups)
        if best is not None and tile_blocks * u_bytes > best[0]:
            break
    if best is None:  # nothing divides evenly (tiny problems): one K group, nc-tile blocks
        best = (0, min(total, nc), 1)
        why.append("split: no split divides evenly over the threads; one K group, nc-tile blocks")
    else:
        why.append(f"split: least U+V traffic among splits whose V scratch fits {_WINO_V_BYTES // 2**20} MiB "
                   "and whose items divide evenly (3 items on 2 threads measured 1.08x instead of 1.8x)")
    _, t, k_groups = best
    kb_per_item = -(-s.Kb // k_groups)
    if kb_per_item > mv and kb_per_item % mv:
        kb_per_item += 1
    k_groups = -(-s.Kb // kb_per_item)
    why.append(f"work items: {-(-total // t)} tile block(s) of {t} x {k_groups} K group(s) for {n_threads} thread(s)")
    return WinogradPlan(why, s=s.geometry(), isa=cpu.ISA_CODES[isa_name], n_threads=n_threads, alpha=alpha, mv=mv,
                        nc=nc, k=s.C if s.Cb == 1 else CB, relu=int(bool(relu)), tiles_h=tiles_h, tiles_w=tiles_w,
                        tiles_per_item=t, kb_per_item=kb_per_item, k_groups=k_groups)


@functools.lru_cache(maxsize=256)
def _cached_winograd_plan(shape, alpha, isa, n_threads, relu):
    return choose_winograd_blocking(shape, alpha, isa, n_threads, relu)


def _winograd_into(x_data, u, bias_p, y, shape, isa_code, n_threads, relu):
    """Run the Winograd driver; returns the number of input patches that held a non-finite value."""
    plan = _cached_winograd_plan(shape, u.alpha, isa_code, n_threads, relu)
    errors, nonfinite = _wino.conv2d_winograd_f32(x_data.reshape(-1), u.data.reshape(-1), bias_p, y.reshape(-1),
                                                  plan.c, n_threads)
    if errors:
        raise MemoryError(f"conv2d: could not allocate the Winograd scratch of {errors} work item(s) ({plan.summary()})")
    return nonfinite


def winograd_applies(shape):
    """Winograd F(m, 3x3) covers 3x3, stride-1 convolutions (any padding)."""
    return shape.R == 3 and shape.S == 3 and shape.stride_h == 1 and shape.stride_w == 1


def choose_algorithm(shape, isa_name):
    """'auto': the direct kernels everywhere, except where measurements said Winograd F(4x4)
    wins (see the rule's comment).  conv2d falls back to direct for a call whose input or
    weights hold Inf/NaN, so 'auto' propagates them exactly as direct convolution does."""
    if not winograd_applies(shape) or isa_name == "scalar":
        return "direct"
    return "winograd4" if _winograd4_wins(shape) else "direct"


def _operand(t, kind, fn, name, precision="fp32", allowed=None):
    """(BlockedTensor or None, logical shape) for an array/BlockedTensor argument; a bf16, int8 or
    dfp16 BlockedTensor only when the call runs in that precision (or the formats `allowed`)."""
    layout = "NCHW" if kind == "activation" else "KCRS"
    if isinstance(t, BlockedTensor):
        if allowed is None:
            allowed = ("fp32", precision) if precision != "fp32" else ("fp32",)
        if t.kind != kind or t.precision not in allowed:
            hint = "" if kind == "activation" else " (dlcpu.block_weights)"
            raise TypeError(f"{fn}: {name} must be a {' or '.join(allowed)} {kind} BlockedTensor{hint} for "
                            f"precision={precision!r}, got a {t.precision} {t.kind} one with {t.dtype} data")
        return t, tuple(t.shape)
    if not isinstance(t, np.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy array or a BlockedTensor, got {type(t).__name__}")
    if t.ndim != 4:
        raise ValueError(f"{fn}: {name} must be 4-d {layout}, got shape {t.shape}")
    return None, tuple(t.shape)


def _forward_into(x_data, w_data, bias_p, y, shape, isa_code, n_threads, relu, native=False, integer=None, fill=0,
                  residual=None, residual_scale=0.0):
    """Run the planned forward kernel on blocked buffers (fp32; bf16 x and VNNI-paired bf16 w,
    native: VDPBF16PS; or integer operands with their call description, dlcpu.quantized); y
    (fp32, or u8 codes) has shape (N, Kb, P, Q, 16); residual: u8 codes of y's shape added in
    the epilogue times residual_scale."""
    plan, a_offs, b_offs = _cached_plan(shape, isa_code, n_threads, relu, integer is not None)
    errors = _direct.conv2d_forward(x_data.reshape(-1), w_data.reshape(-1), bias_p, y.reshape(-1),
                                    plan.c, a_offs, b_offs, n_threads, native, integer, fill,
                                    None if residual is None else residual.reshape(-1), residual_scale)
    if errors:
        raise MemoryError(f"conv: could not allocate the per-thread input tile of {errors} work item(s) "
                          f"({plan.summary()})")


_NO_BIAS = np.empty(0, dtype=np.float32)


#: conv2d's precisions so far
CONV_PRECISIONS = formats.KERNEL_FORMATS + ("ternary",)
#: conv2d_backward's precisions so far (int8 and ternary are inference formats)
BACKWARD_PRECISIONS = ("fp32", "bf16", "dfp16")
#: the precisions that run the direct algorithm only
_DIRECT_ONLY = ("bf16",) + quantized.INTEGER_FORMATS


def conv2d(x, w, bias=None, stride=1, padding=0, activation=None, *, algorithm="auto",
           n_threads=None, isa=None, out=None, precision="fp32", out_scale=None, out_bits=8, residual=None,
           levels=None):
    """2-D convolution (cross-correlation, as PyTorch and oneDNN define it) in fp32, bf16, int8,
    DFP-16 or with ternary weights.

    x: (N, C, H, W) float32 array, or an activation BlockedTensor
    w: (K, C, R, S) float32 array, or a weight BlockedTensor (dlcpu.block_weights)
    bias: None or (K,) float32; activation: None or 'relu' (both fused into the kernel epilogue)
    stride, padding: int or (h, w) pair.  Returns NCHW for array input, a BlockedTensor for
    blocked input.  Non-contiguous arrays are copied; other dtypes are refused (convert first).
    `out` (blocked path only) reuses a BlockedTensor of the right shape for the result.
    algorithm: 'direct', 'winograd2' / 'winograd4' (F(2x2,3x3) / F(4x4,3x3), 3x3 stride 1 only;
    w may be a WinogradWeights from prepare_winograd, else it is transformed on every call) or
    'auto' (direct, or Winograd F(4x4) where a measured rule says it is faster).
    Non-finite values: 'direct' and 'auto' propagate Inf/NaN as IEEE arithmetic says (as PyTorch
    does); when 'auto' chose Winograd and the input or weights hold an Inf or NaN, the call is
    recomputed by the direct algorithm, so 'auto' gives direct's result exactly there.  An explicit
    'winograd2'/'winograd4' (or prepared weights) has no such fallback: like every Winograd
    implementation, its transforms may turn an Inf into NaN (Inf - Inf) across the Inf's tiles.
    precision='bf16': x and w are rounded to bf16 (or arrive as bf16 BlockedTensors: to_bf16_blocked,
    block_weights_bf16, converted once and reused), products are summed in fp32 and the output is
    fp32 (VDPBF16PS where the CPU has avx512_bf16); the direct algorithm only.
    precision='int8' / 'dfp16': x and w are quantized (dlcpu.quantized: u8 activations with a
    per-tensor scale and s8 weights with per-output-channel scales; DFP-16 int16 mantissas with
    shared exponents), or arrive quantized as BlockedTensors (to_int8_blocked, block_weights_int8,
    to_dfp16_blocked, block_weights_dfp16: calibrated once, reused); the products are summed in
    int32 (VPDPBUSD / VPDPWSSD where the CPU has avx512_vnni) in chains that provably cannot
    overflow, and the output is fp32; the direct algorithm only.  NaN/Inf in a tensor being
    quantized is refused (its scale or exponent would be undefined).  out_scale (int8, blocked
    input only): the kernels' epilogue writes u8 codes of that scale (zero point 0 after a ReLU,
    else 128), a u8 activation BlockedTensor -- the next int8 layer's input, one byte per value;
    `out` may then be such a tensor to reuse.  out_bits=7 writes 7-bit codes (0..127, zero point
    0 after a ReLU, else 64), as to_int8_blocked(bits=7) does.  residual (with out_scale): a u8
    activation BlockedTensor of the output's shape added before the activation and the clamp --
    relu(conv + bias + residual), a ResNet block's end, in the epilogue (oneDNN's sum post-op),
    its codes weighted by s_r / out_scale.  The scales are folded as oneDNN folds them: code =
    clamp(rint(float(sum - comp) * m[k] + b'[k]), 0, 255 or 127) in float32, ties to even, with
    m = s_x*s_w/out_scale and b' = bias/out_scale + zero point each rounded once from float64,
    which is the float64 code of the exact sum to within a rounding of two float32 values.
    precision='ternary': w is a dlcpu.precision.TernaryWeights (ternarize(w, block=N,
    residual=r)) or its quantized.block_ternary_weights form, prepared once; x is quantized to
    u8 as for int8 (or arrives so).  Each block of N input channels sums its +-1 codes times u8
    activations in int32 and takes its alpha once (VPDPBUSD on the codes, VPMADDUBSW pairs on
    AVX2); `levels` (default all) runs the first 1 + r' residual levels, switching the least
    important off.  out_scale, out_bits, residual and out work as for int8, with multipliers
    alpha * s_x / out_scale.
    """
    precision = formats.check_precision(precision, "conv2d")
    if precision == "ternary":
        return _ternary_conv2d(x, w, bias, stride, padding, activation, algorithm, n_threads, isa, levels, out,
                               out_scale, out_bits, residual)
    if levels is not None:
        raise ValueError(f"conv2d: levels= chooses the residual levels of ternary weights, not of {precision}")
    if precision not in CONV_PRECISIONS:
        raise ValueError(f"conv2d: precision={precision!r} has no convolution kernel yet; conv2d runs "
                         f"{' and '.join(CONV_PRECISIONS)}")
    if activation not in (None, "relu"):
        raise ValueError(f"conv2d: activation must be None or 'relu', got {activation!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"conv2d: algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    xb, x_shape = _operand(x, "activation", "conv2d", "x", precision)
    prepared = w if isinstance(w, WinogradWeights) else None
    if precision in _DIRECT_ONLY and (prepared is not None or algorithm not in ("auto", "direct")):
        raise ValueError(f"conv2d: precision={precision!r} runs the direct algorithm only, got algorithm={algorithm!r}"
                         + (" and WinogradWeights" if prepared is not None else ""))
    if prepared is not None:
        wb, w_shape = None, prepared.shape
        if algorithm == "auto":
            algorithm = prepared.algorithm
        elif algorithm != prepared.algorithm:
            raise ValueError(f"conv2d: weights were prepared for {prepared.algorithm}, not {algorithm}")
    else:
        wb, w_shape = _operand(w, "weight", "conv2d", "w", precision)
    blocked_in = xb is not None
    shape = conv_shape(x_shape, w_shape, stride, padding)
    if bias is not None:
        if not isinstance(bias, np.ndarray):
            raise TypeError(f"conv2d: bias must be a numpy array, got {type(bias).__name__}")
        if bias.shape != (shape.K,):
            raise ValueError(f"conv2d: bias must have shape ({shape.K},) for K={shape.K} output channels, got {bias.shape}")
        if bias.dtype != np.float32:
            raise TypeError(f"conv2d: bias must be float32, got {bias.dtype}")
    n_threads = cpu.resolve_threads(n_threads)
    isa_code = cpu.isa_code(isa)
    out_shape, out_dtype, out_scale, out_zero, out_bits = _output_options(
        out, out_scale, out_bits, residual, activation, precision, blocked_in, shape,
        {"x": None if xb is None else xb.data, "w": wb.data if wb is not None else None,
         "the Winograd weights": prepared.data if prepared is not None else None, "bias": bias})
    if xb is None:
        xb = to_blocked(x, n_threads)  # validates dtype/contiguity of x
    if precision in quantized.INTEGER_FORMATS:
        xq, wq = quantized.quantize_operands(precision, xb, wb, w, n_threads=n_threads, isa=cpu.ISA_BY_CODE[isa_code])
        integer, fill = quantized.integer_call(precision, xq, wq, shape.Cb * shape.R * shape.S, shape.Kb * CB,
                                               out_scale, cpu.ISA_BY_CODE[isa_code], out_bits)
    residual_scale = 0.0
    if out_scale is not None:
        bias_p, residual_scale = _code_bias(bias, shape.Kb * CB, out_scale, out_zero, residual)
    elif bias is None:
        bias_p = _NO_BIAS
    else:
        bias_p = np.zeros(shape.Kb * CB, dtype=np.float32)
        bias_p[: shape.K] = bias
    y = out.data if out is not None else np.empty(out_shape, dtype=out_dtype)
    if precision == "bf16":
        x16 = xb if xb.precision == "bf16" else to_bf16_blocked(xb, n_threads)
        native = formats.native_bf16(cpu.ISA_BY_CODE[isa_code])
        if wb is not None and wb.precision == "bf16":
            w16 = wb.data
        else:   # fp32 (master) weights: rounded for this call into a reused buffer
            wb = wb if wb is not None else block_weights(w, n_threads)
            w16 = scratch("conv.fwd_weights_bf16", wb.data.shape, np.uint16)
            # the kernel itself: wb's data is a checked float32 block array and w16 a fresh view,
            # so the public conversion's checks have nothing left to find (they cost 9 of a
            # 34 us forward on the digits CNN's 16 -> 16 layer at batch 1, 2 threads, AVX2)
            _convert.f32_to_bf16_vnni(wb.data.reshape(-1), w16.reshape(-1), isa_code, native, n_threads)
        _forward_into(x16.data, w16, bias_p, y, shape, isa_code, n_threads, activation == "relu", native)
        return _conv_result(y, shape, out, None, None, 8, blocked_in, n_threads)
    if precision in quantized.INTEGER_FORMATS:
        _forward_into(xq.data, quantized.kernel_view(wq), bias_p, y, shape, isa_code, n_threads, activation == "relu",
                      quantized.native_vnni(cpu.ISA_BY_CODE[isa_code]), integer, fill,
                      None if residual is None else residual.data, residual_scale)
        return _conv_result(y, shape, out, out_scale, out_zero, out_bits, blocked_in, n_threads)
    auto = algorithm == "auto"
    if auto:
        algorithm = choose_algorithm(shape, cpu.ISA_BY_CODE[isa_code])
    if algorithm != "direct":
        if not winograd_applies(shape):
            raise ValueError(f"conv2d: {algorithm} needs a 3x3 filter and stride 1, got w {tuple(w_shape)}, "
                             f"stride ({shape.stride_h}, {shape.stride_w})")
        if prepared is None:
            prepared = prepare_winograd(wb if wb is not None else w, algorithm, n_threads=n_threads)
            if auto and not prepared.finite:   # Inf/NaN weights: direct's IEEE propagation
                algorithm, prepared = "direct", None
    if algorithm == "direct" and wb is None and prepared is None:
        wb = block_weights(w, n_threads)
    if algorithm == "direct":
        if wb is None:
            raise ValueError("conv2d: WinogradWeights cannot run the direct algorithm; pass the weights themselves")
        _forward_into(xb.data, wb.data, bias_p, y, shape, isa_code, n_threads, activation == "relu")
    elif _winograd_into(xb.data, prepared, bias_p, y, shape, isa_code, n_threads, activation == "relu") and auto:
        # Non-finite input under 'auto': recompute by the direct algorithm (see the docstring).
        _forward_into(xb.data, wb.data if wb is not None else block_weights(w, n_threads).data, bias_p, y, shape,
                      isa_code, n_threads, activation == "relu")
    return _conv_result(y, shape, out, None, None, 8, blocked_in, n_threads)


def _ternary_conv2d(x, w, bias, stride, padding, activation, algorithm, n_threads, isa, levels, out, out_scale,
                    out_bits, residual):
    """conv2d(precision='ternary'): see conv2d."""
    fn = "conv2d"
    if algorithm not in ("auto", "direct"):
        raise ValueError(f"{fn}: precision='ternary' runs the direct algorithm only, got algorithm={algorithm!r}")
    if activation not in (None, "relu"):
        raise ValueError(f"{fn}: activation must be None or 'relu', got {activation!r}")
    if isinstance(w, formats.TernaryWeights):
        w = quantized.block_ternary_weights(w)
    if not isinstance(w, quantized.TernaryBlocked):
        raise TypeError(f"{fn}: precision='ternary' takes w as dlcpu.precision.TernaryWeights (ternarize(w, block=N, "
                        f"residual=r)) or quantized.block_ternary_weights of them, got {type(w).__name__}")
    if levels is None:
        levels = w.levels
    levels = positive_int(levels, "levels", fn)
    if levels > w.levels:
        raise ValueError(f"{fn}: levels must be <= {w.levels} (1 base + {w.levels - 1} residual), got {levels}")
    xb, x_shape = _operand(x, "activation", fn, "x", "int8")
    blocked_in = xb is not None
    shape = conv_shape(x_shape, w.shape, stride, padding)
    bad_bias = bias is not None and (not isinstance(bias, np.ndarray) or bias.dtype != np.float32
                                     or bias.shape != (shape.K,))
    if bad_bias:
        raise ValueError(f"{fn}: bias must be a float32 array of shape ({shape.K},), got "
                         f"{getattr(bias, 'dtype', type(bias).__name__)} {getattr(bias, 'shape', '')}")
    n_threads = cpu.resolve_threads(n_threads)
    isa_code = cpu.isa_code(isa)
    isa_name = cpu.ISA_BY_CODE[isa_code]
    out_shape, out_dtype, out_scale, out_zero, out_bits = _output_options(
        out, out_scale, out_bits, residual, activation, "ternary", blocked_in, shape,
        {"x": None if xb is None else xb.data, "w": w.codes, "the alphas": w.alphas, "bias": bias})
    if xb is None:
        xb = to_blocked(x, n_threads)
    xq = xb if xb.precision == "int8" else quantized.to_int8_blocked(xb, n_threads=n_threads, isa=isa_name)
    integer, fill, shift = quantized.ternary_call(xq, w, levels, shape.Kb * CB, isa_name, out_scale, out_bits)
    if bias is not None:
        shift[: shape.K] += bias
    residual_scale = 0.0
    if out_scale is not None:
        bias_p, residual_scale = _code_bias(shift, shape.Kb * CB, out_scale, out_zero, residual)
    else:
        bias_p = shift.astype(np.float32)
    plan, a_offs, b_offs = _cached_plan(shape, isa_code, n_threads, activation == "relu", True)
    # batch order (level, r, s, channel block): the channel blocks of one tap are adjacent, so a
    # chain of N > 16 channels is N / 16 consecutive blocks with the same alpha
    per_level = np.arange(shape.Cb * shape.R * shape.S).reshape(shape.Cb, shape.R, shape.S).transpose(1, 2, 0).ravel()
    level_stride = shape.Kb * shape.Cb * shape.R * shape.S * CB * CB
    a_t = np.concatenate([a_offs[per_level] + lvl * level_stride for lvl in range(levels)])
    b_t = np.tile(b_offs[per_level], levels)
    y = out.data if out is not None else np.empty(out_shape, out_dtype)
    errors = _direct.conv2d_forward(xq.data.reshape(-1), w.codes.reshape(-1).view(np.uint8), bias_p, y.reshape(-1),
                                    plan.c, a_t, b_t, n_threads, quantized.native_vnni(isa_name), integer, fill,
                                    None if residual is None else residual.data.reshape(-1), residual_scale)
    if errors:
        raise MemoryError(f"{fn}: could not allocate the per-thread input tile of {errors} work item(s)")
    return _conv_result(y, shape, out, out_scale, out_zero, out_bits, blocked_in, n_threads)


def _output_options(out, out_scale, out_bits, residual, activation, precision, blocked_in, shape, operands):
    """conv2d's out / out_scale / out_bits / residual checked against the call: (the output's data
    shape, its dtype, out_scale as float32 or None, the codes' zero point or None, out_bits).
    operands: name -> array that out must not overlap."""
    out_shape = (shape.N, shape.Kb, shape.P, shape.Q, CB)
    y_shape = (shape.N, shape.K, shape.P, shape.Q)
    out_dtype, out_zero = np.float32, None
    if out_scale is not None:
        out_scale = _out_scale(out_scale, precision, blocked_in)
        out_bits = quantized.check_activation_bits(out_bits, "conv2d", "out_bits")
        # zero point 0 after a ReLU (whose clamp at code 0 it then is), else the signed one
        out_zero = formats.u8_code_range(out_bits, activation == "relu")[1]
        out_dtype = np.uint8
    elif out_bits != 8 or residual is not None:
        raise ValueError("conv2d: out_bits and residual go with out_scale (u8 output codes); without out_scale "
                         f"the output is fp32, got out_bits={out_bits!r}, residual={type(residual).__name__}")
    if residual is not None:
        _check_residual(residual, y_shape, out_shape)
    if out is None:
        return out_shape, out_dtype, out_scale, out_zero, out_bits
    if not blocked_in:
        raise ValueError("conv2d: out= is only for the blocked path")
    kind = np.dtype(out_dtype).name
    if not isinstance(out, BlockedTensor):
        raise TypeError(f"conv2d: out must be a {kind} activation BlockedTensor, got {type(out).__name__}")
    if (out.kind != "activation" or out.data.shape != out_shape or tuple(out.shape) != y_shape
            or out.dtype != out_dtype):
        raise ValueError(f"conv2d: out must be a {kind} activation BlockedTensor of shape {y_shape} (data shape "
                         f"{out_shape}), got kind {out.kind!r}, shape {tuple(out.shape)}, data shape "
                         f"{tuple(out.data.shape)}, {out.dtype}")
    if not out.data.flags.writeable:
        raise ValueError("conv2d: out is written in place and must be writeable (its data is read-only)")
    want = (out_scale, out_zero) if out_scale is not None else None
    if want is not None and out.scale != want:
        raise ValueError(f"conv2d: out holds u8 values of scale {out.scale}, this call writes {want}; make out with "
                         "the same out_scale and activation")
    if want is not None and out.code_bound is not None and out_bits != 7:
        raise ValueError(f"conv2d: out holds 7-bit codes (code_bound {out.code_bound}), this call writes {out_bits}-bit "
                         "ones; make out with the same out_bits")
    not_aliased(out.data, {**operands, "residual": None if residual is None else residual.data}, "conv2d")
    return out_shape, out_dtype, out_scale, out_zero, out_bits


def _code_bias(bias, k_pad, out_scale, out_zero, residual):
    """(bias in code units with the zero points inside, the residual's weight) of a call writing
    u8 codes: a residual's zero point z_r joins the bias, + (s_r / out_scale) * (r - z_r)."""
    if residual is None:
        return quantized.output_code_bias(bias, k_pad, out_scale, out_zero), 0.0
    ratio = np.float64(residual.scale[0]) / np.float64(out_scale)
    residual_scale = float(np.float32(ratio))
    if not np.finfo(np.float32).tiny <= residual_scale <= np.finfo(np.float32).max:
        raise ValueError(f"conv2d: the residual's scale {residual.scale[0]} over out_scale={out_scale} is outside "
                         "float32's normal range")
    return quantized.output_code_bias(bias, k_pad, out_scale, out_zero - ratio * residual.scale[1]), residual_scale


def _conv_result(y, shape, out, out_scale, out_zero, out_bits, blocked_in, n_threads):
    """What conv2d returns for its output data y: `out` when given; u8 codes as an int8 activation
    BlockedTensor (7-bit ones say so: code_bound); fp32 as a BlockedTensor on the blocked path,
    else NCHW."""
    if out is not None:       # (the blocked path only: _output_options)
        return out
    y_shape = (shape.N, shape.K, shape.P, shape.Q)
    if out_scale is not None:
        return BlockedTensor(y, y_shape, "activation", scale=(out_scale, out_zero), precision="int8",
                             _code_bound=quantized.code_bound_of(out_bits))
    yb = BlockedTensor(y, y_shape, "activation")
    return yb if blocked_in else from_blocked(yb, n_threads)


def _check_residual(residual, y_shape, data_shape):
    """conv2d's residual: a u8 activation BlockedTensor of the output's shape."""
    if not isinstance(residual, BlockedTensor) or residual.precision != "int8" or residual.kind != "activation":
        raise TypeError(f"conv2d: residual must be a u8 activation BlockedTensor (dlcpu.quantized.to_int8_blocked), "
                        f"got {type(residual).__name__}"
                        + (f" of kind {residual.kind!r} and precision {residual.precision!r}"
                           if isinstance(residual, BlockedTensor) else ""))
    if tuple(residual.shape) != y_shape or residual.data.shape != data_shape:
        raise ValueError(f"conv2d: residual must have the output's shape {y_shape} (data shape {data_shape}), got "
                         f"{tuple(residual.shape)} (data shape {tuple(residual.data.shape)})")
    if not residual.data.flags.c_contiguous:
        raise ValueError("conv2d: residual's data must be C-contiguous")


def _out_scale(out_scale, precision, blocked_in):
    """conv2d's out_scale as a positive finite float32 value."""
    if precision not in ("int8", "ternary"):
        raise ValueError(f"conv2d: out_scale requantizes an int8 or ternary convolution's output, not a {precision} "
                         "one")
    if not blocked_in:
        raise ValueError("conv2d: out_scale gives a u8 BlockedTensor, so x must be a BlockedTensor (blocked path)")
    if isinstance(out_scale, (bool, np.bool_)) or not isinstance(out_scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"conv2d: out_scale must be a positive real number, got {out_scale!r}")
    with np.errstate(over="ignore", divide="ignore"):        # (refused below, without a warning)
        value = float(np.float32(out_scale))
        inverse_finite = value > 0 and np.isfinite(np.float32(1.0) / np.float32(value))
    if not (np.isfinite(value) and inverse_finite):
        raise ValueError(f"conv2d: out_scale must be finite and > 0 (with a finite float32 inverse), got {out_scale!r}")
    return value


# ==============================================================================================
# Backward passes
# ==============================================================================================
class WeightGradPlan(Plan, struct=_wu.WeightGradPlanStruct, family="weight update"):
    """How the weight update is cut into transposed-B BRGEMM calls (struct dlcpu_wu_plan_t,
    pyx/conv_wu.pyx: wu_item).

    Items are (K group, C group) pairs; one item reduces its dW blocks over every image and
    output row, `rows_per_block` rows (one call's batch) at a time.  With image_splits > 1 a
    work unit is (item, range of images): the first range reduces into dW itself, the others
    into zeroed copies that are added to dW in range order at the end."""

    __slots__ = ()

    def summary(self):
        return (f"isa={self.isa_name} threads={self.n_threads} input={_TILE_MODE_NAMES[self.tile_mode]} "
                f"tile<= {self.nr} taps x {self.nc} dW rows (max_acc {self.max_acc}) "
                f"loop={'K inside C' if self.k_inner else 'C inside K'} rows/call={self.rows_per_block} "
                f"({self.row_blocks} blocks) images/call={self.images_per_block} "
                f"items={self.k_groups} K x {self.c_groups} C groups x {self.image_splits} image range(s) "
                f"scratch={self.tile_floats * self.images_per_block * 4 // 1024} KiB/thread")


# Pixels one weight-update call should reduce over (see images_per_block).
_WU_PIXELS_PER_CALL = 256
# L2 bytes for the weight update's re-read operand, sized for the whole problem (see
# choose_weight_grad_blocking).  192, 384 and 768 KiB measured within this shared machine's
# noise (+-15%) on the ResNet-50 layers at 2 threads; 384 KiB is the middle of that range.
_WU_REREAD_BYTES = 384 * 1024
# Weight updates with fewer dW blocks (Kb * Cb) than this split their images into ranges
# (image_splits): at least this many work units (4 threads' worth), when the batch has that many
# blocks of images_per_block images.
_WU_SPLIT_BELOW_BLOCKS = 4


def choose_weight_grad_blocking(shape, isa="avx512", n_threads=1):
    """Pick the work split, loop order and row blocking of one weight update (WeightGradPlan)."""
    isa_code = cpu.ISA_CODES[isa] if isinstance(isa, str) else isa
    s = shape
    mode = _input_mode(s)
    max_acc = cpu.max_accumulators(isa_code)
    # A call holds up to 16 dW rows (one input-channel block) and stacks up to 4 taps, within
    # the register budget: 4 taps x 3 channels keep 12 accumulators busy on C=3 first layers.
    nc = min(_TC["brt_max_nc"], max_acc)
    nr = _TC["br_max_nr"]
    why = [(f"tile: up to {nr} taps x {nc} dW rows within {max_acc} accumulators ({cpu.ISA_BY_CODE[isa_code]}, "
           "tiles.h); taps stack when C < 16")]
    # Split K first (every item then packs the input of its C group once per row block and
    # reuses it for all its K blocks), then C, until every thread has an item.
    k_groups = min(s.Kb, n_threads)
    c_groups = 1
    while k_groups * c_groups < n_threads and c_groups < s.Cb:
        c_groups += 1
    kb_per_item = -(-s.Kb // k_groups)
    k_groups = -(-s.Kb // kb_per_item)
    cb_per_item = -(-s.Cb // c_groups)
    c_groups = -(-s.Cb // cb_per_item)
    # Loop order inside an item: the operand whose blocks are fewer stays in L2 and is re-read
    # for every block of the other, which streams through L1 once.  K inner when there are
    # fewer K blocks than C blocks (res5b_branch2a: 32 K vs 128 C blocks, 279 -> 386 GFLOP/s
    # at 2 threads).  The row blocking below is sized for the whole problem (one item), never
    # for the thread split: it fixes how each dW element's sum is grouped, and that must not
    # depend on the thread count.
    k_inner = s.Kb < s.Cb
    if k_inner:
        row_bytes = s.Kb * s.Q * CB * 4               # dy rows of every K block
    else:
        row_bytes = _tile_row_bytes(s, mode, s.Cb)    # input tile rows of every C block
    # One call reduces rows_per_block output rows: long enough that the dW tile's load and
    # store vanish (>= ~100 pixels), short enough that the re-read operand stays in L2
    # (with a thread's share of the blocks it is smaller still).
    hb = max(1, min(s.P, _WU_REREAD_BYTES // max(1, row_bytes), -(-128 // s.Q) * 4))
    row_blocks = -(-s.P // hb)
    hb = -(-s.P // row_blocks)
    # Small images (res5: 7x7 = 49 pixels) put several images in one call's batch: measured on
    # res5b_branch2b at 2 threads, 352 -> 404 GFLOP/s with 4 images.
    images = 1
    if row_blocks == 1:
        images = min(s.N, max(1, _WU_PIXELS_PER_CALL // (s.P * s.Q)),
                     max(1, _WU_REREAD_BYTES // max(1, row_bytes * hb)))
    why.append(f"work items: {k_groups} K group(s) x {c_groups} C group(s) for {n_threads} thread(s): K split "
               "first, so each item packs its input once per row block")
    why.append("loop order: " + (f"K inside C (Kb={s.Kb} < Cb={s.Cb}: dy rows stay in L2; res5b_branch2a "
                                 "279 -> 386 GFLOP/s)" if k_inner else
                                 f"C inside K (Cb={s.Cb} <= Kb={s.Kb}: the input tile stays in L2)"))
    why.append(f"rows/call={hb}: >= ~128 pixels per call, re-read operand within {_WU_REREAD_BYTES // 1024} KiB "
               "(sized for the whole problem, so sums do not depend on the thread count)")
    if images > 1:
        why.append(f"images/call={images}: small images share a call (res5b_branch2b 352 -> 404 GFLOP/s)")
    # Few dW blocks (the digits CNN's 16 -> 16 layers: one) leave threads idle whatever the
    # item split: the images are then cut into ranges, each reduced into its own copy of dW and
    # summed at the end.  The ranges depend on the shape only, so the sums' grouping does not
    # depend on the thread count.
    image_blocks = -(-s.N // images)
    splits = 1
    if s.Kb * s.Cb < _WU_SPLIT_BELOW_BLOCKS:
        splits = max(1, min(image_blocks, -(-_WU_SPLIT_BELOW_BLOCKS // (s.Kb * s.Cb))))
    if splits > 1:
        why.append(f"image ranges={splits}: {s.Kb * s.Cb} dW block(s) give at most {s.Kb * s.Cb} work item(s), so "
                   "ranges of images reduce into copies of dW summed at the end (digits 16 -> 16 layer, batch 64, "
                   "2 threads: 265 -> 147 us)")
    tile_rows, phase_width, tile_floats = _tile_geometry(s, mode, hb, cb_per_item)
    return WeightGradPlan(
        why, s=s.geometry(), isa=isa_code, n_threads=n_threads, tile_mode=mode, max_acc=max_acc, nc=nc, nr=nr,
        k_inner=int(k_inner), rows_per_block=hb, row_blocks=row_blocks, images_per_block=images,
        kb_per_item=kb_per_item, k_groups=k_groups, cb_per_item=cb_per_item, c_groups=c_groups,
        tile_rows=tile_rows, tile_phase_width=phase_width, tile_floats=tile_floats, image_splits=splits)


@functools.lru_cache(maxsize=256)
def _cached_weight_grad_plan(shape, isa, n_threads):
    return choose_weight_grad_blocking(shape, isa, n_threads)


@functools.lru_cache(maxsize=256)
def _stride_phases(shape):
    """Backward-data sub-problems, one per stride phase (rho_h, rho_w) that has taps.

    dx at rows h = rho_h - pad_h + sh*m (likewise columns) is a stride-1 correlation of dy with
    the phase's taps r = rho_h + sh*j, flipped; each phase is a forward problem on dy with
    asymmetric padding chosen so that its output rows are exactly the dx rows of the phase.
    A tuple of (rho_h, rho_w, first dx row, first dx col, ConvShape of the sub-problem), cached
    per shape (recomputing the four phases of a stride-2 layer took 12 us of every call)."""
    s = shape
    phases = []
    # Phases at or beyond the filter size have no taps (their dx stays zero): looping over them
    # made a stride of 10**7 run for minutes.
    for rho_h in range(min(s.stride_h, s.R)):
        jh = len(range(rho_h, s.R, s.stride_h))
        m_lo = -(-(s.pad_h - rho_h) // s.stride_h)
        m_hi = (s.H - 1 - rho_h + s.pad_h) // s.stride_h + 1
        for rho_w in range(min(s.stride_w, s.S)):
            jw = len(range(rho_w, s.S, s.stride_w))
            n_lo = -(-(s.pad_w - rho_w) // s.stride_w)
            n_hi = (s.W - 1 - rho_w + s.pad_w) // s.stride_w + 1
            if jh == 0 or jw == 0 or m_hi <= m_lo or n_hi <= n_lo:
                continue  # no tap reaches these dx positions: they stay zero
            top, left = jh - 1 - m_lo, jw - 1 - n_lo
            sub = ConvShape(s.N, s.K, s.C, s.P, s.Q, jh, jw, 1, 1, top, left,
                            pad_bottom=(m_hi - m_lo) - 1 + jh - s.P - top,
                            pad_right=(n_hi - n_lo) - 1 + jw - s.Q - left)
            phases.append((rho_h, rho_w, rho_h - s.pad_h + s.stride_h * m_lo, rho_w - s.pad_w + s.stride_w * n_lo,
                           sub))
    return tuple(phases)


class ConvGrads(tuple):
    """(dx, dw, db) of conv2d_backward; entries not asked for are None."""

    __slots__ = ()

    def __new__(cls, dx, dw, db):
        return super().__new__(cls, (dx, dw, db))

    dx = property(lambda self: self[0])
    dw = property(lambda self: self[1])
    db = property(lambda self: self[2])


def conv2d_backward(dy, x, w, stride=1, padding=0, need=("dx", "dw", "db"), *, accumulate_dw=None,
                    n_threads=None, isa=None, precision="fp32"):
    """Gradients of y = conv2d(x, w, b, stride, padding) given dy = dL/dy.

    dx (bwd-data): the forward kernels on dy with channel-swapped, spatially flipped weights, one
    sub-problem per stride phase.  dw (weight update): transposed-B BRGEMM calls reducing over
    pixels; each dW block is summed by one thread in a fixed order, so results do not depend on
    the thread count.  db: the sum of dy over N, H, W.
    Same layouts and input rules as conv2d: arrays in -> arrays out (dx NCHW, dw KCRS, db (K,));
    BlockedTensors in -> BlockedTensors out (db stays a plain (K,) array).
    accumulate_dw: with BlockedTensors, a writeable float32 array of w's blocked shape (a layer's
    gradient) to which dW is added in place by the kernels; dw is then that array, blocked.
    precision='bf16' (mixed-precision training: w holds the fp32 master weights): dx from dy and
    w rounded to bf16 on the bf16 kernels; dW from x and dy rounded to bf16 on the bf16
    weight-update kernels (VDPBF16PS on pixel pairs, fp32 sums; pyx/conv_wu.pyx), or, below
    PAIR_WU_MIN_MACS multiply-adds or PAIR_WU_MIN_K output channels or where x or dy holds
    NaN/Inf, the fp32 weight-update kernels
    on the same bf16 values (the same products summed in another order; IEEE propagation);
    db, outputs and accumulate_dw stay fp32.  x may be the bf16 BlockedTensor its forward read,
    and dy a bf16 BlockedTensor (batchnorm_backward(out_precision='bf16') writes one: it is
    rounded once, where it was made; db then sums its values).
    precision='dfp16': the same with DFP-16 (dy gets its own shared exponent, nearest rounding;
    dx on the int16 kernels with the flipped weights quantized per stride phase; dW on the int16
    weight-update kernels, VPDPWSSD on pixel pairs of the mantissas of x and dy, int32 chains
    flushed to fp32 within the bound their headroom proves, times 2**(E_x + E_dy); below
    PAIR_WU_MIN_MACS multiply-adds or PAIR_WU_MIN_K output channels, or when 2**(E_x + E_dy) is outside fp32's normal range, the
    fp32 kernels on the DFP-16 values).  x may be the DFP-16 BlockedTensor its forward read.
    """
    fn = "conv2d_backward"
    precision = formats.check_precision(precision, fn)
    if precision not in BACKWARD_PRECISIONS:
        raise ValueError(f"{fn}: precision={precision!r} has no backward kernels yet; conv2d_backward runs "
                         f"{' and '.join(BACKWARD_PRECISIONS)}")
    need = (need,) if isinstance(need, str) else tuple(need)
    bad = [n for n in need if n not in ("dx", "dw", "db")]
    if bad or not need:
        raise ValueError(f"{fn}: need must name some of 'dx', 'dw', 'db', got {need!r}")
    dyb, dy_shape = _operand(dy, "activation", fn, "dy", precision, ("fp32", "bf16") if precision == "bf16" else ("fp32",))
    xb, x_shape = _operand(x, "activation", fn, "x", precision)
    wb, w_shape = _operand(w, "weight", fn, "w")
    blocked_in = dyb is not None
    if (xb is not None) != blocked_in or (wb is not None) != blocked_in:
        raise TypeError(f"{fn}: dy, x and w must be all numpy arrays or all BlockedTensors")
    shape = conv_shape(x_shape, w_shape, stride, padding)
    if accumulate_dw is not None:
        want = (shape.Kb, shape.Cb, shape.R, shape.S, CB, CB)
        if not blocked_in or "dw" not in need:
            raise ValueError(f"{fn}: accumulate_dw needs BlockedTensor inputs and 'dw' in need (got "
                             f"{'BlockedTensors' if blocked_in else 'numpy arrays'}, need={need})")
        a = accumulate_dw
        if (not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != want
                or not a.flags.c_contiguous or not a.flags.writeable):
            why = ("not a numpy array" if not isinstance(a, np.ndarray) else f"dtype {a.dtype}" if a.dtype != np.float32
                   else f"shape {a.shape}" if a.shape != want else "not C-contiguous" if not a.flags.c_contiguous
                   else "read-only")
            raise ValueError(f"{fn}: accumulate_dw must be a writeable C-contiguous float32 array of the blocked "
                             f"weight shape {want}; it is {why}")
        for name, other in (("x", xb.data), ("dy", dyb.data)):
            if np.may_share_memory(a, other):
                raise ValueError(f"{fn}: accumulate_dw overlaps {name}; the kernels would read what they write")
    expected = (shape.N, shape.K, shape.P, shape.Q)
    if tuple(dy_shape) != expected:
        raise ValueError(f"{fn}: dy has shape {tuple(dy_shape)} but the forward problem (x {tuple(x_shape)}, "
                         f"w {tuple(w_shape)}, stride ({shape.stride_h}, {shape.stride_w}), padding "
                         f"({shape.pad_h}, {shape.pad_w})) gives y of shape {expected}")
    n_threads = cpu.resolve_threads(n_threads)
    isa_code = cpu.isa_code(isa)
    if dyb is None:
        dyb = to_blocked(dy, n_threads)
    if xb is None and "dw" in need:
        xb = to_blocked(x, n_threads)
    if wb is None and "dx" in need:
        wb = block_weights(w, n_threads)
    dx = dw = db = None
    bf16 = precision == "bf16"
    dfp = precision == "dfp16"
    isa_name = cpu.ISA_BY_CODE[isa_code]
    dyq = quantized.to_dfp16_blocked(dyb, n_threads=n_threads, isa=isa_name) if dfp and need != ("db",) else None
    if dfp and xb is not None and "dw" in need:       # the DFP-16 values of x (as its forward multiplied them)
        xb = xb if xb.precision == "dfp16" else quantized.to_dfp16_blocked(xb, n_threads=n_threads, isa=isa_name)
    if bf16 and dyb.precision == "bf16":
        dy16 = dyb.data
    else:   # (bf16: dx and dW both read these patterns of dy, converted once)
        dy16 = formats.fp32_to_bf16_bits(dyb.data, n_threads=n_threads) if bf16 and need != ("db",) else None
    if "dx" in need:
        if dfp:
            dx_data = _backward_data(dyq.data, wb.data, shape, isa_code, n_threads, dfp16=dyq)
        elif bf16:
            dx_data = _backward_data(dy16, wb.data, shape, isa_code, n_threads,
                                     formats.native_bf16(cpu.ISA_BY_CODE[isa_code]))
        else:
            dx_data = _backward_data(dyb.data, wb.data, shape, isa_code, n_threads)
        dx = BlockedTensor(dx_data, (shape.N, shape.C, shape.H, shape.W), "activation")
        if not blocked_in:
            dx = from_blocked(dx, n_threads)
    if "dw" in need:
        if accumulate_dw is not None:
            dw_data = accumulate_dw
        else:
            dw_data = np.zeros((shape.Kb, shape.Cb, shape.R, shape.S, CB, CB), dtype=np.float32)
        errors = 0
        pairs = (bf16 or dfp) and _pair_weight_update_pays(shape)
        done = pairs and _weight_grad_pairs(xb, dy16 if bf16 else dyq, dw_data, shape, isa_code, n_threads,
                                            accumulate_dw is not None)
        if not done:
            # fp32 kernels on the format's values: small problems (below), or bf16 NaN/Inf (IEEE propagation)
            if bf16 or dfp:
                x_wu, dy_wu, wu_shape = _format_values_for_weight_grad(xb, dy16 if bf16 else dyq, shape, isa_code,
                                                                          n_threads)
            else:
                x_wu, dy_wu, wu_shape = xb.data, dyb.data, shape
            plan = _cached_weight_grad_plan(wu_shape, isa_code, n_threads)
            # (bf16: the patterns themselves, which the kernels widen image block by image block)
            kernel = _wu.conv2d_weight_grad_bf16_values if x_wu.dtype == np.uint16 else _wu.conv2d_weight_grad_f32
            errors = kernel(x_wu.reshape(-1), dy_wu.reshape(-1), dw_data.reshape(-1), plan.c, n_threads,
                            accumulate_dw is not None)
        if errors:
            raise MemoryError(f"{fn}: could not allocate the weight-update scratch of {errors} work item(s) "
                              f"({plan.summary()})")
        dw = BlockedTensor(dw_data, (shape.K, shape.C, shape.R, shape.S), "weight")
        if not blocked_in:
            dw = dw.numpy()
    if "db" in need:
        # float64 accumulation in NumPy's fixed order: exact enough, thread-independent.  Images
        # first, then pixels, each over contiguous rows: one sum over axes (0, 2, 3) took 2.4x
        # as long (46 against 19 us on a 64x32x4x4 dy, measured 2026-12-02).
        dy_values = dyb.data if dyb.precision == "fp32" else formats.bf16_bits_to_fp32(dyb.data, n_threads=n_threads)
        per_pixel = dy_values.sum(axis=0, dtype=np.float64)
        db = per_pixel.reshape(shape.Kb, -1, CB).sum(axis=1).reshape(-1)[: shape.K].astype(np.float32)
    return ConvGrads(dx, dw, db)


def _format_values_for_weight_grad(xb, dy_format, shape, isa_code, n_threads):
    """(x, dy, shape) for the fp32 weight-update kernels on the values of a bf16 / DFP-16 update,
    from x (a bf16, DFP-16 or fp32 BlockedTensor) and dy (bf16 patterns, or dy's DFP-16
    BlockedTensor): DFP-16 as fp32 values; bf16 as the bf16 patterns (uint16), which
    conv2d_weight_grad_bf16_values widens inside its work items.  A strided 1x1 convolution
    without padding reads one input pixel in stride_h * stride_w, so only those are taken (before
    any conversion) and dW is that of the stride-1 1x1 on them (the same products).  On the
    digits CNN's 16 -> 32 stride-2 shortcut at batch 64 and 2 threads, widening all of x to read
    a quarter of it took 54 of the update's 93 us (2026-12-02)."""
    s = shape
    subsample = (s.R == s.S == 1 and (s.stride_h > 1 or s.stride_w > 1) and s.pad_h == s.pad_w == 0
                 and s.pad_bottom is None and s.pad_right is None)

    def used_pixels(a):
        return np.ascontiguousarray(a[:, :, ::s.stride_h, ::s.stride_w][:, :, : s.P, : s.Q]) if subsample else a

    x_used = used_pixels(xb.data)       # (conversions are elementwise: the same bits either way)
    if isinstance(dy_format, BlockedTensor):                        # DFP-16
        x_wu = quantized.dfp16_values(x_used, xb.scale[0]) if xb.precision == "dfp16" else x_used
        dy_wu = quantized.dequantize(dy_format)
    else:       # bf16: the patterns, contiguous uint16 arrays made or checked above
        x_wu = x_used if xb.precision == "bf16" else formats.fp32_to_bf16_bits(x_used, n_threads=n_threads)
        dy_wu = dy_format
    if subsample:
        s = ConvShape(s.N, s.C, s.K, s.P, s.Q, 1, 1)
    return x_wu, dy_wu, s


# A bf16 / DFP-16 weight update runs the fp32 kernels on the format's values (the same products,
# summed in another order) below PAIR_WU_MIN_MACS multiply-adds or PAIR_WU_MIN_K output
# channels: there the pair kernels' reformatting passes (x's channel-major copies, dy's pixel
# pairs) and parallel regions cost more than their products save.  Measured (Zen 4, 1 thread):
# - 2026-12-02, the digits CNN at batch 64 (8x8, 16-32 channels, 9-19M multiply-adds): a bf16
#   training epoch took 0.114 s with the pair kernels, 0.093 s without (fp32: 0.101 s);
# - 2026-12-02, after the row tiles and transposed copies, batch 256 (38M): the pair update of
#   the 16- and 32-channel 3x3 layers 0.91 / 0.84 ms against 0.88 / 0.82 on the fp32 kernels,
#   and 1.15 against 0.51 ms for the stride-2 16 -> 32 one (4x4 output rows);
# while every ResNet-50 layer (K >= 64; the smallest update at batch 4 has 51M) gains on them
# (1.0-2.3x the fp32 update; docs/performance.md).
PAIR_WU_MIN_MACS = 1 << 25
PAIR_WU_MIN_K = 64


def _pair_weight_update_pays(shape):
    """Whether a bf16 / DFP-16 weight update of this shape runs the pair kernels (see above)."""
    macs = shape.N * shape.K * shape.C * shape.R * shape.S * shape.P * shape.Q
    return shape.K >= PAIR_WU_MIN_K and macs >= PAIR_WU_MIN_MACS


def _weight_grad_pairs(xb, dy16, dw_data, shape, isa_code, n_threads, accumulate):
    """dW into dw_data by the pair weight-update kernels (pyx/conv_wu.pyx): VDPBF16PS on pixel pairs
    of x and dy rounded to bf16 (dy16: dy's bf16 patterns), or VPDPWSSD on their DFP-16 mantissas
    (xb and dy16 DFP-16 BlockedTensors), summed in fp32.  False, with dw_data untouched, when
    bf16 x or dy holds NaN/Inf (the caller then takes the fp32 kernels, whose IEEE propagation the
    zero padding of the pixel pairs would not keep), or when a DFP-16 product's multiplier
    2**(E_x + E_dy) falls outside fp32's normal range (tiny operands: the fp32 kernels on the
    dequantized values still give their tiny gradient)."""
    geometry = (shape.N, shape.C, shape.H, shape.W, shape.K, shape.P, shape.Q, shape.R, shape.S, shape.stride_h,
                shape.stride_w, shape.pad_h, shape.pad_w)
    isa_name = cpu.ISA_BY_CODE[isa_code]
    if isinstance(dy16, BlockedTensor):             # DFP-16: dy plays the weights' part (the A operand)
        if not -126 <= xb.scale[0] + dy16.scale[0] <= 127:
            return False        # 2**(E_x + E_dy) outside fp32's normal range: the fp32 kernels keep the tiny dW
        integer, _ = quantized.integer_call("dfp16", xb, dy16, 0, shape.Kb * CB)
        x16, dy16, native = xb.data.view(np.uint16), dy16.data.view(np.uint16), quantized.native_vnni(isa_name)
    else:
        integer, native = None, formats.native_bf16(isa_name)
        x16 = xb.data if xb.precision == "bf16" else formats.fp32_to_bf16_bits(xb.data, n_threads=n_threads)
    n_xt, n_dyv, n_chan = _wu.pairs_scratch_sizes(geometry, n_threads)
    xt, dyv = scratch("conv.wu_x_pairs", (n_xt,), np.uint16), scratch("conv.wu_dy_pairs", (n_dyv,), np.uint16)
    chan = scratch("conv.wu_x_transposed", (n_chan,), np.uint16)
    errors, nonfinite = _wu.conv2d_weight_grad_pairs(x16.reshape(-1), dy16.reshape(-1), dw_data.reshape(-1), geometry,
                                                     xt, dyv, chan, isa_code, native, n_threads, accumulate, integer)
    if errors:
        raise MemoryError(f"conv2d_backward: the {'DFP-16' if integer else 'bf16'} weight update could not allocate "
                          f"its scratch or found no kernel for {errors} call(s) (shape {shape})")
    return not nonfinite


def _backward_data(dy_data, w_data, shape, isa_code, n_threads, native=None, dfp16=None):
    """dx in the blocked layout, from blocked dy and fp32 weights (see _stride_phases).  native
    not None: dy_data holds bf16 patterns and each phase's flipped weights are rounded to bf16
    in VNNI pairs for the bf16 kernels (native: VDPBF16PS).  dfp16: the DFP-16 BlockedTensor of
    dy (dy_data its mantissas); each phase's flipped weights get their own shared exponent and
    run on the integer kernels."""
    s = shape
    strided = s.stride_h > 1 or s.stride_w > 1
    dx = np.empty((s.N, s.Cb, s.H, s.W, CB), dtype=np.float32)
    zeroed = not strided      # a strided pass: the first phase's scatter clears dx as it goes
    for rho_h, rho_w, h0, w0, sub in _stride_phases(s):
        integer, fast = None, bool(native)
        if native is not None:      # flipped and rounded in one pass
            wt = scratch("conv.bwd_weights_bf16", (s.Cb, s.Kb, sub.R, sub.S, CB, CB), np.uint16)
            _direct.flip_transpose_weights(w_data, wt, rho_h, rho_w, s.stride_h, s.stride_w, n_threads, isa_code, fast)
        else:
            wt = scratch("conv.bwd_weights", (s.Cb, s.Kb, sub.R, sub.S, CB, CB))
            _direct.flip_transpose_weights(w_data, wt, rho_h, rho_w, s.stride_h, s.stride_w, n_threads)
        if dfp16 is not None:
            wq = quantized.block_weights_dfp16(BlockedTensor(wt, (s.C, s.K, sub.R, sub.S), "weight"),
                                               n_threads=n_threads, isa=cpu.ISA_BY_CODE[isa_code])
            integer, _ = quantized.integer_call("dfp16", dfp16, wq, sub.Cb * sub.R * sub.S, sub.Kb * CB)
            wt, fast = wq.data, quantized.native_vnni(cpu.ISA_BY_CODE[isa_code])
        if not strided:
            _forward_into(dy_data, wt, _NO_BIAS, dx, sub, isa_code, n_threads, False, fast, integer)
            continue
        part = scratch("conv.bwd_phase", (s.N, s.Cb, sub.P, sub.Q, CB))
        _forward_into(dy_data, wt, _NO_BIAS, part, sub, isa_code, n_threads, False, fast, integer)
        _direct.scatter_stride_phase(part, dx, h0, w0, s.stride_h, s.stride_w, not zeroed, n_threads)
        zeroed = True
    if not zeroed:            # no phase has a tap (a stride past the kernel): dx is all zero
        dx.fill(0.0)
    return dx


def pass_plans(shape, direction="fwd", algorithm="direct", isa=None, n_threads=None, precision="fp32"):
    """Every plan one pass would run, as (title, plan) pairs: the forward plan, the Winograd
    plan, the weight-update plan, or for bwd-data the forward plan on dy of each stride phase.
    The same cached plans conv2d / conv2d_backward use (what `--show-plan` prints); precision
    picks the integer kernels' tile where they run (int8 and ternary forward, DFP-16 forward and
    backward-data)."""
    isa_code = cpu.isa_code(isa)
    n_threads = cpu.resolve_threads(n_threads)
    integer = _integer_kernels(precision, "pass_plans")
    if direction == "fwd" and algorithm == "auto":
        algorithm = choose_algorithm(shape, cpu.ISA_BY_CODE[isa_code])
    if direction == "fwd" and algorithm != "direct":
        return [(f"forward {algorithm}", _cached_winograd_plan(shape, _ALPHA[algorithm], isa_code, n_threads, False))]
    if direction == "fwd":
        return [("forward", _cached_plan(shape, isa_code, n_threads, False, integer)[0])]
    if direction == "bwd_w":
        return [("weight update", _cached_weight_grad_plan(shape, isa_code, n_threads))]
    if direction != "bwd_d":
        raise ValueError(f"pass_plans: direction must be fwd, bwd_d or bwd_w, got {direction!r}")
    return [((f"bwd-data phase ({rh},{rw}): forward on dy, {sub.R}x{sub.S} flipped taps, pad "
             f"({sub.pad_h},{sub.pad_w},{sub.pad_b},{sub.pad_r})"), _cached_plan(sub, isa_code, n_threads, False, integer)[0])
            for rh, rw, _, _, sub in _stride_phases(shape)]


def _winograd4_wins(shape):
    """Measured (batch 4, F(4x4) with prepared weights vs direct, 1 / 2 threads, this machine):
    res3b_branch2b (28x28, C=K=128) 1.84x / 1.85x, res4b_branch2b (14x14, 256) 1.61x / 1.51x,
    res5b_branch2b (7x7, 512) 1.16x / 1.07x (U, 4x the weights, streams for only 16 tiles),
    res2a_branch2b (56x56, 64) 1.17x / 1.27x.  'auto' takes F(4x4) only where it clearly wins,
    since it also costs accuracy (relative error ~2e-6 against ~6e-7 direct): C, K >= 128 on
    outputs of at least 14x14."""
    return shape.C >= 128 and shape.K >= 128 and shape.P >= 14 and shape.Q >= 14


def describe_plan(shape, direction="fwd", isa=None, n_threads=None, algorithm="direct", precision="fp32"):
    """Every plan a pass over a ConvShape runs, each titled and with the rules that fired, as text
    (what `dlcpu bench conv --show-plan` prints).  direction: 'fwd' (algorithm 'direct', 'auto',
    'winograd2' or 'winograd4'), 'bwd_d' (one forward plan per stride phase) or 'bwd_w'."""
    return "\n".join(f"{title}\n  {plan.describe()}".replace("\n", "\n  ").rstrip()
                     for title, plan in pass_plans(shape, direction, algorithm, isa, n_threads, precision))
