"""Retention: what happens to a run's files after the run, and the sweep that keeps storage honest.

Every object in storage must be accounted for by a row:
- `runs/<id>/…` by a live `run_files` row, or (for Prefect's step results under `runs/<id>/results/`) by
  a run row whose files are still kept;
- `digests/<id>.jsonl` by a live `run_files` row (kind `digest`);
- `images/<sha256>.webp` by an `activities` row, the images map (whole or a chunk's part) of a running run or
  of a run whose files are kept, or an `image_cache` row a run claimed within the grace period.

The sweep (1) reconciles runs left `running` by a dead process (releasing their open budget holds) and
settles finished runs whose completion hook never ran (`pending` past the grace period: kept until the
policy's expiry), (2) deletes the files of expired runs and retries failed cleanups (a completed run's
digest stays), (3) deletes digests
superseded by a newer completed run of the same URL (so the latest one, the next run's diff baseline, is
never deleted), (4) deletes orphans older than a grace period,
(5) flags rows whose object vanished, and (6) deletes the crawl's page memory (`page_cache`) for URLs no crawl
fetched or revalidated for `page_memory_days`, and rows whose run (the last to write or confirm them) no longer
keeps its files. A run's cleanup (`cleanup_run`: auto-import, `harvest runs cleanup`; the sweep's expiry) deletes
its page memory with its files: the rows hold its raw activities, so they are kept exactly as long.
Rows are locked with `FOR UPDATE SKIP LOCKED`, so two sweeps (or a sweep and a manual cleanup) never handle the
same run twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from harvest.cost.report import usd
from harvest.db.engine import Connection, Engine, transaction, utcnow
from harvest.db.ledger import release_open_holds
from harvest.durations import parse_duration  # noqa: F401 - re-exported: where the sweep's callers found it
from harvest.errors import ConfigError, StorageError
from harvest.liveness import Verdict, judge
from harvest.retention import queries as rows
from harvest.retention.queries import FILES_KEPT
from harvest.settings import HarvestSettings
from harvest.storage import ObjectStore, delete_prefix, iter_jsonl, keys

logger = logging.getLogger("harvest.retention.policy")

# Prefect state type → run status, for runs whose process died before the hooks could say.
RECONCILED_STATUS = {"FAILED": "failed", "CRASHED": "crashed", "CANCELLED": "cancelled", "COMPLETED": "failed"}
BATCH = 50
# page_cache rows deleted per transaction: each batch is one short statement (an index range and the rows),
# so a crawl writing its page memory meanwhile waits milliseconds, never for the whole prune.
PAGE_MEMORY_BATCH = 1000

@dataclass(frozen=True)
class RetentionPolicy:
    kept_days: float = 14
    failed_days: float = 30
    grace: timedelta = timedelta(hours=24)
    page_memory_days: float = 30

    def expires_at(self, status: str, now: datetime) -> datetime:
        """When a run that ended with `status` and kept its files becomes eligible for the sweep."""
        days = self.kept_days if status == "completed" else self.failed_days
        return now + timedelta(days=days)


def policy_from(settings: HarvestSettings) -> RetentionPolicy:
    return RetentionPolicy(
        kept_days=settings.retention_days, failed_days=settings.failed_retention_days,
        grace=timedelta(hours=settings.orphan_grace_hours), page_memory_days=settings.page_memory_days,
    )


@dataclass
class SweepReport:
    """What a sweep did (or, with dry_run, would do). Keys are storage keys; ids are run ids."""

    dry_run: bool
    reconciled: list[dict[str, str]] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    deleted_objects: int = 0
    digests: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    missing: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    page_memory_pruned: int = 0
    """`page_cache` rows deleted (with dry_run: that would be): URLs no crawl fetched or revalidated lately."""

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# --- one run's files ---------------------------------------------------------------------------------


def delete_run_objects(store: ObjectStore, connection: Connection, run_id: str, *, keep_digest: bool) -> int:
    """Delete the run's objects (its prefix and, unless kept, its digest) and mark the rows deleted."""
    deleted = delete_prefix(store, keys.run_prefix(run_id))
    if not keep_digest:
        for uri in rows.live_digest_uris(connection, run_id):
            store.delete(store.key_for(uri))
            deleted += 1
    rows.mark_run_files_deleted(connection, run_id, keep_digest=keep_digest)
    # The page memory holds the run's raw activities too (issue 27 item 7): it goes with them, in this transaction.
    rows.delete_run_page_memory(connection, run_id)
    return deleted


def cleanup_run(engine: Engine, store: ObjectStore, run_id: str, *, retention: str = "cleaned") -> int | None:
    """Delete one finished run's files under a row lock; None when the run is running, pinned (pinned means
    keep), being imported (its lease), or already handled.

    Used by the completion hook, `harvest runs cleanup` and manual import. The digest stays (the next run
    of the same URL diffs against it).
    """
    with transaction(engine) as connection:
        row = rows.lock_run(connection, run_id, skip_locked=False)
        if row is None or row["status"] == "running" or row["retention"] not in FILES_KEPT or row["pinned"]:
            return None
        if row["lease_until"] is not None and row["lease_until"] > utcnow():
            return None
        deleted = delete_run_objects(store, connection, run_id, keep_digest=True)
        rows.finish_cleanup(connection, run_id, retention)
        return deleted


IMPORT_LEASE = timedelta(hours=6)


@contextmanager
def import_lease(engine: Engine, run_id: str, lease: timedelta = IMPORT_LEASE) -> Iterator[dict[str, Any]]:
    """Hold a kept run's files against the sweep while they are imported; yields the run row.

    Design choice: a lease (`lease_until`) rather than a row lock held for the whole import. The claim takes
    the row lock, so it waits for a sweep deleting the run right now and then sees `expired`; after it, the
    sweep skips the run until the lease ends or is released. A row lock held for minutes would pin a
    connection and, on SQLite (one writer), block the import's own writes; a lease left by a killed import
    simply ends.
    """
    with transaction(engine) as connection:
        row = rows.lock_run(connection, run_id, skip_locked=False)
        if row is None:
            raise ConfigError(f"no run {run_id}")
        if row["status"] == "running":
            raise ConfigError(f"run {run_id} is still running; import it once it has finished")
        if row["retention"] not in FILES_KEPT:
            raise StorageError(
                f"run {run_id} has no final JSONL to import (status {row['status']}, files {row['retention']})"
            )
        rows.set_lease(connection, run_id, utcnow() + lease)
    try:
        yield row
    finally:
        with transaction(engine) as connection:
            rows.set_lease(connection, run_id, None)


# --- batch cleanup ----------------------------------------------------------------------------------


def cleanup_older_than(
    engine: Engine, store: ObjectStore, age: timedelta, *, status: str | None = None, dry_run: bool = False,
    now: datetime | None = None,
) -> list[str]:
    """Delete the files of finished, unpinned runs that started more than `age` ago; returns their ids."""
    cutoff = (now or utcnow()) - age
    candidates = rows.runs_started_before(engine, cutoff, status=status)
    if dry_run:
        return candidates
    return [run_id for run_id in candidates if cleanup_run(engine, store, run_id) is not None]


# --- the sweep --------------------------------------------------------------------------------------


def sweep(
    engine: Engine,
    store: ObjectStore,
    policy: RetentionPolicy,
    *,
    flow_run_state: Callable[[str], str | None],
    dry_run: bool = False,
    now: datetime | None = None,
) -> SweepReport:
    """One pass over runs and storage (see the module docstring). `flow_run_state(run_id)` returns the Prefect
    state type of the run's flow run ('COMPLETED', 'CRASHED', …) or None when Prefect does not know it."""
    now = now or utcnow()
    report = SweepReport(dry_run=dry_run)
    _reconcile(engine, policy, flow_run_state, report, now)
    _settle(engine, policy, report, now)
    _expire(engine, store, report, now)
    _drop_superseded_digests(engine, store, report)
    existing = _delete_orphans(engine, store, policy, report, now)
    _delete_unreferenced_images(engine, store, policy, report, now)
    _flag_missing(engine, store, existing, report, now)
    _prune_page_memory(engine, policy, report, now)
    return report


def _reconcile(
    engine: Engine, policy: RetentionPolicy, state_of: Callable[[str], str | None], report: SweepReport, now: datetime
) -> None:
    for run_id, updated_at, host, process in rows.running_runs(engine):
        try:
            decided = dead_run_status(process, updated_at, host, policy, now, partial(state_of, run_id))
        except Exception as exc:  # noqa: BLE001 - an unreachable API must not stop the rest of the sweep
            report.errors.append(f"run {run_id}: flow run state unavailable: {exc}")
            continue
        if decided is None:
            continue
        status, why = decided
        report.reconciled.append({"run_id": run_id, "status": status, "reason": why})
        if not report.dry_run:
            reconcile_run(engine, policy, run_id, status, why, now)


def dead_run_status(
    process: str | None, updated_at: datetime, host: str | None, policy: RetentionPolicy, now: datetime,
    prefect_state: Callable[[], str | None],
) -> tuple[str, str] | None:
    """(status, why) for a run left `running` that is in fact over, or None while it may be alive.

    Design choice: a run is declared dead on evidence, never on a guess, in this order:
    1. Prefect saying its flow run is over (its worker reported it, the zombie automation marked it Crashed after
       its heartbeats stopped, someone set its state): the flow run is the run, and a process may outlive its flow
       run (a hook that could not write the row; a process that runs flows one after another);
    2. its process, where it can be judged from here (same kernel, same pid namespace: harvest/liveness.py): alive
       means it is left alone, whatever the clock says (a run may wait hours on a batch; declaring it dead would
       free its URL for a second process writing the same run); gone means it is over;
    3. otherwise (another machine, a container, a kernel booted since) no heartbeat of the run's own
       (flows/heartbeat.py touches `updated_at` every grace/6) for a whole grace period, whatever Prefect still
       says: an ephemeral API dies with its process and never learns it.
    """
    state = prefect_state()
    if state in RECONCILED_STATUS:
        return RECONCILED_STATUS[state], f"its Prefect flow run is {state}"
    verdict, why = judge(process, host)
    if verdict is Verdict.ALIVE:
        return None
    if verdict is Verdict.DEAD:
        return "crashed", why
    if updated_at < now - policy.grace:
        said = f"Prefect still says {state}" if state else "no Prefect flow run"
        return "crashed", f"no heartbeat from {host or 'its host'} for over {policy.grace} ({said}; {why})"
    return None


def reconcile_run(engine: Engine, policy: RetentionPolicy, run_id: str, status: str, why: str, now: datetime) -> bool:
    """Give a run left `running` by a dead process its real status; False if it is no longer running.

    In the same transaction its open budget holds are released (recorded as released in the ledger): the calls
    they were held for died with the process and will never report back, and a resumed run must be able to
    spend its budget. A submitted embeddings batch keeps its hold: the resumed run collects and charges it.
    """
    # Here, not at the top: harvest.steps imports the crawl and every enrichment (numpy, PIL, lxml, httpx), which
    # `harvest runs show|files|cleanup` (file_state, cleanup_run) paid for at startup without using them.
    from harvest.steps import holds_a_resume_settles

    with transaction(engine) as connection:
        row = rows.lock_run(connection, run_id, skip_locked=True)
        if row is None or row["status"] != "running":
            return False  # another sweep (or the run itself) got there first
        rows.mark_reconciled(
            connection, run_id, status=status, now=now, expires_at=policy.expires_at(status, now),
            error=row["error"] or f"reconciled: {why}; the run's process ended without reporting",
        )
        released = release_open_holds(connection, run_id, keep=holds_a_resume_settles(row["steps"] or {}))
    logger.warning("run %s reconciled as %s: %s", run_id, status, why)
    if released:
        logger.warning("run %s: released %s held for calls that never reported back (%s)", run_id,
                       usd(sum(released.values())), ", ".join(f"{stage} {usd(v)}" for stage, v in released.items()))
    return True


def _settle(engine: Engine, policy: RetentionPolicy, report: SweepReport, now: datetime) -> None:
    """A finished run still `pending` a grace period later lost its completion hook (the process died right
    after the flow ended): it gets the hook's safe outcome, files kept until the policy's expiry counted
    from when it ended, so the normal expiry deletes them instead of nobody, ever."""
    with transaction(engine) as connection:
        for run_id, status, ended in rows.lock_unsettled_runs(connection, now - policy.grace):
            report.settled.append(run_id)
            if not report.dry_run:
                rows.mark_settled(connection, run_id, policy.expires_at(status, ended), now)


def _expire(engine: Engine, store: ObjectStore, report: SweepReport, now: datetime) -> None:
    """Expired kept runs lose their files, and the digest too unless the run completed; a failed cleanup is
    finished (the digest stays).

    Design choice: a digest is deleted only by `_drop_superseded_digests`, once a newer completed run of the
    same URL has a live digest, so each URL keeps exactly one baseline for its next run's diff. Deleting it
    at expiry as well dropped the baseline when the older digest had already been superseded by it.
    """
    if report.dry_run:
        for run_id, retention in rows.runs_due_for_cleanup(engine, now):
            (report.cleaned if retention == "cleanup_failed" else report.expired).append(run_id)
        return
    seen: set[str] = set()
    while True:
        with transaction(engine) as connection:
            batch = rows.lock_runs_due_for_cleanup(connection, now, exclude=seen, limit=BATCH)
            if not batch:
                return
            for run_id, retention, status in batch:
                seen.add(run_id)
                expired = retention == "kept"
                # A completed run's digest may be its URL's diff baseline: it goes only once superseded.
                keep_digest = not expired or status == "completed"
                try:
                    report.deleted_objects += delete_run_objects(store, connection, run_id, keep_digest=keep_digest)
                except StorageError as exc:
                    report.errors.append(f"run {run_id}: {exc}")
                    continue
                rows.mark_swept(connection, run_id, "expired" if expired else "cleaned", now)
                (report.expired if expired else report.cleaned).append(run_id)


def _drop_superseded_digests(engine: Engine, store: ObjectStore, report: SweepReport) -> None:
    """A cleaned run's digest is needed only until a newer completed run of the same URL has its own."""
    with transaction(engine) as connection:
        for file_id, uri, _run_id in rows.lock_superseded_digests(connection):
            report.digests.append(store.key_for(uri))
            if report.dry_run:
                continue
            store.delete(store.key_for(uri))
            report.deleted_objects += 1
            rows.mark_file_deleted(connection, file_id)


def _accounted_keys(engine: Engine, store: ObjectStore) -> tuple[set[str], set[str], set[str]]:
    """Keys of live file rows, ids of runs whose files are still kept, and ids of running runs."""
    uris, kept, running = rows.files_and_runs_in_use(engine)
    return {_key(store, uri) for uri in uris}, kept, running


def _delete_orphans(
    engine: Engine, store: ObjectStore, policy: RetentionPolicy, report: SweepReport, now: datetime
) -> set[str]:
    """Delete objects under runs/ and digests/ that no row accounts for; returns every key that exists."""
    live, kept, running = _accounted_keys(engine, store)
    existing: set[str] = set()
    for prefix in (keys.RUNS, keys.DIGESTS):
        for info in store.list(prefix):
            existing.add(info.key)
            if info.key in live:
                continue
            owner = keys.run_id_of(info.key)
            if owner is not None:
                if owner in running:
                    continue  # a running run records its files as it goes: never touch them
                if owner in kept and keys.is_step_result(info.key):
                    continue  # a kept run's Prefect step results: what `harvest runs resume` needs
            if info.last_modified > now - policy.grace:
                continue  # may belong to a run being started right now
            report.orphans.append(info.key)
            if not report.dry_run:
                store.delete(info.key)
                report.deleted_objects += 1
    return existing


def _referenced_images(
    engine: Engine, store: ObjectStore, policy: RetentionPolicy, report: SweepReport, now: datetime
) -> set[str] | None:
    """Keys of every image something points at: the images maps (whole or in chunk parts) of running and kept
    runs, the activities, and the cached images a run claimed within the grace period (reused images are
    never rewritten, so their age protects nothing). None when a live map is unreadable (then nobody can
    say an image is unreferenced, and none is deleted this pass).

    Design choice, the order: the maps are read before the activities. A run that imports and then deletes
    its files moves its images from the first list to the second; read the other way round, a run finishing
    in between would leave its images in neither.
    """
    referenced: set[str] = set()
    for run_id, uri in rows.images_maps_in_use(engine):
        try:
            referenced.update(_key(store, line["uri"]) for line in iter_jsonl(store, uri) if line.get("uri"))
        except StorageError as exc:
            # Only a map still live (not being deleted by a concurrent sweep or cleanup right now) is really unreadable.
            if rows.file_still_live(engine, run_id, uri):
                report.errors.append(f"images map {uri} unreadable, no image deleted this pass: {exc}")
                return None
    referenced.update(_key(store, uri) for uri in rows.imported_and_claimed_images(engine, now - policy.grace))
    return referenced


def _delete_unreferenced_images(
    engine: Engine, store: ObjectStore, policy: RetentionPolicy, report: SweepReport, now: datetime
) -> None:
    # The listing comes first: an image stored after it is not a candidate, and one stored before it by a
    # run is young (grace) or in a map or claimed by the time the references are read.
    listed = list(store.list(keys.IMAGES))
    referenced = _referenced_images(engine, store, policy, report, now)
    if referenced is None:
        return
    for info in listed:
        if info.key in referenced or info.last_modified > now - policy.grace:
            continue
        report.images.append(info.key)
        if not report.dry_run:
            store.delete(info.key)
            report.deleted_objects += 1


def _flag_missing(engine: Engine, store: ObjectStore, existing: set[str], report: SweepReport, now: datetime) -> None:
    """Live rows of finished runs whose object is gone are flagged (`missing_at`), never silently trusted."""
    with transaction(engine) as connection:
        for file_id, run_id, kind, uri in rows.unflagged_files_of_finished_runs(connection):
            key = _key(store, uri)
            # The listing was taken earlier: a run that finished since may have stored the file after it.
            # Only an object that is absent now is missing.
            if key in existing or store.head(key) is not None:
                continue
            report.missing.append({"run_id": run_id, "kind": kind, "uri": uri})
            if not report.dry_run:
                rows.mark_file_missing(connection, file_id, now)


def _prune_page_memory(engine: Engine, policy: RetentionPolicy, report: SweepReport, now: datetime) -> None:
    """Delete the page memory of URLs no crawl fetched or revalidated for `page_memory_days` (a site whose URLs
    change, with session ids or dated event pages, would grow the table forever), and rows whose run no longer
    keeps its files (a cleanup deletes them itself; this catches a row a crawl wrote for a run cleaned meanwhile),
    a batch per transaction.

    A page a crawl reuses as unchanged has its row confirmed (`PageMemory.confirm`), so only URLs the crawls
    stopped reaching go; a URL that comes back is simply fetched in full once.
    """
    before = now - timedelta(days=policy.page_memory_days)
    if report.dry_run:
        report.page_memory_pruned = rows.count_stale_page_memory(engine, before)
        return
    while True:
        with transaction(engine) as connection:
            deleted = rows.delete_stale_page_memory(connection, before, PAGE_MEMORY_BATCH)
        report.page_memory_pruned += deleted
        if deleted < PAGE_MEMORY_BATCH:
            return


def _key(store: ObjectStore, uri: str) -> str:
    """The store key of a URI, or the URI itself when it points elsewhere (e.g. a --from-raw input file)."""
    try:
        return store.key_for(uri)
    except StorageError:
        return uri


def file_state(row: dict[str, Any], run: dict[str, Any]) -> str:
    """present | deleted | expired | missing: what `harvest runs show` says about one file row."""
    if row.get("missing_at"):
        return "missing"
    if row.get("deleted_at"):
        return "expired" if run.get("retention") == "expired" else "deleted"
    return "present"
