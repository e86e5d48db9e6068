"""The webhook server's HTTP guards: uvicorn, with the limits a server facing the internet needs and uvicorn lacks.

uvicorn times out idle keep-alive connections, but not a connection that never finishes its request headers: a
client that connects and sends nothing, or a header byte a second, holds a socket for ever, and some thousands of
them exhaust the process's file descriptors (then every `accept` fails and logs a traceback). So:

- `GuardedH11Protocol` closes a connection whose request headers are not complete `header_timeout` seconds after
  it opened (or after its previous response), and closes a connection on arrival when `max_connections` are
  already open, before it is read;
- `max_connections` is kept below the process's file-descriptor limit, which is raised to its hard ceiling first;
- the body's read timeout, and the limits on deliveries in flight, are the app's (`worker.webhooks`), since only
  the app knows which source a delivery is for.

Written here rather than taken from a library: uvicorn takes a protocol class, and the guard is a timer and a count
on top of its own h11 protocol; the servers that do have a header timeout would replace the whole stack.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from config.settings import Settings

try:
    import resource
except ImportError:  # not on Windows; the limits there are the system's
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# File descriptors kept free for the database, the broker, log files and the listening socket.
RESERVED_DESCRIPTORS = 128
# At most one warning this often about refused connections: a flood must not become a flood of log lines.
WARN_EVERY_SECONDS = 60.0


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for request headers and a cap on open connections."""

    header_timeout: float = 10.0
    max_connections: int = 4096
    _last_warning: float = 0.0
    _refused: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            type(self)._note_refusal()
            transport.abort()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm()  # a (next) request has started but its headers are not all here yet
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle keep-alive is uvicorn's timer; ours restarts only when the next request's first bytes come.
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_overdue)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_overdue(self) -> None:
        self._header_deadline = None
        request_running = self.cycle is not None and not self.cycle.response_complete
        if self.conn.their_state is h11.IDLE and not request_running and not self.transport.is_closing():
            # No answer is owed and a slow sender would not read one: just close.
            self.transport.close()

    @classmethod
    def _note_refusal(cls) -> None:
        cls._refused += 1
        now = time.monotonic()
        if now - cls._last_warning >= WARN_EVERY_SECONDS:
            log.warning(
                "webhook server: %d connection(s) closed on arrival since the last report: %d already open "
                "(CATALOG_SYNC_WEBHOOK_MAX_CONNECTIONS)",
                cls._refused,
                cls.max_connections,
            )
            cls._last_warning, cls._refused = now, 0


def descriptor_budget() -> int:
    """Connections this process can hold open: the file-descriptor limit (raised to its hard ceiling) minus a
    reserve. Unlimited when the platform has no such limit."""
    if resource is None:
        return 1_000_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    return max(16, soft - RESERVED_DESCRIPTORS)


def protocol_for(settings: Settings) -> type[GuardedH11Protocol]:
    """A protocol class carrying these settings' limits (uvicorn builds one protocol per connection from a class)."""
    limit = min(settings.webhook_max_connections, descriptor_budget())
    attributes = {"header_timeout": settings.webhook_header_timeout, "max_connections": limit}
    return type("WebhookH11Protocol", (GuardedH11Protocol,), attributes)


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn options for the webhook server, for `uvicorn.run` / `uvicorn.Config`."""
    return {"http": protocol_for(settings), "h11_max_incomplete_event_size": 16 * 1024}
