# Cython's view of pyx/kernels/plans.h (the plan structs) and pyx/kernels/tiles.h (the tile and
# register-budget constants).  The C headers are the definition; this file only repeats the field
# lists because Cython needs them to generate the dict -> struct conversion.
from libc.stdint cimport int64_t

from dlcpu_kernels cimport dlcpu_brgemm_has_tile

cdef extern from "tiles.h" nogil:
    enum:
        DLCPU_CHANNEL_BLOCK
        DLCPU_AVX512_MAX_ACC
        DLCPU_AVX2_MAX_ACC
        DLCPU_SCALAR_MAX_ACC
        DLCPU_BR_MAX_MV
        DLCPU_BR_MAX_NR
        DLCPU_BR_MAX_NC
        DLCPU_BRT_MAX_NC
        DLCPU_TILE_NONE
        DLCPU_TILE_PADDED
        DLCPU_TILE_SUBSAMPLED
    int dlcpu_max_acc(int isa)

cdef extern from "plans.h" nogil:
    ctypedef struct dlcpu_conv_shape_t:
        int64_t N, C, K, Cb, Kb, H, W, P, Q, R, S
        int64_t stride_h, stride_w, pad_h, pad_w, pad_b, pad_r

    ctypedef struct dlcpu_conv_plan_t:
        dlcpu_conv_shape_t s
        int isa, n_threads, tile_mode, mv, nr, nc, k, relu
        int64_t rows_per_item, row_blocks, kb_per_group, k_groups
        int64_t tile_rows, tile_phase_width, tile_floats

    ctypedef struct dlcpu_wu_plan_t:
        dlcpu_conv_shape_t s
        int isa, n_threads, tile_mode, max_acc, nc, nr, k_inner
        int64_t rows_per_block, row_blocks, images_per_block
        int64_t kb_per_item, k_groups, cb_per_item, c_groups
        int64_t tile_rows, tile_phase_width, tile_floats
        int64_t image_splits

    ctypedef struct dlcpu_wino_plan_t:
        dlcpu_conv_shape_t s
        int isa, n_threads, alpha, mv, nc, k, relu
        int64_t tiles_h, tiles_w, tiles_per_item, kb_per_item, k_groups

    ctypedef struct dlcpu_gemm_plan_t:
        int isa, n_threads, rows, kc_blocks, group_cols, split_rows
        int64_t m, n, K

    enum:
        DLCPU_CELL_LSTM
        DLCPU_CELL_GRU
        DLCPU_CELL_RNN_TANH
        DLCPU_CELL_RNN_RELU

    ctypedef struct dlcpu_rnn_plan_t:
        int cell, gates, isa, n_threads, act
        int64_t T, N, Kb, rows, n_tiles, fwd_items, gate_items, pair_items


cdef inline int require_tiles(str plan, int isa, int max_mv, int max_nr, int max_nc) except -1:
    """Refuse a plan whose driver may ask for a BRGEMM tile (mv 1 or max_mv, nr <= max_nr,
    nc <= max_nc, B not transposed) that the compiled tile table lacks, naming the first."""
    cdef int mv, nr, nc
    for mv in sorted({1, max_mv}):
        for nr in range(1, max_nr + 1):
            for nc in range(1, max_nc + 1):
                if not dlcpu_brgemm_has_tile(isa, mv, nr, nc, 0):
                    raise ValueError(f"{plan} plan needs a BRGEMM tile mv={mv} nr={nr} nc={nc} that this build "
                                     f"lacks for isa code {isa} (pyx/kernels/brgemm_f32.h)")
    return 0
