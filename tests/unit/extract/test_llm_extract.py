"""LLMExtractor against a real local HTTP server speaking the Chat Completions wire protocol.

The server plays the model honestly: it reads the page text out of the request it received and
answers with the activities written in it as "EVENT: name | address | date | image | tags" lines,
so every assertion below depends on what the extractor actually sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from harvest.errors import ExtractionError
from harvest.extract.llm import ACTIVITIES_SCHEMA, PAGE_END, PAGE_START, LLMExtractor

PAGE_URL = "https://kids.example.org/events/june"
MODEL = "gpt-test-extract"


def _page_text_from(request: dict[str, Any]) -> str:
    user = next(m["content"] for m in request["messages"] if m["role"] == "user")
    start = user.index(PAGE_START) + len(PAGE_START)
    return user[start : user.index(PAGE_END, start)]


def _answer_from_page(text: str) -> dict[str, Any]:
    activities = []
    for line in text.splitlines():
        if not line.startswith("EVENT:"):
            continue
        name, address, date, image, tags = [part.strip() or None for part in line[6:].split("|")]
        activities.append(
            {
                "name": name,
                "description": f"Found on the page: {name}",
                "location": None
                if address is None
                else {
                    "name": None,
                    "formattedAddress": address,
                    "street_address": None,
                    "city": address.split(",")[-1].strip(),
                    "state_province": None,
                    "postal_code": None,
                    "country_code": "au",
                },
                "startDate": date,
                "endDate": None,
                "tags": (tags or "").split(","),
                "imageURL": image,
            }
        )
    return {"activities": activities}


def completion(content: str | None, *, finish_reason: str = "stop", refusal: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


class ChatServer:
    """POST /v1/chat/completions on 127.0.0.1; `planned` responses are served first, then honest answers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.planned: list[tuple[int, dict[str, Any]]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    planned = server.planned.pop(0) if server.planned else None
                if self.path != "/v1/chat/completions":
                    status, payload = 404, {"error": {"message": f"no route {self.path}", "type": "not_found"}}
                elif planned is not None:
                    status, payload = planned
                else:
                    answer = _answer_from_page(_page_text_from(body))
                    status, payload = 200, completion(json.dumps(answer))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("retry-after-ms", "10")  # keep the SDK's retry pauses short
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def client(self, max_retries: int = 2) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="test-key", max_retries=max_retries)


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as chat:
        yield chat


def error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": "server_error", "code": None, "param": None}}


PAGE = """June at the library
EVENT: Lego Club | 4-10 Panther Pl, Eltham | 2024-06-05T15:30:00+10:00 | /img/lego.jpg | Lego, kids ,lego
Some paragraph about parking.
EVENT: <b>Baby</b> Rhyme Time | | 2024-06-06 | javascript:alert(1) | babies
"""


def test_extracts_what_the_page_says_with_a_strict_schema_request(server: ChatServer) -> None:
    extractor = LLMExtractor(server.client(), MODEL)
    activities = extractor.extract(PAGE, PAGE_URL)

    assert [a.name for a in activities] == ["Lego Club", "Baby Rhyme Time"]
    lego, rhyme = activities
    assert lego.extractedBy == rhyme.extractedBy == "llm"
    assert lego.sourceUrl == PAGE_URL
    assert lego.startDate == "2024-06-05T15:30:00+10:00"
    assert lego.imageURL == "https://kids.example.org/img/lego.jpg"  # relative URL resolved against the page
    assert lego.tags == ["Lego", "kids", "lego"]  # cleaned; case folding is the standardizer's job
    assert lego.location is not None
    assert lego.location.formattedAddress == "4-10 Panther Pl, Eltham"
    assert lego.location.country_code == "AU"
    assert rhyme.location is None
    assert rhyme.imageURL is None  # javascript: is not an image
    assert extractor.rejected == 0

    [request] = server.requests
    assert request["model"] == MODEL
    assert request["max_completion_tokens"] == extractor.max_output_tokens
    fmt = request["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "activities"
    assert fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == ACTIVITIES_SCHEMA
    assert request["messages"][0]["role"] == "system"
    assert _page_text_from(request).strip() == PAGE.strip()
    assert server.headers[0]["authorization"] == "Bearer test-key"


def test_schema_is_valid_for_strict_mode() -> None:
    """Strict structured outputs need every property required and no extra properties, at every level."""

    definitions = ACTIVITIES_SCHEMA.get("$defs", {})

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        return definitions[ref.removeprefix("#/$defs/")] if ref else schema

    def alternatives(schema: dict[str, Any]) -> list[dict[str, Any]]:
        return [resolve(option) for option in schema.get("anyOf", [schema])]

    def types(schema: dict[str, Any]) -> set[str]:
        found: set[str] = set()
        for option in alternatives(schema):
            kind = option.get("type", [])
            found |= {kind} if isinstance(kind, str) else set(kind)
        return found

    def check(schema: dict[str, Any], path: str) -> int:
        checked = 0
        for option in alternatives(schema):
            if "object" in types(option):
                assert option["additionalProperties"] is False, path
                assert sorted(option["required"]) == sorted(option["properties"]), path
                for name, sub in option["properties"].items():
                    checked += 1 + check(sub, f"{path}.{name}")
            if "array" in types(option):
                checked += check(option["items"], f"{path}[]")
        return checked

    assert check(ACTIVITIES_SCHEMA, "$") == 1 + 7 + 7
    activity = resolve(resolve(ACTIVITIES_SCHEMA["properties"]["activities"])["items"])["properties"]
    assert all("null" in types(activity[name]) for name in activity)


def test_long_pages_are_truncated_before_sending(server: ChatServer) -> None:
    head = "EVENT: Early Event | Carlton | 2024-07-01 | | \n"
    page = head + "filler text " * 10_000 + "\nEVENT: Late Event | Kew | 2024-07-02 | | \n"
    extractor = LLMExtractor(server.client(), MODEL, max_input_chars=2_000)
    assert [a.name for a in extractor.extract(page, PAGE_URL)] == ["Early Event"]
    sent = _page_text_from(server.requests[0])
    assert len(sent.strip()) <= 2_000
    assert "(truncated)" in server.requests[0]["messages"][1]["content"]


def test_a_500_is_retried_by_the_sdk_then_succeeds(server: ChatServer) -> None:
    server.planned = [error(500, "upstream hiccup")]
    activities = LLMExtractor(server.client(), MODEL).extract(PAGE, PAGE_URL)
    assert [a.name for a in activities] == ["Lego Club", "Baby Rhyme Time"]
    assert len(server.requests) == 2


def test_persistent_errors_become_extraction_errors(server: ChatServer) -> None:
    server.planned = [error(503, "overloaded")] * 3
    with pytest.raises(ExtractionError, match=r"HTTP 503.*overloaded") as caught:
        LLMExtractor(server.client(), MODEL).extract(PAGE, PAGE_URL)
    assert PAGE_URL in str(caught.value)
    assert len(server.requests) == 3  # the first try plus max_retries=2


def test_client_errors_are_not_retried(server: ChatServer) -> None:
    server.planned = [error(401, "Incorrect API key provided")]
    with pytest.raises(ExtractionError, match="HTTP 401"):
        LLMExtractor(server.client(), MODEL).extract(PAGE, PAGE_URL)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("planned", "message"),
    [
        (completion('{"activities": [{"name": "Cut off'), "invalid JSON"),
        (completion("not json at all"), "invalid JSON"),
        (completion('{"events": []}'), "without an 'activities' list"),
        (completion('["a list"]'), "without an 'activities' list"),
        (completion(None, refusal="I can't help with that."), "refused"),
        (completion('{"activities": [', finish_reason="length"), "cut off"),
        (completion(None), "empty"),
    ],
)
def test_unusable_answers_become_extraction_errors(server: ChatServer, planned: dict, message: str) -> None:
    server.planned = [(200, planned)]
    with pytest.raises(ExtractionError, match=message):
        LLMExtractor(server.client(), MODEL).extract(PAGE, PAGE_URL)


def test_unreachable_api_is_an_extraction_error(server: ChatServer) -> None:
    port = server.port
    server.httpd.shutdown()
    server.httpd.server_close()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="test-key", max_retries=0)
    with pytest.raises(ExtractionError, match="could not reach"):
        LLMExtractor(client, MODEL).extract(PAGE, PAGE_URL)


def test_answer_items_are_validated_like_page_content(server: ChatServer) -> None:
    answer = {
        "activities": [
            {"name": "  <i>Puppet</i>   Show ", "description": "<p>Fun &amp; games</p>", "location": {
                "name": "Arts Centre", "formattedAddress": None, "street_address": "100 St Kilda Rd",
                "city": "Southbank", "state_province": "VIC", "postal_code": "3006", "country_code": "Australia",
            }, "startDate": "2024-07-01", "endDate": None, "tags": ["theatre", 5, None], "imageURL": None},
            {"name": None, "description": "nameless", "location": None, "startDate": None, "endDate": None,
             "tags": None, "imageURL": None},
            "not an object",
            {"name": "", "description": None},
        ]
    }  # fmt: skip
    server.planned = [(200, completion(json.dumps(answer)))]
    extractor = LLMExtractor(server.client(), MODEL)
    [show] = extractor.extract("A page about puppets", PAGE_URL)
    assert show.name == "Puppet Show"
    assert show.description == "Fun & games"
    assert show.tags == ["theatre"]
    assert show.location is not None
    assert show.location.country_code is None
    assert show.location.formattedAddress == "100 St Kilda Rd, Southbank, VIC 3006, Australia"
    assert extractor.rejected == 3


def test_empty_page_makes_no_call(server: ChatServer) -> None:
    assert LLMExtractor(server.client(), MODEL).extract("  \n ", PAGE_URL) == []
    assert server.requests == []
