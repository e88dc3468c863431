"""The crawl's page memory in the metadata database (`page_cache`): one row per URL the last crawl fetched, per
render mode and extractor (issue 27 item 2: keyed by the URL alone, a page a `render="http"` run remembered was
reused unrendered by later `browser`/`auto` runs, and runs with and without the LLM overwrote each other's row).

Each row belongs to the run that last wrote or confirmed it (`run_id`): its raw activities are that run's too, so
the row goes when that run's files go (harvest/retention/policy.py, issue 27 item 7).

Kept in the database rather than as objects in the store: a re-crawl reads one small row per URL (one
indexed lookup, no listing), and 50,000 pages are 50,000 rows, not 50,000 objects to put and get.
Writes are buffered and upserted in batches, so remembering costs one statement per `BATCH` pages.

`updated_at` is when a crawl last wrote or confirmed the row (our clock, unlike `fetched_at`, the server's):
the sweep deletes rows older than HARVEST_PAGE_MEMORY_DAYS (`harvest.retention.policy`), so URLs a site stopped
linking to do not pile up, while a page every crawl finds unchanged keeps its row.
"""

from __future__ import annotations

import threading
from datetime import UTC
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from harvest.crawl.revalidate import Remembered, Subresource
from harvest.db.caches import upsert_rows
from harvest.db.engine import database_error, transaction, utcnow
from harvest.db.schema import one_of, page_cache
from harvest.net.conditional import Validators

BATCH = 200


class PageCache:
    """`harvest.crawl.revalidate.PageMemory` over the `page_cache` table; thread-safe.

    The memory of one kind of crawl: `render` (the run's render mode: http, browser or auto) and `extractor` (the
    extraction that found the stored activities, with its LLM if any) are part of every row's key, so a crawl
    recalls only what a crawl of the same kind remembered: a plain page never stands in for a render, and a
    better extractor is never fed old answers. `run_id`: the run whose crawl this is, which owns what it writes
    and confirms. A memory made before its run exists (the CLI's early crawl) passes `wait_for_owner=True`: it
    writes nothing until `own(run_id)`, and a flush before that drops what it holds (no run keeps those pages).
    """

    def __init__(self, engine: Engine, extractor: str, *, render: str, run_id: str | None = None,
                 wait_for_owner: bool = False) -> None:
        self.engine = engine
        self.extractor = extractor
        self.render = render
        self.run_id = run_id
        self._waiting = wait_for_owner and run_id is None
        self._pending: dict[str, dict[str, Any]] = {}
        self._confirmed: set[str] = set()
        self._lock = threading.Lock()
        # On SQLite every transaction of the shared engine takes the write lock (harvest.db.engine), so eight
        # concurrent lookups queued behind each other on the busy timeout (6 ms a lookup, most of a re-crawl).
        # A lookup is one SELECT: run it on an engine of its own, outside any transaction, which WAL never blocks.
        self._reader = sa.create_engine(engine.url) if engine.dialect.name == "sqlite" else engine

    def recall(self, url: str) -> Remembered | None:
        """The row of `url`; else, when the last crawl never requested `url` but reached its page under another
        URL (one whose canonical `url` is: which spelling a crawl meets first depends on the order its fetches
        end), that row as a duplicate of it, so `url` is revalidated with its validators, not fetched anew."""
        table = page_cache.c
        row = self._first(  # one lookup for both (an index each, OR'ed): a first crawl asks for every URL
            sa.select(page_cache)
            .where(sa.or_(table.url == url, table.page_url == url), table.extractor == self.extractor,
                   table.render == self.render)
            # `url`'s own row first; else the row holding the page's activities, if there is one.
            .order_by(table.url != url, table.duplicate, table.url)
            .limit(1)
        )
        if row is None:
            return None
        found = _entry(row)
        if found.url == url:
            return found
        return Remembered(
            url=url, page_url=found.page_url, final_url=url, validators=found.validators, fetched_at=found.fetched_at,
            rendered=found.rendered, duplicate=True,
            original_url=found.original_url if found.duplicate else found.url,
        )

    def _first(self, query: sa.Select[Any]) -> Any:
        if self._reader is self.engine:
            with transaction(self.engine) as connection:
                return connection.execute(query).first()
        try:
            with self._reader.connect() as connection:
                return connection.execute(query).first()
        except sa.exc.SQLAlchemyError as exc:
            raise database_error(exc) from exc

    def remember(self, entry: Remembered) -> None:
        validators = entry.validators or Validators()
        row = {
            "url": entry.url, "page_url": entry.page_url, "final_url": entry.final_url,
            "etag": validators.etag, "last_modified": validators.last_modified,
            "fetched_at": entry.fetched_at.astimezone(UTC), "rendered": entry.rendered,
            "links": entry.links, "pagination": entry.pagination, "activities": entry.activities,
            "duplicate": entry.duplicate, "original_url": entry.original_url,
            "subresources": _subresource_rows(entry.subresources),
            "extractor": self.extractor, "render": self.render, "updated_at": utcnow(),
        }
        with self._lock:
            self._pending[entry.url] = row  # one row per URL in a statement: ON CONFLICT refuses two
            if len(self._pending) < BATCH or self._waiting:
                return
            rows, self._pending = list(self._pending.values()), {}
        self._write(rows)

    def confirm(self, url: str) -> None:
        with self._lock:
            self._confirmed.add(url)
            if len(self._confirmed) < BATCH or self._waiting:
                return
            urls, self._confirmed = self._confirmed, set()
        self._stamp(urls)

    def own(self, run_id: str) -> None:
        """The run whose crawl this is, known now (an early crawl adopted by its run): what was held is its."""
        with self._lock:
            self.run_id, self._waiting = run_id, False

    def flush(self) -> None:
        with self._lock:
            rows, self._pending = list(self._pending.values()), {}
            urls, self._confirmed = self._confirmed, set()
            if self._waiting:
                return  # no run adopted this crawl: nothing it saw is kept
        self._write(rows)
        self._stamp(urls)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            row["run_id"] = self.run_id
        upsert_rows(self.engine, page_cache, rows, ["url", "render", "extractor"])

    def _stamp(self, urls: set[str]) -> None:
        """Mark the rows of `urls` as seen now by this run (whose raw activities now hold them): one UPDATE per
        batch, nothing else in the row changes (a page skipped by its `<lastmod>` keeps the fetch time the next
        crawl compares with)."""
        if not urls:
            return
        with transaction(self.engine) as connection:
            connection.execute(
                page_cache.update()
                .where(one_of(page_cache.c.url, sorted(urls), self.engine.dialect.name),
                       page_cache.c.render == self.render, page_cache.c.extractor == self.extractor)
                .values(updated_at=utcnow(), run_id=self.run_id)
            )


def _entry(row: Any) -> Remembered:
    fetched_at = row.fetched_at if row.fetched_at.tzinfo else row.fetched_at.replace(tzinfo=UTC)
    validators = Validators(row.etag, row.last_modified) if row.etag or row.last_modified else None
    return Remembered(
        url=row.url, page_url=row.page_url, final_url=row.final_url, validators=validators,
        fetched_at=fetched_at, links=list(row.links), pagination=list(row.pagination), rendered=row.rendered,
        activities=list(row.activities), duplicate=row.duplicate, original_url=row.original_url,
        subresources=_subresources(row.subresources),
    )


def _subresource_rows(subresources: list[Subresource] | None) -> list[dict[str, str | None]] | None:
    if subresources is None:
        return None
    return [{"url": loaded.url, "etag": loaded.validators.etag, "last_modified": loaded.validators.last_modified}
            for loaded in subresources]


def _subresources(rows: list[dict[str, Any]] | None) -> list[Subresource] | None:
    if rows is None:
        return None
    return [Subresource(row["url"], Validators(row.get("etag"), row.get("last_modified"))) for row in rows]
