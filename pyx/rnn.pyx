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
"""
from libc.stdint cimport int64_t
from libc.string cimport memcpy
from cython.parallel cimport prange, parallel

from dlcpu_kernels cimport dlcpu_brgemm_f32_t, dlcpu_brgemm_f32, dlcpu_brgemm_has_tile, DLCPU_BR_STRD
from dlcpu_plans cimport (dlcpu_rnn_plan_t, DLCPU_CELL_LSTM, DLCPU_CELL_GRU, DLCPU_CELL_RNN_TANH,
                          DLCPU_CELL_RNN_RELU)

cdef extern from "rnn_f32.h" nogil:
    ctypedef struct dlcpu_act_table_t:
        pass
    dlcpu_act_table_t dlcpu_act_table(int isa)
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
        cdef int mv, nc
        if self.c.cell not in CELLS.values():
            raise ValueError(f"recurrent plan: unknown cell code {self.c.cell}")
        for mv in (1, 2):
            for nc in range(1, self.c.rows + 1):
                if not dlcpu_brgemm_has_tile(self.c.isa, mv, 1, nc, 0):
                    raise ValueError(f"recurrent plan needs a BRGEMM tile mv={mv} nr=1 nc={nc} that this build "
                                     f"lacks for isa code {self.c.isa} (pyx/kernels/brgemm_f32.h)")

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


cdef inline float *ptr(float[::1] a) noexcept:
    """The buffer's start, or NULL for an empty (unused) buffer."""
    return &a[0] if a.shape[0] > 0 else NULL


cdef inline void item_tile(const dlcpu_rnn_plan_t *g, int64_t item, int64_t blocks_per_item,
                           int64_t *kb, int64_t *n0, int64_t *rows) noexcept nogil:
    """First hidden block, first batch row and row count of a work item (block-major)."""
    kb[0] = (item // g.n_tiles) * blocks_per_item
    n0[0] = (item % g.n_tiles) * g.rows
    rows[0] = min(g.rows, g.N - n0[0])


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


cdef inline void add_step_gradient(float *dh_blk, const float *dy_blk, int64_t n) noexcept nogil:
    """dh += dy_t: the step's total dh (from its output and from step t+1)."""
    cdef int64_t i
    for i in range(n):
        dh_blk[i] = dh_blk[i] + dy_blk[i]


cdef inline void gates_to_blocked(float *dgb, const float *dg, int64_t gates, int64_t Kb, int64_t N,
                                  int64_t n0, int64_t rows, int64_t kb, int64_t ldg) noexcept nogil:
    """Copy one tile's gate gradients from the row-major dG (row n0.., columns g*Kp + kb*16) to
    the blocked [gates*Kb][N][16] layout the recurrent BRGEMM reads as its B operand."""
    cdef int64_t g, n
    for g in range(gates):
        for n in range(rows):
            memcpy(dgb + ((g * Kb + kb) * N + n0 + n) * 16, dg + n * ldg + g * Kb * 16 + kb * 16,
                   16 * sizeof(float))


# ----------------------------------------------------------------------------------------------
# Forward: one item of one step, per cell
# ----------------------------------------------------------------------------------------------
cdef int lstm_fwd_item(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t t, int64_t item,
                       const dlcpu_act_table_t *act) noexcept nogil:
    """Gates i, f, g, o: two mv=2 calls onto G, then the cell update of the tile."""
    cdef int64_t kb, n0, rows
    item_tile(g, item, 1, &kb, &n0, &rows)
    cdef int64_t N = g.N, Kb = g.Kb
    cdef int64_t Kp = Kb * 16, ldg = 4 * Kb * 16
    cdef float *gates = b.G + (t * N + n0) * ldg + kb * 16
    cdef int64_t state = Kb * N * 16
    cdef int err = 0
    cdef int pair
    cdef dlcpu_brgemm_f32_t p
    recurrent_call(&p, Kb, N)
    p.a_mstride = Kb * Kb * 256
    p.mv = 2
    p.nc = <int>rows
    p.ldc = ldg
    p.c_mstride = Kp
    p.beta = 1
    p.bias = NULL
    p.b = b.H + t * state + n0 * 16
    for pair in range(2):   # gates (i, f), then (g, o)
        p.a = b.R + ((2 * pair) * Kb + kb) * Kb * 256
        p.c = gates + 2 * pair * Kp
        err |= dlcpu_brgemm_f32(&p, g.isa)
    dlcpu_lstm_fwd_tile(gates, Kp, ldg, b.Cs + t * state + (kb * N + n0) * 16,
                        b.Cs + (t + 1) * state + (kb * N + n0) * 16,
                        b.H + (t + 1) * state + (kb * N + n0) * 16, rows, act)
    return err


cdef int gru_fwd_item(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t t, int64_t item,
                      const dlcpu_act_table_t *act) noexcept nogil:
    """Gates r, z onto G (one mv=2 call); W_hn h + b_hn into HN (r multiplies it); the update."""
    cdef int64_t kb, n0, rows
    item_tile(g, item, 1, &kb, &n0, &rows)
    cdef int64_t N = g.N, Kb = g.Kb
    cdef int64_t Kp = Kb * 16, ldg = 3 * Kb * 16, state = Kb * N * 16
    cdef float *gates = b.G + (t * N + n0) * ldg + kb * 16
    cdef float *hn = b.HN + (t * N + n0) * Kp + kb * 16
    cdef int err = 0
    cdef dlcpu_brgemm_f32_t p
    recurrent_call(&p, Kb, N)
    p.nc = <int>rows
    p.b = b.H + t * state + n0 * 16
    # r and z: onto the x-side pre-activations (beta=1), one call for the pair
    p.mv = 2
    p.a = b.R + kb * Kb * 256
    p.a_mstride = Kb * Kb * 256
    p.c = gates
    p.ldc = ldg
    p.c_mstride = Kp
    p.beta = 1
    p.bias = NULL
    err |= dlcpu_brgemm_f32(&p, g.isa)
    # n: W_hn h + b_hn kept apart (r multiplies it)
    p.mv = 1
    p.a = b.R + (2 * Kb + kb) * Kb * 256
    p.c = hn
    p.ldc = Kp
    p.beta = 0
    p.bias = b.b_hn + kb * 16
    err |= dlcpu_brgemm_f32(&p, g.isa)
    dlcpu_gru_fwd_tile(gates, Kp, ldg, hn, Kp, b.H + t * state + (kb * N + n0) * 16,
                       b.H + (t + 1) * state + (kb * N + n0) * 16, rows, act)
    return err


cdef int rnn_fwd_item(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t t, int64_t item,
                      const dlcpu_act_table_t *act) noexcept nogil:
    """h_t = act(G + h_{t-1}.W_hh^T) for a pair of hidden blocks (mv=2) in G's row-major
    layout (T*N, Kp)."""
    cdef int64_t kb, n0, rows
    item_tile(g, item, 2, &kb, &n0, &rows)
    cdef int64_t N = g.N, Kb = g.Kb
    cdef int64_t Kp = Kb * 16, state = Kb * N * 16
    cdef int64_t gg
    cdef int err
    cdef dlcpu_brgemm_f32_t p
    recurrent_call(&p, Kb, N)
    p.mv = 2 if kb + 1 < Kb else 1
    p.nc = <int>rows
    p.a = b.R + kb * Kb * 256
    p.a_mstride = Kb * 256
    p.b = b.H + t * state + n0 * 16
    p.c = b.G + (t * N + n0) * Kp + kb * 16
    p.ldc = Kp
    p.c_mstride = 16
    p.beta = 1
    p.bias = NULL
    err = dlcpu_brgemm_f32(&p, g.isa)
    for gg in range(p.mv):
        dlcpu_rnn_fwd_tile(b.G + (t * N + n0) * Kp + (kb + gg) * 16, Kp,
                           b.H + (t + 1) * state + ((kb + gg) * N + n0) * 16, rows,
                           g.cell == DLCPU_CELL_RNN_RELU, act)
    return err


cdef inline int fwd_item(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t t, int64_t item,
                         const dlcpu_act_table_t *act) noexcept nogil:
    if g.cell == DLCPU_CELL_LSTM:
        return lstm_fwd_item(g, b, t, item, act)
    if g.cell == DLCPU_CELL_GRU:
        return gru_fwd_item(g, b, t, item, act)
    return rnn_fwd_item(g, b, t, item, act)


def recurrent_forward_f32(RecurrentPlanStruct plan, float[::1] G, const float[::1] R, float[::1] H,
                          float[::1] Cs, float[::1] HN, const float[::1] b_hn):
    """Run the plan's T steps for its cell.  G (flattened (T*N, gates*Kp)) holds x.W_ih^T + b on
    entry and, on exit, the gate activations (LSTM, GRU: r, z, n) or the outputs h_t (RNN).
    Cs: LSTM cell states; HN, b_hn: the GRU's W_hn h + b_hn per step and b_hn (empty otherwise).
    Returns the number of failed calls (0: the plan's tiles were checked when it was made)."""
    cdef const dlcpu_rnn_plan_t *g = &plan.c
    cdef rnn_bufs b
    b.G = &G[0]
    b.H = &H[0]
    b.R = &R[0]
    b.Cs = ptr(Cs)
    b.HN = ptr(HN)
    b.b_hn = &b_hn[0] if b_hn.shape[0] > 0 else NULL
    cdef int64_t t, item
    cdef int errors = 0
    cdef dlcpu_act_table_t act = dlcpu_act_table(g.isa)
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
    cdef int64_t kb, n0, rows
    item_tile(g, item, 1, &kb, &n0, &rows)
    cdef int64_t N = g.N, Kb = g.Kb
    cdef int64_t Kp = Kb * 16, ldg = 4 * Kb * 16, state = Kb * N * 16
    cdef float *dh_blk = b.dh + (kb * N + n0) * 16
    add_step_gradient(dh_blk, b.dY + t * state + (kb * N + n0) * 16, rows * 16)
    dlcpu_lstm_bwd_tile(b.G + (t * N + n0) * ldg + kb * 16, Kp, ldg,
                        b.Cs + t * state + (kb * N + n0) * 16, b.Cs + (t + 1) * state + (kb * N + n0) * 16,
                        dh_blk, b.dc + (kb * N + n0) * 16, b.dc + (kb * N + n0) * 16,
                        b.dG + (t * N + n0) * ldg + kb * 16, rows, act)
    gates_to_blocked(b.dGb, b.dG + (t * N + n0) * ldg, 4, Kb, N, n0, rows, kb, ldg)


cdef void gru_bwd_gates_item(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t t,
                             int64_t item) noexcept nogil:
    cdef int64_t kb, n0, rows
    item_tile(g, item, 1, &kb, &n0, &rows)
    cdef int64_t N = g.N, Kb = g.Kb
    cdef int64_t Kp = Kb * 16, ldg = 3 * Kb * 16, state = Kb * N * 16
    cdef float *dh_blk = b.dh + (kb * N + n0) * 16
    add_step_gradient(dh_blk, b.dY + t * state + (kb * N + n0) * 16, rows * 16)
    # dh_blk is read, then overwritten with dh*z (the direct part of dh_{t-1}) per element
    dlcpu_gru_bwd_tile(b.G + (t * N + n0) * ldg + kb * 16, Kp, ldg, b.HN + (t * N + n0) * Kp + kb * 16, Kp,
                       b.H + t * state + (kb * N + n0) * 16, dh_blk, dh_blk,
                       b.dG + (t * N + n0) * ldg + kb * 16, b.dGh + (t * N + n0) * ldg + kb * 16, rows)
    gates_to_blocked(b.dGb, b.dGh + (t * N + n0) * ldg, 3, Kb, N, n0, rows, kb, ldg)


cdef void rnn_bwd_gates_item(const dlcpu_rnn_plan_t *g, const rnn_bufs *b, int64_t t,
                             int64_t item) noexcept nogil:
    cdef int64_t kb, n0, rows
    item_tile(g, item, 1, &kb, &n0, &rows)
    cdef int64_t N = g.N, Kb = g.Kb
    cdef int64_t Kp = Kb * 16, state = Kb * N * 16
    cdef float *dh_blk = b.dh + (kb * N + n0) * 16
    add_step_gradient(dh_blk, b.dY + t * state + (kb * N + n0) * 16, rows * 16)
    dlcpu_rnn_bwd_tile(b.G + (t * N + n0) * Kp + kb * 16, Kp, dh_blk, b.dG + (t * N + n0) * Kp + kb * 16,
                       rows, g.cell == DLCPU_CELL_RNN_RELU)
    gates_to_blocked(b.dGb, b.dG + (t * N + n0) * Kp, 1, Kb, N, n0, rows, kb, Kp)


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
    cdef int64_t kb, n0, rows
    item_tile(g, item, 2, &kb, &n0, &rows)
    cdef int64_t N = g.N, Kb = g.Kb
    cdef int gates = g.gates
    cdef dlcpu_brgemm_f32_t p
    recurrent_call(&p, gates * Kb, N)
    p.a_mstride = gates * Kb * 256
    p.mv = 2 if kb + 1 < Kb else 1
    p.nc = <int>rows
    p.ldc = 16
    p.c_mstride = N * 16
    p.beta = 1 if g.cell == DLCPU_CELL_GRU else 0
    p.bias = NULL
    p.a = b.RT + kb * gates * Kb * 256
    p.b = b.dGb + n0 * 16
    p.c = b.dh + (kb * N + n0) * 16
    return dlcpu_brgemm_f32(&p, g.isa)


def recurrent_backward_f32(RecurrentPlanStruct plan, const float[::1] G, const float[::1] H,
                           const float[::1] Cs, const float[::1] HN, const float[::1] RT,
                           const float[::1] dY, float[::1] dh, float[::1] dc, float[::1] dG,
                           float[::1] dGh, float[::1] dGb):
    """Backpropagate through the plan's T steps for its cell.  dh (and dc, LSTM) hold dL/dh_T
    (dL/dc_T) on entry and dL/dh_0 (dL/dc_0) on exit; dG receives the pre-activation gate
    gradients of every step (row-major like G; for the GRU those of the x side, and dGh those of
    the h side), from which dlcpu/rnn.py computes dx, dW and db with large GEMMs.  Buffers the
    cell does not use are empty."""
    cdef const dlcpu_rnn_plan_t *g = &plan.c
    cdef rnn_bufs b
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
    cdef dlcpu_act_table_t act = dlcpu_act_table(g.isa)
    with nogil, parallel(num_threads=g.n_threads):
        for step in range(g.T):
            t = g.T - 1 - step
            for item in prange(g.gate_items, schedule='static'):
                bwd_gates_item(g, &b, t, item, &act)
            for item in prange(g.pair_items, schedule='static'):
                errors += bwd_recurrent_item(g, &b, item)
    return errors
