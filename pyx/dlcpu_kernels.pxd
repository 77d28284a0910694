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
    int dlcpu_brgemm_bf16(const dlcpu_brgemm_f32_t *p, const uint16_t *a0, const uint16_t *b0, int isa, int native)

cdef extern from "convert.h" nogil:
    void dlcpu_f32_to_bf16(int isa, int native, const float *x, uint16_t *y, int64_t n)
    void dlcpu_f32_to_bf16_vnni(int isa, int native, const float *x, uint16_t *y, int64_t blocks)
    void dlcpu_bf16_to_f32(int isa, const uint16_t *x, float *y, int64_t n)
    uint32_t dlcpu_absmax_bits(int isa, const float *x, int64_t n)
    void dlcpu_dfp16_quantize(int isa, const float *x, int16_t *y, int64_t n, double scale, int limit,
                              int stochastic, uint32_t key, uint32_t first)
    uint32_t dlcpu_mix32(uint32_t h)

cdef extern from "conv_f32.h" nogil:
    void dlcpu_transpose_16x16_f32(const float *src, float *dst)
    const float *dlcpu_conv_item_input(int mode, const float *x_img, float *tile, int64_t Cb, int64_t H,
                                       int64_t W, int64_t p0, int64_t sh, int64_t sw, int64_t ph,
                                       int64_t pw, int64_t TR, int64_t PW)
    const uint16_t *dlcpu_conv_item_input_bf16(int mode, const uint16_t *x_img, uint16_t *tile, int64_t Cb,
                                               int64_t H, int64_t W, int64_t p0, int64_t sh, int64_t sw,
                                               int64_t ph, int64_t pw, int64_t TR, int64_t PW)

cdef extern from "peak.h" nogil:
    double dlcpu_peak_run(int isa, int64_t iters)


# ------------------------------------------------------------------ one call, fp32 or bf16 operands
ctypedef fused brgemm_operand:
    float
    uint16_t


cdef inline int brgemm_call(dlcpu_brgemm_f32_t *p, const brgemm_operand *a, const brgemm_operand *b, float *c,
                            int isa, int native) noexcept nogil:
    """Run the BRGEMM that p describes (geometry, offsets, epilogue) on operands a, b (fp32, or
    bf16 patterns in VNNI-paired blocks; native: VDPBF16PS) into c.  The drivers walk their
    blocks once for both element types and call this per register tile.  bf16 runs the strd and
    offs variants with B not transposed (-1 otherwise, as for a tile the build lacks)."""
    p.c = c
    if brgemm_operand is float:
        p.a = a
        p.b = b
        return dlcpu_brgemm_f32(p, isa)
    else:
        return dlcpu_brgemm_bf16(p, a, b, isa, native)
