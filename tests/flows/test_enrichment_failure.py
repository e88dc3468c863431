"""An enrichment branch that fails is survivable: the run completes without that enrichment and says so.

The images chunk fails at the database boundary (an event listener refuses to record its part), so the join
that waits for it never runs. Its future then ends un-run, not failed: the flow must neither raise on it
while counting traffic nor lose the other branches."""

from __future__ import annotations

from harvest.db.engine import get_engine
from harvest.storage import iter_jsonl
from tests.failures.support import file_rows, refusing_to_record, run_row, scrape
from tests.helpers import reset_harvest_caches


def test_a_failed_image_chunk_leaves_a_completed_run_without_images(
    harvest_env, demo_site, openai_server, geocoder_server, monkeypatch
) -> None:  # noqa: ANN001
    from flows.resources import resources

    db_url = harvest_env["HARVEST_DATABASE_URL"]
    monkeypatch.setenv("HARVEST_ENRICH_CHUNK_SIZE", "3")
    monkeypatch.setenv("HARVEST_ENRICH_MAX_CHUNKS", "8")
    reset_harvest_caches()
    engine = get_engine(db_url)

    with refusing_to_record(engine, "images_map.part-0001"):
        state = scrape(demo_site.base_url + "/", max_pages=30, max_extractions=10)

    assert state.is_completed(), state.message
    summary = state.result()
    row = run_row(db_url, summary.run_id)
    assert row["status"] == "completed"
    assert any(w.startswith("images: step failed") for w in row["warnings"]), row["warnings"]
    files = file_rows(db_url, summary.run_id)
    assert "images_map" not in files and "geocoded_map" in files and "embeddings" in files
    final = list(iter_jsonl(resources().store, files["final_jsonl"]["uri"]))
    assert len(final) == files["standardized"]["records"] >= 5  # nothing lost for want of images
    assert all(record.get("image") is None for record in final)
    assert all(record.get("embedding") for record in final)
