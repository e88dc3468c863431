"""Issue 28: what `harvest` prints. Tables with headers and a sentence when empty, summaries in words, and `--json`
on every command (one JSON document on stdout)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harvest.db import runs as run_rows
from harvest.db.engine import get_engine, upgrade
from harvest_cli import app
from tests.cli_support import clean_env, new_home, run_harvest


def _commands(group: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Every leaf command of the click tree typer builds, with its path."""
    children = getattr(group, "commands", None)
    if not children:
        return [(path, group)]
    found = []
    for name, child in children.items():
        found += _commands(child, (*path, name))
    return found


def test_every_command_has_json() -> None:
    from typer.main import get_command

    commands = _commands(get_command(app))
    assert len(commands) >= 18
    missing = [" ".join(path) for path, command in commands
               if "--json" not in {opt for param in command.params for opt in getattr(param, "opts", [])}]
    assert missing == []


@pytest.fixture
def home_with_runs() -> tuple[Path, dict[str, str], list[str]]:
    """A new home whose embedded SQLite database holds two finished runs."""
    home = new_home()
    env = clean_env(home)
    url = f"sqlite:///{home / '.harvest' / 'harvest.db'}"
    (home / ".harvest").mkdir()
    upgrade(url)
    engine = get_engine(url)
    ids = []
    for number, status in enumerate(("completed", "failed")):
        run_id = str(uuid.uuid4())
        run_rows.create_run(engine, run_id, f"https://example.org/{number}/", {})
        run_rows.finish_run(engine, run_id, status, retention="kept", activities_processed=1234 * number,
                            import_summary={"imported": 3, "updated": 1, "skipped": 0, "failed": 0})
        ids.append(run_id)
    return home, env, ids


def test_runs_list_has_a_header_and_an_empty_state(home_with_runs) -> None:  # noqa: ANN001
    empty = run_harvest(["runs", "list"], clean_env(new_home()))
    assert empty.returncode == 0 and empty.stdout.strip() == "no runs yet: start one with `harvest scrape URL`"
    assert json.loads(run_harvest(["runs", "list", "--json"], clean_env(new_home())).stdout) == []

    home, env, ids = home_with_runs
    listed = run_harvest(["runs", "list"], env)
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["run", "status", "files", "activities", "started", "url"]
    assert any(ids[1] in line and "failed" in line and "1,234" in line for line in lines)
    assert all(line == line.rstrip() for line in lines), "no trailing blanks in a pipe"
    only_failed = run_harvest(["runs", "list", "--status", "failed", "--json"], env)
    assert [row["id"] for row in json.loads(only_failed.stdout)] == [ids[1]]
    none_running = run_harvest(["runs", "list", "--status", "running"], env)
    assert none_running.stdout.strip() == "no running runs yet: start one with `harvest scrape URL`"


def test_runs_show_says_the_import_in_words(home_with_runs) -> None:  # noqa: ANN001
    _, env, ids = home_with_runs
    shown = run_harvest(["runs", "show", ids[0]], env)
    assert shown.returncode == 0, shown.stderr
    assert "import                imported 3, updated 1, skipped 0, failed 0" in shown.stdout
    assert "{'imported'" not in shown.stdout and "{" not in shown.stdout.split("steps")[0]


def test_pin_unpin_cleanup_and_db_speak_json(home_with_runs) -> None:  # noqa: ANN001
    _, env, ids = home_with_runs
    assert json.loads(run_harvest(["runs", "pin", ids[0], "--json"], env).stdout) == {"run_id": ids[0], "pinned": True}
    refused = run_harvest(["runs", "cleanup", ids[0], "--dry-run", "--json"], env)
    assert refused.returncode == 2 and refused.stdout == "" and "is pinned" in refused.stderr
    assert json.loads(run_harvest(["runs", "unpin", ids[0], "--json"], env).stdout)["pinned"] is False
    dry = json.loads(run_harvest(["runs", "cleanup", ids[0], "--dry-run", "--json"], env).stdout)
    assert dry == {"run_id": ids[0], "dry_run": True, "would_clean": True}
    done = json.loads(run_harvest(["runs", "cleanup", ids[0], "--json"], env).stdout)
    assert done["retention"] == "cleaned" and done["dry_run"] is False
    again = run_harvest(["runs", "cleanup", ids[0]], env)
    assert again.returncode == 0 and "nothing to clean, its files are already cleaned" in again.stdout
    older = json.loads(run_harvest(["runs", "cleanup", "--older-than", "0", "--dry-run", "--json"], env).stdout)
    assert older == {"dry_run": True, "runs": [ids[1]]}
    database = json.loads(run_harvest(["db", "upgrade", "--json"], env).stdout)
    assert database["database"].startswith("sqlite:///") and database["revision"]
    server = json.loads(run_harvest(["server", "status", "--json"], env).stdout)
    assert server["running"] is False and server["mode"] == "background"


def test_sweep_dry_run_reads_as_a_dry_run(harvest_env) -> None:  # noqa: ANN001 - Postgres, S3 and the session's API
    done = CliRunner().invoke(app, ["sweep", "--dry-run"])
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("sweep (dry run: nothing changed)")
    assert "would reconciled" not in done.stdout and "runs reconciled (their process died)" in done.stdout
    assert "page memory rows to prune: 0" in done.stdout
