"""`upgrade` skips Alembic when the database is at the head the scripts' text names (harvest.db.engine.script_head):
that head must be Alembic's own, and anything the text reader cannot be sure of must leave the answer to Alembic."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from harvest.db.engine import migrations_dir, script_head


def test_the_head_read_from_the_scripts_is_alembics() -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    assert [script_head(migrations_dir() / "versions")] == ScriptDirectory.from_config(config).get_heads()


def test_scripts_it_cannot_read_for_sure_leave_it_to_alembic(tmp_path: Path) -> None:
    def scripts(*texts: str) -> Path:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        for number, text in enumerate(texts):
            (folder / f"{number:04}_x.py").write_text(text)
        return folder

    assert script_head(scripts("revision = 'a'\ndown_revision = None\n",
                               "revision: str = \"b\"\ndown_revision: str | None = 'a'\n")) == "b"
    assert script_head(scripts("revision = 'a'\ndown_revision = None\n", "revision = 'b'\n")) is None  # no parent
    assert script_head(scripts("revision = 'a'\ndown_revision = None\n",
                               "revision = 'b'\ndown_revision = ('a', 'x')\n")) is None  # a merge
    assert script_head(scripts("revision = 'a'\ndown_revision = None\n", "revision = 'b'\ndown_revision = None\n",
                               )) is None  # two heads
    assert script_head(scripts("revision = REV\ndown_revision = None\n")) is None  # not a literal
