"""harvest's own log lines (retries, robots.txt, sitemaps, skipped links, dropped dates) in the flow run's logs.

The domain package logs through `logging.getLogger("harvest...")` and knows nothing of Prefect. Prefect sends a
record to its API only from inside a run context, and much of harvest logs from threads of its own (the crawl
runs on its own event loop thread), which carry no context. So, for the duration of a flow run, a Prefect
APILogHandler on the `harvest` logger stamps such records with the flow run's id; records from inside a task
keep the task's context (and so show under that task in the UI).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler
from prefect.settings import get_current_settings

HARVEST_LOGGER = "harvest"


class _RunLogHandler(APILogHandler):
    """An APILogHandler that attributes context-less records (other threads) to one flow run."""

    def __init__(self, flow_run_id: UUID) -> None:
        super().__init__(level=logging.INFO)
        self.flow_run_id = flow_run_id

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "flow_run_id", None) is None:
            try:
                get_run_context()
            except MissingContextError:
                record.flow_run_id = self.flow_run_id
        super().emit(record)


@contextmanager
def harvest_logs_to_run(flow_run_id: UUID | str | None) -> Iterator[None]:
    """Send the `harvest` logger's INFO and above to this flow run's logs while the block runs."""
    extra = get_current_settings().logging.extra_loggers or []
    names = extra if isinstance(extra, list) else [name.strip() for name in str(extra).split(",")]
    if flow_run_id is None or HARVEST_LOGGER in names:  # none to attach to, or Prefect already sends them
        yield
        return
    logger = logging.getLogger(HARVEST_LOGGER)
    handlers: list[logging.Handler] = [_RunLogHandler(UUID(str(flow_run_id)))]
    previous = logger.level, logger.propagate
    threshold = logger.getEffectiveLevel()
    if threshold > logging.INFO:
        # The root's WARNING would drop INFO lines before any handler saw them. Lower it for this logger only,
        # and hand the console (the root's handlers) only what it showed before, so the terminal is not flooded.
        logger.setLevel(logging.INFO)
        logger.propagate = False
        handlers.append(_ToRootFrom(threshold))
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(previous[0])
        logger.propagate = previous[1]


class _ToRootFrom(logging.Handler):
    """Passes records at or above the level the console used to see on to the root logger's handlers."""

    def __init__(self, level: int) -> None:
        super().__init__(level=level)

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)
