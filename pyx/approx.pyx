# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Drivers of the activation approximations and the softmax family (pyx/kernels/approx_f32.h).

Element-wise kernels split the flat array into one contiguous chunk per thread (whole cache
lines, at least MIN_CHUNK elements, so a 16K-element call in cache does not pay for waking a
thread it cannot use); the softmax splits rows.  dlcpu/approx/__init__.py validates every
argument before these run without the GIL.
"""
from libc.stdint cimport int64_t, uint16_t
from cython.parallel cimport prange

cdef extern from "approx_f32.h" nogil:
    int DLCPU_ACT_EXACT, DLCPU_ACT_FAST, DLCPU_ACT_KTANH
    int DLCPU_OP_TANH, DLCPU_OP_SIGMOID, DLCPU_OP_SWISH, DLCPU_OP_GELU
    int DLCPU_SOFTMAX_EXP, DLCPU_SOFTMAX_TAYLOR
    const uint16_t dlcpu_ktanh_published_base[32]
    const uint16_t dlcpu_ktanh_published_shift[32]
    void dlcpu_ktanh_bf16(int isa, const uint16_t *x, uint16_t *y, int64_t n, const uint16_t *base,
                          const uint16_t *shift)
    void dlcpu_act(int isa, int op, int backward, int impl, const float *x, const float *dy, float *y,
                   int64_t n, float beta, const uint16_t *base, const uint16_t *shift)
    void dlcpu_softmax_rows(int isa, int kind, int order, const float *z, float *p, int64_t rows,
                            int64_t cols)
    void dlcpu_softmax_bwd_rows(int isa, int kind, int order, int exact, const float *z, const float *dp,
                                float *dz, int64_t rows, int64_t cols)

IMPLS = {"exact": DLCPU_ACT_EXACT, "fast": DLCPU_ACT_FAST, "ktanh": DLCPU_ACT_KTANH}
OPS = {"tanh": DLCPU_OP_TANH, "sigmoid": DLCPU_OP_SIGMOID, "swish": DLCPU_OP_SWISH, "gelu": DLCPU_OP_GELU}
SOFTMAX_KINDS = {"softmax": DLCPU_SOFTMAX_EXP, "taylor": DLCPU_SOFTMAX_TAYLOR}

#: smallest per-thread chunk: below it one thread finishes before a second would have started
#: (about 2 us of OpenMP wake-up against ~0.5 ns per element for the slowest flavour)
MIN_CHUNK = 8192
cdef int64_t min_chunk = MIN_CHUNK


def published_table():
    """The K-TanH table compiled into the kernels, as (base, shift) lists of 32 uint16."""
    return ([dlcpu_ktanh_published_base[t] for t in range(32)],
            [dlcpu_ktanh_published_shift[t] for t in range(32)])


cdef inline int64_t chunk_size(int64_t n, int n_threads) noexcept nogil:
    cdef int64_t c = (n + n_threads - 1) // n_threads
    c = (c + 31) // 32 * 32            # whole 64-byte lines of bf16, two of fp32
    return max(c, min_chunk)


cdef inline const uint16_t *table_or(object words, const uint16_t *published) except? NULL:
    """A table's 32 words (a C-contiguous uint16 array), or the compiled published table for None
    (no buffer to acquire: a quarter microsecond of a small call each)."""
    cdef const uint16_t[::1] w
    if words is None:
        return published
    w = words
    return &w[0]


cdef inline int64_t row_chunk(int64_t rows, int64_t cols, int n_threads) noexcept nogil:
    """Rows per thread for the row kernels: an equal share, at least MIN_CHUNK elements' worth."""
    cdef int64_t per = max(<int64_t>1, min_chunk // max(cols, <int64_t>1))
    return max((rows + n_threads - 1) // n_threads, per)


def ktanh_bf16(int isa, int n_threads, const uint16_t[::1] x, uint16_t[::1] y, base=None, shift=None):
    """y = K-TanH(x) on bf16 bit patterns; base/shift: a table's words (None: the published one)."""
    cdef int64_t n = x.shape[0], c = chunk_size(n, n_threads), chunks = (n + c - 1) // c, i, lo
    cdef const uint16_t *b = table_or(base, dlcpu_ktanh_published_base)
    cdef const uint16_t *s = table_or(shift, dlcpu_ktanh_published_shift)
    if n == 0:
        return
    if chunks == 1:                    # no parallel region for one chunk (about 1 us saved)
        with nogil:
            dlcpu_ktanh_bf16(isa, &x[0], &y[0], n, b, s)
        return
    for i in prange(chunks, nogil=True, num_threads=n_threads, schedule='static'):
        lo = i * c
        dlcpu_ktanh_bf16(isa, &x[lo], &y[lo], min(c, n - lo), b, s)


def activation_f32(int isa, int n_threads, int op, int backward, int impl, const float[::1] x,
                   const float[::1] dy, float[::1] y, float beta, base=None, shift=None):
    """Forward (dy empty): y = op(x); backward: y = dy * op'(.), x holding what the op's backward
    reads (the forward output for tanh and sigmoid, the input for swish and GELU)."""
    cdef int64_t n = x.shape[0], c = chunk_size(n, n_threads), chunks = (n + c - 1) // c, i, lo
    cdef const float *d = &dy[0] if backward else NULL
    cdef const uint16_t *b = table_or(base, dlcpu_ktanh_published_base)
    cdef const uint16_t *s = table_or(shift, dlcpu_ktanh_published_shift)
    if n == 0:
        return
    if chunks == 1:
        with nogil:
            dlcpu_act(isa, op, backward, impl, &x[0], d, &y[0], n, beta, b, s)
        return
    for i in prange(chunks, nogil=True, num_threads=n_threads, schedule='static'):
        lo = i * c
        dlcpu_act(isa, op, backward, impl, &x[lo], d + lo if d != NULL else NULL, &y[lo],
                  min(c, n - lo), beta, b, s)


def softmax_rows_f32(int isa, int n_threads, int kind, int order, const float[:, ::1] z, float[:, ::1] p):
    """p = softmax-family(z) along rows: kind DLCPU_SOFTMAX_EXP (max-shifted exp) or TAYLOR."""
    cdef int64_t rows = z.shape[0], cols = z.shape[1], c = row_chunk(rows, cols, n_threads), i, lo
    cdef int64_t chunks = (rows + c - 1) // c if rows else 0
    if rows == 0 or cols == 0:
        return
    if chunks == 1:
        with nogil:
            dlcpu_softmax_rows(isa, kind, order, &z[0, 0], &p[0, 0], rows, cols)
        return
    for i in prange(chunks, nogil=True, num_threads=n_threads, schedule='static'):
        lo = i * c
        dlcpu_softmax_rows(isa, kind, order, &z[lo, 0], &p[lo, 0], min(c, rows - lo), cols)


def softmax_rows_backward_f32(int isa, int n_threads, int kind, int order, int exact, const float[:, ::1] z,
                              const float[:, ::1] dp, float[:, ::1] dz):
    """dz from dp along rows for p = softmax-family(z); exact: Taylor's own derivative f_{n-1},
    else the softmax-style rule (f_n treated as exp)."""
    cdef int64_t rows = z.shape[0], cols = z.shape[1], c = row_chunk(rows, cols, n_threads), i, lo
    cdef int64_t chunks = (rows + c - 1) // c if rows else 0
    if rows == 0 or cols == 0:
        return
    if chunks == 1:
        with nogil:
            dlcpu_softmax_bwd_rows(isa, kind, order, exact, &z[0, 0], &dp[0, 0], &dz[0, 0], rows, cols)
        return
    for i in prange(chunks, nogil=True, num_threads=n_threads, schedule='static'):
        lo = i * c
        dlcpu_softmax_bwd_rows(isa, kind, order, exact, &z[lo, 0], &dp[lo, 0], &dz[lo, 0], min(c, rows - lo), cols)
