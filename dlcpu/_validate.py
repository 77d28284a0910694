"""Argument checks shared by every public entry point, defined once.

The kernels run `nogil` with bounds checks off, so the Python layer must prove every extent before
a call: these helpers raise ValueError (a rule about values or shapes) or TypeError (a wrong kind
of object or dtype), always naming the function, the argument and what was given.
"""
import functools
import os

import numpy as np


def pair(value, name, fn):
    """An int or an (h, w) pair of ints (bools are refused) -> (h, w)."""
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    if is_int(value):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{fn}: {name} must be an int or an (h, w) pair of ints, got {value!r}")


def flag(value, name, fn):
    """A True/False switch: anything else (a string such as 'no' is truthy) is refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be True or False, got {value!r}")
    return bool(value)


def positive_int(value, name, fn, minimum=1):
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")
    return int(value)


def shape4(value, name, fn):
    """A logical 4-d shape of positive ints (e.g. a forward input's (N, C, H, W))."""
    if not isinstance(value, (tuple, list)) or len(value) != 4:
        raise ValueError(f"{fn}: {name} must be a 4-tuple of ints, got {value!r}")
    return tuple(positive_int(v, f"{name}[{i}]", fn) for i, v in enumerate(value))


def float32_array(a, name, fn, shape=None, ndim=None):
    """A float32 numpy array of the given shape/ndim, made C-contiguous (a copy if it was not)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{fn}: {name} must be float32, got {a.dtype} (convert with .astype(np.float32))")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-d, got shape {a.shape}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{fn}: {name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    return np.ascontiguousarray(a).reshape(a.shape)     # ascontiguousarray makes a 0-d array 1-d


#: dlcpu.layout.BlockedTensor, looked up at the first check: layout imports the extensions, so
#: this module does not import it at load time (and an import statement in the check itself
#: cost a microsecond on every call, a dozen times per layer of a small training step)
_BLOCKED_TENSOR = []


def blocked_activation(t, name, fn, precision="fp32"):
    """A float32 activation BlockedTensor (its data shape was checked when it was made), or with
    precision='bf16' a bf16 one (uint16 patterns), with 'int8' u8 codes."""
    if not _BLOCKED_TENSOR:
        from .layout import BlockedTensor
        _BLOCKED_TENSOR.append(BlockedTensor)
    if not isinstance(t, _BLOCKED_TENSOR[0]) or t.kind != "activation":
        raise TypeError(f"{fn}: {name} must be an activation BlockedTensor, got {type(t).__name__}")
    n, c, h, w = t.shape
    if t.data.shape != (n, -(-c // 16), h, w, 16):
        # the tensor is frozen but its array is not: `data.shape = ...` can re-view it, and the
        # kernels index the data by the logical shape
        raise ValueError(f"{fn}: {name}'s data has shape {t.data.shape}, but its logical shape {tuple(t.shape)} "
                         f"needs {(n, -(-c // 16), h, w, 16)} (was its data reshaped after the tensor was made?)")
    # (the dtype too: an array's dtype can be re-set after the tensor was made)
    if t.precision != precision or t.dtype != {"fp32": np.float32, "bf16": np.uint16, "int8": np.uint8}[precision]:
        want = {"fp32": "float32", "bf16": "bf16 (uint16 patterns)", "int8": "int8 (uint8 codes)"}[precision]
        what = f"a {t.precision} tensor of {t.dtype}" if t.precision != "fp32" else str(t.dtype)
        raise TypeError(f"{fn}: {name} must be {want}, got {what}")
    return t


def not_aliased(out, inputs, fn):
    """Refuse an output buffer that overlaps any input: the kernels read inputs while they write."""
    for name, a in inputs.items():
        if a is not None and np.may_share_memory(out, a):
            raise ValueError(f"{fn}: out= overlaps {name}; the kernels would read values they already "
                             f"overwrote — pass a separate buffer")


@functools.lru_cache(maxsize=1)
def _memory_bytes():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _gib(n):
    return f"{n / 2**30:.3g} GiB"


def fits_in_memory(n_bytes, what, fn):
    """Refuse up front a problem whose buffers could never be allocated, saying how much it needs
    (numpy would otherwise fail deep inside, or the kernels' int64 offsets could overflow).
    what: a description, or a function making one (called only on failure: hot paths format
    nothing)."""
    limit = _memory_bytes()
    if n_bytes > limit:
        what = what() if callable(what) else what
        raise ValueError(f"{fn}: {what} would need {_gib(n_bytes)}, more than this machine's "
                         f"{_gib(limit)} of memory")
