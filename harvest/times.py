"""When an activity happens, in the venue's own time: dates as sites publish them, the venue's IANA zone, and
what to believe when the markup and the visible page disagree (issue 26).

- Off-standard ISO is read as what it means: single-digit months and days (`2019-9-18`), dashes or dots in the
  time part (`T10-30-00`, EventON's `T10-10-30-00` with the hour written twice), a date and a time joined by a
  dash (`2012-05-13-11:00:00`).
- A date without a time is a date: the item is all-day, unless the page shows its time right beside it, which is
  then used (and counted).
- The venue's zone comes from its coordinates through an offline lookup (tzfpy), else from the source (an
  iCalendar TZID), else from the run config's `timezone`. A time with an offset becomes that instant in the zone;
  a naive time is read in the zone, never as UTC; without a zone it stays as written (and is counted).
- When the markup's offset contradicts the zone (a 9:00 meeting marked `+00:00`, a November date with the summer
  offset) and the page shows the markup's wall time beside the item, the wall time wins in the venue's zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import tzfpy

# YYYY-M-D, then optionally a time in any of the separators sites use, then optionally an offset.
_LOOSE_ISO_RE = re.compile(
    r"^(?P<y>\d{4})[-/.](?P<m>\d{1,2})[-/.](?P<d>\d{1,2})"
    r"(?:(?:[T\s]|-(?=\d{1,2}[:.\-]\d{2}))(?P<time>\d{1,2}(?:[:.\-]\d{2}){1,3}))?"
    r"(?P<tz>\s*(?:Z|[+-]\d{2}:?\d{2}))?$",
    re.IGNORECASE,
)
_DATE_ONLY_RE = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}$")
_TIME_IN_TEXT_RE = re.compile(r"\d{1,2}\s*(?:[:.h]\s*\d{2}|[ap]\.?\s?m\b|uhr\b)", re.IGNORECASE)


def normalize_iso(text: str) -> str | None:
    """`text` rewritten as standard ISO 8601 when it is an off-standard ISO date(-time), else None.

    The time part's numbers: H-M, H-M-S, or EventON's H-H-M-S (the hour twice, as its templates write it).
    """
    match = _LOOSE_ISO_RE.match(text.strip())
    if match is None:
        return None
    year, month, day = int(match["y"]), int(match["m"]), int(match["d"])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    out = f"{year:04d}-{month:02d}-{day:02d}"
    if match["time"]:
        numbers = [int(part) for part in re.split(r"[:.\-]", match["time"])]
        if len(numbers) == 4 and numbers[0] == numbers[1]:
            numbers = numbers[1:]
        elif len(numbers) == 4:
            return None
        hour, minute, second = (numbers + [0, 0])[:3]
        if hour > 23 or minute > 59 or second > 59:
            return None
        out += f"T{hour:02d}:{minute:02d}:{second:02d}"
    if match["tz"]:
        out += match["tz"].strip().upper()
    return out


def is_date_only(text: str) -> bool:
    """True for a value that names a day and no time ("2024-02-08", "Saturday 1 June 2024")."""
    text = text.strip()
    if _DATE_ONLY_RE.match(text):
        return True
    if "T" in text.upper() and re.match(r"^\d{4}", text):
        return False
    return not _TIME_IN_TEXT_RE.search(text)


@lru_cache(maxsize=4096)
def zone_at(latitude: float, longitude: float) -> str | None:
    """The IANA zone of a point (offline polygons; None at sea or for an unknown point)."""
    name = tzfpy.get_tz(longitude, latitude)
    return name if name and _zone(name) is not None else None


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def known_zone(name: str | None) -> str | None:
    """`name` if it is an IANA zone this machine knows, else None."""
    return name if name and _zone(name) is not None else None


@dataclass
class Placed:
    """A start or end placed in the venue's time, and how it got there."""

    value: datetime
    all_day: bool = False
    from_page_text: bool = False  # a date-only value whose time was taken from the page's visible text
    corrected: bool = False  # the markup's offset contradicted the zone; the visible wall time won
    disagreed: bool = False  # the offset contradicted the zone and nothing visible settled it: instant kept


def place_in_time(parsed: datetime, *, date_only: bool, zone_name: str | None, shown: str | None) -> Placed:
    """`parsed` (what the markup said) as the venue's local time, see the module docstring for the rules."""
    zone = _zone(zone_name) if zone_name else None
    if date_only:
        day = parsed.date()
        if shown:
            wall = datetime.combine(day, time.fromisoformat(shown))
            return Placed(wall.replace(tzinfo=zone) if zone else wall, from_page_text=True)
        midnight = datetime.combine(day, time())
        return Placed(midnight.replace(tzinfo=zone) if zone else midnight, all_day=True)
    if parsed.tzinfo is None:
        return Placed(parsed.replace(tzinfo=zone) if zone else parsed)
    if zone is None:
        return Placed(parsed)
    wall = parsed.replace(tzinfo=None)
    if parsed.utcoffset() == wall.replace(tzinfo=zone).utcoffset():
        return Placed(wall.replace(tzinfo=zone))
    if shown and shown == wall.strftime("%H:%M"):
        return Placed(wall.replace(tzinfo=zone), corrected=True)
    return Placed(parsed.astimezone(zone), disagreed=True)
