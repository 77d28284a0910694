# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Format conversions on flat arrays (kernels/convert.h), split into chunks over threads.

dlcpu/precision.py checks dtypes, sizes, finiteness and exponents first; these loops only walk
the memory.  Chunks are 64K elements: large enough to hide the scheduling cost, and 2^32 is a
multiple of the chunk size, so no chunk crosses a run of 2^32 element indices (the stochastic
rounding's hash keys each such run separately).
"""
from libc.stdint cimport int8_t, int16_t, int64_t, uint8_t, uint16_t, uint32_t
from cython.parallel cimport prange

import numpy as np

from dlcpu_kernels cimport (dlcpu_f32_to_bf16, dlcpu_f32_to_bf16_vnni, dlcpu_bf16_to_f32, dlcpu_absmax_bits,
                            dlcpu_dfp16_quantize, dlcpu_mix32, dlcpu_quantize_u8)

# 64K elements per chunk (see the module docstring)
cdef int64_t CHUNK = 65536


cdef inline int team(int64_t n, int n_threads) noexcept nogil:
    """Threads for a pass over n elements: no more than its chunks.  A conversion of one chunk
    (every activation of the digits CNN) then starts no second thread, whose wake-up costs more
    than the pass."""
    cdef int64_t chunks = (n + CHUNK - 1) // CHUNK
    return 1 if chunks < 1 else <int>chunks if chunks < n_threads else n_threads


def f32_to_bf16(const float[::1] x, uint16_t[::1] y, int isa, bint native, int n_threads):
    """y = the bf16 patterns of x (round to nearest even, denormals to signed zero)."""
    cdef int64_t n = x.shape[0], c, lo
    if y.shape[0] != n:
        raise ValueError(f"f32_to_bf16: x has {n} elements, y {y.shape[0]}")
    for c in prange((n + CHUNK - 1) // CHUNK, nogil=True, schedule='static', num_threads=team(n, n_threads)):
        lo = c * CHUNK
        dlcpu_f32_to_bf16(isa, native, &x[lo], &y[lo], min(CHUNK, n - lo))


def f32_to_bf16_vnni(const float[::1] x, uint16_t[::1] y, int isa, bint native, int n_threads):
    """Blocked fp32 weights (whole 16x16 blocks, flattened) -> bf16 blocks in VNNI pairs."""
    cdef int64_t blocks = x.shape[0] // 256, b, lo, per = CHUNK // 256
    if x.shape[0] % 256 or y.shape[0] != x.shape[0]:
        raise ValueError(f"f32_to_bf16_vnni: x must hold whole 256-element blocks and y as many, got {x.shape[0]}, "
                         f"{y.shape[0]}")
    cdef int threads = team(x.shape[0], n_threads)       # (a memoryview read inside the pragma breaks debug builds)
    for b in prange((blocks + per - 1) // per, nogil=True, schedule='static', num_threads=threads):
        lo = b * per
        dlcpu_f32_to_bf16_vnni(isa, native, &x[lo * 256], &y[lo * 256], min(per, blocks - lo))


def bf16_to_f32(const uint16_t[::1] x, float[::1] y, int isa, int n_threads):
    """y = the float32 values of the bf16 patterns x (exact)."""
    cdef int64_t n = x.shape[0], c, lo
    if y.shape[0] != n:
        raise ValueError(f"bf16_to_f32: x has {n} elements, y {y.shape[0]}")
    for c in prange((n + CHUNK - 1) // CHUNK, nogil=True, schedule='static', num_threads=team(n, n_threads)):
        lo = c * CHUNK
        dlcpu_bf16_to_f32(isa, &x[lo], &y[lo], min(CHUNK, n - lo))


def absmax_bits(const float[::1] x, int isa, int n_threads):
    """The largest |x| as a float32 bit pattern (>= 0x7F800000: x holds a NaN or an Inf)."""
    cdef int64_t n = x.shape[0], c, lo
    cdef int64_t chunks = (n + CHUNK - 1) // CHUNK
    cdef uint32_t best = 0
    cdef uint32_t[::1] parts = np.zeros(max(chunks, 1), np.uint32)
    for c in prange(chunks, nogil=True, schedule='static', num_threads=team(n, n_threads)):
        lo = c * CHUNK
        parts[c] = dlcpu_absmax_bits(isa, &x[lo], min(CHUNK, n - lo))
    for c in range(chunks):
        if parts[c] > best:
            best = parts[c]
    return best


def dfp16_quantize(const float[::1] x, int16_t[::1] y, double scale, int limit, bint stochastic, uint32_t seed,
                   int isa, int n_threads):
    """y = round(x * scale) clamped to [-limit, limit]: nearest even, or stochastic with draws
    from a hash of (seed, element index)."""
    cdef int64_t n = x.shape[0], c, lo
    if y.shape[0] != n:
        raise ValueError(f"dfp16_quantize: x has {n} elements, y {y.shape[0]}")
    cdef uint32_t key0 = dlcpu_mix32(seed ^ <uint32_t>2654435769)
    for c in prange((n + CHUNK - 1) // CHUNK, nogil=True, schedule='static', num_threads=team(n, n_threads)):
        lo = c * CHUNK
        # the key of lo's run of 2^32 indices: the seed's hash mixed with the run number
        dlcpu_dfp16_quantize(isa, &x[lo], &y[lo], min(CHUNK, n - lo), scale, limit, stochastic,
                             dlcpu_mix32(key0 ^ <uint32_t>(lo >> 32)), <uint32_t>lo)  # the low 32 bits


def quantize_u8(const float[::1] x, uint8_t[::1] y, double scale, int zero_point, int isa, int n_threads):
    """y = clamp(round-half-even(x / scale) + zero_point, 0, 255) (u8 activations of the int8
    kernels; the quotient in double, as dlcpu.precision.to_int8 rounds it)."""
    cdef int64_t n = x.shape[0], c, lo
    if y.shape[0] != n:
        raise ValueError(f"quantize_u8: x has {n} elements, y {y.shape[0]}")
    for c in prange((n + CHUNK - 1) // CHUNK, nogil=True, schedule='static', num_threads=team(n, n_threads)):
        lo = c * CHUNK
        dlcpu_quantize_u8(isa, &x[lo], &y[lo], min(CHUNK, n - lo), scale, zero_point)


ctypedef fused small_int:
    int8_t
    int16_t


def group_block_rows(const small_int[::1] src, small_int[::1] dst, int group, int n_threads):
    """Blocks of 16 x 16 integers [16 rows][16 columns] -> the VNNI grouping of the integer
    kernels: dst[q][k][e] = src[q*group + e][k] (group 4: int8 quads, 2: int16 pairs), one pass
    over the blocks in parallel (numpy's transposing copy was a third of a DFP-16 LSTM step)."""
    cdef int64_t blocks = src.shape[0] // 256, b, base
    cdef int q, k, e
    if dst.shape[0] != src.shape[0] or src.shape[0] % 256 or group not in (2, 4):
        raise ValueError(f"group_block_rows: {src.shape[0]} -> {dst.shape[0]} elements, group {group}")
    for b in prange(blocks, nogil=True, schedule='static', num_threads=n_threads):
        base = b * 256
        for q in range(16 // group):
            for k in range(16):
                for e in range(group):
                    dst[base + (q * 16 + k) * group + e] = src[base + (q * group + e) * 16 + k]
