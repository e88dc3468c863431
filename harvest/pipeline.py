"""What every stage returns, and how a stage's input is split into chunks (where files go: harvest/storage/keys.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from harvest.models import FileRef
from harvest.storage import ObjectStore, iter_jsonl
from harvest.storage.keys import part_kind

MAX_STAGE_WARNINGS = 200


class StageStats(BaseModel):
    items_in: int = 0
    items_out: int = 0
    skipped: int = 0
    seconds: float = 0.0
    details: dict[str, int | float | str] = Field(default_factory=dict)
    processes: list[str] = Field(
        default_factory=list, description="host:pid of each process that ran (a chunk of) the stage, set by the flow."
    )


class StageResult(BaseModel):
    """A stage's output: references to what it stored, its counters, and what a person should know."""

    files: list[FileRef] = Field(default_factory=list)
    stats: StageStats = Field(default_factory=StageStats)
    warnings: list[str] = Field(default_factory=list)
    failed_urls: list[dict[str, object]] = Field(default_factory=list)
    unfollowed: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Crawl only: links a limit left unfollowed, reason -> {count, examples}."
    )

    def file(self, kind: str) -> FileRef:
        for ref in self.files:
            if ref.kind == kind:
                return ref
        raise KeyError(kind)

    def warn(self, message: str) -> None:
        if len(self.warnings) < MAX_STAGE_WARNINGS:
            self.warnings.append(message)
        elif len(self.warnings) == MAX_STAGE_WARNINGS:
            self.warnings.append("(further warnings of this stage omitted)")


@contextmanager
def timed(stats: StageStats) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        stats.seconds = round(time.perf_counter() - started, 3)


@dataclass(frozen=True)
class Chunk:
    """Lines [start, stop) of a stage's input, processed by one task; its output is part `index` of the map."""

    index: int
    start: int
    stop: int

    def records(self, store: ObjectStore, uri: str) -> Iterator[dict[str, Any]]:
        """This chunk's records of a stored JSONL file (the lines before it are skipped unparsed)."""
        return iter_jsonl(store, uri, self.start, self.stop)

    def output(self, kind: str) -> str:
        return part_kind(kind, self.index)


def chunk_ranges(records: int, chunk_size: int, max_chunks: int) -> list[tuple[int, int]]:
    """Split `records` lines into contiguous [start, stop) ranges of about `chunk_size`, at most `max_chunks`
    of them (so what travels between tasks stays bounded however large the site), at least one."""
    if records <= 0:
        return [(0, 0)]
    count = max(1, min(max_chunks, -(-records // max(1, chunk_size))))
    bounds = [records * i // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def merge_stats(parts: list[StageStats]) -> StageStats:
    """One stage's totals from its chunks: counts add up; the chunks ran side by side, so seconds is the longest."""
    total = StageStats(seconds=max((p.seconds for p in parts), default=0.0))
    for part in parts:
        total.items_in += part.items_in
        total.items_out += part.items_out
        total.skipped += part.skipped
        for key, value in part.details.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total.details[key] = total.details.get(key, 0) + value  # type: ignore[operator]
    total.details["chunks"] = len(parts)
    total.processes = sorted({process for part in parts for process in part.processes})
    return total
