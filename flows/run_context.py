"""Where the running flow run comes from (its deployment, its work pool), read from Prefect's run context.

Not `prefect.runtime.deployment` for the id: outside a deployment it fetches the flow run from the API on every
access (its check of the run context looks for an attribute the context does not have), three fetches per
run start. The name is still asked of Prefect, only when there is a deployment (it caches the deployment).
"""

from __future__ import annotations

from typing import Any

from prefect.context import FlowRunContext
from prefect.runtime import deployment as runtime_deployment


def _flow_run() -> Any:
    context = FlowRunContext.get()
    return context.flow_run if context is not None else None


def deployment_of_run() -> tuple[str | None, str | None]:
    """(deployment id, deployment name) of the running flow run; (None, None) when it was not deployed."""
    deployment_id = getattr(_flow_run(), "deployment_id", None)
    if deployment_id is None:
        return None, None
    return str(deployment_id), runtime_deployment.name


def work_pool_of_run() -> str | None:
    """The work pool whose worker runs this flow run, if any."""
    return getattr(_flow_run(), "work_pool_name", None)
