"""The standardize step: raw activities → standardized, deduplicated activities (`standardized.jsonl`).

- standardizer.py: one raw record → one clean `Activity` (text, dates, location, tags, its stable id);
- dedupe.py: copies of one id merged whatever the crawl order;
- stage.py: the step over stored files.
"""
