/*
 * Instruction-set paths and CPU feature detection.
 *
 * Every SIMD function carries its own `target` attribute, so the extension is compiled without
 * any -march flag and runs on any x86-64; which path runs is decided at run time from the CPU's
 * features (most capable first), or forced by the caller (DLCPU_ISA, read in dlcpu/_config.py).
 */
#ifndef DLCPU_ISA_H
#define DLCPU_ISA_H

enum { DLCPU_ISA_SCALAR = 0, DLCPU_ISA_AVX2 = 1, DLCPU_ISA_AVX512 = 2 };

#if defined(__x86_64__) || defined(__i386__)
#define DLCPU_X86 1
#define DLCPU_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))
#define DLCPU_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#error "dlcpu's kernels are written for x86-64"
#endif

/* Bit set of the features dlcpu cares about (see dlcpu/cpu.py for the names). */
enum {
    DLCPU_HAS_AVX2 = 1, DLCPU_HAS_FMA = 2, DLCPU_HAS_AVX512F = 4, DLCPU_HAS_AVX512BW = 8,
    DLCPU_HAS_AVX512VL = 16, DLCPU_HAS_AVX512DQ = 32, DLCPU_HAS_AVX512_BF16 = 64,
    DLCPU_HAS_AVX512_VNNI = 128
};

static inline int dlcpu_cpu_features(void)
{
    int f = 0;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) f |= DLCPU_HAS_AVX2;
    if (__builtin_cpu_supports("fma")) f |= DLCPU_HAS_FMA;
    if (__builtin_cpu_supports("avx512f")) f |= DLCPU_HAS_AVX512F;
    if (__builtin_cpu_supports("avx512bw")) f |= DLCPU_HAS_AVX512BW;
    if (__builtin_cpu_supports("avx512vl")) f |= DLCPU_HAS_AVX512VL;
    if (__builtin_cpu_supports("avx512dq")) f |= DLCPU_HAS_AVX512DQ;
    if (__builtin_cpu_supports("avx512bf16")) f |= DLCPU_HAS_AVX512_BF16;
    if (__builtin_cpu_supports("avx512vnni")) f |= DLCPU_HAS_AVX512_VNNI;
    return f;
}

#endif
