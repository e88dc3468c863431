"""What the caches share: an upsert by key in slices of LOOKUP_CHUNK rows, and that slice size for lookups.

The caches themselves sit with the steps that use them: the geocode cache in harvest/enrich/geocode/cache.py,
the image cache in harvest/enrich/images/cache.py, reused vectors in harvest/enrich/embeddings/reuse.py, the LLM
answers in harvest/extract/answers.py, the page memory in harvest/crawl/page_cache.py.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from harvest.db.engine import transaction

LOOKUP_CHUNK = 1000


def upsert_rows(engine: Engine, table: sa.Table, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """Insert `rows` into `table`, each updating the stored row of the same `keys` (the last answer wins)."""
    if not rows:
        return
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    with transaction(engine) as connection:
        for start in range(0, len(rows), LOOKUP_CHUNK):
            chunk = rows[start: start + LOOKUP_CHUNK]
            statement = dialect.insert(table).values(chunk)
            updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
            connection.execute(statement.on_conflict_do_update(index_elements=keys, set_=updates))
