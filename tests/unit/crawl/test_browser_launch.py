"""A browser that cannot start (issue 29): real failed launches, not mocks.

The "browser" here is an executable that is not Chromium, which Playwright really starts and which really exits
at once (as a Chromium missing a system library does); the driver failure is Playwright's real driver start with
PLAYWRIGHT_NODEJS_PATH naming such an executable. The real missing `libatomic.so.1` inside the container image is
in tests/e2e/test_docker.py.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from harvest.crawl.browser import MAX_LAUNCH_ATTEMPTS
from harvest.settings import HarvestSettings

CHROMIUM = HarvestSettings().browser_path or "/usr/bin/chromium"
MISSING_LIBRARY = "error while loading shared libraries: libatomic.so.1: cannot open shared object file"
JS_PAGE = """<html><head><title>Spa</title></head><body><div id="root"></div>
<script>document.getElementById('root').innerHTML = '<h1>Toddler Music Morning</h1>';</script></body></html>"""


def executable(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


@pytest.fixture
def broken_browser(tmp_path: Path) -> tuple[str, Path]:
    """(path, launch log): a non-browser executable that logs each start, prints what the dynamic loader prints
    for a missing library, and exits 127 as the loader does."""
    launches = tmp_path / "launches.log"
    path = executable(tmp_path / "not-chromium", f'echo launched >> "{launches}"\necho "not-chromium: {MISSING_LIBRARY}" >&2\nexit 127\n')
    return path, launches


def test_pages_built_by_scripts_fail_with_the_launch_cause_and_the_launch_is_not_retried_per_page(
    site, run_crawl, cfg, broken_browser
) -> None:
    path, launches = broken_browser
    scripted = [f"/spa{i}" for i in range(4)]
    site.html("/", links=[*scripted, "/plain"])
    site.html("/plain")
    for page in scripted:
        site.page(page, JS_PAGE)

    result = run_crawl(site.url("/"), cfg(render="auto"), browser_path=path, max_concurrency=2)

    assert sorted(result.paths()) == ["/", "/plain"]  # plain pages are crawled as ever
    stats = result.stats
    assert stats.pages_unrendered == len(scripted) == len(stats.failed_urls)
    assert stats.pages_rendered == 0 and stats.browser_launches == 0
    assert stats.browser_error is not None
    assert stats.browser_error.startswith(f"could not launch Chromium at {path}: ")
    assert f"the browser printed: not-chromium: {MISSING_LIBRARY}" in stats.browser_error
    for page in scripted:
        reason = result.failed(page).reason
        assert reason == f"needs a browser to render its content, and the browser could not start: {stats.browser_error}"
    # Two launches in a row failed: the other pages fail at once instead of each paying for a launch.
    assert len(launches.read_text().splitlines()) == MAX_LAUNCH_ATTEMPTS < len(scripted)


def test_pages_sent_to_the_browser_by_the_learned_rule_are_fetched_plainly_when_it_cannot_start(
    site, run_crawl, cfg, tmp_path
) -> None:
    """After one page needed scripts, the host's pages go straight to the browser (learn_after=1). While that
    browser is failing to start (each launch takes a second here), those pages were never shown to need scripts:
    they are fetched over plain HTTP instead of being lost with the one that did."""
    slow = executable(tmp_path / "slow-not-chromium", f'sleep 1\necho "not-chromium: {MISSING_LIBRARY}" >&2\nexit 127\n')
    plain = [f"/plain{i}" for i in range(3)]
    site.html("/", links=["/spa", *plain])
    site.page("/spa", JS_PAGE)
    for page in plain:
        site.html(page)

    result = run_crawl(site.url("/"), cfg(render="auto"), browser_path=slow, learn_after=1, max_concurrency=1)

    assert sorted(result.paths()) == ["/", *plain]
    assert [failure.url for failure in result.stats.failed_urls] == [site.url("/spa")]
    assert result.stats.pages_unrendered == 1
    assert [len(site.requested(page)) for page in plain] == [1, 1, 1]  # each fetched once, after the failed render


def test_a_driver_that_cannot_start_is_named_with_what_it_printed(
    site, run_crawl, cfg, tmp_path, monkeypatch
) -> None:
    """Playwright's exception says only "Connection closed while reading from the driver"; the cause is what the
    driver printed, which the crawl gets by starting the driver itself."""
    node = executable(tmp_path / "node", f'echo "node: {MISSING_LIBRARY}" >&2\nexit 127\n')
    monkeypatch.setenv("PLAYWRIGHT_NODEJS_PATH", node)
    site.html("/", links=["/spa"])
    site.page("/spa", JS_PAGE)

    result = run_crawl(site.url("/"), cfg(render="auto"), browser_path=CHROMIUM)

    assert result.stats.pages_unrendered == 1
    assert result.stats.browser_error == f"Playwright's driver did not start: {node}: node: {MISSING_LIBRARY}"
    assert result.paths() == ["/"]


def test_no_browser_at_all_is_counted_the_same_way(site, run_crawl, cfg) -> None:
    site.html("/", links=["/spa"])
    site.page("/spa", JS_PAGE)

    result = run_crawl(site.url("/"), cfg(render="auto"), browser_path="/nonexistent/chromium")

    assert result.stats.pages_unrendered == 1
    assert result.stats.browser_error == "no Chromium found: set HARVEST_BROWSER_PATH (not an executable: '/nonexistent/chromium')"

    unset = run_crawl(site.url("/"), cfg(render="auto"), browser_path=None)
    assert unset.stats.pages_unrendered == 1
    assert unset.stats.browser_error == "no Chromium found: set HARVEST_BROWSER_PATH"


def selfcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harvest.crawl.selfcheck", *args], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "HARVEST_BROWSER_PATH": CHROMIUM})


@pytest.mark.browser
def test_the_selfcheck_renders_a_script_built_page_with_the_real_browser() -> None:
    done = selfcheck()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"browser OK: Chromium at {CHROMIUM} rendered a page built by a script in ")


def test_the_selfcheck_fails_with_the_cause_for_a_browser_that_cannot_start(broken_browser) -> None:
    path, launches = broken_browser
    done = selfcheck(path)
    assert done.returncode == 1
    assert f"browser check FAILED ({path}): could not launch Chromium at {path}: " in done.stderr
    assert MISSING_LIBRARY in done.stderr
    assert launches.read_text().splitlines() == ["launched"]
