"""What pages give is kept (issue 11): page coordinates are never geocoded over, dated occurrences of one event
are all kept whatever the crawl order, dates as people write them parse, ambiguous ones are refused with the
reason, and country names become ISO 3166-1 alpha-2 codes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from harvest.countries import country_code
from harvest.enrich.geocode.client import NominatimGeocoder
from harvest.enrich.geocode.stage import geocode_addresses
from harvest.merge.final import final_record
from harvest.models import Location, RawActivity, RunConfig
from harvest.pipeline import Chunk
from harvest.settings import HarvestSettings
from harvest.standardize.languages import DEFAULT_DATE_LANGUAGES, month_names
from harvest.standardize.stage import standardize_raw_activities
from harvest.standardize.standardizer import DateRefused, Standardizer, read_date
from harvest.storage import iter_jsonl, write_jsonl
from harvest.storage.local import LocalStore
from testkit.geocoder_server import GeocoderTestServer

BOWL = (-37.82339, 144.97275)  # Sidney Myer Music Bowl, as its event pages give it


@pytest.fixture
def geo() -> Iterator[GeocoderTestServer]:
    with GeocoderTestServer() as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def _standardized(store: LocalStore, raws: list[dict], run_id: str = "run-1"):  # noqa: ANN202 - a FileRef
    raw = write_jsonl(store, f"runs/{run_id}/raw_activities.jsonl", "raw_activities", raws)
    return standardize_raw_activities(store, run_id, raw, RunConfig()).file("standardized")


# ---- page coordinates ------------------------------------------------------------------------------------


def test_page_coordinates_are_kept_exactly_and_never_sent_to_the_geocoder(store, geo) -> None:
    raws = [
        {"name": "Carols by Candlelight", "sourceUrl": "https://e.example/carols",
         "location": {"name": "Sidney Myer Music Bowl", "formattedAddress": "21 Linlithgow Ave, Melbourne VIC 3004",
                      "latitude": BOWL[0], "longitude": BOWL[1]}},
        {"name": "Twilight Sounds", "location": {"name": "Royal Botanic Gardens", "latitude": -37.8304,
                                                  "longitude": 144.9796}},
        {"name": "Alistair Knox Park", "location": {"formattedAddress": "829 Main Rd, Eltham, Australia"}},
    ]
    standardized = _standardized(store, raws)
    geocoder = NominatimGeocoder(geo.base_url, user_agent="t", rate_per_second=1000.0, timeout_s=2.0)

    result = geocode_addresses(store, "run-1", standardized, geocoder)

    asked = [request["query"].get("q") for request in geo.requests_seen()]
    assert asked == ["829 Main Rd, Eltham, Australia"]  # only the activity without page coordinates
    assert result.stats.details["geocoder_calls"] == 1 and result.stats.details["page_coordinates"] == 2
    rows = {row["id"]: row for row in iter_jsonl(store, result.files[0].uri)}
    finals = {}
    for activity in iter_jsonl(store, standardized.uri):
        geocode = rows[activity["id"]]
        merged = {"activity": activity, "geocode": geocode if geocode.get("latitude") is not None else None}
        finals[activity["name"]] = final_record(merged, None)["location"]
    carols = finals["Carols by Candlelight"]
    assert (carols["latitude"], carols["longitude"], carols["coordinates_source"]) == (*BOWL, "page")
    assert carols["place_id"] is None and carols["geocoded_address"] is None
    twilight = finals["Twilight Sounds"]
    assert (twilight["latitude"], twilight["longitude"], twilight["coordinates_source"]) == (-37.8304, 144.9796, "page")
    assert twilight["formatted_address"] is None  # coordinates alone: no address made up from them
    knox = finals["Alistair Knox Park"]
    assert knox["coordinates_source"] == "geocoder" and knox["latitude"] is not None


def test_each_address_is_asked_in_its_first_spelling_whatever_chunk_or_process_asks(store, geo) -> None:
    """'2 Main Rd' and '2 Main Road' are one address; the geocoder echoes the spelling it was asked. A chunk that
    sees only the later spelling, in a process of its own (a fresh answer book: another run id here), still asks
    with the first spelling in the file, so the two chunks' answers, and the output, never depend on timing."""
    raws = [
        {"name": "Copper Butterfly Playspace", "location": {"formattedAddress": "2 Main Rd, Eltham, AU"}},
        {"name": "Lower Eltham Reserve", "location": {"formattedAddress": "2 Main Road, Eltham, AU"}},
    ]
    standardized = _standardized(store, raws)
    geocoder = NominatimGeocoder(geo.base_url, user_agent="t", rate_per_second=1000.0, timeout_s=2.0)
    lines = list(iter_jsonl(store, standardized.uri))
    later = next(i for i, line in enumerate(lines) if line["location"]["formattedAddress"].endswith("Road, Eltham, AU"))
    first = lines[1 - later]["location"]["formattedAddress"]

    part = geocode_addresses(store, "run-other-process", standardized, geocoder,
                             chunk=Chunk(later, later, later + 1))

    assert [request["query"].get("q") for request in geo.requests_seen()] == [first]
    (row,) = iter_jsonl(store, part.files[0].uri)
    assert row["address"] == first


def test_page_coordinates_survive_a_failed_geocode_stage() -> None:
    activity = {"id": "x", "name": "Carols", "location": {"latitude": BOWL[0], "longitude": BOWL[1]}}
    location = final_record({"activity": activity, "geocode": None}, None)["location"]
    assert (location["latitude"], location["longitude"], location["coordinates_source"]) == (*BOWL, "page")


# ---- dated occurrences --------------------------------------------------------------------------------------


def _show(start: str, **extra: object) -> dict:
    return {"name": "The Gruffalo Live", "startDate": start,
            "location": {"name": "Arts Centre Melbourne", "formattedAddress": "100 St Kilda Rd, Southbank VIC 3006"},
            **extra}


def test_two_occurrences_of_one_event_keep_both_dates(store) -> None:
    raws = [_show("2024-07-06T11:00:00+10:00", sourceUrl="https://e.example/gruffalo-july"),
            _show("2024-06-01T11:00:00+10:00", sourceUrl="https://e.example/gruffalo-june",
                  description="A big bad mouse.")]
    standardized = _standardized(store, raws)
    [activity] = list(iter_jsonl(store, standardized.uri))
    assert activity["start_date"] == "2024-06-01T11:00:00+10:00"  # the earliest
    assert [o["start_date"] for o in activity["occurrences"]] == ["2024-06-01T11:00:00+10:00",
                                                                   "2024-07-06T11:00:00+10:00"]
    assert activity["description"] == "A big bad mouse."  # a gap filled from the other copy
    assert final_record({"activity": activity}, None)["occurrences"] == activity["occurrences"]


def test_standardized_output_does_not_depend_on_crawl_order(tmp_path: Path) -> None:
    raws = [
        _show("2024-07-06T11:00:00+10:00", sourceUrl="https://e.example/b", tags=["theatre"]),
        _show("2024-06-01T11:00:00+10:00", sourceUrl="https://e.example/a", description="first copy"),
        _show("2024-06-01T11:00:00+10:00", sourceUrl="https://e.example/c", description="another copy",
              imageURL="https://e.example/g.jpg", tags=["kids"]),
        {"name": "Alistair Knox Park", "startDate": "2017-07-05", "location": {"formattedAddress": "829 Main Rd"}},
        {"name": "Alistair Knox Park", "startDate": "5 July 2017", "description": "Gum trees",
         "location": {"formattedAddress": "829 Main Rd"}},
        {"name": "Carols", "location": {"latitude": BOWL[0], "longitude": BOWL[1]}},
    ]
    outputs = []
    for seed in range(4):
        order = raws[:]
        random.Random(seed).shuffle(order)
        store = LocalStore(tmp_path / f"order-{seed}")
        standardized = _standardized(store, order)
        outputs.append((store.root / "runs/run-1/standardized.jsonl").read_bytes())
        assert standardized.records == 3
    assert len(set(outputs)) == 1, "the standardized file differs between crawl orders"


# ---- dates ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Saturday 1 June 2024", datetime(2024, 6, 1)),
        ("1st May 2024", datetime(2024, 5, 1)),
        ("1 May 2024, 10am", datetime(2024, 5, 1, 10)),
        ("May 1, 2024 7:30 pm", datetime(2024, 5, 1, 19, 30)),
        ("Sun 23rd June 2024 2:00pm", datetime(2024, 6, 23, 14)),
        ("1 May 2024 10:00 +1000", datetime(2024, 5, 1, 10, tzinfo=timezone(timedelta(hours=10)))),
        ("2024-05-01T10:00:00+10:00", datetime(2024, 5, 1, 10, tzinfo=timezone(timedelta(hours=10)))),
        ("Wed, 01 May 2024 10:00:00 +1000", datetime(2024, 5, 1, 10, tzinfo=timezone(timedelta(hours=10)))),
    ],
)
def test_dates_as_people_write_them(text: str, expected: datetime) -> None:
    parsed = read_date(text)
    assert parsed == expected and parsed.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("01/05/2024", "ambiguous numeric date"),
        ("5.6.2024", "ambiguous numeric date"),
        ("June 2024", "needs a day, a month name and a year"),
        ("next Saturday", "needs a day, a month name and a year"),
        ("10am", "needs a day, a month name and a year"),
    ],
)
def test_dates_that_would_need_a_guess_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(DateRefused, match=reason):
        read_date(text)
    standardizer = Standardizer(RunConfig())
    activity = standardizer.standardize(RawActivity(name="Story time", startDate=text))
    assert activity is not None and activity.start_date is None
    assert any(text in warning and reason in warning for warning in standardizer.warnings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1er mai 2024", datetime(2024, 5, 1)),
        ("samedi 1er juin 2024 à 10h30", datetime(2024, 6, 1, 10, 30)),
        ("3 mars 2024", datetime(2024, 3, 3)),  # was read by dateutil as 1 March: "mars" is not "Mar"
        ("1 octobre 2024", datetime(2024, 10, 1)),  # was 1 January: dateutil skipped the French month
        ("mar. 7 mai 2024", datetime(2024, 5, 7)),  # "mar." is Tuesday (mardi) here, not March
        ("Samstag, 1. Juni 2024", datetime(2024, 6, 1)),
        ("Do., 1. August 2024, 10:00 Uhr", datetime(2024, 8, 1, 10)),
        ("Sonntag, 1. März 2026, 10 Uhr", datetime(2026, 3, 1, 10)),
        ("1. März 2026, 10.30 Uhr", datetime(2026, 3, 1, 10, 30)),
        ("1 de mayo de 2024, 18:00", datetime(2024, 5, 1, 18)),
        ("mar. 7 de mayo de 2024", datetime(2024, 5, 7)),
        ("1 maggio 2024 ore 10:00", datetime(2024, 5, 1, 10)),
        ("1 juni 2024", datetime(2024, 6, 1)),
        ("zaterdag 1 juni 2024 14:00", datetime(2024, 6, 1, 14)),
        ("1 de maio de 2024", datetime(2024, 5, 1)),
        ("1º de maio de 2024", datetime(2024, 5, 1)),
        ("quinta-feira, 2 de maio de 2024", datetime(2024, 5, 2)),
        ("1 juin 2024 10:00 +0200", datetime(2024, 6, 1, 10, tzinfo=timezone(timedelta(hours=2)))),
    ],
)
def test_dates_written_in_other_languages(text: str, expected: datetime) -> None:
    parsed = read_date(text)
    assert parsed == expected and parsed.utcoffset() == expected.utcoffset()
    activity = Standardizer(RunConfig()).standardize(RawActivity(name="Heure du conte", startDate=text))
    assert activity is not None and activity.start_date == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("mai 2024", "needs a day, a month name and a year"),
        ("juin 2024 10:00", "needs a day, a month name and a year"),
        ("1er mai", "needs a day, a month name and a year"),
        ("Samstag 01.05.2024", "needs a day, a month name and a year"),  # month in figures, behind a weekday
        ("01.05.2024", "ambiguous numeric date"),
        ("31 février 2024", "needs a day, a month name and a year"),
        ("demain", "needs a day, a month name and a year"),
    ],
)
def test_dates_in_other_languages_that_would_need_a_guess_are_refused(text: str, reason: str) -> None:
    with pytest.raises(DateRefused, match=reason):
        read_date(text)


def test_only_the_configured_languages_are_read() -> None:
    assert read_date("1 maggio 2024", languages=("it",)) == datetime(2024, 5, 1)
    with pytest.raises(DateRefused, match="needs a day, a month name and a year"):
        read_date("1 maggio 2024", languages=("fr",))
    standardizer = Standardizer(RunConfig(), date_languages=("fr",))
    activity = standardizer.standardize(RawActivity(name="Ora delle storie", startDate="1 maggio 2024"))
    assert activity is not None and activity.start_date is None
    assert "1 maggio 2024" in standardizer.warnings[0]
    assert read_date("1 May 2024", languages=("fr",)) == datetime(2024, 5, 1)  # English is always read


def test_date_languages_setting_is_a_checked_comma_separated_list(monkeypatch, store) -> None:  # noqa: ANN001
    assert HarvestSettings().date_languages == ("en", "fr", "de", "es", "it", "nl", "pt")
    month_names(DEFAULT_DATE_LANGUAGES)  # the defaults are not checked at startup: dateparser must know them
    monkeypatch.setenv("HARVEST_DATE_LANGUAGES", "en, IT")
    settings = HarvestSettings()
    assert settings.date_languages == ("en", "it")
    raws = [{"name": "Ora delle storie", "startDate": "1 maggio 2024"}, {"name": "Heure du conte", "startDate": "1er mai 2024"}]
    raw = write_jsonl(store, "runs/run-1/raw_activities.jsonl", "raw_activities", raws)
    result = standardize_raw_activities(store, "run-1", raw, RunConfig(), date_languages=settings.date_languages)
    dates = {record["name"]: record["start_date"] for record in iter_jsonl(store, result.file("standardized").uri)}
    assert dates == {"Ora delle storie": "2024-05-01T00:00:00", "Heure du conte": None}
    assert any("1er mai 2024" in warning for warning in result.warnings)
    monkeypatch.setenv("HARVEST_DATE_LANGUAGES", "fr,french")
    with pytest.raises(ValidationError, match="'french' is not a language dateparser knows"):
        HarvestSettings()


# ---- countries -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "code"),
    [("UK", "GB"), ("United Kingdom", "GB"), ("England", "GB"), ("Australia", "AU"), ("au", "AU"),
     ("AUS", "AU"), ("New Zealand", "NZ"), ("USA", "US"), ("Korea", None), ("Narnia", None), ("", None)],
)
def test_country_names_and_codes_become_iso_alpha_2(value: str, code: str | None) -> None:
    assert country_code(value) == code


def test_standardized_location_carries_the_iso_code() -> None:
    activity = Standardizer(RunConfig()).standardize(
        RawActivity(name="Proms", location=Location(city="London", country_code="UK"))
    )
    assert activity is not None and activity.location.country_code == "GB"
    assert activity.location.formattedAddress == "London, GB"
