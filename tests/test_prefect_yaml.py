"""prefect.yaml's shape, checked against Prefect itself: every entrypoint exists, every pull step is a step Prefect
can import, called with arguments its signature takes, and step outputs are referenced only after the step
that makes them. The `git` deployment clones over the network, which this machine has not: its steps are
checked here, a clone is not run."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.utilities.importtools import import_object

ROOT = Path(__file__).resolve().parents[1]
# Keys run_steps reads itself and does not pass to the step function.
STEP_KEYWORDS = {"id", "requires"}
PLACEHOLDER = re.compile(r"\{\{\s*([\w.\-]+)\s*\}\}")


def deployments() -> list[dict[str, Any]]:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return list(config["deployments"])


def check_pull_steps(name: str, steps: list[dict[str, Any]]) -> None:
    """Raise AssertionError unless each step names an importable Prefect step with inputs its signature binds."""
    ids: set[str] = set()
    for step in steps:
        assert isinstance(step, dict) and len(step) == 1, f"{name}: a step is one {{function: inputs}} mapping"
        (function_name, inputs), = step.items()
        assert function_name.startswith("prefect.deployments.steps."), f"{name}: {function_name} is not a Prefect step"
        function = import_object(function_name)  # raises for a misspelled step
        arguments = {key: value for key, value in (inputs or {}).items() if key not in STEP_KEYWORDS}
        inspect.signature(function).bind(**arguments)  # raises TypeError for an unknown or missing argument
        for value in arguments.values():
            for reference in PLACEHOLDER.findall(str(value)):
                root = reference.split(".", 1)[0]
                assert root == "prefect" or root in ids, f"{name}: {reference} refers to no earlier step"
        if (inputs or {}).get("id"):
            ids.add(inputs["id"])


def test_every_deployment_has_an_existing_entrypoint_and_valid_pull_steps() -> None:
    seen = set()
    for deployment in deployments():
        name = deployment["name"]
        assert name not in seen, f"deployment name {name} twice"
        seen.add(name)
        path, _, function = deployment["entrypoint"].partition(":")
        assert re.search(rf"^def {function}\(", (ROOT / path).read_text(), re.M), deployment["entrypoint"]
        check_pull_steps(name, deployment.get("pull") or [])


def test_the_git_deployment_clones_by_variables_and_installs_the_runtime_lock() -> None:
    git = next(d for d in deployments() if d["name"] == "git")
    clone, install = git["pull"]
    clone_inputs = clone["prefect.deployments.steps.git_clone"]
    assert clone_inputs["repository"] == "{{ prefect.variables.harvest_repository }}"
    assert clone_inputs["branch"] == "{{ prefect.variables.harvest_branch }}"
    install_inputs = install["prefect.deployments.steps.pip_install_requirements"]
    assert install_inputs["directory"] == f"{{{{ {clone_inputs['id']}.directory }}}}"
    lock = ROOT / install_inputs["requirements_file"]
    assert lock.is_file() and "--hash=sha256:" in lock.read_text()
    default = next(d for d in deployments() if d["name"] == "default")
    assert git["entrypoint"] == default["entrypoint"] and git["parameters"] == default["parameters"]
    assert git["work_pool"]["name"] == default["work_pool"]["name"]


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        ([{"prefect.deployments.steps.git_klone": {"repository": "r"}}], "git_klone"),
        ([{"prefect.deployments.steps.git_clone": {"repo": "r"}}], "repo"),
        ([{"prefect.deployments.steps.pip_install_requirements": {"directory": "{{ clone.directory }}"}}], "clone"),
        ([{"prefect.deployments.steps.set_working_directory": {}}], "directory"),
    ],
)
def test_the_check_refuses_broken_steps(steps: list[dict[str, Any]], problem: str) -> None:
    """The check above can fail: a misspelled step, a wrong argument, a reference to no step, a missing argument."""
    with pytest.raises((AssertionError, TypeError, ImportError, AttributeError), match=problem):
        check_pull_steps("broken", steps)


def test_the_file_is_what_prefect_deploy_reads() -> None:
    """The whole file through the model `prefect deploy` validates it with (extra keys such as `definitions` are
    ignored by it: that is where the anchors live)."""
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(yaml.safe_load((ROOT / "prefect.yaml").read_text()))
    assert [d.name for d in model.deployments] == [d["name"] for d in deployments()]


def test_the_scrape_deployments_share_one_config_written_once() -> None:
    from harvest.models import RunConfig

    text = (ROOT / "prefect.yaml").read_text()
    assert text.count("max_pages:") == 1, "the config is written once and referenced (*scrape_config)"
    scrapes = [d for d in deployments() if d["entrypoint"] == "flows/scrape.py:scrape_website"]
    assert [d["name"] for d in scrapes] == ["default", "docker", "git", "fleet"]
    configs = [d["parameters"]["config"] for d in scrapes]
    assert configs[0] == configs[1] == configs[2] == configs[3]
    assert RunConfig.model_validate(configs[0]).max_pages == 150


def test_schedules_carry_valid_parameters_and_the_scrape_ones_are_paused() -> None:
    """Each schedule is one Prefect accepts, its parameters are ones the flow takes; a scrape schedule ships paused
    (it names a placeholder site) and differs from the deployment's defaults only where it says so."""
    from prefect.cli.deploy._models import RawScheduleConfig

    from harvest.models import RunConfig, StartRequest

    for deployment in deployments():
        for schedule in deployment.get("schedules") or []:
            RawScheduleConfig.model_validate(schedule)
            parameters = {**deployment["parameters"], **schedule.get("parameters", {})}
            if deployment["entrypoint"] == "flows/scrape.py:scrape_website":
                assert schedule["active"] is False, deployment["name"]
                StartRequest(url=parameters["url"], config=RunConfig.model_validate(parameters["config"]))
                assert parameters["config"] == {**deployment["parameters"]["config"], "auto_import": True}
            else:
                assert set(parameters) <= set(inspect.signature(import_object(
                    deployment["entrypoint"].replace(".py:", ".").replace("/", ".")
                )).parameters), deployment["name"]


def test_concurrency_limits_use_a_strategy_prefect_knows() -> None:
    from prefect.cli.deploy._models import ConcurrencyLimitSpec
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    limits = {d["name"]: d.get("concurrency_limit") for d in deployments()}
    for name, limit in limits.items():
        if limit is not None:
            spec = ConcurrencyLimitSpec.model_validate(limit)
            assert spec.limit and spec.limit >= 1, name
            ConcurrencyLimitStrategy(spec.collision_strategy)  # raises for an unknown strategy
    assert limits["default"] == limits["docker"] == limits["git"] == {"limit": 4, "collision_strategy": "ENQUEUE"}
    assert limits["nightly"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
