# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Recurrent time loops (LSTM, GRU, RNN): the recurrent BRGEMM of each step with the cell math
fused on its hot tile.  One forward driver and one backward driver, parameterised by the cell.

dlcpu/rnn.py has already computed x.W_ih^T + b for all T as one large GEMM (G, row-major
(T*N, gates*Kp), gate g at columns g*Kp) and re-blocked the recurrent weights; here each step runs
the h.W_hh^T BRGEMMs straight onto G's tiles (beta=1) and finishes the tile in cache
(rnn_f32.h).  The whole time loop is one parallel region: each step is a worksharing loop over
(hidden block, row tile) items with one barrier per step (two in the backward: gate gradients,
then the recurrent product).  Each value is produced by one thread in a fixed order, so results
do not depend on the thread count.

What differs between cells is only the work of one item (a step's recurrent products and gate
math: lstm_fwd_item, gru_fwd_item, rnn_fwd_item; the gate gradients: *_bwd_gates_item) and the
gate count; the time loops, the item split and the backward recurrent product are shared.  The
plan (dlcpu/rnn.py choose_recurrent_tiles) arrives as a RecurrentPlanStruct owning the C struct
dlcpu_rnn_plan_t (pyx/kernels/plans.h): cell, row tile, item counts, checked against the compiled
tile table when it was made.  Buffers a cell does not use are passed empty.

Blocked states: H, Cs [T+1][Kb][N][16] (index 0: the initial state).

Low precision (RecurrentFormat): the recurrent products read the weight blocks in the format's
VNNI groups (bf16 / int16 pairs, int8 quads) and a shadow of their B operand -- H in the forward,
the blocked gate gradients in the backward -- in the format, written by the item that produces
each tile, so the next phase's calls (after the barrier) find it.  Everything else stays fp32: the
states, the cell math and the gradients the steps carry (dh, dc).
  bf16    rounded to nearest even;
  int8    (forward) h as u8 with zero point 128 and a fixed scale s_h = bound/127: h is bounded
          (|h| < 1 after a tanh/sigmoid cell, or |h0|), so no per-step scale is needed; the
          zero point's constant contribution was taken off the bias by dlcpu/rnn.py;
  ternary (forward) as int8, with block-ternary W_hh codes: every block of N inputs is one int32
          chain flushed with its own alpha * s_h (block_scale), and each residual level is another
          Kb blocks of the batch -- the shadow holds one copy of h per level, so a call's batch
          reads level l's codes against copy l;
  DFP-16  forward: h's mantissas at a fixed exponent from the same bound; backward: the gate
          gradients are not bounded, so each step takes its shared exponent from the largest
          |dG| of the step -- every gate item records its tile's largest, and after the barrier
          a quantize phase derives the exponent (every thread the same) and writes the shadow.
The integer products flush into fp32 after chains that provably cannot overflow (brgemm_int.h);
the multiplier is s_h * s_W (int8) or 2**(E_h + E_W) (DFP-16, per step in the backward).
"""
from libc.math cimport frexp, ldexp
from libc.stdint cimport int16_t, int64_t, uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy
from cython.parallel cimport prange, parallel

from dlcpu_kernels cimport (dlcpu_brgemm_f32_t, dlcpu_brgemm_f32, dlcpu_brgemm_bf16, dlcpu_brgemm_int_t,
                            dlcpu_brgemm_int, dlcpu_f32_to_bf16, dlcpu_quantize_u8, dlcpu_dfp16_quantize,
                            dlcpu_absmax_bits, DLCPU_BR_STRD, DLCPU_INT_U8S8, DLCPU_INT_S16)
from dlcpu_plans cimport (dlcpu_rnn_plan_t, DLCPU_CELL_LSTM, DLCPU_CELL_GRU, DLCPU_CELL_RNN_TANH,
                          DLCPU_CELL_RNN_RELU, require_tiles)

cdef extern from "rnn_f32.h" nogil:
    ctypedef struct dlcpu_act_table_t:
        pass
    dlcpu_act_table_t dlcpu_act_table(int isa, int impl)
    int DLCPU_ACT_EXACT, DLCPU_ACT_FAST, DLCPU_ACT_KTANH
    void dlcpu_lstm_fwd_tile(float *gates, int64_t gate_stride, int64_t ldg, const float *c_prev,
                             float *c, float *h, int64_t rows, const dlcpu_act_table_t *act)
    void dlcpu_lstm_bwd_tile(const float *gates, int64_t gate_stride, int64_t ldg,
                             const float *c_prev, const float *c, const float *dh, float *dc,
                             float *dc_prev, float *dgates, int64_t rows,
                             const dlcpu_act_table_t *act)
    void dlcpu_rnn_fwd_tile(float *gates, int64_t ldg, float *h, int64_t rows, int relu,
                            const dlcpu_act_table_t *act)
    void dlcpu_rnn_bwd_tile(const float *gates, int64_t ldg, const float *dh, float *dgates,
                            int64_t rows, int relu)
    void dlcpu_gru_fwd_tile(float *gates, int64_t gate_stride, int64_t ldg, const float *hn,
                            int64_t ldn, const float *h_prev, float *h, int64_t rows,
                            const dlcpu_act_table_t *act)
    void dlcpu_gru_bwd_tile(const float *gates, int64_t gate_stride, int64_t ldg, const float *hn,
                            int64_t ldn, const float *h_prev, const float *dh, float *dh_direct,
                            float *dgx, float *dgh, int64_t rows)


#: Cell codes of the plans (pyx/kernels/plans.h), for dlcpu/rnn.py.
CELLS = {"lstm": DLCPU_CELL_LSTM, "gru": DLCPU_CELL_GRU, "rnn_tanh": DLCPU_CELL_RNN_TANH,
         "rnn_relu": DLCPU_CELL_RNN_RELU}


cdef class RecurrentPlanStruct:
    """The C plan of one recurrent layer's time loops, built once from the planner's fields and
    checked against the tile table: calls of mv=2 or 1 x 1 x up to `rows` batch rows."""
    cdef dlcpu_rnn_plan_t c

    def __init__(self, dict fields):
        self.c = fields
        if self.c.cell not in CELLS.values():
            raise ValueError(f"recurrent plan: unknown cell code {self.c.cell}")
        if self.c.act not in (DLCPU_ACT_EXACT, DLCPU_ACT_FAST, DLCPU_ACT_KTANH):
            raise ValueError(f"recurrent plan: unknown activation flavour code {self.c.act}")
        require_tiles("recurrent", self.c.isa, 2, 1, self.c.rows)

    def fields(self):
        """Every field, read back from the C struct."""
        return self.c


cdef struct rnn_bufs:
    # Forward: G (gates), H (hidden states), R (recurrent weights), and per cell Cs (LSTM cell
    # states) or HN, b_hn (GRU: W_hn h + b_hn per step).  Backward adds dY, dh, dc (LSTM), RT
    # (transposed recurrent weights), dG (for the GRU: of the x side), dGh (GRU: h side), dGb
    # (the blocked gate gradients the recurrent product reads).
    float *G
    float *H
    float *Cs
    float *HN
    const float *R
    const float *b_hn
    const float *RT
    const float *dY
    float *dh
    float *dc
    float *dG
    float *dGh
    float *dGb
    # the format of the recurrent products (RecurrentFormat; fmt FMT_F32: none of the below)
    int fmt
    int elem                # bytes per element of w and shadow
    const uint8_t *w        # the weight blocks (R forward, RT backward) in the format's groups
    uint8_t *shadow         # the B operand (H forward, dGb backward) in the format, same offsets
    double quant            # int8: s_h (u8 = rint(v / s_h) + 128); DFP-16 forward: 2**-E_h
    int limit               # DFP-16: the largest |mantissa|
    float mult              # integer formats, forward: the flush multiplier
    int w_exponent          # DFP-16 backward: E of RT (the step's multiplier is 2**(E_dG + E_RT))
    int headroom            # DFP-16 backward: bits kept free when the step's exponent is chosen
    int flush_steps
    int64_t flush_blocks
    uint32_t *maxes         # DFP-16 backward: per gate item, its tile's largest |dG| (bits)
    int64_t n_maxes
    const float *block_scale    # ternary: alpha * s_h per (A block, sub-block), 16 lanes each
    int block_groups        # ternary: sub-blocks of N channels per A block
    int levels              # ternary: residual levels run (1 otherwise)
    int64_t rowb            # A blocks per (gate, output block) row: Kb * the levels stored
    int64_t sh_state        # the shadow's elements per state: levels copies of [Kb][N][16]
    int isa
    int native              # VDPBF16PS (bf16) or VPDPBUSD/VPDPWSSD (integer formats)


cdef inline float *ptr(float[::1] a) noexcept:
    """The buffer's start, or NULL for an empty (unused) buffer."""
    return &a[0] if a.shape[0] > 0 else NULL


cdef enum:
    FMT_F32 = 0
    FMT_BF16 = 1
    FMT_INT8 = 2
    FMT_DFP16 = 3
    FMT_TERNARY = 4


#: format codes of RecurrentFormat, for dlcpu/rnn.py
FORMATS = {"fp32": FMT_F32, "bf16": FMT_BF16, "int8": FMT_INT8, "dfp16": FMT_DFP16, "ternary": FMT_TERNARY}
_ELEM = {FMT_F32: 4, FMT_BF16: 2, FMT_INT8: 1, FMT_DFP16: 2, FMT_TERNARY: 1}


cdef class RecurrentFormat:
    """The low-precision operands of one direction (forward or backward) of a recurrent layer's
    time loops: the weight blocks in the format's VNNI groups, the shadow buffer the items write
    (both as bytes, sized like the fp32 arrays they stand for, times the ternary levels), and the
    format's constants.  dlcpu/rnn.py builds it; the constructor checks what the kernels index by
    (levels, sub-blocks, multipliers) and the drivers check the sizes against the plan's buffers."""
    cdef const uint8_t[::1] w
    cdef uint8_t[::1] shadow
    cdef uint32_t[::1] maxes
    cdef const float[::1] block_scale
    cdef int fmt, limit, w_exponent, headroom, flush_steps, native, levels, row_levels, block_groups
    cdef int64_t flush_blocks
    cdef double quant
    cdef float mult

    def __init__(self, str fmt, w, shadow, maxes, double quant=0.0, int limit=0, float mult=0.0,
                 int w_exponent=0, int headroom=0, int flush_steps=16, int64_t flush_blocks=1, bint native=0,
                 int levels=1, int row_levels=1, block_scale=None, int block_groups=1):
        self.fmt = FORMATS[fmt]
        self.w = w
        self.shadow = shadow
        self.maxes = maxes
        if self.fmt != FMT_F32 and (self.w.shape[0] == 0 or self.shadow.shape[0] == 0
                                    or self.w.shape[0] % _ELEM[self.fmt] or self.shadow.shape[0] % _ELEM[self.fmt]):
            raise ValueError(f"RecurrentFormat: a {fmt} format needs its weights and shadow buffer")
        if flush_steps < 1 or flush_blocks < 1:
            raise ValueError("RecurrentFormat: the flush schedule must be positive")
        if (self.fmt == FMT_TERNARY) != (block_scale is not None):
            raise ValueError("RecurrentFormat: ternary takes block_scale; the other formats do not")
        if self.fmt != FMT_TERNARY and (levels, row_levels, block_groups) != (1, 1, 1):
            raise ValueError("RecurrentFormat: levels, row_levels and block_groups are 1 outside ternary")
        if levels < 1 or levels > row_levels:
            raise ValueError(f"RecurrentFormat: levels must lie in [1, row_levels={row_levels}], got {levels}")
        # the kernel reads sub-block g / flush_steps of a block's block_groups multipliers
        if self.fmt == FMT_TERNARY and block_groups != max(1, 4 // flush_steps):
            raise ValueError(f"RecurrentFormat: {block_groups} multipliers per block for chains of {flush_steps} "
                             f"quads; the kernel reads {max(1, 4 // flush_steps)}")
        if self.fmt == FMT_TERNARY and (self.w.shape[0] % (256 * row_levels)
                                        or self.w.shape[0] // 256 * block_groups * 16 != block_scale.shape[0]):
            raise ValueError("RecurrentFormat: one block_scale vector per ternary sub-block of whole levels")
        self.levels, self.row_levels, self.block_groups = levels, row_levels, block_groups
        if block_scale is not None:
            self.block_scale = block_scale
        self.quant, self.limit, self.mult = quant, limit, mult
        self.w_exponent, self.headroom = w_exponent, headroom
        self.flush_steps, self.flush_blocks, self.native = flush_steps, flush_blocks, native

    def elements(self):
        """(weight elements, shadow elements): what dlcpu/rnn.py checks against R/RT and H/dGb."""
        if self.fmt == FMT_F32:
            return 0, 0
        return (self.w.shape[0] // _ELEM[self.fmt] // self.row_levels,
                self.shadow.shape[0] // _ELEM[self.fmt] // self.levels)

    cdef void fill(self, rnn_bufs *b, int isa, int64_t state):
        """Point b at this format's buffers; state: the elements of one fp32 state [Kb][N][16]."""
        b.fmt = self.fmt
        b.elem = _ELEM[self.fmt]
        b.w = &self.w[0] if self.w.shape[0] > 0 else NULL
        b.shadow = &self.shadow[0] if self.shadow.shape[0] > 0 else NULL
        b.maxes = &self.maxes[0] if self.maxes.shape[0] > 0 else NULL
        b.n_maxes = self.maxes.shape[0]
        b.quant, b.limit, b.mult = self.quant, self.limit, self.mult
        b.w_exponent, b.headroom = self.w_exponent, self.headroom
        b.flush_steps, b.flush_blocks = self.flush_steps, self.flush_blocks
        b.isa = isa
        b.native = self.native
        b.levels = self.levels
        b.block_groups = self.block_groups
        b.block_scale = &self.block_scale[0] if self.fmt == FMT_TERNARY else NULL
        b.sh_state = state * self.levels


cdef struct item_tile_t:
    # One work item of one step: its tile and the offsets of that tile in every buffer.
    int64_t kb, n0, rows    # first hidden block, first batch row, batch rows
    int64_t N, Kb, Kp       # batch, hidden blocks, padded hidden size (Kb * 16)
    int64_t ldg             # row stride of G and dG: gates * Kp
    int64_t state           # size of one blocked state [Kb][N][16]
    int64_t blk             # the tile in one blocked state (dh, dc): (kb, n0)
    int64_t prev, next      # the tile in the [T+1] states H, Cs: state t, state t + 1
    int64_t gate            # G, dG: row t*N + n0, column kb*16 (gate 0)
    int64_t hn              # the GRU's HN (T*N, Kp): row t*N + n0, column kb*16


cdef inline item_tile_t item_tile(const dlcpu_rnn_plan_t *g, int64_t t, int64_t item,
                                  int64_t blocks_per_item) noexcept nogil:
    """The tile of a work item of step t (items are block-major over (hidden block, row tile))."""
    cdef item_tile_t s
    s.kb = (item // g.n_tiles) * blocks_per_item
    s.n0 = (item % g.n_tiles) * g.rows
    s.rows = min(g.rows, g.N - s.n0)
    s.N = g.N
    s.Kb = g.Kb
    s.Kp = g.Kb * 16
    s.ldg = g.gates * s.Kp
    s.state = g.Kb * g.N * 16
    s.blk = (s.kb * g.N + s.n0) * 16
    s.prev = t * s.state + s.blk
    s.next = s.prev + s.state
    s.gate = (t * g.N + s.n0) * s.ldg + s.kb * 16
    s.hn = (t * g.N + s.n0) * s.Kp + s.kb * 16
    return s


cdef inline void recurrent_call(dlcpu_brgemm_f32_t *p, int64_t blocks, int64_t N) noexcept nogil:
    """Settings every recurrent BRGEMM shares: the batch runs over `blocks` 16-blocks of a
    blocked [blocks][N][16] operand B (h, or gate gradients), A over consecutive 1 KiB blocks."""
    p.kind = DLCPU_BR_STRD
    p.b_trans = 0
    p.k = 16
    p.batch = blocks
    p.a_stride = 256
    p.b_stride = N * 16
    p.b_rstride = 0
    p.nr = 1
    p.c_rstride = 0
    p.relu = 0


cdef inline int recurrent_gemm(dlcpu_brgemm_f32_t *p, const float *a, int64_t a_off, const float *b,
                               int64_t b_off, int64_t bq_off, const rnn_bufs *bufs, float mult) noexcept nogil:
    """One recurrent BRGEMM on A = a + a_off, B = b + b_off: fp32, or in the layer's format on its
    weight blocks at a_off and its shadow at bq_off (mult: the integer formats' flush multiplier
    for this call; ternary: the alphas beside the blocks)."""
    cdef dlcpu_brgemm_int_t q
    cdef float scale[32]
    cdef int i
    if bufs.fmt == FMT_F32:
        p.a = a + a_off
        p.b = b + b_off
        return dlcpu_brgemm_f32(p, bufs.isa)
    if bufs.fmt == FMT_BF16:
        return dlcpu_brgemm_bf16(p, <const uint16_t *>bufs.w + a_off, <const uint16_t *>bufs.shadow + bq_off,
                                 bufs.isa, bufs.native)
    for i in range(32):
        scale[i] = mult
    q.format = DLCPU_INT_S16 if bufs.fmt == FMT_DFP16 else DLCPU_INT_U8S8
    q.flush_steps = bufs.flush_steps
    q.flush_blocks = bufs.flush_blocks
    q.scale = scale
    q.block_scale = NULL
    q.block_groups = 1
    if bufs.fmt == FMT_TERNARY:
        q.scale = NULL
        q.block_scale = bufs.block_scale + a_off // 256 * bufs.block_groups * 16
        q.block_groups = bufs.block_groups
    q.comp = NULL
    q.out_u8 = 0
    q.res_scale = 0
    q.res_offset = 0
    return dlcpu_brgemm_int(p, &q, bufs.w + a_off * bufs.elem, bufs.shadow + bq_off * bufs.elem, bufs.isa,
                            bufs.native)


cdef inline void to_shadow(const rnn_bufs *bufs, const float *src, int64_t off, int64_t n, double quant) noexcept nogil:
    """shadow[off:off+n] = src[0:n] in the layer's format (nothing for fp32); quant: the integer
    formats' quantizer (int8: s_h; DFP-16: 2**-E)."""
    if bufs.fmt == FMT_BF16:
        dlcpu_f32_to_bf16(bufs.isa, bufs.native, src, <uint16_t *>bufs.shadow + off, n)
    elif bufs.fmt == FMT_INT8 or bufs.fmt == FMT_TERNARY:
        dlcpu_quantize_u8(bufs.isa, src, bufs.shadow + off, n, quant, 128)
    elif bufs.fmt == FMT_DFP16:
        dlcpu_dfp16_quantize(bufs.isa, src, <int16_t *>bufs.shadow + off, n, quant, bufs.limit, 0, 0, 0)


cdef inline void shadow_h(const rnn_bufs *b, const float *src, int64_t t, int64_t blk, int64_t n,
                          int64_t state) noexcept nogil:
    """State t's tile (at blk) of h into the shadow: one copy per ternary level (levels 1: once)."""
    cdef int64_t first = t * b.sh_state + blk
    cdef int lvl
    if b.fmt == FMT_F32:
        return
    to_shadow(b, src, first, n, b.quant)
    for lvl in range(1, b.levels):
        memcpy(b.shadow + (first + lvl * state) * b.elem, b.shadow + first * b.elem, n * b.elem)


cdef inline int step_exponent(const rnn_bufs *b) noexcept nogil:
    """DFP-16 backward: the step's shared exponent of the gate gradients, from every gate item's
    largest |dG| (precision.dfp16_exponent's rule; all threads compute the same); -1000 when a
    gradient is NaN or Inf."""
    cdef uint32_t m = 0
    cdef int64_t i
    cdef int e
    cdef float v
    for i in range(b.n_maxes):
        if b.maxes[i] > m:
            m = b.maxes[i]
    if m >= 0x7F800000u:
        return -1000
    if m == 0:
        return 0
    memcpy(&v, &m, sizeof(float))
    frexp(v, &e)
    return max(-149, e - 1 - 14 + b.headroom)


cdef inline void add_step_gradient(float *dh_blk, const float *dy_blk, int64_t n) noexcept nogil:
    """dh += dy_t: the step's total dh (from its output and from step t+1)."""
    cdef int64_t i
    for i in range(n):
        dh_blk[i] = dh_blk[i] + dy_blk[i]


cdef inline void gates_to_blocked(const rnn_bufs *b, const float *dg, const item_tile_t *s,
                                  int64_t gates, int64_t item) noexcept nogil:
    """Copy one tile's gate gradients from the row-major dG (dg: the tile's gate-0 corner) to the
    blocked [gates*Kb][N][16] layout b.dGb the recurrent BRGEMM reads as its B operand, and its
    shadow (bf16), or for DFP-16 record the tile's largest |dG| (the shadow waits for the step's
    exponent: quantize_gates)."""
    cdef int64_t j, n, at
    cdef uint32_t m = 0, mj
    for j in range(gates):
        at = ((j * s.Kb + s.kb) * s.N + s.n0) * 16
        for n in range(s.rows):
            memcpy(b.dGb + at + n * 16, dg + n * s.ldg + j * s.Kp, 16 * sizeof(float))
        if b.fmt == FMT_DFP16:
            mj = dlcpu_absmax_bits(b.isa, b.dGb + at, s.rows * 16)
            m = mj if mj > m else m
        else:
            to_shadow(b, b.dGb + at, at, s.rows * 16, 0.0)
    if b.fmt == FMT_DFP16:
        b.maxes[item] = m


cdef void quantize_gates(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t t, int64_t item) noexcept nogil:
    """DFP-16 backward: write one gate item's tile of the blocked gate gradients into the shadow at
    the step's exponent."""
    cdef item_tile_t s = item_tile(g, t, item, 1)
    cdef int e = step_exponent(b)
    cdef int64_t j, at
    if e == -1000:
        return
    for j in range(g.gates):
        at = ((j * s.Kb + s.kb) * s.N + s.n0) * 16
        to_shadow(b, b.dGb + at, at, s.rows * 16, ldexp(1.0, -e))


def pack_gate_weights(const float[:, ::1] w, int gates, float[:, :, :, ::1] out, int n_threads):
    """A gate-stacked weight matrix W (gates*K, In) in PyTorch's layout -> the layout the kernels
    read, out[gates*Kb][Inb][16][16] with
        out[g*Kb + ob][ib][c][u] = W[g*K + ob*16 + u][ib*16 + c]
    and zeros for padded units (u >= K) and padded inputs (c >= In).  This is the packed right-hand
    operand of x @ W^T with each gate padded to Kp = 16*Kb columns (W_ih: the input projection's
    GEMM operand; W_hh: the recurrent BRGEMM's A blocks, [gate][output block][input block]).
    One parallel pass reading W's rows contiguously: a training loop that keeps PyTorch's layout
    pays this after every update (numpy's transposing copies took 16 ms for K = 1024)."""
    cdef int64_t In = w.shape[1], K = w.shape[0] // gates
    cdef int64_t Kb = out.shape[0] // gates, Inb = out.shape[1]
    cdef int64_t item, g, ob, ib, u, c, unit
    cdef float *r
    for item in prange(gates * Kb, nogil=True, schedule='static', num_threads=n_threads):
        g = item // Kb
        ob = item % Kb
        for ib in range(Inb):
            r = &out[item, ib, 0, 0]
            for u in range(16):
                unit = ob * 16 + u
                for c in range(16):
                    if unit < K and ib * 16 + c < In:
                        r[c * 16 + u] = w[g * K + unit, ib * 16 + c]
                    else:
                        r[c * 16 + u] = 0.0


# ----------------------------------------------------------------------------------------------
# Forward: one item of one step, per cell
# ----------------------------------------------------------------------------------------------
cdef int lstm_fwd_item(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t t, int64_t item,
                       const dlcpu_act_table_t *act) noexcept nogil:
    """Gates i, f, g, o: two mv=2 calls onto G, then the cell update of the tile."""
    cdef item_tile_t s = item_tile(g, t, item, 1)
    cdef int err = 0
    cdef int pair
    cdef dlcpu_brgemm_f32_t p
    recurrent_call(&p, s.Kb * b.levels, s.N)
    p.a_mstride = s.Kb * b.rowb * 256
    p.mv = 2
    p.nc = <int>s.rows
    p.ldc = s.ldg
    p.c_mstride = s.Kp
    p.beta = 1
    p.bias = NULL
    for pair in range(2):   # gates (i, f), then (g, o)
        p.c = b.G + s.gate + 2 * pair * s.Kp
        err |= recurrent_gemm(&p, b.R, ((2 * pair) * s.Kb + s.kb) * b.rowb * 256, b.H, t * s.state + s.n0 * 16,
                              t * b.sh_state + s.n0 * 16, b, b.mult)
    dlcpu_lstm_fwd_tile(b.G + s.gate, s.Kp, s.ldg, b.Cs + s.prev, b.Cs + s.next, b.H + s.next, s.rows, act)
    shadow_h(b, b.H + s.next, t + 1, s.blk, s.rows * 16, s.state)
    return err


cdef int gru_fwd_item(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t t, int64_t item,
                      const dlcpu_act_table_t *act) noexcept nogil:
    """Gates r, z onto G (one mv=2 call); W_hn h + b_hn into HN (r multiplies it); the update."""
    cdef item_tile_t s = item_tile(g, t, item, 1)
    cdef int err = 0
    cdef dlcpu_brgemm_f32_t p
    cdef int64_t h_at = t * s.state + s.n0 * 16
    cdef int64_t hq_at = t * b.sh_state + s.n0 * 16
    recurrent_call(&p, s.Kb * b.levels, s.N)
    p.nc = <int>s.rows
    # r and z: onto the x-side pre-activations (beta=1), one call for the pair
    p.mv = 2
    p.a_mstride = s.Kb * b.rowb * 256
    p.c = b.G + s.gate
    p.ldc = s.ldg
    p.c_mstride = s.Kp
    p.beta = 1
    p.bias = NULL
    err |= recurrent_gemm(&p, b.R, s.kb * b.rowb * 256, b.H, h_at, hq_at, b, b.mult)
    # n: W_hn h + b_hn kept apart (r multiplies it)
    p.mv = 1
    p.c = b.HN + s.hn
    p.ldc = s.Kp
    p.beta = 0
    p.bias = b.b_hn + s.kb * 16
    err |= recurrent_gemm(&p, b.R, (2 * s.Kb + s.kb) * b.rowb * 256, b.H, h_at, hq_at, b, b.mult)
    dlcpu_gru_fwd_tile(b.G + s.gate, s.Kp, s.ldg, b.HN + s.hn, s.Kp, b.H + s.prev, b.H + s.next, s.rows, act)
    shadow_h(b, b.H + s.next, t + 1, s.blk, s.rows * 16, s.state)
    return err


cdef int rnn_fwd_item(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t t, int64_t item,
                      const dlcpu_act_table_t *act) noexcept nogil:
    """h_t = act(G + h_{t-1}.W_hh^T) for a pair of hidden blocks (mv=2) in G's row-major
    layout (T*N, Kp)."""
    cdef item_tile_t s = item_tile(g, t, item, 2)
    cdef int64_t j
    cdef int err
    cdef dlcpu_brgemm_f32_t p
    recurrent_call(&p, s.Kb * b.levels, s.N)
    p.mv = 2 if s.kb + 1 < s.Kb else 1
    p.nc = <int>s.rows
    p.a_mstride = b.rowb * 256
    p.c = b.G + s.gate
    p.ldc = s.Kp
    p.c_mstride = 16
    p.beta = 1
    p.bias = NULL
    err = recurrent_gemm(&p, b.R, s.kb * b.rowb * 256, b.H, t * s.state + s.n0 * 16, t * b.sh_state + s.n0 * 16, b,
                         b.mult)
    for j in range(p.mv):   # hidden blocks kb and kb + 1
        dlcpu_rnn_fwd_tile(b.G + s.gate + j * 16, s.Kp, b.H + s.next + j * s.N * 16, s.rows,
                           g.cell == DLCPU_CELL_RNN_RELU, act)
        shadow_h(b, b.H + s.next + j * s.N * 16, t + 1, s.blk + j * s.N * 16, s.rows * 16, s.state)
    return err


cdef inline int fwd_item(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t t, int64_t item,
                         const dlcpu_act_table_t *act) noexcept nogil:
    if g.cell == DLCPU_CELL_LSTM:
        return lstm_fwd_item(g, b, t, item, act)
    if g.cell == DLCPU_CELL_GRU:
        return gru_fwd_item(g, b, t, item, act)
    return rnn_fwd_item(g, b, t, item, act)


def recurrent_forward_f32(RecurrentPlanStruct plan, float[::1] G, const float[::1] R, float[::1] H,
                          float[::1] Cs, float[::1] HN, const float[::1] b_hn, RecurrentFormat fmt):
    """Run the plan's T steps for its cell.  G (flattened (T*N, gates*Kp)) holds x.W_ih^T + b on
    entry and, on exit, the gate activations (LSTM, GRU: r, z, n) or the outputs h_t (RNN).
    Cs: LSTM cell states; HN, b_hn: the GRU's W_hn h + b_hn per step and b_hn (empty otherwise).
    fmt: the products' format: R's blocks in its groups and H's shadow, sized as R and H, whose
    state 0 holds h0 in the format on entry.
    Returns the number of failed calls (0: the plan's tiles were checked when it was made)."""
    cdef const dlcpu_rnn_plan_t *g = &plan.c
    cdef rnn_bufs b
    if fmt.fmt != FMT_F32 and fmt.elements() != (R.shape[0], H.shape[0]):
        raise ValueError("recurrent_forward_f32: the format's weights and shadow must be sized as R and H "
                         "(times the ternary levels)")
    fmt.fill(&b, g.isa, g.Kb * g.N * 16)
    b.rowb = g.Kb * fmt.row_levels
    b.G = &G[0]
    b.H = &H[0]
    b.R = &R[0]
    b.Cs = ptr(Cs)
    b.HN = ptr(HN)
    b.b_hn = &b_hn[0] if b_hn.shape[0] > 0 else NULL
    cdef int64_t t, item
    cdef int errors = 0
    cdef dlcpu_act_table_t act = dlcpu_act_table(g.isa, g.act)
    with nogil, parallel(num_threads=g.n_threads):
        for t in range(g.T):
            for item in prange(g.fwd_items, schedule='static'):
                errors += fwd_item(g, &b, t, item, &act)
    return errors


# ----------------------------------------------------------------------------------------------
# Backward: per step, the gate gradients of each item (per cell), then the shared recurrent product
# ----------------------------------------------------------------------------------------------
cdef void lstm_bwd_gates_item(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t t, int64_t item,
                              const dlcpu_act_table_t *act) noexcept nogil:
    cdef item_tile_t s = item_tile(g, t, item, 1)
    add_step_gradient(b.dh + s.blk, b.dY + s.prev, s.rows * 16)
    dlcpu_lstm_bwd_tile(b.G + s.gate, s.Kp, s.ldg, b.Cs + s.prev, b.Cs + s.next, b.dh + s.blk,
                        b.dc + s.blk, b.dc + s.blk, b.dG + s.gate, s.rows, act)
    gates_to_blocked(b, b.dG + s.gate, &s, 4, item)


cdef void gru_bwd_gates_item(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t t,
                             int64_t item) noexcept nogil:
    cdef item_tile_t s = item_tile(g, t, item, 1)
    add_step_gradient(b.dh + s.blk, b.dY + s.prev, s.rows * 16)
    # dh is read, then overwritten with dh*z (the direct part of dh_{t-1}) per element
    dlcpu_gru_bwd_tile(b.G + s.gate, s.Kp, s.ldg, b.HN + s.hn, s.Kp, b.H + s.prev, b.dh + s.blk,
                       b.dh + s.blk, b.dG + s.gate, b.dGh + s.gate, s.rows)
    gates_to_blocked(b, b.dGh + s.gate, &s, 3, item)


cdef void rnn_bwd_gates_item(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t t,
                             int64_t item) noexcept nogil:
    cdef item_tile_t s = item_tile(g, t, item, 1)
    add_step_gradient(b.dh + s.blk, b.dY + s.prev, s.rows * 16)
    dlcpu_rnn_bwd_tile(b.G + s.gate, s.Kp, b.dh + s.blk, b.dG + s.gate, s.rows, g.cell == DLCPU_CELL_RNN_RELU)
    gates_to_blocked(b, b.dG + s.gate, &s, 1, item)


cdef inline void bwd_gates_item(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t t, int64_t item,
                                const dlcpu_act_table_t *act) noexcept nogil:
    if g.cell == DLCPU_CELL_LSTM:
        lstm_bwd_gates_item(g, b, t, item, act)
    elif g.cell == DLCPU_CELL_GRU:
        gru_bwd_gates_item(g, b, t, item)
    else:
        rnn_bwd_gates_item(g, b, t, item)


cdef int bwd_recurrent_item(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t item) noexcept nogil:
    """dh[kb] (beta=0: =, beta=1: +=) sum over the gates*Kb gate blocks j of dG[j] . W_hh[j-rows,
    kb-columns], for a pair of hidden blocks per call (mv=2: each broadcast of dG feeds two
    FMAs).  Shared by the LSTM (4 gates), the GRU (3, beta=1 onto dh*z) and the vanilla RNN (1)."""
    cdef item_tile_t s = item_tile(g, 0, item, 2)
    cdef int gates = g.gates
    cdef dlcpu_brgemm_f32_t p
    recurrent_call(&p, gates * s.Kb, s.N)
    p.a_mstride = gates * s.Kb * 256
    p.mv = 2 if s.kb + 1 < s.Kb else 1
    p.nc = <int>s.rows
    p.ldc = 16
    p.c_mstride = s.N * 16
    p.beta = 1 if g.cell == DLCPU_CELL_GRU else 0
    p.bias = NULL
    p.c = b.dh + s.blk
    cdef float mult = 0.0
    cdef int e
    if b.fmt == FMT_DFP16:
        e = step_exponent(b)
        if e == -1000 or e + b.w_exponent < -126 or e + b.w_exponent > 127:
            return 1            # a NaN/Inf gate gradient, or a multiplier past fp32 (dlcpu/rnn.py names it)
        mult = <float>ldexp(1.0, e + b.w_exponent)
    return recurrent_gemm(&p, b.RT, s.kb * gates * s.Kb * 256, b.dGb, s.n0 * 16, s.n0 * 16, b, mult)


def recurrent_backward_f32(RecurrentPlanStruct plan, const float[::1] G, const float[::1] H,
                           const float[::1] Cs, const float[::1] HN, const float[::1] RT,
                           const float[::1] dY, float[::1] dh, float[::1] dc, float[::1] dG,
                           float[::1] dGh, float[::1] dGb, RecurrentFormat fmt):
    """Backpropagate through the plan's T steps for its cell.  dh (and dc, LSTM) hold dL/dh_T
    (dL/dc_T) on entry and dL/dh_0 (dL/dc_0) on exit; dG receives the pre-activation gate
    gradients of every step (row-major like G; for the GRU those of the x side, and dGh those of
    the h side), from which dlcpu/rnn.py computes dx, dW and db with large GEMMs.  Buffers the
    cell does not use are empty.  fmt: the recurrent product's format: RT's blocks in its groups
    and dGb's shadow, sized as RT and dGb (DFP-16: and one maximum per gate item)."""
    cdef const dlcpu_rnn_plan_t *g = &plan.c
    cdef rnn_bufs b
    if fmt.fmt != FMT_F32 and fmt.elements() != (RT.shape[0], dGb.shape[0]):
        raise ValueError("recurrent_backward_f32: the format's weights and shadow must be sized as RT and dGb")
    if fmt.fmt == FMT_DFP16 and fmt.maxes.shape[0] != g.gate_items:
        raise ValueError("recurrent_backward_f32: DFP-16 needs one maximum per gate item")
    if fmt.fmt == FMT_INT8 or fmt.fmt == FMT_TERNARY:
        raise ValueError("recurrent_backward_f32: int8 and ternary have no backward")
    fmt.fill(&b, g.isa, g.Kb * g.N * 16)
    b.rowb = g.Kb
    b.G = <float *>&G[0]       # read only here: the struct is shared with the forward
    b.H = <float *>&H[0]
    b.Cs = <float *>&Cs[0] if Cs.shape[0] > 0 else NULL
    b.HN = <float *>&HN[0] if HN.shape[0] > 0 else NULL
    b.RT = &RT[0]
    b.dY = &dY[0]
    b.dh = &dh[0]
    b.dc = ptr(dc)
    b.dG = &dG[0]
    b.dGh = ptr(dGh)
    b.dGb = &dGb[0]
    cdef int64_t t, step, item
    cdef int errors = 0
    cdef dlcpu_act_table_t act = dlcpu_act_table(g.isa, g.act)
    with nogil, parallel(num_threads=g.n_threads):
        for step in range(g.T):
            t = g.T - 1 - step
            for item in prange(g.gate_items, schedule='static'):
                bwd_gates_item(g, &b, t, item, &act)
            if b.fmt == FMT_DFP16:
                for item in prange(g.gate_items, schedule='static'):
                    quantize_gates(g, &b, t, item)
            for item in prange(g.pair_items, schedule='static'):
                errors += bwd_recurrent_item(g, &b, item)
    return errors
