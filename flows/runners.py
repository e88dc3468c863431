"""The task runner the flows use, chosen by HARVEST_TASK_RUNNER: threads in the flow's process, or Dask."""

from __future__ import annotations

from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from harvest.settings import HarvestSettings


def enrichment_threads(settings: HarvestSettings) -> int:
    """Enough threads for every enrichment task to run at once: each image and geocode chunk, their two
    joins (a task submitted with `wait_for` holds its thread while it waits) and the embeddings batch. With
    fewer, the tasks queue in submission order and the branches run one after another: the embeddings
    batch, submitted last, only started once every geocode chunk was done."""
    return 2 * settings.enrich_max_chunks + 3


def make_task_runner(settings: HarvestSettings) -> TaskRunner[Any]:
    """threads: a pool of in-process threads (the enrichment branches run side by side).
    dask: the cluster at HARVEST_DASK_ADDRESS, or a local in-process cluster when it is unset."""
    threads = enrichment_threads(settings)
    if settings.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        # Threads, not processes: the tasks stay in this process, so they work with the ephemeral API too.
        return DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": threads, "processes": False})
    return ThreadPoolTaskRunner(max_workers=threads)
