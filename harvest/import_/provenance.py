"""Where an activity came from (issue 32): one `activities` row per activity, and one claim per source that lists
it (`activity_sources`), holding that source's own values and when it last saw the activity.

A *source* is a run's start URL as its `scrape_runs` row records it (harvest/urls.py's `validate_start_url`: the
URL stripped). A claim is keyed on the stored row's `dedupe_key` as a value, whatever formula computed it.

Precedence (which claim's values the row shows), decided per activity over its claims:
1. **First party first.** A claim is first-party when its source's host is the host of the activity's own URL as
   that source gives it: the item's own URL (`item_url`, e.g. schema.org `url`), else the page it was found on.
   The venue's site listing its own event is first-party; an aggregator whose item points at the venue's site is
   not. Hosts are compared lowercased, without a leading `www.`.
2. **Then the newest**: the claim whose source's run that listed it started last (`last_seen_at`), which is what the
   table did before sources were told apart (a newer run overwrites).
3. **Then the source URL** (the smaller string), so a tie is decided the same way everywhere.

The import applies it twice, like the rest of its policy (harvest/import_/policy.py): the pre-check holds back rows
another claim outranks (`outranks`), and the write's `ON CONFLICT ... WHERE` applies it again against the claims as
they are at write time (`not_outranked`), so two sources importing at once cannot both win. Every row of a batch
records its claim (written or not: held and unchanged rows too, so `last_seen_at` moves), one statement per batch.

`withdraw_source` removes a source's claims; a row that showed that source's values is re-derived from the best
remaining claim, and a row no source claims any more is deleted (see its docstring for why).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from itertools import islice
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from harvest.db.engine import transaction, utcnow
from harvest.db.schema import Timestamp, activities, activity_sources, one_of
from harvest.urls import validate_start_url

# Columns a claim does not keep in `fields`: the key, the vector (6 kB; its hash is kept) and the bookkeeping.
NOT_FIELDS = frozenset({"id", "dedupe_key", "embedding", "created_at", "updated_at", "run_id", "run_started_at",
                        "source"})
_CHUNK = 1000


def source_of(url: str) -> str:
    """A source as claims record it: the start URL as validate_start_url leaves it (the run row's `url`)."""
    return validate_start_url(url)


def host_of(url: str | None) -> str:
    """The host two URLs are compared by: lowercased, without a leading `www.`; "" when there is none. Read with
    string operations, not urlsplit (its checks were most of a row's claim cost on an unchanged re-import); the
    URLs here were made absolute and safe by the standardizer."""
    if not url:
        return ""
    _, separator, rest = url.partition("://")
    if not separator:
        return ""
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]
    host = authority[1:authority.find("]")] if authority.startswith("[") else authority.partition(":")[0]
    host = host.lower()
    return host[4:] if host.startswith("www.") else host


def is_first_party(source: str, record: dict[str, Any]) -> bool:
    """Precedence rule 1: the source's host is the host of the activity's own URL as this source gives it."""
    own = host_of(record.get("item_url") or record.get("source_url"))
    return bool(own) and own == host_of(source)


@dataclass(frozen=True)
class Rank:
    """What precedence compares of a claim."""

    first_party: bool
    last_seen_at: datetime
    source_url: str


def outranks(a: Rank, b: Rank) -> bool:
    """True when claim `a` takes precedence over claim `b` (module docstring: first party, newest, source URL)."""
    if a.first_party != b.first_party:
        return a.first_party
    if a.last_seen_at != b.last_seen_at:
        return a.last_seen_at > b.last_seen_at
    return a.source_url < b.source_url


def outranks_sql(a: Any, b: Any) -> sa.ColumnElement[bool]:
    """`outranks` in SQL over two aliases of activity_sources (either dialect: booleans compare false < true)."""
    return sa.or_(
        a.c.first_party > b.c.first_party,
        sa.and_(a.c.first_party == b.c.first_party, a.c.last_seen_at > b.c.last_seen_at),
        sa.and_(a.c.first_party == b.c.first_party, a.c.last_seen_at == b.c.last_seen_at,
                a.c.source_url < b.c.source_url),
    )


def not_outranked() -> sa.ColumnElement[bool]:
    """For the upsert's WHERE: the new row's source (`excluded.source`) holds the best claim on its key as the
    claims are at write time, and its claim is this run's (no later run of the source listed the activity). True
    for a row of no source (no claims: the table's policy as before sources)."""
    # `excluded` by name: SQLAlchemy would make its alias a FROM of the subquery (it correlates only to FROMs of an
    # enclosing SELECT, and ON CONFLICT has none); both dialects name the proposed row `excluded`.
    key: sa.ColumnElement[Any] = sa.literal_column("excluded.dedupe_key")
    source: sa.ColumnElement[Any] = sa.literal_column("excluded.source")
    started: sa.ColumnElement[Any] = sa.literal_column("excluded.run_started_at")
    other, mine = activity_sources.alias("other_claim"), activity_sources.alias("my_claim")
    outranked = sa.exists().where(
        mine.c.dedupe_key == key, mine.c.source_url == source,
        other.c.dedupe_key == key, other.c.source_url != source, outranks_sql(other, mine),
    )
    later = sa.exists().where(mine.c.dedupe_key == key, mine.c.source_url == source, mine.c.last_seen_at > started)
    return sa.and_(~outranked, ~later)


def _jsonable(value: Any) -> Any:
    """A row's value as JSON keeps it: times as ISO text, a number JSON cannot write (NaN, infinity) as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return value


def claim_row(
    row: dict[str, Any], first_party: bool, source: str, started: datetime, now: datetime, fields: Sequence[str],
) -> dict[str, Any]:
    """One source's claim on one row; `fields`: the columns it keeps (`claim_fields`)."""
    return {
        "dedupe_key": row["dedupe_key"],
        "source_url": source,
        "first_party": first_party,
        "run_id": row["run_id"],
        "first_seen_at": started,
        "last_seen_at": started,
        "fields": {name: _jsonable(row.get(name)) for name in fields},
        "updated_at": now,
    }


def claim_fields(columns: Iterable[str]) -> list[str]:
    """The columns a claim keeps of a row: all but the key, the vector and the bookkeeping (NOT_FIELDS)."""
    return [name for name in columns if name not in NOT_FIELDS]


def _claims_upsert(dialect: str) -> Any:
    """Insert claims, or refresh a source's claim from a run at least as new as the one that wrote it (an older run
    imported late changes nothing); `first_seen_at` stays."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(activity_sources)
    new, stored = statement.excluded, activity_sources.c
    return statement.on_conflict_do_update(
        index_elements=[stored.dedupe_key, stored.source_url],
        set_={name: new[name] for name in ("first_party", "run_id", "last_seen_at", "fields", "updated_at")},
        where=stored.last_seen_at <= new.last_seen_at,
    )


@dataclass
class Touch:
    """Claims a run confirms without new values: rows it judged unchanged that show its own claim (the claim
    holds what the row holds). Only `last_seen_at` and `run_id` move: one UPDATE over the keys, no JSON (an
    unchanged re-import, the common case of a scheduled source, writes no claim's fields)."""

    source_url: str
    run_id: str
    last_seen_at: datetime
    updated_at: datetime
    keys: list[str]


def write_claims(connection: sa.Connection, claims: Sequence[dict[str, Any]], touch: Touch | None = None) -> None:
    """A batch's claims set-wise, in the transaction that writes its rows: new or changed claims in one upsert,
    confirmed ones (`touch`) in one UPDATE."""
    if claims:
        connection.execute(_claims_upsert(connection.dialect.name), list(claims))
    if touch is not None and touch.keys:
        c = activity_sources.c
        connection.execute(
            activity_sources.update()
            .where(c.source_url == touch.source_url, one_of(c.dedupe_key, touch.keys, connection.dialect.name),
                   c.last_seen_at <= touch.last_seen_at)
            .values(last_seen_at=touch.last_seen_at, run_id=touch.run_id, updated_at=touch.updated_at)
        )


def claims_on(connection: sa.Connection, keys: Sequence[str]) -> dict[str, list[Rank]]:
    """Every claim's rank on these keys, by key (the import's pre-check)."""
    if not keys:
        return {}
    found: dict[str, list[Rank]] = {}
    c = activity_sources.c
    for key, first_party, seen, source in connection.execute(
        sa.select(c.dedupe_key, c.first_party, c.last_seen_at, c.source_url)
        .where(one_of(c.dedupe_key, list(keys), connection.dialect.name))
    ):
        found.setdefault(key, []).append(Rank(bool(first_party), seen, source))
    return found


@dataclass(frozen=True)
class Claim:
    """One source's claim on an activity, as `sources_of` reads it."""

    source_url: str
    first_party: bool
    run_id: str
    first_seen_at: datetime
    last_seen_at: datetime
    fields: dict[str, Any]

    @property
    def rank(self) -> Rank:
        return Rank(self.first_party, self.last_seen_at, self.source_url)


def _claims(connection: sa.Connection, keys: Sequence[str]) -> dict[str, list[Claim]]:
    found: dict[str, list[Claim]] = {}
    c = activity_sources.c
    query = (sa.select(c.dedupe_key, c.source_url, c.first_party, c.run_id, c.first_seen_at, c.last_seen_at, c.fields)
             .where(one_of(c.dedupe_key, list(keys), connection.dialect.name)).order_by(c.dedupe_key, c.source_url))
    for row in connection.execute(query):
        fields = json.loads(row.fields) if isinstance(row.fields, str) else dict(row.fields)
        found.setdefault(row.dedupe_key, []).append(
            Claim(row.source_url, bool(row.first_party), row.run_id, row.first_seen_at, row.last_seen_at, fields)
        )
    for claims in found.values():  # best first
        claims.sort(key=lambda claim: (not claim.first_party, -claim.last_seen_at.timestamp(), claim.source_url))
    return found


def sources_of(engine: Engine, keys: Sequence[str]) -> dict[str, list[Claim]]:
    """The claims on these activities (by dedupe_key), the one that takes precedence first."""
    result: dict[str, list[Claim]] = {}
    with transaction(engine) as connection:
        for chunk in _chunks(keys):
            result.update(_claims(connection, chunk))
    return result


@dataclass
class Withdrawal:
    """What `withdraw_source` did: claims removed, rows re-derived from another claim, rows deleted."""

    source_url: str
    claims: int = 0
    rederived: int = 0
    deleted: int = 0


def withdraw_source(engine: Engine, source_url: str, table: sa.Table | None = None) -> Withdrawal:
    """Remove one source's claims: what it alone held goes, what others also claim stays.

    A row that shows this source's values (`activities.source`) and that another source still claims is
    re-derived from the best remaining claim (precedence, module docstring): its values, `source`, `run_id` and
    `run_started_at` (the claim's `last_seen_at`). Its vector is kept only when that claim's `embedding_hash` is the
    row's; otherwise the vector and hash are cleared (the vector described other text, and a cleared one is
    filled by that source's next run: a better enrichment is always written). A row that shows another source's
    values stays as it is.

    A row no source claims any more is deleted, not marked: every row of the table is then listed by at least one
    source; an unclaimed row would never be refreshed by any run again and would only go stale, and the sweep
    (which keeps images that rows and claims reference) can free its image. Its history stays in the runs' files.
    `table`: `activities` with any plug-in enrichment's columns (harvest/import_/policy.py's ImportTable.table).
    """
    source = source_of(source_url)
    table = activities if table is None else table
    outcome = Withdrawal(source)
    now = utcnow()
    with transaction(engine) as connection:
        dialect = connection.dialect.name
        keys = list(connection.execute(
            sa.select(activity_sources.c.dedupe_key).where(activity_sources.c.source_url == source)
        ).scalars())
        outcome.claims = len(keys)
        connection.execute(activity_sources.delete().where(activity_sources.c.source_url == source))
        for chunk in _chunks(keys):
            shown = {
                row.dedupe_key: row for row in connection.execute(
                    sa.select(table.c.dedupe_key, table.c.embedding_hash)
                    .where(one_of(table.c.dedupe_key, chunk, dialect), table.c.source == source)
                )
            }
            remaining = _claims(connection, list(shown))
            updates = [_rederived(table, shown[key], claims[0], now) for key, claims in remaining.items()]
            for values in updates:
                connection.execute(
                    table.update().where(table.c.dedupe_key == values.pop("dedupe_key")).values(**values)
                )
            outcome.rederived += len(updates)
            unclaimed = sa.select(activity_sources.c.dedupe_key).where(
                activity_sources.c.dedupe_key == table.c.dedupe_key
            )
            outcome.deleted += connection.execute(
                table.delete().where(one_of(table.c.dedupe_key, chunk, dialect), ~sa.exists(unclaimed))
            ).rowcount
    return outcome


def _rederived(table: sa.Table, row: Any, claim: Claim, now: datetime) -> dict[str, Any]:
    """The values of a row re-derived from `claim`."""
    values: dict[str, Any] = {"dedupe_key": row.dedupe_key}
    for name, value in claim.fields.items():
        if name in table.c and name not in NOT_FIELDS:
            values[name] = _column_value(table.c[name], value)
    if claim.fields.get("embedding_hash") != row.embedding_hash:
        values["embedding"], values["embedding_hash"] = None, None
    values.update(source=claim.source_url, run_id=claim.run_id, run_started_at=claim.last_seen_at, updated_at=now)
    return values


def _column_value(column: sa.Column[Any], value: Any) -> Any:
    """A `fields` value as its column takes it (times were kept as ISO text; SQLite gives booleans as numbers and,
    for rows claimed by the migration, JSON columns as text)."""
    if value is None:
        return None
    kind = column.type
    if isinstance(kind, Timestamp):
        return datetime.fromisoformat(str(value))
    if isinstance(kind, sa.Boolean):
        return bool(value)
    if isinstance(kind, sa.JSON) and isinstance(value, str):
        return json.loads(value)
    return value


def _chunks(keys: Sequence[str]) -> Iterator[list[str]]:
    iterator = iter(keys)
    while chunk := list(islice(iterator, _CHUNK)):
        yield chunk
