/*
 * Integer batch-reduce GEMM microkernels: C (+)= sum_i A_i * B_i with 8- or 16-bit integer
 * operands, int32 accumulation and fp32 output -- for int8 (u8 activations x s8 weights),
 * ternary weights (s8 codes in {-1, 0, 1}) and DFP-16 (int16 x int16).
 *
 * Layouts (DESIGN.md §3): A keeps the weights' blocks of 16 outputs with the reduction taken in
 * groups -- int8 quads [4][16 outputs][4], int16 pairs [8][16][2] -- so one 512-bit load holds a
 * group of channels for all 16 outputs; B keeps the activation layout (16 values per pixel) and
 * one 32-bit broadcast feeds a group.  A block is 256 elements either way, so the drivers' element
 * offsets are those of the fp32 and bf16 kernels.  Every channel of a block is read: padded
 * channels must hold zero weights.
 *
 * Why the int32 sums are flushed: an int32 chain overflows silently.  A u8 x s8 product is at most
 * 255 * 128 in magnitude, so 16,000 quads (4,112 blocks of 16 channels) fit; an int16 product of DFP-16 mantissas can reach
 * 2**30, so a chain must be bounded by the mantissas' headroom (two bits of headroom: 16 pairs).
 * The caller (dlcpu/quantized.py) proves the bound and sets the schedule: every flush_steps
 * reduction groups inside a block, and after every flush_blocks blocks, the int32 tile is
 * converted to fp32 and added, with its multiplier, into an fp32 tile of partial sums on the
 * stack, and the int32 tile restarts at zero.  The partial sums live in L1, not in registers, so
 * the register tile stays as large as the fp32 kernels' (a flush every 2 blocks costs 3 vector
 * ops per 16 dot products).  The multiplier is
 * one vector per output group (int8: s_x * s_w[k]; DFP-16: 2**(E_a + E_b)) or, for ternary
 * weights, one per block of N channels (alpha_b * s_x) found beside the block (block_scale).
 * The last flush subtracts the zero-point compensation (u8 activations stored as x + 128), adds
 * beta*C and the bias, applies the ReLU and writes C once: fp32, or u8 codes for the next int8
 * layer (out_u8: scales folded by the caller), so that int8 activations pass from layer to layer
 * in 1 byte.
 *
 * Paths: AVX-512 with avx512_vnni (VPDPBUSD / VPDPWSSD); AVX-512BW and AVX2 without it, where a
 * group's products are formed by VPMADDWD on 16-bit lanes (u8 and s8 widened first): exact
 * integers either way, and the flush is the same fp32 arithmetic, so every path gives the same
 * bits; a scalar path in plain C.  Same tile tables as brgemm_f32.h, so the same plans run.
 */
#ifndef DLCPU_BRGEMM_INT_H
#define DLCPU_BRGEMM_INT_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <immintrin.h>
#include "isa.h"
#include "tiles.h"
#include "brgemm_f32.h"

#define DLCPU_TARGET_AVX512VNNI \
    __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512vnni,avx2,fma")))
#define DLCPU_TARGET_AVX512BW DLCPU_TARGET_AVX512

/* U7S8: u8 activations whose codes are all at most 127 (7-bit quantization, PyTorch's
 * reduce_range), with s8 weights.  Exact as U8S8 on every path, and the same sums; only the AVX2
 * path differs, forming each pair of products in one VPMADDUBSW (below). */
enum { DLCPU_INT_U8S8 = 0, DLCPU_INT_S16 = 1, DLCPU_INT_U7S8 = 2 };

/* What an integer call adds to dlcpu_brgemm_f32_t (geometry, offsets, C, bias, ReLU, beta). */
typedef struct {
    int format;                 /* DLCPU_INT_U8S8: B uint8, A int8 (U7S8: B's codes all <= 127);
                                 * DLCPU_INT_S16: both int16 */
    int flush_steps;            /* groups (quads / pairs) per flush inside a block (>= a block's: none) */
    int64_t flush_blocks;       /* blocks per flush */
    const float *scale;         /* 16*mv multipliers (NULL: 1), when block_scale is NULL */
    const float *block_scale;   /* or: per A block (256 elements at element offset o), the
                                 * multipliers of its sub-blocks at block_scale + o/256*16*block_groups */
    int block_groups;           /* sub-blocks per A block (16 / N for ternary blocks of N < 16) */
    const int32_t *comp;        /* NULL or 16*mv int32 subtracted from the sums at the last flush */
    int out_u8;                 /* 0: C is fp32; else C is uint8 output codes (same element
                                 * strides) and out_u8 the largest code, 255 or 127 (7-bit codes
                                 * for a next layer that reads them), beta 0: the multipliers and
                                 * the bias arrive in code units, the zero point inside the bias,
                                 * and C = min(rint(max(v, 0)), out_u8) (below) */
    float res_scale;            /* u8 output only, 0: none.  Else a residual joins before the
                                 * clamp, v += res_scale * r with r the u8 code res_offset bytes
                                 * after the output's (a tensor laid out as C: the shortcut of a
                                 * ResNet block, whose zero point the caller folded into the
                                 * bias), as oneDNN's sum post-op: relu(conv + shortcut) in u8
                                 * with no fp32 tensor and no pass of its own */
    int64_t res_offset;
} dlcpu_brgemm_int_t;

/* The u8 code of one output value v, already in code units (the caller folded 1/s_out into the
 * multipliers and 1/s_out and the zero point z into the bias, as oneDNN folds its scales):
 * min(rint(max(v, 0)), max_code), rounding half to even (max_code 255, or 127 for 7-bit
 * codes).  A ReLU needs no op of its own: it comes with z = 0, where it is the clamp at code 0.
 * The AVX-512 path is VMAXPS, VCVTPS2DQ and VPMOVUSDB, whose unsigned saturation gives 255 for
 * anything above it -- even a value past int32, converted to 0x80000000 -- so the epilogue of a
 * one-flush call is 5 ops after the dot products (with the FMA of the sums and the
 * compensation; a 7-bit clamp adds a VMINPS, a residual a load, a widening and an FMA) where
 * requantizing the fp32 result took 9: on res2a_branch1 (1x1, 64 -> 256 channels, 56x56), whose
 * calls sum only 16 quads per output, dlcpu / PyTorch int8 went from 0.89 to 1.05 (1 thread,
 * each in one run).  This is the same arithmetic.  NaN gives 0, as VMAXPS(v, 0) returns its
 * second operand for a NaN; it needs an overflow, which conv2d's checks of the multipliers and
 * the bias rule out for finite operands. */
static inline uint8_t dlcpu_bri_output_code(float v, int max_code)
{
    if (!(v > 0.0f)) return 0;
    if (v >= (float)max_code) return (uint8_t)max_code;
    return (uint8_t)(int)nearbyintf(v);
}

/* Where output (g, pixel t) of a u8 C lives: p->c holds a uint8_t pointer when q->out_u8. */
static inline __attribute__((always_inline)) uint8_t *
dlcpu_bri_c8(const dlcpu_brgemm_f32_t *p, int g, int t, int NC)
{
    return (uint8_t *)p->c + g * p->c_mstride + (t / NC) * p->c_rstride + (t % NC) * p->ldc;
}

/* Block i's A and B as byte pointers (es: bytes per element). */
static inline __attribute__((always_inline)) void
dlcpu_bri_block(const dlcpu_brgemm_f32_t *p, const char *a0, const char *b0, int64_t i, int es,
                const char **a, const char **b)
{
    if (p->kind == DLCPU_BR_STRD) {
        *a = a0 + i * p->a_stride * es;
        *b = b0 + i * p->b_stride * es;
    } else {
        *a = a0 + p->a_offs[i] * es;
        *b = b0 + p->b_offs[i] * es;
    }
}

static inline __attribute__((always_inline)) int32_t dlcpu_bri_word(const char *at)
{
    int32_t v;
    memcpy(&v, at, sizeof v);
    return v;
}

/* The multiplier vector of group g at a flush: a_g is the group's current A block, sub the
 * sub-block the flush closes. */
static inline __attribute__((always_inline)) const float *
dlcpu_bri_multiplier(const dlcpu_brgemm_int_t *q, const char *a0, const char *a_g, int es, int g, int sub)
{
    if (q->block_scale)
        return q->block_scale + ((int64_t)(a_g - a0) / es / 256 * q->block_groups + sub) * 16;
    return q->scale ? q->scale + 16 * g : NULL;
}

/* ---------------------------------------------------------------------------- flush, AVX-512 */
/* A flush adds the int32 tile, converted and multiplied, into the call's partial sums `part` (a
 * contiguous fp32 tile on the stack: flushing into C itself, whose rows are a matrix row apart
 * in the GEMM, measured 0.6x fp32 for DFP-16 from L1 set conflicts).  The last one adds the
 * partial sums, beta*C and the bias, applies the ReLU and stores C:
 *     v = fma(float(sum - comp), multiplier, part);  C = relu(v + beta*C + bias),
 * or, for a call of one chain with beta 0 (most convolutions), C = relu(fma(float(sum - comp),
 * multiplier, bias)).  A u8 output vector is VMAXPS (and VMINPS for 7-bit codes), VCVTPS2DQ and
 * VPMOVUSDB (dlcpu_bri_output_code's rule), with a residual first: a load, a widening and an FMA.
 *
 * The flush reads the call's fields into locals before its loop over the tile: the u8 codes
 * leave through a char pointer, which may alias anything, so a field read inside the loop was
 * reloaded and tested again after every store (perf on res2a_branch1, 1x1, 64 -> 256, whose
 * outputs sum only 16 quads: 17 scalar loads, compares and branches per output vector).  And it
 * picks one of three loops: partial (every flush before the call's last) and codes (the one
 * flush of a call writing codes up to 255, most int8 convolutions) test nothing per vector,
 * their flags being constants of each copy; general (every other last flush: fp32 output, 7-bit
 * codes, partial sums to add) keeps its tests.  GCC hoists no test out of a fully unrolled tile,
 * and one loop testing first/last/beta, the output kind, the residual and the 7-bit clamp at
 * every vector spent some 12 scalar ops on them per output vector on res2a_branch1.  With the
 * codes loop the standalone kernel ran that layer's calls 1.04-1.10x faster (batch 4, one
 * thread), the 128 -> 512 1x1's 1.06x and the 256 -> 1024 one's 1.03x (AVX2: res2a_branch1
 * 1.11-1.20x); the whole int8 ResNet-50 table 1.07-1.09x.  With the codes loop alone, GCC laid
 * out the int16 instances' remaining loop so that DFP-16 ran 0.92x; the partial loop made it
 * 1.05x.  Every loop does the same ops in the same order as the one it replaced, so the bits
 * are those of before (docs/performance.md, "integer flushes with nothing tested per vector"). */

/* What a last flush applies to group g: its multipliers (1 where the call has none), its
 * compensation and its bias (0 where the call has none). */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 void
dlcpu_bri_last_vectors_avx512(const dlcpu_brgemm_f32_t *p, const dlcpu_brgemm_int_t *q, const char *a0, const char *a,
                              int es, int g, int sub, __m512 *mul, __m512i *comp, __m512 *bias)
{
    const float *m = dlcpu_bri_multiplier(q, a0, a + g * p->a_mstride * es, es, g, sub);
    *mul = m ? _mm512_loadu_ps(m) : _mm512_set1_ps(1.0f);
    *comp = q->comp ? _mm512_loadu_si512(q->comp + 16 * g) : _mm512_setzero_si512();
    *bias = p->bias ? _mm512_loadu_ps(p->bias + 16 * g) : _mm512_setzero_ps();
}

/* v + res_scale * r for the 16 u8 residual codes at r16. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 __m512
dlcpu_bri_residual_avx512(__m512 v, const uint8_t *r16, __m512 rs)
{
    const __m128i r = _mm_loadu_si128((const __m128i *)r16);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(r)), rs, v);
}

/* The codes loop: the one flush of a call of one chain (beta 0) writing codes up to 255 (7-bit
 * codes, which need a VMINPS, take the general loop) -- most int8 convolutions.  RES: a residual
 * joins. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 void
dlcpu_bri_codes_avx512(const dlcpu_brgemm_f32_t *p, const dlcpu_brgemm_int_t *q, const __m512i *acc,
                       const char *a0, const char *a, int es, int sub, const int RES, const int MV, const int NP,
                       const int NC)
{
    const int64_t res_offset = q->res_offset, ldc = p->ldc, c_rstride = p->c_rstride, c_mstride = p->c_mstride;
    uint8_t *const c0 = (uint8_t *)p->c;
    const __m512 zero = _mm512_setzero_ps(), rs = _mm512_set1_ps(q->res_scale);
#pragma GCC unroll 2
    for (int g = 0; g < MV; g++) {
        __m512 mul, bias;
        __m512i comp;
        dlcpu_bri_last_vectors_avx512(p, q, a0, a, es, g, sub, &mul, &comp, &bias);
#pragma GCC unroll 28
        for (int t = 0; t < NP; t++) {
            uint8_t *codes_at = c0 + g * c_mstride + (t / NC) * c_rstride + (t % NC) * ldc;
            __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[g * NP + t], comp)), mul, bias);
            if (RES) v = dlcpu_bri_residual_avx512(v, codes_at + res_offset, rs);
            _mm_storeu_si128((__m128i *)codes_at,
                             _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(_mm512_max_ps(v, zero))));
        }
    }
}

/* The partial loop: a flush before the call's last (DFP-16 chains flush every 2 blocks, ternary
 * ones at every block of N channels, int8 ones only past 4,112 blocks): the tile's sums times
 * their multipliers go into the partial sums, which they start when FIRST (a constant of each
 * copy, so nothing is tested per vector).  The compensation, the bias and C wait for the last
 * flush.  `part` is 64-byte aligned (the body declares it so): aligned loads and stores. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 void
dlcpu_bri_partial_avx512(const dlcpu_brgemm_f32_t *p, const dlcpu_brgemm_int_t *q, const __m512i *acc, float *part,
                         const char *a0, const char *a, int es, int sub, const int FIRST, const int MV, const int NP)
{
#pragma GCC unroll 2
    for (int g = 0; g < MV; g++) {
        const float *m = dlcpu_bri_multiplier(q, a0, a + g * p->a_mstride * es, es, g, sub);
        const __m512 mul = m ? _mm512_loadu_ps(m) : _mm512_set1_ps(1.0f);
#pragma GCC unroll 28
        for (int t = 0; t < NP; t++) {
            float *pt = part + (g * NP + t) * 16;
            const __m512 s = _mm512_cvtepi32_ps(acc[g * NP + t]);
            _mm512_store_ps(pt, FIRST ? _mm512_mul_ps(s, mul) : _mm512_fmadd_ps(s, mul, _mm512_load_ps(pt)));
        }
    }
}

static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 void
dlcpu_bri_flush_avx512(const dlcpu_brgemm_f32_t *p, const dlcpu_brgemm_int_t *q, __m512i *acc, float *part,
                       const char *a0, const char *a, int es, int sub, int first, int last, const int MV,
                       const int NP, const int NC)
{
    if (!last) {
        if (first)
            dlcpu_bri_partial_avx512(p, q, acc, part, a0, a, es, sub, 1, MV, NP);
        else
            dlcpu_bri_partial_avx512(p, q, acc, part, a0, a, es, sub, 0, MV, NP);
        return;
    }
    const int out_u8 = q->out_u8, relu = p->relu && !out_u8, beta = p->beta;  /* a u8 clamp is the ReLU */
    const float res_scale = q->res_scale;
    if (es == 1 && first && !beta && out_u8 == 255) {   /* es 1: int16 calls never write codes */
        if (res_scale != 0.0f)
            dlcpu_bri_codes_avx512(p, q, acc, a0, a, es, sub, 1, MV, NP, NC);
        else
            dlcpu_bri_codes_avx512(p, q, acc, a0, a, es, sub, 0, MV, NP, NC);
        return;
    }
    /* The general loop: every other last flush -- fp32 output, 7-bit codes, partial sums to add. */
    const int64_t res_offset = q->res_offset, ldc = p->ldc, c_rstride = p->c_rstride, c_mstride = p->c_mstride;
    float *const c0 = p->c;
    const __m512 zero = _mm512_setzero_ps(), top = _mm512_set1_ps((float)out_u8), rs = _mm512_set1_ps(res_scale);
#pragma GCC unroll 2
    for (int g = 0; g < MV; g++) {
        __m512 mul, bias;
        __m512i comp;
        dlcpu_bri_last_vectors_avx512(p, q, a0, a, es, g, sub, &mul, &comp, &bias);
#pragma GCC unroll 28
        for (int t = 0; t < NP; t++) {
            const int64_t at = g * c_mstride + (t / NC) * c_rstride + (t % NC) * ldc;   /* elements */
            const __m512 s = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[g * NP + t], comp));
            __m512 v;
            if (first && !beta) {                     /* one flush: the bias joins in the same FMA */
                v = _mm512_fmadd_ps(s, mul, bias);
            } else {
                v = first ? _mm512_mul_ps(s, mul) : _mm512_fmadd_ps(s, mul, _mm512_load_ps(part + (g * NP + t) * 16));
                if (beta) v = _mm512_add_ps(v, _mm512_loadu_ps(c0 + at));
                v = _mm512_add_ps(v, bias);
            }
            if (!out_u8) {
                _mm512_storeu_ps(c0 + at, relu ? _mm512_max_ps(zero, v) : v);
                continue;
            }
            uint8_t *codes_at = (uint8_t *)c0 + at;
            if (res_scale != 0.0f) v = dlcpu_bri_residual_avx512(v, codes_at + res_offset, rs);
            __m512 clamped = _mm512_max_ps(v, zero);
            if (out_u8 < 255)                         /* 7-bit codes: VPMOVUSDB saturates at 255 only */
                clamped = _mm512_min_ps(clamped, top);
            _mm_storeu_si128((__m128i *)codes_at, _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(clamped)));
        }
    }
}

/* ------------------------------------------------------------------- AVX-512 bodies (VNNI, BW) */
/* One reduction group (quad or pair) of one block, at A column offset off (bytes), for every
 * accumulator: VNNI when V, else VPMADDWD on widened 16-bit lanes. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512VNNI void
dlcpu_bri_group_vnni(const dlcpu_brgemm_f32_t *p, __m512i *acc, const char *a, const char *b, int es, int S16,
                     int gq, const int MV, const int NR, const int NC)
{
    const int NP = NR * NC;
    const __m512i w0 = _mm512_loadu_si512(a + gq * 64);
    const __m512i w1 = MV > 1 ? _mm512_loadu_si512(a + p->a_mstride * es + gq * 64) : w0;
#pragma GCC unroll 16
    for (int r = 0; r < NR; r++) {
        const char *br = b + (r * p->b_rstride) * es + gq * 4;
#pragma GCC unroll 28
        for (int j = 0; j < NC; j++) {
            const __m512i x = _mm512_set1_epi32(dlcpu_bri_word(br + j * 16 * es));
            if (S16) {
                acc[r * NC + j] = _mm512_dpwssd_epi32(acc[r * NC + j], x, w0);
                if (MV > 1) acc[NP + r * NC + j] = _mm512_dpwssd_epi32(acc[NP + r * NC + j], x, w1);
            } else {
                acc[r * NC + j] = _mm512_dpbusd_epi32(acc[r * NC + j], x, w0);
                if (MV > 1) acc[NP + r * NC + j] = _mm512_dpbusd_epi32(acc[NP + r * NC + j], x, w1);
            }
        }
    }
}

static inline __attribute__((always_inline)) DLCPU_TARGET_AVX512 void
dlcpu_bri_group_bw(const dlcpu_brgemm_f32_t *p, __m512i *acc, const char *a, const char *b, int es, int S16,
                   int gq, const int MV, const int NR, const int NC)
{
    const int NP = NR * NC;
    /* u8 x s8 quads as two 16-bit pairs: bytes (0, 2) and (1, 3) of each 32-bit lane */
    const __m512i lo8 = _mm512_set1_epi16(0x00FF);
    __m512i wl[2], wh[2];
    for (int g = 0; g < MV; g++) {
        const __m512i w = _mm512_loadu_si512(a + g * p->a_mstride * es + gq * 64);
        if (S16) {
            wl[g] = w;
        } else {
            wl[g] = _mm512_srai_epi16(_mm512_slli_epi16(w, 8), 8);
            wh[g] = _mm512_srai_epi16(w, 8);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < NR; r++) {
        const char *br = b + (r * p->b_rstride) * es + gq * 4;
#pragma GCC unroll 28
        for (int j = 0; j < NC; j++) {
            const __m512i x = _mm512_set1_epi32(dlcpu_bri_word(br + j * 16 * es));
            if (S16) {
                for (int g = 0; g < MV; g++)
                    acc[g * NP + r * NC + j] = _mm512_add_epi32(acc[g * NP + r * NC + j], _mm512_madd_epi16(x, wl[g]));
            } else {
                const __m512i xl = _mm512_and_si512(x, lo8), xh = _mm512_srli_epi16(x, 8);
                for (int g = 0; g < MV; g++)
                    acc[g * NP + r * NC + j] = _mm512_add_epi32(
                        acc[g * NP + r * NC + j],
                        _mm512_add_epi32(_mm512_madd_epi16(xl, wl[g]), _mm512_madd_epi16(xh, wh[g])));
            }
        }
    }
}

/* AVX2 path only: prefetch block i's A and B into L1 while block i-1 runs.  B is what missed: a
 * 1x1 layer reads each 16-channel block's pixels from its own plane, H*W*16 bytes from the last
 * block's, a jump across pages that the hardware prefetchers of the AVX2-only machine did not
 * follow, so every block of a call began with a wait on L2 (the fp32 kernels prefetch B too).
 * Each row of the tile is prefetched at its first and last byte (6 pixels of u8 codes are 96
 * bytes: two lines).
 * Measured with two builds asked in turn, layer by layer (int8, 7-bit codes, batch 4, one
 * thread): res3b_branch2a (1x1, 512 -> 128) 1.16x, res2a_branch2b (3x3, 64) 1.06x, conv1
 * 1.05x.  Prefetching B only where it lies 4 KiB or more from block i-1's was slower than
 * always (0.92-0.96x on those layers): the taps of a padded tile miss L1 too.  The AVX-512
 * bodies do not prefetch: on the AVX-512 machine (AMD EPYC, avx512_vnni) the same walk without
 * it ran conv1 and five 1x1 layers 1.01-1.09x faster at one thread (res2a_branch2a 1.09x, 11
 * paired rounds) and the whole table 1.03x count-weighted (0.99x at two threads, within the
 * noise); prefetching every line of A as well gained nothing (1.00x).  The scalar path, a plain
 * C reference whose speed is not a target, does not prefetch either. */
static inline __attribute__((always_inline)) void
dlcpu_bri_prefetch_next(const dlcpu_brgemm_f32_t *p, const char *a0, const char *b0, int64_t i, int es,
                        const int MV, const int NR, const int NC)
{
    const char *an, *bn;
    dlcpu_bri_block(p, a0, b0, i, es, &an, &bn);
    _mm_prefetch(an, _MM_HINT_T0);
    _mm_prefetch(an + 128 * es, _MM_HINT_T0);
    if (MV > 1) _mm_prefetch(an + p->a_mstride * es, _MM_HINT_T0);
    for (int r = 0; r < NR; r++) {
        const char *row = bn + r * p->b_rstride * es;
        _mm_prefetch(row, _MM_HINT_T0);
        _mm_prefetch(row + (NC * 16 - 1) * es, _MM_HINT_T0);
    }
}

/* The walk of one call, shared by every path: chains of whole blocks (flush_steps >= a block's
 * groups) or of a part of one block, each summed from zero in the int32 tile and then flushed
 * (FLUSH: sub-block index, first, last).  A chain's loop holds only the dot products, so the
 * tile stays in registers; the flush between chains is the only other work.  PREFETCH: whether
 * a chain of whole blocks prefetches the next block (dlcpu_bri_prefetch_next: AVX2 only). */
#define DLCPU_BRI_WALK(GROUP, ZERO, FLUSH, PREFETCH)                                                    \
    do {                                                                                                \
        int first = 1, g0 = 0;                                                                          \
        int64_t i = 0;                                                                                  \
        while (i < p->batch) {                                                                          \
            const char *a, *b;                                                                          \
            int sub = 0;                                                                                \
            ZERO;                                                                                       \
            if (q->flush_steps >= groups) {                                                             \
                const int64_t i1 = p->batch - i < q->flush_blocks ? p->batch : i + q->flush_blocks;     \
                for (; i < i1; i++) {                                                                   \
                    dlcpu_bri_block(p, a0, b0, i, es, &a, &b);                                          \
                    if ((PREFETCH) && i + 1 < p->batch)                                                 \
                        dlcpu_bri_prefetch_next(p, a0, b0, i + 1, es, MV, NR, NC);                      \
                    for (int gq = 0; gq < groups; gq++) GROUP;                                          \
                }                                                                                       \
            } else {                                                                                    \
                const int g1 = groups - g0 < q->flush_steps ? groups : g0 + q->flush_steps;             \
                dlcpu_bri_block(p, a0, b0, i, es, &a, &b);                                              \
                for (int gq = g0; gq < g1; gq++) GROUP;                                                 \
                sub = g0 / q->flush_steps;                                                              \
                g0 = g1;                                                                                \
                if (g0 == groups) {                                                                     \
                    g0 = 0;                                                                             \
                    i++;                                                                                \
                }                                                                                       \
            }                                                                                           \
            FLUSH(sub, first, i == p->batch);                                                           \
            first = 0;                                                                                  \
        }                                                                                               \
    } while (0)

#define DLCPU_BRI_AVX512_BODY(NAME, TARGET, GROUP)                                                        \
    static inline __attribute__((always_inline)) TARGET void                                              \
    NAME(const dlcpu_brgemm_f32_t *p, const dlcpu_brgemm_int_t *q, const char *a0, const char *b0,        \
         const int S16, const int MV, const int NR, const int NC)                                         \
    {                                                                                                     \
        __m512i acc[DLCPU_AVX512_MAX_ACC];                                                                \
        float part[DLCPU_AVX512_MAX_ACC * 16] __attribute__((aligned(64)));                               \
        const int NP = NR * NC, es = S16 ? 2 : 1;                                                         \
        const int groups = S16 ? (p->k + 1) / 2 : (p->k + 3) / 4;                                         \
        DLCPU_BRI_WALK(GROUP(p, acc, a, b, es, S16, gq, MV, NR, NC),                                      \
                       _Pragma("GCC unroll 28") for (int t = 0; t < MV * NP; t++) acc[t] = _mm512_setzero_si512(), \
                       DLCPU_BRI_FLUSH512, 0);                                                            \
    }
#define DLCPU_BRI_FLUSH512(SUB, FIRST, LAST) \
    dlcpu_bri_flush_avx512(p, q, acc, part, a0, a, es, SUB, FIRST, LAST, MV, NP, NC)

DLCPU_BRI_AVX512_BODY(dlcpu_brgemm_int_vnni_body, DLCPU_TARGET_AVX512VNNI, dlcpu_bri_group_vnni)
DLCPU_BRI_AVX512_BODY(dlcpu_brgemm_int_bw_body, DLCPU_TARGET_AVX512, dlcpu_bri_group_bw)

/* -------------------------------------------------------------------------------------- AVX2 */
/* A 16-lane group is two ymm halves: group g, pixel t, half h at acc[(g*NP + t)*2 + h].
 *
 * The flush has the AVX-512 flush's three loops.  Its fields are read before its loops (the u8
 * codes are stored through a char pointer, which may alias anything: perf on a 64 -> 256 1x1
 * layer found reloads of q->out_u8 and tests of q->res_scale among the epilogue's hottest
 * instructions); the general loop still reads C's strides per pixel.  The u8 codes of a whole
 * 16-lane vector leave in one 16-byte store: VPACKUSDW of both halves, VPERMQ back into lane
 * order, VPACKUSWB (5 ops where two 8-byte stores took 8). */

/* v + res_scale * r for the 8 u8 residual codes at r8. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX2 __m256
dlcpu_bri_residual_avx2(__m256 v, const uint8_t *r8, __m256 rs)
{
    const __m128i r = _mm_loadl_epi64((const __m128i *)r8);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(r)), rs, v);
}

/* The 16 u8 codes of one output vector (two halves v), stored at codes_at.
 * dlcpu_bri_output_code on 8 lanes: VMAXPS(v, 0) takes 0 for NaN, the clamp at the largest code
 * keeps VCVTPS2DQ (nearest even, as nearbyintf) in range.  One element at a time, this epilogue
 * was most of a 1x1 layer whose outputs sum only 16 quads: res2a_branch1 (64 -> 256 channels)
 * ran at 0.42x PyTorch's int8 convolution on an AVX2-only CPU. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX2 void
dlcpu_bri_store_codes_avx2(uint8_t *codes_at, const __m256 *v, __m256 zero, __m256 top)
{
    const __m256i lo = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v[0], zero), top));
    const __m256i hi = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v[1], zero), top));
    /* VPACKUSDW packs within 128-bit lanes: [lo 0-3, hi 0-3 | lo 4-7, hi 4-7] */
    const __m256i words = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
    _mm_storeu_si128((__m128i *)codes_at, _mm_packus_epi16(_mm256_castsi256_si128(words),
                                                           _mm256_extracti128_si256(words, 1)));
}

/* The one flush of a call of one chain writing codes, with nothing tested per vector (as
 * dlcpu_bri_codes_avx512; RES a constant of each copy).  Either code width: the clamp at the
 * largest code is an op of every vector here. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX2 void
dlcpu_bri_codes_avx2(const dlcpu_brgemm_f32_t *p, const dlcpu_brgemm_int_t *q, const __m256i *acc,
                     const char *a0, const char *a, int es, int sub, const int RES, const int MV, const int NP,
                     const int NC)
{
    const int64_t res_offset = q->res_offset, ldc = p->ldc, c_rstride = p->c_rstride, c_mstride = p->c_mstride;
    uint8_t *const c0 = (uint8_t *)p->c;
    const __m256 zero = _mm256_setzero_ps(), top = _mm256_set1_ps((float)q->out_u8), rs = _mm256_set1_ps(q->res_scale);
    for (int g = 0; g < MV; g++) {
        const float *m = dlcpu_bri_multiplier(q, a0, a + g * p->a_mstride * es, es, g, sub);
        __m256 mul[2], bias[2];
        __m256i comp[2];
        for (int h = 0; h < 2; h++) {
            mul[h] = m ? _mm256_loadu_ps(m + 8 * h) : _mm256_set1_ps(1.0f);
            comp[h] = q->comp ? _mm256_loadu_si256((const __m256i *)(q->comp + 16 * g + 8 * h)) : _mm256_setzero_si256();
            bias[h] = p->bias ? _mm256_loadu_ps(p->bias + 16 * g + 8 * h) : zero;
        }
        for (int t = 0; t < NP; t++) {
            uint8_t *codes_at = c0 + g * c_mstride + (t / NC) * c_rstride + (t % NC) * ldc;
            __m256 v[2];
            for (int h = 0; h < 2; h++) {
                v[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc[(g * NP + t) * 2 + h], comp[h])), mul[h],
                                       bias[h]);
                if (RES) v[h] = dlcpu_bri_residual_avx2(v[h], codes_at + 8 * h + res_offset, rs);
            }
            dlcpu_bri_store_codes_avx2(codes_at, v, zero, top);
        }
    }
}

/* The partial loop (as dlcpu_bri_partial_avx512): a flush before the call's last. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX2 void
dlcpu_bri_partial_avx2(const dlcpu_brgemm_f32_t *p, const dlcpu_brgemm_int_t *q, const __m256i *acc, float *part,
                       const char *a0, const char *a, int es, int sub, const int FIRST, const int MV, const int NP)
{
    for (int g = 0; g < MV; g++) {
        const float *m = dlcpu_bri_multiplier(q, a0, a + g * p->a_mstride * es, es, g, sub);
        __m256 mul[2];
        for (int h = 0; h < 2; h++) mul[h] = m ? _mm256_loadu_ps(m + 8 * h) : _mm256_set1_ps(1.0f);
        for (int t = 0; t < NP; t++)
            for (int h = 0; h < 2; h++) {
                float *pt = part + (g * NP + t) * 16 + 8 * h;
                const __m256 s = _mm256_cvtepi32_ps(acc[(g * NP + t) * 2 + h]);
                _mm256_storeu_ps(pt, FIRST ? _mm256_mul_ps(s, mul[h]) : _mm256_fmadd_ps(s, mul[h], _mm256_loadu_ps(pt)));
            }
    }
}

/* Picks the partial, codes or general loop, as dlcpu_bri_flush_avx512 does. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX2 void
dlcpu_bri_flush_avx2(const dlcpu_brgemm_f32_t *p, const dlcpu_brgemm_int_t *q, __m256i *acc, float *part,
                     const char *a0, const char *a, int es, int sub, int first, int last, const int MV, const int NP,
                     const int NC)
{
    if (!last) {
        if (first)
            dlcpu_bri_partial_avx2(p, q, acc, part, a0, a, es, sub, 1, MV, NP);
        else
            dlcpu_bri_partial_avx2(p, q, acc, part, a0, a, es, sub, 0, MV, NP);
        return;
    }
    const int out_u8 = q->out_u8, relu = p->relu, beta = p->beta;
    const int32_t *const comp = q->comp;
    const float *const bias_all = p->bias;
    const float res_scale = q->res_scale;
    if (es == 1 && first && !beta && out_u8) {         /* es 1: int16 calls never write codes */
        if (res_scale != 0.0f)
            dlcpu_bri_codes_avx2(p, q, acc, a0, a, es, sub, 1, MV, NP, NC);
        else
            dlcpu_bri_codes_avx2(p, q, acc, a0, a, es, sub, 0, MV, NP, NC);
        return;
    }
    /* The general loop: every other last flush -- fp32 output, partial sums to add, codes of a
     * call of several chains. */
    const int64_t res_offset = q->res_offset;
    const __m256 zero = _mm256_setzero_ps(), top = _mm256_set1_ps((float)out_u8), rs = _mm256_set1_ps(res_scale);
    for (int g = 0; g < MV; g++) {
        const float *m = dlcpu_bri_multiplier(q, a0, a + g * p->a_mstride * es, es, g, sub);
        for (int t = 0; t < NP; t++) {
            float *c = p->c + g * p->c_mstride + (t / NC) * p->c_rstride + (t % NC) * p->ldc;
            __m256 v[2];
            for (int h = 0; h < 2; h++) {
                const __m256 mul = m ? _mm256_loadu_ps(m + 8 * h) : _mm256_set1_ps(1.0f);
                __m256i sum = acc[(g * NP + t) * 2 + h];
                if (comp)
                    sum = _mm256_sub_epi32(sum, _mm256_loadu_si256((const __m256i *)(comp + 16 * g + 8 * h)));
                const __m256 s = _mm256_cvtepi32_ps(sum);
                const __m256 bias = bias_all ? _mm256_loadu_ps(bias_all + 16 * g + 8 * h) : zero;
                if (first && !beta) {                  /* one flush: bias in the same FMA (as AVX-512) */
                    v[h] = _mm256_fmadd_ps(s, mul, bias);
                } else {
                    v[h] = first ? _mm256_mul_ps(s, mul)
                                 : _mm256_fmadd_ps(s, mul, _mm256_loadu_ps(part + (g * NP + t) * 16 + 8 * h));
                    if (beta) v[h] = _mm256_add_ps(v[h], _mm256_loadu_ps(c + 8 * h));
                    v[h] = _mm256_add_ps(v[h], bias);
                }
                if (!out_u8) _mm256_storeu_ps(c + 8 * h, relu ? _mm256_max_ps(zero, v[h]) : v[h]);
            }
            if (out_u8) {
                uint8_t *codes_at = dlcpu_bri_c8(p, g, t, NC);
                if (res_scale != 0.0f)
                    for (int h = 0; h < 2; h++) v[h] = dlcpu_bri_residual_avx2(v[h], codes_at + 8 * h + res_offset, rs);
                dlcpu_bri_store_codes_avx2(codes_at, v, zero, top);
            }
        }
    }
}

/* One group (a quad of u8 x s8, or a pair of int16) for every pixel.  FMT U8S8 widens both
 * operands to 16 bits and takes two VPMADDWD per quad; U7S8 takes one VPMADDUBSW (u8 x s8 pairs
 * summed into int16: at most 2 * 127 * 128 = 32,512 for 7-bit codes, so it never saturates)
 * and one VPMADDWD against ones to sum the two pairs of a quad into int32: 2 multiply-type
 * instructions per 32 products instead of 4, no splitting of x or w, the same exact sums. */
static inline __attribute__((always_inline)) DLCPU_TARGET_AVX2 void
dlcpu_bri_group_avx2(const dlcpu_brgemm_f32_t *p, __m256i *acc, const char *a, const char *b, int es, int FMT, int gq,
                     const int MV, const int NP, const int NC, __m256i lo8)
{
    __m256i wl[4], wh[4];
    const int S16 = FMT == DLCPU_INT_S16, U7 = FMT == DLCPU_INT_U7S8;
    const __m256i ones = _mm256_set1_epi16(1);
    for (int u = 0; u < 2 * MV; u++) {
        const __m256i w = _mm256_loadu_si256((const __m256i *)(a + (u >> 1) * p->a_mstride * es + gq * 64 + (u & 1) * 32));
        if (S16 || U7) {
            wl[u] = w;
        } else {
            wl[u] = _mm256_srai_epi16(_mm256_slli_epi16(w, 8), 8);
            wh[u] = _mm256_srai_epi16(w, 8);
        }
    }
    for (int t = 0; t < NP; t++) {
        const __m256i x = _mm256_set1_epi32(dlcpu_bri_word(b + ((t / NC) * p->b_rstride + (t % NC) * 16) * es + gq * 4));
        if (U7) {
            for (int u = 0; u < 2 * MV; u++) {
                __m256i *c = &acc[((u >> 1) * NP + t) * 2 + (u & 1)];
                *c = _mm256_add_epi32(*c, _mm256_madd_epi16(_mm256_maddubs_epi16(x, wl[u]), ones));
            }
            continue;
        }
        const __m256i xl = _mm256_and_si256(x, lo8), xh = _mm256_srli_epi16(x, 8);
        for (int u = 0; u < 2 * MV; u++) {
            __m256i *c = &acc[((u >> 1) * NP + t) * 2 + (u & 1)];
            *c = S16 ? _mm256_add_epi32(*c, _mm256_madd_epi16(x, wl[u]))
                     : _mm256_add_epi32(*c, _mm256_add_epi32(_mm256_madd_epi16(xl, wl[u]), _mm256_madd_epi16(xh, wh[u])));
        }
    }
}

#define DLCPU_BRI_FLUSH256(SUB, FIRST, LAST) \
    dlcpu_bri_flush_avx2(p, q, acc, part, a0, a, es, SUB, FIRST, LAST, MV, NP, NC)

static inline __attribute__((always_inline)) DLCPU_TARGET_AVX2 void
dlcpu_brgemm_int_avx2_body(const dlcpu_brgemm_f32_t *p, const dlcpu_brgemm_int_t *q, const char *a0, const char *b0,
                           const int FMT, const int MV, const int NR, const int NC)
{
    __m256i acc[2 * DLCPU_AVX2_MAX_ACC];
    float part[DLCPU_AVX2_MAX_ACC * 16];
    const int S16 = FMT == DLCPU_INT_S16, NP = NR * NC, es = S16 ? 2 : 1;
    const int groups = S16 ? (p->k + 1) / 2 : (p->k + 3) / 4;
    const __m256i lo8 = _mm256_set1_epi16(0x00FF);
    DLCPU_BRI_WALK(dlcpu_bri_group_avx2(p, acc, a, b, es, FMT, gq, MV, NP, NC, lo8),
                   for (int t = 0; t < 2 * MV * NP; t++) acc[t] = _mm256_setzero_si256(),
                   DLCPU_BRI_FLUSH256, 1);
}

/* ------------------------------------------------------------------------------------ scalar */
static void dlcpu_bri_flush_scalar(const dlcpu_brgemm_f32_t *p, const dlcpu_brgemm_int_t *q, int32_t (*acc)[16],
                                   float (*part)[16], const char *a0, const char *a, int es, int sub, int first,
                                   int last, int NP)
{
    for (int g = 0; g < p->mv; g++) {
        const float *m = dlcpu_bri_multiplier(q, a0, a + g * p->a_mstride * es, es, g, sub);
        for (int t = 0; t < NP; t++) {
            float *c = p->c + g * p->c_mstride + (t / p->nc) * p->c_rstride + (t % p->nc) * p->ldc;
            for (int l = 0; l < 16; l++) {
                const int32_t sum = acc[g * NP + t][l] - ((last && q->comp) ? q->comp[16 * g + l] : 0);
                const float s = (float)sum, mul = m ? m[l] : 1.0f, bias = p->bias ? p->bias[16 * g + l] : 0.0f;
                float v;
                if (first && last && !p->beta) {                  /* one flush: as the vector paths */
                    v = fmaf(s, mul, bias);
                } else {
                    v = first ? s * mul : fmaf(s, mul, part[g * NP + t][l]);
                    if (last) {
                        if (p->beta) v += c[l];
                        v += bias;
                    }
                }
                if (last) {
                    if (p->relu && !q->out_u8 && v < 0.0f) v = 0.0f;
                    if (q->out_u8) {
                        uint8_t *code = dlcpu_bri_c8(p, g, t, p->nc) + l;
                        if (q->res_scale != 0.0f) v = fmaf((float)code[q->res_offset], q->res_scale, v);
                        *code = dlcpu_bri_output_code(v, q->out_u8);
                    }
                    else
                        c[l] = v;
                } else {
                    part[g * NP + t][l] = v;
                }
            }
        }
    }
}

static void dlcpu_bri_group_scalar(const dlcpu_brgemm_f32_t *p, int32_t (*acc)[16], const char *a, const char *b,
                                   int es, int S16, int gq, int NP)
{
    const int per = S16 ? 2 : 4;
    for (int g = 0; g < p->mv; g++)
        for (int t = 0; t < NP; t++) {
            const char *x = b + ((t / p->nc) * p->b_rstride + (t % p->nc) * 16 + gq * per) * es;
            const char *w = a + (g * p->a_mstride + gq * 16 * per) * es;
            for (int l = 0; l < 16; l++) {
                int32_t s = 0;
                for (int e = 0; e < per; e++) {
                    if (S16)
                        s += (int32_t)((const int16_t *)x)[e] * ((const int16_t *)w)[l * per + e];
                    else
                        s += (int32_t)((const uint8_t *)x)[e] * ((const int8_t *)w)[l * per + e];
                }
                acc[g * NP + t][l] += s;
            }
        }
}

#define DLCPU_BRI_FLUSH_SCALAR(SUB, FIRST, LAST) \
    dlcpu_bri_flush_scalar(p, q, acc, part, a0, a, es, SUB, FIRST, LAST, NP)

static void dlcpu_brgemm_int_scalar(const dlcpu_brgemm_f32_t *p, const dlcpu_brgemm_int_t *q, const char *a0,
                                    const char *b0)
{
    int32_t acc[DLCPU_SCALAR_MAX_ACC][16];
    float part[DLCPU_SCALAR_MAX_ACC][16];
    const int S16 = q->format == DLCPU_INT_S16, es = S16 ? 2 : 1, NR = p->nr, NC = p->nc, NP = NR * NC, MV = p->mv;
    const int groups = S16 ? (p->k + 1) / 2 : (p->k + 3) / 4;
    DLCPU_BRI_WALK(dlcpu_bri_group_scalar(p, acc, a, b, es, S16, gq, NP), memset(acc, 0, sizeof(acc)),
                   DLCPU_BRI_FLUSH_SCALAR, 0);
}

/* ------------------------------------------------------------------------ instances, dispatch */
typedef void (*dlcpu_brgemm_int_fn)(const dlcpu_brgemm_f32_t *, const dlcpu_brgemm_int_t *, const char *,
                                    const char *);

#define DLCPU_BRI_INST(FLAVOUR, TARGET, S16, MV, NR, NC)                                              \
    static TARGET void dlcpu_brgemm_int_##FLAVOUR##_##S16##_##MV##_##NR##_##NC(                       \
        const dlcpu_brgemm_f32_t *p, const dlcpu_brgemm_int_t *q, const char *a0, const char *b0)     \
    { dlcpu_brgemm_int_##FLAVOUR##_body(p, q, a0, b0, S16, MV, NR, NC); }
#define DLCPU_BRI_SLOT(FLAVOUR, TARGET, S16, MV, NR, NC) \
    [MV - 1][NR - 1][NC - 1] = dlcpu_brgemm_int_##FLAVOUR##_##S16##_##MV##_##NR##_##NC,

/* brgemm_f32.h's tile lists, re-entered per flavour and format (0: u8 x s8, 1: int16; AVX2 also
 * 2: 7-bit u8 x s8, which the other flavours run as 0). */
#define DLCPU_BRI_vnni0(ISA, MV, NR, NC) DLCPU_BRI_EMIT(vnni, DLCPU_TARGET_AVX512VNNI, 0, MV, NR, NC)
#define DLCPU_BRI_vnni1(ISA, MV, NR, NC) DLCPU_BRI_EMIT(vnni, DLCPU_TARGET_AVX512VNNI, 1, MV, NR, NC)
#define DLCPU_BRI_bw0(ISA, MV, NR, NC) DLCPU_BRI_EMIT(bw, DLCPU_TARGET_AVX512, 0, MV, NR, NC)
#define DLCPU_BRI_bw1(ISA, MV, NR, NC) DLCPU_BRI_EMIT(bw, DLCPU_TARGET_AVX512, 1, MV, NR, NC)
#define DLCPU_BRI_avx20(ISA, MV, NR, NC) DLCPU_BRI_EMIT(avx2, DLCPU_TARGET_AVX2, 0, MV, NR, NC)
#define DLCPU_BRI_avx21(ISA, MV, NR, NC) DLCPU_BRI_EMIT(avx2, DLCPU_TARGET_AVX2, 1, MV, NR, NC)
#define DLCPU_BRI_avx22(ISA, MV, NR, NC) DLCPU_BRI_EMIT(avx2, DLCPU_TARGET_AVX2, 2, MV, NR, NC)

#define DLCPU_BRI_EMIT DLCPU_BRI_INST
DLCPU_BR_AVX512_TILES(DLCPU_BRI_vnni0)
DLCPU_BR_AVX512_TILES(DLCPU_BRI_vnni1)
DLCPU_BR_AVX512_TILES(DLCPU_BRI_bw0)
DLCPU_BR_AVX512_TILES(DLCPU_BRI_bw1)
DLCPU_BR_AVX2_TILES(DLCPU_BRI_avx20)
DLCPU_BR_AVX2_TILES(DLCPU_BRI_avx21)
DLCPU_BR_AVX2_TILES(DLCPU_BRI_avx22)
DLCPU_BR_AVX512_ROW_TILES(DLCPU_BRI_vnni1)
DLCPU_BR_AVX512_ROW_TILES(DLCPU_BRI_bw1)
#undef DLCPU_BRI_EMIT

#define DLCPU_BRI_EMIT DLCPU_BRI_SLOT
#define DLCPU_BRI_TABLE(NAME, LIST, ADAPT) \
    static const dlcpu_brgemm_int_fn NAME[DLCPU_BR_MAX_MV][DLCPU_BR_MAX_NR][DLCPU_BR_MAX_NC] = { LIST(ADAPT) };
DLCPU_BRI_TABLE(dlcpu_brgemm_int_vnni0_table, DLCPU_BR_AVX512_TILES, DLCPU_BRI_vnni0)
DLCPU_BRI_TABLE(dlcpu_brgemm_int_vnni1_table, DLCPU_BR_AVX512_TILES, DLCPU_BRI_vnni1)
DLCPU_BRI_TABLE(dlcpu_brgemm_int_bw0_table, DLCPU_BR_AVX512_TILES, DLCPU_BRI_bw0)
DLCPU_BRI_TABLE(dlcpu_brgemm_int_bw1_table, DLCPU_BR_AVX512_TILES, DLCPU_BRI_bw1)
DLCPU_BRI_TABLE(dlcpu_brgemm_int_avx20_table, DLCPU_BR_AVX2_TILES, DLCPU_BRI_avx20)
DLCPU_BRI_TABLE(dlcpu_brgemm_int_avx21_table, DLCPU_BR_AVX2_TILES, DLCPU_BRI_avx21)
DLCPU_BRI_TABLE(dlcpu_brgemm_int_avx22_table, DLCPU_BR_AVX2_TILES, DLCPU_BRI_avx22)
#undef DLCPU_BRI_EMIT

/* Row tiles (brgemm_f32.h) of the int16 kernels: the DFP-16 pair weight update's calls. */
#define DLCPU_BRI_ROW_SLOT(FLAVOUR, TARGET, S16, MV, NR, NC) \
    [MV - 1][NR - 1] = dlcpu_brgemm_int_##FLAVOUR##_##S16##_##MV##_##NR##_##NC,
#define DLCPU_BRI_EMIT DLCPU_BRI_ROW_SLOT
static const dlcpu_brgemm_int_fn dlcpu_brgemm_int_vnni1_rows[DLCPU_BR_MAX_MV][DLCPU_BR_ROWS_MAX_NR] = {
    DLCPU_BR_AVX512_ROW_TILES(DLCPU_BRI_vnni1)
};
static const dlcpu_brgemm_int_fn dlcpu_brgemm_int_bw1_rows[DLCPU_BR_MAX_MV][DLCPU_BR_ROWS_MAX_NR] = {
    DLCPU_BR_AVX512_ROW_TILES(DLCPU_BRI_bw1)
};
#undef DLCPU_BRI_EMIT

/* The kernel for (isa, native: avx512_vnni, format, tile); NULL when that tile was not built. */
static inline dlcpu_brgemm_int_fn dlcpu_brgemm_int_lookup(int isa, int native, int format, int mv, int nr, int nc)
{
    const int s16 = format == DLCPU_INT_S16;
    if (isa == DLCPU_ISA_AVX512 && s16 && nc == 1 && mv >= 1 && mv <= DLCPU_BR_MAX_MV && nr > DLCPU_BR_MAX_NR
            && nr <= DLCPU_BR_ROWS_MAX_NR)     /* a row tile (NULL past 14 rows with mv = 2) */
        return native ? dlcpu_brgemm_int_vnni1_rows[mv - 1][nr - 1] : dlcpu_brgemm_int_bw1_rows[mv - 1][nr - 1];
    if (mv < 1 || mv > DLCPU_BR_MAX_MV || nr < 1 || nr > DLCPU_BR_MAX_NR || nc < 1 || nc > DLCPU_BR_MAX_NC)
        return NULL;
    if (isa == DLCPU_ISA_AVX512) {
        if (native) return s16 ? dlcpu_brgemm_int_vnni1_table[mv - 1][nr - 1][nc - 1]
                               : dlcpu_brgemm_int_vnni0_table[mv - 1][nr - 1][nc - 1];
        return s16 ? dlcpu_brgemm_int_bw1_table[mv - 1][nr - 1][nc - 1] : dlcpu_brgemm_int_bw0_table[mv - 1][nr - 1][nc - 1];
    }
    if (isa == DLCPU_ISA_AVX2)
        return s16 ? dlcpu_brgemm_int_avx21_table[mv - 1][nr - 1][nc - 1]
                   : format == DLCPU_INT_U7S8 ? dlcpu_brgemm_int_avx22_table[mv - 1][nr - 1][nc - 1]
                   : dlcpu_brgemm_int_avx20_table[mv - 1][nr - 1][nc - 1];
    if (isa == DLCPU_ISA_SCALAR && mv * nr * nc <= DLCPU_SCALAR_MAX_ACC) return dlcpu_brgemm_int_scalar;
    return NULL;
}

/* Run one call on integer operands a0 (weights) and b0 (activations); 0, or -1 when no kernel
 * exists for it (the tile, pointer-array blocks, transposed B, or a schedule that flushes never). */
static inline int dlcpu_brgemm_int(const dlcpu_brgemm_f32_t *p, const dlcpu_brgemm_int_t *q, const void *a0,
                                   const void *b0, int isa, int native)
{
    const dlcpu_brgemm_int_fn f = dlcpu_brgemm_int_lookup(isa, native, q->format, p->mv, p->nr, p->nc);
    if (f == NULL || p->kind == DLCPU_BR_ADDR || p->b_trans || p->k < 1 || p->k > 16 || q->flush_steps < 1 ||
        q->flush_blocks < 1 || (q->block_scale && q->block_groups < 1) || (q->out_u8 && p->beta) ||
        (q->out_u8 != 0 && q->out_u8 != 127 && q->out_u8 != 255) || (q->res_scale != 0.0f && !q->out_u8))
        return -1;
    f(p, q, (const char *)a0, (const char *)b0);
    return 0;
}

#endif
