"""The review lifecycle through the real flows (ephemeral Prefect API, Postgres, moto S3, loopback site and
API stand-ins): diff of a site that changed, manual import, one run per URL, the sweep flow and CLI, the
shared rate limit, and the Dask task runner."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from harvest.db import runs as run_rows
from harvest.db.engine import get_engine, utcnow
from harvest.db.schema import activities, page_cache
from harvest.models import RunConfig
from harvest.storage import iter_jsonl
from testkit.demo_site import DATA_PATH, build_demo_site, serve_site
from tests.helpers import process_elsewhere, session_prefect_api_url

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
    run_rows.update_run(engine, str(live.id), host="worker-2.example", process=process_elsewhere())
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
    run_rows.update_run(engine, str(dead.id), host="worker-2.example", process=process_elsewhere())  # its worker's
    kept = scrape(demo_site.base_url + "/", max_pages=10, max_extractions=3).result()
    run_rows.update_run(engine, kept.run_id, expires_at=utcnow())
    # The scrape's page memory, and 3 rows of URLs no crawl reached for 31 days (remembered outside any run).
    with engine.begin() as connection:
        remembered = connection.execute(sa.select(sa.func.count()).select_from(page_cache)).scalar_one()
        row = dict(connection.execute(sa.select(page_cache).limit(1)).mappings().one())
        connection.execute(page_cache.insert(), [
            {**row, "url": f"https://gone.example/event/{n}", "run_id": None,
             "updated_at": utcnow() - timedelta(days=31)}
            for n in range(3)
        ])
    assert remembered > 0

    dry = CliRunner().invoke(app, ["sweep", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert report["dry_run"] and report["expired"] == [kept.run_id]
    assert [r["run_id"] for r in report["reconciled"]] == [str(dead.id)]
    assert report["page_memory_pruned"] == 3
    assert run_rows.get_run(engine, str(dead.id))["status"] == "running"

    done = CliRunner().invoke(app, ["sweep", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["expired"] == [kept.run_id] and report["deleted_objects"] > 0
    assert report["page_memory_pruned"] == 3
    with engine.connect() as connection:  # the stale rows went, and the scrape's own with its expired files
        assert connection.execute(sa.select(sa.func.count()).select_from(page_cache)).scalar_one() == 0
    printed = CliRunner().invoke(app, ["sweep"])
    assert printed.exit_code == 0 and "page memory rows pruned: 0" in printed.stdout, printed.output
    assert run_rows.get_run(engine, str(dead.id))["status"] == "crashed"
    assert run_rows.get_run(engine, kept.run_id)["retention"] == "expired"
    shown = CliRunner().invoke(app, ["runs", "show", kept.run_id, "--json"])
    # Every file expired but the digest: a completed run's digest is its URL's diff baseline until superseded.
    states = {f["kind"]: f["state"] for f in json.loads(shown.stdout)["files"]}
    assert states.pop("digest") == "present" and set(states.values()) == {"expired"}


_GATE_CHILD = """
import sys, time
from flows.limits import gate as gate_of
from harvest.enrich.geocode.enrichment import GEOCODING
gate = gate_of(GEOCODING.limit)
assert gate is not None, "the child does not see the shared limit"
print("ready", flush=True)
sys.stdin.readline()
for _ in range(int(sys.argv[1])):
    gate()
    print(time.time(), flush=True)
"""


def test_the_shared_geocoder_rate_limit_spaces_calls_across_processes(harvest_env) -> None:
    """Two processes (this one and a child on the same Prefect API) take the geocoder gate at the same time:
    their calls together are spaced by the one rate. Each process alone at that rate would take half as long."""
    import os
    import subprocess
    import sys
    import threading

    from prefect import get_client
    from prefect.server.api.server import SubprocessASGIServer

    from blocks.register import register_limits
    from flows.limits import gate as gate_of
    from flows.limits import slot
    from harvest.enrich.embeddings.enrichment import EMBEDDINGS, OPENAI_LIMIT
    from harvest.enrich.geocode.enrichment import GEOCODER_LIMIT, GEOCODING
    from harvest.settings import HarvestSettings

    with get_client(sync_client=True) as client:
        for name in (GEOCODER_LIMIT, OPENAI_LIMIT):
            try:
                client.delete_global_concurrency_limit_by_name(name)
            except Exception:  # noqa: BLE001 - absent is what we want
                pass
    assert gate_of(GEOCODING.limit) is None, "no limit configured: no API round trip per call"

    rate, calls = 5.0, 4
    done = register_limits(HarvestSettings(geocoder_rate_per_second=rate, openai_max_concurrent=2))
    assert [(r.slug, r.action) for r in done] == [
        (f"global-concurrency-limit/{GEOCODER_LIMIT}", "created"), (f"global-concurrency-limit/{OPENAI_LIMIT}", "created"),
    ]
    api_url = SubprocessASGIServer().api_url  # the ephemeral API this process started: the child shares it
    child = subprocess.Popen(
        [sys.executable, "-c", _GATE_CHILD, str(calls)], env={**os.environ, "PREFECT_API_URL": api_url},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready", child.stderr.read() if child.stderr else ""
        gate = gate_of(GEOCODING.limit)
        assert gate is not None
        mine: list[float] = []

        def take() -> None:
            for _ in range(calls):
                gate()
                mine.append(time.time())

        here = threading.Thread(target=take)
        child.stdin.write("go\n")
        child.stdin.flush()
        here.start()
        here.join()
        theirs = [float(line) for line in child.stdout.read().split()]
        assert child.wait(120) == 0 and len(theirs) == calls
        stamps = sorted(mine + theirs)
        # 2 × calls through one gate at `rate`/s span at least (2 × calls − 1)/rate s, less one slot of slack;
        # two separate limits would let both processes finish in (calls − 1)/rate s.
        assert stamps[-1] - stamps[0] >= (2 * calls - 2) / rate, [round(t - stamps[0], 3) for t in stamps]
        with slot(EMBEDDINGS.limit):
            with get_client(sync_client=True) as client:
                assert client.read_global_concurrency_limit_by_name(OPENAI_LIMIT).active_slots == 1
        again = register_limits(HarvestSettings(geocoder_rate_per_second=rate, openai_max_concurrent=2))
        assert {r.action for r in again} == {"updated"}
    finally:
        if child.poll() is None:
            child.kill()
        with get_client(sync_client=True) as client:
            for name in (GEOCODER_LIMIT, OPENAI_LIMIT):
                client.delete_global_concurrency_limit_by_name(name)


def test_local_dask_clusters_run_without_the_worker_profiler() -> None:
    """Dask's worker profiler samples stacks with sys._current_frames(), which deadlocks a CPython 3.11 process
    when a garbage collection starts inside it (python/cpython#106883; a CI run of `harvest scrape` on the
    in-process cluster hung so). Both local clusters run without it."""
    # distributed imported first, so its defaults are loaded: the context below then restores one key on exit,
    # where it would drop the whole `distributed` section it saw created (every later Dask test: KeyError).
    import dask
    import distributed  # noqa: F401

    from flows.runners import make_task_runner
    from harvest.settings import HarvestSettings

    for processes in (0, 2):
        with dask.config.set({"distributed.worker.profile.enabled": True}):
            make_task_runner(HarvestSettings(task_runner="dask", dask_processes=processes))
            assert dask.config.get("distributed.worker.profile.enabled") is False, processes


def test_the_dask_task_runner_runs_the_whole_flow(harvest_env, demo_site, tmp_path) -> None:
    """HARVEST_TASK_RUNNER=dask chosen the way a worker chooses it: from the environment of a fresh process
    (the flow's runner is fixed when flows.scrape is imported), through the installed CLI."""
    import os
    import subprocess
    import sys

    env = {**os.environ, **harvest_env, "HARVEST_TASK_RUNNER": "dask", "PREFECT_API_URL": session_prefect_api_url(),
           "PREFECT_LOGGING_LEVEL": "INFO"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "harvest"), "scrape", demo_site.base_url + "/", "--max-pages", "20",
         "--max-extractions", "6", "--json"], env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # prefect-dask says so when it starts the local cluster the flow's tasks then run on.
    assert "Creating a new Dask cluster with `distributed.deploy.local.LocalCluster`" in done.stderr, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["status"] == "completed" and summary["activities_processed"] > 0
    assert summary["files"]["final_jsonl"]["records"] == summary["activities_processed"]
    from blocks.storage import resolve_store
    from harvest.settings import get_settings

    final = list(iter_jsonl(resolve_store(get_settings()), summary["files"]["final_jsonl"]["uri"]))
    assert len(final) == summary["activities_processed"]
    assert all(r["embedding"] for r in final) and any(r["location"]["latitude"] for r in final)
