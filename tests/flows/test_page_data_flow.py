"""What event pages give, through the whole flow (issue 11): page coordinates kept exactly and never geocoded,
one show on two dates kept as one activity with both occurrences, dates as people write them, an ambiguous
numeric date refused with the reason, "UK" as GB."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from harvest.models import RunConfig
from testkit.demo_site import SiteServer, serve_site
from testkit.events_site import BOWL, GARDENS, build_events_site


@pytest.fixture(scope="module")
def events_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteServer]:
    root = tmp_path_factory.mktemp("events-site")
    build_events_site(root)
    with serve_site(root) as server:
        yield server


def test_event_pages_through_the_flow(harvest_env, s3, events_site, geocoder_server) -> None:
    from flows.scrape import scrape_website

    state = scrape_website(url=events_site.url("/"), config=RunConfig(), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    uri = summary.files["final_jsonl"].uri
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    records = {r["name"]: r for r in (json.loads(line) for line in body.splitlines() if line.strip())}

    asked = [request["query"].get("q", "") for request in geocoder_server.requests_seen()]
    assert not [q for q in asked if "Linlithgow" in q or "Botanic" in q], asked  # zero calls for page coordinates
    assert len(asked) == len(set(asked)) == 3  # Arts Centre, State Library, Royal Albert Hall: once each

    carols = records["Carols by Candlelight"]["location"]
    assert (carols["latitude"], carols["longitude"], carols["coordinates_source"]) == (*BOWL["geo"], "page")
    twilight = records["Twilight Sounds"]["location"]
    assert (twilight["latitude"], twilight["longitude"], twilight["coordinates_source"]) == (*GARDENS["geo"], "page")
    assert twilight["formatted_address"] is None  # coordinates only: no address made up
    assert records["Story Time for Under 5s"]["location"]["coordinates_source"] == "geocoder"

    gruffalo = records["The Gruffalo Live"]
    assert [o["start_date"] for o in gruffalo["occurrences"]] == ["2024-06-01T00:00:00", "2024-07-06T11:00:00+10:00"]
    assert gruffalo["start_date"] == "2024-06-01T00:00:00"
    assert gruffalo["location"]["country_code"] == "AU"  # "Australia" on the page
    assert records["Story Time for Under 5s"]["start_date"] == "2024-05-01T00:00:00"
    assert records["Family Proms"]["start_date"] == "2024-05-01T10:00:00"
    assert records["Family Proms"]["location"]["country_code"] == "GB"  # "UK" on the page
    assert records["Kids Craft Morning"]["start_date"] is None
    assert any("Kids Craft Morning" in w and "'01/05/2024'" in w and "ambiguous numeric date" in w
               for w in summary.warnings), summary.warnings
    assert summary.activities_processed == 6
