"""What travels between a run's tasks, counted without the flow body having to say so.

The point of the design is that this stays small and constant (a few KB per run at any size: only file
references move, never activities). `CountingTasks` wraps each task so that a call, or a submitted
future once it is resolved, adds its parameters and its result to the tally.
"""

from __future__ import annotations

import json
from typing import Any

from prefect.exceptions import UnfinishedRun
from prefect.futures import PrefectFuture
from pydantic import BaseModel


def json_size(value: Any) -> int:
    """Bytes of `value` as JSON (how Prefect persists these results); None costs nothing."""
    if value is None:
        return 0
    if isinstance(value, BaseModel):
        return len(value.model_dump_json())
    if isinstance(value, list | tuple):
        return sum(json_size(item) for item in value)
    return len(json.dumps(value, default=str))


class Traffic:
    """Parameters and results of every task call in one flow run."""

    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0
        self._pending: list[tuple[tuple[Any, ...], PrefectFuture[Any]]] = []

    def add(self, args: tuple[Any, ...], result: Any) -> None:
        """One finished task call."""
        self.calls += 1
        self.bytes += sum(json_size(value) for value in args) + json_size(result)

    def add_future(self, args: tuple[Any, ...], future: PrefectFuture[Any]) -> None:
        """A submitted call, counted when `settle()` resolves it (a failed one adds its parameters only)."""
        self._pending.append((args, future))

    def settle(self) -> None:
        """Count every submitted call; call this once all futures have finished."""
        pending, self._pending = self._pending, []
        for args, future in pending:
            try:
                result = future.result(raise_on_failure=False)
            except UnfinishedRun:  # never ran (a step it waited for failed): only its parameters were sent
                result = None
            self.add(args, None if isinstance(result, BaseException) else result)


class CountedTask:
    """A task that adds each call to a Traffic tally: called directly, or submitted for a future."""

    def __init__(self, task: Any, traffic: Traffic) -> None:
        self.task = task
        self.traffic = traffic

    def __call__(self, *args: Any) -> Any:
        result = self.task(*args)
        self.traffic.add(args, result)
        return result

    def submit(self, *args: Any, wait_for: list[PrefectFuture[Any]] | None = None) -> PrefectFuture[Any]:
        future = self.task.submit(*args, wait_for=wait_for)
        self.traffic.add_future(args, future)
        return future

    def with_options(self, **options: Any) -> CountedTask:
        return CountedTask(self.task.with_options(**options), self.traffic)
