"""Bulk pushes at the vendor's real pace: the feeder's lead, the bulk call's wait and the rescheduling of a push
that gave its slot back fit together so the budget stays saturated.

Counted, never timed: the limiter runs on a fake clock and a small event loop plays the workers.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import pytest

from config.settings import Settings
from ground.errors import RateLimited
from tests.sync_helpers import sync_world
from worker.feeder import AccountBudget
from worker.push import DEFAULT_RATE_LIMIT_WAIT, rate_limit_wait
from worker.ratelimit import LocalLimiter, bulk_wait, default_account, pacing

# The catalog call once the slot is granted, and the hand-on pass after it (seconds of simulated time).
CALL = 0.05
HAND_ON = 0.03


def test_a_bulk_call_waits_one_slot_longer_than_the_feeder_hands_pushes_ahead() -> None:
    account = default_account(Settings())  # the vendor's 100/minute with a burst of 2: 98 a minute
    interval = 60 / 98

    assert bulk_wait(account, 4) == pytest.approx(5 * interval)
    assert bulk_wait(account, 1) == pytest.approx(2 * interval)


def test_each_account_client_waits_as_long_as_its_own_pacing_allows(tmp_path: Path) -> None:
    with sync_world(tmp_path, catalog_rate_limit="600/minute", catalog_burst=2, push_lead_slots=3) as world:
        client = world.runtime.catalog()
        expected = bulk_wait(world.runtime.account("default"), 3)

    rate = 10 - 2 / 60
    assert client.bulk_max_wait == pytest.approx(expected)
    # Ten slots a second pass quicker than a push hands the next one on: half a second's worth of lead, one more.
    assert client.bulk_max_wait == pytest.approx(6 / rate)


@pytest.mark.parametrize(
    ("error", "jitter", "expected"),
    [
        (RateLimited("budget spent", retry_after=1.5, status=None), 1.0, 1.5),
        (RateLimited("catalog 429", retry_after=10.0), 1.0, 12.0),
        (RateLimited("catalog 429", retry_after=10.0), 0.0, 10.0),
        (RateLimited("catalog 429"), 0.5, DEFAULT_RATE_LIMIT_WAIT * 1.1),
    ],
    ids=["own-limiter-exact-slot", "429-spread", "429-unspread", "429-without-retry-after"],
)
def test_a_push_our_limiter_refused_is_due_exactly_at_the_slot_it_named(
    error: RateLimited, jitter: float, expected: float
) -> None:
    assert rate_limit_wait(error, lambda: jitter) == pytest.approx(expected)


def simulate(*, lead_slots: int, seconds: float) -> tuple[int, int, float]:
    """Play the workers of one saturated account: the feeder hands `capacity` pushes, each asks the limiter and
    sleeps its answer while that stays under the bulk wait (else gives its slot back), and every finished push
    hands the next one on. Returns (grants, slots given back, the longest a push slept on the limiter)."""
    account = default_account(Settings())
    rate, burst, reserve = pacing(account)
    clock = [0.0]
    limiter = LocalLimiter(rate, burst, reserve=reserve, clock=lambda: clock[0])
    budget = AccountBudget(account.name, rate, ("feed",))
    wait_cap = bulk_wait(account, lead_slots)
    # (moment, arrival order, seconds slept so far): a push about to ask the limiter.
    events: list[tuple[float, int, float]] = []
    arrivals = 0
    for _ in range(budget.capacity(10.0, lead_slots)):
        heapq.heappush(events, (0.0, arrivals, 0.0))
        arrivals += 1
    grants = given_back = 0
    longest = 0.0
    while events:
        moment, _, slept = heapq.heappop(events)
        if moment > seconds:
            break
        clock[0] = moment
        wait = limiter.try_acquire()
        if wait == 0:
            grants += 1
            longest = max(longest, slept)
            heapq.heappush(events, (moment + CALL + HAND_ON, arrivals, 0.0))
        elif slept + wait > wait_cap:
            given_back += 1
            heapq.heappush(events, (moment + HAND_ON, arrivals, 0.0))
        else:
            heapq.heappush(events, (moment + wait, arrivals, slept + wait))
        arrivals += 1
    return grants, given_back, longest


@pytest.mark.parametrize("lead_slots", [1, 2, 4, 8])
def test_a_few_slots_of_lead_keep_the_budget_saturated_without_giving_slots_back(lead_slots: int) -> None:
    minutes = 10
    grants, given_back, longest = simulate(lead_slots=lead_slots, seconds=minutes * 60.0)

    # The burst once, then 98 a minute: every slot the pacing allows, none lost to a push that gave up.
    assert grants >= 98 * minutes
    assert given_back == 0
    # No worker slot sleeps on the limiter longer than the bulk wait allows (a few slot intervals).
    assert longest <= bulk_wait(default_account(Settings()), lead_slots)
