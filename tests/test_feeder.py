"""The feeder hands the queue only what the budget serves next: priority first, bulk bounded and shared fairly.

Grants are counted, never timed: each test runs feeder passes against a real store (SQLite and PostgreSQL) with a
dispatcher that records what it was handed, and converges rows by hand between passes as workers would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.sync_helpers import SOURCE, sync_world
from worker.feeder import AccountBudget, budget_status, fair_shares, feed_account, hand_on
from worker.state import DesiredRow, Store, utcnow

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# One request a second, a ten-second horizon and a lead of ten slots: ten pushes on their way at most.
ACCOUNT = AccountBudget("default", rate=1.0, sources=("big", "small"))
HORIZON = 10.0
LEAD_SLOTS = 10
CAPACITY = 10


@dataclass
class RecordingDispatcher:
    handed: list[tuple[str, tuple[str, ...], bool]] = field(default_factory=list)
    refuse: bool = False

    def push(self, source: str, product_ids: Sequence[str], *, priority: bool = False, force: bool = False) -> bool:
        self.handed.append((source, tuple(product_ids), priority))
        return not self.refuse

    def count(self, *, source: str | None = None, priority: bool | None = None) -> int:
        return sum(
            len(ids)
            for src, ids, prio in self.handed
            if (source is None or src == source) and (priority is None or prio == priority)
        )


def rows(source: str, count: int, start: int = 0) -> list[DesiredRow]:
    return [
        DesiredRow(source, str(n), f"{source}-{n}", {"externalId": f"{source}-{n}"}, f"h{n}", T0)
        for n in range(start, start + count)
    ]


def feed(store: Store, dispatcher: RecordingDispatcher, now: datetime | None = None) -> None:
    feed_account(
        store,
        dispatcher,
        ACCOUNT,
        horizon=HORIZON,
        lead_slots=LEAD_SLOTS,
        requeue_after=60,
        priority_batch=500,
        now=now or utcnow(),
    )


def converge_handed(store: Store, dispatcher: RecordingDispatcher) -> None:
    """What the workers do with the messages: push each row and record success."""
    for source, ids, _ in dispatcher.handed:
        for product_id in ids:
            claim = store.claim(source, product_id, lease_seconds=60)
            if claim is not None:
                store.record_success(claim)
    dispatcher.handed.clear()


@pytest.mark.parametrize(
    ("room", "waiting", "expected"),
    [
        (10, {"big": 1000, "small": 3}, {"big": 7, "small": 3}),
        (10, {"a": 100, "b": 100}, {"a": 5, "b": 5}),
        (3, {"a": 100, "b": 100, "c": 100, "d": 100}, {"a": 1, "b": 1, "c": 1, "d": 0}),
        (10, {"a": 2, "b": 0}, {"a": 2, "b": 0}),
        (0, {"a": 5}, {"a": 0}),
    ],
    ids=["small-takes-what-it-needs", "even", "fewer-slots-than-sources", "less-waiting-than-room", "no-room"],
)
def test_fair_shares_split_the_room_evenly_and_pass_on_what_a_source_cannot_use(
    room: int, waiting: dict[str, int], expected: dict[str, int]
) -> None:
    assert fair_shares(room, waiting) == expected


def test_a_single_free_slot_goes_to_the_source_with_the_fewest_pushes_on_their_way() -> None:
    waiting = {"big": 1000, "small": 50}

    assert fair_shares(1, waiting, {"big": 9, "small": 8}) == {"big": 0, "small": 1}
    assert fair_shares(1, waiting, {"big": 8, "small": 9}) == {"big": 1, "small": 0}
    assert fair_shares(4, waiting, {"big": 10}) == {"big": 0, "small": 4}


def test_slot_by_slot_passes_still_share_evenly(store: Store) -> None:
    store.write_desired(rows("big", 1000))
    store.write_desired(rows("small", 1000, start=5000))
    dispatcher = RecordingDispatcher()
    feed(store, dispatcher)
    granted = {"big": 0, "small": 0}

    for _ in range(40):
        # One push finishes, one slot frees, one pass hands it out: the way passes go under saturation.
        source, ids, _ = dispatcher.handed.pop(0)
        claim = store.claim(source, ids[0], lease_seconds=60)
        assert claim is not None
        store.record_success(claim)
        if len(ids) > 1:
            dispatcher.handed.insert(0, (source, ids[1:], False))
        before = {name: dispatcher.count(source=name) for name in granted}
        feed(store, dispatcher)
        for name in granted:
            granted[name] += dispatcher.count(source=name) - before[name]

    assert granted == {"big": 20, "small": 20}


def test_bulk_work_is_handed_over_only_up_to_what_the_budget_serves_in_the_horizon(store: Store) -> None:
    store.write_desired(rows("big", 100))
    dispatcher = RecordingDispatcher()

    feed(store, dispatcher)
    first = dispatcher.count()
    feed(store, dispatcher)

    assert first == CAPACITY
    assert dispatcher.count() == CAPACITY, "nothing more while the first ones are on their way"
    assert store.in_flight(["big"], requeue_after=60) == CAPACITY


def test_in_flight_pushes_never_exceed_the_bound_across_a_whole_sync(store: Store) -> None:
    store.write_desired(rows("big", 95))
    dispatcher = RecordingDispatcher()
    most_in_flight = passes = 0

    while store.unconverged_count("big") and passes < 50:
        feed(store, dispatcher)
        most_in_flight = max(most_in_flight, store.in_flight(["big"], requeue_after=60))
        converge_handed(store, dispatcher)
        passes += 1

    assert store.unconverged_count("big") == 0
    assert most_in_flight == CAPACITY
    assert passes == 10  # 95 rows at 10 per pass


def test_a_small_source_gets_its_fair_share_beside_a_big_one(store: Store) -> None:
    store.write_desired(rows("big", 1000))
    store.write_desired(rows("small", 12))
    dispatcher = RecordingDispatcher()
    passes = 0

    while store.unconverged_count("small") and passes < 10:
        feed(store, dispatcher)
        converge_handed(store, dispatcher)
        passes += 1

    # 12 rows at half of 10 per pass: three passes, not the 100 it would take behind the big source's backlog.
    assert passes == 3
    assert store.unconverged_count("big") == 1000 - 5 - 5 - 8


def test_priority_rows_go_first_on_the_priority_queue_and_take_their_room_from_bulk(store: Store) -> None:
    store.write_desired(rows("big", 100))
    store.write_desired(rows("small", 3, start=500), priority=True)
    store.clear_enqueued("small", ["500", "501", "502"])  # as if their first message was lost with the broker
    dispatcher = RecordingDispatcher()

    feed(store, dispatcher)

    assert dispatcher.handed[0] == ("small", ("500", "501", "502"), True)
    assert dispatcher.count(priority=False) == CAPACITY - 3


def test_a_lost_message_is_fed_again_once_it_counts_as_lost(store: Store) -> None:
    store.write_desired(rows("big", 3))
    dispatcher = RecordingDispatcher()
    feed(store, dispatcher)
    dispatcher.handed.clear()

    feed(store, dispatcher, now=utcnow() + timedelta(seconds=30))
    soon = dispatcher.count()
    feed(store, dispatcher, now=utcnow() + timedelta(seconds=61))

    assert soon == 0
    assert dispatcher.count() == 3


def test_pushes_a_dead_broker_refused_are_fed_again_on_the_next_pass(store: Store) -> None:
    store.write_desired(rows("big", 3))
    dispatcher = RecordingDispatcher(refuse=True)
    feed(store, dispatcher)
    dispatcher.refuse = False
    dispatcher.handed.clear()

    feed(store, dispatcher)

    assert dispatcher.count() == 3


def test_status_shows_per_account_what_waits_and_when_it_converges(tmp_path: Path) -> None:
    with sync_world(tmp_path, catalog_rate_limit="600/minute", catalog_burst=2) as world:
        store = world.runtime.store
        store.write_desired(rows(SOURCE, 30))
        store.write_desired(rows(SOURCE, 2, start=100), priority=True)
        world.runtime.limiter.acquire()

        [status] = budget_status(world.runtime)

    assert status.account == "default"
    assert (status.waiting_priority, status.waiting_bulk) == (2, 30)
    assert status.in_flight == 2, "the priority rows were handed to the queue as they were written"
    assert status.limit == pytest.approx(10.0)
    # Paced just under the limit (a burst of 2 within each minute), so 32 products take a little over 3.2 s.
    assert status.converges_in == pytest.approx(32 / (10 - 2 / 60))
    assert status.used_this_minute is not None
    assert status.used_this_minute + (status.used_last_minute or 0) >= 1


@pytest.mark.parametrize(
    ("rate", "horizon", "lead_slots", "expected"),
    [
        (98 / 60, 10.0, 4, 4),  # the vendor's default pacing: the horizon would allow 17, the lead hands 4
        (1.0, 2.0, 4, 2),  # a horizon shorter than the lead bounds it
        (1 / 3600, 10.0, 4, 1),  # one request an hour: still one push on its way
        (980 / 60, 10.0, 4, 9),  # 16 slots a second: the lead covers the half second a push takes to hand on
    ],
    ids=["lead-binds", "horizon-binds", "at-least-one", "fast-account"],
)
def test_capacity_is_the_next_few_slots_bounded_by_the_horizon(
    rate: float, horizon: float, lead_slots: int, expected: int
) -> None:
    assert AccountBudget("a", rate=rate, sources=("s",)).capacity(horizon, lead_slots) == expected


def test_every_finished_push_hands_on_the_next_so_the_lead_stays_full_without_reconcile(tmp_path: Path) -> None:
    # A minute's budget of 60 (paced at 58): the lead is the three slots asked for, not a second's worth.
    with sync_world(tmp_path, catalog_rate_limit="60/minute", catalog_burst=2, push_lead_slots=3) as world:
        store = world.runtime.store
        store.write_desired(rows(SOURCE, 50))
        dispatcher = RecordingDispatcher()
        first = hand_on(world.runtime, dispatcher, SOURCE)
        in_flight = []

        for _ in range(20):
            # A worker finishes the oldest push handed, then hands on: one reconcile-free pass per push.
            source, ids, _ = dispatcher.handed.pop(0)
            claim = store.claim(source, ids[0], lease_seconds=60)
            assert claim is not None
            store.record_success(claim)
            report = hand_on(world.runtime, dispatcher, source)
            assert report.bulk == {SOURCE: 1}
            in_flight.append(store.in_flight([SOURCE], requeue_after=60))

        assert first.bulk == {SOURCE: 3}
        assert in_flight == [3] * 20
        assert store.unconverged_count(SOURCE) == 50 - 20


def test_a_push_that_gave_its_slot_back_is_handed_on_when_its_slot_comes(tmp_path: Path) -> None:
    with sync_world(tmp_path, catalog_rate_limit="60/minute", catalog_burst=2, push_lead_slots=1) as world:
        store = world.runtime.store
        store.write_desired(rows(SOURCE, 2))
        dispatcher = RecordingDispatcher()
        hand_on(world.runtime, dispatcher, SOURCE)
        [(source, (product_id,), _)] = dispatcher.handed
        claim = store.claim(source, product_id, lease_seconds=60)
        assert claim is not None
        slot = utcnow() + timedelta(seconds=5)
        # What push records when our own limiter refused within the bulk wait: due at the slot it named.
        store.record_failure(claim, code="RATE_LIMITED", message="budget spent", retry_at=slot, max_attempts=8)
        dispatcher.handed.clear()

        hand_on(world.runtime, dispatcher, SOURCE)
        before_slot = list(dispatcher.handed)
        dispatcher.handed.clear()
        other_id = "1" if product_id == "0" else "0"
        other = store.claim(SOURCE, other_id, lease_seconds=60)
        assert other is not None
        store.record_success(other)
        hand_on(world.runtime, dispatcher, SOURCE, now=slot)

    # It no longer counts as on its way: the room went to the other row at once, and it comes back at its slot.
    assert before_slot == [(SOURCE, (other_id,), False)]
    assert dispatcher.handed == [(SOURCE, (product_id,), False)]
