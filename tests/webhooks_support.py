"""Helpers shared by the webhook tests: signing like the shops do, a runtime on a test database, reading the
Celery messages the intake published to a dedicated Redis database, and a TCP proxy that can stop "the broker"."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from config.settings import Settings
from config.sources import FeedSource, ShopifySource, SourceConfig, WooCommerceSource
from tests.redis_dbs import db_for
from worker.ratelimit import build_limiter
from worker.runtime import Runtime
from worker.state import ProductRow, Store

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
SHOPIFY_SECRET = "shpss_current_secret"
SHOPIFY_PREVIOUS_SECRET = "shpss_previous_secret"
WOO_SECRET = "wc_webhook_secret"


def signature(body: bytes, secret: str) -> str:
    """base64 HMAC-SHA256, the scheme of both `X-Shopify-Hmac-Sha256` and `X-WC-Webhook-Signature`."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def shopify_headers(
    body: bytes,
    *,
    topic: str = "products/update",
    event_id: str | None = None,
    triggered_at: datetime | None = None,
    secret: str | None = SHOPIFY_SECRET,
) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "X-Shopify-Topic": topic, "X-Shopify-Shop-Domain": "test.example"}
    if secret is not None:
        headers["X-Shopify-Hmac-Sha256"] = signature(body, secret)
    if event_id is not None:
        headers["X-Shopify-Event-Id"] = event_id
        headers["X-Shopify-Webhook-Id"] = f"w-{event_id}"
    if triggered_at is not None:
        headers["X-Shopify-Triggered-At"] = triggered_at.isoformat().replace("+00:00", "Z")
    return headers


def woo_headers(
    body: bytes, *, topic: str = "product.updated", delivery_id: str = "1", secret: str | None = WOO_SECRET
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": topic.split(".")[0],
        "X-WC-Webhook-Event": topic.split(".")[1],
        "X-WC-Webhook-Delivery-ID": delivery_id,
        "X-WC-Webhook-ID": "7",
        "X-WC-Webhook-Source": "https://store.example/",
    }
    if secret is not None:
        headers["X-WC-Webhook-Signature"] = signature(body, secret)
    return headers


def shopify_product(
    product_id: int, *, title: str, updated_at: str, status: str = "active", images: int = 1
) -> dict[str, Any]:
    """A `products/update` body in the shape Shopify sends (the fields the connector reads, and a few it does not)."""
    return {
        "id": product_id,
        "admin_graphql_api_id": f"gid://shopify/Product/{product_id}",
        "title": title,
        "body_html": f"<p>{title} described</p>",
        "handle": f"p-{product_id}",
        "vendor": "Acme",
        "product_type": "Shirt",
        "status": status,
        "tags": "cotton, summer",
        "published_at": "2024-01-01T00:00:00Z",
        "updated_at": updated_at,
        "images": [
            {"id": product_id * 10 + n, "src": f"https://cdn.example/{product_id}/{n}.jpg", "alt": None}
            for n in range(images)
        ],
        "variants": [{"id": product_id * 100, "price": "19.00"}],
    }


def fixture_bytes(*parts: str) -> bytes:
    return FIXTURES.joinpath(*parts).read_bytes()


def fixture_product(*parts: str) -> bytes:
    """A fixture's product object as a webhook body (unwrapping an Admin REST response's `{"product": …}`)."""
    document = json.loads(fixture_bytes(*parts))
    return json.dumps(document.get("product", document)).encode()


def make_sources(
    suffix: str, shop_url: str = "https://shop.example", woo_url: str = "https://store.example"
) -> dict[str, SourceConfig]:
    """A Shopify source (with a previous secret), a WooCommerce one, one without a secret and a feed."""
    sources: list[SourceConfig] = [
        ShopifySource(
            name=f"shop-{suffix}",
            kind="shopify",
            url=shop_url,
            access_token="shpat_token",
            webhook_secret=SHOPIFY_SECRET,
            webhook_secret_previous=SHOPIFY_PREVIOUS_SECRET,
            check_images=False,
        ),
        WooCommerceSource(
            name=f"woo-{suffix}",
            kind="woocommerce",
            url=woo_url,
            consumer_key="ck_key",
            consumer_secret="cs_secret",
            webhook_secret=WOO_SECRET,
            check_images=False,
        ),
        ShopifySource(name=f"nosecret-{suffix}", kind="shopify", url=shop_url, access_token="t"),
        FeedSource(name=f"feed-{suffix}", kind="feed", url="/nonexistent/feed.xml"),
    ]
    return {source.name: source for source in sources}


def make_runtime(
    database_url: str, sources: Mapping[str, SourceConfig], broker_url: str, tmp_path: Path, **settings: Any
) -> Runtime:
    config = Settings(
        config=tmp_path / "no-sources.toml",
        database_url=database_url,
        broker_url=broker_url,
        redis_url=None,
        **settings,
    )
    return Runtime(config, dict(sources), Store.from_url(database_url), build_limiter(config, embedded=True))


def stored(store: Store, source: str, product_id: str) -> ProductRow:
    """The state's row of a product the test expects to be there."""
    row = store.get(source, product_id)
    assert row is not None, f"no row for {source}/{product_id}"
    return row


def stored_payload(store: Store, source: str, product_id: str) -> dict[str, Any]:
    """The desired catalog payload of a product the test expects to be in the catalog."""
    payload = stored(store, source, product_id).desired_payload
    assert payload is not None, f"{source}/{product_id} is not desired in the catalog"
    return payload


def broker_url(port: int = 6379) -> str:
    """A Redis database of this run's own for these tests' broker; messages are also told apart by source name."""
    return f"redis://127.0.0.1:{port}/{db_for('webhooks')}"


@dataclass(frozen=True)
class Message:
    task: str
    args: list[Any]
    queue: str


class Queues:
    """The Celery messages waiting in the test broker's Redis lists, for the sources of one test."""

    def __init__(self, url: str, sources: Mapping[str, SourceConfig]) -> None:
        self.client = redis.Redis.from_url(url)
        self.sources = set(sources)

    def messages(self, queue: str = "push.priority") -> list[Message]:
        found = []
        for raw in self.client.lrange(queue, 0, -1):
            message = json.loads(raw)
            args = json.loads(base64.b64decode(message["body"]))[0]
            if args and args[0] in self.sources:
                found.append(Message(message["headers"]["task"], args, queue))
        # LPUSH puts the newest first.
        return found[::-1]

    def pushed(self, queue: str = "push.priority") -> list[tuple[str, str]]:
        """(source, product id) of every push waiting in `queue`, whether sent alone or in a `push_many` chunk."""
        found: list[tuple[str, str]] = []
        for message in self.messages(queue):
            if message.task == "catalog_sync.push":
                found.append((message.args[0], message.args[1]))
            elif message.task == "catalog_sync.push_many":
                found.extend((message.args[0], product_id) for product_id in message.args[1])
        return found

    def clear(self) -> None:
        for queue in ("push.priority", "push", "sync"):
            for raw in self.client.lrange(queue, 0, -1):
                message = json.loads(raw)
                args = json.loads(base64.b64decode(message["body"]))[0]
                if args and args[0] in self.sources:
                    self.client.lrem(queue, 0, raw)  # type: ignore[arg-type]  # redis-py's stubs say str; it sends bytes as they are

    def close(self) -> None:
        self.client.close()


class TcpProxy:
    """Forwards a local port to Redis; `stop()` closes the port and every connection, `start()` opens it again on
    the same port: a broker that goes away and comes back, without touching the shared Redis server."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def proxy_to_redis(port: int = 6379) -> Iterator[TcpProxy]:
    proxy = TcpProxy(("127.0.0.1", port))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def use_broker(runtime: Runtime) -> None:
    """Point the process's Celery app at `runtime.settings.broker_url`.

    Celery builds its connection and producer pools on first use and keeps them whatever the configuration says
    later; tests that each bring their own broker URL drop them, as Celery's own after-fork handler does.
    """
    from worker.celery_app import app, configure

    configure(app, runtime.settings, runtime.sources)
    app._pool = None
    app.amqp._producer_pool = None
