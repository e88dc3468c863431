"""RawActivity -> Activity: clean fields, parsed dates, a stable id, and one record per activity.

Everything downstream (dedupe, enrichment joins, skipping unchanged activities) keys on the id and
content hash computed here, so both are pure functions of normalized content, stable across runs.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from dateparser.date import DateDataParser
from dateutil import parser as dateutil_parser

from harvest.countries import country_code
from harvest.extract.text import absolute_http_url, clean_text, format_address, normalize_key
from harvest.models import Activity, Location, RawActivity, RunConfig
from harvest.standardize.languages import DEFAULT_DATE_LANGUAGES, WORD_RE, check_date_languages, month_names
from harvest.times import Placed, is_date_only, known_zone, normalize_iso, place_in_time, zone_at

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 500
MAX_DESCRIPTION_CHARS = 20_000
MAX_FIELD_CHARS = 500
MAX_TAGS = 50
MAX_TAG_CHARS = 100
MAX_WARNINGS = 100
MIN_YEAR, MAX_YEAR = 1800, 2200  # outside this a "date" is a typo or a placeholder, not an activity date

_ISO_LIKE_RE = re.compile(r"^\d{4}[-/]?\d{2}")
_RFC2822_RE = re.compile(
    r"^(?:[A-Za-z]{3},\s*)?\d{1,2}\s+[A-Za-z]{3}\s+\d{4}\s+\d{1,2}:\d{2}(?::\d{2})?\s*(?:[+-]\d{4}|[A-Za-z]{1,5})?$"
)
# 01/05/2024, 1.5.24, 01-05-2024: day and month in an order only the page's country knows.
_NUMERIC_DATE_RE = re.compile(r"^(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{2}|\d{4})\b")
# The month names dateutil knows, whole words only: "mars", "octobre", "mayo" are not "Mar", "Oct", "May".
_ENGLISH_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
    r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_MONTH_RE = re.compile(rf"\b{_ENGLISH_MONTH}\b", re.IGNORECASE)
_YEAR_RE = re.compile(r"\b(1[89]\d\d|2[0-2]\d\d)\b")
# A day of the month next to its month name: "1 May", "1st May", "May 1", "May 1st" (not a time like "10am").
_DAY_RE = re.compile(
    rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?{_ENGLISH_MONTH}\b"
    rf"|\b{_ENGLISH_MONTH}\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b",
    re.IGNORECASE,
)
_DAY_NUMBER_RE = re.compile(r"(?<!\d)\d{1,2}(?!\d)")
# Two spellings dateparser does not read, rewritten to ones it does: "1º de maio" (it knows "1er", not "1º")
# and "10 Uhr" (it knows "10:00 Uhr" and "10.30 Uhr").
_ORDINAL_SIGN_RE = re.compile(r"(?<=\d)[ºª°]")
_BARE_HOUR_RE = re.compile(r"(?<![\d:.])(\d{1,2})\s*Uhr\b", re.IGNORECASE)
_NEEDS_ALL_PARTS = "not a recognisable date (it needs a day, a month name and a year)"

# Only what a page wrote down: day, month and year must all be in the text, and nothing relative to today.
_DATEPARSER_SETTINGS = {"REQUIRE_PARTS": ["day", "month", "year"], "PARSERS": ["absolute-time"]}


class DateRefused(ValueError):
    """A value that is not a date we can read without guessing; the message says why (recorded as a warning)."""


def read_date(value: str | None, languages: Sequence[str] = DEFAULT_DATE_LANGUAGES) -> datetime | None:
    """A datetime from `value`, None when empty; DateRefused (with the reason) when it is not a usable date.

    In order: strict ISO 8601 and its common variants ("2024-05-01", "...T10:00", "Z", "+10:00", "+1000",
    fractional seconds, a space for "T", "2024/05/01"); RFC 2822; then dates as people write them: English
    through python-dateutil ("Saturday 1 June 2024", "1st May 2024, 10am", "May 1, 2024 7:30 pm"), and the
    month names of `languages` through dateparser ("1er mai 2024", "Samstag, 1. Juni 2024", "1 de mayo de
    2024"). Such a date must name its day, its month (in words) and its year: nothing is filled in from
    today. Numeric dates whose day and month could be swapped (01/05/2024) are refused, never guessed.
    Offsets are kept; date-only and offset-less values stay naive (the page did not say which zone it meant).
    """
    text = clean_text(value, max_chars=100)
    if not text:
        return None
    text = normalize_iso(text) or text  # 2019-9-18T10-10-00-00, 2012-05-13-11:00:00 (harvest/times.py)
    parsed: datetime | None = None
    if _ISO_LIKE_RE.match(text):
        candidate = text.upper() if "t" in text or "z" in text else text
        if "/" in candidate[:10]:
            candidate = candidate[:10].replace("/", "-") + candidate[10:]
        try:
            parsed = datetime.fromisoformat(candidate)
        except ValueError:
            parsed = None
    if parsed is None and _RFC2822_RE.match(text):  # only the real shape: the stdlib parser drops "pm" silently
        try:
            parsed = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            parsed = None
    if parsed is None:
        parsed = _human_date(text, tuple(languages))
    if not MIN_YEAR <= parsed.year <= MAX_YEAR:
        raise DateRefused(f"year {parsed.year} is outside {MIN_YEAR}-{MAX_YEAR}")
    return parsed


def _human_date(text: str, languages: tuple[str, ...]) -> datetime:
    """A date as a person writes it, only when day, month (in words) and year are all written out.

    English goes to dateutil (fast, and the common case); a text naming a month of another language goes to
    dateparser, restricted to the languages whose month names it contains, so "mar. 1 mai 2024" is read as
    French (Tuesday 1 May) rather than by dateutil as 1 March.
    """
    numeric = _NUMERIC_DATE_RE.match(text)
    if numeric:
        first, second = int(numeric.group(1)), int(numeric.group(2))
        if first <= 12 and second <= 12 and first != second:
            raise DateRefused("ambiguous numeric date: day and month could be either way round")
        raise DateRefused("numeric date without a year first: write it as ISO 8601 (YYYY-MM-DD)")
    if not (_YEAR_RE.search(text) and _DAY_NUMBER_RE.search(text)):
        raise DateRefused(_NEEDS_ALL_PARTS)
    english = bool(_MONTH_RE.search(text) and _DAY_RE.search(text))
    months = month_names(languages)
    named = {word.casefold() for word in WORD_RE.findall(text)} & months.every
    if english and not named - months.english:
        return _english_date(text)
    written_in = tuple(language for language in languages if named & months.by_language[language])
    if written_in:
        parsed = _other_language_date(text, written_in)
        if parsed is not None:
            return parsed
    if english:  # "1 May 2024, sold out": "out" is October in Portuguese, but the English reading stands
        return _english_date(text)
    raise DateRefused(_NEEDS_ALL_PARTS)


def _english_date(text: str) -> datetime:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dateutil_parser.UnknownTimezoneWarning)  # "AEST": kept naive
            return dateutil_parser.parse(text, fuzzy=True, dayfirst=True)
    except (dateutil_parser.ParserError, ValueError, OverflowError) as exc:
        raise DateRefused(f"not a recognisable date ({exc})") from None


@lru_cache(maxsize=16)
def _date_parser(languages: tuple[str, ...]) -> DateDataParser:
    return DateDataParser(languages=list(languages), settings=_DATEPARSER_SETTINGS)


@lru_cache(maxsize=4096)
def _other_language_date(text: str, languages: tuple[str, ...]) -> datetime | None:
    """dateparser's reading of `text` in the first of `languages` that reads it whole, or None.

    Cached: dateparser takes about a millisecond a date, and a listing repeats its dates.
    """
    text = _BARE_HOUR_RE.sub(r"\1:00 Uhr", _ORDINAL_SIGN_RE.sub("", text))
    date: datetime | None = _date_parser(languages).get_date_data(text).date_obj
    return date


def identity_key(name: str, place: str | None) -> str:
    """An activity's identity, readable: normalized name + "|" + normalized place (`place_key`). The id is its
    hash and the import's `dedupe_key` is this text, so the two never disagree (issue 27 item 1).

    Normalization is casefold, collapsed whitespace and punctuation-insensitive, so the same place
    written "Coburg Lake Reserve, Coburg North" or "coburg lake reserve coburg north" gets one id.
    """
    return f"{normalize_key(name)}|{normalize_key(place)}"


def activity_id(name: str, place: str | None) -> str:
    """sha256 of `identity_key(name, place)`, first 32 hex chars."""
    return hashlib.sha256(identity_key(name, place).encode("utf-8")).hexdigest()[:32]


def content_hash(activity: Activity) -> str:
    """sha256 of what feeds enrichment (text for embeddings, address for geocoding, the image)."""
    payload: dict[str, Any] = {
        "name": activity.name,
        "description": activity.description,
        "location_name": activity.location.name,
        "address": activity.location.formattedAddress,
        "tags": activity.tags,
        "image_url": activity.image_url,
        "start_date": activity.start_date.isoformat() if activity.start_date else None,
        "end_date": activity.end_date.isoformat() if activity.end_date else None,
    }
    if activity.occurrences:  # only when several: hashes of single-date activities stay as they were
        payload["occurrences"] = [[o.start_date.isoformat(), o.end_date.isoformat() if o.end_date else None]
                                  for o in activity.occurrences]
    if activity.location.latitude is not None:  # only when present: hashes of activities without stay as they were
        payload["coordinates"] = [activity.location.latitude, activity.location.longitude]
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def normalize_tags(tags: list[str]) -> list[str]:
    """Lowercase, trimmed, markup-free, de-duplicated tags in their original order."""
    out: list[str] = []
    for tag in tags:
        cleaned = clean_text(tag, max_chars=MAX_TAG_CHARS) if isinstance(tag, str) else None
        if cleaned:
            cleaned = cleaned.lower()
            if cleaned not in out:
                out.append(cleaned)
    return out


def standardize_location(location: Location | None, activity_name: str) -> Location:
    """Clean location parts; formattedAddress is composed if missing. The name is only ever the place's own:
    an item whose page gives no place keeps an empty one (never the activity's name, issue 26)."""
    location = location or Location()
    street = clean_text(location.street_address, max_chars=MAX_FIELD_CHARS)
    city = clean_text(location.city, max_chars=MAX_FIELD_CHARS)
    state = clean_text(location.state_province, max_chars=MAX_FIELD_CHARS)
    postal = clean_text(location.postal_code, max_chars=MAX_FIELD_CHARS)
    country = clean_text(location.country_code, max_chars=MAX_FIELD_CHARS)
    formatted = clean_text(location.formattedAddress, max_chars=MAX_FIELD_CHARS)
    has_coordinates = location.latitude is not None and location.longitude is not None
    return Location(
        name=clean_text(location.name, max_chars=MAX_NAME_CHARS),
        formattedAddress=formatted or format_address(street, city, state, postal, country_code(country) or country),
        street_address=street,
        city=city,
        state_province=state,
        postal_code=postal,
        country_code=country_code(country),  # ISO 3166-1 alpha-2, or None when it names no single country
        # Kept exactly as the page gave them, and only as a pair.
        latitude=location.latitude if has_coordinates else None,
        longitude=location.longitude if has_coordinates else None,
    )


def place_key(location: Location) -> str | None:
    """What identifies where an activity is: its address, else the page's coordinates (5 decimals, ~1 m), so two
    same-named activities at two coordinate-only places stay two."""
    if location.formattedAddress:
        return location.formattedAddress
    if location.latitude is not None and location.longitude is not None:
        return coordinates_place(location.latitude, location.longitude)
    return None


def coordinates_place(latitude: float, longitude: float) -> str:
    """The place of an activity the page locates only by coordinates (5 decimals, ~1 m)."""
    return f"{latitude:.5f},{longitude:.5f}"


class Standardizer:
    """Standardizes the raw activities of one run, one record at a time (copies of one activity are merged
    afterwards, in any order, by harvest.standardize.dedupe.Deduplicator).

    Keeps counters for the run report: `accepted`, `skipped` (reason -> count) and `warnings`
    (first MAX_WARNINGS messages, `warnings_dropped` counts the rest).
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        max_warnings: int = MAX_WARNINGS,
        date_languages: Sequence[str] = DEFAULT_DATE_LANGUAGES,
    ) -> None:
        self.config = config
        self.date_languages = tuple(date_languages)
        check_date_languages(self.date_languages)  # a typo in the setting fails here, not as 10,000 warnings
        self.max_warnings = max_warnings
        self.hint_tags = normalize_tags(config.tags_hint)
        self.accepted = 0
        self.skipped: dict[str, int] = {}
        self.warnings: list[str] = []
        self.warnings_dropped = 0
        self.quality: Counter[str] = Counter()  # what dates, zones and places came to (the run's quality report)
        self.dates_refused: Counter[str] = Counter()  # by reason

    def warn(self, message: str) -> None:
        log.warning(message)
        if len(self.warnings) < self.max_warnings:
            self.warnings.append(message)
        else:
            self.warnings_dropped += 1

    def _skip(self, reason: str, raw: RawActivity) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        log.info("skipped activity %r from %s: %s", (raw.name or "")[:80], raw.sourceUrl, reason)

    def _date(self, value: str | None, field: str, name: str, languages: Sequence[str] = ()) -> datetime | None:
        if value is None or not value.strip():
            return None
        try:
            return read_date(value, tuple(dict.fromkeys([*languages, *self.date_languages])))
        except DateRefused as exc:
            self.warn(f"{name!r}: dropped {field} {value[:60]!r}: {exc}")
            self.dates_refused[str(exc).split(":")[0].split(" (")[0]] += 1
            return None

    def _languages(self, language: str | None) -> tuple[str, ...]:
        """The page's own language first, when dateparser knows it (its month names are then read first)."""
        if not language or language == "en":
            return ()
        try:
            check_date_languages((language,))
        except ValueError:
            return ()
        return (language,)

    def _zone(self, location: Location, raw: RawActivity) -> str | None:
        """The venue's IANA zone: its coordinates, else what the source says, else the run's config."""
        if location.latitude is not None and location.longitude is not None:
            zone = zone_at(location.latitude, location.longitude)
            if zone:
                return zone
        return known_zone(raw.timezone) or self.config.timezone

    def _placed(
        self, value: str | None, parsed: datetime | None, zone: str | None, shown: str | None, *, start: bool
    ) -> Placed | None:
        """The value in the venue's time; what was done is counted once per item (for its start)."""
        if parsed is None or value is None:
            return None
        placed = place_in_time(parsed, date_only=is_date_only(clean_text(value) or ""), zone_name=zone, shown=shown)
        if not start:
            return placed
        self.quality["times_from_page_text"] += placed.from_page_text
        self.quality["times_corrected"] += placed.corrected
        self.quality["offsets_disagreeing_with_zone"] += placed.disagreed
        return placed

    def standardize(self, raw: RawActivity) -> Activity | None:
        """The clean Activity for `raw`, or None when it has no name."""
        name = clean_text(raw.name, max_chars=MAX_NAME_CHARS)
        if not name:
            self._skip("missing name", raw)
            return None
        location = standardize_location(raw.location, name)
        identifier = activity_id(name, place_key(location))

        zone = self._zone(location, raw)
        languages = self._languages(raw.language)
        placed_start = self._placed(
            raw.startDate, self._date(raw.startDate, "startDate", name, languages), zone, raw.shownStartTime,
            start=True,
        )
        placed_end = self._placed(
            raw.endDate, self._date(raw.endDate, "endDate", name, languages), zone, raw.shownEndTime, start=False
        )
        start = placed_start.value if placed_start else None
        end = placed_end.value if placed_end else None
        all_day = bool(placed_start and placed_start.all_day)
        if not all_day and _spans_whole_day(start, end):
            all_day, end = True, None  # 00:00 to 23:59 of one day: an all-day item written as two times
        if all_day and start is not None and end is not None and end.date() == start.date():
            end = None  # a one-day item's end date says nothing more
        if start and end:
            try:
                backwards = end < start
            except TypeError:  # one has an offset, the other not: not comparable, keep both
                backwards = False
            if backwards:
                self.warn(f"{name!r}: dropped endDate {raw.endDate!r}: before startDate {raw.startDate!r}")
                end = None

        image_url = absolute_http_url(raw.imageURL, raw.sourceUrl)
        if raw.imageURL and raw.imageURL.strip() and image_url is None:
            self.warn(f"{name!r}: dropped imageURL {raw.imageURL[:100]!r}: not an http(s) URL")

        tags = normalize_tags(raw.tags)[:MAX_TAGS]
        tags += [tag for tag in self.hint_tags if tag not in tags]

        activity = Activity(
            id=identifier,
            name=name,
            description=clean_text(raw.description, max_chars=MAX_DESCRIPTION_CHARS),
            urgency=self.config.urgency_default,
            is_public=True,
            location=location,
            start_date=start,
            end_date=end,
            timezone=zone if start is not None and start.tzinfo is not None else None,
            all_day=all_day,
            tags=tags,
            image_url=image_url,
            source_url=clean_text(raw.sourceUrl, max_chars=4_000),
            item_url=absolute_http_url(raw.itemUrl, raw.sourceUrl),
            content_hash="",
        )
        activity.content_hash = content_hash(activity)
        self.accepted += 1
        self.quality["all_day"] += all_day
        self.quality["without_zone"] += start is not None and start.tzinfo is None
        self.quality["without_place"] += not (location.name or location.formattedAddress) and location.latitude is None
        return activity

    def report(self) -> dict[str, object]:
        """Counters for the run summary."""
        return {
            "accepted": self.accepted,
            "skipped": dict(self.skipped),
            "warnings": list(self.warnings),
            "warnings_dropped": self.warnings_dropped,
            "quality": {key: value for key, value in self.quality.items() if value},
            "dates_refused": dict(self.dates_refused),
        }


def _spans_whole_day(start: datetime | None, end: datetime | None) -> bool:
    if start is None or end is None:
        return False
    return (start.date() == end.date() and (start.hour, start.minute) == (0, 0)
            and (end.hour, end.minute) >= (23, 59))
