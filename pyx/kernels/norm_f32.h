/*
 * Element loops of batch normalization and ReLU over one blocked plane (hw pixels x 16 lanes).
 *
 * Written in C so that the ReLU's select compiles to a vector blend: the same loop in Cython
 * came out as data-dependent branches, which mispredict on half the elements (measured: BN +
 * ReLU forward on 64x32x8x8, 78 us without ReLU, 419 us with it).  v < 0 ? 0 : v keeps NaN.
 */
#ifndef DLCPU_NORM_F32_H
#define DLCPU_NORM_F32_H
#include <stdint.h>
#include <immintrin.h>
#include "isa.h"

/* y = x*scale + shift (+ res) per lane, optionally clamped at 0.  res (NULL: none) is a
 * ResNet block's shortcut: the block's last BN, the residual add and the ReLU are one pass over
 * the tensor instead of three. */
static void
dlcpu_bn_apply_plane_scalar(const float *x, const float *res, float *y, const float *scale, const float *shift,
                            int64_t hw, int relu)
{
    if (res != 0 && relu) {
        for (int64_t i = 0; i < hw; i++)
            for (int lane = 0; lane < 16; lane++) {
                const float v = x[i * 16 + lane] * scale[lane] + shift[lane] + res[i * 16 + lane];
                y[i * 16 + lane] = v < 0.0f ? 0.0f : v;
            }
    } else if (res != 0) {
        for (int64_t i = 0; i < hw; i++)
            for (int lane = 0; lane < 16; lane++)
                y[i * 16 + lane] = x[i * 16 + lane] * scale[lane] + shift[lane] + res[i * 16 + lane];
    } else if (relu) {
        for (int64_t i = 0; i < hw; i++)
            for (int lane = 0; lane < 16; lane++) {
                const float v = x[i * 16 + lane] * scale[lane] + shift[lane];
                y[i * 16 + lane] = v < 0.0f ? 0.0f : v;
            }
    } else {
        for (int64_t i = 0; i < hw; i++)
            for (int lane = 0; lane < 16; lane++)
                y[i * 16 + lane] = x[i * 16 + lane] * scale[lane] + shift[lane];
    }
}

/* g = dy where the ReLU's output y > 0, else 0 (n floats).  dy is loaded unconditionally:
 * a load under the condition is not if-converted (it might fault), so it stays a branch. */
static void
dlcpu_relu_mask_scalar(const float *dy, const float *y, float *g, int64_t n)
{
    for (int64_t j = 0; j < n; j++) {
        const float d = dy[j];
        g[j] = y[j] > 0.0f ? d : 0.0f;
    }
}
/* The AVX-512 paths of the two element loops above (the clamp keeps NaN, as v < 0 ? 0 : v).
 * Compiled for a target with FMA, GCC fuses x*scale + shift into one multiply-add (its default
 * -ffp-contract=fast), so y may differ from the scalar loop's by an ulp. */
DLCPU_TARGET_AVX512 static void
dlcpu_bn_apply_plane_avx512(const float *x, const float *res, float *y, const float *scale, const float *shift,
                            int64_t hw, int relu)
{
    const __m512 a = _mm512_loadu_ps(scale), b = _mm512_loadu_ps(shift), zero = _mm512_setzero_ps();
    for (int64_t i = 0; i < hw; i++) {
        __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i * 16), a), b);
        if (res != 0)
            v = _mm512_add_ps(v, _mm512_loadu_ps(res + i * 16));
        if (relu)
            v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), zero);
        _mm512_storeu_ps(y + i * 16, v);
    }
}

DLCPU_TARGET_AVX512 static void
dlcpu_relu_mask_avx512(const float *dy, const float *y, float *g, int64_t n)
{
    const __m512 zero = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __mmask16 pos = _mm512_cmp_ps_mask(_mm512_loadu_ps(y + j), zero, _CMP_GT_OQ);
        _mm512_storeu_ps(g + j, _mm512_maskz_mov_ps(pos, _mm512_loadu_ps(dy + j)));
    }
    dlcpu_relu_mask_scalar(dy + j, y + j, g + j, n - j);
}

/* The AVX2 paths of the element loops: each 16-lane pixel is two 8-float halves (the clamp
 * keeps NaN; multiply-adds may be fused, as on AVX-512).  Measured on a 2-core AMD EPYC whose
 * virtual CPU shows AVX2 but no AVX-512, BN + ReLU on the digits CNN's 64x16x8x8: the scalar
 * loops took about 30 us per pass, these about 9. */
DLCPU_TARGET_AVX2 static void
dlcpu_bn_apply_plane_avx2(const float *x, const float *res, float *y, const float *scale, const float *shift,
                          int64_t hw, int relu)
{
    const __m256 zero = _mm256_setzero_ps();
    const __m256 a[2] = {_mm256_loadu_ps(scale), _mm256_loadu_ps(scale + 8)};
    const __m256 b[2] = {_mm256_loadu_ps(shift), _mm256_loadu_ps(shift + 8)};
    for (int64_t i = 0; i < hw; i++)
        for (int half = 0; half < 2; half++) {
            const int64_t j = i * 16 + half * 8;
            __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j), a[half]), b[half]);
            if (res != 0)
                v = _mm256_add_ps(v, _mm256_loadu_ps(res + j));
            if (relu)
                v = _mm256_blendv_ps(v, zero, _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
            _mm256_storeu_ps(y + j, v);
        }
}

DLCPU_TARGET_AVX2 static void
dlcpu_relu_mask_avx2(const float *dy, const float *y, float *g, int64_t n)
{
    const __m256 zero = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(g + j, _mm256_and_ps(_mm256_cmp_ps(_mm256_loadu_ps(y + j), zero, _CMP_GT_OQ),
                                              _mm256_loadu_ps(dy + j)));
    dlcpu_relu_mask_scalar(dy + j, y + j, g + j, n - j);
}

static inline void
dlcpu_bn_apply_plane(int isa, const float *x, const float *res, float *y, const float *scale, const float *shift,
                     int64_t hw, int relu)
{
    if (isa == DLCPU_ISA_AVX512) dlcpu_bn_apply_plane_avx512(x, res, y, scale, shift, hw, relu);
    else if (isa == DLCPU_ISA_AVX2) dlcpu_bn_apply_plane_avx2(x, res, y, scale, shift, hw, relu);
    else dlcpu_bn_apply_plane_scalar(x, res, y, scale, shift, hw, relu);
}

static inline void
dlcpu_relu_mask(int isa, const float *dy, const float *y, float *g, int64_t n)
{
    if (isa == DLCPU_ISA_AVX512) dlcpu_relu_mask_avx512(dy, y, g, n);
    else if (isa == DLCPU_ISA_AVX2) dlcpu_relu_mask_avx2(dy, y, g, n);
    else dlcpu_relu_mask_scalar(dy, y, g, n);
}

/*
 * The per-channel reductions of batch norm over one plane (hw pixels x 16 lanes), accumulated
 * into 16 doubles per lane in pixel order, so the result does not depend on the thread count.
 * Compiled without -march, the plain loops ran as scalar double code: the reductions were
 * compute-bound (a ResNet-50 step spent 106-139 ms in batch norm at 1 thread, against 90 ms
 * for PyTorch).  The AVX-512 paths widen each 16-float vector into two 8-double halves, the
 * AVX2 paths each 8-float half into two 4-double quarters; both may round differently from
 * the scalar path (fused multiply-adds), never by more than fp32 rounding of each term.
 */

/* acc[lane] += sum_i x[i][lane] */
static void dlcpu_bn_sum_scalar(const float *x, int64_t hw, double *acc)
{
    for (int64_t i = 0; i < hw; i++)
        for (int lane = 0; lane < 16; lane++)
            acc[lane] += x[i * 16 + lane];
}

DLCPU_TARGET_AVX512 static void dlcpu_bn_sum_avx512(const float *x, int64_t hw, double *acc)
{
    __m512d lo = _mm512_loadu_pd(acc), hi = _mm512_loadu_pd(acc + 8);
    for (int64_t i = 0; i < hw; i++) {
        const __m512 v = _mm512_loadu_ps(x + i * 16);
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
    }
    _mm512_storeu_pd(acc, lo);
    _mm512_storeu_pd(acc + 8, hi);
}

/* acc[lane] += sum_i (x[i][lane] - mean[lane])^2, in double */
static void dlcpu_bn_sqdev_scalar(const float *x, int64_t hw, const double *mean, double *acc)
{
    for (int64_t i = 0; i < hw; i++)
        for (int lane = 0; lane < 16; lane++) {
            const double d = x[i * 16 + lane] - mean[lane];
            acc[lane] += d * d;
        }
}

DLCPU_TARGET_AVX512 static void dlcpu_bn_sqdev_avx512(const float *x, int64_t hw, const double *mean, double *acc)
{
    __m512d lo = _mm512_loadu_pd(acc), hi = _mm512_loadu_pd(acc + 8);
    const __m512d mlo = _mm512_loadu_pd(mean), mhi = _mm512_loadu_pd(mean + 8);
    for (int64_t i = 0; i < hw; i++) {
        const __m512 v = _mm512_loadu_ps(x + i * 16);
        const __m512d dlo = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), mlo);
        const __m512d dhi = _mm512_sub_pd(
            _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))), mhi);
        lo = _mm512_fmadd_pd(dlo, dlo, lo);
        hi = _mm512_fmadd_pd(dhi, dhi, hi);
    }
    _mm512_storeu_pd(acc, lo);
    _mm512_storeu_pd(acc + 8, hi);
}

/* The backward's sums: sb[lane] += dy, sg[lane] += dy * (x - mean) * invstd (the product in
 * float, as the scalar loop, the sum in double). */
static void dlcpu_bn_grad_sums_scalar(const float *dy, const float *x, int64_t hw, const float *mean,
                                      const float *invstd, double *sb, double *sg)
{
    for (int64_t i = 0; i < hw; i++)
        for (int lane = 0; lane < 16; lane++) {
            const int64_t j = i * 16 + lane;
            sb[lane] += dy[j];
            sg[lane] += dy[j] * (x[j] - mean[lane]) * invstd[lane];
        }
}

DLCPU_TARGET_AVX512 static void dlcpu_bn_grad_sums_avx512(const float *dy, const float *x, int64_t hw,
                                                          const float *mean, const float *invstd,
                                                          double *sb, double *sg)
{
    __m512d blo = _mm512_loadu_pd(sb), bhi = _mm512_loadu_pd(sb + 8);
    __m512d glo = _mm512_loadu_pd(sg), ghi = _mm512_loadu_pd(sg + 8);
    const __m512 m = _mm512_loadu_ps(mean), is = _mm512_loadu_ps(invstd);
    for (int64_t i = 0; i < hw; i++) {
        const __m512 d = _mm512_loadu_ps(dy + i * 16);
        const __m512 p = _mm512_mul_ps(_mm512_mul_ps(d, _mm512_sub_ps(_mm512_loadu_ps(x + i * 16), m)), is);
        blo = _mm512_add_pd(blo, _mm512_cvtps_pd(_mm512_castps512_ps256(d)));
        bhi = _mm512_add_pd(bhi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(d), 1))));
        glo = _mm512_add_pd(glo, _mm512_cvtps_pd(_mm512_castps512_ps256(p)));
        ghi = _mm512_add_pd(ghi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(p), 1))));
    }
    _mm512_storeu_pd(sb, blo);
    _mm512_storeu_pd(sb + 8, bhi);
    _mm512_storeu_pd(sg, glo);
    _mm512_storeu_pd(sg + 8, ghi);
}

/* dx = k1 * (dy - k2 - (x - mean) * invstd * k3) per lane */
static void dlcpu_bn_dx_scalar(const float *dy, const float *x, float *dx, int64_t hw, const float *mean,
                               const float *invstd, const float *k1, const float *k2, const float *k3)
{
    for (int64_t i = 0; i < hw; i++)
        for (int lane = 0; lane < 16; lane++) {
            const int64_t j = i * 16 + lane;
            const float xh = (x[j] - mean[lane]) * invstd[lane];
            dx[j] = k1[lane] * (dy[j] - k2[lane] - xh * k3[lane]);
        }
}

DLCPU_TARGET_AVX512 static void dlcpu_bn_dx_avx512(const float *dy, const float *x, float *dx, int64_t hw,
                                                   const float *mean, const float *invstd, const float *k1,
                                                   const float *k2, const float *k3)
{
    const __m512 m = _mm512_loadu_ps(mean), is = _mm512_loadu_ps(invstd);
    const __m512 a = _mm512_loadu_ps(k1), b = _mm512_loadu_ps(k2), c = _mm512_loadu_ps(k3);
    for (int64_t i = 0; i < hw; i++) {
        const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i * 16), m), is);
        const __m512 t = _mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(dy + i * 16), b), _mm512_mul_ps(xh, c));
        _mm512_storeu_ps(dx + i * 16, _mm512_mul_ps(a, t));
    }
}

/* The AVX2 paths of the reductions and of dx: a pixel's 16 lanes are two 8-float halves (h),
 * each widened into two 4-double quarters, so the 16 double accumulators are four vectors.
 * Pixel-outer, so each pixel's cache line is read once (a ResNet-50 plane does not fit L1). */
DLCPU_TARGET_AVX2 static inline __m256d dlcpu_lo4_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
DLCPU_TARGET_AVX2 static inline __m256d dlcpu_hi4_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }

DLCPU_TARGET_AVX2 static void dlcpu_bn_sum_avx2(const float *x, int64_t hw, double *acc)
{
    __m256d a[4];
    for (int q = 0; q < 4; q++)
        a[q] = _mm256_loadu_pd(acc + 4 * q);
    for (int64_t i = 0; i < hw; i++)
        for (int h = 0; h < 2; h++) {
            const __m256 v = _mm256_loadu_ps(x + i * 16 + 8 * h);
            a[2 * h] = _mm256_add_pd(a[2 * h], dlcpu_lo4_pd(v));
            a[2 * h + 1] = _mm256_add_pd(a[2 * h + 1], dlcpu_hi4_pd(v));
        }
    for (int q = 0; q < 4; q++)
        _mm256_storeu_pd(acc + 4 * q, a[q]);
}

DLCPU_TARGET_AVX2 static void dlcpu_bn_sqdev_avx2(const float *x, int64_t hw, const double *mean, double *acc)
{
    __m256d a[4], m[4];
    for (int q = 0; q < 4; q++) {
        a[q] = _mm256_loadu_pd(acc + 4 * q);
        m[q] = _mm256_loadu_pd(mean + 4 * q);
    }
    for (int64_t i = 0; i < hw; i++)
        for (int h = 0; h < 2; h++) {
            const __m256 v = _mm256_loadu_ps(x + i * 16 + 8 * h);
            const __m256d dlo = _mm256_sub_pd(dlcpu_lo4_pd(v), m[2 * h]);
            const __m256d dhi = _mm256_sub_pd(dlcpu_hi4_pd(v), m[2 * h + 1]);
            a[2 * h] = _mm256_fmadd_pd(dlo, dlo, a[2 * h]);
            a[2 * h + 1] = _mm256_fmadd_pd(dhi, dhi, a[2 * h + 1]);
        }
    for (int q = 0; q < 4; q++)
        _mm256_storeu_pd(acc + 4 * q, a[q]);
}

DLCPU_TARGET_AVX2 static void dlcpu_bn_grad_sums_avx2(const float *dy, const float *x, int64_t hw, const float *mean,
                                                      const float *invstd, double *sb, double *sg)
{
    __m256d b[4], g[4];
    __m256 m[2], is[2];
    for (int q = 0; q < 4; q++) {
        b[q] = _mm256_loadu_pd(sb + 4 * q);
        g[q] = _mm256_loadu_pd(sg + 4 * q);
    }
    for (int h = 0; h < 2; h++) {
        m[h] = _mm256_loadu_ps(mean + 8 * h);
        is[h] = _mm256_loadu_ps(invstd + 8 * h);
    }
    for (int64_t i = 0; i < hw; i++)
        for (int h = 0; h < 2; h++) {
            const int64_t j = i * 16 + 8 * h;
            const __m256 d = _mm256_loadu_ps(dy + j);
            const __m256 p = _mm256_mul_ps(_mm256_mul_ps(d, _mm256_sub_ps(_mm256_loadu_ps(x + j), m[h])), is[h]);
            b[2 * h] = _mm256_add_pd(b[2 * h], dlcpu_lo4_pd(d));
            b[2 * h + 1] = _mm256_add_pd(b[2 * h + 1], dlcpu_hi4_pd(d));
            g[2 * h] = _mm256_add_pd(g[2 * h], dlcpu_lo4_pd(p));
            g[2 * h + 1] = _mm256_add_pd(g[2 * h + 1], dlcpu_hi4_pd(p));
        }
    for (int q = 0; q < 4; q++) {
        _mm256_storeu_pd(sb + 4 * q, b[q]);
        _mm256_storeu_pd(sg + 4 * q, g[q]);
    }
}

DLCPU_TARGET_AVX2 static void dlcpu_bn_dx_avx2(const float *dy, const float *x, float *dx, int64_t hw,
                                               const float *mean, const float *invstd, const float *k1,
                                               const float *k2, const float *k3)
{
    __m256 m[2], is[2], a[2], b[2], c[2];
    for (int h = 0; h < 2; h++) {
        m[h] = _mm256_loadu_ps(mean + 8 * h);
        is[h] = _mm256_loadu_ps(invstd + 8 * h);
        a[h] = _mm256_loadu_ps(k1 + 8 * h);
        b[h] = _mm256_loadu_ps(k2 + 8 * h);
        c[h] = _mm256_loadu_ps(k3 + 8 * h);
    }
    for (int64_t i = 0; i < hw; i++)
        for (int h = 0; h < 2; h++) {
            const int64_t j = i * 16 + 8 * h;
            const __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), m[h]), is[h]);
            const __m256 t = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(dy + j), b[h]), _mm256_mul_ps(xh, c[h]));
            _mm256_storeu_ps(dx + j, _mm256_mul_ps(a[h], t));
        }
}

static inline void dlcpu_bn_sum(int isa, const float *x, int64_t hw, double *acc)
{
    if (isa == DLCPU_ISA_AVX512) dlcpu_bn_sum_avx512(x, hw, acc);
    else if (isa == DLCPU_ISA_AVX2) dlcpu_bn_sum_avx2(x, hw, acc);
    else dlcpu_bn_sum_scalar(x, hw, acc);
}

static inline void dlcpu_bn_sqdev(int isa, const float *x, int64_t hw, const double *mean, double *acc)
{
    if (isa == DLCPU_ISA_AVX512) dlcpu_bn_sqdev_avx512(x, hw, mean, acc);
    else if (isa == DLCPU_ISA_AVX2) dlcpu_bn_sqdev_avx2(x, hw, mean, acc);
    else dlcpu_bn_sqdev_scalar(x, hw, mean, acc);
}

static inline void dlcpu_bn_grad_sums(int isa, const float *dy, const float *x, int64_t hw, const float *mean,
                                      const float *invstd, double *sb, double *sg)
{
    if (isa == DLCPU_ISA_AVX512) dlcpu_bn_grad_sums_avx512(dy, x, hw, mean, invstd, sb, sg);
    else if (isa == DLCPU_ISA_AVX2) dlcpu_bn_grad_sums_avx2(dy, x, hw, mean, invstd, sb, sg);
    else dlcpu_bn_grad_sums_scalar(dy, x, hw, mean, invstd, sb, sg);
}

static inline void dlcpu_bn_dx(int isa, const float *dy, const float *x, float *dx, int64_t hw, const float *mean,
                               const float *invstd, const float *k1, const float *k2, const float *k3)
{
    if (isa == DLCPU_ISA_AVX512) dlcpu_bn_dx_avx512(dy, x, dx, hw, mean, invstd, k1, k2, k3);
    else if (isa == DLCPU_ISA_AVX2) dlcpu_bn_dx_avx2(dy, x, dx, hw, mean, invstd, k1, k2, k3);
    else dlcpu_bn_dx_scalar(dy, x, dx, hw, mean, invstd, k1, k2, k3);
}
#endif
