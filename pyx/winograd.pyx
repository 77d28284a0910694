# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Winograd F(m x m, 3 x 3), stride 1, fp32: the driver.  Transforms in winograd_f32.h, the
alpha^2 GEMMs on the BRGEMM.

The plan (dlcpu/conv.py choose_winograd_blocking) arrives as a WinogradPlanStruct owning the C
struct dlcpu_wino_plan_t (pyx/kernels/plans.h), checked against the compiled tile table when it
was made.  Work items are (block of T tiles across images, K group), split statically; each
output is written once by one thread in a fixed order, so results do not depend on the thread
count.  Both transforms report non-finite inputs (see winograd_f32.h); the driver returns the
count so that dlcpu.conv2d(algorithm="auto") can fall back to the direct algorithm.
"""
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from cython.parallel cimport prange, parallel

from dlcpu_kernels cimport dlcpu_brgemm_f32_t, dlcpu_brgemm_f32, DLCPU_BR_STRD
from dlcpu_plans cimport dlcpu_wino_plan_t, dlcpu_conv_shape_t, require_tiles


cdef extern from "winograd_f32.h" nogil:
    int dlcpu_wino_filter_block(const float *w, float *u, int64_t u_stride, int alpha)
    int dlcpu_wino_input_tile(const float *x_plane, int64_t H, int64_t W, int64_t h0, int64_t w0,
                              float *v, int64_t v_stride, int check_h, int check_w, int alpha, int isa)
    void dlcpu_wino_output_tile(const float *m_in, int64_t m_stride, float *y_plane, int64_t P,
                                int64_t Q, int64_t p0, int64_t q0, const float *bias, int relu,
                                int alpha, int isa)


cdef class WinogradPlanStruct:
    """The C plan of one Winograd convolution, built once from the planner's fields and checked
    against the tile table: calls of mv (or 1, for an odd last K block) x 1 x nc' <= nc tiles."""
    cdef dlcpu_wino_plan_t c

    def __init__(self, dict fields):
        self.c = fields
        if self.c.alpha not in (4, 6):
            raise ValueError(f"Winograd plan: alpha must be 4 (F(2x2)) or 6 (F(4x4)), got {self.c.alpha}")
        require_tiles("Winograd", self.c.isa, self.c.mv, 1, self.c.nc)

    def fields(self):
        """Every field, read back from the C struct."""
        return self.c


def winograd_filter_transform(const float[::1] w, float[::1] u, int64_t Kb, int64_t Cb, int alpha,
                              int n_threads):
    """U[kb][xi*alpha+nu][cb][16c][16k] = G g G^T from blocked 3x3 weights W[kb][cb][3][3][c][k].
    K-block-major, so the alpha^2 GEMMs of one K block read one contiguous stretch of U.
    Returns the number of weight blocks holding a non-finite value."""
    cdef int64_t kc, kb, cb
    cdef int nonfinite = 0
    for kc in prange(Kb * Cb, nogil=True, schedule='static', num_threads=n_threads):
        kb = kc // Cb
        cb = kc % Cb
        nonfinite += dlcpu_wino_filter_block(&w[0] + kc * 9 * 256,
                                             &u[0] + (kb * alpha * alpha * Cb + cb) * 256, Cb * 256, alpha)
    return nonfinite


cdef inline void tile_origin(const dlcpu_wino_plan_t *g, int64_t tile, int64_t *n, int64_t *p0,
                             int64_t *q0) noexcept nogil:
    """Image and top-left output pixel of a tile numbered across the batch (image-major)."""
    cdef int64_t per_image = g.tiles_h * g.tiles_w
    cdef int64_t rem = tile % per_image
    cdef int64_t m = g.alpha - 2
    n[0] = tile // per_image
    p0[0] = (rem // g.tiles_w) * m
    q0[0] = (rem % g.tiles_w) * m


cdef int wino_item(const dlcpu_wino_plan_t *g, int64_t item, const float *x, const float *u,
                   const float *bias, float *y, float *v, float *mbuf, int *nonfinite) noexcept nogil:
    """T consecutive tiles (across images) x one group of output-channel blocks: input transform,
    alpha^2 BRGEMMs per output-channel block pair, output transform with bias/ReLU.  Splitting K
    across items (rather than only tiles) lets each thread stream only its share of U, which is
    4x the weights for F(4x4) and dominates small-image layers."""
    cdef const dlcpu_conv_shape_t *s = &g.s
    cdef int64_t T = g.tiles_per_item
    cdef int64_t a2 = g.alpha * g.alpha
    cdef int64_t kg = item % g.k_groups
    cdef int64_t kb1 = min(s.Kb, (kg + 1) * g.kb_per_item)
    cdef int64_t t0 = (item // g.k_groups) * T
    cdef int64_t n_tiles = s.N * g.tiles_h * g.tiles_w
    cdef int64_t nt = min(T, n_tiles - t0)
    cdef int64_t t, n, p0, q0, cb, kb, e, tc, gg
    cdef int mv, err = 0, bad = 0, check_h, check_w
    cdef int m = g.alpha - 2
    cdef dlcpu_brgemm_f32_t p
    # Equal tile chunks per call (16 tiles: 8 + 8, not 14 + 2, whose second call would be
    # latency-bound on 4 accumulators).
    cdef int64_t chunks = (nt + g.nc - 1) // g.nc
    cdef int64_t chunk = (nt + chunks - 1) // chunks
    for t in range(nt):
        tile_origin(g, t0 + t, &n, &p0, &q0)
        # Non-finite check: the m x m corner no later tile reloads, the whole patch at the edges.
        check_h = g.alpha if p0 + m >= s.P else m
        check_w = g.alpha if q0 + m >= s.Q else m
        for cb in range(s.Cb):
            bad |= dlcpu_wino_input_tile(x + (n * s.Cb + cb) * s.H * s.W * 16, s.H, s.W, p0 - s.pad_h,
                                         q0 - s.pad_w, v + (cb * T + t) * 16, s.Cb * T * 16, check_h,
                                         check_w, g.alpha, g.isa)
    nonfinite[0] += bad
    p.kind = DLCPU_BR_STRD
    p.b_trans = 0
    p.k = g.k
    p.batch = s.Cb
    p.a_stride = 256
    p.b_stride = T * 16
    p.a_mstride = a2 * s.Cb * 256
    p.b_rstride = 0
    p.nr = 1
    p.ldc = 16
    p.c_rstride = 0
    p.c_mstride = T * 16
    p.beta = 0
    p.bias = NULL
    p.relu = 0
    kb = kg * g.kb_per_item
    while kb < kb1:
        mv = g.mv if kb + g.mv <= kb1 else 1
        p.mv = mv
        for e in range(a2):
            tc = 0
            while tc < nt:
                p.nc = <int>min(chunk, nt - tc)
                p.a = u + (kb * a2 + e) * s.Cb * 256
                p.b = v + (e * s.Cb * T + tc) * 16
                p.c = mbuf + (e * 2 * T + tc) * 16
                err |= dlcpu_brgemm_f32(&p, g.isa)
                tc = tc + p.nc
        for t in range(nt):
            tile_origin(g, t0 + t, &n, &p0, &q0)
            for gg in range(mv):
                dlcpu_wino_output_tile(mbuf + (gg * T + t) * 16, 2 * T * 16,
                                       y + (n * s.Kb + kb + gg) * s.P * s.Q * 16, s.P, s.Q,
                                       p0, q0, bias + (kb + gg) * 16 if bias != NULL else NULL, g.relu,
                                       g.alpha, g.isa)
        kb = kb + mv
    return err


def conv2d_winograd_f32(const float[::1] x, const float[::1] u, const float[::1] bias,
                        float[::1] y, WinogradPlanStruct plan, int n_threads):
    """Forward 3x3 stride-1 convolution by Winograd F(m x m, 3 x 3) on blocked buffers; u from
    winograd_filter_transform.  Returns (failed calls, input patches holding a non-finite value);
    failed calls are 0 unless a scratch allocation failed."""
    cdef const dlcpu_wino_plan_t *g = &plan.c
    cdef int64_t T = g.tiles_per_item
    cdef int64_t a2 = g.alpha * g.alpha
    cdef int64_t n_tiles = g.s.N * g.tiles_h * g.tiles_w
    cdef int64_t n_items = (n_tiles + T - 1) // T * g.k_groups
    cdef int64_t item
    cdef int errors = 0, nonfinite = 0, bad
    cdef float *v = NULL
    cdef float *mbuf = NULL
    cdef const float *bias_ptr = &bias[0] if bias.shape[0] > 0 else NULL
    with nogil, parallel(num_threads=n_threads):
        v = <float *> malloc(sizeof(float) * a2 * g.s.Cb * T * 16)
        mbuf = <float *> malloc(sizeof(float) * a2 * 2 * T * 16)
        for item in prange(n_items, schedule='static'):
            bad = 0
            if v == NULL or mbuf == NULL:
                errors += 1
            else:
                errors += wino_item(g, item, &x[0], &u[0], bias_ptr, &y[0], v, mbuf, &bad)
            nonfinite += bad
        free(v)
        free(mbuf)
    return errors, nonfinite
