"""README promises that had no test, checked on the stored state (rows, objects, dates), through whole flow
runs on Prefect's ephemeral API with Postgres, S3 (moto server) or a local folder, and the local stand-ins.

Faults are injected at real boundaries: a directory where the store must write or delete a file (the local
store's own OSError path), a renamed table, a stored file changed in the bucket. A run that must fail at a
given step gets its Prefect flow run created first, so its id (and so its storage keys) is known before it
starts, as a worker runs a deployment's flow run.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from harvest.db.engine import get_engine
from harvest.models import RunConfig
from tests.failures.support import file_rows, run_row, s3_object
from tests.helpers import reset_harvest_caches

DAY = timedelta(days=1)


def _scrape_with_known_id(url: str, config: RunConfig, prepare: Any = None, from_raw: str | None = None) -> Any:
    """Create the flow run, call `prepare(run_id)`, then run it in this process; returns its final state."""
    from prefect import get_client
    from prefect.flow_engine import run_flow

    from flows.scrape import scrape_website

    parameters: dict[str, Any] = {"url": url, "config": config, "from_raw": from_raw}
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(scrape_website, parameters=parameters)
    if prepare is not None:
        prepare(str(flow_run.id))
    return run_flow(scrape_website, flow_run=flow_run, parameters=parameters, return_type="state")


def _local_storage(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HARVEST_STORAGE_URL", root.as_uri())
    reset_harvest_caches()
    return root


def _block(path: Path) -> None:
    """A non-empty directory where the store will write or delete a file: every write/unlink of it fails."""
    (path / "blocker").mkdir(parents=True)
    (path / "blocker" / "keep").write_text("x")


def _undeletable(path: Path) -> Any:
    """Make `path` impossible to delete (root ignores permissions: the immutable flag; others: a read-only
    folder); returns the call that undoes it."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)
    path.parent.chmod(0o555)
    return lambda: path.parent.chmod(0o755)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _expires_after(row: dict[str, Any], days: int, before: datetime, after: datetime) -> None:
    expires = _aware(row["expires_at"])
    assert before + days * DAY <= expires <= after + days * DAY, (row["expires_at"], before, after)


def _rename_activities(db_url: str, away: bool) -> None:
    old, new = ("activities", "activities_away") if away else ("activities_away", "activities")
    with get_engine(db_url).begin() as connection:
        connection.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))


# -- a failure to store the raw activities or the final JSONL fails the run ----------------------------------

@pytest.mark.parametrize("kind", ["raw_activities", "final"])
def test_a_failure_to_store_the_raw_activities_or_the_final_jsonl_fails_the_run_and_keeps_it_30_days(
    harvest_env, monkeypatch, demo_site, tmp_path, kind
) -> None:
    root = _local_storage(monkeypatch, tmp_path / "store")
    db_url = harvest_env["HARVEST_DATABASE_URL"]
    before = datetime.now(UTC)
    state = _scrape_with_known_id(
        demo_site.base_url + "/", RunConfig(max_pages=20, max_extractions=6),
        prepare=lambda run_id: _block(root / "runs" / run_id / f"{kind}.jsonl"),
    )
    after = datetime.now(UTC)
    assert state.is_failed(), state.message
    run_id = str(state.state_details.flow_run_id)
    row = run_row(db_url, run_id)
    assert (row["status"], row["retention"]) == ("failed", "kept")
    assert f"{kind}.jsonl" in row["error"] and "cannot write" in row["error"], row["error"]
    _expires_after(row, 30, before, after)  # HARVEST_FAILED_RETENTION_DAYS, default 30
    files = file_rows(db_url, run_id)
    if kind == "raw_activities":
        assert not files, files  # nothing after the crawl ran
    else:
        assert {"raw_activities", "standardized", "merged"} <= set(files) and "final_jsonl" not in files, files
    for item in files.values():  # what was stored is kept for debugging
        assert item["deleted_at"] is None and Path(item["uri"].removeprefix("file://")).is_file(), item


# -- auto-import with failed records keeps the files (14 days); a failed run keeps them 30 days -------------

def test_auto_import_with_failed_records_keeps_every_file_for_14_days(harvest_env, s3, demo_site) -> None:
    from flows.resume import resume_flow_run

    db_url = harvest_env["HARVEST_DATABASE_URL"]
    started = datetime.now(UTC)
    _rename_activities(db_url, away=True)  # the first attempt's import fails: its table is gone
    try:
        state = _scrape_with_known_id(demo_site.base_url + "/", RunConfig(max_pages=20, max_extractions=6,
                                                                           auto_import=True))
    finally:
        _rename_activities(db_url, away=False)
    failed_at = datetime.now(UTC)
    assert state.is_failed()
    run_id = str(state.state_details.flow_run_id)
    row = run_row(db_url, run_id)
    assert (row["status"], row["retention"]) == ("failed", "kept")
    _expires_after(row, 30, started, failed_at)

    # One record of the stored final JSONL is now malformed (a date that is not one): the import counts it as
    # failed and imports the rest.
    final_uri = file_rows(db_url, run_id)["final_jsonl"]["uri"]
    bucket, _, key = final_uri.removeprefix("s3://").partition("/")
    body = s3_object(s3, final_uri)
    broken = json.loads(body.splitlines()[0])
    broken.update(id="broken-record", name="Broken record", start_date="not a date", content_hash="broken")
    s3.client().put_object(Bucket=bucket, Key=key, Body=body + json.dumps(broken).encode() + b"\n")

    resumed_at = datetime.now(UTC)
    resumed = resume_flow_run(run_id)
    done_at = datetime.now(UTC)
    assert resumed.is_completed(), resumed.message
    row = run_row(db_url, run_id)
    summary = row["import_summary"]
    assert summary["failed"] == 1 and summary["imported"] == row["activities_processed"] > 0, summary
    assert any("broken-record" in error for error in summary["errors"]), summary["errors"]
    assert (row["status"], row["retention"]) == ("completed", "kept")
    _expires_after(row, 14, resumed_at, done_at)  # HARVEST_RETENTION_DAYS, default 14
    files = file_rows(db_url, run_id)
    assert {"raw_activities", "standardized", "merged", "final_jsonl"} <= set(files)
    present = set(s3.keys(bucket))
    for item in files.values():
        assert item["deleted_at"] is None and item["uri"].removeprefix(f"s3://{bucket}/") in present, item


# -- a failed cleanup becomes cleanup_failed, and the next sweep finishes it ---------------------------------

def test_a_failed_cleanup_is_cleanup_failed_and_the_next_sweep_finishes_it(
    harvest_env, monkeypatch, demo_site, tmp_path
) -> None:
    from blocks.storage import resolve_store
    from flows.resume import resume_flow_run
    from harvest.retention.policy import RetentionPolicy, sweep
    from harvest.settings import get_settings

    root = _local_storage(monkeypatch, tmp_path / "store")
    db_url = harvest_env["HARVEST_DATABASE_URL"]
    _rename_activities(db_url, away=True)  # stop before the import, so the fault can be placed after the writes
    try:
        state = _scrape_with_known_id(demo_site.base_url + "/", RunConfig(max_pages=20, max_extractions=6,
                                                                           auto_import=True))
    finally:
        _rename_activities(db_url, away=False)
    assert state.is_failed()
    run_id = str(state.state_details.flow_run_id)
    raw = root / "runs" / run_id / "raw_activities.jsonl"  # the resumed run never reads it; cleanup deletes it
    allow_delete = _undeletable(raw)

    try:
        resumed = resume_flow_run(run_id)
        assert resumed.is_completed(), resumed.message  # a failed cleanup never fails a completed run
        row = run_row(db_url, run_id)
        store = resolve_store(get_settings())
        policy = RetentionPolicy()
        still = sweep(get_engine(db_url), store, policy, flow_run_state=lambda _: "COMPLETED")
    finally:
        allow_delete()
    assert row["import_summary"]["failed"] == 0 and row["import_summary"]["imported"] > 0
    assert row["retention"] == "cleanup_failed"
    assert any(w.startswith("cleanup: failed, left for a sweep") for w in row["warnings"]), row["warnings"]
    # A sweep while the file still cannot be deleted leaves the run as it is, and says why.
    assert run_id not in still.cleaned and run_row(db_url, run_id)["retention"] == "cleanup_failed"
    assert raw.is_file() and any(run_id in error for error in still.errors), still.errors

    swept = sweep(get_engine(db_url), store, policy, flow_run_state=lambda _: "COMPLETED")
    assert run_id in swept.cleaned, swept
    row = run_row(db_url, run_id)
    assert row["retention"] == "cleaned"
    files = file_rows(db_url, run_id)
    left = {kind for kind, item in files.items() if item["deleted_at"] is None}
    assert left == {"digest"}, left  # the digest stays for the next run's diff
    assert not raw.exists() and not (root / "runs" / run_id / "final.jsonl").exists()


# -- each distinct address is geocoded once, across chunks ---------------------------------------------------

def _raw_file(path: Path, addresses: list[str], per_address: int) -> str:
    with path.open("w") as out:
        for n in range(per_address):
            for a, address in enumerate(addresses):
                out.write(json.dumps({
                    "name": f"Activity {a}-{n}", "description": "A place to play.",
                    "location": {"name": f"Place {a}", "formattedAddress": address},
                    "tags": ["park"], "sourceUrl": f"https://example.org/{a}/{n}",
                }) + "\n")
    return str(path)


ADDRESSES = [f"{n} Main Rd, Eltham VIC 3095, Australia" for n in range(1, 9)]


def test_each_distinct_address_is_geocoded_once_across_chunks(
    harvest_env, monkeypatch, geocoder_server, tmp_path
) -> None:
    monkeypatch.setenv("HARVEST_ENRICH_CHUNK_SIZE", "3")  # 24 activities in 8 chunks: every address in 3 chunks
    reset_harvest_caches()
    raw = _raw_file(tmp_path / "raw.jsonl", ADDRESSES, per_address=3)
    state = _scrape_with_known_id("https://example.org/", RunConfig(), from_raw=raw)
    assert state.is_completed(), state.message
    asked = Counter(entry["query"].get("q") for entry in geocoder_server.requests_seen())
    assert set(asked) == set(ADDRESSES)
    assert max(asked.values()) == 1, asked.most_common(3)


# -- the flow takes the global geocoder and OpenAI limits ---------------------------------------------------

def test_the_flow_takes_the_global_geocoder_rate_and_openai_slot(
    harvest_env, monkeypatch, geocoder_server, openai_server, tmp_path
) -> None:
    from prefect import get_client
    from prefect.concurrency.sync import concurrency

    from blocks.register import register_limits
    from harvest.enrich.embeddings.enrichment import OPENAI_LIMIT
    from harvest.enrich.geocode.enrichment import GEOCODER_LIMIT
    from harvest.settings import HarvestSettings

    rate = 4.0
    with get_client(sync_client=True) as client:
        for name in (GEOCODER_LIMIT, OPENAI_LIMIT):
            try:
                client.delete_global_concurrency_limit_by_name(name)
            except Exception:  # noqa: BLE001 - absent is what we want
                pass
    register_limits(HarvestSettings(geocoder_rate_per_second=rate, openai_max_concurrent=1))
    # The process's own limiter is far faster (200/s): only the global limit can space the calls.
    raw = _raw_file(tmp_path / "raw.jsonl", ADDRESSES, per_address=1)
    released: dict[str, float] = {}
    holding = threading.Event()

    def hold_the_only_openai_slot() -> None:
        # Held until every address was geocoded (>= 1.75 s at 4/s, in the same enrichment as the embeddings
        # batch, which is submitted first): without the slot, its OpenAI calls would be long done by then.
        with concurrency(OPENAI_LIMIT, occupy=1, strict=True):
            holding.set()
            deadline = time.monotonic() + 300
            while len(geocoder_server.requests_seen()) < len(ADDRESSES) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            released["at"] = time.monotonic()

    holder = threading.Thread(target=hold_the_only_openai_slot)
    holder.start()
    try:
        assert holding.wait(60)
        state = _scrape_with_known_id("https://example.org/", RunConfig(), from_raw=raw)
    finally:
        holder.join()
        with get_client(sync_client=True) as client:
            for name in (GEOCODER_LIMIT, OPENAI_LIMIT):
                client.delete_global_concurrency_limit_by_name(name)
    assert state.is_completed(), state.message
    arrivals = sorted(entry["at"] for entry in geocoder_server.requests_seen())
    assert len(arrivals) == len(ADDRESSES)
    # n calls at `rate`/s span at least (n - 1)/rate seconds, less one slot of slack for the limiter's start.
    assert arrivals[-1] - arrivals[0] >= (len(arrivals) - 2) / rate, arrivals
    openai_calls = openai_server.arrivals()
    assert openai_calls, "the run made no OpenAI call"
    assert min(at for at, _, _ in openai_calls) >= released["at"], "an OpenAI call went out while the slot was held"
