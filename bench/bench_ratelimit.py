"""Benchmark: does the global limiter hold N worker processes to one budget, and what does a check cost?

Runs N processes that each call `acquire()` as fast as they are allowed for a few seconds, twice in the same run:
with one `RedisLimiter` key shared by all (this project), and with a `LocalLimiter` per process at the same setting
(the baseline: what Celery's per-worker `rate_limit` does). Prints achieved rate ÷ configured limit for both, the
most acquisitions seen in any one-second window against the allowance (burst + rate), and the median round trip of
one uncontended `try_acquire()` against Redis. "÷ budget" divides by burst + rate x seconds, all that one shared
budget may allow in the run: 1.0 is the whole budget and nothing more.

    .venv/bin/python bench/bench_ratelimit.py --processes 2 --rate 50 --burst 5 --seconds 3

Needs Redis (default redis://127.0.0.1:6379/0); it writes one uniquely named key and deletes it.
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing
import statistics
import time
import uuid
from typing import Any

import redis

from worker.ratelimit import COOLDOWN_SUFFIX, LocalLimiter, RedisLimiter

# Uncontended round trips timed for the latency figure; enough for a stable median.
LATENCY_SAMPLES = 2000
# Seconds a process may take to start or report before the benchmark gives up.
PROCESS_TIMEOUT = 60.0


def _run(mode: str, redis_url: str, key: str, rate: float, burst: int, seconds: float, barrier: Any, out: Any) -> None:
    """One worker process: acquire in a loop for `seconds`, report the wall-clock times of its acquisitions."""
    if mode == "redis":
        client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        limiter: RedisLimiter | LocalLimiter = RedisLimiter(client, key=key, rate=rate, burst=burst)
        limiter.cooldown_remaining()  # connect and load the scripts before the clock starts
    else:
        limiter = LocalLimiter(rate, burst)
    barrier.wait(timeout=PROCESS_TIMEOUT)
    stamps: list[float] = []
    deadline = time.monotonic() + seconds
    while True:
        limiter.acquire()
        if time.monotonic() >= deadline:
            break
        stamps.append(time.time())
    out.put(stamps)


def measure(mode: str, args: argparse.Namespace) -> list[float]:
    """Every acquisition time of every process, sorted."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(args.processes)
    out = context.Queue()
    key = f"bench:ratelimit:{uuid.uuid4().hex[:12]}"
    processes = [
        context.Process(
            target=_run, args=(mode, args.redis_url, key, args.rate, args.burst, args.seconds, barrier, out)
        )
        for _ in range(args.processes)
    ]
    for process in processes:
        process.start()
    try:
        stamps = sorted(stamp for _ in processes for stamp in out.get(timeout=args.seconds + PROCESS_TIMEOUT))
    finally:
        for process in processes:
            process.join(timeout=PROCESS_TIMEOUT)
        if mode == "redis":
            cleanup = redis.Redis.from_url(args.redis_url)
            cleanup.delete(key, key + COOLDOWN_SUFFIX)
            cleanup.close()
    return stamps


def busiest_second(stamps: list[float]) -> int:
    """The most acquisitions inside any one-second window."""
    return max((bisect.bisect_left(stamps, start + 1.0) - i for i, start in enumerate(stamps)), default=0)


def latency_us(redis_url: str) -> float:
    client = redis.Redis.from_url(redis_url)
    key = f"bench:ratelimit:{uuid.uuid4().hex[:12]}"
    # A budget far above the call rate, so every call is a plain allowed round trip.
    limiter = RedisLimiter(client, key=key, rate=1e6, burst=1_000_000)
    limiter.try_acquire()
    samples = []
    for _ in range(LATENCY_SAMPLES):
        start = time.perf_counter()
        limiter.try_acquire()
        samples.append(time.perf_counter() - start)
    client.delete(key)
    client.close()
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rate", type=float, default=50.0, help="configured limit, requests per second")
    parser.add_argument("--burst", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    if args.processes < 1 or args.rate <= 0 or args.burst < 1 or args.seconds <= 0:
        parser.error("--processes, --rate, --burst and --seconds must be positive")

    allowance = args.burst + args.rate
    print(f"{args.processes} processes, limit {args.rate:g}/s, burst {args.burst}, {args.seconds:g} s each")
    budget = args.burst + args.rate * args.seconds
    print(f"{'limiter':<28}{'achieved/limit':>16}{'÷ budget':>10}{'busiest 1 s':>14}{'allowance':>12}")
    for mode, label in (("redis", "RedisLimiter (one key)"), ("local", "LocalLimiter per process")):
        stamps = measure(mode, args)
        ratio = len(stamps) / args.seconds / args.rate
        share = len(stamps) / budget
        print(f"{label:<28}{ratio:>16.3f}{share:>10.3f}{busiest_second(stamps):>14}{allowance:>12g}")
    print(f"uncontended try_acquire round trip: median {latency_us(args.redis_url):.0f} µs")


if __name__ == "__main__":
    main()
