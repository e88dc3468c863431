from __future__ import annotations

import itertools

import pytest

from flows.polling import backoff, wait_for_job
from harvest.errors import BatchNotReadyError, ConfigError, DisallowedURLError
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


def test_the_poll_interval_doubles_up_to_its_cap() -> None:
    assert list(itertools.islice(backoff(30, 600), 7)) == [30, 60, 120, 240, 480, 600, 600]


def test_a_job_is_polled_until_it_ends_and_each_wait_is_reported() -> None:
    answers = iter([BatchNotReadyError("validating", done=0, total=4), BatchNotReadyError("in_progress", done=2,
                                                                                           total=4), "the files"])
    slept: list[float] = []
    waits: list[tuple[str, int]] = []

    def check() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    result = wait_for_job(check, first_s=1, cap_s=10, total_s=100, sleep=slept.append,
                          on_wait=lambda not_ready, polls, _: waits.append((str(not_ready), polls)))
    assert result == "the files"
    assert slept == [1, 2] and waits == [("validating", 1), ("in_progress", 2)]


def test_a_job_past_the_longest_wait_fails_with_its_last_status() -> None:
    def check() -> str:
        raise BatchNotReadyError("batch b1 is in_progress (3/9 done)", done=3, total=9)

    with pytest.raises(BatchNotReadyError, match=r"in_progress \(3/9 done\); gave up after 1 polls") as caught:
        wait_for_job(check, first_s=5, cap_s=5, total_s=1, sleep=lambda _: None, on_wait=lambda *_: None)
    assert (caught.value.done, caught.value.total) == (3, 9)


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
