"""A real S3 HTTP endpoint on loopback: moto's server mode in its own process (tests, bench)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from testkit.net import free_port, wait_for_port


class MotoS3:
    """A moto S3 server in its own process: real HTTP on loopback, stoppable to simulate an outage."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def kill(self) -> None:
        """An abrupt outage: SIGKILL, no graceful shutdown."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def client(self) -> Any:
        """One boto3 client for this server, built on first use: its endpoint never changes, boto3's clients are
        thread-safe, and building one costs ~18 CPU-ms (emptying the bucket before each test built two)."""
        if self._client is None:
            from harvest.storage import make_s3_client

            self._client = make_s3_client(self.endpoint)
        return self._client

    def new_bucket(self) -> str:
        name = f"harvest-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def emptied(self, bucket: str) -> str:
        """`bucket` with no objects (created when missing): what a new bucket gives a test, under the same name."""
        client = self.client()
        try:
            client.head_bucket(Bucket=bucket)
        except client.exceptions.ClientError:
            client.create_bucket(Bucket=bucket)
            return bucket
        keys = self.keys(bucket)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys[start:start + 1000]]})
        return bucket

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]
