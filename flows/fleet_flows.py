"""The flow a fleet worker's run executes, resolved once per deployment version in the warm parent (issue 32).

Prefect's engine loads a run's flow per run (`load_flow`: read the deployment, run its pull steps, execute the
entrypoint's script): in a forked child that is an API round trip, the pull step machinery and the Prefect client's
start-up, ~0.5 CPU-s, repeated for every source. The parent reads the deployment anyway (its job variables), so it
resolves it there, once per (deployment id, updated): a deployment whose pull steps only set the working directory
(what `prefect deploy` records for a local checkout, and the docker deployment's `/app`) needs no step run per run,
and when its entrypoint's script is one the parent has imported already (the warm flow code), the flow object is
loaded here too. Redeploying changes `updated`, so the next run loads it again. Any other pull step (a git clone, a
pip install, a templated directory) is left to Prefect's own `load_flow` in the child, as before.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("harvest.fleet_worker")

SET_WORKING_DIRECTORY = frozenset({
    "prefect.deployments.steps.set_working_directory", "prefect.deployments.steps.pull.set_working_directory"})


@dataclass(frozen=True)
class Resolved:
    """A deployment version as its runs load it: the directory its pull step moves into, its entrypoint, and the
    flow object when the parent could load it (None: the child loads the entrypoint itself, without the API)."""

    deployment_id: str
    updated: str
    entrypoint: str
    directory: str
    flow: Any  # prefect.flows.Flow, or None


def working_directory(pull_steps: list[dict[str, Any]] | None) -> str | None:
    """The directory a deployment's pull steps only move into (one literal set_working_directory), else None."""
    if not pull_steps or len(pull_steps) != 1 or len(pull_steps[0]) != 1:
        return None
    ((name, arguments),) = pull_steps[0].items()
    if name not in SET_WORKING_DIRECTORY or not isinstance(arguments, dict) or set(arguments) - {"directory", "id"}:
        return None
    directory = arguments.get("directory")
    if not isinstance(directory, str) or "{{" in directory or not Path(directory).is_absolute():
        return None
    return directory


def _script_imported(directory: str, entrypoint: str) -> bool:
    """Whether the entrypoint's code is already imported in this process (so loading it here runs no new imports and
    starts nothing that the warm imports did not)."""
    if ":" not in entrypoint:
        return entrypoint.rsplit(".", 1)[0] in sys.modules
    script = (Path(directory) / entrypoint.rsplit(":", 1)[0]).resolve()
    return any(getattr(module, "__file__", None) and Path(module.__file__).resolve() == script  # type: ignore[arg-type]
               for module in list(sys.modules.values()))


def _load_from_entrypoint(entrypoint: str) -> Any:
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)


class FlowCache:
    """Resolved deployments by id, each for its latest `updated` (one entry per deployment: bounded by the pool's)."""

    def __init__(self, loader: Callable[[str], Any] = _load_from_entrypoint) -> None:
        self.loader = loader
        self.entries: dict[str, Resolved] = {}
        self.loads = 0  # flow objects loaded here (tests and the log read it)

    def resolve(self, deployment: dict[str, Any]) -> Resolved | None:
        """The deployment's runs' flow, or None when Prefect's own load_flow must run in the child."""
        deployment_id, updated = str(deployment.get("id")), str(deployment.get("updated"))
        cached = self.entries.get(deployment_id)
        if cached is not None and cached.updated == updated:
            return cached
        self.entries.pop(deployment_id, None)
        entrypoint = deployment.get("entrypoint")
        directory = working_directory(deployment.get("pull_steps"))
        if not entrypoint or directory is None or not Path(directory).is_dir():
            return None
        flow = None
        if _script_imported(directory, entrypoint):
            try:
                with contextlib.chdir(directory):  # a relative entrypoint resolves where the pull step would move
                    flow = self.loader(entrypoint)
            except Exception:  # noqa: BLE001 - the child's load_flow reports it in the run's logs, as Prefect does
                logger.warning("could not load %s here; its runs load it themselves", entrypoint, exc_info=True)
                return None
            self.loads += 1
        resolved = Resolved(deployment_id, updated, entrypoint, directory, flow)
        self.entries[deployment_id] = resolved
        return resolved
