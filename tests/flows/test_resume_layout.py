"""Scenario 10 of issue 17: a resume after HARVEST_ENRICH_CHUNK_SIZE changed recomputes the chunks instead
of joining results cut for other ranges. The first attempt's second image part is refused at the database
boundary (an event listener on the engine the flow uses), so its other chunk results are stored and the map
was never joined."""

from __future__ import annotations

from harvest.db.engine import get_engine
from harvest.storage import iter_jsonl
from tests.failures.support import file_rows, refusing_to_record, run_row, scrape
from tests.helpers import reset_harvest_caches


def test_10_a_resume_after_the_chunk_size_changed_never_mixes_ranges(
    harvest_env, demo_site, openai_server, geocoder_server, monkeypatch
) -> None:  # noqa: ANN001
    from flows.resources import resources
    from flows.resume import resume_flow_run

    db_url = harvest_env["HARVEST_DATABASE_URL"]
    monkeypatch.setenv("HARVEST_ENRICH_CHUNK_SIZE", "3")
    monkeypatch.setenv("HARVEST_ENRICH_MAX_CHUNKS", "8")
    reset_harvest_caches()
    engine = get_engine(db_url)

    with refusing_to_record(engine, "images_map.part-0001"):
        first = scrape(demo_site.base_url + "/", max_pages=30, max_extractions=10)
    run_id = str(first.state_details.flow_run_id)
    # (Prefect fails the flow run over the join left pending by the failed chunk; either way it is over.)
    assert run_row(db_url, run_id)["status"] in ("failed", "completed")
    assert "images_map" not in file_rows(db_url, run_id), "the map was never joined"
    standardized = file_rows(db_url, run_id)["standardized"]
    assert standardized["records"] >= 5, "enough activities for two chunks of 3 and three of 2"

    monkeypatch.setenv("HARVEST_ENRICH_CHUNK_SIZE", "2")  # changed between the failure and the resume
    reset_harvest_caches()
    resumed = resume_flow_run(run_id)
    assert resumed.is_completed(), resumed.message
    assert run_row(db_url, run_id)["status"] == "completed"
    store = resources().store
    images_map = file_rows(db_url, run_id)["images_map"]
    expected = [line["id"] for line in iter_jsonl(store, standardized["uri"])]
    assert [line["id"] for line in iter_jsonl(store, images_map["uri"])] == expected, "chunks of two layouts mixed"
