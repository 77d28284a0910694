/*
 * Fused SGD with momentum and weight decay (PyTorch's formulation) over flat float32 arrays:
 *     d = g + wd*p   (d = g when wd = 0: an Inf weight must not turn 0*Inf into NaN)
 *     v = m*v + d
 *     p = p - lr*v
 * One pass reads p, g, v and writes p, v.  A plain C loop compiled without -march runs as
 * scalar code (2.8 ms per step for an 8 MB LSTM, slower than NumPy's four passes over arrays
 * that fit in L3), so each ISA path has its own vector loop; the vector paths use FMA, so the
 * paths agree to rounding, not bit for bit.
 */
#ifndef DLCPU_OPTIM_F32_H
#define DLCPU_OPTIM_F32_H

#include <stdint.h>
#include <immintrin.h>
#include "isa.h"

static void dlcpu_sgd_scalar(float *restrict p, const float *restrict g, float *restrict v, int64_t n,
                             float lr, float m, float wd)
{
    for (int64_t i = 0; i < n; i++) {
        float d = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        v[i] = m * v[i] + d;
        p[i] = p[i] - lr * v[i];
    }
}

DLCPU_TARGET_AVX2 static void dlcpu_sgd_avx2(float *restrict p, const float *restrict g, float *restrict v,
                                             int64_t n, float lr, float m, float wd)
{
    const __m256 vlr = _mm256_set1_ps(lr), vm = _mm256_set1_ps(m), vwd = _mm256_set1_ps(wd);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 pi = _mm256_loadu_ps(p + i), d = _mm256_loadu_ps(g + i);
        if (wd != 0.0f)
            d = _mm256_fmadd_ps(vwd, pi, d);
        __m256 vi = _mm256_fmadd_ps(vm, _mm256_loadu_ps(v + i), d);
        _mm256_storeu_ps(v + i, vi);
        _mm256_storeu_ps(p + i, _mm256_fnmadd_ps(vlr, vi, pi));
    }
    dlcpu_sgd_scalar(p + i, g + i, v + i, n - i, lr, m, wd);
}

DLCPU_TARGET_AVX512 static void dlcpu_sgd_avx512(float *restrict p, const float *restrict g, float *restrict v,
                                                 int64_t n, float lr, float m, float wd)
{
    const __m512 vlr = _mm512_set1_ps(lr), vm = _mm512_set1_ps(m), vwd = _mm512_set1_ps(wd);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        __m512 pi = _mm512_maskz_loadu_ps(k, p + i), d = _mm512_maskz_loadu_ps(k, g + i);
        if (wd != 0.0f)
            d = _mm512_fmadd_ps(vwd, pi, d);
        __m512 vi = _mm512_fmadd_ps(vm, _mm512_maskz_loadu_ps(k, v + i), d);
        _mm512_mask_storeu_ps(v + i, k, vi);
        _mm512_mask_storeu_ps(p + i, k, _mm512_fnmadd_ps(vlr, vi, pi));
    }
}

static inline void dlcpu_sgd_f32(int isa, float *p, const float *g, float *v, int64_t n, float lr, float m,
                                 float wd)
{
    if (isa == DLCPU_ISA_AVX512)
        dlcpu_sgd_avx512(p, g, v, n, lr, m, wd);
    else if (isa == DLCPU_ISA_AVX2)
        dlcpu_sgd_avx2(p, g, v, n, lr, m, wd);
    else
        dlcpu_sgd_scalar(p, g, v, n, lr, m, wd);
}

#endif
