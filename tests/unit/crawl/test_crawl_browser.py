"""Rendering with the real Chromium: auto/browser/http modes, resource blocking, the SSRF guard in the browser.

Chromium is launched through a wrapper script that records each launch, so "never launches a browser"
is observed rather than assumed.
"""

from __future__ import annotations

import gzip
import os
import stat
import time
from pathlib import Path

import pytest

from harvest.settings import HarvestSettings

CHROMIUM = HarvestSettings().browser_path or "/usr/bin/chromium"  # what a run uses: the headless shell if installed

JS_PAGE = """<html><head><title>Spa</title><link rel="stylesheet" href="/style.css"></head>
<body><div id="root"></div><img src="/pic.png">
<script>
  document.getElementById('root').innerHTML =
    '<h1>Toddler Music Morning</h1><p>Saturday 10am at the library</p><a href="/from-js">more events</a>';
</script></body></html>"""


@pytest.fixture
def chromium(tmp_path: Path) -> tuple[str, Path]:
    """(executable path, launch log): a wrapper that logs each launch and then execs the real Chromium."""
    launches = tmp_path / "launches.log"
    wrapper = tmp_path / "chromium-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho launched >> "{launches}"\nexec {CHROMIUM} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(wrapper), launches


def _launch_count(launches: Path) -> int:
    return len(launches.read_text().splitlines()) if launches.exists() else 0


def _browser_hits(site, path: str) -> list:
    """Requests for `path` made by Chromium (it sends Sec-Fetch-Mode; httpx does not)."""
    return [hit for hit in site.requested(path) if "sec-fetch-mode" in hit.headers]


def _http_hits(site, path: str) -> list:
    return [hit for hit in site.requested(path) if "sec-fetch-mode" not in hit.headers]


def test_http_mode_never_launches_a_browser(site, run_crawl, cfg, chromium) -> None:
    path, launches = chromium
    site.html("/", links=["/spa"])
    site.page("/spa", JS_PAGE)

    result = run_crawl(site.url("/"), cfg(render="http"), browser_path=path)

    spa = next(page for page in result.pages if page.url.endswith("/spa"))
    assert not spa.rendered and "Toddler Music Morning" not in spa.html.split("<script>")[0]
    assert _launch_count(launches) == 0
    assert result.stats.browser_launches == 0 and result.stats.pages_rendered == 0


@pytest.mark.browser
def test_auto_mode_renders_a_script_built_page(site, run_crawl, cfg, chromium) -> None:
    path, launches = chromium
    site.html("/", links=["/spa", "/plain"])
    site.page("/spa", JS_PAGE)
    site.html("/plain")
    site.html("/from-js")

    result = run_crawl(site.url("/"), cfg(render="auto"), browser_path=path)

    by_path = {page.url.rsplit("/", 1)[1]: page for page in result.pages}
    spa = by_path["spa"]
    assert spa.rendered
    assert "<h1>Toddler Music Morning</h1>" in spa.html
    assert "from-js" in by_path and not by_path["from-js"].rendered  # a link only the script created
    assert not by_path["plain"].rendered and not by_path[""].rendered
    assert result.stats.pages_rendered == 1 and result.stats.pages_http == 3
    assert _launch_count(launches) == 1 == result.stats.browser_launches
    # Only the DOM matters: no image or stylesheet was downloaded by the browser.
    assert site.requested("/pic.png") == [] and site.requested("/style.css") == []
    # The page was fetched once: the browser was served the plain HTTP response instead of asking again.
    assert _browser_hits(site, "/spa") == [] and len(_http_hits(site, "/spa")) == 1


@pytest.mark.browser
def test_a_rendered_page_is_served_to_the_browser_as_it_was_fetched(site, run_crawl, cfg, chromium) -> None:
    """Reached through a redirect, compressed and not UTF-8: the browser still gets the page as a browser would
    have fetched it (decoded body, its charset), without a second request for the redirect or the page."""
    path, _ = chromium
    latin1_page = JS_PAGE.replace("Toddler Music Morning", "Cr\u00e8che caf\u00e9 morning").replace(
        "<title>Spa</title>", "<title>Cr\xe8che</title>"
    )
    site.html("/", links=["/go"])
    site.redirect("/go", "/spa-latin1")
    site.page(
        "/spa-latin1",
        gzip.compress(latin1_page.encode("latin-1")),
        content_type="text/html; charset=iso-8859-1",
        headers={"Content-Encoding": "gzip"},
    )
    site.html("/from-js")

    result = run_crawl(site.url("/"), cfg(render="auto"), browser_path=path)

    page = next(page for page in result.pages if page.url.endswith("/spa-latin1"))
    assert page.rendered and page.requested_url.endswith("/go")
    assert "<h1>Cr\xe8che caf\xe9 morning</h1>" in page.html and "<title>Cr\xe8che</title>" in page.html
    assert any(found.url.endswith("/from-js") for found in result.pages)
    assert _browser_hits(site, "/go") == [] and _browser_hits(site, "/spa-latin1") == []
    assert len(_http_hits(site, "/spa-latin1")) == 1


@pytest.mark.browser
def test_auto_mode_learns_to_render_a_host_directly(site, run_crawl, cfg, chromium) -> None:
    path, _ = chromium
    pages = [f"/js{i}" for i in range(3)]
    site.html("/", links=pages)
    for page in pages:
        site.page(page, JS_PAGE)

    result = run_crawl(
        site.url("/"), cfg(render="auto", max_depth=1), browser_path=path, learn_after=1, max_concurrency=1
    )

    assert all(page.rendered for page in result.pages if "/js" in page.url)
    # The first page needed the browser after an HTTP fetch (whose response the browser was served); the
    # host's later pages go straight to the browser.
    assert [len(_http_hits(site, page)) for page in pages] == [1, 0, 0]
    assert [len(_browser_hits(site, page)) for page in pages] == [0, 1, 1]


@pytest.mark.browser
def test_browser_mode_renders_everything_and_guards_every_request(site, run_crawl, cfg, chromium) -> None:
    path, launches = chromium
    site.page(
        "/",
        "<html><body><p>Home</p><a href='/old'>old</a><a href='/hop'>hop</a>"
        "<script>fetch('http://169.254.169.254/latest/meta-data/').catch(() => {});</script></body></html>",
    )
    site.redirect("/old", "/new")
    site.html("/new")
    site.redirect("/hop", "http://169.254.169.254/latest/meta-data/")

    result = run_crawl(site.url("/"), cfg(render="browser"), browser_path=path)

    assert sorted(result.urls) == [site.url("/"), site.url("/new")]
    assert all(page.rendered for page in result.pages)
    assert result.stats.pages_rendered == result.stats.pages_fetched == 2 and result.stats.pages_http == 0
    assert _http_hits(site, "/") == [] and len(_browser_hits(site, "/new")) == 1
    # The script's fetch() to the metadata address was aborted by the route handler...
    assert result.stats.skipped["browser_request_refused"] >= 1
    # ...and the redirect hop (which Playwright's routing never sees) was refused by the guard proxy.
    failure = next(f for f in result.stats.failed_urls if f.url.endswith("/hop"))
    assert "metadata" in failure.reason
    assert _launch_count(launches) == 1


def _script_page(script: str) -> str:
    """An SPA shell (empty mount point) whose content `script` builds: auto mode must render it."""
    return f"<html><head><title>Shell</title></head><body><div id='root'></div><script>{script}</script></body></html>"


@pytest.mark.browser
def test_a_page_is_read_once_its_scripts_have_finished_building_it(site, run_crawl, cfg, chromium) -> None:
    """Content that arrives late is waited for: after a slow JSON fetch, and in steps 40 ms apart, closer than the
    100 ms quiet window (each step resets it), as long as the page settles within the cap."""
    path, _ = chromium

    def slow_json(_request):  # noqa: ANN001, ANN202
        time.sleep(0.4)
        return 200, {"Content-Type": "application/json"}, b'{"title": "Puppet show at the library"}'

    site.html("/", links=["/fetches", "/steps"])
    site.route("/data.json", slow_json)
    site.page("/fetches", _script_page(
        "fetch('/data.json').then(r => r.json()).then(d => {"
        " document.getElementById('root').innerHTML = '<h1>' + d.title + '</h1>'; });"
    ))
    site.page("/steps", _script_page(
        "let step = 0; const root = document.getElementById('root');"
        "const next = () => { root.insertAdjacentHTML('beforeend', '<p>step ' + step + '</p>');"
        " if (++step < 6) setTimeout(next, 40); };"
        "next();"
    ))

    result = run_crawl(site.url("/"), cfg(render="auto"), browser_path=path)

    by_path = {page.url.rsplit("/", 1)[1]: page for page in result.pages}
    assert by_path["fetches"].rendered and "<h1>Puppet show at the library</h1>" in by_path["fetches"].html
    assert by_path["steps"].rendered and all(f"<p>step {n}</p>" in by_path["steps"].html for n in range(6))


@pytest.mark.browser
def test_a_page_whose_script_never_yields_fails_alone(site, run_crawl, cfg, chromium) -> None:
    """A script in an endless loop makes the page unable to answer: that page fails with a reason, the tab is
    dropped, and the crawl goes on (it used to wait for that page forever)."""
    path, _ = chromium
    site.html("/", links=["/busy", "/spa"])
    site.page("/busy", _script_page("window.addEventListener('load', () => setTimeout(() => { for (;;) {} }, 0));"))
    site.page("/spa", JS_PAGE)
    site.html("/from-js")

    started = time.monotonic()
    result = run_crawl(site.url("/"), cfg(render="auto"), browser_path=path, browser_pages=1)

    assert time.monotonic() - started < 30
    assert "stopped responding" in result.failed("/busy").reason
    spa = next(page for page in result.pages if page.url.endswith("/spa"))
    assert spa.rendered and "<h1>Toddler Music Morning</h1>" in spa.html
    assert not any(page.url.endswith("/busy") for page in result.pages)


def test_the_driver_compile_cache_goes_to_the_user_cache_unless_the_operator_chose(monkeypatch, tmp_path) -> None:
    from harvest.crawl.browser import use_node_compile_cache

    monkeypatch.delenv("NODE_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    use_node_compile_cache()
    assert os.environ["NODE_COMPILE_CACHE"] == str(tmp_path / "harvest" / "node-compile-cache")

    monkeypatch.setenv("NODE_COMPILE_CACHE", "/srv/node-cache")
    use_node_compile_cache()
    assert os.environ["NODE_COMPILE_CACHE"] == "/srv/node-cache"
