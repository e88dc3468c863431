"""Where memory goes: a sampler thread that reads this process's RSS every few milliseconds and, for each
sample, names the harvest stage running at that moment (the innermost `harvest/stages/` frame of any
thread). The bench reports the peak per stage, so a stage whose memory grows with N shows up by name."""

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
_STAGES = f"{os.sep}harvest{os.sep}stages{os.sep}"


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


def _running_stage() -> str | None:
    for thread_id, frame in _thread_frames().items():
        if thread_id == threading.get_ident():
            continue
        stage = None
        while frame is not None:
            if _STAGES in frame.f_code.co_filename:
                stage = f"{Path(frame.f_code.co_filename).stem}.{frame.f_code.co_name}"
                break  # outermost-first is not available; the first stage frame from the top is the innermost
            frame = frame.f_back
        if stage:
            return stage
    return None


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
        while not self._stop.wait(self.interval_s):
            rss = rss_mb()
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
