"""A state hook's log lines are attached to its flow run (issue 29): hooks run outside the run context, so they log
through Prefect's `flow_run_logger` for the run they are given, and the UI shows the lines in that run's logs."""

from __future__ import annotations

import time
from uuid import UUID

from harvest.models import RunConfig


def test_the_failure_hooks_line_is_in_the_flow_runs_logs(harvest_env, tmp_path) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.scrape import scrape_website

    state = scrape_website(url="https://example.org/", config=RunConfig(max_pages=5),
                           from_raw=str(tmp_path / "no-such-raw-activities.jsonl"), return_state=True)
    assert state.is_failed()
    flow_run_id = UUID(str(state.state_details.flow_run_id))

    def hook_lines() -> list[object]:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        return [log for log in logs if "(files kept for debugging)" in log.message]

    deadline = time.monotonic() + 30  # log lines reach the API in batches
    while not hook_lines() and time.monotonic() < deadline:
        time.sleep(0.2)
    (line,) = hook_lines()
    assert line.name == "prefect.flow_runs" and line.task_run_id is None  # type: ignore[attr-defined]
    assert f"run {flow_run_id} failed" in line.message  # type: ignore[attr-defined]
