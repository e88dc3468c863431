"""The fleet bench's runner (bench/fleet.py) at a tiny scale, so it cannot rot: three generated sites on their own
loopback addresses, the `scrape-sources` flow deployed on a pool of its own on the session's Prefect server, one
process worker, one flow run for the three sources. No timing is asserted: the figures are the bench's to report;
here they only have to exist and add up."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fleet import run_fleet
from tests.e2e.test_deployment import Stack

pytestmark = pytest.mark.e2e


def test_fleet_runner_runs_three_sources_and_measures_them(stack: Stack, harvest_env: dict[str, str],
                                                           tmp_path: Path) -> None:
    result = run_fleet(stack.api_url, {**stack.env, **harvest_env}, tmp_path, sites=3, mode="batch", batch=3,
                       workers=1, worker_limit=1, query_seconds=1, timeout=600)

    assert (result["sources"], result["completed"], result["flow_runs"]) == (3, 3, 1), result
    assert result["flow_run_states"] == {"COMPLETED": 1}
    assert result["flow_run_processes"] == 1  # the three sources shared one flow-run process
    assert result["activities"] == result["site_activities"] == result["activities_rows"] > 0
    assert result["worker_s_per_source"] > 0 and result["peak_rss_mb_per_flow_process"] > 0
    assert result["step_work_s_per_source"] > 0
    politeness = result["politeness"]
    assert politeness["hosts_requested"] == 3 and politeness["held"], politeness
    assert politeness["disallowed_requests"] == 0


def test_fleet_runner_drains_three_sources_with_fleet_workers(stack: Stack, harvest_env: dict[str, str],
                                                              tmp_path: Path) -> None:
    """Mode fleetworker: one flow run per source, drained by a `harvest sources worker`: each run in its own
    forked child (a flow-run process per source), the worker's own memory and CPU measured."""
    result = run_fleet(stack.api_url, {**stack.env, **harvest_env}, tmp_path, sites=3, mode="fleetworker",
                       workers=1, worker_limit=2, query_seconds=0.5, timeout=600)

    assert (result["sources"], result["completed"], result["flow_runs"]) == (3, 3, 3), result
    assert result["flow_run_states"] == {"COMPLETED": 3}
    assert result["flow_run_processes"] == 3  # a forked child per flow run, each a child of the worker
    assert result["activities"] == result["site_activities"] == result["activities_rows"] > 0
    assert result["worker_s_per_source"] > result["step_work_s_per_source"] > 0
    (worker,) = result["worker_peak_rss_mb_first_50_sources"].values()
    assert worker > 0 and result["worker_own_cpu_s_per_source"] > 0
    assert result["politeness"]["disallowed_requests"] == 0
