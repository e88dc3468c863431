"""The drop alarm (issue 32): a source whose site goes from 20 activities to 0 gets a warning on the run (in the
summary the CLI prints), a `harvest.source.degraded` Prefect event naming the source, `degraded` in the fleet
view, and its rows kept: its activities stay, and the sweep does not age out its runs' files while it is degraded."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from harvest.db.engine import get_engine, utcnow
from harvest.models import RunConfig

CONFIG = RunConfig(max_pages=150, max_extractions=100, auto_import=True, keep_files=True)


def scrape(url: str) -> Any:
    from flows.scrape import scrape_website

    state = scrape_website(url=url, config=CONFIG, return_state=True)
    assert state.is_completed(), state.message
    return state.result()


def degraded_events(source_id: int, deadline: float = 90) -> list[Any]:
    """The source's degraded events in Prefect's event store (written asynchronously: waited for)."""
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    wanted = EventFilter(event=EventNameFilter(name=["harvest.source.degraded"]),
                         resource=EventResourceFilter(id=[f"harvest.source.{source_id}"]))
    end = time.monotonic() + deadline
    while True:
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=wanted, limit=50).events  # the server allows 50 (the default 100: 422)
        if events or time.monotonic() > end:
            return events
        time.sleep(1)


def test_a_source_that_drops_to_zero_is_degraded_and_keeps_its_rows(harvest_env, tmp_path: Path) -> None:
    from flows.resources import resources
    from harvest.db import sources as source_rows
    from harvest.db.schema import activities, scrape_runs
    from harvest.retention.policy import policy_from, sweep
    from harvest.sources.health import fleet
    from testkit.demo_site import build_demo_site, serve_site

    root = tmp_path / "site"
    build_demo_site(root, limit=20)
    engine = get_engine(harvest_env["HARVEST_DATABASE_URL"])
    with serve_site(root) as site:
        url = site.base_url + "/"
        source = source_rows.add_source(engine, url, CONFIG.model_dump(mode="json"), "scrape-website/default")
        first = scrape(url)
        assert first.activities_processed == 20 and not any("alarm" in w for w in first.warnings)
        with engine.connect() as connection:
            imported = connection.execute(sa.select(sa.func.count()).select_from(activities)).scalar()
        assert imported == 20

        build_demo_site(root, limit=0)  # the redesign: the same site, no activity to be found
        second = scrape(url)

    # A warning on the run, as the CLI's summary prints it.
    assert second.activities_processed == 0
    (alarm,) = [w for w in second.warnings if "alarm" in w]
    assert f"source {source['id']} alarm: activities fell from 20 to 0 (-100%) against run {first.run_id}" in alarm
    # Degraded, in the fleet view `harvest sources list` shows.
    (row,) = fleet(engine)
    assert (row["health"], row["activities"], row["previous_activities"], row["change"]) == ("degraded", 0, 20, -20)
    assert row["health_reason"] == alarm and row["last_run"]["id"] == second.run_id
    # A Prefect event an automation can act on, naming the source and the run.
    (event,) = degraded_events(source["id"])
    assert event.resource["prefect.resource.name"] == url and event.resource["harvest.alarm"] == "drop"
    assert event.payload["previous"] == 20 and event.payload["activities"] == 0
    assert any(r.id == f"prefect.flow-run.{second.run_id}" for r in event.related)

    # Rows kept: the activities are still there, and a sweep long after both runs expired ages out nothing of the
    # degraded source; once it is ok again, the same sweep expires them (what the exemption holds back).
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(activities)).scalar() == 20
    res = resources()
    later = utcnow() + timedelta(days=60)
    report = sweep(engine, res.store, policy_from(res.settings), flow_run_state=lambda _: None, now=later)
    assert report.expired == []
    source_rows.set_health(engine, source["id"], source_rows.OK, None, None)
    report = sweep(engine, res.store, policy_from(res.settings), flow_run_state=lambda _: None, now=later)
    assert sorted(report.expired) == sorted([first.run_id, second.run_id])
    with engine.connect() as connection:
        retention = dict(connection.execute(sa.select(scrape_runs.c.id, scrape_runs.c.retention)).all())
    assert retention == {first.run_id: "expired", second.run_id: "expired"}


def test_a_healthy_run_after_a_drop_recovers_the_source(harvest_env, demo_site) -> None:
    """A degraded source whose next run is healthy is `ok` again (and the share is a setting: 10 % here)."""
    from harvest.db import sources as source_rows
    from harvest.sources.health import fleet

    engine = get_engine(harvest_env["HARVEST_DATABASE_URL"])
    url = demo_site.base_url + "/"
    source = source_rows.add_source(engine, url, {}, "scrape-website/default")
    source_rows.set_health(engine, source["id"], source_rows.DEGRADED, "an earlier drop", None)
    scrape(url)
    (row,) = fleet(engine)
    assert row["health"] == "ok" and row["health_reason"] is None


def test_a_source_failing_n_times_in_a_row_is_degraded(harvest_env, monkeypatch) -> None:  # noqa: ANN001
    """HARVEST_SOURCE_FAILURE_ALARM=2: the second failed run in a row (its start URL refuses connections) raises the
    alarm from the flow's on_failure hook: a warning on the run row, the failures event, the source degraded."""
    from flows.scrape import scrape_website
    from harvest.db import runs as run_rows
    from harvest.db import sources as source_rows
    from testkit.net import free_port
    from tests.helpers import reset_harvest_caches

    monkeypatch.setenv("HARVEST_SOURCE_FAILURE_ALARM", "2")
    reset_harvest_caches()
    engine = get_engine(harvest_env["HARVEST_DATABASE_URL"])
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    source = source_rows.add_source(engine, url, {}, "scrape-website/default")
    states = [scrape_website(url=url, config=CONFIG, return_state=True) for _ in range(2)]
    assert [state.is_failed() for state in states] == [True, True]
    first, second = (str(state.state_details.flow_run_id) for state in states)
    assert not any("alarm" in w for w in run_rows.get_run(engine, first)["warnings"])
    (alarm,) = [w for w in run_rows.get_run(engine, second)["warnings"] if "alarm" in w]
    assert "2 failed runs in a row (HARVEST_SOURCE_FAILURE_ALARM 2)" in alarm
    assert source_rows.get_source(engine, source["id"])["health"] == "degraded"
    (event,) = degraded_events(source["id"])
    assert event.resource["harvest.alarm"] == "failures"
