"""Keep the process's resident memory flat: glibc's allocator is bounded to a few arenas (ctypes over libc:
no maintained library wraps `mallopt`, and these are two calls).

glibc gives every thread that allocates its own arena, up to 8 per core, and memory freed into an arena is
kept there for that arena's next allocations instead of returning to the system. The flow's stages run in
threads (task runner, chunk workers, upload threads), each of them leaving freed blocks in its own arena:
the bench measured the peak RSS growing with the site (1,000 → 281 MB, 10,000 → 392 MB) with no Python
object kept, and 262 / 301 MB with two arenas (MALLOC_ARENA_MAX=2, bench/results). Two arenas, not one:
the flow's threads mostly wait on I/O, so they rarely contend for an arena's lock.

And the threshold above which a block gets its own mapping is fixed at 4 MiB: glibc raises it to the size of
any mapped block freed (up to 32 MiB), so after the first 8 MiB upload part was freed every later part came
from the arenas, where a block freed below one still in use is never given back. The final writer's peak grew
with the file it writes: +40 MB at 50,000 activities against +16 at 1,000 (bench, BENCH_SIZES=1000,50000).
4 MiB, not lower: 256 KiB held the 50,000 peak 7 MB lower still, but mapped every 1 MiB read buffer afresh,
and an unchanged re-run took 60% more page faults (216,000 against 132,000; 4 MiB: 186,000).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from functools import cache

logger = logging.getLogger("harvest.memory")

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
M_ARENA_MAX = -8
DEFAULT_ARENAS = 2
MMAP_THRESHOLD_BYTES = 4 << 20  # blocks from 4 MiB up (S3 parts) are mapped and unmapped on their own


@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (musl and macOS have neither call)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _mallopt(option: int, name: str, value: int, otherwise: str) -> bool:
    """Set one glibc malloc parameter; False (and why, when glibc refused) where it was not set."""
    libc = _glibc()
    if libc is None:
        return False
    if libc.mallopt(option, value) != 1:
        logger.warning("mallopt(%s, %d) was refused; %s", name, value, otherwise)
        return False
    return True


def limit_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Bound glibc's arenas for this process (threads started afterwards share them). A MALLOC_ARENA_MAX set in
    the environment wins: glibc applied it at start. Returns whether the bound was set here."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return _mallopt(M_ARENA_MAX, "M_ARENA_MAX", arenas, "memory may grow with the number of threads")


def fix_mmap_threshold(size: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Map every block of `size` bytes or more on its own, for good (no dynamic raise), so freeing it gives its
    pages back at once. A threshold from the environment (MALLOC_MMAP_THRESHOLD_ or GLIBC_TUNABLES) wins.
    Returns whether the threshold was set here."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return _mallopt(M_MMAP_THRESHOLD, "M_MMAP_THRESHOLD", size, "large buffers may stay resident")


def release_free_memory() -> None:
    """Give the pages the allocator holds free back to the system (after a stage has dropped its data)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
