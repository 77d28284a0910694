"""The machine as dlcpu sees it: CPU features, the ISA path, threads, build facts.

The ISA path is chosen here, once per call site, from the CPU's features (most capable first)
unless DLCPU_ISA forces one; it is then passed down to every kernel explicitly, so there is no
hidden dispatch state in the compiled code.
"""
import functools
import os
import platform

import numpy as np

from . import _config
from ._ext import cpu as _cpu

#: The tile and register-budget constants, read from the compiled header pyx/kernels/tiles.h
#: (max_acc per ISA, table bounds, tile modes, ISA codes): the planners use these, never copies.
TILE_CONSTANTS = _cpu.TILE_CONSTANTS
has_tile = _cpu.has_tile

ISA_CODES = dict(TILE_CONSTANTS["isa_codes"])
ISA_SCALAR, ISA_AVX2, ISA_AVX512 = ISA_CODES["scalar"], ISA_CODES["avx2"], ISA_CODES["avx512"]
ISA_BY_CODE = {v: k for k, v in ISA_CODES.items()}

#: channel block of the fp32 blocked layouts: one AVX-512 vector of float32
CHANNEL_BLOCK = TILE_CONSTANTS["channel_block"]


def max_accumulators(isa):
    """Register budget (16-float accumulators) of one BRGEMM call on an ISA path (name or code)."""
    return TILE_CONSTANTS["max_acc"][isa if isinstance(isa, str) else ISA_BY_CODE[isa]]

_FEATURE_BITS = {
    "avx2": 1, "fma": 2, "avx512f": 4, "avx512bw": 8, "avx512vl": 16, "avx512dq": 32,
    "avx512_bf16": 64, "avx512_vnni": 128,
}


def features():
    """Dict feature name -> bool, from the CPU (cpuid via __builtin_cpu_supports); a fresh copy."""
    return dict(_features())


@functools.lru_cache(maxsize=1)
def _features():
    # (cached: the small-call paths ask for a feature on every conversion; the CPU does not change)
    bits = _cpu.cpu_features()
    return {name: bool(bits & bit) for name, bit in _FEATURE_BITS.items()}


def supported_isas():
    return list(_supported_isas())


@functools.lru_cache(maxsize=1)
def _supported_isas():
    """The CPU's paths, found once (cpuid does not change while a process runs; every kernel
    call resolves its ISA, and recomputing this took 2 us of a 6 us element-wise call)."""
    f = features()
    isas = ["scalar"]
    if f["avx2"] and f["fma"]:
        isas.append("avx2")
    if f["avx512f"] and f["avx512bw"] and f["avx512vl"] and f["avx512dq"] and "avx2" in isas:
        isas.append("avx512")
    return tuple(isas)


def resolve_isa(isa=None):
    """ISA name to use: the argument, else DLCPU_ISA, else the best this CPU supports."""
    name = isa if isa is not None else _config.env_isa()
    supported = _supported_isas()
    if name is None:
        return supported[-1]
    name = str(name).lower()
    if name not in ISA_CODES:
        raise ValueError(f"isa={name!r} is not one of {', '.join(ISA_CODES)}")
    if name not in supported:
        raise ValueError(f"isa={name!r} is not supported by this CPU (it has {', '.join(supported)})")
    return name


def isa_code(isa=None):
    return ISA_CODES[resolve_isa(isa)]


#: Most threads a parallel region may ask for (defined in _config, which DLCPU_NUM_THREADS also
#: obeys).  OpenMP (libgomp) sets up every requested thread before the region runs:
#: n_threads=10**9 aborted the whole process asking for 224 GB.
MAX_THREADS = _config.MAX_THREADS


def resolve_threads(n_threads=None):
    """Thread count for a parallel region: the argument, else DLCPU_NUM_THREADS, else OpenMP's
    current maximum (OMP_NUM_THREADS, threadpoolctl limits and all cores feed that)."""
    if n_threads is None:
        n_threads = _config.env_num_threads()
    if n_threads is None:
        n_threads = _cpu.omp_max_threads()
    if isinstance(n_threads, (bool, np.bool_)) or not isinstance(n_threads, (int, np.integer)):
        raise TypeError(f"n_threads must be an int, got {type(n_threads).__name__}")
    if not 1 <= n_threads <= MAX_THREADS:
        raise ValueError(f"n_threads={n_threads} must be between 1 and {MAX_THREADS}")
    return int(n_threads) if _cpu.openmp_enabled() else 1


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def info():
    """Everything `dlcpu info` prints, as a dict."""
    from . import __version__
    from .precision import native_formats

    compiler, flags = _cpu.build_info()
    try:
        isa = resolve_isa()
        isa_error = None
    except ValueError as exc:
        isa, isa_error = None, str(exc)
    out = {
        "version": __version__,
        "python": platform.python_version(),
        "compiler": compiler,
        "compile_flags": flags,
        "openmp": _cpu.openmp_enabled(),
        "threads": resolve_threads(),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "features": features(),
        "supported_isas": supported_isas(),
        "isa": isa,
        "isa_forced": isa_error is not None or _config.env_isa() is not None,
        "channel_block": CHANNEL_BLOCK,
        # per number format: the instruction dlcpu's kernels use, 'emulated', or None (no kernel yet)
        "format_kernels": native_formats(),
    }
    if isa_error:
        out["isa_error"] = isa_error
    return out


def run_fma_probe(iterations, n_threads, isa=None):
    """Run `iterations` rounds of independent FMAs on each of n_threads threads; returns the
    FLOPs executed (time it around the call)."""
    code = isa_code(isa)
    if code == ISA_SCALAR:
        raise ValueError("the FMA peak probe needs a SIMD path (avx2 or avx512), not scalar")
    return _cpu.peak_flops(code, int(iterations), resolve_threads(n_threads))
