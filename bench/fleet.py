"""`python -m bench.fleet [--sites N] [--mode MODE] [--batch K] OUT`: a fleet of small sites run as due flow runs by
process workers on a real `prefect server`, for the bench's `fleet` entry (issue 32).

The fleet: N generated sites (testkit/fleet_sites.py, 10-50 activities each, every 4th asking for a Crawl-delay)
on distinct loopback addresses, served by this process, which records per host the requests in flight. A Prefect
server on a Postgres database of its own, a process work pool, the flow deployed from this checkout, two process
workers (`prefect worker start --limit 2`, the pool polled every PREFECT_WORKER_QUERY_SECONDS); harvest runs
against Postgres, a moto S3 server and the OpenAI and geocoder stand-ins, as the docs' set-up does.

Modes (`--mode`):
- `single`: one `scrape-website` flow run per source, all due now: today's way, a flow-run process per source;
- `batch`: the `scrape-sources` flow (flows/scrape_sources.py), K sources per flow run (`--batch`, 10): each source its
  own `scrape-website` subflow run (own run row, files, retention and UI view) in one flow-run process;
- `dask`: as `batch`, with every subflow's tasks on one local Dask cluster of 2 worker processes
  (HARVEST_TASK_RUNNER=dask, HARVEST_DASK_ADDRESS), started here;
- `fleetworker`: as `single` (one `scrape-website` flow run per source), drained by `harvest sources worker`
  processes instead of process workers (flows/fleet_worker.py): each run in a child forked from one warm process.

What it measures, sampling /proc every 0.2 s: each flow-run process's lifetime, CPU seconds and RSS, and each
worker's RSS and CPU seconds (its own, not its flow runs': polling, heartbeats, forking). Per source: worker
seconds (the lifetimes of the flow-run processes over the sources they ran) less its pages' work (the seconds its
steps recorded) = its fixed overhead; the peak RSS of the process that ran it while it ran (first 50 sources
against the last 50: flat means <= 1.1x). Sources and activities per hour (from the first run created to the last
one finished), rows and stored bytes, the worker's pick-up latency, and the politeness the sites saw. The workers'
own RSS while the first 50 sources ran against while the last 50 did (flat: <= 1.1x) says whether a long-lived
worker grows.

`run_fleet` is the runner itself; tests/e2e/test_fleet_bench.py drives it at 3 sites on the session's server.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from testkit.fleet_sites import FleetServer, fleet_sites

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
ENTRYPOINTS = {"single": ("scrape-website", "flows/scrape.py:scrape_website"),
               "batch": ("scrape-sources", "flows/scrape_sources.py:scrape_sources"),
               "dask": ("scrape-sources", "flows/scrape_sources.py:scrape_sources"),
               "fleetworker": ("scrape-website", "flows/scrape.py:scrape_website")}
HARVEST = str(Path(sys.executable).parent / "harvest")
# What each source asks for: a small site, imported, its files then cleaned up (as a scheduled source would be).
SOURCE_CONFIG = {"max_pages": 60, "max_depth": 2, "max_extractions": 60, "auto_import": True, "render": "http"}


@dataclass
class Proc:
    """One process seen under a worker: its start (s since boot), last sighting, CPU seconds, RSS samples."""

    pid: int
    parent: int
    start_s: float
    last_s: float = 0.0
    cpu_s: float = 0.0
    rss: list[tuple[float, float]] = field(default_factory=list)  # (s since boot, MiB of the process and children)

    @property
    def lifetime_s(self) -> float:
        return max(0.0, self.last_s - self.start_s)


def _uptime() -> float:
    with open("/proc/uptime") as handle:
        return float(handle.read().split()[0])


def _stat(pid: int) -> tuple[int, float, float, float] | None:
    """(parent pid, CPU seconds, start s since boot, RSS MiB), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # after the command: state ppid ... utime(12) stime(13) ... starttime(20) vsize rss(22) (0-based from state)
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS, int(fields[19]) / TICKS, \
        int(fields[21]) * PAGE / 2**20


class Sampler:
    """Every `interval` s: the workers' RSS and, for each process under a worker (a flow run's process and what it
    started: a Chromium, Dask's nanny), its CPU and the RSS of its subtree."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.workers: dict[int, str] = {}
        self.worker_rss: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.worker_cpu: dict[str, float] = {}
        self.procs: dict[int, Proc] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        now = _uptime()
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := _stat(int(entry))) is not None:
                stats[int(entry)] = stat
        children: dict[int, list[int]] = defaultdict(list)
        for pid, (parent, *_rest) in stats.items():
            children[parent].append(pid)

        def subtree(pid: int) -> list[int]:
            out, todo = [], [pid]
            while todo:
                current = todo.pop()
                out.append(current)
                todo.extend(children.get(current, []))
            return out

        for worker, name in list(self.workers.items()):
            if worker in stats:
                self.worker_rss[name].append((now, stats[worker][3]))
                self.worker_cpu[name] = stats[worker][1]
            for pid in children.get(worker, []):  # a flow run's process: the worker's direct child
                parent, cpu, started, _ = stats[pid]
                proc = self.procs.setdefault(pid, Proc(pid, parent, started))
                tree = subtree(pid)
                proc.last_s = now
                proc.cpu_s = max(proc.cpu_s, sum(stats[p][1] for p in tree if p in stats))
                proc.rss.append((now, sum(stats[p][3] for p in tree if p in stats)))


@dataclass
class Fleet:
    """Where the fleet runs: the Prefect API, the environment every process gets, a folder for logs."""

    api_url: str
    env: dict[str, str]
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(5):
            try:
                response = httpx.request(method, self.api_url + path, timeout=60, **kwargs)
                if response.status_code != 503:
                    response.raise_for_status()
                    return response.json() if response.content else None
            except httpx.TransportError:
                if attempt == 4:
                    raise
            time.sleep(1 + attempt)
        raise RuntimeError(f"{method} {path}: the Prefect API kept answering 503")

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        """SIGTERM each process group started here (a worker and its flow-run processes), then SIGKILL."""
        import signal

        for process in self.processes:
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(5)
        self.processes.clear()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def create_pool(fleet: Fleet, pool: str) -> None:
    """A process work pool with Prefect's own base job template (what `prefect work-pool create --type process`
    sends; through the API, without starting the CLI: ~5 s of a core, more on a busy machine)."""
    from prefect.workers.process import ProcessWorker

    fleet.api("POST", "/work_pools/", json={
        "name": pool, "type": "process", "base_job_template": ProcessWorker.get_default_base_job_template(),
    })


def deploy(fleet: Fleet, mode: str, pool: str, tag: str) -> str:
    """The flow deployed from this checkout on `pool` (through the API, as `prefect deploy` records a local
    checkout: a set_working_directory pull step); its id."""
    flow_name, entrypoint = ENTRYPOINTS[mode]
    flow_id = fleet.api("POST", "/flows/", json={"name": flow_name})["id"]
    deployment = fleet.api("POST", "/deployments/", json={
        "name": f"fleet-{tag}", "flow_id": flow_id, "entrypoint": entrypoint, "work_pool_name": pool,
        "path": str(ROOT), "enforce_parameter_schema": False,
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}],
    })
    return str(deployment["id"])


def start_workers(fleet: Fleet, pool: str, count: int, limit: int, tag: str, mode: str = "single",
                  query_seconds: float = 2.0) -> dict[int, str]:
    """`count` workers on `pool` (process workers; `harvest sources worker` in mode fleetworker), each running up
    to `limit` flow runs at once; their pids -> names, once each is online."""
    workers = {}
    for number in range(count):
        name = f"fleet-{tag}-{number}"
        if mode == "fleetworker":
            command = [HARVEST, "sources", "worker", "--pool", pool, "--name", name, "--limit", str(limit),
                       "--poll", f"{query_seconds:g}"]
        else:
            command = [PREFECT, "worker", "start", "--pool", pool, "--name", name, "--limit", str(limit)]
        process = fleet.start(name, command, fleet.env)
        workers[process.pid] = name

    def online() -> bool:
        for pid, name in workers.items():
            if not any(p.pid == pid and p.poll() is None for p in fleet.processes):
                raise RuntimeError(f"worker {name} exited; see {fleet.workdir / (name + '.log')}")
        try:
            listed = fleet.api("POST", f"/work_pools/{pool}/workers/filter", json={})
        except httpx.HTTPError:
            return False
        return set(workers.values()) <= {w["name"] for w in listed if w.get("status") == "ONLINE"}

    _wait_for(online, 120, "the workers to come online")
    return workers


def create_runs(fleet: Fleet, deployment_id: str, urls: list[str], mode: str, batch: int) -> list[str]:
    """Every source due now: one flow run per source (single), or one per `batch` sources."""
    config = dict(SOURCE_CONFIG)
    parameters: list[dict[str, Any]]
    if mode in ("single", "fleetworker"):
        parameters = [{"url": url, "config": config} for url in urls]
    else:
        parameters = [{"sources": [{"url": url, "config": config} for url in urls[i:i + batch]]}
                      for i in range(0, len(urls), batch)]
    return [fleet.api("POST", f"/deployments/{deployment_id}/create_flow_run", json={"parameters": p})["id"]
            for p in parameters]


def wait_runs(fleet: Fleet, flow_run_ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Wait until every flow run is final; their API records."""
    def final() -> list[dict[str, Any]] | None:
        runs = fleet.api("POST", "/flow_runs/filter", json={"flow_runs": {"id": {"any_": flow_run_ids}}, "limit": 200})
        if len(runs) == len(flow_run_ids) and all(r["state_type"] in TERMINAL for r in runs):
            return list(runs)
        return None

    return _wait_for(final, timeout, f"{len(flow_run_ids)} flow runs to finish", interval=2)


def _rows(database_url: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The harvest run rows, and the rows and bytes stored (activities, run_files)."""
    import sqlalchemy as sa

    from harvest.db.engine import get_engine
    from harvest.db.schema import scrape_runs

    engine = get_engine(database_url)
    with engine.connect() as connection:
        runs = [dict(row) for row in connection.execute(sa.select(scrape_runs)).mappings()]
        stored = {
            "activities_rows": connection.exec_driver_sql("SELECT count(*) FROM activities").scalar(),
            "scrape_runs_rows": len(runs),
            "activities_table_bytes": connection.exec_driver_sql(
                "SELECT pg_total_relation_size('activities')").scalar(),
            "run_files_rows": connection.exec_driver_sql("SELECT count(*) FROM run_files").scalar(),
            "run_files_bytes_written": connection.exec_driver_sql(
                "SELECT coalesce(sum(bytes), 0) FROM run_files").scalar(),
            "run_files_bytes_kept": connection.exec_driver_sql(
                "SELECT coalesce(sum(bytes), 0) FROM run_files WHERE deleted_at IS NULL").scalar(),
        }
    return runs, stored


def _step_seconds(steps: dict[str, Any]) -> float:
    """The seconds a run's steps recorded (every stage's own timing: the pages' work and what was done with them)."""
    return sum(float(s["seconds"]) for s in steps.values() if isinstance(s, dict) and "seconds" in s
               and isinstance(s["seconds"], (int, float)))


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def measure(sampler: Sampler, flow_runs: list[dict[str, Any]], runs: list[dict[str, Any]], started: float,
            finished: float) -> dict[str, Any]:
    """The fleet's figures from the samples, the API's flow runs and the harvest run rows."""
    sources = sorted(runs, key=lambda r: r["started_at"])
    pids = {r["pid"] for r in sources}
    procs = [p for p in sampler.procs.values() if p.pid in pids]  # the flow-run processes that ran a source
    worker_s = sum(p.lifetime_s for p in procs)
    cpu_s = sum(p.cpu_s for p in procs)
    work_s = sum(_step_seconds(r.get("steps") or {}) for r in sources)
    n = max(1, len(sources))

    def peak_during(row: dict[str, Any]) -> float | None:
        proc = sampler.procs.get(row["pid"])
        if proc is None or row.get("finished_at") is None:
            return None
        # run rows are timestamped in UTC; samples in seconds since boot: line them up by the process's own clock
        begin = row["started_at"].timestamp() - time.time() + _uptime()
        end = row["finished_at"].timestamp() - time.time() + _uptime()
        inside = [mb for t, mb in proc.rss if begin - 0.3 <= t <= end + 0.3]
        return max(inside) if inside else None

    peaks = [p for p in (peak_during(r) for r in sources) if p is not None]
    # Within one flow-run process running several sources in turn (batch): its peak while its last source ran
    # over its peak while its first one ran (flat: <= 1.1), the worst process.
    by_process: dict[int, list[float]] = defaultdict(list)
    for row in sources:
        if (peak := peak_during(row)) is not None:
            by_process[row["pid"]].append(peak)
    growth = [p[-1] / p[0] for p in by_process.values() if len(p) > 1 and p[0]]
    first, last = peaks[:50], peaks[-50:]
    latency = [
        (_ts(r["start_time"]) - _ts(r["expected_start_time"])) for r in flow_runs
        if r.get("start_time") and r.get("expected_start_time")
    ]
    activities = sum(r.get("activities_processed") or 0 for r in sources)
    hours = max(finished - started, 1e-9) / 3600
    worker_peaks = {name: round(max(mb for _, mb in samples), 1) for name, samples in sampler.worker_rss.items()}
    worker_first, worker_last = _worker_rss_during(sampler, sources[:50]), _worker_rss_during(sampler, sources[-50:])
    return {
        "sources": len(sources),
        "completed": sum(1 for r in sources if r["status"] == "completed"),
        "statuses": dict(sorted(_count(r["status"] for r in sources).items())),
        "flow_runs": len(flow_runs),
        "flow_run_states": dict(sorted(_count(r["state_type"] for r in flow_runs).items())),
        "flow_run_processes": len(procs),
        "wall_s": round(finished - started, 1),
        "sources_per_hour": round(len(sources) / hours),
        "activities": activities,
        "activities_per_hour": round(activities / hours),
        "worker_s_per_source": round(worker_s / n, 2),
        "cpu_s_per_source": round(cpu_s / n, 2),
        "step_work_s_per_source": round(work_s / n, 2),
        "fixed_overhead_s_per_source": round((worker_s - work_s) / n, 2),
        "pickup_latency_s_mean": _mean(latency),
        "peak_rss_mb_per_flow_process": round(max((max(mb for _, mb in p.rss) for p in procs if p.rss), default=0), 1),
        "peak_rss_mb_first_50_sources": round(max(first), 1) if first else None,
        "peak_rss_mb_last_50_sources": round(max(last), 1) if last else None,
        "rss_last_over_first": round(max(last) / max(first), 2) if first and last else None,
        "rss_last_over_first_within_process_max": round(max(growth), 2) if growth else None,
        "worker_peak_rss_mb": worker_peaks,
        "worker_peak_rss_mb_first_50_sources": worker_first,
        "worker_peak_rss_mb_last_50_sources": worker_last,
        "worker_rss_last_over_first_max": max(
            (round(worker_last[w] / worker_first[w], 2) for w in worker_first if w in worker_last and worker_first[w]),
            default=None),
        "worker_own_cpu_s_per_source": round(sum(sampler.worker_cpu.values()) / n, 3),
    }


def _worker_rss_during(sampler: Sampler, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each worker's own peak RSS (MiB) while `rows` ran (from the first one's start to the last one's end)."""
    ends = [r["finished_at"] for r in rows if r.get("finished_at")]
    if not rows or not ends:
        return {}
    offset = _uptime() - time.time()  # run rows are timestamped in UTC; samples in seconds since boot
    begin, end = rows[0]["started_at"].timestamp() + offset, max(ends).timestamp() + offset
    out = {}
    for name, samples in sampler.worker_rss.items():
        inside = [mb for t, mb in samples if begin - 0.3 <= t <= end + 0.3]
        if inside:
            out[name] = round(max(inside), 1)
    return out


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for value in values:
        out[str(value)] += 1
    return dict(out)


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def run_fleet(api_url: str, env: dict[str, str], workdir: Path, *, sites: int, mode: str = "single",
              batch: int = 10, workers: int = 2, worker_limit: int = 2, query_seconds: float = 2.0,
              timeout: float = 3600, per_host_limit: int = 4) -> dict[str, Any]:
    """Serve `sites` generated sites, deploy the flow on a new process pool of the server at `api_url`, start
    `workers` process workers, run every source once as due flow runs and measure. `env`: the environment of the
    workers (PREFECT_*, HARVEST_*: the database, storage and API stand-ins); the harvest database is read for
    the run rows (it should hold no other runs). Everything started here is stopped before returning."""
    tag = uuid.uuid4().hex[:8]
    pool = f"fleet-{tag}"
    fleet = Fleet(api_url, {**env, "PREFECT_API_URL": api_url, "PREFECT_WORKER_QUERY_SECONDS": f"{query_seconds:g}",
                            "HARVEST_PER_HOST_CONCURRENCY": str(per_host_limit)}, workdir)
    cluster = None
    generated = fleet_sites(sites)
    sampler = Sampler()
    try:
        with FleetServer(generated) as server:
            create_pool(fleet, pool)
            deployment_id = deploy(fleet, mode, pool, tag)
            if mode == "dask":
                cluster = _dask_cluster(fleet.env)
                fleet.env.update({"HARVEST_TASK_RUNNER": "dask", "HARVEST_DASK_ADDRESS": cluster.scheduler_address})
            sampler.workers = start_workers(fleet, pool, workers, worker_limit, tag, mode, query_seconds)
            sampler.start()
            started = time.time()
            ids = create_runs(fleet, deployment_id, [server.url(s) for s in generated], mode, batch)
            flow_runs = wait_runs(fleet, ids, timeout)
            finished = max(_ts(r["end_time"]) for r in flow_runs if r.get("end_time"))
            time.sleep(1)  # the last processes' exit is sampled
            sampler.stop()
            runs, stored = _rows(env["HARVEST_DATABASE_URL"])
            result = measure(sampler, flow_runs, runs, started, finished)
            result.update(stored)
            result["politeness"] = server.politeness(per_host_limit)
    finally:
        sampler.stop() if sampler._thread.is_alive() else None
        fleet.stop_all()
        if cluster is not None:
            cluster.close()
    result.update({"mode": mode, "batch": batch if mode in ("batch", "dask") else 1, "workers": workers,
                   "worker_limit": worker_limit, "worker_query_seconds": query_seconds,
                   "site_activities": sum(s.activities for s in generated)})
    return result


def _dask_cluster(env: dict[str, str]) -> Any:
    """A local Dask cluster of 2 worker processes (profiler off: flows/runners.py says why), with the fleet's
    environment, so every subflow's tasks run there."""
    import dask
    from distributed import LocalCluster

    os.environ.update({k: v for k, v in env.items() if k.startswith(("HARVEST_", "PREFECT_", "OPENAI_", "AWS_"))})
    os.environ["PYTHONPATH"] = str(ROOT)
    dask.config.set({"distributed.worker.profile.enabled": False})
    return LocalCluster(n_workers=2, threads_per_worker=8, processes=True, dashboard_address=":0")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=int(os.environ.get("BENCH_FLEET_SITES", "200")))
    parser.add_argument("--mode", choices=sorted(ENTRYPOINTS), default="single")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--query-seconds", type=float, default=2.0)
    parser.add_argument("--worker-limit", type=int, default=2, help="Flow runs each of the two workers runs at once.")
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds to wait for every run to finish.")
    parser.add_argument("--profile", type=Path, help="fleetworker: each run's child writes its phases, the modules it "
                        "imported and a cProfile here (flows/fleet_profile.py).")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    import tempfile

    from bench.run import DEFAULT_PG, start_prefect_server
    from testkit.geocoder_server import GeocoderTestServer
    from testkit.openai_server import OpenAITestServer
    from testkit.s3 import MotoS3

    workdir = Path(tempfile.mkdtemp(prefix="harvest-fleet-"))
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM stops the workers and servers too
    for name, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(name, value)  # moto accepts any credentials; boto3 needs some
    database_url = os.environ.get("HARVEST_BENCH_DATABASE_URL", DEFAULT_PG)
    _reset_harvest_database(database_url)
    prefect_db = _prefect_database(database_url)
    base = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HARVEST_"))},
        "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_HOME": str(workdir / "prefect"), "PREFECT_API_DATABASE_CONNECTION_URL": prefect_db,
        "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
    }
    load_before = _load()
    server, api_url = start_prefect_server(workdir, base)
    s3 = MotoS3().start()
    try:
        bucket = s3.new_bucket()
        with OpenAITestServer() as openai_server, GeocoderTestServer() as geocoder:
            env = {
                **base,
                "HARVEST_DATABASE_URL": database_url, "HARVEST_STORAGE_URL": f"s3://{bucket}/harvest",
                "HARVEST_S3_ENDPOINT_URL": s3.endpoint, "OPENAI_API_KEY": "bench-key",
                "OPENAI_BASE_URL": openai_server.base_url, "HARVEST_GEOCODER_URL": geocoder.base_url,
                "HARVEST_GEOCODER_RATE_PER_SECOND": "2000", "HARVEST_ALLOW_PRIVATE_NETWORKS": "true",
                "HARVEST_BATCH_POLL_SECONDS": "0.5", "HARVEST_BATCH_POLL_MAX_SECONDS": "2",
            }
            if args.profile:
                env["HARVEST_FLEET_PROFILE"] = str(args.profile.resolve())
            print(f"bench: fleet of {args.sites} sites, mode {args.mode} (load {load_before}) ...", file=sys.stderr,
                  flush=True)
            result = run_fleet(api_url, env, workdir, sites=args.sites, mode=args.mode, batch=args.batch,
                               worker_limit=args.worker_limit, query_seconds=args.query_seconds,
                               timeout=args.timeout)
        pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        objects = [item for page in pages for item in page.get("Contents", [])]
        result["s3_objects_left"] = len(objects)
        result["s3_bytes_left"] = sum(int(item["Size"]) for item in objects)
    finally:
        s3.stop()
        server.terminate()
        server.wait(30)
        _drop_database(prefect_db)
    result["load_average_before"] = load_before
    result["load_average_after"] = _load()
    args.out.write_text(json.dumps(result, indent=2, default=int))
    print(json.dumps(result, indent=2, default=int), file=sys.stderr)
    return 0


def _reset_harvest_database(database_url: str) -> None:
    """Migrated and empty: the fleet's rows are the only ones read back."""
    from harvest.db.engine import get_engine, upgrade

    upgrade(database_url)
    with get_engine(database_url).begin() as connection:
        connection.exec_driver_sql(
            "TRUNCATE activities, run_files, scrape_runs, geocode_cache, image_cache, llm_answers CASCADE")


def _conninfo(database_url: str) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    return dict(host=url.host, port=url.port or 5432, user=url.username, password=url.password, dbname=url.database)


def _prefect_database(database_url: str) -> str:
    """A new Postgres database for the fleet's Prefect server (as a deployment's server runs on Postgres)."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"harvest_fleet_prefect_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(**_conninfo(database_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return make_url(database_url).set(drivername="postgresql+asyncpg", database=name).render_as_string(
        hide_password=False)


def _drop_database(url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    with psycopg.connect(**{**_conninfo(url), "dbname": "postgres"}, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
