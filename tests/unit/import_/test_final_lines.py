"""Reading final JSONL lines for the import with the vector left unparsed until a row is written."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from harvest.enrich.embeddings.vectors import UnparsedVector, parse_final_line
from harvest.import_.copy import embedding_array


def _line(record: dict[str, object]) -> bytes:
    return orjson.dumps(record)


def test_the_vector_is_kept_as_text_and_parses_to_the_same_numbers() -> None:
    record = {"id": "a", "name": "Park", "embedding": [0.25, -1.5e-05, 3.0], "content_hash": "h"}
    parsed = parse_final_line(_line(record))
    assert isinstance(parsed["embedding"], UnparsedVector)
    assert {k: v for k, v in parsed.items() if k != "embedding"} == {"id": "a", "name": "Park", "content_hash": "h"}
    assert parsed["embedding"].parse() == [0.25, -1.5e-05, 3.0]
    assert np.array_equal(embedding_array(parsed["embedding"]), embedding_array([0.25, -1.5e-05, 3.0]))


@pytest.mark.parametrize("record", [
    {"id": "n", "name": "No vector", "embedding": None},
    {"id": "s", "name": 'Quoted "embedding":[1,2] in text', "description": '{"embedding":[9]}', "embedding": None},
    {"id": "e", "name": "Empty", "embedding": []},
    # A nested key of the same name before the real one: the whole line is parsed instead.
    {"id": "x", "location": {"embedding": [1.0]}, "name": "Nested", "embedding": [2.0]},
    # Not a flat list of numbers: parsed whole, and the encoder refuses it later.
    {"id": "y", "name": "Odd", "embedding": ["a]b", 1]},
])
def test_unusual_lines_read_exactly_as_a_full_parse(record: dict[str, object]) -> None:
    parsed = parse_final_line(_line(record))
    vector = parsed["embedding"].parse() if isinstance(parsed["embedding"], UnparsedVector) else parsed["embedding"]
    assert {**parsed, "embedding": vector} == record


def test_a_broken_vector_is_an_error_of_that_row_when_it_is_needed() -> None:
    line = b'{"id":"b","name":"Broken","embedding":[0.1,0.2,,0.3],"content_hash":"h"}'
    parsed = parse_final_line(line)
    assert parsed["id"] == "b"
    with pytest.raises(ValueError, match="embedding is not JSON"):
        embedding_array(parsed["embedding"])


def test_a_line_that_is_not_json_at_all_raises() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        parse_final_line(b'{"id": "z", "embedding": [1, 2], "name": ')
