"""What `harvest` prints on stdout: tables with headers (rich) that say so when they are empty, short summaries
in words, and, with `--json`, exactly one JSON document and nothing else.

At a terminal the tables fit its width; in a pipe they are never wrapped (a wide console), so `grep` and `cut`
see one row per line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

PIPE_WIDTH = 1000  # columns for a console that is not a terminal: long URLs stay on their line


def emit_json(document: Any) -> None:
    """The one JSON document of a `--json` command."""
    sys.stdout.write(json.dumps(document, default=str, indent=2) + "\n")
    sys.stdout.flush()


def console(*, stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(file=stream, width=width, highlight=False, soft_wrap=False, emoji=False)


def line(text: str = "") -> None:
    """A plain line on stdout (no markup is interpreted)."""
    sys.stdout.write(text + "\n")


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str, title: str | None = None,
          right: Sequence[str] = ()) -> None:
    """A table with a header row, or the `empty` sentence when there is nothing to show."""
    rows = [list(row) for row in rows]
    if not rows:
        line(empty)
        return
    from rich import box
    from rich.table import Table

    grid = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, show_edge=False)
    for column in columns:
        grid.add_column(column, justify="right" if column in right else "left", no_wrap=column in right)
    for row in rows:
        grid.add_row(*(cell(value) for value in row))
    show = console()
    with show.capture() as captured:
        show.print(grid)
    for text in captured.get().splitlines():  # rich pads every cell to its column: no trailing blanks
        line(text.rstrip())


def cell(value: Any) -> str:
    """A table cell: dates to the minute, numbers with thousands separators, nothing as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """`name   value` lines, the names aligned (a run's header in `runs show`)."""
    width = max((len(name) for name, _ in pairs), default=0)
    for name, value in pairs:
        line(f"{name:<{width}}  {cell(value)}")


def counts(mapping: Mapping[str, Any] | None, *, order: Sequence[str] = ()) -> str:
    """`imported 12, updated 3, skipped 0`: a summary dict in words, known keys first, empty ones left out
    unless everything is empty."""
    if not mapping:
        return "none"
    keys = [key for key in order if key in mapping] + [key for key in mapping if key not in order]
    parts = [f"{key.replace('_', ' ')} {cell(mapping[key])}" for key in keys
             if isinstance(mapping[key], (int, float)) and not isinstance(mapping[key], bool)]
    return ", ".join(parts) or "none"


IMPORT_ORDER = ("imported", "updated", "skipped", "failed")
DIFF_ORDER = ("added", "removed", "changed", "unchanged")


def import_summary(summary: Mapping[str, Any] | None) -> str:
    """An import summary in words: `imported 12, updated 3, skipped 0, failed 0` (and why it stopped, if so)."""
    if not summary:
        return "not imported"
    text = counts({key: summary.get(key, 0) for key in IMPORT_ORDER}, order=IMPORT_ORDER)
    if summary.get("interrupted"):
        text += f" (interrupted: {summary['interrupted']})"
    return text


def diff_summary(diff: Mapping[str, Any] | None) -> str:
    """Diff counts in words: `added 3, removed 1, changed 2, unchanged 250`."""
    return counts(diff, order=DIFF_ORDER) if diff else "none"
