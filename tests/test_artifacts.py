"""The pieces of the run artifacts that need no Prefect API (the e2e test reads the real ones back)."""

from __future__ import annotations

from flows.artifacts import artifact_key, step_table, summary_markdown


def test_keys_outside_a_deployment_are_stable_and_in_prefects_alphabet() -> None:
    assert artifact_key("progress") == "scrape-website-local-progress"
    assert artifact_key("final_jsonl") == "scrape-website-local-final-jsonl"


def test_step_table_keeps_stages_only_in_order() -> None:
    steps = {
        "crawl": {"items_in": 20, "items_out": 5, "skipped": 1, "seconds": 3.14159, "details": {"pages": 20}},
        "traffic": {"bytes_between_tasks": 900, "task_runs": 12},
        "standardize": {"items_in": 5, "items_out": 5, "skipped": 0, "seconds": 0.2},
    }
    assert step_table(steps) == [
        {"stage": "crawl", "items_in": 20, "items_out": 5, "skipped": 1, "seconds": 3.14},
        {"stage": "standardize", "items_in": 5, "items_out": 5, "skipped": 0, "seconds": 0.2},
    ]


def test_summary_lists_files_import_and_bounded_warnings() -> None:
    row = {"id": "r1", "url": "https://example.org/", "status": "completed", "activities_processed": 7,
           "import_summary": {"imported": 7, "skipped": 0, "failed": 0}, "warnings": [f"w{i}" for i in range(25)]}
    files = [{"kind": "final_jsonl", "records": 7, "bytes": 12345, "uri": "s3://b/runs/r1/final.jsonl"}]
    text = summary_markdown(row, files)
    assert "| final_jsonl | 7 | 12,345 | `s3://b/runs/r1/final.jsonl` |  |" in text
    assert "## Changes since the previous run\n\nnot computed" in text
    assert "imported: 7" in text and "## Warnings (25)" in text
    assert "- w19" in text and "- w20" not in text and "5 more" in text


def test_summary_has_download_links_and_the_diff_against_the_previous_run() -> None:
    row = {"id": "r2", "url": "https://example.org/", "status": "completed", "activities_processed": 7,
           "import_summary": None, "warnings": [], "previous_run_id": "r1",
           "diff": {"added": 1, "removed": 2, "changed": 3, "unchanged": 4}}
    files = [{"kind": "final_jsonl", "records": 7, "bytes": 10, "uri": "s3://b/runs/r2/final.jsonl"}]
    link = "http://s3.local/b/runs/r2/final.jsonl?X-Amz-Signature=a%2Fb&X-Amz-Expires=604800"
    text = summary_markdown(row, files, {"final_jsonl": link})
    assert f"[download](<{link}>)" in text
    assert "added: 1, removed: 2, changed: 3, unchanged: 4 — against run `r1`" in text


def test_summary_shows_the_run_cost_per_stage() -> None:
    cost = {"cost_usd": 0.0123, "reserved_usd": 0.0, "usage": {}, "stages": {
        "crawl": {"usage": {"chat_requests": 3, "chat_input_tokens": 900}, "cost_usd": 0.0123, "reserved_usd": 0.0},
    }}
    row = {"id": "r3", "url": "https://example.org/", "status": "completed", "activities_processed": 1,
           "import_summary": None, "warnings": [], "cost": cost}
    text = summary_markdown(row, [])
    assert "## Cost\n\n```\nestimated cost $0.012300\n" in text
    assert "crawl" in text and "chat_input_tokens 900, chat_requests 3" in text
