"""glibc's malloc, reached through ctypes where the process runs on glibc: its thresholds decide
whether a freed buffer of a few MiB is kept for the next allocation or handed back to the system
(then mapped afresh, and every page of it faulted and zeroed by the kernel on first touch).
`zoo serve` keeps decoded pieces this way; `zoo bench` puts every coder on the same footing."""

from __future__ import annotations

import ctypes
from typing import Any

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 128 << 10  # both thresholds' starting value


def glibc_malloc() -> tuple[Any, Any] | None:
    """(mallopt, malloc_trim) of the process's C library, or None where it is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        return libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None
