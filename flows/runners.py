"""The task runner the flows use, chosen by HARVEST_TASK_RUNNER: threads in the flow's process, or Dask."""

from __future__ import annotations

from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from harvest.enrich.registry import batched, chunked
from harvest.settings import HarvestSettings


def enrichment_threads(settings: HarvestSettings) -> int:
    """Enough threads for every enrichment task to run at once: each chunk of each chunked enrichment, their
    joins (a task submitted with `wait_for` holds its thread while it waits) and each batch enrichment's job
    (its submit, then its collect). With fewer, the tasks queue in submission order and the branches run one
    after another: the embeddings batch, submitted last, only started once every geocode chunk was done.
    The enrichments registered when the flow module is imported (harvest/enrich/registry.py)."""
    return len(chunked()) * (settings.enrich_max_chunks + 1) + len(batched())


def make_task_runner(settings: HarvestSettings) -> TaskRunner[Any]:
    """threads: a pool of in-process threads (the enrichment branches run side by side).
    dask: the cluster at HARVEST_DASK_ADDRESS; else a local cluster of HARVEST_DASK_PROCESSES worker processes,
    or (0) one worker inside this process."""
    threads = enrichment_threads(settings)
    if settings.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        import dask

        # Dask's worker profiler samples every thread's stack with sys._current_frames(), which on CPython 3.11
        # deadlocks the process when a garbage collection starts inside it (python/cpython#106883, fixed in 3.12
        # only): a worker process hung for good in 3 of 3 runs at 1,000 activities, 2 of 2 completed once it
        # was off; the in-process worker below hung `harvest scrape` in CI the same way (every thread waiting
        # for the GIL, held by the profiler's thread inside gc_collect_main). Off for both local clusters; the
        # nanny hands this config to the worker processes it starts.
        dask.config.set({"distributed.worker.profile.enabled": False})
        if settings.dask_processes:
            # Dask holds a task until the futures it waits for are done (it does not occupy a thread meanwhile),
            # so the threads are shared out between the processes. Each worker process inherits this process's
            # environment, and every task builds its settings, store and engine from it (flows.resources).
            per_process = -(-threads // settings.dask_processes)
            return DaskTaskRunner(cluster_kwargs={
                "n_workers": settings.dask_processes, "threads_per_worker": per_process, "processes": True,
                "dashboard_address": ":0",
            })
        # Threads, not processes: the tasks stay in this process, so they work with the ephemeral API too.
        return DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": threads, "processes": False})
    return ThreadPoolTaskRunner(max_workers=threads)
