"""Where memory goes: a sampler thread that reads this process's RSS every few milliseconds and, for each
sample, names the harvest stage running at that moment (the innermost frame of any thread in a step's
`harvest/<step>/stage.py`). The bench reports the peak per stage, so a stage whose memory grows with N shows up
by name.

With BENCH_RSS_TIMELINE=FILE, each case also appends to FILE, once a second, its RSS, the live Python blocks
(`sys.getallocatedblocks`) and every stage running, and after the flow what it kept (`retained_report`): RSS
growing while the blocks do not is the allocator holding freed memory, not data kept. How the mmap threshold
and the transfer concurrency were found (harvest/memory.py, harvest/storage/s3.py)."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE")
_HARVEST = f"{os.sep}harvest{os.sep}"
_STAGE_FILE = f"{os.sep}stage.py"  # each step's stage module: harvest/<step>/stage.py, harvest/enrich/<name>/stage.py


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE / 2**20


def peak_rss_mb() -> float:
    """This process's own peak RSS: VmHWM, the high-water mark of its memory map, which starts afresh at exec.

    Not `ru_maxrss`: Linux carries that across exec, and a child started by fork/vfork + exec inherits the
    parent's resident size at exec as its "peak". The bench's parent holds the OpenAI and geocoder
    stand-ins (and the batch outputs they serve), so ru_maxrss reported the parent's size, not the flow's:
    a 10,000 re-run showed 1,161 MB where its own peak was 358 MB.
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _thread_frames() -> dict[int, Any]:
    """`sys._current_frames()` with the garbage collector off: on CPython 3.11 a collection triggered inside it
    deadlocks the whole process (python/cpython#106883, fixed in 3.12 only): it holds the runtime's head lock,
    and an object freed by the collection waits for that lock. A 10,000 bench hung there for good."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()  # noqa: SLF001 - a profiler's job
    finally:
        if enabled:
            gc.enable()


def _stage_of(frame: Any) -> str | None:
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.endswith(_STAGE_FILE) and _HARVEST in filename:
            return f"{Path(filename).parent.name}.{frame.f_code.co_name}"
        frame = frame.f_back  # the first stage frame from the top is the innermost
    return None


def _running_stages() -> list[str]:
    """Every stage running in another thread, innermost frame each."""
    me = threading.get_ident()
    return sorted(stage for thread_id, frame in _thread_frames().items()
                  if thread_id != me and (stage := _stage_of(frame)))


def retained_report(path: str) -> None:
    """After a run: collect garbage, give free pages back, then append to `path` what stays: RSS, live blocks,
    the most common object types, and pymalloc's arenas."""
    import collections

    from harvest.memory import release_free_memory

    gc.collect()
    release_free_memory()
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    import tempfile

    with tempfile.TemporaryFile() as capture:  # _debugmallocstats writes to the C stderr only (a file: no pipe to fill)
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            sys._debugmallocstats()  # noqa: SLF001 - a profiler's job
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        stats = capture.read().decode(errors="replace")
    with open(path, "a") as out:
        out.write(f"after the run: rss={rss_mb():.1f} MB blocks={sys.getallocatedblocks()} "
                  f"objects={sum(counts.values())}\n{counts.most_common(25)}\n")
        out.write("".join(line + "\n" for line in stats.splitlines() if "arenas" in line))


def _running_stage() -> str | None:
    me = threading.get_ident()
    return next((stage for thread_id, frame in _thread_frames().items()
                 if thread_id != me and (stage := _stage_of(frame))), None)


class RssSampler:
    """`with RssSampler() as sampler:` ... `sampler.by_stage` → {stage: peak MB}; `sampler.peak` overall."""

    def __init__(self, interval_s: float = 0.02, trace_growth_mb: float | None = None) -> None:
        self.interval_s = interval_s
        self.by_stage: dict[str, float] = {}
        self.peak = 0.0
        self.trace_growth_mb = trace_growth_mb  # print a stack each time the peak grows this much (profiling)
        self._last_traced = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        timeline = os.environ.get("BENCH_RSS_TIMELINE")
        started = last_line = time.monotonic()
        while not self._stop.wait(self.interval_s):
            rss = rss_mb()
            if timeline and time.monotonic() - last_line >= 1.0:
                last_line = time.monotonic()
                with open(timeline, "a") as out:
                    out.write(f"{last_line - started:7.1f} s rss={rss:6.1f} MB blocks={sys.getallocatedblocks()} "
                              f"threads={threading.active_count()} {' '.join(_running_stages())}\n")
            stage = _running_stage() or "(other)"
            if rss > self.by_stage.get(stage, 0.0):
                self.by_stage[stage] = rss
            if rss > self.peak:
                self.peak = rss
                if self.trace_growth_mb and rss - self._last_traced >= self.trace_growth_mb:
                    self._last_traced = rss
                    self._trace(rss)

    def _trace(self, rss: float) -> None:
        print(f"--- rss {rss:.0f} MB at {time.strftime('%X')}", file=sys.stderr)
        for thread_id, frame in _thread_frames().items():
            if thread_id == threading.get_ident():
                continue
            lines = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_stack(frame)
                     if "/harvest/" in f.filename or "/flows/" in f.filename or "/bench/" in f.filename]
            if lines:
                print("   " + " <- ".join(reversed(lines[-6:])), file=sys.stderr)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict[str, float]:
        return {stage: round(mb, 1) for stage, mb in sorted(self.by_stage.items(), key=lambda kv: -kv[1])}
