"""Prefect settings the `harvest` command needs on a machine nobody prepared, applied before Prefect is imported.

Why: with no Prefect API configured, Prefect starts a temporary ("ephemeral") API server and, on a fresh
`PREFECT_HOME`, creates and migrates its SQLite database first. Prefect waits 20 s for that server by default;
on a loaded 2-core machine the first start took 33 s (measured: `harvest scrape` end to end, load average 6), so a
new user's first `harvest scrape URL` died with "Timed out while attempting to connect to ephemeral Prefect API
server" before crawling. Only defaults are set: a value the user (or a profile) gives always wins.
"""

from __future__ import annotations

import os

# Seconds to wait for the ephemeral API server: room for a first start (database migration) on a slow machine.
EPHEMERAL_STARTUP_TIMEOUT_SECONDS = "180"

DEFAULTS = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": EPHEMERAL_STARTUP_TIMEOUT_SECONDS}

# Printed when the ephemeral server still does not come up: what to do instead of reading a traceback.
STARTUP_HINT = (
    "Prefect's temporary API server did not start in time. Either raise "
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (harvest sets it to "
    f"{EPHEMERAL_STARTUP_TIMEOUT_SECONDS} unless you set it), or run `prefect server start` in another terminal "
    "and set PREFECT_API_URL=http://127.0.0.1:4200/api."
)


def apply_prefect_defaults() -> None:
    """Set each default unless the environment already has the variable (an explicit setting wins)."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)


def is_startup_timeout(exc: BaseException) -> bool:
    """True for Prefect's 'ephemeral API server did not start' error (a RuntimeError with that message)."""
    return isinstance(exc, RuntimeError) and "ephemeral Prefect API server" in str(exc)
