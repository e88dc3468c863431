"""Issue 28: the docs cannot drift from the command. Every `harvest ...` line of README.md and docs/*.md (code
blocks and inline code) must parse as written: its `--help` in that exact form (placeholders such as URL and ID
filled in, the first of `a|b|c` choices taken) shows the usage, so a renamed command, a removed flag or a flag that
lost its value fails here. The `python -m testkit...` lines that serve the demo site and the stand-ins too."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harvest_cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SAMPLES = {"URL": "https://example.org/", "ID": "4a2c3d5e-0000-4000-8000-000000000001", "OLD": "old-run-id",
           "NEW": "new-run-id", "N": "5", "JSON": "{}", "URI": "/tmp/raw.jsonl", "X": "1"}
COMMAND = re.compile(r"^(?:\.venv/bin/)?harvest(?: +(?=[a-z-])|$)")
TESTKIT = re.compile(r"^(?:\.venv/bin/)?python -m (testkit\.[a-z_]+)(.*)$")


def _logical_lines(text: str) -> list[str]:
    """Lines of the fenced code blocks, a synopsis's continuation lines ("   [--flag ...]") joined to theirs,
    and every inline code span."""
    lines: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for raw in block.splitlines():
            stripped = raw.strip()
            if raw[:1].isspace() and stripped.startswith("[") and lines:
                lines[-1] += " " + stripped
            elif stripped and not stripped.startswith("#"):
                lines.append(stripped)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += [span.strip() for span in re.findall(r"`([^`\n]+)`", prose)]
    return lines


def _args(line: str) -> list[str]:
    """The documented line as the argument list it stands for."""
    line = re.sub(r"\s+#.*$", "", line)
    line = re.sub(r"<[^>]+>", "ID", line)
    words = []
    for word in shlex.split(line):
        word = word.strip("[]")
        if not word or word in ("...", "…"):
            continue
        if "|" in word and not word.startswith("{"):
            word = word.split("|")[0]
        words.append(SAMPLES.get(word, word))
    return words


def documented() -> list[tuple[str, str, list[str]]]:
    """(file, the line as written, its arguments) for every harvest command line in the docs."""
    found = []
    for path in DOCS:
        for line in _logical_lines(path.read_text("utf-8")):
            match = COMMAND.match(line)
            if match and line[match.end():].strip():  # not the bare word "harvest" of a sentence
                found.append((path.name, line, _args(line[match.end():])))
    return found


def documented_testkit() -> list[tuple[str, str, str, list[str]]]:
    found = []
    for path in DOCS:
        for line in _logical_lines(path.read_text("utf-8")):
            match = TESTKIT.match(line)
            if match:
                found.append((path.name, line, match.group(1), _args(match.group(2))))
    return found


def test_the_docs_name_every_command() -> None:
    lines = documented()
    assert len(lines) >= 40
    named = {" ".join(word for word in args[:2] if not word.startswith("-")) for _, _, args in lines}
    for command in ("scrape", "runs list", "runs show", "runs cost", "runs release-reservations", "runs files",
                    "runs diff", "runs import", "runs resume", "runs pin", "runs unpin", "runs cleanup", "sweep",
                    "blocks register", "db upgrade", "server status", "server start", "server stop"):
        assert command in named, command


@pytest.mark.parametrize(("where", "line", "args"), documented(), ids=lambda value: value if isinstance(value, str)
                         and len(value) < 60 else None)
def test_documented_command_parses(where: str, line: str, args: list[str]) -> None:
    if args == ["--version"]:
        done = CliRunner().invoke(app, args)
        assert done.exit_code == 0, f"{where}: {line}\n{done.output}"
        return
    done = CliRunner().invoke(app, [*args, "--help"])
    assert done.exit_code == 0 and "Usage:" in done.output, f"{where}: `{line}` does not parse:\n{done.output}"


def test_the_docs_say_how_to_serve_the_demo_and_the_stand_ins() -> None:
    modules = {module for _, _, module, _ in documented_testkit()}
    assert {"testkit.demo_site", "testkit.openai_server", "testkit.geocoder_server"} <= modules


@pytest.mark.parametrize(("where", "line", "module", "args"), documented_testkit())
def test_documented_testkit_command_parses(where: str, line: str, module: str, args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", module, *args, "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0 and "usage:" in done.stdout, f"{where}: `{line}`\n{done.stdout}{done.stderr}"
