"""Embeddings as an enrichment (harvest/enrich/base.py): one OpenAI batch per run, submitted once and collected
when it ends. Vectors known already (same content and model) are copied, a few left are embedded now; the
vectors are a float32 matrix (`embeddings.npy`) the final writer reads into each record's `embedding`, and the
map is `embeddings_index.jsonl` (per activity: its row, or why it has none)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Engine

from harvest.cost import Counter, Reservation, tokens_from_chars
from harvest.db import runs as run_rows
from harvest.db.schema import activities
from harvest.enrich.base import BatchEnrichment, Collected, EnrichContext, GlobalLimit, Submission, counted
from harvest.enrich.embeddings.api import embedding_text
from harvest.enrich.embeddings.resume import collected_embeddings, drop_prefill, submitted_batch
from harvest.enrich.embeddings.reuse import reusable_embeddings
from harvest.enrich.embeddings.stage import SubmittedBatch, collect_embeddings, submit_embeddings
from harvest.enrich.embeddings.vectors import embedding_hash
from harvest.models import Activity, FileRef, RunConfig
from harvest.net.openai_client import make_openai_client
from harvest.settings import HarvestSettings

logger = logging.getLogger(__name__)

CLOCK_MARGIN_SECONDS = 300  # between this machine and OpenAI's batch timestamps
SUBMIT_STEP = "embeddings_submit"
OPENAI_LIMIT = "harvest-openai"  # a Prefect global concurrency limit: OpenAI calls at once


def openai_client(settings: HarvestSettings) -> Any:
    """The SDK client for the settings' key and base URL."""
    assert settings.openai_api_key is not None
    return make_openai_client(settings.openai_api_key.get_secret_value(), settings.openai_base_url)


class Embeddings(BatchEnrichment):
    name = "embeddings"
    map_kind = "embeddings_index"
    merged_key = "embedding_row"
    vectors_kind = "embeddings"
    columns = (activities.c.embedding_hash, activities.c.embedding)
    uncompared = ("embedding",)  # compared through its hash
    limit = GlobalLimit(
        OPENAI_LIMIT, "concurrency", slots=lambda settings: settings.openai_max_concurrent,
        per_second=lambda settings: None, note=lambda settings: f"{settings.openai_max_concurrent} at once",
    )
    submit_result = "embeddings_batch"
    job_type = SubmittedBatch

    def job_option(self, config: RunConfig) -> str:
        return config.embedding_model

    def submit(self, context: EnrichContext, standardized: FileRef, option: str) -> Submission:
        """Reuse, embed now, or submit a batch (harvest.enrich.embeddings.stage.submit_embeddings); a batch an
        earlier attempt of this run submitted is collected instead of submitting (and paying for) another."""
        settings, model = context.settings, option
        if not settings.has_openai:
            return Submission({}, None, warning="OPENAI_API_KEY not set: embeddings skipped")
        earlier = submitted_batch(context.engine, context.run_id, model)
        stale = None
        if earlier is not None and earlier.dimensions not in (None, settings.embedding_dimensions):
            # Its vectors are of another length than this attempt asks for: collecting it would fail. Its hold is
            # given back (it will never be collected) and the texts are sent again at the new length.
            stale = (f"batch {earlier.batch_id} of an earlier attempt asked for {earlier.dimensions} dimensions, "
                     f"HARVEST_EMBEDDING_DIMENSIONS is now {settings.embedding_dimensions}: not collected, sent again")
            if context.meter is not None and not earlier.complete:
                context.meter.release(Reservation(earlier.reserved_usd))
            earlier = None
        if earlier is not None:  # an earlier attempt's batch is running (or done): collect it, do not pay twice
            logger.info("embeddings: collecting batch %s, submitted by an earlier attempt of this run",
                        earlier.batch_id)
            return Submission({}, earlier)
        result, batch, collected = submit_embeddings(
            context.store, context.run_id, standardized, openai_client(settings), model,
            dimensions=settings.embedding_dimensions, reuse=context.engine, sync_below=settings.embeddings_sync_below,
            meter=context.meter, run_started=_started(context), max_requests=settings.batch_max_requests,
            max_bytes=settings.batch_max_bytes,
        )
        if stale:
            result.warn(stale)
        steps = {SUBMIT_STEP: result}
        if collected is not None:  # no batch: the vectors are final already (batch.files), nothing to poll
            steps[self.name] = collected
        return Submission(steps, batch)

    def collect(self, context: EnrichContext, standardized: FileRef, job: Any) -> Collected:
        """Raises BatchNotReadyError while the batch runs. Vectors an earlier attempt collected (stopped before
        its result was saved) are taken as they are."""
        steps = {}
        files = collected_embeddings(context.engine, context.run_id)
        if files is None:
            result = collect_embeddings(
                context.store, context.run_id, standardized, openai_client(context.settings), job,
                dimensions=context.settings.embedding_dimensions, meter=context.meter,
            )
            steps[self.name] = result
            files = result.files
        return Collected(steps, files, drop_prefill(context.engine, context.store, context.run_id))

    def files_of(self, job: Any) -> list[FileRef] | None:
        return job.files if job is not None and job.complete else None

    def merged(self, line: dict[str, Any] | None) -> Any:
        return line["row"] if line and line.get("ok") else None

    def finish(self, record: dict[str, Any], value: Any) -> None:
        """Nothing: the final writer puts the vector of row `value` of `embeddings.npy` in `embedding`."""

    def row(self, record: dict[str, Any]) -> dict[str, Any]:
        vector = record.get("embedding")
        return {"embedding": vector, "embedding_hash": embedding_hash(vector)}

    def free_counters(self, step: str, items_out: int, details: Mapping[str, Any]) -> dict[str, int]:
        return {Counter.embedding_cache_hits: counted(details, "reused")} if step == SUBMIT_STEP else {}

    def holds_a_resume_settles(self, steps: Mapping[str, Any]) -> bool:
        """A batch that was submitted (its id is recorded) but not yet collected: OpenAI runs it whatever became
        of the process, and a resumed run collects it and charges what it used against that hold."""
        submitted = (steps.get(SUBMIT_STEP) or {}).get("details") or {}
        return bool(submitted.get("batch_id")) and self.name not in steps

    def estimate(self, records: list[dict[str, Any]], config: RunConfig, settings: HarvestSettings,
                 engine: Engine | None) -> dict[str, int] | None:
        """Texts not reusable from the activities table: their tokens at the endpoint a run would use."""
        model = config.embedding_model
        hashes = {record["id"]: record.get("content_hash") or "" for record in records}
        reused = {activity_id for activity_id, _ in reusable_embeddings(engine, model, hashes)} if engine else set()
        texts = {record["id"]: embedding_text(Activity.model_validate(record)) for record in records
                 if record["id"] not in reused}
        texts = {key: text for key, text in texts.items() if text}
        tokens = tokens_from_chars(sum(len(text) for text in texts.values()))
        usage: dict[str, int] = {Counter.embedding_cache_hits: len(reused)}
        if not texts:
            return usage
        if len(texts) >= settings.embeddings_sync_below:
            return {**usage, Counter.batch_lines: len(texts), Counter.batch_tokens: tokens}
        return {**usage, Counter.embedding_requests: 1, Counter.embedding_tokens: tokens}


def _started(context: EnrichContext) -> float | None:
    """When the run began (epoch seconds), less a margin for OpenAI's clock and its whole-second timestamps:
    where to stop looking for a batch an earlier attempt submitted."""
    row = run_rows.get_run(context.engine, context.run_id)
    started = row.get("started_at") if row else None
    return started.timestamp() - CLOCK_MARGIN_SECONDS if started is not None else None


EMBEDDINGS = Embeddings()
