/*
 * The plans: how one operation is cut into BRGEMM calls, as C structs, declared once.
 *
 * A planner in Python (dlcpu/conv.py choose_conv_blocking, choose_weight_grad_blocking,
 * choose_winograd_blocking; dlcpu/gemm.py choose_gemm_split; dlcpu/rnn.py choose_recurrent_tiles)
 * decides every field once per shape;
 * dlcpu/_plans.py turns its choice into one of these structs (Cython's dict -> struct coercion,
 * which refuses a missing field), owned by a small Cython class of the driver module that runs it
 * (pyx/conv_direct.pyx, conv_wu.pyx, winograd.pyx, brgemm.pyx, rnn.pyx).  That class checks the plan
 * against the compiled tile table when it is made, and the driver reads the struct directly:
 * no dicts or string lookups between Python and the kernels.  pyx/dlcpu_plans.pxd mirrors these
 * declarations for Cython (the language needs the field list there too); Python reads the fields
 * back from the struct, so the two sides cannot disagree.
 *
 * Fields are int64_t where they enter address arithmetic, int where they are tile sizes or flags.
 */
#ifndef DLCPU_PLANS_H
#define DLCPU_PLANS_H
#include <stdint.h>

/* Geometry of one convolution (dlcpu.conv.ConvShape).  pad_b/pad_r differ from pad_h/pad_w only in
 * the backward-data sub-problems; P and Q already account for them. */
typedef struct {
    int64_t N, C, K, Cb, Kb, H, W, P, Q, R, S;
    int64_t stride_h, stride_w, pad_h, pad_w, pad_b, pad_r;
} dlcpu_conv_shape_t;

/* Direct convolution, forward (and backward-data, which is a forward on dy): work items are
 * (image, K group, output-row block); one call per (K block pair, register tile). */
typedef struct {
    dlcpu_conv_shape_t s;
    int isa, n_threads;
    int tile_mode;              /* DLCPU_TILE_* (tiles.h) */
    int mv, nr, nc;             /* register tile: mv x 16 channels x nr rows x nc columns/pixels */
    int k;                      /* reduction length of one block: 16, or C when C < 16 */
    int relu;
    int64_t rows_per_item, row_blocks;
    int64_t kb_per_group, k_groups;
    int64_t tile_rows, tile_phase_width, tile_floats;
} dlcpu_conv_plan_t;

/* Weight update: work items are (K group, C group); transposed-B calls reduce over pixels. */
typedef struct {
    dlcpu_conv_shape_t s;
    int isa, n_threads;
    int tile_mode;
    int max_acc;                /* accumulator budget of one transposed call (tiles.h) */
    int nc;                     /* dW rows (input channels) per call, <= DLCPU_BRT_MAX_NC */
    int nr;                     /* taps stacked per call at most */
    int k_inner;                /* 1: K blocks inside C blocks */
    int64_t rows_per_block, row_blocks, images_per_block;
    int64_t kb_per_item, k_groups, cb_per_item, c_groups;
    int64_t tile_rows, tile_phase_width, tile_floats;
    int64_t image_splits;       /* image ranges reduced separately, then summed (few items) */
} dlcpu_wu_plan_t;

/* Winograd F(m x m, 3 x 3), m = alpha - 2: work items are (block of tiles, K group). */
typedef struct {
    dlcpu_conv_shape_t s;
    int isa, n_threads;
    int alpha, mv;
    int nc;                     /* transformed tiles per BRGEMM call at most */
    int k, relu;
    int64_t tiles_h, tiles_w, tiles_per_item, kb_per_item, k_groups;
} dlcpu_wino_plan_t;

/* Plain GEMM out = X @ Y on packed operands (pyx/brgemm.pyx gemm_packed). */
typedef struct {
    int isa, n_threads;
    int rows;                   /* rows per X tile (one mv=2 call's pixels) */
    int kc_blocks;              /* K blocks of 16 per chunk (C accumulates across chunks) */
    int group_cols;             /* output columns per group (its Y chunk stays in L2) */
    int split_rows;             /* 1: threads split the row tiles, 0: the column pairs */
    int64_t m, n, K;
} dlcpu_gemm_plan_t;

/* Recurrent time loops (pyx/rnn.pyx): one driver for every cell, parameterised by it.  Work items
 * of a step are (hidden block, row tile) for the gate math and (hidden block pair, row tile) for
 * the recurrent products that run as mv=2 calls. */
enum { DLCPU_CELL_LSTM = 0, DLCPU_CELL_GRU = 1, DLCPU_CELL_RNN_TANH = 2, DLCPU_CELL_RNN_RELU = 3 };

typedef struct {
    int cell;                   /* DLCPU_CELL_* */
    int gates;                  /* 4 (LSTM), 3 (GRU), 1 (RNN) */
    int isa, n_threads;
    int act;                    /* activation flavour: DLCPU_ACT_* (approx_f32.h) */
    int64_t T, N, Kb;
    int64_t rows;               /* batch rows per tile: equal tiles of at most one mv=2 call's pixels */
    int64_t n_tiles;            /* row tiles: ceil(N / rows) */
    int64_t fwd_items;          /* forward items per step */
    int64_t gate_items;         /* backward gate-gradient items per step: Kb * n_tiles */
    int64_t pair_items;         /* backward recurrent-product items per step: ceil(Kb/2) * n_tiles */
} dlcpu_rnn_plan_t;

#endif
