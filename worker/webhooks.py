"""Webhook intake: the ASGI app behind `catalog-sync serve` (`POST /webhooks/{source}`, `GET /healthz` (liveness),
`GET /readyz` (readiness: the state database answers; the broker is reported), `GET /metrics`).

One delivery, in order (STYLE.md item 10: nothing is parsed before it is verified):

1. The source must exist, be a shop (feeds send no webhooks) and have a `webhook_secret`; otherwise 404, the same
   answer whatever was missing, so the endpoint does not tell which sources exist.
2. The body is read up to `webhook_max_body`: a larger `Content-Length` is refused before reading, a stream is
   counted while read; 413 either way, and nothing more is read.
3. The source's connector (built once per source) checks the HMAC over the raw bytes. Missing or wrong → 401 with
   one body. A request without a signature header still pays one HMAC per secret, so the answer's timing does not
   tell "missing" from "wrong".
4. A verified delivery the connector cannot read is 400 with a log line naming the source and reason; an unknown
   topic is acknowledged (200 `ignored`): retrying it cannot help, and a shop that keeps getting errors disables
   the webhook. The WooCommerce creation ping is 200.
5. A delivery id seen before (and not expired) → 200 `replay`, no work. An update older than the stored desired
   row (by the product's `updated_at`, or the shop's trigger time) → 200 `stale`. A deletion marks the row deleted,
   dated by Shopify's trigger time, or on arrival for WooCommerce (which sends no time) but never before the state
   we hold; a complete product becomes the desired row; a partial one (WooCommerce variable products and
   variations) is handed to the `sync_product` task, which fetches it.
6. The delivery id is remembered only *after* the row is committed (and after the answer, to spare it a commit).
   If the database fails midway the answer is 503 and nothing was remembered, so the shop's retry is processed
   rather than dropped as a replay; processing a delivery twice is harmless (an unchanged hash writes nothing, the
   store refuses older rows), so neither is a re-delivery racing the remembering.
7. A push is published on `push.priority`; a broker that is down is logged by the dispatcher and the answer is
   still 200 (the row is committed and `reconcile` delivers it). A partial product has no row to fall back on, so
   a broker that cannot take its `sync_product` task makes the answer 503 and the shop retries.

Database work and publishing are blocking, so they never run on the event loop: verified events go to a committer
thread, which applies whatever has queued up as one batch per source (one read, one upsert), then to a publisher
thread, which publishes the batch's pushes on one producer, answers its requests and records its delivery ids (one
insert). Alone, a delivery is a batch of one; under load a statement and a commit serve many, and one batch's
database round trips overlap the previous one's publishing, which is what lets one process take hundreds of
deliveries a second on a small machine. The answer comes after the commit and the publish, in milliseconds, with
no call to the shop or the catalog.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.exc import DataError, InterfaceError, OperationalError, SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from config.sources import SourceConfig
from connectors.base import Connector, WebhookEvent, product_id_problem
from ground.errors import InvalidSignature, SkippedProduct
from worker.logs import Throttle, configure_logging
from worker.plan import desired_row, external_id_for, skipped_row, source_time
from worker.source_metrics import QueueDepths, SourceStateCollector, celery_queue_depths
from worker.state import DELETED, DesiredRow, utcnow

if TYPE_CHECKING:
    from worker.operations import Dispatcher
    from worker.runtime import Runtime

log = logging.getLogger(__name__)
# One line per webhook request; its own logger so an operator can silence it by level without losing warnings.
access_log = logging.getLogger("catalog_sync.access")

# Source kinds that send webhooks; a feed is read on its schedule only.
WEBHOOK_KINDS = frozenset({"shopify", "shopify-rest", "shopify-storefront", "woocommerce"})
# The signature headers the connectors read: a request carrying none of them gets the timing padding.
SIGNATURE_HEADERS = ("x-shopify-hmac-sha256", "x-wc-webhook-signature")
# The key of the padding HMAC: any value works, it only has to cost what a real verification costs.
_PADDING_KEY = b"catalog-sync timing padding"
# An undated deletion of a row stamped later than our clock is placed just after that row's state.
DELETION_AFTER_STORED = timedelta(microseconds=1)
# Deliveries applied together at most: bounded so one statement stays well under SQLite's variable limit.
MAX_BATCH = 200
# How long closing the app waits for the committer to finish what is queued.
COMMITTER_STOP_TIMEOUT = 30.0
# Bodies up to this size are verified on the event loop (an HMAC and a JSON parse of a few KB take microseconds);
# larger ones on a worker thread, so a 2 MB body cannot stall other requests.
INLINE_VERIFY_MAX = 64 * 1024
# How long `/readyz` waits for the broker: a load balancer's probe must not hang on a dead one.
HEALTH_BROKER_TIMEOUT = 2.0
# Request latency buckets (seconds): deliveries answer in milliseconds; the tail shows a slow database or broker.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# The label of deliveries to a source name that is not configured: a path segment anyone can invent must not
# become a metric label.
UNKNOWN_SOURCE_LABEL = "_unknown"
# The topic label before a delivery is verified.
UNVERIFIED_TOPIC = "unverified"
# Refused-signature warnings per source: a burst of 10, then one a second; the rest are counted, not written.
REFUSAL_LOG_BURST = 10
REFUSAL_LOG_RATE = 1.0
# uvicorn's keep-alive: longer than a shop's gap between deliveries in a burst, shorter than a load balancer's idle
# timeout (commonly 60 s) so the server, not the balancer, closes idle connections.
KEEP_ALIVE_SECONDS = 30
# Seconds a sender is asked to wait when the server is at its limit of deliveries in flight.
RETRY_AFTER_SECONDS = 5

Fetch = Callable[[str, str], None]
BrokerCheck = Callable[[], None]


class Outcome(StrEnum):
    """What became of one request; the `outcome` label of the deliveries metric and the answer's body."""

    UPDATED = "updated"
    DELETED = "deleted"
    FETCH = "fetch"
    UNCHANGED = "unchanged"
    STALE = "stale"
    REPLAY = "replay"
    PING = "ping"
    IGNORED = "ignored"
    MALFORMED = "malformed"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    BAD_REQUEST = "bad_request"
    TOO_SLOW = "too_slow"
    THROTTLED = "throttled"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"


_STATUS: Mapping[Outcome, int] = {
    Outcome.MALFORMED: 400,
    Outcome.BAD_REQUEST: 400,
    Outcome.UNAUTHORIZED: 401,
    Outcome.NOT_FOUND: 404,
    Outcome.TOO_LARGE: 413,
    Outcome.TOO_SLOW: 408,
    Outcome.THROTTLED: 429,
    Outcome.OVERLOADED: 503,
    Outcome.UNAVAILABLE: 503,
}
# Refusals that tell the sender to come back later, with `Retry-After`.
_BUSY = frozenset({Outcome.THROTTLED, Outcome.OVERLOADED})
# Refusals after which the connection is closed: what is left of the request on the wire is not read.
_CLOSE = frozenset({Outcome.TOO_LARGE, Outcome.TOO_SLOW})
# Outcomes that changed a desired row and therefore send a push.
_PUSHED = frozenset({Outcome.UPDATED, Outcome.DELETED})


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    topic: str = UNVERIFIED_TOPIC
    detail: str | None = None

    @property
    def status(self) -> int:
        return _STATUS.get(self.outcome, 200)

    def body(self) -> dict[str, str]:
        if self.status >= 400:
            return {"error": self.detail or self.outcome.value}
        return {"outcome": self.outcome.value}


# One body per refusal, whatever exactly was wrong: an attacker learns nothing from the difference.
_UNAUTHORIZED = Result(Outcome.UNAUTHORIZED, detail="webhook signature missing or invalid")
_NOT_FOUND = Result(Outcome.NOT_FOUND, detail="no webhook endpoint for this source")


# ------------------------------------------------------------------------------------------------- the intake


_DATABASE_DOWN = "state database unavailable"
# Errors that say the database is unreachable (every delivery of a batch would fail alike), and errors that say it
# refused one value (only the delivery carrying it fails).
_CONNECTION_ERRORS = (OperationalError, InterfaceError)
_DATA_ERRORS = (DataError, ValueError)
_QUEUE_DOWN = "queue unavailable"


@dataclass(frozen=True, slots=True)
class _Applied:
    """A group whose rows are committed, on its way to the publisher: pushes to send, answers to give, delivery
    ids to remember."""

    group: list[_Pending]
    results: list[Result]
    pushes: list[str]
    processed: list[str]


@dataclass(frozen=True, slots=True)
class _Pending:
    source: SourceConfig
    event: WebhookEvent
    # A thread waits on `future` (`submit`), a coroutine on `waiter` (`submit_async`).
    future: Future[Result] | None = None
    waiter: asyncio.Future[Result] | None = None


class Intake:
    """Verification (on the request's side), and the committer and publisher threads that apply verified events.

    `runtime` None means the process's runtime (`get_runtime()`), resolved on first use; `dispatcher` None means
    the Celery dispatcher; `fetch` None publishes `sync_product` on Celery.
    """

    def __init__(
        self,
        runtime: Runtime | None = None,
        dispatcher: Dispatcher | None = None,
        *,
        fetch: Fetch | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._runtime = runtime
        self._dispatcher = dispatcher
        self._fetch = fetch
        self._clock = clock
        self._connectors: dict[str, Connector] = {}
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._applied: queue.SimpleQueue[_Applied | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        # Delivery ids applied but not yet remembered in the database: a re-delivery meanwhile is still a replay.
        self._unremembered: set[tuple[str, str]] = set()

    # ---- wiring ----------------------------------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            with self._lock:
                if self._runtime is None:
                    from worker.runtime import get_runtime

                    self._runtime = get_runtime()
        return self._runtime

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            from worker.tasks import dispatcher

            self._dispatcher = dispatcher
        return self._dispatcher

    @property
    def max_body(self) -> int:
        return self.runtime.settings.webhook_max_body

    def endpoint_source(self, name: str) -> SourceConfig | None:
        """The source behind `/webhooks/{name}`, or None when that endpoint does not exist."""
        source = self.runtime.sources.get(name)
        if source is None or source.kind not in WEBHOOK_KINDS or not _usable_secrets(source):
            return None
        return source

    def warm(self) -> None:
        """Resolve the runtime and build every webhook source's connector (at startup, off the event loop)."""
        if not any(self.endpoint_source(name) for name in self.runtime.sources):
            log.warning(
                "no source has a webhook endpoint: every POST /webhooks/... answers 404 (sources are read from %s; "
                "a shop source needs webhook_secret)",
                self.runtime.settings.config,
            )
        for name, source in self.runtime.sources.items():
            if self.endpoint_source(name) is not None:
                self._connector(source)
            elif source.kind in WEBHOOK_KINDS:
                log.warning(
                    "source %r has no webhook_secret: POST /webhooks/%s answers 404 until one is configured",
                    name,
                    name,
                )

    def close(self) -> None:
        """Finish what is queued, stop the committer and the publisher, close the connectors."""
        with self._lock:
            threads, self._threads = self._threads, []
        if threads:
            self._queue.put(None)
            for thread in threads:
                thread.join(COMMITTER_STOP_TIMEOUT)
        with self._lock:
            connectors, self._connectors = list(self._connectors.values()), {}
        for connector in connectors:
            connector.close()

    def _connector(self, source: SourceConfig) -> Connector:
        # Built once per source and kept: verification must not create an HTTP client per request.
        connector = self._connectors.get(source.name)
        if connector is None:
            with self._lock:
                connector = self._connectors.get(source.name)
                if connector is None:
                    from connectors import build_connector

                    connector = build_connector(source)
                    self._connectors[source.name] = connector
        return connector

    # ---- the request's side ----------------------------------------------------------------------------------

    def handle(self, source: SourceConfig, headers: Mapping[str, str], body: bytes) -> Result:
        """Verify and apply one delivery whose body is already bounded, waiting for its commit (blocking)."""
        verdict = self.verify(source, headers, body)
        if isinstance(verdict, Result):
            return verdict
        return self.submit(source, verdict).result()

    def verify(self, source: SourceConfig, headers: Mapping[str, str], body: bytes) -> Result | WebhookEvent:
        """Check the signature, then parse: the final answer for anything that needs no state, else the event to
        apply. `headers` have lower-case names. CPU only (an HMAC and a JSON parse), no I/O."""
        try:
            event = self._connector(source).verify_webhook(headers, body)
        except InvalidSignature:
            if not any(name in headers for name in SIGNATURE_HEADERS):
                _pad_timing(body, len(_usable_secrets(source)))
            return _UNAUTHORIZED
        except SkippedProduct as skip:
            return self._unusable(source, skip)
        if event.topic == "ping":
            return Result(Outcome.PING, "ping")
        if event.product_id is None or product_id_problem(event.product_id) is not None:
            log.warning(
                "webhook %s rejected: malformed_payload (%s event without a usable product id)",
                source.name,
                event.topic,
            )
            return Result(Outcome.MALFORMED, event.topic, "malformed_payload")
        return _clamped(event)

    def _unusable(self, source: SourceConfig, skip: SkippedProduct) -> Result | WebhookEvent:
        """A verified delivery the connector could not turn into an event."""
        if skip.reason == "unknown_topic":
            log.info("webhook %s ignored: %s", source.name, skip)
            return Result(Outcome.IGNORED, "unknown")
        if skip.product_id is None:
            log.warning("webhook %s rejected: %s (%s)", source.name, skip.reason, skip.detail)
            return Result(Outcome.MALFORMED, "unknown", skip.reason)
        # The product exists in the shop but this payload cannot be used as is (no title, an odd status, a
        # variation): the shop's own read is authoritative, and the planner records the skip with its date.
        log.info("webhook %s: %s; fetching the product instead", source.name, skip)
        return WebhookEvent(source=source.name, topic="upsert", product_id=skip.product_id)

    def submit(self, source: SourceConfig, event: WebhookEvent) -> Future[Result]:
        """Queue a verified event for the committer; the future holds its answer once it is committed."""
        future: Future[Result] = Future()
        self._enqueue(_Pending(source, event, future=future))
        return future

    async def submit_async(self, source: SourceConfig, event: WebhookEvent) -> Result:
        """`submit` for a coroutine: the committer wakes the event loop once per batch, not once per delivery."""
        waiter: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._enqueue(_Pending(source, event, waiter=waiter))
        return await waiter

    def _enqueue(self, pending: _Pending) -> None:
        with self._lock:
            if not self._threads:
                self._threads = [
                    threading.Thread(target=self._commit_loop, name="webhook-committer", daemon=True),
                    threading.Thread(target=self._publish_loop, name="webhook-publisher", daemon=True),
                ]
                for thread in self._threads:
                    thread.start()
        self._queue.put(pending)

    # ---- the committer and the publisher ---------------------------------------------------------------------

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
            by_source: dict[str, list[_Pending]] = {}
            for pending in batch:
                by_source.setdefault(pending.source.name, []).append(pending)
            for group in by_source.values():
                self._applied.put(self._commit_group(group))
            if stopping:
                self._applied.put(None)
                return

    def _commit_group(self, group: list[_Pending]) -> _Applied:
        source = group[0].source
        events = [pending.event for pending in group]
        try:
            results, pushes = self._write(source, events)
        except Exception as exc:  # whatever went wrong, every waiting request gets an answer
            return self._failed(group, exc)
        processed = _processed(events, results)
        with self._lock:
            self._unremembered.update((source.name, event_id) for event_id in processed)
        return _Applied(group, results, pushes, processed)

    def _failed(self, group: list[_Pending], exc: Exception) -> _Applied:
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
            return _Applied(group, [Result(Outcome.MALFORMED, t, "unstorable_payload") for t in topics], [], [])
        if isinstance(exc, SQLAlchemyError):
            log.error(
                "webhook %s: state database unavailable (%s); answered 503 to %d deliveries so the shop retries",
                source.name,
                type(exc).__name__,
                len(group),
            )
            return _Applied(group, [Result(Outcome.UNAVAILABLE, t, _DATABASE_DOWN) for t in topics], [], [])
        log.error("webhook %s: unexpected error applying %d deliveries", source.name, len(group), exc_info=exc)
        return _Applied(group, [Result(Outcome.UNAVAILABLE, t) for t in topics], [], [])

    def _commit_one_by_one(self, group: list[_Pending]) -> _Applied:
        parts = [self._commit_group([pending]) for pending in group]
        results = [result for part in parts for result in part.results]
        # The failed attempt may have committed some rows before it broke; applied again they read "unchanged",
        # yet their push was never sent. Pushing a converged row costs nothing, so every applied product is pushed.
        pushes = [
            pending.event.product_id
            for pending, result in zip(group, results, strict=True)
            if pending.event.product_id is not None and result.outcome in (*_PUSHED, Outcome.UNCHANGED)
        ]
        return _Applied(
            group, results, list(dict.fromkeys(pushes)), [event_id for part in parts for event_id in part.processed]
        )

    def _publish_loop(self) -> None:
        """Publish each committed group's pushes, answer its requests, then remember its delivery ids.

        Remembered after answering: the rows are committed, so nothing is lost if this fails, and a re-delivery
        in between is still recognized (`_unremembered`), so the answer does not wait for one more commit.
        """
        while True:
            applied = self._applied.get()
            if applied is None:
                return
            source = applied.group[0].source.name
            if applied.pushes:
                try:
                    if not self.dispatcher.push(source, applied.pushes, priority=True):
                        self.runtime.store.clear_enqueued(source, applied.pushes)
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

    def apply(self, source: SourceConfig, events: Sequence[WebhookEvent]) -> list[Result]:
        """Apply events of one source in this thread (write, remember, publish); their answers, in order."""
        results, pushes = self._write(source, events)
        self._remember(source.name, _processed(events, results))
        if pushes and not self.dispatcher.push(source.name, pushes, priority=True):
            self.runtime.store.clear_enqueued(source.name, pushes)
        return results

    def _write(self, source: SourceConfig, events: Sequence[WebhookEvent]) -> tuple[list[Result], list[str]]:
        """The answer to each event of one source, in order, as if each had come alone, and the products to push.

        Upserts are written together; a product listed twice is written in two rounds, in arrival order, so the
        store's ordering guard judges each against the other, and upserts that arrived before a deletion are
        written before it. Nothing is remembered or published here: both come after the rows are committed.
        """
        store = self.runtime.store
        seen, state = self._look_up(source.name, events)
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
            if event.event_id is not None and (event.event_id in seen or event.event_id in this_batch):
                log.debug("webhook %s: delivery %s already processed", source.name, event.event_id)
                results[index] = Result(Outcome.REPLAY, event.topic)
                continue
            if event.event_id is not None:
                this_batch.add(event.event_id)
            if event.topic == "delete":
                write_upserts()
            stored_at = state.get(event.product_id, (None, None))[0]
            if _older_than_stored(event, stored_at):
                results[index] = Result(Outcome.STALE, event.topic)
            elif event.topic == "delete":
                deleted_at = event.triggered_at or self._undated_deletion(stored_at)
                changed = store.mark_deleted(
                    source.name,
                    event.product_id,
                    updated_at=deleted_at,
                    external_id=_external_id(event.product_id, source),
                    account=source.account,
                )
                if changed:
                    state[event.product_id] = (deleted_at, DELETED)
                results[index] = Result(Outcome.DELETED if changed else Outcome.STALE, event.topic)
            elif event.product is None:
                results[index] = self._fetch_one(source.name, event.product_id, event.topic)
            else:
                upserts.append((index, _row(event, source)))
        write_upserts()
        final = [result or Result(Outcome.UNAVAILABLE) for result in results]
        pushes = [
            event.product_id
            for event, result in zip(events, final, strict=True)
            if result.outcome in _PUSHED and event.product_id is not None
        ]
        return final, list(dict.fromkeys(pushes))

    def _undated_deletion(self, stored_at: datetime | None) -> datetime:
        """When a deletion that carries no time of its own (WooCommerce's `{"id"}`) happened, for ordering.

        Shopify's trigger time orders a deletion against updates; WooCommerce sends none. The deletion is dated on
        arrival, so an update written before it that arrives late is stale; but never before the state we hold,
        which is dated by the shop's clock: a shop clock running ahead of ours must not make a deletion look older
        than the edit it follows.
        """
        now = self._clock()
        if stored_at is None or stored_at < now:
            return now
        return stored_at + DELETION_AFTER_STORED

    def _look_up(
        self, source: str, events: Sequence[WebhookEvent]
    ) -> tuple[set[str], dict[str, tuple[datetime | None, str]]]:
        """(the delivery ids already processed, {product id: (stored `source_updated_at`, desired hash)}) in one
        short read."""
        event_ids = list({event.event_id for event in events if event.event_id is not None})
        product_ids = list({event.product_id for event in events if event.product_id is not None})
        # Ids applied but not yet recorded are read first: the publisher records an id, then forgets it here, so one
        # of the two reads sees it whenever the other does not.
        with self._lock:
            pending = {event_id for event_id in event_ids if (source, event_id) in self._unremembered}
        seen, stored = self.runtime.store.delivery_context(source, event_ids, product_ids, now=self._clock())
        return seen | pending, stored

    def _remember(self, source: str, event_ids: Sequence[str]) -> None:
        """Record processed delivery ids in one statement (an id already there, expired or not, stays as is)."""
        keep = timedelta(days=self.runtime.settings.webhook_dedupe_days)
        self.runtime.store.remember_deliveries(source, event_ids, now=self._clock(), keep=keep)

    def _fetch_one(self, source: str, product_id: str, topic: str) -> Result:
        fetch = self._fetch or _celery_fetch
        try:
            fetch(source, product_id)
        except Exception as exc:  # kombu raises several unrelated types for a dead broker
            log.error(
                "webhook %s: could not enqueue sync_product for %s (%s); answered 503 so the shop retries",
                source,
                product_id,
                type(exc).__name__,
            )
            return Result(Outcome.UNAVAILABLE, topic, _QUEUE_DOWN)
        return Result(Outcome.FETCH, topic)

    # ---- health ----------------------------------------------------------------------------------------------

    def check_database(self) -> None:
        with self.runtime.store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))


def _processed(events: Sequence[WebhookEvent], results: Sequence[Result]) -> list[str]:
    """The delivery ids to remember: every delivery applied, whatever its outcome, but no replay or failure."""
    return [
        event.event_id
        for event, result in zip(events, results, strict=True)
        if event.event_id is not None and result.outcome not in (Outcome.REPLAY, Outcome.UNAVAILABLE)
    ]


def _answer(answers: list[tuple[_Pending, Result]]) -> None:
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


def _usable_secrets(source: SourceConfig) -> list[str]:
    return [secret.get_secret_value() for secret in source.webhook_secrets if secret.get_secret_value()]


def _pad_timing(body: bytes, secrets: int) -> None:
    """Spend what verification spends when a signature is present (one HMAC of the body per secret)."""
    for _ in range(max(secrets, 1)):
        hmac.compare_digest(hmac.new(_PADDING_KEY, body, hashlib.sha256).digest(), b"\0" * 32)


def _clamped(event: WebhookEvent) -> WebhookEvent:
    """The event with times from the future brought back to now: a trigger time of 2099 must not make every later
    genuine update of the product look stale."""
    triggered_at = source_time(event.triggered_at) if event.triggered_at is not None else None
    updated_at = source_time(event.updated_at) if event.updated_at is not None else None
    if triggered_at == event.triggered_at and updated_at == event.updated_at:
        return event
    return replace(event, triggered_at=triggered_at, updated_at=updated_at)


def _older_than_stored(event: WebhookEvent, stored_at: datetime | None) -> bool:
    """The event describes a product state older than the desired row (by its `updated_at` or trigger time)."""
    if stored_at is None:
        return False
    return any(moment is not None and moment < stored_at for moment in (event.updated_at, event.triggered_at))


def _external_id(product_id: str, source: SourceConfig) -> str | None:
    # A template that needs the handle cannot be filled from a deletion's bare id; the store then keeps the known
    # row's externalId (or the id, for a product it never saw).
    try:
        return external_id_for(product_id, None, source)
    except SkippedProduct:
        return None


def _row(event: WebhookEvent, source: SourceConfig) -> DesiredRow:
    assert event.product is not None
    try:
        return desired_row(event.product, source)
    except SkippedProduct as skip:
        log.info("webhook %s: %s", source.name, skip)
        row = skipped_row(skip, source, event.product.updated_at)
        if row is None:  # a skip always names the product here; kept for the type checker
            raise
        return row


def _celery_fetch(source: str, product_id: str) -> None:
    from worker.celery_app import PUBLISH_RETRY_POLICY, QUEUE_PRIORITY
    from worker.tasks import sync_product_task

    sync_product_task.apply_async((source, product_id), queue=QUEUE_PRIORITY, retry_policy=PUBLISH_RETRY_POLICY)


def celery_broker_check() -> None:
    """Raise unless the Celery broker accepts a connection (for Redis: the channel's PING)."""
    from worker.celery_app import app as celery

    options = {"socket_connect_timeout": HEALTH_BROKER_TIMEOUT, "socket_timeout": HEALTH_BROKER_TIMEOUT}
    with celery.connection_for_write(transport_options=options) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=HEALTH_BROKER_TIMEOUT)
        _ = conn.default_channel


# ---------------------------------------------------------------------------------------------------- metrics


class _ProductStatusCollector(Collector):
    """Rows by source and status, read from the state database when scraped: the push outcomes
    (synced, failed, pending, skipped, deleted) without a counter that every worker process would have to share."""

    def __init__(self, intake: Intake) -> None:
        self._intake = intake

    def collect(self) -> Iterable[GaugeMetricFamily]:
        products = GaugeMetricFamily(
            "catalog_sync_products", "Products in the state database by source and status.", labels=["source", "status"]
        )
        up = GaugeMetricFamily(
            "catalog_sync_state_database_up", "1 when the last scrape could read the state database."
        )
        try:
            counts = self._intake.runtime.store.status_counts()
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot read the state database (%s)", type(exc).__name__)
            up.add_metric([], 0)
            return [up]
        for source, statuses in sorted(counts.items()):
            for status, count in sorted(statuses.items()):
                products.add_metric([source, status], count)
        up.add_metric([], 1)
        return [products, up]


class _ProcessMetrics(Collector):
    """What this process's default registry holds: the work metrics (`worker.work_metrics`) of an embedded worker
    running in the same process, and the process's own (CPU, memory, file descriptors)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


class WebhookMetrics:
    """The app's own registry, so several apps in one process (tests) do not collide; with `process_metrics`
    (`run --embedded`, where the worker shares this process) it also serves the process's default registry."""

    def __init__(
        self, intake: Intake, queue_depths: QueueDepths | None = None, *, process_metrics: bool = False
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "catalog_sync_webhook_deliveries",
            "Webhook requests by source, topic and outcome.",
            ["source", "topic", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "catalog_sync_http_request_duration_seconds",
            "Time to answer a request, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_ProductStatusCollector(intake))
        self.registry.register(SourceStateCollector(lambda: intake.runtime, queue_depths or celery_queue_depths))
        if process_metrics:
            self.registry.register(_ProcessMetrics())

    def render(self) -> bytes:
        return generate_latest(self.registry)


# ------------------------------------------------------------------------------------------------------ the app


def create_app(
    runtime: Runtime | None = None,
    dispatcher: Dispatcher | None = None,
    *,
    fetch: Fetch | None = None,
    broker_check: BrokerCheck | None = None,
    refusal_throttle: Throttle | None = None,
    queue_depths: QueueDepths | None = None,
    process_metrics: bool = False,
) -> Starlette:
    """The webhook server's ASGI app.

    Defaults (all None) are what `catalog-sync serve` runs: the process runtime, the Celery dispatcher, the
    `sync_product` task for partial payloads, a ping of the Celery broker for `/readyz` and a throttle of
    refused-signature warnings of `REFUSAL_LOG_BURST` then `REFUSAL_LOG_RATE` a second per source, and the
    Celery broker's queue depths for `/metrics`. `process_metrics` adds this process's default registry to
    `/metrics`: `run --embedded` sets it, since its worker counts its catalog calls and pushes there.
    """
    intake = Intake(runtime, dispatcher, fetch=fetch)
    metrics = WebhookMetrics(intake, queue_depths, process_metrics=process_metrics)
    refusals = refusal_throttle or Throttle(REFUSAL_LOG_RATE, REFUSAL_LOG_BURST)
    check_broker = broker_check or celery_broker_check
    admission = _Admission()

    async def webhook(request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["source"]
        source = intake.endpoint_source(name)
        if source is None:
            result = _NOT_FOUND
        else:
            settings = intake.runtime.settings
            refusal = admission.enter(
                source.name, settings.webhook_max_in_flight, settings.webhook_max_in_flight_per_source
            )
            if refusal is not None:
                result = refusal
            else:
                try:
                    result = await _receive(request, source, intake)
                finally:
                    admission.leave(source.name)
        label = source.name if source is not None else UNKNOWN_SOURCE_LABEL
        elapsed = time.perf_counter() - started
        metrics.deliveries.labels(label, result.topic, result.outcome.value).inc()
        metrics.latency.labels("webhook").observe(elapsed)
        _log_delivery(request, label, result, elapsed, refusals)
        headers: dict[str, str] = {}
        if result.outcome in _CLOSE:
            headers["Connection"] = "close"
        if result.outcome in _BUSY:
            headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return JSONResponse(result.body(), status_code=result.status, headers=headers or None)

    async def healthz(request: Request) -> Response:
        # Liveness: the process serves requests. Nothing outside it is checked, so an orchestrator restarts a
        # hung server, never a healthy one whose database or broker blinked.
        started = time.perf_counter()
        response = JSONResponse({"status": "ok"})
        metrics.latency.labels("healthz").observe(time.perf_counter() - started)
        return response

    async def readyz(request: Request) -> Response:
        # Readiness: deliveries can be committed. A broker outage is reported but does not take intake out of the
        # load balancer: the row is committed anyway and reconcile delivers the push once the broker is back.
        started = time.perf_counter()
        checks = {
            "database": await run_in_threadpool(_probe, "database", intake.check_database),
            "broker": await run_in_threadpool(_probe, "broker", check_broker),
        }
        ready = checks["database"] == "ok"
        metrics.latency.labels("readyz").observe(time.perf_counter() - started)
        return JSONResponse({"status": "ok" if ready else "unavailable", **checks}, status_code=200 if ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        started = time.perf_counter()
        # The product gauge reads the database: off the event loop.
        body = await run_in_threadpool(metrics.render)
        metrics.latency.labels("metrics").observe(time.perf_counter() - started)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(intake.warm)
        try:
            yield
        finally:
            await run_in_threadpool(intake.close)

    app = Starlette(
        routes=[
            Route("/webhooks/{source}", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.intake = intake
    app.state.metrics = metrics
    app.state.admission = admission
    return app


class _Admission:
    """Counts deliveries in flight (being read, verified or applied), in all and per source, on the event loop's
    thread: past a limit a delivery is refused at once with `Retry-After`, so a flood costs an answer each instead
    of a queue and memory that grow while the committer catches up. A per-source limit below the global one keeps
    one noisy shop from taking every slot."""

    def __init__(self) -> None:
        self.total = 0
        self.by_source: dict[str, int] = {}

    def enter(self, source: str, max_total: int, max_per_source: int) -> Result | None:
        # The source's own limit first: a shop that floods us is told so (429), even when the server is full too.
        if self.by_source.get(source, 0) >= max_per_source:
            return Result(Outcome.THROTTLED, detail="too many deliveries in flight for this source; retry later")
        if self.total >= max_total:
            return Result(Outcome.OVERLOADED, detail="too many deliveries in flight; retry later")
        self.total += 1
        self.by_source[source] = self.by_source.get(source, 0) + 1
        return None

    def leave(self, source: str) -> None:
        self.total -= 1
        left = self.by_source[source] - 1
        if left:
            self.by_source[source] = left
        else:
            del self.by_source[source]


async def _receive(request: Request, source: SourceConfig, intake: Intake) -> Result:
    """Read the body within the size and time limits, verify it, then wait for the committer to apply it."""
    limit = intake.max_body
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.strip().isascii() and declared.strip().isdigit()):
            return Result(Outcome.BAD_REQUEST, detail="invalid Content-Length")
        if int(declared) > limit:
            return Result(Outcome.TOO_LARGE, detail=f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(intake.runtime.settings.webhook_body_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    # Whatever is still on the wire stays unread; the connection is closed after the answer.
                    return Result(Outcome.TOO_LARGE, detail=f"body larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        return Result(Outcome.TOO_SLOW, detail="the body took too long to arrive")
    headers = {key.lower(): value for key, value in request.headers.items()}
    body = b"".join(chunks)
    if len(body) <= INLINE_VERIFY_MAX:
        verdict = intake.verify(source, headers, body)
    else:
        verdict = await run_in_threadpool(intake.verify, source, headers, body)
    if isinstance(verdict, Result):
        return verdict
    return await intake.submit_async(source, verdict)


def _log_delivery(request: Request, source: str, result: Result, elapsed: float, refusals: Throttle) -> None:
    """One access line per delivery, and a warning per refused signature (throttled per source: anyone can send
    those, as fast as they like)."""
    client = request.client.host if request.client is not None else "-"
    fields = {
        "source": source,
        "topic": result.topic,
        "outcome": result.outcome.value,
        "status": result.status,
        "duration_ms": round(elapsed * 1000, 2),
        "client": client,
    }
    access_log.info(
        "POST /webhooks/%s %d %s %s %.1fms",
        request.path_params["source"],
        result.status,
        result.outcome.value,
        result.topic,
        elapsed * 1000,
        extra=fields,
    )
    if result.outcome is not Outcome.UNAUTHORIZED:
        return
    allowed, left_out = refusals.allow(source)
    if allowed:
        log.warning(
            "webhook %s: refused a delivery from %s with a missing or invalid signature (check the source's "
            "webhook_secret)%s",
            source,
            client,
            f"; {left_out} more refusal(s) not logged" if left_out else "",
            extra={"source": source, "client": client, "refusals_not_logged": left_out},
        )


def _probe(what: str, check: Callable[[], None]) -> str:
    try:
        check()
    except Exception as exc:  # a health probe reports every failure instead of raising
        # Only the type goes in the answer: a driver's message may carry a host or a user name.
        log.warning("readyz: %s unavailable (%s: %s)", what, type(exc).__name__, exc)
        return f"unavailable ({type(exc).__name__})"
    return "ok"


def serve(host: str, port: int) -> None:
    """`catalog-sync serve`: the webhook server in the foreground, on the environment's settings and sources."""
    import uvicorn

    from worker.celery_app import app as celery
    from worker.celery_app import configure
    from worker.http_guard import server_options
    from worker.runtime import get_runtime

    runtime = get_runtime()
    configure(celery, runtime.settings, runtime.sources)
    configure_logging(runtime.settings.log_level, runtime.settings.log_format)
    uvicorn.run(
        create_app(runtime),
        host=host,
        port=port,
        log_level=runtime.settings.log_level.lower(),
        # uvicorn's own loggers go through the root handler (text or JSON); the app writes the access lines.
        log_config=None,
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        **server_options(runtime.settings),
    )


__all__ = [
    "SIGNATURE_HEADERS",
    "WEBHOOK_KINDS",
    "Intake",
    "Outcome",
    "Result",
    "WebhookMetrics",
    "celery_broker_check",
    "create_app",
    "serve",
]
