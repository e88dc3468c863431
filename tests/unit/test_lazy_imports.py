"""A flow-run process imports only what its run uses (issue 32): the OpenAI SDK (~0.5 s, ~40 MB) and Playwright
are not imported by loading the flows, only by a run that calls them. And a `harvest` command that runs no flow
starts cheaply: `harvest runs ...` reads the database without Prefect, Alembic (the database is at its head) or the
pipeline's libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY_AND_OPTIONAL = ("openai", "playwright")


def test_loading_the_flows_imports_neither_the_openai_sdk_nor_playwright() -> None:
    code = (
        "import json, sys\n"
        "import flows.scrape, flows.scrape_sources, flows.sources\n"
        f"print(json.dumps(sorted(m for m in {HEAVY_AND_OPTIONAL!r} if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# Each cost a command that never used it 0.1-1.5 CPU-s at startup (prefect alone ~1.5 s).
NOT_FOR_READING_RUNS = ("prefect", "alembic", "dateparser", "numpy", "PIL", "lxml", "httpx", "openai", "playwright",
                        "boto3")


def test_reading_runs_imports_neither_prefect_nor_alembic_nor_the_pipelines_libraries(tmp_path: Path) -> None:
    from harvest.db.engine import get_engine, upgrade

    url = f"sqlite:///{tmp_path / 'harvest.db'}"
    upgrade(url)  # a database at its head, as every command but the first finds it
    get_engine(url).dispose()
    code = (
        "import json, sys\n"
        "from harvest_cli import main\n"
        "codes = [main(['runs', 'list']), main(['runs', 'show', 'gone']), main(['runs', 'cost', 'gone']), "
        "main(['runs', 'files', 'gone']), main(['runs', 'diff', 'gone', 'gone'])]\n"
        f"print(json.dumps([codes, sorted(m for m in {NOT_FOR_READING_RUNS!r} if m in sys.modules)]))\n"
    )
    env = {**os.environ, "HARVEST_DATABASE_URL": url, "HARVEST_STORAGE_URL": (tmp_path / "store").as_uri()}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [[0, 2, 2, 2, 2], []]
