"""`harvest automations register` on Prefect's ephemeral API: the three automations exist after, a second run
replaces them (never two of a name), the settle automation waits for its deployment, and the webhook's URL never
reaches the output or the block's plain fields."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from harvest_cli import app

WEBHOOK = "https://hooks.example.org/services/T000/B000/secret-path-123"
NAMES = ("harvest: crash zombie runs", "harvest: settle crashed runs", "harvest: notify on failed or crashed runs")


@pytest.fixture
def no_automations() -> Iterator[None]:
    yield
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for automation in client.read_automations():
            if automation.name in NAMES:
                client.delete_automation(automation.id)


def register(*args: str) -> str:
    result = CliRunner().invoke(app, ["automations", "register", "--local", *args])
    assert result.exit_code == 0, result.output
    return result.output


def automations() -> dict[str, list[object]]:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        found: dict[str, list[object]] = {}
        for automation in client.read_automations():
            found.setdefault(automation.name, []).append(automation)
        return found


def test_register_creates_then_replaces_the_automations(monkeypatch, no_automations) -> None:  # noqa: ANN001
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    monkeypatch.delenv("HARVEST_NOTIFY_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("HARVEST_NOTIFY_BLOCK", raising=False)
    too_soon = CliRunner().invoke(app, ["automations", "register", "--local", "--zombie-after", "200"])
    assert too_soon.exit_code == 2 and "less than two heartbeats (180 s each" in too_soon.output
    first = register("--zombie-after", "600")
    assert "created  automation/harvest: crash zombie runs" in first
    assert "skipped  automation/harvest: settle crashed runs" in first and "no deployment settle-run/crashed" in first
    assert "skipped  automation/harvest: notify on failed or crashed runs" in first
    (zombie,) = automations()["harvest: crash zombie runs"]
    assert zombie.trigger.within.total_seconds() == 600  # type: ignore[attr-defined]

    monkeypatch.setenv("HARVEST_NOTIFY_WEBHOOK_URL", WEBHOOK)
    again = register()
    assert "updated  automation/harvest: crash zombie runs" in again
    assert "created  custom-webhook/harvest-notify" in again and "created  automation/harvest: notify" in again
    assert WEBHOOK not in again and "secret-path" not in again
    found = automations()
    assert [len(found[name]) for name in NAMES if name in found] == [1, 1]  # replaced, not added; no settle yet
    (notify,) = found["harvest: notify on failed or crashed runs"]
    block = CustomWebhookNotificationBlock.load("harvest-notify")
    assert notify.actions[0].block_document_id == block._block_document_id  # type: ignore[attr-defined]  # noqa: SLF001
    assert block.url == "{{webhook_url}}" and block.secrets.get_secret_value() == {"webhook_url": WEBHOOK}


def test_the_settle_automation_runs_the_settle_deployment(monkeypatch, no_automations) -> None:  # noqa: ANN001
    from prefect import get_client

    from flows.settle import settle_run

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("settle-run")
        deployment_id = client.create_deployment(flow_id=flow_id, name="crashed", entrypoint="flows/settle.py:settle_run")
    assert settle_run.name == "settle-run"
    try:
        out = register()
        assert "created  automation/harvest: settle crashed runs  (runs settle-run/crashed)" in out
        (settle,) = automations()["harvest: settle crashed runs"]
        (action,) = settle.actions  # type: ignore[attr-defined]
        assert action.deployment_id == deployment_id
        assert action.parameters == {"flow_run_id": {"__prefect_kind": "jinja", "template": "{{ flow_run.id }}"}}
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)
