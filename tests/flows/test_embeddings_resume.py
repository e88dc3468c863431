"""An embeddings batch is paid for once per run. A submit task that runs again collects the batch an earlier
attempt submitted instead of submitting another: recorded in the run row (the worker killed before Prefect
stored the task's result: harvest.enrich.join.submitted_batch), or only created at OpenAI (killed before the
row recorded it: found by the run's id in its metadata, harvest.enrich.embeddings.batch.run_batches, and
collected only when its input is this attempt's).

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
    from harvest.enrich.embeddings.batch import submit_batch, write_batch_parts
    from harvest.net.openai_client import make_openai_client
    from harvest.settings import get_settings

    openai_server.configure(polls_until_complete=1)
    engine = resources().engine
    run_id = str(uuid.uuid4())
    run_rows.create_run(engine, run_id, "https://example.org/", {})
    standardized = _standardized(run_id, 12)
    # The earlier attempt: OpenAI created its batch, the worker was killed before the run row recorded it.
    client = make_openai_client(harvest_env["OPENAI_API_KEY"], openai_server.base_url)
    [(path, _)] = write_batch_parts(_activities(12), MODEL, tmp_path, dimensions=get_settings().embedding_dimensions)
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


def _client(harvest_env):  # noqa: ANN001, ANN202
    from harvest.net.openai_client import make_openai_client

    return make_openai_client(harvest_env["OPENAI_API_KEY"], harvest_env["OPENAI_BASE_URL"])


def _earlier_batch(harvest_env, tmp_path, run_id: str, activities: list[Activity], dimensions: int):  # noqa: ANN001, ANN202
    """What an earlier attempt left at OpenAI: its batch, created but never recorded (the worker was killed)."""
    from harvest.enrich.embeddings.batch import submit_batch, write_batch_parts

    [(path, _)] = write_batch_parts(activities, MODEL, tmp_path, dimensions=dimensions)
    return submit_batch(_client(harvest_env), path, metadata={"harvest_run_id": run_id})


@flow
def _submit_and_collect(run_id: str, standardized: FileRef) -> tuple:
    from flows.tasks import collect_task, submit_task
    from harvest.enrich.embeddings.enrichment import EMBEDDINGS

    submit_embeddings_batch, poll_embeddings_batch = submit_task(EMBEDDINGS), collect_task(EMBEDDINGS)
    batch = submit_embeddings_batch.fn(run_id, standardized, MODEL)
    return batch, poll_embeddings_batch.fn(run_id, standardized, batch)


def _new_run(count: int) -> tuple[str, FileRef]:
    from flows.resources import resources

    run_id = str(uuid.uuid4())
    run_rows.create_run(resources().engine, run_id, "https://example.org/", {})
    return run_id, _standardized(run_id, count)


def _steps(run_id: str) -> dict:
    from flows.resources import resources

    return run_rows.get_run(resources().engine, run_id)["steps"]


def test_5_a_found_batch_for_other_lines_is_not_adopted_and_every_row_gets_its_vector(
    harvest_env, openai_server, tmp_path
) -> None:
    """The earlier attempt sent 10 of the 12 lines (the other two had stored vectors then, changed since): its
    batch is not this attempt's input, so it is not collected in place of it."""
    openai_server.configure(polls_until_complete=1)
    run_id, standardized = _new_run(12)
    _earlier_batch(harvest_env, tmp_path, run_id, _activities(12)[:10], 1536)

    _submit_and_collect(run_id, standardized)

    steps = _steps(run_id)
    assert steps["embeddings"]["items_out"] == 12, (
        f"rows ended without a vector: {steps['embeddings']['items_out']} of 12 ({steps['embeddings']})")
    assert "batch_found" not in steps["embeddings_submit"]["details"]


def test_5_a_changed_dimensions_setting_does_not_fail_the_collection(
    harvest_env, openai_server, monkeypatch
) -> None:
    """Submitted at 1,536 dimensions and recorded; the resumed attempt runs with HARVEST_EMBEDDING_DIMENSIONS=512."""
    from flows.resources import resources
    from tests.helpers import reset_harvest_caches

    openai_server.configure(polls_until_complete=1)
    run_id, standardized = _new_run(6)

    @flow
    def submit_once() -> object:
        from flows.tasks import submit_task
        from harvest.enrich.embeddings.enrichment import EMBEDDINGS

        return submit_task(EMBEDDINGS).fn(run_id, standardized, MODEL)

    submit_once()
    monkeypatch.setenv("HARVEST_EMBEDDING_DIMENSIONS", "512")
    reset_harvest_caches()
    try:
        batch, files = _submit_and_collect(run_id, standardized)
        steps = _steps(run_id)
        assert steps["embeddings"]["items_out"] == 6, steps["embeddings"]
        assert batch.dimensions == 512
        cost = __import__("harvest.db.ledger", fromlist=["run_cost"]).run_cost(resources().engine, run_id)
        assert cost["reserved_usd"] == 0, f"the uncollected batch's hold stayed: {cost}"
    finally:
        monkeypatch.delenv("HARVEST_EMBEDDING_DIMENSIONS")
        reset_harvest_caches()


def test_5_the_finished_lines_of_an_expired_earlier_batch_are_kept_and_not_sent_again(
    harvest_env, openai_server, tmp_path
) -> None:
    openai_server.configure(polls_until_complete=1, batch_outcome="expired")
    run_id, standardized = _new_run(12)
    earlier = _earlier_batch(harvest_env, tmp_path, run_id, _activities(12), 1536)
    assert _client(harvest_env).batches.retrieve(earlier.batch_id).status == "expired"
    assert openai_server.stats()["batches.lines"] == 6  # the half it finished before the window ended
    openai_server.configure(batch_outcome="completed")

    _submit_and_collect(run_id, standardized)

    lines = openai_server.stats()["batches.lines"]
    assert lines == 12, f"{lines - 6} lines sent again for 6 missing: the finished ones were paid for twice"
    steps = _steps(run_id)
    assert steps["embeddings"]["items_out"] == 12
    assert steps["embeddings_submit"]["details"]["kept_from_earlier_batches"] == 6


def test_6_a_run_over_the_batch_limits_is_split_and_each_part_resumes_on_its_own(
    harvest_env, openai_server, tmp_path, monkeypatch
) -> None:
    """The stand-in enforces OpenAI's per-batch limits, lowered here (5 requests, 700 bytes) as harvest's are; an
    earlier attempt submitted the first part only and died: that part is collected, the other parts submitted."""
    import json

    from harvest.enrich.embeddings.batch import submit_batch, write_batch_parts
    from tests.helpers import reset_harvest_caches

    openai_server.configure(polls_until_complete=2, max_batch_requests=5, max_batch_file_bytes=700)
    monkeypatch.setenv("HARVEST_BATCH_MAX_REQUESTS", "5")
    monkeypatch.setenv("HARVEST_BATCH_MAX_BYTES", "700")
    reset_harvest_caches()
    try:
        run_id, standardized = _new_run(12)
        parts = write_batch_parts(_activities(12), MODEL, tmp_path, dimensions=1536, max_requests=5, max_bytes=700)
        assert len(parts) >= 3
        submit_batch(_client(harvest_env), parts[0][0], metadata={"harvest_run_id": run_id})
        created = openai_server.stats()["batches.create"]

        batch, files = _submit_and_collect(run_id, standardized)

        stats = openai_server.stats()
        assert stats.get("rejected.too_many_requests", 0) == stats.get("rejected.file_too_large", 0) == 0, stats
        assert len(batch.parts) == len(parts) and stats["batches.create"] - created == len(parts) - 1
        for part in batch.parts:
            data = openai_server.file_content(part.input_file_id)
            assert len(data) <= 700 and len(data.splitlines()) <= 5
        assert sorted(json.loads(line)["custom_id"] for part in batch.parts
                      for line in openai_server.file_content(part.input_file_id).splitlines()) == [
            a.id for a in _activities(12)]
        steps = _steps(run_id)
        assert steps["embeddings"]["items_out"] == 12, steps["embeddings"]
        assert steps["embeddings_submit"]["details"]["batch_found"] == 1
        assert stats["batches.lines"] == 12, "a line was paid for twice"
    finally:
        monkeypatch.delenv("HARVEST_BATCH_MAX_REQUESTS")
        monkeypatch.delenv("HARVEST_BATCH_MAX_BYTES")
        reset_harvest_caches()
