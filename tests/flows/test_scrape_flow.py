"""The scrape-website flow end to end on Prefect's ephemeral API, against real Postgres, a real S3
endpoint (moto server), the demo site on loopback, and the local OpenAI/geocoder wire-protocol servers."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from harvest.db.engine import get_engine
from harvest.db.schema import activities, run_files, scrape_runs
from harvest.models import RunConfig

ALL_KINDS = {
    "raw_activities", "standardized", "images_map", "geocoded_map", "embeddings_batch_input",
    "embeddings", "embeddings_index", "merged", "final_jsonl", "final_index", "diff", "digest",
}


def run(url: str, **config: object):  # noqa: ANN201 - a Prefect State
    from flows.scrape import scrape_website

    return scrape_website(url=url, config=RunConfig(**config), return_state=True)


def run_row(db_url: str, run_id: str) -> dict:
    with get_engine(db_url).begin() as connection:
        return dict(connection.execute(sa.select(scrape_runs).where(scrape_runs.c.id == run_id)).mappings().one())


def file_rows(db_url: str, run_id: str) -> dict[str, dict]:
    with get_engine(db_url).begin() as connection:
        rows = connection.execute(sa.select(run_files).where(run_files.c.run_id == run_id)).mappings()
        return {row["kind"]: dict(row) for row in rows}


def s3_object(s3, uri: str) -> bytes:  # noqa: ANN001
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def test_run_without_auto_import_keeps_every_file_and_records_it(harvest_env, s3, demo_site) -> None:
    state = run(demo_site.base_url + "/", max_pages=200, max_extractions=1000)
    assert state.is_completed(), state.message
    summary = state.result()
    row = run_row(harvest_env["HARVEST_DATABASE_URL"], summary.run_id)
    assert (row["status"], row["retention"]) == ("completed", "kept")
    assert row["activities_processed"] == summary.activities_processed > 0

    files = file_rows(harvest_env["HARVEST_DATABASE_URL"], summary.run_id)
    assert set(files) == ALL_KINDS
    for kind, item in files.items():
        body = s3_object(s3, item["uri"])
        assert len(body) == item["bytes"], kind
        assert hashlib.sha256(body).hexdigest() == item["sha256"], kind
        prefix = "digests/" if kind == "digest" else f"runs/{summary.run_id}/"
        assert item["uri"].startswith(f"s3://{harvest_env['HARVEST_BUCKET']}/harvest/{prefix}")
        assert item["deleted_at"] is None

    merged = jsonl(s3_object(s3, files["merged"]["uri"]))
    final = jsonl(s3_object(s3, files["final_jsonl"]["uri"]))
    geocoded = jsonl(s3_object(s3, files["geocoded_map"]["uri"]))
    with open("/dev/null"):  # the embeddings matrix, read back as numpy
        import io

        matrix = np.load(io.BytesIO(s3_object(s3, files["embeddings"]["uri"])))
    assert matrix.dtype == np.float32 and matrix.shape == (len(final), 1536)
    assert [m["activity"]["id"] for m in merged] == [f["id"] for f in final] == [g["id"] for g in geocoded]
    for merged_row, final_row, geocode in zip(merged, final, geocoded):
        activity = merged_row["activity"]
        assert final_row["name"] == activity["name"]
        assert final_row["location"]["formatted_address"] == activity["location"]["formattedAddress"]
        assert final_row["location"]["latitude"] == geocode.get("latitude")
        if merged_row["embedding_row"] is not None:
            assert np.allclose(final_row["embedding"], matrix[merged_row["embedding_row"]])
        if merged_row["image"]:
            assert final_row["image"]["uri"] == merged_row["image"]["uri"]
            assert final_row["image"]["width"] <= 1200 and final_row["image"]["height"] <= 630
    assert sum(1 for f in final if f["embedding"]) == len(final)
    assert sum(1 for f in final if f["location"]["latitude"] is not None) > len(final) // 2
    assert sum(1 for f in final if f["image"]) > 0
    # Only references travel between tasks: a few KB whatever the number of activities.
    assert summary.bytes_between_tasks < 16_000
    # The URL's first run: everything is added.
    assert row["diff"] == {"added": len(final), "removed": 0, "changed": 0, "unchanged": 0}
    assert row["previous_run_id"] is None
    # Every object the run wrote is under its prefix, its digest, or a content-addressed image.
    for key in s3.keys(harvest_env["HARVEST_BUCKET"]):
        assert key.startswith(
            (f"harvest/runs/{summary.run_id}/", "harvest/images/", f"harvest/digests/{summary.run_id}.jsonl")
        ), key


def test_auto_import_deletes_run_files_and_reimport_adds_no_duplicates(harvest_env, s3, demo_site) -> None:
    db_url, bucket = harvest_env["HARVEST_DATABASE_URL"], harvest_env["HARVEST_BUCKET"]
    state = run(demo_site.base_url + "/", max_pages=200, max_extractions=1000, auto_import=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary.import_summary.imported == summary.activities_processed > 0
    row = run_row(db_url, summary.run_id)
    assert (row["status"], row["retention"]) == ("completed", "cleaned")
    assert s3.keys(bucket, f"harvest/runs/{summary.run_id}/") == []
    assert s3.keys(bucket, "harvest/images/"), "content-addressed images must survive cleanup"
    files = file_rows(db_url, summary.run_id)
    assert all(item["deleted_at"] is not None for kind, item in files.items() if kind != "digest")
    assert files["digest"]["deleted_at"] is None, "the digest stays for the next run's diff"
    with get_engine(db_url).begin() as connection:
        count = connection.execute(sa.select(sa.func.count()).select_from(activities)).scalar_one()
        embedded = connection.execute(
            sa.select(sa.func.count()).select_from(activities).where(activities.c.embedding.is_not(None))
        ).scalar_one()
    assert count == summary.activities_processed and embedded == count

    # A second scrape of the same site adds no rows. (Among activities the site lists twice with different
    # details, which copy comes first depends on crawl order, so a few may count as updated, not skipped.)
    again = run(demo_site.base_url + "/", max_pages=200, max_extractions=1000, auto_import=True).result()
    assert again.import_summary.imported == 0 and again.import_summary.failed == 0
    assert again.import_summary.updated + again.import_summary.skipped == again.activities_processed
    assert again.import_summary.skipped >= again.activities_processed - 5
    # ... and its diff against the first run (whose records are gone, but not its digest) finds nothing new.
    second = run_row(db_url, again.run_id)
    assert second["previous_run_id"] == summary.run_id
    assert second["diff"]["added"] == second["diff"]["removed"] == 0
    assert second["diff"]["unchanged"] + second["diff"]["changed"] == again.activities_processed
    assert second["diff"]["changed"] <= 5
    with get_engine(db_url).begin() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(activities)).scalar_one() == count


def test_failed_batch_completes_without_embeddings_and_says_so(harvest_env, s3, demo_site, openai_server) -> None:
    openai_server.configure(batch_outcome="failed")
    state = run(demo_site.base_url + "/", max_pages=30, max_extractions=10)
    assert state.is_completed(), state.message
    summary = state.result()
    assert any("embeddings" in w and "failed" in w for w in summary.warnings), summary.warnings
    final = jsonl(s3_object(s3, summary.files["final_jsonl"].uri))
    assert final and all(record["embedding"] is None for record in final)
    assert "embeddings" not in summary.files


def test_no_openai_key_skips_embeddings_with_a_visible_warning(harvest_env, demo_site, monkeypatch) -> None:
    from tests.helpers import reset_harvest_caches

    monkeypatch.delenv("OPENAI_API_KEY")
    reset_harvest_caches()
    summary = run(demo_site.base_url + "/", max_pages=30, max_extractions=10).result()
    assert any("OPENAI_API_KEY not set" in w for w in summary.warnings)
    assert summary.activities_processed > 0


def test_invalid_url_is_refused_before_a_run_row_exists(harvest_env) -> None:
    state = run("ftp://example.com/")
    assert state.is_failed()
    assert "only http and https" in str(state.result(raise_on_failure=False))
    with get_engine(harvest_env["HARVEST_DATABASE_URL"]).begin() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(scrape_runs)).scalar_one() == 0


def test_storage_outage_mid_run_fails_the_run_and_keeps_the_record(harvest_env, monkeypatch, demo_site, openai_server) -> None:
    from testkit.s3 import MotoS3
    from tests.helpers import reset_harvest_caches

    outage = MotoS3().start()
    bucket = outage.new_bucket()
    monkeypatch.setenv("HARVEST_STORAGE_URL", f"s3://{bucket}/harvest")
    monkeypatch.setenv("HARVEST_S3_ENDPOINT_URL", outage.endpoint)
    reset_harvest_caches()
    db_url = harvest_env["HARVEST_DATABASE_URL"]

    def stop_s3_after_standardize() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with get_engine(db_url).begin() as connection:
                kinds = set(connection.execute(sa.select(run_files.c.kind)).scalars())
            if "standardized" in kinds:  # S3 dies as enrichment starts
                outage.kill()
                return
            time.sleep(0.02)

    stopper = threading.Thread(target=stop_s3_after_standardize)
    stopper.start()
    try:
        state = run(demo_site.base_url + "/", max_pages=30, max_extractions=10)
    finally:
        stopper.join()
        outage.stop()
    assert state.is_failed()
    with get_engine(db_url).begin() as connection:
        row = connection.execute(sa.select(scrape_runs)).mappings().one()
    assert (row["status"], row["retention"]) == ("failed", "kept")
    assert row["error"] and ("S3" in row["error"] or "Storage" in row["error"])
    kinds = set(file_rows(db_url, row["id"]))
    assert {"raw_activities", "standardized"} <= kinds
    assert any("step failed, continuing without it" in w for w in row["warnings"]), row["warnings"]
    assert all(item["deleted_at"] is None for item in file_rows(db_url, row["id"]).values())


def test_resumed_run_skips_completed_steps(harvest_env, demo_site, openai_server, geocoder_server) -> None:
    from flows.resume import resume_flow_run

    db_url = harvest_env["HARVEST_DATABASE_URL"]
    with get_engine(db_url).begin() as connection:  # make the import step fail: its table is gone
        connection.execute(sa.text("ALTER TABLE activities RENAME TO activities_away"))
    try:
        state = run(demo_site.base_url + "/", max_pages=30, max_extractions=10, auto_import=True)
    finally:
        with get_engine(db_url).begin() as connection:
            connection.execute(sa.text("ALTER TABLE activities_away RENAME TO activities"))
    assert state.is_failed()
    run_id = str(state.state_details.flow_run_id)
    assert run_row(db_url, run_id)["status"] == "failed"

    pages_before = demo_site.total_requests()
    openai_before = openai_server.stats()
    geocoder_before = geocoder_server.stats()
    resumed = resume_flow_run(run_id)
    assert resumed.is_completed(), resumed.message
    assert demo_site.total_requests() == pages_before, "a resumed run must not crawl again"
    assert openai_server.stats() == openai_before, "a resumed run must not call OpenAI again"
    assert geocoder_server.stats() == geocoder_before
    row = run_row(db_url, run_id)
    assert (row["status"], row["retention"]) == ("completed", "cleaned")
    assert row["import_summary"]["imported"] == row["activities_processed"] > 0


def test_a_site_without_activities_completes_with_zero_and_says_so(harvest_env, demo_site) -> None:
    state = run(demo_site.base_url + "/", max_depth=0)  # only the index page: a listing, no activity on it
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary.activities_processed == 0
    assert any("no activities found" in w for w in summary.warnings), summary.warnings
    assert summary.files["final_jsonl"].records == 0


def test_from_raw_starts_without_a_crawl_and_skips_malformed_lines(harvest_env, demo_site, tmp_path) -> None:
    source = tmp_path / "raw.jsonl"
    fixture = json.loads((Path(__file__).resolve().parents[2] / "testkit/data/melbourne-activities.json").read_text())
    lines = [json.dumps(record) for record in fixture[:40]] + ['{"name": ["not", "a", "string"]}']
    source.write_text("\n".join(lines) + "\n")
    requests_before = demo_site.total_requests()
    from flows.scrape import scrape_website

    summary = scrape_website(url="https://example.org/", config=RunConfig(), from_raw=str(source))
    assert demo_site.total_requests() == requests_before
    assert summary.files["raw_activities"].records == 40
    assert any("line 41 is not a raw activity" in w for w in summary.warnings), summary.warnings
    assert 0 < summary.activities_processed <= 40

    # A kept run's raw file, by its storage URI, starts another run.
    again = scrape_website(url="https://example.org/", config=RunConfig(), from_raw=summary.files["raw_activities"].uri)
    assert again.files["raw_activities"].records == 40
    assert again.activities_processed == summary.activities_processed


def test_enrichment_fans_out_in_chunks_joined_in_order(harvest_env, s3, demo_site, monkeypatch) -> None:
    from tests.helpers import reset_harvest_caches

    monkeypatch.setenv("HARVEST_ENRICH_CHUNK_SIZE", "4")
    monkeypatch.setenv("HARVEST_ENRICH_MAX_CHUNKS", "3")
    reset_harvest_caches()
    state = run(demo_site.base_url + "/", max_pages=200, max_extractions=1000)
    assert state.is_completed(), state.message
    summary = state.result()
    db_url, bucket = harvest_env["HARVEST_DATABASE_URL"], harvest_env["HARVEST_BUCKET"]
    row = run_row(db_url, summary.run_id)
    files = file_rows(db_url, summary.run_id)
    assert not any(".part-" in kind for kind in files), "parts are consumed by the join"
    assert not any(".part-" in key for key in s3.keys(bucket, f"harvest/runs/{summary.run_id}/"))
    standardized = jsonl(s3_object(s3, files["standardized"]["uri"]))
    n = len(standardized)
    assert n > 8, "enough activities for three chunks"
    for kind, step in (("images_map", "images"), ("geocoded_map", "geocode")):
        lines = jsonl(s3_object(s3, files[kind]["uri"]))
        assert [line["id"] for line in lines] == [a["id"] for a in standardized], kind  # in order, none lost
        assert files[kind]["records"] == n
        assert row["steps"][step]["details"]["chunks"] == 3 and row["steps"][step]["items_in"] == n
        assert not any(name.startswith(f"{step}.") for name in row["steps"])
    final = jsonl(s3_object(s3, files["final_jsonl"]["uri"]))
    assert [f["id"] for f in final] == [a["id"] for a in standardized]
    # 3 image chunks + join, 3 geocode chunks + join, and crawl, standardize, submit, poll, merge, final, diff.
    assert summary.task_runs == 15
    assert summary.bytes_between_tasks < 16_000

    # Unchanged, the site again: every address is in the geocode cache, so geocoding is one chunk (the fan-out
    # follows the records that cost a request); each image is still revalidated (a request), so three chunks.
    again = run(demo_site.base_url + "/", max_pages=200, max_extractions=1000)
    assert again.is_completed(), again.message
    rerun = again.result()
    row = run_row(db_url, rerun.run_id)
    files_again = file_rows(db_url, rerun.run_id)
    assert row["steps"]["geocode"]["details"]["chunks"] == 1 and row["steps"]["geocode"]["items_in"] == n
    assert row["steps"]["geocode"]["details"]["geocoder_calls"] == 0
    assert row["steps"]["images"]["details"]["chunks"] == 3
    for kind in ("images_map", "geocoded_map"):
        before = jsonl(s3_object(s3, files[kind]["uri"]))
        after = jsonl(s3_object(s3, files_again[kind]["uri"]))
        assert [line["id"] for line in after] == [line["id"] for line in before], kind
        if kind == "geocoded_map":
            assert [(x["latitude"], x["longitude"]) for x in after] == [(x["latitude"], x["longitude"]) for x in before]
    # 3 image chunks + join, 1 geocode chunk + join, crawl, standardize, submit, merge, final, diff: every vector
    # is reused from the first run's kept final JSONL (issue 27 item 8), so there is no batch to poll.
    assert rerun.task_runs == 12
    assert row["steps"]["embeddings_submit"]["details"]["reused"] == n
