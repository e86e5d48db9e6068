"""Small fakes shared by tests."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps (or the test says so); it records sleeps.

    Pass the instance as `clock=` and its `sleep` as `sleep=`, so waiting is observed without waiting.
    """

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
