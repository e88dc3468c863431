"""The `scrape-website` flow: it only composes. Each step is a task over the domain package; between steps
only small file references travel (persisted as JSON), never the activities themselves."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import deployment as runtime_deployment
from prefect.runtime import flow_run as runtime_flow_run
from pydantic import BaseModel, Field

from blocks.storage import result_storage_block
from flows import artifacts, tasks
from flows.hooks import on_cancellation, on_completion, on_crashed, on_failure
from flows.polling import poll_schedule
from flows.reconcile import reconcile_if_dead
from flows.resources import resources
from flows.runners import make_task_runner
from harvest.db import runs as run_rows
from harvest.errors import RunAlreadyRunningError
from harvest.models import FileRef, ImportSummary, RunConfig, StartRequest
from harvest.retention import policy_from
from harvest.settings import get_settings
from harvest.stages.common import chunk_ranges
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
    bytes_between_tasks: int = Field(description="JSON bytes of every task's parameters and result in this run.")
    task_runs: int = 0


def _json_size(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, BaseModel):
        return len(value.model_dump_json())
    if isinstance(value, list):
        return sum(_json_size(item) for item in value)
    return len(json.dumps(value, default=str))


class _Traffic:
    """Counts what travels between tasks: the point of the design is that this stays small and constant."""

    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0

    def add(self, *values: Any) -> None:
        """One task call: its parameters and its result."""
        self.calls += 1
        self.bytes += sum(_json_size(value) for value in values)


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
    description="Crawl a family-activities site, extract, standardize and enrich activities, write JSONL, optionally import.",
    task_runner=make_task_runner(get_settings()),
    on_completion=[on_completion],
    on_failure=[on_failure],
    on_crashed=[on_crashed],
    on_cancellation=[on_cancellation],
)
def scrape_website(url: str, config: RunConfig = RunConfig(), from_raw: str | None = None) -> RunSummary:
    """Scrape `url` into enriched activity records. Files land in HARVEST_STORAGE_URL under runs/<flow run id>/.

    `from_raw`: start from stored raw activities (a kept run's raw_activities URI or a local JSONL) instead
    of crawling; `url` is then only the run's label.
    """
    logger = get_run_logger()
    request = StartRequest(url=url, config=config)
    res = resources()
    if not from_raw:
        check_fetch_allowed(request.url, allow_private_networks=res.settings.allow_private_networks)
    run_id = str(runtime_flow_run.id)
    traffic = _Traffic()

    try:
        is_new = _start_run(res, run_id, request.url, config)
    except RunAlreadyRunningError as exc:
        logger.warning("%s; not starting a second one (one run per URL at a time)", exc)
        return RunSummary(
            run_id=exc.running_run_id, url=request.url, status="already_running", activities_processed=0,
            files={}, bytes_between_tasks=0,
        )
    logger.info("run %s %s for %s", run_id, "started" if is_new else "resumed", request.url)
    progress = artifacts.Progress(run_id)

    storage = result_storage_block(res.settings)
    bound = {name: getattr(tasks, name).with_options(result_storage=storage) for name in (
        "crawl_and_extract", "load_raw_activities", "standardize", "images_chunk", "geocode_chunk", "combine_map",
        "submit_embeddings_batch",
        "poll_embeddings_batch", "merge", "write_final", "diff_with_previous_run", "import_activities",
    )}

    # 1-2. Crawl + extract, then standardize: both critical.
    if from_raw:
        raw = bound["load_raw_activities"](run_id, from_raw)
        traffic.add(from_raw, raw)
    else:
        raw = bound["crawl_and_extract"](run_id, request.url, config)
        traffic.add(request.url, config, raw)
    progress.advance("crawl")
    standardized = bound["standardize"](run_id, raw, config)
    progress.advance("standardize")
    traffic.add(raw, config, standardized)

    # 3. Enrich concurrently, images and geocodes in chunks; each branch may fail without failing the run.
    # The embeddings batch first: on a first run it is the longest branch (the batch's wait).
    batch_future = bound["submit_embeddings_batch"].submit(run_id, standardized, config.embedding_model)
    chunks = chunk_ranges(standardized.records, res.settings.enrich_chunk_size, res.settings.enrich_max_chunks)
    images_future, image_parts = _fan_out(bound, "images_chunk", "images_map", "images", run_id, standardized, chunks)
    geocode_future, geocode_parts = _fan_out(bound, "geocode_chunk", "geocoded_map", "geocode", run_id, standardized, chunks)
    batch = _optional(batch_future, "embeddings", run_id)
    traffic.add(standardized, config.embedding_model, batch)
    embedding_files: list[FileRef] | None = None
    if batch is not None and batch.complete:  # every vector reused or embedded now: no batch to poll
        embedding_files = batch.files
    elif batch is not None:
        retries, delays = poll_schedule(
            res.settings.batch_poll_seconds, res.settings.batch_poll_max_seconds, res.settings.batch_max_wait_seconds
        )
        poll = bound["poll_embeddings_batch"].with_options(retries=retries, retry_delay_seconds=delays)
        embedding_files = _optional(poll.submit(run_id, standardized, batch), "embeddings", run_id)
        traffic.add(standardized, batch, embedding_files)
    images_map = _optional(images_future, "images", run_id)
    geocoded_map = _optional(geocode_future, "geocode", run_id)
    for parts, kind, step, combined in ((image_parts, "images_map", "images", images_map),
                                        (geocode_parts, "geocoded_map", "geocode", geocoded_map)):
        _count_fan_out(traffic, run_id, standardized, chunks, parts)
        traffic.add(run_id, kind, step, len(chunks), combined)
    embeddings = {ref.kind: ref for ref in embedding_files or []}
    progress.advance("enrich")

    # 4-5. Merge, then the final JSONL: both critical.
    merged = bound["merge"](run_id, standardized, images_map, geocoded_map, embeddings.get("embeddings_index"))
    traffic.add(standardized, images_map, geocoded_map, embeddings.get("embeddings_index"), merged)
    final = bound["write_final"](run_id, merged, embeddings.get("embeddings"))
    traffic.add(merged, embeddings.get("embeddings"), final)
    diff = _optional(bound["diff_with_previous_run"].submit(run_id, request.url, final), "diff", run_id)
    traffic.add(request.url, final, diff)
    progress.advance("final")

    # 6. Import when asked.
    summary: ImportSummary | None = None
    if config.auto_import:
        summary = bound["import_activities"](run_id, final)
        traffic.add(final, summary)

    # 7. Done: the hooks decide what happens to the files.
    run_rows.finish_run(
        res.engine, run_id, "completed", activities_processed=final.records,
        import_summary=summary.model_dump() if summary else None,
    )
    row = run_rows.get_run(res.engine, run_id) or {}
    run_rows.record_step(res.engine, run_id, "traffic", {"bytes_between_tasks": traffic.bytes, "task_runs": traffic.calls})
    artifacts.publish_summary(res.engine, res.store, run_id, config)
    progress.advance("done")
    logger.info(
        "run %s completed: %d activities, %d bytes passed between %d tasks",
        run_id, final.records, traffic.bytes, traffic.calls,
    )
    return RunSummary(
        run_id=run_id, url=request.url, status="completed", activities_processed=final.records,
        files=run_rows.files_view(res.engine, run_id), import_summary=summary,
        warnings=list(row.get("warnings") or []), failed_urls=list(row.get("failed_urls") or []),
        bytes_between_tasks=traffic.bytes, task_runs=traffic.calls,
    )


def _fan_out(
    bound: dict[str, Any], task: str, kind: str, step: str, run_id: str, standardized: FileRef,
    chunks: list[tuple[int, int]],
) -> tuple[PrefectFuture[Any], list[PrefectFuture[Any]]]:
    """One task per chunk of standardized.jsonl, then one that joins their parts in order (the map's future)."""
    parts = [
        bound[task].submit(run_id, standardized, index, start, stop) for index, (start, stop) in enumerate(chunks)
    ]
    return bound["combine_map"].submit(run_id, kind, step, len(chunks), wait_for=parts), parts


def _count_fan_out(
    traffic: _Traffic, run_id: str, standardized: FileRef, chunks: list[tuple[int, int]], parts: list[PrefectFuture[Any]]
) -> None:
    for index, ((start, stop), future) in enumerate(zip(chunks, parts)):
        part = future.result(raise_on_failure=False)
        traffic.add(run_id, standardized, index, start, stop, part if isinstance(part, FileRef) else None)


def _start_run(res: Any, run_id: str, url: str, config: RunConfig) -> bool:
    """Create (or resume) the run row. If the URL's running run is in fact dead, reconcile it and go on."""
    create = partial(
        run_rows.create_run, res.engine, run_id, url, config.model_dump(mode="json"),
        flow_run_name=runtime_flow_run.name, deployment_id=runtime_deployment.id,
        deployment_name=runtime_deployment.name, work_pool=_work_pool_name(),
    )
    try:
        return create()
    except RunAlreadyRunningError as exc:
        if not reconcile_if_dead(res.engine, policy_from(res.settings), exc.running_run_id):
            raise
        return create()


def _work_pool_name() -> str | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return getattr(context.flow_run, "work_pool_name", None) if context and context.flow_run else None
