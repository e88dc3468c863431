"""harvest's own log lines (retries, robots.txt, sitemaps, skipped links, dropped dates, embeddings batches) in the
run's logs, from every process the run's tasks run in.

The domain package logs through `logging.getLogger("harvest...")` and knows nothing of Prefect. Prefect sends a
record to its API only from inside a run context, and only where a handler is attached. Two gaps follow: much of
harvest logs from threads of its own (the crawl's event loop thread, the enrichment pools), which carry no
context; and with Dask worker processes (HARVEST_DASK_PROCESSES) a task runs in a process the flow's handler is
not in. So while a flow run (`harvest_logs_to_run`, in the flow's process) or a task (`harvest_logs_to_task`,
in whatever process runs it) is under way, one APILogHandler sits on the `harvest` logger of that process: a
record from inside a task goes to that task run, one from inside the flow to the flow run, and a context-less
one to the flow run under way in this process. One handler per process, however many runs and tasks attached
it, so each record is sent once.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar
from uuid import UUID

from prefect.context import TaskRunContext, get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler
from prefect.settings import get_current_settings

HARVEST_LOGGER = "harvest"

P = ParamSpec("P")
R = TypeVar("R")


class _ToRuns(APILogHandler):
    """An APILogHandler that also sends context-less records (harvest's own threads), to the one flow run whose
    flow or tasks are under way in this process; with none or several it cannot tell whose they are."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.flow_runs: Counter[UUID] = Counter()  # flow run id → its flow and tasks under way here

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "flow_run_id", None) is None:
            try:
                get_run_context()
            except MissingContextError:
                under_way = list(self.flow_runs)
                if len(under_way) != 1:
                    return
                record.flow_run_id = under_way[0]
        super().emit(record)


class _ToRootFrom(logging.Handler):
    """Passes records at or above the level the console used to see on to the root logger's handlers."""

    def __init__(self, level: int) -> None:
        super().__init__(level=level)

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


class _Attachment:
    """The handler on this process's `harvest` logger, and the logger's level and propagation before it."""

    def __init__(self) -> None:
        logger = logging.getLogger(HARVEST_LOGGER)
        self.handler = _ToRuns()
        self.handlers: list[logging.Handler] = [self.handler]
        self.level, self.propagate = logger.level, logger.propagate
        threshold = logger.getEffectiveLevel()
        if threshold > logging.INFO:
            # The root's WARNING would drop INFO lines before any handler saw them. Lower it for this logger only,
            # and hand the console (the root's handlers) only what it showed before, so the terminal is not flooded.
            logger.setLevel(logging.INFO)
            logger.propagate = False
            self.handlers.append(_ToRootFrom(threshold))
        for handler in self.handlers:
            logger.addHandler(handler)

    def remove(self) -> None:
        logger = logging.getLogger(HARVEST_LOGGER)
        for handler in self.handlers:
            logger.removeHandler(handler)
        logger.setLevel(self.level)
        logger.propagate = self.propagate


_lock = threading.Lock()
_attachment: _Attachment | None = None


@contextmanager
def _forwarding(flow_run_id: UUID) -> Iterator[None]:
    """This process's harvest records reach the runs while the block runs. The first flow or task to enter
    attaches the handler, the last to leave takes it off: tasks overlap in a worker process's threads."""
    global _attachment
    with _lock:
        if _attachment is None:
            _attachment = _Attachment()
        runs = _attachment.handler.flow_runs
        runs[flow_run_id] += 1
    try:
        yield
    finally:
        with _lock:
            runs[flow_run_id] -= 1
            if runs[flow_run_id] <= 0:
                del runs[flow_run_id]
            if not runs and _attachment is not None:
                _attachment.remove()
                _attachment = None


def _prefect_sends_them() -> bool:
    """PREFECT_LOGGING_EXTRA_LOGGERS names `harvest`: Prefect's own handler sends its lines already."""
    extra = get_current_settings().logging.extra_loggers or []
    names = extra if isinstance(extra, list) else [name.strip() for name in str(extra).split(",")]
    return HARVEST_LOGGER in names


@contextmanager
def harvest_logs_to_run(flow_run_id: UUID | str | None) -> Iterator[None]:
    """Send the `harvest` logger's INFO and above to this flow run's logs while the block runs."""
    if flow_run_id is None or _prefect_sends_them():  # none to attach to, or Prefect already sends them
        yield
        return
    with _forwarding(UUID(str(flow_run_id))):
        yield


def harvest_logs_to_task(fn: Callable[P, R]) -> Callable[P, R]:
    """A task function whose `harvest` lines (INFO and above) reach its task run's logs in whatever process runs
    it: the flow's own, or a Dask worker process, where nothing else would send them."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        context = TaskRunContext.get()
        flow_run_id = context.task_run.flow_run_id if context is not None else None
        if flow_run_id is None or _prefect_sends_them():
            return fn(*args, **kwargs)
        with _forwarding(flow_run_id):
            return fn(*args, **kwargs)

    return run
