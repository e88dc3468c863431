"""Every test the docs name as proof exists under that name, so a renamed or deleted test cannot leave a claim in
docs/*.md or README.md pointing at nothing. A test is named as `file.py::test_name`, or as `::test_name` after a
file: the one named last on the same line, else one named earlier in the same table (the tables of
docs/reliability.md name a file once and its other tests after it). CHANGELOG.md is history: left as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([*ROOT.glob("docs/*.md"), ROOT / "README.md"])
REFERENCE = re.compile(r"(?P<file>[\w./-]+\.py)::(?P<name>\w+)|(?<![\w.])::(?P<next>test_\w+)")


def named_tests() -> list[tuple[str, int, tuple[str, ...], str]]:
    """(doc, line number, the test files it may be in as written, test name) for every test a doc names."""
    found = []
    for doc in DOCS:
        table: list[str] = []  # files named so far in the table the line is in
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.startswith("|"):
                table = []
            on_line: list[str] = []
            for match in REFERENCE.finditer(line):
                if match["file"]:
                    if not Path(match["file"]).name.startswith("test_"):
                        continue  # a reference into code (`flows/tasks.py::embed`), not a test
                    on_line.append(match["file"])
                    found.append((doc.name, number, (match["file"],), match["name"]))
                else:
                    files = tuple(on_line[-1:]) or tuple(dict.fromkeys(table))
                    assert files, f"{doc.name}:{number}: `::{match['next']}` names no file before it"
                    found.append((doc.name, number, files, match["next"]))
            table += on_line
    return found


def test_the_docs_name_tests() -> None:
    assert len(named_tests()) > 50  # the pattern still matches how the docs write them


def resolve(written: str) -> list[Path]:
    """The test file a doc means: its path from the repository root, or a bare name found once under tests/."""
    if "/" in written:
        return [ROOT / written] if (ROOT / written).is_file() else []
    return sorted((ROOT / "tests").rglob(written))


@pytest.mark.parametrize(("doc", "line", "written", "name"), named_tests(), ids=lambda item: str(item))
def test_a_test_the_docs_name_exists(doc: str, line: int, written: tuple[str, ...], name: str) -> None:
    defining = []
    for file in written:
        paths = resolve(file)
        assert len(paths) == 1, f"{doc}:{line}: {file} is {'ambiguous' if paths else 'not a test file'}: {paths}"
        if re.search(rf"^\s*(async\s+)?def {re.escape(name)}\(", paths[0].read_text(encoding="utf-8"), re.MULTILINE):
            defining.append(file)
    assert len(defining) == 1, f"{doc}:{line}: {name} is defined in {defining or 'none'} of {list(written)}"
