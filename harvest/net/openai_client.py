"""The OpenAI SDK client harvest uses (embeddings and LLM extraction): its own retries, a total deadline per
request."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from harvest.errors import ConfigError
from harvest.net.sdk_transport import deadline_http_client

if TYPE_CHECKING:  # openai costs ~0.5 s to import: only where a call is made (issue 32)
    import openai


def make_openai_client(api_key: str, base_url: str | None = None, max_retries: int = 5,
                       timeout_s: float = 60, download_timeout_s: float = 1800) -> openai.OpenAI:
    """An SDK client whose own retries (with Retry-After) handle 429s and 5xx; base_url for compatible servers.

    Each HTTP request ends within `timeout_s` in total, body included (a file download within
    `download_timeout_s`), however slowly the answer trickles in (`harvest.net.sdk_transport`).
    """
    import openai

    if not api_key or not api_key.strip():
        raise ConfigError("OPENAI_API_KEY is empty: set it, or leave it unset to skip embeddings")
    if max_retries < 0 or not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise ConfigError(f"bad OpenAI client limits: max_retries={max_retries}, timeout_s={timeout_s}")
    if base_url is not None and not re.match(r"^https?://", base_url):
        raise ConfigError(f"OPENAI_BASE_URL {base_url!r} must be an http(s) URL")
    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout_s,
                         http_client=deadline_http_client(request_s=timeout_s, download_s=download_timeout_s))
