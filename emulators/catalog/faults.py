"""Faults to inject and the rate limits the emulator enforces (the vendor's per-account window, a token bucket)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from emulators.catalog.contract import ACCOUNT_LIMIT, ACCOUNT_WINDOW


class Faults(BaseModel):
    """Faults to inject into API responses (see the module docstring for the order they are checked in)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    account_limit: int | None = Field(
        default=ACCOUNT_LIMIT, ge=1, description="Requests per account per window (the vendor's limit); null: off."
    )
    account_window: float = Field(default=ACCOUNT_WINDOW, gt=0, le=86_400, description="Window length, seconds.")
    rate_limit: float | None = Field(default=None, gt=0, description="Requests per second; null turns it off.")
    burst: int | None = Field(default=None, ge=1, description="Token bucket size; default: the rate, at least 1.")
    latency_ms: float = Field(default=0, ge=0, le=600_000, description="Delay added to every API response.")
    error_rate: float = Field(default=0, ge=0, le=1, description="Probability of a 500 or 503.")
    drop_rate: float = Field(default=0, ge=0, le=1, description="Probability of dropping the connection.")
    fail_next: int = Field(default=0, ge=0, description="The next N API requests answer 503.")
    drop_next: int = Field(default=0, ge=0, description="The next N API requests lose their connection.")
    seed: int | None = Field(default=None, description="Seed for drop_rate and error_rate.")
    forbidden: bool = Field(default=False, description="Every API request answers 403 FORBIDDEN.")
    credits_exhausted: bool = Field(default=False, description="Upserts answer 402 INSUFFICIENT_CREDITS.")

    @property
    def bucket_size(self) -> int:
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.rate_limit or 1))


class TokenBucket:
    """`size` tokens, refilled at `rate` per second on a monotonic clock; a request takes one."""

    def __init__(self, rate: float, size: int, now: float) -> None:
        self.rate = rate
        self.size = size
        self.tokens = float(size)
        self.stamp = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one will be there."""
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(float(self.size), self.tokens + elapsed * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.size),
            "X-RateLimit-Remaining": str(math.floor(self.tokens)),
            "X-RateLimit-Reset": str(math.ceil((self.size - self.tokens) / self.rate)),
        }


class FixedWindow:
    """At most `limit` requests in each `window`-second window, windows aligned on the clock, as the vendor counts
    its per-minute limit: a burst at the end of one window and another at the start of the next both pass."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.started = -math.inf
        self.count = 0

    def take(self, now: float) -> float:
        """0.0 when the request counts within the limit, else the seconds until the next window opens."""
        start = math.floor(now / self.window) * self.window
        if start != self.started:
            self.started, self.count = start, 0
        if self.count < self.limit:
            self.count += 1
            return 0.0
        return start + self.window - now


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the fault injector decided for one API request, before any `await`."""

    action: Literal["pass", "drop", "respond"]
    response: Response | None = None
    headers: Mapping[str, str] | None = None


PASS = Verdict("pass")
DROP = Verdict("drop")
