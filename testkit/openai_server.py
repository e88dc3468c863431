"""A local OpenAI API speaking the real wire protocol: files, batches, embeddings and chat completions.

There is no network in tests, the demo or the benchmarks. harvest talks to OpenAI only through the official
``openai`` SDK, so the SDK is pointed at this server by ``base_url`` (``http://127.0.0.1:PORT/v1``) and runs
unmodified: same multipart uploads, same base64 embeddings, same retries on 429/5xx.

Endpoints (shapes as in the OpenAI API reference):

* ``POST /v1/files`` (multipart ``purpose``, ``file``), ``GET /v1/files``, ``GET /v1/files/{id}``,
  ``GET /v1/files/{id}/content`` (raw bytes), ``DELETE /v1/files/{id}``.
* ``GET /v1/batches`` newest first, paged by ``limit`` and ``after``.
* ``POST /v1/batches`` → status ``validating``; each ``GET /v1/batches/{id}`` advances it: ``in_progress``,
  then ``finalizing`` (``cancelling`` when the outcome is ``cancelled``) for the last ``finalizing_polls``
  polls, and on the ``polls_until_complete``-th poll the configured outcome: ``completed`` with a real
  Batch-API JSONL output file computed from the input file (error lines in the error file), ``failed``, or
  ``expired`` / ``cancelled`` *part-way*: the first ``completed_before_end`` lines (default half) are in the
  output file, the rest are ``batch_expired`` / ``batch_cancelled`` lines in the error file, as the real API
  does. ``POST /v1/batches/{id}/cancel`` → ``cancelling`` (for one more poll) → ``cancelled`` (same partial
  output).

As unkind as the real API by default, where that costs no test time: output and error lines come in shuffled
order (the API does not keep input order; match by ``custom_id``), the poll before the end says
``finalizing``, every ``/v1`` answer carries ``x-ratelimit-*`` headers, and chat answers rotate through
differently shaped but schema-valid JSON (:data:`VALID_CHAT_STYLES`).
* ``POST /v1/embeddings``: ``input`` str or list, ``encoding_format`` ``float`` or ``base64`` (little-endian
  float32, what the SDK asks for by default), optional ``dimensions``; usage tokens.
* ``POST /v1/chat/completions`` with ``response_format`` json_schema: a rule-based stand-in "model" (below).

Embeddings are deterministic: :func:`embedding_vector` seeds numpy's Generator from sha256(text), draws a
normal vector, L2-normalizes it and returns float32, so the same text always gives the same vector, through
either endpoint.

The stand-in chat model extracts activities from the text of the *user* messages by a labelled-text
convention (the demo site's unstructured pages use it). Each activity is a block of lines; a block starts at
an ``Activity:`` line, each field is one line, labels are case-insensitive, other lines are ignored::

    Activity: Anthony Beale Reserve playground
    Where: Anthony Beale Reserve, 277 St Helena Rd, St Helena VIC 3088, Australia
    When: 2025-03-01T10:00:00+11:00            (optionally "<start> to <end>")
    About: A bright, colourful playground with a flying fox.
    Tags: park, playground, family
    Image: https://example.org/beale.jpg

``Where:`` is "<place name>, <address>" (split at the first comma; the address is parsed into street, city,
state, postcode, country). The reply is ``{"activities": [...]}`` with, per activity, ``name``,
``description``, ``location`` {name, formattedAddress, street_address, city, state_province, postal_code,
country_code}, ``startDate``, ``endDate``, ``tags``, ``imageURL``; a missing field is null (``tags`` is []).

Auth: every ``/v1`` request needs ``Authorization: Bearer <non-empty>`` (or exactly ``api_key`` when the
server was given one); otherwise 401 in OpenAI's error shape.

Failure injection and counters, in-process (:meth:`OpenAITestServer.configure`, :meth:`fail_next`,
:meth:`stats`, :meth:`reset`) or over HTTP for an out-of-process server (``POST /_testkit/config`` with the
same JSON keys, ``GET /_testkit/stats``, ``POST /_testkit/reset``). Config keys:

* ``fail``: ``[{"path": "/v1/embeddings", "count": 2, "status": 429, "retry_after": 0.1}]`` — the next
  ``count`` requests under ``path`` (of ``method`` only, when a rule has one) answer ``status`` (429 always
  carries Retry-After, default 1 s);
* ``batch_outcome``: ``completed`` | ``failed`` | ``expired`` | ``cancelled``;
* ``error_ids``: custom_ids whose batch output line is an error (in the error file);
* ``wrong_dimension_ids``: custom_ids whose vector has half the requested dimensions;
* ``delay_s`` (and ``delay_path``, default ``/v1/``): sleep before answering;
* ``drip_s`` (same ``delay_path``): send the whole answer, headers included, one byte every ``drip_s``
  (no single read waits long: only a total deadline ends it);
* ``polls_until_complete``, ``dimensions``;
* ``finalizing_polls`` (default 1): how many polls before the end say ``finalizing``/``cancelling``;
* ``shuffle_output`` (default true): output and error file lines in a shuffled order;
* ``completed_before_end``: lines an ``expired``/``cancelled`` batch finished (default: half, rounded down);
* ``rate_limit_requests`` (and ``rate_limit_window_s``, default 60): after that many ``/v1`` requests in a
  window, answer 429 with ``Retry-After`` and ``x-ratelimit-remaining-requests: 0`` until the window ends;
* ``max_batch_requests`` (default 50,000) and ``max_batch_file_bytes`` (default 200,000,000): the API's
  per-batch limits. An input file over the byte limit is refused by ``POST /v1/files`` (400
  ``invalid_request_error`` "File is too large.", as the API answers); a batch over the request limit is created
  and then fails validation (``failed``, one ``errors.data`` entry ``too_many_requests``, no output), as the API
  fails an input file it cannot run (the exact error code of the API for this case is not documented; this one
  is the stand-in's). Counted as ``rejected.file_too_large`` / ``rejected.too_many_requests``;
* ``chat_answers``: a queue of answer shapes for the next chat calls, each a :data:`VALID_CHAT_STYLES` or
  :data:`INVALID_CHAT_ANSWERS` name; when it is empty, calls rotate through the valid styles.

CLI: ``python -m testkit.openai_server --port P [--dimensions D]`` prints the base URL, runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import re
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from testkit.geocoder_server import parse_address
from testkit.loopback import LoopbackHandler, LoopbackServer

BATCH_OUTCOMES = ("completed", "failed", "expired", "cancelled")
# Schema-valid answers a real model gives in different shapes: the lenient validation must read them all alike.
VALID_CHAT_STYLES = ("compact", "pretty", "reordered", "padded", "blank_strings", "null_tags",
                     "lowercase_country", "escaped_unicode")
# Answers a real API can give that are not usable: each must become one clear ExtractionError.
INVALID_CHAT_ANSWERS = ("invalid_json", "no_activities", "activities_not_list", "nameless_item", "truncated",
                        "refusal", "empty")
# OpenAI's per-batch limits: at most 50,000 requests (for /v1/embeddings also 50,000 inputs) and an input file of
# at most 200 MB (taken as 200,000,000 bytes, the stricter reading). Tests lower them (`max_batch_requests`,
# `max_batch_file_bytes`) to see a split without writing 50,000 lines.
MAX_BATCH_REQUESTS = 50_000
MAX_BATCH_FILE_BYTES = 200_000_000
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
LABELS = ("activity", "where", "when", "about", "tags", "image")


def embedding_vector(text: str, dimensions: int) -> np.ndarray:
    """The deterministic unit vector (float32) this server returns for `text`."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest(), "big")
    vector = np.random.default_rng(seed).standard_normal(dimensions)
    vector /= np.linalg.norm(vector)
    return vector.astype(np.float32)


def count_tokens(text: str) -> int:
    """A rough token count (words and punctuation), enough for plausible usage numbers."""
    return max(1, len(re.findall(r"\w+|[^\w\s]", text)))


def _split_when(value: str) -> tuple[str | None, str | None]:
    parts = re.split(r"\s+(?:to|until|–|—)\s+|\s+/\s+", value.strip(), maxsplit=1)
    start = parts[0].strip() or None
    end = parts[1].strip() if len(parts) > 1 and parts[1].strip() else None
    return start, end


def _activity_from_fields(fields: dict[str, str]) -> dict[str, Any]:
    location: dict[str, Any] | None = None
    if fields.get("where"):
        where = fields["where"]
        name, _, address = (part.strip() for part in where.partition(","))
        parsed = parse_address(address) if address else {}
        location = {
            "name": name or None,
            "formattedAddress": address or None,
            "street_address": parsed.get("street_address"),
            "city": parsed.get("city"),
            "state_province": parsed.get("state_province"),
            "postal_code": parsed.get("postal_code"),
            "country_code": parsed.get("country_code"),
        }
    start, end = _split_when(fields["when"]) if fields.get("when") else (None, None)
    tags = [t.strip() for t in fields.get("tags", "").split(",") if t.strip()]
    return {
        "name": fields["activity"],
        "description": fields.get("about") or None,
        "location": location,
        "startDate": start,
        "endDate": end,
        "tags": tags,
        "imageURL": fields.get("image") or None,
    }


def extract_labelled_activities(text: str) -> list[dict[str, Any]]:
    """The stand-in model: activities from `Activity:`/`Where:`/`When:`/`About:`/`Tags:`/`Image:` blocks."""
    activities: list[dict[str, Any]] = []
    current: dict[str, str] | None = None
    label_re = re.compile(r"^\s*(?:[-*•]\s*)?(" + "|".join(LABELS) + r")\s*:\s*(.*?)\s*$", re.IGNORECASE)
    for line in text.splitlines():
        match = label_re.match(line)
        if not match:
            continue
        label, value = match[1].casefold(), match[2]
        if label == "activity":
            if current and current.get("activity"):
                activities.append(_activity_from_fields(current))
            current = {"activity": value}
        elif current is not None and value:
            current.setdefault(label, value)
    if current and current.get("activity"):
        activities.append(_activity_from_fields(current))
    return activities


def _openai_error(message: str, type_: str = "invalid_request_error", param: str | None = None,
                  code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name → (filename, bytes) for a multipart/form-data body."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise ValueError("multipart body without a boundary")
    delimiter = b"--" + match[1].encode("latin-1")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        if content.endswith(b"\r\n"):
            content = content[:-2]
        disposition = next((h for h in head.decode("utf-8", "replace").split("\r\n")
                            if h.lower().startswith("content-disposition")), "")
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        if name:
            fields[name[1]] = (filename[1] if filename else None, content)
    return fields


@dataclass
class FailureRule:
    """Answer the next `count` requests under `path` (and of `method`, when given) with `status` (429 carries
    Retry-After)."""

    path: str = "/v1/"
    count: int = 1
    status: int = 500
    retry_after: float | None = None
    method: str | None = None

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"failure status must be 4xx/5xx, got {self.status}")
        if self.count < 0:
            raise ValueError("count must be >= 0")


class _DripWriter:
    """Writes through to the socket one byte at a time, `every_s` apart (a trickling server or proxy)."""

    def __init__(self, inner: Any, every_s: float, stopping: threading.Event) -> None:
        self._inner = inner
        self._every_s = every_s
        self._stopping = stopping

    def write(self, data: bytes) -> int:
        for index in range(len(data)):
            if self._stopping.is_set():
                break
            self._inner.write(data[index : index + 1])
            self._inner.flush()
            self._stopping.wait(self._every_s)
        return len(data)

    def flush(self) -> None:
        self._inner.flush()

    def __getattr__(self, name: str) -> Any:  # closed, close, ...: the socket file's own
        return getattr(self._inner, name)


@dataclass
class _Config:
    failures: list[FailureRule] = field(default_factory=list)
    batch_outcome: str = "completed"
    error_ids: set[str] = field(default_factory=set)
    wrong_dimension_ids: set[str] = field(default_factory=set)
    delay_s: float = 0.0
    delay_path: str = "/v1/"
    drip_s: float = 0.0
    polls_until_complete: int = 2
    dimensions: int = 1536
    finalizing_polls: int = 1
    shuffle_output: bool = True
    completed_before_end: int | None = None
    rate_limit_requests: int | None = None
    rate_limit_window_s: float = 60.0
    chat_answers: list[str] = field(default_factory=list)
    max_batch_requests: int = MAX_BATCH_REQUESTS
    max_batch_file_bytes: int = MAX_BATCH_FILE_BYTES


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": None, "status_details": None}


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    status: str = "validating"
    polls: int = 0
    cancel_poll: int = 0
    cancel_requested: bool = False
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    times: dict[str, int | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        t = self.times
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": self.created_at, "in_progress_at": t.get("in_progress_at"),
            "expires_at": self.created_at + 24 * 3600, "finalizing_at": t.get("finalizing_at"),
            "completed_at": t.get("completed_at"), "failed_at": t.get("failed_at"),
            "expired_at": t.get("expired_at"), "cancelling_at": t.get("cancelling_at"),
            "cancelled_at": t.get("cancelled_at"), "request_counts": dict(self.counts),
            "metadata": self.metadata,
        }


class OpenAITestServer(LoopbackServer):
    """Threaded OpenAI-compatible server; ``base_url`` ends in ``/v1`` like the SDK expects."""

    thread_name = "openai-test-server"

    def __init__(self, port: int = 0, dimensions: int = 1536, *, polls_until_complete: int = 2,
                 api_key: str | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(port, host)
        self._api_key = api_key
        self._default_dimensions = dimensions
        self._default_polls_until_complete = polls_until_complete
        self._lock = threading.RLock()
        self._config = self._fresh_config()
        self._stats: Counter[str] = Counter()
        self._files: dict[str, _File] = {}
        self._batches: dict[str, _Batch] = {}
        self._window_start, self._window_count = time.monotonic(), 0
        self._chat_calls = 0
        self._arrivals: list[tuple[float, str, str]] = []

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}/v1"

    @property
    def dimensions(self) -> int:
        return self._config.dimensions

    def _fresh_config(self) -> _Config:
        """The constructor's dimensions and poll count, every other knob at its default: what `reset` returns to."""
        return _Config(dimensions=self._default_dimensions, polls_until_complete=self._default_polls_until_complete)

    # -- control ---------------------------------------------------------------------------------------
    def configure(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Apply config keys (module docstring); the same JSON ``POST /_testkit/config`` takes."""
        settings = {**(config or {}), **kwargs}
        known = {"fail", "batch_outcome", "error_ids", "wrong_dimension_ids", "delay_s", "delay_path", "drip_s",
                 "polls_until_complete", "dimensions", "finalizing_polls", "shuffle_output", "completed_before_end",
                 "rate_limit_requests", "rate_limit_window_s", "chat_answers", "max_batch_requests",
                 "max_batch_file_bytes"}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        if "batch_outcome" in settings and settings["batch_outcome"] not in BATCH_OUTCOMES:
            raise ValueError(f"batch_outcome must be one of {BATCH_OUTCOMES}, got {settings['batch_outcome']!r}")
        answers = list(settings.get("chat_answers", []))
        bad = [a for a in answers if a not in VALID_CHAT_STYLES + INVALID_CHAT_ANSWERS]
        if bad:
            raise ValueError(f"unknown chat answers {bad}: use {VALID_CHAT_STYLES + INVALID_CHAT_ANSWERS}")
        fail = settings.get("fail", [])
        rules = [FailureRule(**rule) for rule in ([fail] if isinstance(fail, dict) else fail)]
        with self._lock:
            c = self._config
            c.failures.extend(rules)
            if "batch_outcome" in settings:
                c.batch_outcome = settings["batch_outcome"]
            if "error_ids" in settings:
                c.error_ids = set(settings["error_ids"])
            if "wrong_dimension_ids" in settings:
                c.wrong_dimension_ids = set(settings["wrong_dimension_ids"])
            if "delay_s" in settings:
                c.delay_s = float(settings["delay_s"])
            if "delay_path" in settings:
                c.delay_path = str(settings["delay_path"])
            if "drip_s" in settings:
                c.drip_s = float(settings["drip_s"])
            if "polls_until_complete" in settings:
                c.polls_until_complete = int(settings["polls_until_complete"])
            if "dimensions" in settings:
                c.dimensions = int(settings["dimensions"])
            if "finalizing_polls" in settings:
                c.finalizing_polls = max(0, int(settings["finalizing_polls"]))
            if "shuffle_output" in settings:
                c.shuffle_output = bool(settings["shuffle_output"])
            if "completed_before_end" in settings:
                value = settings["completed_before_end"]
                c.completed_before_end = None if value is None else max(0, int(value))
            if "rate_limit_requests" in settings:
                value = settings["rate_limit_requests"]
                c.rate_limit_requests = None if value is None else max(1, int(value))
                self._window_start, self._window_count = time.monotonic(), 0
            if "rate_limit_window_s" in settings:
                c.rate_limit_window_s = float(settings["rate_limit_window_s"])
            c.chat_answers.extend(answers)
            if "max_batch_requests" in settings:
                c.max_batch_requests = max(1, int(settings["max_batch_requests"]))
            if "max_batch_file_bytes" in settings:
                c.max_batch_file_bytes = max(1, int(settings["max_batch_file_bytes"]))

    def fail_next(self, path: str = "/v1/", count: int = 1, *, status: int = 500,
                  retry_after: float | None = None) -> None:
        """Answer the next `count` requests under `path` with `status` (e.g. 429 → SDK retries)."""
        self.configure(fail=[{"path": path, "count": count, "status": status, "retry_after": retry_after}])

    def reset(self) -> None:
        """Back to a fresh server: default config, zero counters, no files or batches."""
        with self._lock:
            self._config = self._fresh_config()
            self._stats.clear()
            self._files.clear()
            self._batches.clear()
            self._window_start, self._window_count = time.monotonic(), 0
            self._chat_calls = 0
            self._arrivals.clear()

    def stats(self) -> dict[str, int]:
        """Counters: requests per endpoint (``embeddings``, ``files.create``, ``batches.retrieve``…),
        ``embeddings.inputs`` (texts embedded synchronously), ``batches.lines``, ``unauthorized``,
        ``injected.<status>``, and the ``usage`` the answers reported: ``usage.chat_prompt_tokens``,
        ``usage.chat_completion_tokens``, ``usage.embedding_tokens`` (sync), ``usage.batch_tokens`` (batch lines)."""
        with self._lock:
            return dict(self._stats)

    def arrivals(self) -> list[tuple[float, str, str]]:
        """(time.monotonic() on arrival, method, path) of every /v1 request, in order: tests check ordering
        against this process's clock (the server runs in the test's process)."""
        with self._lock:
            return list(self._arrivals)

    def file_content(self, file_id: str) -> bytes:
        """The stored bytes of a file (tests inspect what the client uploaded)."""
        with self._lock:
            return self._files[file_id].data

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _take_failure(self, method: str, path: str) -> FailureRule | None:
        with self._lock:
            for rule in self._config.failures:
                if rule.count > 0 and path.startswith(rule.path) and rule.method in (None, method):
                    rule.count -= 1
                    self._stats[f"injected.{rule.status}"] += 1
                    return rule
            self._config.failures = [r for r in self._config.failures if r.count > 0]
        return None

    # -- dispatch --------------------------------------------------------------------------------------
    _ROUTES: list[tuple[str, re.Pattern[str], str]] = [
        ("POST", re.compile(r"^/v1/files$"), "files.create"),
        ("GET", re.compile(r"^/v1/files$"), "files.list"),
        ("GET", re.compile(r"^/v1/files/(?P<id>[^/]+)$"), "files.retrieve"),
        ("DELETE", re.compile(r"^/v1/files/(?P<id>[^/]+)$"), "files.delete"),
        ("GET", re.compile(r"^/v1/files/(?P<id>[^/]+)/content$"), "files.content"),
        ("POST", re.compile(r"^/v1/batches$"), "batches.create"),
        ("GET", re.compile(r"^/v1/batches$"), "batches.list"),
        ("GET", re.compile(r"^/v1/batches/(?P<id>[^/]+)$"), "batches.retrieve"),
        ("POST", re.compile(r"^/v1/batches/(?P<id>[^/]+)/cancel$"), "batches.cancel"),
        ("POST", re.compile(r"^/v1/embeddings$"), "embeddings"),
        ("POST", re.compile(r"^/v1/chat/completions$"), "chat.completions"),
    ]

    def handle(self, req: _Handler, method: str) -> None:
        path = urlsplit(req.path).path
        body = req.read_body()
        if path.startswith("/_testkit/"):
            self._handle_control(req, method, path, body)
            return
        self._count("requests")
        with self._lock:
            self._arrivals.append((time.monotonic(), method, path))
            delay = self._config.delay_s if path.startswith(self._config.delay_path) else 0.0
            drip = self._config.drip_s if path.startswith(self._config.delay_path) else 0.0
        if delay:
            self._stopping.wait(delay)
        if drip:
            self._count("dripped")
            req.wfile = _DripWriter(req.wfile, drip, self._stopping)  # type: ignore[assignment]
        route = next(((name, m) for verb, pattern, name in self._ROUTES
                      if verb == method and (m := pattern.match(path))), None)
        if route is None:
            req.send_json(404, _openai_error(f"Invalid URL ({method} {path})"))
            return
        name, match = route
        self._count(name)
        auth = req.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.startswith("Bearer ") else ""
        if not token or (self._api_key is not None and token != self._api_key):
            self._count("unauthorized")
            message = ("You didn't provide an API key. You need to provide your API key in an Authorization "
                       "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)." if not token
                       else "Incorrect API key provided.")
            req.send_json(401, _openai_error(message, code=None if not token else "invalid_api_key"))
            return
        limits, wait_s = self._rate_limit()
        if wait_s is not None:
            self._count("rate_limited")
            req.send_json(429, _openai_error("Rate limit reached for requests (testkit rate_limit_requests).",
                                             "requests", code="rate_limit_exceeded"),
                          {**limits, "Retry-After": f"{wait_s:.3f}", "retry-after-ms": str(int(wait_s * 1000))})
            return
        rule = self._take_failure(method, path)
        if rule is not None:
            headers: dict[str, str] = dict(limits)
            if rule.status == 429:
                headers["Retry-After"] = f"{1.0 if rule.retry_after is None else rule.retry_after:g}"
                error = _openai_error("Rate limit reached for requests (testkit injected).", "requests",
                                      code="rate_limit_exceeded")
            else:
                if rule.retry_after is not None:
                    headers["Retry-After"] = f"{rule.retry_after:g}"
                error = _openai_error("The server had an error while processing your request (testkit injected).",
                                      "server_error")
            req.send_json(rule.status, error, headers)
            return
        try:
            handler = getattr(self, "_" + name.replace(".", "_"))
            status, payload, *rest = handler(req, body, **match.groupdict())
        except _ApiError as exc:
            req.send_json(exc.status, _openai_error(exc.message, param=exc.param, code=exc.code), limits)
            return
        if isinstance(payload, bytes):
            req.send_bytes(status, payload, rest[0] if rest else "application/octet-stream", limits)
        else:
            req.send_json(status, payload, limits)

    def _rate_limit(self) -> tuple[dict[str, str], float | None]:
        """The ``x-ratelimit-*`` headers every answer carries, and the seconds to wait when over the limit.

        One fixed window of ``rate_limit_window_s``; without ``rate_limit_requests`` the headers show a limit
        of 10,000 that is never enforced (what a client sees from the real API on a quiet account)."""
        with self._lock:
            c = self._config
            now = time.monotonic()
            if now - self._window_start >= c.rate_limit_window_s:
                self._window_start, self._window_count = now, 0
            self._window_count += 1
            limit = c.rate_limit_requests or 10_000
            reset_s = max(0.001, c.rate_limit_window_s - (now - self._window_start))
            headers = {
                "x-ratelimit-limit-requests": str(limit),
                "x-ratelimit-remaining-requests": str(max(0, limit - self._window_count)),
                "x-ratelimit-reset-requests": f"{reset_s:.3f}s",
                "x-ratelimit-limit-tokens": "5000000",
                "x-ratelimit-remaining-tokens": "5000000",
                "x-ratelimit-reset-tokens": "0s",
            }
            over = c.rate_limit_requests is not None and self._window_count > c.rate_limit_requests
            return headers, (reset_s if over else None)

    # -- files -----------------------------------------------------------------------------------------
    def _get_file(self, file_id: str) -> _File:
        with self._lock:
            stored = self._files.get(file_id)
        if stored is None:
            raise _ApiError(404, f"No such File object: {file_id}", param="id")
        return stored

    def _store_file(self, filename: str, purpose: str, data: bytes) -> _File:
        stored = _File(id=_new_id("file-"), filename=filename, purpose=purpose, data=data,
                       created_at=int(time.time()))
        with self._lock:
            self._files[stored.id] = stored
        return stored

    def _files_create(self, req: _Handler, body: bytes) -> tuple[int, Any]:
        content_type = req.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            raise _ApiError(400, "Expected multipart/form-data with 'file' and 'purpose'.")
        try:
            form = _parse_multipart(content_type, body)
        except ValueError as exc:
            raise _ApiError(400, str(exc)) from exc
        if "file" not in form:
            raise _ApiError(400, "Missing required parameter: 'file'.", param="file")
        purpose = form.get("purpose", (None, b""))[1].decode()
        if purpose not in FILE_PURPOSES:
            raise _ApiError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
        filename, data = form["file"]
        if purpose == "batch" and not (filename or "").endswith(".jsonl"):
            raise _ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
        if purpose == "batch" and len(data) > self._config.max_batch_file_bytes:
            self._count("rejected.file_too_large")
            raise _ApiError(400, "File is too large.")  # the API's answer: invalid_request_error, no code
        return 200, self._store_file(filename or "upload", purpose, data).to_json()

    def _files_list(self, req: _Handler, body: bytes) -> tuple[int, Any]:
        with self._lock:
            data = [f.to_json() for f in self._files.values()]
        return 200, {"object": "list", "data": data, "has_more": False,
                     "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    def _files_retrieve(self, req: _Handler, body: bytes, id: str) -> tuple[int, Any]:  # noqa: A002
        return 200, self._get_file(id).to_json()

    def _files_content(self, req: _Handler, body: bytes, id: str) -> tuple[int, Any, str]:  # noqa: A002
        return 200, self._get_file(id).data, "application/octet-stream"

    def _files_delete(self, req: _Handler, body: bytes, id: str) -> tuple[int, Any]:  # noqa: A002
        self._get_file(id)
        with self._lock:
            self._files.pop(id, None)
        return 200, {"id": id, "object": "file", "deleted": True}

    # -- batches ---------------------------------------------------------------------------------------
    def _batches_create(self, req: _Handler, body: bytes) -> tuple[int, Any]:
        params = _json_body(body)
        endpoint = params.get("endpoint")
        if endpoint != "/v1/embeddings":
            raise _ApiError(400, f"Invalid endpoint {endpoint!r}: the testkit server batches /v1/embeddings only.",
                            param="endpoint")
        if params.get("completion_window") != "24h":
            raise _ApiError(400, "Invalid completion_window: only '24h' is supported.", param="completion_window")
        metadata = params.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16
                                     or not all(isinstance(v, str) for v in metadata.values())):
            raise _ApiError(400, "metadata must be at most 16 string key/value pairs.", param="metadata")
        input_file = self._get_file(str(params.get("input_file_id")))
        if input_file.purpose != "batch":
            raise _ApiError(400, f"File {input_file.id} has purpose {input_file.purpose!r}, not 'batch'.",
                            param="input_file_id")
        batch = _Batch(id=_new_id("batch_"), input_file_id=input_file.id, endpoint=endpoint,
                       completion_window="24h", metadata=metadata, created_at=int(time.time()))
        with self._lock:
            self._batches[batch.id] = batch
        return 200, batch.to_json()

    def _get_batch(self, batch_id: str) -> _Batch:
        with self._lock:
            batch = self._batches.get(batch_id)
        if batch is None:
            raise _ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return batch

    def _batches_list(self, req: _Handler, body: bytes) -> tuple[int, Any]:
        """Newest first, a page of `limit` (1-100, default 20) after the cursor `after` (a batch id), as the API."""
        query = parse_qs(urlsplit(req.path).query)
        try:
            limit = int(query.get("limit", ["20"])[0])
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise _ApiError(400, "limit must be between 1 and 100", param="limit")
        with self._lock:
            newest_first = list(reversed(self._batches.values()))  # created in insertion order
        after = query.get("after", [None])[0]
        if after is not None:
            ids = [batch.id for batch in newest_first]
            if after not in ids:
                raise _ApiError(404, f"No batch found with id '{after}'.", param="after")
            newest_first = newest_first[ids.index(after) + 1:]
        data = [batch.to_json() for batch in newest_first[:limit]]
        return 200, {"object": "list", "data": data, "has_more": len(newest_first) > limit,
                     "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    def _batches_retrieve(self, req: _Handler, body: bytes, id: str) -> tuple[int, Any]:  # noqa: A002
        batch = self._get_batch(id)
        with self._lock:
            now = int(time.time())
            c = self._config
            if batch.cancel_requested and batch.status == "cancelling":
                batch.polls += 1
                if batch.polls > batch.cancel_poll:  # cancelling is seen by one poll, then it is cancelled
                    self._finalize(batch, "cancelled")
            elif batch.status in ("validating", "in_progress", "finalizing", "cancelling"):
                batch.polls += 1
                if batch.polls >= c.polls_until_complete:
                    self._finalize(batch, c.batch_outcome)
                elif batch.polls >= c.polls_until_complete - c.finalizing_polls:
                    # The last polls before the end: finalizing (or cancelling) costs no extra poll.
                    batch.times.setdefault("in_progress_at", now)
                    batch.counts["total"] = sum(1 for raw in self._files[batch.input_file_id].data.splitlines()
                                                if raw.strip())
                    if c.batch_outcome == "cancelled":
                        batch.status = "cancelling"
                        batch.times.setdefault("cancelling_at", now)
                    else:
                        batch.status = "finalizing"
                        batch.times.setdefault("finalizing_at", now)
                else:
                    batch.status = "in_progress"
                    batch.times.setdefault("in_progress_at", now)
                    batch.counts["total"] = sum(1 for raw in self._files[batch.input_file_id].data.splitlines()
                                                if raw.strip())
            return 200, batch.to_json()

    def _batches_cancel(self, req: _Handler, body: bytes, id: str) -> tuple[int, Any]:  # noqa: A002
        batch = self._get_batch(id)
        with self._lock:
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                raise _ApiError(400, f"Cannot cancel a batch with status '{batch.status}'.")
            if not batch.cancel_requested:
                batch.cancel_requested = True
                batch.status = "cancelling"
                batch.cancel_poll = batch.polls + 1
                batch.times["cancelling_at"] = int(time.time())
            return 200, batch.to_json()

    def _finalize(self, batch: _Batch, outcome: str) -> None:
        """Turn a running batch into its terminal state; called with the lock held."""
        now = int(time.time())
        batch.times.setdefault("in_progress_at", now)
        lines, problems = self._validate_input(self._files[batch.input_file_id].data, batch.endpoint)
        batch.counts = {"total": len(lines), "completed": 0, "failed": 0}
        if not problems and len(lines) > self._config.max_batch_requests:
            self._stats["rejected.too_many_requests"] += 1
            problems = [{"code": "too_many_requests", "line": None, "param": None,
                         "message": f"The batch input file has {len(lines)} requests, over the limit of "
                                    f"{self._config.max_batch_requests} requests per batch."}]
        if problems:
            batch.status, batch.errors, batch.times["failed_at"] = "failed", problems, now
            batch.counts["total"] = 0
            return
        if outcome == "failed":
            batch.status, batch.times["failed_at"] = "failed", now
            batch.errors = [{"code": "testkit_injected_failure", "message": "The batch failed (testkit injected).",
                             "param": None, "line": None}]
            return
        outputs: list[bytes] = []
        errors: list[bytes] = []
        # An expired or cancelled batch ends part-way: the lines it finished are in the output file.
        finished = len(lines)
        if outcome in ("expired", "cancelled"):
            wanted = self._config.completed_before_end
            finished = min(len(lines), len(lines) // 2 if wanted is None else wanted)
        for number, request in enumerate(lines):
            if number >= finished:
                message = ("This request could not be executed before the completion window expired."
                           if outcome == "expired" else "This request was not executed: the batch was cancelled.")
                record = {"id": _new_id("batch_req_"), "custom_id": request["custom_id"], "response": None,
                          "error": {"code": f"batch_{outcome}", "message": message}}
                errors.append(json.dumps(record).encode())
                continue
            status, response_body = self._batch_embedding(request)
            self._stats["batches.lines"] += 1
            if status == 200:  # what the line's answer says it used: the run ledger must read the same
                self._stats["usage.batch_tokens"] += response_body["usage"]["prompt_tokens"]
            record = {"id": _new_id("batch_req_"), "custom_id": request["custom_id"],
                      "response": {"status_code": status, "request_id": _new_id("req_"), "body": response_body},
                      "error": None}
            (outputs if status == 200 else errors).append(json.dumps(record).encode())
        batch.counts["completed"], batch.counts["failed"] = len(outputs), len(errors)
        if self._config.shuffle_output:  # the real API does not promise input order
            shuffler = random.Random(batch.id)
            shuffler.shuffle(outputs)
            shuffler.shuffle(errors)
        if outputs:
            batch.output_file_id = self._store_output(batch, "output", outputs).id
        if errors:
            batch.error_file_id = self._store_output(batch, "error", errors).id
        if outcome == "expired":
            batch.status, batch.times["expired_at"] = "expired", now
        elif outcome == "cancelled":
            batch.status = "cancelled"
            batch.times.setdefault("cancelling_at", now)
            batch.times["cancelled_at"] = now
        else:
            batch.times.setdefault("finalizing_at", now)
            batch.status, batch.times["completed_at"] = "completed", now

    def _store_output(self, batch: _Batch, kind: str, lines: list[bytes]) -> _File:
        return self._store_file(f"batch_{batch.id}_{kind}.jsonl", "batch_output", b"\n".join(lines) + b"\n")

    @staticmethod
    def _validate_input(data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        lines: list[dict[str, Any]] = []
        problems: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number, raw in enumerate(data.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                request = json.loads(raw)
            except json.JSONDecodeError:
                problems.append({"code": "invalid_json_line", "line": number, "param": None,
                                 "message": "This line is not parseable as valid JSON."})
                continue
            if not isinstance(request, dict) or not isinstance(request.get("custom_id"), str):
                problems.append({"code": "missing_required_parameter", "line": number, "param": "custom_id",
                                 "message": "Missing required parameter: 'custom_id'."})
                continue
            if request.get("url") != endpoint or request.get("method") != "POST":
                problems.append({"code": "mismatched_endpoint", "line": number, "param": "url",
                                 "message": f"The url must be {endpoint!r} with method POST."})
                continue
            if request["custom_id"] in seen:
                problems.append({"code": "duplicate_custom_id", "line": number, "param": "custom_id",
                                 "message": f"The custom_id {request['custom_id']!r} is duplicated."})
                continue
            seen.add(request["custom_id"])
            lines.append(request)
        if not lines and not problems:
            problems.append({"code": "empty_file", "line": None, "param": None, "message": "The input file is empty."})
        return lines, problems

    def _batch_embedding(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        custom_id = request["custom_id"]
        if custom_id in self._config.error_ids:
            return 500, _openai_error("The server had an error processing this request (testkit injected).",
                                      "server_error")
        try:
            return 200, self._embedding_response(request.get("body") or {}, short=custom_id in
                                                 self._config.wrong_dimension_ids)
        except _ApiError as exc:
            return exc.status, _openai_error(exc.message, param=exc.param, code=exc.code)

    # -- embeddings ------------------------------------------------------------------------------------
    def _embedding_response(self, params: dict[str, Any], *, short: bool = False,
                            default_format: str = "float") -> dict[str, Any]:
        model = params.get("model")
        if not isinstance(model, str) or not model:
            raise _ApiError(400, "Missing required parameter: 'model'.", param="model")
        inputs = params.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or len(inputs) > 2048:
            raise _ApiError(400, "'input' must be a non-empty string or a list of at most 2048 strings.",
                            param="input")
        if not all(isinstance(text, str) and text for text in inputs):
            raise _ApiError(400, "'$.input' is invalid: every input must be a non-empty string.", param="input")
        dimensions = params.get("dimensions", self._config.dimensions)
        if not isinstance(dimensions, int) or dimensions < 1:
            raise _ApiError(400, "'dimensions' must be a positive integer.", param="dimensions")
        encoding = params.get("encoding_format", default_format)
        if encoding not in ("float", "base64"):
            raise _ApiError(400, f"Invalid 'encoding_format': {encoding!r}.", param="encoding_format")
        size = (dimensions // 2 if dimensions > 1 else 2) if short else dimensions
        data = []
        for index, text in enumerate(inputs):
            vector = embedding_vector(text, size)
            payload: Any = (base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                            if encoding == "base64" else vector.tolist())
            data.append({"object": "embedding", "index": index, "embedding": payload})
        tokens = sum(count_tokens(text) for text in inputs)
        return {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def _embeddings(self, req: _Handler, body: bytes) -> tuple[int, Any]:
        params = _json_body(body)
        response = self._embedding_response(params)
        self._count("embeddings.inputs", len(response["data"]))
        self._count("usage.embedding_tokens", response["usage"]["prompt_tokens"])
        return 200, response

    # -- chat ------------------------------------------------------------------------------------------
    def _chat_completions(self, req: _Handler, body: bytes) -> tuple[int, Any]:
        params = _json_body(body)
        model = params.get("model")
        if not isinstance(model, str) or not model:
            raise _ApiError(400, "Missing required parameter: 'model'.", param="model")
        if params.get("stream"):
            raise _ApiError(400, "The testkit server does not stream chat completions.", param="stream")
        messages = params.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _ApiError(400, "Missing required parameter: 'messages'.", param="messages")
        response_format = params.get("response_format") or {"type": "text"}
        if response_format.get("type") == "json_schema":
            schema = response_format.get("json_schema") or {}
            if not schema.get("name") or not isinstance(schema.get("schema"), dict):
                raise _ApiError(400, "response_format.json_schema needs 'name' and 'schema'.",
                                param="response_format")
        user_text = "\n".join(_message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user")
        all_text = "\n".join(_message_text(m) for m in messages if isinstance(m, dict))
        with self._lock:
            c = self._config
            shape = c.chat_answers.pop(0) if c.chat_answers else VALID_CHAT_STYLES[self._chat_calls % len(
                VALID_CHAT_STYLES)]
            self._chat_calls += 1
        self._count(f"chat.{shape}")
        content, finish_reason, refusal = chat_answer(extract_labelled_activities(user_text), shape)
        prompt_tokens, completion_tokens = count_tokens(all_text), count_tokens(content or refusal or "")
        self._count("usage.chat_prompt_tokens", prompt_tokens)
        self._count("usage.chat_completion_tokens", completion_tokens)
        return 200, {
            "id": _new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "finish_reason": finish_reason, "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": refusal,
                                     "annotations": []}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "system_fingerprint": "fp_testkit",
        }


def _restyle(value: Any, style: str) -> Any:
    """The same answer in another schema-valid shape (see VALID_CHAT_STYLES)."""
    if isinstance(value, dict):
        # blank_strings: a missing *string* field as "" (location and tags keep their null)
        items = [(key, "" if item is None and style == "blank_strings" and key not in ("location", "tags")
                  else _restyle(item, style)) for key, item in value.items()]
        if style == "reordered":
            items.reverse()
        out = dict(items)
        if style == "null_tags" and out.get("tags") == []:
            out["tags"] = None
        if style == "lowercase_country" and isinstance(out.get("country_code"), str):
            out["country_code"] = out["country_code"].lower()
        return out
    if isinstance(value, list):
        return [_restyle(item, style) for item in value]
    if isinstance(value, str) and style == "padded":
        return f"  {value}\n "
    return value


def chat_answer(activities: list[dict[str, Any]], shape: str) -> tuple[str | None, str, str | None]:
    """(content, finish_reason, refusal) of a chat answer listing `activities` in the given shape.

    Valid shapes carry the same activities (every schema field present, as strict structured outputs
    guarantee) written differently; invalid ones are what a real API can still return."""
    if shape in VALID_CHAT_STYLES:
        answer = {"activities": [_restyle(a, shape) for a in activities]}
        if shape == "pretty":
            return json.dumps(answer, indent=2, ensure_ascii=False), "stop", None
        return json.dumps(answer, ensure_ascii=shape == "escaped_unicode"), "stop", None
    full = json.dumps({"activities": activities}, ensure_ascii=False)
    if shape == "invalid_json":
        return full[: max(1, len(full) // 2)], "stop", None
    if shape == "truncated":  # cut at max_tokens: the content stops mid-string
        return full[: max(1, len(full) // 2)], "length", None
    if shape == "no_activities":
        return json.dumps({"results": activities}), "stop", None
    if shape == "activities_not_list":
        return json.dumps({"activities": activities[0] if activities else {}}), "stop", None
    if shape == "nameless_item":
        nameless = {**(activities[0] if activities else {}), "name": None}
        return json.dumps({"activities": [nameless, *activities]}), "stop", None
    if shape == "refusal":
        return None, "stop", "I'm sorry, I can't help with that request."
    if shape == "empty":
        return "", "stop", None
    raise ValueError(f"unknown chat answer shape {shape!r}")


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        params = json.loads(body or b"{}")
    except json.JSONDecodeError as exc:
        raise _ApiError(400, f"We could not parse the JSON body of your request: {exc}") from exc
    if not isinstance(params, dict):
        raise _ApiError(400, "The request body must be a JSON object.")
    return params


class _ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class _Handler(LoopbackHandler):
    app: OpenAITestServer

    def do_DELETE(self) -> None:  # noqa: N802 (http.server naming): files.delete
        self.app.handle(self, "DELETE")


OpenAITestServer.handler_class = _Handler  # bound here: the handler is defined after the server class


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the testkit OpenAI-compatible server.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--dimensions", type=int, default=1536)
    parser.add_argument("--polls-until-complete", type=int, default=2)
    args = parser.parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    server = OpenAITestServer(args.port, args.dimensions, polls_until_complete=args.polls_until_complete,
                              host=args.host).start()
    print(server.base_url, flush=True)
    try:
        done.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
