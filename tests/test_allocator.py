"""zoo.allocator: what the CLI and `zoo serve` do to glibc's malloc, seen in a fresh process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from zoo.allocator import glibc_malloc

# Blocks of 4 to 12 MiB, each written whole and freed before the next is asked for, as chunks are
# decoded one after another; prints the page faults they cost and the pages they cover.
GROWING_BLOCKS = """
import ctypes, resource, sys
if sys.argv[1] == "keep":
    from zoo.allocator import keep_freed_buffers
    assert keep_freed_buffers() is not None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
before, pages = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, 0
for mib in range(4, 13):
    block = libc.malloc(mib << 20)
    ctypes.memset(block, 1, mib << 20)
    libc.free(block)
    pages += (mib << 20) // 4096
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, pages)
"""


def faults(mode: str) -> tuple[int, int]:
    done = subprocess.run([sys.executable, "-c", GROWING_BLOCKS, mode], capture_output=True, text=True, check=True, timeout=60)
    counted, pages = map(int, done.stdout.split())
    return counted, pages


@pytest.mark.skipif(glibc_malloc() is None, reason="not glibc")
def test_freed_blocks_of_a_few_mib_are_reused_instead_of_mapped_afresh():
    counted, pages = faults("defaults")
    assert counted > pages * 0.8  # glibc's defaults: nearly every block a fresh mapping
    counted, pages = faults("keep")
    assert counted < pages * 0.3  # kept: only the heap's growth is new
