"""A fix for kombu's Redis transport that keeps a worker alive through a Redis restart.

When Redis goes away under a consumer, Celery closes the broken connection, and a channel of it may still be used
afterwards: to put unacknowledged messages back (`acks_late`) or to acknowledge a task that just finished. With
the transport detached from its connection, kombu builds a Redis client from nothing and fails with
`AttributeError: 'NoneType' object has no attribute 'hostname'` (or `'client'`) in `Channel._connparams`. That is
not a connection error to kombu or Celery: the worker logs "Unrecoverable error", exits, and stays dead after Redis
is back (the same path as celery/kombu#582 and #970). Raising Redis's `ConnectionError` there instead lets both
handle it as the lost connection it is: the close goes on, the ack is logged as failed, the consumer reconnects.
Nothing is lost: messages are pointers, their rows keep `enqueued_at`, and the feeder hands them again after
`requeue_after`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

_PATCHED = "_catalog_sync_patched"


def tolerate_detached_channels() -> None:
    """Patch kombu's Redis `Channel._connparams` once per process (idempotent)."""
    from kombu.transport import redis as redis_transport

    original: Callable[..., Any] = redis_transport.Channel._connparams
    if getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def connparams(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.connection is None or getattr(self.connection, "client", None) is None:
            raise RedisConnectionError("the broker connection of this channel is closed")
        return original(self, *args, **kwargs)

    setattr(connparams, _PATCHED, True)
    setattr(redis_transport.Channel, "_connparams", connparams)  # noqa: B010 - mypy forbids assigning a method
