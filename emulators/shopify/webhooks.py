"""Webhook subscriptions and signed `products/*` deliveries, sent from background tasks on the server's loop.

Two kinds of subscription deliver alike: receivers the control API registers with a secret of their own (what tests
set up directly), and the app's subscriptions made through the Admin API (`webhookSubscriptionCreate`, REST
`webhooks.json`), one topic each, signed with the app's client secret as Shopify signs them. Only the app's are
listed by the Admin API, as Shopify lists only the calling app's subscriptions. Addresses must be HTTPS, except on
this machine (where the receivers of tests and demos live), and one address may take a topic once.
"""

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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

if TYPE_CHECKING:
    from emulators.shopify.shop import Shop

# Real receivers must answer within 5 s; a slower one counts as a failed delivery.
WEBHOOK_TIMEOUT = 5.0
# Deliveries (with their bodies, for replays) kept for the stats and replay endpoints.
DELIVERY_HISTORY = 1_000
WEBHOOK_TOPICS = ("products/create", "products/update", "products/delete")
# Plain http:// addresses are accepted for these hosts only (Shopify takes HTTPS only; tests listen locally).
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Shopify's refusals of an address, as `userErrors` messages (REST: the same words after `address`).
TAKEN = "Address for this topic has already been taken"
INVALID_ADDRESS = "Address is invalid"
HTTP_ADDRESS = "Address protocol http:// is not supported"


def sign_webhook(body: bytes, secret: str) -> str:
    """`X-Shopify-Hmac-Sha256`: base64 of HMAC-SHA256 over the exact raw body with the app secret."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@dataclass(frozen=True)
class Subscription:
    """A receiver. `app`: made through the Admin API (one topic, the app's secret, listed by the API)."""

    id: int
    url: str
    secret: SecretStr
    topics: frozenset[str]
    app: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def topic(self) -> str:
        """The one topic of an app subscription."""
        return next(iter(sorted(self.topics)))


class SubscriptionRefused(ValueError):
    """The Admin API refuses a subscription change; `field` is the input that is wrong (`address`, `topic`, `id`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def address_problem(url: str) -> str | None:
    """Why Shopify would refuse `url` as an address, or None."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return INVALID_ADDRESS
    if parts.scheme not in ("http", "https") or not host:
        return INVALID_ADDRESS
    if parts.scheme == "http" and host not in LOOPBACK_HOSTS:
        return HTTP_ADDRESS
    return None


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

    # -- the app's subscriptions (Admin API) --

    def app_subscriptions(self, topics: Iterable[str] | None = None, url: str | None = None) -> list[Subscription]:
        """The app's subscriptions, oldest first, of `topics` and to `url` when given."""
        wanted = set(topics) if topics is not None else None
        with self._lock:
            found = [s for s in self.subscriptions.values() if s.app]
        return [s for s in found if (wanted is None or s.topic in wanted) and (url is None or s.url == url)]

    def app_subscription(self, subscription_id: int) -> Subscription | None:
        with self._lock:
            found = self.subscriptions.get(subscription_id)
        return found if found is not None and found.app else None

    def create(self, topic: str, url: str) -> Subscription:
        """A new app subscription; raises `SubscriptionRefused`."""
        if topic not in WEBHOOK_TOPICS:
            raise SubscriptionRefused("topic", f"Invalid topic specified: {topic}")
        now = self._shop.clock()
        with self._lock:
            self._check_address(url, topic, None)
            subscription = Subscription(
                self._next_id, url, self._shop.app_secret, frozenset({topic}), app=True, created_at=now, updated_at=now
            )
            self._next_id += 1
            self.subscriptions[subscription.id] = subscription
        return subscription

    def change(self, subscription_id: int, url: str) -> Subscription:
        """Point an app subscription at `url`; raises `SubscriptionRefused`."""
        with self._lock:
            current = self.subscriptions.get(subscription_id)
            if current is None or not current.app:
                raise SubscriptionRefused("id", "Webhook subscription does not exist")
            self._check_address(url, current.topic, subscription_id)
            changed = replace(current, url=url, updated_at=self._shop.clock())
            self.subscriptions[subscription_id] = changed
        return changed

    def delete(self, subscription_id: int) -> bool:
        """Remove an app subscription; False when there is none with that id."""
        with self._lock:
            current = self.subscriptions.get(subscription_id)
            if current is None or not current.app:
                return False
            del self.subscriptions[subscription_id]
        return True

    def _check_address(self, url: str, topic: str, own_id: int | None) -> None:
        problem = address_problem(url)
        if problem is not None:
            raise SubscriptionRefused("address", problem)
        taken = any(s.app and s.id != own_id and s.url == url and s.topic == topic for s in self.subscriptions.values())
        if taken:
            raise SubscriptionRefused("address", TAKEN)

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
                    {"id": s.id, "url": s.url, "topics": sorted(s.topics), "app": s.app}
                    for s in self.subscriptions.values()
                ],
                "sent": sum(d.attempts for d in self.deliveries),
                "pending": self._pending,
                "results": dict(self.results),
                "recent": [d.public() for d in list(self.deliveries)[-50:]],
            }
