# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Max and average pooling on blocked activations I[N][C/16][H][W][16], forward and backward.

Parallel over (image, channel block); the 16 lanes of a pixel are the innermost loop, so each
window step is one 16-float vector operation.  Max pooling records the winning input position
per output lane (int32, h*W + w) for the backward pass; ties go to the first position in
row-major window order, as in PyTorch.  Average pooling divides by R*S (padding counted, PyTorch's
count_include_pad=True default).  The backward passes write each (image, block) plane from one
thread, in a fixed order: results do not depend on the thread count.
"""
from libc.stdint cimport int64_t, int32_t
from libc.string cimport memset
from libc.math cimport INFINITY
from cython.parallel cimport prange


# Taps [first_tap, end_tap) of the window at output o are those whose input position
# o*stride - pad + tap lies in [0, L): padding taps are skipped, never read.  (Returned by value:
# a prange loop's variables must be assigned directly to be thread-private.)
cdef inline int64_t first_tap(int64_t o, int64_t stride, int64_t pad) noexcept nogil:
    cdef int64_t start = o * stride - pad
    return -start if start < 0 else 0


cdef inline int64_t end_tap(int64_t o, int64_t stride, int64_t pad, int64_t K, int64_t L) noexcept nogil:
    cdef int64_t start = o * stride - pad
    return L - start if start + K > L else K


def max_pool_forward(const float[:, :, :, :, ::1] x, float[:, :, :, :, ::1] y,
                     int32_t[:, :, :, :, ::1] arg, int R, int S, int sh, int sw, int ph, int pw,
                     int n_threads):
    cdef int64_t N = x.shape[0], Cb = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t P = y.shape[2], Q = y.shape[3]
    cdef int64_t nc, n, cb, p, q, r, s, h, w, lane, r0, r1, s0, s1
    cdef float v, cur
    for nc in prange(N * Cb, nogil=True, schedule='static', num_threads=n_threads):
        n = nc // Cb
        cb = nc % Cb
        for p in range(P):
            for q in range(Q):
                for lane in range(16):
                    y[n, cb, p, q, lane] = -INFINITY
                    arg[n, cb, p, q, lane] = -1
                r0 = first_tap(p, sh, ph)
                r1 = end_tap(p, sh, ph, R, H)
                s0 = first_tap(q, sw, pw)
                s1 = end_tap(q, sw, pw, S, W)
                for r in range(r0, r1):
                    h = p * sh - ph + r
                    for s in range(s0, s1):
                        w = q * sw - pw + s
                        for lane in range(16):
                            v = x[n, cb, h, w, lane]
                            cur = y[n, cb, p, q, lane]
                            # First valid tap, a strictly larger value (ties keep the first), or
                            # the first NaN (NaN propagates, as in PyTorch).
                            if arg[n, cb, p, q, lane] < 0 or v > cur or (v != v and cur == cur):
                                y[n, cb, p, q, lane] = v
                                arg[n, cb, p, q, lane] = <int32_t>(h * W + w)


def max_pool_backward(const float[:, :, :, :, ::1] dy, const int32_t[:, :, :, :, ::1] arg,
                      float[:, :, :, :, ::1] dx, int n_threads):
    cdef int64_t N = dx.shape[0], Cb = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef int64_t P = dy.shape[2], Q = dy.shape[3]
    cdef int64_t nc, n, cb, p, q, lane, pos
    for nc in prange(N * Cb, nogil=True, schedule='static', num_threads=n_threads):
        n = nc // Cb
        cb = nc % Cb
        memset(&dx[n, cb, 0, 0, 0], 0, sizeof(float) * H * W * 16)
        for p in range(P):
            for q in range(Q):
                for lane in range(16):
                    pos = arg[n, cb, p, q, lane]
                    if pos >= 0:
                        dx[n, cb, pos // W, pos % W, lane] += dy[n, cb, p, q, lane]


def avg_pool_forward(const float[:, :, :, :, ::1] x, float[:, :, :, :, ::1] y, int R, int S,
                     int sh, int sw, int ph, int pw, int n_threads):
    cdef int64_t N = x.shape[0], Cb = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int64_t P = y.shape[2], Q = y.shape[3]
    cdef int64_t nc, n, cb, p, q, r, s, h, w, lane, r0, r1, s0, s1
    cdef float scale = 1.0 / (R * S)
    for nc in prange(N * Cb, nogil=True, schedule='static', num_threads=n_threads):
        n = nc // Cb
        cb = nc % Cb
        for p in range(P):
            for q in range(Q):
                for lane in range(16):
                    y[n, cb, p, q, lane] = 0.0
                r0 = first_tap(p, sh, ph)
                r1 = end_tap(p, sh, ph, R, H)
                s0 = first_tap(q, sw, pw)
                s1 = end_tap(q, sw, pw, S, W)
                for r in range(r0, r1):
                    h = p * sh - ph + r
                    for s in range(s0, s1):
                        w = q * sw - pw + s
                        for lane in range(16):
                            y[n, cb, p, q, lane] += x[n, cb, h, w, lane]
                for lane in range(16):
                    y[n, cb, p, q, lane] *= scale


def avg_pool_backward(const float[:, :, :, :, ::1] dy, float[:, :, :, :, ::1] dx, int R, int S,
                      int sh, int sw, int ph, int pw, int n_threads):
    cdef int64_t N = dx.shape[0], Cb = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef int64_t P = dy.shape[2], Q = dy.shape[3]
    cdef int64_t nc, n, cb, p, q, r, s, h, w, lane, r0, r1, s0, s1
    cdef float scale = 1.0 / (R * S)
    for nc in prange(N * Cb, nogil=True, schedule='static', num_threads=n_threads):
        n = nc // Cb
        cb = nc % Cb
        memset(&dx[n, cb, 0, 0, 0], 0, sizeof(float) * H * W * 16)
        for p in range(P):
            for q in range(Q):
                r0 = first_tap(p, sh, ph)
                r1 = end_tap(p, sh, ph, R, H)
                s0 = first_tap(q, sw, pw)
                s1 = end_tap(q, sw, pw, S, W)
                for r in range(r0, r1):
                    h = p * sh - ph + r
                    for s in range(s0, s1):
                        w = q * sw - pw + s
                        for lane in range(16):
                            dx[n, cb, h, w, lane] += dy[n, cb, p, q, lane] * scale
