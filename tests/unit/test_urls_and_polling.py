from __future__ import annotations

import pytest

from flows.polling import poll_schedule
from harvest.errors import ConfigError, DisallowedURLError
from harvest.models import RunConfig, StartRequest
from harvest.settings import HarvestSettings
from harvest.urls import check_fetch_allowed, validate_start_url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("example.com", "only http and https"),
        ("ftp://example.com/", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
        ("http://", "no host"),
        ("http://exa mple.com/", "white space"),
        ("http://example.com:99999/", "malformed"),
    ],
)
def test_bad_start_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_start_url(url)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/", "http://localhost:8000/", "http://10.1.2.3/", "http://192.168.0.1/", "http://[::1]/",
     "http://169.254.169.254/latest/meta-data/", "http://172.16.0.1/", "http://0.0.0.0/"],
)
def test_ssrf_guard_refuses_internal_addresses(url: str) -> None:
    with pytest.raises(DisallowedURLError, match="non-public|metadata"):
        check_fetch_allowed(url, allow_private_networks=False)


def test_metadata_address_refused_even_when_private_networks_allowed() -> None:
    with pytest.raises(DisallowedURLError, match="metadata"):
        check_fetch_allowed("http://169.254.169.254/", allow_private_networks=True)
    check_fetch_allowed("http://127.0.0.1:1/", allow_private_networks=True)


def test_run_config_rejects_unknown_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        RunConfig(max_pages=0)
    with pytest.raises(ValueError):
        RunConfig.model_validate({"max_pagez": 3})
    assert StartRequest(url=" https://example.com/a ").url == "https://example.com/a"


def test_poll_schedule_grows_to_the_cap_and_covers_the_total() -> None:
    retries, delays = poll_schedule(30, 600, 24 * 3600)
    assert delays[:5] == [30, 60, 120, 240, 480] and max(delays) == 600 and len(delays) <= 50
    assert sum(delays) + (retries - len(delays)) * delays[-1] >= 24 * 3600


def test_secrets_never_show_in_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    monkeypatch.setenv("GOOGLE_MAPS_API_KEY", "g-very-secret")
    settings = HarvestSettings()
    assert settings.has_openai
    assert "very-secret" not in repr(settings) and "very-secret" not in settings.model_dump_json()


def test_storage_url_must_have_a_known_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARVEST_STORAGE_URL", "/tmp/relative-looking")
    with pytest.raises(ValueError, match="HARVEST_STORAGE_URL"):
        HarvestSettings()
