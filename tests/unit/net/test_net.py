"""harvest.net's address book: one resolution per host and TTL, and every fresh answer checked again."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from harvest.errors import DisallowedURLError
from harvest.net.pinned import AddressBook

_real_getaddrinfo = socket.getaddrinfo


def _scripted_resolver(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    """getaddrinfo answering `name.test` with `answers` in turn (the last one repeated); the names asked."""
    queue = list(answers)
    asked: list[str] = []

    def resolve(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0,  # noqa: A002
                flags: int = 0) -> list[Any]:
        if host != "name.test":
            return _real_getaddrinfo(host, port, family, type, proto, flags)
        asked.append(host)
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        return _real_getaddrinfo(answer, port, family, type, proto, flags)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return asked


def test_one_answer_per_ttl_and_every_fresh_answer_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within the TTL the guard's answer is the connection's (one lookup); once it has passed, the new answer
    is checked like the first, and a refusal is remembered like an approval. Two books, one TTL each, instead of
    sleeping past a short TTL between calls (two calls inside 0.3 s failed on a loaded machine)."""
    asked = _scripted_resolver(monkeypatch, "93.184.216.34", "93.184.216.34", "127.0.0.1")
    book = AddressBook(allow_private_networks=False)  # the default TTL (60 s): both calls fall inside it
    assert book.check("http://name.test/a") == ["93.184.216.34"]
    assert book.approved("NAME.test", 80) == ["93.184.216.34"]  # the guard's answer is the connection's
    assert len(asked) == 1

    expired = AddressBook(allow_private_networks=False, ttl_s=0.0)  # each answer has passed its TTL at once
    assert expired.check("http://name.test/a") == ["93.184.216.34"]
    with pytest.raises(DisallowedURLError, match="non-public address 127.0.0.1"):
        expired.approved("name.test", 80)  # a new answer after the TTL is checked like the first
    assert len(asked) == 3

    assert book.check("http://name.test/b") == ["93.184.216.34"]  # still the first book's answer, no lookup
    refusing = AddressBook(allow_private_networks=False)
    with pytest.raises(DisallowedURLError, match="non-public address 127.0.0.1"):
        refusing.check("http://name.test/c")
    with pytest.raises(DisallowedURLError):
        refusing.approved("name.test", 80)  # and the refusal is remembered: no lookup in between
    assert len(asked) == 4


def test_a_url_the_guard_cannot_read_is_refused_before_any_lookup() -> None:
    book = AddressBook(allow_private_networks=False)
    with pytest.raises(DisallowedURLError, match="not http"):
        book.check("ftp://example.org/")
    with pytest.raises(DisallowedURLError, match="malformed URL"):
        book.check("http://example.org:99999/")
