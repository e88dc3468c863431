"""Pages as they are (issue 26), piece by piece: JSON-LD repair, microformats, iCalendar feeds, off-standard and
date-only dates, the venue's zone, the time shown beside an item, places never invented, the quality counters.
The whole path over real captured pages is tests/test_corpus.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from harvest.crawl.links import extract_links
from harvest.extract.calendar import calendar_activities
from harvest.extract.jsonld import parse_jsonld
from harvest.extract.structured import extract_page
from harvest.extract.visible_time import start_and_end
from harvest.models import Location, RawActivity, RunConfig
from harvest.quality import combine, report_lines
from harvest.standardize import Standardizer, read_date
from harvest.times import is_date_only, normalize_iso, place_in_time, zone_at

URL = "https://example.org/events/"
DETROIT = ZoneInfo("America/Detroit")

# --- JSON-LD as published ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "repair", "expected"),
    [
        ('{"name": "A", "startDate": "2024-05-01",\n }', "trailing commas", {"name": "A", "startDate": "2024-05-01"}),
        ('{"name": "A",, "x": 1}', "doubled commas", {"name": "A", "x": 1}),
        ('<!-- {"name": "A"} -->', "HTML comment markers", {"name": "A"}),
        ('<![CDATA[{"name": "A"}]]>', "CDATA markers", {"name": "A"}),
        ('{"name": "A", /* a note */ "url": "http://x.org//y"}', "comments", {"name": "A", "url": "http://x.org//y"}),
        ('{"d": "Commission\\\'s channel"}', "invalid escapes", {"d": "Commission's channel"}),
        ('{"postalCode": 02923, "n": 0.5}', "numbers with a leading zero", {"postalCode": "02923", "n": 0.5}),
        ('{"d": "line one\nline two"}', "control characters in strings", {"d": "line one\nline two"}),
        ('{"name": "A";\n "x": "b"}', "structure (json-repair)", {"name": "A", "x": "b"}),
    ],
)
def test_a_block_strict_json_refuses_is_repaired(text: str, repair: str, expected: dict) -> None:
    result = parse_jsonld(text)
    assert result.status == "repaired"
    assert repair in result.repairs
    assert result.data == expected


@pytest.mark.parametrize("text", ["", "not json at all", "{{{{", "[" * 50_000])
def test_a_block_without_data_is_unrepairable_with_the_reason(text: str) -> None:
    result = parse_jsonld(text)
    assert result.status == "unrepairable" and result.data is None and result.error


def test_one_broken_block_costs_nothing_else_and_is_reported() -> None:
    html = (
        '<html lang="en"><body>'
        '<script type="application/ld+json">{"@type": "Event", "name": "Good", "startDate": "2024-05-01"}</script>'
        '<script type="application/ld+json">{"@type": "Event", "name": "Repaired", "startDate": "2024-05-02",}'
        "</script>"
        '<script type="application/ld+json">{{{{</script>'
        "</body></html>"
    )
    page = extract_page(html, URL)
    assert [a.name for a in page.activities] == ["Good", "Repaired"]
    assert page.report.blocks_repaired == 1 and page.report.repairs["trailing commas"] == 1
    assert len(page.report.unreadable) == 1 and page.report.unreadable[0].startswith("block 3:")


# --- microformats ----------------------------------------------------------------------------------------------


def test_an_h_event_with_an_h_card_place_is_an_activity() -> None:
    html = (
        '<html lang="de"><body><div class="h-event"><a class="p-name u-url" href="/e/1">Sommerfest</a>'
        '<time class="dt-start" datetime="2024-06-01T15:00+02:00">1. Juni, 15 Uhr</time>'
        '<span class="p-location h-card"><span class="p-name">Stadtpark</span> '
        '<span class="p-street-address">Parkweg 1</span> <span class="p-locality">Kassel</span>'
        '<data class="p-latitude" value="51.31"></data><data class="p-longitude" value="9.49"></data></span>'
        "</div></body></html>"
    )
    [activity] = extract_page(html, URL).activities
    assert activity.extractedBy == "microformats" and activity.name == "Sommerfest"
    assert activity.startDate == "2024-06-01T15:00+0200"
    assert activity.location is not None and activity.location.name == "Stadtpark"
    assert activity.location.city == "Kassel" and (activity.location.latitude, activity.location.longitude) == (
        51.31, 9.49)
    assert activity.itemUrl == "https://example.org/e/1" and activity.language == "de"


def test_an_hcalendar_value_title_start_is_read() -> None:
    html = (
        '<html><body><p>Register now for our meeting.</p><span class="vevent" style="display:none">'
        '<span class="dtstart"><span class="value-title" title="2018-10-04T10:00:00-0500"></span>x</span>'
        '<span class="summary">Allocations Meeting</span>'
        '<span class="location">121 N. La Salle, Chicago, IL</span></span></body></html>'
    )
    [activity] = extract_page(html, URL).activities
    assert activity.startDate == "2018-10-04T10:00:00-0500"
    assert activity.location is not None and activity.location.formattedAddress == "121 N. La Salle, Chicago, IL"
    assert activity.location.name is None  # the hCalendar gave an address, not a place name


# --- iCalendar feeds -------------------------------------------------------------------------------------------

FEED = """BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:-//test//EN\r
BEGIN:VEVENT\r
UID:weekly@x\r
DTSTART;TZID=Europe/Berlin:20240104T170000\r
DTEND;TZID=Europe/Berlin:20240104T190000\r
RRULE:FREQ=WEEKLY;BYDAY=TH\r
EXDATE;TZID=Europe/Berlin:20240111T170000\r
SUMMARY:Kindertreff\r
LOCATION:Jugendhaus\\, Hauptstr. 5\\, Kassel\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:day@x\r
DTSTART;VALUE=DATE:20240120\r
DTEND;VALUE=DATE:20240121\r
SUMMARY:Flohmarkt\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:old@x\r
DTSTART:20200101T100000Z\r
SUMMARY:Long ago\r
END:VEVENT\r
END:VCALENDAR\r
"""


def test_a_feed_expands_its_series_within_the_horizon() -> None:
    as_of = datetime(2024, 1, 1, tzinfo=UTC)
    feed = calendar_activities(FEED, "https://x.org/cal.ics", as_of=as_of, horizon_days=30)
    weekly = [a for a in feed.activities if a.name == "Kindertreff"]
    assert [a.startDate for a in weekly] == [
        "2024-01-04T17:00:00+01:00", "2024-01-18T17:00:00+01:00", "2024-01-25T17:00:00+01:00",
    ]  # 11 January is an EXDATE; February is past the 30-day horizon
    assert {a.timezone for a in weekly} == {"Europe/Berlin"}
    assert weekly[0].location is not None and weekly[0].location.name == "Jugendhaus"
    assert weekly[0].location.formattedAddress == "Jugendhaus, Hauptstr. 5, Kassel"
    [market] = [a for a in feed.activities if a.name == "Flohmarkt"]
    assert market.startDate == "2024-01-20"
    assert feed.events == 3 and feed.outside_horizon == 1  # "Long ago"


def test_a_feed_with_a_broken_vtimezone_is_read_without_it_and_garbage_is_reported() -> None:
    broken = FEED.replace("BEGIN:VEVENT", "BEGIN:VTIMEZONE\r\nTZID:UTC\r\nTZID:Europe/Berlin\r\nEND:VTIMEZONE\r\nBEGIN:VEVENT", 1)
    feed = calendar_activities(broken, "u", as_of=datetime(2024, 1, 1, tzinfo=UTC), horizon_days=30)
    assert feed.repaired and len(feed.activities) == 4
    bad = calendar_activities("BEGIN:VCALENDAR\r\nnonsense", "u", as_of=datetime(2024, 1, 1, tzinfo=UTC), horizon_days=5)
    assert bad.activities == [] and bad.error


def test_webcal_and_calendar_alternate_links_are_followed_as_feeds() -> None:
    html = (
        '<html><head><link rel="alternate" type="text/calendar" href="/events/?ical=1"></head><body>'
        '<a href="webcal://example.org/cal.ics">Subscribe</a></body></html>'
    )
    links = extract_links(html, URL).links
    assert "https://example.org/events/?ical=1" in links and "https://example.org/cal.ics" in links


# --- dates, zones, shown times ---------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("text", "times"),
    [
        ("6:30 pm – 8:30 pm CPC Offices", ("18:30", "20:30")),
        ("July 26 @ 9:00 am - 10:00 am", ("09:00", "10:00")),
        ("13. Mai 2012 11:00", ("11:00", None)),
        ("18h30 à 20h", ("18:30", "20:00")),
        ("10 Uhr", ("10:00", None)),
        ("08 Feb Behavioral Health Work Group", (None, None)),
        ("1.5.2024", (None, None)),
    ],
)
def test_times_people_write(text: str, times: tuple[str | None, str | None]) -> None:
    assert start_and_end(text) == times


def test_the_time_beside_an_item_is_its_own_not_its_neighbours() -> None:
    def card(href: str, name: str, time: str) -> str:
        return f'<article><h4><a href="{href}">{name}</a></h4><div>{time}</div></article>'

    items = [
        {"@type": "Event", "name": "Timed", "startDate": "2024-02-08", "url": "https://example.org/a/"},
        {"@type": "Event", "name": "Untimed", "startDate": "2024-02-08", "url": "https://example.org/b/"},
    ]
    import json

    html = (
        f'<html><body><div class="row">{card("/a/", "Timed", "6:30 pm")}{card("/b/", "Untimed", "")}</div>'
        f'<script type="application/ld+json">{json.dumps(items)}</script></body></html>'
    )
    shown = {a.name: a.shownStartTime for a in extract_page(html, URL).activities}
    assert shown == {"Timed": "18:30", "Untimed": None}


# --- standardization: zones, all-day, places, the quality counters -----------------------------------------------


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


def test_the_quality_report_reads_as_sentences() -> None:
    report = combine(
        {"items_by_source": {"jsonld": 3, "ical": 2}, "jsonld_blocks_repaired": 1, "jsonld_repairs": {"trailing commas": 1},
         "jsonld_blocks_unreadable": 0, "feeds_read": 1, "feed_events": 4},
        {"quality": {"all_day": 2, "times_corrected": 1}, "dates_refused": {"ambiguous numeric date": 1}},
    )
    lines = report_lines(report)
    assert lines[0] == "items by source: ical 2, jsonld 3"
    assert "JSON-LD blocks repaired: 1 (trailing commas 1); unreadable: 0" in lines
    assert "dates refused: ambiguous numeric date 1" in lines
    assert any(line.startswith("all-day items: 2;") and "times corrected" in line for line in lines)
