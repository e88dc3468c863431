"""The dry run behind `harvest scrape URL --estimate`: crawl and extract for real, make no paid call, and price
what a full run of the site would send to each paid service.

What is exact and what is estimated: pages, structured activities, the addresses a geocoder would be asked
and the texts to embed are counted exactly (the crawl and standardize steps run, and the caches earlier runs
filled are consulted, as a run would); tokens are estimated from text length (`tokens_from_chars`), and an
LLM answer's length as a share of its input (`_EstimatingExtractor`). Activities only the LLM would find are not known
without calling it, so their embeddings and geocodes are not in the figures (the result says how many pages).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from harvest.cost.meter import Meter, Reservation, tokens_from_chars
from harvest.cost.prices import Counter, Prices
from harvest.crawl.stage import collect_raw_activities
from harvest.db.ledger import chat_output_ratio
from harvest.enrich.registry import batched, chunked
from harvest.extract.answers import LLMAnswerCache
from harvest.extract.llm import AnswerCache, LLMExtractor, Prompt
from harvest.models import RunConfig
from harvest.settings import HarvestSettings
from harvest.standardize.stage import standardize_raw_activities
from harvest.storage import iter_jsonl
from harvest.storage.local import LocalStore

NO_ANSWER = '{"activities": []}'
# Output tokens per input token of an extraction call, before a deployment has its own history: measured on the
# demo site against the stand-in (1,114 output tokens for 18,726 input over 58 pages, most of them listings
# with nothing to extract). A model that writes more per page is learned from the ledger after a few runs.
DEFAULT_OUTPUT_RATIO = 0.06


class RunEstimate(BaseModel):
    """What a full run of `url` would likely use and cost, per stage, as priced now."""

    url: str
    pages_fetched: int = 0
    activities: int = Field(default=0, description="Standardized activities found without the LLM.")
    llm_pages: int = Field(default=0, description="Pages without structured data: one chat call each.")
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict, description="stage → {usage, cost_usd}.")
    cost_usd: float = 0.0
    notes: list[str] = Field(default_factory=list)


class _ReadOnly:
    """The answer cache as the dry run sees it: earlier answers are read (they cost nothing), none is written."""

    def __init__(self, cache: AnswerCache | None) -> None:
        self.cache = cache

    def get(self, key: str) -> str | None:
        return self.cache.get(key) if self.cache is not None else None

    def put(self, key: str, model: str, answer: str) -> None:
        return None


class _EstimatingExtractor(LLMExtractor):
    """An LLM extractor that prices each call it would make instead of making it (and finds nothing there).

    The input is estimated from the messages' length; the answer's length cannot be known without asking, so
    it is `output_ratio` times the input: this deployment's own ratio once its ledger has enough history,
    else DEFAULT_OUTPUT_RATIO. (A budget's holds use `held_usage` instead: generous, with the output capped.)
    """

    output_ratio = DEFAULT_OUTPUT_RATIO

    def _complete(self, prompt: Prompt, url: str, reservation: Reservation | None = None,
                  max_output_tokens: int | None = None) -> str:
        assert self.meter is not None
        sent = tokens_from_chars(prompt.sent_chars)
        self.meter.charge({Counter.chat_requests: 1, Counter.chat_input_tokens: sent,
                           Counter.chat_output_tokens: round(sent * self.output_ratio)}, reservation)
        return NO_ANSWER


def estimate_run(url: str, config: RunConfig, settings: HarvestSettings, engine: Engine | None) -> RunEstimate:
    """Crawl `url` with `config` into a scratch folder, and price the run: no paid call is made. With `engine`,
    what earlier runs stored (LLM answers, geocodes, vectors) is taken into account, as a run would."""
    prices = settings.prices()
    estimate = RunEstimate(url=url)
    with tempfile.TemporaryDirectory(prefix="harvest-estimate-") as tmp:
        store = LocalStore(Path(tmp))
        chat = Meter("crawl", prices=prices)
        history = chat_output_ratio(engine) if engine is not None else None
        llm = _EstimatingExtractor(
            client=None,  # type: ignore[arg-type]  # never called: _complete is replaced
            model=settings.extraction_model, cache=_ReadOnly(LLMAnswerCache(engine) if engine else None), meter=chat,
        )
        llm.output_ratio = history if history is not None else DEFAULT_OUTPUT_RATIO
        crawled = collect_raw_activities(store, "estimate", url, config, settings, llm=llm)
        details = crawled.stats.details
        estimate.pages_fetched = int(details.get("pages_fetched", 0))
        estimate.llm_pages = int(details.get("llm_pages", 0))
        standardized = standardize_raw_activities(
            store, "estimate", crawled.file("raw_activities"), config, date_languages=settings.date_languages
        )
        records = list(iter_jsonl(store, standardized.file("standardized").uri))
    estimate.activities = len(records)
    _add(estimate, prices, "crawl", {
        **chat.usage, Counter.pages_http: int(details.get("pages_http", 0)),
        Counter.pages_browser: int(details.get("pages_rendered", 0)), Counter.chat_cache_hits: llm.cache_hits,
    })
    for enrichment in (*batched(), *chunked()):  # in the order a run starts them
        usage = enrichment.estimate(records, config, settings, engine)
        if usage is not None:
            _add(estimate, prices, enrichment.name, usage)
    estimate.cost_usd = round(sum(stage["cost_usd"] for stage in estimate.stages.values()), 8)
    if estimate.llm_pages:
        estimate.notes.append(
            f"{estimate.llm_pages} page(s) need LLM extraction: the activities on them are not in the embeddings "
            "and geocoding figures"
        )
    if not settings.has_openai:
        estimate.notes.append("OPENAI_API_KEY is not set: a run now would skip LLM extraction and embeddings")
    return estimate


def _add(estimate: RunEstimate, prices: Prices, stage: str, usage: dict[str, int]) -> None:
    usage = {name: count for name, count in usage.items() if count}
    estimate.stages[stage] = {"usage": usage, "cost_usd": round(prices.cost(usage), 8)}
