# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Batch normalization and ReLU on blocked activations I[N][C/16][H][W][16].

Parallel over channel blocks; within a block the reduction runs over (n, h, w) in a fixed order
with 16 double accumulators (one per lane), so statistics and gradients do not depend on the
thread count.  Forward in training mode takes two passes for the statistics (mean, then the
centred second moment: no cancellation) and one to normalize; the backward takes one pass for
the two channel sums and one for dx.  A ReLU after the normalization can be fused into both
(forward: clamp while normalizing; backward: mask dy by the output while reducing).
"""
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.math cimport sqrt
from cython.parallel cimport prange, parallel

cdef extern from "norm_f32.h" nogil:
    void dlcpu_bn_apply_plane(int isa, const float *x, const float *res, float *y, const float *scale,
                              const float *shift, int64_t hw, int relu)
    void dlcpu_relu_mask(int isa, const float *dy, const float *y, float *g, int64_t n)
    void dlcpu_bn_sum(int isa, const float *x, int64_t hw, double *acc)
    void dlcpu_bn_sqdev(int isa, const float *x, int64_t hw, const double *mean, double *acc)
    void dlcpu_bn_grad_sums(int isa, const float *dy, const float *x, int64_t hw, const float *mean,
                            const float *invstd, double *sb, double *sg)
    void dlcpu_bn_dx(int isa, const float *dy, const float *x, float *dx, int64_t hw, const float *mean,
                     const float *invstd, const float *k1, const float *k2, const float *k3)


cdef void stats_block(const float[:, :, :, :, ::1] x, int64_t cb, double *mean,
                      double *var, int isa) noexcept nogil:
    # Per-block helper: its accumulators live on this call's stack (an array declared in the
    # prange function itself would be shared by all threads).  Two passes (mean, then the
    # centred second moment: no cancellation), each plane reduced in pixel order.
    cdef int64_t N = x.shape[0], HW = x.shape[2] * x.shape[3]
    cdef int64_t n, lane
    cdef double acc[16]
    for lane in range(16):
        acc[lane] = 0.0
    for n in range(N):
        dlcpu_bn_sum(isa, &x[n, cb, 0, 0, 0], HW, acc)
    for lane in range(16):
        mean[lane] = acc[lane] / (N * HW)
        acc[lane] = 0.0
    for n in range(N):
        dlcpu_bn_sqdev(isa, &x[n, cb, 0, 0, 0], HW, mean, acc)
    for lane in range(16):
        var[lane] = acc[lane] / (N * HW)


def batchnorm_coefficients(const float[:, :, :, :, ::1] x, const float[::1] gamma, const float[::1] beta,
                           float[::1] running_mean, float[::1] running_var, bint training, double momentum,
                           double eps, float[:, ::1] mean, float[:, ::1] invstd, float[:, ::1] scale,
                           float[:, ::1] shift, int n_threads, int isa=0):
    """Everything the forward needs before its normalizing pass, in one call: in training mode
    the batch statistics of x (stats_block per channel block), folded into the running ones
    (momentum, the unbiased variance, as PyTorch); then, from the batch (training) or running
    (eval) statistics, per channel: mean, invstd = 1/sqrt(var + eps), scale = gamma*invstd and
    shift = beta - mean*scale.  The outputs are (C/16, 16) float32.

    The per-channel arithmetic is the float32/float64 sequence of NumPy operations it replaced
    (identical results); as a dozen NumPy calls on 16-element arrays it cost 20-25 us per
    forward, more than the statistics pass over the digits CNN's 64x16x8x8 activations."""
    cdef int64_t Cb = x.shape[1], cb, lane, c
    cdef double m = x.shape[0] * x.shape[2] * x.shape[3]
    cdef double bessel = m / (m - 1 if m > 1 else 1)
    cdef float keep = <float>(1.0 - momentum)
    cdef float mu, var, t
    # the batch statistics in double: mean_d[cb*16 + lane], then var_d (same layout)
    cdef double *mean_d = NULL
    cdef double *var_d
    if training:
        mean_d = <double *> malloc(sizeof(double) * 2 * Cb * 16)
        if mean_d == NULL:
            raise MemoryError("batchnorm_forward: cannot allocate the statistics")
        var_d = mean_d + Cb * 16
        for cb in prange(Cb, nogil=True, schedule='static', num_threads=n_threads):
            stats_block(x, cb, mean_d + cb * 16, var_d + cb * 16, isa)
    with nogil:
        for cb in range(Cb):
            for lane in range(16):
                c = cb * 16 + lane
                if training:
                    running_mean[c] = running_mean[c] * keep
                    running_mean[c] = running_mean[c] + <float>(momentum * mean_d[c])
                    running_var[c] = running_var[c] * keep
                    running_var[c] = running_var[c] + <float>(momentum * (var_d[c] * bessel))
                    mu = <float>mean_d[c]
                    var = <float>var_d[c]
                else:
                    mu = running_mean[c]
                    var = running_var[c]
                mean[cb, lane] = mu
                invstd[cb, lane] = <float>(1.0 / sqrt(<double>var + eps))
                scale[cb, lane] = gamma[c] * invstd[cb, lane]
                t = mu * scale[cb, lane]
                shift[cb, lane] = beta[c] - t
    free(mean_d)


def batchnorm_apply(const float[:, :, :, :, ::1] x, const float[:, ::1] scale,
                    const float[:, ::1] shift, float[:, :, :, :, ::1] y, bint relu, int n_threads,
                    const float[:, :, :, :, ::1] res=None, int isa=0):
    """y = x*scale + shift per channel (scale = gamma/std, shift = beta - mean*scale), plus the
    residual res when given (x's shape), ReLU fused."""
    cdef int64_t N = x.shape[0], Cb = x.shape[1], HW = x.shape[2] * x.shape[3]
    cdef int64_t nc, n, cb
    cdef bint has_res = res is not None
    for nc in prange(N * Cb, nogil=True, schedule='static', num_threads=n_threads):
        n = nc // Cb
        cb = nc % Cb
        dlcpu_bn_apply_plane(isa, &x[n, cb, 0, 0, 0], &res[n, cb, 0, 0, 0] if has_res else NULL,
                             &y[n, cb, 0, 0, 0], &scale[cb, 0], &shift[cb, 0], HW, relu)


cdef inline const float *grad_plane(const float[:, :, :, :, ::1] dy, const float *y, float *g,
                                    int64_t n, int64_t cb, int isa) noexcept nogil:
    """The (n, cb) plane of dy, or, with a fused ReLU (y: its output), dy masked by y > 0 in g."""
    cdef int64_t plane = dy.shape[2] * dy.shape[3] * 16
    if y == NULL:
        return &dy[n, cb, 0, 0, 0]
    dlcpu_relu_mask(isa, &dy[n, cb, 0, 0, 0], y + (n * dy.shape[1] + cb) * plane, g, plane)
    return g


cdef void backward_block(const float[:, :, :, :, ::1] dy, const float[:, :, :, :, ::1] x,
                         const float *mean, const float *invstd, const float *gamma,
                         float[:, :, :, :, ::1] dx, double *dgamma, double *dbeta, int64_t cb,
                         bint training, const float *y, float *g, int isa) noexcept nogil:
    """One channel block.  g: per-thread scratch of one image plane (H*W*16 floats) holding
    dy, masked by the fused ReLU's output when y is given; both passes are the plane loops of
    norm_f32.h, per ISA path."""
    cdef int64_t N = x.shape[0], HW = x.shape[2] * x.shape[3]
    cdef int64_t n, lane
    cdef double M = N * HW
    cdef double sg[16]
    cdef double sb[16]
    cdef float k1[16]
    cdef float k2[16]
    cdef float k3[16]
    cdef const float *pd
    for lane in range(16):
        sg[lane] = 0.0
        sb[lane] = 0.0
    for n in range(N):
        pd = grad_plane(dy, y, g, n, cb, isa)
        dlcpu_bn_grad_sums(isa, pd, &x[n, cb, 0, 0, 0], HW, mean, invstd, sb, sg)
    for lane in range(16):
        dgamma[lane] = sg[lane]
        dbeta[lane] = sb[lane]
        k1[lane] = gamma[lane] * invstd[lane]
        k2[lane] = <float>(sb[lane] / M) if training else 0.0
        k3[lane] = <float>(sg[lane] / M) if training else 0.0
    for n in range(N):
        pd = grad_plane(dy, y, g, n, cb, isa)
        dlcpu_bn_dx(isa, pd, &x[n, cb, 0, 0, 0], &dx[n, cb, 0, 0, 0], HW, mean, invstd, k1, k2, k3)


def batchnorm_backward(const float[:, :, :, :, ::1] dy, const float[:, :, :, :, ::1] x,
                       const float[:, ::1] mean, const float[:, ::1] invstd,
                       const float[:, ::1] gamma, float[:, :, :, :, ::1] dx,
                       double[:, ::1] dgamma, double[:, ::1] dbeta, bint training,
                       const float[:, :, :, :, ::1] y, int n_threads, int isa=0):
    """dgamma = sum g*xhat, dbeta = sum g and, in training mode,
    dx = gamma*invstd/M * (M*g - dbeta - xhat*dgamma); in eval mode dx = gamma*invstd*g, where
    g = dy, or with a fused ReLU (y: the forward output, else an empty array) dy masked by y > 0."""
    cdef int64_t cb
    cdef const float *py = &y[0, 0, 0, 0, 0] if y.shape[0] > 0 else NULL
    cdef float *g = NULL
    cdef int errors = 0
    with nogil, parallel(num_threads=n_threads):
        g = <float *> malloc(sizeof(float) * x.shape[2] * x.shape[3] * 16) if py != NULL else NULL
        for cb in prange(x.shape[1], schedule='static'):
            if py != NULL and g == NULL:
                errors += 1
            else:
                backward_block(dy, x, &mean[cb, 0], &invstd[cb, 0], &gamma[cb, 0], dx,
                               &dgamma[cb, 0], &dbeta[cb, 0], cb, training, py, g, isa)
        free(g)
    if errors:
        raise MemoryError("batchnorm_backward: cannot allocate the per-thread gradient plane")


def relu_backward(const float[:, :, :, :, ::1] dy, const float[:, :, :, :, ::1] y,
                  float[:, :, :, :, ::1] dx, int n_threads, int isa=0):
    """dx = dy where the ReLU's output y > 0, else 0."""
    cdef int64_t N = dy.shape[0], Cb = dy.shape[1], plane = dy.shape[2] * dy.shape[3] * 16
    cdef int64_t nc, n, cb
    for nc in prange(N * Cb, nogil=True, schedule='static', num_threads=n_threads):
        n = nc // Cb
        cb = nc % Cb
        dlcpu_relu_mask(isa, &dy[n, cb, 0, 0, 0], &y[n, cb, 0, 0, 0], &dx[n, cb, 0, 0, 0], plane)
