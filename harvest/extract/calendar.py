"""Activities from an iCalendar feed (`.ics`, `webcal:`, a calendar plugin's "Export" link).

A feed says exactly what a listing page only shows: each event's start with its zone (TZID), its place, and its
series (RRULE, RDATE, EXDATE, moved instances with RECURRENCE-ID). `icalendar` parses the file and
`recurring-ical-events` expands the series; only occurrences that start within the horizon (from `as_of`, the run's
start, `horizon_days` ahead) are kept, so an endless weekly series is a bounded list. Each occurrence becomes one
raw activity; standardization folds the occurrences of one event at one place into `occurrences`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import icalendar
import recurring_ical_events

from harvest.extract.text import clean_text
from harvest.models import Location, RawActivity

log = logging.getLogger(__name__)

CALENDAR_TYPES = ("text/calendar", "text/x-vcalendar", "application/ics")
MAX_OCCURRENCES = 5_000  # per feed: beyond this a feed is a generator, not a calendar
MAX_FIELD_CHARS = 500
_VTIMEZONE_RE = re.compile(r"BEGIN:VTIMEZONE.*?END:VTIMEZONE\r?\n?", re.DOTALL)


def looks_like_calendar(content_type: str, body: str | bytes) -> bool:
    head = body[:200].lstrip() if isinstance(body, str) else body[:200].lstrip().decode("latin-1")
    return content_type in CALENDAR_TYPES or head.upper().startswith("BEGIN:VCALENDAR")


@dataclass
class CalendarResult:
    activities: list[RawActivity]
    events: int = 0  # VEVENT components in the feed
    outside_horizon: int = 0  # events with no occurrence in the horizon
    error: str | None = None  # the feed could not be read at all
    repaired: bool = False  # read only once its broken VTIMEZONE blocks were left out


def calendar_activities(text: str | bytes, url: str, *, as_of: datetime, horizon_days: int) -> CalendarResult:
    """The feed's occurrences in [as_of, as_of + horizon_days) as raw activities. Never raises on a bad feed."""
    source = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
    repaired = False
    try:
        calendar = icalendar.Calendar.from_ical(source)
    except Exception as exc:  # noqa: BLE001 - the parser raises many types on broken feeds
        # Plugins write broken VTIMEZONE blocks (two TZIDs in one); events naming an IANA TZID do not need them.
        try:
            calendar = icalendar.Calendar.from_ical(_VTIMEZONE_RE.sub("", source))
            repaired = True
        except Exception:  # noqa: BLE001
            return CalendarResult([], error=f"not a readable iCalendar file: {type(exc).__name__}: {str(exc)[:200]}")
    calendar_zone = _text(calendar.get("X-WR-TIMEZONE"))
    events = [component for component in calendar.walk("VEVENT")]
    end = as_of + timedelta(days=horizon_days)
    try:
        occurrences = recurring_ical_events.of(calendar).between(as_of, end)
    except Exception as exc:  # noqa: BLE001 - a malformed rule: the feed is skipped with the reason, never fatal
        return CalendarResult([], events=len(events), error=f"its recurrences cannot be expanded: {str(exc)[:200]}")
    activities: list[RawActivity] = []
    seen_uids: set[str] = set()
    for event in occurrences[:MAX_OCCURRENCES]:
        activity = _activity(event, url, calendar_zone)
        if activity is not None:
            activities.append(activity)
            seen_uids.add(str(event.get("UID", "")))
    outside = sum(1 for event in events if str(event.get("UID", "")) not in seen_uids)
    return CalendarResult(activities, events=len(events), outside_horizon=outside, repaired=repaired)


def _activity(event: Any, url: str, calendar_zone: str | None) -> RawActivity | None:
    name = _text(event.get("SUMMARY"))
    start = event.get("DTSTART")
    if not name or start is None:
        return None
    start_value, zone = _when(start.dt)
    end_value = _when(event["DTEND"].dt)[0] if event.get("DTEND") is not None else None
    location_text = _text(event.get("LOCATION"))
    location = None
    if location_text:
        # LOCATION is free text: "machBar", or "Stadt- u. Landesbibliothek …, Am Kanal 47, 14467 Potsdam". The part
        # before the first comma names the place; the whole is the address to geocode.
        location = Location(name=location_text.split(",", 1)[0].strip() or None, formattedAddress=location_text)
    geo = event.get("GEO")
    if geo is not None:
        location = location or Location()
        location.latitude, location.longitude = float(geo.latitude), float(geo.longitude)
    return RawActivity(
        name=name,
        description=_text(event.get("DESCRIPTION"), 20_000),
        location=location,
        startDate=start_value,
        endDate=end_value,
        tags=[tag for tag in (_text(c) for c in _categories(event)) if tag],
        sourceUrl=url,
        itemUrl=_text(event.get("URL")),
        timezone=zone or calendar_zone,
        extractedBy="ical",
    )


def _when(value: date | datetime) -> tuple[str, str | None]:
    """ISO text of a DTSTART/DTEND value and the IANA zone it names (TZID), if any."""
    if not isinstance(value, datetime):
        return value.isoformat(), None
    zone = getattr(value.tzinfo, "key", None)
    return value.isoformat(), zone if isinstance(zone, str) else None


def _categories(event: Any) -> list[Any]:
    value = event.get("CATEGORIES")
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [category for item in items for category in getattr(item, "cats", [item])]


def _text(value: Any, max_chars: int = MAX_FIELD_CHARS) -> str | None:
    return clean_text(str(value), max_chars=max_chars) if value is not None else None
