"""The `scrape-website` flow: it only composes. Each step is a task over the domain package; between steps
only small file references travel (persisted as JSON), never the activities themselves."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run as runtime_flow_run
from pydantic import BaseModel, Field

from blocks.storage import result_storage_block
from flows import artifacts
from flows.heartbeat import heartbeat_interval, start_heartbeat
from flows.hooks import on_cancellation, on_completion, on_crashed, on_failure
from flows.reconcile import reconcile_if_dead
from flows.resources import Resources, resources
from flows.run_context import deployment_of_run, work_pool_of_run
from flows.run_logs import harvest_logs_to_run
from flows.runners import make_task_runner
from flows.sources import after_source_run
from flows.tasks import Steps
from flows.traffic import Traffic
from harvest.crawl.stage import unrendered_error
from harvest.db import runs as run_rows
from harvest.db.ledger import run_cost
from harvest.enrich.base import BatchEnrichment, ChunkedEnrichment, Enrichment
from harvest.enrich.fan_out import enrichment_chunks, network_work
from harvest.errors import DatabaseError, RunAlreadyRunningError, StorageError
from harvest.models import FileRef, ImportSummary, RunConfig, StartRequest
from harvest.quality import run_quality
from harvest.retention.policy import policy_from
from harvest.settings import get_settings
from harvest.urls import check_fetch_allowed


class RunSummary(BaseModel):
    """What a run returns (and what `harvest scrape --json` prints)."""

    run_id: str
    url: str
    status: str
    activities_processed: int
    files: dict[str, FileRef]
    import_summary: ImportSummary | None = None
    warnings: list[str] = Field(default_factory=list)
    failed_urls: list[dict[str, Any]] = Field(default_factory=list)
    unfollowed_links: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Links a limit (max_pages, max_depth, max_extractions, max_crawl_seconds: the crawl deadline) left "
            "unfollowed: {count, examples}."
        ),
    )
    bytes_between_tasks: int = Field(description="JSON bytes of every task's parameters and result in this run.")
    task_runs: int = 0
    cost: dict[str, Any] = Field(
        default_factory=dict, description="The run ledger: {cost_usd, reserved_usd, usage, stages} (harvest.db.ledger)."
    )
    quality: dict[str, Any] = Field(
        default_factory=dict,
        description="What the content came to: items per source, JSON-LD repairs, feeds, refused dates, all-day "
        "items, corrected times, items without a zone or a place, listings that gave nothing (harvest.quality).",
    )


def _optional(future: PrefectFuture[Any], what: str, run_id: str) -> Any:
    """A non-critical step's result, or None with a recorded warning when it failed: the run goes on."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - any failure of an enrichment step is survivable
        message = f"{what}: step failed, continuing without it: {exc.__class__.__name__}: {exc}"
        get_run_logger().warning(message)
        run_rows.add_warnings(resources().engine, run_id, [message])
        return None


@flow(
    name="scrape-website",
    description=(
        "Crawl a family-activities site, extract, standardize and enrich activities, write JSONL, optionally import."
    ),
    task_runner=make_task_runner(get_settings()),
    on_completion=[on_completion],
    on_failure=[on_failure],
    on_crashed=[on_crashed],
    on_cancellation=[on_cancellation],
)
def scrape_website(
    url: str,
    config: RunConfig = RunConfig(),  # noqa: B008 - an immutable model; Prefect shows it as the parameter's default
    from_raw: str | None = None,
) -> RunSummary:
    """Scrape `url` into enriched activity records. Files land in HARVEST_STORAGE_URL under runs/<flow run id>/.

    `from_raw`: start from stored raw activities (a kept run's raw_activities URI or a local JSONL) instead
    of crawling; `url` is then only the run's label.
    """
    with harvest_logs_to_run(runtime_flow_run.id):  # harvest's own log lines reach this run's logs in the UI
        return _scrape(url, config, from_raw)


def _scrape(url: str, config: RunConfig, from_raw: str | None) -> RunSummary:
    """The flow's steps (see scrape_website)."""
    res = resources()
    url = _checked_url(res, url, config, from_raw)
    result_storage = result_storage_block(res.settings)  # before the row: a misconfigured block refuses the run
    run_id = str(runtime_flow_run.id)
    try:  # 0. The run row: one run per URL at a time.
        _start_run(res, run_id, url, config)
    except RunAlreadyRunningError as exc:
        get_run_logger().warning("%s; not starting a second one (one run per URL at a time)", exc)
        return RunSummary(run_id=exc.running_run_id, url=url, status="already_running", activities_processed=0,
                          files={}, bytes_between_tasks=0)
    steps = Steps.for_run(result_storage)
    progress = artifacts.Progress(run_id)

    # 1-2. Crawl + extract (or load stored raw activities), then standardize: both critical.
    progress_id = str(progress.artifact_id) if progress.artifact_id else None
    raw = steps.crawl_from_raw(run_id, from_raw) if from_raw else steps.crawl(run_id, url, config, progress_id)
    progress.advance("crawl")
    standardized = steps.standardize(run_id, raw, config)
    progress.advance("standardize")

    # 3. The enrichments side by side (harvest/enrich/registry.py); each may fail without failing the run.
    enriched = _enrich(steps, res, run_id, standardized, config, progress)
    progress.advance("enrich")

    # 4-5. Merge, then the final JSONL (both critical); the diff against the previous run is optional.
    merged = steps.merge(run_id, standardized, [enriched.map(e) for e in steps.enrichments])
    final = steps.final(run_id, merged, enriched.vectors(steps.enrichments))
    progress.advance("final")

    # 6. Import when asked, while the diff runs: neither reads what the other writes.
    diff = steps.diff.submit(run_id, url, final)
    imported = steps.import_(run_id, final) if config.auto_import else None
    _optional(diff, "diff", run_id)

    # 7. Done: the hooks decide what happens to the files.
    return _finish(res, run_id, url, config, final, imported, steps.traffic, progress)


def _checked_url(res: Resources, url: str, config: RunConfig, from_raw: str | None) -> str:
    """The start URL as validated (and, when it is to be crawled, allowed by the SSRF guard)."""
    request = StartRequest(url=url, config=config)
    if not from_raw:
        check_fetch_allowed(request.url, allow_private_networks=res.settings.allow_private_networks)
    return request.url


@dataclass
class Enriched:
    """Each enrichment's files by its name (None: its step failed or was skipped)."""

    files: dict[str, list[FileRef] | None]

    def map(self, enrichment: Enrichment) -> FileRef | None:
        return next((ref for ref in self.files.get(enrichment.name) or [] if ref.kind == enrichment.map_kind), None)

    def vectors(self, enrichments: tuple[Enrichment, ...]) -> FileRef | None:
        """The records' vectors (the matrix of the enrichment that stores them), if any."""
        source = next((e for e in enrichments if e.vectors_kind), None)
        if source is None:
            return None
        return next((ref for ref in self.files.get(source.name) or [] if ref.kind == source.vectors_kind), None)


def _enrich(
    steps: Steps, res: Resources, run_id: str, standardized: FileRef, config: RunConfig, progress: artifacts.Progress
) -> Enriched:
    """Every registered enrichment at once: each chunked one in chunks joined in order, each batch one submitted
    then collected. The batch jobs are submitted first: on a first run they are the longest branch (the batch's
    wait), so their polls start as soon as they are submitted, alongside the chunks. Progress moves as each chunk
    and each job finishes, not only when the whole stage does.
    """
    submitted = {e.name: steps.submits[e.name].submit(run_id, standardized, e.job_option(config))
                 for e in steps.batched}
    size, most = res.settings.enrich_chunk_size, res.settings.enrich_max_chunks
    work = _network_work(res, standardized, steps.chunked)
    fanned = {
        e.name: _fan_out(steps, e, run_id, standardized,
                         enrichment_chunks(standardized.records, work[e.name], size, most), (size, most))
        for e in steps.chunked
    }
    jobs = {e.name: e.job_from(_optional(submitted[e.name], e.name, run_id)) for e in steps.batched}
    polls = {e.name: _collect(steps, e, run_id, standardized, jobs[e.name]) for e in steps.batched}
    pending = [part for parts, _ in fanned.values() for part in parts]
    pending += [poll for poll in polls.values() if poll is not None]
    total = len(pending) + len(submitted)  # + the jobs' submissions, done above
    progress.enrich(len(submitted), total)
    for done, _ in enumerate(as_completed(pending), start=len(submitted) + 1):  # failures: reported by _optional
        progress.enrich(done, total)
    files: dict[str, list[FileRef] | None] = {}
    for job in steps.batched:
        poll = polls[job.name]
        files[job.name] = _optional(poll, job.name, run_id) if poll is not None else job.files_of(jobs[job.name])
    for fan in steps.chunked:
        joined = _optional(fanned[fan.name][1], fan.name, run_id)
        files[fan.name] = [joined] if joined is not None else None
    return Enriched(files)


def _network_work(res: Resources, standardized: FileRef, chunked: tuple[ChunkedEnrichment, ...]) -> dict[str, int]:
    """What of each chunked enrichment will cost requests (harvest.enrich.fan_out), which sizes its fan-out. Only
    a sizing: if the count cannot be made (a cache unreachable), every record counts, as if nothing were cached."""
    counters = {e.name: e.work(res.engine, res.settings) for e in chunked}
    try:
        return network_work(res.store, standardized, counters, [f for e in chunked for f in e.work_fields])
    except (DatabaseError, StorageError) as exc:
        get_run_logger().warning("enrichment fans out in full: its cached share could not be counted (%s)", exc)
        return dict.fromkeys(counters, standardized.records)


def _collect(
    steps: Steps, enrichment: BatchEnrichment, run_id: str, standardized: FileRef, job: Any
) -> PrefectFuture[Any] | None:
    """The collection of a submitted job (its future: the enrichment's files); None when there is nothing to
    collect (nothing submitted, or the submission finished everything)."""
    if job is None or enrichment.files_of(job) is not None:
        return None
    return steps.collects[enrichment.name].submit(run_id, standardized, job)


def _fan_out(
    steps: Steps, enrichment: ChunkedEnrichment, run_id: str, standardized: FileRef, chunks: list[tuple[int, int]],
    layout: tuple[int, int],
) -> tuple[list[PrefectFuture[Any]], PrefectFuture[Any]]:
    """One task per chunk of standardized.jsonl, then one that joins their parts in order: (the chunks' futures,
    the map's future). `layout` (chunk size, max chunks) goes into the join's result key: another layout is
    another result."""
    parts = [steps.chunks[enrichment.name].submit(run_id, standardized, index, start, stop)
             for index, (start, stop) in enumerate(chunks)]
    join = steps.joins[enrichment.name]
    return parts, join.submit(run_id, enrichment.map_kind, enrichment.name, len(chunks), *layout, wait_for=parts)


def _finish(
    res: Resources, run_id: str, url: str, config: RunConfig, final: FileRef, imported: ImportSummary | None,
    traffic: Traffic, progress: artifacts.Progress,
) -> RunSummary:
    """Mark the run completed, record what travelled between tasks, publish the summary artifact. A run whose
    script-built pages could not be rendered is marked failed instead and raises once the summary is out."""
    unrendered = unrendered_error((run_rows.get_run(res.engine, run_id) or {}).get("steps") or {})
    run_rows.finish_run(
        res.engine, run_id, "failed" if unrendered else "completed", activities_processed=final.records,
        import_summary=imported.model_dump() if imported else None, error=str(unrendered) if unrendered else None,
    )
    if not unrendered:  # a failed run is judged by the on_failure hook (the failure streak)
        after_source_run(res.engine, res.settings, run_id)  # a source's drop alarm: a warning in the summary below
    row = run_rows.get_run(res.engine, run_id) or {}
    traffic.settle()
    moved = {"bytes_between_tasks": traffic.bytes, "task_runs": traffic.calls}
    run_rows.record_step(res.engine, run_id, "traffic", moved)
    artifacts.publish_summary(res.engine, res.store, run_id, config)
    if unrendered:
        raise unrendered  # after the summary: the run fails visibly, its files are kept (on_failure)
    progress.advance("done")
    get_run_logger().info(
        "run %s completed: %d activities, %d bytes passed between %d tasks, estimated cost $%.6f", run_id,
        final.records, traffic.bytes, traffic.calls, run_cost(res.engine, run_id)["cost_usd"],
    )
    return RunSummary(
        run_id=run_id, url=url, status="completed", activities_processed=final.records,
        files=run_rows.files_view(res.engine, run_id), import_summary=imported,
        warnings=list(row.get("warnings") or []), failed_urls=list(row.get("failed_urls") or []),
        unfollowed_links=dict((row.get("steps") or {}).get("unfollowed") or {}),
        bytes_between_tasks=traffic.bytes, task_runs=traffic.calls, cost=run_cost(res.engine, run_id),
        quality=run_quality(row),
    )


def _start_run(res: Resources, run_id: str, url: str, config: RunConfig) -> None:
    """Create (or resume) the run row. If the URL's running run is in fact dead, reconcile it and go on."""
    deployment_id, deployment_name = deployment_of_run()
    create = partial(
        run_rows.create_run, res.engine, run_id, url, config.model_dump(mode="json"),
        flow_run_name=runtime_flow_run.name, deployment_id=deployment_id,
        deployment_name=deployment_name, work_pool=work_pool_of_run(),
    )
    try:
        is_new = create()
    except RunAlreadyRunningError as exc:
        if not reconcile_if_dead(res.engine, policy_from(res.settings), exc.running_run_id):
            raise
        is_new = create()
    start_heartbeat(res.engine, run_id, heartbeat_interval(res.settings.orphan_grace_hours))
    get_run_logger().info("run %s %s for %s", run_id, "started" if is_new else "resumed", url)
