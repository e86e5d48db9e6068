"""Webhook subscriptions and signed `products/*` deliveries, sent from background tasks on the server's loop."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

if TYPE_CHECKING:
    from emulators.shopify.shop import Shop

# Real receivers must answer within 5 s; a slower one counts as a failed delivery.
WEBHOOK_TIMEOUT = 5.0
# Deliveries (with their bodies, for replays) kept for the stats and replay endpoints.
DELIVERY_HISTORY = 1_000
WEBHOOK_TOPICS = ("products/create", "products/update", "products/delete")


def sign_webhook(body: bytes, secret: str) -> str:
    """`X-Shopify-Hmac-Sha256`: base64 of HMAC-SHA256 over the exact raw body with the app secret."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@dataclass(frozen=True)
class Subscription:
    id: int
    url: str
    secret: SecretStr
    topics: frozenset[str]


@dataclass
class Delivery:
    id: str
    subscription_id: int
    url: str
    topic: str
    product_id: int
    body: bytes
    headers: dict[str, str]
    attempts: int = 0
    status: int | None = None
    error: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subscription_id": self.subscription_id,
            "url": self.url,
            "topic": self.topic,
            "product_id": self.product_id,
            "webhook_id": self.headers["X-Shopify-Webhook-Id"],
            "event_id": self.headers["X-Shopify-Event-Id"],
            "triggered_at": self.headers["X-Shopify-Triggered-At"],
            "attempts": self.attempts,
            "status": self.status,
            "error": self.error,
        }


class Webhooks:
    """Registered receivers and signed `products/*` deliveries, sent from background tasks on the server loop."""

    def __init__(self, shop: Shop) -> None:
        self._shop = shop
        self._lock = threading.Lock()
        self.subscriptions: dict[int, Subscription] = {}
        self.deliveries: deque[Delivery] = deque(maxlen=DELIVERY_HISTORY)
        self.results: Counter[str] = Counter()
        self.client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_id = 1
        # Deliveries scheduled but not finished; a Condition so other threads (tests, the CLI) can wait on it.
        self._pending = 0
        self._idle = threading.Condition()

    def subscribe(self, url: str, secret: str, topics: Iterable[str] | None) -> Subscription:
        chosen = frozenset(topics) if topics is not None else frozenset(WEBHOOK_TOPICS)
        unknown = chosen - set(WEBHOOK_TOPICS)
        if unknown:
            raise ValueError(f"unknown topics {sorted(unknown)}; use {list(WEBHOOK_TOPICS)}")
        if not url.startswith(("http://", "https://")):
            raise ValueError("url must be an http(s) URL")
        if not secret:
            raise ValueError("secret must be a non-empty string")
        with self._lock:
            subscription = Subscription(self._next_id, url, SecretStr(secret), chosen)
            self._next_id += 1
            self.subscriptions[subscription.id] = subscription
        return subscription

    def unsubscribe(self, subscription_id: int) -> bool:
        with self._lock:
            return self.subscriptions.pop(subscription_id, None) is not None

    def emit(self, topic: str, product_id: int, payload: Mapping[str, Any]) -> list[Delivery]:
        """One event to every receiver of `topic`: same body and event id, a webhook id and signature each."""
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        event_id = str(uuid.uuid4())
        triggered = datetime.fromtimestamp(self._shop.clock(), UTC).isoformat(timespec="microseconds")
        triggered = triggered.replace("+00:00", "Z")
        with self._lock:
            receivers = [s for s in self.subscriptions.values() if topic in s.topics]
        deliveries = []
        for subscription in receivers:
            headers = {
                "Content-Type": "application/json",
                "X-Shopify-Topic": topic,
                "X-Shopify-Hmac-Sha256": sign_webhook(body, subscription.secret.get_secret_value()),
                "X-Shopify-Shop-Domain": self._shop.domain,
                "X-Shopify-API-Version": self._shop.api_version,
                "X-Shopify-Webhook-Id": str(uuid.uuid4()),
                "X-Shopify-Event-Id": event_id,
                "X-Shopify-Triggered-At": triggered,
            }
            delivery = Delivery(str(uuid.uuid4()), subscription.id, subscription.url, topic, product_id, body, headers)
            with self._lock:
                self.deliveries.append(delivery)
            deliveries.append(delivery)
            self._schedule(delivery)
        return deliveries

    def find(self, delivery_id: str) -> Delivery | None:
        with self._lock:
            return next((d for d in self.deliveries if d.id == delivery_id), None)

    def replay(self, delivery: Delivery) -> None:
        """Send the same bytes and ids again, as a Shopify retry does."""
        self._schedule(delivery)

    def _schedule(self, delivery: Delivery) -> None:
        with self._idle:
            self._pending += 1
        task = asyncio.get_running_loop().create_task(self._send(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, delivery: Delivery) -> None:
        client = self.client
        own_client = client is None
        if client is None:
            client = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT)
        outcome = "not sent"
        try:
            response = await client.post(delivery.url, content=delivery.body, headers=delivery.headers)
            delivery.status, delivery.error = response.status_code, None
            outcome = str(response.status_code)
        except httpx.HTTPError as exc:
            delivery.status, delivery.error = None, f"{type(exc).__name__}: {exc}"
            outcome = type(exc).__name__
        finally:
            if own_client:
                await client.aclose()
            with self._lock:
                delivery.attempts += 1
                self.results[outcome] += 1
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block (from another thread) until every scheduled delivery has its result; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=WEBHOOK_TIMEOUT + 1)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "subscriptions": [
                    {"id": s.id, "url": s.url, "topics": sorted(s.topics)} for s in self.subscriptions.values()
                ],
                "sent": sum(d.attempts for d in self.deliveries),
                "pending": self._pending,
                "results": dict(self.results),
                "recent": [d.public() for d in list(self.deliveries)[-50:]],
            }
