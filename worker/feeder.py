"""Feeding the queue just in time: the state database is the queue, the broker carries only what the budget serves
in the next few seconds.

The catalog allows an account 100 requests a minute. Publishing every changed product of a 100,000-product sync at
once would park 100,000 messages in the broker for 17 hours, put a webhook's push behind them on a broker that does
not order queues (RabbitMQ), and leave worker slots asleep on the limiter. Instead, each `feed` pass (after every page
a sync writes, and on every reconcile tick) looks at each account and hands the queue:

1. every due **priority** row (a webhook, an admin command) of the account's sources, on `push.priority`: few, and
   the limiter's reserve serves them ahead of bulk work;
2. then **bulk** rows, oldest change first, only up to the account's capacity: its next `push_lead_slots` budget
   slots (never more than it serves in `push_horizon` seconds), minus the pushes already on their way
   (`Store.in_flight`), so the broker's depth stays bounded whatever the size of the sync, and a handed push finds
   its slot within the wait a bulk call allows itself (`bulk_wait`) instead of giving its worker slot back;
3. shared fairly: each free slot goes to the source with bulk work waiting that has the fewest pushes on their way,
   so every source holds an even share of the capacity whatever the timing of the passes, and what a source cannot
   use goes to the others: a 100-product shop converges in its fair time beside a 100,000-product one.

Just in time: the capacity is only a few slots, so a pass every few seconds would leave the budget idle between
passes. Every push that finishes therefore hands its account's next one on (`hand_on`): the pushes on their way stay
at the capacity, each one waiting at most a few slot intervals for the budget, and the reconcile ticks only restart
the chain (after an idle spell, a broker outage, a lost message).

A message lost with the broker, or a worker killed mid-push, leaves its row stamped `enqueued_at`; after
`requeue_after` seconds the row counts as lost and is fed again. Because the queue is short, that delay can be short
too. Two feeders running at once (a sync and a reconcile tick) may together exceed the capacity by one pass; the
bound is on the order of the capacity, not the backlog.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from config.accounts import DEFAULT_ACCOUNT
from worker.ratelimit import Grants, bulk_lead, pacing
from worker.state import Store, utcnow

if TYPE_CHECKING:
    from worker.operations import Dispatcher
    from worker.runtime import Runtime

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class AccountBudget:
    """One catalog account as the feeder sees it: its steady rate and the sources that write to it."""

    name: str
    rate: float
    sources: tuple[str, ...]

    def capacity(self, horizon: float, lead_slots: int) -> int:
        """Pushes on their way at once: the account's next budget slots (`bulk_lead`), but no more than its budget
        serves in the next `horizon` seconds (at least one)."""
        return max(1, min(bulk_lead(self.rate, lead_slots), math.ceil(self.rate * horizon)))


@dataclass(slots=True)
class FeedReport:
    priority: int = 0
    bulk: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.priority + sum(self.bulk.values())


def fair_shares(room: int, waiting: Mapping[str, int], in_flight: Mapping[str, int] | None = None) -> dict[str, int]:
    """Give `room` free slots to sources with `waiting[source]` rows due: each slot to the source with the fewest
    pushes on their way (`in_flight` plus what it was given so far), until it has no row left (max-min fairness by
    water-filling). Counting what is already in flight keeps shares even when passes hand out one slot at a time.
    Deterministic: ties go to sources in name order."""
    shares = dict.fromkeys(waiting, 0)
    levels = [
        ((in_flight or {}).get(name, 0), name) for name, count in sorted(waiting.items()) if count > 0
    ]
    heapq.heapify(levels)
    while room > 0 and levels:
        level, name = heapq.heappop(levels)
        shares[name] += 1
        room -= 1
        if shares[name] < waiting[name]:
            heapq.heappush(levels, (level + 1, name))
    return shares


@dataclass(slots=True)
class _Taken:
    """Rows one pass took (and stamped as enqueued) for one account, not yet handed to the queue."""

    priority: list[tuple[str, list[str]]] = field(default_factory=list)
    bulk: list[tuple[str, list[str]]] = field(default_factory=list)


def _take(
    store: Store,
    account: AccountBudget,
    *,
    horizon: float,
    lead_slots: int,
    requeue_after: float,
    priority_batch: int,
    now: datetime,
) -> _Taken:
    taken = _Taken()
    sources = account.sources
    if not sources:
        return taken
    if priority_batch > 0:
        urgent = store.take_due(
            limit=priority_batch, requeue_after=requeue_after, now=now, sources=sources, priority=True
        )
        taken.priority.extend(_by_source(urgent).items())
    in_flight = store.in_flight_by_source(sources, requeue_after=requeue_after, now=now)
    room = account.capacity(horizon, lead_slots) - sum(in_flight.values())
    if room <= 0:
        return taken
    # A lone source needs no shares: the take below hands what is due, up to the room (one query less per pass,
    # and a pass runs after every push).
    waiting = (
        {sources[0]: room}
        if len(sources) == 1
        else store.due_counts(sources, requeue_after=requeue_after, now=now, limit=room)
    )
    for source, share in fair_shares(room, waiting, in_flight).items():
        if share <= 0:
            continue
        due = store.take_due(limit=share, requeue_after=requeue_after, now=now, source=source, priority=False)
        if due:
            taken.bulk.append((source, [product_id for _, product_id in due]))
    return taken


def _hand_over(store: Store, dispatcher: Dispatcher, taken: Sequence[_Taken]) -> FeedReport:
    """Priority batches first; then bulk pushes one product at a time, taking turns between sources and accounts.

    The queue is FIFO and a push holds its worker slot while it waits for its own account's next request: pushes
    grouped by account would put every slot behind one account's budget while the others' go unused."""
    report = FeedReport()
    for batch in taken:
        for source, ids in batch.priority:
            _dispatch(store, dispatcher, source, ids, priority=True)
            report.priority += len(ids)
    turns = [(source, iter(bulk_ids)) for batch in taken for source, bulk_ids in batch.bulk]
    while turns:
        still: list[tuple[str, Iterator[str]]] = []
        for source, remaining in turns:
            product_id = next(remaining, None)
            if product_id is None:
                continue
            _dispatch(store, dispatcher, source, [product_id], priority=False)
            report.bulk[source] = report.bulk.get(source, 0) + 1
            still.append((source, remaining))
        turns = still
    return report


def feed_account(
    store: Store,
    dispatcher: Dispatcher,
    account: AccountBudget,
    *,
    horizon: float,
    lead_slots: int,
    requeue_after: float,
    priority_batch: int,
    now: datetime | None = None,
) -> FeedReport:
    """One pass for one account: priority rows (up to `priority_batch`; 0 skips them), then bulk rows up to the
    account's capacity, shared fairly."""
    taken = _take(
        store,
        account,
        horizon=horizon,
        lead_slots=lead_slots,
        requeue_after=requeue_after,
        priority_batch=priority_batch,
        now=now or utcnow(),
    )
    return _hand_over(store, dispatcher, [taken])


def feed(runtime: Runtime, dispatcher: Dispatcher, *, now: datetime | None = None) -> FeedReport:
    """One feeder pass over every account of this deployment."""
    settings = runtime.settings
    moment = now or utcnow()
    taken = [
        _take(
            runtime.store,
            account,
            horizon=settings.push_horizon,
            lead_slots=settings.push_lead_slots,
            requeue_after=settings.requeue_after,
            priority_batch=settings.reconcile_batch,
            now=moment,
        )
        for account in accounts(runtime)
    ]
    report = _hand_over(runtime.store, dispatcher, taken)
    if report.total:
        log.info("fed %d priority and %d bulk push(es)", report.priority, sum(report.bulk.values()))
    return report


def hand_on(runtime: Runtime, dispatcher: Dispatcher, source: str, *, now: datetime | None = None) -> FeedReport:
    """After a push of `source` finished: one bulk pass for its account, which fills the room that push left, so the
    next slot of the budget has a push waiting for it without a reconcile tick. Priority rows are handed as they are
    written (and by reconcile when a message was lost): this pass, run after every push, skips looking for them."""
    settings = runtime.settings
    account = runtime.source(source).account
    budget = next(budget for budget in accounts(runtime) if budget.name == account)
    return feed_account(
        runtime.store,
        dispatcher,
        budget,
        horizon=settings.push_horizon,
        lead_slots=settings.push_lead_slots,
        requeue_after=settings.requeue_after,
        priority_batch=0,
        now=now,
    )


def accounts(runtime: Runtime) -> list[AccountBudget]:
    """The accounts this deployment writes to, each with its sources and its own steady rate."""
    by_account: dict[str, list[str]] = {}
    for name, source in sorted(runtime.sources.items()):
        by_account.setdefault(source.account, []).append(name)
    if not by_account:
        by_account[DEFAULT_ACCOUNT] = []
    return [
        AccountBudget(name, pacing(runtime.account(name))[0], tuple(sources))
        for name, sources in sorted(by_account.items())
    ]


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One account's budget as `status` shows it."""

    account: str
    limit: float  # the account's limit, requests per second
    rate: float  # what the limiter paces to, requests per second
    used_this_minute: int | None  # None when the limiter cannot be read (Redis down)
    used_last_minute: int | None
    in_flight: int
    waiting_priority: int
    waiting_bulk: int

    @property
    def backlog(self) -> int:
        return self.waiting_priority + self.waiting_bulk

    @property
    def converges_in(self) -> float:
        """Seconds until the current backlog has reached the catalog at this rate (one call per product)."""
        return self.backlog / self.rate


def budget_status(runtime: Runtime) -> list[BudgetStatus]:
    """Per account: the budget in use, what waits (priority and bulk), and when the backlog converges."""
    from ground.errors import RetryableError

    statuses = []
    for account in accounts(runtime):
        try:
            grants: Grants | None = runtime.limiter_for(account.name).grants()
        except RetryableError:
            grants = None
        waiting = runtime.store.waiting(account.sources)
        statuses.append(
            BudgetStatus(
                account=account.name,
                limit=runtime.account(account.name).rate_limit,
                rate=account.rate,
                used_this_minute=None if grants is None else grants.current,
                used_last_minute=None if grants is None else grants.previous,
                in_flight=runtime.store.in_flight(account.sources, requeue_after=runtime.settings.requeue_after),
                waiting_priority=waiting[True],
                waiting_bulk=waiting[False],
            )
        )
    return statuses


def _by_source(rows: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for source, product_id in rows:
        grouped.setdefault(source, []).append(product_id)
    return grouped


def _dispatch(store: Store, dispatcher: Dispatcher, source: str, ids: list[str], *, priority: bool) -> None:
    if not dispatcher.push(source, ids, priority=priority):
        # The broker refused them: the next pass may send them again at once.
        store.clear_enqueued(source, ids)
