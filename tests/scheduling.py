"""How `make test` spreads the test files over its worker processes (pytest-xdist, `--dist loadfile`).

Two rules on top of xdist's own: the e2e modules run as two chains, each on one worker with one Prefect server
and `deploy --all` of its own (tests/e2e/conftest.py); and the longest files start first (longest-processing-time
first: a 3-minute file picked up last would leave the run waiting on it while the other workers sit idle). How
long a file takes comes from tests/durations.json (seconds per file, measured on a 2-core machine under the
suite's own load); a file not listed there counts as short. `make test-durations` measures them again
(`--record-durations FILE`: the seconds of each file's setup, calls and teardown, as the workers report them).

Each worker is a process of its own with its own session fixtures: its own database (pg_url), PREFECT_HOME and
HARVEST_HOME, moto S3 server, API stand-ins and ports (free ports).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

DURATIONS_FILE = Path(__file__).with_name("durations.json")
# The two e2e chains, of about equal length: the deployment, docker (which may wait for the background image build,
# scripts/prebuild-images.sh) and fleet bench modules on one, everything else of tests/e2e on the other.
E2E_CHAIN_A = ("tests/e2e/test_deployment.py", "tests/e2e/test_docker.py", "tests/e2e/test_fleet_bench.py")


def e2e_chain(module: str) -> str | None:
    """The e2e chain a test module belongs to ("tests/e2e:a" or "tests/e2e:b"), None outside tests/e2e."""
    if not module.startswith("tests/e2e/"):
        return None
    return "tests/e2e:a" if module in E2E_CHAIN_A else "tests/e2e:b"


def recorded_durations() -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads(DURATIONS_FILE.read_text()).items()}
    except (OSError, ValueError):
        return {}


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile` (what `make test` runs) with the rules above; other modes as xdist has them."""
    if config.getvalue("dist") != "loadfile":
        return None
    return make_scheduler(config, log)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--record-durations", metavar="FILE", default=None,
                     help="write the seconds each test file took (JSON) to FILE, for make test's scheduling")


_SECONDS: defaultdict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _SECONDS[report.nodeid.split("::", 1)[0]] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = session.config.getoption("--record-durations")
    if target and not hasattr(session.config, "workerinput"):  # the controller sees every worker's reports
        Path(target).write_text(json.dumps({k: round(v, 1) for k, v in sorted(_SECONDS.items())}, indent=1) + "\n")


def make_scheduler(config: Any, log: Any) -> Any:
    """xdist's LoadFileScheduling with the e2e chains and the longest files first."""
    from xdist.scheduler import LoadFileScheduling

    durations = recorded_durations()

    def cost(scope: str) -> float:
        return float("inf") if scope.startswith("tests/e2e:") else durations.get(scope, 0.0)

    class Scheduler(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return e2e_chain(scope) or scope

        def _assign_work_unit(self, node: Any) -> None:
            if self.workqueue:  # xdist hands out the front of the queue: put the longest file still queued there
                longest = max(self.workqueue, key=cost)
                self.workqueue.move_to_end(longest, last=False)
            super()._assign_work_unit(node)

        def _reschedule(self, node: Any) -> None:
            # A worker on an e2e chain takes no other file until its chain is done (xdist would queue one behind
            # it, and that file would wait there while other workers sit idle).
            if any(scope.startswith("tests/e2e:") and not all(done.values())
                   for scope, done in self.assigned_work.get(node, {}).items()):
                return
            super()._reschedule(node)

    return Scheduler(config, log)
