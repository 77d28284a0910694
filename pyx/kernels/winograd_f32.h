/*
 * Winograd F(m x m, 3 x 3) transforms on blocked data (Lavin & Gray): m = 2 (alpha = 4) and
 * m = 4 (alpha = 6).  The alpha^2 element-wise products between transformed filters U and
 * transformed input tiles V become alpha^2 independent GEMMs, which run on the BRGEMM; these
 * functions are the transforms around them.  Every loop's innermost dimension is the 16-lane
 * channel block, so each step is one vector operation; matrix entries that are zero are skipped
 * (the tests below are on compile-time-constant tables, so the branches are predictable).
 *
 *   U[xi][nu] = (G g G^T)[xi][nu]      per (k, c): filter transform, once per weight tensor
 *   V[xi][nu] = (B^T d B)[xi][nu]      per (tile, c): input transform of an alpha x alpha patch
 *   Y         = A^T M A                per (tile, k): output transform to an m x m patch
 *
 * Non-finite values: the transforms add and subtract neighbouring pixels, so one Inf becomes
 * Inf - Inf = NaN in most outputs of its tiles, where a direct convolution gives Inf.  So the
 * filter and input transforms also report whether anything they loaded was not finite: each
 * loaded vector is folded into a lane accumulator as v * 0 (0 for finite v, NaN for Inf or NaN),
 * one FMA per vector already in registers, no extra pass over memory.  Input tiles overlap (a
 * 6x6 patch per 4x4 outputs), so each tile checks only the check_h x check_w corner of its patch
 * that no later tile loads again: m x m, or the whole patch in the last tile row / column, which
 * together cover every input pixel any tile reads (a full check cost res3b_branch2b ~1.5%).  The driver
 * (pyx/winograd.pyx) returns the count, and dlcpu.conv2d(algorithm="auto") reruns such a call
 * with the direct algorithm, so 'auto' propagates Inf/NaN exactly as direct convolution does.
 */
#ifndef DLCPU_WINOGRAD_F32_H
#define DLCPU_WINOGRAD_F32_H
#include <stdint.h>
#include <string.h>
#include "isa.h"

#define DLCPU_WINO_MAX_ALPHA 6

static const float dlcpu_wino_bt4[4][4] = {
    {1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
static const float dlcpu_wino_g4[4][3] = {
    {1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
static const float dlcpu_wino_at4[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};

static const float dlcpu_wino_bt6[6][6] = {
    {4, 0, -5, 0, 1, 0}, {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
    {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
static const float dlcpu_wino_g6[6][3] = {
    {0.25f, 0, 0}, {-1.0f / 6, -1.0f / 6, -1.0f / 6}, {-1.0f / 6, 1.0f / 6, -1.0f / 6},
    {1.0f / 24, 1.0f / 12, 1.0f / 6}, {1.0f / 24, -1.0f / 12, 1.0f / 6}, {0, 0, 1}};
static const float dlcpu_wino_at6[4][6] = {
    {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};

static inline const float *dlcpu_wino_bt(int alpha, int i, int j)
{
    return alpha == 4 ? &dlcpu_wino_bt4[i][j] : &dlcpu_wino_bt6[i][j];
}

/* 1 when any lane of a non-finite accumulator (see the top of this file) is not 0. */
static inline int dlcpu_wino_any_nonfinite(const float *acc, int n)
{
    int bad = 0;
    for (int l = 0; l < n; l++) bad |= acc[l] != 0.0f;   /* NaN != 0 */
    return bad;
}

/* U[(xi*alpha+nu)*u_stride + c*16 + k] for one 16x16 (c, k) weight block w[r][s][c][k].
 * Returns 1 when the block holds a non-finite weight. */
static inline int
dlcpu_wino_filter_block(const float *w, float *u, int64_t u_stride, int alpha)
{
    float t[DLCPU_WINO_MAX_ALPHA][3][256];
    float nf[256] = {0};
    for (int rs = 0; rs < 9; rs++)
        for (int e = 0; e < 256; e++) nf[e] += w[rs * 256 + e] * 0.0f;
    for (int xi = 0; xi < alpha; xi++)
        for (int s = 0; s < 3; s++) {
            float *dst = t[xi][s];
            for (int e = 0; e < 256; e++) dst[e] = 0.0f;
            for (int r = 0; r < 3; r++) {
                const float g = alpha == 4 ? dlcpu_wino_g4[xi][r] : dlcpu_wino_g6[xi][r];
                if (g == 0.0f) continue;
                const float *src = w + (r * 3 + s) * 256;
                for (int e = 0; e < 256; e++) dst[e] += g * src[e];
            }
        }
    for (int xi = 0; xi < alpha; xi++)
        for (int nu = 0; nu < alpha; nu++) {
            float *dst = u + (xi * alpha + nu) * u_stride;
            for (int e = 0; e < 256; e++) dst[e] = 0.0f;
            for (int s = 0; s < 3; s++) {
                const float g = alpha == 4 ? dlcpu_wino_g4[nu][s] : dlcpu_wino_g6[nu][s];
                if (g == 0.0f) continue;
                for (int e = 0; e < 256; e++) dst[e] += g * t[xi][s][e];
            }
        }
    return dlcpu_wino_any_nonfinite(nf, 256);
}

/* V[(xi*alpha+nu)*v_stride + lane] for the alpha x alpha patch of one channel block whose top-left
 * input pixel is (h0, w0); pixels outside the H x W plane are zero (padding).  Returns 1 when the
 * check_h x check_w corner of the patch holds a non-finite value (see the top of this file). */
static inline __attribute__((always_inline)) int
dlcpu_wino_input_tile_body(const float *x_plane, int64_t H, int64_t W, int64_t h0, int64_t w0,
                           float *v, int64_t v_stride, int check_h, int check_w, const int alpha)
{
    float d[DLCPU_WINO_MAX_ALPHA][DLCPU_WINO_MAX_ALPHA][16];
    float t[DLCPU_WINO_MAX_ALPHA][DLCPU_WINO_MAX_ALPHA][16];
    float nf[16] = {0};
    for (int i = 0; i < alpha; i++)
        for (int j = 0; j < alpha; j++) {
            const int64_t h = h0 + i, w = w0 + j;
            if (h < 0 || h >= H || w < 0 || w >= W) memset(d[i][j], 0, sizeof(d[i][j]));
            else memcpy(d[i][j], x_plane + (h * W + w) * 16, sizeof(d[i][j]));
        }
    for (int i = 0; i < check_h; i++)
        for (int j = 0; j < check_w; j++)
            for (int l = 0; l < 16; l++) nf[l] += d[i][j][l] * 0.0f;
    for (int xi = 0; xi < alpha; xi++)           /* t = B^T d */
        for (int j = 0; j < alpha; j++) {
            for (int l = 0; l < 16; l++) t[xi][j][l] = 0.0f;
            for (int i = 0; i < alpha; i++) {
                const float b = *dlcpu_wino_bt(alpha, xi, i);
                if (b == 0.0f) continue;
                for (int l = 0; l < 16; l++) t[xi][j][l] += b * d[i][j][l];
            }
        }
    for (int xi = 0; xi < alpha; xi++)           /* V = t B */
        for (int nu = 0; nu < alpha; nu++) {
            float *dst = v + (xi * alpha + nu) * v_stride;
            for (int l = 0; l < 16; l++) dst[l] = 0.0f;
            for (int j = 0; j < alpha; j++) {
                const float b = *dlcpu_wino_bt(alpha, nu, j);
                if (b == 0.0f) continue;
                for (int l = 0; l < 16; l++) dst[l] += b * t[xi][j][l];
            }
        }
    return dlcpu_wino_any_nonfinite(nf, 16);
}

/* y[(i*Q + j)*16] for the m x m output patch at (p0, q0) from M[(xi*alpha+nu)*m_stride + lane],
 * cropped to P x Q; bias (16 floats or NULL) and ReLU fused. */
static inline __attribute__((always_inline)) void
dlcpu_wino_output_tile_body(const float *m_in, int64_t m_stride, float *y_plane, int64_t P,
                            int64_t Q, int64_t p0, int64_t q0, const float *bias, int relu,
                            const int alpha)
{
    const int m = alpha - 2;
    float t[4][DLCPU_WINO_MAX_ALPHA][16];
    for (int i = 0; i < m; i++)                  /* t = A^T M */
        for (int nu = 0; nu < alpha; nu++) {
            for (int l = 0; l < 16; l++) t[i][nu][l] = 0.0f;
            for (int xi = 0; xi < alpha; xi++) {
                const float a = alpha == 4 ? dlcpu_wino_at4[i][xi] : dlcpu_wino_at6[i][xi];
                if (a == 0.0f) continue;
                const float *src = m_in + (xi * alpha + nu) * m_stride;
                for (int l = 0; l < 16; l++) t[i][nu][l] += a * src[l];
            }
        }
    for (int i = 0; i < m; i++) {                /* Y = t A */
        if (p0 + i >= P) break;
        for (int j = 0; j < m; j++) {
            if (q0 + j >= Q) break;
            float acc[16];
            for (int l = 0; l < 16; l++) acc[l] = bias ? bias[l] : 0.0f;
            for (int nu = 0; nu < alpha; nu++) {
                const float a = alpha == 4 ? dlcpu_wino_at4[j][nu] : dlcpu_wino_at6[j][nu];
                if (a == 0.0f) continue;
                for (int l = 0; l < 16; l++) acc[l] += a * t[i][nu][l];
            }
            float *dst = y_plane + ((p0 + i) * Q + q0 + j) * 16;
            for (int l = 0; l < 16; l++) dst[l] = relu ? (acc[l] < 0.0f ? 0.0f : acc[l]) : acc[l];
        }
    }
}

/* Instances: alpha is a compile-time constant in each, so the table lookups fold and the zero
 * coefficients vanish; the AVX-512 ones do a 16-lane step in one instruction.  Measured on
 * res3b_branch2b (1 thread): the generic-alpha, SSE-only transforms took about half the time. */
#define DLCPU_WINO_INSTANCES(SUFFIX, TARGET)                                                       \
    static TARGET int dlcpu_wino_input_tile4_##SUFFIX(const float *x, int64_t H, int64_t W,        \
        int64_t h0, int64_t w0, float *v, int64_t vs, int ch, int cw)                              \
        { return dlcpu_wino_input_tile_body(x, H, W, h0, w0, v, vs, ch, cw, 4); }                  \
    static TARGET int dlcpu_wino_input_tile6_##SUFFIX(const float *x, int64_t H, int64_t W,        \
        int64_t h0, int64_t w0, float *v, int64_t vs, int ch, int cw)                              \
        { return dlcpu_wino_input_tile_body(x, H, W, h0, w0, v, vs, ch, cw, 6); }                  \
    static TARGET void dlcpu_wino_output_tile4_##SUFFIX(const float *m, int64_t ms, float *y,      \
        int64_t P, int64_t Q, int64_t p0, int64_t q0, const float *b, int relu)                    \
        { dlcpu_wino_output_tile_body(m, ms, y, P, Q, p0, q0, b, relu, 4); }                       \
    static TARGET void dlcpu_wino_output_tile6_##SUFFIX(const float *m, int64_t ms, float *y,      \
        int64_t P, int64_t Q, int64_t p0, int64_t q0, const float *b, int relu)                    \
        { dlcpu_wino_output_tile_body(m, ms, y, P, Q, p0, q0, b, relu, 6); }

#define DLCPU_NO_TARGET
DLCPU_WINO_INSTANCES(avx512, DLCPU_TARGET_AVX512)
DLCPU_WINO_INSTANCES(avx2, DLCPU_TARGET_AVX2)
DLCPU_WINO_INSTANCES(generic, DLCPU_NO_TARGET)

/* Input transform of one patch on an ISA path; returns 1 when the patch holds a non-finite value. */
static inline int
dlcpu_wino_input_tile(const float *x_plane, int64_t H, int64_t W, int64_t h0, int64_t w0,
                      float *v, int64_t v_stride, int check_h, int check_w, int alpha, int isa)
{
    if (isa == DLCPU_ISA_AVX512)
        return alpha == 4 ? dlcpu_wino_input_tile4_avx512(x_plane, H, W, h0, w0, v, v_stride, check_h, check_w)
                          : dlcpu_wino_input_tile6_avx512(x_plane, H, W, h0, w0, v, v_stride, check_h, check_w);
    if (isa == DLCPU_ISA_AVX2)
        return alpha == 4 ? dlcpu_wino_input_tile4_avx2(x_plane, H, W, h0, w0, v, v_stride, check_h, check_w)
                          : dlcpu_wino_input_tile6_avx2(x_plane, H, W, h0, w0, v, v_stride, check_h, check_w);
    return alpha == 4 ? dlcpu_wino_input_tile4_generic(x_plane, H, W, h0, w0, v, v_stride, check_h, check_w)
                      : dlcpu_wino_input_tile6_generic(x_plane, H, W, h0, w0, v, v_stride, check_h, check_w);
}

static inline void
dlcpu_wino_output_tile(const float *m_in, int64_t m_stride, float *y_plane, int64_t P, int64_t Q,
                       int64_t p0, int64_t q0, const float *bias, int relu, int alpha, int isa)
{
    if (isa == DLCPU_ISA_AVX512) {
        if (alpha == 4) dlcpu_wino_output_tile4_avx512(m_in, m_stride, y_plane, P, Q, p0, q0, bias, relu);
        else dlcpu_wino_output_tile6_avx512(m_in, m_stride, y_plane, P, Q, p0, q0, bias, relu);
    } else if (isa == DLCPU_ISA_AVX2) {
        if (alpha == 4) dlcpu_wino_output_tile4_avx2(m_in, m_stride, y_plane, P, Q, p0, q0, bias, relu);
        else dlcpu_wino_output_tile6_avx2(m_in, m_stride, y_plane, P, Q, p0, q0, bias, relu);
    } else {
        if (alpha == 4) dlcpu_wino_output_tile4_generic(m_in, m_stride, y_plane, P, Q, p0, q0, bias, relu);
        else dlcpu_wino_output_tile6_generic(m_in, m_stride, y_plane, P, Q, p0, q0, bias, relu);
    }
}
#endif
