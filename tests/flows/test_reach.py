"""Crawl reach through the whole flow (issue 11): a listing paginated over 12 pages and a site reachable only
through its sitemap are crawled completely with the default config; a limit that cuts links off says so in
the run summary and the UI summary artifact."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import UUID

import pytest

from harvest.models import RunConfig
from testkit.demo_site import SiteServer, build_demo_site, serve_site


def _serve(tmp_path_factory: pytest.TempPathFactory, name: str, **variant: object) -> Iterator[SiteServer]:
    root = tmp_path_factory.mktemp(name)
    info = build_demo_site(root, limit=45, per_page=4, **variant)  # type: ignore[arg-type]
    with serve_site(root) as server:
        server.info = info
        yield server


@pytest.fixture(scope="module")
def paginated_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteServer]:
    """12 listing pages linked only one to the next ("Older »"), no tag pages, no sitemap."""
    yield from _serve(tmp_path_factory, "paginated", pagination="next", tag_pages=False, sitemap=None)


@pytest.fixture(scope="module")
def sitemap_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteServer]:
    """No listing and no tag pages: past the home page's six featured links only /sitemap.xml (not named
    in robots.txt) lists the activities."""
    yield from _serve(tmp_path_factory, "sitemap", pagination="none", tag_pages=False, sitemap="root")


def _scrape(url: str, **config: object):  # noqa: ANN202 - a RunSummary
    from flows.scrape import scrape_website

    state = scrape_website(url=url, config=RunConfig(**config), return_state=True)
    assert state.is_completed(), state.message
    return state.result()


def _unfetched(server: SiteServer) -> list[str]:
    assert server.info is not None
    return [path for path in server.info.activity_pages if not server.requests[path]]


def test_every_activity_of_a_12_page_listing_is_reached_with_the_default_config(harvest_env, paginated_site) -> None:
    summary = _scrape(paginated_site.url("/"))
    assert _unfetched(paginated_site) == []
    # 45 pages; the source data holds two same-name-same-place duplicates, which standardize merges.
    assert summary.activities_processed >= 42
    assert summary.unfollowed_links == {}


def test_sitemap_seeds_the_frontier(harvest_env, sitemap_site) -> None:
    summary = _scrape(sitemap_site.url("/"), max_depth=1)
    assert sitemap_site.requests["/sitemap.xml"] >= 1
    assert _unfetched(sitemap_site) == []
    assert summary.activities_processed >= 42


def test_a_limit_that_leaves_links_unfollowed_is_reported(harvest_env, paginated_site) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    summary = _scrape(paginated_site.url("/"), max_pages=20)

    entry = summary.unfollowed_links["max_pages"]
    assert entry["count"] > 0
    assert 1 <= len(entry["examples"]) <= 5
    assert all(example.startswith(paginated_site.base_url) for example in entry["examples"])
    assert any(w.startswith("crawl: max_pages=20 stopped the crawl with") for w in summary.warnings)
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(summary.run_id)]))
        )
    markdown = next(a.data for a in found if (a.key or "").endswith("-summary"))
    assert "## Unfollowed links" in markdown
    assert f"max\\_pages: {entry['count']} link(s)" in markdown
    assert entry["examples"][0] in markdown
