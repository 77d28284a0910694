/*
 * LSTM cell element math on hot GEMM tiles, and the activation table it draws from.
 *
 * The recurrent BRGEMM of one step leaves the four gate pre-activations of a tile (rows = batch
 * entries, 16 lanes = hidden units of one block) in cache; these functions finish the step on
 * that tile at once: activations, cell update, hidden state (forward), or the gate gradients
 * (backward).  Activations come from a table (dlcpu_act_table) chosen per ISA path and
 * flavour (exact, fast, ktanh: approx_f32.h); on AVX-512 each flavour has its own fused LSTM
 * tiles, so an approximation runs inside the tile, not as a separate pass.
 *
 * Layouts (floats): gate g of row n at  gates + g*gate_stride + n*ldg + lane   (row-major G[t]),
 * states c, h at  c + n*16 + lane  within one hidden block of a blocked [K/16][N][16] tensor.
 */
#ifndef DLCPU_RNN_F32_H
#define DLCPU_RNN_F32_H
#include <math.h>
#include <stdint.h>
#include <immintrin.h>
#include "isa.h"
#include "approx_f32.h"

/* ---------------------------------------------------------------------------------------- */
/* Activations over 16 contiguous floats, in place                                          */
/* ---------------------------------------------------------------------------------------- */
typedef void (*dlcpu_act16_fn)(float *v);

/* Scalar rows, one per flavour (the definitions of approx_f32.h with the published K-TanH table) */
#define DLCPU_ACT16_SCALAR(NAME, IMPL)                                                               \
    static void dlcpu_sigmoid16_##NAME(float *v)                                                     \
    {                                                                                                \
        for (int l = 0; l < 16; l++)                                                                 \
            v[l] = dlcpu_sigmoid_scalar1(v[l], IMPL, dlcpu_ktanh_published_base, dlcpu_ktanh_published_shift); \
    }                                                                                                \
    static void dlcpu_tanh16_##NAME(float *v)                                                        \
    {                                                                                                \
        for (int l = 0; l < 16; l++)                                                                 \
            v[l] = dlcpu_tanh_scalar1(v[l], IMPL, dlcpu_ktanh_published_base, dlcpu_ktanh_published_shift); \
    }
DLCPU_ACT16_SCALAR(scalar_exact, DLCPU_ACT_EXACT)
DLCPU_ACT16_SCALAR(scalar_fast, DLCPU_ACT_FAST)
DLCPU_ACT16_SCALAR(scalar_ktanh, DLCPU_ACT_KTANH)

/* AVX2: the fast tanh and K-TanH 8 lanes at a time (sigmoid stays scalar on this path) */
static void dlcpu_tanh16_avx2_fast(float *v)
{
    dlcpu_act_avx2(DLCPU_OP_TANH, 0, DLCPU_ACT_FAST, v, NULL, v, 16, 1.0f, dlcpu_ktanh_published_base,
                   dlcpu_ktanh_published_shift);
}

static void dlcpu_tanh16_avx2_ktanh(float *v)
{
    dlcpu_act_avx2(DLCPU_OP_TANH, 0, DLCPU_ACT_KTANH, v, NULL, v, 16, 1.0f, dlcpu_ktanh_published_base,
                   dlcpu_ktanh_published_shift);
}

/* A row of the table: the activations over 16 floats, and optionally whole LSTM and GRU forward
 * tiles fused in registers (NULL: the generic tiles below, built on sigmoid/tanh).  The fused AVX-512
 * tiles keep the four gates of a row in zmm registers instead of calling sigmoid/tanh through
 * pointers on memory, and vectorize the cell arithmetic that the generic C leaves at the
 * baseline ISA: the forward recurrent loop at K=256, N=64 spent 0.19 of its 0.86 ms there. */
struct dlcpu_act_table_s;
typedef void (*dlcpu_lstm_fwd_fn)(float *gates, int64_t gate_stride, int64_t ldg,
                                  const float *c_prev, float *c, float *h, int64_t rows);
typedef void (*dlcpu_lstm_bwd_fn)(const float *gates, int64_t gate_stride, int64_t ldg,
                                  const float *c_prev, const float *c, const float *dh,
                                  float *dc, float *dc_prev, float *dgates, int64_t rows);
typedef void (*dlcpu_gru_fwd_fn)(float *gates, int64_t gate_stride, int64_t ldg, const float *hn, int64_t ldn,
                                 const float *h_prev, float *h, int64_t rows);
typedef struct dlcpu_act_table_s {
    dlcpu_act16_fn sigmoid, tanh;
    dlcpu_lstm_fwd_fn lstm_fwd;
    dlcpu_lstm_bwd_fn lstm_bwd;
    dlcpu_gru_fwd_fn gru_fwd;
} dlcpu_act_table_t;

/* ---------------------------------------------------------------------------------------- */
/* AVX-512 rows: activations and whole LSTM tiles, one set per flavour                      */
/* ---------------------------------------------------------------------------------------- */
/* The flavour is a constant in each instance, so the activations inline into the tile (the
 * K-TanH tables are loaded into two zmm once per tile call). */
#define DLCPU_ACT_ROW_AVX512(NAME, IMPL)                                                             \
static DLCPU_TARGET_AVX512 void dlcpu_sigmoid16_avx512_##NAME(float *v)                              \
{                                                                                                    \
    const dlcpu_ktanh_regs_t k = dlcpu_ktanh_regs_from(dlcpu_ktanh_published_entry);                 \
    _mm512_storeu_ps(v, dlcpu_sigmoid_impl_avx512(_mm512_loadu_ps(v), IMPL, k));                     \
}                                                                                                    \
static DLCPU_TARGET_AVX512 void dlcpu_tanh16_avx512_##NAME(float *v)                                 \
{                                                                                                    \
    const dlcpu_ktanh_regs_t k = dlcpu_ktanh_regs_from(dlcpu_ktanh_published_entry);                 \
    _mm512_storeu_ps(v, dlcpu_tanh_impl_avx512(_mm512_loadu_ps(v), IMPL, k));                        \
}                                                                                                    \
static DLCPU_TARGET_AVX512 void                                                                      \
dlcpu_lstm_fwd_tile_avx512_##NAME(float *gates, int64_t gate_stride, int64_t ldg, const float *c_prev, \
                                  float *c, float *h, int64_t rows)                                  \
{                                                                                                    \
    const dlcpu_ktanh_regs_t k = dlcpu_ktanh_regs_from(dlcpu_ktanh_published_entry);                 \
    for (int64_t n = 0; n < rows; n++) {                                                             \
        float *gi = gates + n * ldg, *gf = gi + gate_stride, *gg = gf + gate_stride, *go = gg + gate_stride; \
        const __m512 i = dlcpu_sigmoid_impl_avx512(_mm512_loadu_ps(gi), IMPL, k);                    \
        const __m512 f = dlcpu_sigmoid_impl_avx512(_mm512_loadu_ps(gf), IMPL, k);                    \
        const __m512 g = dlcpu_tanh_impl_avx512(_mm512_loadu_ps(gg), IMPL, k);                       \
        const __m512 o = dlcpu_sigmoid_impl_avx512(_mm512_loadu_ps(go), IMPL, k);                    \
        _mm512_storeu_ps(gi, i);                                                                     \
        _mm512_storeu_ps(gf, f);                                                                     \
        _mm512_storeu_ps(gg, g);                                                                     \
        _mm512_storeu_ps(go, o);                                                                     \
        const __m512 cn = _mm512_fmadd_ps(f, _mm512_loadu_ps(c_prev + n * 16), _mm512_mul_ps(i, g)); \
        _mm512_storeu_ps(c + n * 16, cn);                                                            \
        _mm512_storeu_ps(h + n * 16, _mm512_mul_ps(o, dlcpu_tanh_impl_avx512(cn, IMPL, k)));         \
    }                                                                                                \
}                                                                                                    \
static DLCPU_TARGET_AVX512 void                                                                      \
dlcpu_lstm_bwd_tile_avx512_##NAME(const float *gates, int64_t gate_stride, int64_t ldg,              \
                                  const float *c_prev, const float *c, const float *dh, float *dc,   \
                                  float *dc_prev, float *dgates, int64_t rows)                       \
{                                                                                                    \
    const dlcpu_ktanh_regs_t k = dlcpu_ktanh_regs_from(dlcpu_ktanh_published_entry);                 \
    const __m512 one = _mm512_set1_ps(1.0f);                                                         \
    for (int64_t n = 0; n < rows; n++) {                                                             \
        const float *gi = gates + n * ldg, *gf = gi + gate_stride, *gg = gf + gate_stride, *go = gg + gate_stride; \
        float *di = dgates + n * ldg, *df = di + gate_stride, *dg = df + gate_stride, *dO = dg + gate_stride; \
        const __m512 i = _mm512_loadu_ps(gi), f = _mm512_loadu_ps(gf);                               \
        const __m512 g = _mm512_loadu_ps(gg), o = _mm512_loadu_ps(go);                               \
        const __m512 tc = dlcpu_tanh_impl_avx512(_mm512_loadu_ps(c + n * 16), IMPL, k);              \
        const __m512 d = _mm512_loadu_ps(dh + n * 16);                                               \
        const __m512 dcl = _mm512_fmadd_ps(_mm512_mul_ps(d, o), _mm512_fnmadd_ps(tc, tc, one),       \
                                           _mm512_loadu_ps(dc + n * 16));                            \
        _mm512_storeu_ps(dO, _mm512_mul_ps(_mm512_mul_ps(d, tc), _mm512_mul_ps(o, _mm512_sub_ps(one, o)))); \
        _mm512_storeu_ps(di, _mm512_mul_ps(_mm512_mul_ps(dcl, g), _mm512_mul_ps(i, _mm512_sub_ps(one, i)))); \
        _mm512_storeu_ps(dg, _mm512_mul_ps(_mm512_mul_ps(dcl, i), _mm512_fnmadd_ps(g, g, one)));     \
        _mm512_storeu_ps(df, _mm512_mul_ps(_mm512_mul_ps(dcl, _mm512_loadu_ps(c_prev + n * 16)),     \
                                           _mm512_mul_ps(f, _mm512_sub_ps(one, f))));                \
        _mm512_storeu_ps(dc_prev + n * 16, _mm512_mul_ps(dcl, f));                                   \
    }                                                                                                \
}                                                                                                    \
static DLCPU_TARGET_AVX512 void                                                                      \
dlcpu_gru_fwd_tile_avx512_##NAME(float *gates, int64_t gate_stride, int64_t ldg, const float *hn,    \
                                 int64_t ldn, const float *h_prev, float *h, int64_t rows)           \
{                                                                                                    \
    const dlcpu_ktanh_regs_t k = dlcpu_ktanh_regs_from(dlcpu_ktanh_published_entry);                 \
    for (int64_t n = 0; n < rows; n++) {                                                             \
        float *gr = gates + n * ldg, *gz = gr + gate_stride, *gn = gz + gate_stride;                 \
        const __m512 r = dlcpu_sigmoid_impl_avx512(_mm512_loadu_ps(gr), IMPL, k);                    \
        const __m512 z = dlcpu_sigmoid_impl_avx512(_mm512_loadu_ps(gz), IMPL, k);                    \
        const __m512 c = dlcpu_tanh_impl_avx512(                                                     \
            _mm512_fmadd_ps(r, _mm512_loadu_ps(hn + n * ldn), _mm512_loadu_ps(gn)), IMPL, k);        \
        _mm512_storeu_ps(gr, r);                                                                     \
        _mm512_storeu_ps(gz, z);                                                                     \
        _mm512_storeu_ps(gn, c);                                                                     \
        /* (1 - z) c + z h_prev = c + z (h_prev - c) */                                              \
        _mm512_storeu_ps(h + n * 16, _mm512_fmadd_ps(z, _mm512_sub_ps(_mm512_loadu_ps(h_prev + n * 16), c), c)); \
    }                                                                                                \
}
DLCPU_ACT_ROW_AVX512(exact, DLCPU_ACT_EXACT)
DLCPU_ACT_ROW_AVX512(fast, DLCPU_ACT_FAST)
DLCPU_ACT_ROW_AVX512(ktanh, DLCPU_ACT_KTANH)

/* One row per (ISA path, flavour). */
static inline dlcpu_act_table_t dlcpu_act_table(int isa, int impl)
{
    dlcpu_act_table_t t = {dlcpu_sigmoid16_scalar_exact, dlcpu_tanh16_scalar_exact, NULL, NULL, NULL};
    if (impl == DLCPU_ACT_FAST) {
        t.sigmoid = dlcpu_sigmoid16_scalar_fast;
        t.tanh = isa == DLCPU_ISA_AVX2 ? dlcpu_tanh16_avx2_fast : dlcpu_tanh16_scalar_fast;
    } else if (impl == DLCPU_ACT_KTANH) {
        t.sigmoid = dlcpu_sigmoid16_scalar_ktanh;
        t.tanh = isa == DLCPU_ISA_AVX2 ? dlcpu_tanh16_avx2_ktanh : dlcpu_tanh16_scalar_ktanh;
    }
    if (isa == DLCPU_ISA_AVX512) {
        if (impl == DLCPU_ACT_FAST) {
            dlcpu_act_table_t a = {dlcpu_sigmoid16_avx512_fast, dlcpu_tanh16_avx512_fast,
                                   dlcpu_lstm_fwd_tile_avx512_fast, dlcpu_lstm_bwd_tile_avx512_fast,
                                   dlcpu_gru_fwd_tile_avx512_fast};
            t = a;
        } else if (impl == DLCPU_ACT_KTANH) {
            dlcpu_act_table_t a = {dlcpu_sigmoid16_avx512_ktanh, dlcpu_tanh16_avx512_ktanh,
                                   dlcpu_lstm_fwd_tile_avx512_ktanh, dlcpu_lstm_bwd_tile_avx512_ktanh,
                                   dlcpu_gru_fwd_tile_avx512_ktanh};
            t = a;
        } else {
            dlcpu_act_table_t a = {dlcpu_sigmoid16_avx512_exact, dlcpu_tanh16_avx512_exact,
                                   dlcpu_lstm_fwd_tile_avx512_exact, dlcpu_lstm_bwd_tile_avx512_exact,
                                   dlcpu_gru_fwd_tile_avx512_exact};
            t = a;
        }
    }
    return t;
}

/* ---------------------------------------------------------------------------------------- */
/* LSTM forward: finish rows [0, rows) of one hidden block                                  */
/* ---------------------------------------------------------------------------------------- */
/* gates: pre-activations i, f, g, o (in place -> activations, kept for backward);
 * c_prev/c/h: blocked [N][16] slices of this hidden block; h_out (optional): row-major y row. */
static inline void
dlcpu_lstm_fwd_tile(float *gates, int64_t gate_stride, int64_t ldg, const float *c_prev,
                    float *c, float *h, int64_t rows, const dlcpu_act_table_t *act)
{
    if (act->lstm_fwd) {
        act->lstm_fwd(gates, gate_stride, ldg, c_prev, c, h, rows);
        return;
    }
    for (int64_t n = 0; n < rows; n++) {
        float *gi = gates + n * ldg, *gf = gi + gate_stride, *gg = gf + gate_stride, *go = gg + gate_stride;
        float tc[16];
        act->sigmoid(gi);
        act->sigmoid(gf);
        act->tanh(gg);
        act->sigmoid(go);
        for (int l = 0; l < 16; l++) {
            const float cn = gf[l] * c_prev[n * 16 + l] + gi[l] * gg[l];
            c[n * 16 + l] = cn;
            tc[l] = cn;
        }
        act->tanh(tc);
        for (int l = 0; l < 16; l++) h[n * 16 + l] = go[l] * tc[l];
    }
}

/* LSTM backward for one hidden block: from dh (incoming: dy_t + recurrent), dc (carried), the
 * saved activations and states, write the pre-activation gate gradients dgates (row-major like
 * gates) and the carried dc for step t-1 (dc_prev, may alias dc). */
static inline void
dlcpu_lstm_bwd_tile(const float *gates, int64_t gate_stride, int64_t ldg, const float *c_prev,
                    const float *c, const float *dh, float *dc, float *dc_prev, float *dgates,
                    int64_t rows, const dlcpu_act_table_t *act)
{
    if (act->lstm_bwd) {
        act->lstm_bwd(gates, gate_stride, ldg, c_prev, c, dh, dc, dc_prev, dgates, rows);
        return;
    }
    for (int64_t n = 0; n < rows; n++) {
        const float *gi = gates + n * ldg, *gf = gi + gate_stride, *gg = gf + gate_stride, *go = gg + gate_stride;
        float *di = dgates + n * ldg, *df = di + gate_stride, *dg = df + gate_stride, *dO = dg + gate_stride;
        float tc[16];
        for (int l = 0; l < 16; l++) tc[l] = c[n * 16 + l];
        act->tanh(tc);
        for (int l = 0; l < 16; l++) {
            const float dhl = dh[n * 16 + l];
            const float dcl = dc[n * 16 + l] + dhl * go[l] * (1.0f - tc[l] * tc[l]);
            dO[l] = dhl * tc[l] * go[l] * (1.0f - go[l]);
            di[l] = dcl * gg[l] * gi[l] * (1.0f - gi[l]);
            dg[l] = dcl * gi[l] * (1.0f - gg[l] * gg[l]);
            df[l] = dcl * c_prev[n * 16 + l] * gf[l] * (1.0f - gf[l]);
            dc_prev[n * 16 + l] = dcl * gf[l];
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Vanilla RNN: h = act(pre), act tanh or relu                                              */
/* ---------------------------------------------------------------------------------------- */
static inline void
dlcpu_rnn_fwd_tile(float *gates, int64_t ldg, float *h, int64_t rows, int relu,
                   const dlcpu_act_table_t *act)
{
    for (int64_t n = 0; n < rows; n++) {
        float *g = gates + n * ldg;
        if (relu) {
            for (int l = 0; l < 16; l++) g[l] = g[l] < 0.0f ? 0.0f : g[l];
        } else {
            act->tanh(g);
        }
        for (int l = 0; l < 16; l++) h[n * 16 + l] = g[l];
    }
}

/* dgates = dh * act'(pre), from the saved outputs y = act(pre): tanh' = 1 - y^2, relu' = y > 0. */
static inline void
dlcpu_rnn_bwd_tile(const float *gates, int64_t ldg, const float *dh, float *dgates, int64_t rows,
                   int relu)
{
    for (int64_t n = 0; n < rows; n++) {
        const float *y = gates + n * ldg;
        float *d = dgates + n * ldg;
        for (int l = 0; l < 16; l++) {
            const float g = dh[n * 16 + l];
            d[l] = relu ? (y[l] > 0.0f ? g : 0.0f) : g * (1.0f - y[l] * y[l]);
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* GRU (PyTorch's formulation): r, z from x and h; n = tanh(x_n + r * (W_hn h + b_hn))       */
/* ---------------------------------------------------------------------------------------- */
/* gates: pre-activations (x part + recurrent part for r, z; x part only for n) -> activations
 * r, z, n in place; hn: W_hn h + b_hn of this tile (kept for backward); h_prev/h: blocked. */
static inline void
dlcpu_gru_fwd_tile(float *gates, int64_t gate_stride, int64_t ldg, const float *hn, int64_t ldn,
                   const float *h_prev, float *h, int64_t rows, const dlcpu_act_table_t *act)
{
    if (act->gru_fwd) {
        act->gru_fwd(gates, gate_stride, ldg, hn, ldn, h_prev, h, rows);
        return;
    }
    for (int64_t n = 0; n < rows; n++) {
        float *gr = gates + n * ldg, *gz = gr + gate_stride, *gn = gz + gate_stride;
        const float *hnr = hn + n * ldn;
        act->sigmoid(gr);
        act->sigmoid(gz);
        for (int l = 0; l < 16; l++) gn[l] += gr[l] * hnr[l];
        act->tanh(gn);
        for (int l = 0; l < 16; l++)
            h[n * 16 + l] = (1.0f - gz[l]) * gn[l] + gz[l] * h_prev[n * 16 + l];
    }
}

/* GRU backward for one hidden block: dh is the step's total dh; writes dgx (gradients of the
 * x-side pre-activations r, z, n), dgh (of the h-side ones: r, z and W_hn h + b_hn) and
 * dh_direct = dh * z (the part of dh_{t-1} that skips the recurrent product). */
static inline void
dlcpu_gru_bwd_tile(const float *gates, int64_t gate_stride, int64_t ldg, const float *hn,
                   int64_t ldn, const float *h_prev, const float *dh, float *dh_direct,
                   float *dgx, float *dgh, int64_t rows)
{
    for (int64_t n = 0; n < rows; n++) {
        const float *gr = gates + n * ldg, *gz = gr + gate_stride, *gn = gz + gate_stride;
        const float *hnr = hn + n * ldn;
        float *xr = dgx + n * ldg, *xz = xr + gate_stride, *xn = xz + gate_stride;
        float *hr = dgh + n * ldg, *hz = hr + gate_stride, *hh = hz + gate_stride;
        for (int l = 0; l < 16; l++) {
            const float d = dh[n * 16 + l];
            const float dn = d * (1.0f - gz[l]) * (1.0f - gn[l] * gn[l]);
            const float dz = d * (h_prev[n * 16 + l] - gn[l]) * gz[l] * (1.0f - gz[l]);
            const float dr = dn * hnr[l] * gr[l] * (1.0f - gr[l]);
            xr[l] = dr;
            xz[l] = dz;
            xn[l] = dn;
            hr[l] = dr;
            hz[l] = dz;
            hh[l] = dn * gr[l];
            dh_direct[n * 16 + l] = d * gz[l];
        }
    }
}
#endif
