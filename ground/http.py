"""What every HTTP client of catalog-sync shares, whoever it talks to (shops, feeds, the catalog): how it names
itself, how long it backs off between tries, and how it reads `Retry-After`.

Each client keeps its own retry loop and its own caps (how many tries, the longest `Retry-After` worth waiting for):
those are decisions of its layer. Only the facts that must not drift apart live here.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Final

from tenacity import wait_random_exponential

from ground.version import __version__

__all__ = ["BACKOFF", "BACKOFF_BASE", "BACKOFF_CAP", "USER_AGENT", "retry_after_seconds"]

# Sent with every request, so a shop's or the vendor's logs can tell our traffic and its version apart.
USER_AGENT: Final = f"catalog-sync/{__version__}"
# Full-jitter exponential backoff between tries of a transient fault: the first window is 0.5 s, doubling, never
# above 8 s (a wait is drawn from 0 to the window, so many workers failing together do not retry together).
BACKOFF_BASE: Final = 0.5
BACKOFF_CAP: Final = 8.0
BACKOFF: Final = wait_random_exponential(multiplier=BACKOFF_BASE, max=BACKOFF_CAP)


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
