"""The catalog's rate written as people write it, and the pacing derived from it."""

from __future__ import annotations

from typing import Any

import pytest

from config.rates import format_rate, parse_rate
from config.settings import Settings, get_settings
from ground.errors import ConfigError
from worker.ratelimit import default_account, pacing


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("100/minute", 100 / 60),
        ("100/min", 100 / 60),
        ("100 per minute", 100 / 60),
        ("2/second", 2.0),
        ("3/s", 3.0),
        ("6000/hour", 100 / 60),
        ("10", 10.0),
        ("1.5", 1.5),
        (50, 50.0),
    ],
    ids=lambda value: str(value),
)
def test_a_rate_reads_as_written(text: Any, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["0/minute", "-1", "nan", "abc", "10/fortnight", "/minute", True], ids=str)
def test_a_bad_rate_says_how_to_write_one(text: Any) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("per_second", "text"),
    [(100 / 60, "100/minute"), (2.0, "120/minute"), (1 / 3600, "1/hour"), (0.1, "6/minute"), (0.001, "3.6/hour")],
)
def test_a_rate_is_shown_in_the_unit_that_reads_best(per_second: float, text: str) -> None:
    assert format_rate(per_second) == text


@pytest.mark.usefixtures("clean_env")
def test_the_default_is_the_vendors_documented_limit_paced_to_never_exceed_it_in_a_minute() -> None:
    settings = Settings(_env_file=None)

    rate, burst, reserve = pacing(default_account(settings))

    assert settings.catalog_rate_limit == pytest.approx(100 / 60)
    assert (burst, reserve) == (2, 1)
    # A burst plus a minute at the steady rate stays within the 100 a minute the catalog allows.
    assert burst + rate * 60 == pytest.approx(100)


@pytest.mark.usefixtures("clean_env")
def test_the_environment_takes_a_rate_per_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATALOG_SYNC_CATALOG_RATE_LIMIT", "600/minute")

    assert get_settings().catalog_rate_limit == pytest.approx(10.0)


@pytest.mark.usefixtures("clean_env")
def test_a_mistyped_rate_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATALOG_SYNC_CATALOG_RATE_LIMIT", "100/fortnight")

    with pytest.raises(ConfigError, match="CATALOG_SYNC_CATALOG_RATE_LIMIT") as caught:
        get_settings()

    assert "100/minute" in str(caught.value), "the error shows how to write a rate"


@pytest.mark.usefixtures("clean_env")
def test_a_burst_that_spends_the_whole_window_is_refused() -> None:
    with pytest.raises(ConfigError, match="CATALOG_SYNC_CATALOG_BURST"):
        pacing(default_account(Settings(_env_file=None, catalog_rate_limit="10/minute", catalog_burst=10)))


@pytest.mark.usefixtures("clean_env")
def test_a_reserve_as_large_as_the_burst_is_refused() -> None:
    with pytest.raises(ConfigError, match="CATALOG_SYNC_CATALOG_PRIORITY_RESERVE"):
        pacing(default_account(Settings(_env_file=None, catalog_burst=2, catalog_priority_reserve=2)))
