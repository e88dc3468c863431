"""How `harvest` ends when something is wrong: one `error:` line naming the cause and what to do, and an exit
code a script can act on. A traceback only with `--debug` (or `-vv`).

Exit codes (docs/operating.md, "Exit codes"):

    0    done
    1    the run (or the operation) failed
    2    bad input or a refused request: an invalid option, URL, setting or run id, or a request the run's state
         does not allow (resume a completed run, import a cleaned one, clean up a pinned one)
    3    a service harvest needs is unavailable: the database, the storage, Prefect's API
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from enum import IntEnum
from typing import Any, NoReturn


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    UNAVAILABLE = 3
    INTERRUPTED = 130


class CliError(Exception):
    """An expected failure: printed as one `error:` line, the process exits with `code`."""

    def __init__(self, message: str, code: ExitCode = ExitCode.BAD_INPUT) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Interrupted(CliError):
    """Ctrl-C stopped the command: `message` says what became of the run (printed as is, not as an error, by
    `say`, which prints it only if a forced exit on another thread has not already)."""

    def __init__(self, message: str, say: Callable[[str], None] | None = None) -> None:
        super().__init__(message, ExitCode.INTERRUPTED)
        self._say = say

    def say(self) -> None:
        if self._say is not None:
            self._say(self.message)
            return
        sys.stderr.write(self.message + "\n")
        sys.stderr.flush()


def debugging() -> bool:
    """Whether tracebacks are wanted (`--debug` or `-vv`, which set HARVEST_CLI_DEBUG for this process)."""
    return os.environ.get("HARVEST_CLI_DEBUG") == "1"


def say_error(message: str) -> None:
    """The one line on stderr. Only the first line of a message is kept: a library's multi-line text (a driver's
    error, a pydantic dump) must not turn the line into a page."""
    first = " ".join(message.strip().splitlines()[0].split()) if message.strip() else "unknown error"
    sys.stderr.write(f"error: {first}\n")
    sys.stderr.flush()


def fail(message: str, code: ExitCode = ExitCode.BAD_INPUT) -> NoReturn:
    """Print the `error:` line and leave with `code` (typer.Exit, so in-process callers see the code too)."""
    import traceback

    import typer

    if debugging() and sys.exc_info()[0] is not None:
        traceback.print_exc()  # the cause chain of the error being reported
    say_error(message)
    raise typer.Exit(int(code))


def validation_message(exc: Any, names: dict[str, str] | None = None) -> str:
    """A pydantic ValidationError as one readable clause per problem: `--max-pages: must be ≥ 1 (got 0)`.

    `names` maps a field (its dotted location) to what the user typed it as (a flag, an environment variable);
    otherwise the field's own name is used."""
    parts = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(item) for item in error.get("loc", ()) if item != "__root__")
        name = (names or {}).get(location) or location or "value"
        message = str(error.get("msg", "invalid"))
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        given = error.get("input")
        shown = (f" (got {given!r})" if isinstance(given, (str, int, float)) and error.get("type") != "missing"
                 and repr(given) not in message else "")
        if message[:2].istitle():  # "Input should be…", not "HARVEST_…" or "URL…"
            message = message[:1].lower() + message[1:]
        parts.append(f"{name}: {message}{shown}")
    return "; ".join(parts) or str(exc)
