# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Convolution weight update (dL/dW): the fp32 driver around the transposed-B BRGEMM, and the bf16
and DFP-16 driver around the pair BRGEMMs, VDPBF16PS and VPDPWSSD, on pixel pairs
(conv2d_weight_grad_pairs, below).

    dW[kb][cb][r][s][16c][16k] = sum_{n,p,q} x[n][cb][p*sh-ph+r][q*sw-pw+s][c] dy[n][kb][p][q][k]

The plan (dlcpu/conv.py choose_weight_grad_blocking) arrives as a WeightGradPlanStruct owning the
C struct dlcpu_wu_plan_t (pyx/kernels/plans.h), checked against the compiled transposed-B tile
table when it was made.  Work items are (K group, C group) pairs; each reduces its dW blocks over
every image and output row in a fixed order (or, with the plan's image_splits > 1, over one range
of images, the ranges summed in order at the end), so dW does not depend on the thread count.  The
input reaches the kernels as in the forward driver (tile modes of tiles.h, conv_f32.h).
"""
from libc.stdint cimport int64_t, uint16_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset, memcpy
from cython.parallel cimport prange, parallel, threadid

from dlcpu_kernels cimport (dlcpu_brgemm_f32_t, dlcpu_brgemm_f32, dlcpu_brgemm_has_tile, dlcpu_brgemm_bf16,
                            dlcpu_brgemm_int_t, dlcpu_brgemm_int, integer_call,
                            dlcpu_bf16_to_vnni, dlcpu_bf16_to_f32, dlcpu_u16_transpose16_avx512, dlcpu_u16_transpose16_scalar,
                            dlcpu_u16_window_avx512, dlcpu_u16_window_scalar, dlcpu_conv_item_input,
                            DLCPU_BR_OFFS, DLCPU_ISA_AVX512, DLCPU_BR_ROWS_MAX_NR)
from dlcpu_plans cimport (dlcpu_wu_plan_t, dlcpu_conv_shape_t, dlcpu_max_acc, DLCPU_TILE_NONE, DLCPU_TILE_PADDED,
                          DLCPU_TILE_SUBSAMPLED)


cdef class WeightGradPlanStruct:
    """The C plan of one weight update, built once from the planner's fields and checked against
    the transposed-B tile table: a call holds nc' <= nc dW rows of up to nr taps, within max_acc
    accumulators (wu_item below forms exactly these)."""
    cdef dlcpu_wu_plan_t c

    def __init__(self, dict fields):
        self.c = fields
        cdef int nc, nr, ncc
        cdef int64_t image_blocks
        if not 1 <= self.c.nc <= self.c.max_acc:
            raise ValueError(f"weight-update plan: nc={self.c.nc} must lie in 1..max_acc={self.c.max_acc}")
        if self.c.images_per_block < 1:
            raise ValueError(f"weight-update plan: images_per_block={self.c.images_per_block} must be >= 1")
        # every range must hold at least one block of images_per_block images
        image_blocks = (self.c.s.N + self.c.images_per_block - 1) // self.c.images_per_block
        if not 1 <= self.c.image_splits <= image_blocks:
            raise ValueError(f"weight-update plan: image_splits={self.c.image_splits} must lie in 1..{image_blocks}, the "
                             f"blocks of images_per_block={self.c.images_per_block} images in N={self.c.s.N}")
        for nc in range(1, self.c.nc + 1):
            for nr in range(1, min(self.c.nr, self.c.max_acc // nc) + 1):
                for ncc in range(1, nc + 1):
                    if not dlcpu_brgemm_has_tile(self.c.isa, 1, nr, ncc, 1):
                        raise ValueError(f"weight-update plan needs a transposed BRGEMM tile nr={nr} nc={ncc} that "
                                         f"this build lacks for isa code {self.c.isa} (pyx/kernels/brgemm_f32.h)")

    def fields(self):
        """Every field, read back from the C struct."""
        return self.c


cdef int wu_item(const dlcpu_wu_plan_t *g, int64_t item, int64_t n_begin, int64_t n_end, const float *x,
                 const float *dy, const uint16_t *x16, const uint16_t *dy16, float *xw, float *dyw, float *dw,
                 float *tile, int64_t *a_offs, int64_t *b_offs, bint accumulate) noexcept nogil:
    """dW blocks of one (K group, C group): reduce over the images [n_begin, n_end) and every
    output row.

    One call's batch is the rows of one row block of `images_per_block` images (several small
    images per call keep the dW tile's load/store and the call overhead small next to the FMAs).

    x16 / dy16 not NULL (x and dy then unused): bf16 patterns, widened (exactly) block of images
    by block of images into this thread's xw ([image][cb0:cb1][H][W][16]) and dyw
    ([image][kb0:kb1][P][Q][16]) just before the calls read them: the same fp32 values, the same
    sums, with no pass of its own over all of x and dy (see conv2d_weight_grad_bf16_values)."""
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
    cdef bint widen = x16 != NULL
    cdef int64_t x_run = ncb * s.H * s.W * 16                    # one image's cb0:cb1 blocks
    cdef int64_t dy_run = (kb1 - kb0) * s.P * s.Q * 16           # one image's kb0:kb1 blocks
    # dy's A operand of block kb: dy_at + (kb - dy_kb0) * P*Q*16, image m (dy_kbs blocks each)
    # (m - dy_m0) images further
    cdef const float *dy_at = dy
    cdef int64_t dy_kbs = s.Kb, dy_kb0 = 0, dy_m0 = 0
    cdef const float *x_src
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
    if widen:
        dy_at, dy_kbs, dy_kb0 = dyw, kb1 - kb0, kb0
    n0 = n_begin
    while n0 < n_end:
        n1 = min(n_end, n0 + g.images_per_block)
        if widen:
            for m in range(n0, n1):
                dlcpu_bf16_to_f32(g.isa, x16 + (m * s.Cb + cb0) * s.H * s.W * 16, xw + (m - n0) * x_run, x_run)
                dlcpu_bf16_to_f32(g.isa, dy16 + (m * s.Kb + kb0) * s.P * s.Q * 16, dyw + (m - n0) * dy_run, dy_run)
            dy_m0 = n0
        for rb in range(g.row_blocks):
            p0 = rb * g.rows_per_block
            p1 = min(s.P, p0 + g.rows_per_block)
            x_img = NULL
            for m in range(n0, n1):
                x_src = xw + (m - n0) * x_run if widen else x + (m * s.Cb + cb0) * s.H * s.W * 16
                x_img_m = dlcpu_conv_item_input(g.tile_mode, x_src,
                                                tile + (m - n0) * g.tile_floats, ncb, s.H, s.W, p0,
                                                s.stride_h, sw, s.pad_h, s.pad_w, g.tile_rows,
                                                g.tile_phase_width)
                if m == n0:
                    x_img = x_img_m
                for i in range(p1 - p0):
                    a_offs[(m - n0) * (p1 - p0) + i] = ((m - dy_m0) * dy_kbs * s.P + p0 + i) * s.Q * 16
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
                    p.a = dy_at + (kb - dy_kb0) * s.P * s.Q * 16
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


cdef int weight_grad(const dlcpu_wu_plan_t *g, const float *x, const float *dy, const uint16_t *x16,
                     const uint16_t *dy16, float *dw, int64_t size, int n_threads, bint accumulate) except -1:
    """The driver of conv2d_weight_grad_f32 and conv2d_weight_grad_bf16_values (below); x16 and
    dy16 NULL: fp32 x and dy."""
    cdef int64_t n_items = g.k_groups * g.c_groups
    cdef int64_t ipb = g.images_per_block, hb = g.rows_per_block
    cdef int64_t splits = g.image_splits
    cdef int64_t image_blocks = (g.s.N + ipb - 1) // ipb
    cdef int64_t unit, item, part, n_begin, n_end, i, j
    cdef int errors = 0
    cdef bint widen = x16 != NULL
    cdef float *tile = NULL
    cdef int64_t *offs = NULL
    cdef float *xw = NULL
    cdef float *dyw = NULL
    cdef float *partial = NULL
    if splits > 1:
        partial = <float *> calloc((splits - 1) * size, sizeof(float))
        if partial == NULL:
            raise MemoryError(f"conv2d_backward: cannot allocate {splits - 1} partial weight gradients")
    with nogil, parallel(num_threads=n_threads):
        tile = <float *> malloc(sizeof(float) * (g.tile_floats * ipb + 16)) if g.tile_mode != DLCPU_TILE_NONE else NULL
        offs = <int64_t *> malloc(sizeof(int64_t) * 2 * ipb * hb)
        # bf16: one block of images' channel / output-channel blocks of one work item
        xw = <float *> malloc(sizeof(float) * ipb * g.cb_per_item * g.s.H * g.s.W * 16) if widen else NULL
        dyw = <float *> malloc(sizeof(float) * ipb * g.kb_per_item * g.s.P * g.s.Q * 16) if widen else NULL
        for unit in prange(n_items * splits, schedule='static'):
            item = unit // splits
            part = unit % splits
            # whole blocks of images_per_block images, as evenly as they divide
            n_begin = min(g.s.N, image_blocks * part // splits * ipb)
            n_end = min(g.s.N, image_blocks * (part + 1) // splits * ipb)
            if ((g.tile_mode != DLCPU_TILE_NONE and tile == NULL) or offs == NULL
                    or (widen and (xw == NULL or dyw == NULL))):
                errors += 1
            elif n_begin < n_end:
                errors += wu_item(g, item, n_begin, n_end, x, dy, x16, dy16, xw, dyw,
                                  dw if part == 0 else partial + (part - 1) * size,
                                  tile, offs, offs + ipb * hb, accumulate if part == 0 else False)
        free(tile)
        free(offs)
        free(xw)
        free(dyw)
    if splits > 1:
        for i in prange(size, nogil=True, schedule='static', num_threads=n_threads):
            for j in range(splits - 1):
                dw[i] += partial[j * size + i]
        free(partial)
    return errors


def conv2d_weight_grad_f32(const float[::1] x, const float[::1] dy, float[::1] dw,
                           WeightGradPlanStruct plan, int n_threads, bint accumulate=False):
    """dW on blocked buffers (flattened); dw must be zero-filled by the caller (rows of padded
    input channels are never written), or, with accumulate, hold the gradient dW is added to (a
    layer's accumulated .grad: no zeroed temporary and no extra pass).  Returns the number of
    failed calls (0 unless a scratch allocation failed: the plan's tiles were checked when it
    was made).

    With image_splits > 1 a work unit is (item, image range): range 0 reduces into dw, the
    others into zeroed partial copies that are then added to dw in range order, so the sums
    are grouped by the plan alone, never by the thread count."""
    return weight_grad(&plan.c, &x[0], &dy[0], NULL, NULL, &dw[0], dw.shape[0], n_threads, accumulate)


def conv2d_weight_grad_bf16_values(const uint16_t[::1] x16, const uint16_t[::1] dy16, float[::1] dw,
                                   WeightGradPlanStruct plan, int n_threads, bint accumulate=False):
    """conv2d_weight_grad_f32 on the values of bf16 patterns x16 and dy16 (blocked, flattened):
    the same fp32 kernels, calls and sums as on their widened copies, so the same bits.  Each
    work item widens the images it is about to reduce into its thread's scratch, so the update
    makes no separate widening pass over all of x and dy.  Those passes ran on one thread (one
    conversion chunk), twice per layer: on the digits CNN at batch 64, 2 threads, they and the
    Python around them took 235 us of a 3.1 ms bf16 step (docs/performance.md, "the small bf16
    weight updates widen inside their work items").  With several K groups each widens x again
    (and dy with several C groups): the kernels took 468 us instead of 430 there, 493 in all."""
    cdef const dlcpu_conv_shape_t *s = &plan.c.s
    if x16.shape[0] != s.N * s.Cb * s.H * s.W * 16 or dy16.shape[0] != s.N * s.Kb * s.P * s.Q * 16:
        raise ValueError(f"conv2d_weight_grad_bf16_values: x16 has {x16.shape[0]} elements and dy16 {dy16.shape[0]}; "
                         f"the plan's shape needs {s.N * s.Cb * s.H * s.W * 16} and {s.N * s.Kb * s.P * s.Q * 16}")
    if dw.shape[0] != s.Kb * s.Cb * s.R * s.S * 256:
        raise ValueError(f"conv2d_weight_grad_bf16_values: dw has {dw.shape[0]} elements; the plan's shape needs "
                         f"{s.Kb * s.Cb * s.R * s.S * 256}")
    return weight_grad(&plan.c, NULL, NULL, &x16[0], &dy16[0], &dw[0], dw.shape[0], n_threads, accumulate)


# ------------------------------------------------------------------------------- bf16 and DFP-16
# dW = sum over pixels of dy (x) x: the reduction runs over pixels, so VDPBF16PS (and VPDPWSSD
# for DFP-16's int16 mantissas: the same pair layouts) needs pixel *pairs* in both operands.
# Two reformatting passes over the 16-bit values (the ones the forward and bwd-data kernels
# read, converted once) give them:
#   dy -> [N][Kb][F/16][8 pairs][16 k][2]: each image's output pixels flattened (F = P*Q, padded
#         with zeros to whole blocks of 16), in the VNNI pairs of the weight layout, so a block
#         of 16 pixels is the A block of the forward kernels;
#   x  -> one channel-major copy per (tap column s, row phase rho < min(R, stride_h)):
#         [S][nph][N][Cb][min(16, C) c][Fx], where pixel f = i*Q + q holds x[i*sh + rho - ph][q*sw + s - pw]
#         (zero outside the image).  Tap (r, s) then reads, for output pixel g = p*Q + q, the
#         copy (s, r % sh) at g + (r // sh)*Q: the flattened output pixels map to consecutive
#         positions, so a pixel pair is one 32-bit word and a block of 16 output pixels is a
#         window of that row at any alignment.  Each image's channel block is transposed once
#         (kernels/convert.h) and every copy row is a window of its channel rows.
# The forward's bf16 (or int16) kernel then runs with its pixel rows as input channels (b_rstride
# = Fx, c_rstride = one dW row) and nc = 1: a call is mv <= 2 groups of 16 outputs x nr <= 16
# channels (the row tiles of brgemm_f32.h; 4 off AVX-512), reducing over every image and pixel
# block of one tap in one chain, so each dW block is written once (beta = accumulate) by one
# thread: dW does not depend on the thread count.  Pixels past F are zero in dy; the x words they meet may be real pixels,
# which is harmless unless they are Inf/NaN (0 * Inf): the passes count non-finite values and
# the caller then takes the fp32 kernels' IEEE route.

cdef struct WuPairsGeometry:
    int64_t N, C, H, W, Cb, Kb, P, Q, R, S, sh, sw, ph, pw, F, Fb, Ib, Fx
    int64_t nph     # row phases copied: min(R, stride_h) (phases >= R are never read)
    int64_t CR      # channel rows per copy: min(16, C) (C = 3: 3 rows, not 16)


cdef int64_t copy_x_image(const WuPairsGeometry *g, int64_t item, const uint16_t *x16, uint16_t *xt,
                          uint16_t *chan, int isa) noexcept nogil:
    """Every channel-major copy (s, rho) of image and channel block (n, cb) = item: the block
    transposed once into `chan` ([16][H*W], thread scratch), then each copy row a window of
    its channel rows (zero at padding, and for the 16 positions past the last row); returns
    the bf16 Inf/NaN patterns in the block."""
    cdef int64_t cb = item % g.Cb
    cdef int64_t n = item // g.Cb
    cdef int64_t rc = min(<int64_t>16, g.C - cb * 16)
    cdef int64_t hw = g.H * g.W
    cdef const uint16_t *src = x16 + item * hw * 16
    cdef uint16_t *dst
    cdef int64_t j, s, rho, c, i, row, bad = 0
    for j in range(0, hw, 16):
        if isa == DLCPU_ISA_AVX512:
            bad += dlcpu_u16_transpose16_avx512(src + j * 16, <int>min(<int64_t>16, hw - j), chan + j, hw)
        else:
            bad += dlcpu_u16_transpose16_scalar(src + j * 16, <int>min(<int64_t>16, hw - j), chan + j, hw)
    if g.sh == 1 and g.sw == 1 and g.Q == g.W:
        # stride 1, as wide as the input: copy position f = i*Q + q reads channel-row element
        # f - ph*W + s - pw, one window for the whole copy (zero past the image rows); then the
        # |s - pw| columns per row that wrapped into the next or previous row are cleared.
        # Per-row windows of 8 pixels made the digits layers' copies 25% of their update.
        for s in range(g.S):
            dst = xt + ((s * g.N + n) * g.Cb + cb) * g.CR * g.Fx
            for c in range(rc):
                if isa == DLCPU_ISA_AVX512:
                    dlcpu_u16_window_avx512(chan + c * hw, hw, s - g.pw - g.ph * g.W, 1, g.Ib * g.Q, dst + c * g.Fx)
                else:
                    dlcpu_u16_window_scalar(chan + c * hw, hw, s - g.pw - g.ph * g.W, 1, g.Ib * g.Q, dst + c * g.Fx)
                for i in range(g.Ib):       # (within the row: |s - pw| exceeds Q when pw > W)
                    for j in range(min(g.Q, max(<int64_t>0, g.pw - s))):
                        dst[c * g.Fx + i * g.Q + j] = 0
                    for j in range(min(g.Q, max(<int64_t>0, g.W - (s - g.pw))), g.Q):
                        dst[c * g.Fx + i * g.Q + j] = 0
                memset(dst + c * g.Fx + g.Ib * g.Q, 0, (g.Fx - g.Ib * g.Q) * sizeof(uint16_t))
        return bad
    for s in range(g.S):
        for rho in range(g.nph):
            dst = xt + (((s * g.nph + rho) * g.N + n) * g.Cb + cb) * g.CR * g.Fx
            for c in range(rc):
                for i in range(g.Ib):
                    row = i * g.sh + rho - g.ph
                    if not 0 <= row < g.H:
                        memset(dst + c * g.Fx + i * g.Q, 0, g.Q * sizeof(uint16_t))
                    elif isa == DLCPU_ISA_AVX512:
                        dlcpu_u16_window_avx512(chan + c * hw + row * g.W, g.W, s - g.pw, g.sw, g.Q,
                                                dst + c * g.Fx + i * g.Q)
                    else:
                        dlcpu_u16_window_scalar(chan + c * hw + row * g.W, g.W, s - g.pw, g.sw, g.Q,
                                                dst + c * g.Fx + i * g.Q)
                memset(dst + c * g.Fx + g.Ib * g.Q, 0, (g.Fx - g.Ib * g.Q) * sizeof(uint16_t))
    return bad


cdef int64_t dy_item(const WuPairsGeometry *g, int64_t item, const uint16_t *dy16, uint16_t *dyv, uint16_t *tail,
                     int isa) noexcept nogil:
    """Image-and-K-block `item` of dy's 16-bit values into VNNI pixel pairs; returns the bf16
    Inf/NaN patterns met (-1 when the tail tile is missing)."""
    cdef const uint16_t *src = dy16 + item * g.F * 16
    cdef uint16_t *dst = dyv + item * g.Fb * 256
    cdef int64_t bad = dlcpu_bf16_to_vnni(isa, src, dst, g.F // 16)
    if g.F % 16:
        if tail == NULL:
            return -1
        memset(tail, 0, 256 * sizeof(uint16_t))
        memcpy(tail, src + (g.F // 16) * 256, (g.F % 16) * 16 * sizeof(uint16_t))
        bad += dlcpu_bf16_to_vnni(isa, tail, dst + (g.F // 16) * 256, 1)
    return bad


cdef int wu_pairs_item(const WuPairsGeometry *g, int64_t item, const uint16_t *xt, const uint16_t *dyv, float *dw,
                       int64_t *a_offs, int64_t *b_offs, int isa, bint native, int max_acc, bint accumulate,
                       const dlcpu_brgemm_int_t *q) noexcept nogil:
    """dW blocks of K blocks (2*kg, 2*kg + 1) x C block cb, every tap: per tap, the block's channels
    in equal calls of up to 16 (14 with two K blocks; 4 off AVX-512); returns the failed calls."""
    cdef int64_t cb = item % g.Cb
    cdef int64_t kb0 = (item // g.Cb) * 2
    cdef int64_t mv = min(<int64_t>2, g.Kb - kb0)
    cdef int64_t rc = min(<int64_t>16, g.C - cb * 16)
    # channel rows per call: up to 16 on AVX-512 (the row tiles; 14 with two K blocks), else the
    # forward tiles' 4; the rows are split into equal calls (16 -> 8 + 8 with two K blocks: the
    # same dy loads per product as 14 + 2, and no 4-accumulator call)
    cdef int64_t nr_max = min(<int64_t>(DLCPU_BR_ROWS_MAX_NR if isa == DLCPU_ISA_AVX512 else 4), max_acc // mv)
    cdef int64_t n_calls = (rc + nr_max - 1) // nr_max
    cdef int64_t nr_each = (rc + n_calls - 1) // n_calls
    cdef int64_t n, blk, r, s, j0
    cdef int err = 0
    cdef dlcpu_brgemm_f32_t p
    for n in range(g.N):
        for blk in range(g.Fb):
            a_offs[n * g.Fb + blk] = ((n * g.Kb + kb0) * g.Fb + blk) * 256
    p.kind = DLCPU_BR_OFFS
    p.a_offs = a_offs
    p.b_offs = b_offs
    p.batch = g.N * g.Fb
    p.k = 16
    p.mv = <int>mv
    p.nc = 1
    p.a_mstride = g.Fb * 256
    p.b_rstride = g.Fx
    p.ldc = 16
    p.c_rstride = 16
    p.c_mstride = g.Cb * g.R * g.S * 256
    p.beta = accumulate
    p.bias = NULL
    p.relu = 0
    p.b_trans = 0
    for r in range(g.R):
        for s in range(g.S):
            for n in range(g.N):
                for blk in range(g.Fb):
                    b_offs[n * g.Fb + blk] = ((((s * g.nph + r % g.sh) * g.N + n) * g.Cb + cb) * g.CR * g.Fx
                                              + (r // g.sh) * g.Q + blk * 16)
            j0 = 0
            while j0 < rc:
                p.nr = <int>min(nr_each, rc - j0)
                p.c = dw + (((kb0 * g.Cb + cb) * g.R + r) * g.S + s) * 256 + j0 * 16
                if q == NULL:
                    err += dlcpu_brgemm_bf16(&p, dyv, xt + j0 * g.Fx, isa, native) != 0
                else:
                    err += dlcpu_brgemm_int(&p, q, dyv, xt + j0 * g.Fx, isa, native) != 0
                j0 = j0 + p.nr
    return err


cdef WuPairsGeometry pairs_geometry(tuple geometry):
    cdef WuPairsGeometry g
    cdef int64_t K
    g.N, g.C, g.H, g.W, K, g.P, g.Q, g.R, g.S, g.sh, g.sw, g.ph, g.pw = geometry
    g.Cb = (g.C + 15) // 16
    g.Kb = (K + 15) // 16
    g.F = g.P * g.Q
    g.Fb = (g.F + 15) // 16
    g.Ib = g.P + (g.R - 1) // g.sh
    g.Fx = g.Ib * g.Q + 16      # 16 zeros past the last row: a block of 16 pixels ends inside
    g.nph = min(g.R, g.sh)
    g.CR = min(<int64_t>16, g.C)
    return g


def pairs_scratch_sizes(tuple geometry, int n_threads):
    """(elements of the x copies, of dy's pixel pairs, of the per-thread transposed channel
    blocks) conv2d_weight_grad_pairs needs for `geometry` on n_threads threads (the caller passes
    reused buffers: fresh ones cost page faults every call -- a 56x56 image's transpose alone is
    100 KB per thread)."""
    cdef WuPairsGeometry g = pairs_geometry(geometry)
    return g.S * g.nph * g.N * g.Cb * g.CR * g.Fx, g.N * g.Kb * g.Fb * 256, n_threads * 16 * g.H * g.W


def conv2d_weight_grad_pairs(const uint16_t[::1] x16, const uint16_t[::1] dy16, float[::1] dw, tuple geometry,
                             uint16_t[::1] xt, uint16_t[::1] dyv, uint16_t[::1] chan, int isa, bint native,
                             int n_threads,
                             bint accumulate=False, tuple integer=None):
    """dW on blocked buffers (flattened): x16 and dy16 the 16-bit values of the input
    [N][Cb][H][W][16] and of dy [N][Kb][P][Q][16] -- bf16 patterns, or with `integer` (the
    DFP-16 call of dlcpu/quantized.py integer_call: multiplier 2**(E_x + E_dy) and the flush
    schedule of the two tensors' mantissa bounds) int16 DFP-16 mantissas, viewed as uint16, on
    the int16 kernels (VPDPWSSD) -- dw fp32 [Kb][Cb][R][S][16][16], overwritten, or added to with
    accumulate (rows of padded input channels are not touched).  geometry = (N, C, H, W, K, P,
    Q, R, S, stride_h, stride_w, pad_h, pad_w).  Returns (failed calls or allocations, non-finite
    bf16 values met in x and dy); with a non-finite value dw is left unwritten and the caller
    computes it by the fp32 kernels (see above).  Integers are never non-finite.  xt, dyv and
    chan: scratch of pairs_scratch_sizes(geometry, n_threads) elements, overwritten."""
    cdef WuPairsGeometry g = pairs_geometry(geometry)
    if n_threads < 1:       # chan holds n_threads slices (num_threads(0) would mean all cores)
        raise ValueError(f"conv2d_weight_grad_pairs: n_threads must be >= 1, got {n_threads}")
    if (x16.shape[0] != g.N * g.Cb * g.H * g.W * 16 or dy16.shape[0] != g.N * g.Kb * g.F * 16
            or dw.shape[0] != g.Kb * g.Cb * g.R * g.S * 256
            or (xt.shape[0], dyv.shape[0], chan.shape[0]) != pairs_scratch_sizes(geometry, n_threads)):
        raise ValueError(f"conv2d_weight_grad_pairs: buffer sizes {x16.shape[0]}, {dy16.shape[0]}, {dw.shape[0]}, "
                         f"{xt.shape[0]}, {dyv.shape[0]}, {chan.shape[0]} do not match the geometry {geometry} "
                         f"on {n_threads} threads")
    cdef int max_acc = dlcpu_max_acc(isa)
    cdef int64_t nonfinite = 0, nonfinite_x = 0, errors = 0, got
    cdef int64_t item
    cdef uint16_t *tail = NULL
    cdef dlcpu_brgemm_int_t q_int
    cdef const dlcpu_brgemm_int_t *q = NULL
    cdef int64_t *offs = NULL
    cdef uint16_t *own_chan = NULL
    with nogil, parallel(num_threads=n_threads):
        own_chan = &chan[0] + threadid() * 16 * g.H * g.W       # this thread's slice (at most n_threads)
        for item in prange(g.N * g.Cb, schedule='static'):
            nonfinite_x += copy_x_image(&g, item, &x16[0], &xt[0], own_chan, isa)
    with nogil, parallel(num_threads=n_threads):
        tail = <uint16_t *> malloc(256 * sizeof(uint16_t))
        for item in prange(g.N * g.Kb, schedule='static'):
            got = dy_item(&g, item, &dy16[0], &dyv[0], tail, isa)
            if got < 0:
                errors += 1
            else:
                nonfinite += got
        free(tail)
    nonfinite += nonfinite_x
    if integer is not None:
        nonfinite = 0                         # the exponent pattern test means nothing for int16
        q_int = integer_call(integer)
        q = &q_int
    if nonfinite or errors:
        return errors, nonfinite
    with nogil, parallel(num_threads=n_threads):
        offs = <int64_t *> malloc(sizeof(int64_t) * 2 * g.N * g.Fb)
        for item in prange(((g.Kb + 1) // 2) * g.Cb, schedule='static'):
            if offs == NULL:
                errors += 1
            else:
                errors += wu_pairs_item(&g, item, &xt[0], &dyv[0], &dw[0], offs, offs + g.N * g.Fb, isa, native,
                                        max_acc, accumulate, q)
        free(offs)
    return errors, 0
