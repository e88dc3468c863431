"""Every statement retention and the sweep run on `scrape_runs`, `run_files`, `activities` and `page_cache`.

`harvest.retention.policy` decides (what is expired, grace periods, the order of operations, storage deletes);
this module only reads and writes the rows. Functions taking a `Connection` run inside the caller's
transaction, so row locks (`FOR UPDATE [SKIP LOCKED]`) are held while the caller deletes the objects;
functions taking an `Engine` open their own transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from harvest.db.engine import transaction, utcnow
from harvest.db.schema import activities, activity_sources, image_cache, page_cache, run_files, scrape_runs
from harvest.db.sources import degraded_urls

# Retention states in which a run's files are supposed to exist.
FILES_KEPT = ("pending", "kept", "cleanup_failed")
TERMINAL = ("completed", "failed", "crashed", "cancelled")


# --- one run -----------------------------------------------------------------------------------------


def lock_run(connection: Connection, run_id: str, *, skip_locked: bool) -> dict[str, Any] | None:
    """The run row, locked `FOR UPDATE` (skipped when another transaction holds it and `skip_locked`)."""
    query = sa.select(scrape_runs).where(scrape_runs.c.id == run_id).with_for_update(skip_locked=skip_locked)
    row = connection.execute(query).mappings().first()
    return dict(row) if row else None


def live_digest_uris(connection: Connection, run_id: str) -> list[str]:
    """URIs of the run's digest rows not yet marked deleted."""
    return [
        row.uri
        for row in connection.execute(
            sa.select(run_files.c.uri).where(
                run_files.c.run_id == run_id, run_files.c.kind == "digest", run_files.c.deleted_at.is_(None)
            )
        )
    ]


def mark_run_files_deleted(connection: Connection, run_id: str, *, keep_digest: bool) -> None:
    """Mark the run's live file rows deleted (all of them, or all but the digest)."""
    query = run_files.update().where(run_files.c.run_id == run_id, run_files.c.deleted_at.is_(None))
    if keep_digest:
        query = query.where(run_files.c.kind != "digest")
    connection.execute(query.values(deleted_at=utcnow()))


def finish_cleanup(connection: Connection, run_id: str, retention: str) -> None:
    """Record that a run's files were deleted on request: `retention`, no expiry any more."""
    connection.execute(
        scrape_runs.update().where(scrape_runs.c.id == run_id).values(
            retention=retention, expires_at=None, updated_at=utcnow()
        )
    )


def set_lease(connection: Connection, run_id: str, until: datetime | None) -> None:
    """Set (or, with None, release) the run's import lease: the sweep leaves its files alone until `until`."""
    connection.execute(scrape_runs.update().where(scrape_runs.c.id == run_id).values(lease_until=until))


def set_pinned(engine: Engine, run_id: str, pinned: bool) -> bool:
    """Pin (exempt from the sweep) or unpin a run; False when there is no such run."""
    with transaction(engine) as connection:
        return bool(
            connection.execute(
                scrape_runs.update().where(scrape_runs.c.id == run_id).values(pinned=pinned, updated_at=utcnow())
            ).rowcount
        )


# --- batch cleanup ----------------------------------------------------------------------------------


def runs_started_before(engine: Engine, cutoff: datetime, *, status: str | None = None) -> list[str]:
    """Ids of finished, unpinned runs with kept files that started before `cutoff` (oldest first)."""
    query = sa.select(scrape_runs.c.id).where(
        scrape_runs.c.started_at < cutoff, scrape_runs.c.status.in_(TERMINAL),
        scrape_runs.c.retention.in_(FILES_KEPT), scrape_runs.c.pinned.is_(False),
    ).order_by(scrape_runs.c.started_at)
    if status:
        query = query.where(scrape_runs.c.status == status)
    with transaction(engine) as connection:
        return [row.id for row in connection.execute(query)]


# --- reconciliation ---------------------------------------------------------------------------------


def running_runs(engine: Engine) -> list[tuple[str, datetime, str | None, str | None]]:
    """(id, updated_at, host, process identity) of every run whose row says `running`."""
    with transaction(engine) as connection:
        rows = connection.execute(
            sa.select(scrape_runs.c.id, scrape_runs.c.updated_at, scrape_runs.c.host, scrape_runs.c.process)
            .where(scrape_runs.c.status == "running")
        ).all()
    return [tuple(row) for row in rows]


def mark_reconciled(
    connection: Connection, run_id: str, *, status: str, now: datetime, expires_at: datetime, error: str
) -> None:
    """Give a run left `running` its terminal `status`; its files are kept until `expires_at`."""
    connection.execute(
        scrape_runs.update().where(scrape_runs.c.id == run_id).values(
            status=status, retention="kept", finished_at=now, updated_at=now, expires_at=expires_at, error=error,
        )
    )


def lock_unsettled_runs(connection: Connection, before: datetime) -> list[tuple[str, str, datetime]]:
    """(id, status, finished or last updated) of finished runs still `pending` (their completion hook never
    ran) with no update since `before`, locked `FOR UPDATE SKIP LOCKED`."""
    rows = connection.execute(
        sa.select(scrape_runs.c.id, scrape_runs.c.status,
                  sa.func.coalesce(scrape_runs.c.finished_at, scrape_runs.c.updated_at).label("ended"))
        .where(scrape_runs.c.status.in_(TERMINAL), scrape_runs.c.retention == "pending",
               scrape_runs.c.updated_at < before)
        .with_for_update(skip_locked=True)
    ).all()
    return [(row.id, row.status, row.ended) for row in rows]


def mark_settled(connection: Connection, run_id: str, expires_at: datetime, now: datetime) -> None:
    """Give a run whose hook never ran the retention its hook would have: files kept until `expires_at`."""
    connection.execute(
        scrape_runs.update().where(scrape_runs.c.id == run_id).values(
            retention="kept", expires_at=expires_at, updated_at=now
        )
    )


# --- expiry ------------------------------------------------------------------------------------------


def _due_for_cleanup(now: datetime) -> sa.ColumnElement[bool]:
    due = sa.or_(
        sa.and_(scrape_runs.c.retention == "kept", scrape_runs.c.expires_at <= now),
        scrape_runs.c.retention == "cleanup_failed",  # a completed import whose cleanup failed: finish it
    )
    leased = sa.and_(scrape_runs.c.lease_until.is_not(None), scrape_runs.c.lease_until > now)
    # A degraded source's runs are not aged out: its last good run's files stay while someone looks (issue 32).
    degraded = scrape_runs.c.url.in_(degraded_urls())
    return sa.and_(due, scrape_runs.c.status != "running", scrape_runs.c.pinned.is_(False), sa.not_(leased),
                   sa.not_(degraded))


def runs_due_for_cleanup(engine: Engine, now: datetime) -> list[tuple[str, str]]:
    """(id, retention) of every unpinned, finished run that expired by `now` or whose cleanup failed."""
    with transaction(engine) as connection:
        return [(row.id, row.retention) for row in connection.execute(
            sa.select(scrape_runs.c.id, scrape_runs.c.retention).where(_due_for_cleanup(now))
        )]


def lock_runs_due_for_cleanup(
    connection: Connection, now: datetime, *, exclude: set[str], limit: int
) -> list[tuple[str, str, str]]:
    """(id, retention, status) of the next `limit` runs due for cleanup (earliest expiry first) other than
    `exclude`, locked `FOR UPDATE SKIP LOCKED`: a run another sweep or cleanup holds is left to it."""
    rows = connection.execute(
        sa.select(scrape_runs.c.id, scrape_runs.c.retention, scrape_runs.c.status)
        .where(_due_for_cleanup(now), scrape_runs.c.id.not_in(exclude) if exclude else sa.true())
        .order_by(scrape_runs.c.expires_at).limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    return [(row.id, row.retention, row.status) for row in rows]


def mark_swept(connection: Connection, run_id: str, retention: str, now: datetime) -> None:
    """Record the sweep's outcome for one run (`expired` or `cleaned`)."""
    connection.execute(
        scrape_runs.update().where(scrape_runs.c.id == run_id).values(retention=retention, updated_at=now)
    )


# --- digests -----------------------------------------------------------------------------------------


def lock_superseded_digests(connection: Connection) -> list[tuple[int, str, str]]:
    """(file id, uri, run id) of live digests of cleaned or expired, unpinned runs for whose URL a newer
    completed run has a live digest; the file rows are locked `FOR UPDATE SKIP LOCKED`."""
    newer = scrape_runs.alias("newer")
    newer_files = run_files.alias("newer_files")
    superseded = (
        sa.select(run_files.c.id, run_files.c.uri, run_files.c.run_id)
        .join(scrape_runs, scrape_runs.c.id == run_files.c.run_id)
        .where(
            run_files.c.kind == "digest", run_files.c.deleted_at.is_(None),
            scrape_runs.c.retention.in_(("cleaned", "expired")), scrape_runs.c.pinned.is_(False),
            scrape_runs.c.url.not_in(degraded_urls()),  # nor its diff baselines
            sa.exists(
                sa.select(1).select_from(newer.join(newer_files, newer_files.c.run_id == newer.c.id)).where(
                    newer.c.url == scrape_runs.c.url, newer.c.started_at > scrape_runs.c.started_at,
                    newer.c.status == "completed", newer_files.c.kind == "digest",
                    newer_files.c.deleted_at.is_(None),
                )
            ),
        )
        .with_for_update(of=run_files, skip_locked=True)
    )
    return [tuple(row) for row in connection.execute(superseded).all()]


def mark_file_deleted(connection: Connection, file_id: int) -> None:
    """Mark one file row deleted (its object was deleted)."""
    connection.execute(run_files.update().where(run_files.c.id == file_id).values(deleted_at=utcnow()))


# --- what accounts for objects ----------------------------------------------------------------------


def files_and_runs_in_use(engine: Engine) -> tuple[list[str], set[str], set[str]]:
    """URIs of live file rows, ids of runs whose files are still kept, and ids of running runs."""
    with transaction(engine) as connection:
        live = [
            row.uri for row in connection.execute(sa.select(run_files.c.uri).where(run_files.c.deleted_at.is_(None)))
        ]
        kept: set[str] = set()
        running: set[str] = set()
        for row in connection.execute(
            sa.select(scrape_runs.c.id, scrape_runs.c.status).where(
                sa.or_(scrape_runs.c.status == "running", scrape_runs.c.retention.in_(FILES_KEPT))
            )
        ):
            (running if row.status == "running" else kept).add(row.id)
    return live, kept, running


def images_maps_in_use(engine: Engine) -> list[tuple[str, str]]:
    """(run id, uri) of the live images maps, whole or a chunk's part (`images_map.part-NNNN`: a run that
    stopped in its image stage has only those), of running runs and of runs whose files are kept."""
    with transaction(engine) as connection:
        maps = connection.execute(
            sa.select(run_files.c.run_id, run_files.c.uri)
            .join(scrape_runs, scrape_runs.c.id == run_files.c.run_id)
            .where(
                sa.or_(run_files.c.kind == "images_map", run_files.c.kind.like("images_map.part-%")),
                run_files.c.deleted_at.is_(None),
                sa.or_(scrape_runs.c.status == "running", scrape_runs.c.retention.in_(FILES_KEPT)),
            )
        ).all()
    return [(row.run_id, row.uri) for row in maps]


def imported_and_claimed_images(engine: Engine, claimed_since: datetime) -> list[str]:
    """Image URIs of every activity and of every source's claim on one (a row is re-derived from a claim when the
    source it shows is withdrawn: harvest/import_/provenance.py), and of every cached image a run claimed (looked
    up to reuse) since then."""
    claimed_image = activity_sources.c.fields["image_uri"].as_string()
    with transaction(engine) as connection:
        uris = [
            row.image_uri
            for row in connection.execute(
                sa.select(activities.c.image_uri).where(activities.c.image_uri.is_not(None)).distinct()
            )
        ]
        uris += [
            uri for uri in connection.execute(
                sa.select(claimed_image).where(claimed_image.is_not(None)).distinct()
            ).scalars()
        ]
        uris += [
            row.uri
            for row in connection.execute(sa.select(image_cache.c.uri).where(image_cache.c.checked_at > claimed_since))
        ]
    return uris


def file_still_live(engine: Engine, run_id: str, uri: str) -> bool:
    """True when the run row is not locked by another transaction (no concurrent sweep or cleanup is
    deleting its files right now) and its file row `uri` is not marked deleted."""
    with transaction(engine) as connection:
        row = lock_run(connection, run_id, skip_locked=True)
        live = row is not None and connection.execute(
            sa.select(run_files.c.id).where(
                run_files.c.run_id == run_id, run_files.c.uri == uri, run_files.c.deleted_at.is_(None)
            )
        ).first()
    return bool(live)


# --- vanished objects --------------------------------------------------------------------------------


def unflagged_files_of_finished_runs(connection: Connection) -> list[tuple[int, str, str, str]]:
    """(file id, run id, kind, uri) of live, not yet flagged missing file rows of runs not running."""
    rows = connection.execute(
        sa.select(run_files.c.id, run_files.c.run_id, run_files.c.kind, run_files.c.uri)
        .join(scrape_runs, scrape_runs.c.id == run_files.c.run_id)
        .where(run_files.c.deleted_at.is_(None), run_files.c.missing_at.is_(None), scrape_runs.c.status != "running")
    ).all()
    return [tuple(row) for row in rows]


def mark_file_missing(connection: Connection, file_id: int, now: datetime) -> None:
    """Flag one file row whose object vanished from storage."""
    connection.execute(run_files.update().where(run_files.c.id == file_id).values(missing_at=now))


# --- the crawl's page memory ---------------------------------------------------------------------------


def _stale_page_memory(before: datetime) -> sa.ColumnElement[bool]:
    """Rows past their promise: no crawl wrote or confirmed them since `before`, or the run that last did no
    longer keeps its files (its raw activities hold the rows' activities: they go together)."""
    files_gone = sa.exists().where(
        scrape_runs.c.id == page_cache.c.run_id, scrape_runs.c.status != "running",
        scrape_runs.c.retention.not_in(FILES_KEPT),
    )
    return sa.or_(page_cache.c.updated_at < before, files_gone)


def count_stale_page_memory(engine: Engine, before: datetime) -> int:
    """How many `page_cache` rows a sweep would delete (`_stale_page_memory`)."""
    with transaction(engine) as connection:
        return int(connection.execute(
            sa.select(sa.func.count()).select_from(page_cache).where(_stale_page_memory(before))
        ).scalar_one())


def delete_stale_page_memory(connection: Connection, before: datetime, limit: int) -> int:
    """Delete up to `limit` `page_cache` rows past their promise (`_stale_page_memory`), oldest first; returns
    how many. Rows a crawl holds locked right now (it is writing them) are skipped (`FOR UPDATE SKIP LOCKED`;
    a row it confirmed meanwhile no longer qualifies once the lock is taken)."""
    key = sa.tuple_(page_cache.c.url, page_cache.c.render, page_cache.c.extractor)
    stale = (
        sa.select(page_cache.c.url, page_cache.c.render, page_cache.c.extractor).where(_stale_page_memory(before))
        .order_by(page_cache.c.updated_at).limit(limit).with_for_update(skip_locked=True)
    )
    return connection.execute(page_cache.delete().where(key.in_(stale))).rowcount


def delete_run_page_memory(connection: Connection, run_id: str) -> int:
    """Delete the page memory `run_id` last wrote or confirmed: its files (the raw activities) are being
    deleted, and the rows hold the same activities. A crawl confirming a row later owns it anew."""
    return connection.execute(page_cache.delete().where(page_cache.c.run_id == run_id)).rowcount
