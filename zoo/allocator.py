"""glibc's malloc, reached through ctypes where the process runs on glibc: its thresholds decide
whether a freed buffer of a few MiB is kept for the next allocation or handed back to the system
(then mapped afresh, and every page of it faulted and zeroed by the kernel on first touch).
The CLI and `zoo serve` keep freed buffers (keep_freed_buffers); `zoo bench` puts every coder on
the same footing. The library leaves the allocator of the process it runs in alone."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
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


def keep_freed_buffers() -> Callable[[], object] | None:
    """On glibc, lets freed buffers of a few MiB (decoded chunks, coded chunks, the bytes read for
    them) be reused instead of mapped afresh for each chunk and unmapped after it: a fresh mapping
    costs a page fault per 4 KiB on first touch (78,000 per GiB streamed by `zoo serve`, 0.1-0.15 s
    of CPU per GiB). The price is some memory kept after a burst; the function returned
    (malloc_trim) hands back what it can. None where the C library is not glibc."""
    found = glibc_malloc()
    if found is None:
        return None
    mallopt, malloc_trim = found
    # 32 MiB, the highest glibc's own adjustment of the mmap threshold goes on 64-bit: a 4 MiB
    # chunk's buffers then come from the heap. The trim threshold is the free top a heap keeps:
    # 128 KiB (the default) hands each freed piece back (340,000 faults per GiB served); above a
    # thread heap's 64 MiB a heap never shrinks, and malloc_trim does not shrink those either (880
    # MiB kept after 200 stalled downloads closed). At 32 MiB: 13 faults per GiB, about 100 MiB kept.
    if not (mallopt(M_MMAP_THRESHOLD, 32 << 20) and mallopt(M_TRIM_THRESHOLD, 32 << 20)):
        return None
    return lambda: malloc_trim(0)
