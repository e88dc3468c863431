"""Secrets: a scrape run with recognizable test secrets as the OpenAI key, the AWS secret and the Google
geocoder key (each really used: the stand-ins refuse any other value), with failures injected so error paths
run too. Then every place a run leaves text is searched for them: zero hits."""

from __future__ import annotations

import json
import logging

import sqlalchemy as sa

# Imported here, as a user's process imports the flows before a run: importing them configures Prefect's logging,
# whose first set-up replaces the root logger's handlers, caplog's too when it happens inside the test.
from flows.scrape import scrape_website
from harvest.db.engine import get_engine
from harvest.db.schema import activities, run_files, scrape_runs
from harvest.models import RunConfig
from testkit.geocoder_server import GeocoderTestServer
from testkit.openai_server import OpenAITestServer
from tests.helpers import reset_harvest_caches

OPENAI_SECRET = "sk-hostile-OPENAI-SECRET-7f3a9c"
AWS_SECRET = "hostile-AWS-SECRET-KEY-51d0e2"
GOOGLE_SECRET = "hostile-GOOGLE-MAPS-KEY-c4b8a1"
SECRETS = (OPENAI_SECRET, AWS_SECRET, GOOGLE_SECRET)


def _hits(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def test_no_secret_in_rows_files_prefect_logs_artifacts_or_captured_output(
    harvest_env, monkeypatch, s3, demo_site, caplog, capfd
) -> None:
    with OpenAITestServer(dimensions=1536, api_key=OPENAI_SECRET) as openai, \
            GeocoderTestServer(api_key=GOOGLE_SECRET) as geocoder:
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)
        monkeypatch.setenv("OPENAI_BASE_URL", openai.base_url)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        monkeypatch.setenv("HARVEST_GEOCODER", "google")
        monkeypatch.setenv("GOOGLE_MAPS_API_KEY", GOOGLE_SECRET)
        monkeypatch.setenv("HARVEST_GEOCODER_URL", geocoder.base_url)
        reset_harvest_caches()
        # Error paths too: a failed upload retried, geocoder 500s and a timeout (their URLs carry the key).
        openai.fail_next("/v1/files", 1, status=500)
        geocoder.fail_next(3, mode="status", status=500, path="/maps/api/geocode/json")
        geocoder.fail_next(1, mode="timeout", path="/maps/api/geocode/json")

        with caplog.at_level(logging.DEBUG):
            state = scrape_website(url=demo_site.base_url + "/",
                                   config=RunConfig(max_pages=30, max_extractions=8, auto_import=True,
                                                    keep_files=True),
                                   return_state=True)
        assert state.is_completed(), state.message
        summary = state.result()
        assert summary.activities_processed > 0
        # The keys were really used: both stand-ins refuse any other value (a wrong OpenAI key is a 401, a
        # wrong Google key a REQUEST_DENIED without results), and here every call was let in and answered.
        openai_stats, geocoder_stats = openai.stats(), geocoder.stats()
        assert openai_stats.get("unauthorized", 0) == 0, openai_stats
        assert openai_stats["batches.create"] == 1 and openai_stats["batches.lines"] > 0, openai_stats
        assert geocoder_stats["results"] > 0, geocoder_stats
    run_id = summary.run_id

    # The database: the run row (config, warnings, errors, steps), its files, the imported activities.
    engine = get_engine(harvest_env["HARVEST_DATABASE_URL"])
    with engine.begin() as connection:
        rows = [dict(r) for table in (scrape_runs, run_files, activities)
                for r in connection.execute(sa.select(table)).mappings()]
    assert rows and _hits(json.dumps(rows, default=str)) == []
    imported = [r for r in rows if "embedding" in r and "dedupe_key" in r]
    assert imported and all(r["embedding"] for r in imported), "every imported activity has its vector"
    assert any(r["latitude"] is not None for r in imported), "the Google geocoder answered with the right key"

    # Every object in the bucket: run files, Prefect's persisted task results, images.
    bucket = harvest_env["HARVEST_BUCKET"]
    keys = s3.keys(bucket)
    assert any(key.endswith("final.jsonl") for key in keys) and any("/results/" in key for key in keys)
    client = s3.client()
    for key in keys:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert _hits(body.decode("utf-8", "replace")) == [], key

    # What Prefect holds: the flow run (parameters), its task runs, logs and artifacts.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(state.state_details.flow_run_id)
        task_runs = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        logs = prefect.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    assert artifacts and task_runs, (len(logs), len(artifacts), len(task_runs))
    prefect_text = json.dumps(
        [flow_run.model_dump(mode="json")] + [t.model_dump(mode="json") for t in task_runs]
        + [log.model_dump(mode="json") for log in logs] + [a.model_dump(mode="json") for a in artifacts]
    )
    assert _hits(prefect_text) == []
    assert str(run_id) in prefect_text  # the search looked at the right run

    # Everything logged in-process at DEBUG and everything printed.
    out, err = capfd.readouterr()
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert len(caplog.records) > 10
    assert _hits(logged) == [] and _hits(out) == [] and _hits(err) == []
