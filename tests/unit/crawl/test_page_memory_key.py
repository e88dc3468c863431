"""Issue 27 item 2: the page memory is keyed by everything that changes what a page yields (render mode, extractor
and its version, LLM on/off), one row per key. Real crawls of local sites through the crawl stage
(`collect_raw_activities`), the memory in a real database, as the flow builds it per run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from harvest.crawl.page_cache import PageCache
from harvest.crawl.stage import collect_raw_activities, extraction_version_for
from harvest.db.engine import get_engine
from harvest.db.schema import page_cache
from harvest.models import RunConfig
from harvest.settings import BROWSER_CANDIDATES, HarvestSettings
from harvest.storage import LocalStore, iter_jsonl
from testkit.demo_site import build_demo_site, refresh_sitemap, serve_site
from tests.helpers import database_url

BROWSER = next((path for path in BROWSER_CANDIDATES if os.path.exists(path)), None)

SPA_SHELL = """<html><head><title>Spa</title><script src="/app.js"></script></head>
<body><div id="root"></div></body></html>"""
# The script draws the page's schema.org data from /api/events.json: only a render has it.
SPA_APP = """fetch('/api/events.json').then(function (r) { return r.text(); }).then(function (data) {
  var block = document.createElement('script');
  block.type = 'application/ld+json';
  block.text = data;
  document.head.appendChild(block);
  document.getElementById('root').textContent = 'Events';
});"""
EVENTS = json.dumps({"@context": "https://schema.org", "@type": "Event", "name": "Toddler Music Morning",
                     "startDate": "2026-12-12T10:00:00+11:00",
                     "location": {"@type": "Place", "name": "Library", "address": "1 Main Rd, Eltham"}})


def memory_for(engine: sa.Engine, extractor: str, render: str, run_id: str) -> PageCache:
    """The page memory of one run, as flows/tasks.py::crawl makes it."""
    return PageCache(engine, extractor, render=render, run_id=run_id)


def _static(site, path: str, content_type: str, body: str, etag: str) -> None:  # noqa: ANN001 - conftest Site
    """A route answering If-None-Match with 304, like a static host."""

    def handler(request):  # noqa: ANN001, ANN202
        if request.headers.get("if-none-match") == etag:
            return 304, {"ETag": etag}, b""
        return 200, {"Content-Type": content_type, "ETag": etag}, body.encode()

    site.route(path, handler)


def _names(store: LocalStore, result) -> list[str]:  # noqa: ANN001
    return sorted(record.get("name") for record in iter_jsonl(store, result.file("raw_activities").uri))


@pytest.mark.browser
@pytest.mark.skipif(BROWSER is None, reason="needs Debian Chromium (scripts/ensure-system.sh)")
@pytest.mark.parametrize("later", ["browser", "auto"])
def test_a_page_remembered_plain_never_stands_in_for_a_render(site, tmp_path: Path, later: str) -> None:  # noqa: ANN001
    """A script-built page whose HTML shell answers 304 forever: a `render="http"` run remembers it (nothing on
    it without scripts); a later `browser`/`auto` run must render it and find its activity, not reuse the
    plain page from memory (before: reused as `not_modified`, no activity, never rendered again)."""
    _static(site, "/", "text/html; charset=utf-8", '<html><body><a href="/spa">Events</a></body></html>', '"home-1"')
    _static(site, "/spa", "text/html; charset=utf-8", SPA_SHELL, '"shell-1"')
    _static(site, "/app.js", "text/javascript", SPA_APP, '"app-1"')
    _static(site, "/api/events.json", "application/json", EVENTS, '"events-1"')
    engine = get_engine(database_url_for_sqlite(tmp_path))
    store = LocalStore(tmp_path / "store")
    settings = HarvestSettings(allow_private_networks=True, browser_path=BROWSER)
    version = extraction_version_for(None)

    def run(run_id: str, render: str):  # noqa: ANN202
        config = RunConfig(render=render, max_pages=20, max_depth=2)
        return collect_raw_activities(store, run_id, site.url("/"), config, settings,
                                      memory=memory_for(engine, version, render, run_id))

    plain = run("run-http", "http")
    assert _names(store, plain) == []  # the shell alone shows nothing

    rendered = run("run-render", later)
    assert _names(store, rendered) == ["Toddler Music Morning"], (
        f"reused {rendered.stats.details.get('pages_not_modified')} page(s) from memory, "
        f"rendered {rendered.stats.details.get('pages_rendered')}")

    # ... and the render is what the next run of that mode reuses: unchanged, nothing rendered again.
    again = run("run-render-2", later)
    assert _names(store, again) == ["Toddler Music Morning"] and not again.stats.details.get("pages_rendered")


def database_url_for_sqlite(tmp_path: Path) -> str:
    from harvest.db.engine import upgrade

    url = f"sqlite:///{tmp_path / 'meta.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["postgres", "sqlite"])
def engine(request, tmp_path):  # noqa: ANN001, ANN201
    return get_engine(database_url(request, tmp_path, request.param))


def test_runs_with_and_without_the_llm_keep_their_own_memory(engine: sa.Engine, tmp_path: Path) -> None:
    """Alternating runs with and without the LLM: each kind keeps its own row per URL, so the third run (without,
    again) reuses every page instead of downloading them all (before: the second run's rows had replaced the
    first's, one row per URL)."""
    root = tmp_path / "site"
    build_demo_site(root, limit=12)
    stamp = time.time() - 3600  # published an hour ago (a crawl in the build's second would rightly revalidate)
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (stamp, stamp))
    refresh_sitemap(root)
    store = LocalStore(tmp_path / "store")
    settings = HarvestSettings(allow_private_networks=True, browser_path=None)
    config = RunConfig(render="http", max_pages=200, max_depth=20)
    without, with_llm = extraction_version_for(None), extraction_version_for("gpt-test-mini")

    with serve_site(root) as server:
        def run(run_id: str, extractor: str) -> tuple[dict, list[str]]:
            server.reset_counters()
            result = collect_raw_activities(store, run_id, server.url("/"), config, settings,
                                            memory=memory_for(engine, extractor, "http", run_id))
            pages = [path for _, path, status in server.log if status == 200
                     and path not in ("/robots.txt", "/sitemap.xml")]
            return result.stats.details, pages

        first, _ = run("r1", without)
        assert first["pages_http"] > 5
        run("r2", with_llm)
        third, downloaded = run("r3", without)

    assert third["pages_http"] == 0 and [p for p in downloaded if "?ref=" not in p] == [], (
        f"the run without the LLM downloaded {third['pages_http']} page(s) again: {downloaded[:5]}")
    with engine.connect() as connection:
        kinds = connection.execute(sa.select(page_cache.c.extractor, sa.func.count()).group_by(
            page_cache.c.extractor)).all()
    assert {extractor for extractor, _ in kinds} == {without, with_llm}


def test_migration_0016_keys_rows_by_render_and_extractor_and_goes_both_ways(fresh_url: str) -> None:
    """Rows of the old table (keyed by URL, no render mode, no run) are dropped: no crawl could recall them
    under the new key, no cleanup could account for them. After it, one URL has a row per render mode and
    extractor; the downgrade and a second upgrade work."""
    from datetime import UTC, datetime

    from harvest.crawl.revalidate import Remembered
    from harvest.db.engine import upgrade

    upgrade(fresh_url, "0015")
    engine = get_engine(fresh_url)
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO page_cache (url, page_url, final_url, fetched_at, rendered, links, pagination, activities,"
            " duplicate, extractor, updated_at) VALUES ('http://s/a', 'http://s/a', 'http://s/a', :t, false, '[]',"
            " '[]', '[{\"name\": \"Park\"}]', false, '2', :t)"), {"t": datetime(2026, 12, 1, tzinfo=UTC)})
    upgrade(fresh_url)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM page_cache")).scalar_one() == 0

    entry = Remembered(url="http://s/a", page_url="http://s/a", final_url="http://s/a", validators=None,
                       fetched_at=datetime(2026, 12, 1, tzinfo=UTC), activities=[{"name": "Park"}])
    for render, extractor in (("http", "2"), ("browser", "2"), ("http", "2+llm:m")):
        memory = memory_for(engine, extractor, render, "run-1")
        memory.remember(entry)
        memory.flush()
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM page_cache")).scalar_one() == 3
    assert memory_for(engine, "2", "auto", "run-2").recall("http://s/a") is None

    from alembic import command
    from alembic.config import Config

    from harvest.db.engine import migrations_dir

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", fresh_url.replace("%", "%%"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0015")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    assert memory_for(engine, "2", "http", "run-3").recall("http://s/a") is None
