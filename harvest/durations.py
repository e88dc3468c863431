"""Durations as people type them (`90`, `15m`, `1h`, `30d`, `2w`): one parser for every option that takes one.

A leaf module: `harvest sources add --every` and `--since` read durations without importing the retention sweep
(and through it every enrichment: ~3 s on a busy machine).
"""

from __future__ import annotations

import re
from datetime import timedelta

from harvest.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """'90', '90s', '15m', '1h', '30d', '2w' → timedelta; anything else is a ConfigError that says so."""
    match = _DURATION.match(text or "")
    if not match:
        raise ConfigError(f"invalid duration {text!r}: use a number with an optional unit s, m, h, d or w (e.g. 30d)")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
