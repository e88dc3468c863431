"""Running the installed `harvest` console script as a person would, for the CLI tests: a subprocess with a clean
environment (PATH, LANG, a new HOME and only the variables a test names), and checks on what it left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HARVEST = str(Path(sys.executable).parent / "harvest")


def new_home() -> Path:
    """A new, empty home folder."""
    return Path(tempfile.mkdtemp(prefix="harvest-home-"))


def clean_env(home: Path, **variables: str) -> dict[str, str]:
    """PATH, LANG and HOME, and nothing else but `variables`: no PREFECT_* at all, as on a new machine."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": os.environ.get("LANG", "C.UTF-8"),
           "DO_NOT_TRACK": "1"}
    env.update(variables)
    return env


def run_harvest(args: list[str], env: dict[str, str], *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HARVEST, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=env["HOME"])


def prefect_started(home: Path) -> bool:
    """Whether Prefect's API ran for this home: its temporary server creates ~/.prefect/prefect.db on first use."""
    return (home / ".prefect" / "prefect.db").exists()


def assert_one_error_line(done: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """The process ended with `code`, nothing on stdout, and exactly one `error:` line on stderr containing every
    fragment; no traceback. Returns the line."""
    lines = done.stderr.splitlines()
    assert done.returncode == code, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert done.stdout == "", done.stdout
    return lines[0]
