"""Vectors an unchanged re-run reuses: read from the `activities` rows themselves (same id and content hash:
same text; the writing run's config says which model made them), and, for a run that never imported them,
from the final JSONL the previous run of the same URL kept (`kept_run_embeddings`)."""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from harvest.db.caches import LOOKUP_CHUNK
from harvest.db.engine import database_error, transaction
from harvest.db.schema import activities, one_of, run_files, scrape_runs
from harvest.enrich.embeddings.vectors import parse_final_line, parse_vector
from harvest.storage import ObjectStore, iter_jsonl

VECTOR_CONNECTIONS = 2  # connections reading stored vectors side by side (see reusable_embeddings)


def reusable_embeddings(
    engine: Engine, model: str, content_hashes: dict[str, str]
) -> Iterator[tuple[str, np.ndarray | list[float]]]:
    """(activity id, vector) for activities already in the `activities` table with the same content hash,
    embedded by a run that used the same model: the text did not change, so neither would its vector.

    On Postgres the vectors come as `array_send` bytes, decoded by numpy: ~3x faster than parsing REAL[] text;
    and they come over the binary protocol, so the bytes are not sent as hex text (twice the size) and decoded.
    Most of the time goes to Postgres reading the vectors out of TOAST, so chunks are read on
    VECTOR_CONNECTIONS connections side by side (8,560 vectors: ~1.6 s on one, ~0.85 s on two), at most one
    chunk ahead per connection so memory stays a few chunks whatever the count.
    """
    ids = list(content_hashes)
    chunks = [ids[start: start + LOOKUP_CHUNK] for start in range(0, len(ids), LOOKUP_CHUNK)]
    binary = engine.dialect.name == "postgresql"
    if not binary or len(chunks) < 2:
        for chunk in chunks:
            yield from _same_content(_stored_vectors(engine, model, chunk, binary), content_hashes, binary)
        return
    with ThreadPoolExecutor(max_workers=VECTOR_CONNECTIONS, thread_name_prefix="harvest-vectors") as pool:
        waiting = iter(chunks)
        reading = deque(
            pool.submit(_stored_vectors, engine, model, chunk, True) for chunk in islice(waiting, VECTOR_CONNECTIONS)
        )
        try:
            while reading:
                rows = reading.popleft().result()
                following = next(waiting, None)
                if following is not None:
                    reading.append(pool.submit(_stored_vectors, engine, model, following, True))
                yield from _same_content(rows, content_hashes, binary)
        finally:  # the consumer stopped early or a read failed: start nothing new
            for future in reading:
                future.cancel()


def _stored_vectors(engine: Engine, model: str, ids: list[str], binary: bool) -> list[tuple[Any, ...]]:
    """(id, content hash, vector) of these activities' stored embeddings made with `model`."""
    writer = scrape_runs.alias("writer")
    vector = sa.func.array_send(activities.c.embedding) if binary else activities.c.embedding
    query = (
        sa.select(activities.c.id, activities.c.content_hash, vector)
        .join(writer, writer.c.id == activities.c.run_id)
        .where(
            one_of(activities.c.id, ids, engine.dialect.name),
            activities.c.embedding.is_not(None),
            writer.c.config["embedding_model"].as_string() == model,
        )
    )
    with transaction(engine) as connection:
        return _binary_rows(connection, query) if binary else list(connection.execute(query))


def _same_content(
    rows: Iterable[tuple[Any, ...]], content_hashes: dict[str, str], binary: bool
) -> Iterator[tuple[str, np.ndarray | list[float]]]:
    for activity_id, content_hash, value in rows:
        if content_hashes.get(activity_id) == content_hash:
            yield activity_id, decode_real_array(bytes(value)) if binary else value


def _binary_rows(connection: sa.Connection, query: sa.Select[Any]) -> list[tuple[Any, ...]]:
    """Run `query` on the psycopg connection under SQLAlchemy's, asking for results in binary format."""
    import psycopg

    compiled = query.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True})
    try:
        with cast(Any, connection.connection.driver_connection).cursor(binary=True) as cursor:
            cursor.execute(str(compiled), compiled.params)
            return cursor.fetchall()
    except psycopg.Error as exc:  # raised by the driver cursor, outside SQLAlchemy's wrapping
        raise database_error(exc) from exc


def decode_real_array(data: bytes) -> np.ndarray:
    """A one-dimensional REAL[] in Postgres's binary array format (what `array_send` returns) as float32.

    Layout: ndim, has-nulls flag, element type, then (length, lower bound) per dimension, then per element a
    4-byte length and the big-endian float (length -1 for NULL, which a stored embedding never holds).
    """
    ndim, has_nulls, _ = struct.unpack_from(">iii", data)
    if ndim == 0:
        return np.zeros(0, dtype=np.float32)
    if ndim != 1 or has_nulls:
        raise ValueError(f"expected a one-dimensional REAL[] without NULLs (ndim {ndim}, nulls {has_nulls})")
    elements = np.frombuffer(data, dtype=[("length", ">i4"), ("value", ">f4")], offset=20)
    return elements["value"].astype(np.float32)


def kept_run_embeddings(
    engine: Engine, store: ObjectStore, run_id: str, model: str, content_hashes: dict[str, str]
) -> Iterator[tuple[str, list[float]]]:
    """(activity id, vector) from the final JSONL of the latest earlier run of this run's URL that still keeps it
    and embedded with `model`, for the activities whose id and content hash it holds unchanged.

    An unchanged re-run costs nothing whether or not the run before it imported: without an import its vectors
    are in no `activities` row, but in its kept files until its retention ends. Vectors are parsed only for the
    activities asked for."""
    if not content_hashes:
        return
    final = _kept_final(engine, run_id, model)
    if final is None:
        return
    for record in iter_jsonl(store, final, parse=parse_final_line):
        activity_id = record.get("id")
        wanted = content_hashes.get(activity_id) if isinstance(activity_id, str) else None
        if not wanted or record.get("content_hash") != wanted or record.get("embedding") is None:
            continue
        try:
            vector = parse_vector(record["embedding"])
        except ValueError:
            continue  # unreadable: embedded again
        if isinstance(vector, list) and isinstance(activity_id, str):
            yield activity_id, vector


def _kept_final(engine: Engine, run_id: str, model: str) -> str | None:
    """The URI of the final JSONL of the latest earlier run of `run_id`'s URL made with `model`, still stored."""
    with transaction(engine) as connection:
        mine = connection.execute(
            sa.select(scrape_runs.c.url, scrape_runs.c.started_at).where(scrape_runs.c.id == run_id)
        ).first()
        if mine is None:
            return None
        uri = connection.execute(
            sa.select(run_files.c.uri)
            .join(scrape_runs, scrape_runs.c.id == run_files.c.run_id)
            .where(
                scrape_runs.c.url == mine.url, scrape_runs.c.id != run_id, scrape_runs.c.started_at < mine.started_at,
                scrape_runs.c.config["embedding_model"].as_string() == model,
                run_files.c.kind == "final_jsonl", run_files.c.deleted_at.is_(None), run_files.c.missing_at.is_(None),
            )
            .order_by(scrape_runs.c.started_at.desc()).limit(1)
        ).scalar()
    return str(uri) if uri else None
