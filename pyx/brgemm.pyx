# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""BRGEMM entry points: the direct call (for tests and users building their own ops) and a
plain GEMM expressed on it (for `dlcpu bench gemm`).

Packed operand layouts (dlcpu/gemm.py packs and validates):
  A blocks  [nblk_a][M/16][k][16]   one block = k rows of M output columns, 16 per group
  B blocks  [nblk_b][n][16]         one block = n pixels of k <= 16 reduction values
  C         [n][ldc]                row-major; group g at column 16*g

GEMM (out = X @ Y, X: m x K, Y: K x n) packs Y like conv weights, Yp[n/16][K/16][16][16], and X
into row tiles Xp[m/T][K/16][T][16], then, per thread over its own row tiles:
    for each K chunk (KC blocks of 16):           C tile accumulates across chunks (beta=1)
      for each column group (NG columns):          Yp chunk of the group stays in L2
        for each row tile:                         Xp chunk of the tile stays in L1
          for each 32-column panel: BRGEMM strd over the chunk's K blocks
T, KC, NG and the thread split are the GEMM plan (dlcpu/gemm.py choose_gemm_split), which arrives
as a GemmPlanStruct owning the C struct dlcpu_gemm_plan_t (pyx/kernels/plans.h), checked against
the compiled tile table when it was made.
"""
from libc.stdint cimport int16_t, int64_t, uint8_t, uint16_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from cython.parallel cimport prange

from dlcpu_kernels cimport (dlcpu_brgemm_f32_t, dlcpu_brgemm_f32, dlcpu_brgemm_f32_max_pixels,
                            dlcpu_brgemm_int_t, brgemm_operand, brgemm_call, integer_call_for, dlcpu_f32_to_bf16,
                            DLCPU_BR_STRD)
from dlcpu_plans cimport dlcpu_gemm_plan_t, require_tiles


cdef class GemmPlanStruct:
    """The C plan of one GEMM, built once from the planner's fields and checked against the tile
    table: calls of mv=2 (or 1 for an odd last column block) x 1 x up to `rows` rows."""
    cdef dlcpu_gemm_plan_t c

    def __init__(self, dict fields):
        self.c = fields
        if self.c.kc_blocks < 1 or self.c.group_cols < 32 or self.c.group_cols % 32:
            raise ValueError(f"GEMM plan: kc_blocks={self.c.kc_blocks} must be >= 1 and group_cols="
                             f"{self.c.group_cols} a positive multiple of 32")
        require_tiles("GEMM", self.c.isa, 2, 1, self.c.rows)

    def fields(self):
        """Every field, read back from the C struct."""
        return self.c


def brgemm_f32(const float[:, :, :, ::1] a, const float[:, :, ::1] b, float[:, ::1] c,
               const int64_t[::1] a_index, const int64_t[::1] b_index, int variant, int k,
               int beta, const float[::1] bias, bint relu, int isa):
    """C = beta*C + sum_i B[b_i] @ A[a_i] (+ bias, ReLU) with every tile one BRGEMM call."""
    cdef int64_t batch = a_index.shape[0]
    cdef int64_t groups = a.shape[1], n = b.shape[1]
    cdef int64_t a_blk = a.shape[1] * a.shape[2] * 16, b_blk = b.shape[1] * 16
    cdef int64_t i, g0, j0
    cdef int mv, nc_max, err = 0
    cdef dlcpu_brgemm_f32_t p
    cdef int64_t *a_offs = <int64_t *> malloc(sizeof(int64_t) * (batch + 1))
    cdef int64_t *b_offs = <int64_t *> malloc(sizeof(int64_t) * (batch + 1))
    cdef const float **a_ptrs = <const float **> malloc(sizeof(float *) * (batch + 1))
    cdef const float **b_ptrs = <const float **> malloc(sizeof(float *) * (batch + 1))
    if a_offs == NULL or b_offs == NULL or a_ptrs == NULL or b_ptrs == NULL:
        free(a_offs)
        free(b_offs)
        free(a_ptrs)
        free(b_ptrs)
        raise MemoryError("brgemm: cannot allocate the offset arrays")
    with nogil:
        p.kind = variant
        p.b_trans = 0
        p.k = k
        p.batch = batch
        p.a_mstride = a.shape[2] * 16
        p.b_rstride = 0
        p.nr = 1
        p.ldc = c.shape[1]
        p.c_rstride = 0
        p.c_mstride = 16
        p.beta = beta
        p.relu = relu
        p.a_stride = a_blk
        p.b_stride = b_blk
        g0 = 0
        while g0 < groups:
            mv = 2 if g0 + 2 <= groups else 1
            nc_max = dlcpu_brgemm_f32_max_pixels(isa, mv)
            j0 = 0
            while j0 < n:
                p.mv = mv
                p.nc = <int>min(<int64_t>nc_max, n - j0)
                # Each tile sees its own view: shift the blocks to the tile's group and pixels.
                for i in range(batch):
                    a_offs[i] = a_index[i] * a_blk + g0 * a.shape[2] * 16
                    b_offs[i] = b_index[i] * b_blk + j0 * 16
                    a_ptrs[i] = &a[0, 0, 0, 0] + a_offs[i]
                    b_ptrs[i] = &b[0, 0, 0] + b_offs[i]
                if variant == DLCPU_BR_STRD:
                    p.a = &a[0, 0, 0, 0] + g0 * a.shape[2] * 16
                    p.b = &b[0, 0, 0] + j0 * 16
                else:
                    p.a = &a[0, 0, 0, 0]
                    p.b = &b[0, 0, 0]
                p.a_offs = a_offs
                p.b_offs = b_offs
                p.a_ptrs = a_ptrs
                p.b_ptrs = b_ptrs
                p.c = &c[j0, g0 * 16]
                p.bias = &bias[g0 * 16] if bias.shape[0] > 0 else NULL
                err |= dlcpu_brgemm_f32(&p, isa)
                j0 = j0 + p.nc
            g0 = g0 + mv
    free(a_offs)
    free(b_offs)
    free(a_ptrs)
    free(b_ptrs)
    return err


def pack_gemm_b(const float[:, ::1] y, float[:, :, :, ::1] yp, int n_threads):
    """Y (K x n) -> Yp[n/16][K/16][16][16], zero-padded.  Full 16-wide rows are one memcpy."""
    cdef int64_t K = y.shape[0], n = y.shape[1], Kc = yp.shape[1]
    cdef int64_t nb, kc, kk, m, row, col0
    for nb in prange(yp.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        col0 = nb * 16
        for kc in range(Kc):
            for kk in range(16):
                row = kc * 16 + kk
                if row < K and col0 + 16 <= n:
                    memcpy(&yp[nb, kc, kk, 0], &y[row, col0], 16 * sizeof(float))
                else:
                    for m in range(16):
                        yp[nb, kc, kk, m] = y[row, col0 + m] if (row < K and col0 + m < n) else 0.0


def pack_gemm_b_transposed(const float[:, ::1] yt, float[:, :, :, ::1] yp, int n_threads):
    """Y = yt.T (K x n, given as yt: n x K) -> Yp[n/16][K/16][16][16], the same as pack_gemm_b(Y),
    zero-padded, without materializing the transpose: numpy's contiguous copy of the 1024 x 4096
    transpose of an LSTM's W_ih took 28 ms of the 74 ms weight preparation.  Full blocks are a
    16x16 transpose of 16 contiguous rows of yt."""
    cdef int64_t n = yt.shape[0], K = yt.shape[1], Kc = yp.shape[1]
    cdef int64_t nb, kc, kk, m, rows, cols
    cdef const float *src
    cdef float *dst
    for nb in prange(yp.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        rows = min(16, n - nb * 16)             # of yt in this block (columns of Y)
        for kc in range(Kc):
            cols = min(16, K - kc * 16)
            dst = &yp[nb, kc, 0, 0]
            if rows < 16 or cols < 16:          # an edge block: its padding is zero
                memset(dst, 0, 256 * sizeof(float))
            for m in range(rows):
                src = &yt[nb * 16 + m, kc * 16]
                for kk in range(cols):
                    dst[kk * 16 + m] = src[kk]


def pack_gemm_a(const float[:, ::1] x, float[:, :, :, ::1] xp, int n_threads):
    """X (m x K) -> Xp[m/T][K/16][T][16], zero-padded.  Full 16-deep pieces are one memcpy."""
    cdef int64_t M = x.shape[0], K = x.shape[1], T = xp.shape[2], Kc = xp.shape[1]
    cdef int64_t t, kc, j, kk, row
    for t in prange(xp.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        for kc in range(Kc):
            for j in range(T):
                row = t * T + j
                if row < M and kc * 16 + 16 <= K:
                    memcpy(&xp[t, kc, j, 0], &x[row, kc * 16], 16 * sizeof(float))
                else:
                    for kk in range(16):
                        xp[t, kc, j, kk] = x[row, kc * 16 + kk] if (row < M and kc * 16 + kk < K) else 0.0


def pack_gemm_a_transposed(const float[:, ::1] xt, float[:, :, :, ::1] xp, int n_threads):
    """X = xt.T (m x K, given as xt: K x m) -> Xp[m/T][K/16][T][16], zero-padded, without
    materializing the transpose (numpy's copy of a 3200x4096 transpose took 91 ms).  Full tiles
    take a branch-free loop: T consecutive floats of each xt row, scattered 16 apart."""
    cdef int64_t K = xt.shape[0], M = xt.shape[1], T = xp.shape[2], Kc = xp.shape[1]
    cdef int64_t t, kc, j, kk, row, k
    cdef const float *src
    cdef float *dst
    for t in prange(xp.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        for kc in range(Kc):
            dst = &xp[t, kc, 0, 0]
            if (t + 1) * T <= M and (kc + 1) * 16 <= K:
                for kk in range(16):
                    src = &xt[kc * 16 + kk, t * T]
                    for j in range(T):
                        dst[j * 16 + kk] = src[j]
            else:
                for kk in range(16):
                    k = kc * 16 + kk
                    for j in range(T):
                        row = t * T + j
                        dst[j * 16 + kk] = xt[k, row] if (row < M and k < K) else 0.0


def transpose_packed(const float[:, :, :, ::1] src, float[:, :, :, ::1] dst, int n_threads):
    """The packed form of Y^T from the packed form of Y: dst[b][a][i][j] = src[a][b][j][i]
    (src[n/16][K/16][16][16] of a (K, n) matrix -> dst[K/16][n/16][16][16] of its (n, K)
    transpose).  Padding moves with the tiles, so it stays zero.  A recurrent training step runs
    this on its weights after every update (dx needs W_ih, the backward recurrence W_hh^T): one
    pass at memory speed, each thread writing whole rows of destination tiles."""
    cdef int64_t A = src.shape[0], B = src.shape[1]
    cdef int64_t b, a, i, j
    cdef const float *s
    cdef float *d
    for b in prange(B, nogil=True, schedule='static', num_threads=n_threads):
        for a in range(A):
            s = &src[a, b, 0, 0]
            d = &dst[b, a, 0, 0]
            for i in range(16):
                for j in range(16):
                    d[i * 16 + j] = s[j * 16 + i]


cdef inline int gemm_tile(const brgemm_operand *a, const brgemm_operand *b, float *c, const float *bias,
                          int64_t batch, int64_t a_mstride, int64_t b_stride, int mv, int nc, int64_t ldc,
                          int64_t c_mstride, int beta, int isa, int native,
                          const dlcpu_brgemm_int_t *q) noexcept nogil:
    """One BRGEMM call of the GEMM: strd blocks of 16 reduction values, any operand type."""
    cdef dlcpu_brgemm_f32_t p
    p.kind = DLCPU_BR_STRD
    p.b_trans = 0
    p.k = 16
    p.a_stride = 256
    p.b_stride = b_stride
    p.batch = batch
    p.a_mstride = a_mstride
    p.b_rstride = 0
    p.mv = mv
    p.nr = 1
    p.nc = nc
    p.ldc = ldc
    p.c_rstride = 0
    p.c_mstride = c_mstride
    p.beta = beta
    p.bias = bias
    p.relu = 0
    return brgemm_call(&p, a, b, c, isa, native, q)


cdef int gemm_block(const dlcpu_gemm_plan_t *g, const brgemm_operand *xp, const brgemm_operand *yp, float *out,
                    int64_t t_lo, int64_t t_hi, int64_t g_lo, int64_t g_hi, int64_t Kc, int64_t y_kc, int64_t ldc,
                    const float *bias, int64_t c_rows, int accumulate, int native,
                    const dlcpu_brgemm_int_t *q0, int64_t n_pad) noexcept nogil:
    """One thread's share of the GEMM: row tiles t_lo..t_hi, 16-column blocks g_lo..g_hi.
    c_rows > 0 writes out in packed form, out[n/16][c_rows][16] (column block nb at nb*c_rows*16,
    rows 16 floats apart); accumulate adds to out instead of overwriting it (beta=1 throughout).
    Operands are fp32, bf16 (VNNI-paired Yp blocks, native: VDPBF16PS) or integers (q0: the
    call's description; its per-column multipliers and compensation move with the column block,
    and the compensation, one row of n_pad per K chunk, with the chunk; per-block multipliers
    (ternary) with the call's first block); blocks hold 256 elements in every format, so the walk
    is the same.  Yp holds y_kc >= Kc blocks per column block, of which the first Kc are used
    (ternary: the residual levels switched on)."""
    cdef int64_t t, kc0, nchunk, grp0, grp1, nb
    cdef int64_t T = g.rows, m = g.m
    cdef int mv, beta, err = 0
    cdef float *c
    cdef dlcpu_brgemm_int_t q
    kc0 = 0
    while kc0 < Kc:
        nchunk = min(<int64_t>g.kc_blocks, Kc - kc0)
        beta = 1 if (kc0 > 0 or accumulate) else 0
        grp0 = g_lo
        while grp0 < g_hi:
            grp1 = min(g_hi, grp0 + g.group_cols // 16)
            for t in range(t_lo, t_hi):
                nb = grp0
                while nb < grp1:
                    mv = 2 if nb + 2 <= grp1 else 1
                    c = out + (nb * c_rows + t * T) * 16 if c_rows > 0 else out + t * T * ldc + nb * 16
                    if q0 != NULL:
                        q = q0[0]
                        q.scale = q0.scale + nb * 16 if q0.scale != NULL else NULL
                        q.comp = (q0.comp + (kc0 // g.kc_blocks) * n_pad + nb * 16 if q0.comp != NULL
                                  else NULL)
                        q.block_scale = (q0.block_scale + (nb * y_kc + kc0) * q0.block_groups * 16
                                         if q0.block_scale != NULL else NULL)
                    # The bias joins in the first K chunk's epilogue (later chunks accumulate).
                    err |= gemm_tile(yp + (nb * y_kc + kc0) * 256, xp + (t * Kc + kc0) * T * 16, c,
                                     bias + nb * 16 if (bias != NULL and kc0 == 0) else NULL, nchunk,
                                     y_kc * 256, T * 16, mv, <int>min(T, m - t * T), 16 if c_rows > 0 else ldc,
                                     c_rows * 16 if c_rows > 0 else 16, beta, g.isa, native,
                                     &q if q0 != NULL else NULL)
                    nb = nb + mv
            grp0 = grp1
        kc0 = kc0 + nchunk
    return err


def gemm_packed(const brgemm_operand[:, :, :, ::1] xp, const brgemm_operand[:, :, :, ::1] yp, float[:, ::1] out,
                const float[::1] bias, GemmPlanStruct plan, int64_t c_rows=0, bint accumulate=False,
                bint native=False, tuple integer=None):
    """out[:m, :] = Xp @ Yp (+ bias, padded to out's width, or empty) on packed operands, as the
    plan says: threads split the row tiles (plan split_rows) or the 16-column blocks in pairs, so
    every thread keeps the mv=2 calls.  Python checked the operands against the plan.
    Operands are both float32, or both uint16 bf16 patterns (Yp in VNNI pairs; native: the
    VDPBF16PS kernels, for a CPU with avx512_bf16), or integers described by `integer`
    (dlcpu_kernels.integer_call): uint8 Xp with int8 Yp (VNNI quads, viewed as uint8), or int16
    both (VNNI pairs); native: VPDPBUSD / VPDPWSSD.
    c_rows > 0: out is the packed [n/16][c_rows][16] form (passed as a (n/16, c_rows*16) view) of
    the product, as matmul's right-hand operand; accumulate: out += the product."""
    cdef const dlcpu_gemm_plan_t *g = &plan.c
    cdef int n_threads = g.n_threads
    cdef int64_t n_tiles = xp.shape[0], Kc = xp.shape[1], ng = yp.shape[0]
    cdef int64_t n_pairs = (ng + 1) // 2
    cdef int64_t tid
    cdef int err = 0
    cdef const float *b = &bias[0] if bias.shape[0] > 0 else NULL
    cdef dlcpu_brgemm_int_t q_int
    cdef const dlcpu_brgemm_int_t *q = NULL
    if yp.shape[1] < Kc:
        raise ValueError(f"gemm_packed: Yp has {yp.shape[1]} K blocks per column block, Xp {Kc}")
    if brgemm_operand is uint8_t or brgemm_operand is int16_t:
        q_int = integer_call_for(&xp[0, 0, 0, 0], integer, "gemm_packed")
        q = &q_int
    for tid in prange(n_threads, nogil=True, schedule='static', num_threads=n_threads):
        if g.split_rows:
            err += gemm_block(g, &xp[0, 0, 0, 0], &yp[0, 0, 0, 0], &out[0, 0],
                              tid * n_tiles // n_threads, (tid + 1) * n_tiles // n_threads, 0, ng,
                              Kc, yp.shape[1], out.shape[1], b, c_rows, accumulate, native, q, ng * 16)
        else:
            err += gemm_block(g, &xp[0, 0, 0, 0], &yp[0, 0, 0, 0], &out[0, 0], 0, n_tiles,
                              2 * (tid * n_pairs // n_threads),
                              min(ng, 2 * ((tid + 1) * n_pairs // n_threads)),
                              Kc, yp.shape[1], out.shape[1], b, c_rows, accumulate, native, q, ng * 16)
    return err


def pack_gemm_a_bf16(const float[:, ::1] x, uint16_t[:, :, :, ::1] xp, int isa, bint native, int n_threads):
    """X (m x K) -> bf16 row tiles Xp[m/T][K/16][T][16] (pack_gemm_a's layout), zero-padded,
    rounding to nearest even on the way (convert.h, the same bits on every path)."""
    cdef int64_t M = x.shape[0], K = x.shape[1], T = xp.shape[2], Kc = xp.shape[1]
    cdef int64_t t, kc, j, row, width
    for t in prange(xp.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        for kc in range(Kc):
            for j in range(T):
                row = t * T + j
                width = min(16, K - kc * 16) if row < M else 0
                if width > 0:
                    dlcpu_f32_to_bf16(isa, native, &x[row, kc * 16], &xp[t, kc, j, 0], width)
                if width < 16:
                    memset(&xp[t, kc, j, width], 0, (16 - width) * sizeof(uint16_t))


def pack_gemm_b_bf16(const uint16_t[:, ::1] y, uint16_t[:, :, :, ::1] yp, bint transposed, int n_threads):
    """bf16 Y (K x n; or given as Y^T, n x K, with transposed) -> VNNI-paired Yp[n/16][K/16][16][16]:
    block (nb, kc) holds, at flat index q*32 + m*2 + e, Y[kc*16 + 2q + e][nb*16 + m], zero-padded."""
    cdef int64_t K = y.shape[1] if transposed else y.shape[0]
    cdef int64_t n = y.shape[0] if transposed else y.shape[1]
    cdef int64_t Kc = yp.shape[1]
    cdef int64_t nb, kc, q, m, e, row, col
    cdef uint16_t *dst
    for nb in prange(yp.shape[0], nogil=True, schedule='static', num_threads=n_threads):
        for kc in range(Kc):
            dst = &yp[nb, kc, 0, 0]
            for q in range(8):
                for m in range(16):
                    col = nb * 16 + m
                    for e in range(2):
                        row = kc * 16 + 2 * q + e
                        if row < K and col < n:
                            dst[q * 32 + m * 2 + e] = y[col, row] if transposed else y[row, col]
                        else:
                            dst[q * 32 + m * 2 + e] = 0
