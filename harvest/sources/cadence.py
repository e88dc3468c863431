"""A source's cadence as the command line gives it: `--every 1d` or `--cron "0 3 * * *"`, exactly one.

Only its form is checked here; whether Prefect accepts a cron expression is asked of Prefect (blocks/schedules.py),
so harvest and the UI never disagree on what is valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from harvest.durations import parse_duration
from harvest.errors import ConfigError

DEFAULT_EVERY = "1d"
SHORTEST = timedelta(minutes=1)  # Prefect's scheduler plans runs ahead; a shorter interval would flood it


@dataclass(frozen=True)
class Cadence:
    """An interval or a cron expression (in `timezone`), never both."""

    every: timedelta | None = None
    cron: str | None = None
    timezone: str = "UTC"

    def text(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron} ({self.timezone})"
        return f"every {describe(self.every or timedelta(0))}"


def describe(interval: timedelta) -> str:
    """'1d', '6h', '90m', '45s': the shortest exact form."""
    seconds = int(interval.total_seconds())
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def cadence_from(every: str | None, cron: str | None) -> Cadence:
    """The cadence the options ask for (a day when neither is given); both, or a malformed one, is a ConfigError."""
    if every is not None and cron is not None:
        raise ConfigError("give --every or --cron, not both")
    if cron is not None:
        if len(cron.split()) != 5:
            raise ConfigError(f"--cron {cron!r} is not a cron expression: five fields, e.g. \"0 3 * * *\"")
        return Cadence(cron=" ".join(cron.split()))
    try:
        interval = parse_duration(every or DEFAULT_EVERY)
    except ConfigError:
        raise ConfigError(f"--every {every!r} is not a duration: a number and a unit s, m, h, d or w (e.g. 1d)") \
            from None
    if interval < SHORTEST:
        raise ConfigError(f"--every {every}: at least {describe(SHORTEST)}")
    return Cadence(every=interval)
