"""harvest: turn a website of family activities into clean, enriched, deduplicated activity records.

The domain package: no Prefect in it. `flows/` composes these functions into the Prefect flow.
"""
