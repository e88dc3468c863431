"""The run ledger's parts against the real wire-protocol stand-ins: usage read from the services' own answers
(chat `usage`, embeddings `usage`, per-line `response.body.usage` of a batch output), priced exactly, and a
budget that refuses calls before they are made, in memory and in the database (where it survives a resume)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from harvest.cost import Counter, Meter, Prices
from harvest.enrich.embeddings.batch import parse_batch_line
from harvest.enrich.embeddings.sync import embed_texts
from harvest.enrich.geocode.client import GoogleGeocoder, NominatimGeocoder
from harvest.enrich.geocode.cost import OVER_BUDGET, MeteredGeocoder
from harvest.errors import OverBudgetError
from harvest.extract.llm import LLMExtractor
from harvest.models import FileRef
from harvest.steps import free_counters, ledger_stage
from testkit.geocoder_server import GeocoderTestServer
from testkit.openai_server import OpenAITestServer, count_tokens

PAGE = """Activity: Anthony Beale Reserve playground
Where: Anthony Beale Reserve, 277 St Helena Rd, St Helena VIC 3088, Australia
About: A bright, colourful playground with a flying fox.
"""
PRICES = Prices()


@pytest.fixture(scope="module")
def oai() -> Iterator[OpenAITestServer]:
    with OpenAITestServer(dimensions=8) as server:
        yield server


def client(server: OpenAITestServer) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0)


def test_prices_apply_list_prices_and_the_batch_discount() -> None:
    usage = {
        Counter.chat_input_tokens: 1_000_000, Counter.chat_output_tokens: 1_000_000,
        Counter.embedding_tokens: 1_000_000, Counter.batch_tokens: 1_000_000,
        Counter.geocode_requests_google: 1000, Counter.geocode_requests_nominatim: 1000, Counter.pages_http: 7,
    }
    # 0.15 + 0.60 (gpt-4o-mini) + 0.02 (text-embedding-3-small) + 0.01 (batch: half) + 5.00 (Google) + 0 (Nominatim)
    assert PRICES.cost(usage) == pytest.approx(5.78, abs=1e-12)
    assert Prices(batch_discount=0).cost({Counter.batch_tokens: 1_000_000}) == pytest.approx(0.02)


def test_a_chat_call_is_charged_what_its_answer_says_it_used(oai: OpenAITestServer) -> None:
    oai.reset()
    meter = Meter("crawl")
    extractor = LLMExtractor(client(oai), "gpt-4o-mini", meter=meter)
    assert [a.name for a in extractor.extract(PAGE, "https://example.org/a")] == ["Anthony Beale Reserve playground"]
    sent = "\n".join(str(m["content"]) for m in extractor.prompt(PAGE, "https://example.org/a").messages)
    stats = oai.stats()
    assert meter.usage[Counter.chat_input_tokens] == count_tokens(sent) == stats["usage.chat_prompt_tokens"]
    assert meter.usage[Counter.chat_output_tokens] == stats["usage.chat_completion_tokens"] > 0
    assert meter.usage[Counter.chat_requests] == 1
    expected = (count_tokens(sent) * 0.15 + stats["usage.chat_completion_tokens"] * 0.60) / 1_000_000
    assert meter.cost_usd == pytest.approx(expected, rel=1e-12)


def test_a_budget_stops_llm_extraction_part_way_and_names_the_pages_left(oai: OpenAITestServer) -> None:
    oai.reset()
    urls = [f"https://example.org/page-{n}" for n in range(6)]
    probe = LLMExtractor(client(oai), "gpt-4o-mini")
    per_call = PRICES.cost(probe.held_usage(probe.prompt(PAGE, urls[0])))
    meter = Meter("crawl", limit=per_call * 2.5)  # room for two calls' holds, not three
    extractor = LLMExtractor(client(oai), "gpt-4o-mini", meter=meter)
    made, refused = [], []
    for url in urls:
        try:
            extractor.extract(PAGE, url)
            made.append(url)
        except OverBudgetError as exc:
            assert url in str(exc)
            refused.append(url)
    calls = oai.stats().get("chat.completions", 0)
    assert 0 < calls == len(made) < len(urls)
    assert meter.refused == refused == urls[len(made):]
    assert meter.cost_usd <= meter.limit  # what was charged (the answers' usage) stayed within the budget


def test_a_budget_of_zero_makes_no_call(oai: OpenAITestServer) -> None:
    oai.reset()
    extractor = LLMExtractor(client(oai), "gpt-4o-mini", meter=Meter("crawl", limit=0))
    with pytest.raises(OverBudgetError):
        extractor.extract(PAGE, "https://example.org/a")
    assert oai.stats().get("requests", 0) == 0, oai.stats()


def test_sync_embeddings_report_the_tokens_of_each_answer(oai: OpenAITestServer) -> None:
    oai.reset()
    texts = ["Playground | swings and slides", "Museum | dinosaurs, for toddlers", "Pool"]
    heard: list[int] = []
    embed_texts(client(oai), texts, model="text-embedding-3-small", dimensions=8, chunk_size=2, on_usage=heard.append)
    assert heard == [count_tokens(texts[0]) + count_tokens(texts[1]), count_tokens(texts[2])]
    assert sum(heard) == oai.stats()["usage.embedding_tokens"] == 5 + 6 + 1  # words and punctuation


def test_a_batch_output_line_carries_the_tokens_it_was_billed() -> None:
    body = {"object": "list", "data": [{"index": 0, "embedding": [0.5, 0.5]}], "usage": {"prompt_tokens": 17,
                                                                                         "total_tokens": 17}}
    line = json.dumps({"custom_id": "a1", "response": {"status_code": 200, "body": body}, "error": None})
    assert parse_batch_line(line, dimensions=2).tokens == 17
    assert parse_batch_line(line, dimensions=3).tokens == 17, "a refused vector was still billed"
    failed = json.dumps({"custom_id": "a1", "response": None, "error": {"code": "batch_expired", "message": "x"}})
    assert parse_batch_line(failed, dimensions=2).tokens == 0


def test_google_geocodes_stop_at_the_budget_and_nominatim_costs_nothing() -> None:
    addresses = [f"{n} Main Rd, Eltham VIC 3095, Australia" for n in range(1, 5)]
    with GeocoderTestServer(api_key="cost-test-google-key") as server:
        google = GoogleGeocoder("cost-test-google-key", server.base_url, rate_per_second=1000, timeout_s=2, retries=0)
        meter = Meter("geocode", limit=0.0125)  # $5 per 1,000: two requests fit, a third would pass it
        metered = MeteredGeocoder(google, "google", meter)
        answers = [metered.geocode(address) for address in addresses]
        assert server.stats().get("google.geocode") == 2
    assert [a.error == OVER_BUDGET for a in answers] == [False, False, True, True]
    assert meter.usage == {Counter.geocode_requests_google: 2} and meter.cost_usd == pytest.approx(0.01)
    assert meter.refused == addresses[2:]
    free = Meter("geocode", limit=0)
    assert PRICES.cost({Counter.geocode_requests_nominatim: 1}) == 0
    assert free.reserve({Counter.geocode_requests_nominatim: 1}, "x") is not None, "a free call needs no budget"


@pytest.mark.parametrize("provider", ["google", "nominatim"])
def test_every_geocoder_request_is_counted_retries_too(provider: str, clean_db: str) -> None:
    """Google bills each request it answers, a retried one too: the ledger counts what was sent, not the address."""
    from harvest.db import runs as run_rows
    from harvest.db.engine import get_engine
    from harvest.db.ledger import RunBook, run_cost

    engine = get_engine(clean_db)
    run_rows.create_run(engine, "run-retries", "https://example.org/", {})
    with GeocoderTestServer(api_key="cost-test-google-key") as server:
        options = dict(rate_per_second=1000, timeout_s=2, retries=3, backoff_s=0.01)
        geocoder = (GoogleGeocoder("cost-test-google-key", server.base_url, **options) if provider == "google"
                    else NominatimGeocoder(server.base_url, user_agent="harvest-tests", **options))
        meter = Meter("geocode", book=RunBook(engine, "run-retries"))
        server.fail_next(2, status=503)  # two answers to retry, then the real one
        answer = MeteredGeocoder(geocoder, provider, meter).geocode("277 St Helena Rd, St Helena VIC 3088, Australia")
        sent = server.stats()
    endpoint = "google.geocode" if provider == "google" else "nominatim.search"
    assert answer.error is None and answer.latitude is not None
    assert sent[endpoint] == 3 and sent["injected.status"] == 2
    assert meter.usage == {f"geocode_requests_{provider}": 3}
    assert run_cost(engine, "run-retries")["stages"]["geocode"]["usage"] == {f"geocode_requests_{provider}": 3}
    assert meter.cost_usd == pytest.approx(0.015 if provider == "google" else 0.0)


def test_a_retry_the_budget_cannot_pay_for_is_not_sent() -> None:
    address = "277 St Helena Rd, St Helena VIC 3088, Australia"
    with GeocoderTestServer(api_key="cost-test-google-key") as server:
        google = GoogleGeocoder("cost-test-google-key", server.base_url, rate_per_second=1000, timeout_s=2,
                                retries=3, backoff_s=0.01)
        meter = Meter("geocode", limit=0.01)  # $5 per 1,000: two requests
        server.fail_next(3, status=503)
        answer = MeteredGeocoder(google, "google", meter).geocode(address)
        assert server.stats()["google.geocode"] == 2
    assert answer.error == OVER_BUDGET and answer.latitude is None
    assert meter.usage == {Counter.geocode_requests_google: 2} and meter.refused == [address]


def test_free_counters_come_from_what_each_step_counted() -> None:
    files = [FileRef(kind="images_map.0", uri="s3://b/k", bytes=1200)]
    assert ledger_stage("images.3") == "images" and ledger_stage("embeddings_submit") == "embeddings"
    assert free_counters("images.0", 5, {"images_reused": 2}, files) == {
        Counter.bytes_stored: 1200, Counter.images_reused: 2, Counter.images_downloaded: 3,
    }
    crawl = {"pages_http": 9, "pages_rendered": 2, "llm_cached_answers": 1}
    assert free_counters("crawl", 20, crawl, []) == {
        Counter.pages_http: 9, Counter.pages_browser: 2, Counter.chat_cache_hits: 1,
    }


def test_the_database_budget_holds_across_books_and_reservations(clean_db: str) -> None:
    from harvest.db import runs as run_rows
    from harvest.db.engine import get_engine
    from harvest.db.ledger import RunBook, run_cost

    engine = get_engine(clean_db)
    run_rows.create_run(engine, "run-ledger-1", "https://example.org/", {"max_cost_usd": 0.01})
    first = Meter("geocode", limit=0.01, book=RunBook(engine, "run-ledger-1"))
    held = first.reserve({Counter.geocode_requests_google: 1}, "a")
    assert held is not None and held.usd == pytest.approx(0.005)
    first.charge({Counter.geocode_requests_google: 1}, held)
    pending = first.reserve({Counter.geocode_requests_google: 1}, "b")  # held, never settled: a process died
    assert pending is not None
    # A resumed run is a new process with a new book: it sees what was spent and what is still held.
    resumed = Meter("geocode", limit=0.01, book=RunBook(engine, "run-ledger-1"))
    assert resumed.reserve({Counter.geocode_requests_google: 1}, "c") is None
    assert resumed.refused == ["c"]
    cost = run_cost(engine, "run-ledger-1")
    assert cost["cost_usd"] == pytest.approx(0.005)  # what was spent: settled cost only
    assert cost["stages"]["geocode"]["usage"] == {Counter.geocode_requests_google: 1}
    assert (cost["cost_usd"], cost["reserved_usd"]) == (pytest.approx(0.005), pytest.approx(0.005))
