/*
 * The tile and register-budget constants of dlcpu: the one place they are written.
 *
 * brgemm_f32.h instantiates its microkernels for exactly these budgets, the drivers (pyx/*.pyx)
 * and the planners (dlcpu/conv.py, dlcpu/gemm.py, dlcpu/rnn.py) size their tiles from them, and
 * Python reads them through dlcpu._ext.cpu.TILE_CONSTANTS (for the planners and --show-plan), so
 * a budget cannot be written down twice and drift.  Whether a given tile was compiled is answered
 * by dlcpu_brgemm_has_tile() (brgemm_f32.h), from the instance tables themselves.
 */
#ifndef DLCPU_TILES_H
#define DLCPU_TILES_H
#include "isa.h"

/* Channels per block of the blocked layouts (one AVX-512 vector of fp32). */
#define DLCPU_CHANNEL_BLOCK 16

/* Largest accumulator tile, in 16-float groups (mv * nr * nc), each ISA's kernels are built for.
 * AVX-512: 32 zmm = 28 accumulators + 2 weight vectors + broadcasts.
 * AVX2: 16 ymm, a 16-float group is 2 ymm: 12 + 2 weights + 1 broadcast.
 * Scalar: no register file; 16 groups (1 KiB of stack) is the tile the GEMM's row tile of
 * 8 rows x 2 groups has always used, and the largest the scalar path is asked for. */
#define DLCPU_AVX512_MAX_ACC 28
#define DLCPU_AVX2_MAX_ACC 6
#define DLCPU_SCALAR_MAX_ACC 16

/* Bounds of the instance tables: output-channel groups per call, pixel rows, pixel columns
 * (normal flavour) and dW rows (transposed-B flavour: a dW block has 16 input-channel rows). */
#define DLCPU_BR_MAX_MV 2
#define DLCPU_BR_MAX_NR 4
#define DLCPU_BR_MAX_NC 28
#define DLCPU_BRT_MAX_NC 16
/* Row tiles (nc = 1, up to 16 rows) of the bf16 and int16 kernels, built for the AVX-512 paths:
 * the pair weight update's calls, whose rows are input channels (pyx/conv_wu.pyx). */
#define DLCPU_BR_ROWS_MAX_NR 16

/* How a direct-convolution work item gets its input (pyx/conv_direct.pyx, pyx/conv_wu.pyx). */
enum {
    DLCPU_TILE_NONE = 0,        /* 1x1, stride 1, unpadded: read in place */
    DLCPU_TILE_PADDED = 1,      /* zero-padded, stride-phase-split copy of the item's rows */
    DLCPU_TILE_SUBSAMPLED = 2   /* strided 1x1: dense copy of the pixels used */
};

/* Register budget (accumulator groups) of one call on an ISA path. */
static inline int dlcpu_max_acc(int isa)
{
    if (isa == DLCPU_ISA_AVX512) return DLCPU_AVX512_MAX_ACC;
    if (isa == DLCPU_ISA_AVX2) return DLCPU_AVX2_MAX_ACC;
    return DLCPU_SCALAR_MAX_ACC;
}

#endif
