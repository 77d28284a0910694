"""Every DLCPU_* environment variable is read here, and only here.

DLCPU_ISA          avx512 | avx2 | scalar: force a microkernel path (default: best the CPU has)
DLCPU_NUM_THREADS  thread count when a call does not pass one (else OMP_NUM_THREADS, else all cores)
DLCPU_DEBUG        1: the CLI prints tracebacks instead of one-line errors

Build time (read by setup.py, which cannot import the package):
DLCPU_NO_OPENMP    1: serial kernels, no OpenMP
DLCPU_BOUNDSCHECK  1: Cython bounds, wraparound and initialization checks in every driver
"""
import os

ISA_NAMES = ("scalar", "avx2", "avx512")

#: Most threads a parallel region (and DLCPU_NUM_THREADS) may ask for; cpu.MAX_THREADS is this.
MAX_THREADS = 1024

# Every kernel call reads DLCPU_ISA and DLCPU_NUM_THREADS (tests and users change them at run
# time, so they cannot be cached).  os.environ.get encodes the key and decodes the value: 0.8 us
# each, a third of a small element-wise call.  On POSIX, os.environ keeps its bytes mapping in
# `_data`, which os.environ[...] = and del (and so monkeypatch.setenv) update: a dict lookup.
_ENV_BYTES = getattr(os.environ, "_data", None) if os.name == "posix" else None


def _getenv(name, key):
    """os.environ.get(name); `key` is name as bytes (the fast path's dict key)."""
    if _ENV_BYTES is not None:
        value = _ENV_BYTES.get(key)
        return None if value is None else os.fsdecode(value)
    return os.environ.get(name)


def env_isa():
    """The forced ISA name, or None.  An unknown value is an error, not a silent fallback."""
    value = (_getenv("DLCPU_ISA", b"DLCPU_ISA") or "").strip().lower()
    if not value:
        return None
    if value not in ISA_NAMES:
        raise ValueError(f"DLCPU_ISA={value!r} is not one of {', '.join(ISA_NAMES)}")
    return value


def env_num_threads():
    value = (_getenv("DLCPU_NUM_THREADS", b"DLCPU_NUM_THREADS") or "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"DLCPU_NUM_THREADS={value!r} is not an integer") from None
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"DLCPU_NUM_THREADS={n} must be between 1 and {MAX_THREADS}")
    return n


def env_debug():
    return os.environ.get("DLCPU_DEBUG", "0").strip() not in ("", "0", "false", "no")
