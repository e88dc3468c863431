"""A source's schedule fires from a worker (issue 32): `harvest sources add` on the e2e stack's server adds a
schedule to scrape-website/default (HARVEST_SOURCES_DEPLOYMENT set to it: the sources' own deployment,
scrape-website/fleet, is the fleet worker's, tests/e2e/test_fleet_worker.py) that is due in seconds; a plain process
worker runs it as a scheduled flow run of that deployment with the source's parameters; `harvest sources list` then shows its last run, activities and next
run, and the fleet artifact is published."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest
import sqlalchemy as sa

from harvest.db.engine import get_engine
from harvest.db.schema import scrape_runs
from tests.cli_support import HARVEST
from tests.e2e.test_deployment import ROOT, settled_row, wait_for, worker  # noqa: F401 - the process worker fixture

pytestmark = pytest.mark.e2e


def harvest(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run([HARVEST, *args, "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def runs_of(db_url: str, url: str) -> list[dict[str, Any]]:
    with get_engine(db_url).begin() as connection:
        return [dict(row) for row in connection.execute(
            sa.select(scrape_runs).where(scrape_runs.c.url == url).order_by(scrape_runs.c.started_at)).mappings()]


def test_a_source_schedule_fires_from_the_worker(stack, worker, harvest_env, demo_site) -> None:  # noqa: ANN001, F811
    env = {**os.environ, **stack.env, **harvest_env, "HARVEST_SOURCES_DEPLOYMENT": "scrape-website/default"}
    url = demo_site.base_url + "/?from=sources"  # a URL of its own (the site ignores the query): no other runs
    db_url = harvest_env["HARVEST_DATABASE_URL"]
    source = harvest(env, "sources", "add", url, "--every", "1h", "--config", '{"max_pages": 20, "max_extractions": 5}')
    try:
        schedules = {s["slug"]: s for s in stack.api("GET", f"/deployments/{_deployment_id(stack)}/schedules")}
        assert schedules[source["schedule"]]["parameters"]["url"] == url

        # The first run is due ~15 s after `add`; the worker (polling every second) starts it.
        wait_for(lambda: [r for r in runs_of(db_url, url) if r["status"] != "running"], 300,
                 f"the scheduled run of {url} to finish\n{stack.log_tail('worker')}")
        (run,) = runs_of(db_url, url)
        row = settled_row(db_url, run["id"])
        assert row is not None and row["status"] == "completed", (row, stack.log_tail("worker"))
        flow_run = stack.flow_run(run["id"])
        assert flow_run["auto_scheduled"] is True and flow_run["parameters"]["url"] == url
        assert flow_run["parameters"]["config"]["max_pages"] == 20
        assert row["deployment_name"] == "default"

        (listed,) = [r for r in harvest(env, "sources", "list") if r["id"] == source["id"]]
        assert listed["status"] == "active" and listed["last_run"]["id"] == run["id"]
        assert listed["activities"] == row["activities_processed"] > 0
        assert listed["next_run"] and listed["next_run"] > listed["last_run"]["started_at"]
        fleet = stack.api("GET", "/artifacts/harvest-fleet/latest")
        assert fleet["flow_run_id"] == run["id"] and url in json.dumps(fleet["data"])
    finally:
        harvest(env, "sources", "remove", str(source["id"]))
    assert source["schedule"] not in {s["slug"] for s in stack.api("GET", f"/deployments/{_deployment_id(stack)}/schedules")}


def _deployment_id(stack) -> str:  # noqa: ANN001
    return str(stack.api("GET", "/deployments/name/scrape-website/default")["id"])
