"""Scenario 4 of issue 17: concurrent read-modify-writes of one run row, with real threads, on a real SQLite
file (the embedded default) and on Postgres. Every update must survive."""

from __future__ import annotations

import threading

from harvest.db import runs

THREADS = 12
CALLS = 20


DATABASES = ["sqlite", "postgres"]  # every test taking `engine` runs on both (tests/conftest.py)


def test_concurrent_record_step_and_warnings_keep_every_update(engine) -> None:  # noqa: ANN001
    runs.create_run(engine, "r1", "http://site/", {})
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            start.wait()
            for call in range(CALLS):
                runs.record_step(engine, "r1", f"images.{thread}-{call}", {"items_in": call})
                if call % 5 == 0:
                    runs.add_warnings(engine, "r1", [f"w{thread}-{call}"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    row = runs.get_run(engine, "r1")
    assert len(row["steps"]) == THREADS * CALLS, f"kept {len(row['steps'])} of {THREADS * CALLS} record_step calls"
    assert len(row["warnings"]) == THREADS * (CALLS // 5)
    # fold_steps in the middle of concurrent record_step calls loses neither the total nor a later step.
    runs.fold_steps(engine, "r1", "images.", "images", {"items_in": 1})
    assert runs.get_run(engine, "r1")["steps"] == {"images": {"items_in": 1}}
