"""Progress while a run works (issue 11): the progress artifact moves during the crawl, not only between stages,
and harvest's own log lines reach the flow run's logs; both read back through the Prefect API."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from uuid import UUID

import pytest

from harvest.models import RunConfig
from testkit.demo_site import SiteServer, build_demo_site, serve_site


@pytest.fixture(scope="module")
def slow_listing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteServer]:
    root = tmp_path_factory.mktemp("progress-site")
    info = build_demo_site(root, limit=45, per_page=4, pagination="next", tag_pages=False, sitemap=None)
    # ~60 pages 0.3 s apart: an 18 s crawl however fast the machine, so the progress artifact (updated at most
    # every 2 s) has several readings to show while pages are still being fetched.
    (root / "robots.txt").write_text("User-agent: *\nDisallow: /private/\nCrawl-delay: 0.3\n", "utf-8")
    with serve_site(root) as server:
        server.info = info
        yield server


def test_progress_artifact_moves_during_the_crawl_and_harvest_logs_reach_the_run(harvest_env, slow_listing) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, LogFilter, LogFilterFlowRunId

    from flows.artifacts import artifact_key
    from flows.scrape import scrape_website

    outcome: dict[str, object] = {}

    def run() -> None:
        outcome["state"] = scrape_website(url=slow_listing.url("/"), config=RunConfig(), return_state=True)

    seen: list[tuple[float, str]] = []
    key = artifact_key("progress")
    began = time.time() - 1
    with get_client(sync_client=True) as client:
        client.read_artifacts(limit=1)  # the ephemeral API is up before the flow's thread needs it too
        thread = threading.Thread(target=run)
        thread.start()
        started = time.monotonic()
        while thread.is_alive() and time.monotonic() - started < 600:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            for artifact in found:  # this session's earlier runs share the key: only artifacts made since now
                if artifact.created and artifact.created.timestamp() >= began:
                    entry = (float(artifact.data), str(artifact.description))
                    if entry not in seen:
                        seen.append(entry)
            time.sleep(0.2)
        thread.join()
        state = outcome["state"]
        assert state.is_completed(), state.message  # type: ignore[attr-defined]
        run_id = state.result().run_id  # type: ignore[attr-defined]
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(run_id)])))

    seen = [(value, text) for value, text in seen if run_id in text]  # this run's artifact only
    during_crawl = [(value, text) for value, text in seen if 0 < value < 35 and "crawling" in text]
    assert len(during_crawl) >= 2, seen  # at least two distinct readings while pages were still being fetched
    values = [value for value, _ in seen]
    assert values == sorted(values), seen  # it only moves forward
    assert any("pages fetched" in text and "activities found" in text for _, text in during_crawl)
    harvest_lines = [log for log in logs if log.name.startswith("harvest.")]
    assert any(log.name == "harvest.crawl.crawler" and "disallowed by robots.txt" in log.message
               for log in harvest_lines), [(log.name, log.message) for log in harvest_lines][:20]
