"""From a storage URL to a store: the only place that picks a back end by name."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from harvest.errors import StorageError
from harvest.storage.base import ObjectStore
from harvest.storage.local import LocalStore
from harvest.storage.s3 import S3Store, make_s3_client


def open_store(storage_url: str, *, s3_endpoint_url: str | None = None) -> ObjectStore:
    """Build the store a `file://` or `s3://` URL names (block slugs are resolved in `blocks/`)."""
    parts = urlsplit(storage_url)
    if parts.scheme == "file":
        root = Path(unquote(parts.path))
        root.mkdir(parents=True, exist_ok=True)
        return LocalStore(root)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StorageError(f"{storage_url!r} names no bucket")
        return S3Store(make_s3_client(s3_endpoint_url), parts.netloc, parts.path)
    raise StorageError(f"unsupported storage URL {storage_url!r}: use s3://bucket/prefix or file:///path")
