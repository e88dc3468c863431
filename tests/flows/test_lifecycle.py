"""The review lifecycle through the real flows (ephemeral Prefect API, Postgres, moto S3, loopback site and
API stand-ins): diff of a site that changed, manual import, one run per URL, the sweep flow and CLI, the
shared rate limit, and the Dask task runner."""

from __future__ import annotations

import json
import time
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from harvest.db import runs as run_rows
from harvest.db.engine import get_engine, utcnow
from harvest.db.schema import activities
from harvest.models import RunConfig
from harvest.storage import iter_jsonl
from testkit.demo_site import DATA_PATH, build_demo_site, serve_site

SOURCE = [a for a in json.loads(DATA_PATH.read_text("utf-8")) if a.get("name")]


def distinct(count: int, skip: int = 0) -> list[dict]:
    seen: set[str] = set()
    chosen = []
    for activity in SOURCE:
        if activity["name"] not in seen:
            seen.add(activity["name"])
            chosen.append(activity)
    return chosen[skip: skip + count]


def build(root: Path, acts: list[dict]) -> None:
    data = root.parent / f"{root.name}-activities.json"
    data.write_text(json.dumps(acts), "utf-8")
    build_demo_site(root, activities_path=data)


def scrape(url: str, **config: object):  # noqa: ANN201
    from flows.scrape import scrape_website

    return scrape_website(url=url, config=RunConfig(**config), return_state=True)


def test_diff_of_a_site_that_changed_is_exact(harvest_env, tmp_path) -> None:
    from blocks.storage import resolve_store
    from harvest.settings import get_settings
    from harvest_cli import app

    acts = distinct(10)
    extra = distinct(1, skip=10)[0]
    root = tmp_path / "site"
    build(root, acts)
    with serve_site(root) as site:
        url = site.base_url + "/"
        first = scrape(url, max_pages=100)
        assert first.is_completed(), first.message
        first = first.result()
        # One listing replaced by a new one, one description edited; the rest of the site keeps its markup.
        removed, edited = acts[3], acts[6]
        changed = list(acts)
        changed[3] = extra
        changed[6] = {**edited, "description": (edited.get("description") or "") + " Now open on Sundays."}
        build(root, changed)
        second = scrape(url, max_pages=100)
        assert second.is_completed(), second.message
        second = second.result()

    db_url = harvest_env["HARVEST_DATABASE_URL"]
    engine = get_engine(db_url)
    row = run_rows.get_run(engine, second.run_id)
    assert row["previous_run_id"] == first.run_id
    assert first.activities_processed == second.activities_processed
    n = first.activities_processed
    assert row["diff"] == {"added": 1, "removed": 1, "changed": 1, "unchanged": n - 2}

    store = resolve_store(get_settings())
    changes = list(iter_jsonl(store, second.files["diff"].uri))
    by_change = {c["change"]: c for c in changes}
    assert len(changes) == 3
    assert by_change["added"]["name"] == extra["name"]
    assert by_change["removed"]["name"] == removed["name"]
    assert by_change["changed"]["name"] == edited["name"]
    assert by_change["changed"]["fields"] == ["description", "embedding"]

    # `harvest runs diff A B` compares any two runs, here the other way round.
    result = CliRunner().invoke(app, ["runs", "diff", second.run_id, first.run_id, "--json"])
    assert result.exit_code == 0, result.output
    reverse = json.loads(result.stdout)
    assert reverse["counts"] == {"added": 1, "removed": 1, "changed": 1, "unchanged": n - 2}
    assert {c["change"]: c["name"] for c in reverse["changes"]} == {
        "added": removed["name"], "removed": extra["name"], "changed": edited["name"],
    }


def test_manual_import_of_a_kept_run_then_cleanup_and_import_twice_is_harmless(harvest_env, demo_site) -> None:
    from flows.import_run import import_run

    db_url = harvest_env["HARVEST_DATABASE_URL"]
    state = scrape(demo_site.base_url + "/", max_pages=30, max_extractions=10)
    assert state.is_completed(), state.message
    run = state.result()
    engine = get_engine(db_url)
    assert run_rows.get_run(engine, run.run_id)["retention"] == "kept"

    once = import_run(run_id=run.run_id)
    assert once.imported == run.activities_processed > 0 and once.failed == 0
    twice = import_run(run_id=run.run_id, cleanup=True)
    assert twice.imported == 0 and twice.failed == 0
    assert twice.skipped + twice.updated == run.activities_processed
    with engine.begin() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(activities)).scalar_one() == once.imported
    row = run_rows.get_run(engine, run.run_id)
    assert row["retention"] == "cleaned" and row["import_summary"]["imported"] == 0
    assert row["steps"]["manual_import"]["items_in"] == run.activities_processed

    third = import_run(run_id=run.run_id, return_state=True)
    assert third.is_failed()
    assert "has no final JSONL to import" in str(third.result(raise_on_failure=False))


def test_a_second_start_for_a_running_url_returns_the_running_run(harvest_env, demo_site) -> None:
    from prefect import get_client
    from prefect.states import Running

    from flows.scrape import scrape_website

    url = demo_site.base_url + "/"
    engine = get_engine(harvest_env["HARVEST_DATABASE_URL"])
    with get_client(sync_client=True) as client:  # a run of this URL, live on some other worker
        live = client.create_flow_run(scrape_website, parameters={"url": url}, state=Running())
    run_rows.create_run(engine, str(live.id), url, {})
    pages = demo_site.total_requests()

    summary = scrape(url, max_pages=5).result()
    assert (summary.status, summary.run_id) == ("already_running", str(live.id))
    assert demo_site.total_requests() == pages
    assert [r["id"] for r in run_rows.list_runs(engine, url=url)] == [str(live.id)]

    # Once Prefect says that run crashed (its worker died, no hook ran), a new start reconciles it and goes on.
    with get_client(sync_client=True) as client:
        from prefect.states import Crashed

        client.set_flow_run_state(live.id, Crashed(), force=True)
    started = scrape(url, max_pages=5, max_extractions=2).result()
    assert started.status == "completed" and started.run_id != str(live.id)
    assert run_rows.get_run(engine, str(live.id))["status"] == "crashed"


def test_sweep_cli_reconciles_and_expires_and_dry_run_changes_nothing(harvest_env, demo_site) -> None:
    from prefect import get_client
    from prefect.states import Crashed

    from flows.scrape import scrape_website
    from harvest_cli import app

    engine = get_engine(harvest_env["HARVEST_DATABASE_URL"])
    with get_client(sync_client=True) as client:
        dead = client.create_flow_run(scrape_website, parameters={"url": "https://gone.example/"}, state=Crashed())
    run_rows.create_run(engine, str(dead.id), "https://gone.example/", {})
    kept = scrape(demo_site.base_url + "/", max_pages=10, max_extractions=3).result()
    run_rows.update_run(engine, kept.run_id, expires_at=utcnow())

    dry = CliRunner().invoke(app, ["sweep", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert report["dry_run"] and report["expired"] == [kept.run_id]
    assert [r["run_id"] for r in report["reconciled"]] == [str(dead.id)]
    assert run_rows.get_run(engine, str(dead.id))["status"] == "running"

    done = CliRunner().invoke(app, ["sweep", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["expired"] == [kept.run_id] and report["deleted_objects"] > 0
    assert run_rows.get_run(engine, str(dead.id))["status"] == "crashed"
    assert run_rows.get_run(engine, kept.run_id)["retention"] == "expired"
    shown = CliRunner().invoke(app, ["runs", "show", kept.run_id, "--json"])
    # Every file expired but the digest: a completed run's digest is its URL's diff baseline until superseded.
    states = {f["kind"]: f["state"] for f in json.loads(shown.stdout)["files"]}
    assert states.pop("digest") == "present" and set(states.values()) == {"expired"}


def test_the_shared_geocoder_rate_limit_spaces_calls_across_processes(harvest_env) -> None:
    from prefect import get_client

    from blocks.register import register_limits
    from flows.limits import GEOCODER_LIMIT, OPENAI_LIMIT, geocoder_gate, openai_slot
    from harvest.settings import HarvestSettings

    with get_client(sync_client=True) as client:
        for name in (GEOCODER_LIMIT, OPENAI_LIMIT):
            try:
                client.delete_global_concurrency_limit_by_name(name)
            except Exception:  # noqa: BLE001 - absent is what we want
                pass
    assert geocoder_gate() is None, "no limit configured: no API round trip per call"

    done = register_limits(HarvestSettings(geocoder_rate_per_second=5, openai_max_concurrent=2))
    assert [(r.slug, r.action) for r in done] == [
        (f"global-concurrency-limit/{GEOCODER_LIMIT}", "created"), (f"global-concurrency-limit/{OPENAI_LIMIT}", "created"),
    ]
    try:
        gate = geocoder_gate()
        assert gate is not None
        started = time.monotonic()
        for _ in range(6):
            gate()
        assert time.monotonic() - started >= 0.8, "6 calls at 5/s take at least a second minus one slot"
        with openai_slot():
            with get_client(sync_client=True) as client:
                assert client.read_global_concurrency_limit_by_name(OPENAI_LIMIT).active_slots == 1
        again = register_limits(HarvestSettings(geocoder_rate_per_second=5, openai_max_concurrent=2))
        assert {r.action for r in again} == {"updated"}
    finally:
        with get_client(sync_client=True) as client:
            for name in (GEOCODER_LIMIT, OPENAI_LIMIT):
                client.delete_global_concurrency_limit_by_name(name)


def test_the_dask_task_runner_runs_the_whole_flow(harvest_env, demo_site, monkeypatch) -> None:
    from blocks.storage import resolve_store
    from flows.runners import make_task_runner
    from flows.scrape import scrape_website
    from harvest.settings import get_settings

    monkeypatch.setenv("HARVEST_TASK_RUNNER", "dask")
    get_settings.cache_clear()
    task_runner = make_task_runner(get_settings())
    assert type(task_runner).__name__ == "DaskTaskRunner"
    state = scrape_website.with_options(task_runner=task_runner)(
        url=demo_site.base_url + "/", config=RunConfig(max_pages=20, max_extractions=6), return_state=True
    )
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary.activities_processed > 0 and summary.files["final_jsonl"].records == summary.activities_processed
    final = list(iter_jsonl(resolve_store(get_settings()), summary.files["final_jsonl"].uri))
    assert all(r["embedding"] for r in final) and any(r["location"]["latitude"] for r in final)
