# Declarations of the C microkernels in pyx/kernels/*.h, shared by every driver module.
from libc.stdint cimport int16_t, int64_t, uint16_t, uint32_t

cdef extern from "isa.h" nogil:
    enum:
        DLCPU_ISA_SCALAR
        DLCPU_ISA_AVX2
        DLCPU_ISA_AVX512
    int dlcpu_cpu_features()

cdef extern from "threads.h" nogil:
    int dlcpu_omp_enabled()
    int dlcpu_omp_max_threads()
    int dlcpu_omp_thread_num()

cdef extern from "brgemm_f32.h" nogil:
    enum:
        DLCPU_BR_STRD
        DLCPU_BR_OFFS
        DLCPU_BR_ADDR
    ctypedef struct dlcpu_brgemm_f32_t:
        const float *a
        const float *b
        const float *const *a_ptrs
        const float *const *b_ptrs
        const int64_t *a_offs
        const int64_t *b_offs
        int64_t a_stride
        int64_t b_stride
        int64_t batch
        int kind
        int k
        int mv
        int nr
        int nc
        int64_t a_mstride
        int64_t b_rstride
        float *c
        int64_t ldc
        int64_t c_rstride
        int64_t c_mstride
        int beta
        const float *bias
        int relu
        int b_trans
    int dlcpu_brgemm_f32(const dlcpu_brgemm_f32_t *p, int isa)
    int dlcpu_brgemm_f32_max_pixels(int isa, int mv)
    int dlcpu_brgemm_has_tile(int isa, int mv, int nr, int nc, int transposed)

cdef extern from "brgemm_bf16.h" nogil:
    ctypedef struct dlcpu_brgemm_bf16_t:
        const uint16_t *a
        const uint16_t *b
        const int64_t *a_offs
        const int64_t *b_offs
        int64_t a_stride
        int64_t b_stride
        int64_t batch
        int kind
        int k
        int mv
        int nr
        int nc
        int64_t a_mstride
        int64_t b_rstride
        float *c
        int64_t ldc
        int64_t c_rstride
        int64_t c_mstride
        int beta
        const float *bias
        int relu
    int dlcpu_brgemm_bf16(const dlcpu_brgemm_bf16_t *p, int isa, int native)

cdef extern from "convert.h" nogil:
    void dlcpu_f32_to_bf16(int isa, int native, const float *x, uint16_t *y, int64_t n)
    void dlcpu_bf16_to_f32(int isa, const uint16_t *x, float *y, int64_t n)
    uint32_t dlcpu_absmax_bits(int isa, const float *x, int64_t n)
    void dlcpu_dfp16_quantize(int isa, const float *x, int16_t *y, int64_t n, double scale, int limit,
                              int stochastic, uint32_t key, uint32_t first)
    uint32_t dlcpu_mix32(uint32_t h)

cdef extern from "conv_f32.h" nogil:
    void dlcpu_conv_pack_tile_f32(const float *x_img, float *tile, int64_t Cb, int64_t H, int64_t W,
                                  int64_t ih0, int64_t TR, int64_t sw, int64_t PW, int64_t pad_w)
    void dlcpu_conv_pack_subsampled_f32(const float *x_img, float *tile, int64_t Cb, int64_t H,
                                        int64_t W, int64_t ih0, int64_t rows, int64_t sh,
                                        int64_t iw0, int64_t cols, int64_t sw)
    void dlcpu_transpose_16x16_f32(const float *src, float *dst)
    const float *dlcpu_conv_item_input(int mode, const float *x_img, float *tile, int64_t Cb, int64_t H,
                                       int64_t W, int64_t p0, int64_t sh, int64_t sw, int64_t ph,
                                       int64_t pw, int64_t TR, int64_t PW)

cdef extern from "peak.h" nogil:
    double dlcpu_peak_run(int isa, int64_t iters)
