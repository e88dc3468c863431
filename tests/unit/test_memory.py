"""harvest bounds glibc's malloc arenas itself, for every process that imports it (harvest.memory)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from harvest.memory import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc only")

# Eight threads allocate at the same time and hold their blocks, then glibc prints its arenas (malloc_stats).
THREADS = textwrap.dedent("""
    import ctypes, sys, threading
    {prelude}
    barrier = threading.Barrier(8)
    held = []
    def work():
        blocks = [bytearray(4096) for _ in range(200)]
        barrier.wait()
        held.append(blocks)
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    sys.stderr.flush()
    ctypes.CDLL("libc.so.6").malloc_stats()
""")


def _arenas(prelude: str, **env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run([sys.executable, "-c", THREADS.format(prelude=prelude)], env={**clean, **env},
                          capture_output=True, text=True, check=True, timeout=60)
    return sum(1 for line in done.stderr.splitlines() if line.startswith("Arena "))


def test_importing_harvest_bounds_the_arenas_threads_use() -> None:
    assert _arenas("") > 2  # the control: without the bound each thread gets an arena of its own
    assert _arenas("import harvest") <= 2


def test_an_arena_max_from_the_environment_is_left_as_set() -> None:
    from harvest.memory import limit_malloc_arenas

    if os.environ.get("MALLOC_ARENA_MAX"):
        assert limit_malloc_arenas() is False
    assert _arenas("import harvest; from harvest.memory import limit_malloc_arenas; "
                   "assert limit_malloc_arenas() is False", MALLOC_ARENA_MAX="1") == 1


def test_release_free_memory_gives_freed_pages_back() -> None:
    script = textwrap.dedent("""
        import harvest
        from harvest.memory import release_free_memory
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096 / 2**20
        keep = []
        blocks = [bytearray(100_000) for _ in range(1500)]  # below the mmap threshold: from the heap
        keep = blocks[-1:]  # the heap's top stays in use, so only a trim inside the heap can give pages back
        del blocks
        before = rss()
        release_free_memory()
        print(before - rss())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    assert float(done.stdout) > 100  # MB given back of the ~143 MB freed


# One 16 MiB block is mapped and freed, then sixteen 5 MiB blocks (the size of S3 parts) are made and all
# but the last freed; prints the MB that freeing gave back.
LARGE_BLOCKS = textwrap.dedent("""
    {prelude}
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20
    part = b"p" * (16 << 20)
    del part
    blocks = [b"x" * (5 << 20) for _ in range(16)]
    keep = blocks[-1:]
    before = rss()
    del blocks
    print(before - rss())
""")


def _given_back_mb(prelude: str, **env: str) -> float:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", LARGE_BLOCKS.format(prelude=prelude)], env={**clean, **env},
                          capture_output=True, text=True, check=True, timeout=60)
    return float(done.stdout)


def test_large_blocks_freed_after_a_larger_one_go_back_to_the_system() -> None:
    # The control: glibc raised its mmap threshold to 16 MiB when the block was freed, so the 5 MiB blocks came
    # from the heap and stay resident below the one still in use.
    assert _given_back_mb("") < 10
    assert _given_back_mb("import harvest") > 70  # of the 75 MB freed


def test_an_mmap_threshold_from_the_environment_is_left_as_set() -> None:
    assert _given_back_mb("import harvest; from harvest.memory import fix_mmap_threshold; "
                          "assert fix_mmap_threshold() is False", MALLOC_MMAP_THRESHOLD_="16777216") < 10
