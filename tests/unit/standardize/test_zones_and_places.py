"""Standardization of pages as they are (issue 26): each start placed in the venue's zone, all-day items, places
never invented, the quality counters, refused dates counted by reason."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from harvest.models import Location, RawActivity, RunConfig
from harvest.standardize.standardizer import Standardizer, read_date


def test_standardize_places_each_start_in_the_venues_zone_and_counts_what_it_did() -> None:
    standardizer = Standardizer(RunConfig(timezone="America/New_York"))
    shown = standardizer.standardize(RawActivity(name="Work Group", startDate="2024-02-01", shownStartTime="18:30"))
    all_day = standardizer.standardize(RawActivity(name="Closed", startDate="2024-02-08", endDate="2024-02-08"))
    at_venue = standardizer.standardize(
        RawActivity(name="Markt", startDate="2012-05-13-11:00:00",
                    location=Location(formattedAddress="Görlitzer Str. 45", latitude=51.286534, longitude=14.89252))
    )
    unknown = Standardizer(RunConfig()).standardize(RawActivity(name="Gig", startDate="2018-08-08T19:00"))
    assert shown is not None and shown.start_date == datetime(2024, 2, 1, 18, 30, tzinfo=ZoneInfo("America/New_York"))
    assert shown.timezone == "America/New_York" and not shown.all_day
    assert all_day is not None and all_day.all_day and all_day.end_date is None
    assert at_venue is not None and at_venue.timezone == "Europe/Berlin"  # coordinates beat the run's zone
    assert at_venue.start_date == datetime(2012, 5, 13, 11, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert at_venue.location.name is None  # an address without a place name: no name made up
    assert unknown is not None and unknown.start_date is not None and unknown.start_date.tzinfo is None
    assert unknown.timezone is None
    report = standardizer.report()
    assert report["quality"] == {"times_from_page_text": 1, "all_day": 1, "without_place": 2}


def test_refused_dates_are_counted_by_reason() -> None:
    standardizer = Standardizer(RunConfig())
    standardizer.standardize(RawActivity(name="A", startDate="01/05/2024"))
    standardizer.standardize(RawActivity(name="B", startDate="soon"))
    assert standardizer.report()["dates_refused"] == {
        "ambiguous numeric date": 1, "not a recognisable date": 1,
    }


def test_read_date_keeps_reading_what_it_read_before() -> None:
    assert read_date("2024-05-01T10:00:00+10:00") == datetime(2024, 5, 1, 10, tzinfo=timezone(timedelta(hours=10)))
    assert read_date("1er mai 2024") == datetime(2024, 5, 1)


def test_an_unknown_zone_in_the_run_config_is_refused() -> None:
    with pytest.raises(ValueError, match="not an IANA time zone"):
        RunConfig(timezone="Mars/Olympus")
