"""The scrape-sources flow (several sources in one flow-run process, issue 32) on Prefect's ephemeral API: each
source is its own scrape-website subflow run with its own run row and files, and one failing source fails the
batch only after the others ran."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from harvest.db.engine import get_engine
from harvest.db.schema import run_files, scrape_runs
from testkit.fleet_sites import FleetServer, fleet_sites

CONFIG = {"max_pages": 20, "max_depth": 2, "max_extractions": 20, "render": "http"}


@pytest.fixture
def two_sites():  # noqa: ANN201
    sites = fleet_sites(2, min_activities=3, max_activities=4)
    with FleetServer(sites) as server:
        yield [server.url(site) for site in sites], sites


def _flow_run(flow_run_id: str):  # noqa: ANN202 - a Prefect FlowRun
    from prefect import get_client

    async def read():  # noqa: ANN202
        async with get_client() as client:
            return await client.read_flow_run(flow_run_id)

    return asyncio.run(read())


def test_each_source_is_its_own_subflow_run_with_its_own_row_and_files(harvest_env, two_sites) -> None:
    from flows.scrape_sources import scrape_sources

    urls, sites = two_sites
    state = scrape_sources(sources=[{"url": url, "config": CONFIG} for url in urls], return_state=True)
    assert state.is_completed(), state.message
    outcomes = state.result()
    assert [o.url for o in outcomes] == urls
    assert [o.activities for o in outcomes] == [site.activities for site in sites]
    run_ids = [o.run_id for o in outcomes]
    assert len(set(run_ids)) == 2
    engine = get_engine(harvest_env["HARVEST_DATABASE_URL"])
    with engine.begin() as connection:
        rows = {r["id"]: dict(r) for r in connection.execute(sa.select(scrape_runs)).mappings()}
        files = connection.execute(sa.select(run_files.c.run_id, run_files.c.kind)).all()
    assert set(rows) == set(run_ids)
    assert {rows[i]["url"] for i in run_ids} == set(urls)
    assert all(rows[i]["status"] == "completed" for i in run_ids)
    for run_id in run_ids:  # each source's files under its own run
        assert {kind for rid, kind in files if rid == run_id} >= {"raw_activities", "final_jsonl"}
    # Each run is a flow run of its own, a child of the batch's.
    parent = str(state.state_details.flow_run_id)
    for run_id in run_ids:
        child = _flow_run(run_id)
        assert child.parent_task_run_id is not None
        assert str(child.flow_id) != str(_flow_run(parent).flow_id)


def test_a_failing_source_fails_the_batch_after_the_others_ran(harvest_env, two_sites) -> None:
    from flows.scrape_sources import scrape_sources

    urls, _ = two_sites
    dead = "http://127.0.0.1:9/"  # nothing listens on the discard port: the crawl fails
    state = scrape_sources(sources=[{"url": dead, "config": CONFIG}, {"url": urls[0], "config": CONFIG}],
                           return_state=True)
    assert state.is_failed()
    assert dead in (state.message or "")
    engine = get_engine(harvest_env["HARVEST_DATABASE_URL"])
    with engine.begin() as connection:
        statuses = dict(connection.execute(sa.select(scrape_runs.c.url, scrape_runs.c.status)).all())
    assert statuses[urls[0]] == "completed"
    assert statuses[dead] == "failed"
