# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Machine facts for dlcpu: CPU features, OpenMP, and the FMA-peak probe (pyx/kernels/peak.h)."""
from libc.stdint cimport int64_t
from cython.parallel cimport prange

from dlcpu_kernels cimport (dlcpu_cpu_features, dlcpu_omp_enabled, dlcpu_omp_max_threads, dlcpu_peak_run,
                            dlcpu_brgemm_has_tile, DLCPU_ISA_SCALAR, DLCPU_ISA_AVX2, DLCPU_ISA_AVX512)
from dlcpu_plans cimport (DLCPU_CHANNEL_BLOCK, DLCPU_AVX512_MAX_ACC, DLCPU_AVX2_MAX_ACC, DLCPU_SCALAR_MAX_ACC,
                          DLCPU_BR_MAX_MV, DLCPU_BR_MAX_NR, DLCPU_BR_MAX_NC, DLCPU_BRT_MAX_NC,
                          DLCPU_TILE_NONE, DLCPU_TILE_PADDED, DLCPU_TILE_SUBSAMPLED)

#: The tile and register-budget constants of pyx/kernels/tiles.h, as compiled (the planners in
#: dlcpu/conv.py, gemm.py and rnn.py read them from here; --show-plan prints them).
TILE_CONSTANTS = {
    "channel_block": DLCPU_CHANNEL_BLOCK,
    "max_acc": {"avx512": DLCPU_AVX512_MAX_ACC, "avx2": DLCPU_AVX2_MAX_ACC, "scalar": DLCPU_SCALAR_MAX_ACC},
    "br_max_mv": DLCPU_BR_MAX_MV,
    "br_max_nr": DLCPU_BR_MAX_NR,
    "br_max_nc": DLCPU_BR_MAX_NC,
    "brt_max_nc": DLCPU_BRT_MAX_NC,
    "tile_modes": {"none": DLCPU_TILE_NONE, "padded": DLCPU_TILE_PADDED, "subsampled": DLCPU_TILE_SUBSAMPLED},
    "isa_codes": {"scalar": DLCPU_ISA_SCALAR, "avx2": DLCPU_ISA_AVX2, "avx512": DLCPU_ISA_AVX512},
}


def has_tile(int isa, int mv, int nr, int nc, bint transposed=False):
    """Whether this build has a BRGEMM kernel for the tile (brgemm_f32.h's instance tables)."""
    return bool(dlcpu_brgemm_has_tile(isa, mv, nr, nc, transposed))


def cpu_features():
    """Feature bit set (the DLCPU_HAS_* values of isa.h)."""
    return dlcpu_cpu_features()


def openmp_enabled():
    return bool(dlcpu_omp_enabled())


def omp_max_threads():
    """omp_get_max_threads() as this extension's OpenMP runtime sees it (threadpoolctl-aware)."""
    return dlcpu_omp_max_threads()


def peak_flops(int isa, int64_t iters, int n_threads):
    """Run the FMA probe on n_threads threads; returns total FLOPs executed."""
    cdef double total = 0.0
    cdef int _t
    for _t in prange(n_threads, nogil=True, schedule='static', num_threads=n_threads):
        total += dlcpu_peak_run(isa, iters)
    return total


cdef extern from *:
    """
    #ifndef DLCPU_BUILD_FLAGS
    #define DLCPU_BUILD_FLAGS ""
    #endif
    static const char *dlcpu_compiler_version = __VERSION__;
    static const char *dlcpu_build_flags = DLCPU_BUILD_FLAGS;
    """
    const char *dlcpu_compiler_version
    const char *dlcpu_build_flags


def build_info():
    """(compiler version, compile flags) this extension was built with."""
    return dlcpu_compiler_version.decode(), dlcpu_build_flags.decode()
