"""Reusable scratch buffers for the Python layer (packed GEMM operands, transformed weights).

Fresh multi-MiB numpy arrays cost page faults and kernel zeroing on every call: measured,
dlcpu.matmul at 2048^3 and 2 threads took 100 ms with fresh packing buffers and 39 ms with
reused ones.  Buffers are per Python thread, so concurrent callers never share one, and only
hold data for the duration of one call.
"""
import math
import threading

import numpy as np

_local = threading.local()


def scratch(slot, shape, dtype=np.float32):
    """An array of `shape` (float32 unless dtype says otherwise) backed by this thread's buffer
    for `slot` (grown as needed).  Contents are undefined; the caller owns it until its next
    request for the same slot, which must ask for the same dtype."""
    size = math.prod(shape)  # (np.prod: 3 us a call, a dozen calls in a small conv backward)
    buf = getattr(_local, slot, None)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = np.empty(max(size, 1), dtype=dtype)
        setattr(_local, slot, buf)
    return buf[:size].reshape(shape)
