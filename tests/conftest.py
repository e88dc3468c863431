"""Test services: real Postgres, a real S3 HTTP endpoint (moto server), the local OpenAI and geocoder
wire-protocol servers, the demo site on loopback, and Prefect's ephemeral API in a private PREFECT_HOME.

Environment is fixed before Prefect is imported so the whole session uses its own Prefect database.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.s3 import MotoS3
from tests.helpers import (
    SEEDED_HOME_SERVER_SETTINGS,
    TEST_OPENAI_KEY,
    database_url,
    reset_harvest_caches,
    seed_prefect_home,
)

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="harvest-tests-"))
seed_prefect_home(_SESSION_HOME / "prefect")  # the session's temporary API starts on a migrated database
os.environ.update(
    {
        "PREFECT_HOME": str(_SESSION_HOME / "prefect"),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # A hang guard, not a promise: the workers start their APIs at once, beside the e2e stack and the image
        # build (a clean-clone run at load 10-12 timed out at 120 s)
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
        # `harvest` subprocesses use Prefect's own temporary server, as before issue 28: a background server per
        # test's PREFECT_HOME would outlive the test. The CLI tests of the other modes set it themselves.
        "HARVEST_PREFECT_SERVER": "prefect",
        "HARVEST_HOME": str(_SESSION_HOME / "harvest"),
        "AWS_ACCESS_KEY_ID": "testing-access-key",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key-do-not-leak",
        "AWS_DEFAULT_REGION": "us-east-1",
        **SEEDED_HOME_SERVER_SETTINGS,  # every PREFECT_HOME the session's servers start on is a seeded one
    }
)
for _name in ("PREFECT_API_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "GOOGLE_MAPS_API_KEY"):
    os.environ.pop(_name, None)

DEFAULT_PG_URL = "postgresql+psycopg://harvest:harvest@127.0.0.1:5432/harvest_test"


@pytest.fixture(scope="session")
def s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A database of this session's own, created through the one `make test` prepared and dropped after.

    Its own, so two test sessions on one machine (or the benchmark) never truncate each other's rows.
    Tests fail loudly (not skip) when Postgres or the role is missing.
    """
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from harvest.db.engine import dispose_all, upgrade

    base = make_url(os.environ.get("HARVEST_TEST_DATABASE_URL", DEFAULT_PG_URL))
    name = f"harvest_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT", pool_pre_ping=True)  # survives a restart test
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    dispose_all()
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def clean_db(pg_url: str) -> str:
    import sqlalchemy as sa

    from harvest.db.engine import get_engine

    with get_engine(pg_url).begin() as connection:
        connection.execute(sa.text("TRUNCATE activities, run_files, scrape_runs, geocode_cache, image_cache, llm_answers, page_cache, sources CASCADE"))
    return pg_url


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module that names DATABASES (e.g. ["postgres", "sqlite"]) runs each of its tests taking `engine` once per
    database, in that order."""
    databases = getattr(metafunc.module, "DATABASES", None)
    if databases and "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", databases, indirect=True)


@pytest.fixture
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    """An engine on an empty, migrated database: Postgres, or the one DATABASES gives this test."""
    from harvest.db.engine import get_engine

    return get_engine(database_url(request, tmp_path, getattr(request, "param", "postgres")))


@pytest.fixture
def store(s3: MotoS3) -> object:
    """An S3 store (the real client) on a fresh bucket of the session's moto server."""
    from harvest.storage import S3Store, make_s3_client

    return S3Store(make_s3_client(s3.endpoint), s3.new_bucket(), "harvest")


@pytest.fixture(scope="session")
def openai_server() -> Iterator[object]:
    from testkit.openai_server import OpenAITestServer

    with OpenAITestServer(dimensions=1536) as server:
        yield server


@pytest.fixture(scope="session")
def geocoder_server() -> Iterator[object]:
    from testkit.geocoder_server import GeocoderTestServer

    with GeocoderTestServer() as server:
        yield server


@pytest.fixture(scope="session")
def demo_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The bundled demo site (40 real activities) served on loopback."""
    from testkit.demo_site import build_demo_site, serve_site

    root = tmp_path_factory.mktemp("demo-site")
    info = build_demo_site(root, limit=40)
    with serve_site(root) as server:
        server.info = info
        yield server


@pytest.fixture(scope="session")
def harvest_bucket(s3: MotoS3) -> str:
    """The bucket harvest_env gives every test of the session, emptied before each.

    One name rather than a new bucket per test: a run checks that Prefect's result-storage block `harvest-results`
    is rooted at HARVEST_STORAGE_URL and saves it again when not, and Prefect's block save costs ~1.1 CPU-s
    (it builds the block's JSON schema once per field), so a new bucket per test made nearly every flow run of
    the suite pay it. Emptied, the bucket is what a new one was to the test."""
    return s3.new_bucket()


@pytest.fixture
def harvest_env(
    monkeypatch: pytest.MonkeyPatch, clean_db: str, s3: MotoS3, harvest_bucket: str, openai_server: object,
    geocoder_server: object,
) -> Iterator[dict[str, str]]:
    """HARVEST_* settings for a flow run against Postgres, an empty S3 bucket and the local API servers."""
    bucket = s3.emptied(harvest_bucket)
    env = {
        "HARVEST_DATABASE_URL": clean_db,
        "HARVEST_STORAGE_URL": f"s3://{bucket}/harvest",
        "HARVEST_S3_ENDPOINT_URL": s3.endpoint,
        "OPENAI_API_KEY": TEST_OPENAI_KEY,
        "OPENAI_BASE_URL": openai_server.base_url,  # type: ignore[attr-defined]
        "HARVEST_GEOCODER": "nominatim",
        "HARVEST_GEOCODER_URL": geocoder_server.base_url,  # type: ignore[attr-defined]
        "HARVEST_GEOCODER_RATE_PER_SECOND": "200",
        "HARVEST_ALLOW_PRIVATE_NETWORKS": "true",
        "HARVEST_BATCH_POLL_SECONDS": "0.2",
        "HARVEST_BATCH_POLL_MAX_SECONDS": "0.5",
        "HARVEST_BATCH_MAX_WAIT_SECONDS": "30",
        "HARVEST_EMBEDDINGS_SYNC_BELOW": "0",  # the batch path, as on big runs; tests of the sync path set it
        "HARVEST_REQUEST_TIMEOUT_SECONDS": "5",
        "HARVEST_BUCKET": bucket,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for server in (openai_server, geocoder_server):
        server.reset()  # type: ignore[attr-defined]
    reset_harvest_caches()
    yield env
    reset_harvest_caches()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The docker test last among the e2e modules: its image is built in the background from the start of
    `make test` (scripts/prebuild-images.sh) and, cold, takes minutes; run second, as file order had it, the e2e
    worker sat waiting for that build (87 s on a clean clone) while the other modules could have run."""
    docker = [item for item in items if item.nodeid.startswith("tests/e2e/test_docker.py")]
    if not docker:
        return
    others = [item for item in items if not item.nodeid.startswith("tests/e2e/test_docker.py")]
    e2e = [index for index, item in enumerate(others) if item.nodeid.startswith("tests/e2e/")]
    at = e2e[-1] + 1 if e2e else len(others)
    items[:] = others[:at] + docker + others[at:]


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadfile` (what `make test` runs), with every module of tests/e2e on one worker: they share one
    Prefect server, work pools and `deploy --all` (tests/e2e/conftest.py), which take ~25 s to set up.

    Each worker is a process of its own with its own session fixtures: its own database (pg_url), PREFECT_HOME
    and HARVEST_HOME (the temporary folder above), moto S3 server, API stand-ins and ports (free ports)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class E2EOnOneWorker(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return "tests/e2e" if scope.startswith("tests/e2e/") else scope

        def _reschedule(self, node: Any) -> None:
            # The e2e modules are the longest chain (~5-10 min): their worker takes no other file until they are
            # done (xdist would queue one behind them, and that file would wait there while others sit idle).
            if any(scope == "tests/e2e" and not all(done.values())
                   for scope, done in self.assigned_work.get(node, {}).items()):
                return
            super()._reschedule(node)

    return E2EOnOneWorker(config, log)  # type: ignore[arg-type]
