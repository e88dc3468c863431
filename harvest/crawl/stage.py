"""The crawl step: crawl the site and extract raw activities into `raw_activities.jsonl`, streaming page by page."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from harvest.cost.prices import Counter
from harvest.crawl import Crawl, CrawlOptions, CrawlStats, Page, crawl
from harvest.crawl.page import entry_for
from harvest.crawl.revalidate import PageMemory, Remembered
from harvest.errors import BrowserUnavailableError, ExtractionError, OverBudgetError, StorageError
from harvest.models import FileRef, RawActivity, RunConfig
from harvest.pipeline import StageResult, timed
from harvest.quality import CrawlQuality
from harvest.settings import HarvestSettings
from harvest.storage import ObjectStore, iter_jsonl, write_jsonl
from harvest.storage.keys import run_key

if TYPE_CHECKING:  # the extractors are imported when a page is extracted: an early crawl needs neither
    from harvest.extract.llm import LLMExtractor

logger = logging.getLogger(__name__)

# What the page memory's stored activities were extracted by: bump it when extraction changes what it finds,
# so a re-crawl extracts unchanged pages again instead of reusing the older answers.
EXTRACTOR_VERSION = "2"  # 2: JSON-LD repaired, microformats, iCalendar feeds, shown times (issue 26)


def extraction_version(llm: LLMExtractor | None) -> str:
    """The page memory's key for how pages are extracted: with or without the LLM (and which model). A page
    without structured data gives nothing when there is no key, so a run with a key must not reuse that."""
    return extraction_version_for(llm.model if llm is not None else None)


def extraction_version_for(llm_model: str | None) -> str:
    """`extraction_version` for a run whose LLM extraction uses `llm_model` (None: no LLM)."""
    return EXTRACTOR_VERSION if llm_model is None else f"{EXTRACTOR_VERSION}+llm:{llm_model}"


# Crawls started before their run's flow existed (the `harvest` command starts one while Prefect comes up), waiting
# for the crawl step to adopt them: (start URL, run config, the page memory's extraction version) -> the crawl and
# its memory. The crawl fetches until its queue is full (HARVEST_CRAWL_QUEUE_SIZE pages), then waits.
_EARLY: dict[tuple[str, str, str | None], tuple[Crawl, _CheckedMemory | None]] = {}
_EARLY_GUARD = threading.Lock()


def start_crawl_early(url: str, config: RunConfig, settings: HarvestSettings, memory: PageMemory | None) -> None:
    """Start the crawl of a run that is about to begin, so its first request does not wait for the orchestrator
    (issue 28: Prefect took seconds before anything was fetched). `collect_raw_activities` for the same URL,
    config and page memory version adopts it; `drop_early_crawls` closes one nobody adopted."""
    checked = _CheckedMemory(memory, StageResult()) if memory is not None else None
    session = crawl(url, config, CrawlOptions.from_settings(settings), memory=checked)
    iter(session)  # starts the crawl's thread
    with _EARLY_GUARD:
        previous = _EARLY.pop(_early_key(url, config, memory), None)
        _EARLY[_early_key(url, config, memory)] = (session, checked)
    if previous is not None:
        previous[0].close()


def drop_early_crawls() -> int:
    """Close the early crawls no run adopted (its flow ended before crawling: another run of the URL was running,
    it failed first); how many."""
    with _EARLY_GUARD:
        left = list(_EARLY.values())
        _EARLY.clear()
    for session, memory in left:
        session.close()
        if memory is not None:
            _flush(memory, memory.result)
    return len(left)


def _early_key(url: str, config: RunConfig, memory: PageMemory | None) -> tuple[str, str, str | None]:
    return url, config.model_dump_json(), getattr(memory, "extractor", None)


def _adopt_early(url: str, config: RunConfig, memory: PageMemory | None,
                 result: StageResult) -> tuple[Crawl, _CheckedMemory | None] | None:
    """The early crawl of this run, its memory's warnings so far moved into `result` (and later ones sent there)."""
    with _EARLY_GUARD:
        early = _EARLY.pop(_early_key(url, config, memory), None)
    if early is None:
        return None
    session, checked = early
    if checked is not None:
        for warning in checked.result.warnings:
            result.warn(warning)
        checked.result = result
    return session, checked


def collect_raw_activities(
    store: ObjectStore,
    run_id: str,
    url: str,
    config: RunConfig,
    settings: HarvestSettings,
    *,
    llm: LLMExtractor | None = None,
    on_progress: Callable[[CrawlStats, int], None] | None = None,
    memory: PageMemory | None = None,
    as_of: datetime | None = None,
) -> StageResult:
    """Crawl from `url`, extract activities from each page as it arrives, and store them as JSONL.

    Structured data (JSON-LD, microdata, RDFa) comes first; the LLM only sees pages without any.
    The crawl stops early once `max_extractions` activities are found. `on_progress(stats, activities found)`
    runs after each page (on this thread), so callers can show the crawl moving; it must be cheap.
    With `memory` (`harvest.crawl.page_cache.PageCache`), each page's validators, links and activities are kept,
    and a page the server says is unchanged (304, or an older sitemap `<lastmod>`) gives the activities it
    gave last time: no download, no extraction, no LLM call.
    An iCalendar feed the crawl meets is read as one: its series expanded from `as_of` (default: now) for
    `config.calendar_horizon_days`. What extraction met (repairs, items per source, feeds, listings that gave
    nothing) goes to `result.quality`.
    """
    result = StageResult()
    remembering = getattr(memory, "render", config.render)
    if remembering != config.render:  # a plain page must never stand in for a render (issue 27 item 2)
        raise ValueError(f"a page memory of render={remembering!r} crawls given to a render={config.render!r} run")
    extraction = _Extraction(llm, result, as_of or datetime.now(UTC), config.calendar_horizon_days)
    early = _adopt_early(url, config, memory, result)
    if early is not None:
        session, checked = early
    else:
        checked = _CheckedMemory(memory, result) if memory is not None else None
    if checked is not None:
        checked.own(run_id)
    with timed(result.stats):
        if early is None:
            session = crawl(url, config, CrawlOptions.from_settings(settings), memory=checked)
        collected = _Collected(session, extraction, checked, config.max_extractions, on_progress)
        try:
            with session:
                ref = write_jsonl(
                    store, run_key(run_id, "raw_activities", "jsonl"), "raw_activities", collected.activities()
                )
        finally:
            if checked is not None:
                _flush(checked, result)
        stats = session.stats
    if on_progress is not None:
        _report(on_progress, stats, ref.records)
    result.files.append(ref)
    _record_counts(result, ref, stats, extraction)
    _warn_what_was_left(result, stats, config, collected.stopped_early)
    _warn_about_extraction(result, extraction)
    if stats.pages_unrendered:
        result.stats.details.update(pages_unrendered=stats.pages_unrendered, browser_error=stats.browser_error or "")
        result.warn(unrendered_warning(stats))
    if ref.records == 0:
        result.warn(f"no activities found on {url} ({stats.pages_fetched} page(s) crawled)")
    quality = extraction.quality
    result.quality = {**quality.as_dict(), "pages_covered_by_feeds": stats.skipped.get("covered_by_feed", 0)}
    for page_url, detail in quality.unreadable_blocks[:20]:
        result.warn(f"JSON-LD block on {page_url} could not be read even after repair: {detail}")
    return result


class _Extraction:
    """Activities of each page as it arrives, counting how they were had: reused from the page memory, read
    from a calendar feed, found in structured data, or asked of the LLM (or not, for want of a key or of budget).
    What extraction met goes to `quality`; a feed's series are expanded from `as_of` for `horizon_days`."""

    def __init__(self, llm: LLMExtractor | None, result: StageResult, as_of: datetime, horizon_days: int) -> None:
        self.llm = llm
        self.result = result
        self.as_of = as_of
        self.horizon_days = horizon_days
        self.quality = CrawlQuality()
        self.llm_pages = 0
        self.llm_skipped_pages = 0
        self.over_budget: list[str] = []  # pages the budget left without LLM extraction
        self.reused_activities = 0

    def __call__(self, page: Page) -> tuple[list[RawActivity], bool]:
        """The page's activities, and whether they are the page's final answer (worth remembering)."""
        if page.reused is not None:  # validated when recalled (_CheckedMemory)
            reused = [RawActivity.model_validate(item) for item in page.reused.activities]
            self.reused_activities += len(reused)
            return reused, page.reuse_reason == "not_modified"  # a 304 confirms the content: keep its date
        if page.content_type == "text/calendar":
            return self._feed(page)
        items = _extract_page(page, self.result, self.quality)
        if items:
            return items, True
        if _looks_like_listing(page) and not page.led_somewhere_new:
            self.quality.add_empty_listing(page.url)
        found, complete = self._with_llm(page)
        return found, complete and items is not None  # structured extraction failed: not the page's answer

    def _feed(self, page: Page) -> tuple[list[RawActivity], bool]:
        """An iCalendar feed's events (series expanded); not the page's final answer when it could not be read."""
        from harvest.extract.calendar import calendar_activities  # on first use: an early crawl needs no parser

        feed = calendar_activities(page.html, page.url, as_of=self.as_of, horizon_days=self.horizon_days)
        self.quality.add_feed(page.url, feed)
        if feed.error:
            self.result.warn(f"calendar feed {page.url} not read: {feed.error}")
        return feed.activities, feed.error is None

    def _with_llm(self, page: Page) -> tuple[list[RawActivity], bool]:
        """A page without structured data: the LLM's answer, when there is a key and budget for it."""
        if self.llm is None:
            self.llm_skipped_pages += 1  # final for this extraction_version (a run with a key uses another)
            return [], True
        self.llm_pages += 1
        from harvest.extract.structured import page_text

        try:
            items = self.llm.extract(page_text(page.html), page.url)
        except OverBudgetError:
            self.over_budget.append(page.url)  # not final: a run with budget left extracts it
        except ExtractionError as exc:
            self.result.warn(f"LLM extraction failed for {page.url}: {exc}")
        else:
            self.quality.items_by_source["llm"] += len(items)
            return items, True
        return [], False


class _Collected:
    """The crawl's activities as one stream, page by page: each page extracted, remembered when its answer is
    final, and the crawl stopped once `max_extractions` activities are found (`stopped_early`)."""

    def __init__(self, session: Crawl, extraction: _Extraction, memory: PageMemory | None, max_extractions: int,
                 on_progress: Callable[[CrawlStats, int], None] | None) -> None:
        self.session = session
        self.extraction = extraction
        self.memory = memory
        self.max_extractions = max_extractions
        self.on_progress = on_progress
        self.stopped_early = False

    def activities(self) -> Iterator[RawActivity]:
        found = 0
        for page in self.session:
            if self.on_progress is not None:
                _report(self.on_progress, self.session.stats, found)
            items, complete = self.extraction(page)
            if page.content_type == "text/calendar":  # a feed: its events' own pages need no fetch (issue 26)
                self.session.cover([item.itemUrl for item in items if item.itemUrl])
            if self.memory is not None and complete:
                _remember(self.memory, page, items, self.extraction.result)
            for item in items:
                yield item
                found += 1
                if found >= self.max_extractions:
                    self.stopped_early = True
                    self.session.close(reason="max_extractions")
                    return


def _record_counts(result: StageResult, ref: FileRef, stats: CrawlStats, extraction: _Extraction) -> None:
    """The step's counters: pages in, activities out, failed URLs skipped, and the details of both."""
    result.stats.items_in = stats.pages_fetched
    result.stats.items_out = ref.records
    result.stats.skipped = len(stats.failed_urls)
    llm = extraction.llm
    result.stats.details.update(
        pages_fetched=stats.pages_fetched, pages_rendered=stats.pages_rendered, pages_http=stats.pages_http,
        llm_pages=extraction.llm_pages, llm_cached_answers=llm.cache_hits if llm is not None else 0,
        pages_not_modified=stats.pages_not_modified, pages_lastmod_unchanged=stats.pages_lastmod_unchanged,
        pages_scripts_changed=stats.pages_scripts_changed, reused_activities=extraction.reused_activities,
        **{f"skipped_{reason}": count for reason, count in stats.skipped.items()},
    )
    result.failed_urls.extend(
        {"url": failed.url, "reason": failed.reason, "status": failed.status} for failed in stats.failed_urls
    )


def _warn_what_was_left(result: StageResult, stats: CrawlStats, config: RunConfig, stopped_early: bool) -> None:
    """What each limit left unfollowed, with examples and the setting to raise (the deadline said apart)."""
    limits = {"max_pages": config.max_pages, "max_depth": config.max_depth, "max_extractions": config.max_extractions,
              "max_crawl_seconds": config.max_crawl_seconds}
    for reason, entry in stats.unfollowed.items():
        result.stats.details[f"unfollowed_{reason}"] = entry["count"]
        if reason == "max_crawl_seconds":
            result.stats.details["crawl_deadline_hit"] = True
            result.warn(
                f"crawl deadline hit: max_crawl_seconds={config.max_crawl_seconds:g} passed after "
                f"{stats.pages_fetched} page(s); {entry['count']} URL(s) left unfetched "
                f"({stats.deadline_cut_in_flight} cut mid-fetch), e.g. " + ", ".join(entry["examples"])
                + "; the run went on with the pages fetched"
            )
            continue
        result.warn(
            f"{reason}={limits.get(reason)} stopped the crawl with {entry['count']} link(s) unfollowed, e.g. "
            + ", ".join(entry["examples"])
            + f"; raise {reason} to reach them"
        )
    result.unfollowed = stats.unfollowed
    if stopped_early and "max_extractions" not in stats.unfollowed:
        result.warn(f"stopped at max_extractions={config.max_extractions}")


def _warn_about_extraction(result: StageResult, extraction: _Extraction) -> None:
    """Pages left without LLM extraction: no key, or the run's budget would have been passed."""
    if extraction.llm_skipped_pages:
        result.warn(
            f"OPENAI_API_KEY not set: LLM extraction skipped for {extraction.llm_skipped_pages} page(s) without "
            "structured data"
        )
    over_budget = extraction.over_budget
    if over_budget:
        result.stats.details["llm_over_budget_pages"] = len(over_budget)
        result.warn(
            f"budget: LLM extraction skipped for {len(over_budget)} page(s) without structured data, the run's "
            "max_cost_usd would have been passed: " + ", ".join(over_budget[:50])
            + (f" and {len(over_budget) - 50} more" if len(over_budget) > 50 else "")
        )


def crawl_counters(details: Mapping[str, Any]) -> dict[str, int]:
    """The ledger's free counters of a finished crawl: pages fetched over HTTP and in the browser, answers of the
    LLM reused, pages the page memory saved a download or a request for."""
    counters = {Counter.pages_http: "pages_http", Counter.pages_browser: "pages_rendered",
                Counter.chat_cache_hits: "llm_cached_answers", Counter.pages_not_modified: "pages_not_modified",
                Counter.pages_lastmod_unchanged: "pages_lastmod_unchanged"}
    return {counter: _detail(details, key) for counter, key in counters.items()}


def _detail(details: Mapping[str, Any], key: str) -> int:
    value = details.get(key, 0)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def unrendered_warning(stats: CrawlStats) -> str:
    """The run's one warning for script-built pages the browser could not render, with the cause."""
    return (
        f"the browser could not start, so {stats.pages_unrendered} page(s) built by scripts were not rendered and "
        f"their activities are missing: {stats.browser_error}. Check it where the run runs: "
        "`python -m harvest.crawl.selfcheck` (HARVEST_BROWSER_PATH, the system libraries Chromium and Playwright need)"
    )


def unrendered_error(steps: Mapping[str, Any]) -> BrowserUnavailableError | None:
    """The error that fails a run whose crawl left script-built pages unrendered (`steps`: the run row's map of
    step records); None when every page that needed the browser got it. The run finishes first, so nothing
    it did collect is lost, then fails so that nobody mistakes it for a complete one."""
    for record in steps.values():
        details = record.get("details") if isinstance(record, Mapping) else None
        if isinstance(details, Mapping) and details.get("pages_unrendered"):
            return BrowserUnavailableError(
                f"{details['pages_unrendered']} page(s) built by scripts could not be rendered: the browser could not "
                f"start: {details.get('browser_error') or 'no cause recorded'}"
            )
    return None


def _report(on_progress: Callable[[CrawlStats, int], None], stats: CrawlStats, found: int) -> None:
    try:
        on_progress(stats, found)
    except Exception:  # a progress display must never stop a crawl
        logger.exception("progress callback failed (ignored)")


def _extract_page(page: Page, result: StageResult, quality: CrawlQuality) -> list[RawActivity] | None:
    """Structured activities of the page; None when extraction failed (warned)."""
    from harvest.extract.structured import extract_page

    try:
        extraction = extract_page(page.html, page.url)
    except ExtractionError as exc:
        result.warn(f"structured extraction failed for {page.url}: {exc}")
        return None
    quality.add_page(page.url, extraction.report)
    return extraction.activities


_LISTING_PATH_RE = re.compile(r"(event|calendar|agenda|termine|veranstaltung|kalender|evenement|programm)", re.I)


def _looks_like_listing(page: Page) -> bool:
    """A page that paginates, or whose path names events or a calendar: it was expected to list something (its
    items, or links to them: one that leads to unseen pages is counted by its caller as having given those)."""
    return bool(page.pagination) or bool(_LISTING_PATH_RE.search(urlsplit(page.url).path))


class _CheckedMemory:
    """The page memory as the crawl sees it: an entry whose stored activities no longer validate is not
    recalled (warned), so that page is fetched and extracted again instead of losing its activities."""

    def __init__(self, memory: PageMemory, result: StageResult) -> None:
        self.memory = memory
        self.result = result

    def recall(self, url: str) -> Remembered | None:
        entry = self.memory.recall(url)
        if entry is None:
            return None
        try:
            for item in entry.activities:
                RawActivity.model_validate(item)
        except ValueError as exc:
            self.result.warn(f"stored activities of {url} not reused ({exc}): fetched again")
            return None
        return entry

    def remember(self, entry: Remembered) -> None:
        self.memory.remember(entry)

    def confirm(self, url: str) -> None:
        self.memory.confirm(url)

    def flush(self) -> None:
        self.memory.flush()

    def own(self, run_id: str) -> None:
        """What the crawl remembers and confirms is `run_id`'s (a memory that records no owner ignores it)."""
        own = getattr(self.memory, "own", None)
        if own is not None:
            own(run_id)


def _remember(memory: PageMemory, page: Page, items: list[RawActivity], result: StageResult) -> None:
    """Keep the page for the next crawl; a failure costs only a full download next time."""
    entry = entry_for(page, [item.model_dump(mode="json", exclude_none=True) for item in items])
    if entry is None:
        return  # a cut-off page is not the page: never answer for it from memory
    try:
        memory.remember(entry)
    except Exception as exc:  # noqa: BLE001 - any storage failure: the crawl goes on
        result.warn(f"page memory not updated for {page.requested_url}: {type(exc).__name__}: {exc}")


def _flush(memory: PageMemory, result: StageResult) -> None:
    try:
        memory.flush()
    except Exception as exc:  # noqa: BLE001 - as in _remember
        result.warn(f"page memory not updated: {type(exc).__name__}: {exc}")


def copy_raw_activities(store: ObjectStore, run_id: str, source: str) -> StageResult:
    """Start a run from stored raw activities (a kept run's raw file, or a local JSONL) instead of a crawl.

    The records are copied into the run's own folder, line by line, so the run stays self-contained
    even if the source is cleaned up later; malformed lines are skipped with a warning.
    """
    result = StageResult()

    def records() -> Iterator[dict[str, object]]:
        for number, record in enumerate(_iter_source(store, source), start=1):
            result.stats.items_in += 1
            try:
                yield RawActivity.model_validate(record).model_dump(mode="json", exclude_none=True)
            except ValueError as exc:
                result.stats.skipped += 1
                result.warn(f"{source} line {number} is not a raw activity: {exc}")

    with timed(result.stats):
        ref = write_jsonl(store, run_key(run_id, "raw_activities", "jsonl"), "raw_activities", records())
    result.files.append(ref)
    result.stats.items_out = ref.records
    result.stats.details["source"] = source
    return result


def _iter_source(store: ObjectStore, source: str) -> Iterator[dict[str, object]]:
    try:
        store.key_for(source)
    except StorageError:
        path = Path(unquote(urlsplit(source).path)) if source.startswith("file://") else Path(source)
        if not path.is_file():
            raise StorageError(f"--from-raw source {source!r} is neither in the store nor a readable file") from None
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise StorageError(f"{source} line {number} is not JSON: {exc}") from exc
        return
    yield from iter_jsonl(store, source)
