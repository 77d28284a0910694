# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Batch normalization and ReLU on blocked activations I[N][C/16][H][W][16].

Parallel over channel blocks; within a block the reduction runs over (n, h, w) in a fixed order
with 16 double accumulators (one per lane), so statistics and gradients do not depend on the
thread count.  Forward in training mode takes two passes for the statistics (mean, then the
centred second moment: no cancellation) and one to normalize; the backward takes one pass for
the two channel sums and one for dx.  A ReLU after the normalization can be fused into both
(forward: clamp while normalizing; backward: mask dy by the output while reducing).

bf16 outputs (mixed-precision training, whose next convolution reads bf16 anyway): y or dx is
computed plane by plane into per-thread fp32 scratch by the same loops and rounded from there
(kernels/convert.h, the conversion of dlcpu.precision.fp32_to_bf16_bits), so the patterns equal
rounding the fp32 result afterwards, without the fp32 tensor's round trip through memory.  A
fused ReLU's backward then masks by the bf16 output, widened plane by plane (exact).
"""
from libc.stdint cimport int64_t, uint16_t
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

cdef extern from "convert.h" nogil:
    void dlcpu_f32_to_bf16(int isa, int native, const float *x, uint16_t *y, int64_t n)
    void dlcpu_bf16_to_f32(int isa, const uint16_t *x, float *y, int64_t n)


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


def batchnorm_apply_bf16(const float[:, :, :, :, ::1] x, const float[:, ::1] scale,
                         const float[:, ::1] shift, uint16_t[:, :, :, :, ::1] y, bint relu, int n_threads,
                         const float[:, :, :, :, ::1] res=None, int isa=0, bint native=False):
    """batchnorm_apply with y as bf16 patterns: each (image, channel block) plane is normalized
    into per-thread scratch and rounded to bf16 (native: VCVTNEPS2BF16, the same patterns)."""
    cdef int64_t N = x.shape[0], Cb = x.shape[1], HW = x.shape[2] * x.shape[3]
    cdef int64_t nc, n, cb
    cdef bint has_res = res is not None
    cdef float *plane = NULL
    cdef int errors = 0
    with nogil, parallel(num_threads=n_threads):
        plane = <float *> malloc(sizeof(float) * HW * 16)
        for nc in prange(N * Cb, schedule='static'):
            if plane == NULL:
                errors += 1
            else:
                n = nc // Cb
                cb = nc % Cb
                dlcpu_bn_apply_plane(isa, &x[n, cb, 0, 0, 0], &res[n, cb, 0, 0, 0] if has_res else NULL,
                                     plane, &scale[cb, 0], &shift[cb, 0], HW, relu)
                dlcpu_f32_to_bf16(isa, native, plane, &y[n, cb, 0, 0, 0], HW * 16)
        free(plane)
    if errors:
        raise MemoryError("batchnorm_forward: cannot allocate the per-thread bf16 output plane")


cdef inline const float *grad_plane(const float[:, :, :, :, ::1] dy, const float *y, const uint16_t *y16,
                                    float *g, float *yw, int64_t n, int64_t cb, int isa) noexcept nogil:
    """The (n, cb) plane of dy, or, with a fused ReLU (y: its fp32 output, or y16: its bf16
    output, widened into yw first), dy masked by y > 0 in g."""
    cdef int64_t plane = dy.shape[2] * dy.shape[3] * 16
    cdef int64_t at = (n * dy.shape[1] + cb) * plane
    cdef const float *yp = y + at if y != NULL else yw
    if y == NULL and y16 == NULL:
        return &dy[n, cb, 0, 0, 0]
    if y16 != NULL:
        dlcpu_bf16_to_f32(isa, y16 + at, yw, plane)
    dlcpu_relu_mask(isa, &dy[n, cb, 0, 0, 0], yp, g, plane)
    return g


cdef void backward_block(const float[:, :, :, :, ::1] dy, const float[:, :, :, :, ::1] x,
                         const float *mean, const float *invstd, const float *gamma,
                         float[:, :, :, :, ::1] dx, uint16_t *dx16, double *dgamma, double *dbeta,
                         int64_t cb, bint training, const float *y, const uint16_t *y16, float *scratch,
                         int isa, bint native) noexcept nogil:
    """One channel block.  scratch: three per-thread planes (H*W*16 floats each): dy masked by
    the fused ReLU's output when y or y16 is given, y16's plane widened, and dx's plane before
    it is rounded into dx16 (bf16 dx; dx is then unused).  Both passes are the plane loops of
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
    cdef float *g = scratch
    cdef float *yw = scratch + HW * 16
    cdef float *dxp = scratch + 2 * HW * 16
    for lane in range(16):
        sg[lane] = 0.0
        sb[lane] = 0.0
    for n in range(N):
        pd = grad_plane(dy, y, y16, g, yw, n, cb, isa)
        dlcpu_bn_grad_sums(isa, pd, &x[n, cb, 0, 0, 0], HW, mean, invstd, sb, sg)
    for lane in range(16):
        dgamma[lane] = sg[lane]
        dbeta[lane] = sb[lane]
        k1[lane] = gamma[lane] * invstd[lane]
        k2[lane] = <float>(sb[lane] / M) if training else 0.0
        k3[lane] = <float>(sg[lane] / M) if training else 0.0
    for n in range(N):
        pd = grad_plane(dy, y, y16, g, yw, n, cb, isa)
        if dx16 == NULL:
            dlcpu_bn_dx(isa, pd, &x[n, cb, 0, 0, 0], &dx[n, cb, 0, 0, 0], HW, mean, invstd, k1, k2, k3)
        else:
            dlcpu_bn_dx(isa, pd, &x[n, cb, 0, 0, 0], dxp, HW, mean, invstd, k1, k2, k3)
            dlcpu_f32_to_bf16(isa, native, dxp, dx16 + (n * x.shape[1] + cb) * HW * 16, HW * 16)


def batchnorm_backward(const float[:, :, :, :, ::1] dy, const float[:, :, :, :, ::1] x,
                       const float[:, ::1] mean, const float[:, ::1] invstd,
                       const float[:, ::1] gamma, float[:, :, :, :, ::1] dx,
                       double[:, ::1] dgamma, double[:, ::1] dbeta, bint training,
                       const float[:, :, :, :, ::1] y, int n_threads, int isa=0,
                       const uint16_t[:, :, :, :, ::1] y16=None, uint16_t[:, :, :, :, ::1] dx16=None,
                       bint native=False):
    """dgamma = sum g*xhat, dbeta = sum g and, in training mode,
    dx = gamma*invstd/M * (M*g - dbeta - xhat*dgamma); in eval mode dx = gamma*invstd*g, where
    g = dy, or with a fused ReLU (y: the forward output, else an empty array; or y16: the
    forward's bf16 output) dy masked by y > 0.  dx16 (bf16 patterns; dx then an empty array):
    dx rounded to bf16 (native: VCVTNEPS2BF16, the same patterns)."""
    cdef int64_t cb
    cdef const float *py = &y[0, 0, 0, 0, 0] if y.shape[0] > 0 else NULL
    cdef const uint16_t *py16 = &y16[0, 0, 0, 0, 0] if y16 is not None and y16.shape[0] > 0 else NULL
    cdef uint16_t *pdx16 = &dx16[0, 0, 0, 0, 0] if dx16 is not None and dx16.shape[0] > 0 else NULL
    cdef bint need_scratch = py != NULL or py16 != NULL or pdx16 != NULL
    cdef float *scratch = NULL
    cdef int errors = 0
    with nogil, parallel(num_threads=n_threads):
        scratch = <float *> malloc(sizeof(float) * 3 * x.shape[2] * x.shape[3] * 16) if need_scratch else NULL
        for cb in prange(x.shape[1], schedule='static'):
            if need_scratch and scratch == NULL:
                errors += 1
            else:
                backward_block(dy, x, &mean[cb, 0], &invstd[cb, 0], &gamma[cb, 0], dx, pdx16,
                               &dgamma[cb, 0], &dbeta[cb, 0], cb, training, py, py16, scratch, isa, native)
        free(scratch)
    if errors:
        raise MemoryError("batchnorm_backward: cannot allocate the per-thread gradient planes")


def relu_backward(const float[:, :, :, :, ::1] dy, const float[:, :, :, :, ::1] y,
                  float[:, :, :, :, ::1] dx, int n_threads, int isa=0):
    """dx = dy where the ReLU's output y > 0, else 0."""
    cdef int64_t N = dy.shape[0], Cb = dy.shape[1], plane = dy.shape[2] * dy.shape[3] * 16
    cdef int64_t nc, n, cb
    for nc in prange(N * Cb, nogil=True, schedule='static', num_threads=n_threads):
        n = nc // Cb
        cb = nc % Cb
        dlcpu_relu_mask(isa, &dy[n, cb, 0, 0, 0], &y[n, cb, 0, 0, 0], &dx[n, cb, 0, 0, 0], plane)
