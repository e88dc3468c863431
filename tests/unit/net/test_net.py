"""harvest.net's address book: one resolution per host and TTL, and every fresh answer checked again."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from harvest.errors import DisallowedURLError
from harvest.net.pinned import AddressBook

_real_getaddrinfo = socket.getaddrinfo


def test_one_answer_per_ttl_and_every_fresh_answer_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["93.184.216.34", "127.0.0.1"])
    asked: list[str] = []

    def resolve(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0,  # noqa: A002
                flags: int = 0) -> list[Any]:
        if host != "name.test":
            return _real_getaddrinfo(host, port, family, type, proto, flags)
        asked.append(host)
        return _real_getaddrinfo(next(answers), port, family, type, proto, flags)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    book = AddressBook(allow_private_networks=False, ttl_s=0.3)

    assert book.check("http://name.test/a") == ["93.184.216.34"]
    assert book.approved("NAME.test", 80) == ["93.184.216.34"]  # the guard's answer is the connection's
    assert len(asked) == 1
    time.sleep(0.35)
    with pytest.raises(DisallowedURLError, match="non-public address 127.0.0.1"):
        book.approved("name.test", 80)  # a new answer after the TTL is checked like the first
    with pytest.raises(DisallowedURLError):
        book.check("http://name.test/b")  # and the refusal is remembered
    assert len(asked) == 2


def test_a_url_the_guard_cannot_read_is_refused_before_any_lookup() -> None:
    book = AddressBook(allow_private_networks=False)
    with pytest.raises(DisallowedURLError, match="not http"):
        book.check("ftp://example.org/")
    with pytest.raises(DisallowedURLError, match="malformed URL"):
        book.check("http://example.org:99999/")
