"""The store's state: products, webhooks, the delivery queue, stats and nonces, for the handlers and in-process use."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final

from starlette.requests import Request

from emulators.woocommerce.data import WooProduct, WooVariation, generate_products, whole_second
from emulators.woocommerce.errors import EmulatorError

PRODUCT_TOPICS: Final = ("product.created", "product.updated", "product.deleted", "product.restored")
# What `Delivery.topic` says for the ping WooCommerce sends when a webhook is created.
PING: Final = "ping"
WEBHOOK_STATUSES: Final = ("active", "paused", "disabled")
# Consecutive failed deliveries after which WooCommerce disables a webhook (`woocommerce_max_webhook_delivery_failures`;
# WC_Webhook::failed_delivery disables it once the count is above this).
MAX_DELIVERY_FAILURES: Final = 5
# Deliveries kept in /_emulator/stats.
RECENT_DELIVERIES: Final = 100

Clock = Callable[[], datetime]


@dataclass
class Delivery:
    webhook_id: int
    topic: str
    product_id: int


@dataclass
class Webhook:
    """A webhook. Only `active` ones deliver; `failures` counts consecutive failed deliveries."""

    id: int
    url: str
    secret: str
    topic: str
    name: str = ""
    status: str = "active"
    failures: int = 0
    date_created: datetime | None = None
    date_modified: datetime | None = None


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    auth_failures: Counter[str] = field(default_factory=Counter)
    auth_methods: Counter[str] = field(default_factory=Counter)
    deliveries_sent: int = 0
    deliveries_failed: int = 0
    deliveries_by_topic: Counter[str] = field(default_factory=Counter)
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_DELIVERIES))


class WooStore:
    """The store's state: products, webhooks, the delivery queue, stats. Used by the handlers and in-process."""

    def __init__(
        self,
        *,
        products: int,
        seed: int,
        consumer_key: str,
        consumer_secret: str,
        clock: Clock,
        site_url: str,
        utc_offset: timedelta,
        secure: bool | None,
        strip_authorization: bool,
        key_permissions: str,
        user_can_read: bool,
        oauth_clock: Callable[[], float],
    ) -> None:
        if products < 0:
            raise ValueError("products must be 0 or more")
        if key_permissions not in ("read", "write", "read_write"):
            raise ValueError("key_permissions must be read, write or read_write")
        self.size = products
        self.seed = seed
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.clock = clock
        self.site_url = site_url.rstrip("/")
        self.tz = timezone(utc_offset)
        self.secure = secure
        self.strip_authorization = strip_authorization
        self.key_permissions = key_permissions
        self.user_can_read = user_can_read
        self.oauth_clock = oauth_clock
        self.products: dict[int, WooProduct] = {}
        self.variations: dict[int, tuple[WooProduct, WooVariation]] = {}
        self.webhooks: list[Webhook] = []
        self.stats = Stats()
        self.nonces: dict[str, float] = {}
        self.queue: asyncio.Queue[Delivery] | None = None
        self._next_id = 10
        self._next_webhook_id = 1
        self.reset()

    # -- state --

    def reset(self) -> None:
        products, self._next_id = generate_products(self.size, self.seed, self.clock())
        self.products = {product.id: product for product in products}
        self.index_variations()
        self.webhooks = []
        self.stats = Stats()
        self.nonces = {}

    def index_variations(self) -> None:
        self.variations = {v.id: (p, v) for p in self.products.values() for v in p.variations}

    def now(self) -> datetime:
        return whole_second(self.clock())

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def product(self, product_id: int) -> WooProduct:
        product = self.products.get(product_id)
        if product is None:
            raise EmulatorError(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
        return product

    def touch(self, product: WooProduct, topic: str) -> None:
        product.date_modified = self.now()
        self.index_variations()
        self.notify(topic, product.id)

    def notify(self, topic: str, product_id: int) -> None:
        if self.queue is None:
            return
        for webhook in self.webhooks:
            if webhook.topic == topic and webhook.status == "active":
                self.queue.put_nowait(Delivery(webhook.id, topic, product_id))

    def add_webhooks(self, url: str, secret: str, topic: str | None) -> list[int]:
        return [self.add_webhook(url, secret, name).id for name in ((topic,) if topic else PRODUCT_TOPICS)]

    def add_webhook(self, url: str, secret: str, topic: str, *, name: str = "", status: str = "active") -> Webhook:
        now = self.now()
        webhook = Webhook(
            self._next_webhook_id,
            url,
            secret,
            topic,
            name=name or f"Webhook created on {now:%b %d, %Y @ %I:%M %p}",
            status=status,
            date_created=now,
            date_modified=now,
        )
        self._next_webhook_id += 1
        self.webhooks.append(webhook)
        return webhook

    def webhook(self, webhook_id: int) -> Webhook | None:
        return next((w for w in self.webhooks if w.id == webhook_id), None)

    def ping(self, webhook: Webhook) -> None:
        """Queue the creation ping (WC_Webhook::deliver_ping, sent when a webhook is created through the API)."""
        if self.queue is not None:
            self.queue.put_nowait(Delivery(webhook.id, PING, 0))

    def delivered(self, webhook: Webhook, ok: bool) -> None:
        """Count a delivery's outcome; too many failures in a row disable the webhook, as WooCommerce does."""
        webhook.failures = 0 if ok else webhook.failures + 1
        if webhook.failures > MAX_DELIVERY_FAILURES:
            webhook.status = "disabled"

    # -- reporting --

    def stats_body(self) -> dict[str, Any]:
        return {
            "requests": dict(self.stats.requests),
            "auth_failures": dict(self.stats.auth_failures),
            "auth_methods": dict(self.stats.auth_methods),
            "products": dict(Counter(product.status for product in self.products.values())),
            "webhooks": [
                {"id": w.id, "topic": w.topic, "url": w.url, "status": w.status, "failures": w.failures}
                for w in self.webhooks
            ],
            "deliveries": {
                "sent": self.stats.deliveries_sent,
                "failed": self.stats.deliveries_failed,
                "queued": self.queue.qsize() if self.queue is not None else 0,
                "by_topic": dict(self.stats.deliveries_by_topic),
                "recent": list(self.stats.recent),
            },
        }


def store_of(request: Request) -> WooStore:
    store: WooStore = request.app.state.store
    return store
