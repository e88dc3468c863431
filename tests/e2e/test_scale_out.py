"""Scale-out, for real, on the deployment test's Prefect server (Postgres, the process pool, every deployment):

- the flow on a local Dask cluster of two worker processes gives the thread runner's output byte for byte, its
  tasks run in the worker processes, and the shared geocoder rate limit holds across them;
  harvest's own log lines from a task in a worker process reach that task run's logs, once;
- two process workers on one pool share several flow runs at once: each run completes once, on one worker,
  with its own rows and files; a worker SIGKILLed mid-run leaves its run crashed (after the sweep) and the
  other worker resumes it with `prefect flow-run retry`, reusing the finished steps.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from harvest.db.engine import get_engine
from tests.e2e.test_deployment import (
    BIN,
    DEPLOYMENT,
    POOL,
    PREFECT,
    ROOT,
    UUID_RE,
    Stack,
    _describe,
    _final_state,
    _flow_run_pids,
    _signal,
    _signal_group,
    file_rows,
    run_row,
    wait_for,
    worker_online,
)

pytestmark = pytest.mark.e2e

HARVEST = str(BIN / "harvest")
GEOCODER_RATE = 8.0  # per second: slow enough that 2 processes at their own rate each would break it clearly


def harvest(stack: Stack, env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HARVEST, *args], env={**stack.env, **env}, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def scrape(stack: Stack, env: dict[str, str], url: str) -> tuple[dict[str, Any], str, float]:
    """`harvest scrape --json` against the server: (its summary, its stderr, its wall seconds)."""
    started = time.monotonic()
    done = harvest(stack, env, "scrape", url, "--max-pages", "150", "--max-extractions", "40", "--json")
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(done.stdout), done.stderr, wall


def forget_everything(db_url: str) -> None:
    """Runs and caches gone: the next run does all its work again (no geocode, image or answer reused)."""
    with get_engine(db_url).begin() as connection:
        connection.execute(sa.text(
            "TRUNCATE activities, run_files, scrape_runs, geocode_cache, image_cache, llm_answers CASCADE"
        ))


def differences(first: dict[str, Any], second: dict[str, Any], kind: str) -> list[str]:
    """Where two runs' files of one kind differ, record by record and field by field (for a failure's message)."""
    from blocks.storage import resolve_store
    from harvest.settings import get_settings
    from harvest.storage import iter_jsonl

    store = resolve_store(get_settings())
    a, b = (list(iter_jsonl(store, run["files"][kind]["uri"])) for run in (first, second))
    found = [f"{len(a)} vs {len(b)} records"] if len(a) != len(b) else []
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        for key in sorted(set(x) | set(y)):
            if x.get(key) != y.get(key):
                found.append(f"line {index} {key}: {str(x.get(key))[:120]} | {str(y.get(key))[:120]}")
    return found[:20]


# The crawl's line when max_extractions stops it: with links still queued it counts them, without it says only that
# it stopped. Which links are still queued at that moment depends on which of the crawl's concurrent fetches finished
# first, and the crawl runs in the flow's own process under either runner (a clean-clone run: the thread run left 1
# link, the Dask run none, with the same records and digest).
_STOPPED_AT_EXTRACTIONS = re.compile(
    r"crawl: (?:max_extractions=(\d+) stopped the crawl with \d+ link\(s\) unfollowed, .*|stopped at max_extractions=(\d+))")


def same_warnings(warnings: list[str]) -> list[str]:
    """Warnings as a sorted list without object addresses (chunks running side by side report in any order), the
    crawl's stop at max_extractions as the limit it names (see above)."""
    def comparable(warning: str) -> str:
        stopped = _STOPPED_AT_EXTRACTIONS.fullmatch(warning)
        if stopped:
            return f"crawl: stopped at max_extractions={stopped[1] or stopped[2]}"
        return re.sub(r" at 0x[0-9a-f]+", "", warning)

    return sorted(comparable(warning) for warning in warnings)


def busiest_second(stamps: list[float]) -> int:
    """The most requests that arrived within any one second."""
    stamps = sorted(stamps)
    most, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_dask_worker_processes_give_the_thread_runners_output(
    stack, harvest_env, demo_site, geocoder_server  # noqa: ANN001
) -> None:
    """The same crawl twice from a cold start: threads, then a LocalCluster of 2 worker processes. Same final
    JSONL and digest (sha256); the enrichment tasks ran in the worker processes, not the flow's; the geocoder
    stand-in never saw more than the shared rate in any second; a harvest log line from a worker process reached
    its task run once."""
    env = {**harvest_env, "HARVEST_GEOCODER_RATE_PER_SECOND": str(GEOCODER_RATE), "PREFECT_LOGGING_LEVEL": "INFO",
           "HARVEST_ENRICH_CHUNK_SIZE": "8"}  # several chunks per map, so both processes geocode
    registered = harvest(stack, env, "blocks", "register")
    assert registered.returncode == 0, registered.stdout + registered.stderr
    db_url = harvest_env["HARVEST_DATABASE_URL"]
    try:
        threads, _, threads_wall = scrape(stack, env, f"{demo_site.base_url}/")
        forget_everything(db_url)
        geocoder_server.reset()
        dask_env = {**env, "HARVEST_TASK_RUNNER": "dask", "HARVEST_DASK_PROCESSES": "2"}
        dask, stderr, dask_wall = scrape(stack, dask_env, f"{demo_site.base_url}/")
    finally:
        for name in ("harvest-geocoder", "harvest-openai"):  # the other tests on this server run unlimited
            httpx.delete(f"{stack.api_url}/v2/concurrency_limits/{name}", timeout=30)
    print(f"threads {threads_wall:.1f}s, dask processes {dask_wall:.1f}s (harvest scrape, wall)")
    assert "Creating a new Dask cluster with `distributed.deploy.local.LocalCluster`" in stderr, stderr[-3000:]

    # Identical output: the final records and the digest, byte for byte.
    assert dask["activities_processed"] == threads["activities_processed"] > 0
    for kind in ("standardized", "final_jsonl", "digest"):
        assert dask["files"][kind]["sha256"] == threads["files"][kind]["sha256"], (kind, differences(threads, dask, kind))
    assert {ref["kind"] for ref in dask["files"].values()} == {ref["kind"] for ref in threads["files"].values()}
    assert same_warnings(dask["warnings"]) == same_warnings(threads["warnings"])

    # The tasks ran in the Dask worker processes: the run row names the process of every step.
    row = run_row(db_url, dask["run_id"])
    assert row is not None and row["status"] == "completed"
    flow_process = f"{row['host']}:{row['pid']}"
    steps = row["steps"]
    assert steps["crawl"]["processes"] == [flow_process]  # called, not submitted: in the flow's process
    workers = {p for step in ("images", "geocode", "embeddings_submit") for p in steps[step]["processes"]}
    assert flow_process not in workers
    assert len(set(steps["geocode"]["processes"])) == 2, steps["geocode"]  # both worker processes geocoded

    # One rate across both processes (each alone would allow GEOCODER_RATE/s, together twice that).
    stamps = [entry["at"] for entry in geocoder_server.requests_seen()]
    assert len(stamps) >= 2 * GEOCODER_RATE, len(stamps)  # enough calls that a doubled rate would show
    most = busiest_second(stamps)
    print(f"geocoder: {len(stamps)} requests over {max(stamps) - min(stamps):.1f}s, at most {most} in one second")
    assert most <= GEOCODER_RATE + 1, most

    # harvest's own log lines from a task in a worker process reach that task run's logs, once (this dask run, not
    # a run of its own: a cluster and a crawl cost the e2e chain ~25 CPU-s and ~30 s).
    assert_the_submit_line_reached_its_task_run_once(stack, db_url, dask["run_id"])


def flow_run_logs(stack: Stack, flow_run_id: str) -> list[dict[str, Any]]:
    """Every log line of a flow run (its tasks' included) as the API gives it back, page by page."""
    found: list[dict[str, Any]] = []
    while True:
        page = stack.api("POST", "/logs/filter", json={
            "logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC", "offset": len(found),
            "limit": 200,
        })
        found += page
        if len(page) < 200:
            return found


def assert_the_submit_line_reached_its_task_run_once(stack: Stack, db_url: str, run_id: str) -> None:
    """A `harvest` logger line logged in a Dask worker process reaches the task run it was logged in, once.

    The line: `harvest.enrich.embeddings.batch` at INFO when the embeddings batch is submitted (harvest_env takes the
    batch path), inside the embeddings_submit task, which ran in one of the worker processes."""
    row = run_row(db_url, run_id)
    assert row is not None and row["status"] == "completed"
    assert row["steps"]["embeddings_submit"]["processes"] != [f"{row['host']}:{row['pid']}"]  # in a worker process

    task_runs = stack.api("POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200})
    (submit,) = [run for run in task_runs if run["name"].startswith("embeddings_submit")]

    def submitted() -> list[dict[str, Any]]:
        return [log for log in flow_run_logs(stack, run_id)
                if log["name"] == "harvest.enrich.embeddings.batch" and "submitted for file" in log["message"]]

    # The worker process sends its lines in batches, the last at exit: once the process that logged the line has
    # exited and the line is in, any copy (sent with it, from the same process) is in too. No waiting for a copy.
    sender = row["steps"]["embeddings_submit"]["processes"]
    pids = [int(process.rsplit(":", 1)[1]) for process in sender if process.rsplit(":", 1)[0] == row["host"]]
    assert pids, sender
    wait_for(lambda: not any(_alive(pid) for pid in pids), 60, f"the worker process {sender} to exit")
    wait_for(submitted, 30, "the embeddings line in the run's logs")
    lines = submitted()
    assert len(lines) == 1, lines
    assert (lines[0]["task_run_id"], lines[0]["level"]) == (submit["id"], logging.INFO), lines


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a child its parent has not reaped yet is gone for our purposes)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start_worker(stack: Stack, harvest_env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    env = {
        **stack.env, **harvest_env,
        "HARVEST_BATCH_MAX_WAIT_SECONDS": "600",  # the killed run's batch keeps polling until the worker dies
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    }
    return stack.start(name, [PREFECT, "worker", "start", "--pool", POOL, "--name", name, "--limit", "2"], env)


@pytest.fixture
def two_workers(stack: Stack, harvest_env: dict[str, str]) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    tag = uuid.uuid4().hex[:6]
    workers = {name: start_worker(stack, harvest_env, name) for name in (f"a-{tag}", f"b-{tag}")}
    for name, process in workers.items():
        wait_for(lambda n=name, p=process: worker_online(stack, n) or p.poll() is not None, 90, f"worker {name}")
        assert process.poll() is None, f"worker {name} exited:\n{stack.log_tail(name)}"
    yield workers
    for process in workers.values():
        _signal_group(process.pid, signal.SIGTERM)
    for process in workers.values():
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)


def deployment_run(stack: Stack, url: str) -> str:
    created = stack.cli(
        "deployment", "run", DEPLOYMENT, "-p", f"url={url}", "-p", 'config={"max_pages": 20, "max_extractions": 5}',
    )
    assert created.returncode == 0, created.stdout + created.stderr
    return UUID_RE.search(created.stdout).group(1)  # type: ignore[union-attr]


def ran_by(stack: Stack, workers: dict[str, Any], flow_run_id: str) -> list[str]:
    """The workers that ran the flow run. Both workers of a pool may pick one scheduled run and log that they are
    submitting it; the server lets one move it to Pending, and the other logs "Aborted submission" (Prefect's
    workers/base.py): that one did not run it."""
    def ran(log: str) -> bool:
        # Counted, not just found: a worker that lost the race for a run may later run its retry.
        return (log.count(f"submitting flow run '{flow_run_id}'")
                > log.count(f"Aborted submission of flow run '{flow_run_id}'"))

    return [name for name in workers if ran(stack.log_tail(name, chars=10_000_000))]


def test_two_workers_share_runs_and_one_resumes_what_a_killed_one_left(
    stack, two_workers, harvest_env, demo_site, openai_server  # noqa: ANN001
) -> None:
    db_url = harvest_env["HARVEST_DATABASE_URL"]
    started = time.monotonic()
    urls = {deployment_run(stack, f"{demo_site.base_url}/?site={n}"): f"{demo_site.base_url}/?site={n}"
            for n in range(3)}
    for flow_run_id in urls:
        state = _final_state(stack, flow_run_id, 180, f"flow run {flow_run_id}")
        assert state == "COMPLETED", "\n".join(stack.log_tail(name) for name in two_workers)
    print(f"3 runs on 2 workers → Completed in {time.monotonic() - started:.1f}s")

    # Each run once, on one worker; both workers took runs.
    owners = {flow_run_id: ran_by(stack, two_workers, flow_run_id) for flow_run_id in urls}
    assert all(len(names) == 1 for names in owners.values()), owners
    assert {names[0] for names in owners.values()} == set(two_workers), owners
    for flow_run_id, url in urls.items():
        assert stack.flow_run(flow_run_id)["run_count"] == 1
        row = run_row(db_url, flow_run_id)
        assert row is not None and (row["status"], row["url"]) == ("completed", url)
        # Its files are its own: every one is keyed by this run's id, none by another run's.
        files = file_rows(db_url, flow_run_id)
        assert {"raw_activities", "standardized", "final_jsonl", "digest"} <= set(files)
        for item in files.values():
            assert flow_run_id in item["uri"], item["uri"]
            assert not any(other in item["uri"] for other in urls if other != flow_run_id), item["uri"]
    with get_engine(db_url).begin() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM scrape_runs")).scalar_one() == len(urls)

    # A run whose worker dies under it: the batch never finishes, so the run is certainly mid-way when killed.
    openai_server.configure(polls_until_complete=1_000_000)
    polls_before = openai_server.stats().get("batches.retrieve", 0)
    kill_id = deployment_run(stack, f"{demo_site.base_url}/?site=killed")

    def polling() -> bool:
        # The batch polled, not only its submission recorded: the poll starts once the submit task's result is
        # stored, so the resumed run loads it (killed between the two, the run submits again: see the note).
        row = run_row(db_url, kill_id)
        submitted = bool(row and row["status"] == "running" and "embeddings_submit" in (row["steps"] or {}))
        return submitted and openai_server.stats().get("batches.retrieve", 0) > polls_before

    wait_for(polling, 120, "the run to poll its embeddings batch")
    (victim,) = ran_by(stack, two_workers, kill_id)
    (survivor,) = set(two_workers) - {victim}
    pids = _flow_run_pids(stack.marker, kill_id)
    print(f"SIGKILL worker {victim} and its flow-run processes {_describe(pids)}")
    _signal_group(two_workers[victim].pid, signal.SIGKILL)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    two_workers[victim].wait(10)
    wait_for(lambda: not _flow_run_pids(stack.marker, kill_id), 30, "the killed flow run's processes to be gone")
    # Every process that could report the crash is gone: Prefect still says RUNNING, and only the sweep below
    # moves it (no waiting here for something that has nothing left to make it happen).
    assert stack.flow_run(kill_id)["state"]["type"] == "RUNNING"
    assert run_row(db_url, kill_id)["status"] == "running"  # type: ignore[index]

    # The sweep finds the run's process gone: the row is crashed, and so is the flow run in Prefect.
    swept = harvest(stack, harvest_env, "sweep", "--json", timeout=180)
    assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
    row = run_row(db_url, kill_id)
    assert row is not None and (row["status"], row["retention"]) == ("crashed", "kept")
    assert stack.flow_run(kill_id)["state"]["type"] == "CRASHED"

    # The other worker resumes it: the same flow run scheduled again; finished steps are loaded, not redone.
    before = openai_server.stats()
    openai_server.configure(polls_until_complete=1)
    retried = stack.cli("flow-run", "retry", kill_id)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert _final_state(stack, kill_id, 120, "the retried run") == "COMPLETED", stack.log_tail(survivor)
    assert survivor in ran_by(stack, two_workers, kill_id)
    row = run_row(db_url, kill_id)
    assert row is not None and (row["status"], row["error"]) == ("completed", None)
    after = openai_server.stats()
    assert after.get("batches.create") == before.get("batches.create")  # polled the batch it had submitted
    assert after.get("chat.completions", 0) == before.get("chat.completions", 0)  # extraction not redone
    assert "final_jsonl" in file_rows(db_url, kill_id)
