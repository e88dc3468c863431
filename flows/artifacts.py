"""Prefect artifacts for a scrape run: live progress, then a per-stage table, a markdown summary and links.

Keys are stable per deployment (`scrape-website-default-steps`, …; `…-local-…` outside a deployment), so
the UI shows each key's history across that deployment's runs. Publishing never fails a run: an artifact
that cannot be written is a logged warning.
"""

from __future__ import annotations

import html
import logging
import re
import threading
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, cast
from uuid import UUID

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run as runtime_flow_run

from flows.run_context import deployment_of_run
from harvest.cost.report import cost_lines
from harvest.db import runs as run_rows
from harvest.db.ledger import run_cost
from harvest.models import RunConfig
from harvest.quality import report_lines, run_quality
from harvest.storage import ObjectStore

logger = logging.getLogger("harvest.artifacts")

# Progress after each milestone of the flow, in order (the flow calls `advance` with these names).
MILESTONES = {"started": 0.0, "crawl": 35.0, "standardize": 50.0, "enrich": 80.0, "final": 95.0, "done": 100.0}
LINK_SECONDS = 7 * 24 * 3600  # S3's longest presigned URL
SHOWN_WARNINGS = 20
SHOWN_FAILED_URLS = 10
LINKED_KINDS = ("final_jsonl", "raw_activities", "diff")  # each also gets a link artifact of its own


def download_link(store: ObjectStore, uri: str, seconds: int = LINK_SECONDS) -> str:
    """A presigned GET for S3 (valid `seconds`), the file URI for local storage."""
    return store.presign(store.key_for(uri), seconds) if uri.startswith("s3://") else uri


def artifact_key(kind: str) -> str:
    """`<flow>-<deployment>-<kind>` in Prefect's key alphabet (lowercase letters, digits, dashes)."""
    flow, deployment = _flow_and_deployment(str(runtime_flow_run.id))
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", f"{flow}-{deployment}-{kind}".lower())).strip("-")


@lru_cache(maxsize=64)
def _flow_and_deployment(flow_run_id: str) -> tuple[str, str]:
    """The run's flow and deployment names, looked up once per flow run (the deployment's name is an API read)."""
    return runtime_flow_run.flow_name or "scrape-website", deployment_of_run()[1] or "local"


@dataclass
class LiveStatus:
    """What a run is doing right now, for a display in this process (the CLI's live line)."""

    run_id: str = ""
    stage: str = "starting"
    percent: float = 0.0
    pages_fetched: int = 0
    pages_queued: int = 0
    activities_found: int = 0
    chunks_done: int = 0
    chunks_total: int = 0


class _LiveBoard:
    """The latest LiveStatus of this process's run. Process-local on purpose: the `harvest` command runs the flow
    in its own process (a worker's runs are followed in the UI through the progress artifact instead)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status = LiveStatus()

    def update(self, **changes: Any) -> None:
        with self._lock:
            self._status = replace(self._status, **changes)

    def get(self) -> LiveStatus:
        with self._lock:
            return self._status

    def reset(self) -> None:
        with self._lock:
            self._status = LiveStatus()


LIVE = _LiveBoard()

# The crawl moves the artifact between the "started" and "crawl" milestones, enrichment between "standardize"
# and "enrich". At most one API call per PROGRESS_INTERVAL_S: a 2,000-page crawl must not become 2,000 calls.
PROGRESS_INTERVAL_S = 2.0


class Progress:
    """One progress artifact per run, moved forward as stages finish and, throttled, during the crawl and
    enrichment; every change also goes to LIVE for the CLI."""

    def __init__(self, run_id: str, artifact_id: UUID | None = None, *, create: bool = True) -> None:
        self.run_id = run_id
        self.artifact_id: UUID | None = artifact_id
        self.percent = 0.0
        self._sent_at = 0.0
        if artifact_id is not None or not create:
            return  # a task attaching to the run's progress: the flow already started it
        LIVE.update(run_id=run_id, stage="starting", percent=0.0)
        try:
            # Prefect types its sync/async dispatch as either; called from sync code it returns the id.
            self.artifact_id = cast(UUID, create_progress_artifact(
                0.0, key=artifact_key("progress"), description=f"Run {run_id}: started"
            ))
        except Exception as exc:  # noqa: BLE001 - artifacts are reporting, never a reason to fail
            logger.warning("run %s: progress artifact not created: %s", run_id, exc)

    @classmethod
    def attach(cls, run_id: str, artifact_id: str | None) -> Progress:
        """The run's progress, from inside one of its tasks (the flow created the artifact)."""
        return cls(run_id, UUID(artifact_id) if artifact_id else None, create=False)

    def advance(self, milestone: str) -> None:
        LIVE.update(stage=f"{milestone} finished", percent=MILESTONES[milestone])
        self._send(MILESTONES[milestone], f"Run {self.run_id}: {milestone} finished", force=True)

    def crawl(self, pages_fetched: int, pages_queued: int, activities: int, max_pages: int) -> None:
        """Pages fetched out of those known so far (fetched + queued, capped by max_pages), scaled into the
        crawl's share of the bar."""
        known = max(1, min(max_pages, pages_fetched + pages_queued))
        share = MILESTONES["crawl"] - MILESTONES["started"]
        percent = MILESTONES["started"] + share * min(1.0, pages_fetched / known) * 0.99
        LIVE.update(stage="crawl", percent=percent, pages_fetched=pages_fetched, pages_queued=pages_queued,
                    activities_found=activities)
        self._send(percent, f"Run {self.run_id}: crawling, {pages_fetched} pages fetched, {pages_queued} queued, "
                            f"{activities} activities found")

    def enrich(self, done: int, total: int) -> None:
        """`done` of `total` enrichment tasks (image and geocode chunks, embeddings) finished."""
        share = MILESTONES["enrich"] - MILESTONES["standardize"]
        percent = MILESTONES["standardize"] + share * done / max(1, total)
        LIVE.update(stage="enrich", percent=percent, chunks_done=done, chunks_total=total)
        self._send(percent, f"Run {self.run_id}: enriching, {done} of {total} parts done", force=done == total)

    def _send(self, percent: float, description: str, *, force: bool = False) -> None:
        if self.artifact_id is None or percent < self.percent:
            return
        now = time.monotonic()
        if not force and now - self._sent_at < PROGRESS_INTERVAL_S:
            return
        self._sent_at, self.percent = now, percent
        try:
            update_progress_artifact(self.artifact_id, round(percent, 1), description=description)
        except Exception as exc:  # noqa: BLE001
            logger.warning("run %s: progress artifact not updated: %s", self.run_id, exc)


def step_table(steps: dict[str, Any]) -> list[dict[str, Any]]:
    """stage → items in/out/skipped/seconds, from the run row's `steps` (non-stage entries are left out)."""
    return [
        {
            "stage": name, "items_in": stats.get("items_in", 0), "items_out": stats.get("items_out", 0),
            "skipped": stats.get("skipped", 0), "seconds": round(float(stats.get("seconds", 0.0)), 2),
        }
        for name, stats in (steps or {}).items()
        if isinstance(stats, dict) and "items_in" in stats
    ]


def _text(value: Any) -> str:
    """Page-controlled text (URLs, warnings quoting activity names) as inert markdown: no HTML, no links, one line."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return re.sub(r"([\\`*_~\[\]|])", r"\\\1", text)


def _code(value: Any) -> str:
    """Text for a `code span` inside a table cell: a backtick would end the span, a pipe the cell."""
    return str(value).replace("`", "'").replace("|", "\\|")


def _link(url: str) -> str:
    """A markdown link target; `<…>` keeps a presigned URL's `&` and `%` intact, and nothing in it can close it."""
    return "<" + url.replace("<", "%3C").replace(">", "%3E").replace(" ", "%20") + ">"


def summary_markdown(row: dict[str, Any], files: list[dict[str, Any]], links: dict[str, str] | None = None) -> str:
    links = links or {}
    lines = [
        f"# Run `{_code(row['id'])}`",
        "",
        f"- URL: {_text(row['url'])}",
        f"- Status: **{row['status']}**, {row.get('activities_processed') or 0} activities",
        *([f"- Error: {_text(row['error'])}"] if row.get("error") else []),
        "",
        "## Files",
        "",
        "| kind | records | bytes | uri | download |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    lines += [
        f"| {f['kind']} | {f['records']} | {f['bytes']:,} | `{_code(f['uri'])}` | "
        + (f"[download]({_link(links[f['kind']])})" if f["kind"] in links else "")
        + " |"
        for f in files
    ]
    if row.get("cost"):
        lines += ["", "## Cost", "", "```", *cost_lines(row["cost"]), "```"]
    summary = row.get("import_summary")
    lines += ["", "## Import", "", ", ".join(f"{k}: {v}" for k, v in summary.items()) if summary else "not imported"]
    diff = row.get("diff")
    lines += ["", "## Changes since the previous run", ""]
    if diff:
        previous = row.get("previous_run_id")
        against = f"run `{_code(previous)}`" if previous else "nothing (first run of this URL)"
        lines.append(", ".join(f"{k}: {v}" for k, v in diff.items()) + f" — against {against}")
    else:
        lines.append("not computed")
    quality = report_lines(run_quality(row))
    lines += ["", "## Content quality", ""]
    lines += [f"- {_text(line.strip())}" for line in quality] or ["not recorded"]
    unfollowed = (row.get("steps") or {}).get("unfollowed") or {}
    lines += ["", "## Unfollowed links", ""]
    for reason, entry in sorted(unfollowed.items()):
        lines.append(f"- {_text(reason)}: {entry.get('count', 0)} link(s), e.g.")
        lines += [f"  - `{_code(url)}`" for url in entry.get("examples", [])]
    if not unfollowed:
        lines.append("none: no limit stopped the crawl")
    failed = [item for item in row.get("failed_urls") or [] if isinstance(item, dict)]
    lines += ["", f"## Failed URLs ({len(failed)})", ""]
    lines += [f"- `{_code(item.get('url'))}`: {_text(item.get('reason'))}" for item in failed[:SHOWN_FAILED_URLS]]
    lines += [] if failed else ["none"]
    if len(failed) > SHOWN_FAILED_URLS:
        lines.append(f"- … {len(failed) - SHOWN_FAILED_URLS} more: `harvest runs show {row['id']}`")
    warnings = list(row.get("warnings") or [])
    lines += ["", f"## Warnings ({len(warnings)})", ""]
    lines += [f"- {_text(w)}" for w in warnings[:SHOWN_WARNINGS]] or ["none"]
    if len(warnings) > SHOWN_WARNINGS:
        lines.append(f"- … {len(warnings) - SHOWN_WARNINGS} more: `harvest runs show {row['id']}`")
    return "\n".join(lines) + "\n"


def publish_summary(engine: Any, store: ObjectStore, run_id: str, config: RunConfig) -> None:
    """The end-of-run table, markdown summary and links to the final JSONL and the raw activities."""
    try:
        row = {**(run_rows.get_run(engine, run_id) or {}), "cost": run_cost(engine, run_id)}
        files = run_rows.list_files(engine, run_id, include_deleted=False)
        # After a clean auto-import the completion hook deletes the run's files: links would be dead.
        cleaned_soon = config.auto_import and not config.keep_files
        links = {} if cleaned_soon else {f["kind"]: download_link(store, f["uri"]) for f in files}
        create_table_artifact(step_table(row.get("steps") or {}), key=artifact_key("steps"),
                              description=f"Run {run_id}: items and seconds per stage")
        create_markdown_artifact(summary_markdown(row, files, links), key=artifact_key("summary"),
                                 description=f"Run {run_id}: files, records, warnings, import, changes")
        by_kind = {f["kind"]: f for f in files}
        for kind in LINKED_KINDS:
            if kind in links:
                create_link_artifact(
                    links[kind], link_text=by_kind[kind]["uri"], key=artifact_key(kind.replace("_", "-")),
                    description=f"Run {run_id}: {kind} ({by_kind[kind]['records']} records)",
                )
    except Exception as exc:  # noqa: BLE001
        logger.warning("run %s: summary artifacts not published: %s", run_id, exc)
