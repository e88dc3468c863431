"""The live progress line of `harvest scrape` on stderr: stage, pages fetched and queued, activities found.

Shown only when stderr is a terminal and the output is not `--json`, so pipes, logs and scripts see exactly
what they saw before. It reads the process-local board the flow writes (flows.artifacts.LIVE): the CLI runs
the flow in its own process.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

REFRESH_S = 0.25


def wanted(as_json: bool) -> bool:
    """A live display only for a person at a terminal."""
    return not as_json and sys.stderr.isatty()


def describe(status: object) -> str:
    """One line for a LiveStatus."""
    stage = getattr(status, "stage", "")
    line = f"harvest: {stage} {getattr(status, 'percent', 0.0):.0f}%"
    line += (f" | pages fetched {getattr(status, 'pages_fetched', 0)}, queued {getattr(status, 'pages_queued', 0)}"
             f" | activities found {getattr(status, 'activities_found', 0)}")
    if getattr(status, "chunks_total", 0):
        line += f" | enrichment {getattr(status, 'chunks_done', 0)}/{getattr(status, 'chunks_total', 0)}"
    return line


@contextmanager
def live_progress(enabled: bool) -> Iterator[None]:
    """While the block runs, redraw the progress line on stderr a few times a second (when `enabled`)."""
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.live import Live

    from flows.artifacts import LIVE

    LIVE.reset()
    stop = threading.Event()
    console = Console(stderr=True)
    with Live(describe(LIVE.get()), console=console, refresh_per_second=4, transient=True) as live:

        def redraw() -> None:
            while not stop.wait(REFRESH_S):
                live.update(describe(LIVE.get()))

        thread = threading.Thread(target=redraw, name="harvest-live", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=2)
    console.print(describe(LIVE.get()), highlight=False)  # the last state stays on screen
