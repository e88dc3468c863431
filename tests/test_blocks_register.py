"""`harvest blocks register` / `python -m blocks.register` on Prefect's ephemeral API: blocks exist after, a
second run only updates them, and secret values never reach the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harvest_cli import app
from tests.helpers import TEST_OPENAI_KEY, session_prefect_api_url

GOOGLE_KEY = "google-maps-secret-key-987654"
AWS_SECRET = "testing-secret-key-do-not-leak"  # conftest puts it in AWS_SECRET_ACCESS_KEY


@pytest.fixture
def block_env(monkeypatch: pytest.MonkeyPatch, s3) -> dict[str, str]:  # noqa: ANN001
    bucket = s3.new_bucket()
    env = {
        "HARVEST_STORAGE_URL": f"s3://{bucket}/harvest/prod",
        "HARVEST_S3_ENDPOINT_URL": s3.endpoint,
        "OPENAI_API_KEY": TEST_OPENAI_KEY,
        "GOOGLE_MAPS_API_KEY": GOOGLE_KEY,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_ACCESS_KEY_ID": "testing-access-key",
        "AWS_DEFAULT_REGION": "us-east-1",
        "BUCKET": bucket,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(autouse=True)
def no_leftover_global_limits() -> Iterator[None]:
    """Registering creates the shared geocoder/OpenAI limits; later flow tests in this session must not
    inherit a 1-call-per-second geocoder limit."""
    yield
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    from harvest.enrich.embeddings.enrichment import OPENAI_LIMIT
    from harvest.enrich.geocode.enrichment import GEOCODER_LIMIT

    with get_client(sync_client=True) as client:
        for name in (GEOCODER_LIMIT, OPENAI_LIMIT):
            try:
                client.delete_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                pass


def register() -> str:
    result = CliRunner().invoke(app, ["blocks", "register", "--local"])
    assert result.exit_code == 0, result.output
    return result.output


def assert_no_secret_in(output: str) -> None:
    for secret in (TEST_OPENAI_KEY, GOOGLE_KEY, AWS_SECRET):
        assert secret not in output


def test_register_creates_usable_blocks_and_a_second_run_only_updates(block_env, s3) -> None:  # noqa: ANN001
    from prefect.blocks.system import Secret
    from prefect_aws import AwsCredentials, S3Bucket

    first = register()
    assert_no_secret_in(first)
    for slug in ("aws-credentials/harvest-aws", "s3-bucket/harvest-storage", "secret/harvest-openai-api-key",
                 "secret/harvest-google-maps-api-key"):
        assert slug in first

    credentials = AwsCredentials.load("harvest-aws")
    assert credentials.aws_client_parameters.endpoint_url == s3.endpoint
    assert credentials.aws_secret_access_key.get_secret_value() == AWS_SECRET
    assert credentials.region_name == "us-east-1"
    assert Secret.load("harvest-openai-api-key").get() == TEST_OPENAI_KEY
    assert Secret.load("harvest-google-maps-api-key").get() == GOOGLE_KEY

    # The bucket block really reaches the S3 endpoint, under the configured folder.
    bucket = S3Bucket.load("harvest-storage")
    assert (bucket.bucket_name, bucket.bucket_folder) == (block_env["BUCKET"], "harvest/prod")
    bucket.write_path("probe.txt", b"hello")
    assert s3.keys(block_env["BUCKET"]) == ["harvest/prod/probe.txt"]
    assert bucket.read_path("probe.txt") == b"hello"

    # The one result-storage block, at the same root with the same credentials; runs use it as it is.
    from blocks.storage import result_storage_block
    from harvest.settings import HarvestSettings

    results = S3Bucket.load("harvest-results")
    assert (results.bucket_name, results.bucket_folder) == (block_env["BUCKET"], "harvest/prod")
    assert results.credentials.aws_secret_access_key.get_secret_value() == AWS_SECRET
    assert result_storage_block(HarvestSettings())._block_document_id == results._block_document_id  # noqa: SLF001
    assert S3Bucket.load("harvest-results").credentials.aws_secret_access_key is not None  # not saved over

    # Again, with one value changed: the same blocks are updated in place, nothing is duplicated.
    ids = {name: AwsCredentials.load(name)._block_document_id for name in ("harvest-aws",)}
    os.environ["OPENAI_API_KEY"] = "sk-rotated-key-000"
    second = register()
    assert_no_secret_in(second)
    assert "sk-rotated-key-000" not in second
    assert "updated  secret/harvest-openai-api-key" in second
    assert "created" not in second
    assert Secret.load("harvest-openai-api-key").get() == "sk-rotated-key-000"
    assert AwsCredentials.load("harvest-aws")._block_document_id == ids["harvest-aws"]
    assert "global-concurrency-limit/harvest-geocoder" in second


def test_workers_can_name_secret_blocks_instead_of_carrying_keys(block_env, monkeypatch) -> None:  # noqa: ANN001
    from flows.resources import _secret_block_value, resources
    from tests.helpers import reset_harvest_caches

    register()
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("GOOGLE_MAPS_API_KEY")
    monkeypatch.setenv("HARVEST_OPENAI_API_KEY_BLOCK", "harvest-openai-api-key")
    monkeypatch.setenv("HARVEST_GOOGLE_MAPS_API_KEY_BLOCK", "harvest-google-maps-api-key")
    monkeypatch.setenv("HARVEST_DATABASE_URL", f"sqlite:///{os.environ['HARVEST_HOME']}/blocks-test.db")
    reset_harvest_caches()
    _secret_block_value.cache_clear()
    settings = resources().settings
    assert settings.openai_api_key.get_secret_value() == TEST_OPENAI_KEY and settings.has_openai
    assert settings.google_maps_api_key.get_secret_value() == GOOGLE_KEY
    assert TEST_OPENAI_KEY not in repr(settings)
    reset_harvest_caches()


def test_without_keys_or_s3_storage_nothing_optional_is_saved(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    for name in ("OPENAI_API_KEY", "GOOGLE_MAPS_API_KEY", "HARVEST_OPENAI_API_KEY", "HARVEST_GOOGLE_MAPS_API_KEY",
                 "HARVEST_S3_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HARVEST_STORAGE_URL", (tmp_path / "store").as_uri())
    from blocks.register import register_blocks

    done = {item.slug: item for item in register_blocks()}
    assert done["aws-credentials/harvest-aws"].action in ("created", "updated")
    assert done["s3-bucket/harvest-storage"].action == "skipped"
    assert done["local-file-system/harvest-results"].action in ("created", "updated")
    assert done["secret/harvest-openai-api-key"].action == "skipped"
    assert done["secret/harvest-google-maps-api-key"].action == "skipped"
    from prefect_aws import AwsCredentials

    assert AwsCredentials.load("harvest-aws").aws_secret_access_key is None


def test_module_entry_point(monkeypatch, capsys) -> None:  # noqa: ANN001
    """`python -m blocks.register`, run in this process (a subprocess would pay a fresh ephemeral API start)."""
    import runpy
    import sys

    monkeypatch.delitem(sys.modules, "blocks.register", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_OPENAI_KEY)
    monkeypatch.setenv("HARVEST_STORAGE_URL", "s3://some-bucket/x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.delenv("GOOGLE_MAPS_API_KEY", raising=False)
    runpy.run_module("blocks.register", run_name="__main__")
    out = capsys.readouterr()
    assert_no_secret_in(out.out + out.err)
    assert "secret/harvest-openai-api-key" in out.out and "s3-bucket/harvest-storage" in out.out
    assert "skipped  secret/harvest-google-maps-api-key" in out.out


def test_result_storage_is_saved_once_and_then_loaded(block_env: dict[str, str]) -> None:
    from prefect_aws import S3Bucket

    from blocks.storage import result_storage_block
    from harvest.settings import HarvestSettings

    settings = HarvestSettings()
    first = result_storage_block(settings)
    again = result_storage_block(settings)
    assert isinstance(again, S3Bucket) and again.bucket_name == block_env["BUCKET"]
    assert again._block_document_id == first._block_document_id  # noqa: SLF001 - the saved document, reused

    # The saved block drifted (someone edited it): the next flow run saves the settings over it.
    name = again._block_document_name  # noqa: SLF001
    drifted = S3Bucket.load(name)
    drifted.bucket_folder = "somewhere/else"
    drifted.save(name, overwrite=True)
    assert result_storage_block(settings).bucket_folder == "harvest/prod"
    assert S3Bucket.load(name).bucket_folder == "harvest/prod"


LOADS_RESULTS_BLOCK = """
import json, sys
from blocks.storage import result_storage_block
from harvest.settings import HarvestSettings

def seen():
    return sorted(m for m in ("prefect_aws", "distributed", "prefect_dask", "prefect_docker") if m in sys.modules)

kinds = {}
for url in sys.argv[1:]:  # the local folder first: nothing has imported prefect-aws yet
    settings = HarvestSettings(storage_url=url)
    first, again = result_storage_block(settings), result_storage_block(settings)  # saved, then loaded
    assert again._block_document_id == first._block_document_id
    kinds[url.split(":")[0]] = [type(again).__name__, seen()]
print(json.dumps(kinds))
"""


def test_loading_the_results_block_imports_only_its_own_collection(s3, tmp_path: Path) -> None:  # noqa: ANN001
    """Every run loads harvest's results block. Loaded through its own class it costs what that class needs:
    Prefect's generic Block.load first imports every installed collection (prefect-dask's distributed,
    prefect-docker), ~1.1 CPU-s a run, and a run on a local folder imported prefect-aws (~0.7 CPU-s) for nothing."""
    env = {**os.environ, "PREFECT_API_URL": session_prefect_api_url(), "HARVEST_S3_ENDPOINT_URL": s3.endpoint}
    urls = [(tmp_path / "store").as_uri(), f"s3://{s3.new_bucket()}/harvest"]
    done = subprocess.run([sys.executable, "-c", LOADS_RESULTS_BLOCK, *urls], cwd=Path(__file__).parents[1], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "file": ["RunScopedLocalFileSystem", []],
        "s3": ["RunScopedS3Bucket", ["prefect_aws"]],
    }
