"""A source's health judged from its runs (harvest/sources/health.py), on Postgres and SQLite: the drop share and the
failure streak are settings, a cancelled run says nothing about the site, a run of a URL that is no source is not
judged, and `sources cost` sums each source's runs in the window."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from harvest.db import runs as run_rows
from harvest.db import sources as source_rows
from harvest.db.engine import utcnow
from harvest.db.ledger import RunBook
from harvest.db.schema import scrape_runs
from harvest.settings import HarvestSettings
from harvest.sources.cadence import cadence_from
from harvest.sources.health import costs, fleet, judge_run

DATABASES = ["postgres", "sqlite"]
URL = "https://venue.example.org/"


def settings(**values: object) -> HarvestSettings:
    return HarvestSettings(database_url="sqlite://", **values)  # type: ignore[arg-type]


def finished(engine, status: str, activities: int | None = None, error: str | None = None) -> str:  # noqa: ANN001
    run_id = str(uuid.uuid4())
    run_rows.create_run(engine, run_id, URL, {})
    run_rows.finish_run(engine, run_id, status, activities_processed=activities, error=error)
    return run_id


def test_a_drop_past_the_share_is_an_alarm_and_a_smaller_one_is_not(engine) -> None:  # noqa: ANN001
    source = source_rows.add_source(engine, URL, {}, "scrape-website/default")
    finished(engine, "completed", 40)
    assert judge_run(engine, finished(engine, "completed", 21), settings()).alarm is None  # -47.5 %: not past 50 %
    judged = judge_run(engine, finished(engine, "completed", 10), settings())  # -52 %
    assert judged is not None and judged.kind == "drop" and "fell from 21 to 10 (-52%)" in (judged.alarm or "")
    assert source_rows.get_source(engine, source["id"])["health"] == "degraded"
    # A stricter share (HARVEST_SOURCE_DROP_ALARM=0.2): a 30 % drop is an alarm too. Then a healthy run recovers.
    assert judge_run(engine, finished(engine, "completed", 7), settings(source_drop_alarm=0.2)).kind == "drop"
    recovered = judge_run(engine, finished(engine, "completed", 7), settings())
    assert recovered is not None and recovered.recovered and recovered.alarm is None
    assert source_rows.get_source(engine, source["id"])["health"] == "ok"


def test_failures_in_a_row_are_an_alarm_and_a_cancelled_run_breaks_nothing(engine) -> None:  # noqa: ANN001
    source = source_rows.add_source(engine, URL, {}, "scrape-website/default")
    finished(engine, "completed", 5)
    assert judge_run(engine, finished(engine, "failed", error="HTTP 500"), settings()).alarm is None
    finished(engine, "cancelled")  # a person stopped it: says nothing about the site
    assert judge_run(engine, finished(engine, "crashed"), settings()).alarm is None  # 2 in a row
    judged = judge_run(engine, finished(engine, "failed", error="CrawlError: start URL gave HTTP 503"), settings())
    assert judged is not None and judged.kind == "failures"
    assert "3 failed runs in a row (HARVEST_SOURCE_FAILURE_ALARM 3); last: CrawlError" in (judged.alarm or "")
    (row,) = fleet(engine)
    assert row["health"] == "degraded" and row["activities"] == 5 and row["last_run"]["status"] == "failed"
    assert row["id"] == source["id"]


def test_a_run_of_a_url_that_is_no_source_is_not_judged(engine) -> None:  # noqa: ANN001
    assert judge_run(engine, finished(engine, "completed", 0), settings()) is None


def test_sources_cost_sums_each_sources_runs_in_the_window(engine) -> None:  # noqa: ANN001
    source = source_rows.add_source(engine, URL, {}, "scrape-website/default")
    other = source_rows.add_source(engine, "https://other.example.org/", {}, "scrape-website/default")
    old, recent = finished(engine, "completed", 3), finished(engine, "completed", 4)
    with engine.begin() as connection:
        connection.execute(scrape_runs.update().where(scrape_runs.c.id == old)
                           .values(started_at=utcnow() - timedelta(days=40)))
    RunBook(engine, recent).charge("embeddings", {"embedding_tokens": 100}, 0.25)
    RunBook(engine, old).charge("embeddings", {"embedding_tokens": 100}, 1.0)
    by_id = {row["id"]: row for row in costs(engine, utcnow() - timedelta(days=30))}
    assert by_id[source["id"]] == {"id": source["id"], "url": URL, "runs": 1, "activities": 4, "cost_usd": 0.25}
    assert by_id[other["id"]]["runs"] == 0 and by_id[other["id"]]["cost_usd"] == 0.0
    assert next(r for r in fleet(engine) if r["id"] == source["id"])["cost_per_run_usd"] == pytest.approx(0.625)


def test_cadence_from_the_options() -> None:
    assert cadence_from(None, None).text() == "every 1d"
    assert cadence_from("6h", None).every == timedelta(hours=6)
    assert cadence_from(None, "0  3 * * *").cron == "0 3 * * *"
    for every, cron, message in (("1d", "0 3 * * *", "not both"), ("30s", None, "at least 1m"),
                                 ("often", None, "not a duration"), (None, "0 3 * *", "five fields")):
        with pytest.raises(ValueError, match=message):
            cadence_from(every, cron)
