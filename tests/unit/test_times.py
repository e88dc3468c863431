"""Dates as published and the venue's zone (harvest/times.py, issue 26): off-standard ISO, date-only values, an
offset the venue's zone cannot have, naive times, the zone of coordinates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from harvest.times import is_date_only, normalize_iso, place_in_time, zone_at

DETROIT = ZoneInfo("America/Detroit")


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2019-9-18T10-10-00-00", "2019-09-18T10:00:00"),  # EventON: the hour twice, dashes
        ("2019-9-20T08-08-30-00", "2019-09-20T08:30:00"),
        ("2012-05-13-11:00:00", "2012-05-13T11:00:00"),  # date and time joined by a dash
        ("2018-7-19", "2018-07-19"),
        ("2024-02-01 18.30", "2024-02-01T18:30:00"),
        ("2024-02-01T18:30+0100", "2024-02-01T18:30:00+0100"),
        ("2024-13-01", None),
        ("2019-9-18T10-11-00-00", None),  # four numbers that are not the EventON shape: not guessed
    ],
)
def test_off_standard_iso_is_read_as_meant(text: str, iso: str | None) -> None:
    assert normalize_iso(text) == iso


def test_date_only_values_are_told_from_timed_ones() -> None:
    assert is_date_only("2024-02-08") and is_date_only("Samstag, 1. Juni 2024") and is_date_only("2018-7-19")
    assert not is_date_only("2024-02-08T18:30") and not is_date_only("1 June 2024, 10am")
    assert not is_date_only("13. Mai 2012 11:00")


def test_the_visible_wall_time_wins_over_an_offset_the_venue_cannot_have() -> None:
    marked = datetime(2022, 7, 26, 9, 0, tzinfo=UTC)  # a 9:00 Detroit meeting marked +00:00
    fixed = place_in_time(marked, date_only=False, zone_name="America/Detroit", shown="09:00")
    assert fixed.corrected and fixed.value == datetime(2022, 7, 26, 9, 0, tzinfo=DETROIT)
    kept = place_in_time(marked, date_only=False, zone_name="America/Detroit", shown=None)
    assert kept.disagreed and kept.value == marked  # nothing visible: the instant stands, counted
    winter = datetime(2025, 11, 12, 11, 0, tzinfo=timezone(timedelta(hours=-4)))  # the summer offset in November
    assert place_in_time(winter, date_only=False, zone_name="America/Detroit", shown="11:00").value.utcoffset() == (
        timedelta(hours=-5))


def test_a_naive_time_is_read_in_the_zone_or_kept_naive_never_utc() -> None:
    naive = datetime(2018, 8, 8, 19, 0)
    assert place_in_time(naive, date_only=False, zone_name="America/Los_Angeles", shown=None).value == datetime(
        2018, 8, 8, 19, 0, tzinfo=ZoneInfo("America/Los_Angeles"))
    assert place_in_time(naive, date_only=False, zone_name=None, shown=None).value.tzinfo is None


def test_a_date_only_start_is_all_day_or_takes_the_time_shown_beside_it() -> None:
    day = datetime(2024, 2, 8)
    assert place_in_time(day, date_only=True, zone_name="America/New_York", shown=None).all_day
    shown = place_in_time(day, date_only=True, zone_name="America/New_York", shown="18:30")
    assert shown.from_page_text and shown.value == datetime(2024, 2, 8, 18, 30, tzinfo=ZoneInfo("America/New_York"))


def test_the_zone_of_coordinates_is_found_offline() -> None:
    assert zone_at(51.286534, 14.89252) == "Europe/Berlin"
    assert zone_at(41.88369, -87.63239) == "America/Chicago"
