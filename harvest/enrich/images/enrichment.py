"""Images as an enrichment (harvest/enrich/base.py): chunked; each record with an image URL costs a request (a
download, or a conditional GET of an image an earlier run stored)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Engine

from harvest.cost import Counter
from harvest.db.schema import activities
from harvest.enrich.base import ChunkedEnrichment, EnrichContext, WorkCount, counted
from harvest.enrich.images.stage import process_images
from harvest.models import FileRef
from harvest.pipeline import Chunk, StageResult
from harvest.settings import HarvestSettings


def _with_image_url(records: list[dict[str, Any]]) -> int:
    return sum(1 for record in records if record["image_url"])


class Images(ChunkedEnrichment):
    name = "images"
    map_kind = "images_map"
    merged_key = "image"
    columns = (activities.c.image_uri, activities.c.image_width, activities.c.image_height)
    work_fields = ("image_url",)

    def work(self, engine: Engine | None, settings: HarvestSettings) -> WorkCount | None:
        return _with_image_url

    def enrich_chunk(self, context: EnrichContext, standardized: FileRef, chunk: Chunk) -> StageResult:
        return process_images(context.store, context.run_id, standardized, context.settings, engine=context.engine,
                              chunk=chunk)

    def merged(self, line: dict[str, Any] | None) -> Any:
        return line if line and line.get("uri") else None

    def finish(self, record: dict[str, Any], value: Any) -> None:
        record["image"] = {"uri": value["uri"], "width": value["width"], "height": value["height"]} if value else None

    def row(self, record: dict[str, Any]) -> dict[str, Any]:
        image = record.get("image") or {}
        return {"image_uri": image.get("uri"), "image_width": image.get("width"), "image_height": image.get("height")}

    def free_counters(self, step: str, items_out: int, details: Mapping[str, Any]) -> dict[str, int]:
        reused = counted(details, "images_reused")
        return {Counter.images_reused: reused, Counter.images_downloaded: max(0, items_out - reused)}


IMAGES = Images()
