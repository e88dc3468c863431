"""Turn HARVEST_STORAGE_URL into an object store and a Prefect result-storage block that point at the same place.

Run files and Prefect's persisted task results share one root, so deleting `runs/<id>/` removes both.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from prefect.filesystems import LocalFileSystem, WritableFileSystem
from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

from harvest.settings import HarvestSettings
from harvest.storage import LocalStore, ObjectStore, S3Store, make_s3_client, open_store

BLOCK_SLUG_PREFIX = "s3-bucket/"
S3_CLIENT_CONFIG = {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 60}


def _load_bucket_block(slug: str) -> S3Bucket:
    # A sync call: Prefect types its sync/async dispatch as value-or-coroutine.
    return cast(S3Bucket, S3Bucket.load(slug.removeprefix(BLOCK_SLUG_PREFIX)))


@lru_cache(maxsize=8)
def _cached_store(storage_url: str, endpoint: str | None) -> ObjectStore:
    if storage_url.startswith(BLOCK_SLUG_PREFIX):
        block = _load_bucket_block(storage_url)
        client = block.credentials.get_s3_client()
        return S3Store(client, block.bucket_name, block.bucket_folder or "")
    return open_store(storage_url, s3_endpoint_url=endpoint)


def resolve_store(settings: HarvestSettings) -> ObjectStore:
    """The object store for run files (cached per process: boto3 clients are thread-safe and costly to build)."""
    return _cached_store(settings.storage_url, settings.s3_endpoint_url)


def _block_name(prefix: str, storage_url: str) -> str:
    digest = hashlib.sha256(storage_url.encode()).hexdigest()[:10]
    return f"{prefix}-{digest}"


def result_storage_block(settings: HarvestSettings) -> WritableFileSystem:
    """A *saved* block for Prefect result storage rooted where run files go.

    Prefect refuses an unsaved block as task result storage (TypeError at decoration), so the block is
    saved under a name derived from the storage URL; saving again is idempotent.
    """
    url = settings.storage_url
    if url.startswith(BLOCK_SLUG_PREFIX):
        return _load_bucket_block(url)
    parts = urlsplit(url)
    name = _block_name("harvest-results", url + (settings.s3_endpoint_url or ""))
    if parts.scheme == "file":
        root = Path(unquote(parts.path))
        root.mkdir(parents=True, exist_ok=True)
        block: WritableFileSystem = LocalFileSystem(basepath=str(root))
    else:
        # Bounded retries and timeouts: a dead endpoint should fail a step in seconds, not minutes.
        client_parameters = AwsClientParameters(endpoint_url=settings.s3_endpoint_url, config=S3_CLIENT_CONFIG)
        credentials = AwsCredentials(aws_client_parameters=client_parameters)
        block = S3Bucket(bucket_name=parts.netloc, bucket_folder=parts.path.strip("/"), credentials=credentials)
    return _saved(block, name)


def _saved(block: WritableFileSystem, name: str) -> WritableFileSystem:
    """`block`, saved as `name`: the saved one is loaded and reused when it holds the same settings, since
    saving recomputes Prefect's block schemas and checksums (~1 s per flow run); saved over otherwise."""
    try:
        existing = cast(WritableFileSystem, type(block).load(name))  # sync call (see _load_bucket_block)
    except ValueError:  # no block of that name yet
        existing = None
    if existing is not None and _settings_of(existing.model_dump()) == _settings_of(block.model_dump()):
        return existing
    block.save(name, overwrite=True)
    return block


def _settings_of(dumped: Any) -> Any:
    """A block's dump without Prefect's bookkeeping (`_block_document_id`, `_is_anonymous`, ...)."""
    if isinstance(dumped, dict):
        return {key: _settings_of(value) for key, value in dumped.items() if not str(key).startswith("_")}
    return dumped


__all__ = ["resolve_store", "result_storage_block", "LocalStore", "S3Store", "make_s3_client"]
