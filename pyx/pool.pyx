# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Max and average pooling on blocked activations I[N][C/16][H][W][16], forward and backward.

One driver for both directions, parallel over (image, channel block), walks the pooled pixels;
per pixel, a window helper does the kind-specific work on 16 lanes at once (the lanes are the
innermost loop, so each window step is one 16-float vector operation; the max window is C per
ISA path, pyx/kernels/pool_f32.h):
  max  forward records the winning input position per lane (int32, h*W + w) for the backward;
       ties go to the first position in row-major window order, and the first NaN wins, as in
       PyTorch; backward adds dy at the recorded position.
  avg  divides by R*S (padding counted: PyTorch's count_include_pad=True default); backward
       spreads dy/(R*S) over the window.
Padding taps are skipped, never read.  Each (image, block) plane is written by one thread in a
fixed order, so results do not depend on the thread count.  dlcpu/pool.py has checked every
extent before these run.
"""
from libc.stdint cimport int64_t, int32_t, uint8_t
from libc.string cimport memset
from cython.parallel cimport prange

cdef extern from "pool_f32.h" nogil:
    void dlcpu_max_window(int isa, const float *plane, int64_t W, int64_t h0, int64_t w0, int64_t r0,
                          int64_t r1, int64_t s0, int64_t s1, float *y16, int32_t *arg16)
    void dlcpu_max_window_u8(const uint8_t *plane, int64_t W, int64_t h0, int64_t w0, int64_t r0, int64_t r1,
                             int64_t s0, int64_t s1, uint8_t *y16)

cdef enum:
    POOL_MAX = 0
    POOL_AVG = 1


cdef struct window_t:
    # Taps [r0, r1) x [s0, s1) of one output pixel's window whose input row h0 + r and column
    # w0 + s lie inside the image.  Returned by value: a prange loop's variables must be assigned
    # directly to be thread-private.
    int64_t h0, w0, r0, r1, s0, s1


cdef inline window_t window_at(int64_t p, int64_t q, int64_t R, int64_t S, int64_t sh, int64_t sw,
                               int64_t ph, int64_t pw, int64_t H, int64_t W) noexcept nogil:
    cdef window_t win
    win.h0 = p * sh - ph
    win.w0 = q * sw - pw
    win.r0 = -win.h0 if win.h0 < 0 else 0
    win.r1 = H - win.h0 if win.h0 + R > H else R
    win.s0 = -win.w0 if win.w0 < 0 else 0
    win.s1 = W - win.w0 if win.w0 + S > W else S
    return win


cdef inline void mean_window(const float *plane, int64_t W, window_t win, float scale,
                             float *y16) noexcept nogil:
    cdef int64_t r, s, lane, pos
    for lane in range(16):
        y16[lane] = 0.0
    for r in range(win.r0, win.r1):
        for s in range(win.s0, win.s1):
            pos = (win.h0 + r) * W + win.w0 + s
            for lane in range(16):
                y16[lane] += plane[pos * 16 + lane]
    for lane in range(16):
        y16[lane] *= scale


cdef inline void spread_window(float *plane, int64_t W, window_t win, float scale,
                               const float *dy16) noexcept nogil:
    cdef int64_t r, s, lane, pos
    for r in range(win.r0, win.r1):
        for s in range(win.s0, win.s1):
            pos = (win.h0 + r) * W + win.w0 + s
            for lane in range(16):
                plane[pos * 16 + lane] += dy16[lane] * scale


cdef inline void route_to_winners(float *plane, int64_t plane_pixels, const int32_t *arg16,
                                  const float *dy16) noexcept nogil:
    """dy to each lane's recorded winner; a position outside the plane (a saved state altered
    after the forward) is skipped, so the write never leaves dx (one compare per lane, instead
    of a separate pass over arg in Python)."""
    cdef int64_t lane
    for lane in range(16):
        if 0 <= arg16[lane] < plane_pixels:
            plane[arg16[lane] * 16 + lane] += dy16[lane]


def pool_pass(const float[:, :, :, :, ::1] src, float[:, :, :, :, ::1] dst, int32_t[:, :, :, :, ::1] arg,
              int kind, bint backward, int R, int S, int sh, int sw, int ph, int pw, int n_threads,
              int isa=0):
    """Forward (src x, dst y; max also fills arg) or backward (src dy, dst dx; max reads arg):
    max routes each lane to its recorded winner, avg spreads over the window.  arg is unused
    for avg.  isa: the ISA code of the max window's path (pyx/kernels/pool_f32.h)."""
    cdef int64_t N = dst.shape[0], Cb = dst.shape[1]
    # The image side (x or dx) and the pooled side (y or dy).
    cdef int64_t H = dst.shape[2] if backward else src.shape[2]
    cdef int64_t W = dst.shape[3] if backward else src.shape[3]
    cdef int64_t P = src.shape[2] if backward else dst.shape[2]
    cdef int64_t Q = src.shape[3] if backward else dst.shape[3]
    cdef int64_t nc, n, cb, p, q
    cdef window_t win
    cdef float scale = 1.0 / (R * S)
    for nc in prange(N * Cb, nogil=True, schedule='static', num_threads=n_threads):
        n = nc // Cb
        cb = nc % Cb
        if backward:
            memset(&dst[n, cb, 0, 0, 0], 0, sizeof(float) * H * W * 16)
        for p in range(P):
            for q in range(Q):
                win = window_at(p, q, R, S, sh, sw, ph, pw, H, W)
                if not backward and kind == POOL_MAX:
                    dlcpu_max_window(isa, &src[n, cb, 0, 0, 0], W, win.h0, win.w0, win.r0, win.r1, win.s0,
                                     win.s1, &dst[n, cb, p, q, 0], &arg[n, cb, p, q, 0])
                elif not backward:
                    mean_window(&src[n, cb, 0, 0, 0], W, win, scale, &dst[n, cb, p, q, 0])
                elif kind == POOL_MAX:
                    route_to_winners(&dst[n, cb, 0, 0, 0], H * W, &arg[n, cb, p, q, 0], &src[n, cb, p, q, 0])
                else:
                    spread_window(&dst[n, cb, 0, 0, 0], W, win, scale, &src[n, cb, p, q, 0])


def max_pool_u8(const uint8_t[:, :, :, :, ::1] x, uint8_t[:, :, :, :, ::1] y, int R, int S, int sh, int sw,
                int ph, int pw, int n_threads):
    """Max pooling of u8 codes (a quantized model's activations), forward only: y = the largest
    code in each window, lane by lane (pool_f32.h's dlcpu_max_window_u8)."""
    cdef int64_t N = y.shape[0], Cb = y.shape[1], H = x.shape[2], W = x.shape[3], P = y.shape[2], Q = y.shape[3]
    cdef int64_t nc, n, cb, p, q
    cdef window_t win
    for nc in prange(N * Cb, nogil=True, schedule='static', num_threads=n_threads):
        n = nc // Cb
        cb = nc % Cb
        for p in range(P):
            for q in range(Q):
                win = window_at(p, q, R, S, sh, sw, ph, pw, H, W)
                dlcpu_max_window_u8(&x[n, cb, 0, 0, 0], W, win.h0, win.w0, win.r0, win.r1, win.s0, win.s1,
                                    &y[n, cb, p, q, 0])


# Global average pooling: the bridge from a blocked activation to a Linear layer's (N, C) rows.
# NumPy's x.mean(axis=(2, 3)) on the blocked array took 60-90 us for the digits CNN's 64x32x4x4
# (a reduction over two middle axes of a 5-d array); these loops take a few.  One image per
# work item, so the result does not depend on the thread count.  The per-plane helpers keep
# their 16 lanes on their own stack (an array declared in the prange function would be shared
# by the threads).


cdef void mean_of_plane(const float *plane, int64_t hw, float *y, int64_t lanes) noexcept nogil:
    """y[lane] = the mean of the plane's lane over its hw pixels (summed in double, pixel
    order), for the first `lanes` lanes (the logical channels of this block)."""
    cdef int64_t i, lane
    cdef double acc[16]
    for lane in range(16):
        acc[lane] = 0.0
    for i in range(hw):
        for lane in range(16):
            acc[lane] += plane[i * 16 + lane]
    for lane in range(lanes):
        y[lane] = <float>(acc[lane] / hw)


cdef void fill_plane(float *plane, int64_t hw, const float *dy, int64_t lanes) noexcept nogil:
    """Every pixel of the plane gets dy[lane] / hw in its first `lanes` lanes, 0 in the rest."""
    cdef int64_t i, lane
    cdef float g[16]
    for lane in range(16):
        g[lane] = <float>(dy[lane] / <double>hw) if lane < lanes else 0.0
    for i in range(hw):
        for lane in range(16):
            plane[i * 16 + lane] = g[lane]


cdef check_rows(int64_t n_rows, int64_t C, int64_t N, int64_t Cb, str fn):
    """The (N, C) rows must match the blocked tensor's N images and Cb channel blocks."""
    if n_rows != N or not 16 * (Cb - 1) < C <= 16 * Cb:
        raise ValueError(f"{fn}: rows of shape ({n_rows}, {C}) do not match a blocked tensor of {N} images "
                         f"and {Cb} channel blocks")


def global_avg_pool_forward(const float[:, :, :, :, ::1] x, float[:, ::1] y, int n_threads):
    """y[n, c] = the mean over (h, w) of x's channel c; y is (N, C), C the logical channel
    count (padding lanes are not read into y)."""
    cdef int64_t n, cb, HW = x.shape[2] * x.shape[3], C = y.shape[1]
    check_rows(y.shape[0], C, x.shape[0], x.shape[1], "global_avg_pool")
    for n in prange(x.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        for cb in range(x.shape[1]):
            mean_of_plane(&x[n, cb, 0, 0, 0], HW, &y[n, cb * 16], min(16, C - cb * 16))


def global_avg_pool_backward(const float[:, ::1] dy, float[:, :, :, :, ::1] dx, int n_threads):
    """dx[n, c, h, w] = dy[n, c] / (H*W) at every pixel; padding lanes (c >= C) are 0."""
    cdef int64_t n, cb, HW = dx.shape[2] * dx.shape[3], C = dy.shape[1]
    check_rows(dy.shape[0], C, dx.shape[0], dx.shape[1], "global_avg_pool_backward")
    for n in prange(dx.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        for cb in range(dx.shape[1]):
            fill_plane(&dx[n, cb, 0, 0, 0], HW, &dy[n, cb * 16], min(16, C - cb * 16))
