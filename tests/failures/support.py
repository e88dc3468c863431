"""Helpers for the failing-services, crash and concurrency tests (no side effects at import)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa

from harvest.db.engine import get_engine
from harvest.db.schema import activities, run_files, scrape_runs
from harvest.models import RunConfig

T = TypeVar("T")

SMALL = {"max_pages": 30, "max_extractions": 10}


def scrape(url: str, **config: object) -> Any:
    """One scrape-website flow run in this thread; returns its final Prefect state."""
    from flows.scrape import scrape_website

    return scrape_website(url=url, config=RunConfig(**config), return_state=True)


def run_row(db_url: str, run_id: str) -> dict[str, Any] | None:
    with get_engine(db_url).begin() as connection:
        row = connection.execute(sa.select(scrape_runs).where(scrape_runs.c.id == run_id)).mappings().first()
        return dict(row) if row else None


def all_runs(db_url: str) -> list[dict[str, Any]]:
    with get_engine(db_url).begin() as connection:
        return [dict(r) for r in connection.execute(sa.select(scrape_runs)).mappings()]


def file_rows(db_url: str, run_id: str) -> dict[str, dict[str, Any]]:
    with get_engine(db_url).begin() as connection:
        rows = connection.execute(sa.select(run_files).where(run_files.c.run_id == run_id)).mappings()
        return {row["kind"]: dict(row) for row in rows}


def activity_rows(db_url: str) -> list[dict[str, Any]]:
    with get_engine(db_url).begin() as connection:
        return [dict(r) for r in connection.execute(sa.select(activities)).mappings()]


def s3_object(s3: Any, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def single_run(db_url: str) -> Callable[[], dict[str, Any] | None]:
    """A check for wait_for: the one run row of the test, once it exists."""

    def check() -> dict[str, Any] | None:
        rows = all_runs(db_url)
        return rows[0] if len(rows) == 1 else None

    return check


def in_embeddings_poll(db_url: str, openai_server: Any, *, after: tuple[str, ...] = ("images", "geocode")) -> Callable[[], Any]:
    """A check: the run has submitted its batch, is polling it, and the other enrichment steps are recorded."""

    def check() -> dict[str, Any] | None:
        rows = [r for r in all_runs(db_url) if r["status"] == "running"]
        if len(rows) != 1:
            return None
        steps = rows[0]["steps"] or {}
        if "embeddings_submit" not in steps or not all(step in steps for step in after):
            return None
        return rows[0] if openai_server.stats().get("batches.retrieve", 0) >= 1 else None

    return check


@contextmanager
def refusing_to_record(engine: Any, kind: str) -> Iterator[None]:
    """While inside, any statement on `run_files` naming `kind` fails at the database boundary (an event
    listener on the engine the flow uses): that step's part is never recorded, the rest of the run goes on."""

    def refuse(conn, cursor, statement, params, context, executemany) -> None:  # noqa: ANN001
        if "run_files" in statement and kind in str(params):
            raise RuntimeError(f"injected: cannot record {kind}")

    sa.event.listen(engine, "before_cursor_execute", refuse)
    try:
        yield
    finally:
        sa.event.remove(engine, "before_cursor_execute", refuse)
