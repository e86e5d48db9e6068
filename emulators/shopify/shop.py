"""The emulated shop: its products, buckets, bulk operations, webhooks, stats and runtime configuration."""

from __future__ import annotations

import hmac
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import SecretStr
from starlette.requests import Request

from emulators.shopify.buckets import CallBucket, CostBucket
from emulators.shopify.bulk import BulkOperations, parse_fault
from emulators.shopify.defaults import DEFAULT_ACCESS_TOKEN, DEFAULT_API_VERSION, DEFAULT_APP_SECRET, DEFAULT_DOMAIN
from emulators.shopify.events import EventLog
from emulators.shopify.execution import GraphQLEndpoint
from emulators.shopify.products import Product
from emulators.shopify.store import ProductStore
from emulators.shopify.webhooks import Webhooks


class Stats:
    """Requests by API kind and status, throttling counters and GraphQL cost, for `/_emulator/stats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.counters: Counter[str] = Counter()

    def request(self, kind: str, status: int) -> None:
        with self._lock:
            self.requests[(kind, status)] += 1

    def bump(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[name] += amount

    def add_cost(self, requested: int, actual: int) -> None:
        with self._lock:
            self.counters["graphql_requested_cost"] += requested
            self.counters["graphql_actual_cost"] += actual

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            by_kind: dict[str, dict[str, int]] = {}
            for (kind, status), count in sorted(self.requests.items()):
                by_kind.setdefault(kind, {})[str(status)] = count
            return {
                "requests": by_kind,
                "throttled": self.counters["throttled"],
                "max_cost_exceeded": self.counters["max_cost_exceeded"],
                "rest_429": self.counters["rest_429"],
                "graphql_requested_cost": self.counters["graphql_requested_cost"],
                "graphql_actual_cost": self.counters["graphql_actual_cost"],
            }


class Shop:
    """Everything the emulated shop knows: products, buckets, bulk operations, webhooks, stats, runtime config."""

    def __init__(
        self,
        *,
        products: int = 1_000,
        seed: int = 1,
        access_token: str = DEFAULT_ACCESS_TOKEN,
        bucket_size: float = 1_000,
        restore_rate: float = 50,
        rest_bucket: int = 40,
        rest_leak: float = 2,
        clock: Callable[[], float] = time.time,
        bulk_duration: float = 2.0,
        latency: float = 0.0,
        domain: str = DEFAULT_DOMAIN,
        api_version: str = DEFAULT_API_VERSION,
        app_secret: str = DEFAULT_APP_SECRET,
    ) -> None:
        if bucket_size <= 0 or restore_rate < 0 or rest_bucket <= 0 or rest_leak < 0:
            raise ValueError("bucket sizes must be positive and rates zero or more")
        if not access_token or not app_secret:
            raise ValueError("access_token and app_secret must be non-empty")
        self.clock = clock
        self.access_token = SecretStr(access_token)
        # What Shopify signs the deliveries of the app's subscriptions with (the app's client secret).
        self.app_secret = SecretStr(app_secret)
        self.domain = domain
        self.api_version = api_version
        self.latency = latency
        self.store = ProductStore(products, seed)
        self.events = EventLog()
        self.cost_bucket = CostBucket(bucket_size, restore_rate, clock)
        self.rest_bucket = CallBucket(rest_bucket, rest_leak, clock)
        self.bulk = BulkOperations(self)
        self.bulk.duration = bulk_duration
        self.webhooks = Webhooks(self)
        self.stats = Stats()
        self.graphql = GraphQLEndpoint(self)

    def __repr__(self) -> str:
        return f"Shop(products={len(self.store)}, domain={self.domain!r})"

    def authorized(self, request: Request) -> bool:
        supplied = request.headers.get("x-shopify-access-token", "")
        return hmac.compare_digest(supplied.encode(), self.access_token.get_secret_value().encode())

    def now(self) -> int:
        return int(self.clock())

    def delete_product(self, product_id: int) -> Product | None:
        """Delete a product, record its `destroy` event and send `products/delete`, as the shop does whichever API
        deleted it."""
        product = self.store.delete(product_id)
        if product is not None:
            self.events.product_destroyed(product.id, product.title, now=self.now())
            self.webhooks.emit("products/delete", product.id, {"id": product.id})
        return product

    def config(self) -> dict[str, Any]:
        fault = self.bulk.fault
        return {
            "bucket_size": self.cost_bucket.size,
            "restore_rate": self.cost_bucket.restore_rate,
            "rest_bucket": self.rest_bucket.size,
            "rest_leak": self.rest_bucket.leak,
            "latency": self.latency,
            "bulk_duration": self.bulk.duration,
            "bulk_fault": {"status": fault[0], "error_code": fault[1]} if fault else None,
        }

    def configure(self, changes: Mapping[str, Any]) -> None:
        """Apply `POST /_emulator/config`; raises ValueError naming the bad field."""
        known = {"bucket_size", "restore_rate", "rest_bucket", "rest_leak", "latency", "bulk_duration", "bulk_fault"}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}; use {sorted(known)}")
        numbers: dict[str, float] = {}
        for name in known - {"bulk_fault"}:
            if name in changes:
                value = changes[name]
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ValueError(f"{name} must be a number >= 0")
                numbers[name] = float(value)
        for name in ("bucket_size", "rest_bucket"):
            if numbers.get(name) == 0:
                raise ValueError(f"{name} must be > 0")
        fault: tuple[str, str | None] | None = self.bulk.fault
        if "bulk_fault" in changes:
            fault = parse_fault(changes["bulk_fault"])
        self.cost_bucket.reconfigure(numbers.get("bucket_size"), numbers.get("restore_rate"))
        rest_size = numbers.get("rest_bucket")
        self.rest_bucket.reconfigure(int(rest_size) if rest_size is not None else None, numbers.get("rest_leak"))
        self.latency = numbers.get("latency", self.latency)
        self.bulk.duration = numbers.get("bulk_duration", self.bulk.duration)
        self.bulk.fault = fault

    def reset(self, *, products: int | None = None, seed: int | None = None) -> None:
        self.store = ProductStore(
            self.store.count if products is None else products, self.store.seed if seed is None else seed
        )
        self.events = EventLog()
        self.cost_bucket.fill()
        self.rest_bucket.empty()
        duration, fault = self.bulk.duration, self.bulk.fault
        self.bulk = BulkOperations(self)
        self.bulk.duration, self.bulk.fault = duration, fault
        client = self.webhooks.client
        self.webhooks = Webhooks(self)
        self.webhooks.client = client
        self.stats = Stats()
