"""Direct convolution on blocked layouts, built on the batch-reduce GEMM.

    y = dlcpu.conv2d(x, w, bias=None, stride=1, padding=0, activation=None)

x, w plain float32 NCHW/KCRS arrays -> NCHW array; or BlockedTensors -> BlockedTensor (no layout
conversion at all in that path).  Every argument is checked here, before any kernel runs.

Blocking is decided once per (shape, ISA, threads) by `choose_conv_blocking` and cached; the
driver (pyx/conv.pyx) only walks the plan.  `dlcpu bench conv --show-plan` prints it.
"""
import functools
from dataclasses import asdict, dataclass

import numpy as np

from . import cpu
from .layout import CB, BlockedTensor, block_weights, from_blocked, n_blocks, to_blocked
from ._ext import conv as _conv

# Per-ISA pixel budget of one BRGEMM call for one 16-channel group (pyx/kernels/brgemm_f32.h).
# The scalar path has no register limit; 8 keeps its stack tile small.
_ACCUMULATORS = {"avx512": 28, "avx2": 6, "scalar": 8}

# Bytes of input tile (or, in flat mode, input rows) one work item keeps hot.  Zen 5 has 1 MiB of
# L2 per core; on res2/res3 3x3 layers tiles of 64-256 KiB measured within 1% of each other and
# 512 KiB lost ~3%, so aim below 192 KiB and leave L2 to the weights.
_TILE_BYTES = 192 * 1024


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

    @property
    def P(self):
        return (self.H + 2 * self.pad_h - self.R) // self.stride_h + 1

    @property
    def Q(self):
        return (self.W + 2 * self.pad_w - self.S) // self.stride_w + 1

    @property
    def Cb(self):
        return n_blocks(self.C)

    @property
    def Kb(self):
        return n_blocks(self.K)

    def flops(self):
        """Forward FLOPs, full taps (every r, s counted, padding included: LIBXSMM's convention)."""
        return 2 * self.N * self.K * self.P * self.Q * self.C * self.R * self.S

    def as_dict(self):
        d = asdict(self)
        d.update(P=self.P, Q=self.Q, Cb=self.Cb, Kb=self.Kb)
        return d


@dataclass(frozen=True)
class ConvPlan:
    """How one forward convolution is cut into BRGEMM calls.  See choose_conv_blocking."""

    isa: int
    n_threads: int
    tile_mode: bool         # pack a padded/phase-split input tile per work item (else read in place)
    mv: int                 # output-channel blocks per call (2: each broadcast feeds 2 FMAs)
    nr: int                 # output rows per call
    nc: int                 # output columns (flat mode: pixels) per call
    k: int                  # reduction length of one block: 16, or C when C < 16
    rows_per_item: int      # output rows one work item covers
    row_blocks: int
    kb_per_group: int       # output-channel blocks one work item covers
    k_groups: int
    tile_rows: int          # input rows in a tile
    tile_phase_width: int   # padded columns per stride phase in a tile
    tile_floats: int
    relu: bool
    reason: str             # the rules that fired, for --show-plan

    def as_dict(self):
        return asdict(self)

    def describe(self):
        isa = cpu.ISA_BY_CODE[self.isa]
        mode = "tile (padded, phase-split copy)" if self.tile_mode else "flat (in place)"
        return (
            f"isa={isa} threads={self.n_threads} mode={mode} block={self.mv}x16ch x {self.nr}x{self.nc}px "
            f"k={self.k} rows/item={self.rows_per_item} ({self.row_blocks} blocks) "
            f"kb/item={self.kb_per_group} ({self.k_groups} groups) tile={self.tile_floats * 4 // 1024} KiB"
            f" | {self.reason}"
        )


def choose_conv_blocking(shape, isa="avx512", n_threads=1, relu=False):
    """Pick the register block, work decomposition and input handling for one forward conv."""
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
    budget = _ACCUMULATORS[isa_name] // mv
    why.append(f"mv={mv}: {'Kb>=2, broadcast shared by 2 FMAs' if mv == 2 else 'one K block'}")

    flat = s.R == 1 and s.S == 1 and s.stride_h == 1 and s.stride_w == 1 and s.pad_h == 0 and s.pad_w == 0
    if flat:
        # 1x1, stride 1, no padding: the rows of one item are a contiguous pixel run, so pixel
        # tiles need not stop at row ends (the 7x7 and 14x14 layers get full 14-pixel tiles).
        nr, nc = 1, budget
        tile_rows = phase_width = tile_floats = 0
        row_bytes = Cb * s.W * CB * 4
        why.append("flat: 1x1/s1/p0 reads the input in place, pixels run across rows")
    else:
        # Equalized column blocks (LIBXSMM find_rb): ceil(Q/budget) blocks of near-equal width,
        # so no call runs with a handful of accumulators.  Short rows stack rows instead.
        col_blocks = -(-Q // budget)
        nc = -(-Q // col_blocks)
        nr = max(1, min(4, budget // nc, P))
        phase_width = -(-((Q - 1) * s.stride_w + s.S) // s.stride_w)
        row_bytes = Cb * s.stride_w * phase_width * CB * 4
        why.append(f"tile: pad/stride folded into a per-item copy; {col_blocks} col block(s) of <= {nc}")

    # Rows per work item: as many as fit the tile budget, a multiple of nr.
    per_item_rows = max(1, _TILE_BYTES // max(1, row_bytes * (1 if flat else s.stride_h)))
    hb = max(nr, (min(per_item_rows, P) // nr) * nr)
    row_blocks = -(-P // hb)
    # Equalize the row blocks (13+13+13+13+4 -> 12+11+11+11+11 rows), and when there are few
    # items, prefer a count that splits evenly over the threads: with static scheduling the
    # slowest thread sets the time.
    for extra in range(0, row_blocks + 1):
        blocks = row_blocks + extra
        if s.N * blocks % n_threads == 0 or s.N * blocks >= 8 * n_threads or blocks >= P:
            row_blocks = blocks
            break
    hb = -(-(-(-P // row_blocks)) // nr) * nr
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
    why.append(f"items={s.N}x{k_groups}x{row_blocks} for {n_threads} thread(s)")

    if not flat:
        tile_rows = (hb - 1) * s.stride_h + s.R
        tile_floats = Cb * tile_rows * s.stride_w * phase_width * CB

    return ConvPlan(
        isa=isa_code, n_threads=n_threads, tile_mode=not flat, mv=mv, nr=nr, nc=nc,
        k=s.C if Cb == 1 else CB, rows_per_item=hb, row_blocks=row_blocks,
        kb_per_group=kb_per_group, k_groups=k_groups, tile_rows=tile_rows,
        tile_phase_width=phase_width, tile_floats=tile_floats, relu=bool(relu),
        reason="; ".join(why),
    )


def batch_offsets(shape, plan):
    """Element offsets of every (C block, r, s) A/B block one BRGEMM call reduces over."""
    s = shape
    cb, r, q = np.meshgrid(np.arange(s.Cb), np.arange(s.R), np.arange(s.S), indexing="ij")
    cb, r, q = cb.ravel(), r.ravel(), q.ravel()
    a_offs = ((cb * s.R + r) * s.S + q) * CB * CB
    if plan.tile_mode:
        sw, pw = s.stride_w, plan.tile_phase_width
        b_offs = ((cb * plan.tile_rows + r) * sw + q % sw) * pw * CB + (q // sw) * CB
    else:
        b_offs = cb * s.H * s.W * CB
    return np.ascontiguousarray(a_offs, dtype=np.int64), np.ascontiguousarray(b_offs, dtype=np.int64)


@functools.lru_cache(maxsize=256)
def _cached_plan(shape, isa, n_threads, relu):
    """Plan, offset arrays and the driver's argument dicts, built once per shape: building the
    dicts on every call cost ~30 us, 10% of a 0.3 ms layer."""
    plan = choose_conv_blocking(shape, isa, n_threads, relu)
    a_offs, b_offs = batch_offsets(shape, plan)
    a_offs.setflags(write=False)
    b_offs.setflags(write=False)
    return plan, a_offs, b_offs, shape.as_dict(), plan.as_dict()


def get_plan(shape, isa=None, n_threads=None, activation=None):
    """The cached plan for a ConvShape (what conv2d would run)."""
    return _cached_plan(shape, cpu.isa_code(isa), cpu.resolve_threads(n_threads), activation == "relu")[0]


def _pair(value, name):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"conv2d: {name} must be an int or an (h, w) pair of ints, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in value
    ):
        return int(value[0]), int(value[1])
    raise TypeError(f"conv2d: {name} must be an int or an (h, w) pair of ints, got {value!r}")


def conv_shape(x_shape, w_shape, stride=1, padding=0):
    """Validate the geometry and return the ConvShape; raises ValueError naming the rule."""
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if sh < 1 or sw < 1:
        raise ValueError(f"conv2d: stride must be >= 1, got ({sh}, {sw})")
    if ph < 0 or pw < 0:
        raise ValueError(f"conv2d: padding must be >= 0, got ({ph}, {pw})")
    n, c, h, w = x_shape
    k, wc, r, s = w_shape
    if wc != c:
        raise ValueError(f"conv2d: input has C={c} channels but weights expect C={wc} (x {tuple(x_shape)}, w {tuple(w_shape)})")
    if r > h + 2 * ph or s > w + 2 * pw:
        raise ValueError(
            f"conv2d: output size would be <= 0: filter {r}x{s} is larger than the padded input "
            f"{h + 2 * ph}x{w + 2 * pw} (x {tuple(x_shape)}, w {tuple(w_shape)}, padding ({ph}, {pw}))"
        )
    shape = ConvShape(n, c, k, h, w, r, s, sh, sw, ph, pw)
    # Extent guard: every offset the kernels form must fit comfortably in int64 / memory.
    if max(shape.N * shape.Cb * h * w, shape.N * shape.Kb * shape.P * shape.Q) * CB >= 2**40:
        raise ValueError(f"conv2d: tensors too large (x {tuple(x_shape)}, w {tuple(w_shape)})")
    return shape


def conv2d(x, w, bias=None, stride=1, padding=0, activation=None, *, n_threads=None, isa=None, out=None):
    """2-D convolution (cross-correlation, as PyTorch and oneDNN define it), fp32.

    x: (N, C, H, W) float32 array, or an activation BlockedTensor
    w: (K, C, R, S) float32 array, or a weight BlockedTensor (dlcpu.block_weights)
    bias: None or (K,) float32; activation: None or 'relu' (both fused into the kernel epilogue)
    stride, padding: int or (h, w) pair.  Returns NCHW for array input, a BlockedTensor for
    blocked input.  Non-contiguous arrays are copied; other dtypes are refused (convert first).
    `out` (blocked path only) reuses a BlockedTensor of the right shape for the result.
    """
    if activation not in (None, "relu"):
        raise ValueError(f"conv2d: activation must be None or 'relu', got {activation!r}")
    blocked_in = isinstance(x, BlockedTensor)
    if blocked_in:
        if x.kind != "activation" or x.dtype != np.float32:
            raise TypeError("conv2d: x must be a float32 activation BlockedTensor")
        xb = x
    else:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"conv2d: x must be a numpy array or a BlockedTensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"conv2d: x must be 4-d NCHW, got shape {x.shape}")
        xb = None
    if isinstance(w, BlockedTensor):
        if w.kind != "weight" or w.dtype != np.float32:
            raise TypeError("conv2d: w must be a float32 weight BlockedTensor (dlcpu.block_weights)")
        wb = w
    else:
        if not isinstance(w, np.ndarray):
            raise TypeError(f"conv2d: w must be a numpy array or a BlockedTensor, got {type(w).__name__}")
        if w.ndim != 4:
            raise ValueError(f"conv2d: w must be 4-d KCRS, got shape {w.shape}")
        wb = None
    x_shape = x.shape
    shape = conv_shape(x_shape, w.shape, stride, padding)
    if bias is not None:
        if not isinstance(bias, np.ndarray):
            raise TypeError(f"conv2d: bias must be a numpy array, got {type(bias).__name__}")
        if bias.shape != (shape.K,):
            raise ValueError(f"conv2d: bias must have shape ({shape.K},) for K={shape.K} output channels, got {bias.shape}")
        if bias.dtype != np.float32:
            raise TypeError(f"conv2d: bias must be float32, got {bias.dtype}")
    n_threads = cpu.resolve_threads(n_threads)
    if xb is None:
        xb = to_blocked(x, n_threads)  # validates dtype/contiguity of x
    if wb is None:
        wb = block_weights(w, n_threads)
    plan, a_offs, b_offs, shape_args, plan_args = _cached_plan(shape, cpu.isa_code(isa), n_threads,
                                                               activation == "relu")

    if bias is None:
        bias_p = np.empty(0, dtype=np.float32)
    else:
        bias_p = np.zeros(shape.Kb * CB, dtype=np.float32)
        bias_p[: shape.K] = bias
    out_shape = (shape.N, shape.Kb, shape.P, shape.Q, CB)
    if out is not None:
        if not blocked_in:
            raise ValueError("conv2d: out= is only for the blocked path")
        if not isinstance(out, BlockedTensor) or out.data.shape != out_shape or out.dtype != np.float32:
            raise ValueError(f"conv2d: out must be a float32 BlockedTensor with data shape {out_shape}")
        y = out.data
    else:
        y = np.empty(out_shape, dtype=np.float32)
    errors = _conv.conv2d_forward_f32(
        xb.data.reshape(-1), wb.data.reshape(-1), bias_p, y.reshape(-1),
        shape_args, plan_args, a_offs, b_offs, n_threads,
    )
    if errors:
        raise RuntimeError(f"conv2d: internal error, {errors} kernel call(s) had no microkernel ({plan.describe()})")
    yb = out if out is not None else BlockedTensor(y, (shape.N, shape.K, shape.P, shape.Q), "activation")
    return yb if blocked_in else from_blocked(yb, n_threads)
