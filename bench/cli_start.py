"""The `cli_start` entry of `make bench` (issue 28): seconds from starting `harvest scrape URL` to its first
request at a local site, on a brand-new home and then on the same (warm) home.

`python -m bench.cli_start [--rounds N] <out.json>`. Each case runs the installed `harvest` console script as a
person would: a new HOME, no PREFECT_* variable, the embedded defaults (SQLite and a local folder under
~/.harvest), a small demo site served by this process on loopback. The clock starts just before the process is
spawned and stops at the site's first request (any path: robots.txt comes first). A run's whole wall time is
recorded too. The machine's load average is written beside the figures: on a shared machine it explains most of
their spread.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HARVEST = str(Path(sys.executable).parent / "harvest")


class FirstRequest:
    """Wraps a SiteServer's request log so the wall-clock time of the first request after `arm()` is kept, and the
    CPU seconds the watched process had used by then (its own and its threads': on a shared machine the wall time
    mostly measures the other processes, the CPU time what harvest did)."""

    def __init__(self, site: Any) -> None:
        self.at: float | None = None
        self.cpu: float | None = None
        self.pid: int | None = None
        record = site._record

        def first(*args: Any, **kwargs: Any) -> None:
            if self.at is None:
                self.at = time.time()
                self.cpu = cpu_seconds(self.pid) if self.pid else None
            record(*args, **kwargs)

        site._record = first

    def arm(self) -> None:
        self.at = self.cpu = self.pid = None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (/proc/PID/stat), or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def user_env(home: Path) -> dict[str, str]:
    """A new user's environment: a home of its own and nothing of Prefect's."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HARVEST_ALLOW_PRIVATE_NETWORKS": "true",  # the site is on 127.0.0.1
        "HARVEST_GEOCODER": "none",  # no outside service: only the start is measured
        "DO_NOT_TRACK": "1",
    }
    return env


def one_start(url: str, home: Path, watch: FirstRequest) -> dict[str, Any]:
    """Run `harvest scrape url` once; seconds to the first request and to the end, and the exit code."""
    watch.arm()
    load = os.getloadavg()[0]
    started = time.time()
    process = subprocess.Popen([HARVEST, "scrape", url, "--max-pages", "5", "--json"], env=user_env(home),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watch.pid = process.pid
    _, stderr = process.communicate(timeout=900)
    ended = time.time()
    if process.returncode != 0:
        sys.stderr.write(stderr[-4000:])
    first = round(watch.at - started, 2) if watch.at is not None else None
    return {"first_request_s": first, "first_request_cpu_s": round(watch.cpu, 2) if watch.cpu is not None else None,
            "wall_s": round(ended - started, 2), "exit_code": process.returncode,
            "load_average_before": round(load, 2), "load_average_after": round(os.getloadavg()[0], 2)}


def main() -> int:
    out = Path(sys.argv[-1])
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
    from testkit.demo_site import build_demo_site, serve_site

    workdir = Path(tempfile.mkdtemp(prefix="harvest-cli-start-"))
    build_demo_site(workdir / "site", limit=10)
    new_home: list[dict[str, Any]] = []
    warm: list[dict[str, Any]] = []
    try:
        with serve_site(workdir / "site") as site:
            watch = FirstRequest(site)
            for round_number in range(rounds):
                home = workdir / f"home-{round_number}"
                home.mkdir()
                print(f"bench: cli_start round {round_number + 1}/{rounds}: new home ...", file=sys.stderr, flush=True)
                new_home.append(one_start(site.base_url + "/", home, watch))
                print(f"bench: cli_start round {round_number + 1}/{rounds}: warm ...", file=sys.stderr, flush=True)
                warm.append(one_start(site.base_url + "/", home, watch))
                _stop_background_server(home)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def median(cases: list[dict[str, Any]], key: str = "first_request_s") -> float | None:
        values = sorted(case[key] for case in cases if case[key] is not None)
        return values[len(values) // 2] if values else None

    result = {
        "first_request_s_warm": median(warm),
        "first_request_s_new_home": median(new_home),
        "first_request_cpu_s_warm": median(warm, "first_request_cpu_s"),
        "first_request_cpu_s_new_home": median(new_home, "first_request_cpu_s"),
        "wall_s_warm": median(warm, "wall_s"),
        "wall_s_new_home": median(new_home, "wall_s"),
        "target_s_warm": 2.0,
        "target_s_new_home": 5.0,
        "warm": warm,
        "new_home": new_home,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _stop_background_server(home: Path) -> None:
    """Stop the Prefect server a run may have left in the background under that home (none before issue 28)."""
    if (home / ".harvest").is_dir():
        subprocess.run([HARVEST, "server", "stop"], env=user_env(home), capture_output=True, timeout=120, check=False)


if __name__ == "__main__":
    sys.exit(main())
