"""The dry-run estimate's guess at an LLM answer's length: DEFAULT_OUTPUT_RATIO until the ledger holds enough
extraction history (10,000 input tokens), then this deployment's own output/input ratio. On the demo site, with
the ledger on Postgres and on SQLite (the embedded default)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from harvest.cost import Counter
from harvest.db import runs as run_rows
from harvest.db.ledger import RunBook
from harvest.estimate import DEFAULT_OUTPUT_RATIO, RunEstimate, estimate_run
from harvest.models import RunConfig
from harvest.settings import HarvestSettings

DATABASES = ["postgres", "sqlite"]  # every test taking `engine` runs on both (tests/conftest.py)

MEASURED_RATIO = 0.25  # what the recorded runs' answers were: far from the default, so the two cannot be confused


def _record_extraction(engine: Engine, run_id: str, input_tokens: int) -> None:
    """A finished run's crawl stage in the ledger: its chat calls sent `input_tokens` and got a quarter back."""
    run_rows.create_run(engine, run_id, f"https://example.org/{run_id}", {})  # one running run a URL
    RunBook(engine, run_id).charge("crawl", {
        Counter.chat_requests: 3, Counter.chat_input_tokens: input_tokens,
        Counter.chat_output_tokens: round(input_tokens * MEASURED_RATIO),
    }, 0.01)


def _assert_answers_priced_at(estimate: RunEstimate, ratio: float) -> None:
    usage = estimate.stages["crawl"]["usage"]
    assert estimate.llm_pages > 0 and usage[Counter.chat_requests] == estimate.llm_pages
    # Each page's answer is rounded to whole tokens: the total is off the ratio by at most half a token a page
    # (some 30 tokens here, against the thousands between the two ratios).
    output, sent = usage[Counter.chat_output_tokens], usage[Counter.chat_input_tokens]
    assert abs(output - ratio * sent) <= estimate.llm_pages / 2, (output, sent, ratio)


def test_the_estimate_switches_to_the_measured_output_ratio_once_the_ledger_has_enough_history(
    engine: Engine, demo_site
) -> None:
    url = demo_site.base_url + "/"
    config = RunConfig(max_pages=200, max_extractions=1000)
    settings = HarvestSettings(allow_private_networks=True, browser_path=None)

    _assert_answers_priced_at(estimate_run(url, config, settings, engine), DEFAULT_OUTPUT_RATIO)  # no history

    _record_extraction(engine, "run-1", 6_000)
    _record_extraction(engine, "run-2", 3_999)
    _assert_answers_priced_at(estimate_run(url, config, settings, engine), DEFAULT_OUTPUT_RATIO)  # 9,999: too few

    _record_extraction(engine, "run-3", 1)
    _assert_answers_priced_at(estimate_run(url, config, settings, engine), MEASURED_RATIO)  # 10,000: enough
