"""The run ledger and budgets through the scrape-website flow, on the demo site with the OpenAI and geocoder
stand-ins: usage as the services reported it, priced; the dry-run estimate against the actual ledger; an
unchanged re-run that costs nothing; budgets that stop paid calls before they are made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harvest.cost import Counter
from harvest.db import runs as run_rows
from harvest.db.engine import get_engine
from harvest.models import RunConfig
from harvest.settings import get_settings
from tests.helpers import session_prefect_api_url

HARVEST = str(Path(sys.executable).parent / "harvest")


def scrape(url: str, **config: object):  # noqa: ANN201 - the RunSummary
    from flows.scrape import scrape_website

    state = scrape_website(url=url, config=RunConfig(**config), return_state=True)
    assert state.is_completed(), state.message
    return state.result()


def cli(args: list[str], env: dict[str, str], tmp_path: Path) -> dict:
    full_env = {**os.environ, **env, "PREFECT_API_URL": session_prefect_api_url()}
    done = subprocess.run([HARVEST, *args], env=full_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_a_run_records_what_the_services_reported_and_an_unchanged_rerun_costs_nothing(
    harvest_env, demo_site, openai_server, geocoder_server, tmp_path
) -> None:
    from harvest.estimate import estimate_run

    url = demo_site.base_url + "/"
    limits = {"max_pages": 200, "max_extractions": 1000}
    engine = get_engine(harvest_env["HARVEST_DATABASE_URL"])
    estimate = estimate_run(url, RunConfig(**limits), get_settings(), engine)
    assert openai_server.stats().get("requests", 0) == 0 and geocoder_server.stats() == {}, "the dry run paid nothing"
    assert estimate.llm_pages > 0 and estimate.cost_usd > 0

    first = scrape(url, auto_import=True, **limits)
    served = openai_server.stats()
    cost = first.cost
    crawl, embeddings, geocode = (cost["stages"][stage]["usage"] for stage in ("crawl", "embeddings", "geocode"))
    assert crawl[Counter.chat_requests] == served["chat.completions"] == estimate.llm_pages
    assert crawl[Counter.chat_input_tokens] == served["usage.chat_prompt_tokens"]
    assert crawl[Counter.chat_output_tokens] == served["usage.chat_completion_tokens"]
    assert crawl[Counter.pages_http] + crawl.get(Counter.pages_browser, 0) == estimate.pages_fetched
    assert embeddings[Counter.batch_tokens] == served["usage.batch_tokens"] > 0
    assert embeddings[Counter.batch_lines] == served["batches.lines"] == first.activities_processed
    assert geocode[Counter.geocode_requests_nominatim] == geocoder_server.stats()["nominatim.search"]
    prices = get_settings().prices()
    assert cost["cost_usd"] == pytest.approx(prices.cost(cost["usage"]), rel=1e-9)
    assert cost["reserved_usd"] == 0, "every hold was settled"
    assert cost["usage"][Counter.bytes_stored] > 0 and cost["usage"][Counter.images_downloaded] > 0
    # The dry run's price of the site, against what the run was charged.
    assert abs(estimate.cost_usd - cost["cost_usd"]) <= 0.10 * cost["cost_usd"], (estimate.cost_usd, cost)

    openai_server.reset()
    second = scrape(url, auto_import=True, **limits)
    assert second.cost["cost_usd"] == 0, second.cost
    assert not {Counter.chat_requests, Counter.batch_tokens, Counter.embedding_tokens} & set(second.cost["usage"])
    assert second.cost["usage"][Counter.embedding_cache_hits] == second.activities_processed
    # The first run was imported and cleaned up, and its page memory went with its files (issue 27 item 7): every
    # page is fetched again, and the pages the first run sent to the LLM are answered from the answer cache.
    usage = second.cost["usage"]
    reused_pages = usage.get(Counter.pages_not_modified, 0) + usage.get(Counter.pages_lastmod_unchanged, 0)
    assert reused_pages == 0, usage
    assert usage.get(Counter.chat_cache_hits, 0) == estimate.llm_pages, usage

    shown = cli(["runs", "show", first.run_id, "--json"], harvest_env, tmp_path)
    assert shown["cost"]["cost_usd"] == pytest.approx(cost["cost_usd"])
    summed = cli(["runs", "cost", "--since", "1d", "--url", url, "--json"], harvest_env, tmp_path)
    assert [run["id"] for run in summed["runs"]] == [second.run_id, first.run_id]
    assert summed["cost_usd"] == pytest.approx(cost["cost_usd"])


def test_a_budget_of_zero_makes_no_paid_call_and_the_run_completes(harvest_env, demo_site, openai_server) -> None:
    summary = scrape(demo_site.base_url + "/", max_pages=200, max_extractions=1000, max_cost_usd=0)
    assert openai_server.stats().get("requests", 0) == 0, openai_server.stats()
    assert summary.activities_processed > 0 and summary.cost["cost_usd"] == 0
    warnings = "\n".join(summary.warnings)
    assert "crawl: budget: LLM extraction skipped for" in warnings
    assert f"embeddings_submit: budget: {summary.activities_processed} activities left without embeddings" in warnings


def test_a_budget_stops_llm_extraction_part_way(harvest_env, demo_site, openai_server) -> None:
    url = demo_site.base_url + "/"
    # A few of the site's ~60 pages without structured data fit (about $0.00006 each), not all of them.
    budget = 0.0003
    summary = scrape(url, max_pages=200, max_extractions=1000, max_cost_usd=budget)
    calls = openai_server.stats().get("chat.completions", 0)
    details = run_rows.get_run(get_engine(harvest_env["HARVEST_DATABASE_URL"]), summary.run_id)["steps"]["crawl"][
        "details"]
    left = details["llm_over_budget_pages"]
    assert calls >= 1 and left >= 1 and calls + left == details["llm_pages"], (calls, details)
    assert summary.cost["stages"]["crawl"]["usage"]["chat_requests"] == calls
    assert summary.cost["cost_usd"] <= budget, summary.cost
    skipped = next(w for w in summary.warnings if w.startswith("crawl: budget: LLM extraction skipped for"))
    assert f"skipped for {left} page(s)" in skipped
    named = skipped.split("would have been passed: ", 1)[1].split(" and ")[0].split(", ")
    assert len(named) == min(left, 50) and all(page.startswith(demo_site.base_url) for page in named)


def test_a_resumed_run_keeps_its_spent_total(harvest_env, demo_site, openai_server) -> None:
    import sqlalchemy as sa

    from flows.resume import resume_flow_run
    from flows.scrape import scrape_website
    from harvest.db.ledger import run_cost

    engine = get_engine(harvest_env["HARVEST_DATABASE_URL"])
    with engine.begin() as connection:  # the import step fails: its table is gone
        connection.execute(sa.text("ALTER TABLE activities RENAME TO activities_away"))
    try:
        state = scrape_website(url=demo_site.base_url + "/", return_state=True, config=RunConfig(
            max_pages=200, max_extractions=1000, auto_import=True, max_cost_usd=0.0003))
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text("ALTER TABLE activities_away RENAME TO activities"))
    assert state.is_failed()
    run_id = str(state.state_details.flow_run_id)
    spent = run_cost(engine, run_id)
    assert 0 < spent["cost_usd"] <= 0.0003
    calls = openai_server.stats().get("requests", 0)

    resumed = resume_flow_run(run_id)
    assert resumed.is_completed(), resumed.message
    assert openai_server.stats().get("requests", 0) == calls, "the finished steps were loaded, not paid again"
    after = resumed.result().cost
    assert after["cost_usd"] == pytest.approx(spent["cost_usd"]) and after["usage"] == {
        **spent["usage"], Counter.bytes_stored: after["usage"][Counter.bytes_stored]}


def test_the_estimate_command_prices_a_site_without_a_paid_call(
    harvest_env, demo_site, openai_server, geocoder_server, tmp_path
) -> None:
    url = demo_site.base_url + "/"
    estimate = cli(["scrape", url, "--max-pages", "200", "--max-extractions", "1000", "--estimate", "--json"],
                   harvest_env, tmp_path)
    assert estimate["url"] == url and estimate["cost_usd"] > 0 and estimate["llm_pages"] > 0
    assert set(estimate["stages"]) == {"crawl", "embeddings", "geocode"}
    assert openai_server.stats() == {} and geocoder_server.stats() == {}, "nothing paid, nothing asked"
    with get_engine(harvest_env["HARVEST_DATABASE_URL"]).begin() as connection:
        import sqlalchemy as sa

        assert connection.execute(sa.text("SELECT count(*) FROM scrape_runs")).scalar() == 0, "a dry run records none"
    full_env = {**os.environ, **harvest_env, "PREFECT_API_URL": session_prefect_api_url()}
    refused = subprocess.run([HARVEST, "scrape", url, "--max-cost-usd", "-1"], env=full_env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "max_cost_usd" in refused.stderr
