"""The images stage: download, verify, resize and store each activity's primary image (`images_map.jsonl`).

Images are stored content-addressed outside the run's folder (`images/<sha256>.webp`), because final
records and imported activities point at them: cleaning up a run must never delete them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy.engine import Engine

from harvest.enrich.concurrency import ordered_map
from harvest.enrich.images.cache import cached_images, store_images
from harvest.enrich.images.client import Converter, HostSlots, process_activity_image
from harvest.models import FileRef, ImageInfo
from harvest.pipeline import Chunk, StageResult, timed
from harvest.settings import HarvestSettings
from harvest.storage import ObjectStore, write_jsonl
from harvest.storage.keys import run_key

# What the image cache keeps of a processed image (enough to reuse it without downloading it again).
CACHED_IMAGE_FIELDS = {"source_url", "uri", "width", "height", "bytes", "sha256", "etag", "last_modified"}


def _previous_images(records: Iterable[dict[str, Any]], engine: Engine) -> dict[str, ImageInfo]:
    urls = {record["image_url"] for record in records if record.get("image_url")}
    return {
        url: ImageInfo(id="", **{k: row[k] for k in ("source_url", "uri", "width", "height", "bytes", "sha256",
                                                      "etag", "last_modified")})
        for url, row in cached_images(engine, urls).items()
    }


def process_images(
    store: ObjectStore, run_id: str, standardized: FileRef, settings: HarvestSettings, *, engine: Engine | None = None,
    chunk: Chunk | None = None,
) -> StageResult:
    """One line per activity, in file order; a bad image is recorded with its error and never fails the stage.

    With `engine`, images an earlier run stored are revalidated with a conditional GET (`image_cache`):
    an unchanged image is not downloaded again. With `chunk`, only those lines, into that part of the map.
    """
    result = StageResult()
    kind = chunk.output("images_map") if chunk else "images_map"
    chunk = chunk or Chunk(0, 0, standardized.records)

    def records() -> Iterator[dict[str, Any]]:
        return chunk.records(store, standardized.uri)

    previous = _previous_images(records(), engine) if engine is not None else {}
    fresh: dict[str, ImageInfo] = {}
    host_slots = HostSlots(settings.per_host_concurrency)
    converter = Converter(settings.image_pool_from)

    def no_image(record: dict[str, Any]) -> ImageInfo | None:
        return None if record.get("image_url") else ImageInfo(id=record["id"])

    def one(record: dict[str, Any]) -> ImageInfo:
        # Standardized lines are Activity dumps already: two fields are read, no model is rebuilt per line.
        activity_id, image_url = record["id"], record["image_url"]
        return process_activity_image(
            activity_id, image_url, store,
            max_bytes=settings.image_max_bytes, max_pixels=settings.image_max_pixels,
            timeout_s=settings.request_timeout_seconds, user_agent=settings.user_agent,
            allow_private_networks=settings.allow_private_networks, previous=previous.get(image_url),
            host_slots=host_slots, converter=converter,
        )

    def activities() -> Iterator[dict[str, Any]]:
        for record in records():
            result.stats.items_in += 1
            yield record

    def infos() -> Iterator[ImageInfo]:
        for info in ordered_map(one, activities(), workers=max(2, settings.per_host_concurrency * 2), quick=no_image):
            if info.error:
                result.stats.skipped += 1
                result.warn(f"image for {info.id} skipped: {info.error}")
            elif info.uri:
                result.stats.items_out += 1
                if info.reused:
                    result.stats.details["images_reused"] = int(result.stats.details.get("images_reused", 0)) + 1
                elif info.source_url:
                    fresh[info.source_url] = info
            yield info

    with timed(result.stats):
        ref = write_jsonl(store, run_key(run_id, kind, "jsonl"), kind, infos())
    result.files.append(ref)
    if engine is not None and fresh:
        store_images(engine, [
            info.model_dump(include=CACHED_IMAGE_FIELDS) for info in fresh.values()
        ])
    return result
