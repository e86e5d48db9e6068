"""Fast recovery: the settings that bound it are checked against each other, and a push that meets the state
database down hands its message back rather than consuming it."""

from __future__ import annotations

import pytest
from celery.exceptions import Reject
from redis import RedisError
from sqlalchemy.exc import OperationalError

from config.settings import get_settings
from ground.errors import ConfigError
from worker import tasks
from worker.push import Outcome

SECRET = "do-not-show-this-key"


def settings_error(monkeypatch: pytest.MonkeyPatch, **values: str) -> str:
    monkeypatch.setenv("CATALOG_SYNC_CATALOG_API_KEY", SECRET)
    for name, value in values.items():
        monkeypatch.setenv(f"CATALOG_SYNC_{name.upper()}", value)
    with pytest.raises(ConfigError) as caught:
        get_settings()
    return str(caught.value)


@pytest.mark.usefixtures("clean_env")
def test_the_defaults_recover_within_a_minute() -> None:
    settings = get_settings()
    assert settings.lease_seconds == 60
    assert settings.requeue_after == 60
    assert settings.requeue_after >= 2 * settings.push_horizon


@pytest.mark.usefixtures("clean_env")
def test_a_lease_shorter_than_one_catalog_call_is_refused_naming_both_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(monkeypatch, lease_seconds="5", catalog_timeout="30")
    assert "CATALOG_SYNC_LEASE_SECONDS" in message
    assert "CATALOG_SYNC_CATALOG_TIMEOUT" in message
    assert SECRET not in message


@pytest.mark.usefixtures("clean_env")
def test_a_requeue_delay_inside_the_feeders_horizon_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(monkeypatch, requeue_after="15", push_horizon="10")
    assert "CATALOG_SYNC_REQUEUE_AFTER" in message
    assert "CATALOG_SYNC_PUSH_HORIZON" in message
    assert SECRET not in message


@pytest.mark.usefixtures("clean_env")
def test_a_requeue_delay_of_zero_resends_at_once_and_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATALOG_SYNC_REQUEUE_AFTER", "0")
    assert get_settings().requeue_after == 0


@pytest.mark.parametrize(
    "outage",
    [OperationalError("UPDATE products", {}, Exception("server closed the connection")), RedisError("refused")],
    ids=["database", "redis"],
)
def test_a_push_that_meets_an_outage_hands_its_message_back(
    monkeypatch: pytest.MonkeyPatch, outage: Exception
) -> None:
    # Given the store (or our Redis) failing while the push leases its row
    monkeypatch.setattr(tasks, "STORE_OUTAGE_PAUSE", 0.0)

    def down(source: str, product_id: str, force: bool) -> Outcome:
        raise outage

    monkeypatch.setattr(tasks, "_push_one", down)
    # When the push task runs, then its message goes back to the queue instead of being acknowledged as a failure
    with pytest.raises(Reject) as caught:
        tasks.push_task.run("shop", "1")
    assert caught.value.requeue is True
    with pytest.raises(Reject):
        tasks.push_many_task.run("shop", ["1", "2"])


def test_a_catalog_failure_is_not_an_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bug or an API error inside the push is the push table's business, not a requeue.
    def broken(source: str, product_id: str, force: bool) -> Outcome:
        raise ValueError("a bug")

    monkeypatch.setattr(tasks, "_push_one", broken)
    with pytest.raises(ValueError):
        tasks.push_task.run("shop", "1")
