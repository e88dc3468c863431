"""Issue 28: every mistake a person can make with `harvest` is one `error:` line naming the cause and what to do,
with its documented exit code (2 bad input or refused, 3 a service unavailable), no traceback, and refused before
Prefect starts (no temporary API server ran: no ~/.prefect/prefect.db) with nothing recorded.

Each case runs the installed console script in a clean environment with a new HOME (tests/cli_support.py).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from harvest.db import runs as run_rows
from harvest.db.engine import get_engine
from harvest.db.schema import scrape_runs
from testkit.net import free_port
from tests.cli_support import (
    HARVEST,
    assert_one_error_line,
    clean_env,
    new_home,
    prefect_started,
    run_harvest,
)

LOOPBACK = {"HARVEST_ALLOW_PRIVATE_NETWORKS": "true"}
SITE = "http://127.0.0.1:9/"  # never fetched: every case below is refused before a run starts


def _unreachable_postgres() -> str:
    return f"postgresql+psycopg://harvest:harvest@127.0.0.1:{free_port()}/harvest"


# (id, args, extra environment, exit code, fragments of the one line)
REFUSED_BEFORE_PREFECT = [
    ("not-http", ["scrape", "file:///etc/passwd"], {}, 2, ["only http and https"]),
    ("malformed-url", ["scrape", "http://[::1/"], {}, 2, ["malformed"]),
    ("white-space-in-url", ["scrape", "http://exa mple.org/"], {}, 2, ["white space"]),
    ("guard-private-address", ["scrape", "http://127.0.0.1:9/"], {}, 2,
     ["non-public address 127.0.0.1", "HARVEST_ALLOW_PRIVATE_NETWORKS"]),
    ("guard-metadata-address", ["scrape", "http://169.254.169.254/"], LOOPBACK, 2, ["cloud metadata address"]),
    ("host-does-not-resolve", ["scrape", "http://no-such-host.invalid/"], {}, 2, ["does not resolve"]),
    ("render-choice", ["scrape", SITE, "--render", "bogus"], LOOPBACK, 2, ["'--render'", "'bogus'", "auto"]),
    ("max-pages-zero", ["scrape", SITE, "--max-pages", "0"], LOOPBACK, 2, ["max_pages (--max-pages)", "1"]),
    ("max-cost-negative", ["scrape", SITE, "--max-cost-usd", "-1"], LOOPBACK, 2, ["max_cost_usd (--max-cost-usd)"]),
    ("config-not-json", ["scrape", SITE, "--config", "{max_pages: 3"], LOOPBACK, 2, ["--config is not JSON"]),
    ("config-unknown-field", ["scrape", SITE, "--config", '{"max_pagez": 3}'], LOOPBACK, 2, ["max_pagez (--config)"]),
    ("from-raw-missing", ["scrape", SITE, "--from-raw", "/nonexistent/raw.jsonl"], LOOPBACK, 2,
     ["--from-raw /nonexistent/raw.jsonl: no such file"]),
    ("setting-invalid", ["scrape", SITE], {**LOOPBACK, "HARVEST_GEOCODER": "nowhere"}, 2,
     ["HARVEST_GEOCODER", "'nowhere'"]),
    ("database-mysql", ["scrape", SITE], {**LOOPBACK, "HARVEST_DATABASE_URL": "mysql://u:secret@localhost/x"}, 2,
     ["mysql is not supported", "postgresql+psycopg://"]),
    ("database-malformed", ["runs", "list"], {"HARVEST_DATABASE_URL": "not a url"}, 2, ["is not a database URL"]),
    ("storage-unknown-scheme", ["scrape", SITE], {**LOOPBACK, "HARVEST_STORAGE_URL": "ftp://host/x"}, 2,
     ["HARVEST_STORAGE_URL", "s3://bucket/prefix"]),
    ("runs-list-limit", ["runs", "list", "--limit", "-1"], {}, 2, ["'--limit'", "greater than or equal to 1"]),
    ("runs-list-status", ["runs", "list", "--status", "bogus"], {}, 2, ["'--status'", "'bogus'"]),
    ("cleanup-status", ["runs", "cleanup", "--older-than", "30d", "--status", "bogus"], {}, 2, ["'--status'"]),
    ("cleanup-nothing-named", ["runs", "cleanup"], {}, 2, ["a run id, or --older-than"]),
    ("cleanup-both", ["runs", "cleanup", "abc", "--older-than", "30d"], {}, 2, ["not both"]),
    ("cleanup-bad-duration", ["runs", "cleanup", "--older-than", "soon"], {}, 2, ["--older-than"]),
    ("unknown-command", ["scrap", SITE], {}, 2, ["no such command 'scrap'"]),
    ("unknown-option", ["runs", "list", "--colour"], {}, 2, ["no such option: --colour"]),
    ("missing-argument", ["scrape"], {}, 2, ["missing argument"]),
    ("import-unknown-run", ["runs", "import", "no-such-run"], {}, 2, ["no run no-such-run", "harvest runs list"]),
    ("resume-unknown-run", ["runs", "resume", "no-such-run"], {}, 2, ["no run no-such-run"]),
    ("show-unknown-run", ["runs", "show", "no-such-run"], {}, 2, ["no run no-such-run"]),
    ("pin-unknown-run", ["runs", "pin", "no-such-run"], {}, 2, ["no run no-such-run"]),
    ("blocks-register-without-server", ["blocks", "register"], {}, 2, ["PREFECT_API_URL", "--local"]),
]


@pytest.mark.parametrize(("args", "env", "code", "fragments"),
                         [case[1:] for case in REFUSED_BEFORE_PREFECT], ids=[case[0] for case in REFUSED_BEFORE_PREFECT])
def test_refused_before_prefect_with_one_line(args: list[str], env: dict[str, str], code: int,
                                              fragments: list[str]) -> None:
    home = new_home()
    done = run_harvest(args, clean_env(home, **env))
    assert_one_error_line(done, code, *fragments)
    assert not prefect_started(home), "refused before Prefect's API started"
    assert "secret" not in done.stderr, "passwords in URLs are never printed"
    database = home / ".harvest" / "harvest.db"
    if database.exists():  # the embedded default was reached: nothing may be recorded
        with get_engine(f"sqlite:///{database}").begin() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(scrape_runs)).scalar() == 0


def test_unreachable_database_is_exit_3_before_prefect() -> None:
    home = new_home()
    done = run_harvest(["scrape", SITE], clean_env(home, HARVEST_DATABASE_URL=_unreachable_postgres(), **LOOPBACK))
    assert_one_error_line(done, 3, "cannot reach the database", "Connection refused", "HARVEST_DATABASE_URL")
    assert not prefect_started(home)


def test_sqlite_database_in_a_folder_that_cannot_exist_is_exit_3() -> None:
    home = new_home()
    blocker = home / "a-file"
    blocker.write_text("not a folder")
    done = run_harvest(["runs", "list"], clean_env(home, HARVEST_DATABASE_URL=f"sqlite:///{blocker}/harvest.db"))
    assert_one_error_line(done, 3, "cannot create its folder")


def test_read_only_storage_folder_is_refused_before_the_crawl() -> None:
    """The folder exists but may not be written to: read-only for this user, and for root (who may write anyway)
    immutable (chattr +i)."""
    home = new_home()
    store = home / "store"
    store.mkdir()
    store.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", str(store)], check=True)
    try:
        done = run_harvest(["scrape", SITE], clean_env(home, HARVEST_STORAGE_URL=store.as_uri(), **LOOPBACK))
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(store)], check=True)
    assert_one_error_line(done, 3, f"storage {store.as_uri()} is not writable", "HARVEST_STORAGE_URL")
    assert not prefect_started(home)
    assert list(store.iterdir()) == [], "nothing was written"


def test_unreachable_s3_endpoint_is_refused_before_the_crawl() -> None:
    home = new_home()
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = clean_env(home, HARVEST_STORAGE_URL="s3://harvest-bucket/runs", HARVEST_S3_ENDPOINT_URL=endpoint,
                    AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="b", AWS_DEFAULT_REGION="us-east-1", **LOOPBACK)
    done = run_harvest(["scrape", SITE], env)
    assert_one_error_line(done, 3, "cannot reach S3", endpoint)
    assert not prefect_started(home)


def test_missing_bucket_is_refused_before_the_crawl(s3) -> None:  # noqa: ANN001 - the session's moto server
    home = new_home()
    env = clean_env(home, HARVEST_STORAGE_URL="s3://no-such-bucket/runs", HARVEST_S3_ENDPOINT_URL=s3.endpoint,
                    AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="b", AWS_DEFAULT_REGION="us-east-1", **LOOPBACK)
    done = run_harvest(["scrape", SITE], env)
    assert_one_error_line(done, 3, "bucket 'no-such-bucket' does not exist")


def _row(engine: sa.engine.Engine, url: str, **values: object) -> str:
    run_id = str(uuid.uuid4())
    run_rows.create_run(engine, run_id, url, {})
    run_rows.update_run(engine, run_id, **values)
    return run_id


@pytest.fixture
def pg_home(clean_db: str) -> tuple[Path, dict[str, str], sa.engine.Engine]:
    home = new_home()
    return home, clean_env(home, HARVEST_DATABASE_URL=clean_db), get_engine(clean_db)


@pytest.mark.parametrize(("state", "args", "fragments"), [
    ({"status": "completed", "retention": "cleaned"}, ["runs", "import"], ["nothing to import", "cleaned"]),
    ({"status": "completed", "retention": "expired"}, ["runs", "import"], ["nothing to import", "expired"]),
    ({"status": "failed", "retention": "kept"}, ["runs", "import"], ["no final JSONL", "harvest runs resume"]),
    ({"status": "crashed", "retention": "cleaned"}, ["runs", "resume"], ["cannot be resumed", "cleaned"]),
    ({"status": "completed", "retention": "kept"}, ["runs", "resume"], ["is completed", "only failed"]),
    ({"status": "running", "retention": "pending"}, ["runs", "resume"], ["still running", f"process {os.getpid()}"]),
    ({"status": "running", "retention": "pending"}, ["runs", "import"], ["still running"]),
    ({"status": "completed", "retention": "kept", "pinned": True}, ["runs", "cleanup", "--dry-run"],
     ["is pinned", "harvest runs unpin"]),
    ({"status": "completed", "retention": "kept", "pinned": True}, ["runs", "cleanup"], ["is pinned"]),
    ({"status": "running", "retention": "pending"}, ["runs", "cleanup"], ["still running"]),
], ids=["import-cleaned", "import-expired", "import-failed-run", "resume-cleaned", "resume-completed",
        "resume-running", "import-running", "cleanup-pinned-dry-run", "cleanup-pinned", "cleanup-running"])
def test_run_state_refuses_before_prefect(pg_home, state: dict[str, object], args: list[str],
                                          fragments: list[str]) -> None:
    home, env, engine = pg_home
    run_id = _row(engine, "https://example.org/", **state)
    before = run_rows.get_run(engine, run_id)
    done = run_harvest([*args, run_id], env)
    assert_one_error_line(done, 2, run_id, *fragments)
    assert not prefect_started(home)
    after = run_rows.get_run(engine, run_id)
    assert after is not None and before is not None
    assert {key: after[key] for key in ("status", "retention", "pinned", "lease_until", "updated_at")} == {
        key: before[key] for key in ("status", "retention", "pinned", "lease_until", "updated_at")}, "left as it was"


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    """Without --debug the cause is one line; with it, the traceback of where it came from too."""
    home = new_home()
    not_sqlite = tmp_path / "harvest.db"
    not_sqlite.write_bytes(b"this is not an SQLite database" * 100)
    env = clean_env(home, HARVEST_DATABASE_URL=f"sqlite:///{not_sqlite}")
    done = run_harvest(["runs", "list"], env)
    assert_one_error_line(done, 3, "cannot reach the database", "not a database")
    shown = run_harvest(["--debug", "runs", "list"], env)
    assert shown.returncode == 3 and "Traceback" in shown.stderr


def test_version_and_help_need_no_database() -> None:
    home = new_home()
    env = clean_env(home, HARVEST_DATABASE_URL="mysql://nowhere/x")
    version = run_harvest(["--version"], env)
    assert version.returncode == 0 and version.stdout.startswith("harvest ") and "prefect 3." in version.stdout
    bare = run_harvest([], env)
    assert bare.returncode == 0 and "Usage: harvest" in bare.stdout and "scrape" in bare.stdout
    assert not (home / ".harvest").exists() and not prefect_started(home)
    assert Path(HARVEST).exists()
