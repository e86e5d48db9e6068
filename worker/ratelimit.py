"""The catalog's global rate limit (to be completed: see the Limiter protocol)."""

from __future__ import annotations

from typing import Protocol


class Limiter(Protocol):
    """Paces catalog calls across every worker process and host.

    `acquire(max_wait)` blocks until one request may be sent (the steady budget and any shared cool-down);
    when that would take longer than `max_wait` seconds it raises `RateLimited(retry_after=...)` instead, so the
    caller can reschedule rather than hold a worker. `cool_down(seconds)` is called when the API answered 429:
    every process pauses for that long.
    """

    def acquire(self, max_wait: float | None = None) -> None: ...

    def cool_down(self, seconds: float) -> None: ...
