"""A flow-run process imports only what its run uses (issue 32): the OpenAI SDK (~0.5 s, ~40 MB) and Playwright
are not imported by loading the flows, only by a run that calls them."""

from __future__ import annotations

import json
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
