"""Waiting for a job a service runs (the embeddings batch) inside one running task.

Design choice: the wait is a loop in the collect task, not Prefect task retries. With retries every poll of a
batch that is simply not done yet was a failed attempt: the UI showed "Retry 1/153" and a column of Failed →
AwaitingRetry states for a run that was fine. Now the task stays Running while it waits, with a progress artifact
(lines done of the batch's total, and how long it has waited) moved at each poll and a log line whenever the
batch's status or progress changes. The interval doubles from HARVEST_BATCH_POLL_SECONDS up to
HARVEST_BATCH_POLL_MAX_SECONDS; after HARVEST_BATCH_MAX_WAIT_SECONDS the task fails with the last status, and the
run goes on without the enrichment (a warning). A resumed run still re-attaches to the job it paid for: that is the
submission's persisted result, untouched here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar, cast
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from harvest.errors import BatchNotReadyError

T = TypeVar("T")
logger = logging.getLogger("harvest.polling")


def backoff(first_s: float, cap_s: float) -> Iterator[float]:
    """Intervals doubling from `first_s` up to `cap_s`, for ever."""
    delay = max(first_s, 0.01)
    cap_s = max(cap_s, delay)
    while True:
        yield delay
        delay = min(delay * 2, cap_s)


@dataclass
class WaitProgress:
    """What a waiting task shows: one progress artifact (created at the first 'not yet', then updated) and a log
    line when the job's status changes. Reporting never fails the wait: an artifact that cannot be written is a
    warning."""

    what: str
    artifact_id: UUID | None = None
    said: str = ""
    _failed: bool = field(default=False, repr=False)

    def __call__(self, not_ready: BatchNotReadyError, polls: int, waited_s: float) -> None:
        done, total = not_ready.done, not_ready.total
        percent = round(100.0 * done / total, 1) if done is not None and total else 0.0
        description = f"{self.what}: {not_ready} after {polls} poll(s), waiting {waited_s:.0f} s so far"
        if str(not_ready) != self.said:
            self.said = str(not_ready)
            logger.info("%s: %s (poll %d, %.0f s)", self.what, not_ready, polls, waited_s)
        if self._failed:
            return
        try:
            if self.artifact_id is None:
                # Prefect types its sync/async dispatch as either; called from sync code it returns the id.
                self.artifact_id = cast(UUID, create_progress_artifact(percent, description=description))
            else:
                update_progress_artifact(self.artifact_id, percent, description=description)
        except Exception as exc:  # noqa: BLE001 - progress is reporting, never a reason to stop waiting
            self._failed = True
            logger.warning("%s: progress artifact not written: %s", self.what, exc)


def wait_for_job(
    check: Callable[[], T], *, first_s: float, cap_s: float, total_s: float,
    on_wait: Callable[[BatchNotReadyError, int, float], None], sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`check()`'s result once it stops raising BatchNotReadyError; polled with `backoff`, `on_wait` told after each
    'not yet'. Past `total_s` the last BatchNotReadyError is raised, saying how long it waited."""
    started = time.monotonic()
    for polls, delay in enumerate(backoff(first_s, cap_s), start=1):
        try:
            return check()
        except BatchNotReadyError as not_ready:
            waited = time.monotonic() - started
            if waited + delay > total_s:
                raise BatchNotReadyError(
                    f"{not_ready}; gave up after {polls} polls in {waited:.0f} s (HARVEST_BATCH_MAX_WAIT_SECONDS "
                    f"{total_s:.0f})", done=not_ready.done, total=not_ready.total,
                ) from not_ready
            on_wait(not_ready, polls, waited)
            sleep(delay)
    raise AssertionError("unreachable: backoff never ends")  # pragma: no cover
