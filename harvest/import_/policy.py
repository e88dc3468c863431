"""The upsert policy: when an imported row replaces the stored one, and what of it. One rule, built once per set
of enrichments as an ON CONFLICT clause (`on_conflict`, for both write paths) and mirrored in Python (`writes`,
for the rows skipped before they are sent).

Design choice: enrichment is a best effort that can fail per run, content is not, so they are merged differently.
(1) Recency: every row carries the start time of the run that wrote it (`run_started_at`); a run that started
earlier never overwrites it (an old kept run imported late, a resumed run that failed before its import).
(2) Enrichment groups: each enrichment's columns (`Enrichment.columns`: image uri/width/height; latitude,
longitude, place_id; embedding_hash and the embedding) are taken from the new row only when the new row has the
group's key: a NULL from a run whose image, geocode or embedding step failed never replaces a stored value (the
stored image stays referenced, so the sweep keeps it). The cost: an image a site really removed stays until
another image replaces it. (3) A row is written when its content hash changed, or when, content unchanged, the
run brings an enrichment group that differs from the stored one (a geocode that now succeeds, a new embedding
model: `embedding_hash`, a sha256 of the vector's JSON, says so without parsing it). (4) Sources (issue 32): a row
is written only when its source's claim takes precedence over every other source's claim on the activity
(harvest/import_/provenance.py); recency (1) compares runs of the same source only (between sources, precedence
decides, and it already prefers the newest among equals).

The groups come from the registry (harvest/enrich/registry.py), so a new enrichment's columns follow the same
rule with no edit here; a column of it that harvest/db/schema.py does not list (its migration added it) is part
of the table the import writes (`ImportTable.table`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from harvest.db.schema import activities
from harvest.enrich.base import Enrichment
from harvest.import_.provenance import not_outranked

STAGE = "harvest_import_stage"  # the COPY's staging table (harvest/import_/copy.py)


@dataclass(frozen=True)
class Group:
    """One enrichment's columns: taken whole from a new row whose `key` is not NULL, else kept (rule 2);
    `compared`: the columns that say the group differs (rule 3)."""

    key: str
    columns: tuple[str, ...]
    compared: tuple[str, ...]


class ImportTable:
    """`activities` as the import writes it for a set of enrichments: its columns, the enrichment groups, the
    policy as SQL and in Python, and the columns the pre-check reads of a stored row."""

    def __init__(self, enrichments: Iterable[Enrichment]) -> None:
        enrichments = tuple(enrichments)
        self.table = _table_with(enrichments)
        self.columns = [c.name for c in self.table.columns]
        self.updatable = [name for name in self.columns if name not in ("id", "created_at")]
        self.groups = [
            Group(e.columns[0].name, tuple(c.name for c in e.columns),
                  tuple(c.name for c in e.columns if c.name not in e.uncompared))
            for e in enrichments if e.columns
        ]
        self._group_of = {column: group.key for group in self.groups for column in group.columns}
        # What the pre-check reads of a stored row to apply the policy without sending the new one.
        self.policy_columns = ["dedupe_key", "content_hash", "run_started_at", "source",
                               *(c for group in self.groups for c in group.compared)]

    def on_conflict(self, statement: Any) -> Any:
        """The policy (module docstring) as one ON CONFLICT clause, for either dialect's INSERT."""
        new = statement.excluded
        stored = self.table.c

        def value(name: str) -> Any:
            if name in self._group_of:  # an enrichment column: the new group only when the new row has it
                return sa.case((new[self._group_of[name]].is_(None), stored[name]), else_=new[name])
            return new[name]

        better_enrichment = [
            sa.and_(new[group.key].is_not(None), sa.or_(*(stored[c].is_distinct_from(new[c]) for c in group.compared)))
            for group in self.groups
        ]
        return statement.on_conflict_do_update(
            index_elements=[stored.dedupe_key],
            set_={name: value(name) for name in self.updatable},
            where=sa.and_(
                not_outranked(),
                sa.or_(stored.source.is_distinct_from(new.source), stored.run_started_at.is_(None),
                       stored.run_started_at <= new.run_started_at),
                sa.or_(stored.content_hash.is_distinct_from(new.content_hash), *better_enrichment),
            ),
        )

    def writes(self, stored: Any, row: dict[str, Any]) -> bool:
        """The policy's WHERE in Python, for the rows looked up before a batch is sent (skipped without work); the
        claims' precedence (rule 4) is judged apart, over the claims (harvest/import_/provenance.py::outranks)."""
        if stored is None:
            return True
        if (stored["source"] == row.get("source") and stored["run_started_at"] is not None
                and stored["run_started_at"] > row["run_started_at"]):
            return False  # a newer run of the same source wrote this row
        if stored["content_hash"] != row["content_hash"]:
            return True
        return any(
            row[group.key] is not None and any(stored[c] != row[c] for c in group.compared)
            for group in self.groups
        )

    @cached_property
    def staged_upsert_sql(self) -> str:
        """The Postgres upsert from the COPY's staging table, compiled once: INSERT ... SELECT ... ON CONFLICT
        with the policy, RETURNING per written row whether it was inserted."""
        staged = sa.table(STAGE, *(sa.column(name) for name in self.columns))
        return str(
            self.on_conflict(postgresql.insert(self.table).from_select(self.columns, sa.select(*staged.c)))
            .returning(sa.literal_column("(xmax = 0)").label("inserted"))
            .compile(dialect=postgresql.psycopg.dialect())
        )


@lru_cache(maxsize=8)
def import_table(enrichments: tuple[Enrichment, ...]) -> ImportTable:
    """The ImportTable of these enrichments (built once per set: the registry rarely changes)."""
    return ImportTable(enrichments)


def _table_with(enrichments: tuple[Enrichment, ...]) -> sa.Table:
    """`activities` itself, or, when an enrichment owns a column the schema module does not list, a copy of it
    with that column added (the enrichment's migration added it to the database)."""
    extra = [column for e in enrichments for column in e.columns if column.name not in activities.c]
    if not extra:
        return activities
    return sa.Table("activities", sa.MetaData(), *(c._copy() for c in activities.columns),
                    *(c._copy() for c in extra))
