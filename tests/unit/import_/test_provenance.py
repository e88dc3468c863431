"""Where an activity came from (issue 32): one row per activity listing every source that claims it, each source's
own values kept, the precedence (first party, then newest), and a source's withdrawal removing only its claim; on
both import paths (Postgres COPY, the portable upsert on Postgres and on SQLite)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from harvest.db import runs
from harvest.db.engine import get_engine, utcnow
from harvest.db.schema import activities, activity_sources, scrape_runs
from harvest.enrich.embeddings.vectors import parse_final_line
from harvest.import_.activities import import_activities
from harvest.import_.provenance import sources_of, withdraw_source
from tests.helpers import database_url

T0 = utcnow() - timedelta(days=3)
VENUE = "https://www.venue.example/"  # the venue's own site (its host compared without www.)
AGGREGATOR = "https://kids-events.example/"  # lists the venue's activities, each pointing at the venue's page
OTHER_AGGREGATOR = "https://whats-on.example/"


@pytest.fixture(params=["postgres-copy", "postgres-upsert", "sqlite-upsert"])
def target(request, tmp_path):  # noqa: ANN001, ANN201
    kind, method = request.param.split("-")
    return get_engine(database_url(request, tmp_path, kind)), method


def make_run(engine, run_id: str, url: str, hours: int) -> str:  # noqa: ANN001
    """A finished run of `url` (a source) that started `hours` after T0."""
    runs.create_run(engine, run_id, url, {})
    runs.finish_run(engine, run_id, "completed")
    with engine.begin() as connection:
        connection.execute(
            scrape_runs.update().where(scrape_runs.c.id == run_id).values(started_at=T0 + timedelta(hours=hours))
        )
    return run_id


def listing(source: str, description: str, *, vector: list[float] | None = None, image: str | None = None,
            **extra: Any) -> dict[str, Any]:
    """The same activity (name + address) as `source` lists it: the venue on its own page, an aggregator on its
    page with the item's own URL at the venue's site."""
    own_site = source == VENUE
    line = {
        "id": "a1", "name": "Puppet Show", "description": description, "urgency": "medium", "is_public": True,
        "location": {"formatted_address": "1 Main Rd, Eltham", "city": "Eltham"},
        "tags": ["puppets"], "embedding": vector, "content_hash": f"h-{description}",
        "image": {"uri": image, "width": 10, "height": 5} if image else None,
        "source_url": f"{source}events/puppets" if own_site else f"{source}listing?page=3",
        "item_url": None if own_site else "https://venue.example/events/puppets",
        **extra,
    }
    return parse_final_line(orjson.dumps(line))


@pytest.mark.parametrize(("url", "host"), [
    ("https://www.Venue.example/events/1", "venue.example"), ("http://user:pw@venue.example:8080/x?y#z", "venue.example"),
    ("https://venue.example?x=1", "venue.example"), ("http://[::1]:8000/a", "::1"), ("http://127.0.0.5/", "127.0.0.5"),
    ("venue.example/x", ""), (None, ""), ("", ""),
])
def test_hosts_are_compared_lowercased_without_www(url: str | None, host: str) -> None:
    from harvest.import_.provenance import host_of

    assert host_of(url) == host


def load(engine, method, run_id, record) -> dict[str, int]:  # noqa: ANN001
    summary = import_activities(engine, [record], run_id=run_id, method=method)
    return summary.model_dump(exclude={"errors", "interrupted"})


def the_row(engine) -> dict[str, Any]:  # noqa: ANN001
    with engine.begin() as connection:
        return dict(connection.execute(sa.select(activities)).mappings().one())


def claims(engine) -> dict[str, Any]:  # noqa: ANN001
    """The claims on the one activity, by source."""
    with engine.begin() as connection:
        key = connection.execute(sa.select(activities.c.dedupe_key)).scalar_one()
    return {claim.source_url: claim for claim in sources_of(engine, [key])[key]}


def test_an_activity_on_two_sources_is_one_row_listing_both_with_last_seen(target) -> None:  # noqa: ANN001
    engine, method = target
    agg, venue = make_run(engine, "agg-1", AGGREGATOR, 1), make_run(engine, "venue-1", VENUE, 2)
    assert load(engine, method, agg, listing(AGGREGATOR, "Puppets!"))["imported"] == 1
    assert load(engine, method, venue, listing(VENUE, "A puppet show for ages 3-8."))["updated"] == 1

    with engine.begin() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(activities)).scalar_one() == 1
    listed = claims(engine)
    assert set(listed) == {AGGREGATOR, VENUE}
    assert listed[AGGREGATOR].last_seen_at == T0 + timedelta(hours=1)
    assert listed[VENUE].last_seen_at == T0 + timedelta(hours=2)
    assert (listed[VENUE].first_party, listed[AGGREGATOR].first_party) == (True, False)
    assert (listed[VENUE].run_id, listed[AGGREGATOR].run_id) == (venue, agg)
    assert the_row(engine)["source"] == VENUE
    # The precedence's order: the claim that takes precedence first.
    with engine.begin() as connection:
        key = connection.execute(sa.select(activities.c.dedupe_key)).scalar_one()
    assert [claim.source_url for claim in sources_of(engine, [key])[key]] == [VENUE, AGGREGATOR]


def test_disagreeing_fields_follow_the_precedence_and_each_source_keeps_its_own(target) -> None:  # noqa: ANN001
    engine, method = target
    venue = make_run(engine, "venue-1", VENUE, 1)
    agg = make_run(engine, "agg-1", AGGREGATOR, 2)
    other = make_run(engine, "other-1", OTHER_AGGREGATOR, 3)
    load(engine, method, venue, listing(VENUE, "Venue: Saturdays at 10."))
    # A newer aggregator run does not overwrite the venue's own values (first party first): its row is held back.
    assert load(engine, method, agg, listing(AGGREGATOR, "Aggregator: Sundays?")) == {
        "imported": 0, "updated": 0, "skipped": 1, "failed": 0}
    assert load(engine, method, other, listing(OTHER_AGGREGATOR, "Other: every day")) == {
        "imported": 0, "updated": 0, "skipped": 1, "failed": 0}
    row = the_row(engine)
    assert (row["description"], row["source"], row["run_id"]) == ("Venue: Saturdays at 10.", VENUE, venue)
    # Each source's own values are kept in its claim.
    listed = claims(engine)
    assert {source: claim.fields["description"] for source, claim in listed.items()} == {
        VENUE: "Venue: Saturdays at 10.", AGGREGATOR: "Aggregator: Sundays?", OTHER_AGGREGATOR: "Other: every day"}
    assert listed[AGGREGATOR].fields["content_hash"] == "h-Aggregator: Sundays?"

    # Between two third parties the newest wins: the venue withdrawn, the newer aggregator's values show.
    withdraw_source(engine, VENUE)
    assert (the_row(engine)["description"], the_row(engine)["source"]) == ("Other: every day", OTHER_AGGREGATOR)
    # ...and a later run of the older aggregator is then the newest: it writes.
    later = make_run(engine, "agg-2", AGGREGATOR, 4)
    assert load(engine, method, later, listing(AGGREGATOR, "Aggregator: Sundays at 11"))["updated"] == 1
    assert (the_row(engine)["description"], the_row(engine)["source"]) == ("Aggregator: Sundays at 11", AGGREGATOR)


def test_the_first_party_site_wins_whichever_imports_last(target) -> None:  # noqa: ANN001
    """The aggregator's run is newer and imported after the venue's older run was imported late: still the
    venue's values (its older run is its latest: nothing newer of the venue overrides it)."""
    engine, method = target
    venue, agg = make_run(engine, "venue-1", VENUE, 1), make_run(engine, "agg-1", AGGREGATOR, 2)
    load(engine, method, agg, listing(AGGREGATOR, "Aggregator's words", image="s3://b/images/agg.webp"))
    assert the_row(engine)["source"] == AGGREGATOR
    assert load(engine, method, venue, listing(VENUE, "Venue's words")) == {
        "imported": 0, "updated": 1, "skipped": 0, "failed": 0}
    row = the_row(engine)
    assert (row["description"], row["source"], row["run_id"]) == ("Venue's words", VENUE, venue)


def test_withdrawing_the_source_shown_rederives_the_row_then_the_last_one_deletes_it(target) -> None:  # noqa: ANN001
    engine, method = target
    agg, venue = make_run(engine, "agg-1", AGGREGATOR, 1), make_run(engine, "venue-1", VENUE, 2)
    load(engine, method, agg, listing(AGGREGATOR, "Aggregator's words", vector=[0.5, 0.25],
                                      image="s3://b/images/agg.webp"))
    load(engine, method, venue, listing(VENUE, "Venue's words", vector=[1.0, 2.0]))
    assert the_row(engine)["image_uri"] == "s3://b/images/agg.webp"  # kept: the venue's run brought none

    outcome = withdraw_source(engine, f"  {VENUE}")  # as a person types it: the URL is stripped like a run's
    assert (outcome.claims, outcome.rederived, outcome.deleted) == (1, 1, 0)
    row = the_row(engine)
    assert (row["description"], row["source"], row["run_id"]) == ("Aggregator's words", AGGREGATOR, agg)
    assert row["run_started_at"] == T0 + timedelta(hours=1)
    assert row["content_hash"] == "h-Aggregator's words"
    # The vector described the venue's text: cleared, so the aggregator's next run writes its own (never a stale one
    # found by the aggregator's content hash).
    assert (row["embedding"], row["embedding_hash"]) == (None, None)
    assert set(claims(engine)) == {AGGREGATOR}
    again = make_run(engine, "agg-2", AGGREGATOR, 3)
    assert load(engine, method, again, listing(AGGREGATOR, "Aggregator's words", vector=[0.5, 0.25]))["updated"] == 1
    assert [round(v, 3) for v in the_row(engine)["embedding"]] == [0.5, 0.25]

    outcome = withdraw_source(engine, AGGREGATOR)
    assert (outcome.claims, outcome.rederived, outcome.deleted) == (1, 0, 1)
    with engine.begin() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(activities)).scalar_one() == 0
        assert connection.execute(sa.select(sa.func.count()).select_from(activity_sources)).scalar_one() == 0


def test_withdrawing_a_source_not_shown_leaves_the_row_as_it_is(target) -> None:  # noqa: ANN001
    engine, method = target
    agg, venue = make_run(engine, "agg-1", AGGREGATOR, 1), make_run(engine, "venue-1", VENUE, 2)
    load(engine, method, agg, listing(AGGREGATOR, "Aggregator's words"))
    load(engine, method, venue, listing(VENUE, "Venue's words", vector=[1.0, 2.0]))
    before = the_row(engine)

    outcome = withdraw_source(engine, AGGREGATOR)
    assert (outcome.claims, outcome.rederived, outcome.deleted) == (1, 0, 0)
    assert the_row(engine) == before
    assert set(claims(engine)) == {VENUE}
    assert withdraw_source(engine, AGGREGATOR).claims == 0  # twice: nothing left to remove

    assert withdraw_source(engine, VENUE).deleted == 1
    with engine.begin() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(activities)).scalar_one() == 0


def test_a_reimport_of_the_same_source_moves_last_seen_and_adds_no_claim(target) -> None:  # noqa: ANN001
    engine, method = target
    first, second = make_run(engine, "venue-1", VENUE, 1), make_run(engine, "venue-2", VENUE, 5)
    load(engine, method, first, listing(VENUE, "Venue's words"))
    assert load(engine, method, first, listing(VENUE, "Venue's words"))["skipped"] == 1  # the same run again
    assert load(engine, method, second, listing(VENUE, "Venue's words"))["skipped"] == 1  # unchanged: not rewritten
    listed = claims(engine)
    assert list(listed) == [VENUE]
    assert listed[VENUE].first_seen_at == T0 + timedelta(hours=1)
    assert listed[VENUE].last_seen_at == T0 + timedelta(hours=5)
    assert listed[VENUE].run_id == second
    # An older run of the source imported late changes neither the row nor the claim.
    assert load(engine, method, first, listing(VENUE, "Venue's old words"))["skipped"] == 1
    assert claims(engine)[VENUE].last_seen_at == T0 + timedelta(hours=5)
    assert the_row(engine)["description"] == "Venue's words"
    with engine.begin() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(activity_sources)).scalar_one() == 1


def test_records_of_no_known_run_record_no_claim(target) -> None:  # noqa: ANN001
    """An import of records no run row describes (a test, a bench) has no source: the table's policy as before."""
    engine, method = target
    assert load(engine, method, "no-such-run", listing(VENUE, "Venue's words"))["imported"] == 1
    assert the_row(engine)["source"] is None
    with engine.begin() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(activity_sources)).scalar_one() == 0
