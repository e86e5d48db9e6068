"""The webhook batcher: applies verified deliveries to the state database, publishes their pushes, answers them,
then remembers their delivery ids.

Database work and publishing are blocking, so they never run on the event loop: verified events go to a committer
thread, which applies whatever has queued up as one batch per source (one read, one upsert: `commit`), then to a
publisher thread, which publishes the batch's pushes on one producer, answers its requests and records its delivery
ids in one insert (`publish`). Alone, a delivery is a batch of one; under load a statement and a commit serve many,
and one batch's database round trips overlap the previous one's publishing, which is what lets one process take
hundreds of deliveries a second on a small machine.

The delivery id is remembered only after the row is committed, and after the answer, to spare it a commit. If the
database fails midway the answer is 503 and nothing was remembered, so the shop's retry is processed rather than
dropped as a replay; processing a delivery twice is harmless (an unchanged hash writes nothing, the store refuses
older rows), so neither is a re-delivery racing the remembering. What each event asks for is decided by
`worker.webhook_decision.decide`, without touching the database.

Pushes go to `push.priority`; a broker that is down is logged by the dispatcher and the answer is still 200 (the row
is committed and `reconcile` delivers it). A partial product has no row to fall back on, so a broker that cannot
take its `sync_product` task makes the answer 503 and the shop retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.exc import DataError, InterfaceError, OperationalError, SQLAlchemyError

from config.sources import SourceConfig
from connectors.base import WebhookEvent
from worker.state import DELETED, DesiredRow
from worker.webhook_decision import PUSHED, Answered, Delete, Outcome, Refetch, Result, decide

if TYPE_CHECKING:
    from worker.operations import Dispatcher
    from worker.runtime import Runtime

log = logging.getLogger(__name__)

# Deliveries applied together at most: bounded so one statement stays well under SQLite's variable limit.
MAX_BATCH = 200
# How long closing waits for the committer to finish what is queued.
COMMITTER_STOP_TIMEOUT = 30.0

_DATABASE_DOWN = "state database unavailable"
# Errors that say the database is unreachable (every delivery of a batch would fail alike), and errors that say it
# refused one value (only the delivery carrying it fails).
_CONNECTION_ERRORS = (OperationalError, InterfaceError)
_DATA_ERRORS = (DataError, ValueError)
_QUEUE_DOWN = "queue unavailable"

# Publishes the `sync_product` task of a partial payload: (source, product id).
Fetch = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Pending:
    """A verified event waiting for its batch, and who waits for its answer."""

    source: SourceConfig
    event: WebhookEvent
    # A thread waits on `future`, a coroutine on `waiter`.
    future: Future[Result] | None = None
    waiter: asyncio.Future[Result] | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """A group whose rows are committed, on its way to the publisher: pushes to send, answers to give, delivery
    ids to remember."""

    group: list[Pending]
    results: list[Result]
    pushes: list[str]
    processed: list[str]


class Batcher:
    """The committer and publisher threads (started with the first delivery) and the two steps they run.

    `runtime` and `dispatcher` are called when first needed (the app resolves the process's own lazily); `fetch`
    None publishes `sync_product` on Celery.
    """

    def __init__(
        self,
        runtime: Callable[[], Runtime],
        dispatcher: Callable[[], Dispatcher],
        *,
        fetch: Fetch | None,
        clock: Callable[[], datetime],
    ) -> None:
        self._runtime = runtime
        self._dispatcher = dispatcher
        self._fetch = fetch or _celery_fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self._applied: queue.SimpleQueue[Applied | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        # Delivery ids applied but not yet remembered in the database: a re-delivery meanwhile is still a replay.
        self._unremembered: set[tuple[str, str]] = set()

    def enqueue(self, pending: Pending) -> None:
        """Queue a verified event for the committer; its future or waiter gets the answer once it is published."""
        with self._lock:
            if not self._threads:
                self._threads = [
                    threading.Thread(target=self._commit_loop, name="webhook-committer", daemon=True),
                    threading.Thread(target=self._publish_loop, name="webhook-publisher", daemon=True),
                ]
                for thread in self._threads:
                    thread.start()
        self._queue.put(pending)

    def close(self) -> None:
        """Finish what is queued, then stop the committer and the publisher."""
        with self._lock:
            threads, self._threads = self._threads, []
        if threads:
            self._queue.put(None)
            for thread in threads:
                thread.join(COMMITTER_STOP_TIMEOUT)

    # ---- the two threads -------------------------------------------------------------------------------------

    def _commit_loop(self) -> None:
        """Apply whatever queued up while the previous batch was being written, then hand it to the publisher.

        Under load one read, one write and one remember serve many deliveries (a statement and a commit, not the
        rows, are what cost); a delivery that arrives alone waits for nobody. Publishing runs on its own thread,
        so the next batch's database round trips overlap this batch's publishing.
        """
        while True:
            first = self._queue.get()
            if first is None:
                self._applied.put(None)
                return
            batch = [first]
            stopping = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            by_source: dict[str, list[Pending]] = {}
            for pending in batch:
                by_source.setdefault(pending.source.name, []).append(pending)
            for group in by_source.values():
                self._applied.put(self.commit(group))
            if stopping:
                self._applied.put(None)
                return

    def _publish_loop(self) -> None:
        while True:
            applied = self._applied.get()
            if applied is None:
                return
            self.publish(applied)

    # ---- the two steps ---------------------------------------------------------------------------------------

    def commit(self, group: list[Pending]) -> Applied:
        """Write the rows of one source's group and commit; the answers are kept for `publish`. Every delivery gets
        an answer, whatever goes wrong."""
        source = group[0].source
        events = [pending.event for pending in group]
        try:
            results, pushes = self._write(source, events)
        except Exception as exc:  # whatever went wrong, every waiting request gets an answer
            return self._failed(group, exc)
        processed = _processed(events, results)
        with self._lock:
            self._unremembered.update((source.name, event_id) for event_id in processed)
        return Applied(group, results, pushes, processed)

    def publish(self, applied: Applied) -> None:
        """Publish a committed group's pushes, answer its requests, then remember its delivery ids.

        Remembered after answering: the rows are committed, so nothing is lost if this fails, and a re-delivery
        in between is still recognized (`_unremembered`), so the answer does not wait for one more commit.
        """
        source = applied.group[0].source.name
        if applied.pushes:
            try:
                if not self._dispatcher().push(source, applied.pushes, priority=True):
                    self._runtime().store.clear_enqueued(source, applied.pushes)
            except Exception:  # the dispatcher logs a dead broker itself; this is anything else
                log.exception("webhook %s: publishing %d push(es) failed", source, len(applied.pushes))
        _answer(list(zip(applied.group, applied.results, strict=True)))
        try:
            self._remember(source, applied.processed)
        except SQLAlchemyError as exc:
            log.warning(
                "webhook %s: could not record %d delivery ids (%s); a re-delivery will be applied again",
                source,
                len(applied.processed),
                type(exc).__name__,
            )
        finally:
            with self._lock:
                self._unremembered.difference_update((source, event_id) for event_id in applied.processed)

    def _failed(self, group: list[Pending], exc: Exception) -> Applied:
        """The answers to a group whose write failed. Unless the database is unreachable, the deliveries are applied
        again one by one, so one the database refuses (a value it cannot store, a bug it triggers) does not cost its
        neighbours their answer."""
        source = group[0].source
        topics = [pending.event.topic for pending in group]
        if len(group) > 1 and not isinstance(exc, _CONNECTION_ERRORS):
            return self._commit_one_by_one(group)
        if isinstance(exc, _DATA_ERRORS):
            log.warning(
                "webhook %s: the state database refused a delivery (%s); answered 400", source.name, type(exc).__name__
            )
            return Applied(group, [Result(Outcome.MALFORMED, t, "unstorable_payload") for t in topics], [], [])
        if isinstance(exc, SQLAlchemyError):
            log.error(
                "webhook %s: state database unavailable (%s); answered 503 to %d deliveries so the shop retries",
                source.name,
                type(exc).__name__,
                len(group),
            )
            return Applied(group, [Result(Outcome.UNAVAILABLE, t, _DATABASE_DOWN) for t in topics], [], [])
        log.error("webhook %s: unexpected error applying %d deliveries", source.name, len(group), exc_info=exc)
        return Applied(group, [Result(Outcome.UNAVAILABLE, t) for t in topics], [], [])

    def _commit_one_by_one(self, group: list[Pending]) -> Applied:
        parts = [self.commit([pending]) for pending in group]
        results = [result for part in parts for result in part.results]
        # The failed attempt may have committed some rows before it broke; applied again they read "unchanged",
        # yet their push was never sent. Pushing a converged row costs nothing, so every applied product is pushed.
        pushes = [
            pending.event.product_id
            for pending, result in zip(group, results, strict=True)
            if pending.event.product_id is not None and result.outcome in (*PUSHED, Outcome.UNCHANGED)
        ]
        return Applied(
            group, results, list(dict.fromkeys(pushes)), [event_id for part in parts for event_id in part.processed]
        )

    # ---- the database ----------------------------------------------------------------------------------------

    def _write(self, source: SourceConfig, events: Sequence[WebhookEvent]) -> tuple[list[Result], list[str]]:
        """The answer to each event of one source, in order, as if each had come alone, and the products to push.

        Upserts are written together; a product listed twice is written in two rounds, in arrival order, so the
        store's ordering guard judges each against the other, and upserts that arrived before a deletion are
        written before it. Nothing is remembered or published here: both come after the rows are committed.
        """
        store = self._runtime().store
        now = self._clock()
        seen, state = self._look_up(source.name, events, now)
        results: list[Result | None] = [None] * len(events)
        upserts: list[tuple[int, DesiredRow]] = []
        this_batch: set[str] = set()

        def write_upserts() -> None:
            for round_ in _rounds(upserts):
                changed_ids = set(store.write_desired([row for _, row in round_], priority=True).changed_ids)
                for index, row in round_:
                    if row.product_id in changed_ids:
                        outcome = Outcome.UPDATED
                        state[row.product_id] = (row.updated_at, row.content_hash)
                    elif state.get(row.product_id, (None, None))[1] == row.content_hash:
                        outcome = Outcome.UNCHANGED
                    else:
                        # Older than the stored row, or than a concurrent writer's (the store's guard refused it).
                        outcome = Outcome.STALE
                    results[index] = Result(outcome, events[index].topic)
            upserts.clear()

        for index, event in enumerate(events):
            assert event.product_id is not None
            replay = event.event_id is not None and (event.event_id in seen or event.event_id in this_batch)
            if event.event_id is not None and not replay:
                this_batch.add(event.event_id)
            if event.topic == "delete" and not replay:
                # A deletion is judged against the upserts that arrived before it, so those are written first.
                write_upserts()
            decision = decide(
                event, source, replay=replay, stored_at=state.get(event.product_id, (None, None))[0], now=now
            )
            if isinstance(decision, Answered):
                results[index] = decision.result
            elif isinstance(decision, Delete):
                changed = store.mark_deleted(
                    source.name,
                    decision.product_id,
                    updated_at=decision.at,
                    external_id=decision.external_id,
                    account=source.account,
                )
                if changed:
                    state[decision.product_id] = (decision.at, DELETED)
                results[index] = Result(Outcome.DELETED if changed else Outcome.STALE, event.topic)
            elif isinstance(decision, Refetch):
                results[index] = self._fetch_one(source.name, decision.product_id, event.topic)
            else:
                upserts.append((index, decision.row))
        write_upserts()
        final = [result or Result(Outcome.UNAVAILABLE) for result in results]
        pushes = [
            event.product_id
            for event, result in zip(events, final, strict=True)
            if result.outcome in PUSHED and event.product_id is not None
        ]
        return final, list(dict.fromkeys(pushes))

    def _look_up(
        self, source: str, events: Sequence[WebhookEvent], now: datetime
    ) -> tuple[set[str], dict[str, tuple[datetime | None, str]]]:
        """(the delivery ids already processed, {product id: (stored `source_updated_at`, desired hash)}) in one
        short read."""
        event_ids = list({event.event_id for event in events if event.event_id is not None})
        product_ids = list({event.product_id for event in events if event.product_id is not None})
        # Ids applied but not yet recorded are read first: the publisher records an id, then forgets it here, so one
        # of the two reads sees it whenever the other does not.
        with self._lock:
            pending = {event_id for event_id in event_ids if (source, event_id) in self._unremembered}
        seen, stored = self._runtime().store.delivery_context(source, event_ids, product_ids, now=now)
        return seen | pending, stored

    def _remember(self, source: str, event_ids: Sequence[str]) -> None:
        """Record processed delivery ids in one statement (an id already there, expired or not, stays as is)."""
        runtime = self._runtime()
        keep = timedelta(days=runtime.settings.webhook_dedupe_days)
        runtime.store.remember_deliveries(source, event_ids, now=self._clock(), keep=keep)

    def _fetch_one(self, source: str, product_id: str, topic: str) -> Result:
        try:
            self._fetch(source, product_id)
        except Exception as exc:  # kombu raises several unrelated types for a dead broker
            log.error(
                "webhook %s: could not enqueue sync_product for %s (%s); answered 503 so the shop retries",
                source,
                product_id,
                type(exc).__name__,
            )
            return Result(Outcome.UNAVAILABLE, topic, _QUEUE_DOWN)
        return Result(Outcome.FETCH, topic)


def _processed(events: Sequence[WebhookEvent], results: Sequence[Result]) -> list[str]:
    """The delivery ids to remember: every delivery applied, whatever its outcome, but no replay or failure."""
    return [
        event.event_id
        for event, result in zip(events, results, strict=True)
        if event.event_id is not None and result.outcome not in (Outcome.REPLAY, Outcome.UNAVAILABLE)
    ]


def _answer(answers: list[tuple[Pending, Result]]) -> None:
    """Resolve the futures of a batch: one wake-up per event loop (a cross-thread call is a system call)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Result], Result]]] = {}
    for pending, result in answers:
        if pending.waiter is not None:
            by_loop.setdefault(pending.waiter.get_loop(), []).append((pending.waiter, result))
        elif pending.future is not None:
            pending.future.set_result(result)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits for these answers
            loop.call_soon_threadsafe(_resolve, items)


def _resolve(items: list[tuple[asyncio.Future[Result], Result]]) -> None:
    for future, result in items:
        if not future.done():  # the client went away and its request was cancelled
            future.set_result(result)


def _rounds(upserts: list[tuple[int, DesiredRow]]) -> list[list[tuple[int, DesiredRow]]]:
    """Split upserts so a product appears at most once per round, keeping arrival order."""
    rounds: list[list[tuple[int, DesiredRow]]] = []
    depth: dict[str, int] = {}
    for item in upserts:
        level = depth.get(item[1].product_id, 0)
        depth[item[1].product_id] = level + 1
        if level == len(rounds):
            rounds.append([])
        rounds[level].append(item)
    return rounds


def _celery_fetch(source: str, product_id: str) -> None:
    from worker.celery_app import PUBLISH_RETRY_POLICY, QUEUE_PRIORITY
    from worker.tasks import sync_product_task

    sync_product_task.apply_async((source, product_id), queue=QUEUE_PRIORITY, retry_policy=PUBLISH_RETRY_POLICY)
