"""Issue 28: `harvest scrape` starts crawling at once, while Prefect's API and the flow are still coming up (the
crawl stage adopts the early crawl: harvest.crawl.stage.start_crawl_early), and later commands reuse the local
Prefect server the first one started."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections import Counter
from pathlib import Path

from tests.cli_support import HARVEST
from tests.failures.support import all_runs
from tests.helpers import seed_prefect_home


def test_the_crawl_starts_before_the_run_exists_and_is_adopted(harvest_env, demo_site, tmp_path: Path) -> None:
    """At the site's first request no run row exists yet (the flow records it once Prefect is up): the crawl did
    not wait for Prefect. The run then takes that crawl over: every page is fetched once, none twice."""
    db_url = harvest_env["HARVEST_DATABASE_URL"]
    seen: dict[str, object] = {}
    first = threading.Event()
    record = demo_site._record

    def watch(*args: object, **kwargs: object) -> None:
        if not first.is_set():
            first.set()
            seen["rows_at_first_request"] = len(all_runs(db_url))
        record(*args, **kwargs)

    demo_site.reset_counters()
    demo_site._record = watch
    env = {**os.environ, **harvest_env, "PREFECT_HOME": str(seed_prefect_home(tmp_path / "prefect-cli")),
           "HARVEST_HOME": str(tmp_path / "harvest-home"), "HARVEST_PREFECT_SERVER": "temporary"}
    try:
        done = subprocess.run([HARVEST, "scrape", demo_site.base_url + "/", "--max-pages", "25", "--max-extractions",
                               "8", "--json"], env=env, capture_output=True, text=True, timeout=600)
    finally:
        demo_site._record = record
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["status"] == "completed" and summary["activities_processed"] > 0
    assert seen["rows_at_first_request"] == 0, "the first request waited for the flow"
    fetched = Counter(target for method, target, _ in demo_site.log if method == "GET")
    assert fetched["/robots.txt"] == 1
    assert max(fetched.values()) == 1, [target for target, count in fetched.items() if count > 1]


def test_a_second_command_reuses_the_local_server(harvest_env, demo_site, tmp_path: Path) -> None:
    """The first flow command starts the background server and says where its UI is; the next reuses it (same
    process, nothing said); `harvest server stop` ends it."""
    env = {**os.environ, **harvest_env, "PREFECT_HOME": str(seed_prefect_home(tmp_path / "prefect-cli")),
           "HARVEST_HOME": str(tmp_path / "harvest-home"), "HARVEST_PREFECT_SERVER": "background"}
    args = ["scrape", demo_site.base_url + "/", "--max-pages", "5", "--max-extractions", "2", "--json"]
    try:
        first = subprocess.run([HARVEST, *args], env=env, capture_output=True, text=True, timeout=600)
        assert first.returncode == 0, first.stderr[-3000:]
        status = json.loads(subprocess.run([HARVEST, "server", "status", "--json"], env=env, capture_output=True,
                                           text=True, timeout=60).stdout)
        second = subprocess.run([HARVEST, *args], env=env, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr[-3000:]
        again = json.loads(subprocess.run([HARVEST, "server", "status", "--json"], env=env, capture_output=True,
                                          text=True, timeout=60).stdout)
    finally:
        stopped = subprocess.run([HARVEST, "server", "stop", "--json"], env=env, capture_output=True, text=True,
                                 timeout=120)
    assert "its UI is at " + status["ui_url"] in first.stderr
    assert "its UI is at" not in second.stderr
    assert status["running"] and again["running"] and again["pid"] == status["pid"]
    assert json.loads(stopped.stdout) == {"stopped": True, "pid": status["pid"]}
    gone = subprocess.run([HARVEST, "server", "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(gone.stdout)["running"] is False
    assert len({row["id"] for row in all_runs(harvest_env["HARVEST_DATABASE_URL"])}) == 2
