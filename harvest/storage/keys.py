"""The object-key layout: the one place that spells where a file lives in storage.

Every key is relative to the store's root (a folder, or a bucket and prefix):

    runs/<run_id>/                          every file of one run: cleanup is one prefix delete
    ├── <kind>.<ext>                        a stage's file, e.g. raw_activities.jsonl, embeddings.npy
    ├── <kind>.part-NNNN.jsonl              one chunk's part of a map (images_map, geocode map), until combined
    └── results/<step>.json                 Prefect's persisted step results (flows/tasks.py); a chunked
        │                                   step's name carries what its result depends on (range, layout,
        │                                   CHUNKED_RESULTS_VERSION)
        └── results/failed/<hex>            Prefect's record of a failed task (the exception, under a random
                                            name Prefect picks: blocks/storage.py puts it in its run's prefix)
    digests/<run_id>.jsonl                  a run's digest, kept past its run for the next run to diff against
    images/<sha256>.webp                    content-addressed images, shared by every run that points at them

Keys are built here and nowhere else, so the retention sweep, the flow's result keys and the stages cannot
drift apart. Changing a spelling here moves files that existing rows and Prefect results point at: the
strings must stay byte-identical to what earlier runs stored.
"""

from __future__ import annotations

RUNS = "runs/"
DIGESTS = "digests/"
IMAGES = "images/"
RESULTS = "results"  # the folder of Prefect's step results inside a run's prefix


def run_prefix(run_id: str) -> str:
    """`runs/<run_id>/`: the folder of every file of one run."""
    return f"{RUNS}{run_id}/"


def run_key(run_id: str, kind: str, ext: str) -> str:
    """`runs/<run_id>/<kind>.<ext>`: every file of a run sits under one prefix, so cleanup is one prefix delete."""
    return f"{run_prefix(run_id)}{kind}.{ext}"


def part_kind(kind: str, index: int) -> str:
    """The kind of one chunk's file of a map, e.g. `images_map.part-0003`; parts are concatenated in order."""
    return f"{kind}.part-{index:04d}"


def result_key_template(step: str) -> str:
    """Prefect's `result_storage_key` for a step: `runs/{parameters[run_id]}/results/<step>.json`.

    A template Prefect fills in per task run (`step` may hold placeholders too, e.g. `images-{parameters[index]}`);
    it carries the run id, so it doubles as the cache key and the results go with the run's prefix.
    """
    return run_prefix("{parameters[run_id]}") + RESULTS + "/" + step + ".json"


def failed_result_key(run_id: str, name: str) -> str:
    """`runs/<run_id>/results/failed/<name>`: where Prefect's record of a failed task of the run goes (`name` is the
    random one Prefect gave it), so it is swept with the run."""
    return f"{run_prefix(run_id)}{RESULTS}/failed/{name}"


# The version of what a chunked step's result holds (chunk parts and the maps joined from them). Bump it when
# their code changes what they write: a resumed run then recomputes them instead of loading stale results.
CHUNKED_RESULTS_VERSION = 1


def chunk_result_step(step: str) -> str:
    """The result step of one chunk of `step`, e.g. `images-0003-0-1000-v1`: keyed by its index and its exact
    range of standardized.jsonl, so a resume after HARVEST_ENRICH_CHUNK_SIZE or _MAX_CHUNKS changed (other
    ranges) runs the chunk again instead of loading a result for other lines."""
    return (step + "-{parameters[index]}-{parameters[start]}-{parameters[stop]}"
            + f"-v{CHUNKED_RESULTS_VERSION}")


def combined_result_step() -> str:
    """The result step of a map joined from chunks: keyed by the chunk layout it was joined from (how many chunks
    of the settings' size and most: the count follows the records that cost a request, harvest.enrich.fan_out)."""
    return ("{parameters[kind]}-{parameters[chunks]}of{parameters[chunk_size]}x{parameters[max_chunks]}"
            + f"-v{CHUNKED_RESULTS_VERSION}")


def run_id_of(key: str) -> str | None:
    """The run id of a key under `runs/<run_id>/…`, else None (digests, images, the bare prefix)."""
    parts = key.split("/")
    return parts[1] if len(parts) > 2 and parts[0] + "/" == RUNS else None


def is_step_result(key: str) -> bool:
    """Whether a key under a run's prefix is one of Prefect's step results (`runs/<id>/results/…`)."""
    return key.split("/")[2:3] == [RESULTS]


def digest_key(run_id: str) -> str:
    """`digests/<run_id>.jsonl`: outside the run's prefix, so it outlives the run's cleanup."""
    return f"{DIGESTS}{run_id}.jsonl"


def image_key(sha256: str) -> str:
    """`images/<sha256>.webp`: content-addressed, so an identical image is stored once for every run."""
    return f"{IMAGES}{sha256}.webp"
