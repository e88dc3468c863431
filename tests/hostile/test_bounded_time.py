"""Bounded time against a hostile site (issue 16): no URL holds a fetch slot past its budget, a slow body is
cut and not retried, and a crawl stops at `max_crawl_seconds` with what it has, saying what was left.

Bounds are stated per test: the per-URL budget is twice the timeout (1 s here, so 2 s), each cap adds
1.5 s for a loaded 2-core machine. Without the budget the drip alone held a slot for 4 attempts x 3 s.
"""

from __future__ import annotations

import time

from harvest.crawl.page import CrawlStats
from harvest.models import RunConfig
from harvest.settings import HarvestSettings
from harvest.stages.collect import collect_raw_activities
from harvest.storage.local import LocalStore
from testkit.hostile_site import HostileSite, LoopbackHandler, drip, stall
from tests.hostile.support import make_config
from tests.hostile.test_hostile_sites import event_page, names

TIMEOUT_S = 1.0
BUDGET_S = 2 * TIMEOUT_S
SLACK_S = 1.5


def _slow_redirect(to: str, after_s: float):  # noqa: ANN202 - a route
    def route(req: LoopbackHandler) -> None:
        time.sleep(after_s)
        req.send_bytes(302, b"", "text/plain", {"Location": to})

    return route


def test_drip_stall_and_slow_redirects_each_end_within_the_per_url_budget(site, run_crawl) -> None:
    # A 500-byte page at 20 bytes/s (25 s), a server that answers after 30 s, and four redirect hops that
    # each answer just inside the timeout (0.7 s, so 2.8 s in all): every one is under any per-read timeout.
    site.route("/drip", drip(b"<html><body>" + b"x" * 500 + b"</body></html>", every_s=0.05))
    site.route("/stall", stall(30.0))
    for hop in range(4):
        site.route(f"/hop{hop}", _slow_redirect(f"/hop{hop + 1}", 0.7))
    site.page("/hop4", event_page("Too far"))
    site.page("/", event_page("Start", links=["/drip", "/stall", "/hop0", "/good"]))
    site.page("/good", event_page("Good"))

    started = time.monotonic()
    result = run_crawl(site.url("/"), timeout_s=TIMEOUT_S, retries=3, backoff_s=0.02)
    elapsed = time.monotonic() - started

    assert "body too slow" in result.failed("/drip").reason and "not retried" in result.failed("/drip").reason
    assert len(site.hits("/drip")) == 1  # a slow body is not retried
    assert "per-URL budget of 2s" in result.failed("/stall").reason
    assert len(site.hits("/stall")) == 2  # one timeout (1 s), a retry, and the budget is spent
    assert "per-URL budget of 2s is spent" in result.failed("/hop0").reason
    assert not site.hits("/hop4")
    assert names(result.pages) == {"Start", "Good"}
    # All three run side by side: the crawl ends one budget after the start page (plus slack), where
    # before the drip alone took 4 x 3 s.
    assert elapsed < BUDGET_S + SLACK_S, elapsed


def test_a_retry_after_longer_than_the_budget_is_not_waited_for(site, run_crawl) -> None:
    site.page("/busy", "<html><body>busy</body></html>", status=503, headers={"Retry-After": "20"})
    site.page("/", event_page("Start", links=["/busy"]))

    started = time.monotonic()
    result = run_crawl(site.url("/"), timeout_s=TIMEOUT_S, retries=3)
    elapsed = time.monotonic() - started

    assert (result.failed("/busy").status, result.failed("/busy").reason) == (503, "HTTP 503")
    assert len(site.hits("/busy")) == 1
    assert elapsed < BUDGET_S + SLACK_S, elapsed


def _slow_site(site: HostileSite, pages: int, each_s: float) -> None:
    for number in range(pages):
        body = event_page(f"Activity {number}").encode()
        site.route(f"/p{number}", stall(each_s, body))
    site.page("/", event_page("Start", links=[f"/p{number}" for number in range(pages)]))


def test_the_crawl_deadline_stops_the_crawl_mid_site_and_counts_what_was_left(site, run_crawl) -> None:
    # 30 pages of 0.4 s each, two at a time: 6 s of crawling, stopped after 1.5 s.
    _slow_site(site, 30, 0.4)
    config = make_config(max_crawl_seconds=1.5)

    started = time.monotonic()
    result = run_crawl(site.url("/"), config, timeout_s=TIMEOUT_S, per_host_concurrency=2, max_concurrency=2)
    elapsed = time.monotonic() - started

    stats: CrawlStats = result.stats
    left = stats.unfollowed["max_crawl_seconds"]
    assert 1 <= stats.pages_fetched < 31
    assert stats.pages_fetched + left["count"] == 31  # every known URL is either fetched or counted as left
    assert 0 <= stats.deadline_cut_in_flight <= 2
    assert 1 <= len(left["examples"]) <= 5
    assert len(result.pages) == stats.pages_fetched  # the pages fetched before the deadline are all handed on
    assert elapsed < 1.5 + SLACK_S, elapsed


def test_the_collect_stage_goes_on_after_the_deadline_and_warns_with_counts(site, tmp_path) -> None:
    _slow_site(site, 30, 0.4)
    settings = HarvestSettings(allow_private_networks=True, request_timeout_seconds=TIMEOUT_S,
                               per_host_concurrency=2, crawl_max_concurrency=2, browser_path=None)
    store = LocalStore(tmp_path / "store")
    config = RunConfig(max_pages=100, max_depth=2, render="http", max_crawl_seconds=1.5)

    result = collect_raw_activities(store, "r1", site.url("/"), config, settings)

    fetched = result.stats.details["pages_fetched"]
    assert result.stats.details["crawl_deadline_hit"] is True
    assert result.stats.details["unfollowed_max_crawl_seconds"] == 31 - fetched
    assert result.stats.items_out >= 1  # the activities of the pages fetched are written
    warning = next(w for w in result.warnings if w.startswith("crawl deadline hit"))
    assert f"max_crawl_seconds=1.5 passed after {fetched} page(s); {31 - fetched} URL(s) left unfetched" in warning
