"""HTTP validators (ETag, Last-Modified): what a response said about its version, sent back on the next request
for the same resource so that a 304 can stand for "as before". Pages (polite re-crawls) and images share them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Validators:
    """A version of a resource as its server named it (for `If-None-Match` / `If-Modified-Since`)."""

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def from_headers(cls, headers: Any) -> Validators | None:
        """The response's validators; None when it has neither (nothing to revalidate with)."""
        etag = (headers.get("etag") or "").strip() or None
        last_modified = (headers.get("last-modified") or "").strip() or None
        return cls(etag, last_modified) if etag or last_modified else None

    def __bool__(self) -> bool:
        return bool(self.etag or self.last_modified)

    def request_headers(self) -> dict[str, str]:
        """The conditional request headers (RFC 9110 13.1): If-None-Match wins where both are understood."""
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers
