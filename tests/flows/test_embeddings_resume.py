"""An embeddings batch is paid for once per run. A submit task that runs again collects the batch an earlier
attempt submitted instead of submitting another: recorded in the run row (the worker killed before Prefect
stored the task's result: harvest.enrich.join.submitted_batch), or only created at OpenAI (killed before the
row recorded it: found by the run's id in its metadata, harvest.enrich.embeddings.batch.find_run_batch).

The tasks' own functions run inside a flow, twice, as the retry of a resumed run would run them: against
Postgres, the S3 stand-in and the OpenAI stand-in (Files + Batches over HTTP)."""

from __future__ import annotations

import uuid

from prefect import flow

from harvest.db import runs as run_rows
from harvest.models import Activity, FileRef, Location
from harvest.storage import write_jsonl
from harvest.storage.keys import run_key

MODEL = "text-embedding-3-small"


def _activities(count: int) -> list[Activity]:
    return [
        Activity(id=f"act{n:04d}", name=f"Playground {n}", description=f"Swings and slides number {n}.",
                 location=Location(name=f"Reserve {n}", formattedAddress=f"{n} Main Rd, Eltham VIC 3095, Australia"),
                 content_hash=f"h{n}")
        for n in range(count)
    ]


def _standardized(run_id: str, count: int) -> FileRef:
    from flows.resources import resources

    return write_jsonl(resources().store, run_key(run_id, "standardized", "jsonl"), "standardized", _activities(count))


@flow
def _submit_twice_then_collect(run_id: str, standardized: FileRef) -> tuple:
    from flows.tasks import collect_task, submit_task
    from harvest.enrich.embeddings.enrichment import EMBEDDINGS

    submit_embeddings_batch, poll_embeddings_batch = submit_task(EMBEDDINGS), collect_task(EMBEDDINGS)
    first = submit_embeddings_batch.fn(run_id, standardized, MODEL)
    again = submit_embeddings_batch.fn(run_id, standardized, MODEL)  # the attempt after the worker died
    files = poll_embeddings_batch.fn(run_id, standardized, again)
    after_collect = submit_embeddings_batch.fn(run_id, standardized, MODEL)
    return first, again, files, after_collect


def test_a_recorded_submission_is_collected_again_not_paid_for_twice(harvest_env, openai_server) -> None:
    from flows.resources import resources

    openai_server.configure(polls_until_complete=1)
    engine = resources().engine
    run_id = str(uuid.uuid4())
    run_rows.create_run(engine, run_id, "https://example.org/", {})
    standardized = _standardized(run_id, 12)

    first, again, files, after_collect = _submit_twice_then_collect(run_id, standardized)

    assert openai_server.stats()["batches.create"] == 1, "the second attempt submitted another batch"
    assert again == first and first.batch_id and first.prefill_uri
    assert {ref.kind for ref in files} == {"embeddings", "embeddings_index"}
    # Once collected (the prefill dropped), the same batch comes back complete: its files, nothing to poll.
    assert after_collect.batch_id == first.batch_id and after_collect.complete
    assert {ref.uri for ref in after_collect.files} == {ref.uri for ref in files}
    assert openai_server.stats()["batches.create"] == 1


def test_a_batch_created_but_never_recorded_is_found_by_its_run_and_collected(
    harvest_env, openai_server, tmp_path
) -> None:
    from flows.resources import resources
    from harvest.enrich.embeddings.batch import submit_batch, write_batch_input
    from harvest.net.openai_client import make_openai_client

    openai_server.configure(polls_until_complete=1)
    engine = resources().engine
    run_id = str(uuid.uuid4())
    run_rows.create_run(engine, run_id, "https://example.org/", {})
    standardized = _standardized(run_id, 12)
    # The earlier attempt: OpenAI created its batch, the worker was killed before the run row recorded it.
    client = make_openai_client(harvest_env["OPENAI_API_KEY"], openai_server.base_url)
    path = tmp_path / "input.jsonl"
    with path.open("wb") as out:
        write_batch_input(_activities(12), MODEL, out)
    earlier = submit_batch(client, path, metadata={"harvest_run_id": run_id})
    submit_batch(client, path, metadata={"harvest_run_id": str(uuid.uuid4())})  # another run's, newer
    created = openai_server.stats()["batches.create"]

    @flow
    def submit_and_collect() -> tuple:
        from flows.tasks import collect_task, submit_task
        from harvest.enrich.embeddings.enrichment import EMBEDDINGS

        submit_embeddings_batch, poll_embeddings_batch = submit_task(EMBEDDINGS), collect_task(EMBEDDINGS)
        batch = submit_embeddings_batch.fn(run_id, standardized, MODEL)
        return batch, poll_embeddings_batch.fn(run_id, standardized, batch)

    batch, files = submit_and_collect()
    assert openai_server.stats()["batches.create"] == created, "the run paid for its lines a second time"
    assert batch.batch_id == earlier.batch_id
    row = run_rows.get_run(engine, run_id)
    assert row["steps"]["embeddings_submit"]["details"]["batch_found"] == 1
    assert row["steps"]["embeddings"]["items_out"] == 12  # every activity got its vector from the found batch
    assert {ref.kind for ref in files} == {"embeddings", "embeddings_index"}


def test_a_submission_for_another_model_is_not_reused(harvest_env, openai_server) -> None:
    from flows.resources import resources
    from harvest.enrich.embeddings.resume import submitted_batch

    engine = resources().engine
    run_id = str(uuid.uuid4())
    run_rows.create_run(engine, run_id, "https://example.org/", {})
    standardized = _standardized(run_id, 3)

    @flow
    def submit_once() -> object:
        from flows.tasks import submit_task
        from harvest.enrich.embeddings.enrichment import EMBEDDINGS

        submit_embeddings_batch = submit_task(EMBEDDINGS)
        return submit_embeddings_batch.fn(run_id, standardized, MODEL)

    batch = submit_once()
    assert submitted_batch(engine, run_id, MODEL) == batch
    assert submitted_batch(engine, run_id, "text-embedding-3-large") is None
    assert submitted_batch(engine, str(uuid.uuid4()), MODEL) is None  # a run that submitted nothing
