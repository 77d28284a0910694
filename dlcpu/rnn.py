"""LSTM on the batch-reduce GEMM, with PyTorch's conventions (so results check against
torch.nn.LSTM):

    y, (h_T, c_T) = lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0=None, c0=None)
    y, (h_T, c_T), cache = lstm_forward(..., train=True)
    dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0 = lstm_backward(dy, cache, dh_T=None, dc_T=None)
    lstm_backward(..., need_dx=False)                            # dx is None, its GEMM skipped
    y, h_T = gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0)          # gates r, z, n; 3K rows
    y, h_T = rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0, nonlinearity="tanh"|"relu")  # K rows

x (T, N, C), w_ih (4K, C), w_hh (4K, K), biases (4K,), gate order i, f, g, o; h0/c0 (N, K).
Every forward takes precision='fp32' | 'bf16' | 'dfp16' | 'int8' | 'ternary' (lstm_forward says
what each quantizes; bf16 and dfp16 train too), the time loops reading a shadow of h in the format.

How it runs (pyx/rnn.pyx, pyx/kernels/rnn_f32.h; one forward and one backward time-loop driver
for every cell, run by a RecurrentPlan from choose_recurrent_tiles):
  1. x.W_ih^T + b for all T at once: one large GEMM on the BRGEMM (dlcpu.matmul);
  2. per step, h_{t-1}.W_hh^T as BRGEMM calls written straight onto that step's gate tiles, and
     the cell math finished on each tile while it is in cache; the T steps are one parallel
     region with one barrier per step;
  3. backward: per step (in reverse) the gate gradients on each tile, then dh_{t-1} as BRGEMM
     calls; afterwards dx as one large GEMM over all T, and dW_ih, dW_hh as two products on
     one packed dG^T (the biases are column sums of dG).
Hidden sizes are padded to whole 16-blocks internally; the padded units stay exactly zero.
Weights are re-blocked by `prepare_lstm` (done per call unless you pass its result as `weights`)
into the layout the kernels read (pack_gate_weights), forward operands only; a backward makes
the two transposed operands it needs on first use.  nn.LSTM/GRU/RNN keep their parameters in
that layout and receive their gradients in it (weight_grads=), so a training step packs
nothing but those transposes, and inference packs nothing at all.
"""
import contextlib
import functools
import math
from dataclasses import dataclass, field

import numpy as np

from . import cpu, quantized
from . import precision as formats
from ._ext import precision as _precision
from ._ext import rnn as _rnn
from ._ext.rnn import RecurrentFormat
from ._plans import Plan
from ._validate import fits_in_memory, positive_int
from ._workspace import scratch
from .approx import IMPLS as ACTIVATION_IMPLS
from .approx import check_impl, impl_code
from .gemm import PackedMatrix, matmul, pack_matmul_operand, transpose_packed
from .layout import CB

LSTM_GATES, GRU_GATES, RNN_GATES = 4, 3, 1
NONLINEARITIES = ("tanh", "relu")
_GATES = {"lstm": LSTM_GATES, "gru": GRU_GATES, "rnn_tanh": RNN_GATES, "rnn_relu": RNN_GATES}
_CELL_GATES = {"lstm": LSTM_GATES, "gru": GRU_GATES, "rnn": RNN_GATES}   # RecurrentWeights.cell
_EMPTY = np.empty(0, np.float32)
_EMPTY_U8 = np.empty(0, np.uint8)
_EMPTY_U32 = np.empty(0, np.uint32)
#: the formats the recurrent layers run: their GEMMs and recurrent products read operands in the
#: format (bf16 rounded; int8, DFP-16 and ternary quantized, summed in int32 chains), with fp32 sums,
#: states, cell math and carried gradients.  The forward runs all of them; the backward (training)
#: bf16 and DFP-16 -- int8 and ternary are for inference.
RECURRENT_PRECISIONS = ("fp32", "bf16", "dfp16", "int8", "ternary")
TRAINING_PRECISIONS = ("fp32", "bf16", "dfp16")


def _recurrent_precision(precision, fn, cell, train):
    precision = formats.check_precision(precision, fn)
    if precision not in RECURRENT_PRECISIONS:
        raise ValueError(f"{fn}: precision={precision!r} has no recurrent kernel; the recurrent layers run "
                         f"{', '.join(RECURRENT_PRECISIONS)}")
    if train and precision not in TRAINING_PRECISIONS:
        raise ValueError(f"{fn}: precision={precision!r} runs inference only (train=False); training runs "
                         f"{', '.join(TRAINING_PRECISIONS)}")
    if cell == "rnn_relu" and precision in ("int8", "dfp16", "ternary"):
        raise ValueError(f"{fn}: precision={precision!r} needs a bounded hidden state (its scale is fixed for the "
                         "whole sequence), and a ReLU RNN's is not; use nonlinearity='tanh', or fp32/bf16")
    return precision


def _ternary_args(precision, block, residual, levels, fn):
    """(block, residual, levels) for precision 'ternary', None otherwise (where they must be unset)."""
    if precision == "ternary":
        return (positive_int(block, "block", fn), positive_int(residual, "residual", fn, minimum=0),
                None if levels is None else positive_int(levels, "levels", fn))
    if (block, residual, levels) != (16, 0, None):
        raise ValueError(f"{fn}: block=, residual= and levels= describe ternary weights, not {precision}")
    return None


@dataclass(frozen=True)
class _FormatOperands:
    """One direction's weights in a format: w_ih packed for matmul(precision=...), the recurrent
    blocks in the format's VNNI groups, and the constants the time loops need (int8: the
    per-tensor scale of the recurrent weights and the column sums of their codes, per gate unit;
    DFP-16: their exponent and largest |mantissa|; ternary: the alphas beside the code blocks
    (gates*Kb, levels*Kb, groups, 16), alpha * sum(t) per level and gate unit, the block size)."""
    w_ih: object
    recurrent: np.ndarray
    scale: float = 1.0
    sums: np.ndarray = None
    exponent: int = 0
    bound: int = 0
    alphas: np.ndarray = None
    block: int = 0


class RecurrentPlan(Plan, struct=_rnn.RecurrentPlanStruct, family="recurrent"):
    """How a recurrent layer's time loops are cut into work items (struct dlcpu_rnn_plan_t; see
    choose_recurrent_tiles)."""

    __slots__ = ()

    def summary(self):
        cell = {v: k for k, v in _rnn.CELLS.items()}[self.cell]
        return (f"{cell} isa={self.isa_name} threads={self.n_threads} T={self.T} N={self.N} Kb={self.Kb}: row tiles "
                f"of {self.rows} ({self.n_tiles}), {self.fwd_items} forward items/step, {self.gate_items} gate + "
                f"{self.pair_items} recurrent backward items/step")


@functools.lru_cache(maxsize=256)
def choose_recurrent_tiles(cell, T, N, Kb, isa, n_threads, activation_impl="exact"):
    """The recurrent plan for a cell ('lstm', 'gru', 'rnn_tanh', 'rnn_relu') on an ISA path
    (name or code), with the activation flavour the gate tiles run ('exact', 'fast', 'ktanh')."""
    isa_code = cpu.isa_code(isa) if isinstance(isa, str) or isa is None else isa
    budget = cpu.max_accumulators(isa_code) // 2
    # Rows per tile: equal tiles within one mv=2 call's pixels (N=16: 8+8, not 14+2, whose
    # second call would run on a handful of accumulators).
    tiles = -(-N // budget)
    rows = -(-N // tiles)
    n_tiles = -(-N // rows)
    pairs = (Kb + 1) // 2
    # The vanilla RNN has one gate: its forward items are pairs of hidden blocks (mv=2 calls);
    # the LSTM/GRU calls pair gates instead, so their items are single hidden blocks.
    fwd_items = (pairs if cell.startswith("rnn") else Kb) * n_tiles
    why = [(f"row tiles: {n_tiles} equal tile(s) of {rows} rows within {budget} pixels of a mv=2 call "
           f"({cpu.max_accumulators(isa_code)} accumulators on {cpu.ISA_BY_CODE[isa_code]}, tiles.h)"),
           (f"items: {fwd_items} forward, {Kb * n_tiles} gate-gradient and {pairs * n_tiles} recurrent-product "
           "backward items per step, one barrier each")]
    return RecurrentPlan(why, cell=_rnn.CELLS[cell], gates=_GATES[cell], isa=isa_code, n_threads=n_threads,
                         act=impl_code(activation_impl), T=T, N=N,
                         Kb=Kb, rows=rows, n_tiles=n_tiles, fwd_items=fwd_items, gate_items=Kb * n_tiles,
                         pair_items=pairs * n_tiles)


@dataclass(frozen=True, eq=False)
class RecurrentWeights:
    """A cell's weights in the layout the kernels read (reusable across calls).  Hidden units are
    padded to Kp = 16*Kb per gate; gate g occupies columns g*Kp.. of the gate matrices.

    w_ih_t and recurrent are the forward's operands; nn.LSTM/GRU/RNN keep their parameters in
    exactly these arrays (see pack_gate_weights), so a module's forward wraps them without a
    copy.  The backward's two operands are transposes of those: made by backward_operands() the
    first time a backward needs them (one pass each), never for inference."""

    cell: str              # "lstm", "gru" or "rnn"
    gates: int
    C: int
    K: int
    w_ih_t: PackedMatrix   # (C, gates*Kp) packed: x @ w_ih_t gives the x-side pre-activations
    bias: np.ndarray       # (gates*Kp,) x-side bias (LSTM: b_ih + b_hh; GRU: b_ih + b_hh for r, z)
    b_hn: np.ndarray       # GRU: (Kp,) b_hn, applied inside r * (W_hn h + b_hn); LSTM: empty
    recurrent: np.ndarray  # [gates][Kb][Kb][16][16]: per gate, output block, input block
    w_ih_p: PackedMatrix = None     # (gates*Kp, C) packed: dG @ w_ih_p gives dx (backward only)
    recurrent_t: np.ndarray = None  # [Kb][gates*Kb][16][16]: transposed blocks (backward only)
    # the operands above in the low-precision formats, made on a layer's first use of one
    # (format_operands)
    _formats: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        # The time-loop drivers trust every extent here (sized by the plan from K and the cell):
        # check each array against cell, C and K once, when the object is made.  Shape checks
        # only, no copies: a training loop makes one of these every step.
        fn = "RecurrentWeights"
        if not isinstance(self.cell, str) or self.cell not in _CELL_GATES:
            raise ValueError(f"{fn}: cell must be one of {', '.join(_CELL_GATES)}, got {self.cell!r}")
        gates = positive_int(self.gates, "gates", fn)
        if gates != _CELL_GATES[self.cell]:
            raise ValueError(f"{fn}: cell {self.cell!r} has {_CELL_GATES[self.cell]} gate(s), got gates={gates}")
        C = positive_int(self.C, "C", fn)
        K = positive_int(self.K, "K", fn)
        kb = -(-K // CB)
        kp = kb * CB
        for name, want in (("w_ih_t", (C, gates * kp)), ("w_ih_p", (gates * kp, C))):
            m = getattr(self, name)
            if m is None and name == "w_ih_p":
                continue
            if not isinstance(m, PackedMatrix):
                raise TypeError(f"{fn}: {name} must be a PackedMatrix, got {type(m).__name__}")
            if tuple(m.shape) != want:
                raise ValueError(f"{fn}: {name} must be packed from a {want} matrix for cell {self.cell!r} with "
                                 f"C={C}, K={K}, got {tuple(m.shape)}; use dlcpu.rnn.prepare_{self.cell}")
        for name, want in (("bias", (gates * kp,)), ("b_hn", (kp,) if self.cell == "gru" else (0,)),
                           ("recurrent", (gates, kb, kb, CB, CB)), ("recurrent_t", (kb, gates * kb, CB, CB))):
            a = getattr(self, name)
            if a is None and name == "recurrent_t":
                continue
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{fn}: {name} must be a numpy array, got {type(a).__name__}")
            if a.dtype != np.float32:
                raise TypeError(f"{fn}: {name} must be float32, got {a.dtype}")
            if a.shape != want or not a.flags.c_contiguous:
                raise ValueError(f"{fn}: {name} must be a C-contiguous array of shape {want} for cell "
                                 f"{self.cell!r} with C={C}, K={K}, got {a.shape}; use dlcpu.rnn.prepare_{self.cell}")
        if (self.w_ih_p is None) != (self.recurrent_t is None):
            raise ValueError(f"{fn}: give both backward operands (w_ih_p and recurrent_t) or neither")
        object.__setattr__(self, "gates", gates)
        object.__setattr__(self, "C", C)
        object.__setattr__(self, "K", K)

    @property
    def Kb(self):
        return -(-self.K // CB)

    def backward_operands(self, n_threads=None):
        """(w_ih_p, recurrent_t), made from the forward operands on first use and kept: W_ih packed
        for dx = dG . W_ih, and the recurrent blocks transposed for the backward recurrence."""
        if self.w_ih_p is None:
            kp = self.Kb * CB
            rec = PackedMatrix(self.recurrent.reshape(self.gates * self.Kb, self.Kb, CB, CB), (kp, self.gates * kp))
            object.__setattr__(self, "w_ih_p", transpose_packed(self.w_ih_t, n_threads=n_threads))
            object.__setattr__(self, "recurrent_t", transpose_packed(rec, n_threads=n_threads).data)
        return self.w_ih_p, self.recurrent_t

    def format_operands(self, precision, backward=False, n_threads=None, block=16, residual=0):
        """The forward operands (w_ih_t, the recurrent blocks) in `precision` ('bf16', 'int8',
        'dfp16', 'ternary' with blocks of `block` inputs and `residual` extra levels), or with
        backward=True the backward's (w_ih_p, recurrent_t): converted once, on
        first use, and kept with this object -- a training step makes a new RecurrentWeights over
        its updated parameters, so it converts them once per step.  Keep the fp32 arrays unchanged
        while this object is in use (as for the packed operands).  The recurrent weights are
        quantized per tensor (one int8 scale, one DFP-16 exponent): a per-channel multiplier
        would have to follow the calls' gate pairing."""
        key = (precision, bool(backward)) + ((block, residual) if precision == "ternary" else ())
        if key not in self._formats:
            w_ih, rec = self.backward_operands(n_threads) if backward else (self.w_ih_t, self.recurrent)
            self._formats[key] = _format_operands(w_ih, rec, precision, n_threads, block, residual)
        return self._formats[key]


def _unpacked(m):
    """The dense (K, n) matrix of an fp32 PackedMatrix."""
    nb, kb = m.data.shape[:2]
    K, n = m.shape
    return np.ascontiguousarray(m.data.transpose(1, 2, 0, 3).reshape(kb * CB, nb * CB)[:K, :n])


def _ternary_operands(w_ih, rec, block, residual):
    """_FormatOperands for ternary: W_ih as matmul's PackedTernary; W_hh ternarized per gate unit
    over its padded inputs (blocks of `block` inputs), its codes reordered so that each (gate,
    output block) row holds every level's Kb input blocks one after another."""
    gates, kb = rec.shape[:2]
    kp = kb * CB
    dense = np.ascontiguousarray(rec.transpose(0, 1, 4, 2, 3).reshape(gates * kp, kp))   # [g*Kp + u][c]
    tb = quantized.block_ternary_weights(formats.ternarize(dense[:, :, None, None], block=block, residual=residual))
    L = tb.levels
    codes = np.ascontiguousarray(tb.codes.reshape(L, gates * kb, kb, CB, CB).swapaxes(0, 1)
                                 .reshape(gates, kb, L * kb, CB, CB))
    groups = tb.alphas.shape[-2]
    alphas = np.ascontiguousarray(tb.alphas.reshape(L, gates * kb, kb, groups, CB).swapaxes(0, 1)
                                  .reshape(gates * kb, L * kb, groups, CB))
    return _FormatOperands(pack_matmul_operand(_unpacked(w_ih), precision="ternary", block=block, residual=residual),
                           codes, sums=tb.code_sums, alphas=alphas, block=tb.block)


def _format_operands(w_ih, rec, precision, n_threads, block=16, residual=0):
    """_FormatOperands of w_ih (an fp32 PackedMatrix) and rec (blocks [..][16 in][16 out]),
    converted from their packed blocks directly: a training step pays this for every layer, so
    it stays a few vectorized passes (no unpacking to the dense matrix and packing again)."""
    fn = "the recurrent weights"
    code, threads = cpu.isa_code(None), cpu.resolve_threads(n_threads)
    if precision == "ternary":
        return _ternary_operands(w_ih, rec, block, residual)
    if precision == "bf16":
        return _FormatOperands(PackedMatrix(formats.fp32_blocks_to_bf16_vnni(w_ih.data, n_threads=threads),
                                            w_ih.shape, "bf16"),
                               formats.fp32_blocks_to_bf16_vnni(rec, n_threads=threads))
    if precision == "int8":
        # w_ih: symmetric per column (output unit) as pack_matmul_operand quantizes, padding 0
        data = w_ih.data
        nb, kb = data.shape[:2]
        formats._absmax(data, code, threads, fn, "int8 quantization")            # NaN/Inf refused, named
        scales = formats._int8_scales(np.abs(data).max(axis=(1, 2)), 127)                     # (nb, 16)
        codes = np.clip(np.rint(data / scales[:, None, None, :].astype(np.float64)), -127, 127).astype(np.int8)
        sums = np.ascontiguousarray(codes.sum(axis=2, dtype=np.int32).transpose(1, 0, 2).reshape(kb, nb * CB))
        packed = PackedMatrix(quantized._vnni_groups(codes, quantized.GROUP["int8"]), w_ih.shape, "int8",
                              (scales.reshape(-1), sums))
        # recurrent: one scale for the tensor (its multiplier must not depend on the gate pairing)
        absmax = formats._absmax(rec, code, threads, fn, "int8 quantization")
        scale = float(formats._int8_scales([absmax], 127)[0])
        q16 = np.empty(rec.shape, np.int16)
        _precision.dfp16_quantize(rec.reshape(-1), q16.reshape(-1), 1.0 / scale, 127, False, 0, code, threads)
        codes = q16.astype(np.int8)
        sums = codes.sum(axis=(-3, -2), dtype=np.int64).reshape(-1)        # per output unit, in G's column order
        return _FormatOperands(packed, quantized._vnni_groups(codes, quantized.GROUP["int8"]), scale=scale, sums=sums)
    d, bound = formats._to_dfp16(w_ih.data, formats.DFP16_HEADROOM, "nearest", 0, code, threads, fn,
                                 within_headroom=True)
    packed = PackedMatrix(quantized._vnni_groups(d.mantissas, quantized.GROUP["dfp16"]), w_ih.shape, "dfp16",
                          (d.exponent, int(bound)))
    d, bound = formats._to_dfp16(rec, formats.DFP16_HEADROOM, "nearest", 0, code, threads, fn, within_headroom=True)
    return _FormatOperands(packed, quantized._vnni_groups(d.mantissas, quantized.GROUP["dfp16"]),
                           exponent=d.exponent, bound=int(bound))


def _f32(a, name, shape):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"rnn: {name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"rnn: {name} must be float32, got {a.dtype}")
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"rnn: {name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    return np.ascontiguousarray(a)


def packed_gate_shape(gates, K, inputs):
    """The shape of a gate-stacked (gates*K, inputs) weight in the kernels' layout:
    (gates*Kb, ceil(inputs/16), 16, 16)."""
    return (gates * -(-K // CB), -(-inputs // CB), CB, CB)


def pack_gate_weights(w, gates, *, n_threads=None):
    """A gate-stacked weight in PyTorch's layout (W_ih (gates*K, C) or W_hh (gates*K, K)) ->
    the layout the kernels read and nn.LSTM/GRU/RNN keep their parameters in: the packed
    right-hand operand of x @ W^T with each gate padded to a multiple of 16 units,
        out[g*Kb + u//16][c//16][c%16][u%16] = W[g*K + u][c],
    zero for padded units and inputs.  Shape: packed_gate_shape(gates, K, w.shape[1])."""
    gates = positive_int(gates, "gates", "pack_gate_weights")
    if not isinstance(w, np.ndarray) or w.ndim != 2 or w.shape[0] % gates or w.shape[0] == 0 or w.shape[1] < 1:
        raise ValueError(f"pack_gate_weights: expected a ({gates}K, inputs) array, got {getattr(w, 'shape', None)}")
    w = _f32(w, "w", w.shape)
    out = np.empty(packed_gate_shape(gates, w.shape[0] // gates, w.shape[1]), np.float32)
    _rnn.pack_gate_weights(w, gates, out, cpu.resolve_threads(n_threads))
    return out


def unpack_gate_weights(packed, gates, K, inputs):
    """The inverse of pack_gate_weights: (gates*K, inputs) in PyTorch's layout (a new array)."""
    want = packed_gate_shape(gates, K, inputs)
    if not isinstance(packed, np.ndarray) or packed.shape != want:
        raise ValueError(f"unpack_gate_weights: expected an array of shape {want} for {gates} gate(s) of K={K} "
                         f"and {inputs} inputs, got {getattr(packed, 'shape', None)}")
    kb, ib = want[0] // gates, want[1]
    full = packed.reshape(gates, kb, ib, CB, CB).transpose(0, 1, 4, 2, 3).reshape(gates, kb * CB, ib * CB)
    return np.ascontiguousarray(full[:, :K, :inputs].reshape(gates * K, inputs), dtype=np.float32)


def packed_gate_offsets(gates, K, inputs, rows, cols):
    """Flat offsets in the pack_gate_weights layout of the logical elements W[rows, cols]
    (integer arrays of the same shape, rows in [0, gates*K), cols in [0, inputs))."""
    fn = "packed_gate_offsets"
    gates, K, inputs = (positive_int(v, n, fn) for v, n in ((gates, "gates"), (K, "K"), (inputs, "inputs")))
    rows, cols = np.asarray(rows), np.asarray(cols)
    for name, a, bound in (("rows", rows, gates * K), ("cols", cols, inputs)):
        if a.dtype.kind not in "iu":
            raise TypeError(f"{fn}: {name} must be integers, got dtype {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= bound):
            raise ValueError(f"{fn}: {name} must lie in [0, {bound}), got values from {a.min()} to {a.max()}")
    if rows.shape != cols.shape:
        raise ValueError(f"{fn}: rows and cols must have the same shape, got {rows.shape} and {cols.shape}")
    rows, cols = rows.astype(np.int64), cols.astype(np.int64)
    kb, ib = -(-K // CB), -(-inputs // CB)
    g, u = rows // K, rows % K
    return (((g * kb + u // CB) * ib + cols // CB) * CB + cols % CB) * CB + u % CB


def _gate_bias(cell, gates, K, b_ih, b_hh):
    """(bias, b_hn): the x-side bias (gates*Kp,) the input projection adds, and the GRU's b_hn
    (Kp,) (empty for the other cells), zero for padded units."""
    kp = -(-K // CB) * CB
    bias = np.zeros((gates, kp), np.float32)
    bias[:, :K] = b_ih.reshape(gates, K)
    bias[:, :K] += b_hh.reshape(gates, K)
    b_hn = _EMPTY
    if cell == "gru":  # b_hn acts inside r * (W_hn h + b_hn), not on the pre-activation
        bias[2, :K] = b_ih[2 * K:]
        b_hn = np.zeros(kp, np.float32)
        b_hn[:K] = b_hh[2 * K:]
    return bias.reshape(-1), b_hn


def weights_from_packed(cell, w_ih, w_hh, b_ih, b_hh, C, K):
    """RecurrentWeights over weights already in the kernels' layout (pack_gate_weights' arrays,
    used in place, no copy) and biases (gates*K,) in PyTorch's layout: what nn.LSTM/GRU/RNN do
    at every forward."""
    if not isinstance(cell, str) or cell not in _CELL_GATES:
        raise ValueError(f"weights_from_packed: cell must be one of {', '.join(_CELL_GATES)}, got {cell!r}")
    gates = _CELL_GATES[cell]
    kb, kp = -(-K // CB), -(-K // CB) * CB
    for name, a, inputs in (("w_ih", w_ih, C), ("w_hh", w_hh, K)):
        want = packed_gate_shape(gates, K, inputs)
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != want or not a.flags.c_contiguous:
            raise ValueError(f"weights_from_packed: {name} must be a C-contiguous float32 array of shape {want} "
                             f"(pack_gate_weights), got {getattr(a, 'dtype', None)} {getattr(a, 'shape', None)}")
    b_ih = _f32(b_ih, "b_ih", (gates * K,))
    b_hh = _f32(b_hh, "b_hh", (gates * K,))
    bias, b_hn = _gate_bias(cell, gates, K, b_ih, b_hh)
    return RecurrentWeights(cell, gates, C, K, PackedMatrix(w_ih, (C, gates * kp)), bias, b_hn,
                            w_hh.reshape(gates, kb, kb, CB, CB))


def _prepare(cell, gates, w_ih, w_hh, b_ih, b_hh, n_threads):
    g = f"{gates}K"
    for name, a in (("w_ih", w_ih), ("w_hh", w_hh)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"prepare_{cell}: {name} must be a numpy array, got {type(a).__name__}")
    if not isinstance(w_hh, np.ndarray) or w_hh.ndim != 2 or w_hh.shape[0] != gates * w_hh.shape[1] or w_hh.shape[1] < 1:
        raise ValueError(f"{cell}: w_hh must have shape ({g}, K), got {getattr(w_hh, 'shape', None)}")
    K = w_hh.shape[1]
    if not isinstance(w_ih, np.ndarray) or w_ih.ndim != 2 or w_ih.shape[0] != gates * K or w_ih.shape[1] < 1:
        raise ValueError(f"{cell}: w_ih must have shape ({g}, C) = ({gates * K}, C) for K={K}, got {getattr(w_ih, 'shape', None)}")
    C = w_ih.shape[1]
    w_ih = _f32(w_ih, "w_ih", (gates * K, C))
    w_hh = _f32(w_hh, "w_hh", (gates * K, K))
    b_ih = np.zeros(gates * K, np.float32) if b_ih is None else _f32(b_ih, "b_ih", (gates * K,))
    b_hh = np.zeros(gates * K, np.float32) if b_hh is None else _f32(b_hh, "b_hh", (gates * K,))
    # Forward operands only, one parallel pass per matrix; a backward transposes them when it
    # first needs them (RecurrentWeights.backward_operands), so inference never pays for that.
    n_threads = cpu.resolve_threads(n_threads)
    return weights_from_packed(cell, pack_gate_weights(w_ih, gates, n_threads=n_threads),
                               pack_gate_weights(w_hh, gates, n_threads=n_threads), b_ih, b_hh, C, K)


def prepare_lstm(w_ih, w_hh, b_ih=None, b_hh=None, *, n_threads=None):
    """Validate and re-block LSTM weights (w_ih (4K, C), w_hh (4K, K), biases (4K,))."""
    return _prepare("lstm", LSTM_GATES, w_ih, w_hh, b_ih, b_hh, n_threads)


def prepare_rnn(w_ih, w_hh, b_ih=None, b_hh=None, *, n_threads=None):
    """Validate and re-block vanilla RNN weights (w_ih (K, C), w_hh (K, K), biases (K,))."""
    return _prepare("rnn", RNN_GATES, w_ih, w_hh, b_ih, b_hh, n_threads)


def prepare_gru(w_ih, w_hh, b_ih=None, b_hh=None, *, n_threads=None):
    """Validate and re-block GRU weights (w_ih (3K, C), w_hh (3K, K), biases (3K,); r, z, n)."""
    return _prepare("gru", GRU_GATES, w_ih, w_hh, b_ih, b_hh, n_threads)


def _state(s, name, N, K, kb):
    out = np.zeros((kb, N, CB), np.float32)
    if s is not None:
        s = _f32(s, name, (N, K))
        out[:] = np.pad(s, ((0, 0), (0, kb * CB - K))).reshape(N, kb, CB).transpose(1, 0, 2)
    return out


def _unblock_state(s, N, K):
    """[Kb][N][16] -> (N, K)."""
    return np.ascontiguousarray(s.transpose(1, 0, 2).reshape(N, -1)[:, :K])


def _weights(cell, prepare, weights, w_ih, w_hh, b_ih, b_hh, n_threads):
    if weights is None:
        if w_ih is None or w_hh is None:
            raise ValueError(f"{cell}_forward: pass w_ih and w_hh, or weights=prepare_{cell}(...)")
        return prepare(w_ih, w_hh, b_ih, b_hh, n_threads=n_threads)
    if not isinstance(weights, RecurrentWeights) or weights.cell != cell:
        raise TypeError(f"{cell}_forward: weights must come from dlcpu.rnn.prepare_{cell}")
    return weights


def _sequence(fn, x, weights):
    if not isinstance(x, np.ndarray) or x.ndim != 3:
        raise ValueError(f"{fn}: x must be a (T, N, C) array, got {getattr(x, 'shape', None)}")
    T, N, C = x.shape
    if T < 1 or N < 1:
        raise ValueError(f"{fn}: need T >= 1 and N >= 1, got x {x.shape}")
    if C != weights.C:
        raise ValueError(f"{fn}: x has C={C} features but w_ih expects C={weights.C} (x {x.shape})")
    return _f32(x, "x", (T, N, C)), T, N, C


def _blocked_sequence(a, T, N, K, kb):
    """(T, N, K) -> [T][Kb][N][16], zero-padded, in a scratch buffer (valid for this call)."""
    out = scratch("rnn.dy", (T, kb, N, CB))
    full = K // CB
    out[:, :full] = a[:, :, :full * CB].reshape(T, N, full, CB).transpose(0, 2, 1, 3)
    if full < kb:
        out[:, full, :, :K - full * CB] = a[:, :, full * CB:]
        out[:, full, :, K - full * CB:] = 0.0
    return out


def _forward_setup(cell, prepare, x, weights, w_ih, w_hh, b_ih, b_hh, h0, n_threads):
    """Common start of every forward: validated weights and x (as x2 (T*N, C)), sizes, and the
    blocked hidden states H [T+1][Kb][N][16] with h0 in H[0]."""
    fn = f"{cell}_forward"
    n_threads = cpu.resolve_threads(n_threads)
    weights = _weights(cell, prepare, weights, w_ih, w_hh, b_ih, b_hh, n_threads)
    x, T, N, C = _sequence(fn, x, weights)
    K, kb = weights.K, weights.Kb
    # the gate pre-activations G, the states H (and Cs), the output: refused up front when they
    # could never be allocated, instead of a MemoryError from deep inside numpy
    fits_in_memory(4.0 * (T + 1) * N * kb * CB * (weights.gates + 3), f"the buffers of a sequence x {x.shape}", fn)
    H = np.empty((T + 1, kb, N, CB), np.float32)
    H[0] = _state(h0, "h0", N, K, kb)
    return weights, x.reshape(T * N, C), H, T, N, K, kb, n_threads


def _input_projection(weights, x2, n_threads, isa, precision, bias, ternary=None):
    """G = x.W_ih^T + b for all T at once: one large GEMM, before the time loop.

    The padded units' columns of W_ih^T are zero, so for finite x they come out exactly 0; but an
    Inf in x gives 0 * Inf = NaN there, the padded h turns NaN, and the next step's recurrent GEMM
    (0 * NaN) spreads it to every real unit where PyTorch stays finite.  Writing the padded
    columns back to 0 keeps them inert (a no-op for finite input)."""
    if precision == "ternary":
        block, residual, levels = ternary
        w_ih_t = weights.format_operands("ternary", n_threads=n_threads, block=block, residual=residual).w_ih
        G = matmul(x2, w_ih_t, bias=bias, precision="ternary", levels=levels, n_threads=n_threads, isa=isa)
    else:
        w_ih_t = weights.w_ih_t if precision == "fp32" else weights.format_operands(precision, n_threads=n_threads).w_ih
        G = matmul(x2, w_ih_t, bias=bias, precision=precision, n_threads=n_threads, isa=isa)
    kp = weights.Kb * CB
    if kp != weights.K:
        G.reshape(G.shape[0], weights.gates, kp)[:, :, weights.K:] = 0.0
    return G


class RecurrentCache(dict):
    """What a backward needs from its forward (train=True); opaque to callers.  The backward
    checks that the cache is one of these and came from the same kind of cell."""

    __slots__ = ()

    def __repr__(self):
        w = self["weights"]
        return f"RecurrentCache(cell={w.cell!r}, T={self['T']}, N={self['N']}, C={w.C}, K={w.K})"

    def _check(self, fn):
        """Its entries must still agree with each other (a dict stays reachable): the time loops
        index every buffer by T, N and the weights' sizes."""
        want = {"weights", "x", "G", "H", "Cs", "HN", "cell", "T", "N", "isa", "n_threads", "activation_impl",
                "precision"}
        ok = set(self) == want and isinstance(self["weights"], RecurrentWeights)
        if ok:
            w, T, N = self["weights"], self["T"], self["N"]
            ok = (isinstance(T, int) and isinstance(N, int) and T >= 1 and N >= 1
                  and self["cell"] in _rnn.CELLS and self["cell"].split("_")[0] == w.cell
                  and self["activation_impl"] in ACTIVATION_IMPLS and self["precision"] in TRAINING_PRECISIONS)
        if ok:
            kp = w.Kb * CB
            shapes = {"x": (T * N, w.C), "G": (T * N, w.gates * kp), "H": (T + 1, w.Kb, N, CB),
                      "Cs": (T + 1, w.Kb, N, CB) if w.cell == "lstm" else _EMPTY.shape,
                      "HN": (T * N, kp) if w.cell == "gru" else _EMPTY.shape}
            ok = all(isinstance(self[k], np.ndarray) and self[k].dtype == np.float32 and self[k].flags.c_contiguous
                     and self[k].shape == shape for k, shape in shapes.items())
        if not ok:
            raise ValueError(f"{fn}: cache is not a consistent RecurrentCache (its entries were changed after the "
                             "forward made it)")
        cpu.resolve_threads(self["n_threads"])
        cpu.isa_code(self["isa"])


def _column_sums(a):
    """Bias gradients: column sums of the pre-activation gradients, accumulated in float64."""
    return a.sum(axis=0, dtype=np.float64).astype(np.float32)


def _backward_setup(dy, cache, dh_T, cell):
    """Common start of every backward: sizes, dy blocked per step, the carried dh."""
    if not isinstance(cache, RecurrentCache) or cache["weights"].cell != cell:
        got = repr(cache) if isinstance(cache, RecurrentCache) else type(cache).__name__
        raise TypeError(f"{cell}_backward: cache must be what {cell}_forward(..., train=True) returned, got {got}")
    cache._check(f"{cell}_backward")
    w = cache["weights"]
    T, N, K, kb = cache["T"], cache["N"], w.K, w.Kb
    dY = _blocked_sequence(_f32(dy, "dy", (T, N, K)), T, N, K, kb)
    return w, T, N, K, kb, kb * CB, dY, _state(dh_T, "dh_T", N, K, kb)


_FP32_FORMAT_ARGS = ("fp32", _EMPTY_U8, _EMPTY_U8, _EMPTY_U32)


def _bytes(a):
    return a.reshape(-1).view(np.uint8)


def _forward_format(weights, H, precision, isa, n_threads, fn, ternary=None):
    """(RecurrentFormat, x-side bias, b_hn, ternary levels run) of a forward in `precision`, with
    h0 (in H[0]) in the format's shadow.  int8, DFP-16 and ternary give h one scale for the whole
    sequence, from its bound (_state_bound).  int8's zero point adds 128 * (column sums of the
    codes) to every product: a constant, taken off the bias here instead of subtracted at every
    flush."""
    bias, b_hn = weights.bias, (weights.b_hn if weights.cell == "gru" else _EMPTY)
    if precision == "fp32":
        return RecurrentFormat(*_FP32_FORMAT_ARGS), bias, b_hn, None
    code, threads = cpu.isa_code(isa), cpu.resolve_threads(n_threads)
    name = cpu.ISA_BY_CODE[code]
    if precision == "ternary":
        return _ternary_format(weights, H, code, threads, fn, *ternary)
    ops = weights.format_operands(precision, n_threads=n_threads)
    w = _bytes(ops.recurrent)
    if precision == "bf16":
        shadow = np.empty(H.shape, np.uint16)
        shadow[0] = formats.fp32_to_bf16_bits(H[0], n_threads=threads)
        return RecurrentFormat("bf16", w, _bytes(shadow), _EMPTY_U32, native=formats.native_bf16(name)), bias, b_hn, None
    bound = _state_bound(weights, H, code, threads, fn)
    native = quantized.native_vnni(name)
    if precision == "int8":
        s_h = bound / 127.0
        shadow = np.empty(H.shape, np.uint8)
        _precision.quantize_u8(H[0].reshape(-1), shadow[0].reshape(-1), s_h, 128, code, threads)
        mult = np.float32(s_h * ops.scale)
        bias, b_hn = _zero_point_off_bias(weights, bias, b_hn, np.float64(mult) * 128.0 * ops.sums)
        steps, blocks = quantized.chain_schedule("int8")
        return RecurrentFormat("int8", w, _bytes(shadow), _EMPTY_U32, quant=s_h, mult=mult, flush_steps=steps,
                               flush_blocks=blocks, native=native), bias, b_hn, None
    e_h = formats.dfp16_exponent(bound)
    limit = min(formats.dfp16_limit(e_h), 2 ** (formats.DFP16_BITS - 1 - formats.DFP16_HEADROOM) - 1)
    shadow = np.empty(H.shape, np.int16)
    _precision.dfp16_quantize(H[0].reshape(-1), shadow[0].reshape(-1), math.ldexp(1.0, -e_h), limit, False, 0,
                              code, threads)
    steps, blocks = quantized.chain_schedule("dfp16", limit, ops.bound)
    return RecurrentFormat("dfp16", w, _bytes(shadow), _EMPTY_U32, quant=math.ldexp(1.0, -e_h), limit=limit,
                           mult=quantized.product_exponent(e_h, ops.exponent, fn), flush_steps=steps,
                           flush_blocks=blocks, native=native), bias, b_hn, None


@contextlib.contextmanager
def _errors_named(fn):
    """Errors of the layer's GEMMs (a DFP-16 product exponent past fp32, say) named after the
    layer's function, which is what the caller called."""
    try:
        yield
    except ValueError as exc:
        if not str(exc).startswith("matmul: "):
            raise
        raise ValueError(f"{fn}: {str(exc).removeprefix('matmul: ')}") from None


def _state_bound(weights, H, code, threads, fn):
    """The bound on |h| that fixes the integer formats' scale of h for the whole sequence: 1 for
    the LSTM and the tanh RNN, whose h_t lies in (-1, 1) -- an h0 outside it is refused (every
    later h would be quantized on its coarse scale); max(1, max|h0|) for the GRU, whose h_t is a
    convex combination of its candidate's and h_{t-1}.  The biases and c0 must be finite too: a
    NaN in the state would be quantized to a finite code and hidden."""
    absmax = formats._absmax(H[0], code, threads, fn, "the hidden state's scale")
    for name, a in (("bias", weights.bias), ("b_hn", weights.b_hn)):
        if a.size and not np.isfinite(a).all():
            raise ValueError(f"{fn}: the {name} holds NaN or Inf, which the integer formats cannot carry in h")
    if weights.cell != "gru" and absmax > 1.0:
        raise ValueError(f"{fn}: the integer formats quantize h on one scale for the sequence, |h| <= 1 for this "
                         f"cell, but h0 reaches {absmax:.3g}; pass an h0 within [-1, 1] (what the cell produces), "
                         "or use fp32/bf16")
    return max(1.0, absmax)


def _zero_point_off_bias(weights, bias, b_hn, comp):
    """The u8 zero point adds comp (per gate unit) to every recurrent product: take it off the
    x-side bias, or for the GRU's n gate (whose recurrent product is kept apart) off b_hn."""
    comp = comp.astype(np.float32)
    kp = weights.Kb * CB
    if weights.cell == "gru":
        return np.concatenate([bias[:2 * kp] - comp[:2 * kp], bias[2 * kp:]]), b_hn - comp[2 * kp:]
    return bias - comp, b_hn


def _ternary_format(weights, H, code, threads, fn, block, residual, levels):
    """The forward's RecurrentFormat for ternary weights: as int8's u8 shadow of h (one copy per
    level run), the multipliers alpha * s_h beside every code block, a chain per block of N."""
    ops = weights.format_operands("ternary", n_threads=threads, block=block, residual=residual)
    stored = ops.sums.shape[0]
    levels = stored if levels is None else positive_int(levels, "levels", fn)
    if levels > stored:
        raise ValueError(f"{fn}: levels must be <= {stored} (1 base + {stored - 1} residual), got {levels}")
    bound = _state_bound(weights, H, code, threads, fn)
    s_h = bound / 127.0
    shadow = np.empty((H.shape[0], levels) + H.shape[1:], np.uint8)
    _precision.quantize_u8(H[0].reshape(-1), shadow[0, 0].reshape(-1), s_h, 128, code, threads)
    shadow[0, 1:] = shadow[0, 0]
    bias, b_hn = weights.bias, (weights.b_hn if weights.cell == "gru" else _EMPTY)
    bias, b_hn = _zero_point_off_bias(weights, bias, b_hn, s_h * 128.0 * ops.sums[:levels].sum(axis=0))
    n = ops.block
    steps, blocks = (n // quantized.GROUP["int8"], 1) if n < CB else (CB // quantized.GROUP["int8"], n // CB)
    fmt = RecurrentFormat("ternary", _bytes(ops.recurrent), _bytes(shadow), _EMPTY_U32, quant=s_h,
                          flush_steps=steps, flush_blocks=blocks, native=quantized.native_vnni(cpu.ISA_BY_CODE[code]),
                          levels=levels, row_levels=stored, block_scale=(ops.alphas * np.float32(s_h)).reshape(-1),
                          block_groups=ops.alphas.shape[2])
    return fmt, bias, b_hn, levels


def _backward_format(w, precision, dGb, gate_items, isa, n_threads):
    """The RecurrentFormat of a backward's recurrent product: bf16, or DFP-16 with the step's
    exponent taken from the step's largest |dG| (pyx/rnn.pyx quantize_gates)."""
    if precision == "fp32":
        return RecurrentFormat(*_FP32_FORMAT_ARGS)
    name = cpu.ISA_BY_CODE[cpu.isa_code(isa)]
    ops = w.format_operands(precision, backward=True, n_threads=n_threads)
    if precision == "bf16":
        shadow = scratch("rnn.dgb16", (dGb.size,), np.uint16)
        return RecurrentFormat("bf16", _bytes(ops.recurrent), _bytes(shadow), _EMPTY_U32,
                               native=formats.native_bf16(name))
    shadow = scratch("rnn.dgb16", (dGb.size,), np.int16)
    limit = 2 ** (formats.DFP16_BITS - 1 - formats.DFP16_HEADROOM) - 1
    steps, blocks = quantized.chain_schedule("dfp16", limit, ops.bound)
    return RecurrentFormat("dfp16", _bytes(ops.recurrent), _bytes(shadow), np.zeros(gate_items, np.uint32),
                           limit=limit, w_exponent=ops.exponent, headroom=formats.DFP16_HEADROOM, flush_steps=steps,
                           flush_blocks=blocks, native=quantized.native_vnni(name))


def _run_forward(cell, weights, x2, H, T, N, isa, n_threads, train, act, precision, Cs=_EMPTY, HN=_EMPTY,
                 ternary=None):
    """The input projection, the time loops on the cell's plan and the outputs, shared by every
    cell: (y (T, N, K), h_T (N, K), the cache for the backward or None unless train).  Cs: the
    LSTM's cell states, HN: the GRU's W_hn h + b_hn per step (empty for the other cells).
    Other precisions: the products read the weights and a shadow of H in the format."""
    fmt, bias, b_hn, levels = _forward_format(weights, H, precision, isa, n_threads, f"{weights.cell}_forward",
                                              ternary)
    with _errors_named(f"{weights.cell}_forward"):
        G = _input_projection(weights, x2, n_threads, isa, precision, bias, ternary and ternary[:2] + (levels,))
    plan = choose_recurrent_tiles(cell, T, N, weights.Kb, cpu.isa_code(isa), n_threads, act)
    if _rnn.recurrent_forward_f32(plan.c, G.reshape(-1), weights.recurrent.reshape(-1), H.reshape(-1),
                                  Cs.reshape(-1), HN.reshape(-1), b_hn, fmt):
        raise RuntimeError(f"{weights.cell}_forward: a BRGEMM call failed ({plan.summary()})")
    y, h_T = _outputs(H, T, N, weights.K, weights.Kb * CB)
    cache = None
    if train:
        cache = RecurrentCache(x=x2, G=G, H=H, Cs=Cs, HN=HN, cell=cell, weights=weights, T=T, N=N, isa=isa,
                               n_threads=n_threads, activation_impl=act, precision=precision)
    return y, h_T, cache


def _backward(cell, cache, dY, dh, dG, dGb, dc=_EMPTY, dGh=_EMPTY):
    """Run the time loops of a backward on the plan its forward ran."""
    w, T, N = cache["weights"], cache["T"], cache["N"]
    plan = choose_recurrent_tiles(cell, T, N, w.Kb, cpu.isa_code(cache["isa"]), cache["n_threads"],
                                  cache["activation_impl"])
    _, recurrent_t = w.backward_operands(cache["n_threads"])
    fmt = _backward_format(w, cache["precision"], dGb, plan.gate_items, cache["isa"], cache["n_threads"])
    if _rnn.recurrent_backward_f32(plan.c, cache["G"].reshape(-1), cache["H"].reshape(-1),
                                   cache["Cs"].reshape(-1), cache["HN"].reshape(-1),
                                   recurrent_t.reshape(-1), dY.reshape(-1), dh.reshape(-1), dc.reshape(-1),
                                   dG.reshape(-1), dGh.reshape(-1), dGb.reshape(-1), fmt):
        if cache["precision"] == "dfp16":
            if not (np.isfinite(dG).all() and np.isfinite(dGh).all()):
                raise ValueError(f"{cell}_backward: the gate gradients hold NaN or Inf, where DFP-16's shared exponent "
                                 "is undefined (check dy and the forward's outputs)")
            raise ValueError(f"{cell}_backward: at some step the DFP-16 product exponent E_dG + E_W left fp32's normal "
                             "range [-126, 127] (gate gradients and recurrent weights too far apart in magnitude); "
                             "rescale dy or train in bf16")
        raise RuntimeError(f"{cell}_backward: a BRGEMM call failed ({plan.summary()})")


def _outputs(H, T, N, K, kp):
    """(y (T, N, K), h_T (N, K)) from the blocked hidden states."""
    y = np.ascontiguousarray(H[1:].transpose(0, 2, 1, 3).reshape(T, N, kp)[:, :, :K])
    return y, _unblock_state(H[T], N, K)


def _input_grad(need_dx, dG, w, T, N, n_threads, isa, precision):
    """dx = dG . W_ih over all T as one GEMM, or None when the caller does not need it."""
    if not need_dx:
        return None
    w_ih_p = (w.backward_operands(n_threads)[0] if precision == "fp32"
              else w.format_operands(precision, backward=True, n_threads=n_threads).w_ih)
    return matmul(dG, w_ih_p, precision=precision, n_threads=n_threads, isa=isa).reshape(T, N, w.C)


def _weight_grads(w, dG, x2, H, T, N, kp, gates, n_threads, isa, need_dx, precision, into=None):
    """dx (or None), dW_ih and dW_hh from the pre-activation gradients dG (T*N, gates*Kp): one
    GEMM for dx, and dG^T packed once (transposed on the fly) for both weight gradients.  With
    `into` (checked pair of arrays in the kernels' layout) the weight gradients are added to them
    instead, and come back as None.  bf16: every product reads bf16 operands, sums in fp32."""
    dx = _input_grad(need_dx, dG, w, T, N, n_threads, isa, precision)
    if into is not None:
        _accumulate_weight_grads(w, into, dG, dG, x2, H, T, N, n_threads, isa, precision)
        return dx, None, None
    dw_ih, dw_hh = matmul(dG, (x2, _packed_states(H, T, N, precision)), transpose_x=True, precision=precision,
                          n_threads=n_threads, isa=isa)
    return dx, _unpad_gate_rows(dw_ih, gates, w.K, kp), _unpad_gate_rows(dw_hh, gates, w.K, kp, cols=w.K)


def _check_weight_grads(fn, into, w):
    """weight_grads=(gw_ih, gw_hh): writeable float32 arrays of the kernels' layout for w."""
    if into is None:
        return None
    if not isinstance(into, (tuple, list)) or len(into) != 2:
        raise TypeError(f"{fn}: weight_grads must be a pair of arrays (dW_ih, dW_hh) in the kernels' layout")
    for name, a, inputs in (("dW_ih", into[0], w.C), ("dW_hh", into[1], w.K)):
        want = packed_gate_shape(w.gates, w.K, inputs)
        if (not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != want or not a.flags.c_contiguous
                or not a.flags.writeable):
            raise ValueError(f"{fn}: weight_grads {name} must be a writeable C-contiguous float32 array of shape "
                             f"{want} (pack_gate_weights' layout), got {getattr(a, 'dtype', None)} "
                             f"{getattr(a, 'shape', None)}")
    if np.may_share_memory(into[0], into[1]):
        raise ValueError(f"{fn}: the two weight_grads arrays overlap")
    return tuple(into)


def _accumulate_weight_grads(w, into, dG_x, dG_h, x2, H, T, N, n_threads, isa, precision):
    """into[0] += dW_ih and into[1] += dW_hh, written by the GEMMs straight into the kernels'
    layout: x^T @ dG_x and h^T @ dG_h (dG_x and dG_h are the same array except for the GRU),
    each gradient gate matrix packed once as the right-hand operand."""
    kp = w.Kb * CB
    packs = {}
    for target, dG, left, inputs in ((into[0], dG_x, x2, w.C), (into[1], dG_h, _state_rows(H, T, N), kp)):
        if id(dG) not in packs:
            packs[id(dG)] = pack_matmul_operand(dG, precision=precision, n_threads=n_threads)
        if precision in quantized.INTEGER_FORMATS:   # integer products come back fresh: added packed
            product = matmul(left, packs[id(dG)], transpose_x=True, precision=precision, n_threads=n_threads, isa=isa)
            target += pack_matmul_operand(product, n_threads=n_threads).data.reshape(target.shape)
            continue
        out = PackedMatrix(target, (inputs, w.gates * kp))
        matmul(left, packs[id(dG)], transpose_x=True, out=out, accumulate=True, precision=precision,
               n_threads=n_threads, isa=isa)
    _zero_gate_padding(into[0], w.gates, w.K, w.C)
    _zero_gate_padding(into[1], w.gates, w.K, w.K)


def _state_rows(H, T, N):
    """h_0..h_{T-1} from the blocked H [T+1][Kb][N][16] as rows (T*N, Kp)."""
    kb = H.shape[1]
    out = scratch("rnn.state_rows", (T, N, kb, CB))
    out[...] = H[:T].transpose(0, 2, 1, 3)
    return out.reshape(T * N, kb * CB)


def _zero_gate_padding(a, gates, K, inputs):
    """Zero the padded units and inputs of an array in the kernels' layout (a no-op for finite
    data; with Inf/NaN in a step they must not leak into the padding, which the kernels assume
    is zero)."""
    kb, ib = -(-K // CB), -(-inputs // CB)
    v = a.reshape(gates, kb, ib, CB, CB)
    if K % CB:
        v[:, kb - 1, :, :, K % CB:] = 0.0
    if inputs % CB:
        v[:, :, ib - 1, inputs % CB:, :] = 0.0


def _packed_states(H, T, N, precision="fp32"):
    """h_0..h_{T-1} from the blocked H [T+1][Kb][N][16] as the packed (T*N, Kp) right-hand
    operand of matmul: its layout [Kp/16][rows/16][16][16] is H's blocks with the step and batch
    axes merged, so this is one copy (instead of unblocking to row-major and packing that);
    for bf16, rounded and paired from that copy; for the integer formats, the rows themselves
    (matmul quantizes and packs them)."""
    if precision in quantized.INTEGER_FORMATS:
        return _state_rows(H, T, N)
    kb = H.shape[1]
    rows = T * N
    rp = -(-rows // CB) * CB
    data = scratch("rnn.states", (kb, rp, CB))
    data[:, :rows] = H[:T].transpose(1, 0, 2, 3).reshape(kb, rows, CB)
    data[:, rows:] = 0.0
    data = data.reshape(kb, rp // CB, CB, CB)
    if precision == "bf16":
        return PackedMatrix(formats.fp32_blocks_to_bf16_vnni(data), (rows, kb * CB), "bf16")
    return PackedMatrix(data, (rows, kb * CB))


def _unpad_gate_rows(a, gates, K, kp, cols=None):
    """Drop the padded hidden units of each gate's rows (a: (gates*Kp,) or (gates*Kp, n)), and
    of a 2-d a the columns beyond `cols`; no copy when there is nothing to drop."""
    if a.ndim == 1:
        return a if kp == K else np.ascontiguousarray(a.reshape(gates, kp)[:, :K].reshape(-1))
    cols = a.shape[1] if cols is None else cols
    if kp == K and cols == a.shape[1]:
        return a
    return np.ascontiguousarray(a.reshape(gates, kp, a.shape[1])[:, :K, :cols].reshape(gates * K, cols))


def lstm_forward(x, w_ih=None, w_hh=None, b_ih=None, b_hh=None, h0=None, c0=None, *, weights=None,
                 train=False, n_threads=None, isa=None, activation_impl="exact", precision="fp32", block=16,
                 residual=0, levels=None):
    """LSTM over a whole sequence; see the module docstring.  With train=True also returns the
    cache lstm_backward needs.  activation_impl: 'exact', 'fast' (rational tanh) or 'ktanh'
    (K-TanH) for every sigmoid and tanh of the cell, inside the fused gate tiles; the backward
    uses the same flavour.  precision (RECURRENT_PRECISIONS): the operands of both products --
    x and W_ih, h_{t-1} and W_hh -- in 'bf16' (rounded; VDPBF16PS where the CPU has
    avx512_bf16), 'dfp16' (int16 mantissas, VPDPWSSD) or 'int8' (u8 x s8, VPDPBUSD), summed in
    fp32 (int32 chains for the integer formats); x per tensor at each call, W per tensor once
    (format_operands), h at one scale for the sequence from its bound.  States and cell math stay
    fp32.  The backward runs the forward's precision: bf16 or dfp16 (the gate gradients take a
    shared exponent per step); int8 is inference only.  'ternary' (inference): both weight
    matrices block-ternary (precision.ternarize: blocks of `block` inputs, `residual` extra
    levels; made once per RecurrentWeights) on u8 x and h; levels= runs the first levels."""
    act = check_impl(activation_impl, "lstm_forward", "activation_impl")
    precision = _recurrent_precision(precision, "lstm_forward", "lstm", train)
    ternary = _ternary_args(precision, block, residual, levels, "lstm_forward")
    weights, x2, H, T, N, K, kb, n_threads = _forward_setup(
        "lstm", prepare_lstm, x, weights, w_ih, w_hh, b_ih, b_hh, h0, n_threads)
    Cs = np.empty_like(H)
    Cs[0] = _state(c0, "c0", N, K, kb)
    if precision in ("int8", "dfp16", "ternary") and not np.isfinite(Cs[0]).all():
        raise ValueError(f"lstm_forward: c0 holds NaN or Inf, which precision={precision!r} cannot carry in h")
    y, h_T, cache = _run_forward("lstm", weights, x2, H, T, N, isa, n_threads, train, act, precision, Cs=Cs,
                                 ternary=ternary)
    out = (y, (h_T, _unblock_state(Cs[T], N, K)))
    return (*out, cache) if train else out


def lstm_backward(dy, cache, dh_T=None, dc_T=None, *, need_dx=True, weight_grads=None):
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0) from dy (T, N, K) and the forward's cache.
    need_dx=False skips the dx GEMM (a first layer, whose input is data) and returns dx=None.
    weight_grads=(gw_ih, gw_hh): arrays in the kernels' layout (pack_gate_weights' shape; what
    nn layers keep their gradients in) to which dW_ih and dW_hh are added, written there by the
    GEMMs; dw_ih and dw_hh then come back as None."""
    w, T, N, K, kb, kp, dY, dh = _backward_setup(dy, cache, dh_T, "lstm")
    into = _check_weight_grads("lstm_backward", weight_grads, w)
    n_threads, isa = cache["n_threads"], cache["isa"]
    dc = _state(dc_T, "dc_T", N, K, kb)
    dG = scratch("rnn.dg", (T * N, LSTM_GATES * kp))
    dGb = scratch("rnn.dgb", (LSTM_GATES * kb, N, CB))
    _backward("lstm", cache, dY, dh, dG, dGb, dc=dc)
    with _errors_named("lstm_backward"):
        dx, dw_ih, dw_hh = _weight_grads(w, dG, cache["x"], cache["H"], T, N, kp, LSTM_GATES, n_threads, isa, need_dx,
                                         cache["precision"], into)
    db = _unpad_gate_rows(_column_sums(dG), LSTM_GATES, K, kp)
    return dx, dw_ih, dw_hh, db, db.copy(), _unblock_state(dh, N, K), _unblock_state(dc, N, K)


def gru_forward(x, w_ih=None, w_hh=None, b_ih=None, b_hh=None, h0=None, *, weights=None, train=False,
                n_threads=None, isa=None, activation_impl="exact", precision="fp32", block=16, residual=0, levels=None):
    """GRU over a whole sequence (PyTorch's formulation, gate order r, z, n):
        r = s(W_ir x + b_ir + W_hr h + b_hr),  z = s(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h
    Returns y (T, N, K) and h_T; with train=True also the cache gru_backward needs.
    activation_impl, precision, block, residual, levels: as lstm_forward's."""
    act = check_impl(activation_impl, "gru_forward", "activation_impl")
    precision = _recurrent_precision(precision, "gru_forward", "gru", train)
    ternary = _ternary_args(precision, block, residual, levels, "gru_forward")
    weights, x2, H, T, N, _, kb, n_threads = _forward_setup(
        "gru", prepare_gru, x, weights, w_ih, w_hh, b_ih, b_hh, h0, n_threads)
    HN = np.empty((T * N, kb * CB), np.float32)
    y, h_T, cache = _run_forward("gru", weights, x2, H, T, N, isa, n_threads, train, act, precision, HN=HN,
                                 ternary=ternary)
    return (y, h_T, cache) if train else (y, h_T)


def gru_backward(dy, cache, dh_T=None, *, need_dx=True, weight_grads=None):
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dh0) from dy (T, N, K) and gru_forward's cache
    (dx=None with need_dx=False).
    weight_grads=(gw_ih, gw_hh): arrays in the kernels' layout (pack_gate_weights' shape; what
    nn layers keep their gradients in) to which dW_ih and dW_hh are added, written there by the
    GEMMs; dw_ih and dw_hh then come back as None."""
    w, T, N, K, kb, kp, dY, dh = _backward_setup(dy, cache, dh_T, "gru")
    into = _check_weight_grads("gru_backward", weight_grads, w)
    n_threads, isa = cache["n_threads"], cache["isa"]
    dGx = scratch("rnn.dg", (T * N, GRU_GATES * kp))
    dGh = scratch("rnn.dgh", (T * N, GRU_GATES * kp))
    dGhb = scratch("rnn.dgb", (GRU_GATES * kb, N, CB))
    _backward("gru", cache, dY, dh, dGx, dGhb, dGh=dGh)
    # x-side and h-side gradients differ for GRU (r multiplies W_hn h + b_hn): separate GEMMs.
    precision = cache["precision"]
    with _errors_named("gru_backward"):
        dx = _input_grad(need_dx, dGx, w, T, N, n_threads, isa, precision)
        if into is not None:
            _accumulate_weight_grads(w, into, dGx, dGh, cache["x"], cache["H"], T, N, n_threads, isa, precision)
            dw_ih = dw_hh = None
        else:
            dw_ih = _unpad_gate_rows(matmul(dGx, cache["x"], transpose_x=True, precision=precision,
                                            n_threads=n_threads, isa=isa), GRU_GATES, K, kp)
            dw_hh = _unpad_gate_rows(matmul(dGh, _packed_states(cache["H"], T, N, precision), transpose_x=True,
                                            precision=precision, n_threads=n_threads, isa=isa), GRU_GATES, K, kp,
                                     cols=K)
    db_ih = _unpad_gate_rows(_column_sums(dGx), GRU_GATES, K, kp)
    db_hh = _unpad_gate_rows(_column_sums(dGh), GRU_GATES, K, kp)
    return dx, dw_ih, dw_hh, db_ih, db_hh, _unblock_state(dh, N, K)


def rnn_forward(x, w_ih=None, w_hh=None, b_ih=None, b_hh=None, h0=None, *, nonlinearity="tanh",
                weights=None, train=False, n_threads=None, isa=None, activation_impl="exact", precision="fp32",
                block=16, residual=0, levels=None):
    """Vanilla RNN (torch.nn.RNN): h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act tanh
    or relu.  Returns y (T, N, K) and h_T; with train=True also the cache rnn_backward needs.
    activation_impl: the tanh flavour, as lstm_forward's (no effect with relu); precision, block,
    residual, levels: as lstm_forward's."""
    act = check_impl(activation_impl, "rnn_forward", "activation_impl")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"rnn_forward: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    precision = _recurrent_precision(precision, "rnn_forward", f"rnn_{nonlinearity}", train)
    ternary = _ternary_args(precision, block, residual, levels, "rnn_forward")
    weights, x2, H, T, N, _, _, n_threads = _forward_setup(
        "rnn", prepare_rnn, x, weights, w_ih, w_hh, b_ih, b_hh, h0, n_threads)
    y, h_T, cache = _run_forward(f"rnn_{nonlinearity}", weights, x2, H, T, N, isa, n_threads, train, act, precision,
                                 ternary=ternary)
    return (y, h_T, cache) if train else (y, h_T)


def rnn_backward(dy, cache, dh_T=None, *, need_dx=True, weight_grads=None):
    """(dx, dw_ih, dw_hh, db_ih, db_hh, dh0) from dy (T, N, K) and rnn_forward's cache
    (dx=None with need_dx=False).
    weight_grads=(gw_ih, gw_hh): arrays in the kernels' layout (pack_gate_weights' shape; what
    nn layers keep their gradients in) to which dW_ih and dW_hh are added, written there by the
    GEMMs; dw_ih and dw_hh then come back as None."""
    w, T, N, K, kb, kp, dY, dh = _backward_setup(dy, cache, dh_T, "rnn")
    into = _check_weight_grads("rnn_backward", weight_grads, w)
    n_threads, isa = cache["n_threads"], cache["isa"]
    dG = scratch("rnn.dg", (T * N, kp))
    dGb = scratch("rnn.dgb", (kb, N, CB))
    _backward(cache["cell"], cache, dY, dh, dG, dGb)
    with _errors_named("rnn_backward"):
        dx, dw_ih, dw_hh = _weight_grads(w, dG, cache["x"], cache["H"], T, N, kp, RNN_GATES, n_threads, isa, need_dx,
                                         cache["precision"], into)
    db = _column_sums(dG[:, :K])
    return dx, dw_ih, dw_hh, db, db.copy(), _unblock_state(dh, N, K)
