"""harvest: turn a website of family activities into clean, enriched, deduplicated activity records.

The domain package: no Prefect in it. `flows/` composes these functions into the Prefect flow.
"""

from harvest.memory import fix_mmap_threshold, limit_malloc_arenas

# Before any thread allocates: every entry point (CLI, flow run, worker, Dask worker) imports harvest first.
limit_malloc_arenas()
fix_mmap_threshold()
