"""`make bench`: run the flow at several input sizes against Postgres, a moto S3 server and the local
OpenAI/geocoder servers, and write `bench/results/latest.json` plus a markdown table.

Every measured case runs in a fresh subprocess, so its peak RSS is its own:
- `bench.one N`: our flow over N activities with auto-import, then (same process, after the peak RSS is
  read) the plain-COPY floor of the same rows;
- `bench.one N --rerun`: the same input again over what the first run stored (wall ratio, API calls);
- `bench.whole_lists N`: the whole-lists alternative a typical Prefect user would write;
- `bench.crawl URL MODE`, once per render mode, over the demo site served from this process;
- `bench.dask_processes N`, twice (thread runner, then a local Dask cluster of worker processes): the `dask` entry;
- `bench.cli_start`: the `harvest` command's first request, on a new home and on the same home again (`cli_start`).

Sizes: BENCH_SIZES (default "100,1000,10000,50000": issue 15's memory target compares 50,000 with 1,000).
BENCH_RERUN=0 skips the re-runs, BENCH_WHOLE_LISTS=0 the alternative, BENCH_CRAWL=0 the crawls
(BENCH_CRAWL_REPEATS rounds of them, default 3: medians are reported); the alternative runs only up to
BENCH_WHOLE_LISTS_MAX (10000: at 50,000 it would hold ~15 GB of lists). BENCH_DASK=0 skips the Dask entry;
BENCH_DASK_N (10000) and BENCH_DASK_PROCESSES (2) size it. BENCH_CLI_START=0 skips `cli_start`;
BENCH_CLI_START_ROUNDS (3) rounds of it, the medians reported.
`bench.fleet`: a fleet of BENCH_FLEET_SITES (200) generated small sites on their own loopback addresses, run as due
flow runs by two process workers on a Prefect server of its own: first with one `scrape-website` flow run per
source, then with `scrape-sources` (BENCH_FLEET_BATCH, 10, sources per flow-run process), then the batches on a
local Dask cluster of 2 worker processes, then one flow run per source again drained by two `harvest sources worker`s
(a forked child per run: `fleetworker`) (the `fleet` entry). BENCH_FLEET=0 skips it; BENCH_FLEET=quick runs 20
sites; BENCH_FLEET_MODES ("single,batch,dask,fleetworker") chooses the modes.
BENCH_RSS_TIMELINE=FILE: each flow case appends its memory second by second, and what it kept (bench/rss.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from testkit.geocoder_server import GeocoderTestServer
from testkit.openai_server import OpenAITestServer
from testkit.s3 import MotoS3

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
# Its own database: the test suite truncates harvest_test between tests.
DEFAULT_PG = "postgresql+psycopg://harvest:harvest@127.0.0.1:5432/harvest_bench"
CRAWL_MODES = {"auto": "adaptive", "browser": "browser_only", "http": "http_floor"}


def child(module: str, args: list[str], env: dict[str, str], out: Path) -> dict[str, Any]:
    """Run `python -m module args... out` in a fresh process and read the JSON it wrote."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", module, *args, str(out)], env={**os.environ, **env},
                   check=True, cwd=ROOT)
    result = json.loads(out.read_text())
    result["process_wall_s"] = round(time.perf_counter() - started, 2)
    return result


def start_prefect_server(workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """`prefect server start` on a free loopback port (SQLite in the bench's PREFECT_HOME).

    Returns the process and its API URL."""
    import httpx

    from testkit.net import free_port

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = open(workdir / "prefect-server.log", "wb")  # noqa: SIM115 - lives as long as the server
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env, "PREFECT_UI_ENABLED": "false"}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited; see {workdir / 'prefect-server.log'}")
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return server, api
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise RuntimeError("prefect server did not become healthy in 180 s")


def _flag(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "")


def _api_requests(openai_server: OpenAITestServer, geocoder: GeocoderTestServer) -> dict[str, int]:
    return {"openai": openai_server.stats().get("requests", 0), "geocoder": geocoder.stats().get("requests", 0)}


def run_size(n: int, env: dict[str, str], workdir: Path, openai_server: OpenAITestServer,
             geocoder: GeocoderTestServer) -> dict[str, Any]:
    print(f"bench: N={n}: harvest flow ...", file=sys.stderr, flush=True)
    before = _api_requests(openai_server, geocoder)
    result = child("bench.one", [str(n)], env, workdir / f"result-{n}.json")
    after = _api_requests(openai_server, geocoder)
    result["api_calls"] = {name: after[name] - before[name] for name in after}
    if _flag("BENCH_RERUN"):
        print(f"bench: N={n}: re-run over the same input ...", file=sys.stderr, flush=True)
        rerun = child("bench.one", [str(n), "--rerun"], env, workdir / f"rerun-{n}.json")
        again = _api_requests(openai_server, geocoder)
        calls = {name: again[name] - after[name] for name in again}
        result["rerun_wall_s"] = rerun["wall_s"]
        result["rerun_wall_ratio"] = round(rerun["wall_s"] / result["wall_s"], 2) if result["wall_s"] else None
        result["rerun_api_calls"] = sum(calls.values())
        result["rerun_api_calls_by_service"] = calls
        result["rerun_import_summary"] = rerun.get("import_summary")
        result["rerun_cost_usd_per_1000_activities"] = rerun.get("cost_usd_per_1000_activities")
        result["rerun_cost_usd_per_1000_activities_with_google"] = rerun.get(
            "cost_usd_per_1000_activities_with_google")
    if _flag("BENCH_WHOLE_LISTS") and n <= int(os.environ.get("BENCH_WHOLE_LISTS_MAX", "10000")):
        print(f"bench: N={n}: whole-lists alternative ...", file=sys.stderr, flush=True)
        storage = workdir / f"whole-lists-results-{n}"
        alt = child("bench.whole_lists", [str(n)], {**env, "PREFECT_LOCAL_STORAGE_PATH": str(storage)},
                    workdir / f"whole-lists-{n}.json")
        result["whole_lists"] = {
            key: alt[key] for key in ("activities", "wall_s", "peak_rss_mb", "bytes_between_tasks")
        }
    return result


def run_crawls(workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    from testkit.demo_site import build_demo_site, serve_site

    root = workdir / "demo-site"
    build_demo_site(root)
    repeats = max(1, int(os.environ.get("BENCH_CRAWL_REPEATS", "3")))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CRAWL_MODES.values()}
    with serve_site(root) as site:
        recrawl = run_recrawl(site, workdir, env)
        # Rounds of every mode, so a slow spell of a shared machine falls on all modes alike; the median
        # crawl of each mode is reported, with every run's seconds next to it.
        for round_number in range(1, repeats + 1):
            for mode, name in CRAWL_MODES.items():
                print(f"bench: crawl of the demo site, render={mode} ({round_number}/{repeats}) ...", file=sys.stderr,
                      flush=True)
                runs[name].append(child("bench.crawl", [site.base_url + "/", mode], env,
                                        workdir / f"crawl-{mode}-{round_number}.json"))
    crawls = {}
    for name, results in runs.items():
        median = sorted(results, key=lambda result: result["seconds"])[len(results) // 2]
        crawls[name] = {**median, "runs_seconds": [result["seconds"] for result in results]}
    summary: dict[str, Any] = {f"crawl_pages_per_s_{name}": crawls[name]["pages_per_s"] for name in crawls}
    summary.update(recrawl)
    summary["details"] = crawls
    return summary


def run_recrawl(site: Any, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    """An adaptive crawl of the demo site keeping a page memory (SQLite, as the embedded default), then the
    same crawl again over the unchanged site: bytes the site sent (status lines, headers, bodies) and the
    crawl's seconds, second over first. The site was built moments ago, so its files are dated an hour back
    first: a crawl in the very second of every `<lastmod>` would (rightly) revalidate instead of skipping."""
    from testkit.demo_site import refresh_sitemap

    stamp = time.time() - 3600
    for path in site.root.rglob("*"):
        if path.is_file():
            os.utime(path, (stamp, stamp))
    refresh_sitemap(site.root)
    memory = f"sqlite:///{workdir / 'page-memory.db'}"
    measured = []
    for name in ("first", "rerun"):
        print(f"bench: crawl of the demo site with a page memory ({name}) ...", file=sys.stderr, flush=True)
        site.reset_counters()
        result = child("bench.crawl", [site.base_url + "/", "auto", "--memory", memory], env,
                       workdir / f"recrawl-{name}.json")
        result["bytes_received"] = site.bytes_sent
        result["statuses"] = {str(status): count for status, count in sorted(site.statuses().items())}
        measured.append(result)
    first, rerun = measured
    return {
        "rerun_crawl_bytes_ratio": round(rerun["bytes_received"] / first["bytes_received"], 3),
        "rerun_crawl_wall_ratio": round(rerun["seconds"] / first["seconds"], 3),
        "recrawl": {"first": first, "rerun": rerun},
    }


def run_dask(env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """The same cold run over BENCH_DASK_N activities (10,000) with the thread runner, then on a local Dask
    cluster of BENCH_DASK_PROCESSES worker processes (2): both walls, and whether the output is identical."""
    n = int(os.environ.get("BENCH_DASK_N", "10000"))
    processes = int(os.environ.get("BENCH_DASK_PROCESSES", "2"))
    print(f"bench: N={n}: thread runner, then Dask with {processes} worker processes ...", file=sys.stderr, flush=True)
    threads = child("bench.dask_processes", [str(n)], {**env, "HARVEST_TASK_RUNNER": "threads"},
                    workdir / f"dask-threads-{n}.json")
    dask = child("bench.dask_processes", [str(n)],
                 {**env, "HARVEST_TASK_RUNNER": "dask", "HARVEST_DASK_PROCESSES": str(processes)},
                 workdir / f"dask-processes-{n}.json")
    flow = f":{dask['flow_process_pid']}"
    return {
        "n": n,
        "dask_processes": processes,
        "threads_wall_s": threads["wall_s"],
        "dask_processes_wall_s": dask["wall_s"],
        "dask_over_threads": round(dask["wall_s"] / threads["wall_s"], 2) if threads["wall_s"] else None,
        "output_identical": threads["sha256"] == dask["sha256"] and threads["activities"] == dask["activities"],
        "activities": dask["activities"],
        # host:pid of the processes that ran the geocode chunks and the embeddings submission in the Dask run
        "enrichment_processes": len(dask["enrichment_processes"]),
        "enrichment_in_flow_process": any(p.endswith(flow) for p in dask["enrichment_processes"]),
    }


def run_fleet(workdir: Path) -> dict[str, Any]:
    """The `fleet` entry: bench.fleet once per mode, each with its own Prefect server and an emptied database."""
    flag = os.environ.get("BENCH_FLEET", "1").strip().lower()
    sites = os.environ.get("BENCH_FLEET_SITES", "20" if flag == "quick" else "200")
    batch = os.environ.get("BENCH_FLEET_BATCH", "10")
    modes = [m for m in os.environ.get("BENCH_FLEET_MODES", "single,batch,dask,fleetworker").split(",") if m.strip()]
    fleet: dict[str, Any] = {}
    for mode in modes:
        print(f"bench: fleet of {sites} sites, {mode} ...", file=sys.stderr, flush=True)
        fleet[mode] = child("bench.fleet", ["--sites", sites, "--mode", mode, "--batch", batch], {},
                            workdir / f"fleet-{mode}.json")
    return fleet


def targets(results: list[dict[str, Any]], crawl: dict[str, Any], start: dict[str, Any] | None = None,
            ) -> dict[str, Any]:
    """The issue's target ratios, computed from this run (None when a needed case was not run)."""
    by_n = {r["n"]: r for r in results}
    ratios: dict[str, Any] = {}
    if start:
        ratios["cli_first_request_s_warm"] = start["first_request_s_warm"]
        ratios["cli_first_request_s_new_home"] = start["first_request_s_new_home"]
    if 1000 in by_n and 10000 in by_n:
        ratios["peak_rss_10k_over_1k"] = round(by_n[10000]["peak_rss_mb"] / by_n[1000]["peak_rss_mb"], 2)
    largest = by_n[max(by_n)] if by_n else None
    if largest:
        ratios["largest_n"] = largest["n"]
        if largest.get("import_rows_per_s") and largest.get("copy_rows_per_s"):
            ratios["import_over_copy"] = round(largest["import_rows_per_s"] / largest["copy_rows_per_s"], 2)
            ratios["import_over_copy_only"] = round(largest["import_rows_per_s"] / largest["copy_only_rows_per_s"], 2)
        alt = largest.get("whole_lists")
        if alt:
            ratios["wall_ours_over_whole_lists"] = round(largest["wall_s"] / alt["wall_s"], 2)
            ratios["peak_rss_ours_over_whole_lists"] = round(largest["peak_rss_mb"] / alt["peak_rss_mb"], 2)
        ratios["max_bytes_between_tasks"] = max(r["bytes_between_tasks"] for r in results)
        ratios["task_runs_limit_at_largest_n"] = 30 + largest["n"] / 500
    if crawl:
        adaptive = crawl["crawl_pages_per_s_adaptive"]
        ratios["crawl_adaptive_over_browser_only"] = round(adaptive / crawl["crawl_pages_per_s_browser_only"], 2)
        ratios["crawl_adaptive_over_http_floor"] = round(adaptive / crawl["crawl_pages_per_s_http_floor"], 2)
        if "rerun_crawl_bytes_ratio" in crawl:
            ratios["rerun_crawl_bytes_ratio"] = crawl["rerun_crawl_bytes_ratio"]
            ratios["rerun_crawl_wall_ratio"] = crawl["rerun_crawl_wall_ratio"]
    return ratios


KEYS = [
    "n", "activities", "wall_s", "peak_rss_mb", "bytes_between_tasks", "task_runs", "embedding_bytes_per_activity",
    "import_rows_per_s", "copy_rows_per_s", "copy_only_rows_per_s", "rerun_wall_ratio", "rerun_api_calls",
]
COST_KEYS = [
    "n", "cost_usd", "cost_usd_per_1000_activities", "rerun_cost_usd_per_1000_activities",
    "cost_usd_per_1000_activities_with_google", "rerun_cost_usd_per_1000_activities_with_google",
]


def markdown(document: dict[str, Any]) -> str:
    results = document["results"]
    lines = [f"Generated {document['generated_at']} on {document['machine']}.", "", "### Our flow", ""]
    lines += ["| " + " | ".join(KEYS) + " |", "|" + "---|" * len(KEYS)]
    lines += ["| " + " | ".join(str(r.get(key, "")) for key in KEYS) + " |" for r in results]
    lines += ["", "### Estimated cost (the run ledger, at the configured prices)", "",
              "| " + " | ".join(COST_KEYS) + " |", "|" + "---|" * len(COST_KEYS)]
    lines += ["| " + " | ".join(str(r.get(key, "")) for key in COST_KEYS) + " |" for r in results]
    stages = sorted({stage for r in results for stage in r.get("stage_wall_s", {})})
    lines += ["", "### Wall seconds per stage", "",
              "| n | " + " | ".join(stages) + " |", "|" + "---|" * (len(stages) + 1)]
    lines += ["| " + " | ".join([str(r["n"])] + [str(r.get("stage_wall_s", {}).get(s, "")) for s in stages]) + " |"
              for r in results]
    kinds = sorted({kind for r in results for kind in r.get("stored_bytes", {})})
    lines += ["", "### Stored bytes per kind", "", "| n | " + " | ".join(kinds) + " |", "|" + "---|" * (len(kinds) + 1)]
    lines += ["| " + " | ".join([str(r["n"])] + [str(r.get("stored_bytes", {}).get(k, "")) for k in kinds]) + " |"
              for r in results]
    if any("whole_lists" in r for r in results):
        lines += ["", "### Ours vs the whole-lists alternative (bench/whole_lists.py)", "",
                  "| n | wall_s ours | wall_s whole-lists | peak_rss_mb ours | peak_rss_mb whole-lists "
                  "| bytes_between_tasks ours | bytes_between_tasks whole-lists |", "|---|---|---|---|---|---|---|"]
        for r in results:
            alt = r.get("whole_lists") or {}
            lines.append(f"| {r['n']} | {r['wall_s']} | {alt.get('wall_s', '')} | {r['peak_rss_mb']} | "
                         f"{alt.get('peak_rss_mb', '')} | {r['bytes_between_tasks']} | "
                         f"{alt.get('bytes_between_tasks', '')} |")
    dask = document.get("dask") or {}
    if dask:
        title = f"### Dask, {dask['dask_processes']} worker processes, vs the thread runner (N={dask['n']}, cold)"
        lines += ["", title, "", "| threads wall_s | dask_processes_wall_s | dask/threads | output_identical |",
                  "|---|---|---|---|",
                  f"| {dask['threads_wall_s']} | {dask['dask_processes_wall_s']} | {dask['dask_over_threads']} | "
                  f"{dask['output_identical']} |"]
    fleet = document.get("fleet") or {}
    if fleet:
        lines += ["", "### Fleet (bench/fleet.py: due sources on two process workers, or two fleet workers)", "",
                  "| mode | sources | completed | sources/h | activities/h | worker s/source | CPU s/source "
                  "| step work s/source | fixed overhead s/source | peak RSS MiB first 50 / last 50 | politeness held "
                  "| load before / after |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for mode, f in fleet.items():
            lines.append(
                f"| {mode} (batch {f['batch']}) | {f['sources']} | {f['completed']} | {f['sources_per_hour']} | "
                f"{f['activities_per_hour']} | {f['worker_s_per_source']} | {f['cpu_s_per_source']} | "
                f"{f['step_work_s_per_source']} | {f['fixed_overhead_s_per_source']} | "
                f"{f['peak_rss_mb_first_50_sources']} / {f['peak_rss_mb_last_50_sources']} | "
                f"{f['politeness']['held']} | {f['load_average_before']} / {f['load_average_after']} |")
    start = document.get("cli_start") or {}
    if start:
        lines += ["", "### `harvest scrape` to its first request (cli_start, median of the rounds)", "",
                  "| home | first request s | CPU s by then | whole command s | target s | every round (s, load) |",
                  "|---|---|---|---|---|---|"]
        for home, target in (("warm", 2.0), ("new_home", 5.0)):
            rounds = ", ".join(f"{case['first_request_s']} ({case['load_average_before']})" for case in start[home])
            lines.append(f"| {home} | {start[f'first_request_s_{home}']} | {start[f'first_request_cpu_s_{home}']} | "
                         f"{start[f'wall_s_{home}']} | {target} | {rounds} |")
    crawl = document.get("crawl") or {}
    if crawl:
        lines += ["", "### Crawl of the demo site (median of the rounds)", "",
                  "| render | pages | rendered in Chromium | seconds | pages/s | every round's seconds |",
                  "|---|---|---|---|---|---|"]
        for name, detail in crawl["details"].items():
            rounds = ", ".join(str(seconds) for seconds in detail.get("runs_seconds", [detail["seconds"]]))
            lines.append(f"| {detail['mode']} ({name}) | {detail['pages']} | {detail['pages_rendered']} | "
                         f"{detail['seconds']} | {detail['pages_per_s']} | {rounds} |")
    lines += ["", "### Target ratios", "", "| ratio | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in document["targets"].items()]
    lines += ["", "### What the columns mean", ""] + [f"- {note}" for note in NOTES]
    return "\n".join(lines) + "\n"


NOTES = [
    "Each case is its own process (`bench.one`, `bench.whole_lists`, `bench.crawl`): peak_rss_mb is that "
    "process's own peak RSS (VmHWM; not ru_maxrss, which a child inherits from its parent at exec), read right "
    "after the flow (the COPY floor that follows is not counted). One Prefect "
    "server (`prefect server start`, SQLite) serves every case, as a deployment's server would; it and moto "
    "run in other processes.",
    "wall_s: the flow call (creating the flow run through the API, every task, hooks and artifacts).",
    "import_rows_per_s: activities / the import stage's seconds (stream final.jsonl from S3, parse, encode, "
    "binary COPY into a temp table, one INSERT ... ON CONFLICT per 2,000 rows).",
    "copy_rows_per_s: the floor for the same rows: read the local final.jsonl, parse, encode every activities "
    "column, one binary COPY into a scratch table without index or constraint. copy_only_rows_per_s: that COPY "
    "statement alone, from rows encoded beforehand.",
    "rerun_*: `bench.one N --rerun`, the same input again over what the first run stored; rerun_api_calls "
    "counts requests the OpenAI and geocoder stand-ins received during it.",
    "cost_usd*: the run's ledger (harvest.db.ledger) priced with the HARVEST_PRICE_* defaults: the bench starts "
    "from stored raw activities (no crawl, so no LLM extraction) and geocodes with Nominatim (free), so a first "
    "run pays for its embeddings batch; *_with_google adds its geocoder requests at Google's $5 per 1,000. "
    "rerun_*: the unchanged re-run, which reuses vectors and geocodes.",
    "whole_lists: bench/whole_lists.py, the same stages with whole lists between tasks and Prefect's default "
    "persisted results (pickle, local storage); its bytes_between_tasks is the size of those result files.",
    "crawl: harvest.crawl over the demo site (531 pages, 15 drawn by scripts) in each render mode, "
    "BENCH_CRAWL_REPEATS rounds (default 3) of all three modes; each mode's median crawl is reported.",
    "rerun_crawl_bytes_ratio / rerun_crawl_wall_ratio: an adaptive crawl keeping a page memory (page_cache, "
    "SQLite), then the same crawl of the unchanged site: bytes the demo site sent (status lines, headers, "
    "bodies) and the crawl's seconds, re-crawl over first crawl (details under crawl.recrawl).",
    "cli_start: `harvest scrape URL --max-pages 5` as a new user runs it (the installed console script, a new HOME, "
    "no PREFECT_* variable, the embedded defaults), seconds from spawning it to its first request at a local site "
    "(robots.txt), on a new home and then on the same home again (warm: its local Prefect server running); CPU s "
    "is what the command had used by then (on a shared machine the wall time is mostly the others' load, given "
    "per round as the 1-minute load average). Targets (issue 28): warm <= 2 s, new home <= 5 s.",
    "The machine has 2 cores and other test runs may have been sharing them during this bench.",
]


def main() -> int:
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "100,1000,10000,50000").split(",") if s.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="harvest-bench-"))
    fake_aws = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    for name, value in fake_aws.items():
        os.environ.setdefault(name, value)  # moto accepts any credentials; boto3 needs some
    base_env = {
        "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_HOME": str(workdir / "prefect"), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "HARVEST_ALLOW_PRIVATE_NETWORKS": "true",
    }
    # The command's start first: it brings its own Prefect server up and down, in a home of its own.
    start: dict[str, Any] = {}
    if _flag("BENCH_CLI_START"):
        print("bench: cli_start ...", file=sys.stderr, flush=True)
        start = child("bench.cli_start", ["--rounds", os.environ.get("BENCH_CLI_START_ROUNDS", "3")], {},
                      workdir / "cli-start.json")
    # The crawls next: they need no Prefect, and a server that has just started keeps a core busy for a
    # while (its services), which would be measured as the crawler's.
    crawl: dict[str, Any] = {}
    if _flag("BENCH_CRAWL"):
        crawl = run_crawls(workdir, base_env)
    # The fleet: its own Prefect server (on Postgres) and workers per mode, before this run's server starts.
    fleet: dict[str, Any] = {}
    if _flag("BENCH_FLEET"):
        fleet = run_fleet(workdir)
    # One Prefect server for every case, as in production: a flow's wall time is then the flow, not the start
    # of an ephemeral API inside each measured process (~10-20 s that would hide what the flow does).
    server, base_env["PREFECT_API_URL"] = start_prefect_server(workdir, base_env)
    s3 = MotoS3().start()
    try:
        with OpenAITestServer() as openai_server, GeocoderTestServer() as geocoder:
            results = []
            dask: dict[str, Any] = {}
            for n in sizes:
                bucket = s3.new_bucket()
                env = {
                    **base_env,
                    "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                    "HARVEST_DATABASE_URL": os.environ.get("HARVEST_BENCH_DATABASE_URL", DEFAULT_PG),
                    "HARVEST_STORAGE_URL": f"s3://{bucket}/harvest", "HARVEST_S3_ENDPOINT_URL": s3.endpoint,
                    "OPENAI_API_KEY": "bench-key", "OPENAI_BASE_URL": openai_server.base_url,
                    "HARVEST_GEOCODER_URL": geocoder.base_url, "HARVEST_GEOCODER_RATE_PER_SECOND": "2000",
                    "HARVEST_BATCH_POLL_SECONDS": "0.5", "HARVEST_BATCH_POLL_MAX_SECONDS": "2",
                }
                results.append(run_size(n, env, workdir, openai_server, geocoder))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
            if _flag("BENCH_DASK"):
                dask = run_dask(env, workdir)
                print(json.dumps(dask), file=sys.stderr, flush=True)
    finally:
        s3.stop()
        server.terminate()
        server.wait(30)
    RESULTS.mkdir(exist_ok=True)
    document = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cores; other processes may have shared them (see the notes in README)",
        "results": results,
        "crawl": crawl,
        "dask": dask,
        "cli_start": start,
        "fleet": fleet,
    }
    document["targets"] = targets(results, crawl, start)
    (RESULTS / "latest.json").write_text(json.dumps(document, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown(document))
    print(markdown(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
