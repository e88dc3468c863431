"""A run's content quality report: what the pages gave and what had to be done to it (issue 26).

A run can complete with its plumbing perfect and its content wrong: blocks a strict parser refused, dates that
became null, times taken from the page's text, items without a zone or a place. The crawl and the standardize
step each count their part (`CrawlQuality`, and `Standardizer.quality`); `combine` joins them into the report the
run summary (`--json`), `harvest runs show`, the CLI summary and the summary artifact show, and `report_lines`
words it the same way everywhere.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harvest.extract.calendar import CalendarResult
    from harvest.extract.structured import PageReport

MAX_EXAMPLES = 20


@dataclass
class CrawlQuality:
    """What extraction met over a crawl's pages."""

    items_by_source: Counter[str] = field(default_factory=Counter)
    blocks_repaired: int = 0
    repairs: Counter[str] = field(default_factory=Counter)
    unreadable_blocks: list[tuple[str, str]] = field(default_factory=list)  # (page URL, why), bounded
    unreadable_count: int = 0
    times_shown: int = 0
    feeds_read: int = 0
    feeds_repaired: int = 0
    feed_events: int = 0
    feed_events_outside_horizon: int = 0
    feeds_unreadable: list[tuple[str, str]] = field(default_factory=list)
    empty_listings: list[str] = field(default_factory=list)
    empty_listing_count: int = 0

    def add_page(self, url: str, report: PageReport) -> None:
        self.items_by_source.update(report.items_by_source)
        self.blocks_repaired += report.blocks_repaired
        self.repairs.update(report.repairs)
        self.times_shown += report.shown_times
        self.unreadable_count += len(report.unreadable)
        for detail in report.unreadable:
            if len(self.unreadable_blocks) < MAX_EXAMPLES:
                self.unreadable_blocks.append((url, detail))

    def add_feed(self, url: str, feed: CalendarResult) -> None:
        if feed.error:
            if len(self.feeds_unreadable) < MAX_EXAMPLES:
                self.feeds_unreadable.append((url, feed.error))
            return
        self.feeds_read += 1
        self.feeds_repaired += feed.repaired
        self.feed_events += feed.events
        self.feed_events_outside_horizon += feed.outside_horizon
        self.items_by_source["ical"] += len(feed.activities)

    def add_empty_listing(self, url: str) -> None:
        self.empty_listing_count += 1
        if len(self.empty_listings) < MAX_EXAMPLES:
            self.empty_listings.append(url)

    def as_dict(self) -> dict[str, Any]:
        return {
            "items_by_source": {source: count for source, count in self.items_by_source.items() if count},
            "jsonld_blocks_repaired": self.blocks_repaired,
            "jsonld_repairs": dict(self.repairs),
            "jsonld_blocks_unreadable": self.unreadable_count,
            "jsonld_unreadable_examples": [{"url": url, "detail": detail} for url, detail in self.unreadable_blocks],
            "times_shown_beside_items": self.times_shown,
            "feeds_read": self.feeds_read,
            "feeds_repaired": self.feeds_repaired,
            "feed_events": self.feed_events,
            "feed_events_outside_horizon": self.feed_events_outside_horizon,
            "feeds_unreadable": [{"url": url, "detail": detail} for url, detail in self.feeds_unreadable],
            "listing_pages_without_items": self.empty_listing_count,
            "listing_pages_without_items_examples": list(self.empty_listings),
        }


STANDARDIZE_KEYS = ("all_day", "times_from_page_text", "times_corrected", "offsets_disagreeing_with_zone",
                    "without_zone", "without_place")


def combine(crawl: dict[str, Any] | None, standardize: dict[str, Any] | None) -> dict[str, Any]:
    """The run's report from the crawl's and the standardize step's parts (either may be missing)."""
    report: dict[str, Any] = dict(crawl or {})
    counts = dict((standardize or {}).get("quality") or {})
    for key in STANDARDIZE_KEYS:
        report[key] = int(counts.get(key, 0))
    report["dates_refused"] = dict((standardize or {}).get("dates_refused") or {})
    return report


def run_quality(row: dict[str, Any]) -> dict[str, Any]:
    """The report of a run from its row's `steps` (empty for a run from before the report existed)."""
    steps = row.get("steps") or {}
    if "quality_crawl" not in steps and "quality_standardize" not in steps:
        return {}
    return combine(steps.get("quality_crawl"), steps.get("quality_standardize"))


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report in words, one fact a line (the CLI, `harvest runs show` and the summary artifact)."""
    if not report:
        return []
    by_source = report.get("items_by_source") or {}
    lines = ["items by source: " + (", ".join(f"{k} {v}" for k, v in sorted(by_source.items())) or "none")]
    repairs = report.get("jsonld_repairs") or {}
    lines.append(
        f"JSON-LD blocks repaired: {report.get('jsonld_blocks_repaired', 0)}"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(repairs.items()))})" if repairs else "")
        + f"; unreadable: {report.get('jsonld_blocks_unreadable', 0)}"
    )
    lines += [f"  unreadable block on {e['url']}: {e['detail']}" for e in report.get("jsonld_unreadable_examples", [])]
    if report.get("feeds_read") or report.get("feeds_unreadable"):
        lines.append(
            f"calendar feeds read: {report.get('feeds_read', 0)} ({report.get('feed_events', 0)} events, "
            f"{report.get('feed_events_outside_horizon', 0)} with no date in the horizon, "
            f"{report.get('feeds_repaired', 0)} read without their broken VTIMEZONE); "
            f"unreadable: {len(report.get('feeds_unreadable') or [])}; pages not fetched because a feed gave them: "
            f"{report.get('pages_covered_by_feeds', 0)}"
        )
    refused = report.get("dates_refused") or {}
    lines.append("dates refused: " + (", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "none"))
    lines.append(
        f"all-day items: {report.get('all_day', 0)}; times taken from the page's text: "
        f"{report.get('times_from_page_text', 0)}; times corrected (offset contradicted the venue's zone): "
        f"{report.get('times_corrected', 0)}; offsets left disagreeing with the zone: "
        f"{report.get('offsets_disagreeing_with_zone', 0)}"
    )
    lines.append(
        f"items without a time zone: {report.get('without_zone', 0)}; without a place: "
        f"{report.get('without_place', 0)}"
    )
    lines.append(f"pages that looked like listings but gave nothing: {report.get('listing_pages_without_items', 0)}")
    lines += [f"  {url}" for url in report.get("listing_pages_without_items_examples", [])[:5]]
    return lines
