/*
 * fp32 batch-reduce GEMM microkernels: C (+)= sum_i A_i * B_i, the one building block of dlcpu.
 *
 * Shapes, in the blocked vocabulary of the convolution that drives them:
 *   A_i  k x 16*mv  : weights, row kk of output-channel group g at  a + g*a_mstride + kk*16
 *   B_i  n x k      : pixels,  pixel (row r, col j) channel kk at   b + r*b_rstride + j*16 + kk
 *   C    n x 16*mv  : outputs, pixel (r, j) of group g at           c + g*c_mstride + r*c_rstride + j*ldc
 * with n = nr*nc pixels, k <= 16 (one channel block) and the pixel stride of B fixed at 16 floats:
 * that is what the blocked layout I[N][C/16][H][W][16] gives, and it lets every broadcast use an
 * immediate displacement, so the hot loop does one vector load per group and one broadcast-FMA
 * per accumulator and nothing else.
 *
 * The C tile (mv*nr*nc vectors) lives in registers for the whole batch; it is read (beta=1) or
 * zeroed (beta=0) once and written once, after the fused epilogue (bias add, ReLU).
 * Blocks are addressed three ways (LIBXSMM's names): strd (constant element strides), offs
 * (element offset arrays) and addr (pointer arrays).  The three share one body; the variant is
 * resolved once per batch element, which costs nothing next to the 16*mv*n FMAs per block.
 *
 * Transposed-B flavour (b_trans=1, used by the convolution weight update): the roles of the two
 * B strides swap, so B element (tile row j, reduction index kk) sits at  b + kk*16 + j  and k may
 * be any length.  There the reduction runs over pixels (kk), the 16-wide vector is the output
 * channel k of dy, and the C tile rows j are input channels c: exactly a dW[.][.][r][s][16c][16k]
 * block.  Only mv=1 tiles are built for it; nr > 1 stacks several taps that share the A operand
 * (dy) but read B at b + r*b_rstride and write C at c + r*c_rstride (few-channel first layers:
 * 4 taps x 3 channels keep 12 accumulators busy instead of 3).
 *
 * One body per ISA, instantiated for every register block the planner may ask for, picked at
 * run time from a table.  Measured on Zen 5 (3x3, C=K=64, 56x56 rows): mv=2 x 14 pixels reaches
 * 262 GFLOP/s, 99% of one core's FMA peak, mv=1 x 28 pixels 243, mv=1 x 14 pixels 227 --
 * sharing each broadcast between two FMAs is what closes the gap, so the planner prefers mv=2.
 * No allocation, no threads, no error reporting beyond a return code.
 */
#ifndef DLCPU_BRGEMM_F32_H
#define DLCPU_BRGEMM_F32_H

#include <stdint.h>
#include <string.h>
#include <immintrin.h>
#include "isa.h"
#include "tiles.h"

enum { DLCPU_BR_STRD = 0, DLCPU_BR_OFFS = 1, DLCPU_BR_ADDR = 2 };

typedef struct {
    const float *a, *b;                 /* bases (strd, offs) */
    const float *const *a_ptrs;         /* addr variant */
    const float *const *b_ptrs;
    const int64_t *a_offs, *b_offs;     /* offs variant, in elements */
    int64_t a_stride, b_stride;         /* strd variant, in elements */
    int64_t batch;
    int kind;
    int k;                              /* reduction length of one block, 1..16 */
    int mv, nr, nc;                     /* register block: mv groups of 16 x nr rows x nc cols */
    int64_t a_mstride;                  /* A: between the mv output-channel groups */
    int64_t b_rstride;                  /* B: between pixel rows */
    float *c;
    int64_t ldc, c_rstride, c_mstride;  /* C: pixel, row and group strides */
    int beta;                           /* 0 overwrite, 1 accumulate */
    const float *bias;                  /* NULL or 16*mv floats */
    int relu;
    int b_trans;                        /* 1: B element (j, kk) at b + kk*16 + j (weight update) */
} dlcpu_brgemm_f32_t;

static inline __attribute__((always_inline)) void
dlcpu_br_block(const dlcpu_brgemm_f32_t *p, int64_t i, const float **a, const float **b)
{
    if (p->kind == DLCPU_BR_STRD) {
        *a = p->a + i * p->a_stride;
        *b = p->b + i * p->b_stride;
    } else if (p->kind == DLCPU_BR_OFFS) {
        *a = p->a + p->a_offs[i];
        *b = p->b + p->b_offs[i];
    } else {
        *a = p->a_ptrs[i];
        *b = p->b_ptrs[i];
    }
}

/* The register budgets (DLCPU_*_MAX_ACC) and table bounds come from tiles.h. */

/* Epilogues, shared by the fp32 and bf16 kernels (brgemm_bf16.h): the accumulator tile of group
 * g, pixel t (row t / NC, column t % NC) gets beta*C, the bias and the ReLU, and is stored. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 void
dlcpu_br_store_avx512(const dlcpu_brgemm_f32_t *p, const __m512 *acc, const int MV, const int NP, const int NC)
{
#pragma GCC unroll 2
    for (int g = 0; g < MV; g++) {
        const __m512 bias = p->bias ? _mm512_loadu_ps(p->bias + 16 * g) : _mm512_setzero_ps();
#pragma GCC unroll 28
        for (int t = 0; t < NP; t++) {
            float *c = p->c + g * p->c_mstride + (t / NC) * p->c_rstride + (t % NC) * p->ldc;
            __m512 v = acc[g * NP + t];
            if (p->beta) v = _mm512_add_ps(v, _mm512_loadu_ps(c));
            v = _mm512_add_ps(v, bias);
            if (p->relu) v = _mm512_max_ps(_mm512_setzero_ps(), v); /* NaN passes through */
            _mm512_storeu_ps(c, v);
        }
    }
}

/* AVX2: a 16-float group is two ymm halves, group g pixel t half h at acc[(g*NP + t)*2 + h]. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX2 void
dlcpu_br_store_avx2(const dlcpu_brgemm_f32_t *p, const __m256 *acc, const int MV, const int NP, const int NC)
{
#pragma GCC unroll 2
    for (int g = 0; g < MV; g++) {
#pragma GCC unroll 12
        for (int t = 0; t < NP; t++) {
            float *c = p->c + g * p->c_mstride + (t / NC) * p->c_rstride + (t % NC) * p->ldc;
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                __m256 v = acc[(g * NP + t) * 2 + h];
                if (p->beta) v = _mm256_add_ps(v, _mm256_loadu_ps(c + 8 * h));
                if (p->bias) v = _mm256_add_ps(v, _mm256_loadu_ps(p->bias + 16 * g + 8 * h));
                if (p->relu) v = _mm256_max_ps(_mm256_setzero_ps(), v);
                _mm256_storeu_ps(c + 8 * h, v);
            }
        }
    }
}

static inline void dlcpu_br_store_scalar(const dlcpu_brgemm_f32_t *p, float (*acc)[16], int NP)
{
    for (int g = 0; g < p->mv; g++)
        for (int t = 0; t < NP; t++) {
            float *c = p->c + g * p->c_mstride + (t / p->nc) * p->c_rstride + (t % p->nc) * p->ldc;
            for (int m = 0; m < 16; m++) {
                float v = acc[g * NP + t][m];
                if (p->beta) v += c[m];
                if (p->bias) v += p->bias[16 * g + m];
                if (p->relu && v < 0.0f) v = 0.0f;
                c[m] = v;
            }
        }
}

/* ------------------------------------------------------------------------------------------ */
/* AVX-512                                                                                     */
/* ------------------------------------------------------------------------------------------ */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 void
dlcpu_brgemm_f32_avx512_body(const dlcpu_brgemm_f32_t *p, const int MV, const int NR, const int NC,
                             const int BT)
{
    __m512 acc[DLCPU_AVX512_MAX_ACC];
    const int NP = NR * NC;
    const int k = p->k;

#pragma GCC unroll 28
    for (int t = 0; t < MV * NP; t++) acc[t] = _mm512_setzero_ps();

    for (int64_t i = 0; i < p->batch; i++) {
        const float *a, *b;
        dlcpu_br_block(p, i, &a, &b);
        if (!BT && k >= 8 && i + 1 < p->batch) {
            /* Prefetch the next A block (one 1 KiB weight block per group) into L1 while this
             * block's FMAs run; B rows are walked sequentially and the hardware prefetcher
             * keeps up with them.  With k < 8 (first layers, C=3) a block is too short to hide
             * the prefetch's own cost: skipping it measured +4% on ResNet-50 conv1.  The
             * transposed flavour streams long pixel runs, which the hardware prefetcher covers. */
            const float *an, *bn;
            dlcpu_br_block(p, i + 1, &an, &bn);
            _mm_prefetch((const char *)(an), _MM_HINT_T0);
            _mm_prefetch((const char *)(an + 16 * (k - 1)), _MM_HINT_T0);
            _mm_prefetch((const char *)(bn), _MM_HINT_T0);
            if (MV > 1) _mm_prefetch((const char *)(an + p->a_mstride), _MM_HINT_T0);
        }
        for (int kk = 0; kk < k; kk++) {
            const __m512 w0 = _mm512_loadu_ps(a + kk * 16);
            const __m512 w1 = MV > 1 ? _mm512_loadu_ps(a + p->a_mstride + kk * 16) : w0;
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) {
                const float *br = b + r * p->b_rstride + (BT ? kk * 16 : kk);
#pragma GCC unroll 28
                for (int j = 0; j < NC; j++) {
                    const __m512 x = _mm512_set1_ps(br[BT ? j : j * 16]);
                    acc[r * NC + j] = _mm512_fmadd_ps(w0, x, acc[r * NC + j]);
                    if (MV > 1) acc[NP + r * NC + j] = _mm512_fmadd_ps(w1, x, acc[NP + r * NC + j]);
                }
            }
        }
    }

    dlcpu_br_store_avx512(p, acc, MV, NP, NC);
}

/* ------------------------------------------------------------------------------------------ */
/* AVX2 + FMA: a 16-float group is two ymm halves                                             */
/* ------------------------------------------------------------------------------------------ */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX2 void
dlcpu_brgemm_f32_avx2_body(const dlcpu_brgemm_f32_t *p, const int MV, const int NR, const int NC,
                           const int BT)
{
    __m256 acc[2 * DLCPU_AVX2_MAX_ACC];
    const int NP = NR * NC;
    const int k = p->k;

#pragma GCC unroll 12
    for (int t = 0; t < 2 * MV * NP; t++) acc[t] = _mm256_setzero_ps();

    for (int64_t i = 0; i < p->batch; i++) {
        const float *a, *b;
        dlcpu_br_block(p, i, &a, &b);
        if (!BT && i + 1 < p->batch) {
            const float *an, *bn;
            dlcpu_br_block(p, i + 1, &an, &bn);
            _mm_prefetch((const char *)(an), _MM_HINT_T0);
            _mm_prefetch((const char *)(bn), _MM_HINT_T0);
        }
        for (int kk = 0; kk < k; kk++) {
            __m256 w[4];
            w[0] = _mm256_loadu_ps(a + kk * 16);
            w[1] = _mm256_loadu_ps(a + kk * 16 + 8);
            if (MV > 1) {
                w[2] = _mm256_loadu_ps(a + p->a_mstride + kk * 16);
                w[3] = _mm256_loadu_ps(a + p->a_mstride + kk * 16 + 8);
            }
#pragma GCC unroll 6
            for (int r = 0; r < NR; r++) {
                const float *br = b + r * p->b_rstride + (BT ? kk * 16 : kk);
#pragma GCC unroll 6
                for (int j = 0; j < NC; j++) {
                    const __m256 x = _mm256_broadcast_ss(br + (BT ? j : j * 16));
#pragma GCC unroll 4
                    for (int h = 0; h < 2 * MV; h++) {
                        const int t = (h >> 1) * 2 * NP + (r * NC + j) * 2 + (h & 1);
                        acc[t] = _mm256_fmadd_ps(w[h], x, acc[t]);
                    }
                }
            }
        }
    }

    dlcpu_br_store_avx2(p, acc, MV, NP, NC);
}

/* ------------------------------------------------------------------------------------------ */
/* Scalar reference path: any register block, plain loops, no intrinsics.                     */
/* ------------------------------------------------------------------------------------------ */
static void
dlcpu_brgemm_f32_scalar(const dlcpu_brgemm_f32_t *p)
{
    float acc[DLCPU_SCALAR_MAX_ACC][16];   /* group g, pixel t at acc[g * NP + t] */
    const int NP = p->nr * p->nc;
    memset(acc, 0, sizeof(acc));
    for (int64_t i = 0; i < p->batch; i++) {
        const float *a, *b;
        dlcpu_br_block(p, i, &a, &b);
        for (int g = 0; g < p->mv; g++)
            for (int r = 0; r < p->nr; r++)
                for (int j = 0; j < p->nc; j++)
                    for (int kk = 0; kk < p->k; kk++) {
                        const float x = p->b_trans ? b[r * p->b_rstride + kk * 16 + j] : b[r * p->b_rstride + j * 16 + kk];
                        const float *w = a + g * p->a_mstride + kk * 16;
                        for (int m = 0; m < 16; m++) acc[g * NP + r * p->nc + j][m] += w[m] * x;
                    }
    }
    dlcpu_br_store_scalar(p, acc, NP);
}

/* ------------------------------------------------------------------------------------------ */
/* Instances and dispatch                                                                     */
/* ------------------------------------------------------------------------------------------ */
typedef void (*dlcpu_brgemm_f32_fn)(const dlcpu_brgemm_f32_t *);

#define DLCPU_BR_INST(ISA, MV, NR, NC)                                                          \
    static DLCPU_TARGET_##ISA void dlcpu_brgemm_f32_##ISA##_##MV##_##NR##_##NC(               \
        const dlcpu_brgemm_f32_t *p) { dlcpu_brgemm_f32_##ISA##_body(p, MV, NR, NC, 0); }
#define DLCPU_BR_SLOT(ISA, MV, NR, NC) [MV - 1][NR - 1][NC - 1] = dlcpu_brgemm_f32_##ISA##_##MV##_##NR##_##NC,
#define DLCPU_BRT_INST(ISA, NR, NC)                                                              \
    static DLCPU_TARGET_##ISA void dlcpu_brgemm_f32_t_##ISA##_##NR##_##NC(                       \
        const dlcpu_brgemm_f32_t *p) { dlcpu_brgemm_f32_##ISA##_body(p, 1, NR, NC, 1); }
#define DLCPU_BRT_SLOT(ISA, NR, NC) [NR - 1][NC - 1] = dlcpu_brgemm_f32_t_##ISA##_##NR##_##NC,

/* The tiles each ISA is built for: mv*nr*nc accumulators within its register budget. */
#define DLCPU_BR_AVX512_TILES(X)                                                                  \
    X(AVX512,1,1,1) X(AVX512,1,1,2) X(AVX512,1,1,3) X(AVX512,1,1,4) X(AVX512,1,1,5) X(AVX512,1,1,6)      \
    X(AVX512,1,1,7) X(AVX512,1,1,8) X(AVX512,1,1,9) X(AVX512,1,1,10) X(AVX512,1,1,11) X(AVX512,1,1,12)   \
    X(AVX512,1,1,13) X(AVX512,1,1,14) X(AVX512,1,1,15) X(AVX512,1,1,16) X(AVX512,1,1,17) X(AVX512,1,1,18) \
    X(AVX512,1,1,19) X(AVX512,1,1,20) X(AVX512,1,1,21) X(AVX512,1,1,22) X(AVX512,1,1,23) X(AVX512,1,1,24) \
    X(AVX512,1,1,25) X(AVX512,1,1,26) X(AVX512,1,1,27) X(AVX512,1,1,28)                                  \
    X(AVX512,1,2,1) X(AVX512,1,2,2) X(AVX512,1,2,3) X(AVX512,1,2,4) X(AVX512,1,2,5) X(AVX512,1,2,6)      \
    X(AVX512,1,2,7) X(AVX512,1,2,8) X(AVX512,1,2,9) X(AVX512,1,2,10) X(AVX512,1,2,11) X(AVX512,1,2,12)   \
    X(AVX512,1,2,13) X(AVX512,1,2,14)                                                                     \
    X(AVX512,1,3,1) X(AVX512,1,3,2) X(AVX512,1,3,3) X(AVX512,1,3,4) X(AVX512,1,3,5) X(AVX512,1,3,6)      \
    X(AVX512,1,3,7) X(AVX512,1,3,8) X(AVX512,1,3,9)                                                       \
    X(AVX512,1,4,1) X(AVX512,1,4,2) X(AVX512,1,4,3) X(AVX512,1,4,4) X(AVX512,1,4,5) X(AVX512,1,4,6)      \
    X(AVX512,1,4,7)                                                                                       \
    X(AVX512,2,1,1) X(AVX512,2,1,2) X(AVX512,2,1,3) X(AVX512,2,1,4) X(AVX512,2,1,5) X(AVX512,2,1,6)      \
    X(AVX512,2,1,7) X(AVX512,2,1,8) X(AVX512,2,1,9) X(AVX512,2,1,10) X(AVX512,2,1,11) X(AVX512,2,1,12)   \
    X(AVX512,2,1,13) X(AVX512,2,1,14)                                                                     \
    X(AVX512,2,2,1) X(AVX512,2,2,2) X(AVX512,2,2,3) X(AVX512,2,2,4) X(AVX512,2,2,5) X(AVX512,2,2,6)      \
    X(AVX512,2,2,7)                                                                                       \
    X(AVX512,2,3,1) X(AVX512,2,3,2) X(AVX512,2,3,3) X(AVX512,2,3,4)                                      \
    X(AVX512,2,4,1) X(AVX512,2,4,2) X(AVX512,2,4,3)

/* Row tiles beyond DLCPU_BR_MAX_NR: one pixel column of up to 16 rows (mv=2: 14, within the 28
 * accumulators), instantiated by the bf16 and int16 kernels only.  The pair weight update runs
 * them with input channels as rows: with one K block its 4-row tiles held 4 accumulators, and
 * VDPBF16PS waited on its own latency (the 8x8 digits layers ran at 17% of the bf16 peak). */
#define DLCPU_BR_AVX512_ROW_TILES(X)                                                              \
    X(AVX512,1,5,1) X(AVX512,1,6,1) X(AVX512,1,7,1) X(AVX512,1,8,1) X(AVX512,1,9,1) X(AVX512,1,10,1)            \
    X(AVX512,1,11,1) X(AVX512,1,12,1) X(AVX512,1,13,1) X(AVX512,1,14,1) X(AVX512,1,15,1) X(AVX512,1,16,1)           \
    X(AVX512,2,5,1) X(AVX512,2,6,1) X(AVX512,2,7,1) X(AVX512,2,8,1) X(AVX512,2,9,1) X(AVX512,2,10,1)            \
    X(AVX512,2,11,1) X(AVX512,2,12,1) X(AVX512,2,13,1) X(AVX512,2,14,1)

#define DLCPU_BR_AVX2_TILES(X)                                                                    \
    X(AVX2,1,1,1) X(AVX2,1,1,2) X(AVX2,1,1,3) X(AVX2,1,1,4) X(AVX2,1,1,5) X(AVX2,1,1,6)                 \
    X(AVX2,1,2,1) X(AVX2,1,2,2) X(AVX2,1,2,3) X(AVX2,1,3,1) X(AVX2,1,3,2) X(AVX2,1,4,1)                 \
    X(AVX2,2,1,1) X(AVX2,2,1,2) X(AVX2,2,1,3) X(AVX2,2,2,1) X(AVX2,2,3,1)

/* Transposed-B tiles (taps x dW rows): a dW block has 16 rows (input channels); AVX2 takes 6. */
#define DLCPU_BRT_AVX512_TILES(X)                                                                 \
    X(AVX512,1,1) X(AVX512,1,2) X(AVX512,1,3) X(AVX512,1,4) X(AVX512,1,5) X(AVX512,1,6)          \
    X(AVX512,1,7) X(AVX512,1,8) X(AVX512,1,9) X(AVX512,1,10) X(AVX512,1,11) X(AVX512,1,12)       \
    X(AVX512,1,13) X(AVX512,1,14) X(AVX512,1,15) X(AVX512,1,16)                                 \
    X(AVX512,2,1) X(AVX512,2,2) X(AVX512,2,3) X(AVX512,2,4) X(AVX512,2,5) X(AVX512,2,6)          \
    X(AVX512,2,7) X(AVX512,2,8) X(AVX512,2,9) X(AVX512,2,10) X(AVX512,2,11) X(AVX512,2,12)       \
    X(AVX512,2,13) X(AVX512,2,14)                                                               \
    X(AVX512,3,1) X(AVX512,3,2) X(AVX512,3,3) X(AVX512,3,4) X(AVX512,3,5) X(AVX512,3,6)          \
    X(AVX512,3,7) X(AVX512,3,8) X(AVX512,3,9)                                                   \
    X(AVX512,4,1) X(AVX512,4,2) X(AVX512,4,3) X(AVX512,4,4) X(AVX512,4,5) X(AVX512,4,6)          \
    X(AVX512,4,7)
#define DLCPU_BRT_AVX2_TILES(X)                                                                   \
    X(AVX2,1,1) X(AVX2,1,2) X(AVX2,1,3) X(AVX2,1,4) X(AVX2,1,5) X(AVX2,1,6)                      \
    X(AVX2,2,1) X(AVX2,2,2) X(AVX2,2,3) X(AVX2,3,1) X(AVX2,3,2) X(AVX2,4,1)

#define dlcpu_brgemm_f32_AVX512_body dlcpu_brgemm_f32_avx512_body
#define dlcpu_brgemm_f32_AVX2_body dlcpu_brgemm_f32_avx2_body

DLCPU_BR_AVX512_TILES(DLCPU_BR_INST)
DLCPU_BR_AVX2_TILES(DLCPU_BR_INST)
DLCPU_BRT_AVX512_TILES(DLCPU_BRT_INST)
DLCPU_BRT_AVX2_TILES(DLCPU_BRT_INST)

static const dlcpu_brgemm_f32_fn dlcpu_brgemm_f32_avx512_table[DLCPU_BR_MAX_MV][DLCPU_BR_MAX_NR][DLCPU_BR_MAX_NC] = {
    DLCPU_BR_AVX512_TILES(DLCPU_BR_SLOT)
};
static const dlcpu_brgemm_f32_fn dlcpu_brgemm_f32_avx2_table[DLCPU_BR_MAX_MV][DLCPU_BR_MAX_NR][DLCPU_BR_MAX_NC] = {
    DLCPU_BR_AVX2_TILES(DLCPU_BR_SLOT)
};

static const dlcpu_brgemm_f32_fn dlcpu_brgemm_f32_t_avx512_table[DLCPU_BR_MAX_NR][DLCPU_BRT_MAX_NC] = {
    DLCPU_BRT_AVX512_TILES(DLCPU_BRT_SLOT)
};
static const dlcpu_brgemm_f32_fn dlcpu_brgemm_f32_t_avx2_table[DLCPU_BR_MAX_NR][DLCPU_BRT_MAX_NC] = {
    DLCPU_BRT_AVX2_TILES(DLCPU_BRT_SLOT)
};

/* Most pixels one call may hold for a given ISA and group count (the planner's budget). */
static inline int dlcpu_brgemm_f32_max_pixels(int isa, int mv)
{
    return dlcpu_max_acc(isa) / mv;
}

/* Look up the kernel for (isa, mv, nr, nc); NULL when that tile was not built.  The scalar path
 * has one generic body for every tile within its budget. */
static inline dlcpu_brgemm_f32_fn dlcpu_brgemm_f32_lookup(int isa, int mv, int nr, int nc)
{
    if (mv < 1 || mv > DLCPU_BR_MAX_MV || nr < 1 || nr > DLCPU_BR_MAX_NR || nc < 1 || nc > DLCPU_BR_MAX_NC)
        return NULL;
    if (isa == DLCPU_ISA_AVX512) return dlcpu_brgemm_f32_avx512_table[mv - 1][nr - 1][nc - 1];
    if (isa == DLCPU_ISA_AVX2) return dlcpu_brgemm_f32_avx2_table[mv - 1][nr - 1][nc - 1];
    if (isa == DLCPU_ISA_SCALAR && mv * nr * nc <= DLCPU_SCALAR_MAX_ACC) return dlcpu_brgemm_f32_scalar;
    return NULL;
}

static inline dlcpu_brgemm_f32_fn dlcpu_brgemm_f32_t_lookup(int isa, int mv, int nr, int nc)
{
    if (mv != 1 || nr < 1 || nr > DLCPU_BR_MAX_NR || nc < 1 || nc > DLCPU_BRT_MAX_NC) return NULL;
    if (isa == DLCPU_ISA_AVX512) return dlcpu_brgemm_f32_t_avx512_table[nr - 1][nc - 1];
    if (isa == DLCPU_ISA_AVX2) return dlcpu_brgemm_f32_t_avx2_table[nr - 1][nc - 1];
    if (isa == DLCPU_ISA_SCALAR && nr * nc <= DLCPU_SCALAR_MAX_ACC) return dlcpu_brgemm_f32_scalar;
    return NULL;
}

/* Whether this build has a kernel for a tile: the question every plan asks when it is made
 * (dlcpu/_plans.py), so a plan the build cannot run is refused there, never inside a driver. */
static inline int dlcpu_brgemm_has_tile(int isa, int mv, int nr, int nc, int transposed)
{
    return (transposed ? dlcpu_brgemm_f32_t_lookup(isa, mv, nr, nc)
                       : dlcpu_brgemm_f32_lookup(isa, mv, nr, nc)) != NULL;
}

/* Run one call; returns 0, or -1 when no kernel exists for the tile (callers plan around it). */
static inline int dlcpu_brgemm_f32(const dlcpu_brgemm_f32_t *p, int isa)
{
    dlcpu_brgemm_f32_fn f;
    if (p->b_trans) {
        f = dlcpu_brgemm_f32_t_lookup(isa, p->mv, p->nr, p->nc);
        if (f == NULL || p->k < 1) return -1;
    } else {
        f = dlcpu_brgemm_f32_lookup(isa, p->mv, p->nr, p->nc);
        if (f == NULL || p->k < 1 || p->k > 16) return -1;
    }
    f(p);
    return 0;
}

#endif
