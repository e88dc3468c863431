"""The run's content quality report (harvest/quality.py, issue 26) as people read it."""

from __future__ import annotations

from harvest.quality import combine, report_lines


def test_the_quality_report_reads_as_sentences() -> None:
    report = combine(
        {"items_by_source": {"jsonld": 3, "ical": 2}, "jsonld_blocks_repaired": 1, "jsonld_repairs": {"trailing commas": 1},
         "jsonld_blocks_unreadable": 0, "feeds_read": 1, "feed_events": 4},
        {"quality": {"all_day": 2, "times_corrected": 1}, "dates_refused": {"ambiguous numeric date": 1}},
    )
    lines = report_lines(report)
    assert lines[0] == "items by source: ical 2, jsonld 3"
    assert "JSON-LD blocks repaired: 1 (trailing commas 1); unreadable: 0" in lines
    assert "dates refused: ambiguous numeric date 1" in lines
    assert any(line.startswith("all-day items: 2;") and "times corrected" in line for line in lines)
