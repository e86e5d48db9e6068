"""The global rate limiter: the in-process twin on a fake clock, the Redis limiter counted against Redis time.

Nothing here waits on the wall clock: `LocalLimiter` runs on a fake clock whose sleep advances it, and the Redis
tests count what the script allows within a window measured with Redis `TIME`, or read the script's answers.
"""

from __future__ import annotations

import math
import multiprocessing
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from config.settings import Settings
from emulators.server import free_port
from ground.errors import ConfigError, RateLimited, RetryableError
from tests.fakes import FakeClock
from worker.ratelimit import (
    COOLDOWN_SUFFIX,
    MAX_COOL_DOWN,
    Limiter,
    LocalLimiter,
    RedisLimiter,
    build_limiter,
)

# Calls each process makes in the shared-budget test: long enough (a fraction of a second) for the budget to refill
# many times over, short enough to keep the file fast.
HAMMER_CALLS = 2500
# Seconds a child process may take to start or finish before the test fails instead of hanging.
PROCESS_TIMEOUT = 60


class RecordingSleep:
    """A sleep that returns at once and remembers what it was asked: the Redis clock moves on by itself."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    yield connection
    connection.close()


@pytest.fixture
def key(client: redis.Redis, unique: str) -> Iterator[str]:
    name = f"test:ratelimit:{unique}"
    yield name
    client.delete(name, name + COOLDOWN_SUFFIX)


def server_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1_000_000


# --- LocalLimiter ------------------------------------------------------------------------------------------------


def test_local_burst_is_allowed_at_once_then_acquisitions_are_spaced_at_one_over_rate(clock: FakeClock) -> None:
    limiter = LocalLimiter(10, 3, clock=clock, sleep=clock.sleep)

    times = []
    for _ in range(6):
        limiter.acquire()
        times.append(clock.now - 1000.0)

    assert times[:3] == [0.0, 0.0, 0.0]
    assert times[3:] == pytest.approx([0.1, 0.2, 0.3])
    assert clock.sleeps == pytest.approx([0.1, 0.1, 0.1])


def test_local_budget_refills_at_the_rate_up_to_the_burst(clock: FakeClock) -> None:
    limiter = LocalLimiter(2, 4, clock=clock, sleep=clock.sleep)
    assert [limiter.try_acquire() for _ in range(4)] == [0.0] * 4

    clock.now += 1.0  # two slots come back
    answers = [limiter.try_acquire() for _ in range(3)]
    assert answers[:2] == [0.0, 0.0]
    assert answers[2] == pytest.approx(0.5)

    clock.now += 3600.0  # idle for an hour: still only a burst
    allowed = sum(limiter.try_acquire() == 0.0 for _ in range(10))
    assert allowed == 4


def test_local_max_wait_raises_rate_limited_without_consuming_budget(clock: FakeClock) -> None:
    limiter = LocalLimiter(1, 1, clock=clock, sleep=clock.sleep)
    limiter.acquire()

    for _ in range(100):
        with pytest.raises(RateLimited) as caught:
            limiter.acquire(max_wait=0.5)
        assert caught.value.retry_after == pytest.approx(1.0)
        assert caught.value.status is None
        assert "budget" in str(caught.value)
    assert clock.sleeps == []
    # A hundred refusals later the next slot is still one interval away: nothing was taken.
    assert limiter.try_acquire() == pytest.approx(1.0)

    limiter.acquire(max_wait=1.0)  # exactly the wait is allowed
    assert clock.sleeps == pytest.approx([1.0])


def test_local_max_wait_counts_the_total_wait_across_retries(clock: FakeClock) -> None:
    # Another thread takes the slot each time this one wakes up, so the waits add up.
    def sleep_then_lose_the_slot(seconds: float) -> None:
        clock.sleep(seconds)
        assert limiter.try_acquire() == 0.0

    limiter = LocalLimiter(1, 1, clock=clock, sleep=sleep_then_lose_the_slot)
    limiter.acquire()
    with pytest.raises(RateLimited):
        limiter.acquire(max_wait=2.5)
    assert clock.sleeps == pytest.approx([1.0, 1.0])


def test_local_cool_down_pauses_acquisitions_and_only_ever_lengthens(clock: FakeClock) -> None:
    limiter = LocalLimiter(10, 5, clock=clock, sleep=clock.sleep)

    limiter.cool_down(5)
    limiter.cool_down(1)  # a shorter pause does not cut the first one short

    assert limiter.cooldown_remaining() == pytest.approx(5.0)
    assert limiter.try_acquire() == pytest.approx(5.0)
    with pytest.raises(RateLimited, match="429 cool-down") as caught:
        limiter.acquire(max_wait=4)
    assert caught.value.retry_after == pytest.approx(5.0)

    limiter.acquire()
    assert clock.sleeps == pytest.approx([5.0])
    assert limiter.cooldown_remaining() == 0.0
    # After the pause requests resume at the steady rate, not as a burst banked while paused (which would empty
    # the API's bucket at once and earn the next 429); refused tries spend nothing.
    assert [limiter.try_acquire() for _ in range(3)] == pytest.approx([0.1] * 3)
    clock.sleep(0.1)
    assert limiter.try_acquire() == 0.0


def test_local_cool_down_is_capped(clock: FakeClock) -> None:
    limiter = LocalLimiter(10, 1, clock=clock, sleep=clock.sleep)
    limiter.cool_down(10**9)
    assert limiter.cooldown_remaining() == pytest.approx(MAX_COOL_DOWN)


def test_local_limiter_is_thread_safe(clock: FakeClock) -> None:
    # The clock stands still, so exactly one burst can be handed out however the threads interleave.
    limiter = LocalLimiter(1, 7, clock=clock, sleep=clock.sleep)
    allowed: list[int] = []

    def hammer() -> None:
        allowed.append(sum(limiter.try_acquire() == 0.0 for _ in range(500)))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(allowed) == 7


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(0, 1), (-1, 1), (math.nan, 1), (math.inf, 1), (1, 0), (1, 1.5), (1, True), ("10", 1)],
    ids=["zero-rate", "negative-rate", "nan-rate", "inf-rate", "zero-burst", "float-burst", "bool-burst", "str-rate"],
)
def test_a_bad_budget_is_refused_with_a_clear_error(rate: Any, burst: Any) -> None:
    with pytest.raises(ValueError, match=r"(rate|burst) must"):
        LocalLimiter(rate, burst)


@pytest.mark.parametrize("seconds", [-1, math.nan], ids=["negative", "nan"])
def test_a_bad_cool_down_is_refused(clock: FakeClock, seconds: float) -> None:
    with pytest.raises(ValueError, match="cool-down must be"):
        LocalLimiter(1, 1, clock=clock).cool_down(seconds)


def test_a_negative_max_wait_is_refused(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="max_wait"):
        LocalLimiter(1, 1, clock=clock).acquire(max_wait=-1)


# --- RedisLimiter --------------------------------------------------------------------------------------------------


def test_redis_burst_is_allowed_at_once_and_refusals_consume_nothing(client: redis.Redis, key: str) -> None:
    limiter = RedisLimiter(client, key=key, rate=0.01, burst=5)  # one slot per 100 s: none refill during the test

    answers = [limiter.try_acquire() for _ in range(50)]

    assert answers[:5] == [0.0] * 5
    refusals = answers[5:]
    assert all(0 < wait <= 100.0 for wait in refusals)
    # Had a refusal taken a slot, the next wait would be ~100 s longer; it only shrinks as Redis time passes.
    assert refusals == sorted(refusals, reverse=True)


def test_redis_allows_burst_plus_rate_times_elapsed_redis_time(client: redis.Redis, key: str) -> None:
    rate, burst = 200.0, 10
    limiter = RedisLimiter(client, key=key, rate=rate, burst=burst)
    limiter.cooldown_remaining()  # connect and load the scripts before the window opens

    start = server_time(client)
    answers = [limiter.try_acquire() for _ in range(2000)]
    elapsed = server_time(client) - start

    allowed = answers.count(0.0)
    budget = burst + rate * elapsed
    assert allowed <= budget + 1
    assert allowed >= budget / 2, f"a single caller got {allowed} of a budget of {budget:.1f}"
    # Past the burst, nobody is ever told to wait more than one interval.
    assert max(answers) <= 1 / rate


def test_redis_acquire_sleeps_the_scripts_answer_until_allowed(client: redis.Redis, key: str) -> None:
    calls: list[float] = []

    def sleep(seconds: float) -> None:
        # Really sleeps: the Redis clock decides when the next slot is free. The interval (0.5 s) is long enough
        # that a busy machine cannot let it pass between the two acquisitions.
        calls.append(seconds)
        time.sleep(seconds)

    limiter = RedisLimiter(client, key=key, rate=2, burst=1, sleep=sleep)

    limiter.acquire()
    limiter.acquire()

    assert calls, "the second acquisition should have been told to wait"
    assert all(0 < wait <= 0.5 for wait in calls)


def test_redis_max_wait_raises_rate_limited_without_consuming_budget(client: redis.Redis, key: str) -> None:
    sleep = RecordingSleep()
    limiter = RedisLimiter(client, key=key, rate=0.01, burst=1, sleep=sleep)
    limiter.acquire()
    state_before = client.get(key)

    retry_afters: list[float] = []
    for _ in range(50):
        with pytest.raises(RateLimited) as caught:
            limiter.acquire(max_wait=10)
        assert caught.value.retry_after is not None
        retry_afters.append(caught.value.retry_after)

    assert sleep.calls == []
    assert client.get(key) == state_before
    assert all(90 < wait <= 100 for wait in retry_afters)
    assert retry_afters == sorted(retry_afters, reverse=True)


def test_redis_budget_key_cleans_itself_up(client: redis.Redis, key: str) -> None:
    limiter = RedisLimiter(client, key=key, rate=1, burst=3)  # intervals of 1 s: a busy machine cannot outlast them
    for _ in range(3):
        limiter.acquire()
    ttl_ms = client.pttl(key)
    assert 0 < ttl_ms <= 3000  # at most a full burst of intervals ahead


def test_redis_cool_down_from_one_limiter_pauses_another(redis_url: str, client: redis.Redis, key: str) -> None:
    other_client = redis.Redis.from_url(redis_url, socket_timeout=5)
    first = RedisLimiter(client, key=key, rate=10, burst=5)
    second = RedisLimiter(other_client, key=key, rate=10, burst=5)
    try:
        assert second.cooldown_remaining() == 0.0

        first.cool_down(30)
        resume_tat = client.get(key)
        second.cool_down(5)  # cannot shorten the pause another process set

        assert 29 < second.cooldown_remaining() <= 30
        assert 29 < second.try_acquire() <= 30
        with pytest.raises(RateLimited, match="429 cool-down") as caught:
            second.acquire(max_wait=5)
        assert 29 < (caught.value.retry_after or 0) <= 30
        assert 0 < client.pttl(key + COOLDOWN_SUFFIX) <= 30_000
        assert client.get(key) == resume_tat, "a paused caller must not spend budget"
        # When the pause ends, requests resume one interval apart (burst 5 at 10/s: the TAT sits 4 intervals on).
        assert resume_tat is not None
        end_us = int(client.get(key + COOLDOWN_SUFFIX) or 0) * 1000
        assert int(resume_tat) - end_us == 4 * 100_000

        second.cool_down(60)
        assert 59 < first.cooldown_remaining() <= 60
    finally:
        other_client.close()


def test_redis_cool_down_of_zero_is_a_no_op(client: redis.Redis, key: str) -> None:
    limiter = RedisLimiter(client, key=key, rate=10, burst=1)
    limiter.cool_down(0)
    assert client.exists(key + COOLDOWN_SUFFIX) == 0
    assert limiter.try_acquire() == 0.0


def test_redis_lowered_burst_does_not_stall_callers(client: redis.Redis, key: str) -> None:
    # A deploy lowers the burst while the old TAT is far ahead: the new setting applies at once.
    old = RedisLimiter(client, key=key, rate=1, burst=50)
    assert sum(old.try_acquire() == 0.0 for _ in range(50)) == 50

    new = RedisLimiter(client, key=key, rate=1, burst=2)
    assert 0 < new.try_acquire() <= 1.0


def _hammer(
    redis_url: str,
    key: str,
    rate: float,
    burst: int,
    calls: int,
    barrier: Any,
    results: Any,
) -> None:
    """One worker process: wait for the other, then ask the shared limiter `calls` times as fast as it can."""
    client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=10)
    limiter = RedisLimiter(client, key=key, rate=rate, burst=burst)
    limiter.cooldown_remaining()  # connect and load the scripts before the window opens
    barrier.wait(timeout=PROCESS_TIMEOUT)
    start = server_time(client)
    answers = [limiter.try_acquire() for _ in range(calls)]
    end = server_time(client)
    results.put((answers.count(0.0), max(answers), start, end))
    client.close()


def test_two_processes_share_one_budget(redis_url: str, key: str) -> None:
    rate, burst = 100.0, 20
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    processes = [
        context.Process(target=_hammer, args=(redis_url, key, rate, burst, HAMMER_CALLS, barrier, results))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=PROCESS_TIMEOUT) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=PROCESS_TIMEOUT)
            if process.is_alive():
                process.kill()
    assert all(process.exitcode == 0 for process in processes)

    counts = [count for count, _, _, _ in outcomes]
    starts = [start for _, _, start, _ in outcomes]
    ends = [end for _, _, _, end in outcomes]
    assert min(ends) > max(starts), "the two processes never ran at the same time; the test proves nothing"
    elapsed = max(ends) - min(starts)
    budget = burst + rate * elapsed
    total = sum(counts)
    # Two separate budgets would allow about twice this; one shared budget allows no more than it.
    assert total <= budget + 1, f"{counts} allowed in {elapsed:.3f} s of Redis time, budget {budget:.1f}"
    assert total >= budget / 2, f"only {counts} allowed of a budget of {budget:.1f}: the limiter starved them"
    assert min(counts) >= total / 5, f"one process was starved: {counts}"
    assert max(wait for _, wait, _, _ in outcomes) <= 1 / rate


def test_redis_down_is_a_retryable_error_not_a_hang(unique: str) -> None:
    port = free_port()  # nothing listens here
    dead = redis.Redis(
        host="127.0.0.1",
        port=port,
        password="hunter2-secret",
        socket_timeout=1,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )
    limiter = RedisLimiter(dead, key=f"test:ratelimit:{unique}", rate=10, burst=1)

    for call in (limiter.try_acquire, limiter.acquire, lambda: limiter.cool_down(1), limiter.cooldown_remaining):
        with pytest.raises(RetryableError) as caught:
            call()
        assert not isinstance(caught.value, RateLimited)
        assert f"127.0.0.1:{port}" in str(caught.value)
        assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(limiter)


# --- build_limiter -------------------------------------------------------------------------------------------------


def make_settings(**values: Any) -> Settings:
    return Settings(_env_file=None, catalog_rate_limit=7, catalog_burst=3, **values)


@pytest.mark.usefixtures("clean_env")
def test_build_limiter_embedded_is_local() -> None:
    limiter = build_limiter(make_settings(redis_url="redis://127.0.0.1:6379/0"), embedded=True)
    assert isinstance(limiter, LocalLimiter)
    assert limiter.rate == pytest.approx(7.0 - 3 / 60)
    assert limiter.burst == 3


@pytest.mark.usefixtures("clean_env")
def test_build_limiter_uses_the_redis_url(redis_url: str, client: redis.Redis, key: str) -> None:
    limiter = build_limiter(make_settings(redis_url=redis_url, broker_url="amqp://guest@localhost//"), key=key)
    assert isinstance(limiter, RedisLimiter)
    assert limiter.rate == pytest.approx(7.0 - 3 / 60)
    assert limiter.burst == 3
    assert [limiter.try_acquire(priority=True) for _ in range(3)] == [0.0] * 3
    assert client.exists(key) == 1


@pytest.mark.usefixtures("clean_env")
def test_build_limiter_falls_back_to_a_redis_broker(redis_url: str, key: str) -> None:
    limiter = build_limiter(make_settings(broker_url=redis_url), key=key)
    assert isinstance(limiter, RedisLimiter)
    assert limiter.try_acquire() == 0.0


@pytest.mark.usefixtures("clean_env")
def test_build_limiter_without_redis_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="CATALOG_SYNC_REDIS_URL"):
        build_limiter(make_settings(broker_url="amqp://guest@localhost//"))


@pytest.mark.usefixtures("clean_env")
@pytest.mark.timeout(30)
def test_build_limiter_fails_promptly_when_redis_is_down(unique: str) -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    limiter = build_limiter(make_settings(redis_url=url), key=f"test:ratelimit:{unique}")
    with pytest.raises(RetryableError) as caught:
        limiter.acquire()
    assert "hunter2" not in str(caught.value)


def test_both_limiters_satisfy_the_limiter_protocol(clock: FakeClock, client: redis.Redis, key: str) -> None:
    limiters: list[Limiter] = [LocalLimiter(10, 1, clock=clock), RedisLimiter(client, key=key, rate=10, burst=1)]
    for limiter in limiters:
        limiter.acquire(max_wait=0)
        limiter.cool_down(0)
