/*
 * The max-pool window of one output pixel over 16 lanes, per ISA path.
 *
 * The per-lane rule: a strictly larger value wins, ties keep the first tap, the first NaN wins
 * and stays.  Written in Cython it compiled to branches and scalar code (no -march flag: plain
 * C loops get SSE2 at best): ResNet-50's 3x3/2 stem pool on 4x64x112x112 took 23 ms against
 * PyTorch's 1.7 ms.  The AVX-512 path is one compare pair and two masked moves per tap for all
 * 16 lanes.  The window has at least one valid tap (padding is at most half the kernel,
 * checked in dlcpu/pool.py), so the first tap initializes the lanes.
 */
#ifndef DLCPU_POOL_F32_H
#define DLCPU_POOL_F32_H
#include <stdint.h>
#include <immintrin.h>
#include "isa.h"

static void
dlcpu_max_window_scalar(const float *plane, int64_t W, int64_t h0, int64_t w0, int64_t r0, int64_t r1,
                        int64_t s0, int64_t s1, float *y16, int32_t *arg16)
{
    float best[16];
    int32_t arg[16];
    const int64_t first = (h0 + r0) * W + w0 + s0;
    for (int lane = 0; lane < 16; lane++) {
        best[lane] = plane[first * 16 + lane];
        arg[lane] = (int32_t)first;
    }
    for (int64_t r = r0; r < r1; r++)
        for (int64_t s = (r == r0 ? s0 + 1 : s0); s < s1; s++) {
            const int64_t pos = (h0 + r) * W + w0 + s;
            const float *v = plane + pos * 16;
            for (int lane = 0; lane < 16; lane++) {
                const int take = (v[lane] > best[lane]) | ((v[lane] != v[lane]) & (best[lane] == best[lane]));
                best[lane] = take ? v[lane] : best[lane];
                arg[lane] = take ? (int32_t)pos : arg[lane];
            }
        }
    for (int lane = 0; lane < 16; lane++) {
        y16[lane] = best[lane];
        arg16[lane] = arg[lane];
    }
}

DLCPU_TARGET_AVX512 static void
dlcpu_max_window_avx512(const float *plane, int64_t W, int64_t h0, int64_t w0, int64_t r0, int64_t r1,
                        int64_t s0, int64_t s1, float *y16, int32_t *arg16)
{
    const int64_t first = (h0 + r0) * W + w0 + s0;
    __m512 best = _mm512_loadu_ps(plane + first * 16);
    __m512i arg = _mm512_set1_epi32((int32_t)first);
    for (int64_t r = r0; r < r1; r++)
        for (int64_t s = (r == r0 ? s0 + 1 : s0); s < s1; s++) {
            const int64_t pos = (h0 + r) * W + w0 + s;
            const __m512 v = _mm512_loadu_ps(plane + pos * 16);
            /* v > best (ordered: false with a NaN), or v NaN while best is not */
            const __mmask16 take = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ)
                | (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) & _mm512_cmp_ps_mask(best, best, _CMP_ORD_Q));
            best = _mm512_mask_mov_ps(best, take, v);
            arg = _mm512_mask_mov_epi32(arg, take, _mm512_set1_epi32((int32_t)pos));
        }
    _mm512_storeu_ps(y16, best);
    _mm512_storeu_si512((void *)arg16, arg);
}

static inline void
dlcpu_max_window(int isa, const float *plane, int64_t W, int64_t h0, int64_t w0, int64_t r0, int64_t r1,
                 int64_t s0, int64_t s1, float *y16, int32_t *arg16)
{
    if (isa == DLCPU_ISA_AVX512)
        dlcpu_max_window_avx512(plane, W, h0, w0, r0, r1, s0, s1, y16, arg16);
    else
        dlcpu_max_window_scalar(plane, W, h0, w0, r0, r1, s0, s1, y16, arg16);
}
/* The max of one window over 16 lanes of u8 codes (a quantized model's max pool: the codes of
 * a per-tensor quantization are monotone in the values, so the max code is the max value's
 * code).  One PMAXUB per tap, SSE2, on every path; no winner positions (inference only).  The
 * fp32 pool with its argmax was 13 ms of a 160 ms int8 ResNet-50 forward (batch 4, 2 threads,
 * AVX2) before the stem handed codes to it. */
static inline void
dlcpu_max_window_u8(const uint8_t *plane, int64_t W, int64_t h0, int64_t w0, int64_t r0, int64_t r1,
                    int64_t s0, int64_t s1, uint8_t *y16)
{
    __m128i best = _mm_setzero_si128();
    for (int64_t r = r0; r < r1; r++)
        for (int64_t s = s0; s < s1; s++)
            best = _mm_max_epu8(best, _mm_loadu_si128((const __m128i *)(plane + ((h0 + r) * W + w0 + s) * 16)));
    _mm_storeu_si128((__m128i *)y16, best);
}
#endif
