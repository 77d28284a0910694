# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Bit-flip kernel of dlcpu.faults: XOR one bit into each of a list of words, in place.

A fault is (flat word offset, bit position) on the raw storage of a tensor, viewed as unsigned
words of its element width (uint8 for int8, uint16 for bf16/int16, uint32 for fp32/int32), so a
flip is exactly one bit of exactly one element and flipping the same list again restores the
storage bitwise.  Offsets and bits are drawn and bounds-checked in Python (dlcpu/faults/bitflip.py);
this loop only touches memory.  It is serial: a campaign flips one to a few thousand words per
call, far below what a thread team pays to start.
"""
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t

ctypedef fused word_t:
    uint8_t
    uint16_t
    uint32_t


def flip_bits(word_t[::1] words, const int64_t[::1] offsets, const uint8_t[::1] bits,
              uint32_t[::1] old_patterns):
    """words[offsets[i]] ^= 1 << bits[i] for each i, in order; old_patterns[i] gets the word as it
    was just before flip i."""
    cdef Py_ssize_t i, n = offsets.shape[0]
    cdef int64_t at
    with nogil:
        for i in range(n):
            at = offsets[i]
            old_patterns[i] = words[at]
            words[at] = words[at] ^ <word_t>(<uint32_t>1 << bits[i])
