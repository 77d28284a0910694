/*
 * FMA throughput probe for `dlcpu bench peak`: independent FMA chains, no memory traffic, so the
 * figure is the core's arithmetic peak that every kernel's "% of peak" is measured against.
 * 24 independent accumulators cover 2 FMA pipes x 4-cycle latency with room to spare.
 */
#ifndef DLCPU_PEAK_H
#define DLCPU_PEAK_H
#include <stdint.h>
#include <immintrin.h>
#include "isa.h"

#define DLCPU_PEAK_CHAINS 24

static DLCPU_TARGET_AVX512 float dlcpu_peak_avx512(int64_t iters)
{
    __m512 acc[DLCPU_PEAK_CHAINS];
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
#pragma GCC unroll 24
    for (int t = 0; t < DLCPU_PEAK_CHAINS; t++) acc[t] = _mm512_set1_ps((float)t);
    for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 24
        for (int t = 0; t < DLCPU_PEAK_CHAINS; t++) acc[t] = _mm512_fmadd_ps(acc[t], a, b);
        __asm__ volatile("" ::: "memory");
    }
    __m512 s = acc[0];
#pragma GCC unroll 24
    for (int t = 1; t < DLCPU_PEAK_CHAINS; t++) s = _mm512_add_ps(s, acc[t]);
    return _mm512_reduce_add_ps(s);
}

static DLCPU_TARGET_AVX2 float dlcpu_peak_avx2(int64_t iters)
{
    __m256 acc[12];
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
#pragma GCC unroll 12
    for (int t = 0; t < 12; t++) acc[t] = _mm256_set1_ps((float)t);
    for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int t = 0; t < 12; t++) acc[t] = _mm256_fmadd_ps(acc[t], a, b);
        __asm__ volatile("" ::: "memory");
    }
    __m256 s = acc[0];
    for (int t = 1; t < 12; t++) s = _mm256_add_ps(s, acc[t]);
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[7];
}

/* Runs `iters` rounds; returns the FLOPs done (2 per lane per FMA), or 0 for no SIMD path. */
static inline double dlcpu_peak_run(int isa, int64_t iters)
{
    volatile float keep; /* the result must look used, or the loop is dead code */
    if (isa == DLCPU_ISA_AVX512) { keep = dlcpu_peak_avx512(iters); return 2.0 * 16 * DLCPU_PEAK_CHAINS * (double)iters; }
    if (isa == DLCPU_ISA_AVX2) { keep = dlcpu_peak_avx2(iters); return 2.0 * 8 * 12 * (double)iters; }
    (void)keep;
    return 0.0;
}
#endif
