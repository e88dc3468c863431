"""`make bench`: run the flow at several input sizes against Postgres, a moto S3 server and the local
OpenAI/geocoder servers, and write `bench/results/latest.json` plus a markdown table.

Each size runs in a fresh subprocess so peak RSS is that run's own. Sizes: BENCH_SIZES (default
"100,1000,10000").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testkit.geocoder_server import GeocoderTestServer
from testkit.openai_server import OpenAITestServer
from testkit.s3 import MotoS3

RESULTS = Path(__file__).resolve().parent / "results"
# Its own database: the test suite truncates harvest_test between tests.
DEFAULT_PG = "postgresql+psycopg://harvest:harvest@127.0.0.1:5432/harvest_bench"


def run_size(n: int, env: dict[str, str], workdir: Path) -> dict[str, object]:
    """One flow run over `n` activities in a child process (python -m bench.one)."""
    out = workdir / f"result-{n}.json"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bench.one", str(n), str(out)], env={**os.environ, **env}, check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    result = json.loads(out.read_text())
    result["process_wall_s"] = round(time.perf_counter() - started, 2)
    return result


def markdown(results: list[dict[str, object]]) -> str:
    keys = [
        "n", "activities", "wall_s", "peak_rss_mb", "bytes_between_tasks", "task_runs",
        "embedding_bytes_per_activity", "import_rows_per_s", "copy_rows_per_s",
    ]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for result in results:
        lines.append("| " + " | ".join(str(result.get(key, "")) for key in keys) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "100,1000,10000").split(",") if s.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="harvest-bench-"))
    for name, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(name, value)  # moto accepts any credentials; boto3 needs some
    s3 = MotoS3().start()
    try:
        with OpenAITestServer() as openai_server, GeocoderTestServer() as geocoder:
            results = []
            for n in sizes:
                bucket = s3.new_bucket()
                env = {
                    "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
                    "PREFECT_HOME": str(workdir / "prefect"),
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
                    "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                    "HARVEST_DATABASE_URL": os.environ.get("HARVEST_BENCH_DATABASE_URL", DEFAULT_PG),
                    "HARVEST_STORAGE_URL": f"s3://{bucket}/harvest", "HARVEST_S3_ENDPOINT_URL": s3.endpoint,
                    "OPENAI_API_KEY": "bench-key", "OPENAI_BASE_URL": openai_server.base_url,
                    "HARVEST_GEOCODER_URL": geocoder.base_url, "HARVEST_GEOCODER_RATE_PER_SECOND": "2000",
                    "HARVEST_BATCH_POLL_SECONDS": "0.5", "HARVEST_BATCH_POLL_MAX_SECONDS": "2",
                    "HARVEST_ALLOW_PRIVATE_NETWORKS": "true",
                }
                print(f"bench: N={n} ...", file=sys.stderr, flush=True)
                results.append(run_size(n, env, workdir))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        s3.stop()
    RESULTS.mkdir(exist_ok=True)
    document = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}
    (RESULTS / "latest.json").write_text(json.dumps(document, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
