# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Blocked direct convolution, fp32: the forward driver around the BRGEMM (the backward-data
pass runs it too, on dy with flipped, transposed weights: flip_transpose_weights below).

The plan (dlcpu/conv.py choose_conv_blocking) fixes everything; it arrives as a ConvPlanStruct,
which owns the C struct dlcpu_conv_plan_t (pyx/kernels/plans.h) and was checked against the
compiled tile table when it was made, so the driver only walks it.  How an item gets its input
(plan tile_mode, tiles.h):
  DLCPU_TILE_NONE        1x1, stride 1, no padding: read in place, the item's rows being one
                         contiguous run of pixels;
  DLCPU_TILE_PADDED      pack the rows the item needs into a per-thread zero-padded, phase-split
                         tile (conv_f32.h), so no tap needs a bounds check and pixels are 16
                         floats apart;
  DLCPU_TILE_SUBSAMPLED  strided 1x1: pack only the pixels used, densely, then as TILE_NONE.

Forward: work items are (image, output-channel group, output-row block), split statically over
threads.  For each output-channel block pair (mv=2) or block, and each register tile of pixels,
one BRGEMM call reduces over every (input-channel block, r, s) with beta=0 and bias/ReLU fused,
so each output is written once, by one thread, in a fixed order: results do not depend on the
thread count.  Python has validated every shape and pointer extent before this runs.

The same walk runs every number format (fused type brgemm_operand): fp32; bf16 (16 bf16 per
pixel, weight blocks as VNNI pairs); 8-bit (u8 activations, s8 weights or ternary codes in VNNI
quads); int16 (DFP-16 mantissas in VNNI pairs).  Every weight block holds 256 elements and every
pixel 16, so every offset is the same in elements; only the tile copy's pixel size (and padding
byte: 128 for u8 activations with zero point 128) and the kernel differ, and the output is fp32.
The integer kernels also take a dlcpu_brgemm_int_t (flush schedule, multipliers, zero-point
compensation) whose per-output-channel pointers move with the K block as the bias does.
"""
from libc.stdint cimport int16_t, int64_t, uint8_t, uint16_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from cython.parallel cimport prange, parallel

from dlcpu_kernels cimport (dlcpu_brgemm_f32_t, dlcpu_brgemm_int_t, brgemm_operand, brgemm_call,
                            dlcpu_conv_item_input_px, dlcpu_transpose_16x16_f32,
                            dlcpu_transpose_16x16_f32_to_bf16_vnni, integer_call_for, DLCPU_BR_OFFS)
from dlcpu_plans cimport (dlcpu_conv_plan_t, dlcpu_conv_shape_t, DLCPU_TILE_NONE, DLCPU_TILE_PADDED,
                          require_tiles)


cdef class ConvPlanStruct:
    """The C plan of one forward convolution, built once from the planner's fields (a dict with
    every field of dlcpu_conv_plan_t, nested `s` for the shape) and checked against the tile
    table: the driver may ask for any tile up to (mv, nr, nc), and a remainder tile with mv=1."""
    cdef dlcpu_conv_plan_t c

    def __init__(self, dict fields):
        self.c = fields
        require_tiles("conv", self.c.isa, self.c.mv, self.c.nr, self.c.nc)

    def fields(self):
        """Every field, read back from the C struct."""
        return self.c


ctypedef fused conv_output:
    float
    uint8_t


cdef int run_tiles(const dlcpu_conv_plan_t *g, dlcpu_brgemm_f32_t *p, const brgemm_operand *w_kb,
                   const brgemm_operand *base, conv_output *y_kb, int64_t p0, int64_t p1, int native,
                   const dlcpu_brgemm_int_t *q) noexcept nogil:
    """Every register tile of output rows p0..p1 for one (image, K block): one call each."""
    cdef int64_t i0, q0, t0, npix, chunk
    cdef int nrr, ncc, err = 0
    cdef int64_t Q = g.s.Q
    if g.tile_mode == DLCPU_TILE_PADDED:
        i0 = p0
        while i0 < p1:
            nrr = <int>min(<int64_t>g.nr, p1 - i0)
            q0 = 0
            while q0 < Q:
                ncc = <int>min(<int64_t>g.nc, Q - q0)
                p.nr = nrr
                p.nc = ncc
                err |= brgemm_call(p, w_kb, base + (i0 - p0) * p.b_rstride + q0 * 16,
                                   <float *> (y_kb + (i0 * Q + q0) * 16), g.isa, native, q)
                q0 = q0 + ncc
            i0 = i0 + nrr
    else:
        # Dense rows (in place or subsampled): one pixel run across the item's rows, cut into
        # equal chunks (21 pixels: 11 + 10, not 14 + 7).
        npix = (p1 - p0) * Q
        chunk = (npix + g.nc - 1) // g.nc
        chunk = (npix + chunk - 1) // chunk
        t0 = 0
        p.nr = 1
        while t0 < npix:
            ncc = <int>min(chunk, npix - t0)
            p.nc = ncc
            err |= brgemm_call(p, w_kb, base + t0 * 16, <float *> (y_kb + (p0 * Q + t0) * 16), g.isa, native, q)
            t0 = t0 + ncc
    return err


cdef int run_item(const dlcpu_conv_plan_t *g, int64_t item, const brgemm_operand *x, const brgemm_operand *w,
                  const float *bias, conv_output *y, const int64_t *a_offs, const int64_t *b_offs,
                  int64_t batch, brgemm_operand *tile, int native, const dlcpu_brgemm_int_t *q0,
                  int fill) noexcept nogil:
    cdef const dlcpu_conv_shape_t *s = &g.s
    cdef int64_t rb = item % g.row_blocks
    cdef int64_t rest = item // g.row_blocks
    cdef int64_t grp = rest % g.k_groups
    cdef int64_t n = rest // g.k_groups
    cdef int64_t p0 = rb * g.rows_per_item
    cdef int64_t p1 = min(s.P, p0 + g.rows_per_item)
    cdef int64_t kb0 = grp * g.kb_per_group
    cdef int64_t kb1 = min(s.Kb, kb0 + g.kb_per_group)
    cdef int64_t kb
    cdef int mv, err = 0
    cdef const brgemm_operand *base
    cdef int64_t wblk = s.Cb * s.R * s.S
    cdef dlcpu_brgemm_f32_t p
    cdef dlcpu_brgemm_int_t q
    if q0 != NULL:
        q = q0[0]
    base = <const brgemm_operand *> dlcpu_conv_item_input_px(
        g.tile_mode, x + n * s.Cb * s.H * s.W * 16, tile, s.Cb, s.H, s.W, p0, s.stride_h, s.stride_w, s.pad_h,
        s.pad_w, g.tile_rows, g.tile_phase_width, 16 * sizeof(brgemm_operand), fill)

    p.kind = DLCPU_BR_OFFS
    p.b_trans = 0
    p.a_offs = a_offs
    p.b_offs = b_offs
    p.batch = batch
    p.k = g.k
    p.a_mstride = s.Cb * s.R * s.S * 256
    p.c_mstride = s.P * s.Q * 16
    p.ldc = 16
    p.beta = 0
    p.relu = g.relu
    p.b_rstride = s.stride_h * s.stride_w * g.tile_phase_width * 16
    p.c_rstride = s.Q * 16

    kb = kb0
    while kb < kb1:
        mv = g.mv if kb + g.mv <= kb1 else 1
        p.mv = mv
        p.bias = bias + kb * 16 if bias != NULL else NULL
        if q0 != NULL:      # per-output-channel multipliers move with the K block, as the bias does
            q.scale = q0.scale + kb * 16 if q0.scale != NULL else NULL
            q.comp = q0.comp + kb * 16 if q0.comp != NULL else NULL
            q.block_scale = (q0.block_scale + kb * wblk * q0.block_groups * 16 if q0.block_scale != NULL
                             else NULL)
        err |= run_tiles(g, &p, w + kb * wblk * 256, base, y + (n * s.Kb + kb) * s.P * s.Q * 16, p0, p1,
                         native, &q if q0 != NULL else NULL)
        kb = kb + mv
    return err


def conv2d_forward(const brgemm_operand[::1] x, const brgemm_operand[::1] w, const float[::1] bias,
                   conv_output[::1] y, ConvPlanStruct plan, const int64_t[::1] a_offs, const int64_t[::1] b_offs,
                   int n_threads, bint native=False, tuple integer=None, int fill=0,
                   const uint8_t[::1] residual=None, float residual_scale=0):
    """Run a planned forward convolution on blocked buffers (flattened, C-contiguous), fp32 output:
    fp32; bf16 input and VNNI-paired bf16 weights (native: VDPBF16PS); or integer operands with
    `integer` describing the call (dlcpu_kernels.integer_call: uint8 x and int8 weights viewed as
    uint8, or int16 both; native: VPDPBUSD / VPDPWSSD) and `fill` the byte that pads x (128 for
    u8 activations with zero point 128).  y is fp32, or uint8 for an int8 call whose description
    asks for a u8 output (requantized in the kernels' epilogue).  residual (u8 output only): u8
    codes laid out as y, added times residual_scale before the clamp (brgemm_int.h's res_scale;
    their zero point is in the bias).

    Extents were checked in dlcpu/conv.py.  Returns the number of kernel calls that failed: 0,
    since the plan was checked against the tile table when it was made (a failed scratch
    allocation is the one remaining cause).
    """
    cdef const dlcpu_conv_plan_t *g = &plan.c
    cdef int64_t batch = a_offs.shape[0]
    cdef int64_t n_items = g.s.N * g.k_groups * g.row_blocks
    cdef int64_t item
    cdef int errors = 0
    cdef brgemm_operand *tile = NULL
    cdef const float *bias_ptr = &bias[0] if bias.shape[0] > 0 else NULL
    cdef dlcpu_brgemm_int_t q_int
    cdef const dlcpu_brgemm_int_t *q = NULL
    if brgemm_operand is uint8_t or brgemm_operand is int16_t:
        q_int = integer_call_for(&x[0], integer, "conv2d_forward")
        q = &q_int
    if conv_output is uint8_t:
        if q == NULL or q_int.out_u8 == 0:
            raise ValueError("conv2d_forward: a uint8 output needs an int8 call that asks for one")
    elif q != NULL and q_int.out_u8 != 0:
        raise ValueError("conv2d_forward: a call that asks for a uint8 output needs a uint8 y")
    if residual is not None:
        if conv_output is not uint8_t:
            raise ValueError("conv2d_forward: a residual joins a uint8 output only")
        if residual.shape[0] != y.shape[0] or residual_scale == 0:
            raise ValueError(f"conv2d_forward: the residual must have y's {y.shape[0]} codes and a nonzero scale, "
                             f"got {residual.shape[0]} and {residual_scale}")
        q_int.res_scale = residual_scale
        q_int.res_offset = <int64_t>(<const char *>&residual[0] - <const char *>&y[0])

    with nogil, parallel(num_threads=n_threads):
        # Per-thread tile, allocated inside the region so its pages are first touched by the
        # thread that uses them.
        tile = NULL
        if g.tile_mode != DLCPU_TILE_NONE:
            tile = <brgemm_operand *> malloc(sizeof(brgemm_operand) * (g.tile_floats + 16))
        for item in prange(n_items, schedule='static'):
            if g.tile_mode != DLCPU_TILE_NONE and tile == NULL:
                errors += 1
            else:
                errors += run_item(g, item, &x[0], &w[0], bias_ptr, &y[0], &a_offs[0], &b_offs[0],
                                   batch, tile, native, q, fill)
        free(tile)
    return errors


ctypedef fused flipped_weight:
    float         # fp32 kernels
    uint16_t      # bf16 kernels: rounded in VNNI pairs


def flip_transpose_weights(const float[:, :, :, :, :, ::1] wb, flipped_weight[:, :, :, :, :, ::1] out,
                           int rho_h, int rho_w, int sh, int sw, int n_threads, int isa=0, bint native=False):
    """Backward-data weights for one stride phase (rho_h, rho_w):
        out[cb][kb][j][i][k][c] = wb[kb][cb][rho_h + sh*(Jh-1-j)][rho_w + sw*(Jw-1-i)][c][k]
    (channels swapped, taps of the phase only, spatially flipped), so that the forward kernels
    run on dy compute dx at that phase's positions.  Written in output order, one 16x16
    transpose per block.  A uint16 `out` gets the blocks rounded to bf16 in VNNI pairs on the
    way (the bits of dlcpu.precision.fp32_blocks_to_bf16_vnni on the ISA path `isa`, native:
    VCVTNEPS2BF16): a mixed-precision step makes these every step (the master weights change),
    in one pass instead of a flip into fp32 scratch and a conversion pass over it."""
    cdef int64_t Kb = wb.shape[0], Cb = wb.shape[1], R = wb.shape[2], S = wb.shape[3]
    cdef int64_t Jh = out.shape[2], Jw = out.shape[3]
    cdef int64_t ck, kb, cb, j, i, r, s
    # the loop reads taps rho + stride*t of wb and writes every block of out: prove both extents
    if (not 0 <= rho_h < sh or not 0 <= rho_w < sw or wb.shape[4] != 16 or wb.shape[5] != 16
            or (out.shape[0], out.shape[1], out.shape[4], out.shape[5]) != (Cb, Kb, 16, 16)
            or Jh != (R - rho_h + sh - 1) // sh or Jw != (S - rho_w + sw - 1) // sw):
        raise ValueError(f"flip_transpose_weights: out {tuple(out.shape)[:6]} is not phase ({rho_h}, {rho_w}) of "
                         f"weights {tuple(wb.shape)[:6]} at stride ({sh}, {sw})")
    cdef const float *src = &wb[0, 0, 0, 0, 0, 0]
    cdef flipped_weight *dst = &out[0, 0, 0, 0, 0, 0]
    for ck in prange(Cb * Kb, nogil=True, schedule='static', num_threads=n_threads):
        cb = ck // Kb
        kb = ck % Kb
        for j in range(Jh):
            r = rho_h + sh * (Jh - 1 - j)
            for i in range(Jw):
                s = rho_w + sw * (Jw - 1 - i)
                if flipped_weight is float:
                    dlcpu_transpose_16x16_f32(src + (((kb * Cb + cb) * R + r) * S + s) * 256,
                                              dst + ((ck * Jh + j) * Jw + i) * 256)
                else:
                    dlcpu_transpose_16x16_f32_to_bf16_vnni(isa, native,
                                                           src + (((kb * Cb + cb) * R + r) * S + s) * 256,
                                                           dst + ((ck * Jh + j) * Jw + i) * 256)


cdef void scatter_plane(const float *part, int64_t part_w, float *plane, int64_t W, int64_t h0, int64_t w0,
                        int64_t sh, int64_t sw, int64_t rows, int64_t cols, int64_t zero_pixels) noexcept nogil:
    """One (image, channel block) plane of a stride phase: pixel (p, q) of the phase's result
    to dx pixel (h0 + p*sh, w0 + q*sw); zero_pixels > 0 clears the plane's pixels first."""
    cdef int64_t p, q, lane
    cdef const float *src
    cdef float *dst
    if zero_pixels > 0:
        memset(plane, 0, sizeof(float) * 16 * zero_pixels)
    for p in range(rows):
        for q in range(cols):
            src = part + (p * part_w + q) * 16
            dst = plane + ((h0 + p * sh) * W + w0 + q * sw) * 16
            for lane in range(16):
                dst[lane] = src[lane]


def scatter_stride_phase(const float[:, :, :, :, ::1] part, float[:, :, :, :, ::1] dx, int64_t h0, int64_t w0,
                         int64_t sh, int64_t sw, bint zero_first, int n_threads):
    """A strided backward-data pass's phase result into dx: dx[n, cb, h0 + p*sh, w0 + q*sw] =
    part[n, cb, p, q] for every pixel (p, q) of part.  zero_first: each dx plane is cleared
    first, by the thread that then writes it (the first phase of a pass; positions no phase
    reaches stay 0).  One (image, channel block) plane per work item, in parallel: as a NumPy
    strided assignment (plus np.zeros) it ran on one thread, 2 ms for a 4 x 256 x 56 x 56 dx."""
    cdef int64_t N = dx.shape[0], Cb = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef int64_t rows = part.shape[2], cols = part.shape[3], nc, n, cb
    if (part.shape[0] != N or part.shape[1] != Cb or h0 < 0 or w0 < 0 or sh < 1 or sw < 1
            or (rows > 0 and h0 + (rows - 1) * sh >= H) or (cols > 0 and w0 + (cols - 1) * sw >= W)):
        raise ValueError(f"scatter_stride_phase: a phase of shape {tuple(part.shape)[:4]} at ({h0}, {w0}) "
                         f"with stride ({sh}, {sw}) does not fit dx of shape {tuple(dx.shape)[:4]}")
    for nc in prange(N * Cb, nogil=True, schedule='static', num_threads=n_threads):
        n = nc // Cb
        cb = nc % Cb
        scatter_plane(&part[n, cb, 0, 0, 0] if rows > 0 and cols > 0 else NULL, cols, &dx[n, cb, 0, 0, 0], W,
                      h0, w0, sh, sw, rows, cols, H * W if zero_first else 0)
