"""The docker deployment, for real (issue 29): the image built from the Dockerfile, a docker work pool whose base job
template carries the settings, a prefect-docker worker, and `prefect deployment run 'scrape-website/docker'`
against the demo site, on the deployment test's Prefect server (Postgres, every deployment of prefect.yaml).

No image registry is reachable here, so the Dockerfile's base (`python:3.11-slim`) is a stand-in made from Debian
packages by scripts/standin-python-image.sh, built once and cached by its tag. The project image is built with
`docker build --network host` (its layers cached by Docker: a rebuild after a source change redoes the last few
steps). Containers use the host's network (`network_mode: host`), so Postgres, the S3 endpoint (moto), the demo
site, the OpenAI and geocoder stand-ins and the Prefect API all stay on 127.0.0.1.

Needs a Docker engine: `make test` installs Debian's docker.io and starts dockerd when none answers
(scripts/ensure-docker.sh); where none can run, these tests skip and say why.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from harvest.liveness import ProcessIdentity, Verdict, judge, this_process
from tests.e2e.test_deployment import (
    DOCKER_POOL,
    PREFECT,
    ROOT,
    UUID_RE,
    Stack,
    assert_files_kept,
    file_rows,
    settled_row,
    stop_worker,
    wait_for,
    worker_online,
)

# The first test of this file also pays for the cold builds (module fixtures) when nothing built them earlier (make
# test starts them in the background, scripts/prebuild-images.sh): the stand-in base and the image took 332 s + 523 s
# on a clean clone at load 18 on 2 cores, which left the test 45 s of the suite's 900 s hang guard.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2700)]

IMAGE = "harvest:latest"  # what the docker deployment in prefect.yaml runs (`make image` builds it)
BASE_IMAGE = "python:3.11-slim"  # the Dockerfile's FROM
IMAGE_USER = "10001:10001"
UNAVAILABLE = Path(os.environ.get("HARVEST_DOCKER_UNAVAILABLE_FILE", "/tmp/harvest-docker-unavailable"))
BUILD_LOCK = Path(os.environ.get("HARVEST_DOCKER_BUILD_LOCK", "/tmp/harvest-docker-build.lock"))
SETTINGS = (  # what a flow run in the container needs from the test's environment: the pool's `env` carries it
    "HARVEST_DATABASE_URL", "HARVEST_STORAGE_URL", "HARVEST_S3_ENDPOINT_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL",
    "HARVEST_GEOCODER", "HARVEST_GEOCODER_URL", "HARVEST_GEOCODER_RATE_PER_SECOND", "HARVEST_ALLOW_PRIVATE_NETWORKS",
    "HARVEST_BATCH_POLL_SECONDS", "HARVEST_BATCH_POLL_MAX_SECONDS", "HARVEST_BATCH_MAX_WAIT_SECONDS",
    "HARVEST_EMBEDDINGS_SYNC_BELOW", "HARVEST_REQUEST_TIMEOUT_SECONDS",
)
AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def docker_engine() -> None:
    """Skip (saying why) only where no Docker engine answers; scripts/ensure-docker.sh starts one where it can."""
    if shutil.which("docker") is None:
        pytest.skip("no docker client: run scripts/ensure-docker.sh (make test does) to install Debian's docker.io")
    if docker("info", timeout=30).returncode != 0:
        why = UNAVAILABLE.read_text().strip() if UNAVAILABLE.exists() else "`docker info` gets no answer"
        pytest.skip(f"no Docker engine can run here: {why} (scripts/ensure-docker.sh, which make test runs, tries)")


@contextmanager
def build_lock() -> Iterator[None]:
    """The lock scripts/prebuild-images.sh holds while it builds the images in the background (make test starts it
    with the suite): this test's build waits for that one, then finds its layers cached."""
    with open(BUILD_LOCK, "a") as lock:
        started = time.monotonic()
        fcntl.flock(lock, fcntl.LOCK_EX)
        if time.monotonic() - started > 1:
            print(f"waited {time.monotonic() - started:.0f}s for the background image build")
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def image(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The project image, built from the Dockerfile on the (stand-in) base; the build's smoke check renders a page."""
    with build_lock():
        return _build_image(tmp_path_factory.mktemp("docker-build"))


def _build_image(logs: Path) -> str:
    started = time.monotonic()
    if docker("image", "inspect", BASE_IMAGE).returncode != 0:
        base = subprocess.run([str(ROOT / "scripts" / "standin-python-image.sh")], capture_output=True, text=True,
                              timeout=1800)
        assert base.returncode == 0, f"the stand-in {BASE_IMAGE} was not built:\n{base.stderr[-4000:]}"
        print(f"stand-in {BASE_IMAGE} built in {time.monotonic() - started:.0f}s")
    started = time.monotonic()
    before = docker("image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip()
    with open(logs / "build.log", "w") as log:
        built = subprocess.run(["docker", "build", "--network", "host", "-t", IMAGE, str(ROOT)], stdout=log,
                               stderr=subprocess.STDOUT, timeout=1800)
    output = (logs / "build.log").read_text()
    assert built.returncode == 0, f"docker build failed:\n{output[-6000:]}"  # its last step is the smoke check
    if before and before != docker("image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip():
        docker("image", "rm", before)  # the previous build's own layers: a rebuild per source change would pile up
    print(f"docker build {IMAGE}: {time.monotonic() - started:.0f}s")
    return IMAGE


def pool_template(stack: Stack, env: dict[str, str]) -> dict[str, Any]:
    """The docker worker type's default base job template with the three edits docs/deploying.md shows: the
    settings in `env`, the host's network, and images used as built here (never pulled)."""
    default = stack.cli("work-pool", "get-default-base-job-template", "--type", "docker")
    assert default.returncode == 0, default.stdout + default.stderr
    template = json.loads(default.stdout)
    properties = template["variables"]["properties"]
    properties["env"]["default"] = env
    properties["network_mode"]["default"] = "host"
    properties["image_pull_policy"]["default"] = "Never"
    return template


@pytest.fixture
def docker_worker(stack: Stack, image: str, harvest_env: dict[str, str], tmp_path: Path) -> Iterator[list[str]]:
    """The docker pool set up from the test's environment, and a prefect-docker worker on it. Yields a list the
    test adds its flow run ids to: their containers are removed afterwards."""
    env = {name: harvest_env[name] for name in SETTINGS} | {name: os.environ[name] for name in AWS}
    template = tmp_path / "docker-pool.json"
    template.write_text(json.dumps(pool_template(stack, env)))
    updated = stack.cli("work-pool", "update", DOCKER_POOL, "--base-job-template", str(template))
    assert updated.returncode == 0, updated.stdout + updated.stderr
    name = f"e2e-docker-{uuid.uuid4().hex[:8]}"
    # The worker gets only the Prefect settings (no HARVEST_*): what the container needs comes from the pool.
    worker_env = {**stack.env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
    process = stack.start("docker-worker", [PREFECT, "worker", "start", "--pool", DOCKER_POOL, "--type", "docker",
                                            "--name", name], worker_env)
    wait_for(lambda: worker_online(stack, name, DOCKER_POOL) or process.poll() is not None, 90,
             "the docker worker to register")
    assert process.poll() is None, f"docker worker exited:\n{stack.log_tail('docker-worker')}"
    flow_runs: list[str] = []
    yield flow_runs
    stop_worker(process)
    for flow_run_id in flow_runs:
        for container in containers_of(flow_run_id):
            docker("rm", "-f", container)


def containers_of(flow_run_id: str) -> list[str]:
    listed = docker("ps", "-aq", "--filter", f"label=io.prefect.flow-run-id={flow_run_id}")
    return listed.stdout.split()


def test_the_docker_deployment_runs_the_flow_in_the_image(  # noqa: ANN001
    stack, docker_worker, harvest_env, s3, demo_site
) -> None:
    started = time.monotonic()
    done = stack.cli("deployment", "run", "scrape-website/docker", "-p", f"url={demo_site.base_url}/", "--watch",
                     timeout=900)
    elapsed = time.monotonic() - started
    match = UUID_RE.search(done.stdout)
    if match:
        docker_worker.append(match.group(1))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + stack.log_tail("docker-worker", 8000)
    assert match is not None, done.stdout
    flow_run_id = match.group(1)
    print(f"scrape-website/docker → Completed in {elapsed:.0f}s")

    flow_run = stack.flow_run(flow_run_id)
    assert flow_run["state"]["type"] == "COMPLETED"
    assert flow_run["work_pool_name"] == DOCKER_POOL

    # The run in the container: rows, files, and the browser rendered the pages built by scripts.
    db_url = harvest_env["HARVEST_DATABASE_URL"]
    row = settled_row(db_url, flow_run_id)
    assert row is not None, "the flow run in the container recorded no scrape_runs row"
    assert (row["status"], row["retention"], row["error"]) == ("completed", "kept", None)
    assert (row["deployment_name"], row["work_pool"]) == ("docker", DOCKER_POOL)
    assert row["activities_processed"] > 0
    crawl = row["steps"]["crawl"]["details"]
    assert crawl["pages_rendered"] > 0, crawl
    assert "pages_unrendered" not in crawl
    assert row["failed_urls"] == [], row["failed_urls"]
    files = file_rows(db_url, flow_run_id)
    assert {"raw_activities", "standardized", "merged", "final_jsonl"} <= set(files)
    assert_files_kept(s3, harvest_env["HARVEST_BUCKET"], files)
    # The run's process identity names the container's pid namespace under the host's kernel (host networking: the
    # host's hostname too): judged from the host, its pid means nothing, so a pid that happens to be free or taken
    # on the host never decides (harvest/liveness.py); the heartbeat does.
    identity, mine = ProcessIdentity.parse(row["process"]), this_process()
    assert identity is not None and mine is not None, row["process"]
    assert (identity.boot_id, row["host"]) == (mine.boot_id, socket.gethostname())
    assert identity.pid_namespace != mine.pid_namespace
    assert judge(row["process"])[0] is Verdict.UNKNOWN
    print(f"in the container: {row['activities_processed']} activities, {crawl['pages_fetched']} pages fetched, "
          f"{crawl['pages_rendered']} rendered, {len(files)} files")

    # The container's logs reach the API, attached to the flow run (harvest's own lines included).
    logs = stack.api("POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
    messages = [entry["message"] for entry in logs]
    assert any(m.startswith(f"run {flow_run_id} completed: {row['activities_processed']} activities") for m in messages)
    assert any(m.startswith("crawl: ") and " in, " in m for m in messages), messages[-20:]
    assert any("launched Chromium /usr/bin/chromium-headless-shell" in m for m in messages), messages[-40:]
    summary = stack.api("GET", "/artifacts/scrape-website-docker-summary/latest")
    assert summary["flow_run_id"] == flow_run_id and "## Failed URLs (0)" in summary["data"]

    # Non-root: the container the worker made ran as the image's user, and that user is not root.
    (container,) = containers_of(flow_run_id)
    inspected = json.loads(docker("inspect", container).stdout)[0]
    assert inspected["Config"]["User"] == IMAGE_USER
    assert inspected["Config"]["Image"] == IMAGE and inspected["HostConfig"]["NetworkMode"] == "host"
    assert inspected["State"]["ExitCode"] == 0
    who = docker("run", "--rm", "--entrypoint", "id", IMAGE)
    assert who.stdout.split()[0] == "uid=10001(harvest)", who.stdout + who.stderr


def test_in_the_image_a_missing_library_is_named_as_the_browsers_cause(image: str) -> None:
    """The failure issue 29 found, for real: Playwright's driver without libatomic.so.1. With the library deleted
    from a throwaway container, the smoke check fails and names it (the exception alone says only that the
    connection to the driver closed)."""
    script = "find / -xdev -name 'libatomic.so.1*' -delete && exec python -m harvest.crawl.selfcheck"
    done = docker("run", "--rm", "--user", "root", "--network", "none", "--entrypoint", "sh", image, "-c", script,
                  timeout=180)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "browser check FAILED (/usr/bin/chromium-headless-shell): Playwright's driver did not start: " in done.stderr
    assert "error while loading shared libraries: libatomic.so.1: cannot open shared object file" in done.stderr
