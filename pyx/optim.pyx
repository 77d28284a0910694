# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Optimizer updates, fused: one pass over a parameter, its gradient and its velocity.

NumPy's SGD with momentum is four passes and a temporary (v *= m; v += g + wd*p; p -= lr*v);
the loop in kernels/optim_f32.h reads p, g and v once and writes p and v once, per ISA path.
dlcpu/nn/optim.py validates the arrays (same size, float32, contiguous, distinct) first.
"""
from libc.stdint cimport int64_t
from cython.parallel cimport prange

cdef extern from "optim_f32.h" nogil:
    void dlcpu_sgd_f32(int isa, float *p, const float *g, float *v, int64_t n, float lr, float m,
                       float wd)


def sgd_momentum_f32(float[::1] p, const float[::1] g, float[::1] v, float lr, float momentum,
                     float weight_decay, int isa, int n_threads):
    """The in-place SGD step on flat arrays of equal length."""
    cdef int64_t n = p.shape[0], c, lo, chunk
    # Chunks of 64K elements (256 KiB of each array): enough work per thread to hide the
    # scheduling cost; a small parameter stays on one thread.
    chunk = 65536
    if n == 0:
        return
    if n <= chunk:
        # one chunk: no parallel region (opening one for a single work item cost 2-3 us per
        # parameter at 2 threads, most of a small model's step)
        with nogil:
            dlcpu_sgd_f32(isa, &p[0], &g[0], &v[0], n, lr, momentum, weight_decay)
        return
    for c in prange((n + chunk - 1) // chunk, nogil=True, schedule='static', num_threads=n_threads):
        lo = c * chunk
        dlcpu_sgd_f32(isa, &p[lo], &g[lo], &v[lo], min(chunk, n - lo), lr, momentum, weight_decay)
