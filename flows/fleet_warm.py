"""What a fleet worker does once, in its warm parent, so that the runs it forks do not each do it (issue 32): import
every module a run uses, check the database's migrations, build the object store's and the results block's S3
clients. Two rules hold for everything here, because the parent forks: no thread is started (Prefect's client starts
an event-loop thread, so it is never used here), and no connection stays open (a pooled connection or socket shared
by two processes corrupts both; the clients built here have made no request, and the database engine is disposed).
"""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger("harvest.fleet_worker")

# Imported once in the parent, so each forked run finds them loaded: the scrape flow and everything it imports,
# Prefect's engine, and what the steps import when they first run (the extractors' libraries, the OpenAI resources
# the enrichments call, the LLM batch API's, rdflib's JSON-LD plugins, requests for extruct's RDFa, Prefect's task graph
# helpers). The list is what children still imported on the fleet bench and the e2e demo site (HARVEST_FLEET_PROFILE
# shows it per run); tests/e2e/test_fleet_worker.py checks a child imports none of the heavy ones again.
WARM_MODULES = (
    "flows.scrape", "flows.settle", "flows.hooks", "prefect.engine", "prefect.flow_engine", "prefect.task_engine",
    "prefect._internal.metrics", "prefect.deployments.steps", "prefect.logging.handlers", "prefect.events.worker",
    "prefect.results", "prefect.utilities.visualization", "prefect.blocks.system", "harvest.enrich.registry",
    "harvest.crawl.stage", "harvest.extract.jsonld", "harvest.extract.llm", "harvest.extract.microformats",
    "harvest.extract.structured", "harvest.extract.visible_time", "prefect_aws", "boto3", "psycopg",
    "playwright.sync_api", "openai", "openai.resources.chat.chat", "openai.resources.chat.completions",
    "openai.resources.embeddings", "openai.resources.batches", "openai.resources.files", "openai.lib._files",
    "openai.lib.streaming.chat", "openai.pagination", "jiter", "rdflib.plugins.serializers.jsonld",
    "rdflib.plugins.stores.memory", "rdflib.plugins.shared.jsonld.context", "multiprocessing.synchronize",
    "multiprocessing.popen_forkserver", "prefect._internal.pytz", "rich._emoji_codes",
    "sqlalchemy.dialects.postgresql.psycopg", "extruct", "json_repair", "requests", "xml.dom.minidom",
    "anyio._backends._asyncio", "encodings.utf_8_sig", "encodings.utf_16_le", "encodings.utf_16_be",
)


def warm(modules: tuple[str, ...] = WARM_MODULES) -> list[str]:
    """Import the modules a run needs (those installed); the ones that could not be imported."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    # The installed Prefect collections (prefect-aws, -dask, -docker: ~0.4 s of imports), which Prefect imports at a
    # run's first lookup of a block by a type it has not imported (a result storage block of another type, a result
    # read by its block's id; harvest's own blocks load through their classes): once here, not in every child.
    from prefect._internal.plugins.collections import load_prefect_collections

    load_prefect_collections()
    # Pillow's image format plugins (~40 modules), which its first Image.open imports: a run with few images converts
    # them in its own process (HARVEST_IMAGE_POOL_FROM), so in the child, not in a pool's worker.
    from PIL import Image

    Image.init()
    return missing


def warm_resources() -> None:
    """Do once, here, the set-up every run would repeat in its child: the database's migrations checked (Alembic),
    the object store's client and harvest's results block's S3 client built (harvest caches them per process; the
    children inherit them). A store that
    is a Prefect block is left to the runs (loading it would start Prefect's client threads here). The database
    connections this opened are closed before any fork: a pooled connection two processes share corrupts both;
    each child opens its own."""
    from blocks.storage import BLOCK_SLUG_PREFIX, prebuild_results_client, resolve_store
    from harvest.db.engine import get_engine, upgrade
    from harvest.settings import get_settings

    settings = get_settings()
    upgrade(settings.database_url)
    get_engine(settings.database_url).dispose()
    if not settings.storage_url.startswith(BLOCK_SLUG_PREFIX):
        resolve_store(settings)
    prebuild_results_client(settings)


