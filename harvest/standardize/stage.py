"""The standardize step: raw activities → standardized, deduplicated activities (`standardized.jsonl`, sorted by id)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

from harvest.models import FileRef, RawActivity, RunConfig
from harvest.pipeline import StageResult, timed
from harvest.standardize.dedupe import Deduplicator
from harvest.standardize.languages import DEFAULT_DATE_LANGUAGES
from harvest.standardize.standardizer import Standardizer
from harvest.storage import ObjectStore, iter_jsonl, write_json_lines
from harvest.storage.keys import run_key


def standardize_raw_activities(
    store: ObjectStore,
    run_id: str,
    raw: FileRef,
    config: RunConfig,
    *,
    date_languages: Sequence[str] = DEFAULT_DATE_LANGUAGES,
) -> StageResult:
    """Stream the raw file through the Standardizer; skipped records are counted and explained, never lost silently.

    `date_languages`: HARVEST_DATE_LANGUAGES, the languages other than English a page's dates may be written in.
    """
    result = StageResult()
    standardizer = Standardizer(config, date_languages=date_languages)

    def collect(dedupe: Deduplicator) -> None:
        for number, record in enumerate(iter_jsonl(store, raw.uri), start=1):
            result.stats.items_in += 1
            try:
                item = RawActivity.model_validate(record)
            except ValidationError as exc:
                result.stats.skipped += 1
                result.warn(f"raw record {number} is malformed: {exc.errors()[0]['msg']}")
                continue
            activity = standardizer.standardize(item)
            if activity is not None:
                dedupe.add(activity)

    with timed(result.stats), Deduplicator() as dedupe:
        # All copies first, then one merged activity per id in id order: the file is the same whatever order
        # the crawl found the pages in (see harvest/standardize/dedupe.py for the policy).
        collect(dedupe)
        ref = write_json_lines(store, run_key(run_id, "standardized", "jsonl"), "standardized", dedupe.json_lines())
    if dedupe.duplicates:
        standardizer.skipped["duplicate"] = dedupe.duplicates
    result.files.append(ref)
    result.stats.items_out = ref.records
    result.stats.skipped += sum(standardizer.skipped.values())
    result.stats.details.update({f"skipped_{reason}": n for reason, n in standardizer.skipped.items()})
    for warning in standardizer.warnings:
        result.warn(warning)
    return result
