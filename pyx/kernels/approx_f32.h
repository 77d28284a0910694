/*
 * Activation functions in three flavours, and the softmax family, as vector code per ISA path.
 *
 *   exact  : tanh and sigmoid from a degree-6 exp polynomial and a refined reciprocal (about
 *            1e-7 relative; the LSTM/GRU default since issue 5);
 *   fast   : tanh as the rational 7/8 Pade approximant (max abs error 9.6e-5, clamped to +-1
 *            beyond |x| = 4.97): eight FMAs and one reciprocal, no exp;
 *   ktanh  : K-TanH (Kundu et al. 2019): integer operations on the bf16 bit pattern only.  The
 *            5-bit index t = (low 2 exponent bits, top 3 mantissa bits) picks a row of a 32-entry
 *            table whose output is sign | (base[t] + (M >> shift[t])), base = Et<<7 + bt.  Folding
 *            Et and bt into one 16-bit `base` leaves two lookups instead of three; on AVX-512
 *            both tables are one zmm each and a lookup is one vpermw (fp32: vpermt2d on two).
 *
 * sigmoid, swish and GELU of every flavour are built on that flavour's tanh:
 *   sigmoid(x) = 1/2 + tanh(x/2)/2   (the exact flavour uses its own exp form: no cancellation
 *                                      for very negative x),
 *   swish(x)   = x sigmoid(beta x),
 *   gelu(x)    = x/2 (1 + tanh(0.7978845608 (x + 0.044715 x^3))).
 * Backward passes use each function's analytic derivative evaluated with the flavour's values
 * (tanh' = 1 - y^2, ...), the convention of the LSTM cells, whose backward reads saved gates.
 *
 * K-TanH is bit-identical on every path (integer operations only; tested).  The fast tanh uses a
 * true division on the scalar and AVX2 paths and rcp14 plus a Newton step on AVX-512 (within
 * 2 ulp of each other).  The array loops below run one chunk; pyx/approx.pyx splits arrays
 * into chunks across threads.
 */
#ifndef DLCPU_APPROX_F32_H
#define DLCPU_APPROX_F32_H
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <immintrin.h>
#include "isa.h"

enum { DLCPU_ACT_EXACT = 0, DLCPU_ACT_FAST = 1, DLCPU_ACT_KTANH = 2 };
enum { DLCPU_OP_TANH = 0, DLCPU_OP_SIGMOID = 1, DLCPU_OP_SWISH = 2, DLCPU_OP_GELU = 3 };
enum { DLCPU_SOFTMAX_EXP = 0, DLCPU_SOFTMAX_TAYLOR = 1 };

#define DLCPU_GELU_C0 0.7978845608f             /* sqrt(2/pi) */
#define DLCPU_GELU_C1 (0.7978845608f * 0.044715f)
#define DLCPU_PADE_CLAMP 4.97f                  /* beyond it the approximant is 1 within 1e-4 */

/* The published K-TanH table (papers.md 1.2), as the kernels read it: base = Et<<7 + bt (16-bit),
 * shift = rt.  dlcpu/approx/ktanh_table.py holds the same table in the paper's three columns
 * and regenerates it; a test checks that the two agree. */
#define DLCPU_KTANH_PUBLISHED(ROW)                                                               \
    ROW(126, 2, 119) ROW(126, 4, 122) ROW(126, 4, 123) ROW(126, 4, 123)                          \
    ROW(126, 6, 126) ROW(126, 6, 126) ROW(126, 6, 126) ROW(126, 6, 126)                          \
    ROW(125, 1, 1)   ROW(125, 0, -4)  ROW(125, 0, -6)  ROW(125, 0, -7)                           \
    ROW(125, 0, -10) ROW(125, 0, -12) ROW(125, 0, -15) ROW(125, 0, -18)                          \
    ROW(125, 0, 112) ROW(126, 1, -4)  ROW(126, 1, -1)  ROW(126, 1, 2)                            \
    ROW(126, 1, 3)   ROW(126, 1, 4)   ROW(126, 1, 4)   ROW(126, 1, 4)                            \
    ROW(126, 0, 65)  ROW(126, 1, 72)  ROW(126, 1, 73)  ROW(126, 1, 73)                           \
    ROW(126, 2, 88)  ROW(126, 2, 89)  ROW(126, 2, 89)  ROW(126, 4, 110)
#define DLCPU_KT_BASE(E, r, b) (uint16_t)((E) * 128 + (b)),
#define DLCPU_KT_SHIFT(E, r, b) (uint16_t)(r),
#define DLCPU_KT_ENTRY(E, r, b) (int32_t)(((E) * 128 + (b)) | ((r) << 16)),
static const uint16_t dlcpu_ktanh_published_base[32] = {DLCPU_KTANH_PUBLISHED(DLCPU_KT_BASE)};
static const uint16_t dlcpu_ktanh_published_shift[32] = {DLCPU_KTANH_PUBLISHED(DLCPU_KT_SHIFT)};
/* both in one 32-bit word per row (base | shift << 16), as the fp32 vector paths read them */
static const int32_t dlcpu_ktanh_published_entry[32] = {DLCPU_KTANH_PUBLISHED(DLCPU_KT_ENTRY)};

/* bf16 bit patterns of the region boundaries: 0.25, 3.75, +Inf, 1.0 */
#define DLCPU_KT_LO 0x3E80u
#define DLCPU_KT_HI 0x4070u
#define DLCPU_KT_INF 0x7F80u
#define DLCPU_KT_ONE 0x3F80u

/* ---------------------------------------------------------------------------------------- */
/* K-TanH, scalar (the definition every vector path must match bit for bit)                 */
/* ---------------------------------------------------------------------------------------- */
static inline uint16_t dlcpu_ktanh_bits(uint16_t b, const uint16_t *base, const uint16_t *shift)
{
    const uint16_t a = b & 0x7FFF, s = b & 0x8000;
    if (a < DLCPU_KT_LO || a > DLCPU_KT_INF) return b;        /* identity; NaN stays NaN */
    if (a > DLCPU_KT_HI) return s | DLCPU_KT_ONE;              /* saturation, Inf included */
    const unsigned t = (b >> 4) & 31;
    return s | (uint16_t)((base[t] + ((a & 0x7F) >> shift[t])) & 0x7FFF);
}

/* fp32: identity and saturation are decided on the fp32 value; the table region reads the top
 * 16 bits (the bf16 truncation) and writes the top 16 bits of the result; the low 16 bits of a
 * table-region result are zero. */
static inline uint32_t dlcpu_ktanh_f32_bits(uint32_t u, const uint16_t *base, const uint16_t *shift)
{
    const uint32_t a = u & 0x7FFFFFFFu, s = u & 0x80000000u;
    if (a < (DLCPU_KT_LO << 16) || a > (DLCPU_KT_INF << 16)) return u;
    if (a > (DLCPU_KT_HI << 16)) return s | (DLCPU_KT_ONE << 16);
    const unsigned t = (u >> 20) & 31;
    return s | ((uint32_t)((base[t] + ((a >> 16 & 0x7F) >> shift[t])) & 0x7FFF) << 16);
}

static void dlcpu_ktanh_bf16_scalar(const uint16_t *x, uint16_t *y, int64_t n, const uint16_t *base,
                                    const uint16_t *shift)
{
    for (int64_t i = 0; i < n; i++) y[i] = dlcpu_ktanh_bits(x[i], base, shift);
}

static inline float dlcpu_ktanh_f32_scalar1(float v, const uint16_t *base, const uint16_t *shift)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    u = dlcpu_ktanh_f32_bits(u, base, shift);
    memcpy(&v, &u, 4);
    return v;
}

/* The rational 7/8 Pade tanh; FMA order fixed so that the AVX2 path matches it bitwise. */
static inline float dlcpu_tanh_fast_scalar1(float x)
{
    if (fabsf(x) > DLCPU_PADE_CLAMP) return copysignf(1.0f, x);
    const float x2 = x * x;
    float p = fmaf(x2, 36.0f, 6930.0f);
    p = fmaf(p, x2, 270270.0f);
    p = fmaf(p, x2, 2027025.0f);
    float q = x2 + 630.0f;
    q = fmaf(q, x2, 51975.0f);
    q = fmaf(q, x2, 945945.0f);
    q = fmaf(q, x2, 2027025.0f);
    return (x * p) / q;
}

static inline float dlcpu_tanh_scalar1(float x, int impl, const uint16_t *base, const uint16_t *shift)
{
    if (impl == DLCPU_ACT_KTANH) return dlcpu_ktanh_f32_scalar1(x, base, shift);
    if (impl == DLCPU_ACT_FAST) return dlcpu_tanh_fast_scalar1(x);
    return tanhf(x);
}

static inline float dlcpu_sigmoid_scalar1(float x, int impl, const uint16_t *base, const uint16_t *shift)
{
    if (impl == DLCPU_ACT_EXACT) return 1.0f / (1.0f + expf(-x));
    return fmaf(0.5f, dlcpu_tanh_scalar1(0.5f * x, impl, base, shift), 0.5f);
}

/* ---------------------------------------------------------------------------------------- */
/* K-TanH and the fast tanh on AVX2 (8 lanes of 32 bits; the table lookup is a gather)      */
/* ---------------------------------------------------------------------------------------- */
/* entry[t] = base[t] | shift[t] << 16: one gather fetches both parameters of a lane */
static inline void dlcpu_ktanh_entries(const uint16_t *base, const uint16_t *shift, int32_t *entry)
{
    for (int t = 0; t < 32; t++) entry[t] = (int32_t)((uint32_t)base[t] | (uint32_t)shift[t] << 16);
}

/* u: fp32 bit patterns (or bf16 patterns shifted left by 16) of 8 lanes */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX2 __m256i
dlcpu_ktanh_u32_avx2(__m256i u, const int32_t *entry)
{
    const __m256i absm = _mm256_set1_epi32(0x7FFFFFFF);
    const __m256i a = _mm256_and_si256(u, absm), s = _mm256_andnot_si256(absm, u);
    const __m256i t = _mm256_and_si256(_mm256_srli_epi32(u, 20), _mm256_set1_epi32(31));
    const __m256i e = _mm256_i32gather_epi32(entry, t, 4);
    const __m256i c = _mm256_and_si256(e, _mm256_set1_epi32(0xFFFF)), r = _mm256_srli_epi32(e, 16);
    const __m256i m = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x7F));
    __m256i out = _mm256_and_si256(_mm256_add_epi32(c, _mm256_srlv_epi32(m, r)), _mm256_set1_epi32(0x7FFF));
    out = _mm256_or_si256(s, _mm256_slli_epi32(out, 16));
    /* a <= 0x7FFFFFFF, so signed compares order it correctly */
    const __m256i sat = _mm256_cmpgt_epi32(a, _mm256_set1_epi32((int)(DLCPU_KT_HI << 16)));
    const __m256i keep = _mm256_or_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)(DLCPU_KT_LO << 16)), a),
                                         _mm256_cmpgt_epi32(a, _mm256_set1_epi32((int)(DLCPU_KT_INF << 16))));
    out = _mm256_blendv_epi8(out, _mm256_or_si256(s, _mm256_set1_epi32((int)(DLCPU_KT_ONE << 16))), sat);
    return _mm256_blendv_epi8(out, u, keep);
}

static DLCPU_TARGET_AVX2 void dlcpu_ktanh_bf16_avx2(const uint16_t *x, uint16_t *y, int64_t n,
                                                   const uint16_t *base, const uint16_t *shift)
{
    int32_t entry[32];
    dlcpu_ktanh_entries(base, shift, entry);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(x + i));
        const __m256i lo = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)), 16);
        const __m256i hi = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(v, 1)), 16);
        const __m256i rl = _mm256_srli_epi32(dlcpu_ktanh_u32_avx2(lo, entry), 16);
        const __m256i rh = _mm256_srli_epi32(dlcpu_ktanh_u32_avx2(hi, entry), 16);
        /* packus works per 128-bit lane: put the four quarters back in order */
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(rl, rh), 0xD8);
        _mm256_storeu_si256((__m256i *)(y + i), packed);
    }
    dlcpu_ktanh_bf16_scalar(x + i, y + i, n - i, base, shift);
}

static inline __attribute__((always_inline)) DLCPU_TARGET_AVX2 __m256 dlcpu_tanh_fast_avx2(__m256 x)
{
    const __m256 x2 = _mm256_mul_ps(x, x);
    __m256 p = _mm256_fmadd_ps(x2, _mm256_set1_ps(36.0f), _mm256_set1_ps(6930.0f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(270270.0f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(2027025.0f));
    __m256 q = _mm256_add_ps(x2, _mm256_set1_ps(630.0f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(51975.0f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(945945.0f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(2027025.0f));
    const __m256 y = _mm256_div_ps(_mm256_mul_ps(x, p), q);
    const __m256 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0f));
    const __m256 big = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x),
                                     _mm256_set1_ps(DLCPU_PADE_CLAMP), _CMP_GT_OQ);
    return _mm256_blendv_ps(y, _mm256_or_ps(sign, _mm256_set1_ps(1.0f)), big);
}

/* ---------------------------------------------------------------------------------------- */
/* AVX-512: exact, fast and K-TanH tanh/sigmoid on 16 floats in registers                   */
/* ---------------------------------------------------------------------------------------- */
/* exp: 2^n * p(r), x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial (rel. err ~2e-7). */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 __m512 dlcpu_exp_avx512(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.0f)), _mm512_set1_ps(88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* 1 / d to ~1 ulp: rcp14 plus one Newton step instead of vdivps (the fused LSTM tiles need five
 * reciprocals per row; tiles and reciprocals together took the forward time loop from 194-225
 * to 209-240 GFLOP/s and the backward from 172-217 to 219-246 on one core).  Relative error:
 * within 2.5e-7 for sigmoid and tanh, test_activation_relative_accuracy. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 __m512 dlcpu_recip_avx512(__m512 d)
{
    const __m512 r = _mm512_rcp14_ps(d);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 __m512 dlcpu_sigmoid_avx512(__m512 x)
{
    const __m512 e = dlcpu_exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x));
    __m512 s = dlcpu_recip_avx512(_mm512_add_ps(_mm512_set1_ps(1.0f), e));
    /* Below -88 the clamped exp leaves s at 6e-39 where the true value is smaller still, and swish
     * multiplies it by x (up to 3e38): give 0 (the scalar 1/(1 + expf(-x)) is below 6e-39 there
     * and reaches 0 at -88.7). */
    s = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-88.0f), _CMP_NLT_UQ), s);
    /* NaN in, NaN out (the clamp in exp would otherwise turn it into a number). */
    return _mm512_mask_mov_ps(s, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 __m512 dlcpu_tanh_avx512(__m512 x)
{
    /* |x| >= 1/4: tanh |x| = (1 - e) / (1 + e), e = exp(-2|x|) <= 0.61, so 1 - e loses at most
     * a factor 1.6 to cancellation and large |x| saturate cleanly.  |x| < 1/4: the odd series
     * x + x^3 (-1/3 + x^2 (2/15 + x^2 (-17/315 + x^2 62/2835))), truncation below 1e-8
     * relative.  (The exp form alone returned 0 for tanh(1e-8) and lost ~1e-5 relative at
     * 1e-3, which the relative-L2 tests could not see.) */
    const __m512 ax = _mm512_abs_ps(x);
    const __m512 e = dlcpu_exp_avx512(_mm512_mul_ps(ax, _mm512_set1_ps(-2.0f)));
    __m512 t = _mm512_mul_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), e),
                             dlcpu_recip_avx512(_mm512_add_ps(_mm512_set1_ps(1.0f), e)));
    const __m512 x2 = _mm512_mul_ps(ax, ax);
    __m512 p = _mm512_fmadd_ps(x2, _mm512_set1_ps(62.0f / 2835), _mm512_set1_ps(-17.0f / 315));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(2.0f / 15));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-1.0f / 3));
    const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, x2), ax, ax);
    t = _mm512_mask_mov_ps(t, _mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.25f), _CMP_LT_OQ), small);
    /* the sign of x onto tanh |x| >= 0 by OR, so that tanh(-0) = -0 */
    t = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(t), _mm512_castps_si512(x),
                                                      _mm512_set1_epi32((int)0x80000000u), 0xF8));
    return _mm512_mask_mov_ps(t, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 __m512 dlcpu_tanh_fast_avx512(__m512 x)
{
    const __m512 x2 = _mm512_mul_ps(x, x);
    __m512 p = _mm512_fmadd_ps(x2, _mm512_set1_ps(36.0f), _mm512_set1_ps(6930.0f));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(270270.0f));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(2027025.0f));
    __m512 q = _mm512_add_ps(x2, _mm512_set1_ps(630.0f));
    q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(51975.0f));
    q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(945945.0f));
    q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(2027025.0f));
    const __m512 y = _mm512_mul_ps(_mm512_mul_ps(x, p), dlcpu_recip_avx512(q));
    const __mmask16 big = _mm512_cmp_ps_mask(_mm512_abs_ps(x), _mm512_set1_ps(DLCPU_PADE_CLAMP), _CMP_GT_OQ);
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u));
    const __m512 one = _mm512_castsi512_ps(_mm512_or_si512(sign, _mm512_set1_epi32(0x3F800000)));
    return _mm512_mask_mov_ps(y, big, one);
}

/* K-TanH's tables for fp32 lanes, two zmm each (rows 0-15, 16-31): base << 16 and shift, so the
 * output mantissa is formed in place in the upper half of the word (no shifts down and back). */
typedef struct { __m512i base_lo, base_hi, shift_lo, shift_hi; } dlcpu_ktanh_regs_t;

static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 dlcpu_ktanh_regs_t
dlcpu_ktanh_regs_from(const int32_t *entry)
{
    const __m512i lo = _mm512_loadu_si512(entry), hi = _mm512_loadu_si512(entry + 16);
    dlcpu_ktanh_regs_t r = {_mm512_slli_epi32(lo, 16), _mm512_slli_epi32(hi, 16),
                            _mm512_srli_epi32(lo, 16), _mm512_srli_epi32(hi, 16)};
    return r;
}

static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 dlcpu_ktanh_regs_t
dlcpu_ktanh_regs(const uint16_t *base, const uint16_t *shift)
{
    int32_t entry[32];
    dlcpu_ktanh_entries(base, shift, entry);
    return dlcpu_ktanh_regs_from(entry);
}

/* 15 ops per 16 lanes: sign merge and the clearing of the low half are one vpternlog each; the
 * region tests are one unsigned compare each ((a - 0.25) > (Inf - 0.25) after wrap-around covers
 * both the identity region and NaN). */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 __m512
dlcpu_ktanh_avx512(__m512 x, dlcpu_ktanh_regs_t k)
{
    const __m512i u = _mm512_castps_si512(x);
    const __m512i absm = _mm512_set1_epi32(0x7FFFFFFF);
    const __m512i a = _mm512_and_si512(u, absm);
    /* vpermt2d reads the low 5 bits of the index: (u >> 20) needs no mask */
    const __m512i t = _mm512_srli_epi32(u, 20);
    const __m512i c = _mm512_permutex2var_epi32(k.base_lo, t, k.base_hi);
    const __m512i r = _mm512_permutex2var_epi32(k.shift_lo, t, k.shift_hi);
    const __m512i m = _mm512_and_si512(u, _mm512_set1_epi32(0x007F0000));
    const __m512i sum = _mm512_add_epi32(c, _mm512_srlv_epi32(m, r));
    /* vpternlog 0xCA is the bit select A ? B : C: out = (sum & 0x7FFF0000) | (u & ~0x7FFF0000),
     * then the low half cleared */
    __m512i out = _mm512_ternarylogic_epi32(_mm512_set1_epi32(0x7FFF0000), sum, u, 0xCA);
    out = _mm512_and_si512(out, _mm512_set1_epi32((int)0xFFFF0000u));
    const __mmask16 keep = _mm512_cmpgt_epu32_mask(_mm512_sub_epi32(a, _mm512_set1_epi32((int)(DLCPU_KT_LO << 16))),
                                                   _mm512_set1_epi32((int)((DLCPU_KT_INF - DLCPU_KT_LO) << 16)));
    const __mmask16 sat = _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32((int)(DLCPU_KT_HI << 16)));
    out = _mm512_mask_mov_epi32(out, sat, _mm512_ternarylogic_epi32(absm, _mm512_set1_epi32((int)(DLCPU_KT_ONE << 16)),
                                                                    u, 0xCA));
    return _mm512_castsi512_ps(_mm512_mask_mov_epi32(out, keep, u));
}

/* bf16 in, bf16 out: 32 lanes of 16 bits, each table one zmm, each lookup one vpermw.  On the
 * Xeon this was tuned on, ports 0 and 5 run every 512-bit op, so the body is counted in ops:
 * sign and magnitude merge in one vpternlog (select), and the two region tests are one unsigned
 * compare each: keep (identity or NaN) is (a - 0.25) > (Inf - 0.25) after wrap-around, and
 * saturation is a > 3.75 (a NaN lane is in both; keep is applied last). */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 __m512i
dlcpu_ktanh_bf16x32_avx512(__m512i v, __m512i tb, __m512i ts)
{
    const __m512i absm = _mm512_set1_epi16(0x7FFF);
    const __m512i a = _mm512_and_si512(v, absm);
    const __m512i idx = _mm512_srli_epi16(v, 4);                /* vpermw reads its low 5 bits */
    const __m512i c = _mm512_permutexvar_epi16(idx, tb), r = _mm512_permutexvar_epi16(idx, ts);
    const __m512i mag = _mm512_add_epi16(c, _mm512_srlv_epi16(_mm512_and_si512(v, _mm512_set1_epi16(0x7F)), r));
    /* 0xCA: bits of B where A is set, bits of C elsewhere (A = mask 0x7FFF, B = mag, C = v) */
    __m512i out = _mm512_ternarylogic_epi32(absm, mag, v, 0xCA);
    const __mmask32 keep = _mm512_cmpgt_epu16_mask(_mm512_sub_epi16(a, _mm512_set1_epi16((short)DLCPU_KT_LO)),
                                                   _mm512_set1_epi16((short)(DLCPU_KT_INF - DLCPU_KT_LO)));
    const __mmask32 sat = _mm512_cmpgt_epu16_mask(a, _mm512_set1_epi16((short)DLCPU_KT_HI));
    out = _mm512_mask_mov_epi16(out, sat, _mm512_ternarylogic_epi32(absm, _mm512_set1_epi16((short)DLCPU_KT_ONE),
                                                                    v, 0xCA));
    return _mm512_mask_mov_epi16(out, keep, v);
}

static DLCPU_TARGET_AVX512 void dlcpu_ktanh_bf16_avx512(const uint16_t *x, uint16_t *y, int64_t n,
                                                       const uint16_t *base, const uint16_t *shift)
{
    const __m512i tb = _mm512_loadu_si512(base), ts = _mm512_loadu_si512(shift);
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {      /* two independent vectors per trip hide vpermw latency */
        const __m512i v0 = _mm512_loadu_si512(x + i), v1 = _mm512_loadu_si512(x + i + 32);
        _mm512_storeu_si512(y + i, dlcpu_ktanh_bf16x32_avx512(v0, tb, ts));
        _mm512_storeu_si512(y + i + 32, dlcpu_ktanh_bf16x32_avx512(v1, tb, ts));
    }
    for (; i < n; i += 32) {
        const __mmask32 lanes = i + 32 <= n ? 0xFFFFFFFFu : (__mmask32)((1ull << (n - i)) - 1);
        const __m512i v = _mm512_maskz_loadu_epi16(lanes, x + i);
        _mm512_mask_storeu_epi16(y + i, lanes, dlcpu_ktanh_bf16x32_avx512(v, tb, ts));
    }
}

static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 __m512
dlcpu_tanh_impl_avx512(__m512 x, int impl, dlcpu_ktanh_regs_t k)
{
    if (impl == DLCPU_ACT_KTANH) return dlcpu_ktanh_avx512(x, k);
    if (impl == DLCPU_ACT_FAST) return dlcpu_tanh_fast_avx512(x);
    return dlcpu_tanh_avx512(x);
}

static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 __m512
dlcpu_sigmoid_impl_avx512(__m512 x, int impl, dlcpu_ktanh_regs_t k)
{
    if (impl == DLCPU_ACT_EXACT) return dlcpu_sigmoid_avx512(x);
    const __m512 h = _mm512_set1_ps(0.5f);
    return _mm512_fmadd_ps(h, dlcpu_tanh_impl_avx512(_mm512_mul_ps(h, x), impl, k), h);
}

/* ---------------------------------------------------------------------------------------- */
/* Element-wise forward and backward of tanh, sigmoid, swish, GELU over one chunk            */
/* ---------------------------------------------------------------------------------------- */
/* One AVX-512 loop per (op, impl): the switch sits outside the loops and every body inlines
 * with a constant impl (a switch per vector cost 20% on the K-TanH loop). */
#define DLCPU_MAP_AVX512(EXPR)                                                               \
    do {                                                                                     \
        int64_t i = 0;                                                                       \
        for (; i + 16 <= n; i += 16) {       /* whole vectors: plain loads and stores */     \
            const __m512 v = _mm512_loadu_ps(x + i);                                         \
            const __m512 d = dy ? _mm512_loadu_ps(dy + i) : v;                               \
            (void)d;                                                                         \
            _mm512_storeu_ps(y + i, EXPR);                                                   \
        }                                                                                    \
        if (i < n) {                         /* the tail under a lane mask */                \
            const __mmask16 lanes = (__mmask16)((1u << (n - i)) - 1);                        \
            const __m512 v = _mm512_maskz_loadu_ps(lanes, x + i);                            \
            const __m512 d = dy ? _mm512_maskz_loadu_ps(lanes, dy + i) : v;                  \
            (void)d;                                                                         \
            _mm512_mask_storeu_ps(y + i, lanes, EXPR);                                       \
        }                                                                                    \
    } while (0)

/* Backward passes take their derivative at x clamped to +-limit (NaN kept): past it the functions
 * are flat to float precision, and the clamp keeps x^2 and beta x finite, where 0 * inf would
 * otherwise give NaN (GELU at |x| >= 1.9e19, swish when beta x overflows). */
#define DLCPU_GELU_FLAT 10.0f      /* |u| = 43 there: every flavour's tanh is +-1 */
#define DLCPU_SWISH_FLAT 100.0f    /* sigmoid is 1 or below 4e-44 there */

static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 __m512 dlcpu_clamp_avx512(__m512 x, float limit)
{
    const __mmask16 big = _mm512_cmp_ps_mask(_mm512_abs_ps(x), _mm512_set1_ps(limit), _CMP_GT_OQ);
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u));
    return _mm512_mask_mov_ps(x, big, _mm512_castsi512_ps(_mm512_or_si512(sign, _mm512_castps_si512(_mm512_set1_ps(limit)))));
}

static inline float dlcpu_clamp1(float x, float limit)
{
    return fabsf(x) > limit ? copysignf(limit, x) : x;
}

static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 void
dlcpu_act_avx512_impl(int op, int backward, const int impl, const float *x, const float *dy, float *y,
                      int64_t n, float beta, dlcpu_ktanh_regs_t k)
{
    const __m512 one = _mm512_set1_ps(1.0f), h = _mm512_set1_ps(0.5f), b = _mm512_set1_ps(beta);
    const __m512 c0 = _mm512_set1_ps(DLCPU_GELU_C0), c1 = _mm512_set1_ps(DLCPU_GELU_C1);
    const __m512 c3 = _mm512_set1_ps(3.0f * DLCPU_GELU_C1);
    switch (op * 2 + backward) {
    case DLCPU_OP_TANH * 2:
        DLCPU_MAP_AVX512(dlcpu_tanh_impl_avx512(v, impl, k));
        break;
    case DLCPU_OP_TANH * 2 + 1:         /* x holds y = tanh(x) */
        DLCPU_MAP_AVX512(_mm512_mul_ps(d, _mm512_fnmadd_ps(v, v, one)));
        break;
    case DLCPU_OP_SIGMOID * 2:
        DLCPU_MAP_AVX512(dlcpu_sigmoid_impl_avx512(v, impl, k));
        break;
    case DLCPU_OP_SIGMOID * 2 + 1:      /* x holds y = sigmoid(x) */
        DLCPU_MAP_AVX512(_mm512_mul_ps(d, _mm512_mul_ps(v, _mm512_sub_ps(one, v))));
        break;
    case DLCPU_OP_SWISH * 2:
        DLCPU_MAP_AVX512(_mm512_mul_ps(v, dlcpu_sigmoid_impl_avx512(_mm512_mul_ps(b, v), impl, k)));
        break;
    case DLCPU_OP_SWISH * 2 + 1: {      /* s + beta x s (1 - s), s = sigmoid(beta x) */
#define DLCPU_SWISH_GRAD(V)                                                                  \
        ({ const __m512 bx = dlcpu_clamp_avx512(_mm512_mul_ps(b, V), DLCPU_SWISH_FLAT);      \
           const __m512 s = dlcpu_sigmoid_impl_avx512(bx, impl, k);                          \
           _mm512_mul_ps(s, _mm512_fmadd_ps(bx, _mm512_sub_ps(one, s), one)); })
        DLCPU_MAP_AVX512(_mm512_mul_ps(d, DLCPU_SWISH_GRAD(v)));
#undef DLCPU_SWISH_GRAD
        break;
    }
    case DLCPU_OP_GELU * 2:
        DLCPU_MAP_AVX512(({
            const __m512 hx = _mm512_mul_ps(h, v);
            const __m512 u = _mm512_mul_ps(v, _mm512_fmadd_ps(c1, _mm512_mul_ps(v, v), c0));
            _mm512_fmadd_ps(hx, dlcpu_tanh_impl_avx512(u, impl, k), hx); }));
        break;
    case DLCPU_OP_GELU * 2 + 1:         /* (1 + t)/2 + x/2 (1 - t^2) (c0 + 3 c1 x^2) */
        DLCPU_MAP_AVX512(({
            const __m512 xc = dlcpu_clamp_avx512(v, DLCPU_GELU_FLAT);
            const __m512 x2 = _mm512_mul_ps(xc, xc);
            const __m512 t = dlcpu_tanh_impl_avx512(_mm512_mul_ps(xc, _mm512_fmadd_ps(c1, x2, c0)), impl, k);
            const __m512 du = _mm512_fmadd_ps(c3, x2, c0);
            const __m512 g = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_mul_ps(h, xc), _mm512_fnmadd_ps(t, t, one)), du,
                                             _mm512_fmadd_ps(h, t, h));
            _mm512_mul_ps(d, g); }));
        break;
    }
}

static DLCPU_TARGET_AVX512 void
dlcpu_act_avx512(int op, int backward, int impl, const float *x, const float *dy, float *y, int64_t n,
                 float beta, const uint16_t *base, const uint16_t *shift)
{
    const dlcpu_ktanh_regs_t k = dlcpu_ktanh_regs(base, shift);
    if (impl == DLCPU_ACT_KTANH) dlcpu_act_avx512_impl(op, backward, DLCPU_ACT_KTANH, x, dy, y, n, beta, k);
    else if (impl == DLCPU_ACT_FAST) dlcpu_act_avx512_impl(op, backward, DLCPU_ACT_FAST, x, dy, y, n, beta, k);
    else dlcpu_act_avx512_impl(op, backward, DLCPU_ACT_EXACT, x, dy, y, n, beta, k);
}

/* Scalar and AVX2 paths: one element at a time through the scalar definitions, except the
 * fast tanh and K-TanH, which AVX2 runs 8 lanes at a time (they are what AVX2 users time). */
static inline float dlcpu_act1(int op, int backward, int impl, float v, float d, float beta,
                               const uint16_t *base, const uint16_t *shift)
{
    switch (op * 2 + backward) {
    case DLCPU_OP_TANH * 2: return dlcpu_tanh_scalar1(v, impl, base, shift);
    case DLCPU_OP_TANH * 2 + 1: return d * (1.0f - v * v);
    case DLCPU_OP_SIGMOID * 2: return dlcpu_sigmoid_scalar1(v, impl, base, shift);
    case DLCPU_OP_SIGMOID * 2 + 1: return d * (v * (1.0f - v));
    case DLCPU_OP_SWISH * 2: return v * dlcpu_sigmoid_scalar1(beta * v, impl, base, shift);
    case DLCPU_OP_SWISH * 2 + 1: {
        const float bx = dlcpu_clamp1(beta * v, DLCPU_SWISH_FLAT), s = dlcpu_sigmoid_scalar1(bx, impl, base, shift);
        return d * (s * fmaf(bx, 1.0f - s, 1.0f));
    }
    case DLCPU_OP_GELU * 2: {
        const float hx = 0.5f * v;
        return fmaf(hx, dlcpu_tanh_scalar1(v * fmaf(DLCPU_GELU_C1, v * v, DLCPU_GELU_C0), impl, base, shift), hx);
    }
    default: {
        const float xc = dlcpu_clamp1(v, DLCPU_GELU_FLAT), x2 = xc * xc;
        const float t = dlcpu_tanh_scalar1(xc * fmaf(DLCPU_GELU_C1, x2, DLCPU_GELU_C0), impl, base, shift);
        const float du = fmaf(3.0f * DLCPU_GELU_C1, x2, DLCPU_GELU_C0);
        return d * fmaf((0.5f * xc) * (1.0f - t * t), du, fmaf(0.5f, t, 0.5f));
    }
    }
}

static void dlcpu_act_scalar(int op, int backward, int impl, const float *x, const float *dy, float *y,
                             int64_t n, float beta, const uint16_t *base, const uint16_t *shift)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = dlcpu_act1(op, backward, impl, x[i], dy ? dy[i] : 0.0f, beta, base, shift);
}

static DLCPU_TARGET_AVX2 void dlcpu_act_avx2(int op, int backward, int impl, const float *x, const float *dy,
                                             float *y, int64_t n, float beta, const uint16_t *base,
                                             const uint16_t *shift)
{
    int64_t i = 0;
    if (op == DLCPU_OP_TANH && !backward && impl != DLCPU_ACT_EXACT) {
        int32_t own[32];
        const int32_t *entry = dlcpu_ktanh_published_entry;
        if (base != dlcpu_ktanh_published_base || shift != dlcpu_ktanh_published_shift) {
            dlcpu_ktanh_entries(base, shift, own);      /* a fitted table: built once per call */
            entry = own;
        }
        for (; i + 8 <= n; i += 8) {
            const __m256 v = _mm256_loadu_ps(x + i);
            const __m256 r = impl == DLCPU_ACT_FAST ? dlcpu_tanh_fast_avx2(v)
                : _mm256_castsi256_ps(dlcpu_ktanh_u32_avx2(_mm256_castps_si256(v), entry));
            _mm256_storeu_ps(y + i, r);
        }
    }
    dlcpu_act_scalar(op, backward, impl, x + i, dy ? dy + i : NULL, y + i, n - i, beta, base, shift);
}

static inline void dlcpu_act(int isa, int op, int backward, int impl, const float *x, const float *dy, float *y,
                             int64_t n, float beta, const uint16_t *base, const uint16_t *shift)
{
    if (isa == DLCPU_ISA_AVX512) dlcpu_act_avx512(op, backward, impl, x, dy, y, n, beta, base, shift);
    else if (isa == DLCPU_ISA_AVX2) dlcpu_act_avx2(op, backward, impl, x, dy, y, n, beta, base, shift);
    else dlcpu_act_scalar(op, backward, impl, x, dy, y, n, beta, base, shift);
}

static inline void dlcpu_ktanh_bf16(int isa, const uint16_t *x, uint16_t *y, int64_t n, const uint16_t *base,
                                    const uint16_t *shift)
{
    if (isa == DLCPU_ISA_AVX512) dlcpu_ktanh_bf16_avx512(x, y, n, base, shift);
    else if (isa == DLCPU_ISA_AVX2) dlcpu_ktanh_bf16_avx2(x, y, n, base, shift);
    else dlcpu_ktanh_bf16_scalar(x, y, n, base, shift);
}

/* ---------------------------------------------------------------------------------------- */
/* Softmax rows: exp (max-shifted) or Taylor of even order n (never shifted)                */
/* ---------------------------------------------------------------------------------------- */
/* Horner from the top: f_n(z) = 1 + z (1 + z/2 (1 + z/3 (... (1 + z/n)))) as coefficients
 * 1/k!, n FMAs per element and no exp, max or second pass over the input. */
static inline void dlcpu_taylor_coeffs(int order, float *c)
{
    double f = 1.0;
    for (int k = 0; k <= order; k++) {
        if (k) f /= k;
        c[k] = (float)f;
    }
}

static inline float dlcpu_taylor1(float z, int order, const float *c)
{
    float p = c[order];
    for (int k = order - 1; k >= 0; k--) p = fmaf(p, z, c[k]);
    return p;
}

static void dlcpu_softmax_rows_scalar(int kind, int order, const float *z, float *p, int64_t rows, int64_t cols)
{
    float c[16];
    if (kind == DLCPU_SOFTMAX_TAYLOR) dlcpu_taylor_coeffs(order, c);
    for (int64_t r = 0; r < rows; r++) {
        const float *zr = z + r * cols;
        float *pr = p + r * cols;
        double sum = 0.0;
        if (kind == DLCPU_SOFTMAX_TAYLOR) {
            for (int64_t j = 0; j < cols; j++) sum += (pr[j] = dlcpu_taylor1(zr[j], order, c));
        } else {
            float m = -INFINITY;
            for (int64_t j = 0; j < cols; j++) m = zr[j] > m ? zr[j] : m;
            for (int64_t j = 0; j < cols; j++) sum += (pr[j] = expf(zr[j] - m));
        }
        const float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < cols; j++) pr[j] *= inv;
    }
}

/* Pieces both AVX-512 row kernels (forward, backward) share. */
static inline __attribute__((always_inline)) __mmask16 dlcpu_lanes16(int64_t j, int64_t n)
{
    return j + 16 <= n ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
}

/* The row's maximum for the exp softmax, or 0 when the row must come out NaN (vmaxps drops NaN,
 * and the exp clamp would turn inf - inf into a number): a NaN or +Inf in the row, or nothing
 * above -Inf, as the scalar path computes it. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 int
dlcpu_row_max_avx512(const float *zr, int64_t cols, float *top)
{
    __m512 mx = _mm512_set1_ps(-INFINITY);
    __mmask16 bad = 0;
    for (int64_t j = 0; j < cols; j += 16) {
        const __mmask16 lanes = dlcpu_lanes16(j, cols);
        const __m512 v = _mm512_maskz_loadu_ps(lanes, zr + j);
        bad |= _mm512_mask_cmp_ps_mask(lanes, v, v, _CMP_UNORD_Q) |
               _mm512_mask_cmp_ps_mask(lanes, v, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ);
        mx = _mm512_mask_max_ps(mx, lanes, mx, v);
    }
    *top = _mm512_reduce_max_ps(mx);
    return !bad && *top != -INFINITY;
}

/* f of one vector: f_order(v) by Horner (Taylor), or exp(v - m) with lanes below the exp's clamp
 * at -88 (a masked -inf logit, or one far below the maximum) exactly 0. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 __m512
dlcpu_softmax_f_avx512(__m512 v, int taylor, int order, const float *c, __m512 m)
{
    if (taylor) {
        __m512 f = _mm512_set1_ps(c[order]);
        for (int k = order - 1; k >= 0; k--) f = _mm512_fmadd_ps(f, v, _mm512_set1_ps(c[k]));
        return f;
    }
    const __m512 s = _mm512_sub_ps(v, m);
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(s, _mm512_set1_ps(-88.0f), _CMP_GE_OQ), dlcpu_exp_avx512(s));
}

/* Row sums: float lanes over blocks of 1024 columns, the blocks added in double (a float
 * accumulator alone was off by 3e-3 at 2^22 classes). */
#define DLCPU_ROW_BLOCK_END(j) (((j) & 1023) == 1008)

/* One row, forward; `taylor` is a constant at each call below, so each kind gets its own loop
 * (a run-time test per vector cost the Taylor rows 30-40%). */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 void
dlcpu_softmax_row_avx512(const float *zr, float *pr, int64_t cols, const int taylor, int order, const float *c)
{
    float top = 0.0f;
    if (!taylor && !dlcpu_row_max_avx512(zr, cols, &top)) {
        for (int64_t j = 0; j < cols; j++) pr[j] = NAN;
        return;
    }
    const __m512 m = _mm512_set1_ps(top);
    __m512 acc = _mm512_setzero_ps();
    double sum = 0.0;
    for (int64_t j = 0; j < cols; j += 16) {
        const __mmask16 lanes = dlcpu_lanes16(j, cols);
        const __m512 f = dlcpu_softmax_f_avx512(_mm512_maskz_loadu_ps(lanes, zr + j), taylor, order, c, m);
        acc = _mm512_mask_add_ps(acc, lanes, acc, f);
        _mm512_mask_storeu_ps(pr + j, lanes, f);
        if (DLCPU_ROW_BLOCK_END(j)) {
            sum += _mm512_reduce_add_ps(acc);
            acc = _mm512_setzero_ps();
        }
    }
    sum += _mm512_reduce_add_ps(acc);
    const __m512 inv = _mm512_set1_ps((float)(1.0 / sum));
    for (int64_t j = 0; j < cols; j += 16) {
        const __mmask16 lanes = dlcpu_lanes16(j, cols);
        _mm512_mask_storeu_ps(pr + j, lanes, _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, pr + j), inv));
    }
}

static DLCPU_TARGET_AVX512 void dlcpu_softmax_rows_avx512(int kind, int order, const float *z, float *p,
                                                         int64_t rows, int64_t cols)
{
    float c[16];
    if (kind == DLCPU_SOFTMAX_TAYLOR) {
        dlcpu_taylor_coeffs(order, c);
        for (int64_t r = 0; r < rows; r++) dlcpu_softmax_row_avx512(z + r * cols, p + r * cols, cols, 1, order, c);
    } else {
        for (int64_t r = 0; r < rows; r++) dlcpu_softmax_row_avx512(z + r * cols, p + r * cols, cols, 0, 0, c);
    }
}

static inline void dlcpu_softmax_rows(int isa, int kind, int order, const float *z, float *p, int64_t rows,
                                      int64_t cols)
{
    if (isa == DLCPU_ISA_AVX512) dlcpu_softmax_rows_avx512(kind, order, z, p, rows, cols);
    else dlcpu_softmax_rows_scalar(kind, order, z, p, rows, cols);
}

/* ---------------------------------------------------------------------------------------- */
/* Softmax rows, backward: dz from dp, recomputing f from z (nothing of the forward is kept)  */
/* ---------------------------------------------------------------------------------------- */
/* With f = exp(z - max) or f_n(z), S = sum f, p = f / S and dot = sum dp p = (sum dp f) / S:
 *   dz_j = g_j / S (dp_j - dot),  g = f_{n-1} (Taylor, exact gradient) or f (exp, or the
 *   softmax-style gradient, which treats f_n as exp).
 * Pass 1 forms S and sum dp f (float lanes, blocks of 1024 columns added in double, as the
 * forward); pass 2 recomputes g and writes dz. */
static void dlcpu_softmax_bwd_rows_scalar(int kind, int order, int exact, const float *z, const float *dp, float *dz,
                                          int64_t rows, int64_t cols)
{
    float c[16];
    const int taylor = kind == DLCPU_SOFTMAX_TAYLOR;
    if (taylor) dlcpu_taylor_coeffs(order, c);
    const int g_order = taylor && exact ? order - 1 : order;
    for (int64_t r = 0; r < rows; r++) {
        const float *zr = z + r * cols, *dr = dp + r * cols;
        float *out = dz + r * cols;
        float m = -INFINITY;
        if (!taylor)
            for (int64_t j = 0; j < cols; j++) m = zr[j] > m ? zr[j] : m;
        double sum = 0.0, dsum = 0.0;
        for (int64_t j = 0; j < cols; j++) {
            const float f = taylor ? dlcpu_taylor1(zr[j], order, c) : expf(zr[j] - m);
            sum += f;
            dsum += (double)dr[j] * f;
        }
        const float inv = (float)(1.0 / sum), dot = (float)(dsum / sum);
        for (int64_t j = 0; j < cols; j++) {
            const float g = taylor ? dlcpu_taylor1(zr[j], g_order, c) : expf(zr[j] - m);
            out[j] = g * inv * (dr[j] - dot);
        }
    }
}

static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 void
dlcpu_softmax_bwd_row_avx512(const float *zr, const float *dr, float *out, int64_t cols, const int taylor, int order,
                             int g_order, const float *c)
{
    float top = 0.0f;
    if (!taylor && !dlcpu_row_max_avx512(zr, cols, &top)) {
        for (int64_t j = 0; j < cols; j++) out[j] = NAN;
        return;
    }
    const __m512 m = _mm512_set1_ps(top);
    __m512 acc = _mm512_setzero_ps(), dacc = _mm512_setzero_ps();
    double sum = 0.0, dsum = 0.0;
    for (int64_t j = 0; j < cols; j += 16) {
        const __mmask16 lanes = dlcpu_lanes16(j, cols);
        const __m512 f = dlcpu_softmax_f_avx512(_mm512_maskz_loadu_ps(lanes, zr + j), taylor, order, c, m);
        acc = _mm512_mask_add_ps(acc, lanes, acc, f);
        dacc = _mm512_mask3_fmadd_ps(_mm512_maskz_loadu_ps(lanes, dr + j), f, dacc, lanes);  /* tail: keep dacc */
        if (DLCPU_ROW_BLOCK_END(j)) {
            sum += _mm512_reduce_add_ps(acc);
            dsum += _mm512_reduce_add_ps(dacc);
            acc = dacc = _mm512_setzero_ps();
        }
    }
    sum += _mm512_reduce_add_ps(acc);
    dsum += _mm512_reduce_add_ps(dacc);
    const __m512 inv = _mm512_set1_ps((float)(1.0 / sum)), dot = _mm512_set1_ps((float)(dsum / sum));
    for (int64_t j = 0; j < cols; j += 16) {
        const __mmask16 lanes = dlcpu_lanes16(j, cols);
        const __m512 g = dlcpu_softmax_f_avx512(_mm512_maskz_loadu_ps(lanes, zr + j), taylor, g_order, c, m);
        const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, dr + j), dot);
        _mm512_mask_storeu_ps(out + j, lanes, _mm512_mul_ps(_mm512_mul_ps(g, inv), d));
    }
}

static DLCPU_TARGET_AVX512 void dlcpu_softmax_bwd_rows_avx512(int kind, int order, int exact, const float *z,
                                                             const float *dp, float *dz, int64_t rows, int64_t cols)
{
    float c[16];
    if (kind == DLCPU_SOFTMAX_TAYLOR) {
        dlcpu_taylor_coeffs(order, c);
        const int g_order = exact ? order - 1 : order;
        for (int64_t r = 0; r < rows; r++)
            dlcpu_softmax_bwd_row_avx512(z + r * cols, dp + r * cols, dz + r * cols, cols, 1, order, g_order, c);
    } else {
        for (int64_t r = 0; r < rows; r++)
            dlcpu_softmax_bwd_row_avx512(z + r * cols, dp + r * cols, dz + r * cols, cols, 0, 0, 0, c);
    }
}

static inline void dlcpu_softmax_bwd_rows(int isa, int kind, int order, int exact, const float *z, const float *dp,
                                          float *dz, int64_t rows, int64_t cols)
{
    if (isa == DLCPU_ISA_AVX512) dlcpu_softmax_bwd_rows_avx512(kind, order, exact, z, dp, dz, rows, cols);
    else dlcpu_softmax_bwd_rows_scalar(kind, order, exact, z, dp, dz, rows, cols);
}
#endif
