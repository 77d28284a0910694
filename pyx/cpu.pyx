# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Machine facts for dlcpu: CPU features, OpenMP, and the FMA-peak probe (pyx/kernels/peak.h)."""
from libc.stdint cimport int64_t
from cython.parallel cimport prange

from dlcpu_kernels cimport dlcpu_cpu_features, dlcpu_omp_enabled, dlcpu_omp_max_threads, dlcpu_peak_run


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
