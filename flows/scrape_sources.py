"""The `scrape-sources` flow: several due sources in one flow-run process, each scraped as its own
`scrape-website` subflow run.

Why: a flow-run process costs a fixed ~7.7 worker-seconds and ~200 MiB before any page is fetched (its start, the
imports, its engine and clients, the teardown; docs/performance.md, "Fleet"), which dominates a small site. Here
that is paid once per batch. Each source keeps everything a run of its own has: its own flow run (a child of
this one in the UI, its own logs, states and artifacts), its own run row, files and retention (the run id is the
subflow run's id), its hooks, and the one-run-per-URL rule. A source that fails does not stop the others; the
batch then fails after the last one, naming them.

Each source takes the parameters of `scrape-website` (`url`, `config`), so a source's schedule can carry them to
either flow.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from flows.scrape import scrape_website
from harvest.models import RunConfig


class Source(BaseModel):
    """One source to scrape: the parameters of a `scrape-website` run."""

    url: str = Field(description="The site's start URL.")
    config: RunConfig = Field(default_factory=RunConfig, description="The run's config, as scrape-website takes it.")


class SourceOutcome(BaseModel):
    """What became of one source: its run (the subflow run's id, which is its run row's id) and how it ended."""

    url: str
    run_id: str | None
    state: str
    status: str | None = None
    activities: int = 0
    error: str | None = None


class SourcesFailedError(RuntimeError):
    """Raised after every source ran, when one or more of them failed."""


@flow(name="scrape-sources", description="Scrape several sources in one process, each as its own scrape-website run.")
def scrape_sources(sources: list[Source]) -> list[SourceOutcome]:
    """Scrape each source in turn as a `scrape-website` subflow run; fail at the end if any of them failed."""
    logger = get_run_logger()
    outcomes = [_scrape_one(source) for source in sources]
    failed = [o for o in outcomes if o.error is not None]
    logger.info("%d sources: %d completed, %d failed", len(outcomes), len(outcomes) - len(failed), len(failed))
    if failed:
        raise SourcesFailedError("; ".join(f"{o.url}: {o.error}" for o in failed))
    return outcomes


def _scrape_one(source: Source) -> SourceOutcome:
    state: Any = scrape_website(url=source.url, config=source.config, return_state=True)
    run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    if not state.is_completed():
        return SourceOutcome(url=source.url, run_id=run_id, state=state.type.value,
                             error=state.message or state.type.value)
    summary = state.result()
    return SourceOutcome(url=source.url, run_id=summary.run_id, state=state.type.value, status=summary.status,
                         activities=summary.activities_processed)
