"""The two leaky buckets that throttle the shop: GraphQL cost points and REST calls, both on the injectable clock."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any


class CostBucket:
    """GraphQL points: `maximumAvailable` refilled at `restoreRate` per second on the injectable clock."""

    def __init__(self, size: float, restore_rate: float, clock: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.size = float(size)
        self.restore_rate = float(restore_rate)
        self._available = float(size)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._available = min(self.size, self._available + max(0.0, now - self._at) * self.restore_rate)
        self._at = now

    def take(self, cost: int) -> bool:
        with self._lock:
            self._refill()
            if cost > self._available:
                return False
            self._available -= cost
            return True

    def refund(self, points: int) -> None:
        with self._lock:
            self._refill()
            self._available = min(self.size, self._available + max(points, 0))

    def reconfigure(self, size: float | None = None, restore_rate: float | None = None) -> None:
        with self._lock:
            self._refill()
            if size is not None:
                self.size = float(size)
                self._available = min(self._available, self.size)
            if restore_rate is not None:
                self.restore_rate = float(restore_rate)

    def fill(self) -> None:
        with self._lock:
            self._available = self.size
            self._at = self._clock()

    def status(self) -> dict[str, Any]:
        with self._lock:
            self._refill()
            return {
                "maximumAvailable": self.size,
                "currentlyAvailable": math.floor(self._available),
                "restoreRate": self.restore_rate,
            }


class CallBucket:
    """REST calls: each request adds one; the bucket leaks `leak` per second; a full bucket answers 429."""

    def __init__(self, size: int, leak: float, clock: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.size = int(size)
        self.leak = float(leak)
        self._used = 0.0
        self._at = clock()

    def _drain(self) -> None:
        now = self._clock()
        self._used = max(0.0, self._used - max(0.0, now - self._at) * self.leak)
        self._at = now

    def hit(self) -> tuple[bool, str]:
        """(allowed, the `X-Shopify-Shop-Api-Call-Limit` value)."""
        with self._lock:
            self._drain()
            if self._used + 1 > self.size:
                return False, f"{self.size}/{self.size}"
            self._used += 1
            return True, f"{math.ceil(self._used)}/{self.size}"

    def reconfigure(self, size: int | None = None, leak: float | None = None) -> None:
        with self._lock:
            self._drain()
            if size is not None:
                self.size = int(size)
            if leak is not None:
                self.leak = float(leak)

    def empty(self) -> None:
        with self._lock:
            self._used = 0.0
            self._at = self._clock()
