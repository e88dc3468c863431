"""Pages as they are published (issue 26), the extraction side: JSON-LD repair, microformats, iCalendar feeds, the
time shown beside an item. Dates and zones: tests/unit/test_times.py and tests/unit/standardize/test_zones_and_places.py;
feed links: tests/unit/crawl/test_crawl_rules.py; the report: tests/unit/test_quality.py. The whole path over real
captured pages is tests/test_corpus.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from harvest.extract.calendar import calendar_activities
from harvest.extract.jsonld import parse_jsonld
from harvest.extract.structured import extract_page
from harvest.extract.visible_time import start_and_end

URL = "https://example.org/events/"

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


# --- the time shown beside an item ---------------------------------------------------------------------------


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
    html = (
        f'<html><body><div class="row">{card("/a/", "Timed", "6:30 pm")}{card("/b/", "Untimed", "")}</div>'
        f'<script type="application/ld+json">{json.dumps(items)}</script></body></html>'
    )
    shown = {a.name: a.shownStartTime for a in extract_page(html, URL).activities}
    assert shown == {"Timed": "18:30", "Untimed": None}
