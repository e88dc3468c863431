"""Migration 0018 (issue 32): rows imported before sources were told apart get the claim of the run that wrote them,
with their stored values as that source's own, and can be withdrawn like any other."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from harvest.db import runs
from harvest.db.engine import migrations_dir, utcnow
from harvest.import_.provenance import sources_of, withdraw_source

DATABASES = ["postgres", "sqlite"]


def _migrate(engine: sa.Engine, revision: str, down: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def test_rows_imported_before_get_their_runs_claim(engine) -> None:  # noqa: ANN001
    _migrate(engine, "0017", down=True)
    started = utcnow() - timedelta(days=1)
    runs.create_run(engine, "old-run", "https://venue.example/", {})
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE scrape_runs SET started_at = :t"), {"t": started.replace(tzinfo=None)
                                                                              if engine.dialect.name == "sqlite"
                                                                              else started})
        for key, run_id in (("puppets|1 main rd", "old-run"), ("orphan|2 main rd", "gone-run")):
            connection.execute(sa.text(
                "INSERT INTO activities (id, dedupe_key, name, description, urgency, is_public, tags, occurrences, "
                "content_hash, run_id, run_started_at, start_date, created_at, updated_at) VALUES (:id, :key, "
                "'Puppets', 'Saturdays', 'medium', true, '[\"puppets\"]', '[]', 'h1', :run, :t, :t, :t, :t)"
            ), {"id": key[:6], "key": key, "run": run_id,
                "t": started.replace(tzinfo=None) if engine.dialect.name == "sqlite" else started})
    _migrate(engine, "head")

    claims = sources_of(engine, ["puppets|1 main rd", "orphan|2 main rd"])
    assert "orphan|2 main rd" not in claims  # no known run: no source to name
    (claim,) = claims["puppets|1 main rd"]
    assert (claim.source_url, claim.run_id, claim.first_party) == ("https://venue.example/", "old-run", False)
    assert abs(claim.last_seen_at - started) < timedelta(seconds=1)
    assert claim.fields["description"] == "Saturdays" and claim.fields["tags"] == ["puppets"]
    with engine.begin() as connection:
        sources = dict(connection.execute(sa.text("SELECT dedupe_key, source FROM activities")).all())
    assert sources == {"puppets|1 main rd": "https://venue.example/", "orphan|2 main rd": None}

    assert withdraw_source(engine, "https://venue.example/").deleted == 1
    with engine.begin() as connection:
        assert connection.execute(sa.text("SELECT dedupe_key FROM activities")).scalars().all() == ["orphan|2 main rd"]
