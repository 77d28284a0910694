# Declarations of the C microkernels in pyx/kernels/*.h, shared by every driver module.
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t

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

cdef extern from "tiles.h" nogil:
    enum:
        DLCPU_BR_ROWS_MAX_NR

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

cdef extern from "brgemm_int.h" nogil:
    enum:
        DLCPU_INT_U8S8
        DLCPU_INT_S16
        DLCPU_INT_U7S8
    ctypedef struct dlcpu_brgemm_int_t:
        int format
        int flush_steps
        int64_t flush_blocks
        const float *scale
        const float *block_scale
        int block_groups
        const int32_t *comp
        int out_u8
        float res_scale
        int64_t res_offset
    int dlcpu_brgemm_int(const dlcpu_brgemm_f32_t *p, const dlcpu_brgemm_int_t *q, const void *a0, const void *b0,
                         int isa, int native)

cdef extern from "convert.h" nogil:
    void dlcpu_f32_to_bf16(int isa, int native, const float *x, uint16_t *y, int64_t n)
    void dlcpu_f32_to_bf16_vnni(int isa, int native, const float *x, uint16_t *y, int64_t blocks)
    int64_t dlcpu_bf16_to_vnni(int isa, const uint16_t *x, uint16_t *y, int64_t blocks)
    int64_t dlcpu_u16_transpose16_avx512(const uint16_t *x, int n, uint16_t *y, int64_t ys)
    int64_t dlcpu_u16_transpose16_scalar(const uint16_t *x, int n, uint16_t *y, int64_t ys)
    void dlcpu_u16_window_avx512(const uint16_t *src, int64_t w, int64_t col0, int64_t sw, int64_t nq, uint16_t *dst)
    void dlcpu_u16_window_scalar(const uint16_t *src, int64_t w, int64_t col0, int64_t sw, int64_t nq, uint16_t *dst)
    void dlcpu_bf16_to_f32(int isa, const uint16_t *x, float *y, int64_t n)
    uint32_t dlcpu_absmax_bits(int isa, const float *x, int64_t n)
    void dlcpu_dfp16_quantize(int isa, const float *x, int16_t *y, int64_t n, double scale, int limit,
                              int stochastic, uint32_t key, uint32_t first)
    uint32_t dlcpu_mix32(uint32_t h)
    void dlcpu_quantize_u8(int isa, const float *x, uint8_t *y, int64_t n, double scale, int zero_point)

cdef extern from "conv_f32.h" nogil:
    void dlcpu_transpose_16x16_f32(const float *src, float *dst)
    void dlcpu_transpose_16x16_f32_to_bf16_vnni(int isa, int native, const float *src, uint16_t *dst)
    const float *dlcpu_conv_item_input(int mode, const float *x_img, float *tile, int64_t Cb, int64_t H,
                                       int64_t W, int64_t p0, int64_t sh, int64_t sw, int64_t ph,
                                       int64_t pw, int64_t TR, int64_t PW)
    const void *dlcpu_conv_item_input_px(int mode, const void *x_img, void *tile, int64_t Cb, int64_t H, int64_t W,
                                         int64_t p0, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t TR,
                                         int64_t PW, int64_t px, int fill)

cdef extern from "peak.h" nogil:
    double dlcpu_peak_run(int isa, int64_t iters)


# ------------------------------------------------------------------ one call, any operand type
ctypedef fused brgemm_operand:
    float
    uint16_t
    uint8_t
    int16_t


cdef inline int brgemm_call(dlcpu_brgemm_f32_t *p, const brgemm_operand *a, const brgemm_operand *b, float *c,
                            int isa, int native, const dlcpu_brgemm_int_t *q) noexcept nogil:
    """Run the BRGEMM that p describes (geometry, offsets, epilogue) on operands a, b into c:
    fp32; bf16 patterns in VNNI-paired blocks (native: VDPBF16PS); 8-bit (a: int8 weights in
    VNNI quads, read through a uint8 pointer; b: uint8 activations) or int16 (DFP-16 mantissas,
    VNNI pairs) with q's flush schedule and multipliers (native: VPDPBUSD / VPDPWSSD).  The
    drivers walk their blocks once for every element type and call this per register tile.  The
    low-precision kernels run the strd and offs variants with B not transposed (-1 otherwise, as
    for a tile the build lacks)."""
    p.c = c
    if brgemm_operand is float:
        p.a = a
        p.b = b
        return dlcpu_brgemm_f32(p, isa)
    elif brgemm_operand is uint16_t:
        return dlcpu_brgemm_bf16(p, a, b, isa, native)
    else:
        return dlcpu_brgemm_int(p, q, a, b, isa, native)


cdef inline dlcpu_brgemm_int_t integer_call(tuple spec) except *:
    """The dlcpu_brgemm_int_t of an integer call from the tuple dlcpu/quantized.py builds:
    (format, flush_steps, flush_blocks, scale, block_scale, block_groups, comp[, "u8"]), each
    array a 1-d contiguous float32 (int32 for comp) array or None; a last "u8" asks for u8 output
    codes, "u7" for 7-bit ones (at most 127; the multipliers and the bias then in code units:
    brgemm_int.h).  The struct points into the arrays, so the caller
    keeps the tuple alive while the kernels run."""
    cdef dlcpu_brgemm_int_t q
    cdef const float[::1] scale
    cdef const float[::1] block_scale
    cdef const int32_t[::1] comp
    fmt, flush_steps, flush_blocks, scale_a, block_a, block_groups, comp_a = spec[:7]
    q.out_u8 = 0
    q.res_scale = 0
    q.res_offset = 0
    if len(spec) > 7:
        if spec[7:] not in (("u8",), ("u7",)):
            raise ValueError(f"integer_call: the optional last element asks for u8 output codes with 'u8' (codes "
                             f"0..255) or 'u7' (0..127), got {spec[7:]}")
        q.out_u8 = 255 if spec[7] == "u8" else 127
    if fmt not in (DLCPU_INT_U8S8, DLCPU_INT_S16, DLCPU_INT_U7S8):
        raise ValueError(f"integer_call: unknown format code {fmt!r}")
    q.format = fmt
    q.flush_steps = flush_steps
    q.flush_blocks = flush_blocks
    q.block_groups = block_groups
    q.scale = NULL
    q.block_scale = NULL
    q.comp = NULL
    if scale_a is not None:
        scale = scale_a
        q.scale = &scale[0]
    if block_a is not None:
        block_scale = block_a
        q.block_scale = &block_scale[0]
    if comp_a is not None:
        comp = comp_a
        q.comp = &comp[0]
    return q


cdef inline dlcpu_brgemm_int_t integer_call_for(const brgemm_operand *operand, tuple spec, str fn) except *:
    """integer_call(spec) for a driver whose operands are `operand`'s type (uint8: int8 and
    ternary, 8- or 7-bit codes; int16: DFP-16), refusing a missing description or one of the
    other format."""
    cdef dlcpu_brgemm_int_t q
    cdef int want = DLCPU_INT_S16 if brgemm_operand is int16_t else DLCPU_INT_U8S8
    if spec is None:
        raise ValueError(f"{fn}: integer operands need their call description (integer=)")
    q = integer_call(spec)
    if q.format != want and not (q.format == DLCPU_INT_U7S8 and want == DLCPU_INT_U8S8):
        raise ValueError(f"{fn}: the call description's format does not match the operand type")
    return q
