"""A paid LLM answer is never bought twice (issue 27 item 4): the database goes away exactly when the answer has
arrived and must be recorded, a real outage of a database of the test's own (connections refused and the live
ones terminated by Postgres), forced at that step by a cursor listener. The OpenAI stand-in counts the chat
requests it was paid for."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from harvest.cost import Counter, Meter
from harvest.db import runs
from harvest.db.engine import get_engine, upgrade
from harvest.db.ledger import RunBook, run_cost
from harvest.errors import HarvestError
from harvest.extract.answers import LLMAnswerCache
from harvest.extract.llm import LLMExtractor
from testkit.openai_server import OpenAITestServer
from tests.helpers import reset_harvest_caches

PAGE = """Activity: Anthony Beale Reserve playground
Where: Anthony Beale Reserve, 277 St Helena Rd, St Helena VIC 3088, Australia
About: A bright, colourful playground with a flying fox.
"""
URL = "https://example.org/page"
MODEL = "gpt-4o-mini"


class Outage:
    """A database of its own that can be taken away for real: new connections refused (ALLOW_CONNECTIONS false)
    and every open one terminated by the server."""

    def __init__(self) -> None:
        base = make_url(os.environ.get("HARVEST_TEST_DATABASE_URL",
                                       "postgresql+psycopg://harvest:harvest@127.0.0.1:5432/harvest_test"))
        self.name = f"harvest_outage_{uuid.uuid4().hex[:10]}"
        self.admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        self.url = base.set(database=self.name).render_as_string(hide_password=False)
        upgrade(self.url)

    def begin(self) -> None:
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            connection.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"
            ), {"name": self.name})

    def end(self) -> None:
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')

    def drop(self) -> None:
        self.end()
        get_engine(self.url).dispose()
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.dispose()


@pytest.fixture
def outage(monkeypatch: pytest.MonkeyPatch) -> Iterator[Outage]:
    monkeypatch.setenv("HARVEST_DB_RECONNECT_SECONDS", "0.5")  # an outage longer than the reconnect window
    reset_harvest_caches()
    db = Outage()
    try:
        yield db
    finally:
        db.drop()
        reset_harvest_caches()


def _extractor(server: OpenAITestServer, engine: sa.Engine, run_id: str) -> LLMExtractor:
    client = openai.OpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0)
    return LLMExtractor(client, MODEL, cache=LLMAnswerCache(engine),
                        meter=Meter("crawl", book=RunBook(engine, run_id)))


def test_a_paid_answer_is_kept_through_a_database_outage_and_never_bought_again(outage: Outage) -> None:
    engine = get_engine(outage.url)
    run_id = "run-paid-answer"
    runs.create_run(engine, run_id, URL, {})
    with OpenAITestServer(dimensions=8) as server:
        first = _extractor(server, engine, run_id)
        started = {"done": False}

        def cut_when_the_answer_is_in(*_: Any) -> None:
            # The first statement after the stand-in answered: whatever records the answer or its cost.
            if not started["done"] and server.stats().get("chat.completions", 0) >= 1:
                started["done"] = True
                outage.begin()

        sa.event.listen(engine, "before_cursor_execute", cut_when_the_answer_is_in)
        try:
            try:
                found: Any = first.extract(PAGE, URL)
            except HarvestError as exc:  # before the fix: the page failed here and its answer was gone
                found = exc
        finally:
            sa.event.remove(engine, "before_cursor_execute", cut_when_the_answer_is_in)
        assert started["done"], "the outage never began"
        outage.end()

        # What a retried page (the crawl task's retry, or the next run) does once the database is back.
        again = _extractor(server, engine, run_id).extract(PAGE, URL)
        assert server.stats().get("chat.completions", 0) == 1, (
            f"the paid answer was bought again: {server.stats().get('chat.completions')} chat requests; "
            f"the first attempt ended with {found!r}")
        assert [a.name for a in again] == ["Anthony Beale Reserve playground"]
        assert [a.name for a in found] == ["Anthony Beale Reserve playground"], "the page kept its answer"

        first.settle()  # what the crawl task does at its end: the cost the outage kept from the book
    cost = run_cost(engine, run_id)
    assert cost["usage"][Counter.chat_requests] == 1, cost
    assert cost["cost_usd"] > 0, cost
    assert cost["reserved_usd"] == 0, f"the hold stayed: {cost}"
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM llm_answers")).scalar() == 1
