"""kombu's Redis transport, using a channel whose transport already lost its connection (a Redis restart)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kombu.connection import Connection
from kombu.transport import redis as redis_transport
from kombu.transport.virtual import Channel
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.broker_fixes import tolerate_detached_channels


@pytest.fixture
def detached(redis_url: str) -> Iterator[Channel]:
    """A Redis channel holding one delivered, unacknowledged message, whose transport was then detached from its
    connection: what a Redis restart under a consumer leaves."""
    tolerate_detached_channels()
    connection = Connection(redis_url)
    channel = connection.default_channel
    channel.qos._delivered["tag-1"] = object()
    channel._pool = None  # type: ignore[attr-defined]  # kombu's Redis channel, untyped internals
    channel.connection.client = None
    yield channel
    connection.release()


def test_kombu_alone_fails_with_an_error_celery_cannot_recover_from(detached: Channel) -> None:
    with pytest.raises(AttributeError):
        redis_transport.Channel._connparams.__wrapped__(detached)  # type: ignore[attr-defined]  # the unpatched method


def test_restoring_unacked_messages_raises_a_connection_error(detached: Channel) -> None:
    # A connection error is what kombu's close and Celery's consumer recover from (the worker reconnects).
    with pytest.raises(RedisConnectionError):
        detached.qos.restore_unacked()
    assert RedisConnectionError in Connection("redis://").connection_errors


def test_acknowledging_a_finished_task_raises_a_connection_error(detached: Channel) -> None:
    with pytest.raises(RedisConnectionError):
        detached.qos.ack("tag-1")


def test_the_fix_is_applied_once() -> None:
    tolerate_detached_channels()
    first = redis_transport.Channel._connparams
    tolerate_detached_channels()
    assert redis_transport.Channel._connparams is first
