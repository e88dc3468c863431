"""The page memory on Postgres (`page_cache`), and the crawl stage over it: an unchanged re-crawl gives the same
raw activities without extracting a page, and a stored entry that no longer validates is fetched again."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from harvest.crawl.page_cache import BATCH, PageCache
from harvest.crawl.revalidate import Remembered, Validators
from harvest.crawl.stage import collect_raw_activities, extraction_version
from harvest.db.engine import get_engine
from harvest.models import RunConfig
from harvest.settings import HarvestSettings
from harvest.storage import LocalStore, iter_jsonl
from testkit.demo_site import SiteServer, build_demo_site, refresh_sitemap, serve_site


@pytest.fixture
def engine(pg_url: str) -> sa.Engine:
    engine = get_engine(pg_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("TRUNCATE page_cache")
    return engine


def _entry(number: int, fetched: datetime) -> Remembered:
    return Remembered(
        url=f"http://s/{number}", page_url=f"http://s/{number}", final_url=f"http://s/{number}",
        validators=Validators(f'"{number}"', None), fetched_at=fetched, links=[f"http://s/{number + 1}"],
        activities=[{"name": f"Park {number}"}],
    )


def test_entries_are_written_in_batches_and_updated_in_place(engine: sa.Engine) -> None:
    memory = PageCache(engine, "v1", render="http")
    fetched = datetime(2026, 11, 30, 10, tzinfo=UTC)
    for number in range(BATCH + 50):
        memory.remember(_entry(number, fetched))
    with engine.connect() as connection:  # a full batch is written without waiting for flush
        assert connection.exec_driver_sql("SELECT count(*) FROM page_cache").scalar_one() == BATCH
    memory.flush()
    assert memory.recall("http://s/7") == _entry(7, fetched)
    later = fetched + timedelta(days=1)
    memory.remember(_entry(7, later))
    memory.flush()
    assert memory.recall("http://s/7").fetched_at == later
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM page_cache").scalar_one() == BATCH + 50
    assert memory.recall("http://s/unknown") is None


@pytest.fixture
def site_root(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    build_demo_site(root, limit=30)
    stamp = time.time() - 3600  # published an hour ago (a crawl in the build's second would rightly revalidate)
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (stamp, stamp))
    refresh_sitemap(root)
    return root


class Collected(NamedTuple):
    lines: list[str]  # the raw activities as JSON lines, sorted
    details: dict
    warnings: list[str]


@dataclass
class Collector:
    """The demo site served, a store and the page memory on Postgres: the crawl stage over them, run after run."""

    site: SiteServer
    store: LocalStore
    memory: PageCache

    def collect(self, run_id: str) -> Collected:
        settings = HarvestSettings(allow_private_networks=True, browser_path=None)
        config = RunConfig(render="http", max_pages=500, max_depth=20)
        result = collect_raw_activities(self.store, run_id, self.site.url("/"), config, settings, memory=self.memory)
        lines = sorted(json.dumps(record, sort_keys=True)
                       for record in iter_jsonl(self.store, result.file("raw_activities").uri))
        return Collected(lines, result.stats.details, result.warnings)

    def collect_again(self, run_id: str) -> tuple[Collected, list[str]]:
        """Another run, and the paths the site answered in full (200) during it."""
        self.site.reset_counters()
        collected = self.collect(run_id)
        return collected, [path for _, path, status in self.site.log if status == 200]


@pytest.fixture
def collector(engine: sa.Engine, site_root: Path, tmp_path: Path) -> Iterator[Collector]:
    with serve_site(site_root) as site:
        yield Collector(site, LocalStore(tmp_path / "store"), PageCache(engine, extraction_version(None), render="http"))


def test_an_unchanged_recrawl_gives_the_same_activities_without_extracting(collector: Collector) -> None:
    first = collector.collect("run-1")
    again, full = collector.collect_again("run-2")

    assert first.lines and again.lines == first.lines
    details = again.details
    assert details["pages_http"] == 0 and details["pages_fetched"] == first.details["pages_fetched"]
    assert details["pages_not_modified"] + details["pages_lastmod_unchanged"] == details["pages_fetched"]
    assert details["reused_activities"] == len(first.lines)
    # robots.txt, the sitemap, and at most a `?ref=` duplicate that came up before the page it duplicates
    assert {"/robots.txt", "/sitemap.xml"} <= set(full) and all(
        "?ref=" in path for path in full if path not in ("/robots.txt", "/sitemap.xml")), sorted(full)


def test_a_stored_entry_that_no_longer_validates_is_fetched_and_extracted_again(
    engine: sa.Engine, collector: Collector
) -> None:
    first = collector.collect("run-1")
    with engine.begin() as connection:
        spoiled = connection.execute(sa.text(
            "UPDATE page_cache SET activities = '[{\"name\": 7}]' WHERE url = "
            "(SELECT url FROM page_cache WHERE jsonb_array_length(activities) = 1 ORDER BY url LIMIT 1) "
            "RETURNING url"
        )).scalar_one()
    again, fetched = collector.collect_again("run-2")

    assert again.lines == first.lines  # nothing lost
    assert any(spoiled in warning and "not reused" in warning for warning in again.warnings), again.warnings
    assert again.details["pages_http"] == 1 and urlsplit(spoiled).path in fetched
    assert collector.memory.recall(spoiled).activities != [{"name": 7}]  # the fresh extraction replaced it
