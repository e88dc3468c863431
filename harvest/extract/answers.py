"""The LLM extractor's answer cache (`llm_answers`): an unchanged page costs no second completion."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from harvest.db.caches import upsert_rows
from harvest.db.engine import transaction, utcnow
from harvest.db.schema import llm_answers


class LLMAnswerCache:
    """The extraction model's answers by prompt hash: an unchanged page costs no second completion."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, key: str) -> str | None:
        with transaction(self.engine) as connection:
            return connection.execute(sa.select(llm_answers.c.answer).where(llm_answers.c.key == key)).scalar()

    def put(self, key: str, model: str, answer: str) -> None:
        row = {"key": key, "model": model, "answer": answer, "created_at": utcnow()}
        upsert_rows(self.engine, llm_answers, [row], ["key"])
