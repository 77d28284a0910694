# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Convolution weight update (dL/dW), fp32: the driver around the transposed-B BRGEMM.

    dW[kb][cb][r][s][16c][16k] = sum_{n,p,q} x[n][cb][p*sh-ph+r][q*sw-pw+s][c] dy[n][kb][p][q][k]

The plan (dlcpu/conv.py choose_weight_grad_blocking) arrives as a WeightGradPlanStruct owning the
C struct dlcpu_wu_plan_t (pyx/kernels/plans.h), checked against the compiled transposed-B tile
table when it was made.  Work items are (K group, C group) pairs; each reduces its dW blocks over
every image and output row in a fixed order, so dW does not depend on the thread count.  The
input reaches the kernels as in the forward driver (tile modes of tiles.h, conv_f32.h).
"""
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from cython.parallel cimport prange, parallel

from dlcpu_kernels cimport (dlcpu_brgemm_f32_t, dlcpu_brgemm_f32, dlcpu_brgemm_has_tile,
                            dlcpu_conv_item_input, DLCPU_BR_OFFS)
from dlcpu_plans cimport dlcpu_wu_plan_t, dlcpu_conv_shape_t, DLCPU_TILE_NONE, DLCPU_TILE_PADDED, DLCPU_TILE_SUBSAMPLED


cdef class WeightGradPlanStruct:
    """The C plan of one weight update, built once from the planner's fields and checked against
    the transposed-B tile table: a call holds nc' <= nc dW rows of up to nr taps, within max_acc
    accumulators (wu_item below forms exactly these)."""
    cdef dlcpu_wu_plan_t c

    def __init__(self, dict fields):
        self.c = fields
        cdef int nc, nr, ncc
        if not 1 <= self.c.nc <= self.c.max_acc:
            raise ValueError(f"weight-update plan: nc={self.c.nc} must lie in 1..max_acc={self.c.max_acc}")
        for nc in range(1, self.c.nc + 1):
            for nr in range(1, min(self.c.nr, self.c.max_acc // nc) + 1):
                for ncc in range(1, nc + 1):
                    if not dlcpu_brgemm_has_tile(self.c.isa, 1, nr, ncc, 1):
                        raise ValueError(f"weight-update plan needs a transposed BRGEMM tile nr={nr} nc={ncc} that "
                                         f"this build lacks for isa code {self.c.isa} (pyx/kernels/brgemm_f32.h)")

    def fields(self):
        """Every field, read back from the C struct."""
        return self.c


cdef int wu_item(const dlcpu_wu_plan_t *g, int64_t item, const float *x, const float *dy, float *dw,
                 float *tile, int64_t *a_offs, int64_t *b_offs, bint accumulate) noexcept nogil:
    """dW blocks of one (K group, C group): reduce over every image and output row.

    One call's batch is the rows of one row block of `images_per_block` images (several small
    images per call keep the dW tile's load/store and the call overhead small next to the FMAs)."""
    cdef const dlcpu_conv_shape_t *s = &g.s
    cdef int64_t cg = item % g.c_groups
    cdef int64_t kg = item // g.c_groups
    cdef int64_t kb0 = kg * g.kb_per_item, kb1 = min(s.Kb, kb0 + g.kb_per_item)
    cdef int64_t cb0 = cg * g.cb_per_item, cb1 = min(s.Cb, cb0 + g.cb_per_item)
    cdef int64_t ncb = cb1 - cb0
    cdef int64_t n_outer = ncb if g.k_inner else kb1 - kb0
    cdef int64_t n_inner = kb1 - kb0 if g.k_inner else ncb
    cdef int64_t sw = s.stride_w
    cdef int64_t outer, inner
    cdef int64_t n0, n1, m, i, rb, p0, p1, kb, cb, r, s_, j0, rows_c, phase, taps, t0, nc
    cdef int err = 0
    cdef bint first = not accumulate      # the first call overwrites dW, unless adding to it
    cdef const float *x_img
    cdef const float *x_img_m
    cdef const float *bbase
    cdef int64_t b_row_stride = (s.stride_h * sw * g.tile_phase_width * 16 if g.tile_mode == DLCPU_TILE_PADDED
                                 else s.Q * 16)
    cdef dlcpu_brgemm_f32_t p
    p.kind = DLCPU_BR_OFFS
    p.a_offs = a_offs
    p.b_offs = b_offs
    p.b_trans = 1
    p.mv = 1
    p.nr = 1
    p.k = <int>s.Q
    p.ldc = 16
    p.c_rstride = sw * 256        # stacked taps: s -> s + sw
    p.c_mstride = 0
    p.a_mstride = 0
    p.b_rstride = 16              # ... and one tile position further
    p.bias = NULL
    p.relu = 0
    n0 = 0
    while n0 < s.N:
        n1 = min(s.N, n0 + g.images_per_block)
        for rb in range(g.row_blocks):
            p0 = rb * g.rows_per_block
            p1 = min(s.P, p0 + g.rows_per_block)
            x_img = NULL
            for m in range(n0, n1):
                x_img_m = dlcpu_conv_item_input(g.tile_mode, x + (m * s.Cb + cb0) * s.H * s.W * 16,
                                                tile + (m - n0) * g.tile_floats, ncb, s.H, s.W, p0,
                                                s.stride_h, sw, s.pad_h, s.pad_w, g.tile_rows,
                                                g.tile_phase_width)
                if m == n0:
                    x_img = x_img_m
                for i in range(p1 - p0):
                    a_offs[(m - n0) * (p1 - p0) + i] = (m * s.Kb * s.P + p0 + i) * s.Q * 16
                    b_offs[(m - n0) * (p1 - p0) + i] = (x_img_m - x_img) + i * b_row_stride
            p.batch = (n1 - n0) * (p1 - p0)
            p.beta = 0 if first else 1
            for outer in range(n_outer):
                for inner in range(n_inner):
                    if g.k_inner:
                        cb = cb0 + outer
                        kb = kb0 + inner
                    else:
                        kb = kb0 + outer
                        cb = cb0 + inner
                    p.a = dy + kb * s.P * s.Q * 16
                    # Rows of the dW block that are real input channels (C=3: only 3 of 16).
                    rows_c = min(<int64_t>16, s.C - cb * 16)
                    for r in range(s.R):
                        for phase in range(min(sw, s.S)):
                            # Taps s = phase + sw*t share the tile phase: tap t+1 reads one
                            # position (16 floats) further, so they stack as kernel rows.
                            taps = (s.S - phase + sw - 1) // sw
                            t0 = 0
                            while t0 < taps:
                                s_ = phase + sw * t0
                                if g.tile_mode == DLCPU_TILE_PADDED:
                                    bbase = (x_img + (((cb - cb0) * g.tile_rows + r) * sw + phase) * g.tile_phase_width * 16
                                             + (s_ // sw) * 16)
                                elif g.tile_mode == DLCPU_TILE_SUBSAMPLED:
                                    bbase = x_img + (cb - cb0) * g.tile_rows * g.tile_phase_width * 16
                                else:
                                    bbase = x_img + (cb - cb0) * s.H * s.W * 16
                                nc = min(rows_c, <int64_t>g.nc)
                                p.nr = <int>min(min(<int64_t>g.nr, taps - t0), g.max_acc // nc)
                                j0 = 0
                                while j0 < rows_c:
                                    p.nc = <int>min(nc, rows_c - j0)
                                    p.b = bbase + j0
                                    p.c = dw + (((kb * s.Cb + cb) * s.R + r) * s.S + s_) * 256 + j0 * 16
                                    err |= dlcpu_brgemm_f32(&p, g.isa)
                                    j0 = j0 + p.nc
                                t0 = t0 + p.nr
            first = False
        n0 = n1
    return err


def conv2d_weight_grad_f32(const float[::1] x, const float[::1] dy, float[::1] dw,
                           WeightGradPlanStruct plan, int n_threads, bint accumulate=False):
    """dW on blocked buffers (flattened); dw must be zero-filled by the caller (rows of padded
    input channels are never written), or, with accumulate, hold the gradient dW is added to (a
    layer's accumulated .grad: no zeroed temporary and no extra pass).  Returns the number of
    failed calls (0 unless a scratch allocation failed: the plan's tiles were checked when it
    was made)."""
    cdef const dlcpu_wu_plan_t *g = &plan.c
    cdef int64_t n_items = g.k_groups * g.c_groups
    cdef int64_t ipb = g.images_per_block, hb = g.rows_per_block
    cdef int64_t item
    cdef int errors = 0
    cdef float *tile = NULL
    cdef int64_t *offs = NULL
    with nogil, parallel(num_threads=n_threads):
        tile = <float *> malloc(sizeof(float) * (g.tile_floats * ipb + 16)) if g.tile_mode != DLCPU_TILE_NONE else NULL
        offs = <int64_t *> malloc(sizeof(int64_t) * 2 * ipb * hb)
        for item in prange(n_items, schedule='static'):
            if (g.tile_mode != DLCPU_TILE_NONE and tile == NULL) or offs == NULL:
                errors += 1
            else:
                errors += wu_item(g, item, &x[0], &dy[0], &dw[0], tile, offs, offs + ipb * hb, accumulate)
        free(tile)
        free(offs)
    return errors
