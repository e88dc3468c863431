"""An embedding as the import holds it: its JSON text left unparsed (a final line) or only its hash (a line of
the policy index), parsed only for a row that is written. Parsing 1,536 floats is most of the cost of reading a
final line, and the policy decides most rows from the vector's hash (`activities.embedding_hash`)."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any

import orjson


class DeferredVector(ABC):
    """A final record's vector the import holds without its floats: parsed only for a row that is written, and
    hashed (`embedding_hash`) without parsing. Parsing 1,536 floats is most of the cost of reading a final line,
    and a row the policy does not write never needs them."""

    __slots__ = ()

    @abstractmethod
    def parse(self) -> Any:
        """The vector's values; raises ValueError when they cannot be had."""

    @abstractmethod
    def sha256(self) -> str:
        """The sha256 (hex) of the vector's JSON text as written in final.jsonl."""


class UnparsedVector(DeferredVector):
    """A vector still as its JSON text (from a final line, see parse_final_line)."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text

    def parse(self) -> Any:
        try:
            return orjson.loads(self.text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"embedding is not JSON: {exc}") from exc

    def sha256(self) -> str:
        return hashlib.sha256(self.text).hexdigest()


_EMBEDDING_KEY = b'"embedding":['


class HashedVector(DeferredVector):
    """A vector known only by its sha256 (a line of the import's policy index, written with final.jsonl):
    enough to apply the policy; the import takes the vector itself from final.jsonl before writing."""

    __slots__ = ("digest",)

    def __init__(self, digest: str) -> None:
        self.digest = digest

    def parse(self) -> Any:
        raise ValueError("this vector is known only by its hash (policy index); read it from final.jsonl")

    def sha256(self) -> str:
        return self.digest


def parse_index_line(line: bytes) -> dict[str, Any]:
    """One line of `final_index.jsonl` (harvest.merge.final.policy_line) as a final record whose embedding
    is a HashedVector."""
    record = orjson.loads(line)
    digest = record.pop("embedding_sha256", None) if isinstance(record, dict) else None
    if isinstance(record, dict) and digest:
        record["embedding"] = HashedVector(str(digest))
    return record


def parse_final_line(line: bytes) -> dict[str, Any]:
    """One line of final JSONL as a record whose `embedding` is left unparsed (an UnparsedVector).

    Inside a JSON string every quote is escaped, so the bytes `"embedding":[` can only be a key. If they are
    not the top-level key, or the line is unusual in any way, the whole line is parsed as usual.
    """
    start = line.find(_EMBEDDING_KEY)
    if start >= 0:
        opening = start + len(_EMBEDDING_KEY) - 1
        closing = line.find(b"]", opening)
        if closing > 0:
            try:
                record = orjson.loads(line[:opening] + b"null" + line[closing + 1:])
            except orjson.JSONDecodeError:
                record = None
            if isinstance(record, dict) and "embedding" in record and record["embedding"] is None:
                record["embedding"] = UnparsedVector(line[opening:closing + 1])
                return record
    return orjson.loads(line)


def parse_vector(value: Any) -> Any:
    """A vector's values, parsing a DeferredVector (raises ValueError when it cannot be had)."""
    return value.parse() if isinstance(value, DeferredVector) else value


def embedding_hash(value: Any) -> str | None:
    """sha256 of a vector's JSON text (as written in the final line, or dumped when already parsed)."""
    if value is None:
        return None
    if isinstance(value, DeferredVector):
        return value.sha256()
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)).hexdigest()
