"""Standardization of raw activities, checked against the real 300-activity Melbourne fixture.

Expected counts are computed here independently of harvest's helpers (own normalization, own
address composition), so a regression in either shows up as a mismatch.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from harvest.models import Location, RawActivity, RunConfig
from harvest.standardize.dedupe import Deduplicator
from harvest.standardize.standardizer import DateRefused, Standardizer, activity_id, content_hash, read_date


def parse_date(text: str | None) -> datetime | None:
    """The date the standardizer reads from `text`, None where it refuses one."""
    try:
        return read_date(text)
    except DateRefused:
        return None


FIXTURE = Path(__file__).resolve().parents[3] / "testkit" / "data" / "melbourne-activities.json"


@pytest.fixture(scope="module")
def fixture_items() -> list[dict]:
    items = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert len(items) == 300
    return items


def independent_key(text: str | None) -> str:
    """Casefold, drop apostrophes, every other non-word character separates words."""
    text = unicodedata.normalize("NFKC", text or "").casefold()
    text = re.sub(r"['\u2018\u2019`]", "", text)
    return " ".join(re.sub(r"[^\w&+]|_", " ", text).split())


def independent_address(location: dict | None) -> str:
    if not location:
        return ""
    if location.get("formattedAddress"):
        return location["formattedAddress"]
    region = " ".join(p for p in (location.get("state_province"), location.get("postal_code")) if p)
    parts = (location.get("street_address"), location.get("city"), region, location.get("country_code"))
    return ", ".join(p for p in parts if p)


def run(items: list[dict], config: RunConfig | None = None) -> tuple[Standardizer, list]:
    standardizer = Standardizer(config or RunConfig())
    results = [standardizer.standardize(RawActivity.model_validate(item)) for item in items]
    return standardizer, results


# --- the real fixture --------------------------------------------------------------------------------


def test_fixture_counts_and_duplicates(fixture_items: list[dict]) -> None:
    keys = [
        (independent_key(item["name"]), independent_key(independent_address(item.get("location"))))
        for item in fixture_items
    ]
    first_index = {}
    for index, key in enumerate(keys):
        first_index.setdefault(key, index)
    expected_unique = len(first_index)
    assert expected_unique < 300  # the fixture really has repeats

    standardizer, results = run(fixture_items)
    assert standardizer.accepted == 300 and standardizer.skipped == {}
    with Deduplicator() as dedupe:
        for activity in results:
            dedupe.add(activity)
        merged = list(dedupe.activities())
    assert len(merged) == dedupe.distinct == expected_unique
    assert dedupe.duplicates == 300 - expected_unique
    assert [a.id for a in merged] == sorted({a.id for a in results})


def test_json_lines_are_the_merged_activities_serialized(fixture_items: list[dict]) -> None:
    """The standardize stage writes `json_lines`, which passes a lone copy's stored JSON through: it must be
    exactly what serializing `activities` gives, merged groups (and their occurrences) included."""
    import orjson

    _, results = run(fixture_items)
    results += [results[0].model_copy(update={"start_date": datetime(2031, 5, 1, 10, tzinfo=UTC)})]  # 2 dates

    def deduplicated(method: str) -> list:
        with Deduplicator() as dedupe:
            for activity in results:
                dedupe.add(activity)
            return [*getattr(dedupe, method)()], dedupe.distinct, dedupe.duplicates

    merged, distinct, duplicates = deduplicated("activities")
    lines, *counts = deduplicated("json_lines")
    assert counts == [distinct, duplicates] and any(activity.occurrences for activity in merged)
    assert lines == [orjson.dumps(activity.model_dump(mode="json")) + b"\n" for activity in merged]


def test_fixture_ids_are_stable_and_match_an_independent_hash(fixture_items: list[dict]) -> None:
    _, first = run(fixture_items)
    _, second = run(fixture_items)
    assert [a and (a.id, a.content_hash) for a in first] == [a and (a.id, a.content_hash) for a in second]

    alistair = first[0]
    assert alistair is not None and alistair.name == "alistair knox park, eltham"
    expected = hashlib.sha256(b"alistair knox park eltham|829 main rd eltham australia").hexdigest()[:32]
    assert alistair.id == expected


def test_fixture_dates_are_all_parsed_or_warned(fixture_items: list[dict]) -> None:
    standardizer, results = run(fixture_items)
    checked = 0
    for item, activity in zip(fixture_items, results, strict=True):
        if activity is None or not item.get("startDate"):
            continue
        checked += 1
        raw = item["startDate"]
        if activity.start_date is None:
            assert any(raw in warning for warning in standardizer.warnings), raw
            continue
        # Independent reading: date, time and offset straight from the string.
        match = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)(?:T(\d\d):(\d\d):(\d\d)(?:\.\d+)?(Z|[+-]\d\d:?\d\d)?)?", raw)
        assert match, raw
        year, month, day, hour, minute, second, offset = match.groups()
        assert activity.start_date.replace(tzinfo=None) == datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0)
        )
        if offset is None:
            assert activity.start_date.tzinfo is None  # date-only stays naive: no zone was given
        else:
            sign = -1 if offset.startswith("-") else 1
            digits = offset.replace(":", "")[1:] if offset != "Z" else "0000"
            expected_offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:])) * sign
            assert activity.start_date.utcoffset() == expected_offset
    with_dates = sum(1 for item, a in zip(fixture_items, results, strict=True) if a and item.get("startDate"))
    assert checked == with_dates > 200
    assert standardizer.warnings == []  # every format in the fixture ("+10:00", "+1000", "Z", date-only) parses


def test_fixture_tags_locations_and_defaults(fixture_items: list[dict]) -> None:
    config = RunConfig(tags_hint=["Melbourne ", "PARK", "kids"], urgency_default="low")
    _, results = run(fixture_items, config)
    for item, activity in zip(fixture_items, results, strict=True):
        if activity is None:
            continue
        assert activity.tags == list(dict.fromkeys(activity.tags)), activity.tags
        assert all(tag == tag.lower() == tag.strip() and tag for tag in activity.tags)
        expected_tags = list(dict.fromkeys([t.strip().lower() for t in item["tags"]] + ["melbourne", "park", "kids"]))
        assert activity.tags == expected_tags
        assert activity.urgency == "low" and activity.is_public is True
        location = item.get("location") or {}
        assert activity.location.name == (location.get("name") or None)  # never the activity's own name
        assert activity.location.formattedAddress == (independent_address(location) or None)
        assert activity.description == (item.get("description") or None)
        assert activity.image_url == item.get("imageURL")
    no_location = [a for i, a in zip(fixture_items, results, strict=True) if a and not i.get("location")]
    assert len(no_location) == 13
    # No place on the page: an empty location, not the activity's name as a made-up place (issue 26).
    assert all(a.location.name is None and a.location.formattedAddress is None for a in no_location)


# --- single records -------------------------------------------------------------------------------------


def raw(**fields: object) -> RawActivity:
    return RawActivity.model_validate({"name": "Story Time", **fields})


def test_strings_are_trimmed_collapsed_and_markup_free() -> None:
    standardizer = Standardizer(RunConfig())
    activity = standardizer.standardize(
        raw(
            name="  <b>Lego</b>\n\n  Club&nbsp;! ",
            description="<p>Build   things.</p><p>Robert'); DROP TABLE activities;--</p>",
            location=Location(name=" ", city="  Eltham ", country_code="au", state_province="VIC", postal_code="3095"),
            tags=[" Lego ", "LEGO", "", "<i>Kids</i>"],
        )
    )
    assert activity is not None
    assert activity.name == "Lego Club !"
    assert activity.description == "Build things. Robert'); DROP TABLE activities;--"
    assert activity.location.name is None  # a blank place name stays blank, never the activity's
    assert activity.location.city == "Eltham"
    assert activity.location.country_code == "AU"
    assert activity.location.formattedAddress == "Eltham, VIC 3095, AU"
    assert activity.tags == ["lego", "kids"]


@pytest.mark.parametrize("name", [None, "", "   ", "<p> </p>", "&nbsp;"])
def test_missing_name_is_skipped_with_a_reason(name: str | None) -> None:
    standardizer = Standardizer(RunConfig())
    assert standardizer.standardize(RawActivity(name=name, description="x")) is None
    assert standardizer.skipped == {"missing name": 1}
    assert standardizer.accepted == 0


def test_invalid_dates_are_dropped_with_a_warning_and_the_activity_kept() -> None:
    standardizer = Standardizer(RunConfig())
    activity = standardizer.standardize(raw(startDate="next Tuesday-ish", endDate="2024-02-30"))
    assert activity is not None
    assert activity.start_date is None and activity.end_date is None
    assert len(standardizer.warnings) == 2
    assert "next Tuesday-ish" in standardizer.warnings[0] and "2024-02-30" in standardizer.warnings[1]


def test_end_before_start_is_dropped_with_a_warning() -> None:
    standardizer = Standardizer(RunConfig())
    activity = standardizer.standardize(raw(startDate="2024-05-02", endDate="2024-05-01"))
    assert activity is not None
    assert activity.start_date == datetime(2024, 5, 2) and activity.end_date is None
    assert "before startDate" in standardizer.warnings[0]


def test_warnings_are_bounded_but_counted() -> None:
    standardizer = Standardizer(RunConfig(), max_warnings=5)
    for number in range(20):
        standardizer.standardize(raw(name=f"Event {number}", startDate=f"not a date {number}"))
    assert len(standardizer.warnings) == 5
    assert standardizer.warnings_dropped == 15
    assert standardizer.report()["accepted"] == 20


def test_image_urls_are_resolved_or_dropped() -> None:
    standardizer = Standardizer(RunConfig())
    relative = standardizer.standardize(raw(name="A", imageURL="/img/a b.jpg", sourceUrl="https://site.example/x/"))
    assert relative is not None and relative.image_url == "https://site.example/img/a%20b.jpg"
    bad = standardizer.standardize(raw(name="B", imageURL="javascript:alert(1)"))
    assert bad is not None and bad.image_url is None
    assert "javascript:alert(1)" in standardizer.warnings[0]


def test_the_items_own_url_reaches_the_final_record_and_not_its_content_hash() -> None:
    """The item's own URL (schema.org url, an aggregator's link to the venue) is what the import judges first-party
    by (harvest/import_/provenance.py): carried, made absolute, and outside the content hash (no re-embedding)."""
    from harvest.merge.final import final_record

    standardizer = Standardizer(RunConfig())
    listed = standardizer.standardize(raw(name="A", itemUrl="/e/1", sourceUrl="https://agg.example/list"))
    assert listed is not None and listed.item_url == "https://agg.example/e/1"
    elsewhere = standardizer.standardize(raw(name="A", itemUrl="https://venue.example/e", sourceUrl="https://agg.example/list"))
    bare = standardizer.standardize(raw(name="A", sourceUrl="https://agg.example/list"))
    assert elsewhere is not None and bare is not None and bare.item_url is None
    assert elsewhere.content_hash == bare.content_hash
    record = final_record({"activity": elsewhere.model_dump(mode="json")}, None)
    assert record["item_url"] == "https://venue.example/e"


def test_duplicates_by_normalized_name_and_address() -> None:
    standardizer = Standardizer(RunConfig())
    place = Location(formattedAddress="Lake Grove, Coburg VIC 3058")
    first = standardizer.standardize(raw(name="Coburg Lake Reserve, Coburg North", location=place))
    again = standardizer.standardize(raw(name="coburg lake reserve  coburg north", location=place))
    elsewhere = standardizer.standardize(raw(name="Coburg Lake Reserve, Coburg North"))
    assert first is not None and again is not None and elsewhere is not None
    assert again.id == first.id != elsewhere.id
    with Deduplicator() as dedupe:
        for activity in (first, again, elsewhere):
            dedupe.add(activity)
        assert {a.id for a in dedupe.activities()} == {first.id, elsewhere.id}
    assert dedupe.duplicates == 1


def test_activity_id_normalization() -> None:
    base = activity_id("Aston's Debonair Parade Park", "12 Debonair Pde, Craigieburn")
    assert activity_id("ASTONS  debonair parade park", "12 debonair pde craigieburn") == base
    assert activity_id("Aston's Debonair Parade Park", "14 Debonair Pde, Craigieburn") != base
    assert activity_id("Park", None) == activity_id("Park", "") == hashlib.sha256(b"park|").hexdigest()[:32]
    assert re.fullmatch(r"[0-9a-f]{32}", base)


def test_content_hash_follows_enrichment_inputs_only() -> None:
    standardizer = Standardizer(RunConfig())
    activity = standardizer.standardize(raw(description="Songs", tags=["music"], startDate="2024-05-01"))
    assert activity is not None
    # The stored hash, recomputed here from the literal inputs (not by calling content_hash on itself).
    payload = {"name": activity.name, "description": "Songs", "location_name": activity.location.name,
               "address": activity.location.formattedAddress, "tags": ["music"], "image_url": None,
               "start_date": "2024-05-01T00:00:00", "end_date": None}
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    assert activity.content_hash == hashlib.sha256(encoded).hexdigest()
    same = activity.model_copy(update={"source_url": "https://elsewhere.example/", "urgency": "high"})
    assert content_hash(same) == activity.content_hash
    for change in (
        {"description": "Songs and rhymes"},
        {"tags": ["music", "babies"]},
        {"image_url": "https://cdn.example/a.jpg"},
        {"start_date": datetime(2024, 5, 2)},
        {"location": activity.location.model_copy(update={"formattedAddress": "1 Main St"})},
    ):
        assert content_hash(activity.model_copy(update=change)) != activity.content_hash, change


AEST = timezone(timedelta(hours=10))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01", datetime(2024, 5, 1)),
        ("2020-06-07T13:51:46+1000", datetime(2020, 6, 7, 13, 51, 46, tzinfo=AEST)),
        ("2020-06-07T13:51:46+10:00", datetime(2020, 6, 7, 13, 51, 46, tzinfo=AEST)),
        ("2017-08-22T09:04:36.000Z", datetime(2017, 8, 22, 9, 4, 36, tzinfo=UTC)),
        ("2017-08-22T09:04:36.123456789Z", datetime(2017, 8, 22, 9, 4, 36, 123456, tzinfo=UTC)),
        ("2024-05-01t10:00z", datetime(2024, 5, 1, 10, 0, tzinfo=UTC)),
        ("2024-05-01 10:00", datetime(2024, 5, 1, 10, 0)),
        ("2024/05/01", datetime(2024, 5, 1)),
        ("Wed, 01 May 2024 10:00:00 +1000", datetime(2024, 5, 1, 10, 0, tzinfo=AEST)),
        ("1 May 2024", datetime(2024, 5, 1)),
        ("May 1, 2024", datetime(2024, 5, 1)),
        (" 2024-05-01 ", datetime(2024, 5, 1)),
        ("2024-13-01", None),
        ("01/05/2024", None),  # day/month order is ambiguous: not guessed
        ("0001-01-01", None),
        ("tomorrow", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_date(text: str | None, expected: datetime | None) -> None:
    parsed = parse_date(text)
    assert parsed == expected
    if expected is not None:
        assert parsed is not None and parsed.utcoffset() == expected.utcoffset()
