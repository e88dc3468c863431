"""Create or update harvest's automations on a Prefect server: zombie runs, settling crashed runs, notifications.

    harvest automations register [--zombie-after SECONDS]     # or: python -m blocks.automations

Every flow run sends Prefect a heartbeat event every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (180 by default,
at least 30) while it runs. Three automations act on the events of harvest's flows (each replaced when this runs
again, matched by name):

- `harvest: crash zombie runs`: after a heartbeat, the same flow run must send another event (a heartbeat or a
  state change) within `--zombie-after` seconds (default 3 heartbeats); if none comes, its process is gone (a
  machine lost, a container evicted, a worker killed with its flow run) and the run is marked Crashed. This is
  Prefect's "detect zombie flows" automation, limited to harvest's flows.
- `harvest: settle crashed runs`: when a scrape-website flow run enters Crashed, the `settle-run/crashed` deployment
  runs with its id (flows/settle.py): it runs the flow's `on_crashed` hook for it, which records the run `crashed`
  and keeps its files, as the run's own worker would have. Its process reported nothing, so nothing else would
  until a sweep. Skipped, with a note, while that deployment is not deployed.
- `harvest: notify on failed or crashed runs`: a notification through the block HARVEST_NOTIFY_BLOCK names, or the
  Custom Webhook block `harvest-notify` saved here from HARVEST_NOTIFY_WEBHOOK_URL (its URL kept as a secret
  value). Skipped, with a note, without either.

Only names are printed, never a URL or a secret.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from blocks.register import Registered
from harvest.errors import ConfigError
from harvest.settings import HarvestSettings

if TYPE_CHECKING:
    from prefect.blocks.notifications import NotificationBlock
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.events.schemas.automations import AutomationCore

# The flows whose runs the automations watch (their runs' events name the flow as a related resource).
HARVEST_FLOWS = ["scrape-website", "import-run", "sweep-expired", "settle-run"]
SCRAPE_FLOW = "scrape-website"
SETTLE_DEPLOYMENT = "settle-run/crashed"
NOTIFY_BLOCK = "harvest-notify"

ZOMBIE = "harvest: crash zombie runs"
SETTLE = "harvest: settle crashed runs"
NOTIFY = "harvest: notify on failed or crashed runs"

SUBJECT = "harvest: {{ flow.name }} run {{ flow_run.name }} is {{ flow_run.state.name }}"
BODY = """\
Flow run {{ flow_run.name }} ({{ flow_run.id }}) of {{ flow.name }}\
{% if deployment %}, deployment {{ deployment.name }}{% endif %}, is {{ flow_run.state.name }}: \
{{ flow_run.state.message }}
Parameters: {{ flow_run.parameters | tojson }}
{% if flow_run|ui_url %}In the UI: {{ flow_run|ui_url }}
{% endif %}Files are kept for debugging: `harvest runs show {{ flow_run.id }}`; resume with \
`prefect flow-run retry {{ flow_run.id }}` or `harvest runs resume {{ flow_run.id }}`."""


def zombie_after_default() -> float:
    """Three heartbeats, as Prefect's guide advises (a late one is not a death); at least 90 s."""
    from prefect.settings import get_current_settings

    frequency = get_current_settings().flows.heartbeat_frequency or 180
    return float(max(3 * frequency, 90))


def _of_harvest_flows(names: list[str]) -> Any:
    from prefect.events.schemas.events import ResourceSpecification

    return ResourceSpecification({"prefect.resource.role": "flow", "prefect.resource.name": names})


def zombie_automation(zombie_after: float) -> AutomationCore:
    from prefect.automations import AutomationCore, ChangeFlowRunState, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType
    from prefect.events.schemas.events import ResourceSpecification

    return AutomationCore(
        name=ZOMBIE,
        description=(f"A flow run of harvest that sends no event for {zombie_after:.0f} s after a heartbeat is marked "
                     "Crashed: its process is gone. Made by `harvest automations register`."),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.*"},  # a heartbeat, or any state change (custom state names included)
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=_of_harvest_flows(HARVEST_FLOWS),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=zombie_after),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"No heartbeat for {zombie_after:.0f} s: the flow run's process is gone ({ZOMBIE})",
        )],
    )


def _on_states(state_types: list[str], flows: list[str]) -> Any:
    """A trigger that fires once for each flow run of `flows` entering a state of one of `state_types`."""
    from prefect.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return EventTrigger(
        expect={"prefect.flow-run.*"},
        match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*", "prefect.state-type": state_types}),
        match_related=_of_harvest_flows(flows),
        for_each={"prefect.resource.id"},
        posture=Posture.Reactive,
        threshold=1,
        within=timedelta(0),
    )


def settle_automation(deployment_id: UUID) -> AutomationCore:
    from prefect.automations import AutomationCore, RunDeployment

    return AutomationCore(
        name=SETTLE,
        description=("When a scrape-website flow run is Crashed, run settle-run/crashed for it: the flow's on_crashed "
                     "hook records the run and keeps its files. Made by `harvest automations register`."),
        trigger=_on_states(["CRASHED"], [SCRAPE_FLOW]),
        # A plain Jinja value: rendered as the text of the id (the JSON kind would need the UUID to be JSON).
        actions=[RunDeployment(source="selected", deployment_id=deployment_id, parameters={
            "flow_run_id": {"__prefect_kind": "jinja", "template": "{{ flow_run.id }}"}})],
    )


def notify_automation(block_document_id: UUID) -> AutomationCore:
    from prefect.automations import AutomationCore, SendNotification

    return AutomationCore(
        name=NOTIFY,
        description="A notification when a flow run of harvest fails or crashes. "
                    "Made by `harvest automations register`.",
        trigger=_on_states(["FAILED", "CRASHED"], HARVEST_FLOWS),
        actions=[SendNotification(block_document_id=block_document_id, subject=SUBJECT, body=BODY)],
    )


def _replace(client: SyncPrefectClient, automation: AutomationCore, note: str = "") -> Registered:
    """Create `automation`, replacing any of the same name (so registering again never duplicates one)."""
    existing = client.read_automations_by_name(automation.name)
    for old in existing:
        client.delete_automation(old.id)
    client.create_automation(automation)
    return Registered(f"automation/{automation.name}", "updated" if existing else "created", note)


def _notification_block(settings: HarvestSettings) -> tuple[NotificationBlock | None, Registered | None, str]:
    """(the block to notify through, what was saved for it, why there is none)."""
    from prefect.blocks.core import Block
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.exceptions import ObjectNotFound
    from prefect.types import SecretDict

    if settings.notify_block:
        try:
            return cast("NotificationBlock", Block.load(settings.notify_block)), None, ""
        except (ValueError, ObjectNotFound):
            return None, None, f"HARVEST_NOTIFY_BLOCK names {settings.notify_block}, which does not exist"
    if settings.notify_webhook_url is None:
        return None, None, "neither HARVEST_NOTIFY_WEBHOOK_URL nor HARVEST_NOTIFY_BLOCK is set"
    block = CustomWebhookNotificationBlock(
        name="harvest", url="{{webhook_url}}", method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}", "text": "{{subject}}\n{{body}}"},
        secrets=SecretDict({"webhook_url": settings.notify_webhook_url.get_secret_value()}),
    )
    try:
        CustomWebhookNotificationBlock.load(NOTIFY_BLOCK)
        action = "updated"
    except (ValueError, ObjectNotFound):
        action = "created"
    block.save(NOTIFY_BLOCK, overwrite=True)
    return block, Registered(f"custom-webhook/{NOTIFY_BLOCK}", action), ""


def register_automations(
    settings: HarvestSettings | None = None, zombie_after: float | None = None
) -> list[Registered]:
    """Create or update the three automations (see the module docstring)."""
    from prefect.client.orchestration import get_client  # not `prefect`: its get_client imports flows and tasks too
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import get_current_settings

    settings = settings or HarvestSettings()
    zombie_after = zombie_after or zombie_after_default()
    frequency = get_current_settings().flows.heartbeat_frequency
    if frequency and zombie_after < 2 * frequency:
        raise ConfigError(f"--zombie-after {zombie_after:.0f} s is less than two heartbeats ({frequency} s each, "
                          "PREFECT_FLOWS_HEARTBEAT_FREQUENCY): one late heartbeat would crash a live run")
    done: list[Registered] = []
    block, saved, why_not = _notification_block(settings)
    if saved is not None:
        done.append(saved)
    with get_client(sync_client=True) as client:
        beats = f"every {frequency} s" if frequency else "never (PREFECT_FLOWS_HEARTBEAT_FREQUENCY is off here)"
        done.append(_replace(client, zombie_automation(zombie_after),
                             f"Crashed after {zombie_after:.0f} s without an event; this machine's runs beat {beats}"))
        try:
            settle = client.read_deployment_by_name(SETTLE_DEPLOYMENT)
        except ObjectNotFound:
            for old in client.read_automations_by_name(SETTLE):
                client.delete_automation(old.id)
            done.append(Registered(f"automation/{SETTLE}", "skipped",
                                   f"no deployment {SETTLE_DEPLOYMENT}: `prefect --no-prompt deploy --all` first"))
        else:
            done.append(_replace(client, settle_automation(settle.id), f"runs {SETTLE_DEPLOYMENT}"))
        if block is None or block._block_document_id is None:  # noqa: SLF001 - a saved block's document
            for old in client.read_automations_by_name(NOTIFY):
                client.delete_automation(old.id)
            done.append(Registered(f"automation/{NOTIFY}", "skipped", why_not))
        else:
            done.append(_replace(client, notify_automation(block._block_document_id),  # noqa: SLF001
                                 f"through {block.get_block_type_slug()}/{block._block_document_name}"))  # noqa: SLF001
    return done


def main(echo: Callable[[str], None] = print, zombie_after: float | None = None) -> list[Registered]:
    registered = register_automations(zombie_after=zombie_after)
    for item in registered:
        echo(item.line())
    return registered


if __name__ == "__main__":  # pragma: no cover - `python -m blocks.automations`
    main()
