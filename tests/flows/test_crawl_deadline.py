"""The crawl deadline through the whole flow (issue 16): a site slower than `max_crawl_seconds` is crawled
until the deadline, the run goes on with the pages fetched and completes, and its summary says the deadline
was hit and how many URLs were left; also when it passes before the start page is in."""

from __future__ import annotations

from harvest.models import RunConfig
from testkit.hostile_site import HostileSite, stall
from tests.hostile.test_hostile_sites import event_page

PAGES = 20


def test_a_crawl_deadline_hit_mid_site_completes_the_run_and_says_what_was_left(harvest_env) -> None:
    from flows.scrape import scrape_website

    with HostileSite() as site:
        # 20 pages of 0.6 s each, 4 at a time: 3 s of crawling, stopped after 1 s.
        for number in range(PAGES):
            site.route(f"/p{number}", stall(0.6, event_page(f"Activity {number}").encode()))
        site.page("/", event_page("Start", links=[f"/p{number}" for number in range(PAGES)]))
        config = RunConfig(max_crawl_seconds=1.0, render="http", max_depth=1)
        state = scrape_website(url=site.url("/"), config=config, return_state=True)

    assert state.is_completed(), state.message
    summary = state.result()
    left = summary.unfollowed_links["max_crawl_seconds"]
    assert 1 <= left["count"] < PAGES + 1
    assert all(example.startswith(site.base_url) for example in left["examples"])
    warning = next(w for w in summary.warnings if "crawl deadline hit" in w)
    assert "max_crawl_seconds=1 passed after" in warning and f"{left['count']} URL(s) left unfetched" in warning
    # The pages fetched before the deadline went on through the run (the start page at least).
    assert 1 <= summary.activities_processed <= PAGES + 1 - left["count"]


def test_a_crawl_deadline_before_the_start_page_completes_the_run_with_nothing_and_says_so(harvest_env) -> None:
    from flows.scrape import scrape_website

    with HostileSite() as site:
        site.route("/", stall(5.0, event_page("Start").encode()))  # the deadline passes while it says nothing
        config = RunConfig(max_crawl_seconds=0.5, render="http", max_depth=1)
        state = scrape_website(url=site.url("/"), config=config, return_state=True)

    assert state.is_completed(), state.message
    summary = state.result()
    assert summary.activities_processed == 0
    assert summary.unfollowed_links["max_crawl_seconds"] == {"count": 1, "examples": [site.url("/")]}
    warning = next(w for w in summary.warnings if "crawl deadline hit" in w)
    assert "max_crawl_seconds=0.5 passed after 0 page(s); 1 URL(s) left unfetched (1 cut mid-fetch)" in warning
    assert any("no activities found" in w for w in summary.warnings), summary.warnings
