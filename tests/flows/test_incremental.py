"""An unchanged re-run reuses what the first run paid for: LLM answers for unchanged pages from `llm_answers`,
geocodes from `geocode_cache`, images revalidated with a conditional GET (304: nothing downloaded), and
embeddings from the imported `activities` rows. Not its pages: an imported run's page memory goes with its files."""

from __future__ import annotations

from harvest.db import runs as run_rows
from harvest.db.engine import get_engine
from harvest.models import RunConfig


def scrape(url: str, **config: object):  # noqa: ANN201
    from flows.scrape import scrape_website

    state = scrape_website(url=url, config=RunConfig(**config), return_state=True)
    assert state.is_completed(), state.message
    return state.result()


def task_names(flow_run_id: str) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0] for run in runs}


def image_responses(site, since: int) -> list[int]:  # noqa: ANN001
    return [status for _, target, status in site.log[since:] if target.startswith("/images/")]


def test_an_unchanged_rerun_makes_no_api_call_and_downloads_no_image(
    harvest_env, demo_site, geocoder_server, openai_server
) -> None:
    url = demo_site.base_url + "/"
    first = scrape(url, max_pages=60, max_extractions=25, auto_import=True)
    assert geocoder_server.stats(), "the first run geocodes"
    assert openai_server.stats().get("batches.create") == 1, "and embeds in a batch"
    before = len(demo_site.log)
    assert 200 in image_responses(demo_site, 0)

    geocoder_server.reset()
    openai_server.reset()
    second = scrape(url, max_pages=60, max_extractions=25, auto_import=True)
    assert second.activities_processed == first.activities_processed
    assert geocoder_server.stats() == {}, "every address came from geocode_cache"
    assert openai_server.stats().get("requests", 0) == 0, openai_server.stats()  # vectors and LLM answers reused
    statuses = image_responses(demo_site, before)
    assert statuses and 200 not in statuses, statuses  # 304s (and the site's deliberately broken images)
    assert statuses.count(304) >= 1

    steps = run_rows.get_run(get_engine(harvest_env["HARVEST_DATABASE_URL"]), second.run_id)["steps"]
    assert steps["embeddings_submit"]["details"]["reused"] == second.activities_processed
    assert steps["embeddings"]["items_out"] == second.activities_processed
    # Nothing went to a batch: the vectors were stored once, by the submit step, and there was nothing to poll.
    kinds = {row["kind"] for row in run_rows.list_files(get_engine(harvest_env["HARVEST_DATABASE_URL"]), second.run_id,
                                                      include_deleted=True)}
    assert {"embeddings", "embeddings_index"} <= kinds and "embeddings_prefill" not in kinds, kinds
    assert "batch_id" not in steps["embeddings_submit"]["details"]
    assert "embeddings" not in task_names(second.run_id)
    # The pages: the first run was imported and cleaned up, and its page memory went with its files (issue 27
    # item 7: the memory holds the run's raw activities), so every page is fetched again, for nothing paid (LLM
    # answers come from `llm_answers`, as the OpenAI stand-in's zero requests say). A kept run's re-crawl reuses
    # them: tests/unit/retention/test_page_memory_retention.py.
    crawl = steps["crawl"]["details"]
    assert crawl["pages_not_modified"] == crawl["pages_lastmod_unchanged"] == 0 < crawl["pages_http"], crawl
    assert steps["geocode"]["details"]["geocoder_calls"] == 0
    assert steps["geocode"]["details"]["geocode_cache_hits"] > 0
    assert steps["images"]["details"]["images_reused"] == statuses.count(304)
    # Reused enrichments are the same enrichments: the import sees nothing new.
    assert second.import_summary.imported == 0 and second.import_summary.failed == 0


def test_few_texts_are_embedded_now_on_the_sync_endpoint_not_in_a_batch(
    harvest_env, demo_site, openai_server, monkeypatch
) -> None:
    from harvest.storage import iter_jsonl
    from tests.helpers import reset_harvest_caches

    monkeypatch.setenv("HARVEST_EMBEDDINGS_SYNC_BELOW", "50")
    reset_harvest_caches()
    summary = scrape(demo_site.base_url + "/", max_pages=40, max_extractions=8)
    stats = openai_server.stats()
    assert "batches.create" not in stats and "files.create" not in stats
    assert stats["embeddings.inputs"] == summary.activities_processed > 0
    assert "embeddings_batch_input" not in summary.files
    from blocks.storage import resolve_store
    from harvest.settings import get_settings

    final = list(iter_jsonl(resolve_store(get_settings()), summary.files["final_jsonl"].uri))
    assert all(len(record["embedding"]) == 1536 for record in final)


def test_an_unchanged_rerun_without_auto_import_sends_no_embedding_line(
    harvest_env, demo_site, openai_server
) -> None:
    """Issue 27 item 8: the first run imported nothing, so its vectors are only in its kept files; the second run
    takes them from its final JSONL (same id, content hash and model) instead of paying for them again."""
    url = demo_site.base_url + "/"
    openai_server.reset()
    first = scrape(url, max_pages=60, max_extractions=25)
    assert openai_server.stats().get("batches.lines", 0) == first.activities_processed > 0, openai_server.stats()

    openai_server.reset()
    second = scrape(url, max_pages=60, max_extractions=25)
    stats = openai_server.stats()
    sent = stats.get("batches.lines", 0) + stats.get("embeddings.inputs", 0)
    assert sent == 0, f"the unchanged re-run sent {sent} embedding lines again: {stats}"
    steps = run_rows.get_run(get_engine(harvest_env["HARVEST_DATABASE_URL"]), second.run_id)["steps"]
    assert steps["embeddings_submit"]["details"]["reused"] == second.activities_processed
    assert steps["embeddings"]["items_out"] == second.activities_processed
