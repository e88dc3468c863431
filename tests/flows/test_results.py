"""Prefect's results the Prefect way (issue 29): one result-storage block named in settings, loaded by each run (not
one block per storage URL saved at run start), and every result of a run, a failed task's record included, under
`runs/<id>/results/`, so the run's cleanup deletes them all. The flow on Prefect's API, with the S3 stand-in."""

from __future__ import annotations

import json

import pytest

from harvest.models import RunConfig
from harvest.storage import keys as storage_keys


def _scrape(demo_site, site: str):  # noqa: ANN001, ANN202
    from flows.scrape import scrape_website

    return scrape_website(url=f"{demo_site.base_url}/?site={site}", config=RunConfig(max_pages=10, max_extractions=3),
                          return_state=True)


def _keys(s3, bucket: str) -> list[str]:  # noqa: ANN001
    return [key.removeprefix("harvest/") for key in s3.keys(bucket, "harvest/")]


def test_a_failed_tasks_result_is_kept_under_its_run_and_goes_with_it(harvest_env, demo_site, openai_server, s3) -> None:
    from flows.resources import resources
    from harvest.retention.policy import cleanup_run

    openai_server.configure(batch_outcome="failed", polls_until_complete=1)  # the embeddings collect task fails
    state = _scrape(demo_site, "failed-result")
    assert state.is_completed(), state.message  # an enrichment's failure is a warning, not a failed run
    run_id = state.result().run_id
    assert any("embeddings: step failed" in warning for warning in state.result().warnings)

    stored = _keys(s3, harvest_env["HARVEST_BUCKET"])
    outside = [key for key in stored if not key.startswith((storage_keys.RUNS, storage_keys.DIGESTS, storage_keys.IMAGES))]
    assert outside == [], "results outside every run's prefix: no cleanup would ever delete them"
    failed = [key for key in stored if key.startswith(f"runs/{run_id}/results/failed/")]
    assert len(failed) == 1, stored
    body = s3.client().get_object(Bucket=harvest_env["HARVEST_BUCKET"], Key=f"harvest/{failed[0]}")["Body"].read()
    record = json.loads(body)
    assert "EmbeddingError" in json.dumps(record)  # Prefect's record of the failure: the exception

    deleted = cleanup_run(resources().engine, resources().store, run_id)
    assert deleted is not None and not [key for key in _keys(s3, harvest_env["HARVEST_BUCKET"])
                                        if key.startswith(f"runs/{run_id}/")]


def _results_blocks() -> list[tuple[str, str, object]]:
    """(block type, name, last saved) of every saved block named harvest-results…"""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        documents = client.read_block_documents()
    return [(document.block_type.slug if document.block_type else "", document.name or "", document.updated)
            for document in documents if (document.name or "").startswith("harvest-results")]


def test_runs_load_the_one_result_storage_block_and_save_it_only_when_it_is_missing(
    harvest_env, demo_site, monkeypatch
) -> None:
    from prefect_aws import S3Bucket

    from harvest.settings import get_settings

    first = _scrape(demo_site, "block-1")  # saves harvest-results (missing, or left at an earlier test's bucket)
    assert first.is_completed(), first.message
    saved_by_first = _results_blocks()
    second = _scrape(demo_site, "block-2")
    assert second.is_completed(), second.message
    blocks = _results_blocks()
    # One block per storage type (a file:// run of another test may have its local-file-system one), never one
    # per storage URL, and the second run loaded it without saving it again.
    assert [name for _, name, _ in blocks] == ["harvest-results"] * len(blocks), blocks
    assert [kind for kind, _, _ in blocks].count("s3-bucket") == 1, blocks
    assert blocks == saved_by_first, "the second run saved the block again"
    saved = S3Bucket.load("harvest-results")
    assert (saved.bucket_name, saved.bucket_folder) == (harvest_env["HARVEST_BUCKET"], "harvest")

    # A block named in settings is used as it is, and one rooted elsewhere is refused before the run starts.
    S3Bucket(bucket_name="somewhere-else", bucket_folder="x", credentials=saved.credentials).save(
        "elsewhere", overwrite=True)
    monkeypatch.setenv("HARVEST_RESULT_STORAGE_BLOCK", "s3-bucket/elsewhere")
    get_settings.cache_clear()
    refused = _scrape(demo_site, "block-3")
    assert refused.is_failed()
    with pytest.raises(Exception, match="rooted at s3://somewhere-else/x( at [^,]+)?, not at HARVEST_STORAGE_URL"):
        refused.result()


def test_the_results_blocks_s3_client_is_shared_by_credential_values() -> None:
    """One S3 client per distinct credential values (a secret compared by value), whichever block instance asks: the
    instance a run loads finds the client its fleet worker built before forking; forget_clients drops them (a run
    whose environment differs from the worker's builds its own)."""
    from prefect_aws import AwsClientParameters, AwsCredentials

    from blocks.storage import RunScopedS3Bucket, forget_clients, shared_s3_client

    def credentials(secret: str) -> AwsCredentials:
        return AwsCredentials(aws_access_key_id="id", aws_secret_access_key=secret,
                              aws_client_parameters=AwsClientParameters(endpoint_url="http://127.0.0.1:9"))

    forget_clients()
    built = shared_s3_client(credentials("one"))
    bucket = RunScopedS3Bucket(bucket_name="b", credentials=credentials("one"))
    assert bucket._get_s3_client() is built  # noqa: SLF001 - what read_path and write_path call
    assert shared_s3_client(credentials("two")) is not built
    forget_clients()
    assert shared_s3_client(credentials("one")) is not built
