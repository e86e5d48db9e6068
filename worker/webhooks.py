"""Webhook intake: the ASGI app behind `catalog-sync serve` (`POST /webhooks/{source}`, `GET /healthz`,
`GET /metrics`).

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
6. The delivery id is remembered only *after* the row is committed. If the database fails midway the answer is
   503 and nothing was remembered, so the shop's retry is processed rather than dropped as a replay; processing a
   delivery twice is harmless (an unchanged hash writes nothing, the store refuses older rows).
7. A push is published on `push.priority`; a broker that is down is logged by the dispatcher and the answer is
   still 200 (the row is committed and `reconcile` delivers it). A partial product has no row to fall back on, so
   a broker that cannot take its `sync_product` task makes the answer 503 and the shop retries.

Database work and publishing are blocking: each delivery runs on a worker thread, never on the event loop, and the
answer comes after the commit and the publish, in milliseconds, with no call to the shop or the catalog.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from config.sources import SourceConfig
from connectors.base import Connector, WebhookEvent
from worker.errors import InvalidSignature, SkippedProduct
from worker.plan import desired_row, external_id_for, skipped_row
from worker.state import DeliveryRow, DesiredRow, ProductRow, utcnow

if TYPE_CHECKING:
    from worker.operations import Dispatcher
    from worker.runtime import Runtime

log = logging.getLogger(__name__)

# Source kinds that send webhooks; a feed is read on its schedule only.
WEBHOOK_KINDS = frozenset({"shopify", "shopify-rest", "shopify-storefront", "woocommerce"})
# The signature headers the connectors read: a request carrying none of them gets the timing padding.
SIGNATURE_HEADERS = ("x-shopify-hmac-sha256", "x-wc-webhook-signature")
# The key of the padding HMAC: any value works, it only has to cost what a real verification costs.
_PADDING_KEY = b"catalog-sync timing padding"
# An undated deletion of a row stamped later than our clock is placed just after that row's state.
DELETION_AFTER_STORED = timedelta(microseconds=1)
# How long `/healthz` waits for the broker: a load balancer's probe must not hang on a dead one.
HEALTH_BROKER_TIMEOUT = 2.0
# Request latency buckets (seconds): deliveries answer in milliseconds; the tail shows a slow database or broker.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# The label of deliveries to a source name that is not configured: a path segment anyone can invent must not
# become a metric label.
UNKNOWN_SOURCE_LABEL = "_unknown"
# The topic label before a delivery is verified.
UNVERIFIED_TOPIC = "unverified"
# uvicorn's keep-alive: longer than a shop's gap between deliveries in a burst, shorter than a load balancer's idle
# timeout (commonly 60 s) so the server, not the balancer, closes idle connections.
KEEP_ALIVE_SECONDS = 30

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
    UNAVAILABLE = "unavailable"


_STATUS: Mapping[Outcome, int] = {
    Outcome.MALFORMED: 400,
    Outcome.BAD_REQUEST: 400,
    Outcome.UNAUTHORIZED: 401,
    Outcome.NOT_FOUND: 404,
    Outcome.TOO_LARGE: 413,
    Outcome.UNAVAILABLE: 503,
}
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


class BrokerUnavailable(Exception):
    """The `sync_product` task for a partial payload could not be published."""


# ------------------------------------------------------------------------------------------------- the intake


class Intake:
    """The synchronous part of a delivery, run on a worker thread: verify, de-duplicate, write, dispatch.

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

    # ---- one delivery ----------------------------------------------------------------------------------------

    def handle(self, source: SourceConfig, headers: Mapping[str, str], body: bytes) -> Result:
        """Verify and apply one delivery whose body is already bounded. `headers` have lower-case names."""
        try:
            event = self._connector(source).verify_webhook(headers, body)
        except InvalidSignature:
            if not any(name in headers for name in SIGNATURE_HEADERS):
                _pad_timing(body, len(_usable_secrets(source)))
            return _UNAUTHORIZED
        except SkippedProduct as skip:
            return self._unusable(source, skip, headers)
        if event.topic == "ping":
            return Result(Outcome.PING, "ping")
        if event.product_id is None:
            log.warning(
                "webhook %s rejected: malformed_payload (%s event without a product id)", source.name, event.topic
            )
            return Result(Outcome.MALFORMED, event.topic, "malformed_payload")
        try:
            return Result(self._apply(source, event), event.topic)
        except SQLAlchemyError as exc:
            log.error(
                "webhook %s: state database unavailable (%s); answered 503 so the shop retries",
                source.name,
                type(exc).__name__,
            )
            return Result(Outcome.UNAVAILABLE, event.topic, "state database unavailable")
        except BrokerUnavailable as exc:
            log.error("webhook %s: %s; answered 503 so the shop retries", source.name, exc)
            return Result(Outcome.UNAVAILABLE, event.topic, "queue unavailable")

    def _unusable(self, source: SourceConfig, skip: SkippedProduct, headers: Mapping[str, str]) -> Result:
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
        try:
            self._dispatch_fetch(source.name, skip.product_id)
        except BrokerUnavailable as exc:
            log.error("webhook %s: %s; answered 503 so the shop retries", source.name, exc)
            return Result(Outcome.UNAVAILABLE, "upsert", "queue unavailable")
        return Result(Outcome.FETCH, "upsert")

    def _apply(self, source: SourceConfig, event: WebhookEvent) -> Outcome:
        assert event.product_id is not None
        product_id = event.product_id
        store = self.runtime.store
        seen, stored_at = self._look_up(source.name, product_id, event.event_id)
        if seen:
            log.debug("webhook %s: delivery %s already processed", source.name, event.event_id)
            return Outcome.REPLAY
        if _older_than_stored(event, stored_at):
            outcome = Outcome.STALE
        elif event.topic == "delete":
            deleted_at = event.triggered_at or self._undated_deletion(stored_at)
            changed = store.mark_deleted(
                source.name, product_id, updated_at=deleted_at, external_id=_external_id(product_id, source)
            )
            outcome = Outcome.DELETED if changed else Outcome.STALE
        elif event.product is None:
            self._dispatch_fetch(source.name, product_id)
            outcome = Outcome.FETCH
        else:
            result = store.write_desired([_row(event, source)])
            outcome = Outcome.UPDATED if result.changed else Outcome.STALE if result.stale else Outcome.UNCHANGED
        # Remembered only now that the row is committed: see the module docstring, point 6.
        if event.event_id:
            store.remember_delivery(
                source.name, event.event_id, keep=timedelta(days=self.runtime.settings.webhook_dedupe_days)
            )
        if outcome in _PUSHED:
            self.dispatcher.push(source.name, [product_id], priority=True)
        return outcome

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

    def _look_up(self, source: str, product_id: str, event_id: str | None) -> tuple[bool, datetime | None]:
        """(was this delivery processed already, the stored row's `source_updated_at`) in one short read."""
        now = self._clock()
        with self.runtime.store.session() as session:
            seen = event_id is not None and (
                session.scalar(
                    select(DeliveryRow.event_id).where(
                        DeliveryRow.source == source,
                        DeliveryRow.event_id == event_id,
                        DeliveryRow.expires_at > now,
                    )
                )
                is not None
            )
            stored_at = session.scalar(
                select(ProductRow.source_updated_at).where(
                    ProductRow.source == source, ProductRow.product_id == product_id
                )
            )
        return seen, stored_at

    def _dispatch_fetch(self, source: str, product_id: str) -> None:
        fetch = self._fetch or _celery_fetch
        try:
            fetch(source, product_id)
        except Exception as exc:  # kombu raises several unrelated types for a dead broker
            raise BrokerUnavailable(
                f"could not enqueue sync_product for {source}/{product_id} ({type(exc).__name__})"
            ) from exc

    # ---- health ----------------------------------------------------------------------------------------------

    def check_database(self) -> None:
        with self.runtime.store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))


def _usable_secrets(source: SourceConfig) -> list[str]:
    return [secret.get_secret_value() for secret in source.webhook_secrets if secret.get_secret_value()]


def _pad_timing(body: bytes, secrets: int) -> None:
    """Spend what verification spends when a signature is present (one HMAC of the body per secret)."""
    for _ in range(max(secrets, 1)):
        hmac.compare_digest(hmac.new(_PADDING_KEY, body, hashlib.sha256).digest(), b"\0" * 32)


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


class WebhookMetrics:
    """The app's own registry, so several apps in one process (tests) do not collide."""

    def __init__(self, intake: Intake) -> None:
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

    def render(self) -> bytes:
        return generate_latest(self.registry)


# ------------------------------------------------------------------------------------------------------ the app


def create_app(
    runtime: Runtime | None = None,
    dispatcher: Dispatcher | None = None,
    *,
    fetch: Fetch | None = None,
    broker_check: BrokerCheck | None = None,
) -> Starlette:
    """The webhook server's ASGI app.

    Defaults (all None) are what `catalog-sync serve` runs: the process runtime, the Celery dispatcher, the
    `sync_product` task for partial payloads and a ping of the Celery broker for `/healthz`.
    """
    intake = Intake(runtime, dispatcher, fetch=fetch)
    metrics = WebhookMetrics(intake)
    check_broker = broker_check or celery_broker_check

    async def webhook(request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["source"]
        source = intake.endpoint_source(name)
        if source is None:
            result = _NOT_FOUND
        else:
            result = await _receive(request, source, intake)
        label = source.name if source is not None else UNKNOWN_SOURCE_LABEL
        metrics.deliveries.labels(label, result.topic, result.outcome.value).inc()
        metrics.latency.labels("webhook").observe(time.perf_counter() - started)
        headers = {"Connection": "close"} if result.outcome is Outcome.TOO_LARGE else None
        return JSONResponse(result.body(), status_code=result.status, headers=headers)

    async def healthz(request: Request) -> Response:
        started = time.perf_counter()
        checks = {
            "database": await run_in_threadpool(_probe, "database", intake.check_database),
            "broker": await run_in_threadpool(_probe, "broker", check_broker),
        }
        healthy = all(state == "ok" for state in checks.values())
        metrics.latency.labels("healthz").observe(time.perf_counter() - started)
        return JSONResponse(
            {"status": "ok" if healthy else "unavailable", **checks}, status_code=200 if healthy else 503
        )

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
            intake.close()

    app = Starlette(
        routes=[
            Route("/webhooks/{source}", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.intake = intake
    app.state.metrics = metrics
    return app


async def _receive(request: Request, source: SourceConfig, intake: Intake) -> Result:
    """Read the body within the limit, then hand the delivery to a worker thread."""
    limit = intake.max_body
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            return Result(Outcome.BAD_REQUEST, detail="invalid Content-Length")
        if int(declared) > limit:
            return Result(Outcome.TOO_LARGE, detail=f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            # Whatever is still on the wire stays unread; the connection is closed after the answer.
            return Result(Outcome.TOO_LARGE, detail=f"body larger than {limit} bytes")
        chunks.append(chunk)
    headers = {key.lower(): value for key, value in request.headers.items()}
    return await run_in_threadpool(intake.handle, source, headers, b"".join(chunks))


def _probe(what: str, check: Callable[[], None]) -> str:
    try:
        check()
    except Exception as exc:  # a health probe reports every failure instead of raising
        # Only the type goes in the answer: a driver's message may carry a host or a user name.
        log.warning("healthz: %s unavailable (%s: %s)", what, type(exc).__name__, exc)
        return f"unavailable ({type(exc).__name__})"
    return "ok"


def serve(host: str, port: int) -> None:
    """`catalog-sync serve`: the webhook server in the foreground, on the environment's settings and sources."""
    import uvicorn

    from worker.celery_app import app as celery
    from worker.celery_app import configure
    from worker.runtime import get_runtime

    runtime = get_runtime()
    configure(celery, runtime.settings, runtime.sources)
    logging.basicConfig(
        level=runtime.settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(runtime),
        host=host,
        port=port,
        log_level=runtime.settings.log_level.lower(),
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


__all__ = [
    "SIGNATURE_HEADERS",
    "WEBHOOK_KINDS",
    "BrokerUnavailable",
    "Intake",
    "Outcome",
    "Result",
    "WebhookMetrics",
    "celery_broker_check",
    "create_app",
    "serve",
]
