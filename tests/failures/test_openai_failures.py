"""OpenAI failing mid-run, through the whole scrape-website flow (ephemeral Prefect API, Postgres, moto S3,
the demo site and the local OpenAI wire-protocol server, driven by the real `openai` SDK).

Already covered elsewhere, not repeated here: the SDK's backoff on 429/500 for `files.create`,
`batches.create` and the synchronous `/v1/embeddings` (tests/unit/enrich/embeddings/test_embeddings.py), a batch that ends
`failed` in a flow run (tests/flows/test_scrape_flow.py::test_failed_batch_completes_without_embeddings_and_says_so),
and per-line parsing of error/expired/non-finite lines (tests/unit/enrich/embeddings/test_embeddings.py).
"""

from __future__ import annotations

import threading

import pytest

from tests.failures.support import SMALL, activity_rows, file_rows, jsonl, run_row, s3_object, scrape, wait_for


def test_429_and_500_on_every_batch_call_are_retried_and_the_run_completes_with_every_vector(
    harvest_env, s3, demo_site, openai_server
) -> None:
    # One injected failure on each call the batch path makes: the look for a batch this run submitted before
    # (429), upload (429), create (429), two polls (500, 429), the output download (500). Rules are matched by
    # path prefix, in order.
    openai_server.configure(fail=[
        {"path": "/v1/files/", "count": 1, "status": 500, "retry_after": 0.05},    # GET …/content
        {"path": "/v1/files", "count": 1, "status": 429, "retry_after": 0.05},     # POST /v1/files
        {"path": "/v1/batches/", "count": 1, "status": 500, "retry_after": 0.05},  # GET /v1/batches/{id}
        {"path": "/v1/batches/", "count": 1, "status": 429, "retry_after": 0.05},
        {"path": "/v1/batches", "count": 1, "status": 429, "retry_after": 0.05, "method": "GET"},  # the look
        {"path": "/v1/batches", "count": 1, "status": 429, "retry_after": 0.05, "method": "POST"},  # create
    ])
    state = scrape(demo_site.base_url + "/", **SMALL)
    assert state.is_completed(), state.message
    summary = state.result()

    stats = openai_server.stats()
    assert stats["injected.429"] == 4 and stats["injected.500"] == 2, stats
    assert stats["batches.list"] == 2, "the refused look for an earlier batch was sent again"
    assert stats["files.create"] == 2 and stats["batches.create"] == 2, "each refused call was sent again"
    assert stats["files.content"] == 2
    assert stats["batches.lines"] == summary.activities_processed, "one batch, not a second paid one"
    assert not [w for w in summary.warnings if w.startswith("embeddings")], summary.warnings
    final = jsonl(s3_object(s3, summary.files["final_jsonl"].uri))
    assert len(final) == summary.activities_processed > 0
    assert all(record["embedding"] and len(record["embedding"]) == 1536 for record in final)


@pytest.mark.parametrize("outcome", ["expired", "cancelled"])
def test_a_batch_that_ends_expired_or_cancelled_part_way_keeps_the_vectors_it_finished_and_says_which(
    harvest_env, s3, demo_site, openai_server, outcome
) -> None:
    """As the real API does, the stand-in ends the batch part-way: half its lines are in the output file (in
    shuffled order), the rest are batch_expired/batch_cancelled lines of its error file. The run completes,
    keeps the finished vectors, and says how far the batch got."""
    openai_server.configure(batch_outcome=outcome)
    state = scrape(demo_site.base_url + "/", **SMALL, auto_import=True)
    assert state.is_completed(), state.message
    summary = state.result()
    db_url = harvest_env["HARVEST_DATABASE_URL"]

    warnings = [w for w in summary.warnings if w.startswith("embeddings")]
    [ended] = [w for w in warnings if f"ended {outcome}" in w]
    assert "kept those vectors" in ended, ended
    assert ended in run_row(db_url, summary.run_id)["warnings"]
    # Nothing else is lost: every activity is imported, geocoded where the geocoder could; the first half of
    # the batch has its vector, the rest none, each named in a warning.
    rows = activity_rows(db_url)
    assert len(rows) == summary.activities_processed == summary.import_summary.imported > 0
    with_vector = sum(1 for row in rows if row["embedding"] is not None)
    assert with_vector == len(rows) // 2, (with_vector, len(rows))
    assert sum(1 for row in rows if row["latitude"] is not None) > len(rows) // 2


def test_per_line_errors_and_wrong_dimensions_lose_only_those_vectors(harvest_env, s3, demo_site, openai_server) -> None:
    """The batch completes, but two lines are errors (in the error file) and one vector has half the
    dimensions: those three activities have no vector, one warning each names them, the rest are kept."""
    db_url = harvest_env["HARVEST_DATABASE_URL"]
    openai_server.configure(polls_until_complete=1_000_000)  # hold the batch until the ids are chosen
    chosen: dict[str, list[str]] = {}

    def choose_failing_lines() -> None:
        def batch_input() -> bytes | None:
            rows = [r for r in _runs(db_url) if "embeddings_batch_input" in file_rows(db_url, r)]
            if not rows:
                return None
            return s3_object(s3, file_rows(db_url, rows[0])["embeddings_batch_input"]["uri"])

        ids = [line["custom_id"] for line in jsonl(wait_for(batch_input, 120, "the batch input file"))]
        chosen["errors"], chosen["short"] = ids[:2], ids[2:3]
        openai_server.configure(error_ids=chosen["errors"], wrong_dimension_ids=chosen["short"], polls_until_complete=1)

    chooser = threading.Thread(target=choose_failing_lines)
    chooser.start()
    try:
        state = scrape(demo_site.base_url + "/", **SMALL, auto_import=True, keep_files=True)
    finally:
        chooser.join()
    assert state.is_completed(), state.message
    summary = state.result()
    bad = set(chosen["errors"]) | set(chosen["short"])

    warnings = [w for w in summary.warnings if w.startswith("embeddings")]
    assert len(warnings) == 3, warnings
    for activity_id in chosen["errors"]:
        assert any(f"no embedding for {activity_id}: HTTP 500" in w for w in warnings), warnings
    [short] = chosen["short"]
    assert any(f"no embedding for {short}: wrong dimension 768 (expected 1536)" in w for w in warnings), warnings
    step = run_row(db_url, summary.run_id)["steps"]["embeddings"]
    assert (step["items_in"], step["items_out"], step["skipped"]) == (summary.activities_processed,
                                                                     summary.activities_processed - 3, 3)

    index = {line["id"]: line for line in jsonl(s3_object(s3, summary.files["embeddings_index"].uri))}
    assert {i for i, line in index.items() if not line["ok"]} == bad
    final = jsonl(s3_object(s3, summary.files["final_jsonl"].uri))
    assert len(final) == summary.activities_processed
    assert {r["id"] for r in final if r["embedding"] is None} == bad
    assert all(len(r["embedding"]) == 1536 for r in final if r["id"] not in bad)
    rows = {row["id"]: row for row in activity_rows(db_url)}
    assert len(rows) == summary.activities_processed, "every activity imported, with or without a vector"
    assert {i for i, row in rows.items() if row["embedding"] is None} == bad


def _runs(db_url: str) -> list[str]:
    from tests.failures.support import all_runs

    return [r["id"] for r in all_runs(db_url)]
