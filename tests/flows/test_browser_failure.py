"""A browser that cannot start is a run-level error the user sees (issue 29), through the whole flow.

HARVEST_BROWSER_PATH names an executable that is not Chromium, so Playwright's launch really fails. The demo site
has pages built by scripts: the run goes to its end (nothing it collected is lost), then fails with the count and
the cause, which also stand in the run's warnings, its logs, its failed URLs and its summary artifact.
"""

from __future__ import annotations

import stat
from pathlib import Path

import sqlalchemy as sa

from harvest.db.engine import get_engine
from harvest.db.schema import run_files, scrape_runs
from harvest.models import RunConfig
from tests.helpers import reset_harvest_caches


def test_a_browser_that_cannot_start_fails_the_run_with_its_cause_and_keeps_its_files(
    harvest_env, demo_site, monkeypatch, tmp_path: Path
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    from flows.scrape import scrape_website

    browser = tmp_path / "not-chromium"
    browser.write_text('#!/bin/sh\necho "not-chromium: this is not a browser" >&2\nexit 1\n')
    browser.chmod(browser.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("HARVEST_BROWSER_PATH", str(browser))
    reset_harvest_caches()
    scripted = {demo_site.base_url + page for page in demo_site.info.activity_pages
                if "needs JavaScript" in (demo_site.info.root / page.strip("/") / "index.html").read_text()}
    assert scripted, "the demo site has pages built by scripts"

    state = scrape_website(url=demo_site.base_url + "/", config=RunConfig(max_pages=200, max_extractions=1000),
                           return_state=True)

    assert state.is_failed()
    run_id = str(state.state_details.flow_run_id)
    db = get_engine(harvest_env["HARVEST_DATABASE_URL"])
    with db.begin() as connection:
        row = connection.execute(sa.select(scrape_runs).where(scrape_runs.c.id == run_id)).mappings().one()
        kinds = set(connection.execute(sa.select(run_files.c.kind).where(run_files.c.run_id == run_id)).scalars())
    # Every page built by scripts failed, under each URL the crawl met it by (`?ref=` duplicates too), and no other.
    unrendered = [failed["url"] for failed in row["failed_urls"]]
    assert {url.split("?")[0] for url in unrendered} == scripted
    cause = f"could not launch Chromium at {browser}: Target page, context or browser has been closed; " \
            "the browser printed: not-chromium: this is not a browser"
    expected = f"{len(unrendered)} page(s) built by scripts could not be rendered: the browser could not start: {cause}"
    assert expected in state.message
    assert (row["status"], row["retention"]) == ("failed", "kept")
    assert expected in row["error"]
    assert row["activities_processed"] > 0  # everything else went through
    assert {"raw_activities", "standardized", "merged", "final_jsonl"} <= kinds
    assert row["steps"]["crawl"]["details"]["pages_unrendered"] == len(unrendered)
    warning = next(w for w in row["warnings"] if "the browser could not start" in w)
    assert warning.startswith(f"crawl: the browser could not start, so {len(unrendered)} page(s) built by scripts")
    assert cause in warning

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    assert any(log.message == warning and log.level >= 30 for log in logs), [log.message for log in logs][-20:]
    summary = next(a.data for a in artifacts if (a.key or "").endswith("-summary"))
    assert "- Status: **failed**" in summary
    assert f"## Failed URLs ({len(unrendered)})" in summary
    assert "the browser could not start" in summary and "not-chromium: this is not a browser" in summary
