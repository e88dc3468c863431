"""A folder on disk as the object store: the embedded default, and what the tests run against."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

from harvest.errors import StorageError
from harvest.storage.base import ObjectInfo, Upload, WholeFileUpload


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

    def start_upload(self, key: str, path: Path, content_type: str) -> Upload:
        # A local copy of a growing file saves nothing: the file is moved in once complete.
        return WholeFileUpload(self, key, path, content_type)

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
        return ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix) if prefix else self.root
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return
        for path in sorted(start.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix) and not path.name.startswith(".tmp-"):
                stat = path.stat()
                yield ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {self.uri_for(key)}: {exc}") from exc

    def presign(self, key: str, expires_seconds: int) -> str:
        # A local file needs no signature: its path is the link.
        return str(self._path(key))
