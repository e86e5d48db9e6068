"""A fix for kombu's Redis transport that keeps a worker alive through a Redis restart.

When Redis goes away under a consumer holding unacknowledged messages (`acks_late`), Celery closes the broken
connection and kombu's channel tries to put those messages back on their queue. If the transport was already
detached from its connection, building a Redis client for that fails with
`AttributeError: 'NoneType' object has no attribute 'hostname'` (kombu `_connparams`), which kombu's close and
Celery's consumer do not count as a connection error: the worker logs "Unrecoverable error" and exits, and
stays dead after Redis is back (celery/kombu#582 and #970 show the same path). Nothing is lost by skipping that
restore: the messages are pointers, their rows keep `enqueued_at`, and the feeder hands them again after
`requeue_after`. So the restore is skipped, with a warning, when the transport has no connection left.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_PATCHED = "_catalog_sync_patched"


def tolerate_detached_restore() -> None:
    """Patch kombu's Redis `QoS.restore_unacked` once per process (idempotent)."""
    from kombu.transport import redis as redis_transport

    original: Callable[..., Any] = redis_transport.QoS.restore_unacked
    if getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def restore_unacked(self: Any, client: Any = None) -> Any:
        if client is None and getattr(self.channel.connection, "client", None) is None:
            log.warning(
                "broker connection already closed: %d unacknowledged message(s) not restored; "
                "their rows are fed again after requeue_after",
                len(self._delivered),
            )
            self._delivered.clear()
            return None
        return original(self, client)

    setattr(restore_unacked, _PATCHED, True)
    setattr(redis_transport.QoS, "restore_unacked", restore_unacked)  # noqa: B010 - mypy forbids assigning a method
