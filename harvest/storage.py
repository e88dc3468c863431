"""Object storage for run files: one small interface, a local-folder back end and an S3 back end.

Files are streamed through a temporary file, never held whole in memory, so no file size is too big
(the design this replaces failed at 1 MiB of step data).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import unquote, urlsplit

import orjson
from pydantic import BaseModel

from harvest.errors import StorageError
from harvest.models import FileRef


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime


class ObjectStore(Protocol):
    """Where run files live. Keys are relative ('runs/<id>/raw_activities.jsonl'); URIs are absolute."""

    base_uri: str

    def uri_for(self, key: str) -> str: ...
    def key_for(self, uri: str) -> str: ...
    def put_file(self, key: str, path: Path, content_type: str) -> None: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def open_read(self, key: str) -> IO[bytes]: ...
    def head(self, key: str) -> ObjectInfo | None: ...
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def presign(self, key: str, expires_seconds: int) -> str: ...


class LocalStore:
    """A folder on disk: the embedded default. Writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.base_uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise StorageError(f"key {key!r} escapes the storage root")
        return path

    def uri_for(self, key: str) -> str:
        return self._path(key).as_uri()

    def key_for(self, uri: str) -> str:
        path = Path(unquote(urlsplit(uri).path)).resolve()
        if self.root not in path.parents:
            raise StorageError(f"{uri} is not under {self.base_uri}")
        return path.relative_to(self.root).as_posix()

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            os.close(fd)
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc}") from exc

    def get_file(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self._path(key), path)
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri_for(key)}: {exc}") from exc

    def open_read(self, key: str) -> IO[bytes]:
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri_for(key)}: {exc}") from exc

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        stat = path.stat()
        return ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, timezone.utc))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix) if prefix else self.root
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return
        for path in sorted(start.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix) and not path.name.startswith(".tmp-"):
                stat = path.stat()
                yield ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, timezone.utc))

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {self.uri_for(key)}: {exc}") from exc

    def presign(self, key: str, expires_seconds: int) -> str:
        # A local file needs no signature: its path is the link.
        return str(self._path(key))


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
            ExtraArgs={"ContentType": content_type},
        )

    def get_file(self, key: str, path: Path) -> None:
        self._call("download", key, self.client.download_file, self.bucket, self._object_key(key), str(path))

    def follow_upload(self, key: str, path: Path, content_type: str) -> FollowingUpload:
        """Upload `path` while it is still being written (see FollowingUpload)."""
        return FollowingUpload(self, key, path, content_type)

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


def make_s3_client(endpoint_url: str | None = None, **client_kwargs: Any) -> Any:
    """A boto3 S3 client with bounded retries and timeouts, so a dead endpoint fails in seconds, not minutes."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config, **client_kwargs)


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


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}/"


def delete_prefix(store: ObjectStore, prefix: str) -> int:
    """Delete every object under `prefix`; return how many went."""
    count = 0
    for info in list(store.list(prefix)):
        store.delete(info.key)
        count += 1
    return count


PART_BYTES = 8 << 20  # S3 parts (at least 5 MiB but the last); boto3's own upload_file uses 8 MiB too


class FollowingUpload:
    """A multipart upload that follows a local file as it grows: every full part is sent by a background
    thread while the writer goes on producing the rest, so writing a large file and uploading it overlap
    instead of adding up. A file that never fills one part is uploaded with one PUT at the end.

    Parts are read back from the file by the uploading threads, so memory holds at most one part per thread.
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
        self.store._call(
            "complete upload", self.key, self.store.client.complete_multipart_upload, Bucket=self.store.bucket,
            Key=self.store._object_key(self.key), UploadId=self._upload_id, MultipartUpload={"Parts": parts},
        )

    def abort(self) -> None:
        """Give the upload up (the writer failed, or a part did): never raises."""
        for future in self._parts:
            future.cancel()
        self._pool.shutdown(wait=True)
        if self._upload_id is not None:
            try:
                self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.store._object_key(self.key), UploadId=self._upload_id
                )
            except Exception:  # noqa: BLE001 - the original error matters more; S3 lifecycle rules clean up
                pass

    def _send(self, offset: int, size: int) -> None:
        if self._upload_id is None:
            created = self.store._call(
                "upload", self.key, self.store.client.create_multipart_upload, Bucket=self.store.bucket,
                Key=self.store._object_key(self.key), ContentType=self.content_type,
            )
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        self._parts.append(self._pool.submit(self._upload_part, number, offset, size))
        self._sent = offset + size

    def _upload_part(self, number: int, offset: int, size: int) -> dict[str, Any]:
        with open(self.path, "rb") as handle:
            data = os.pread(handle.fileno(), size, offset)
        if len(data) != size:
            raise StorageError(f"upload of {self.store.uri_for(self.key)}: part {number} short ({len(data)} of {size} bytes)")
        response = self.store._call(
            "upload", self.key, self.store.client.upload_part, Bucket=self.store.bucket,
            Key=self.store._object_key(self.key), UploadId=self._upload_id, PartNumber=number, Body=data,
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _raise_failed(self) -> None:
        for future in self._parts:
            if future.done() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]


class _CountingWriter:
    """A temp file written through a 1 MiB buffer that counts bytes and hashes them as they go (and feeds a
    following upload). Lines arrive one record at a time; hashing and writing them in blocks costs less."""

    BUFFER_BYTES = 1 << 20

    def __init__(self, handle: IO[bytes], upload: FollowingUpload | None = None) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.bytes = 0
        self.records = 0
        self.upload = upload
        self._pending = bytearray()

    def write(self, data: bytes) -> None:
        self._pending += data
        self.bytes += len(data)
        if len(self._pending) >= self.BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        """Everything written so far into the file (and the hash); full parts go to the following upload."""
        if self._pending:
            self.handle.write(self._pending)
            self.digest.update(self._pending)
            self._pending.clear()
        if self.upload is not None and self.bytes >= self.upload.next_boundary:
            self.handle.flush()
            self.upload.advance(self.bytes)


@contextmanager
def staged_file(store: ObjectStore, key: str, kind: str, content_type: str) -> Iterator[tuple[_CountingWriter, list[FileRef]]]:
    """Write a file locally while it is uploaded (S3: part by part as it grows; a local store: moved in once
    complete); yields the writer and a list that receives its FileRef."""
    out: list[FileRef] = []
    with tempfile.NamedTemporaryFile(prefix="harvest-", suffix=Path(key).suffix) as tmp:
        upload = store.follow_upload(key, Path(tmp.name), content_type) if isinstance(store, S3Store) else None
        writer = _CountingWriter(tmp, upload)
        try:
            yield writer, out
            writer.flush()
            tmp.flush()
            if upload is not None:
                upload.finish(writer.bytes)
            else:
                store.put_file(key, Path(tmp.name), content_type)
        except BaseException:
            if upload is not None:
                upload.abort()
            raise
        out.append(
            FileRef(
                kind=kind, uri=store.uri_for(key), records=writer.records, bytes=writer.bytes,
                sha256=writer.digest.hexdigest(), content_type=content_type,
            )
        )


def _to_jsonable(record: BaseModel | dict[str, Any]) -> Any:
    return record.model_dump(mode="json") if isinstance(record, BaseModel) else record


def write_jsonl(store: ObjectStore, key: str, kind: str, records: Iterable[BaseModel | dict[str, Any]]) -> FileRef:
    """Stream records to `key` as JSON Lines; returns the reference with size, count and sha256.

    orjson, not the json module: a final record holds 1,536 floats, and json.dumps spends ~1 ms on them
    where orjson spends ~0.15 ms (the output is the same compact UTF-8 JSON). numpy arrays in a record are
    written as JSON lists directly (the same text as their `.tolist()`, without building the list).
    """
    with staged_file(store, key, kind, "application/x-ndjson") as (writer, out):
        for record in records:
            writer.write(orjson.dumps(_to_jsonable(record), option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
            writer.records += 1
    return out[0]


def store_local_file(store: ObjectStore, key: str, kind: str, path: Path, *, records: int, content_type: str) -> FileRef:
    """Upload a finished local file (binary arrays) and return its reference with size and sha256."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    store.put_file(key, path, content_type)
    return FileRef(
        kind=kind, uri=store.uri_for(key), records=records, bytes=size, sha256=digest.hexdigest(),
        content_type=content_type,
    )


def write_json(store: ObjectStore, key: str, kind: str, document: Any, records: int = 1) -> FileRef:
    """Store one JSON document (small maps and summaries)."""
    with staged_file(store, key, kind, "application/json") as (writer, out):
        writer.write(json.dumps(_to_jsonable(document), ensure_ascii=False, indent=1).encode())
        writer.records = records
    return out[0]


def concat_files(store: ObjectStore, key: str, kind: str, parts: list[FileRef]) -> FileRef:
    """Concatenate stored JSONL parts, in order, into one file (bytes copied in blocks, never parsed)."""
    with staged_file(store, key, kind, parts[0].content_type if parts else "application/x-ndjson") as (writer, out):
        for part in parts:
            handle = store.open_read(store.key_for(part.uri))
            try:
                tail = b"\n"
                while block := handle.read(1 << 20):
                    writer.write(block)
                    tail = block[-1:]
            except Exception as exc:
                raise StorageError(f"reading {part.uri} failed: {exc}") from exc
            finally:
                handle.close()
            if tail != b"\n":
                writer.write(b"\n")
            writer.records += part.records
    return out[0]


def iter_jsonl(
    store: ObjectStore, uri: str, start: int = 0, stop: int | None = None,
    parse: Callable[[bytes], Any] = orjson.loads,
) -> Iterator[dict[str, Any]]:
    """Yield the records of a stored JSONL file one line at a time (memory does not grow with the file).

    `start`/`stop`: only records [start, stop) (a chunk's share): the records before it are skipped without
    being parsed, and reading stops at `stop`. `parse`: how a line becomes a record (it raises
    orjson.JSONDecodeError for a line that is not JSON).
    """
    key = store.key_for(uri)
    handle = store.open_read(key)
    index = 0
    try:
        for number, line in enumerate(_iter_lines(handle), start=1):
            if not line.strip():
                continue
            if stop is not None and index >= stop:
                break
            index += 1
            if index <= start:
                continue
            try:
                yield parse(line)
            except orjson.JSONDecodeError as exc:
                raise StorageError(f"{uri} line {number} is not JSON: {exc}") from exc
    finally:
        handle.close()


def _iter_lines(handle: IO[bytes]) -> Iterator[bytes]:
    pending = b""
    while True:
        try:
            chunk = handle.read(1 << 20)
        except Exception as exc:
            raise StorageError(f"reading a stored file failed: {exc}") from exc
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


def read_json(store: ObjectStore, uri: str) -> Any:
    handle = store.open_read(store.key_for(uri))
    try:
        return json.loads(handle.read())
    finally:
        handle.close()


@contextmanager
def local_copy(store: ObjectStore, uri: str) -> Iterator[Path]:
    """Download a stored file to a temp path (for memory-mapping binary arrays); removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="harvest-") as tmp:
        path = Path(tmp) / Path(urlsplit(uri).path).name
        store.get_file(store.key_for(uri), path)
        yield path
