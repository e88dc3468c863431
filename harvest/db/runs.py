"""The run record (`scrape_runs`) and its files (`run_files`): the whole story of every run."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from harvest.db.engine import transaction, utcnow
from harvest.db.schema import run_files, scrape_runs
from harvest.errors import DatabaseError, RunAlreadyRunningError
from harvest.liveness import this_host, this_process
from harvest.models import FileRef

MAX_WARNINGS = 500  # a hostile site must not grow a run row without bound


def create_run(
    engine: Engine,
    run_id: str,
    url: str,
    config: dict[str, Any],
    *,
    flow_run_name: str | None = None,
    deployment_id: str | None = None,
    deployment_name: str | None = None,
    work_pool: str | None = None,
) -> bool:
    """Insert the run row with status `running`; a retried flow run (same id) is set running again. Either way
    the row names this process (host, pid, and its identity: harvest/liveness.py).

    Returns True when the row is new, False when an existing run was resumed. Raises
    RunAlreadyRunningError when another run of the same URL is running: the partial unique index
    `uq_scrape_runs_running_url` decides, so two concurrent starts cannot both win.
    """
    now = utcnow()
    identity = this_process()
    process = {"host": this_host(), "pid": os.getpid(), "process": identity.key() if identity else None}
    try:
        with transaction(engine) as connection:
            existing = connection.execute(
                sa.select(scrape_runs.c.id).where(scrape_runs.c.id == run_id).with_for_update()
            ).first()
            if existing is None:
                connection.execute(
                    scrape_runs.insert().values(
                        id=run_id, url=url, status="running", retention="pending", config=config,
                        started_at=now, updated_at=now, flow_run_name=flow_run_name, deployment_id=deployment_id,
                        deployment_name=deployment_name, work_pool=work_pool, warnings=[], failed_urls=[], steps={},
                        **process,
                    )
                )
                return True
            connection.execute(
                scrape_runs.update().where(scrape_runs.c.id == run_id).values(
                    status="running", error=None, finished_at=None, updated_at=now, retention="pending",
                    expires_at=None, **process,
                )
            )
            return False
    except DatabaseError as exc:
        if not isinstance(exc.__cause__, sa.exc.IntegrityError):
            raise
        running = running_run_for(engine, url)
        if running is None:  # it finished between our insert and this read: the caller may retry
            raise
        raise RunAlreadyRunningError(url, running) from None


def running_run_for(engine: Engine, url: str) -> str | None:
    """The id of the run of `url` that is running now, if any."""
    with transaction(engine) as connection:
        row = connection.execute(
            sa.select(scrape_runs.c.id).where(scrape_runs.c.url == url, scrape_runs.c.status == "running")
        ).first()
        return row.id if row else None


def update_run(engine: Engine, run_id: str, **values: Any) -> None:
    """Set columns of one run row (and `updated_at`)."""
    with transaction(engine) as connection:
        connection.execute(
            scrape_runs.update().where(scrape_runs.c.id == run_id).values(updated_at=utcnow(), **values)
        )


def heartbeat(engine: Engine, run_id: str, *, process: str | None = None) -> bool:
    """Touch `updated_at` of the run while it is running in this process (or the one `process` names, a key of
    harvest.liveness); False once it is not (finished, reconciled, or taken over by a resume elsewhere): the caller
    stops beating. Where a process has no identity (no /proc), host and pid stand for it."""
    now = utcnow()
    if process is None:
        identity = this_process()
        process = identity.key() if identity else None
    owner = (scrape_runs.c.process == process if process is not None else
             sa.and_(scrape_runs.c.host == this_host(), scrape_runs.c.pid == os.getpid()))
    with transaction(engine) as connection:
        return bool(connection.execute(
            scrape_runs.update().where(
                scrape_runs.c.id == run_id, scrape_runs.c.status == "running", owner,
            ).values(updated_at=now)
        ).rowcount)


def record_step(engine: Engine, run_id: str, step: str, stats: dict[str, Any]) -> None:
    """Merge one step's counters and timing into the run's `steps` map."""
    _rewrite_steps(engine, run_id, lambda steps: {**steps, step: stats})


def fold_steps(engine: Engine, run_id: str, prefix: str, step: str, stats: dict[str, Any]) -> None:
    """Replace the per-chunk entries `<prefix>…` of the run's `steps` map by one total entry `step`."""
    _rewrite_steps(
        engine, run_id, lambda steps: {**{k: v for k, v in steps.items() if not k.startswith(prefix)}, step: stats}
    )


def _rewrite_steps(engine: Engine, run_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Read the run's `steps` map under a row lock, apply `change`, write it back (tasks run concurrently)."""
    with transaction(engine) as connection:
        row = connection.execute(
            sa.select(scrape_runs.c.steps).where(scrape_runs.c.id == run_id).with_for_update()
        ).first()
        if row is None:
            raise DatabaseError(f"run {run_id} has no row")
        connection.execute(
            scrape_runs.update().where(scrape_runs.c.id == run_id).values(
                steps=change(dict(row.steps or {})), updated_at=utcnow()
            )
        )


def add_warnings(
    engine: Engine, run_id: str, warnings: list[str], *, failed_urls: list[dict[str, Any]] | None = None
) -> None:
    """Append warnings (and failed URLs) to the run row, bounded so a hostile site cannot bloat it."""
    if not warnings and not failed_urls:
        return
    with transaction(engine) as connection:
        row = connection.execute(
            sa.select(scrape_runs.c.warnings, scrape_runs.c.failed_urls)
            .where(scrape_runs.c.id == run_id)
            .with_for_update()
        ).first()
        if row is None:
            raise DatabaseError(f"run {run_id} has no row")
        merged = _bounded(list(row.warnings or []) + list(warnings))
        urls = _bounded(list(row.failed_urls or []) + list(failed_urls or []))
        connection.execute(
            scrape_runs.update().where(scrape_runs.c.id == run_id).values(
                warnings=merged, failed_urls=urls, updated_at=utcnow()
            )
        )


def _bounded(items: list[Any]) -> list[Any]:
    if len(items) <= MAX_WARNINGS:
        return items
    dropped = len(items) - MAX_WARNINGS + 1
    return items[: MAX_WARNINGS - 1] + [f"... and {dropped} more"]


def record_file(engine: Engine, run_id: str, ref: FileRef) -> None:
    """Record (or re-record, on a resumed run) one stored file of the run: the object exists now, so a
    `missing_at` an earlier sweep set is cleared."""
    values = dict(
        uri=ref.uri, bytes=ref.bytes, records=ref.records, sha256=ref.sha256,
        content_type=ref.content_type, created_at=utcnow(), deleted_at=None, missing_at=None,
    )
    with transaction(engine) as connection:
        updated = connection.execute(
            run_files.update()
            .where(run_files.c.run_id == run_id, run_files.c.kind == ref.kind)
            .values(**values)
        ).rowcount
        if not updated:
            connection.execute(run_files.insert().values(run_id=run_id, kind=ref.kind, **values))


def finish_run(
    engine: Engine,
    run_id: str,
    status: str,
    *,
    retention: str | None = None,
    error: str | None = None,
    **values: Any,
) -> None:
    """Write the terminal status of a run (and what it produced)."""
    now = utcnow()
    changes: dict[str, Any] = {"status": status, "finished_at": now, "updated_at": now, **values}
    if retention is not None:
        changes["retention"] = retention
    if error is not None:
        changes["error"] = error[:10_000]
    with transaction(engine) as connection:
        connection.execute(scrape_runs.update().where(scrape_runs.c.id == run_id).values(**changes))


def get_run(engine: Engine, run_id: str) -> dict[str, Any] | None:
    with transaction(engine) as connection:
        row = connection.execute(sa.select(scrape_runs).where(scrape_runs.c.id == run_id)).mappings().first()
        return dict(row) if row else None


def list_runs(
    engine: Engine, *, limit: int = 50, url: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    query = sa.select(scrape_runs).order_by(scrape_runs.c.started_at.desc()).limit(limit)
    if url:
        query = query.where(scrape_runs.c.url == url)
    if status:
        query = query.where(scrape_runs.c.status == status)
    with transaction(engine) as connection:
        return [dict(row) for row in connection.execute(query).mappings()]


def list_files(engine: Engine, run_id: str, *, include_deleted: bool = True) -> list[dict[str, Any]]:
    query = sa.select(run_files).where(run_files.c.run_id == run_id).order_by(run_files.c.id)
    if not include_deleted:
        query = query.where(run_files.c.deleted_at.is_(None))
    with transaction(engine) as connection:
        return [dict(row) for row in connection.execute(query).mappings()]


def file_ref(row: dict[str, Any]) -> FileRef:
    """The reference a `run_files` row records."""
    return FileRef(
        kind=row["kind"], uri=row["uri"], records=row["records"], bytes=row["bytes"], sha256=row["sha256"],
        content_type=row["content_type"],
    )


def files_view(engine: Engine, run_id: str) -> dict[str, FileRef]:
    """kind → reference for the run's live files: the original design's `files` object."""
    return {row["kind"]: file_ref(row) for row in list_files(engine, run_id, include_deleted=False)}


def comparable_file(engine: Engine, run_id: str) -> dict[str, Any] | None:
    """The file a diff can read for a run: its digest, else its final JSONL; None when both are gone."""
    files = {row["kind"]: row for row in list_files(engine, run_id, include_deleted=False) if not row.get("missing_at")}
    return files.get("digest") or files.get("final_jsonl")


def previous_comparable_run(engine: Engine, run_id: str, url: str) -> str | None:
    """The latest completed run of `url` before `run_id` that still has a digest or final JSONL."""
    with transaction(engine) as connection:
        started = connection.execute(sa.select(scrape_runs.c.started_at).where(scrape_runs.c.id == run_id)).scalar()
        if started is None:
            return None
        candidates = connection.execute(
            sa.select(scrape_runs.c.id).where(
                scrape_runs.c.url == url, scrape_runs.c.id != run_id, scrape_runs.c.status == "completed",
                scrape_runs.c.started_at < started,
                sa.exists(sa.select(1).where(
                    run_files.c.run_id == scrape_runs.c.id, run_files.c.kind.in_(("digest", "final_jsonl")),
                    run_files.c.deleted_at.is_(None),
                )),
            ).order_by(scrape_runs.c.started_at.desc()).limit(1)
        ).first()
        return candidates.id if candidates else None


def forget_files(engine: Engine, run_id: str, kinds: list[str]) -> int:
    """Remove file rows whose objects were consumed and deleted on purpose (a map's chunk parts)."""
    with transaction(engine) as connection:
        return connection.execute(
            run_files.delete().where(run_files.c.run_id == run_id, run_files.c.kind.in_(kinds))
        ).rowcount
