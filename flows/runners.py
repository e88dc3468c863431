"""The task runner the flows use, chosen by HARVEST_TASK_RUNNER: threads in the flow's process, or Dask."""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from harvest.settings import HarvestSettings

THREADS = 4


def make_task_runner(settings: HarvestSettings) -> TaskRunner:  # type: ignore[type-arg]
    """threads: a pool of 4 in-process threads (the enrichment branches run side by side).
    dask: the cluster at HARVEST_DASK_ADDRESS, or a local in-process cluster when it is unset."""
    if settings.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        # Threads, not processes: the tasks stay in this process, so they work with the ephemeral API too.
        return DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": THREADS, "processes": False})
    return ThreadPoolTaskRunner(max_workers=THREADS)
