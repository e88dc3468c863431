"""Waiting for the embeddings batch is one Running task with progress, not a retry storm (issue 29): the whole
flow on Prefect's API, against the OpenAI stand-in, whose batch needs several polls before it completes."""

from __future__ import annotations

from uuid import UUID

from harvest.models import RunConfig

POLLS = 5  # the stand-in's batch: validating, in_progress ..., finalizing, then completed on the 5th poll


def test_the_batch_wait_is_one_running_task_with_a_progress_artifact(harvest_env, demo_site, openai_server) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterTaskRunId, FlowRunFilter, FlowRunFilterId

    from flows.scrape import scrape_website

    openai_server.configure(polls_until_complete=POLLS)
    state = scrape_website(url=f"{demo_site.base_url}/?site=wait", config=RunConfig(max_pages=20, max_extractions=5),
                           return_state=True)
    assert state.is_completed(), state.message
    run_id = UUID(state.result().run_id)
    assert openai_server.stats()["batches.retrieve"] == POLLS

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        (collect,) = [run for run in task_runs if run.name.startswith("embeddings-")]
        history = [s.name for s in client.read_task_run_states(collect.id)]
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            task_run_id=ArtifactFilterTaskRunId(any_=[collect.id])))
    # One attempt that waited while Running: no Failed, no AwaitingRetry, no retry count.
    assert history == ["Pending", "Running", "Completed"], history
    assert collect.run_count == 1 and collect.empirical_policy.retries in (0, None)
    (progress,) = [artifact for artifact in artifacts if artifact.type == "progress"]
    assert "embeddings of run" in (progress.description or "") and "poll(s)" in (progress.description or "")
    assert 0 <= float(progress.data) <= 100  # type: ignore[arg-type]
