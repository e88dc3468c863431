"""The storage contract: what every caller may rely on, whichever back end holds the files.

Callers (stages, flows, retention) see only `ObjectStore` and `Upload`; nothing outside this package
checks which store it holds. A back end that cannot stream a growing file uploads it whole at the end
(`WholeFileUpload`), so writers never need to know the difference.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Protocol


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime


class Upload(Protocol):
    """An upload of a local file that follows it while it is written.

    The writer appends to the file and calls `advance(written)` (after flushing) once `written` reaches
    `next_boundary`; then `finish(total)` when the file is complete, or `abort()` if anything failed.
    """

    next_boundary: int

    def advance(self, written: int) -> None: ...
    def finish(self, total: int) -> None: ...
    def abort(self) -> None: ...


class ObjectStore(Protocol):
    """Where run files live. Keys are relative ('runs/<id>/raw_activities.jsonl', see keys.py); URIs are absolute."""

    base_uri: str

    def uri_for(self, key: str) -> str: ...
    def key_for(self, uri: str) -> str: ...
    def put_file(self, key: str, path: Path, content_type: str) -> None: ...
    def start_upload(self, key: str, path: Path, content_type: str) -> Upload: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def open_read(self, key: str) -> IO[bytes]: ...
    def head(self, key: str) -> ObjectInfo | None: ...
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def presign(self, key: str, expires_seconds: int) -> str: ...


class WholeFileUpload:
    """The upload of a store that gains nothing from following the file: `put_file` once it is complete."""

    next_boundary = sys.maxsize  # never reached: the writer does not stop to flush for it

    def __init__(self, store: ObjectStore, key: str, path: Path, content_type: str) -> None:
        self.store = store
        self.key = key
        self.path = path
        self.content_type = content_type

    def advance(self, written: int) -> None:
        pass

    def finish(self, total: int) -> None:
        self.store.put_file(self.key, self.path, self.content_type)

    def abort(self) -> None:
        pass  # nothing was sent
