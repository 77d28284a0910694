# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Blocked direct convolution, fp32: the parallel drivers around the BRGEMM.

The plans (dlcpu/conv.py: choose_conv_blocking, choose_weight_grad_blocking) fix everything;
this file only walks them.  How an item gets its input (plan "tile_mode"):
  TILE_NONE        1x1, stride 1, no padding: read in place, the item's rows being one
                   contiguous run of pixels;
  TILE_PADDED      pack the rows the item needs into a per-thread zero-padded, phase-split tile
                   (conv_f32.h), so no tap needs a bounds check and pixels are 16 floats apart;
  TILE_SUBSAMPLED  strided 1x1: pack only the pixels used, densely, then as TILE_NONE.

Forward: work items are (image, output-channel group, output-row block), split statically over
threads.  For each output-channel block pair (mv=2) or block, and each register tile of pixels,
one BRGEMM call reduces over every (input-channel block, r, s) with beta=0 and bias/ReLU fused,
so each output is written once, by one thread, in a fixed order: results do not depend on the
thread count.  Python has validated every shape and pointer extent before this runs.
"""
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from cython.parallel cimport prange, parallel

from dlcpu_kernels cimport (dlcpu_brgemm_f32_t, dlcpu_brgemm_f32, dlcpu_brgemm_f32_t_max_acc,
                            dlcpu_conv_pack_tile_f32, dlcpu_conv_pack_subsampled_f32,
                            dlcpu_transpose_16x16_f32,
                            DLCPU_BR_OFFS, DLCPU_BR_STRD)

# Values of the plans' tile_mode (mirrored in dlcpu/conv.py).
cdef enum:
    TILE_NONE = 0
    TILE_PADDED = 1
    TILE_SUBSAMPLED = 2


cdef struct conv_geom:
    int64_t N, Cb, Kb, H, W, P, Q, R, S, sh, sw, ph, pw
    int k, relu, has_bias
    int tile_mode, mv, nr, nc, isa
    int64_t hb, n_row_blocks, kb_per_group, n_groups, TR, PW, tile_floats, batch


cdef const float *item_input(int mode, const float *x_img, float *tile, int64_t Cb, int64_t H,
                             int64_t W, int64_t p0, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                             int64_t TR, int64_t PW) noexcept nogil:
    """Where one item's B blocks start: the image in place, or a freshly packed tile."""
    if mode == TILE_PADDED:
        dlcpu_conv_pack_tile_f32(x_img, tile, Cb, H, W, p0 * sh - ph, TR, sw, PW, pw)
        return tile
    if mode == TILE_SUBSAMPLED:
        dlcpu_conv_pack_subsampled_f32(x_img, tile, Cb, H, W, p0 * sh - ph, TR, sh, -pw, PW, sw)
        return tile
    return x_img + p0 * W * 16


cdef int run_tiles(const conv_geom *g, dlcpu_brgemm_f32_t *p, const float *base, float *y_kb,
                   int64_t p0, int64_t p1) noexcept nogil:
    """Every register tile of output rows p0..p1 for one (image, K block): one call each."""
    cdef int64_t i0, q0, t0, npix, chunk
    cdef int nrr, ncc, err = 0
    if g.tile_mode == TILE_PADDED:
        i0 = p0
        while i0 < p1:
            nrr = <int>min(<int64_t>g.nr, p1 - i0)
            q0 = 0
            while q0 < g.Q:
                ncc = <int>min(<int64_t>g.nc, g.Q - q0)
                p.nr = nrr
                p.nc = ncc
                p.b = base + (i0 - p0) * p.b_rstride + q0 * 16
                p.c = y_kb + (i0 * g.Q + q0) * 16
                err |= dlcpu_brgemm_f32(p, g.isa)
                q0 = q0 + ncc
            i0 = i0 + nrr
    else:
        # Dense rows (in place or subsampled): one pixel run across the item's rows, cut into
        # equal chunks (21 pixels: 11 + 10, not 14 + 7).
        npix = (p1 - p0) * g.Q
        chunk = (npix + g.nc - 1) // g.nc
        chunk = (npix + chunk - 1) // chunk
        t0 = 0
        p.nr = 1
        while t0 < npix:
            ncc = <int>min(chunk, npix - t0)
            p.nc = ncc
            p.b = base + t0 * 16
            p.c = y_kb + (p0 * g.Q + t0) * 16
            err |= dlcpu_brgemm_f32(p, g.isa)
            t0 = t0 + ncc
    return err


cdef int run_item(const conv_geom *g, int64_t item, const float *x, const float *w,
                  const float *bias, float *y, const int64_t *a_offs, const int64_t *b_offs,
                  float *tile) noexcept nogil:
    cdef int64_t rb = item % g.n_row_blocks
    cdef int64_t rest = item // g.n_row_blocks
    cdef int64_t grp = rest % g.n_groups
    cdef int64_t n = rest // g.n_groups
    cdef int64_t p0 = rb * g.hb
    cdef int64_t p1 = min(g.P, p0 + g.hb)
    cdef int64_t kb0 = grp * g.kb_per_group
    cdef int64_t kb1 = min(g.Kb, kb0 + g.kb_per_group)
    cdef int64_t kb
    cdef int mv, err = 0
    cdef const float *base = item_input(g.tile_mode, x + n * g.Cb * g.H * g.W * 16, tile, g.Cb,
                                        g.H, g.W, p0, g.sh, g.sw, g.ph, g.pw, g.TR, g.PW)
    cdef dlcpu_brgemm_f32_t p

    p.kind = DLCPU_BR_OFFS
    p.b_trans = 0
    p.a_offs = a_offs
    p.b_offs = b_offs
    p.batch = g.batch
    p.k = g.k
    p.a_mstride = g.Cb * g.R * g.S * 256
    p.c_mstride = g.P * g.Q * 16
    p.ldc = 16
    p.beta = 0
    p.relu = g.relu
    p.b_rstride = g.sh * g.sw * g.PW * 16
    p.c_rstride = g.Q * 16

    kb = kb0
    while kb < kb1:
        mv = g.mv if kb + g.mv <= kb1 else 1
        p.mv = mv
        p.a = w + kb * g.Cb * g.R * g.S * 256
        p.bias = bias + kb * 16 if g.has_bias else NULL
        err |= run_tiles(g, &p, base, y + (n * g.Kb + kb) * g.P * g.Q * 16, p0, p1)
        kb = kb + mv
    return err


def conv2d_forward_f32(const float[::1] x, const float[::1] w, const float[::1] bias,
                       float[::1] y, dict shape, dict plan,
                       const int64_t[::1] a_offs, const int64_t[::1] b_offs, int n_threads):
    """Run a planned forward convolution on blocked buffers (flattened, C-contiguous).

    `shape` and `plan` are ConvShape/ConvPlan as dicts (dlcpu/conv.py); extents were checked
    there.  Returns the number of kernel calls that found no microkernel (0 when all is well).
    """
    cdef conv_geom g
    g.N = shape["N"]; g.Cb = shape["Cb"]; g.Kb = shape["Kb"]; g.H = shape["H"]; g.W = shape["W"]
    g.P = shape["P"]; g.Q = shape["Q"]; g.R = shape["R"]; g.S = shape["S"]
    g.sh = shape["stride_h"]; g.sw = shape["stride_w"]; g.ph = shape["pad_h"]; g.pw = shape["pad_w"]
    g.relu = 1 if plan["relu"] else 0
    g.has_bias = 1 if bias.shape[0] > 0 else 0
    g.k = plan["k"]; g.tile_mode = plan["tile_mode"]
    g.mv = plan["mv"]; g.nr = plan["nr"]; g.nc = plan["nc"]; g.isa = plan["isa"]
    g.hb = plan["rows_per_item"]; g.n_row_blocks = plan["row_blocks"]
    g.kb_per_group = plan["kb_per_group"]; g.n_groups = plan["k_groups"]
    g.TR = plan["tile_rows"]; g.PW = plan["tile_phase_width"]; g.tile_floats = plan["tile_floats"]
    g.batch = a_offs.shape[0]

    cdef int64_t n_items = g.N * g.n_groups * g.n_row_blocks
    cdef int64_t item
    cdef int errors = 0
    cdef float *tile = NULL
    cdef const float *bias_ptr = &bias[0] if g.has_bias else NULL

    with nogil, parallel(num_threads=n_threads):
        # Per-thread tile, allocated inside the region so its pages are first touched by the
        # thread that uses them.
        tile = <float *> malloc(sizeof(float) * (g.tile_floats + 16)) if g.tile_mode != TILE_NONE else NULL
        for item in prange(n_items, schedule='static'):
            if g.tile_mode != TILE_NONE and tile == NULL:
                errors += 1
            else:
                errors += run_item(&g, item, &x[0], &w[0], bias_ptr, &y[0],
                                   &a_offs[0], &b_offs[0], tile)
        free(tile)
    return errors


# ----------------------------------------------------------------------------------------------
# Backward: weight update and the weight transform of the backward-data pass
# ----------------------------------------------------------------------------------------------
cdef struct wu_geom:
    int64_t N, Cb, Kb, H, W, P, Q, R, S, sh, sw, ph, pw, C
    int tile_mode, isa, max_acc
    int64_t hb, n_row_blocks, kb_per_item, cb_per_item, n_kgroups, n_cgroups, TR, PW
    int64_t ipb, tile_floats
    int k_inner


cdef int wu_item(const wu_geom *g, int64_t item, const float *x, const float *dy, float *dw,
                 float *tile, int64_t *a_offs, int64_t *b_offs) noexcept nogil:
    """dW blocks of one (K group, C group): reduce over every image and output row.

    One call's batch is the rows of one row block of `ipb` images (several small images per
    call keep the dW tile's load/store and the call overhead small next to the FMAs)."""
    cdef int64_t cg = item % g.n_cgroups
    cdef int64_t kg = item // g.n_cgroups
    cdef int64_t kb0 = kg * g.kb_per_item, kb1 = min(g.Kb, kb0 + g.kb_per_item)
    cdef int64_t cb0 = cg * g.cb_per_item, cb1 = min(g.Cb, cb0 + g.cb_per_item)
    cdef int64_t ncb = cb1 - cb0
    cdef int64_t n_outer = ncb if g.k_inner else kb1 - kb0
    cdef int64_t n_inner = kb1 - kb0 if g.k_inner else ncb
    cdef int64_t outer, inner
    cdef int64_t n0, n1, m, i, rb, p0, p1, kb, cb, r, s, j0, rows_c, phase, taps, t0, nc
    cdef int err = 0
    cdef bint first = True
    cdef const float *x_img
    cdef const float *x_img_m
    cdef const float *bbase
    cdef int64_t b_row_stride = g.sh * g.sw * g.PW * 16 if g.tile_mode == TILE_PADDED else g.Q * 16
    cdef dlcpu_brgemm_f32_t p
    p.kind = DLCPU_BR_OFFS
    p.a_offs = a_offs
    p.b_offs = b_offs
    p.b_trans = 1
    p.mv = 1
    p.nr = 1
    p.k = <int>g.Q
    p.ldc = 16
    p.c_rstride = g.sw * 256      # stacked taps: s -> s + sw
    p.c_mstride = 0
    p.a_mstride = 0
    p.b_rstride = 16              # ... and one tile position further
    p.bias = NULL
    p.relu = 0
    n0 = 0
    while n0 < g.N:
        n1 = min(g.N, n0 + g.ipb)
        for rb in range(g.n_row_blocks):
            p0 = rb * g.hb
            p1 = min(g.P, p0 + g.hb)
            x_img = NULL
            for m in range(n0, n1):
                x_img_m = item_input(g.tile_mode, x + (m * g.Cb + cb0) * g.H * g.W * 16,
                                     tile + (m - n0) * g.tile_floats, ncb, g.H, g.W, p0, g.sh,
                                     g.sw, g.ph, g.pw, g.TR, g.PW)
                if m == n0:
                    x_img = x_img_m
                for i in range(p1 - p0):
                    a_offs[(m - n0) * (p1 - p0) + i] = (m * g.Kb * g.P + p0 + i) * g.Q * 16
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
                    p.a = dy + kb * g.P * g.Q * 16
                    # Rows of the dW block that are real input channels (C=3: only 3 of 16).
                    rows_c = min(<int64_t>16, g.C - cb * 16)
                    for r in range(g.R):
                        for phase in range(min(g.sw, g.S)):
                            # Taps s = phase + sw*t share the tile phase: tap t+1 reads one
                            # position (16 floats) further, so they stack as kernel rows.
                            taps = (g.S - phase + g.sw - 1) // g.sw
                            t0 = 0
                            while t0 < taps:
                                s = phase + g.sw * t0
                                if g.tile_mode == TILE_PADDED:
                                    bbase = x_img + (((cb - cb0) * g.TR + r) * g.sw + phase) * g.PW * 16 + (s // g.sw) * 16
                                elif g.tile_mode == TILE_SUBSAMPLED:
                                    bbase = x_img + (cb - cb0) * g.TR * g.PW * 16
                                else:
                                    bbase = x_img + (cb - cb0) * g.H * g.W * 16
                                nc = min(rows_c, <int64_t>min(16, g.max_acc))
                                p.nr = <int>min(min(<int64_t>4, taps - t0), g.max_acc // nc)
                                j0 = 0
                                while j0 < rows_c:
                                    p.nc = <int>min(nc, rows_c - j0)
                                    p.b = bbase + j0
                                    p.c = dw + (((kb * g.Cb + cb) * g.R + r) * g.S + s) * 256 + j0 * 16
                                    err |= dlcpu_brgemm_f32(&p, g.isa)
                                    j0 = j0 + p.nc
                                t0 = t0 + p.nr
            first = False
        n0 = n1
    return err


def conv2d_weight_grad_f32(const float[::1] x, const float[::1] dy, float[::1] dw, dict shape,
                           dict plan, int n_threads):
    """dW[kb][cb][r][s][16c][16k] = sum_{n,p,q} x[n][cb][p*sh-ph+r][q*sw-pw+s][c] dy[n][kb][p][q][k].

    Work items are (K group, C group) pairs; each reduces over all images and rows in a fixed
    order, so dW does not depend on the thread count.  dw must be zero-filled by the caller
    (rows of padded input channels are never written).
    """
    cdef wu_geom g
    g.N = shape["N"]; g.Cb = shape["Cb"]; g.Kb = shape["Kb"]; g.H = shape["H"]; g.W = shape["W"]
    g.P = shape["P"]; g.Q = shape["Q"]; g.R = shape["R"]; g.S = shape["S"]; g.C = shape["C"]
    g.sh = shape["stride_h"]; g.sw = shape["stride_w"]; g.ph = shape["pad_h"]; g.pw = shape["pad_w"]
    g.tile_mode = plan["tile_mode"]
    g.isa = plan["isa"]
    g.max_acc = dlcpu_brgemm_f32_t_max_acc(g.isa)
    g.hb = plan["rows_per_block"]; g.n_row_blocks = plan["row_blocks"]
    g.kb_per_item = plan["kb_per_item"]; g.cb_per_item = plan["cb_per_item"]
    g.n_kgroups = plan["k_groups"]; g.n_cgroups = plan["c_groups"]
    g.TR = plan["tile_rows"]; g.PW = plan["tile_phase_width"]
    g.tile_floats = plan["tile_floats"]; g.ipb = plan["images_per_block"]
    g.k_inner = 1 if plan["k_inner"] else 0
    cdef int64_t n_items = g.n_kgroups * g.n_cgroups
    cdef int64_t item
    cdef int errors = 0
    cdef float *tile = NULL
    cdef int64_t *offs = NULL
    with nogil, parallel(num_threads=n_threads):
        tile = <float *> malloc(sizeof(float) * (g.tile_floats * g.ipb + 16)) if g.tile_mode != TILE_NONE else NULL
        offs = <int64_t *> malloc(sizeof(int64_t) * 2 * g.ipb * g.hb)
        for item in prange(n_items, schedule='static'):
            if (g.tile_mode != TILE_NONE and tile == NULL) or offs == NULL:
                errors += 1
            else:
                errors += wu_item(&g, item, &x[0], &dy[0], &dw[0], tile, offs, offs + g.ipb * g.hb)
        free(tile)
        free(offs)
    return errors


def flip_transpose_weights(const float[:, :, :, :, :, ::1] wb, float[:, :, :, :, :, ::1] out,
                           int rho_h, int rho_w, int sh, int sw, int n_threads):
    """Backward-data weights for one stride phase (rho_h, rho_w):
        out[cb][kb][j][i][k][c] = wb[kb][cb][rho_h + sh*(Jh-1-j)][rho_w + sw*(Jw-1-i)][c][k]
    (channels swapped, taps of the phase only, spatially flipped), so that the forward kernels
    run on dy compute dx at that phase's positions.  Written in output order, one 16x16
    transpose per block."""
    cdef int64_t Kb = wb.shape[0], Cb = wb.shape[1], R = wb.shape[2], S = wb.shape[3]
    cdef int64_t Jh = out.shape[2], Jw = out.shape[3]
    cdef int64_t ck, kb, cb, j, i, r, s
    cdef const float *src = &wb[0, 0, 0, 0, 0, 0]
    cdef float *dst = &out[0, 0, 0, 0, 0, 0]
    for ck in prange(Cb * Kb, nogil=True, schedule='static', num_threads=n_threads):
        cb = ck // Kb
        kb = ck % Kb
        for j in range(Jh):
            r = rho_h + sh * (Jh - 1 - j)
            for i in range(Jw):
                s = rho_w + sw * (Jw - 1 - i)
                dlcpu_transpose_16x16_f32(src + (((kb * Cb + cb) * R + r) * S + s) * 256,
                                          dst + ((ck * Jh + j) * Jw + i) * 256)


# ----------------------------------------------------------------------------------------------
# Winograd F(m x m, 3 x 3), stride 1: transforms in winograd_f32.h, the alpha^2 GEMMs on the BRGEMM
# ----------------------------------------------------------------------------------------------
cdef extern from "winograd_f32.h" nogil:
    void dlcpu_wino_filter_block(const float *w, float *u, int64_t u_stride, int alpha)
    void dlcpu_wino_input_tile(const float *x_plane, int64_t H, int64_t W, int64_t h0, int64_t w0,
                               float *v, int64_t v_stride, int alpha, int isa)
    void dlcpu_wino_output_tile(const float *m_in, int64_t m_stride, float *y_plane, int64_t P,
                                int64_t Q, int64_t p0, int64_t q0, const float *bias, int relu,
                                int alpha, int isa)


def winograd_filter_transform(const float[::1] w, float[::1] u, int64_t Kb, int64_t Cb, int alpha,
                              int n_threads):
    """U[kb][xi*alpha+nu][cb][16c][16k] = G g G^T from blocked 3x3 weights W[kb][cb][3][3][c][k].
    K-block-major, so the alpha^2 GEMMs of one K block read one contiguous stretch of U."""
    cdef int64_t kc, kb, cb
    for kc in prange(Kb * Cb, nogil=True, schedule='static', num_threads=n_threads):
        kb = kc // Cb
        cb = kc % Cb
        dlcpu_wino_filter_block(&w[0] + kc * 9 * 256, &u[0] + (kb * alpha * alpha * Cb + cb) * 256,
                                Cb * 256, alpha)


cdef struct wino_geom:
    int64_t N, Cb, Kb, H, W, P, Q, ph, pw, tiles_h, tiles_w, n_tiles, T, kb_per_item, k_groups
    int alpha, m, mv, k, isa, relu, has_bias, max_nc


cdef inline void tile_origin(const wino_geom *g, int64_t tile, int64_t *n, int64_t *p0,
                             int64_t *q0) noexcept nogil:
    """Image and top-left output pixel of a tile numbered across the batch (image-major)."""
    cdef int64_t per_image = g.tiles_h * g.tiles_w
    cdef int64_t rem = tile % per_image
    n[0] = tile // per_image
    p0[0] = (rem // g.tiles_w) * g.m
    q0[0] = (rem % g.tiles_w) * g.m


cdef int wino_item(const wino_geom *g, int64_t item, const float *x, const float *u,
                   const float *bias, float *y, float *v, float *mbuf) noexcept nogil:
    """T consecutive tiles (across images) x one group of output-channel blocks: input transform,
    alpha^2 BRGEMMs per output-channel block pair, output transform with bias/ReLU.  Splitting K
    across items (rather than only tiles) lets each thread stream only its share of U, which is
    4x the weights for F(4x4) and dominates small-image layers."""
    cdef int64_t a2 = g.alpha * g.alpha
    cdef int64_t kg = item % g.k_groups
    cdef int64_t kb1 = min(g.Kb, (kg + 1) * g.kb_per_item)
    cdef int64_t t0 = (item // g.k_groups) * g.T
    cdef int64_t nt = min(g.T, g.n_tiles - t0)
    cdef int64_t t, n, p0, q0, cb, kb, e, tc, gg
    cdef int mv, err = 0
    cdef dlcpu_brgemm_f32_t p
    # Equal tile chunks per call (16 tiles: 8 + 8, not 14 + 2, whose second call would be
    # latency-bound on 4 accumulators).
    cdef int64_t chunks = (nt + g.max_nc - 1) // g.max_nc
    cdef int64_t chunk = (nt + chunks - 1) // chunks
    for t in range(nt):
        tile_origin(g, t0 + t, &n, &p0, &q0)
        for cb in range(g.Cb):
            dlcpu_wino_input_tile(x + (n * g.Cb + cb) * g.H * g.W * 16, g.H, g.W, p0 - g.ph,
                                  q0 - g.pw, v + (cb * g.T + t) * 16, g.Cb * g.T * 16, g.alpha,
                                  g.isa)
    p.kind = DLCPU_BR_STRD
    p.b_trans = 0
    p.k = g.k
    p.batch = g.Cb
    p.a_stride = 256
    p.b_stride = g.T * 16
    p.a_mstride = a2 * g.Cb * 256
    p.b_rstride = 0
    p.nr = 1
    p.ldc = 16
    p.c_rstride = 0
    p.c_mstride = g.T * 16
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
                p.a = u + (kb * a2 + e) * g.Cb * 256
                p.b = v + (e * g.Cb * g.T + tc) * 16
                p.c = mbuf + (e * 2 * g.T + tc) * 16
                err |= dlcpu_brgemm_f32(&p, g.isa)
                tc = tc + p.nc
        for t in range(nt):
            tile_origin(g, t0 + t, &n, &p0, &q0)
            for gg in range(mv):
                dlcpu_wino_output_tile(mbuf + (gg * g.T + t) * 16, 2 * g.T * 16,
                                       y + (n * g.Kb + kb + gg) * g.P * g.Q * 16, g.P, g.Q,
                                       p0, q0,
                                       bias + (kb + gg) * 16 if g.has_bias else NULL, g.relu, g.alpha,
                                       g.isa)
        kb = kb + mv
    return err


def conv2d_winograd_f32(const float[::1] x, const float[::1] u, const float[::1] bias,
                        float[::1] y, dict shape, dict plan, int n_threads):
    """Forward 3x3 stride-1 convolution by Winograd F(m x m, 3 x 3) on blocked buffers; u from
    winograd_filter_transform.  Work items are blocks of T tiles, split statically."""
    cdef wino_geom g
    g.N = shape["N"]; g.Cb = shape["Cb"]; g.Kb = shape["Kb"]; g.H = shape["H"]; g.W = shape["W"]
    g.P = shape["P"]; g.Q = shape["Q"]; g.ph = shape["pad_h"]; g.pw = shape["pad_w"]
    g.alpha = plan["alpha"]; g.m = g.alpha - 2; g.mv = plan["mv"]; g.k = plan["k"]
    g.isa = plan["isa"]; g.relu = 1 if plan["relu"] else 0; g.max_nc = plan["nc"]
    g.tiles_h = plan["tiles_h"]; g.tiles_w = plan["tiles_w"]; g.n_tiles = g.N * g.tiles_h * g.tiles_w
    g.T = plan["tiles_per_item"]
    g.kb_per_item = plan["kb_per_item"]; g.k_groups = plan["k_groups"]
    g.has_bias = 1 if bias.shape[0] > 0 else 0
    cdef int64_t a2 = g.alpha * g.alpha
    cdef int64_t n_items = (g.n_tiles + g.T - 1) // g.T * g.k_groups
    cdef int64_t item
    cdef int errors = 0
    cdef float *v = NULL
    cdef float *mbuf = NULL
    cdef const float *bias_ptr = &bias[0] if g.has_bias else NULL
    with nogil, parallel(num_threads=n_threads):
        v = <float *> malloc(sizeof(float) * a2 * g.Cb * g.T * 16)
        mbuf = <float *> malloc(sizeof(float) * a2 * 2 * g.T * 16)
        for item in prange(n_items, schedule='static'):
            if v == NULL or mbuf == NULL:
                errors += 1
            else:
                errors += wino_item(&g, item, &x[0], &u[0], bias_ptr, &y[0], v, mbuf)
        free(v)
        free(mbuf)
    return errors
