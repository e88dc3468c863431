"""Polite incremental re-crawls (issue 15): validators, 304s and sitemap <lastmod> against real servers, with the
page memory in a real database (SQLite here, as the embedded default; Postgres in tests/unit/crawl/test_page_cache.py)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from harvest.crawl import CrawlOptions, CrawlStats, Page, crawl
from harvest.crawl.page import entry_for
from harvest.crawl.page_cache import PageCache
from harvest.crawl.revalidate import (
    Remembered,
    parse_lastmod,
    response_time,
    unchanged_since,
)
from harvest.db.engine import get_engine, upgrade
from harvest.models import RunConfig
from harvest.net.conditional import Validators
from harvest.settings import BROWSER_CANDIDATES
from testkit.demo_site import SiteServer, build_demo_site, refresh_sitemap, serve_site, write_page

UA = "harvest/0.1 (+https://github.com/harvest; test)"


# ---- the HTTP rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-30", datetime(2026, 12, 1, tzinfo=UTC)),  # a date stands for the end of that day
        ("2026-11-30T10:20:30+02:00", datetime(2026, 11, 30, 8, 20, 30, tzinfo=UTC)),
        ("2026-11-30T10:20:30Z", datetime(2026, 11, 30, 10, 20, 30, tzinfo=UTC)),
        ("2026-11-30T10:20:30", datetime(2026, 11, 30, 10, 20, 30, tzinfo=UTC)),  # no offset: UTC
        ("yesterday", None),
        ("", None),
        (None, None),
    ],
)
def test_sitemap_lastmod_is_read_as_the_latest_moment_it_can_mean(value: str | None, expected: datetime | None) -> None:
    assert parse_lastmod(value) == expected


def test_unchanged_only_when_lastmod_is_strictly_before_the_fetch() -> None:
    fetched = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)
    assert unchanged_since(fetched - timedelta(seconds=1), fetched)
    assert not unchanged_since(fetched, fetched)  # same second: the page may have changed after the fetch
    assert not unchanged_since(fetched + timedelta(days=1), fetched)
    assert not unchanged_since(None, fetched)
    assert unchanged_since(parse_lastmod("2026-11-29"), fetched)
    assert not unchanged_since(parse_lastmod("2026-11-30"), fetched)  # changed later that day, perhaps


def test_validators_go_back_as_conditional_headers() -> None:
    headers = httpx.Headers({"ETag": '"abc"', "Last-Modified": "Mon, 30 Nov 2026 10:00:00 GMT"})
    validators = Validators.from_headers(headers)
    assert validators == Validators('"abc"', "Mon, 30 Nov 2026 10:00:00 GMT")
    assert validators.request_headers() == {
        "If-None-Match": '"abc"', "If-Modified-Since": "Mon, 30 Nov 2026 10:00:00 GMT",
    }
    assert Validators.from_headers(httpx.Headers({"Content-Type": "text/html"})) is None


def test_response_time_is_the_servers_date_else_ours() -> None:
    assert response_time(httpx.Headers({"Date": "Mon, 30 Nov 2026 10:00:00 GMT"})) == datetime(
        2026, 11, 30, 10, tzinfo=UTC
    )
    ours = datetime(2026, 1, 1, tzinfo=UTC)
    assert response_time(httpx.Headers({"Date": "not a date"}), ours) == ours
    assert response_time(None, ours) == ours


# ---- the demo site answers conditional requests --------------------------------------------------------


@pytest.fixture(scope="module")
def small_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    root = tmp_path_factory.mktemp("conditional-site")
    build_demo_site(root, limit=12)
    with serve_site(root) as server:
        yield server


def test_demo_site_answers_if_none_match_and_if_modified_since(small_site) -> None:
    with httpx.Client(base_url=small_site.base_url) as client:
        first = client.get("/")
        etag, last_modified = first.headers["etag"], first.headers["last-modified"]
        assert first.status_code == 200 and etag and last_modified

        def status(**headers: str) -> tuple[int, bytes]:
            response = client.get("/", headers=headers)
            return response.status_code, response.content

        assert status(**{"If-None-Match": etag}) == (304, b"")
        assert status(**{"If-None-Match": f'"other", W/{etag}'})[0] == 304  # a list, weak comparison
        assert status(**{"If-None-Match": "*"})[0] == 304
        assert status(**{"If-None-Match": '"other"'})[0] == 200
        # If-None-Match decides when sent, even when If-Modified-Since would say "unchanged".
        assert status(**{"If-None-Match": '"other"', "If-Modified-Since": last_modified})[0] == 200
        assert status(**{"If-Modified-Since": last_modified}) == (304, b"")
        assert status(**{"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})[0] == 200
        assert status(**{"If-Modified-Since": "not a date"})[0] == 200  # malformed: ignored, full answer
        missing = client.get("/no-such-page/", headers={"If-None-Match": "*"})
        assert missing.status_code == 404


def test_demo_site_counts_the_bytes_it_sends(small_site) -> None:
    small_site.reset_counters()
    with httpx.Client(base_url=small_site.base_url) as client:
        body = client.get("/").content
        assert small_site.bytes_sent > len(body)  # status line and headers too
        sent = small_site.bytes_sent
        etag = client.get("/").headers["etag"]
        before = small_site.bytes_sent
        client.get("/", headers={"If-None-Match": etag})
        assert 0 < small_site.bytes_sent - before < 400 < len(body)
    assert sent > 0


# ---- re-crawls ------------------------------------------------------------------------------------------


def _memory(tmp_path: Path) -> PageCache:
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    upgrade(url)
    return PageCache(get_engine(url), "test-1", render="auto")


def _options(**overrides: object) -> CrawlOptions:
    values: dict[str, object] = {
        "browser_path": None, "user_agent": UA, "allow_private_networks": True, "per_host_concurrency": 4,
        "timeout_s": 10.0, "backoff_s": 0.05,
    }
    values.update(overrides)
    return CrawlOptions(**values)  # type: ignore[arg-type]


def _crawl(start: str, memory: PageCache | None, config: RunConfig, options: CrawlOptions) -> tuple[list[Page], CrawlStats]:
    """Crawl to the end, remembering each consumed page as the collect stage does."""
    pages = []
    with crawl(start, config, options, memory=memory) as running:
        for page in running:
            pages.append(page)
            entry = entry_for(page, page.reused.activities if page.reused else [{"name": page.url}])
            if memory is not None and entry is not None and page.reuse_reason != "lastmod":
                memory.remember(entry)
        stats = running.stats
    if memory is not None:
        memory.flush()
    return pages, stats


def _published_an_hour_ago(root: Path) -> None:
    """Date every file an hour back and regenerate the sitemap: otherwise a crawl right after the build falls
    in the same second as every <lastmod>, and (rightly) revalidates instead of skipping."""
    stamp = time.time() - 3600
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (stamp, stamp))
    refresh_sitemap(root)


@pytest.fixture
def demo_copy(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    build_demo_site(root, limit=40)
    _published_an_hour_ago(root)
    return root


def test_unchanged_recrawl_reuses_every_page_for_a_fraction_of_the_bytes(demo_copy: Path, tmp_path: Path) -> None:
    memory = _memory(tmp_path)
    config = RunConfig(render="http", max_pages=1000, max_depth=20)
    with serve_site(demo_copy) as site:
        first, first_stats = _crawl(site.url("/"), memory, config, _options())
        first_bytes = site.bytes_sent
        site.reset_counters()
        again, stats = _crawl(site.url("/"), memory, config, _options())
        again_bytes = site.bytes_sent
        statuses = site.statuses()
        full = [path for method, path, status in site.log if status == 200]

    assert {page.url for page in again} == {page.url for page in first}  # the same reach
    assert all(page.reused is not None and page.html == "" for page in again)
    assert stats.pages_http == 0 and stats.pages_rendered == 0
    assert stats.pages_lastmod_unchanged + stats.pages_not_modified == len(again)
    assert stats.pages_lastmod_unchanged > 0.8 * len(again)  # the sitemap lists nearly every page
    assert set(statuses) == {200, 304} and statuses[304] >= stats.pages_not_modified
    # Only what cannot be skipped is sent in full, and now and then a `?ref=` duplicate that came up before the
    # page it duplicates (a duplicate is reused only once its original is in the crawl).
    assert {"/robots.txt", "/sitemap.xml"} <= set(full) and all(
        "?ref=" in path for path in full if path not in ("/robots.txt", "/sitemap.xml")), full
    assert again_bytes <= 0.10 * first_bytes, (again_bytes, first_bytes)
    # what the first crawl's consumer kept comes back with the reused page
    assert all(page.reused.activities == [{"name": page.url}] for page in again)
    assert first_stats.failed_urls == stats.failed_urls


def test_a_changed_page_is_fetched_again_and_the_rest_reused(demo_copy: Path, tmp_path: Path) -> None:
    memory = _memory(tmp_path)
    config = RunConfig(render="http", max_pages=1000, max_depth=20)
    info_paths = sorted(path for path in (demo_copy / "activities").iterdir() if (path / "index.html").is_file())
    changed = "/activities/" + info_paths[0].name + "/"
    with serve_site(demo_copy) as site:
        _crawl(site.url("/"), memory, config, _options())
        html = (info_paths[0] / "index.html").read_text("utf-8")
        write_page(demo_copy, changed, html.replace("</body>", "<p>Now open on Sundays too.</p></body>"))
        refresh_sitemap(demo_copy)
        site.reset_counters()
        again, _ = _crawl(site.url("/"), memory, config, _options())
        fetched = [path for _, path, status in site.log if status == 200]

    assert changed in fetched
    page = next(page for page in again if page.requested_url.endswith(changed))
    assert page.reused is None and "Now open on Sundays too." in page.html
    assert all(page.reused is not None for page in again if not page.requested_url.endswith(changed))


def test_without_a_sitemap_every_page_is_revalidated_and_a_change_is_seen(tmp_path: Path) -> None:
    root = tmp_path / "site"
    build_demo_site(root, limit=20, sitemap=None)
    memory = _memory(tmp_path)
    config = RunConfig(render="http", max_pages=1000, max_depth=20)
    with serve_site(root) as site:
        home_url = site.url("/")
        first, _ = _crawl(home_url, memory, config, _options())
        requested_before = {path for _, path, status in site.log if status == 200}
        write_page(root, "/", (root / "index.html").read_text("utf-8").replace("</h1>", " (new)</h1>", 1))
        site.reset_counters()
        again, stats = _crawl(site.url("/"), memory, config, _options())
        answers = {path: status for _, path, status in site.log if path in requested_before}

    assert {page.url for page in again} == {page.url for page in first}
    assert stats.pages_lastmod_unchanged == 0
    home = next(page for page in again if page.requested_url == home_url)
    assert home.reused is None and "(new)</h1>" in home.html
    # Every page the first crawl emitted is asked for again with its validators: 304, but for the changed home
    # page. Duplicates may be fetched in full: one is reused only once the page it duplicates is in this crawl,
    # and the crawl order is not fixed (nor is which spelling of a page comes first).
    emitted_before = {urlsplit(page.requested_url).path + (f"?{urlsplit(page.requested_url).query}"
                      if urlsplit(page.requested_url).query else "") for page in first}
    assert answers.pop("/") == 200 and answers.pop("/robots.txt") == 200
    full = {path for path, status in answers.items() if status == 200}
    assert len(full) <= len(requested_before) - len(emitted_before), full  # at most the duplicates
    assert stats.pages_not_modified == sum(1 for page in again if page.reused is not None)
    assert stats.pages_not_modified >= len(again) - 1 - len(full)


def test_links_of_a_page_skipped_by_lastmod_are_still_followed(site, tmp_path: Path) -> None:
    """/a is listed with an old <lastmod> and never requested again; /b, linked only from /a, is still reached."""
    old = (datetime.now(UTC) - timedelta(days=3)).date().isoformat()
    site.page("/robots.txt", f"User-agent: *\nSitemap: {site.url('/sitemap.xml')}\n", content_type="text/plain")
    site.page("/sitemap.xml", f'<urlset><url><loc>{site.url("/a")}</loc><lastmod>{old}</lastmod></url></urlset>',
              content_type="application/xml")
    site.html("/", links=["/a"])
    site.html("/a", links=["/b"])
    site.html("/b")
    memory = _memory(tmp_path)
    config = RunConfig(render="http", max_pages=50, max_depth=5)
    first, _ = _crawl(site.url("/"), memory, config, _options())
    assert sorted(page.requested_url for page in first) == [site.url("/"), site.url("/a"), site.url("/b")]
    site.hits.clear()
    again, stats = _crawl(site.url("/"), memory, config, _options())

    assert sorted(page.requested_url for page in again) == [site.url("/"), site.url("/a"), site.url("/b")]
    assert "/a" not in site.paths()  # the sitemap said it is older than the last fetch: no request at all
    assert "/b" in site.paths()  # reached through /a's remembered links (no validators here: fetched in full)
    assert stats.pages_lastmod_unchanged == 1


def test_a_url_first_met_as_the_canonical_of_another_is_revalidated_not_fetched_anew(site, tmp_path: Path) -> None:
    """The first crawl reached /p/ only as `/p/?ref=home` (its canonical /p/ then marked seen); the next one meets
    /p/ itself first (here: the home page now links to it; in a real crawl, fetches ending in another order).
    /p/ has no row of its own, but it is the page a remembered URL reached: revalidated with that row's
    validators, a 304 reuses it (with the browser, nothing is rendered)."""
    from conftest import Request

    def p_page(request: Request) -> tuple[int, dict[str, str], bytes]:
        if request.headers.get("if-none-match") == '"p1"':
            return 304, {"ETag": '"p1"'}, b""
        text = "Family fun activities for everyone this weekend. " * 6
        body = f'<html><head><link rel="canonical" href="/p/"></head><body><p>{text}</p></body></html>'
        return 200, {"Content-Type": "text/html", "ETag": '"p1"'}, body.encode()

    site.route("/p/", p_page)
    site.html("/", links=["/p/?ref=home"])
    memory = _memory(tmp_path)
    config = RunConfig(render="http", max_pages=50, max_depth=5)
    first, _ = _crawl(site.url("/"), memory, config, _options())
    assert [page.requested_url for page in first] == [site.url("/"), site.url("/p/?ref=home")]
    assert memory.recall(site.url("/p/?ref=home")).page_url == site.url("/p/")

    site.html("/", links=["/p/"])
    site.hits.clear()
    again, stats = _crawl(site.url("/"), memory, config, _options())

    assert [hit.headers.get("if-none-match") for hit in site.requested("/p/")] == ['"p1"']
    page = next(page for page in again if page.requested_url == site.url("/p/"))
    assert page.reused is not None and page.reused.activities == [{"name": site.url("/p/")}]
    assert (stats.pages_http, stats.pages_not_modified) == (1, 1)  # the changed home page, then /p/
    assert memory.recall(site.url("/nowhere/")) is None


def test_robots_rules_still_apply_to_remembered_pages(site, tmp_path: Path) -> None:
    site.page("/robots.txt", "User-agent: *\nAllow: /\n", content_type="text/plain")
    site.html("/", links=["/a"])
    site.page("/a", "<html><body>" + "Family fun for everyone. " * 10 + "</body></html>", headers={"ETag": '"a1"'})
    memory = _memory(tmp_path)
    config = RunConfig(render="http", max_pages=50, max_depth=3)
    first, _ = _crawl(site.url("/"), memory, config, _options())
    assert site.url("/a") in [page.requested_url for page in first]
    site.page("/robots.txt", "User-agent: *\nDisallow: /a\n", content_type="text/plain")
    again, stats = _crawl(site.url("/"), memory, config, _options())
    assert site.url("/a") not in [page.requested_url for page in again]
    assert stats.skipped.get("robots") == 1


def test_a_memory_that_fails_costs_only_bandwidth(demo_copy: Path, tmp_path: Path) -> None:
    """A page memory whose database has no page_cache table: every lookup fails, every page is fetched in full."""
    broken = PageCache(get_engine(f"sqlite:///{tmp_path / 'empty.db'}"), "test-1", render="auto")
    config = RunConfig(render="http", max_pages=1000, max_depth=20)
    with serve_site(demo_copy) as site:
        plain, _ = _crawl(site.url("/"), None, config, _options())
        pages, stats = [], None
        with crawl(site.url("/"), config, _options(), memory=broken) as running:
            pages = list(running)
            stats = running.stats
    assert {page.url for page in pages} == {page.url for page in plain}
    assert stats.pages_http == len(pages) and stats.pages_not_modified == 0


BROWSER = next((path for path in BROWSER_CANDIDATES if os.path.exists(path)), None)


@pytest.mark.skipif(BROWSER is None, reason="needs Debian Chromium (scripts/ensure-system.sh)")
def test_a_page_that_needed_the_browser_is_not_rendered_again_when_unchanged(demo_copy: Path, tmp_path: Path) -> None:
    memory = _memory(tmp_path)
    config = RunConfig(render="auto", max_pages=1000, max_depth=20)
    with serve_site(demo_copy) as site:
        first, first_stats = _crawl(site.url("/"), memory, config, _options(browser_path=BROWSER))
        again, stats = _crawl(site.url("/"), memory, config, _options(browser_path=BROWSER))
    assert first_stats.pages_rendered > 0
    assert stats.pages_rendered == 0 and stats.browser_launches == 0
    rendered_before = {page.url for page in first if page.rendered}
    assert {page.url for page in again if page.rendered} == rendered_before  # reused as what they were
    assert {page.url for page in again} == {page.url for page in first}



@dataclass
class BrowserRecrawl:
    """A small demo site without a sitemap (no `<lastmod>` shortcut: a re-crawl must revalidate every page),
    served, with a fresh page memory; `crawl()` crawls it from its home page with `render=browser`."""

    root: Path
    site: SiteServer
    memory: PageCache

    def crawl(self) -> tuple[list[Page], CrawlStats]:
        config = RunConfig(render="browser", max_pages=1000, max_depth=20)
        return _crawl(self.site.url("/"), self.memory, config, _options(browser_path=BROWSER))


@pytest.fixture
def browser_recrawl(tmp_path: Path) -> Iterator[BrowserRecrawl]:
    root = tmp_path / "site"
    build_demo_site(root, limit=12, sitemap=None)
    with serve_site(root) as site:
        yield BrowserRecrawl(root, site, _memory(tmp_path))


@pytest.mark.browser
@pytest.mark.skipif(BROWSER is None, reason="needs Debian Chromium (scripts/ensure-system.sh)")
def test_render_browser_keeps_validators_and_an_unchanged_recrawl_renders_nothing(
    browser_recrawl: BrowserRecrawl,
) -> None:
    site, memory = browser_recrawl.site, browser_recrawl.memory
    first, first_stats = browser_recrawl.crawl()
    first_bytes = site.bytes_sent
    site.reset_counters()
    again, stats = browser_recrawl.crawl()
    again_bytes = site.bytes_sent
    statuses = site.statuses()
    sent_whole = [path for _, path, status in site.log if status != 304]

    assert first_stats.pages_rendered == len(first) > 10 and first_stats.pages_http == 0
    home = memory.recall(first[0].requested_url)
    # The browser's response for the document is kept like a plain fetch's: its ETag, and the server's Date
    # (whole seconds; our own clock would have microseconds).
    assert home is not None and home.rendered and home.validators is not None and home.validators.etag
    assert home.fetched_at.microsecond == 0
    assert stats.pages_rendered == 0 and stats.browser_launches == 0 and stats.pages_http == 0
    assert stats.pages_not_modified == len(again) and statuses[304] >= len(again)
    assert {page.url for page in again} == {page.url for page in first}  # the same reach
    assert all(page.reused is not None and page.rendered for page in again)  # reused as what they were
    # Every page answered 304: nothing else is answered in full but robots.txt and the (missing) sitemap.
    assert set(sent_whole) <= {"/robots.txt", "/sitemap.xml"}, sent_whole
    # On this 12-activity site a 304's headers weigh ~0.3 kB against ~2.8 kB pages: 36 of them are ~0.1 of the
    # first crawl's bytes by themselves (the bench's 531-page demo site: 0.047).
    assert again_bytes <= 0.12 * first_bytes, (again_bytes, first_bytes)


@pytest.mark.browser
@pytest.mark.skipif(BROWSER is None, reason="needs Debian Chromium (scripts/ensure-system.sh)")
def test_render_browser_renders_a_changed_page_again_and_reuses_the_rest(browser_recrawl: BrowserRecrawl) -> None:
    site, memory = browser_recrawl.site, browser_recrawl.memory
    first, _ = browser_recrawl.crawl()
    before = memory.recall(first[0].requested_url)
    html = (browser_recrawl.root / "index.html").read_text("utf-8")
    write_page(browser_recrawl.root, "/", html.replace("</h1>", " (new)</h1>", 1))  # a new ETag
    site.reset_counters()
    again, stats = browser_recrawl.crawl()
    home_answers = [status for _, path, status in site.log if path == "/"]

    home = next(page for page in again if page.requested_url == first[0].requested_url)
    assert home.reused is None and home.rendered and "(new)</h1>" in home.html
    assert stats.pages_rendered == 1
    assert all(page.reused is not None for page in again if page is not home)
    # Asked for once: the conditional request's 200 is the document the browser renders (not downloaded twice).
    assert home_answers == [200]
    after = memory.recall(home.requested_url)
    assert before is not None and after is not None and before.validators and after.validators
    assert after.validators.etag != before.validators.etag  # the new version is what the next crawl asks about


SCRIPT_BUILT = """<html><head><title>Spa</title></head><body><div id="root"></div>
<script>
  document.getElementById('root').innerHTML = '<h1>Toddler Music Morning</h1><p>Saturday 10am at the library</p>';
</script></body></html>"""


@pytest.mark.browser
@pytest.mark.skipif(BROWSER is None, reason="needs Debian Chromium (scripts/ensure-system.sh)")
def test_pages_auto_mode_renders_without_a_plain_fetch_are_revalidated_too(site, tmp_path: Path) -> None:
    """Once a host's pages needed the browser, auto mode renders the rest directly (no plain fetch to take
    validators from): they keep the browser's, so the next crawl asks for them instead of rendering them."""
    pages = [f"/js{i}" for i in range(3)]
    site.html("/", links=pages)
    for number, path in enumerate(pages):
        _revalidating(site, path, SCRIPT_BUILT, f'"js{number}"')
    memory = _memory(tmp_path)
    config = RunConfig(render="auto", max_pages=50, max_depth=1)
    options = _options(browser_path=BROWSER, learn_after=1, max_concurrency=1)
    first, first_stats = _crawl(site.url("/"), memory, config, options)
    assert first_stats.pages_rendered == 3
    assert [len(site.requested(path)) for path in pages] == [1, 1, 1]  # /js1 and /js2 only by the browser
    site.hits.clear()
    again, stats = _crawl(site.url("/"), memory, config, options)

    assert stats.pages_rendered == 0 and stats.browser_launches == 0
    reused = {page.requested_url for page in again if page.reuse_reason == "not_modified"}
    assert reused == {site.url(path) for path in pages}
    assert all(page.rendered for page in again if page.reused is not None)


SPA_SHELL = """<html><head><title>Spa</title><script src="/app.js"></script></head>
<body><div id="root"></div></body></html>"""
SPA_APP = """fetch('/api/events.json').then(function (r) { return r.json(); }).then(function (events) {
  document.getElementById('root').innerHTML = events.map(function (e) {
    return '<article><h1>' + e.name + '</h1><p>' + e.when + ' at the library, for the whole family</p></article>';
  }).join('');
});"""


def _versioned(site, path: str, content_type: str, version: dict[str, str]) -> None:  # noqa: ANN001 - conftest Site
    """A route serving `version["body"]`, answering If-None-Match against `version["etag"]` like a static host
    (no "etag" key: the resource carries no validators at all). Change the dict to publish a new version."""

    def handler(request):  # noqa: ANN001, ANN202
        etag = version.get("etag")
        if etag and request.headers.get("if-none-match") == etag:
            return 304, {"ETag": etag}, b""
        return 200, {"Content-Type": content_type, **({"ETag": etag} if etag else {})}, version["body"].encode()

    site.route(path, handler)


def _spa(site, events: dict[str, str]) -> None:  # noqa: ANN001 - conftest Site
    """A home page linking to /spa: an HTML shell whose script draws the activities from /api/events.json."""
    site.html("/", links=["/spa"])
    _versioned(site, "/spa", "text/html; charset=utf-8", {"body": SPA_SHELL, "etag": '"shell-1"'})
    _versioned(site, "/app.js", "text/javascript", {"body": SPA_APP, "etag": '"app-1"'})
    _versioned(site, "/api/events.json", "application/json", events)


def _events(*names: str) -> str:
    return json.dumps([{"name": name, "when": "Saturday 10am"} for name in names])


@pytest.mark.browser
@pytest.mark.skipif(BROWSER is None, reason="needs Debian Chromium (scripts/ensure-system.sh)")
def test_a_rendered_page_whose_scripts_data_changed_is_rendered_again(site, tmp_path: Path) -> None:
    """A single-page app's shell never changes, so its 304 says nothing about the activities its script fetches:
    the data is asked about too, and a new event is found, not silently missed by reusing the old page."""
    events = {"body": _events("Toddler Music Morning"), "etag": '"events-1"'}
    _spa(site, events)
    memory = _memory(tmp_path)
    config = RunConfig(render="auto", max_pages=50, max_depth=1)
    options = _options(browser_path=BROWSER)

    first, first_stats = _crawl(site.url("/"), memory, config, options)
    spa = next(page for page in first if page.requested_url == site.url("/spa"))
    assert spa.rendered and "Toddler Music Morning" in spa.html and first_stats.pages_rendered == 1
    entry = memory.recall(site.url("/spa"))
    assert entry is not None and entry.subresources is not None
    assert {(loaded.url, loaded.validators.etag) for loaded in entry.subresources} == {
        (site.url("/app.js"), '"app-1"'), (site.url("/api/events.json"), '"events-1"')}

    # Unchanged: the shell, its script and its data each answer 304; nothing is rendered.
    site.hits.clear()
    again, stats = _crawl(site.url("/"), memory, config, options)
    assert stats.pages_rendered == 0 and stats.browser_launches == 0 and stats.pages_scripts_changed == 0
    assert next(page for page in again if page.requested_url == site.url("/spa")).reuse_reason == "not_modified"
    assert [hit.headers.get("if-none-match") for hit in site.requested("/api/events.json")] == ['"events-1"']

    # A new event in the data, the shell byte for byte the same: the page is rendered again and the event found.
    events.update(body=_events("Toddler Music Morning", "Teen Coding Club"), etag='"events-2"')
    third, stats = _crawl(site.url("/"), memory, config, options)
    spa = next(page for page in third if page.requested_url == site.url("/spa"))
    assert spa.reused is None and spa.rendered and "Teen Coding Club" in spa.html
    assert stats.pages_scripts_changed == 1 and stats.pages_rendered == 1

    # ... and the new version is what the next crawl asks about: unchanged again, nothing rendered.
    fourth, stats = _crawl(site.url("/"), memory, config, options)
    assert stats.pages_rendered == 0 and stats.pages_scripts_changed == 0
    assert next(page for page in fourth if page.requested_url == site.url("/spa")).reused is not None


@pytest.mark.browser
@pytest.mark.skipif(BROWSER is None, reason="needs Debian Chromium (scripts/ensure-system.sh)")
def test_a_rendered_page_whose_data_cannot_be_revalidated_is_rendered_on_every_crawl(site, tmp_path: Path) -> None:
    """Data served without ETag or Last-Modified cannot be asked about: the page is rendered each time (a
    download more, never a stale page)."""
    _spa(site, {"body": _events("Toddler Music Morning")})
    memory = _memory(tmp_path)
    config = RunConfig(render="auto", max_pages=50, max_depth=1)
    options = _options(browser_path=BROWSER)
    _crawl(site.url("/"), memory, config, options)
    entry = memory.recall(site.url("/spa"))
    assert entry is not None and entry.rendered and entry.subresources is None

    again, stats = _crawl(site.url("/"), memory, config, options)
    spa = next(page for page in again if page.requested_url == site.url("/spa"))
    assert spa.reused is None and spa.rendered and "Toddler Music Morning" in spa.html
    assert stats.pages_scripts_changed == 1 and stats.pages_rendered == 1


def test_a_stored_entry_round_trips_through_the_table(tmp_path: Path) -> None:
    memory = _memory(tmp_path)
    fetched = datetime(2026, 11, 30, 10, tzinfo=UTC)
    entry = Remembered(
        url="http://s/a", page_url="http://s/a-canonical", final_url="http://s/a/", validators=Validators('"x"', None),
        fetched_at=fetched, links=["http://s/b"], pagination=["http://s/b"], rendered=True,
        activities=[{"name": "Park"}],
    )
    memory.remember(entry)
    assert memory.recall("http://s/a") is None  # buffered until flushed
    memory.flush()
    assert memory.recall("http://s/a") == entry
    assert PageCache(memory.engine, "test-2", render=memory.render).recall("http://s/a") is None  # another extractor's rows: not used


def _revalidating(site, path: str, body: str, etag: str) -> None:  # noqa: ANN001 - the conftest Site
    """A route that answers If-None-Match like a static host."""
    data = body.encode()

    def handler(request):  # noqa: ANN001, ANN202
        if request.headers.get("if-none-match") == etag:
            return 304, {"ETag": etag}, b""
        return 200, {"Content-Type": "text/html; charset=utf-8", "ETag": etag}, data

    site.route(path, handler)


def test_a_remembered_duplicate_is_not_reused_when_its_original_is_not_crawled(site, tmp_path: Path) -> None:
    """First crawl: /a?ref=x carries the page (canonical /a) and /a is its duplicate. Next crawl /a?ref=x is no
    longer linked: /a must give the page's activities (its original's row), not the duplicate's empty list."""
    text = "Family fun for everyone this weekend. " * 8
    page_a = f'<html><head><link rel="canonical" href="/a"></head><body>{text}</body></html>'
    _revalidating(site, "/a?ref=x", page_a, '"a"')
    slow = {"on": True}

    def slow_a(request):  # noqa: ANN001, ANN202 - answers after /a?ref=x in the first crawl, whatever the load
        if slow["on"]:
            time.sleep(0.5)
        if request.headers.get("if-none-match") == '"a"':
            return 304, {"ETag": '"a"'}, b""
        return 200, {"Content-Type": "text/html; charset=utf-8", "ETag": '"a"'}, page_a.encode()

    site.route("/a", slow_a)
    _revalidating(site, "/b", f'<html><body>{text}</body></html>', '"b"')
    site.html("/", links=["/a?ref=x", "/a", "/b"])
    memory = _memory(tmp_path)
    config = RunConfig(render="http", max_pages=50, max_depth=5)
    first, stats = _crawl(site.url("/"), memory, config, _options())
    assert [page.requested_url for page in first if page.url == site.url("/a")] == [site.url("/a?ref=x")]
    assert stats.skipped.get("duplicate") == 1

    site.html("/", links=["/a", "/b"])
    slow["on"] = False
    site.hits.clear()
    again, _ = _crawl(site.url("/"), memory, config, _options())
    page = next(page for page in again if page.url == site.url("/a"))
    # reused as the page it duplicated (a 304 for /a itself), with that page's activities, not the empty list
    # its own row holds as a duplicate
    assert page.requested_url == site.url("/a") and page.reuse_reason == "not_modified"
    assert page.reused.activities == [{"name": site.url("/a")}]
    assert next(page for page in again if page.url == site.url("/b")).reuse_reason == "not_modified"
