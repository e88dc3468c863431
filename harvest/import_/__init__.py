"""The import step: a run's final JSONL into the `activities` table (named `import_`: `import` is a keyword)."""
