"""LLMExtractor against the testkit OpenAI server's chat answers in every shape it can give.

The stand-in answers in differently written but schema-valid JSON (padded strings, "" for null, null tags,
lower-case country codes, key order, escapes, indentation) and in the unusable shapes a real API can still
return. The lenient validation must read every valid shape to the same activities, and turn every unusable
one into one clear ExtractionError (or, for one nameless item, one rejected item and the rest kept).
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from harvest.errors import ExtractionError
from harvest.extract.llm import LLMExtractor
from testkit.openai_server import INVALID_CHAT_ANSWERS, VALID_CHAT_STYLES, OpenAITestServer

URL = "https://kids.example.org/whats-on"
PAGE = """What's on this month
Activity: Anthony Beale Reserve playground
Where: Anthony Beale Reserve, 277 St Helena Rd, St Helena VIC 3088, Australia
When: 2025-03-01T10:00:00+11:00 to 2025-03-01T14:00:00+11:00
About: A bright, colourful playground with a flying fox — café nearby.
Tags: park, playground, family
Image: https://example.org/beale.jpg

Activity: Storytime
About: Songs and stories for toddlers.
"""


@pytest.fixture(scope="module")
def oai() -> Iterator[OpenAITestServer]:
    with OpenAITestServer(dimensions=8) as server:
        yield server


@pytest.fixture
def extractor(oai: OpenAITestServer) -> LLMExtractor:
    oai.reset()
    return LLMExtractor(openai.OpenAI(api_key="sk-test", base_url=oai.base_url, max_retries=0), "gpt-test")


def test_the_default_answers_rotate_through_every_valid_shape(oai: OpenAITestServer, extractor: LLMExtractor) -> None:
    answers = [extractor.extract(PAGE, URL) for _ in VALID_CHAT_STYLES]
    assert {key for key in oai.stats() if key.startswith("chat.") and key != "chat.completions"} == {
        f"chat.{style}" for style in VALID_CHAT_STYLES
    }
    assert all(answer == answers[0] for answer in answers[1:])


@pytest.mark.parametrize("style", VALID_CHAT_STYLES)
def test_every_valid_shape_reads_to_the_same_activities(
    oai: OpenAITestServer, extractor: LLMExtractor, style: str
) -> None:
    oai.configure(chat_answers=[style])
    beale, storytime = extractor.extract(PAGE, URL)
    assert oai.stats()[f"chat.{style}"] == 1 and extractor.rejected == 0
    assert beale.name == "Anthony Beale Reserve playground" and storytime.name == "Storytime"
    assert beale.description == "A bright, colourful playground with a flying fox — café nearby."
    assert beale.location is not None and beale.location.name == "Anthony Beale Reserve"
    assert beale.location.formattedAddress == "277 St Helena Rd, St Helena VIC 3088, Australia"
    assert (beale.location.city, beale.location.postal_code, beale.location.country_code) == (
        "St Helena", "3088", "AU"
    )
    assert (beale.startDate, beale.endDate) == ("2025-03-01T10:00:00+11:00", "2025-03-01T14:00:00+11:00")
    assert beale.tags == ["park", "playground", "family"] and beale.imageURL == "https://example.org/beale.jpg"
    assert storytime.location is None and storytime.startDate is None and storytime.endDate is None
    assert storytime.tags == [] and storytime.imageURL is None
    assert storytime.description == "Songs and stories for toddlers." and storytime.sourceUrl == URL


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("invalid_json", "returned invalid JSON"),
        ("truncated", "cut off"),
        ("no_activities", "without an 'activities' list"),
        ("activities_not_list", "without an 'activities' list"),
        ("refusal", "refused"),
        ("empty", "answer is empty"),
    ],
)
def test_every_unusable_answer_is_one_clear_extraction_error(
    oai: OpenAITestServer, extractor: LLMExtractor, shape: str, message: str
) -> None:
    oai.configure(chat_answers=[shape])
    with pytest.raises(ExtractionError, match=message) as caught:
        extractor.extract(PAGE, URL)
    assert URL in str(caught.value) and oai.stats()[f"chat.{shape}"] == 1


def test_a_nameless_item_is_rejected_and_counted_the_rest_kept(oai: OpenAITestServer, extractor: LLMExtractor) -> None:
    oai.configure(chat_answers=["nameless_item"])
    names = [a.name for a in extractor.extract(PAGE, URL)]
    assert names == ["Anthony Beale Reserve playground", "Storytime"] and extractor.rejected == 1


def test_every_invalid_shape_is_covered_above() -> None:
    assert set(INVALID_CHAT_ANSWERS) == {"invalid_json", "truncated", "no_activities", "activities_not_list",
                                         "refusal", "empty", "nameless_item"}
