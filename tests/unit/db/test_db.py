"""Run records and the activities import against real Postgres (and SQLite, the embedded default)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from harvest.db import runs
from harvest.db.engine import get_engine, transaction, upgrade
from harvest.db.schema import activities
from harvest.errors import DatabaseError
from harvest.import_.activities import import_activities
from harvest.models import FileRef
from harvest.retention.queries import mark_run_files_deleted

DATABASES = ["postgres", "sqlite"]  # every test taking `engine` runs on both (tests/conftest.py)


def count_activities(engine) -> int:  # noqa: ANN001
    with transaction(engine) as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(activities)).scalar_one())


def record(n: int, **changes: object) -> dict:
    base = {
        "id": f"id-{n}", "name": f"Playground {n}", "description": "Swings", "urgency": "medium", "is_public": True,
        "location": {"name": f"Park {n}", "formatted_address": f"{n} Main Rd, Eltham VIC 3095, Australia",
                     "latitude": -37.7, "longitude": 145.1, "place_id": f"p{n}"},
        "start_date": "2024-05-01T10:00:00+10:00", "end_date": None, "tags": ["park"],
        "embedding": [0.5, 0.25], "image": {"uri": "s3://b/images/x.webp", "width": 10, "height": 5},
        "source_url": "http://site/a", "content_hash": f"h{n}",
    }
    base.update(changes)
    return base


def test_run_lifecycle(engine) -> None:  # noqa: ANN001
    assert runs.create_run(engine, "r1", "http://site/", {"max_pages": 3}, work_pool="pool") is True
    runs.record_file(engine, "r1", FileRef(kind="raw_activities", uri="s3://b/runs/r1/raw.jsonl", records=3, bytes=10, sha256="ab"))
    runs.record_file(engine, "r1", FileRef(kind="raw_activities", uri="s3://b/runs/r1/raw.jsonl", records=4, bytes=12, sha256="cd"))
    runs.record_step(engine, "r1", "crawl", {"items_in": 3})
    runs.add_warnings(engine, "r1", ["w1"], failed_urls=[{"url": "http://site/x", "reason": "404", "status": 404}])
    assert runs.create_run(engine, "r1", "http://site/", {}) is False  # a resumed run
    runs.finish_run(engine, "r1", "completed", retention="kept", activities_processed=4)
    row = runs.get_run(engine, "r1")
    assert row["status"] == "completed" and row["steps"]["crawl"] == {"items_in": 3} and row["warnings"] == ["w1"]
    assert row["failed_urls"][0]["status"] == 404 and row["work_pool"] == "pool"
    view = runs.files_view(engine, "r1")
    assert view["raw_activities"].records == 4  # re-recorded, not duplicated
    with transaction(engine) as connection:
        mark_run_files_deleted(connection, "r1", keep_digest=False)
    assert runs.files_view(engine, "r1") == {}


def test_warnings_are_bounded(engine) -> None:  # noqa: ANN001
    runs.create_run(engine, "r2", "http://site/", {})
    runs.add_warnings(engine, "r2", [f"w{i}" for i in range(2000)])
    warnings = runs.get_run(engine, "r2")["warnings"]
    assert len(warnings) == runs.MAX_WARNINGS and warnings[-1].startswith("... and")


def test_import_dedupes_and_reimport_is_harmless(engine) -> None:  # noqa: ANN001
    batch = [record(n) for n in range(1200)] + [record(5)]  # one duplicate within the file
    summary = import_activities(engine, batch, run_id="r1", batch_size=500)
    assert (summary.imported, summary.updated, summary.skipped, summary.failed) == (1200, 0, 1, 0)
    again = import_activities(engine, [record(n) for n in range(1200)], run_id="r2")
    assert (again.imported, again.updated, again.skipped) == (0, 0, 1200)
    changed = import_activities(engine, [record(1, description="New swings", content_hash="new")], run_id="r3")
    assert (changed.imported, changed.updated) == (0, 1)
    assert count_activities(engine) == 1200


def test_same_name_and_address_with_other_spelling_is_one_row(engine) -> None:  # noqa: ANN001
    a = record(1)
    b = record(1, id="id-other", name="  PLAYGROUND   1 ", content_hash="other")
    b["location"] = {**a["location"], "formatted_address": a["location"]["formatted_address"].upper()}
    summary = import_activities(engine, [a], run_id="r")
    summary2 = import_activities(engine, [b], run_id="r")
    assert (summary.imported, summary2.updated) == (1, 1) and count_activities(engine) == 1


def test_malformed_records_are_counted_not_lost(engine) -> None:  # noqa: ANN001
    bad = [record(1, name=""), record(2, start_date="not a date"), {"nothing": True}]
    summary = import_activities(engine, bad + [record(3)], run_id="r")
    assert (summary.imported, summary.failed) == (1, 3) and len(summary.errors) == 3


def test_dead_database_is_a_database_error(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    from harvest.settings import get_settings
    from testkit.net import free_port

    monkeypatch.setenv("HARVEST_DB_RECONNECT_SECONDS", "0")  # no waiting for a server that never comes
    get_settings.cache_clear()  # settings are read once per process: read them again with the variable set
    request.addfinalizer(get_settings.cache_clear)  # and the next test reads its own environment

    engine = get_engine(f"postgresql+psycopg://harvest:harvest@127.0.0.1:{free_port()}/none")
    with pytest.raises(DatabaseError, match="OperationalError"):
        runs.get_run(engine, "x")


def test_migrations_build_exactly_the_declared_schema(engine) -> None:  # noqa: ANN001
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from harvest.db.schema import metadata

    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_stored_embeddings_are_reused_only_for_the_same_content_and_model(engine) -> None:  # noqa: ANN001
    import numpy as np

    from harvest.enrich.embeddings.reuse import reusable_embeddings

    vector = list(np.linspace(-0.5, 0.5, 8, dtype=np.float32).astype(float))
    runs.create_run(engine, "run-a", "https://a.example/", {"embedding_model": "m-1"})
    import_activities(engine, [record(1, embedding=vector), record(2, embedding=vector)], run_id="run-a")
    found = dict(reusable_embeddings(engine, "m-1", {"id-1": "h1", "id-2": "changed", "id-3": "h3"}))
    assert list(found) == ["id-1"], "id-2's content changed, id-3 was never imported"
    assert np.array_equal(np.asarray(found["id-1"], dtype=np.float32), np.asarray(vector, dtype=np.float32))
    assert dict(reusable_embeddings(engine, "m-2", {"id-1": "h1"})) == {}, "another model, another vector"


def test_stored_embeddings_read_in_several_chunks_are_all_found(engine, monkeypatch) -> None:  # noqa: ANN001
    """Chunks are read side by side on Postgres (one after another on SQLite): each vector still comes back
    once, with its own id, and a changed or unknown activity is still left out."""
    import numpy as np

    from harvest.enrich.embeddings import reuse as caches

    monkeypatch.setattr(caches, "LOOKUP_CHUNK", 2)
    vectors = {n: list(np.full(8, n / 10, dtype=np.float32).astype(float)) for n in range(1, 8)}
    runs.create_run(engine, "run-a", "https://a.example/", {"embedding_model": "m-1"})
    import_activities(engine, [record(n, embedding=vectors[n]) for n in vectors], run_id="run-a")
    wanted = {f"id-{n}": f"h{n}" for n in vectors} | {"id-3": "changed", "id-9": "h9"}

    found = dict(caches.reusable_embeddings(engine, "m-1", wanted))

    assert sorted(found) == sorted(f"id-{n}" for n in vectors if n != 3)
    for n in vectors:
        if n != 3:
            assert np.allclose(np.asarray(found[f"id-{n}"], dtype=np.float32), vectors[n])


def test_connecting_is_retried_with_backoff_until_the_reconnect_window_ends(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A server that drops every connection (a database still starting) is tried again after 0.2, 0.4, 0.8 s...
    and given up once the next wait would pass HARVEST_DB_RECONNECT_SECONDS.

    How many attempts fit in the window depends on how long each failed connect takes on a loaded machine, so
    the test checks what holds at any speed: each wait at least doubles, no wait ended past the window, and the
    give-up came only when the next wait would have passed it (an earlier version counted exactly four
    attempts in 1.5 s: 1.4 s of waits left 0.1 s for four connects, and a loaded machine made it three)."""
    import socket
    import threading

    from harvest.settings import get_settings

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[float] = []

    def drop_everyone() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(time.monotonic())  # before the close: the client's wait starts after this
            connection.close()

    threading.Thread(target=drop_everyone, daemon=True).start()
    request.addfinalizer(listener.close)
    window = 2.2  # waits of 0.2 + 0.4 + 0.8 s fit with 0.8 s to spare; a fourth (1.6 s) never does
    monkeypatch.setenv("HARVEST_DB_RECONNECT_SECONDS", str(window))
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)

    engine = get_engine(f"postgresql+psycopg://harvest:harvest@127.0.0.1:{port}/none?connect_timeout=2")
    started = time.monotonic()
    with pytest.raises(DatabaseError, match="OperationalError"):
        runs.get_run(engine, "x")
    ended = time.monotonic()

    waits = [min(0.2 * 2**n, 2.0) for n in range(len(accepted))]  # the nominal wait after each attempt
    gaps = [later - earlier for earlier, later in zip(accepted, accepted[1:])]
    assert len(accepted) >= 3, accepted  # retried, with room for the 0.4 s wait in any load short of 1.6 s
    assert all(gap >= wait for gap, wait in zip(gaps, waits)), (gaps, waits)  # 0.2, 0.4, 0.8 s...
    assert sum(waits[:-1]) < window, (accepted, window)  # no wait went past the window
    # Given up only when the next wait would pass the window (measured from before the first attempt, so at
    # least as long as the time the retrying saw when it stopped).
    assert (ended - started) + waits[-1] >= window, (ended - started, waits)


def _proxy_dropping_the_first(drops: int, upstream: tuple[str, int], request: pytest.FixtureRequest) -> tuple[int, list[float]]:
    """A TCP proxy on a free port that closes its first `drops` connections at once (a database still starting)
    and passes the later ones through to `upstream`: (its port, when each dropped connection came)."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    dropped: list[float] = []

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if len(dropped) < drops:
                dropped.append(time.monotonic())
                client.close()
                continue
            server = socket.create_connection(upstream)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=pipe, args=(source, sink), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    request.addfinalizer(listener.close)
    return listener.getsockname()[1], dropped


def test_a_database_that_drops_connections_for_a_few_seconds_is_waited_out_by_default(
    clean_db: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """With HARVEST_DB_RECONNECT_SECONDS unset, the documented default (20 s) waits out a short outage, as a
    Postgres restart makes one (~2.5 s in tests/failures/test_postgres_outage.py, which shared machines skip).
    Here a proxy in front of this session's own database drops the first four connections: the read succeeds
    on the fifth attempt, after 0.2 + 0.4 + 0.8 + 1.6 = 3 s of waits (a window under 3 s would fail)."""
    from sqlalchemy.engine import make_url

    from harvest.settings import get_settings

    monkeypatch.delenv("HARVEST_DB_RECONNECT_SECONDS", raising=False)
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)
    real = make_url(clean_db)
    port, dropped = _proxy_dropping_the_first(4, (real.host or "127.0.0.1", real.port or 5432), request)
    runs.create_run(get_engine(clean_db), "through-the-outage", "http://site/", {})

    through_proxy = real.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    row = runs.get_run(get_engine(through_proxy), "through-the-outage")

    assert row is not None and row["url"] == "http://site/"
    assert len(dropped) == 4, dropped
    get_engine(through_proxy).dispose()


def test_timestamps_are_stored_as_instants_and_read_back_in_utc(engine) -> None:  # noqa: ANN001
    """One column type on both databases: an aware time is stored as its instant (SQLite alone kept its wall
    time and dropped the offset, 10 hours off here) and read back aware in UTC; SQL compares instants; NULL
    stays NULL; a naive time SQLite hands back is UTC."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from harvest.db.schema import scrape_runs

    melbourne = datetime(2024, 5, 1, 10, 0, tzinfo=ZoneInfo("Australia/Melbourne"))  # 00:00 UTC
    runs.create_run(engine, "t", "http://site/", {})
    with transaction(engine) as connection:
        connection.execute(scrape_runs.update().where(scrape_runs.c.id == "t").values(expires_at=melbourne))
        stored = connection.execute(
            sa.select(scrape_runs.c.expires_at, scrape_runs.c.finished_at, scrape_runs.c.started_at)
        ).one()
        earlier_than_half_past = connection.execute(
            sa.select(sa.func.count()).select_from(scrape_runs)
            .where(scrape_runs.c.expires_at < datetime(2024, 5, 1, 0, 30, tzinfo=UTC))
        ).scalar_one()
    assert stored.expires_at == melbourne and str(stored.expires_at) == "2024-05-01 00:00:00+00:00"
    assert stored.expires_at.tzinfo is UTC and stored.started_at.tzinfo is UTC
    assert stored.finished_at is None
    assert earlier_than_half_past == 1
    if engine.dialect.name == "sqlite":
        with transaction(engine) as connection:
            connection.exec_driver_sql("UPDATE scrape_runs SET finished_at = '2024-05-01 02:03:04.000000'")
            finished = connection.execute(sa.select(scrape_runs.c.finished_at)).scalar_one()
        assert finished == datetime(2024, 5, 1, 2, 3, 4, tzinfo=UTC) and finished.tzinfo is UTC


def test_threads_migrating_at_once_all_succeed(tmp_path) -> None:  # noqa: ANN001
    """The first tasks of a fresh process (a Dask worker process) call upgrade() from several threads at once;
    Alembic keeps its command context in module globals, so unguarded they failed with KeyError('script')."""
    from concurrent.futures import ThreadPoolExecutor

    urls = [f"sqlite:///{tmp_path / f'race-{n}.db'}" for n in range(3)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        failures = [f.exception() for f in [pool.submit(upgrade, urls[i % 3]) for i in range(24)]]
    assert failures == [None] * 24
    for url in urls:
        with get_engine(url).begin() as connection:
            assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
