"""Tasks: each wraps one domain stage, records what it stored, and returns only small references.

Results are persisted as JSON under `runs/<run_id>/results/<step>.json` in the run's own storage, so a
flow run retried (or restarted with the same run id) loads finished steps instead of running them again,
and deleting the run's prefix removes them with the run's files. The key is also Prefect's cache key,
which is why every key carries the run id. Every task body runs under `harvest_logs_to_task`, so the domain's
own log lines reach its task run's logs in whichever process runs it (a Dask worker process too).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task

from flows import artifacts
from flows.ledger import count_step, meter_for
from flows.limits import geocoder_gate, openai_slot
from flows.resources import Resources, resources
from flows.run_logs import harvest_logs_to_task
from flows.traffic import CountedTask, Traffic
from harvest.crawl import CrawlStats
from harvest.crawl.page_cache import PageCache
from harvest.crawl.stage import collect_raw_activities, copy_raw_activities, extraction_version
from harvest.db import runs as run_rows
from harvest.diff.stage import diff_with_previous_run as diff_stage
from harvest.enrich.embeddings.stage import SubmittedBatch, collect_embeddings, submit_embeddings
from harvest.enrich.geocode.client import Geocoder, make_geocoder
from harvest.enrich.geocode.cost import MeteredGeocoder
from harvest.enrich.geocode.stage import geocode_addresses
from harvest.enrich.images.stage import process_images
from harvest.enrich.join import collected_embeddings, combine_parts, drop_prefill, submitted_batch
from harvest.errors import BatchNotReadyError
from harvest.extract.answers import LLMAnswerCache
from harvest.extract.llm import LLMExtractor
from harvest.import_.stage import import_final_records
from harvest.memory import release_free_memory
from harvest.merge.stage import merge_enrichments, write_final_records
from harvest.models import FileRef, ImportSummary, RunConfig
from harvest.net.openai_client import make_openai_client
from harvest.pipeline import Chunk, StageResult
from harvest.standardize.stage import standardize_raw_activities
from harvest.storage.keys import chunk_result_step, combined_result_step, result_key_template

LOGGED_WARNINGS = 20
CLOCK_MARGIN_SECONDS = 300  # between this machine and OpenAI's batch timestamps


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


def _openai_client(res: Resources) -> Any:
    settings = res.settings
    assert settings.openai_api_key is not None
    return make_openai_client(settings.openai_api_key.get_secret_value(), settings.openai_base_url)


@task(name="crawl-and-extract", result_storage_key=result_key_template("crawl"), **PERSISTED)
@harvest_logs_to_task
def crawl_and_extract(run_id: str, url: str, config: RunConfig, progress_id: str | None = None) -> FileRef:
    """Crawl and extract; the run's progress artifact (`progress_id`) moves as pages arrive (throttled)."""
    res = resources()
    llm = None
    if res.settings.has_openai:
        llm = LLMExtractor(_openai_client(res), res.settings.extraction_model, cache=LLMAnswerCache(res.engine),
                           meter=meter_for(res.engine, res.settings, run_id, "crawl"))
    progress = artifacts.Progress.attach(run_id, progress_id)

    def on_progress(stats: CrawlStats, found: int) -> None:
        progress.crawl(stats.pages_fetched, stats.pages_queued, found, config.max_pages)

    memory = PageCache(res.engine, extraction_version(llm)) if res.settings.crawl_revalidate else None
    result = collect_raw_activities(
        res.store, run_id, url, config, res.settings, llm=llm, on_progress=on_progress, memory=memory
    )
    record_stage(res, run_id, "crawl", result)
    if result.unfollowed:  # what a limit cut off, for the summary, the CLI and the UI
        run_rows.record_step(res.engine, run_id, "unfollowed", result.unfollowed)
    return result.file("raw_activities")


@task(name="load-raw-activities", result_storage_key=result_key_template("crawl"), **PERSISTED)
@harvest_logs_to_task
def load_raw_activities(run_id: str, source: str) -> FileRef:
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
    return result.file("standardized")


@task(name="process-images-chunk", result_storage_key=result_key_template(chunk_result_step("images")), **PERSISTED)
@harvest_logs_to_task
def images_chunk(run_id: str, standardized: FileRef, index: int, start: int, stop: int) -> FileRef:
    """One chunk of the image map (lines start..stop of standardized.jsonl)."""
    res = resources()
    result = process_images(res.store, run_id, standardized, res.settings, engine=res.engine,
                            chunk=Chunk(index, start, stop))
    record_stage(res, run_id, f"images.{index}", result)
    return result.files[0]


@task(name="geocode-chunk", result_storage_key=result_key_template(chunk_result_step("geocode")), **PERSISTED)
@harvest_logs_to_task
def geocode_chunk(run_id: str, standardized: FileRef, index: int, start: int, stop: int) -> FileRef:
    """One chunk of the geocode map; each distinct address is asked once per chunk, and never again once cached."""
    res = resources()
    settings = res.settings
    made = make_geocoder(
        settings.geocoder, base_url=settings.geocoder_url,
        google_api_key=settings.google_maps_api_key.get_secret_value() if settings.google_maps_api_key else None,
        user_agent=settings.user_agent, rate_per_second=settings.geocoder_rate_per_second,
        timeout_s=settings.request_timeout_seconds, before_call=geocoder_gate(),
    )
    cache = (res.engine, settings.geocoder) if settings.geocoder != "none" else None
    meter = meter_for(res.engine, settings, run_id, "geocode")
    geocoder: Geocoder = MeteredGeocoder(made, settings.geocoder, meter) if settings.geocoder != "none" else made
    result = geocode_addresses(res.store, run_id, standardized, geocoder, cache=cache, chunk=Chunk(index, start, stop))
    if meter.refused:
        result.warn(f"budget: {len(meter.refused)} address(es) not geocoded, the run's max_cost_usd would have "
                    "been passed: " + ", ".join(meter.refused[:20]))
    record_stage(res, run_id, f"geocode.{index}", result)
    return result.files[0]


@task(name="combine-map", result_storage_key=result_key_template(combined_result_step()), **PERSISTED)
@harvest_logs_to_task
def combine_map(run_id: str, kind: str, step: str, chunks: int, chunk_size: int, max_chunks: int) -> FileRef:
    """Join a map's chunk parts in order and drop them; idempotent (harvest.enrich.join). `chunk_size` and
    `max_chunks` are the layout the parts were cut with: part of the result's key, not of the work."""
    res = resources()
    ref, warnings = combine_parts(res.engine, res.store, run_id, kind, step, chunks)
    _warn(res, run_id, step, warnings)
    return ref


def _warn(res: Resources, run_id: str, step: str, warnings: list[str]) -> None:
    for warning in warnings:
        get_run_logger().warning("%s: %s", step, warning)
    run_rows.add_warnings(res.engine, run_id, [f"{step}: {w}" for w in warnings])


@task(name="submit-embeddings-batch", result_storage_key=result_key_template("embeddings_batch"), **PERSISTED)
@harvest_logs_to_task
def submit_embeddings_batch(run_id: str, standardized: FileRef, model: str) -> SubmittedBatch | None:
    res = resources()
    if not res.settings.has_openai:
        message = "OPENAI_API_KEY not set: embeddings skipped"
        get_run_logger().warning(message)
        run_rows.add_warnings(res.engine, run_id, [f"embeddings: {message}"])
        return None
    earlier = submitted_batch(res.engine, run_id, model)
    if earlier is not None:  # an earlier attempt's batch is running (or done): collect it, do not pay twice
        get_run_logger().info("embeddings: collecting batch %s, submitted by an earlier attempt of this run",
                              earlier.batch_id)
        return earlier
    with openai_slot():
        result, batch, collected = submit_embeddings(
            res.store, run_id, standardized, _openai_client(res), model, dimensions=res.settings.embedding_dimensions,
            reuse=res.engine, sync_below=res.settings.embeddings_sync_below,
            meter=meter_for(res.engine, res.settings, run_id, "embeddings"), run_started=_started(res, run_id),
        )
    record_stage(res, run_id, "embeddings_submit", result)
    if collected is not None:  # no batch: the vectors are final already (batch.files), nothing to poll
        record_stage(res, run_id, "embeddings", collected)
    return batch


def _started(res: Resources, run_id: str) -> float | None:
    """When the run began (epoch seconds), less a margin for OpenAI's clock and its whole-second timestamps:
    where to stop looking for a batch an earlier attempt submitted."""
    row = run_rows.get_run(res.engine, run_id)
    started = row.get("started_at") if row else None
    return started.timestamp() - CLOCK_MARGIN_SECONDS if started is not None else None


def _only_while_running(task: Any, task_run: Any, state: Any) -> bool:
    """Retry the poll only while the batch is still running; a batch that ended badly is final."""
    return isinstance(state.result(raise_on_failure=False), BatchNotReadyError)


@task(
    name="poll-embeddings-batch", result_storage_key=result_key_template("embeddings"),
    retry_condition_fn=_only_while_running, **PERSISTED,
)
@harvest_logs_to_task
def poll_embeddings_batch(run_id: str, standardized: FileRef, batch: SubmittedBatch) -> list[FileRef]:
    res = resources()
    files = collected_embeddings(res.engine, run_id)  # collected before; stopped before its result was saved
    if files is None:
        with openai_slot():
            result = collect_embeddings(
                res.store, run_id, standardized, _openai_client(res), batch,
                dimensions=res.settings.embedding_dimensions,
                meter=meter_for(res.engine, res.settings, run_id, "embeddings"),
            )
        record_stage(res, run_id, "embeddings", result)
        files = result.files
    _warn(res, run_id, "embeddings", drop_prefill(res.engine, res.store, run_id))
    return files


@task(name="merge", result_storage_key=result_key_template("merge"), **PERSISTED)
@harvest_logs_to_task
def merge(
    run_id: str, standardized: FileRef, images_map: FileRef | None, geocoded_map: FileRef | None,
    embeddings_index: FileRef | None,
) -> FileRef:
    res = resources()
    result = merge_enrichments(res.store, run_id, standardized, images_map, geocoded_map, embeddings_index)
    record_stage(res, run_id, "merge", result)
    return result.file("merged")


@task(name="write-final-jsonl", result_storage_key=result_key_template("final"), **PERSISTED)
@harvest_logs_to_task
def write_final(run_id: str, merged: FileRef, embeddings: FileRef | None) -> FileRef:
    res = resources()
    result = write_final_records(res.store, run_id, merged, embeddings)
    record_stage(res, run_id, "final", result)
    return result.file("final_jsonl")


@task(name="import-activities", result_storage_key=result_key_template("import"), **PERSISTED)
@harvest_logs_to_task
def import_activities(run_id: str, final: FileRef) -> ImportSummary:
    res = resources()
    result, summary = import_final_records(res.store, run_id, final, res.engine)
    record_stage(res, run_id, "import", result)
    return summary


@task(name="diff-with-previous-run", result_storage_key=result_key_template("diff"), **PERSISTED)
@harvest_logs_to_task
def diff_with_previous_run(run_id: str, url: str, final: FileRef) -> dict[str, Any]:
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
    at run time) and every call's parameters and result counted in `traffic`."""

    crawl_and_extract: CountedTask
    load_raw_activities: CountedTask
    standardize: CountedTask
    images_chunk: CountedTask
    geocode_chunk: CountedTask
    combine_map: CountedTask
    submit_embeddings_batch: CountedTask
    poll_embeddings_batch: CountedTask
    merge: CountedTask
    write_final: CountedTask
    diff_with_previous_run: CountedTask
    import_activities: CountedTask
    traffic: Traffic

    @classmethod
    def for_run(cls, result_storage: Any) -> Steps:
        traffic = Traffic()

        def bind(step: Any) -> CountedTask:
            return CountedTask(step.with_options(result_storage=result_storage), traffic)

        return cls(
            crawl_and_extract=bind(crawl_and_extract), load_raw_activities=bind(load_raw_activities),
            standardize=bind(standardize), images_chunk=bind(images_chunk), geocode_chunk=bind(geocode_chunk),
            combine_map=bind(combine_map), submit_embeddings_batch=bind(submit_embeddings_batch),
            poll_embeddings_batch=bind(poll_embeddings_batch), merge=bind(merge), write_final=bind(write_final),
            diff_with_previous_run=bind(diff_with_previous_run), import_activities=bind(import_activities),
            traffic=traffic,
        )
