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
 *   AVX-512 + avx512_bf16   VDPBF16PS: per lane, acc = (acc + a_odd*b_odd) + a_even*b_even, each
 *                           step rounded -- half the instructions of the fp32 kernel for the
 *                           same FLOPs;
 *   AVX-512, AVX2, scalar   the same two steps as FMAs on the pair widened to fp32 (bf16 -> fp32
 *                           is a 16-bit shift), odd channel first: correct everywhere, as fast
 *                           as fp32.
 * A product of two bf16 values is exact in fp32, so an FMA rounds exactly where VDPBF16PS does
 * and the paths give the same bits (measured on this project's Zen CPU, tested); they can differ
 * only where VDPBF16PS flushes a denormal input or output to zero.  Every channel of a block is
 * read, padding too: padded channels must hold zeros, as the blocked layouts promise.
 *
 * Register tiles are brgemm_f32.h's (mv groups of 16 outputs x nr rows x nc pixels) and the
 * instance tables list the same tiles, so a plan checked against the fp32 table (dlcpu/_plans.py)
 * finds its bf16 kernels too.
 */
#ifndef DLCPU_BRGEMM_BF16_H
#define DLCPU_BRGEMM_BF16_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <immintrin.h>
#include "isa.h"
#include "tiles.h"
#include "brgemm_f32.h"

#define DLCPU_TARGET_AVX512BF16 \
    __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,avx2,fma")))

/* A call is described by brgemm_f32.h's dlcpu_brgemm_f32_t (geometry, offsets, C, epilogue);
 * its float operand pointers are unused and the bf16 bases a0, b0 come beside it.  Block i's A
 * and B (strd or offs; no bf16 kernel reads pointer arrays or transposed B): */
static inline __attribute__((always_inline)) void
dlcpu_br16_block(const dlcpu_brgemm_f32_t *p, const uint16_t *a0, const uint16_t *b0, int64_t i,
                 const uint16_t **a, const uint16_t **b)
{
    if (p->kind == DLCPU_BR_STRD) {
        *a = a0 + i * p->a_stride;
        *b = b0 + i * p->b_stride;
    } else {
        *a = a0 + p->a_offs[i];
        *b = b0 + p->b_offs[i];
    }
}

/* The 32-bit word holding pixel j's channel pair (unaligned-safe). */
static inline __attribute__((always_inline)) int32_t dlcpu_br16_pair(const uint16_t *at)
{
    int32_t v;
    memcpy(&v, at, sizeof v);
    return v;
}

/* ------------------------------------------------------------------ AVX-512 with avx512_bf16 */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512BF16 void
dlcpu_brgemm_bf16_native_body(const dlcpu_brgemm_f32_t *p, const uint16_t *a0, const uint16_t *b0, const int MV,
                              const int NR, const int NC)
{
    __m512 acc[DLCPU_AVX512_MAX_ACC];
    const int NP = NR * NC;
    const int pairs = (p->k + 1) / 2;
#pragma GCC unroll 28
    for (int t = 0; t < MV * NP; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < p->batch; i++) {
        const uint16_t *a, *b;
        dlcpu_br16_block(p, a0, b0, i, &a, &b);
        if (i + 1 < p->batch) {
            const uint16_t *an, *bn;
            dlcpu_br16_block(p, a0, b0, i + 1, &an, &bn);
            _mm_prefetch((const char *)an, _MM_HINT_T0);
            _mm_prefetch((const char *)(an + 128), _MM_HINT_T0);
            if (MV > 1) _mm_prefetch((const char *)(an + p->a_mstride), _MM_HINT_T0);
        }
        for (int q = 0; q < pairs; q++) {
            const __m512bh w0 = (__m512bh)_mm512_loadu_si512(a + q * 32);
            const __m512bh w1 = MV > 1 ? (__m512bh)_mm512_loadu_si512(a + p->a_mstride + q * 32) : w0;
#pragma GCC unroll 16
            for (int r = 0; r < NR; r++) {
                const uint16_t *br = b + r * p->b_rstride + 2 * q;
#pragma GCC unroll 28
                for (int j = 0; j < NC; j++) {
                    const __m512bh x = (__m512bh)_mm512_set1_epi32(dlcpu_br16_pair(br + j * 16));
                    acc[r * NC + j] = _mm512_dpbf16_ps(acc[r * NC + j], w0, x);
                    if (MV > 1) acc[NP + r * NC + j] = _mm512_dpbf16_ps(acc[NP + r * NC + j], w1, x);
                }
            }
        }
    }
    dlcpu_br_store_avx512(p, acc, MV, NP, NC);
}

/* ---------------------------------------------------------- AVX-512 without avx512_bf16 */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 void
dlcpu_brgemm_bf16_avx512_body(const dlcpu_brgemm_f32_t *p, const uint16_t *a0, const uint16_t *b0, const int MV,
                              const int NR, const int NC)
{
    __m512 acc[DLCPU_AVX512_MAX_ACC];
    const int NP = NR * NC;
    const int pairs = (p->k + 1) / 2;
    const __m512i hi_mask = _mm512_set1_epi32((int)0xFFFF0000u);
#pragma GCC unroll 28
    for (int t = 0; t < MV * NP; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < p->batch; i++) {
        const uint16_t *a, *b;
        dlcpu_br16_block(p, a0, b0, i, &a, &b);
        for (int q = 0; q < pairs; q++) {
            __m512 we[2], wo[2];
            for (int g = 0; g < MV; g++) {
                const __m512i w = _mm512_loadu_si512(a + g * p->a_mstride + q * 32);
                we[g] = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));          /* channel 2q */
                wo[g] = _mm512_castsi512_ps(_mm512_and_si512(w, hi_mask));      /* channel 2q+1 */
            }
#pragma GCC unroll 28
            for (int t = 0; t < NP; t++) {
                const uint32_t v = (uint32_t)dlcpu_br16_pair(b + (t / NC) * p->b_rstride + (t % NC) * 16 + 2 * q);
                const __m512 xe = _mm512_castsi512_ps(_mm512_set1_epi32((int)(v << 16)));
                const __m512 xo = _mm512_castsi512_ps(_mm512_set1_epi32((int)(v & 0xFFFF0000u)));
                for (int g = 0; g < MV; g++)
                    acc[g * NP + t] = _mm512_fmadd_ps(we[g], xe, _mm512_fmadd_ps(wo[g], xo, acc[g * NP + t]));
            }
        }
    }
    dlcpu_br_store_avx512(p, acc, MV, NP, NC);
}

/* ------------------------------------------------------------------------------------- AVX2 */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX2 void
dlcpu_brgemm_bf16_avx2_body(const dlcpu_brgemm_f32_t *p, const uint16_t *a0, const uint16_t *b0, const int MV,
                              const int NR, const int NC)
{
    __m256 acc[2 * DLCPU_AVX2_MAX_ACC];      /* group g, pixel t, half h at (g*NP + t)*2 + h */
    const int NP = NR * NC;
    const int pairs = (p->k + 1) / 2;
    const __m256i hi_mask = _mm256_set1_epi32((int)0xFFFF0000u);
#pragma GCC unroll 12
    for (int t = 0; t < 2 * MV * NP; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < p->batch; i++) {
        const uint16_t *a, *b;
        dlcpu_br16_block(p, a0, b0, i, &a, &b);
        for (int q = 0; q < pairs; q++) {
            __m256 we[4], wo[4];
            for (int g = 0; g < MV; g++)
                for (int h = 0; h < 2; h++) {
                    const __m256i w = _mm256_loadu_si256((const __m256i *)(a + g * p->a_mstride + q * 32 + h * 16));
                    we[g * 2 + h] = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
                    wo[g * 2 + h] = _mm256_castsi256_ps(_mm256_and_si256(w, hi_mask));
                }
#pragma GCC unroll 6
            for (int t = 0; t < NP; t++) {
                const uint32_t v = (uint32_t)dlcpu_br16_pair(b + (t / NC) * p->b_rstride + (t % NC) * 16 + 2 * q);
                const __m256 xe = _mm256_castsi256_ps(_mm256_set1_epi32((int)(v << 16)));
                const __m256 xo = _mm256_castsi256_ps(_mm256_set1_epi32((int)(v & 0xFFFF0000u)));
                for (int u = 0; u < 2 * MV; u++) {
                    __m256 *c = &acc[((u >> 1) * NP + t) * 2 + (u & 1)];
                    *c = _mm256_fmadd_ps(we[u], xe, _mm256_fmadd_ps(wo[u], xo, *c));
                }
            }
        }
    }
    dlcpu_br_store_avx2(p, acc, MV, NP, NC);
}

/* ----------------------------------------------------------------------------------- scalar */
static inline float dlcpu_bf16_value(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void dlcpu_brgemm_bf16_scalar(const dlcpu_brgemm_f32_t *p, const uint16_t *a0, const uint16_t *b0)
{
    float acc[DLCPU_SCALAR_MAX_ACC][16];
    const int pairs = (p->k + 1) / 2, NP = p->nr * p->nc;
    memset(acc, 0, sizeof(acc));
    for (int64_t i = 0; i < p->batch; i++) {
        const uint16_t *a, *b;
        dlcpu_br16_block(p, a0, b0, i, &a, &b);
        for (int g = 0; g < p->mv; g++)
            for (int t = 0; t < NP; t++)
                for (int q = 0; q < pairs; q++) {
                    const uint16_t *x = b + (t / p->nc) * p->b_rstride + (t % p->nc) * 16 + 2 * q;
                    const float xe = dlcpu_bf16_value(x[0]), xo = dlcpu_bf16_value(x[1]);
                    const uint16_t *w = a + g * p->a_mstride + q * 32;
                    for (int m = 0; m < 16; m++)
                        acc[g * NP + t][m] = fmaf(dlcpu_bf16_value(w[2 * m]), xe,
                                                  fmaf(dlcpu_bf16_value(w[2 * m + 1]), xo, acc[g * NP + t][m]));
                }
    }
    dlcpu_br_store_scalar(p, acc, NP);
}

/* ------------------------------------------------------------------------ instances, dispatch */
typedef void (*dlcpu_brgemm_bf16_fn)(const dlcpu_brgemm_f32_t *, const uint16_t *, const uint16_t *);

#define DLCPU_BR16_INST(FLAVOUR, TARGET, MV, NR, NC)                                                  \
    static TARGET void dlcpu_brgemm_bf16_##FLAVOUR##_##MV##_##NR##_##NC(                          \
        const dlcpu_brgemm_f32_t *p, const uint16_t *a0, const uint16_t *b0)                         \
    { dlcpu_brgemm_bf16_##FLAVOUR##_body(p, a0, b0, MV, NR, NC); }
#define DLCPU_BR16_SLOT(FLAVOUR, TARGET, MV, NR, NC) \
    [MV - 1][NR - 1][NC - 1] = dlcpu_brgemm_bf16_##FLAVOUR##_##MV##_##NR##_##NC,

/* brgemm_f32.h's tile lists (DLCPU_BR_*_TILES), each entry X(ISA, MV, NR, NC), re-entered here
 * for one bf16 flavour: the same tiles, so the same plans run. */
#define DLCPU_BR16_ADAPT_native(ISA, MV, NR, NC) DLCPU_BR16_EMIT(native, DLCPU_TARGET_AVX512BF16, MV, NR, NC)
#define DLCPU_BR16_ADAPT_avx512(ISA, MV, NR, NC) DLCPU_BR16_EMIT(avx512, DLCPU_TARGET_AVX512, MV, NR, NC)
#define DLCPU_BR16_ADAPT_avx2(ISA, MV, NR, NC) DLCPU_BR16_EMIT(avx2, DLCPU_TARGET_AVX2, MV, NR, NC)

#define DLCPU_BR16_EMIT DLCPU_BR16_INST
DLCPU_BR_AVX512_TILES(DLCPU_BR16_ADAPT_native)
DLCPU_BR_AVX512_TILES(DLCPU_BR16_ADAPT_avx512)
DLCPU_BR_AVX2_TILES(DLCPU_BR16_ADAPT_avx2)
DLCPU_BR_AVX512_ROW_TILES(DLCPU_BR16_ADAPT_native)
DLCPU_BR_AVX512_ROW_TILES(DLCPU_BR16_ADAPT_avx512)
#undef DLCPU_BR16_EMIT

#define DLCPU_BR16_EMIT DLCPU_BR16_SLOT
static const dlcpu_brgemm_bf16_fn dlcpu_brgemm_bf16_native_table[DLCPU_BR_MAX_MV][DLCPU_BR_MAX_NR][DLCPU_BR_MAX_NC] = {
    DLCPU_BR_AVX512_TILES(DLCPU_BR16_ADAPT_native)
};
static const dlcpu_brgemm_bf16_fn dlcpu_brgemm_bf16_avx512_table[DLCPU_BR_MAX_MV][DLCPU_BR_MAX_NR][DLCPU_BR_MAX_NC] = {
    DLCPU_BR_AVX512_TILES(DLCPU_BR16_ADAPT_avx512)
};
static const dlcpu_brgemm_bf16_fn dlcpu_brgemm_bf16_avx2_table[DLCPU_BR_MAX_MV][DLCPU_BR_MAX_NR][DLCPU_BR_MAX_NC] = {
    DLCPU_BR_AVX2_TILES(DLCPU_BR16_ADAPT_avx2)
};
#undef DLCPU_BR16_EMIT

#define DLCPU_BR16_ROW_SLOT(FLAVOUR, TARGET, MV, NR, NC) [MV - 1][NR - 1] = dlcpu_brgemm_bf16_##FLAVOUR##_##MV##_##NR##_##NC,
#define DLCPU_BR16_EMIT DLCPU_BR16_ROW_SLOT
static const dlcpu_brgemm_bf16_fn dlcpu_brgemm_bf16_native_rows[DLCPU_BR_MAX_MV][DLCPU_BR_ROWS_MAX_NR] = {
    DLCPU_BR_AVX512_ROW_TILES(DLCPU_BR16_ADAPT_native)
};
static const dlcpu_brgemm_bf16_fn dlcpu_brgemm_bf16_avx512_rows[DLCPU_BR_MAX_MV][DLCPU_BR_ROWS_MAX_NR] = {
    DLCPU_BR_AVX512_ROW_TILES(DLCPU_BR16_ADAPT_avx512)
};
#undef DLCPU_BR16_EMIT

/* The kernel for (isa, native, mv, nr, nc); NULL when that tile was not built. */
static inline dlcpu_brgemm_bf16_fn dlcpu_brgemm_bf16_lookup(int isa, int native, int mv, int nr, int nc)
{
    if (isa == DLCPU_ISA_AVX512 && nc == 1 && mv >= 1 && mv <= DLCPU_BR_MAX_MV && nr > DLCPU_BR_MAX_NR
            && nr <= DLCPU_BR_ROWS_MAX_NR)     /* a row tile (NULL past 14 rows with mv = 2) */
        return native ? dlcpu_brgemm_bf16_native_rows[mv - 1][nr - 1] : dlcpu_brgemm_bf16_avx512_rows[mv - 1][nr - 1];
    if (mv < 1 || mv > DLCPU_BR_MAX_MV || nr < 1 || nr > DLCPU_BR_MAX_NR || nc < 1 || nc > DLCPU_BR_MAX_NC)
        return NULL;
    if (isa == DLCPU_ISA_AVX512)
        return native ? dlcpu_brgemm_bf16_native_table[mv - 1][nr - 1][nc - 1]
                      : dlcpu_brgemm_bf16_avx512_table[mv - 1][nr - 1][nc - 1];
    if (isa == DLCPU_ISA_AVX2) return dlcpu_brgemm_bf16_avx2_table[mv - 1][nr - 1][nc - 1];
    if (isa == DLCPU_ISA_SCALAR && mv * nr * nc <= DLCPU_SCALAR_MAX_ACC) return dlcpu_brgemm_bf16_scalar;
    return NULL;
}

/* Run one call described by p on bf16 operands a0, b0; 0, or -1 when no kernel exists for it
 * (the tile, pointer-array blocks or transposed B). */
static inline int dlcpu_brgemm_bf16(const dlcpu_brgemm_f32_t *p, const uint16_t *a0, const uint16_t *b0, int isa,
                                    int native)
{
    const dlcpu_brgemm_bf16_fn f = dlcpu_brgemm_bf16_lookup(isa, native, p->mv, p->nr, p->nc);
    if (f == NULL || p->kind == DLCPU_BR_ADDR || p->b_trans || p->k < 1 || p->k > 16) return -1;
    f(p, a0, b0);
    return 0;
}

#endif
