"""kombu's Redis transport, closing a channel whose transport already lost its connection (a Redis restart)."""

from __future__ import annotations

import pytest
from kombu import Connection

from worker.broker_fixes import tolerate_detached_restore


def test_restoring_unacked_messages_of_a_detached_transport_does_not_raise(redis_url: str) -> None:
    # Given a Redis channel holding one delivered, unacknowledged message, whose transport was then detached from
    # its connection (what a Redis restart under a consumer leaves)
    tolerate_detached_restore()
    connection = Connection(redis_url)
    channel = connection.default_channel
    channel.qos._delivered["tag-1"] = object()
    channel.connection.client = None
    # (kombu's own restore fails there: the error that stopped the worker with "Unrecoverable error")
    from kombu.transport import redis as redis_transport

    with pytest.raises(AttributeError, match="hostname"):
        redis_transport.QoS.restore_unacked.__wrapped__(channel.qos)
    channel.qos._delivered["tag-1"] = object()
    # When the channel gives its unacknowledged messages back
    result = channel.qos.restore_unacked()
    # Then it does not raise (kombu raised AttributeError, which stopped the worker) and forgets them
    assert result is None
    assert len(channel.qos._delivered) == 0
    connection.release()


def test_the_fix_is_applied_once() -> None:
    from kombu.transport import redis as redis_transport

    tolerate_detached_restore()
    first = redis_transport.QoS.restore_unacked
    tolerate_detached_restore()
    assert redis_transport.QoS.restore_unacked is first
