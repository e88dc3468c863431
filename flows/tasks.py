"""Tasks: each wraps one domain stage, records what it stored, and returns only small references.

Each task is named after its step: the name in the UI is the step key in the run row (a chunk's task run is
`<enrichment>.<index>`, its step key). Results are persisted as JSON under `runs/<run_id>/results/<step>.json`
in the run's own storage, so a flow run retried (or restarted with the same run id) loads finished steps instead
of running them again, and deleting the run's prefix removes them with the run's files. The key is also
Prefect's cache key, which is why every key carries the run id. Every task body runs under
`harvest_logs_to_task`, so the domain's own log lines reach its task run's logs in whichever process runs it (a
Dask worker process too).

The enrichments' tasks are made from the registry (harvest/enrich/registry.py), one set per enrichment, by its
shape: a chunk task and the join for a chunked one, a submit and a collect task for a batch one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from dataclasses import dataclass
from functools import cache
from typing import Any

from prefect import get_run_logger, task

from flows import artifacts
from flows.ledger import count_step, meter_for
from flows.limits import gate, slot
from flows.polling import WaitProgress, wait_for_job
from flows.resources import Resources, resources
from flows.run_logs import harvest_logs_to_task
from flows.traffic import CountedTask, Traffic
from harvest.crawl import CrawlStats
from harvest.crawl.page_cache import PageCache
from harvest.crawl.stage import collect_raw_activities, copy_raw_activities, extraction_version
from harvest.db import runs as run_rows
from harvest.diff.stage import diff_with_previous_run as diff_stage
from harvest.enrich.base import BatchEnrichment, ChunkedEnrichment, Collected, EnrichContext, Enrichment
from harvest.enrich.join import combine_parts
from harvest.enrich.registry import enrichments
from harvest.errors import DatabaseError
from harvest.extract.answers import LLMAnswerCache
from harvest.import_.stage import import_final_records
from harvest.memory import release_free_memory
from harvest.merge.final import write_final_records
from harvest.merge.stage import merge_enrichments
from harvest.models import FileRef, ImportSummary, RunConfig
from harvest.pipeline import Chunk, StageResult
from harvest.standardize.stage import standardize_raw_activities
from harvest.storage.keys import chunk_result_step, combined_result_step, result_key_template

LOGGED_WARNINGS = 20


PERSISTED: dict[str, Any] = {"persist_result": True, "result_serializer": "json"}


def record_stage(res: Resources, run_id: str, step: str, result: StageResult) -> None:
    """Write what a stage stored and counted into the run row, and surface its warnings in the run's logs."""
    release_free_memory()  # the stage's data is dropped: its pages go back, not into the next stage's peak
    logger = get_run_logger()
    for ref in result.files:
        run_rows.record_file(res.engine, run_id, ref)
    # Which process ran the step: the flow's, or (HARVEST_DASK_PROCESSES) a Dask worker process.
    stats = result.stats.model_copy(update={"processes": [f"{socket.gethostname()}:{os.getpid()}"]})
    run_rows.record_step(res.engine, run_id, step, stats.model_dump())
    count_step(res.engine, run_id, step, result)
    run_rows.add_warnings(res.engine, run_id, [f"{step}: {w}" for w in result.warnings], failed_urls=result.failed_urls)
    for warning in result.warnings[:LOGGED_WARNINGS]:
        logger.warning("%s: %s", step, warning)
    if len(result.warnings) > LOGGED_WARNINGS:
        logger.warning("%s: %d more warnings in the run record", step, len(result.warnings) - LOGGED_WARNINGS)
    logger.info(
        "%s: %d in, %d out, %d skipped in %.2fs", step, result.stats.items_in, result.stats.items_out,
        result.stats.skipped, result.stats.seconds,
    )


def _context(res: Resources, run_id: str, enrichment: Enrichment) -> EnrichContext:
    """What an enrichment's stage gets: the run's resources, a meter for its ledger stage, its rate gate."""
    return EnrichContext(
        store=res.store, engine=res.engine, settings=res.settings, run_id=run_id,
        meter_for=lambda: meter_for(res.engine, res.settings, run_id, enrichment.name), gate=gate(enrichment.limit),
    )


def _warn(res: Resources, run_id: str, step: str, warnings: list[str]) -> None:
    for warning in warnings:
        get_run_logger().warning("%s: %s", step, warning)
    run_rows.add_warnings(res.engine, run_id, [f"{step}: {w}" for w in warnings])


@task(name="crawl", result_storage_key=result_key_template("crawl"), **PERSISTED)
@harvest_logs_to_task
def crawl(run_id: str, url: str, config: RunConfig, progress_id: str | None = None) -> FileRef:
    """Crawl and extract; the run's progress artifact (`progress_id`) moves as pages arrive (throttled)."""
    res = resources()
    llm = None
    if res.settings.has_openai:
        # Imported here: the OpenAI SDK (~0.5 s) only in a run that has a key (issue 32)
        from harvest.extract.llm import LLMExtractor
        from harvest.net.openai_client import make_openai_client

        assert res.settings.openai_api_key is not None
        client = make_openai_client(res.settings.openai_api_key.get_secret_value(), res.settings.openai_base_url)
        llm = LLMExtractor(client, res.settings.extraction_model, cache=LLMAnswerCache(res.engine),
                           meter=meter_for(res.engine, res.settings, run_id, "crawl"))
    progress = artifacts.Progress.attach(run_id, progress_id)

    def on_progress(stats: CrawlStats, found: int) -> None:
        progress.crawl(stats.pages_fetched, stats.pages_queued, found, config.max_pages)

    memory = (PageCache(res.engine, extraction_version(llm), render=config.render, run_id=run_id)
              if res.settings.crawl_revalidate else None)
    try:
        result = collect_raw_activities(
            res.store, run_id, url, config, res.settings, llm=llm, on_progress=on_progress, memory=memory
        )
    finally:
        # Answers and costs a database outage kept from the database (issue 27 item 4); a crawl that failed
        # keeps its own error, and a retry still finds the answers in this process.
        if llm is not None:
            with contextlib.suppress(DatabaseError) if sys.exc_info()[0] is not None else contextlib.nullcontext():
                llm.settle()
    record_stage(res, run_id, "crawl", result)
    if result.unfollowed:  # what a limit cut off, for the summary, the CLI and the UI
        run_rows.record_step(res.engine, run_id, "unfollowed", result.unfollowed)
    run_rows.record_step(res.engine, run_id, "quality_crawl", result.quality)  # content quality (harvest/quality.py)
    return result.file("raw_activities")


@task(name="crawl-from-raw", result_storage_key=result_key_template("crawl"), **PERSISTED)
@harvest_logs_to_task
def crawl_from_raw(run_id: str, source: str) -> FileRef:
    """The crawl step from stored raw activities (`--from-raw`) instead of the site."""
    res = resources()
    result = copy_raw_activities(res.store, run_id, source)
    record_stage(res, run_id, "crawl", result)
    return result.file("raw_activities")


@task(name="standardize", result_storage_key=result_key_template("standardize"), **PERSISTED)
@harvest_logs_to_task
def standardize(run_id: str, raw: FileRef, config: RunConfig) -> FileRef:
    res = resources()
    result = standardize_raw_activities(res.store, run_id, raw, config, date_languages=res.settings.date_languages)
    record_stage(res, run_id, "standardize", result)
    run_rows.record_step(res.engine, run_id, "quality_standardize", result.quality)
    return result.file("standardized")


@cache
def chunk_task(enrichment: ChunkedEnrichment) -> Any:
    """The task of one chunk of `enrichment` (task `<name>-chunk`, task run and step `<name>.<index>`): lines
    start..stop of standardized.jsonl into part `index` of its map."""

    @task(name=f"{enrichment.name}-chunk", task_run_name=f"{enrichment.name}.{{index}}",
          result_storage_key=result_key_template(chunk_result_step(enrichment.name)), **PERSISTED)
    @harvest_logs_to_task
    def enrich_chunk(run_id: str, standardized: FileRef, index: int, start: int, stop: int) -> FileRef:
        res = resources()
        with slot(enrichment.limit):
            result = enrichment.enrich_chunk(_context(res, run_id, enrichment), standardized, Chunk(index, start, stop))
        record_stage(res, run_id, f"{enrichment.name}.{index}", result)
        return result.files[0]

    return enrich_chunk


@task(name="join", result_storage_key=result_key_template(combined_result_step()), **PERSISTED)
@harvest_logs_to_task
def join(run_id: str, kind: str, step: str, chunks: int, chunk_size: int, max_chunks: int) -> FileRef:
    """Join a map's chunk parts in order and drop them; idempotent (harvest.enrich.join). `chunk_size` and
    `max_chunks` are the layout the parts were cut with: part of the result's key, not of the work. Bound per
    enrichment as task `<name>` (its step)."""
    res = resources()
    ref, warnings = combine_parts(res.engine, res.store, run_id, kind, step, chunks)
    _warn(res, run_id, step, warnings)
    return ref


@cache
def submit_task(enrichment: BatchEnrichment) -> Any:
    """The submission of a batch enrichment's job (task and step `<name>_submit`); its result, the job's handle,
    is persisted, so a resumed run collects the job it paid for."""

    @task(name=f"{enrichment.name}_submit", result_storage_key=result_key_template(enrichment.submit_result),
          **PERSISTED)
    @harvest_logs_to_task
    def submit(run_id: str, standardized: FileRef, option: str) -> Any:
        res = resources()
        with slot(enrichment.limit):
            submission = enrichment.submit(_context(res, run_id, enrichment), standardized, option)
        if submission.warning:
            _warn(res, run_id, enrichment.name, [submission.warning])
        for step, result in submission.steps.items():
            record_stage(res, run_id, step, result)
        return submission.job

    return submit


@cache
def collect_task(enrichment: BatchEnrichment) -> Any:
    """The collection of a submitted job (task and step `<name>`): one Running task that polls the job until it
    ends (flows/polling.py: a growing interval from HARVEST_BATCH_POLL_SECONDS, a progress artifact, at most
    HARVEST_BATCH_MAX_WAIT_SECONDS), never a failed attempt per poll."""

    @task(name=enrichment.name, result_storage_key=result_key_template(enrichment.name), **PERSISTED)
    @harvest_logs_to_task
    def collect(run_id: str, standardized: FileRef, job: Any) -> list[FileRef]:
        res = resources()
        context, submitted = _context(res, run_id, enrichment), enrichment.job_from(job)

        def check() -> Collected:
            with slot(enrichment.limit):  # held per poll, never while waiting between polls
                return enrichment.collect(context, standardized, submitted)

        settings = res.settings
        collected = wait_for_job(
            check, first_s=settings.batch_poll_seconds, cap_s=settings.batch_poll_max_seconds,
            total_s=settings.batch_max_wait_seconds, on_wait=WaitProgress(f"{enrichment.name} of run {run_id}"),
        )
        for step, result in collected.steps.items():
            record_stage(res, run_id, step, result)
        _warn(res, run_id, enrichment.name, collected.warnings)
        return collected.files

    return collect


@task(name="merge", result_storage_key=result_key_template("merge"), **PERSISTED)
@harvest_logs_to_task
def merge(run_id: str, standardized: FileRef, maps: list[FileRef | None]) -> FileRef:
    """`maps`: each registered enrichment's map in the registry's order (None: its step failed)."""
    res = resources()
    by_name = {e.name: ref for e, ref in zip(enrichments(), maps, strict=True)}
    result = merge_enrichments(res.store, run_id, standardized, by_name)
    record_stage(res, run_id, "merge", result)
    return result.file("merged")


@task(name="final", result_storage_key=result_key_template("final"), **PERSISTED)
@harvest_logs_to_task
def final(run_id: str, merged: FileRef, vectors: FileRef | None) -> FileRef:
    res = resources()
    result = write_final_records(res.store, run_id, merged, vectors)
    record_stage(res, run_id, "final", result)
    return result.file("final_jsonl")


@task(name="import", result_storage_key=result_key_template("import"), **PERSISTED)
@harvest_logs_to_task
def import_(run_id: str, final: FileRef) -> ImportSummary:
    res = resources()
    result, summary = import_final_records(res.store, run_id, final, res.engine)
    record_stage(res, run_id, "import", result)
    return summary


@task(name="diff", result_storage_key=result_key_template("diff"), **PERSISTED)
@harvest_logs_to_task
def diff(run_id: str, url: str, final: FileRef) -> dict[str, Any]:
    """Digest + diff files, and the counts written onto the run row (and shown in the summary artifact)."""
    res = resources()
    result = diff_stage(res.store, res.engine, run_id, url, final)
    record_stage(res, run_id, "diff", result)
    details = dict(result.stats.details)
    previous = str(details.pop("previous_run_id", "")) or None
    run_rows.update_run(res.engine, run_id, diff=details, previous_run_id=previous)
    return {"previous_run_id": previous, **details}


@dataclass(frozen=True)
class Steps:
    """One run's tasks, their results persisted in the run's storage (result storage is a setting, known only
    at run time) and every call's parameters and result counted in `traffic`. The enrichments' tasks are keyed
    by the enrichment's name, for every enrichment registered when the run starts (`enrichments`, in order)."""

    enrichments: tuple[Enrichment, ...]
    crawl: CountedTask
    crawl_from_raw: CountedTask
    standardize: CountedTask
    chunks: dict[str, CountedTask]
    joins: dict[str, CountedTask]
    submits: dict[str, CountedTask]
    collects: dict[str, CountedTask]
    merge: CountedTask
    final: CountedTask
    import_: CountedTask
    diff: CountedTask
    traffic: Traffic

    @property
    def chunked(self) -> tuple[ChunkedEnrichment, ...]:
        return tuple(e for e in self.enrichments if isinstance(e, ChunkedEnrichment))

    @property
    def batched(self) -> tuple[BatchEnrichment, ...]:
        return tuple(e for e in self.enrichments if isinstance(e, BatchEnrichment))

    @classmethod
    def for_run(cls, result_storage: Any) -> Steps:
        traffic = Traffic()
        registered = enrichments()
        chunked = tuple(e for e in registered if isinstance(e, ChunkedEnrichment))
        batched = tuple(e for e in registered if isinstance(e, BatchEnrichment))

        def bind(step: Any, **options: Any) -> CountedTask:
            return CountedTask(step.with_options(result_storage=result_storage, **options), traffic)

        return cls(
            enrichments=registered, crawl=bind(crawl), crawl_from_raw=bind(crawl_from_raw),
            standardize=bind(standardize),
            chunks={e.name: bind(chunk_task(e)) for e in chunked},
            joins={e.name: bind(join, name=e.name) for e in chunked},
            submits={e.name: bind(submit_task(e)) for e in batched},
            collects={e.name: bind(collect_task(e)) for e in batched},
            merge=bind(merge), final=bind(final), import_=bind(import_), diff=bind(diff), traffic=traffic,
        )

