"""One contract both rate limiters pass: the Redis one (every worker on every host) and its in-process twin.

Each test builds a limiter through `make`, for both kinds. The rate is one request a second, so the milliseconds a
test takes on the real Redis clock never refill a slot between two calls; nothing here waits on the wall clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from ground.errors import RateLimited
from tests.fakes import FakeClock
from worker.ratelimit import COOLDOWN_SUFFIX, GRANTS_SUFFIX, PRIORITY_SUFFIX, LocalLimiter, RedisLimiter

# One request a second: slow enough that no slot refills while a test runs, fast enough to read waits as seconds.
RATE = 1.0

MakeLimiter = Callable[..., LocalLimiter | RedisLimiter]


@pytest.fixture(params=["local", "redis"])
def make(request: pytest.FixtureRequest, unique: str) -> Iterator[MakeLimiter]:
    if request.param == "local":
        clock = FakeClock()
        yield lambda burst, reserve=0: LocalLimiter(RATE, burst, reserve=reserve, clock=clock, sleep=clock.sleep)
        return
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"), socket_timeout=5)
    key = f"test:ratelimit-contract:{unique}"
    yield lambda burst, reserve=0: RedisLimiter(client, key=key, rate=RATE, burst=burst, reserve=reserve)
    client.delete(key, key + COOLDOWN_SUFFIX, key + PRIORITY_SUFFIX, key + GRANTS_SUFFIX)
    client.close()


def test_a_burst_is_allowed_at_once_then_callers_are_told_how_long_to_wait(make: MakeLimiter) -> None:
    limiter = make(3)

    allowed = [limiter.try_acquire() for _ in range(3)]
    wait = limiter.try_acquire()

    assert allowed == [0.0, 0.0, 0.0]
    assert 0.9 < wait <= 1.0


def test_bulk_callers_leave_the_reserve_to_priority_callers(make: MakeLimiter) -> None:
    limiter = make(3, reserve=1)

    bulk = [limiter.try_acquire() for _ in range(3)]
    first_priority = limiter.try_acquire(priority=True)
    second_priority = limiter.try_acquire(priority=True)

    assert bulk[:2] == [0.0, 0.0]
    assert bulk[2] > 0.9, "the third bulk call would have taken the reserved slot"
    assert first_priority == 0.0, "a priority call found the reserved slot free"
    assert second_priority > 0.9


def test_a_waiting_priority_caller_holds_bulk_callers_back_until_it_is_served(make: MakeLimiter) -> None:
    limiter = make(2, reserve=1)
    assert limiter.try_acquire() == 0.0
    assert limiter.try_acquire(priority=True) == 0.0

    priority_wait = limiter.try_acquire(priority=True)
    bulk_wait = limiter.try_acquire()

    # Without the marker a bulk caller would be told the same steady-state wait and race the priority caller.
    assert priority_wait > 0.9
    assert bulk_wait >= priority_wait


def test_a_refused_call_consumes_nothing(make: MakeLimiter) -> None:
    limiter = make(2, reserve=1)
    assert limiter.try_acquire() == 0.0
    refused = [limiter.try_acquire() for _ in range(5)]

    assert all(wait > 0 for wait in refused)
    assert limiter.try_acquire(priority=True) == 0.0, "refused bulk calls must not have used the reserve"


def test_max_wait_raises_rate_limited_with_the_wait(make: MakeLimiter) -> None:
    limiter = make(1)
    limiter.acquire(max_wait=0)

    with pytest.raises(RateLimited) as caught:
        limiter.acquire(max_wait=0.1)

    assert caught.value.retry_after is not None
    assert 0.9 < caught.value.retry_after <= 1.0
    assert caught.value.status is None, "our own pacing is not the API's 429"


def test_a_cool_down_pauses_priority_callers_too(make: MakeLimiter) -> None:
    limiter = make(3, reserve=1)

    limiter.cool_down(30)

    assert limiter.try_acquire(priority=True) > 29
    assert limiter.try_acquire() > 29
    assert 29 < limiter.cooldown_remaining() <= 30


@pytest.mark.parametrize("reserve", [-1, 3, 4], ids=["negative", "whole-burst", "beyond-burst"])
def test_a_reserve_that_leaves_bulk_nothing_is_refused(make: MakeLimiter, reserve: int) -> None:
    with pytest.raises(ValueError, match="reserve"):
        make(3, reserve=reserve)


def test_the_limiter_counts_what_it_allowed_this_minute_for_status(make: MakeLimiter) -> None:
    limiter = make(3, reserve=1)
    before = limiter.grants()

    limiter.try_acquire()
    limiter.try_acquire()
    limiter.try_acquire(priority=True)
    limiter.try_acquire()  # refused: the burst is spent

    after = limiter.grants()
    # Counted per minute of the limiter's clock; a minute may turn between the two readings.
    if after.seconds_into >= before.seconds_into:
        assert after.current - before.current == 3
    else:
        assert after.current + after.previous - before.current == 3
