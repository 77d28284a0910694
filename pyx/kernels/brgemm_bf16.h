/*
 * bf16 batch-reduce GEMM microkernels: C (+)= sum_i A_i * B_i with bf16 operands and fp32
 * accumulation and output -- brgemm_f32.h's tiles and epilogue, with the reduction taken in
 * pairs of channels.
 *
 * Layouts (DESIGN.md §3, VNNI pairs): a 16-channel block of A is [8 pairs][16 outputs][2], so
 * one 512-bit load holds the two channels of a pair for all 16 outputs; B keeps the activation
 * layout, 16 bf16 per pixel, so pixel j's pair p is the 32-bit word at b + j*16 + 2p and one
 * broadcast feeds the pair's dot product.  A block of k < 16 channels (a first layer's 3) reads
 * ceil(k/2) pairs; the padding channel of an odd k is zero in both operands.
 *
 * Paths, all accumulating in fp32:
 *   AVX-512 + avx512_bf16   VDPBF16PS: per lane, acc += a_even*b_even + a_odd*b_odd -- half the
 *                           instructions of the fp32 kernel for the same FLOPs;
 *   AVX-512, AVX2, scalar   the same sum as two FMAs on the pair widened to fp32 (a bf16 -> fp32
 *                           conversion is a 16-bit shift): correct everywhere, as fast as fp32.
 * The products of two bf16 values are exact in fp32, so the paths differ only in how the sums
 * round (VDPBF16PS also flushes denormal inputs and outputs).  Callers compare against a float64
 * reference with bf16-sized tolerances.
 *
 * Register tiles follow brgemm_f32.h (mv groups of 16 outputs x nr rows x nc pixels); only the
 * nr = 1 tiles are built, which is what the GEMM driver asks for.
 */
#ifndef DLCPU_BRGEMM_BF16_H
#define DLCPU_BRGEMM_BF16_H

#include <stdint.h>
#include <string.h>
#include <immintrin.h>
#include "isa.h"
#include "tiles.h"
#include "brgemm_f32.h"

#define DLCPU_TARGET_AVX512BF16 \
    __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,avx2,fma")))

typedef struct {
    const uint16_t *a, *b;              /* bases */
    const int64_t *a_offs, *b_offs;     /* offs variant, in elements */
    int64_t a_stride, b_stride;         /* strd variant, in elements */
    int64_t batch;
    int kind;                           /* DLCPU_BR_STRD or DLCPU_BR_OFFS */
    int k;                              /* channels of one block, 1..16 (ceil(k/2) pairs are read) */
    int mv, nr, nc;
    int64_t a_mstride, b_rstride;
    float *c;
    int64_t ldc, c_rstride, c_mstride;
    int beta;
    const float *bias;
    int relu;
} dlcpu_brgemm_bf16_t;

static inline __attribute__((always_inline)) void
dlcpu_br16_block(const dlcpu_brgemm_bf16_t *p, int64_t i, const uint16_t **a, const uint16_t **b)
{
    if (p->kind == DLCPU_BR_STRD) {
        *a = p->a + i * p->a_stride;
        *b = p->b + i * p->b_stride;
    } else {
        *a = p->a + p->a_offs[i];
        *b = p->b + p->b_offs[i];
    }
}

/* The 32-bit word holding pixel j's channel pair (unaligned-safe). */
static inline __attribute__((always_inline)) int32_t dlcpu_br16_pair(const uint16_t *at)
{
    int32_t v;
    memcpy(&v, at, sizeof v);
    return v;
}

/* Epilogue shared by the AVX-512 bodies: beta, bias, ReLU, store. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 void
dlcpu_br16_store_avx512(const dlcpu_brgemm_bf16_t *p, const __m512 *acc, const int MV, const int NC)
{
#pragma GCC unroll 2
    for (int g = 0; g < MV; g++) {
        const __m512 bias = p->bias ? _mm512_loadu_ps(p->bias + 16 * g) : _mm512_setzero_ps();
#pragma GCC unroll 28
        for (int j = 0; j < NC; j++) {
            float *c = p->c + g * p->c_mstride + j * p->ldc;
            __m512 v = acc[g * NC + j];
            if (p->beta) v = _mm512_add_ps(v, _mm512_loadu_ps(c));
            v = _mm512_add_ps(v, bias);
            if (p->relu) v = _mm512_max_ps(_mm512_setzero_ps(), v);
            _mm512_storeu_ps(c, v);
        }
    }
}

/* ------------------------------------------------------------------ AVX-512 with avx512_bf16 */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512BF16 void
dlcpu_brgemm_bf16_native_body(const dlcpu_brgemm_bf16_t *p, const int MV, const int NC)
{
    __m512 acc[DLCPU_AVX512_MAX_ACC];
    const int pairs = (p->k + 1) / 2;
#pragma GCC unroll 28
    for (int t = 0; t < MV * NC; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < p->batch; i++) {
        const uint16_t *a, *b;
        dlcpu_br16_block(p, i, &a, &b);
        if (i + 1 < p->batch) {
            const uint16_t *an, *bn;
            dlcpu_br16_block(p, i + 1, &an, &bn);
            _mm_prefetch((const char *)an, _MM_HINT_T0);
            _mm_prefetch((const char *)(an + 128), _MM_HINT_T0);
            if (MV > 1) _mm_prefetch((const char *)(an + p->a_mstride), _MM_HINT_T0);
        }
        for (int q = 0; q < pairs; q++) {
            const __m512bh w0 = (__m512bh)_mm512_loadu_si512(a + q * 32);
            const __m512bh w1 = MV > 1 ? (__m512bh)_mm512_loadu_si512(a + p->a_mstride + q * 32) : w0;
#pragma GCC unroll 28
            for (int j = 0; j < NC; j++) {
                const __m512bh x = (__m512bh)_mm512_set1_epi32(dlcpu_br16_pair(b + j * 16 + 2 * q));
                acc[j] = _mm512_dpbf16_ps(acc[j], w0, x);
                if (MV > 1) acc[NC + j] = _mm512_dpbf16_ps(acc[NC + j], w1, x);
            }
        }
    }
    dlcpu_br16_store_avx512(p, acc, MV, NC);
}

/* ---------------------------------------------------------- AVX-512 without avx512_bf16 */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 void
dlcpu_brgemm_bf16_avx512_body(const dlcpu_brgemm_bf16_t *p, const int MV, const int NC)
{
    __m512 acc[DLCPU_AVX512_MAX_ACC];
    const int pairs = (p->k + 1) / 2;
    const __m512i hi_mask = _mm512_set1_epi32((int)0xFFFF0000u);
#pragma GCC unroll 28
    for (int t = 0; t < MV * NC; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < p->batch; i++) {
        const uint16_t *a, *b;
        dlcpu_br16_block(p, i, &a, &b);
        for (int q = 0; q < pairs; q++) {
            __m512 we[2], wo[2];
            for (int g = 0; g < MV; g++) {
                const __m512i w = _mm512_loadu_si512(a + g * p->a_mstride + q * 32);
                we[g] = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));          /* channel 2q */
                wo[g] = _mm512_castsi512_ps(_mm512_and_si512(w, hi_mask));      /* channel 2q+1 */
            }
#pragma GCC unroll 28
            for (int j = 0; j < NC; j++) {
                const uint32_t v = (uint32_t)dlcpu_br16_pair(b + j * 16 + 2 * q);
                const __m512 xe = _mm512_castsi512_ps(_mm512_set1_epi32((int)(v << 16)));
                const __m512 xo = _mm512_castsi512_ps(_mm512_set1_epi32((int)(v & 0xFFFF0000u)));
                for (int g = 0; g < MV; g++)
                    acc[g * NC + j] = _mm512_fmadd_ps(wo[g], xo, _mm512_fmadd_ps(we[g], xe, acc[g * NC + j]));
            }
        }
    }
    dlcpu_br16_store_avx512(p, acc, MV, NC);
}

/* ------------------------------------------------------------------------------------- AVX2 */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX2 void
dlcpu_brgemm_bf16_avx2_body(const dlcpu_brgemm_bf16_t *p, const int MV, const int NC)
{
    __m256 acc[2 * DLCPU_AVX2_MAX_ACC];      /* group g, pixel j, half h at (g*NC + j)*2 + h */
    const int pairs = (p->k + 1) / 2;
    const __m256i hi_mask = _mm256_set1_epi32((int)0xFFFF0000u);
#pragma GCC unroll 12
    for (int t = 0; t < 2 * MV * NC; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < p->batch; i++) {
        const uint16_t *a, *b;
        dlcpu_br16_block(p, i, &a, &b);
        for (int q = 0; q < pairs; q++) {
            __m256 we[4], wo[4];
            for (int g = 0; g < MV; g++)
                for (int h = 0; h < 2; h++) {
                    const __m256i w = _mm256_loadu_si256((const __m256i *)(a + g * p->a_mstride + q * 32 + h * 16));
                    we[g * 2 + h] = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
                    wo[g * 2 + h] = _mm256_castsi256_ps(_mm256_and_si256(w, hi_mask));
                }
#pragma GCC unroll 6
            for (int j = 0; j < NC; j++) {
                const uint32_t v = (uint32_t)dlcpu_br16_pair(b + j * 16 + 2 * q);
                const __m256 xe = _mm256_castsi256_ps(_mm256_set1_epi32((int)(v << 16)));
                const __m256 xo = _mm256_castsi256_ps(_mm256_set1_epi32((int)(v & 0xFFFF0000u)));
                for (int t = 0; t < 2 * MV; t++) {
                    __m256 *c = &acc[((t >> 1) * NC + j) * 2 + (t & 1)];
                    *c = _mm256_fmadd_ps(wo[t], xo, _mm256_fmadd_ps(we[t], xe, *c));
                }
            }
        }
    }
    for (int g = 0; g < MV; g++)
        for (int j = 0; j < NC; j++)
            for (int h = 0; h < 2; h++) {
                float *c = p->c + g * p->c_mstride + j * p->ldc + 8 * h;
                __m256 v = acc[(g * NC + j) * 2 + h];
                if (p->beta) v = _mm256_add_ps(v, _mm256_loadu_ps(c));
                if (p->bias) v = _mm256_add_ps(v, _mm256_loadu_ps(p->bias + 16 * g + 8 * h));
                if (p->relu) v = _mm256_max_ps(_mm256_setzero_ps(), v);
                _mm256_storeu_ps(c, v);
            }
}

/* ----------------------------------------------------------------------------------- scalar */
static inline float dlcpu_bf16_value(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void dlcpu_brgemm_bf16_scalar(const dlcpu_brgemm_bf16_t *p)
{
    float acc[DLCPU_SCALAR_MAX_ACC][16];
    const int pairs = (p->k + 1) / 2;
    memset(acc, 0, sizeof(acc));
    for (int64_t i = 0; i < p->batch; i++) {
        const uint16_t *a, *b;
        dlcpu_br16_block(p, i, &a, &b);
        for (int g = 0; g < p->mv; g++)
            for (int j = 0; j < p->nc; j++)
                for (int q = 0; q < pairs; q++) {
                    const float xe = dlcpu_bf16_value(b[j * 16 + 2 * q]), xo = dlcpu_bf16_value(b[j * 16 + 2 * q + 1]);
                    const uint16_t *w = a + g * p->a_mstride + q * 32;
                    for (int m = 0; m < 16; m++)
                        acc[g * p->nc + j][m] += dlcpu_bf16_value(w[2 * m]) * xe + dlcpu_bf16_value(w[2 * m + 1]) * xo;
                }
    }
    for (int g = 0; g < p->mv; g++)
        for (int j = 0; j < p->nc; j++) {
            float *c = p->c + g * p->c_mstride + j * p->ldc;
            for (int m = 0; m < 16; m++) {
                float v = acc[g * p->nc + j][m];
                if (p->beta) v += c[m];
                if (p->bias) v += p->bias[16 * g + m];
                if (p->relu && v < 0.0f) v = 0.0f;
                c[m] = v;
            }
        }
}

/* ------------------------------------------------------------------------ instances, dispatch */
typedef void (*dlcpu_brgemm_bf16_fn)(const dlcpu_brgemm_bf16_t *);

#define DLCPU_BR16_INST(FLAVOUR, TARGET, MV, NC)                                                  \
    static TARGET void dlcpu_brgemm_bf16_##FLAVOUR##_##MV##_##NC(const dlcpu_brgemm_bf16_t *p)    \
    { dlcpu_brgemm_bf16_##FLAVOUR##_body(p, MV, NC); }
#define DLCPU_BR16_SLOT(FLAVOUR, TARGET, MV, NC) [MV - 1][NC - 1] = dlcpu_brgemm_bf16_##FLAVOUR##_##MV##_##NC,

#define DLCPU_BR16_AVX512_TILES(X, F, T)                                                          \
    X(F,T,1,1) X(F,T,1,2) X(F,T,1,3) X(F,T,1,4) X(F,T,1,5) X(F,T,1,6) X(F,T,1,7) X(F,T,1,8)        \
    X(F,T,1,9) X(F,T,1,10) X(F,T,1,11) X(F,T,1,12) X(F,T,1,13) X(F,T,1,14) X(F,T,1,15)            \
    X(F,T,1,16) X(F,T,1,17) X(F,T,1,18) X(F,T,1,19) X(F,T,1,20) X(F,T,1,21) X(F,T,1,22)           \
    X(F,T,1,23) X(F,T,1,24) X(F,T,1,25) X(F,T,1,26) X(F,T,1,27) X(F,T,1,28)                       \
    X(F,T,2,1) X(F,T,2,2) X(F,T,2,3) X(F,T,2,4) X(F,T,2,5) X(F,T,2,6) X(F,T,2,7) X(F,T,2,8)        \
    X(F,T,2,9) X(F,T,2,10) X(F,T,2,11) X(F,T,2,12) X(F,T,2,13) X(F,T,2,14)
#define DLCPU_BR16_AVX2_TILES(X, F, T)                                                            \
    X(F,T,1,1) X(F,T,1,2) X(F,T,1,3) X(F,T,1,4) X(F,T,1,5) X(F,T,1,6) X(F,T,2,1) X(F,T,2,2) X(F,T,2,3)

DLCPU_BR16_AVX512_TILES(DLCPU_BR16_INST, native, DLCPU_TARGET_AVX512BF16)
DLCPU_BR16_AVX512_TILES(DLCPU_BR16_INST, avx512, DLCPU_TARGET_AVX512)
DLCPU_BR16_AVX2_TILES(DLCPU_BR16_INST, avx2, DLCPU_TARGET_AVX2)

static const dlcpu_brgemm_bf16_fn dlcpu_brgemm_bf16_native_table[DLCPU_BR_MAX_MV][DLCPU_BR_MAX_NC] = {
    DLCPU_BR16_AVX512_TILES(DLCPU_BR16_SLOT, native, _)
};
static const dlcpu_brgemm_bf16_fn dlcpu_brgemm_bf16_avx512_table[DLCPU_BR_MAX_MV][DLCPU_BR_MAX_NC] = {
    DLCPU_BR16_AVX512_TILES(DLCPU_BR16_SLOT, avx512, _)
};
static const dlcpu_brgemm_bf16_fn dlcpu_brgemm_bf16_avx2_table[DLCPU_BR_MAX_MV][DLCPU_BR_MAX_NC] = {
    DLCPU_BR16_AVX2_TILES(DLCPU_BR16_SLOT, avx2, _)
};

/* The kernel for (isa, native, mv, nc) with nr = 1; NULL when that tile was not built. */
static inline dlcpu_brgemm_bf16_fn dlcpu_brgemm_bf16_lookup(int isa, int native, int mv, int nr, int nc)
{
    if (mv < 1 || mv > DLCPU_BR_MAX_MV || nr != 1 || nc < 1 || nc > DLCPU_BR_MAX_NC)
        return NULL;
    if (isa == DLCPU_ISA_AVX512)
        return native ? dlcpu_brgemm_bf16_native_table[mv - 1][nc - 1] : dlcpu_brgemm_bf16_avx512_table[mv - 1][nc - 1];
    if (isa == DLCPU_ISA_AVX2) return dlcpu_brgemm_bf16_avx2_table[mv - 1][nc - 1];
    if (isa == DLCPU_ISA_SCALAR && mv * nc <= DLCPU_SCALAR_MAX_ACC) return dlcpu_brgemm_bf16_scalar;
    return NULL;
}

/* Run one call; 0, or -1 when no kernel exists for the tile. */
static inline int dlcpu_brgemm_bf16(const dlcpu_brgemm_bf16_t *p, int isa, int native)
{
    const dlcpu_brgemm_bf16_fn f = dlcpu_brgemm_bf16_lookup(isa, native, p->mv, p->nr, p->nc);
    if (f == NULL || p->k < 1 || p->k > 16) return -1;
    f(p);
    return 0;
}

#endif
