"""An S3 bucket as the object store, and the multipart upload that streams a file while it is written.

boto3 is imported lazily, inside the calls, so a local-only install never pays for it at import time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from harvest.errors import StorageError
from harvest.storage.base import ObjectInfo

PART_BYTES = 8 << 20  # S3 parts (at least 5 MiB but the last); boto3's own upload_file uses 8 MiB too
# The parts' checksum, declared when the upload is created, as boto3's upload_file does (s3transfer's default):
# S3 verifies each part's CRC32 (botocore computes it) and keeps their composite. Undeclared, the object was
# given a full-object CRC64NVME computed over every byte once more at completion.
CHECKSUM_ALGORITHM = "CRC32"
# Parts in memory at once in this process, across every FollowingUpload: the final writer uploads final.jsonl,
# its policy index and the digest side by side, and at 50,000 activities all three pass the part size, so a
# per-upload bound let the parts in memory grow with the site (three uploads of two 8 MiB parts, and their copies).
PARTS_IN_MEMORY = 2
_parts_in_memory = threading.BoundedSemaphore(PARTS_IN_MEMORY)
# Parts in flight for a whole-file upload or download (boto3's upload_file/download_file). boto3's default of 10
# held ~16 MB more while embeddings.npy (262 MB at 50,000 activities) went up, on top of the enrichment's peak;
# 4 held ~5 MB and was no slower against a loopback S3 (1.7 s against 1.9 s for 262 MB).
TRANSFER_CONCURRENCY = 4


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(max_concurrency=TRANSFER_CONCURRENCY)


class S3Store:
    """An S3 bucket (AWS, MinIO, moto, R2) under an optional prefix, through a boto3 client."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.base_uri = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def key_for(self, uri: str) -> str:
        parts = urlsplit(uri)
        object_key = parts.path.lstrip("/")
        if parts.scheme != "s3" or parts.netloc != self.bucket:
            raise StorageError(f"{uri} is not in bucket {self.bucket}")
        if self.prefix:
            if not object_key.startswith(self.prefix + "/"):
                raise StorageError(f"{uri} is not under {self.base_uri}")
            object_key = object_key[len(self.prefix) + 1 :]
        return object_key

    def _call(self, what: str, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except (BotoCoreError, ClientError, Boto3Error, OSError) as exc:
            raise StorageError(f"S3 {what} {self.uri_for(key)} failed: {exc}") from exc

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        # upload_file switches to multipart above 8 MiB, so any size streams from disk.
        self._call(
            "upload", key, self.client.upload_file, str(path), self.bucket, self._object_key(key),
            ExtraArgs={"ContentType": content_type}, Config=_transfer_config(),
        )

    def start_upload(self, key: str, path: Path, content_type: str) -> FollowingUpload:
        """Upload `path` while it is still being written (see FollowingUpload)."""
        return FollowingUpload(self, key, path, content_type)

    def get_file(self, key: str, path: Path) -> None:
        self._call("download", key, self.client.download_file, self.bucket, self._object_key(key), str(path),
                   Config=_transfer_config())

    def open_read(self, key: str) -> IO[bytes]:
        response = self._call("get", key, self.client.get_object, Bucket=self.bucket, Key=self._object_key(key))
        return response["Body"]

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageError(f"S3 head {self.uri_for(key)} failed: {exc}") from exc
        except Exception as exc:  # botocore connection errors have no common base worth naming
            raise StorageError(f"S3 head {self.uri_for(key)} failed: {exc}") from exc
        return ObjectInfo(key, int(meta["ContentLength"]), meta["LastModified"])

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        pages = self._call("list", prefix, paginator.paginate, Bucket=self.bucket, Prefix=self._object_key(prefix))
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"][strip:], int(item["Size"]), item["LastModified"])
        except Exception as exc:
            raise StorageError(f"S3 list {self.uri_for(prefix)} failed: {exc}") from exc

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=self._object_key(key))

    def presign(self, key: str, expires_seconds: int) -> str:
        return self._call(
            "presign", key, self.client.generate_presigned_url, "get_object",
            Params={"Bucket": self.bucket, "Key": self._object_key(key)}, ExpiresIn=expires_seconds,
        )

    # --- the multipart calls FollowingUpload makes (errors become StorageError, as everywhere above) ---

    def _create_multipart(self, key: str, content_type: str) -> str:
        created = self._call(
            "upload", key, self.client.create_multipart_upload, Bucket=self.bucket,
            Key=self._object_key(key), ContentType=content_type, ChecksumAlgorithm=CHECKSUM_ALGORITHM,
        )
        return created["UploadId"]

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        """Send one part; returns it as CompleteMultipartUpload lists it (number, ETag and checksum)."""
        response = self._call(
            "upload", key, self.client.upload_part, Bucket=self.bucket, Key=self._object_key(key),
            UploadId=upload_id, PartNumber=number, Body=data, ChecksumAlgorithm=CHECKSUM_ALGORITHM,
        )
        checksum = f"Checksum{CHECKSUM_ALGORITHM}"
        return {"PartNumber": number, "ETag": response["ETag"],
                **({checksum: response[checksum]} if checksum in response else {})}

    def _complete_multipart(self, key: str, upload_id: str, parts: Sequence[dict[str, Any]]) -> None:
        self._call(
            "complete upload", key, self.client.complete_multipart_upload, Bucket=self.bucket,
            Key=self._object_key(key), UploadId=upload_id, MultipartUpload={"Parts": parts},
        )

    def _abort_multipart(self, key: str, upload_id: str) -> None:
        """Raises whatever the client raises (the caller decides whether that matters)."""
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._object_key(key), UploadId=upload_id)


def make_s3_client(endpoint_url: str | None = None, **client_kwargs: Any) -> Any:
    """A boto3 S3 client with bounded retries and timeouts, so a dead endpoint fails in seconds, not minutes."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config, **client_kwargs)


class FollowingUpload:
    """A multipart upload that follows a local file as it grows: every full part is sent by a background
    thread while the writer goes on producing the rest, so writing a large file and uploading it overlap
    instead of adding up. A file that never fills one part is uploaded with one PUT at the end.

    Parts are read back from the file by the uploading threads, so memory holds at most PARTS_IN_MEMORY parts
    in the whole process, however many uploads run.
    Any failure aborts the multipart upload (S3 keeps no half-written object) and raises StorageError.
    """

    def __init__(self, store: S3Store, key: str, path: Path, content_type: str, part_bytes: int = PART_BYTES,
                 threads: int = 2) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.store = store
        self.key = key
        self.path = path
        self.content_type = content_type
        self.part_bytes = part_bytes
        self.next_boundary = part_bytes  # the writer calls advance() once it has written this much
        self._sent = 0  # bytes handed to part uploads so far
        self._upload_id: str | None = None
        self._parts: list[Any] = []  # futures of {"PartNumber", "ETag"}
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="harvest-upload")

    def advance(self, written: int) -> None:
        """`written` bytes are in the file (flushed): send every full part not sent yet."""
        self._raise_failed()
        while written - self._sent >= self.part_bytes:
            self._send(self._sent, self.part_bytes)
        self.next_boundary = self._sent + self.part_bytes

    def finish(self, total: int) -> None:
        """The file is complete at `total` bytes: send the rest and complete the object (on any error the
        caller aborts)."""
        if self._upload_id is None:
            self._pool.shutdown()
            self.store.put_file(self.key, self.path, self.content_type)
            return
        if total > self._sent:
            self._send(self._sent, total - self._sent)
        parts = [future.result() for future in self._parts]
        self._pool.shutdown()
        self.store._complete_multipart(self.key, self._upload_id, parts)

    def abort(self) -> None:
        """Give the upload up (the writer failed, or a part did): never raises."""
        for future in self._parts:
            future.cancel()
        self._pool.shutdown(wait=True)
        if self._upload_id is not None:
            try:
                self.store._abort_multipart(self.key, self._upload_id)
            except Exception:  # noqa: BLE001 - the original error matters more; S3 lifecycle rules clean up
                pass

    def _send(self, offset: int, size: int) -> None:
        if self._upload_id is None:
            self._upload_id = self.store._create_multipart(self.key, self.content_type)
        number = len(self._parts) + 1
        self._parts.append(self._pool.submit(self._upload_part, self._upload_id, number, offset, size))
        self._sent = offset + size

    def _upload_part(self, upload_id: str, number: int, offset: int, size: int) -> dict[str, Any]:
        with _parts_in_memory:  # read only once a slot is free: a queued part holds no memory
            with open(self.path, "rb") as handle:
                data = os.pread(handle.fileno(), size, offset)
            if len(data) != size:
                raise StorageError(
                    f"upload of {self.store.uri_for(self.key)}: part {number} short ({len(data)} of {size} bytes)"
                )
            return self.store._upload_part(self.key, upload_id, number, data)

    def _raise_failed(self) -> None:
        for future in self._parts:
            if future.done() and future.exception() is not None:
                raise future.exception()
