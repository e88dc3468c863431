"""What every stage returns, and where its files go."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel, Field

from harvest.models import FileRef

MAX_STAGE_WARNINGS = 200


def run_key(run_id: str, kind: str, ext: str) -> str:
    """`runs/<run_id>/<kind>.<ext>`: every file of a run sits under one prefix, so cleanup is one prefix delete."""
    return f"runs/{run_id}/{kind}.{ext}"


class StageStats(BaseModel):
    items_in: int = 0
    items_out: int = 0
    skipped: int = 0
    seconds: float = 0.0
    details: dict[str, int | float | str] = Field(default_factory=dict)


class StageResult(BaseModel):
    """A stage's output: references to what it stored, its counters, and what a person should know."""

    files: list[FileRef] = Field(default_factory=list)
    stats: StageStats = Field(default_factory=StageStats)
    warnings: list[str] = Field(default_factory=list)
    failed_urls: list[dict[str, object]] = Field(default_factory=list)

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
