"""`harvest sources` on Prefect's ephemeral API and Postgres (issue 32): a source is a schedule of the scrape
deployment carrying its parameters, Prefect is the truth for cadence and pause (a schedule paused through Prefect's
API, as the UI does, shows paused in `sources list`), and bad input is one `error:` line with exit 2."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tests.cli_support import assert_one_error_line
from tests.helpers import run_cli


@pytest.fixture
def deployment(harvest_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """A scrape-website deployment of its own on the ephemeral API, named by HARVEST_SOURCES_DEPLOYMENT."""
    from prefect import get_client

    name = f"sources-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("scrape-website")
        deployment_id = client.create_deployment(flow_id=flow_id, name=name, entrypoint="flows/scrape.py:scrape_website")
    harvest_env["HARVEST_SOURCES_DEPLOYMENT"] = f"scrape-website/{name}"
    monkeypatch.setenv("HARVEST_SOURCES_DEPLOYMENT", f"scrape-website/{name}")
    yield deployment_id, harvest_env["HARVEST_SOURCES_DEPLOYMENT"]
    with get_client(sync_client=True) as client:
        client.delete_deployment(deployment_id)


def prefect_schedules(deployment_id: Any) -> dict[str, Any]:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return {s.slug: s for s in client.read_deployment_schedules(deployment_id)}


def cli_json(args: list[str], env: dict[str, str]) -> Any:
    done = run_cli([*args, "--json"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_sources_crud_through_the_cli_and_through_prefect(harvest_env, demo_site, deployment) -> None:  # noqa: ANN001
    deployment_id, _ = deployment
    url = demo_site.base_url + "/"
    added = cli_json(["sources", "add", url, "--every", "6h", "--config", '{"max_pages": 7, "auto_import": true}'],
                     harvest_env)
    assert added["id"] >= 1 and added["cadence"] == "every 6h" and added["next_run"]

    # In Prefect: one active schedule of the deployment, every 6 h, carrying the source's parameters.
    (schedule,) = prefect_schedules(deployment_id).values()
    assert schedule.slug == added["schedule"] and schedule.active
    assert schedule.schedule.interval == timedelta(hours=6)
    assert schedule.parameters == {"url": url, "config": {"max_pages": 7, "auto_import": True}}

    (row,) = cli_json(["sources", "list"], harvest_env)
    assert (row["id"], row["url"], row["status"], row["schedule"]) == (added["id"], url, "active", "active")
    assert row["next_run"] and row["activities"] is None and row["last_run"] is None

    # Paused in Prefect (what the UI's toggle does): the CLI shows it paused; nothing in harvest's database changed.
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.update_deployment_schedule(deployment_id, schedule.id, active=False)
    (row,) = cli_json(["sources", "list"], harvest_env)
    assert (row["status"], row["schedule"], row["next_run"]) == ("paused", "paused", None)
    # Prefect 3.9 wrote {} over the schedule's parameters (an update of `active` alone): flagged, and the source's
    # own config shown; `resume` restores them.
    assert prefect_schedules(deployment_id)[schedule.slug].parameters == {}
    assert row["parameters_ok"] is False and row["config"] == {"max_pages": 7, "auto_import": True}

    # Resumed and paused from the CLI: Prefect's schedule follows.
    parameters = {"url": url, "config": {"max_pages": 7, "auto_import": True}}
    assert cli_json(["sources", "resume", str(added["id"])], harvest_env)["schedule"] == "active"
    resumed = prefect_schedules(deployment_id)[schedule.slug]
    assert resumed.active is True and resumed.parameters == parameters
    assert cli_json(["sources", "pause", str(added["id"])], harvest_env)["schedule"] == "paused"
    paused = prefect_schedules(deployment_id)[schedule.slug]
    assert paused.active is False and paused.parameters == parameters  # the CLI's pause keeps them
    (row,) = cli_json(["sources", "list"], harvest_env)
    assert row["parameters_ok"] is True
    shown = cli_json(["sources", "show", str(added["id"])], harvest_env)
    assert shown["status"] == "paused" and shown["config"] == {"max_pages": 7, "auto_import": True}
    # The schedule's parameters edited in Prefect: `show` says what the runs will get.
    with get_client(sync_client=True) as client:
        client.update_deployment_schedule(deployment_id, schedule.id,
                                          parameters={"url": url, "config": {"max_pages": 9}})
    assert cli_json(["sources", "show", str(added["id"])], harvest_env)["config"] == {"max_pages": 9}

    # A schedule deleted in Prefect: the source says so instead of pretending.
    with get_client(sync_client=True) as client:
        client.delete_deployment_schedule(deployment_id, schedule.id)
    (row,) = cli_json(["sources", "list"], harvest_env)
    assert row["status"] == "no schedule"
    assert_one_error_line(run_cli(["sources", "resume", str(added["id"])], harvest_env), 2, "has no schedule")

    removed = cli_json(["sources", "remove", str(added["id"])], harvest_env)
    assert removed == {"id": added["id"], "url": url, "removed": True, "schedule_removed": False,
                       "withdrawn": {"claims": 0, "rederived": 0, "deleted": 0}}
    assert cli_json(["sources", "list"], harvest_env) == []

    # Added again with a cron, then removed: the schedule goes with it.
    again = cli_json(["sources", "add", url, "--cron", "0 3 * * *"], harvest_env)
    (schedule,) = prefect_schedules(deployment_id).values()
    assert schedule.schedule.cron == "0 3 * * *" and schedule.parameters == {"url": url}
    assert again["next_run"].endswith("03:00:00+00:00")
    assert cli_json(["sources", "remove", str(again["id"])], harvest_env)["schedule_removed"] is True
    assert prefect_schedules(deployment_id) == {}


def test_bad_source_requests_are_one_line_and_exit_2(harvest_env, demo_site, deployment) -> None:  # noqa: ANN001
    deployment_id, _ = deployment
    url = demo_site.base_url + "/"
    cli_json(["sources", "add", url], harvest_env)
    assert_one_error_line(run_cli(["sources", "add", url], harvest_env), 2, f"{url} is already source")
    other = demo_site.base_url + "/other/"
    assert_one_error_line(run_cli(["sources", "add", other, "--cron", "0 3 * *"], harvest_env), 2,
                          "is not a cron expression: five fields")
    assert_one_error_line(run_cli(["sources", "add", other, "--cron", "61 3 * * *"], harvest_env), 2,
                          "--cron '61 3 * * *' is not a valid cron expression")
    assert_one_error_line(run_cli(["sources", "add", other, "--every", "soon"], harvest_env), 2,
                          "--every 'soon' is not a duration")
    assert_one_error_line(run_cli(["sources", "add", other, "--every", "1d", "--cron", "0 3 * * *"], harvest_env), 2,
                          "not both")
    # A config the flow would refuse is refused here, by the flow's own validation.
    assert_one_error_line(run_cli(["sources", "add", other, "--config", '{"max_pages": 0}'], harvest_env), 2,
                          "invalid run config: max_pages (--config)")
    assert_one_error_line(run_cli(["sources", "add", "ftp://example.org/"], harvest_env), 2)
    for command in ("show", "pause", "resume", "remove"):
        assert_one_error_line(run_cli(["sources", command, "999"], harvest_env), 2, "no source 999")
    assert_one_error_line(run_cli(["sources", "show", "abc"], harvest_env), 2, "'abc' is not a source id")
    missing = {**harvest_env, "HARVEST_SOURCES_DEPLOYMENT": "scrape-website/nowhere"}
    assert_one_error_line(run_cli(["sources", "add", other], missing), 2, "no deployment scrape-website/nowhere",
                          "prefect --no-prompt deploy --all")
    # Nothing was left half-made: one source, one schedule.
    assert [row["url"] for row in cli_json(["sources", "list"], harvest_env)] == [url]
    assert len(prefect_schedules(deployment_id)) == 1


def test_sources_without_prefects_api_is_exit_3(harvest_env) -> None:  # noqa: ANN001
    """The schedules live in Prefect: with its API down, `sources list` says so in one line, exit 3."""
    import os
    import subprocess

    from harvest.db.engine import get_engine
    from harvest.db.sources import add_source
    from testkit.net import free_port
    from tests.cli_support import HARVEST

    add_source(get_engine(harvest_env["HARVEST_DATABASE_URL"]), "https://venue.example.org/", {},
               "scrape-website/default")
    api = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    done = subprocess.run([HARVEST, "sources", "list"], env={**os.environ, **harvest_env, "PREFECT_API_URL": api},
                          capture_output=True, text=True, timeout=300)
    assert_one_error_line(done, 3, f"Prefect's API at {api} is unavailable: ConnectError")


def test_removing_a_source_withdraws_only_its_claims(harvest_env, demo_site, deployment) -> None:  # noqa: ANN001
    """`sources remove` takes the source's claims with it (harvest.import_.provenance.withdraw_source): an activity
    another source also lists stays, shown from that source; one only the removed source listed goes."""
    import orjson
    import sqlalchemy as sa

    from harvest.db import runs
    from harvest.db.engine import get_engine
    from harvest.db.schema import activities
    from harvest.enrich.embeddings.vectors import parse_final_line
    from harvest.import_.activities import import_activities
    from harvest.import_.provenance import sources_of

    url, aggregator = demo_site.base_url + "/", "https://kids-events.example/"
    engine = get_engine(harvest_env["HARVEST_DATABASE_URL"])

    def imported(run_id: str, source: str, name: str, description: str) -> None:
        runs.create_run(engine, run_id, source, {})
        runs.finish_run(engine, run_id, "completed")
        record = {"id": name, "name": name, "description": description, "urgency": "medium", "is_public": True,
                  "location": {"formatted_address": "1 Main Rd, Eltham"}, "tags": [], "content_hash": description,
                  "source_url": f"{source}events"}
        import_activities(engine, [parse_final_line(orjson.dumps(record))], run_id=run_id)

    imported("agg-run", aggregator, "Puppet Show", "Puppets!")
    imported("site-run", url, "Puppet Show", "A puppet show for ages 3-8.")  # the newer run: its values show
    imported("site-run-2", url, "Story Time", "Only on the site itself.")
    with engine.begin() as connection:
        shown = dict(connection.execute(sa.select(activities.c.name, activities.c.description)).all())
    assert shown == {"Puppet Show": "A puppet show for ages 3-8.", "Story Time": "Only on the site itself."}

    added = cli_json(["sources", "add", url, "--every", "1d"], harvest_env)
    removed = cli_json(["sources", "remove", str(added["id"])], harvest_env)
    assert removed["withdrawn"] == {"claims": 2, "rederived": 1, "deleted": 1}
    with engine.begin() as connection:
        rows = connection.execute(sa.select(activities.c.dedupe_key, activities.c.name, activities.c.description,
                                            activities.c.source)).all()
    assert [(name, description, source) for _, name, description, source in rows] == [
        ("Puppet Show", "Puppets!", aggregator)]
    assert [claim.source_url for claim in sources_of(engine, [rows[0][0]])[rows[0][0]]] == [aggregator]
