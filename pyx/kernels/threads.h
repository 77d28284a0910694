/*
 * OpenMP queries that also compile without OpenMP (DLCPU_NO_OPENMP=1 builds serial kernels):
 * then there is exactly one thread and prange loops run serially.
 */
#ifndef DLCPU_THREADS_H
#define DLCPU_THREADS_H
#ifdef _OPENMP
#include <omp.h>
static inline int dlcpu_omp_enabled(void) { return 1; }
static inline int dlcpu_omp_max_threads(void) { return omp_get_max_threads(); }
static inline int dlcpu_omp_thread_num(void) { return omp_get_thread_num(); }
#else
static inline int dlcpu_omp_enabled(void) { return 0; }
static inline int dlcpu_omp_max_threads(void) { return 1; }
static inline int dlcpu_omp_thread_num(void) { return 0; }
#endif
#endif
