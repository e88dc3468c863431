"""Every error harvest raises on purpose, in one tree.

A geocoder failure for one address is not raised: it travels as `Geocode.error` and becomes a warning.

    HarvestError                      root: catch this to catch anything harvest means to raise
    ├── ConfigError                   a setting or run config is invalid (bad URL, unknown geocoder…)
    │   ├── DisallowedURLError        a URL is well-formed but refused (scheme, private address: SSRF guard)
    │   └── SourceError               a source request is refused: its URL is a source already, no such id
    ├── StorageError                  the object store failed or a stored object is missing/corrupt
    ├── DatabaseError                 the metadata/activities database failed
    ├── RunAlreadyRunningError        the URL already has a running run (carries its id)
    ├── CrawlError                    the crawl cannot go on: its start URL failed, render="browser" has no
    │                                 Chromium, or its thread died (other pages that fail become FailedURL
    │                                 records, never raised)
    │   └── BrowserUnavailableError   the browser could not start, so pages built by scripts were not
    │                                 rendered: raised by the flow at the end of such a run (its files kept)
    ├── ExtractionError               a page's content could not be turned into activities
    │   └── OverBudgetError           the LLM call for a page would pass the run's budget: not made
    ├── ImageError                    one image was refused (type, size, bomb, broken); never fatal alone
    └── EmbeddingError                the embeddings service failed
        └── BatchNotReadyError        an embeddings batch is still running (the collect task polls again)
"""

from __future__ import annotations


class HarvestError(Exception):
    """Root of harvest's own errors."""


class ConfigError(HarvestError, ValueError):
    """Raised when a setting or a run config is invalid; the message says which and why."""


class DisallowedURLError(ConfigError):
    """Raised when a URL is refused: not http(s), or it points at a private/loopback/metadata address."""


class SourceError(ConfigError):
    """Raised when a source request is refused: a URL that is a source already, an id that is no source."""


class StorageError(HarvestError):
    """Raised when the object store cannot write, read or delete an object."""


class DatabaseError(HarvestError):
    """Raised when the metadata or activities database cannot be reached or written."""


class ImportInterrupted(DatabaseError):
    """A database error part-way through an import: rows before it were written; `summary` counts them."""

    def __init__(self, message: str, summary: object) -> None:
        super().__init__(message)
        self.summary = summary


class RunAlreadyRunningError(HarvestError):
    """Raised when a run is started for a URL that already has a running run: one run per URL at a time."""

    def __init__(self, url: str, running_run_id: str) -> None:
        super().__init__(f"{url} already has a running run: {running_run_id}")
        self.url = url
        self.running_run_id = running_run_id


class CrawlError(HarvestError):
    """Raised when the crawl as a whole cannot go on (start URL failed, no Chromium for render="browser")."""


class BrowserUnavailableError(CrawlError):
    """Raised at the end of a run whose crawl could not render its script-built pages because the browser could
    not start; the message gives the count and the cause. Everything the run did collect is kept."""


class ExtractionError(HarvestError):
    """Raised when a page's content cannot be turned into activities."""


class OverBudgetError(ExtractionError):
    """Raised instead of an LLM call whose estimated cost would pass the run's budget (the page is skipped)."""


class ImageError(HarvestError):
    """Raised for one image that was refused or could not be processed."""


class EmbeddingError(HarvestError):
    """Raised when the embeddings service fails (upload, batch creation, a failed or expired batch)."""


class BatchNotReadyError(EmbeddingError):
    """Raised while an embeddings batch is still validating or in progress: poll again later. `done` and `total`
    are its lines finished so far and in all, when the service says."""

    def __init__(self, message: str, *, done: int | None = None, total: int | None = None) -> None:
        super().__init__(message)
        self.done, self.total = done, total
