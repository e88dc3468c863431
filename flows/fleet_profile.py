"""Where a fleet worker's child spends its time (issue 32): with HARVEST_FLEET_PROFILE set to a folder, each run's
child writes `<flow run id>.json` there (CPU and wall seconds per phase of the run, from getrusage; the modules it
imported that the warm parent had not; the misses of the caches the parent fills) and `<flow run id>.prof` (cProfile
of the child's main thread: the engine, the flow's set-up and waits; the tasks' threads are not in it). Off by
default; for the bench and for finding what a child still repeats, never for production runs.
"""

from __future__ import annotations

import cProfile
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENV = "HARVEST_FLEET_PROFILE"
# Per-process caches the warm parent fills so its children find them full: a miss in a child is set-up it repeated.
CACHES = ("prefect_aws.credentials._get_client_cached", "blocks.storage._cached_store",
          "flows.resources._secret_block_value")


def _misses() -> dict[str, int]:
    out = {}
    for path in CACHES:
        module, name = path.rsplit(".", 1)
        cache = getattr(sys.modules.get(module), name, None)
        if cache is not None and hasattr(cache, "cache_info"):
            out[path] = cache.cache_info().misses
    return out


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Phases:
    """Marks phases of one child's run; `phase(name)` closes the current one and starts the next."""

    def __init__(self, folder: str | None) -> None:
        self.folder = Path(folder) if folder else None
        self.rows: list[dict[str, Any]] = []
        self._name = "start"
        self._cpu, self._wall = _cpu(), time.monotonic()
        self._modules = set(sys.modules)
        self._misses = _misses()
        self._profile = cProfile.Profile() if self.folder else None

    def phase(self, name: str) -> None:
        if self.folder is None:
            return
        cpu, wall = _cpu(), time.monotonic()
        self.rows.append({"phase": self._name, "cpu_s": round(cpu - self._cpu, 4),
                          "wall_s": round(wall - self._wall, 4)})
        self._name, self._cpu, self._wall = name, cpu, wall

    @contextmanager
    def profiled(self) -> Iterator[None]:
        if self._profile is None:
            yield
            return
        self._profile.enable()
        try:
            yield
        finally:
            self._profile.disable()

    def write(self, flow_run_id: str) -> None:
        if self.folder is None or self._profile is None:
            return
        self.phase("end")
        self.folder.mkdir(parents=True, exist_ok=True)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        imported = sorted(set(sys.modules) - self._modules)
        report = json.dumps({
            "pid": os.getpid(), "phases": self.rows, "cpu_s": round(sum(r["cpu_s"] for r in self.rows), 4),
            "user_s": round(usage.ru_utime, 3), "system_s": round(usage.ru_stime, 3),
            "minor_faults": usage.ru_minflt, "max_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "imported_in_child": imported,
            "imported_top_level": sorted({m.split(".")[0] for m in imported}),
            "cache_misses": {k: v - self._misses.get(k, 0) for k, v in _misses().items()},
        }, indent=1)
        self._profile.dump_stats(str(self.folder / f"{flow_run_id}.prof"))
        staged = self.folder / f".{flow_run_id}.json"
        staged.write_text(report)
        staged.rename(self.folder / f"{flow_run_id}.json")  # whole when it appears: a reader may be waiting for it


def phases() -> Phases:
    """A recorder for this child: active when HARVEST_FLEET_PROFILE names a folder."""
    return Phases(os.environ.get(ENV) or None)
