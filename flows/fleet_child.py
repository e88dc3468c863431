"""What a fleet worker's forked child does (flows/fleet_worker.py): run one flow run through Prefect's own engine,
or settle one whose process died.

`execute` is the body of `python -m prefect.engine <flow run id>` (prefect/engine.py), run in a process forked from
the warm worker: the flow's modules are imported already, so a run pays for the engine and its own work, not for a
Python start and ~3 s of imports. `settle` does for a run whose child is gone what Prefect's runner does for a
process worker's run (prefect/runner/_cancellation_manager.py): it runs the flow's on_crashed or on_cancellation
hooks (harvest's hooks settle the run row: flows/hooks.py) and then puts the flow run in its final state.

A child is isolated from its parent first: a process group of its own (a Ctrl-C at the worker's terminal is the
worker's to handle, not every run's), SIGTERM back to Python's default until Prefect's engine installs its own, and
SIGTERM when the worker dies (Linux), so a run never outlives its worker silently: it ends Crashed and is settled.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any
from uuid import UUID

from flows.fleet_flows import Resolved

# The signal the worker sends a child to cancel its run: the child records Prefect's "cancel" intent, then raises
# SIGTERM in itself, which Prefect's engine (capture_sigterm) turns into Cancelling -> Cancelled with the flow's
# on_cancellation hooks run in the child, exactly as for a runner-delivered cancel.
CANCEL_SIGNAL = signal.SIGUSR1
PR_SET_PDEATHSIG = 1


def _isolate() -> None:
    """Own process group, default signal dispositions, and a SIGTERM when the parent dies (Linux)."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(CANCEL_SIGNAL, _cancel_requested)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):  # not Linux: an orphaned run is found by the zombie automation instead
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _cancel_requested(signum: int, frame: Any) -> None:
    """The worker asks this run to cancel (its flow run is Cancelling, or the worker is stopping)."""
    from prefect._internal.control_listener import _set_intent

    _set_intent("cancel")  # what the runner's control channel commits before its SIGTERM (Prefect 3.9)
    signal.raise_signal(signal.SIGTERM)


def _apply(env: dict[str, str], working_dir: str | None) -> bool:
    """The run's environment (its job variables' `env`) and working directory; whether the environment changed.
    Settings read from the environment at import in the warm parent (Prefect's, harvest's) are read again then, and
    the clients the parent built from its own environment are dropped."""
    changed = any(os.environ.get(name) != value for name, value in env.items())
    if changed:
        os.environ.update(env)
        from prefect.context import refresh_global_settings_context

        from blocks.storage import forget_clients
        from harvest.settings import get_settings

        refresh_global_settings_context()
        get_settings.cache_clear()
        forget_clients()
    if working_dir:
        os.chdir(working_dir)
    return changed


def _load_resolved(resolved: Resolved, reuse: bool, run_logger: Any) -> Any:
    """The run's flow as the parent resolved its deployment (flows/fleet_flows.py): its pull step's directory, then
    the parent's flow object, or, when it has none or the run's environment differs from the parent's (a flow's
    decorators read settings at import), the entrypoint loaded here. No API call, no pull step run."""
    os.chdir(resolved.directory)
    if resolved.flow is not None and reuse:
        flow = resolved.flow
    else:
        from prefect.flows import load_flow_from_entrypoint

        flow = load_flow_from_entrypoint(resolved.entrypoint, use_placeholder_flow=False)
    run_logger.info("Flow %r from %s in %s (deployment %s, updated %s), loaded by the fleet worker%s",
                    flow.name, resolved.entrypoint, resolved.directory, resolved.deployment_id, resolved.updated,
                    "" if flow is resolved.flow else " in the run's own environment")
    return flow


def execute(flow_run_id: str, env: dict[str, str], working_dir: str | None, resolved: Resolved | None = None) -> None:
    """Run flow run `flow_run_id` to its end as `python -m prefect.engine` does (the same calls, in order), its flow
    loaded from `resolved` when the parent resolved its deployment, else by Prefect's load_flow."""
    from flows.fleet_profile import phases

    marks = phases()
    _isolate()
    os.environ["PREFECT__FLOW_RUN_ID"] = flow_run_id
    changed = _apply(env, working_dir)
    from prefect._internal.control_listener import configure_from_env
    from prefect.engine import _drive_run_flow_result, handle_engine_signals

    try:
        with marks.profiled():
            configure_from_env()
            run_id = UUID(flow_run_id)
            with handle_engine_signals(run_id):
                from prefect._internal.metrics import RunMetrics
                from prefect.flow_engine import flow_run_logger, load_flow, load_flow_run, run_flow

                marks.phase("load_flow_run")
                flow_run = load_flow_run(flow_run_id=run_id)
                run_logger = flow_run_logger(flow_run=flow_run)
                marks.phase("load_flow")
                try:
                    flow = _load_resolved(resolved, not changed, run_logger) if resolved else load_flow(flow_run)
                except Exception:
                    run_logger.error("Unexpected exception encountered when trying to load flow", exc_info=True)
                    raise
                marks.phase("run_flow")
                with RunMetrics(flow_run, flow):
                    result = run_flow(flow, flow_run=flow_run, error_logger=run_logger)  # type: ignore[arg-type] # as prefect.engine
                    marks.phase("drive_result")
                    _drive_run_flow_result(flow, result)
    finally:
        # The images pool's workers are this process's children: multiprocessing joins them as it exits.
        from harvest.enrich.images.client import shutdown_pool

        shutdown_pool()
    marks.write(flow_run_id)


def prepare() -> None:
    """Once per worker, before its first run: save harvest's result storage block when it is missing (or rooted
    elsewhere). Every run loads it; a run that finds it missing saves it (~2.5 CPU-s of Prefect's block schema), and
    a worker's first runs start together, so without this each of them saved it."""
    _isolate()
    signal.signal(CANCEL_SIGNAL, signal.SIG_IGN)
    from blocks.storage import result_storage_block
    from flows.resources import with_block_secrets
    from harvest.settings import get_settings

    result_storage_block(with_block_secrets(get_settings()))


def settle(flow_run_id: str, outcome: str, message: str, env: dict[str, str], working_dir: str | None) -> None:
    """Run the flow's hooks for a run whose process is gone, then set its final state: `outcome` is "crashed"
    (on_crashed, then Crashed) or "cancelled" (on_cancellation with a Cancelling state, then Cancelled), as
    Prefect's runner does. Nothing is done for a flow run that reached a final state meanwhile."""
    _isolate()
    signal.signal(CANCEL_SIGNAL, signal.SIG_IGN)  # a settling child is not a run: nothing of it to cancel
    _apply(env, working_dir)
    from prefect import get_client
    from prefect.client.schemas.objects import State
    from prefect.flow_engine import load_flow
    from prefect.flows import Flow
    from prefect.logging.loggers import flow_run_logger
    from prefect.states import Cancelled, Cancelling, Crashed

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(UUID(flow_run_id))
        if flow_run.state is not None and flow_run.state.is_final():
            return
        hook_state: State[Any] = Crashed(message=message) if outcome == "crashed" else Cancelling(message=message)
        final: State[Any] = Crashed(message=message) if outcome == "crashed" else Cancelled(message=message)
        logger = flow_run_logger(flow_run=flow_run)
        flow: Flow[..., Any] | None = None
        try:
            flow = load_flow(flow_run)
        except Exception:  # noqa: BLE001 - the state must still be set: a run is never left running
            logger.exception("could not load the flow to run its %s hooks", outcome)
        hooks = [] if flow is None else flow.on_crashed_hooks if outcome == "crashed" else flow.on_cancellation_hooks
        for hook in hooks:
            assert flow is not None
            try:
                logger.info("Running hook %r in response to entering state %r", getattr(hook, "__name__", hook),
                            hook_state.name)
                hook(flow, flow_run, hook_state)
            except Exception:  # noqa: BLE001 - as Prefect: a raising hook is logged, the others still run
                logger.exception("hook %r failed", getattr(hook, "__name__", hook))
        client.set_flow_run_state(flow_run.id, final, force=True)
        logger.info("flow run %s %s by the fleet worker: %s", flow_run_id, outcome, message)
    sys.stdout.flush()
