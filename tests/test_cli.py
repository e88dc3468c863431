"""The `harvest` console script, run as a user would: a subprocess with its own environment, on the session's
Prefect API. Commands whose test is what they print and return run in this process (tests.helpers.run_cli):
a subprocess adds ~5 s of imports each and nothing a test looks at."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from tests.helpers import run_cli, session_prefect_api_url

HARVEST = str(Path(sys.executable).parent / "harvest")


def harvest(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env, "PREFECT_API_URL": session_prefect_api_url()}
    return subprocess.run([HARVEST, *args], env=full_env, capture_output=True, text=True, timeout=600)


def test_invalid_url_exits_2_with_the_reason_on_stderr(harvest_env, tmp_path) -> None:
    done = run_cli(["scrape", "file:///etc/passwd", "--json"], harvest_env)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "only http and https" in done.stderr


def test_max_crawl_seconds_flag_reaches_the_run_config(harvest_env, tmp_path) -> None:
    done = run_cli(["scrape", "https://example.org/", "--max-crawl-seconds", "0", "--json"], harvest_env)
    assert done.returncode == 2
    assert "max_crawl_seconds" in done.stderr and "greater than 0" in done.stderr


def test_scrape_json_then_runs_commands(harvest_env, demo_site, tmp_path) -> None:
    done = harvest(["scrape", demo_site.base_url + "/", "--max-pages", "25", "--max-extractions", "8", "--json"],
                   harvest_env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # stdout is exactly one JSON document
    assert summary["status"] == "completed" and summary["activities_processed"] > 0
    assert set(summary) >= {"run_id", "files", "import_summary", "warnings", "failed_urls"}
    assert summary["files"]["final_jsonl"]["records"] == summary["activities_processed"]
    run_id = summary["run_id"]

    listed = json.loads(run_cli(["runs", "list", "--json"], harvest_env).stdout)
    assert [row["id"] for row in listed] == [run_id]
    shown = json.loads(run_cli(["runs", "show", run_id, "--json"], harvest_env).stdout)
    assert shown["status"] == "completed" and shown["retention"] == "kept"
    assert shown["steps"]["crawl"]["items_out"] == summary["files"]["raw_activities"]["records"] > 0

    files = json.loads(run_cli(["runs", "files", run_id, "--json", "--expires", "2m"], harvest_env).stdout)
    assert {item["link_expires_seconds"] for item in files} == {120}
    query = dict(parse_qsl(urlsplit(files[0]["link"]).query))  # SigV2 (Expires: a time) or SigV4 (X-Amz-Expires)
    assert query.get("X-Amz-Expires") == "120" or 100 <= int(query["Expires"]) - time.time() <= 121
    final = next(item for item in files if item["kind"] == "final_jsonl")
    body = httpx.get(final["link"]).content  # an S3 presigned GET
    assert hashlib.sha256(body).hexdigest() == final["sha256"]

    cleaned = run_cli(["runs", "cleanup", run_id], harvest_env)
    assert cleaned.returncode == 0 and "deleted" in cleaned.stdout
    shown = json.loads(run_cli(["runs", "show", run_id, "--json"], harvest_env).stdout)
    assert shown["retention"] == "cleaned"
    states = {item["kind"]: item["state"] for item in shown["files"]}
    assert states.pop("digest") == "present", "the digest stays for the next run's diff"
    assert set(states.values()) == {"deleted"}


def test_unknown_run_is_a_clear_error(harvest_env, tmp_path) -> None:
    done = run_cli(["runs", "show", "no-such-run"], harvest_env)
    assert done.returncode == 2 and "no run no-such-run" in done.stderr


@pytest.mark.parametrize("args", [["db", "upgrade"]])
def test_db_upgrade_is_idempotent(harvest_env, tmp_path, args) -> None:
    for _ in range(2):
        done = run_cli(args, harvest_env)
        assert done.returncode == 0, done.stderr


def _scrape_with_stderr_on_a_terminal(args: list[str], env: dict[str, str], tmp_path: Path) -> tuple[int, str, str]:
    """Run `harvest` with stderr on a pseudo-terminal (as in a person's shell) and stdout piped."""
    import pty
    import threading

    master, slave = pty.openpty()
    full_env = {**os.environ, **env, "PREFECT_API_URL": session_prefect_api_url(), "COLUMNS": "200"}
    process = subprocess.Popen([HARVEST, *args], env=full_env, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stdout, _ = process.communicate(timeout=600)
    reader.join(timeout=10)
    os.close(master)
    return process.returncode, stdout, b"".join(chunks).decode("utf-8", "replace")


def test_live_progress_on_a_terminal_and_quiet_with_json(harvest_env, demo_site, tmp_path) -> None:
    args = ["scrape", demo_site.base_url + "/", "--max-pages", "25", "--max-extractions", "8"]
    code, stdout, terminal = _scrape_with_stderr_on_a_terminal(args, harvest_env, tmp_path)
    assert code == 0, terminal[-3000:]
    assert "completed" in stdout
    assert "pages fetched" in terminal and "activities found" in terminal  # the live line was drawn
    assert "harvest: crawl" in terminal  # ...while crawling, not only at the end

    code, stdout, terminal = _scrape_with_stderr_on_a_terminal([*args, "--json"], harvest_env, tmp_path)
    assert code == 0, terminal[-3000:]
    assert json.loads(stdout)["status"] == "completed"
    assert "pages fetched" not in terminal  # --json: no live display even on a terminal
