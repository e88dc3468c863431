"""The crawl's page memory (`page_cache`) is pruned by the sweep: rows no crawl fetched or revalidated for
HARVEST_PAGE_MEMORY_DAYS go, a batch per transaction; a page a re-crawl finds unchanged (304, older sitemap
`<lastmod>`, or a reused duplicate) keeps its row. On Postgres and on SQLite, the embedded default."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from harvest.crawl.page_cache import BATCH, PageCache
from harvest.crawl.revalidate import Remembered, Validators
from harvest.crawl.stage import collect_raw_activities, extraction_version
from harvest.db.engine import utcnow
from harvest.db.schema import page_cache, scrape_runs
from harvest.models import RunConfig
from harvest.retention import policy as retention
from harvest.retention.policy import RetentionPolicy, policy_from, sweep
from harvest.settings import HarvestSettings
from harvest.storage import LocalStore, iter_jsonl
from testkit.demo_site import build_demo_site, refresh_sitemap, serve_site

DATABASES = ["postgres", "sqlite"]  # every test taking `engine` runs on both (tests/conftest.py)
POLICY = RetentionPolicy(page_memory_days=30)


def _entry(url: str) -> Remembered:
    return Remembered(url=url, page_url=url, final_url=url, validators=Validators('"v"', None),
                      fetched_at=datetime(2026, 11, 1, tzinfo=UTC), activities=[{"name": "Park"}])


def _remember(engine: sa.Engine, urls: list[str]) -> PageCache:
    memory = PageCache(engine, "v1", render="http")
    for url in urls:
        memory.remember(_entry(url))
    memory.flush()
    return memory


def _age(engine: sa.Engine, urls: list[str], days: float) -> None:
    """Date the rows' last sighting `days` back, as if no crawl had reached them since."""
    with engine.begin() as connection:
        connection.execute(page_cache.update().where(page_cache.c.url.in_(urls))
                           .values(updated_at=utcnow() - timedelta(days=days)))


def _urls(engine: sa.Engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.execute(sa.select(page_cache.c.url)).scalars())


def _sweep(engine: sa.Engine, tmp_path: Path, *, dry_run: bool = False) -> retention.SweepReport:
    return sweep(engine, LocalStore(tmp_path / "store"), POLICY, flow_run_state=lambda _: None, dry_run=dry_run)


def test_rows_not_seen_for_the_configured_days_are_pruned_fresh_ones_kept(engine, tmp_path: Path) -> None:  # noqa: ANN001
    old = [f"https://s.example/event/2026-0{month}" for month in range(1, 6)]
    recent = ["https://s.example/events?page=2", "https://s.example/about"]
    fresh = ["https://s.example/", "https://s.example/events"]
    _remember(engine, old + recent + fresh)
    _age(engine, old, days=31)
    _age(engine, recent, days=29)

    dry = _sweep(engine, tmp_path, dry_run=True)
    assert dry.page_memory_pruned == len(old) and len(_urls(engine)) == 9  # counted, nothing deleted

    report = _sweep(engine, tmp_path)
    assert report.page_memory_pruned == len(old) and report.as_dict()["page_memory_pruned"] == len(old)
    assert _urls(engine) == sorted(recent + fresh)
    assert _sweep(engine, tmp_path).page_memory_pruned == 0


def test_a_confirmed_row_is_kept(engine, tmp_path: Path) -> None:  # noqa: ANN001
    """`confirm` (a 304 or an older <lastmod>: the page is reused, not remembered anew) refreshes the row's
    sighting, in batches of BATCH like `remember`, and leaves what the row says about the page alone."""
    urls = [f"https://s.example/p/{n}" for n in range(BATCH + 3)]
    memory = _remember(engine, urls)
    _age(engine, urls, days=45)
    for url in urls[:BATCH]:
        memory.confirm(url)
    assert _sweep(engine, tmp_path, dry_run=True).page_memory_pruned == 3  # a full batch is written at once
    memory.confirm(urls[BATCH])
    memory.flush()

    assert _sweep(engine, tmp_path).page_memory_pruned == 2
    assert _urls(engine) == sorted(urls[: BATCH + 1])
    assert memory.recall(urls[0]) == _entry(urls[0])  # the fetch time a <lastmod> is compared with is unchanged


def test_the_prune_deletes_a_bounded_batch_per_transaction(engine, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    urls = [f"https://s.example/session/{n:03}" for n in range(25)]
    _remember(engine, urls + ["https://s.example/"])
    _age(engine, urls, days=90)
    monkeypatch.setattr(retention, "PAGE_MEMORY_BATCH", 10)
    deletes: list[int] = []
    commits: list[int] = []

    def on_execute(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("DELETE FROM PAGE_CACHE"):
            deletes.append(cursor.rowcount)

    sa.event.listen(engine, "after_cursor_execute", on_execute)
    sa.event.listen(engine, "commit", lambda conn: commits.append(len(deletes)))
    try:
        report = _sweep(engine, tmp_path)
    finally:
        sa.event.remove(engine, "after_cursor_execute", on_execute)
    assert report.page_memory_pruned == 25 and _urls(engine) == ["https://s.example/"]
    assert deletes == [10, 10, 5]
    assert all(n in commits for n in (1, 2, 3)), commits  # committed after each batch, not once at the end


def test_page_memory_days_is_a_setting_of_at_least_one_day(monkeypatch) -> None:  # noqa: ANN001
    assert HarvestSettings().page_memory_days == 30
    monkeypatch.setenv("HARVEST_PAGE_MEMORY_DAYS", "7")
    assert policy_from(HarvestSettings()).page_memory_days == 7
    monkeypatch.setenv("HARVEST_PAGE_MEMORY_DAYS", "0")
    with pytest.raises(ValidationError, match="page_memory_days"):
        HarvestSettings()


# ---- through the real crawl path ------------------------------------------------------------------------


@pytest.fixture
def site_root(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    build_demo_site(root, limit=30)
    stamp = time.time() - 3600  # published an hour ago, so the re-crawl skips pages by their <lastmod>
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (stamp, stamp))
    refresh_sitemap(root)
    return root


def _collect(store: LocalStore, run_id: str, url: str, memory: PageCache) -> tuple[list[str], dict]:
    settings = HarvestSettings(allow_private_networks=True, browser_path=None)
    config = RunConfig(render="http", max_pages=500, max_depth=20)
    result = collect_raw_activities(store, run_id, url, config, settings, memory=memory)
    lines = sorted(json.dumps(record, sort_keys=True) for record in iter_jsonl(store, result.file("raw_activities").uri))
    return lines, result.stats.details


def test_a_recrawl_that_finds_every_page_unchanged_keeps_every_row(engine, site_root: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """Every row is aged past the limit between two crawls of an unchanged site. The re-crawl reuses every page
    (most skipped by <lastmod>, the rest 304s, duplicates dropped), so the sweep after it must prune nothing:
    otherwise the next crawl would download those pages again."""
    store = LocalStore(tmp_path / "store")
    memory = PageCache(engine, extraction_version(None), render="http")
    with serve_site(site_root) as site:
        first, _ = _collect(store, "run-1", site.url("/"), memory)
        remembered = _urls(engine)
        _age(engine, remembered, days=POLICY.page_memory_days + 1)
        assert _sweep(engine, tmp_path, dry_run=True).page_memory_pruned == len(remembered)
        again, details = _collect(store, "run-2", site.url("/"), memory)

    assert again == first and details["pages_http"] == 0
    assert details["pages_lastmod_unchanged"] > 0 and details["pages_not_modified"] > 0  # both kinds of reuse
    report = _sweep(engine, tmp_path)
    assert report.page_memory_pruned == 0, report
    assert _urls(engine) == remembered


def test_a_row_a_crawl_is_writing_is_skipped_not_waited_for(engine, tmp_path: Path) -> None:  # noqa: ANN001
    """Postgres: a crawl upserting a stale row holds its lock; the sweep leaves that row (the crawl is
    refreshing it) and deletes the rest without waiting. SQLite has one writer: its batches queue instead."""
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks are Postgres's; SQLite serializes writers")
    urls = [f"https://s.example/sid/{n}" for n in range(5)]
    memory = _remember(engine, urls)
    _age(engine, urls, days=60)
    reports: list[retention.SweepReport] = []
    with engine.connect() as crawl, crawl.begin():
        crawl.execute(page_cache.update().where(page_cache.c.url == urls[0]).values(updated_at=utcnow()))
        sweeping = threading.Thread(target=lambda: reports.append(_sweep(engine, tmp_path)))
        sweeping.start()
        sweeping.join(timeout=10)
        blocked = sweeping.is_alive()
    sweeping.join()
    assert not blocked, "the sweep waited for the crawl's row lock"
    assert reports[0].page_memory_pruned == 4
    assert _urls(engine) == [urls[0]] and memory.recall(urls[0]) == _entry(urls[0])


# ---- the page memory follows the retention of the runs whose data it holds (issue 27 item 7) ------------


def _owned_memory(engine: sa.Engine, run_id: str) -> PageCache:
    """The page memory of one run, as flows/tasks.py::crawl makes it."""
    return PageCache(engine, extraction_version(None), render="http", run_id=run_id)


def _page_rows(engine: sa.Engine) -> list[tuple[str, int]]:
    with engine.connect() as connection:
        return [(row.run_id, len(row.activities)) for row in connection.execute(
            sa.select(page_cache.c.run_id, page_cache.c.activities))]


def _crawled_run(engine: sa.Engine, store: LocalStore, run_id: str, url: str) -> list[str]:
    from harvest.db import runs

    runs.create_run(engine, run_id, url, {})
    lines, _ = _collect(store, run_id, url, _owned_memory(engine, run_id))
    runs.finish_run(engine, run_id, "completed")
    return lines


def test_a_runs_cleanup_takes_its_page_memory_with_it(engine, site_root: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """An auto-import's cleanup (and `harvest runs cleanup`: the same `cleanup_run`) deletes the run's raw
    activities; the page memory holds the same activities, page by page, so it goes too (before: every row
    stayed, with its activities, for HARVEST_PAGE_MEMORY_DAYS after the last crawl)."""
    from harvest.retention.policy import cleanup_run

    store = LocalStore(tmp_path / "store")
    with serve_site(site_root) as site:
        lines = _crawled_run(engine, store, "run-imported", site.url("/"))
    remembered = _page_rows(engine)
    assert lines and sum(found for _, found in remembered) >= len(lines)
    assert {run for run, _ in remembered} == {"run-imported"}

    assert cleanup_run(engine, store, "run-imported") is not None
    assert _page_rows(engine) == [], f"page memory kept {len(_page_rows(engine))} rows after the run's cleanup"


def test_page_memory_lives_as_long_as_the_latest_run_that_crawled_it_keeps_its_files(  # noqa: ANN001
    engine, site_root: Path, tmp_path: Path,
) -> None:
    """A site crawled again: the rows the newer run reused (304, older <lastmod>) are its own now, so the older
    run's expiry leaves them; the newer run's expiry takes them, well before HARVEST_PAGE_MEMORY_DAYS (before:
    a site crawled every night kept its pages' activities forever, whatever happened to the runs)."""
    from datetime import timedelta as days_

    store = LocalStore(tmp_path / "store")
    start = utcnow()
    with serve_site(site_root) as site:
        _crawled_run(engine, store, "run-1", site.url("/"))
        _crawled_run(engine, store, "run-2", site.url("/"))
    count = len(_page_rows(engine))
    assert count and {run for run, _ in _page_rows(engine)} == {"run-2"}, "the re-crawl owns what it reused"
    with engine.begin() as connection:
        for run_id, expires in (("run-1", start + days_(2)), ("run-2", start + days_(9))):
            connection.execute(scrape_runs.update().where(scrape_runs.c.id == run_id)
                               .values(retention="kept", expires_at=expires))

    first = sweep(engine, LocalStore(tmp_path / "store"), POLICY, flow_run_state=lambda _: None,
                  now=start + days_(5))
    assert first.expired == ["run-1"] and len(_page_rows(engine)) == count
    second = sweep(engine, LocalStore(tmp_path / "store"), POLICY, flow_run_state=lambda _: None,
                   now=start + days_(10))
    assert second.expired == ["run-2"]
    assert _page_rows(engine) == [], "the memory went with the files of the last run that crawled the site"


def test_an_early_crawls_memory_belongs_to_the_run_that_adopts_it_and_to_none_otherwise(  # noqa: ANN001
    engine, site_root: Path, tmp_path: Path,
) -> None:
    """The CLI starts a run's crawl before the run exists (harvest_cli/main.py::_crawl_early): what its memory
    saw is written under the run that adopts the crawl, so that run's cleanup takes it; a crawl nobody adopts
    keeps nothing."""
    from harvest.crawl.stage import drop_early_crawls, start_crawl_early

    store = LocalStore(tmp_path / "store")
    settings = HarvestSettings(allow_private_networks=True, browser_path=None, crawl_queue_size=500)
    config = RunConfig(render="http", max_pages=500, max_depth=20)
    with serve_site(site_root) as site:
        start_crawl_early(site.url("/"), config, settings, PageCache(
            engine, extraction_version(None), render="http", wait_for_owner=True))
        time.sleep(0.5)  # it fetches (and remembers) while the run is being set up
        collect_raw_activities(store, "run-early", site.url("/"), config, settings,
                               memory=_owned_memory(engine, "run-early"))
        owners = {run for run, _ in _page_rows(engine)}
        assert owners == {"run-early"}, owners

        with engine.begin() as connection:
            connection.execute(page_cache.delete())
        start_crawl_early(site.url("/"), config, settings, PageCache(
            engine, extraction_version(None), render="http", wait_for_owner=True))
        time.sleep(0.5)
        assert drop_early_crawls() == 1
    assert _page_rows(engine) == [], "no run adopted the crawl: nothing it saw is kept"
