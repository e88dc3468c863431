"""The alternative a typical Prefect user would write, for the benchmark to compare against.

The same domain stages as `flows/scrape.py` (the same Standardizer, geocoder with one call per address and
the same concurrency, image code, OpenAI batch, final-record shape and database import), but every task
takes and returns whole Python lists of activities, and Prefect persists each result the default way:
`persist_result=True`, the default (pickle) serializer, local result storage, the default cache policy
(which hashes every task's inputs). Nothing here is used by harvest itself.

`python -m bench.whole_lists <n> <out.json>` (child process of bench.run, so peak RSS is this run's own):
`bytes_between_tasks` is the size of the result files Prefect persisted for the run.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from bench.inputs import write_input
from bench.rss import peak_rss_mb

PERSIST: dict[str, Any] = {"persist_result": True}  # default serializer (pickle), default local storage


def _resources() -> Any:
    from flows.resources import resources

    return resources()


@task(**PERSIST)
def load_raw(path: str) -> list[dict[str, Any]]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


@task(**PERSIST)
def standardize(raw: list[dict[str, Any]], config: dict[str, Any]) -> list[dict[str, Any]]:
    from harvest.models import RawActivity, RunConfig
    from harvest.standardize.dedupe import Deduplicator
    from harvest.standardize.standardizer import Standardizer

    standardizer = Standardizer(RunConfig.model_validate(config))
    with Deduplicator() as dedupe:
        for record in raw:
            activity = standardizer.standardize(RawActivity.model_validate(record))
            if activity is not None:
                dedupe.add(activity)
        return [activity.model_dump(mode="json") for activity in dedupe.activities()]


@task(**PERSIST)
def process_images(activities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from harvest.enrich.concurrency import ordered_map
    from harvest.enrich.images.client import process_activity_image
    from harvest.models import Activity, ImageInfo

    res = _resources()
    settings = res.settings

    def one(record: dict[str, Any]) -> dict[str, Any]:
        activity = Activity.model_validate(record)
        if not activity.image_url:
            return ImageInfo(id=activity.id).model_dump(mode="json")
        return process_activity_image(
            activity.id, activity.image_url, res.store, max_bytes=settings.image_max_bytes,
            max_pixels=settings.image_max_pixels, timeout_s=settings.request_timeout_seconds,
            user_agent=settings.user_agent, allow_private_networks=settings.allow_private_networks,
        ).model_dump(mode="json")

    return list(ordered_map(one, activities, workers=max(2, settings.per_host_concurrency * 2)))


@task(**PERSIST)
def geocode(activities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from harvest.enrich.concurrency import ordered_map
    from harvest.enrich.geocode.book import AddressBook
    from harvest.enrich.geocode.client import make_geocoder
    from harvest.models import Activity

    settings = _resources().settings
    geocoder = make_geocoder(
        settings.geocoder, base_url=settings.geocoder_url, google_api_key=None, user_agent=settings.user_agent,
        rate_per_second=settings.geocoder_rate_per_second, timeout_s=settings.request_timeout_seconds,
    )
    cached, asked = AddressBook(), set[str]()

    def one(record: dict[str, Any]) -> dict[str, Any]:
        activity = Activity.model_validate(record)
        address = activity.location.formattedAddress
        if not address:
            return {"id": activity.id, "address": None}
        return {"id": activity.id, **cached.ask(geocoder, address, asked)}

    return list(ordered_map(one, activities, workers=4))


@task(**PERSIST)
def embed(activities: list[dict[str, Any]], model: str) -> list[list[float] | None]:
    """Submit one OpenAI batch, poll it with the same doubling interval as harvest, return every vector."""
    from harvest.enrich.embeddings.batch import check_batch, iter_batch_results, submit_batch, write_batch_input
    from harvest.errors import BatchNotReadyError
    from harvest.models import Activity
    from harvest.net.openai_client import make_openai_client

    settings = _resources().settings
    client = make_openai_client(settings.openai_api_key.get_secret_value(), settings.openai_base_url)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.jsonl"
        with open(path, "wb") as out:
            write_batch_input((Activity.model_validate(a) for a in activities), model, out)
        handle = submit_batch(client, path, metadata={"bench": "whole-lists"})
    delay = settings.batch_poll_seconds
    while True:
        try:
            finished = check_batch(client, handle.batch_id)
            break
        except BatchNotReadyError:
            time.sleep(delay)
            delay = min(delay * 2, settings.batch_poll_max_seconds)
    vectors = {
        row.custom_id: row.vector.tolist()
        for row in iter_batch_results(client, finished, dimensions=settings.embedding_dimensions)
        if row.vector is not None
    }
    return [vectors.get(a["id"]) for a in activities]


@task(**PERSIST)
def merge(activities: list[dict[str, Any]], images: list[dict[str, Any]], geocodes: list[dict[str, Any]],
          vectors: list[list[float] | None]) -> list[dict[str, Any]]:
    from harvest.merge.final import final_record

    out = []
    for activity, image, geocoded, vector in zip(activities, images, geocodes, vectors, strict=True):
        merged = {
            "activity": activity,
            "image": image if image.get("uri") else None,
            "geocode": geocoded if geocoded.get("latitude") is not None else None,
        }
        out.append(final_record(merged, vector))
    return out


@task(**PERSIST)
def import_all(records: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    from harvest.import_.activities import import_activities

    return import_activities(_resources().engine, records, run_id=run_id).model_dump()


# Typed as flows/runners.py types its runners: `@flow` asks for a TaskRunner[PrefectFuture[Any]], and TaskRunner is
# invariant in its future type, so a ThreadPoolTaskRunner (of PrefectConcurrentFuture) only passes as TaskRunner[Any].
FOUR_THREADS: TaskRunner[Any] = ThreadPoolTaskRunner(max_workers=4)


@flow(name="whole-lists-bench", task_runner=FOUR_THREADS)
def whole_lists_flow(source: str, run_id: str, embedding_model: str = "text-embedding-3-small") -> dict[str, Any]:
    raw = load_raw(source)
    activities = standardize(raw, {"max_extractions": 1_000_000})
    images = process_images.submit(activities)
    geocodes = geocode.submit(activities)
    vectors = embed.submit(activities, embedding_model)
    final = merge(activities, images.result(), geocodes.result(), vectors.result())
    summary = import_all(final, run_id)
    return {"activities": len(final), "import_summary": summary}


def _tree_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def main() -> int:
    n, out = int(sys.argv[1]), Path(sys.argv[2])
    from harvest.db.engine import get_engine, upgrade
    from harvest.settings import get_settings

    settings = get_settings()
    upgrade(settings.database_url)
    with get_engine(settings.database_url).begin() as connection:
        connection.exec_driver_sql("TRUNCATE activities CASCADE")
    results = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"])
    before = _tree_bytes(results) if results.exists() else 0
    with tempfile.TemporaryDirectory() as tmp:
        source = write_input(Path(tmp) / "raw.jsonl", n)
        started = time.perf_counter()
        summary = whole_lists_flow(str(source), run_id=f"whole-lists-{n}-{time.time_ns()}")
        wall = time.perf_counter() - started
    out.write_text(json.dumps({
        "n": n,
        "activities": summary["activities"],
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "bytes_between_tasks": _tree_bytes(results) - before,
        "import_summary": summary["import_summary"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
