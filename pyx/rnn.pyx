# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""LSTM time loops: the recurrent BRGEMM of each step with the cell math fused on its hot tile.

dlcpu/rnn.py has already computed x.W_ih^T + b for all T as one large GEMM (G, row-major
(T*N, 4*Kp), gate g at columns g*Kp) and re-blocked the recurrent weights; here each step runs
the h.W_hh^T BRGEMMs straight onto G's tiles (beta=1) and finishes the tile in cache
(rnn_f32.h).  The whole time loop is one parallel region: each step is a worksharing loop over
(hidden block, row tile) items with one barrier per step (two in the backward: gate gradients,
then the recurrent product).  Each value is produced by one thread in a fixed order, so results
do not depend on the thread count.

Blocked states: H, Cs [T+1][Kb][N][16] (index 0: the initial state).
"""
from libc.stdint cimport int64_t
from libc.string cimport memcpy
from cython.parallel cimport prange, parallel

from dlcpu_kernels cimport (dlcpu_brgemm_f32_t, dlcpu_brgemm_f32, dlcpu_brgemm_f32_max_pixels,
                            DLCPU_BR_STRD)

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


cdef int64_t row_tile(int64_t N, int64_t budget) noexcept nogil:
    """Rows per tile: equal tiles within the register budget (N=16: 8+8, not 14+2, whose second
    call would run on a handful of accumulators)."""
    cdef int64_t tiles = (N + budget - 1) // budget
    return (N + tiles - 1) // tiles


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


cdef int lstm_fwd_item(float *G, const float *R, float *H, float *Cs, int64_t t, int64_t item,
                       int64_t N, int64_t Kb, int64_t rows_per_tile, int isa,
                       const dlcpu_act_table_t *act) noexcept nogil:
    cdef int64_t n_tiles = (N + rows_per_tile - 1) // rows_per_tile
    cdef int64_t kb = item // n_tiles
    cdef int64_t n0 = (item % n_tiles) * rows_per_tile
    cdef int64_t rows = min(rows_per_tile, N - n0)
    cdef int64_t Kp = Kb * 16, ldg = 4 * Kb * 16
    cdef float *gates = G + (t * N + n0) * ldg + kb * 16
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
    p.b = H + t * state + n0 * 16
    for pair in range(2):   # gates (i, f), then (g, o)
        p.a = R + ((2 * pair) * Kb + kb) * Kb * 256
        p.c = gates + 2 * pair * Kp
        err |= dlcpu_brgemm_f32(&p, isa)
    dlcpu_lstm_fwd_tile(gates, Kp, ldg, Cs + t * state + (kb * N + n0) * 16,
                        Cs + (t + 1) * state + (kb * N + n0) * 16,
                        H + (t + 1) * state + (kb * N + n0) * 16, rows, act)
    return err


def lstm_forward_f32(float[:, ::1] G, const float[::1] R, float[::1] H, float[::1] Cs,
                     int64_t T, int64_t N, int64_t Kb, int isa, int n_threads):
    """Run T steps; G holds x.W_ih^T + b on entry and the gate activations on exit."""
    cdef int64_t rows = row_tile(N, dlcpu_brgemm_f32_max_pixels(isa, 2))
    cdef int64_t n_items = Kb * ((N + rows - 1) // rows)
    cdef int64_t t, item
    cdef int errors = 0
    cdef dlcpu_act_table_t act = dlcpu_act_table(isa)
    with nogil, parallel(num_threads=n_threads):
        for t in range(T):
            for item in prange(n_items, schedule='static'):
                errors += lstm_fwd_item(&G[0, 0], &R[0], &H[0], &Cs[0], t, item, N, Kb, rows,
                                        isa, &act)
    return errors


cdef void lstm_bwd_gates_item(const float *G, const float *Cs, const float *dY, float *dh,
                              float *dc, float *dG, float *dGb, int64_t t, int64_t item,
                              int64_t N, int64_t Kb, int64_t rows_per_tile,
                              const dlcpu_act_table_t *act) noexcept nogil:
    cdef int64_t n_tiles = (N + rows_per_tile - 1) // rows_per_tile
    cdef int64_t kb = item // n_tiles
    cdef int64_t n0 = (item % n_tiles) * rows_per_tile
    cdef int64_t rows = min(rows_per_tile, N - n0)
    cdef int64_t Kp = Kb * 16, ldg = 4 * Kb * 16, state = Kb * N * 16
    cdef float *dh_blk = dh + (kb * N + n0) * 16
    add_step_gradient(dh_blk, dY + t * state + (kb * N + n0) * 16, rows * 16)
    dlcpu_lstm_bwd_tile(G + (t * N + n0) * ldg + kb * 16, Kp, ldg,
                        Cs + t * state + (kb * N + n0) * 16, Cs + (t + 1) * state + (kb * N + n0) * 16,
                        dh_blk, dc + (kb * N + n0) * 16, dc + (kb * N + n0) * 16,
                        dG + (t * N + n0) * ldg + kb * 16, rows, act)
    gates_to_blocked(dGb, dG + (t * N + n0) * ldg, 4, Kb, N, n0, rows, kb, ldg)


cdef int bwd_recurrent_item(const float *RT, const float *dGb, float *dh, int64_t item,
                            int64_t N, int64_t Kb, int64_t rows_per_tile, int isa, int gates,
                            int beta) noexcept nogil:
    """dh[kb] (beta=0: =, beta=1: +=) sum over the gates*Kb gate blocks j of dG[j] . W_hh[j-rows,
    kb-columns], for a pair of hidden blocks per call (mv=2: each broadcast of dG feeds two
    FMAs).  Shared by the LSTM (4 gates), the GRU (3, beta=1 onto dh*z) and the vanilla RNN (1)."""
    cdef int64_t n_tiles = (N + rows_per_tile - 1) // rows_per_tile
    cdef int64_t kb = (item // n_tiles) * 2
    cdef int64_t n0 = (item % n_tiles) * rows_per_tile
    cdef dlcpu_brgemm_f32_t p
    recurrent_call(&p, gates * Kb, N)
    p.a_mstride = gates * Kb * 256
    p.mv = 2 if kb + 1 < Kb else 1
    p.nc = <int>min(rows_per_tile, N - n0)
    p.ldc = 16
    p.c_mstride = N * 16
    p.beta = beta
    p.bias = NULL
    p.a = RT + kb * gates * Kb * 256
    p.b = dGb + n0 * 16
    p.c = dh + (kb * N + n0) * 16
    return dlcpu_brgemm_f32(&p, isa)


def lstm_backward_f32(const float[:, ::1] G, const float[::1] Cs, const float[::1] RT,
                      const float[::1] dY, float[::1] dh, float[::1] dc, float[:, ::1] dG,
                      float[::1] dGb, int64_t T, int64_t N, int64_t Kb, int isa, int n_threads):
    """Backpropagate through T steps.  dh, dc hold dL/dh_T, dL/dc_T on entry and dL/dh_0,
    dL/dc_0 on exit; dG receives the pre-activation gate gradients of every step (row-major
    like G), from which dlcpu/rnn.py computes dx, dW and db with large GEMMs."""
    cdef int64_t rows = row_tile(N, dlcpu_brgemm_f32_max_pixels(isa, 2))
    cdef int64_t n_tiles = (N + rows - 1) // rows
    cdef int64_t n_items = Kb * n_tiles
    cdef int64_t n_pair_items = (Kb + 1) // 2 * n_tiles
    cdef int64_t t, step, item
    cdef int errors = 0
    cdef dlcpu_act_table_t act = dlcpu_act_table(isa)
    with nogil, parallel(num_threads=n_threads):
        for step in range(T):
            t = T - 1 - step
            for item in prange(n_items, schedule='static'):
                lstm_bwd_gates_item(&G[0, 0], &Cs[0], &dY[0], &dh[0], &dc[0], &dG[0, 0], &dGb[0],
                                    t, item, N, Kb, rows, &act)
            for item in prange(n_pair_items, schedule='static'):
                errors += bwd_recurrent_item(&RT[0], &dGb[0], &dh[0], item, N, Kb, rows, isa, 4, 0)
    return errors


# ----------------------------------------------------------------------------------------------
# GRU: gates r, z, n; G = x.W_ih^T + b_ih (3 gates); HN[t] = h.W_hn^T + b_hn per step
# ----------------------------------------------------------------------------------------------
cdef int gru_fwd_item(float *G, float *HN, const float *R, const float *b_hn, float *H,
                      int64_t t, int64_t item, int64_t N, int64_t Kb, int64_t rows_per_tile,
                      int isa, const dlcpu_act_table_t *act) noexcept nogil:
    cdef int64_t n_tiles = (N + rows_per_tile - 1) // rows_per_tile
    cdef int64_t kb = item // n_tiles
    cdef int64_t n0 = (item % n_tiles) * rows_per_tile
    cdef int64_t rows = min(rows_per_tile, N - n0)
    cdef int64_t Kp = Kb * 16, ldg = 3 * Kb * 16, state = Kb * N * 16
    cdef float *gates = G + (t * N + n0) * ldg + kb * 16
    cdef float *hn = HN + (t * N + n0) * Kp + kb * 16
    cdef int err = 0
    cdef dlcpu_brgemm_f32_t p
    recurrent_call(&p, Kb, N)
    p.nc = <int>rows
    p.b = H + t * state + n0 * 16
    # r and z: onto the x-side pre-activations (beta=1), one call for the pair
    p.mv = 2
    p.a = R + kb * Kb * 256
    p.a_mstride = Kb * Kb * 256
    p.c = gates
    p.ldc = ldg
    p.c_mstride = Kp
    p.beta = 1
    p.bias = NULL
    err |= dlcpu_brgemm_f32(&p, isa)
    # n: W_hn h + b_hn kept apart (r multiplies it)
    p.mv = 1
    p.a = R + (2 * Kb + kb) * Kb * 256
    p.c = hn
    p.ldc = Kp
    p.beta = 0
    p.bias = b_hn + kb * 16
    err |= dlcpu_brgemm_f32(&p, isa)
    dlcpu_gru_fwd_tile(gates, Kp, ldg, hn, Kp, H + t * state + (kb * N + n0) * 16,
                       H + (t + 1) * state + (kb * N + n0) * 16, rows, act)
    return err


def gru_forward_f32(float[:, ::1] G, float[:, ::1] HN, const float[::1] R, const float[::1] b_hn,
                    float[::1] H, int64_t T, int64_t N, int64_t Kb, int isa, int n_threads):
    """Run T GRU steps; G: x.W_ih^T + b_ih on entry, activations r, z, n on exit; HN receives
    W_hn h + b_hn per step (both kept for the backward)."""
    cdef int64_t rows = row_tile(N, dlcpu_brgemm_f32_max_pixels(isa, 2))
    cdef int64_t n_items = Kb * ((N + rows - 1) // rows)
    cdef int64_t t, item
    cdef int errors = 0
    cdef dlcpu_act_table_t act = dlcpu_act_table(isa)
    with nogil, parallel(num_threads=n_threads):
        for t in range(T):
            for item in prange(n_items, schedule='static'):
                errors += gru_fwd_item(&G[0, 0], &HN[0, 0], &R[0], &b_hn[0], &H[0], t, item, N,
                                       Kb, rows, isa, &act)
    return errors


cdef void gru_bwd_gates_item(const float *G, const float *HN, const float *H, const float *dY,
                             float *dh, float *dGx, float *dGh, float *dGhb, int64_t t,
                             int64_t item, int64_t N, int64_t Kb, int64_t rows_per_tile) noexcept nogil:
    cdef int64_t n_tiles = (N + rows_per_tile - 1) // rows_per_tile
    cdef int64_t kb = item // n_tiles
    cdef int64_t n0 = (item % n_tiles) * rows_per_tile
    cdef int64_t rows = min(rows_per_tile, N - n0)
    cdef int64_t Kp = Kb * 16, ldg = 3 * Kb * 16, state = Kb * N * 16
    cdef float *dh_blk = dh + (kb * N + n0) * 16
    add_step_gradient(dh_blk, dY + t * state + (kb * N + n0) * 16, rows * 16)
    # dh_blk is read, then overwritten with dh*z (the direct part of dh_{t-1}) per element
    dlcpu_gru_bwd_tile(G + (t * N + n0) * ldg + kb * 16, Kp, ldg, HN + (t * N + n0) * Kp + kb * 16, Kp,
                       H + t * state + (kb * N + n0) * 16, dh_blk, dh_blk,
                       dGx + (t * N + n0) * ldg + kb * 16, dGh + (t * N + n0) * ldg + kb * 16, rows)
    gates_to_blocked(dGhb, dGh + (t * N + n0) * ldg, 3, Kb, N, n0, rows, kb, ldg)


def gru_backward_f32(const float[:, ::1] G, const float[:, ::1] HN, const float[::1] H,
                     const float[::1] RT, const float[::1] dY, float[::1] dh, float[:, ::1] dGx,
                     float[:, ::1] dGh, float[::1] dGhb, int64_t T, int64_t N, int64_t Kb, int isa,
                     int n_threads):
    """Backpropagate through T GRU steps; dh holds dL/dh_T on entry, dL/dh_0 on exit; dGx, dGh
    receive the gradients of the x-side and h-side pre-activations of every step."""
    cdef int64_t rows = row_tile(N, dlcpu_brgemm_f32_max_pixels(isa, 2))
    cdef int64_t n_tiles = (N + rows - 1) // rows
    cdef int64_t n_items = Kb * n_tiles
    cdef int64_t n_pair_items = (Kb + 1) // 2 * n_tiles
    cdef int64_t t, step, item
    cdef int errors = 0
    with nogil, parallel(num_threads=n_threads):
        for step in range(T):
            t = T - 1 - step
            for item in prange(n_items, schedule='static'):
                gru_bwd_gates_item(&G[0, 0], &HN[0, 0], &H[0], &dY[0], &dh[0], &dGx[0, 0],
                                   &dGh[0, 0], &dGhb[0], t, item, N, Kb, rows)
            for item in prange(n_pair_items, schedule='static'):
                errors += bwd_recurrent_item(&RT[0], &dGhb[0], &dh[0], item, N, Kb, rows, isa, 3, 1)
    return errors


# ----------------------------------------------------------------------------------------------
# Vanilla RNN: h_t = act(x.W_ih^T + b + h_{t-1}.W_hh^T), act tanh or relu; items are pairs of
# hidden blocks (mv=2) x row tiles, in G's row-major layout (T*N, Kp)
# ----------------------------------------------------------------------------------------------
cdef int rnn_fwd_item(float *G, const float *R, float *H, int64_t t, int64_t item, int64_t N,
                      int64_t Kb, int64_t rows_per_tile, int relu, int isa,
                      const dlcpu_act_table_t *act) noexcept nogil:
    cdef int64_t n_tiles = (N + rows_per_tile - 1) // rows_per_tile
    cdef int64_t kb = (item // n_tiles) * 2
    cdef int64_t n0 = (item % n_tiles) * rows_per_tile
    cdef int64_t rows = min(rows_per_tile, N - n0)
    cdef int64_t Kp = Kb * 16, state = Kb * N * 16
    cdef int64_t g
    cdef int err
    cdef dlcpu_brgemm_f32_t p
    recurrent_call(&p, Kb, N)
    p.mv = 2 if kb + 1 < Kb else 1
    p.nc = <int>rows
    p.a = R + kb * Kb * 256
    p.a_mstride = Kb * 256
    p.b = H + t * state + n0 * 16
    p.c = G + (t * N + n0) * Kp + kb * 16
    p.ldc = Kp
    p.c_mstride = 16
    p.beta = 1
    p.bias = NULL
    err = dlcpu_brgemm_f32(&p, isa)
    for g in range(p.mv):
        dlcpu_rnn_fwd_tile(G + (t * N + n0) * Kp + (kb + g) * 16, Kp,
                           H + (t + 1) * state + ((kb + g) * N + n0) * 16, rows, relu, act)
    return err


def rnn_forward_f32(float[:, ::1] G, const float[::1] R, float[::1] H, int64_t T, int64_t N,
                    int64_t Kb, bint relu, int isa, int n_threads):
    """Run T steps; G: x.W_ih^T + b on entry, the outputs h_t (row-major) on exit."""
    cdef int64_t rows = row_tile(N, dlcpu_brgemm_f32_max_pixels(isa, 2))
    cdef int64_t n_items = (Kb + 1) // 2 * ((N + rows - 1) // rows)
    cdef int64_t t, item
    cdef int errors = 0
    cdef dlcpu_act_table_t act = dlcpu_act_table(isa)
    with nogil, parallel(num_threads=n_threads):
        for t in range(T):
            for item in prange(n_items, schedule='static'):
                errors += rnn_fwd_item(&G[0, 0], &R[0], &H[0], t, item, N, Kb, rows, relu, isa, &act)
    return errors


cdef void rnn_bwd_gates_item(const float *G, const float *dY, float *dh, float *dG, float *dGb,
                             int64_t t, int64_t item, int64_t N, int64_t Kb,
                             int64_t rows_per_tile, int relu) noexcept nogil:
    cdef int64_t n_tiles = (N + rows_per_tile - 1) // rows_per_tile
    cdef int64_t kb = item // n_tiles
    cdef int64_t n0 = (item % n_tiles) * rows_per_tile
    cdef int64_t rows = min(rows_per_tile, N - n0)
    cdef int64_t Kp = Kb * 16, state = Kb * N * 16
    cdef float *dh_blk = dh + (kb * N + n0) * 16
    add_step_gradient(dh_blk, dY + t * state + (kb * N + n0) * 16, rows * 16)
    dlcpu_rnn_bwd_tile(G + (t * N + n0) * Kp + kb * 16, Kp, dh_blk, dG + (t * N + n0) * Kp + kb * 16,
                       rows, relu)
    gates_to_blocked(dGb, dG + (t * N + n0) * Kp, 1, Kb, N, n0, rows, kb, Kp)


def rnn_backward_f32(const float[:, ::1] G, const float[::1] RT, const float[::1] dY, float[::1] dh,
                     float[:, ::1] dG, float[::1] dGb, int64_t T, int64_t N, int64_t Kb, bint relu,
                     int isa, int n_threads):
    """Backpropagate through T steps; dh: dL/dh_T on entry, dL/dh_0 on exit; dG receives the
    pre-activation gradients of every step."""
    cdef int64_t rows = row_tile(N, dlcpu_brgemm_f32_max_pixels(isa, 2))
    cdef int64_t n_tiles = (N + rows - 1) // rows
    cdef int64_t n_items = Kb * n_tiles
    cdef int64_t n_pair_items = (Kb + 1) // 2 * n_tiles
    cdef int64_t t, step, item
    cdef int errors = 0
    with nogil, parallel(num_threads=n_threads):
        for step in range(T):
            t = T - 1 - step
            for item in prange(n_items, schedule='static'):
                rnn_bwd_gates_item(&G[0, 0], &dY[0], &dh[0], &dG[0, 0], &dGb[0], t, item, N, Kb,
                                   rows, relu)
            for item in prange(n_pair_items, schedule='static'):
                errors += bwd_recurrent_item(&RT[0], &dGb[0], &dh[0], item, N, Kb, rows, isa, 1, 0)
    return errors
