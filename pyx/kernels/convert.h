/*
 * Format conversions below fp32: bf16 both ways, the max-|x| scan that sets a DFP-16 tensor's
 * shared exponent, and DFP-16 quantization (round to nearest even, or stochastic).
 *
 * Every path gives the same bits as the scalar one, so a converted tensor never depends on the
 * ISA path or the thread count:
 *   - fp32 -> bf16 follows VCVTNEPS2BF16's definition (papers.md §5.3): zero and denormal inputs
 *     become a signed zero (the instruction's DAZ/FTZ; the one denormal rule on every path),
 *     +-Inf is kept, a NaN keeps its top bits with the quiet bit (0x0040) set, everything else
 *     rounds to nearest even by an integer add; an overflow rounds to Inf.  The AVX-512 path uses
 *     the instruction itself when the CPU has avx512_bf16, else the same integer recipe.
 *   - The max-|x| scan compares |x|'s bit patterns as unsigned integers: for floats that order is
 *     the numeric one, and any NaN or Inf pattern (exponent all ones) is >= 0x7F800000, so one
 *     integer max also says whether the tensor holds a non-finite value.
 *   - DFP-16 scales x by 2^-E in double (exact: the scale may lie outside fp32's range, and a
 *     double holds x * 2^-E without rounding), rounds to an integer, and clamps to +-limit.
 *     Stochastic rounding rounds |v| up with probability equal to its fraction, from a 32-bit
 *     counter-based hash of (seed, element index): the draw of element i does not depend on
 *     how the tensor is split among threads or vector lanes.
 */
#ifndef DLCPU_CONVERT_H
#define DLCPU_CONVERT_H

#include <math.h>
#include <stdint.h>
#include <immintrin.h>
#include "isa.h"

#define DLCPU_TARGET_AVX512_BF16 \
    __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,avx2,fma")))

/* ------------------------------------------------------------------------------ fp32 -> bf16 */
static inline uint16_t dlcpu_bf16_round_scalar(uint32_t u)
{
    const uint32_t exponent = u & 0x7F800000u;
    if (exponent == 0)                              /* zero or denormal: signed zero */
        return (uint16_t)((u >> 16) & 0x8000u);
    if (exponent == 0x7F800000u)                    /* Inf keeps its bits; NaN gets the quiet bit */
        return (uint16_t)((u & 0x007FFFFFu) ? ((u >> 16) | 0x0040u) : (u >> 16));
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static void dlcpu_f32_to_bf16_scalar(const uint32_t *x, uint16_t *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = dlcpu_bf16_round_scalar(x[i]);
}

/* The integer recipe on 8 lanes; the result sits in the low 16 bits of each 32-bit lane. */
DLCPU_TARGET_AVX2 static inline __m256i dlcpu_bf16_round_avx2(__m256i u)
{
    const __m256i exp_mask = _mm256_set1_epi32(0x7F800000), mant_mask = _mm256_set1_epi32(0x007FFFFF);
    const __m256i zero = _mm256_setzero_si256(), one = _mm256_set1_epi32(1);
    const __m256i exponent = _mm256_and_si256(u, exp_mask);
    const __m256i top = _mm256_srli_epi32(u, 16);
    __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), _mm256_and_si256(top, one))), 16);
    const __m256i special = _mm256_cmpeq_epi32(exponent, exp_mask);
    const __m256i nan = _mm256_andnot_si256(_mm256_cmpeq_epi32(_mm256_and_si256(u, mant_mask), zero), special);
    r = _mm256_blendv_epi8(r, top, special);
    r = _mm256_blendv_epi8(r, _mm256_or_si256(top, _mm256_set1_epi32(0x0040)), nan);
    r = _mm256_blendv_epi8(r, _mm256_and_si256(top, _mm256_set1_epi32(0x8000)), _mm256_cmpeq_epi32(exponent, zero));
    return r;
}

DLCPU_TARGET_AVX2 static void dlcpu_f32_to_bf16_avx2(const uint32_t *x, uint16_t *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256i a = dlcpu_bf16_round_avx2(_mm256_loadu_si256((const __m256i *)(x + i)));
        const __m256i b = dlcpu_bf16_round_avx2(_mm256_loadu_si256((const __m256i *)(x + i + 8)));
        /* packus works within 128-bit lanes: [a0-3 b0-3 a4-7 b4-7]; the permute restores order */
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
        _mm256_storeu_si256((__m256i *)(y + i), packed);
    }
    dlcpu_f32_to_bf16_scalar(x + i, y + i, n - i);
}

DLCPU_TARGET_AVX512 static void dlcpu_f32_to_bf16_avx512(const uint32_t *x, uint16_t *y, int64_t n)
{
    const __m512i exp_mask = _mm512_set1_epi32(0x7F800000), mant_mask = _mm512_set1_epi32(0x007FFFFF);
    const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7FFF);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        const __m512i u = _mm512_maskz_loadu_epi32(k, x + i);
        const __m512i exponent = _mm512_and_si512(u, exp_mask);
        const __m512i top = _mm512_srli_epi32(u, 16);
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(bias, _mm512_and_si512(top, one))), 16);
        const __mmask16 special = _mm512_cmpeq_epi32_mask(exponent, exp_mask);
        const __mmask16 nan = special & _mm512_test_epi32_mask(u, mant_mask);
        r = _mm512_mask_mov_epi32(r, special, top);
        r = _mm512_mask_or_epi32(r, nan, top, _mm512_set1_epi32(0x0040));
        r = _mm512_mask_and_epi32(r, _mm512_testn_epi32_mask(exponent, exp_mask), top, _mm512_set1_epi32(0x8000));
        _mm256_mask_storeu_epi16(y + i, k, _mm512_cvtepi32_epi16(r));
    }
}

DLCPU_TARGET_AVX512_BF16 static void dlcpu_f32_to_bf16_avx512_native(const uint32_t *x, uint16_t *y, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        const __m512 v = _mm512_castsi512_ps(_mm512_maskz_loadu_epi32(k, x + i));
        _mm256_mask_storeu_epi16(y + i, k, (__m256i)_mm512_cvtneps_pbh(v));
    }
}

/* native: use VCVTNEPS2BF16 on the AVX-512 path (the caller checked avx512_bf16). */
static inline void dlcpu_f32_to_bf16(int isa, int native, const float *x, uint16_t *y, int64_t n)
{
    const uint32_t *u = (const uint32_t *)x;
    if (isa == DLCPU_ISA_AVX512 && native)
        dlcpu_f32_to_bf16_avx512_native(u, y, n);
    else if (isa == DLCPU_ISA_AVX512)
        dlcpu_f32_to_bf16_avx512(u, y, n);
    else if (isa == DLCPU_ISA_AVX2)
        dlcpu_f32_to_bf16_avx2(u, y, n);
    else
        dlcpu_f32_to_bf16_scalar(u, y, n);
}

/* Rows 2q and 2q+1 of bf16 blocks [16 rows][16 k] interleaved into VNNI words (row 2q in the low
 * half); returns how many of the values are Inf or NaN (exponent all ones), counted on the way. */
DLCPU_TARGET_AVX512 static inline int64_t dlcpu_bf16_vnni_avx512(const uint16_t *x, uint32_t *out, int64_t blocks)
{
    const __m256i e = _mm256_set1_epi16(0x7F80);
    int64_t bad = 0;
    for (int64_t b = 0; b < blocks; b++)
        for (int q = 0; q < 8; q++) {
            const __m256i lo = _mm256_loadu_si256((const __m256i *)(x + b * 256 + 2 * q * 16));
            const __m256i hi = _mm256_loadu_si256((const __m256i *)(x + b * 256 + (2 * q + 1) * 16));
            bad += __builtin_popcount(_mm256_cmpeq_epi16_mask(_mm256_and_si256(lo, e), e)) +
                   __builtin_popcount(_mm256_cmpeq_epi16_mask(_mm256_and_si256(hi, e), e));
            _mm512_storeu_si512(out + b * 128 + q * 16,
                                _mm512_or_si512(_mm512_cvtepu16_epi32(lo), _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16)));
        }
    return bad;
}

static inline int64_t dlcpu_bf16_vnni_scalar(const uint16_t *x, uint32_t *out, int64_t blocks)
{
    int64_t bad = 0;
    for (int64_t b = 0; b < blocks; b++)
        for (int q = 0; q < 8; q++)
            for (int k = 0; k < 16; k++) {
                const uint16_t lo = x[b * 256 + 2 * q * 16 + k], hi = x[b * 256 + (2 * q + 1) * 16 + k];
                bad += ((lo & 0x7F80) == 0x7F80) + ((hi & 0x7F80) == 0x7F80);
                out[b * 128 + q * 16 + k] = (uint32_t)lo | ((uint32_t)hi << 16);
            }
    return bad;
}

/* bf16 blocks [16 rows][16 k] -> VNNI pairs [8][16k][2] (rows 2q and 2q+1 of column k in one
 * 32-bit word): a move, the same bits on every path; returns the Inf/NaN values it moved. */
static inline int64_t dlcpu_bf16_to_vnni(int isa, const uint16_t *x, uint16_t *y, int64_t blocks)
{
    if (isa == DLCPU_ISA_AVX512) return dlcpu_bf16_vnni_avx512(x, (uint32_t *)y, blocks);
    return dlcpu_bf16_vnni_scalar(x, (uint32_t *)y, blocks);
}

/* ------------------------------------------------- the weight update's channel-major copies */
/* The pair weight update (pyx/conv_wu.pyx) needs x channel-major: each image's channel block is
 * transposed once ([H*W][16] -> [16][H*W]), then each (tap column, row phase) copy takes windows
 * of those channel rows.  Measured on the digits layers (8x8, 16 channels, batch 256, 1 thread):
 * one masked gather per channel pair and 16 positions made the copies 25% of the update, about
 * 40 cycles a gather on Zen 4; per-row gathers with a memset per padding run had been 45%. */

/* Rows j < n of a [16 rows][16] block of 16-bit values (row j at x + 16*j; the rest read as 0)
 * -> its 16 columns as rows of n values (column c at y + c*ys).  Three rounds of unpacks
 * transpose each 8x8 quarter inside the 128-bit lanes, one lane exchange joins the halves.
 * Returns the bf16 Inf/NaN patterns among the values moved. */
DLCPU_TARGET_AVX512 static inline int64_t dlcpu_u16_transpose16_avx512(const uint16_t *x, int n, uint16_t *y,
                                                                        int64_t ys)
{
    const __mmask16 rows = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
    const __m256i e = _mm256_set1_epi16(0x7F80);
    __m256i r[16], c[16];
    int64_t bad = 0;
    for (int j = 0; j < 16; j++) {
        r[j] = (rows >> j & 1) ? _mm256_loadu_si256((const __m256i *)(x + 16 * j)) : _mm256_setzero_si256();
        bad += __builtin_popcount(_mm256_cmpeq_epi16_mask(_mm256_and_si256(r[j], e), e));
    }
    for (int h = 0; h < 2; h++) {          /* rows 8h..8h+7: column k (lane 0) and k + 8 (lane 1) */
        const __m256i *q = r + 8 * h;
        __m256i a[8], b[8];
        for (int k = 0; k < 4; k++) {
            a[2 * k] = _mm256_unpacklo_epi16(q[2 * k], q[2 * k + 1]);
            a[2 * k + 1] = _mm256_unpackhi_epi16(q[2 * k], q[2 * k + 1]);
        }
        for (int k = 0; k < 2; k++) {
            b[4 * k] = _mm256_unpacklo_epi32(a[4 * k], a[4 * k + 2]);
            b[4 * k + 1] = _mm256_unpackhi_epi32(a[4 * k], a[4 * k + 2]);
            b[4 * k + 2] = _mm256_unpacklo_epi32(a[4 * k + 1], a[4 * k + 3]);
            b[4 * k + 3] = _mm256_unpackhi_epi32(a[4 * k + 1], a[4 * k + 3]);
        }
        for (int k = 0; k < 4; k++) {
            c[8 * h + 2 * k] = _mm256_unpacklo_epi64(b[k], b[k + 4]);
            c[8 * h + 2 * k + 1] = _mm256_unpackhi_epi64(b[k], b[k + 4]);
        }
    }
    for (int k = 0; k < 8; k++) {
        _mm256_mask_storeu_epi16(y + k * ys, rows, _mm256_permute2x128_si256(c[k], c[8 + k], 0x20));
        _mm256_mask_storeu_epi16(y + (k + 8) * ys, rows, _mm256_permute2x128_si256(c[k], c[8 + k], 0x31));
    }
    return bad;
}

static inline int64_t dlcpu_u16_transpose16_scalar(const uint16_t *x, int n, uint16_t *y, int64_t ys)
{
    int64_t bad = 0;
    for (int j = 0; j < n; j++)
        for (int c = 0; c < 16; c++) {
            y[c * ys + j] = x[16 * j + c];
            bad += (x[16 * j + c] & 0x7F80) == 0x7F80;
        }
    return bad;
}

/* dst[q] = src[col0 + q*sw] where that column lies in [0, w), else 0, for q < nq: one row of a
 * copy, read from a channel row of w values.  AVX-512 for strides 1 and 2 (32 outputs a step:
 * a masked load, or two and a permute keeping the even columns), a loop otherwise. */
DLCPU_TARGET_AVX512 static inline void dlcpu_u16_window_avx512(const uint16_t *src, int64_t w, int64_t col0,
                                                              int64_t sw, int64_t nq, uint16_t *dst)
{
    if (sw > 2) {
        for (int64_t q = 0; q < nq; q++) {
            const int64_t col = col0 + q * sw;
            dst[q] = (col >= 0 && col < w) ? src[col] : 0;
        }
        return;
    }
    const __m512i even = _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32,
                                          30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    for (int64_t q = 0; q < nq; q += 32) {
        const int64_t nout = nq - q < 32 ? nq - q : 32;
        const __mmask32 out = nout == 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << nout) - 1u);
        const int64_t first = col0 + q * sw;          /* the column of lane 0 */
        __m512i v;
        if (sw == 1) {
            /* lanes l with 0 <= first + l < w (masked lanes are never read) */
            const int64_t lo = first < 0 ? -first : 0, hi = w - first;
            __mmask32 m = 0;
            if (hi > lo && lo < 32) {
                const int64_t top = hi < 32 ? hi : 32;
                m = (__mmask32)(((top >= 32 ? 0xFFFFFFFFu : ((1u << top) - 1u))) & ~((1u << lo) - 1u));
            }
            v = _mm512_maskz_loadu_epi16(m & out, src + first);
        } else {
            __m512i half[2];
            for (int h = 0; h < 2; h++) {
                const int64_t f = first + 32 * h;     /* 32 columns f..f+31; the even ones are used */
                const int64_t lo = f < 0 ? -f : 0, hi = w - f;
                __mmask32 m = 0;
                if (hi > lo && lo < 32) {
                    const int64_t top = hi < 32 ? hi : 32;
                    m = (__mmask32)(((top >= 32 ? 0xFFFFFFFFu : ((1u << top) - 1u))) & ~((1u << lo) - 1u));
                }
                half[h] = _mm512_maskz_loadu_epi16(m, src + f);
            }
            v = _mm512_permutex2var_epi16(half[0], even, half[1]);
        }
        _mm512_mask_storeu_epi16(dst + q, out, v);
    }
}

static inline void dlcpu_u16_window_scalar(const uint16_t *src, int64_t w, int64_t col0, int64_t sw, int64_t nq,
                                           uint16_t *dst)
{
    for (int64_t q = 0; q < nq; q++) {
        const int64_t col = col0 + q * sw;
        dst[q] = (col >= 0 && col < w) ? src[col] : 0;
    }
}

/* 16x16 fp32 blocks [16 rows][16 k] -> bf16 blocks in VNNI pairs [8][16k][2]: the weights' input
 * channels, or the weight update's pixels.  Each block is converted, then its rows interleaved. */
static inline void dlcpu_f32_to_bf16_vnni(int isa, int native, const float *x, uint16_t *y, int64_t blocks)
{
    uint16_t t[256];
    for (int64_t b = 0; b < blocks; b++) {
        dlcpu_f32_to_bf16(isa, native, x + b * 256, t, 256);
        dlcpu_bf16_to_vnni(isa, t, y + b * 256, 1);
    }
}

/* ------------------------------------------------------------------------------ bf16 -> fp32 */
static void dlcpu_bf16_to_f32_scalar(const uint16_t *x, uint32_t *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = (uint32_t)x[i] << 16;
}

DLCPU_TARGET_AVX2 static void dlcpu_bf16_to_f32_avx2(const uint16_t *x, uint32_t *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(x + i)));
        _mm256_storeu_si256((__m256i *)(y + i), _mm256_slli_epi32(w, 16));
    }
    dlcpu_bf16_to_f32_scalar(x + i, y + i, n - i);
}

DLCPU_TARGET_AVX512 static void dlcpu_bf16_to_f32_avx512(const uint16_t *x, uint32_t *y, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, x + i));
        _mm512_mask_storeu_epi32(y + i, k, _mm512_slli_epi32(w, 16));
    }
}

static inline void dlcpu_bf16_to_f32(int isa, const uint16_t *x, float *y, int64_t n)
{
    uint32_t *u = (uint32_t *)y;
    if (isa == DLCPU_ISA_AVX512)
        dlcpu_bf16_to_f32_avx512(x, u, n);
    else if (isa == DLCPU_ISA_AVX2)
        dlcpu_bf16_to_f32_avx2(x, u, n);
    else
        dlcpu_bf16_to_f32_scalar(x, u, n);
}

/* ---------------------------------------------------------------------- max |x| as bit pattern */
static uint32_t dlcpu_absmax_bits_scalar(const uint32_t *x, int64_t n)
{
    uint32_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        const uint32_t a = x[i] & 0x7FFFFFFFu;
        m = a > m ? a : m;
    }
    return m;
}

DLCPU_TARGET_AVX2 static uint32_t dlcpu_absmax_bits_avx2(const uint32_t *x, int64_t n)
{
    const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
    __m256i m = _mm256_setzero_si256();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        m = _mm256_max_epu32(m, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), abs_mask));
    uint32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, m);
    uint32_t r = dlcpu_absmax_bits_scalar(x + i, n - i);
    for (int j = 0; j < 8; j++)
        r = lanes[j] > r ? lanes[j] : r;
    return r;
}

DLCPU_TARGET_AVX512 static uint32_t dlcpu_absmax_bits_avx512(const uint32_t *x, int64_t n)
{
    const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
    __m512i m = _mm512_setzero_si512();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_maskz_loadu_epi32(k, x + i), abs_mask));
    }
    return (uint32_t)_mm512_reduce_max_epu32(m);
}

/* The largest |x| as its bit pattern; >= 0x7F800000 means x holds a NaN or an Inf. */
static inline uint32_t dlcpu_absmax_bits(int isa, const float *x, int64_t n)
{
    const uint32_t *u = (const uint32_t *)x;
    if (isa == DLCPU_ISA_AVX512)
        return dlcpu_absmax_bits_avx512(u, n);
    if (isa == DLCPU_ISA_AVX2)
        return dlcpu_absmax_bits_avx2(u, n);
    return dlcpu_absmax_bits_scalar(u, n);
}

/* ----------------------------------------------------------------------------- fp32 -> DFP-16 */
/* 32-bit mixing function (the "lowbias32" constants of Wellons' hash-prospector search): a
 * full-avalanche bijection, so hash(key ^ index) gives independent-looking uniform draws. */
static inline uint32_t dlcpu_mix32(uint32_t h)
{
    h ^= h >> 16; h *= 0x7FEB352Du; h ^= h >> 15; h *= 0x846CA68Bu; h ^= h >> 16;
    return h;
}

/* v rounded to an integer: nearest even, or (stochastic) |v| up with probability frac(|v|),
 * decided by draw < frac * 2^32; then clamped to [-limit, limit]. */
static inline int16_t dlcpu_dfp16_round_one(double v, int stochastic, uint32_t draw, int limit)
{
    double r;
    if (stochastic) {
        const double a = fabs(v), floor_a = floor(a);
        r = floor_a + ((double)draw < (a - floor_a) * 4294967296.0 ? 1.0 : 0.0);
        r = v < 0 ? -r : r;
    } else {
        r = __builtin_roundeven(v);
    }
    r = r > limit ? limit : (r < -limit ? -limit : r);
    return (int16_t)r;
}

/* Element i (global index first + i) of x -> mantissa y[i]; scale = 2^-E (a double); key: the
 * seed's hash for this run of 2^32 indices (the caller never lets [first, first + n) cross one). */
static void dlcpu_dfp16_quantize_scalar(const float *x, int16_t *y, int64_t n, double scale, int limit,
                                        int stochastic, uint32_t key, uint32_t first)
{
    for (int64_t i = 0; i < n; i++) {
        const uint32_t draw = stochastic ? dlcpu_mix32(key ^ dlcpu_mix32(first + (uint32_t)i)) : 0u;
        y[i] = dlcpu_dfp16_round_one((double)x[i] * scale, stochastic, draw, limit);
    }
}

DLCPU_TARGET_AVX2 static inline __m256i dlcpu_mix32_avx2(__m256i h)
{
    h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
    h = _mm256_mullo_epi32(h, _mm256_set1_epi32((int)0x7FEB352Du));
    h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 15));
    h = _mm256_mullo_epi32(h, _mm256_set1_epi32((int)0x846CA68Bu));
    return _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
}

/* 4 doubles -> 4 rounded, clamped integers in the low 32 bits of a __m128i. */
DLCPU_TARGET_AVX2 static inline __m128i dlcpu_dfp16_round4_avx2(__m256d v, __m128i draw, int stochastic, __m256d lim)
{
    __m256d r;
    if (stochastic) {
        const __m256d sign = _mm256_set1_pd(-0.0);
        const __m256d a = _mm256_andnot_pd(sign, v);
        const __m256d fl = _mm256_round_pd(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        /* the draw as an unsigned 32-bit value in double: signed value + 2^32 when negative */
        __m256d d = _mm256_cvtepi32_pd(draw);
        d = _mm256_add_pd(d, _mm256_and_pd(_mm256_cmp_pd(d, _mm256_setzero_pd(), _CMP_LT_OQ),
                                           _mm256_set1_pd(4294967296.0)));
        const __m256d up = _mm256_cmp_pd(d, _mm256_mul_pd(_mm256_sub_pd(a, fl), _mm256_set1_pd(4294967296.0)),
                                         _CMP_LT_OQ);
        r = _mm256_add_pd(fl, _mm256_and_pd(up, _mm256_set1_pd(1.0)));
        r = _mm256_or_pd(r, _mm256_and_pd(v, sign));
    } else {
        r = _mm256_round_pd(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    r = _mm256_max_pd(_mm256_min_pd(r, lim), _mm256_sub_pd(_mm256_setzero_pd(), lim));
    return _mm256_cvttpd_epi32(r);
}

DLCPU_TARGET_AVX2 static void dlcpu_dfp16_quantize_avx2(const float *x, int16_t *y, int64_t n, double scale,
                                                       int limit, int stochastic, uint32_t key, uint32_t first)
{
    const __m256d s = _mm256_set1_pd(scale), lim = _mm256_set1_pd((double)limit);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), vkey = _mm256_set1_epi32((int)key);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 f = _mm256_loadu_ps(x + i);
        __m256i draw = _mm256_setzero_si256();
        if (stochastic) {
            const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32((int)(first + (uint32_t)i)), lane);
            draw = dlcpu_mix32_avx2(_mm256_xor_si256(vkey, dlcpu_mix32_avx2(idx)));
        }
        const __m128i lo = dlcpu_dfp16_round4_avx2(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(f)), s),
                                                  _mm256_castsi256_si128(draw), stochastic, lim);
        const __m128i hi = dlcpu_dfp16_round4_avx2(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)), s),
                                                  _mm256_extracti128_si256(draw, 1), stochastic, lim);
        _mm_storeu_si128((__m128i *)(y + i), _mm_packs_epi32(lo, hi));
    }
    dlcpu_dfp16_quantize_scalar(x + i, y + i, n - i, scale, limit, stochastic, key, first + (uint32_t)i);
}

DLCPU_TARGET_AVX512 static inline __m512i dlcpu_mix32_avx512(__m512i h)
{
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32((int)0x7FEB352Du));
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 15));
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32((int)0x846CA68Bu));
    return _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
}

/* 8 doubles -> 8 rounded, clamped int32 (a __m256i). */
DLCPU_TARGET_AVX512 static inline __m256i dlcpu_dfp16_round8_avx512(__m512d v, __m256i draw, int stochastic,
                                                                   __m512d lim)
{
    __m512d r;
    if (stochastic) {
        const __m512d a = _mm512_abs_pd(v);
        const __m512d fl = _mm512_roundscale_pd(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        const __m512d d = _mm512_cvtepu32_pd(draw);
        const __mmask8 up = _mm512_cmp_pd_mask(d, _mm512_mul_pd(_mm512_sub_pd(a, fl), _mm512_set1_pd(4294967296.0)),
                                               _CMP_LT_OQ);
        r = _mm512_mask_add_pd(fl, up, fl, _mm512_set1_pd(1.0));
        r = _mm512_mask_sub_pd(r, _mm512_cmp_pd_mask(v, _mm512_setzero_pd(), _CMP_LT_OQ), _mm512_setzero_pd(), r);
    } else {
        r = _mm512_roundscale_pd(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    r = _mm512_max_pd(_mm512_min_pd(r, lim), _mm512_sub_pd(_mm512_setzero_pd(), lim));
    return _mm512_cvttpd_epi32(r);
}

/* Nearest rounding in fp32, 16 lanes: x * 2^k is exact in fp32 (x is finite and |x * 2^k| stays
 * near 2^14 by the choice of the exponent), except values that fall below 2^-126, which round
 * to 0 either way; so the codes equal the double path's bit for bit at twice its lanes (the
 * double path took 0.91 ms for 3.2M values where converting them to bf16 took 0.49). */
DLCPU_TARGET_AVX512 static void dlcpu_dfp16_nearest_f32_avx512(const float *x, int16_t *y, int64_t n, float scale,
                                                              int limit)
{
    const __m512 s = _mm512_set1_ps(scale), lim = _mm512_set1_ps((float)limit), neg = _mm512_set1_ps(-(float)limit);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), s),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_max_ps(_mm512_min_ps(v, lim), neg);
        _mm256_mask_storeu_epi16(y + i, k, _mm512_cvtepi32_epi16(_mm512_cvttps_epi32(v)));
    }
}

/* Whether a DFP-16 scale (a power of two) is an fp32 normal number, so the fp32 path applies. */
static inline int dlcpu_dfp16_scale_is_f32(double scale)
{
    return scale >= 0x1p-126 && scale <= 0x1p127;
}

DLCPU_TARGET_AVX512 static void dlcpu_dfp16_quantize_avx512(const float *x, int16_t *y, int64_t n, double scale,
                                                           int limit, int stochastic, uint32_t key, uint32_t first)
{
    if (!stochastic && dlcpu_dfp16_scale_is_f32(scale)) {
        dlcpu_dfp16_nearest_f32_avx512(x, y, n, (float)scale, limit);
        return;
    }
    const __m512d s = _mm512_set1_pd(scale), lim = _mm512_set1_pd((double)limit);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i vkey = _mm512_set1_epi32((int)key);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        const __m512 f = _mm512_maskz_loadu_ps(k, x + i);
        __m512i draw = _mm512_setzero_si512();
        if (stochastic) {
            const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32((int)(first + (uint32_t)i)), lane);
            draw = dlcpu_mix32_avx512(_mm512_xor_si512(vkey, dlcpu_mix32_avx512(idx)));
        }
        const __m256i lo = dlcpu_dfp16_round8_avx512(_mm512_mul_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(f)), s),
                                                    _mm512_castsi512_si256(draw), stochastic, lim);
        const __m256i hi = dlcpu_dfp16_round8_avx512(
            _mm512_mul_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1))), s),
            _mm512_extracti64x4_epi64(draw, 1), stochastic, lim);
        const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        _mm256_mask_storeu_epi16(y + i, k, _mm512_cvtepi32_epi16(both));
    }
}

static inline void dlcpu_dfp16_quantize(int isa, const float *x, int16_t *y, int64_t n, double scale, int limit,
                                        int stochastic, uint32_t key, uint32_t first)
{
    if (isa == DLCPU_ISA_AVX512)
        dlcpu_dfp16_quantize_avx512(x, y, n, scale, limit, stochastic, key, first);
    else if (isa == DLCPU_ISA_AVX2)
        dlcpu_dfp16_quantize_avx2(x, y, n, scale, limit, stochastic, key, first);
    else
        dlcpu_dfp16_quantize_scalar(x, y, n, scale, limit, stochastic, key, first);
}

/* ------------------------------------------------------------------ u8 activations (int8 kernels) */
/* y = clamp(round-half-even(x / scale) + zero_point, 0, 255), the quotient in double so that it
 * rounds as dlcpu.precision.to_int8 (float64) does; x is finite (the caller checked). */
static void dlcpu_quantize_u8_scalar(const float *x, uint8_t *y, int64_t n, double scale, int zero_point)
{
    for (int64_t i = 0; i < n; i++) {
        double q = nearbyint((double)x[i] / scale) + zero_point;
        q = q < 0.0 ? 0.0 : (q > 255.0 ? 255.0 : q);
        y[i] = (uint8_t)q;
    }
}

DLCPU_TARGET_AVX512 static void dlcpu_quantize_u8_avx512(const float *x, uint8_t *y, int64_t n, double scale,
                                                        int zero_point)
{
    const __m512d s = _mm512_set1_pd(scale), zp = _mm512_set1_pd((double)zero_point);
    const __m512d lo = _mm512_setzero_pd(), hi = _mm512_set1_pd(255.0);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 f = _mm512_loadu_ps(x + i);
        __m512d a = _mm512_div_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(f)), s);
        __m512d b = _mm512_div_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1))), s);
        a = _mm512_add_pd(_mm512_roundscale_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zp);
        b = _mm512_add_pd(_mm512_roundscale_pd(b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zp);
        a = _mm512_max_pd(_mm512_min_pd(a, hi), lo);
        b = _mm512_max_pd(_mm512_min_pd(b, hi), lo);
        const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvttpd_epi32(a)), _mm512_cvttpd_epi32(b), 1);
        _mm_storeu_si128((__m128i *)(y + i), _mm512_cvtepi32_epi8(both));
    }
    dlcpu_quantize_u8_scalar(x + i, y + i, n - i, scale, zero_point);
}

static inline void dlcpu_quantize_u8(int isa, const float *x, uint8_t *y, int64_t n, double scale, int zero_point)
{
    if (isa == DLCPU_ISA_AVX512) dlcpu_quantize_u8_avx512(x, y, n, scale, zero_point);
    else dlcpu_quantize_u8_scalar(x, y, n, scale, zero_point);
}

#endif
