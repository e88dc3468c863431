"""harvest's own log lines reach the task run they were logged in, once, when the task runs in the flow's own
process: the flow's forwarding and the task's share one handler (flows/run_logs.py), so neither sends a copy.
Tasks in Dask worker processes need a Prefect server: tests/e2e/test_scale_out.py."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import pytest

from harvest.models import RunConfig
from harvest.settings import get_settings


def submitted_lines(client: Any, flow_run_id: UUID) -> list[Any]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log for log in logs if log.name == "harvest.enrich.embeddings.batch" and "submitted for file" in log.message]


@pytest.mark.parametrize("runner", ["threads", "dask"])
def test_a_tasks_harvest_line_reaches_its_task_run_once_in_the_flows_process(harvest_env, demo_site, runner) -> None:
    """`dask` here is the in-process worker (HARVEST_DASK_PROCESSES=0): its threads are the flow's process."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.logging.handlers import APILogWorker

    from flows.runners import make_task_runner
    from flows.scrape import scrape_website

    task_runner = make_task_runner(get_settings().model_copy(update={"task_runner": runner, "dask_processes": 0}))
    state = scrape_website.with_options(task_runner=task_runner)(
        url=f"{demo_site.base_url}/?site=logs-{runner}", config=RunConfig(max_pages=20, max_extractions=5),
        return_state=True,
    )
    assert state.is_completed(), state.message
    flow_run_id = UUID(state.result().run_id)
    # Every line (and any copy) was logged in this process before the flow returned; the log worker sends what it
    # holds and returns once the API has stored it: after that nothing more can arrive (no waiting for a copy).
    APILogWorker.drain_all()
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        (submit,) = [run for run in task_runs if run.name.startswith("embeddings_submit")]
        lines = submitted_lines(client, flow_run_id)
    assert len(lines) == 1, [(line.task_run_id, line.message) for line in lines]
    assert (lines[0].task_run_id, lines[0].level) == (submit.id, logging.INFO)
