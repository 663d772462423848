"""Process-wide memory tuning for the compute loop."""

from __future__ import annotations

import sys


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the system.

    A pass with gradients holds every layer's [B, H, T, T] attention tensors, and when the batch
    is done glibc gives that memory back; the next batch then page-faults all of it in again,
    which on CPU costs about a fifth of a small model's saliency pass. This keeps blocks of up to
    32 MiB on the heap and up to 512 MiB of free heap before trimming: the resident set stays at
    its peak instead of falling between batches, and the peak itself barely moves (see
    benchmarks/RESULTS.md). Process-wide, so the command line calls it and the library leaves it
    to the caller. Returns whether it applied (glibc on Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(
        mallopt(option, value) == 1
        for option, value in (
            (m_mmap_threshold, 32 * 2**20),
            (m_trim_threshold, 512 * 2**20),
            (m_top_pad, 16 * 2**20),
        )
    )
