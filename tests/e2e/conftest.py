"""The e2e stack, once per session: a Prefect server on a Postgres database of its own, the three work pools and every
deployment of prefect.yaml (`prefect --no-prompt deploy --all`). Every module of a session uses the one stack
(setting it up took ~25 s a module); `make test` keeps these modules on one worker (tests/conftest.py) so there is
one."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from testkit.net import free_port
from tests.e2e.test_deployment import DOCKER_POOL, POOL, PREFECT, SOURCES_POOL, Stack, wait_for


@pytest.fixture(scope="session")
def prefect_database(pg_url: str) -> Iterator[str]:
    """A fresh Postgres database for the Prefect server (dropped afterwards), so runs start clean."""
    import psycopg

    url = make_url(pg_url)
    name = f"harvest_prefect_e2e_{uuid.uuid4().hex[:10]}"
    conninfo = dict(host=url.host, port=url.port or 5432, user=url.username, password=url.password, dbname=url.database)
    with psycopg.connect(**conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield url.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
    with psycopg.connect(**conninfo, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def stack(prefect_database: str) -> Iterator[Stack]:
    home = Path(tempfile.mkdtemp(prefix="harvest-e2e-"))
    port = free_port()
    marker = uuid.uuid4().hex
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HARVEST_"))},
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": prefect_database,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true",  # the UI test opens the flow run's page (first start copies its static files)
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "HARVEST_E2E_MARKER": marker,
    }
    stack = Stack(api_url=env["PREFECT_API_URL"], ui_url=f"http://127.0.0.1:{port}", env=env, logs=home, marker=marker)
    try:
        server = stack.start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env)

        def healthy() -> bool:
            assert server.poll() is None, f"server exited:\n{stack.log_tail('server')}"
            try:
                return httpx.get(f"{stack.api_url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 180, "the Prefect server to be healthy")
        # Both pools, as the operator steps in prefect.yaml say. The docker pool needs no prefect-docker: the
        # server knows the `docker` worker type (and its base job template) from its bundled collection registry.
        pools = [stack.cli_async("work-pool", "create", name, "--type", kind)
                 for name, kind in ((POOL, "process"), (DOCKER_POOL, "docker"), (SOURCES_POOL, "process"))]
        for pool in pools:
            out, err = pool.communicate(timeout=120)
            assert pool.returncode == 0, out + err
        started = time.monotonic()
        deployed = stack.cli("--no-prompt", "deploy", "--all")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        stack.timings["deploy_s"] = time.monotonic() - started
        stack.timings["deployed_at"] = time.monotonic()
        yield stack
    finally:
        stack.stop_all()
        shutil.rmtree(home, ignore_errors=True)  # failures carry the log tails in their messages
