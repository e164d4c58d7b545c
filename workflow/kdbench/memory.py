"""Process-wide memory-allocator settings for the numeric jobs (teacher, cache, students, benchmarks)."""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>


def keep_freed_memory() -> bool:
    """Have glibc malloc keep freed blocks of up to 32 MiB for reuse instead of handing them back.

    A training step or teacher batch frees and reallocates the same tensors every time; under
    glibc's defaults the larger ones return to the kernel and page-fault back in on reuse.
    Measured on 2 cores: a teacher cache batch 5,400 faults and 18 ms of system time in 110 ms,
    230 and 0.3 ms with this; a small student's step 6,500 faults, 1,800 with this. Returns
    False, changing nothing, where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, 1 << 30))
