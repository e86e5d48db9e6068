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
5. The verified event is handed to the batcher (`worker.webhook_batch`), which applies it with whatever else has
   queued up and answers once its row is committed and its push published. What each event asks for (a replay,
   stale, a deletion, a fetch of a partial product, an upsert) is decided by `worker.webhook_decision.decide`, a
   pure function; the batcher turns the store's answers into the outcome.

Intake is three rooms: this module is the HTTP side (endpoints, limits on body size, time and deliveries in flight,
verification, health, metrics), `webhook_decision` the per-event decision and `webhook_batch` the committer and
publisher threads. The answer comes after the commit and the publish, in milliseconds, with no call to the shop or
the catalog.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import Future
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from config.sources import ShopSource, SourceConfig
from connectors.base import Connector, WebhookEvent, product_id_problem
from ground.errors import InvalidSignature, SkippedProduct
from worker.logs import Throttle, configure_logging
from worker.source_metrics import QueueDepths, SourceStateCollector, celery_queue_depths
from worker.state import utcnow
from worker.webhook_batch import Batcher, Fetch, Pending
from worker.webhook_decision import Outcome, Result, clamped

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
# Refused-signature warnings per source: a burst of 10, then one a second; the rest are counted, not written.
REFUSAL_LOG_BURST = 10
REFUSAL_LOG_RATE = 1.0
# uvicorn's keep-alive: longer than a shop's gap between deliveries in a burst, shorter than a load balancer's idle
# timeout (commonly 60 s) so the server, not the balancer, closes idle connections.
KEEP_ALIVE_SECONDS = 30
# Seconds a sender is asked to wait when the server is at its limit of deliveries in flight.
RETRY_AFTER_SECONDS = 5

BrokerCheck = Callable[[], None]


# Refusals that tell the sender to come back later, with `Retry-After`.
_BUSY = frozenset({Outcome.THROTTLED, Outcome.OVERLOADED})
# Refusals after which the connection is closed: what is left of the request on the wire is not read.
_CLOSE = frozenset({Outcome.TOO_LARGE, Outcome.TOO_SLOW})

# One body per refusal, whatever exactly was wrong: an attacker learns nothing from the difference.
_UNAUTHORIZED = Result(Outcome.UNAUTHORIZED, detail="webhook signature missing or invalid")
_NOT_FOUND = Result(Outcome.NOT_FOUND, detail="no webhook endpoint for this source")


# ------------------------------------------------------------------------------------------------- the intake


class Intake:
    """The request's side of intake: which sources have an endpoint, their connectors (built once), verification,
    and the hand-over to the batcher (`worker.webhook_batch`), which applies verified events.

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
        self._connectors: dict[str, Connector] = {}
        self._lock = threading.Lock()
        self.batcher = Batcher(lambda: self.runtime, lambda: self.dispatcher, fetch=fetch, clock=clock)

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
        self.batcher.close()
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
        return clamped(event)

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
        """Queue a verified event for the batcher; the future holds its answer once it is committed and published."""
        future: Future[Result] = Future()
        self.batcher.enqueue(Pending(source, event, future=future))
        return future

    async def submit_async(self, source: SourceConfig, event: WebhookEvent) -> Result:
        """`submit` for a coroutine: the publisher wakes the event loop once per batch, not once per delivery."""
        waiter: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.batcher.enqueue(Pending(source, event, waiter=waiter))
        return await waiter

    # ---- health ----------------------------------------------------------------------------------------------

    def check_database(self) -> None:
        with self.runtime.store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))


def _usable_secrets(source: SourceConfig) -> list[str]:
    if not isinstance(source, ShopSource):  # a feed takes no webhooks
        return []
    return [secret.get_secret_value() for secret in source.webhook_secrets if secret.get_secret_value()]


def _pad_timing(body: bytes, secrets: int) -> None:
    """Spend what verification spends when a signature is present (one HMAC of the body per secret)."""
    for _ in range(max(secrets, 1)):
        hmac.compare_digest(hmac.new(_PADDING_KEY, body, hashlib.sha256).digest(), b"\0" * 32)


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
    "WebhookMetrics",
    "celery_broker_check",
    "create_app",
    "serve",
]
