"""The Shopify connectors: unit tests over `httpx.MockTransport` fakes (throttling math, THROTTLED retries, errors,
Link paging, the storefront cap, webhooks), then integration tests against the Shopify emulator over real sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from config.sources import BulkMode, SourceConfig, parse_source, parse_sources
from connectors.base import Connector, ProductDeletion, ReadsDeletions, SourceProduct
from connectors.shopify import (
    BULK_BUSY_RETRIES,
    BULK_BUSY_WAIT,
    MAX_QUERY_COST,
    MEDIA_PER_PRODUCT,
    RESTORE_MARGIN_SECONDS,
    CostBucket,
    PageSizer,
    ShopifyGraphQL,
    ShopifyRest,
    ShopifyStorefront,
    connector_for,
    deleted_products_search,
    events_page_cost,
    media_needed,
    product_node_cost,
    products_page_cost,
)
from emulators.server import running
from emulators.shopify import Shop, create_app, sign_webhook
from emulators.shopify_data import ProductFilter
from ground.errors import AuthError, ConfigError, InvalidSignature, RateLimited, SkippedProduct, SourceError
from tests.connector_contract import ConnectorContract
from tests.fakes import FakeClock

SHOP = "https://acme.myshopify.com"
TOKEN = "shpat_unit_secret_token"
SECRET = "whsec_unit"
Handler = Callable[[httpx.Request], httpx.Response]


def config(kind: str = "shopify", **extra: Any) -> SourceConfig:
    values: dict[str, Any] = {"name": "acme", "kind": kind, "url": SHOP, **extra}
    if kind != "shopify-storefront":
        values.setdefault("access_token", SecretStr(TOKEN))
    return parse_source(values)


def mock(handler: Handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def gql_product(number: int, *, updated: datetime, status: str = "ACTIVE", media: int = 2) -> dict[str, Any]:
    return {
        "id": f"gid://shopify/Product/{number}",
        "title": f"Product {number}",
        "handle": f"product-{number}",
        "descriptionHtml": f"<p>Nice &amp; warm <b>{number}</b></p>",
        "vendor": "Acme",
        "productType": "Shirt",
        "status": status,
        "tags": ["b", "a", "b"],
        "onlineStoreUrl": f"https://acme.example/products/product-{number}",
        "updatedAt": updated.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "media": {
            "edges": [
                {"node": {"image": {"url": f"https://cdn.example/{number}/{i}.jpg", "altText": None}}}
                for i in range(media)
            ]
            + [{"node": {}}]  # a video: no image
        },
    }


def cost_extension(requested: float, available: float, maximum: float = 1000.0, rate: float = 50.0) -> dict[str, Any]:
    return {
        "cost": {
            "requestedQueryCost": requested,
            "actualQueryCost": None,
            "throttleStatus": {"maximumAvailable": maximum, "currentlyAvailable": available, "restoreRate": rate},
        }
    }


THROTTLED_ERROR = {"message": "Throttled", "extensions": {"code": "THROTTLED"}}


@dataclass
class FakeAdminShop:
    """A behaving stand-in for the Admin GraphQL endpoint: a cost bucket that really empties and restores on the
    fake clock, cursor paging over `updatedAt` order, a `productsCount`, and the requested-cost rule."""

    clock: FakeClock
    products: list[dict[str, Any]]
    maximum: float = 1000.0
    rate: float = 50.0
    # Points per product in a page, as this server counts them (a real server may count differently from us).
    per_product: float = 33.0
    available: float = 1000.0
    at: float = 0.0
    throttled: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.available = self.maximum
        self.at = self.clock()

    def _restore(self) -> None:
        now = self.clock()
        self.available = min(self.maximum, self.available + (now - self.at) * self.rate)
        self.at = now

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["X-Shopify-Access-Token"] == TOKEN
        assert request.url.path == "/admin/api/2025-07/graphql.json"
        body = json.loads(request.content)
        self.requests.append(body)
        query, variables = body["query"], body.get("variables") or {}
        requested = 3 + variables["first"] * self.per_product if "products(" in query else 1
        self._restore()
        if requested > MAX_QUERY_COST:
            error = {"message": "too costly", "extensions": {"code": "MAX_COST_EXCEEDED", "cost": requested}}
            return httpx.Response(200, json={"errors": [error]})
        if requested > self.available:
            self.throttled += 1
            return httpx.Response(
                200,
                json={
                    "errors": [THROTTLED_ERROR],
                    "extensions": cost_extension(requested, self.available, self.maximum, self.rate),
                },
            )
        self.available -= requested
        data = self._answer(query, variables)
        return httpx.Response(
            200, json={"data": data, "extensions": cost_extension(requested, self.available, self.maximum, self.rate)}
        )

    def _answer(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        ordered = sorted(self.products, key=lambda p: (p["updatedAt"], p["id"]))
        if "productsCount" in query:
            return {"productsCount": {"count": len(ordered)}}
        if "product(id:" in query:
            found = [p for p in ordered if p["id"] == variables["id"]]
            return {"product": found[0] if found else None}
        search = variables.get("query")
        if search:
            match = re.fullmatch(r"updated_at:>='(.+)'", search)
            assert match, search
            ordered = [p for p in ordered if p["updatedAt"] >= match.group(1)]
        start = int(variables["after"]) if variables.get("after") else 0
        page = ordered[start : start + variables["first"]]
        end = start + len(page)
        return {
            "products": {
                "pageInfo": {"hasNextPage": end < len(ordered), "endCursor": str(end) if page else None},
                "edges": [{"node": node} for node in page],
            }
        }


def shop_products(count: int) -> list[dict[str, Any]]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return [gql_product(n, updated=start + timedelta(hours=n)) for n in range(1, count + 1)]


# -- cost arithmetic -------------------------------------------------------------------------------------------------


def test_a_page_costs_by_the_shopify_rule_and_250_with_media_cannot_run() -> None:
    # products: 2 + pageInfo 1 + N × (node 1 + media connection 2 + 15 × (media node 1 + its image object 1))
    assert products_page_cost(1) == 2 + 1 + (1 + 2 + 15 * 2)
    assert products_page_cost(250) > MAX_QUERY_COST
    assert products_page_cost(30) <= MAX_QUERY_COST < products_page_cost(31)


@pytest.mark.parametrize(
    ("bucket_max", "page_size", "expected"),
    [(1000.0, None, 30), (2000.0, None, 30), (200.0, None, 5), (1000.0, 20, 20)],
    ids=["standard-bucket", "plus-bucket-still-capped-at-1000", "small-bucket", "configured-page-size"],
)
def test_the_page_size_fits_the_bucket_and_the_per_query_cap(
    bucket_max: float, page_size: int | None, expected: int
) -> None:
    connector = ShopifyGraphQL(config(page_size=page_size), client=mock(lambda r: httpx.Response(500)))
    connector.bucket.update({"maximumAvailable": bucket_max, "currentlyAvailable": bucket_max, "restoreRate": 50})

    size = connector.page_size()

    assert size == expected
    assert products_page_cost(size) <= min(bucket_max, MAX_QUERY_COST)


def test_the_bucket_waits_exactly_for_the_missing_points_at_the_restore_rate() -> None:
    clock = FakeClock()
    bucket = CostBucket(sleep=clock.sleep, clock=clock)
    bucket.update({"maximumAvailable": 1000, "currentlyAvailable": 100, "restoreRate": 50})

    bucket.acquire(600)
    clock.now += 3  # time spent elsewhere restores points too
    bucket.update({"maximumAvailable": 1000, "currentlyAvailable": 0, "restoreRate": 50})
    clock.now += 4
    bucket.acquire(300)
    bucket.acquire(10)

    assert clock.sleeps[0] == pytest.approx(500 / 50 + RESTORE_MARGIN_SECONDS)
    assert clock.sleeps[1] == pytest.approx((300 - 4 * 50) / 50 + RESTORE_MARGIN_SECONDS)
    assert len(clock.sleeps) == 2  # the last one fits what restored meanwhile


def test_an_unknown_bucket_is_assumed_full_and_does_not_wait() -> None:
    clock = FakeClock()
    bucket = CostBucket(sleep=clock.sleep, clock=clock)

    assert bucket.acquire(900) == 0
    assert clock.sleeps == []


# -- GraphQL paging over a behaving fake -----------------------------------------------------------------------------


def test_a_paced_read_of_a_small_bucket_never_trips_throttled() -> None:
    clock = FakeClock()
    shop = FakeAdminShop(clock, shop_products(120), maximum=200.0, rate=20.0)
    connector = ShopifyGraphQL(config(), client=mock(shop), sleep=clock.sleep, clock=clock)

    products = list(connector.iter_products(datetime(2024, 1, 1, tzinfo=UTC)))

    assert [p.product_id for p in products if isinstance(p, SourceProduct)] == [str(n) for n in range(1, 121)]
    assert shop.throttled == 0
    assert connector.throttled == 0
    assert clock.sleeps, "a bucket of 200 at 20 points/s cannot serve 120 products without waiting"


def test_a_graphql_product_normalizes_id_text_tags_media_and_url() -> None:
    clock = FakeClock()
    shop = FakeAdminShop(
        clock, [gql_product(7, updated=datetime(2025, 3, 1, 12, tzinfo=UTC), status="DRAFT", media=12)]
    )
    connector = ShopifyGraphQL(config(), client=mock(shop), sleep=clock.sleep, clock=clock)

    (item,) = connector.iter_products(datetime(2025, 1, 1, tzinfo=UTC))

    assert isinstance(item, SourceProduct)
    assert (item.product_id, item.status, item.title) == ("7", "draft", "Product 7")
    assert item.description == "Nice & warm 7"
    assert item.tags == ("b", "a")
    assert len(item.images) == 10
    assert item.images[0].url == "https://cdn.example/7/0.jpg"
    assert item.url == "https://acme.example/products/product-7"
    assert item.updated_at == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert item.raw_ref == "gid://shopify/Product/7"


def test_an_incremental_read_asks_shopify_for_updated_at_since_sorted_by_update() -> None:
    clock = FakeClock()
    shop = FakeAdminShop(clock, shop_products(10))
    connector = ShopifyGraphQL(config(), client=mock(shop), sleep=clock.sleep, clock=clock)
    since = datetime(2025, 1, 1, 5, 30, 15, 900, tzinfo=UTC)

    products = [p for p in connector.iter_products(since) if isinstance(p, SourceProduct)]

    page_request = next(r for r in shop.requests if "products(" in r["query"])
    assert page_request["variables"]["query"] == "updated_at:>='2025-01-01T05:30:15Z'"
    assert "sortKey: UPDATED_AT" in page_request["query"]
    assert [p.product_id for p in products] == [str(n) for n in range(6, 11)]


def test_a_server_counting_more_per_product_costs_one_resize_not_a_failure() -> None:
    clock = FakeClock()
    shop = FakeAdminShop(clock, shop_products(150), per_product=40.0)  # counting more than we expect
    connector = ShopifyGraphQL(config(), client=mock(shop), sleep=clock.sleep, clock=clock)

    products = list(connector.iter_products(datetime(2024, 1, 1, tzinfo=UTC)))

    assert len(products) == 150
    firsts = [r["variables"]["first"] for r in shop.requests if "products(" in r["query"]]
    assert firsts[0] == 30
    assert firsts[1] == 24  # floor((1000 - 3) / 40)
    assert all(3 + first * 40 <= MAX_QUERY_COST for first in firsts[1:])
    assert shop.throttled == 0


def test_a_server_counting_less_per_product_gets_bigger_pages() -> None:
    clock = FakeClock()
    shop = FakeAdminShop(clock, shop_products(300), per_product=4.0)
    connector = ShopifyGraphQL(config(), client=mock(shop), sleep=clock.sleep, clock=clock)

    list(connector.iter_products(datetime(2024, 1, 1, tzinfo=UTC)))

    firsts = [r["variables"]["first"] for r in shop.requests if "products(" in r["query"]]
    assert firsts[0] == 30
    assert firsts[1] == 249  # floor((1000 - 3) / 4), under Shopify's 250


@pytest.mark.parametrize("status", [200, 429], ids=["throttled-as-200", "throttled-as-429"])
def test_throttled_waits_for_the_restore_and_retries_whatever_the_status(status: int) -> None:
    clock = FakeClock()
    answers = iter(
        [
            httpx.Response(status, json={"errors": [THROTTLED_ERROR], "extensions": cost_extension(400, 100)}),
            httpx.Response(200, json={"data": {"product": None}, "extensions": cost_extension(13, 987)}),
        ]
    )
    connector = ShopifyGraphQL(config(), client=mock(lambda r: next(answers)), sleep=clock.sleep, clock=clock)

    assert connector.get_product("42") is None

    assert clock.sleeps == [pytest.approx((400 - 100) / 50 + RESTORE_MARGIN_SECONDS)]
    assert connector.throttled == 1


def test_throttled_forever_fails_the_read_after_a_bounded_number_of_waits() -> None:
    clock = FakeClock()
    throttled = httpx.Response(200, json={"errors": [THROTTLED_ERROR], "extensions": cost_extension(400, 0)})
    connector = ShopifyGraphQL(config(), client=mock(lambda r: throttled), sleep=clock.sleep, clock=clock)

    with pytest.raises(SourceError, match="THROTTLED"):
        connector.get_product("42")

    assert 1 <= len(clock.sleeps) <= 10


def test_a_429_without_a_body_waits_and_retries() -> None:
    clock = FakeClock()
    answers = iter(
        [
            httpx.Response(429, text="Too Many Requests"),
            httpx.Response(200, json={"data": {"product": None}, "extensions": cost_extension(13, 987)}),
        ]
    )
    connector = ShopifyGraphQL(config(), client=mock(lambda r: next(answers)), sleep=clock.sleep, clock=clock)

    assert connector.get_product("42") is None
    assert len(clock.sleeps) == 1 and clock.sleeps[0] > 0


def test_a_429_with_retry_after_waits_that_long_instead_of_guessing() -> None:
    clock = FakeClock()
    answers = iter(
        [
            httpx.Response(429, text="slow down", headers={"Retry-After": "3"}),
            httpx.Response(200, json={"data": {"product": None}, "extensions": cost_extension(13, 987)}),
        ]
    )
    connector = ShopifyGraphQL(config(), client=mock(lambda r: next(answers)), sleep=clock.sleep, clock=clock)

    assert connector.get_product("42") is None
    assert clock.sleeps == [3.0]


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (httpx.Response(401, text="[API] Invalid API key or access token"), AuthError, "'acme'"),
        (httpx.Response(403, text="forbidden"), AuthError, "'acme'"),
        (
            httpx.Response(
                200,
                json={
                    "errors": [
                        {"message": "Access denied for products field.", "extensions": {"code": "ACCESS_DENIED"}}
                    ]
                },
            ),
            AuthError,
            "read_products",
        ),
        (
            httpx.Response(200, json={"errors": [{"message": "Field 'nope' doesn't exist on type 'Product'"}]}),
            SourceError,
            "Field 'nope' doesn't exist",
        ),
        (httpx.Response(200, text="<html>maintenance</html>"), SourceError, "not JSON"),
        (httpx.Response(200, json={"data": None}), SourceError, "without data"),
    ],
    ids=["401", "403", "access-denied", "graphql-error", "not-json", "no-data"],
)
def test_errors_map_to_what_the_caller_should_do(answer: httpx.Response, error: type[Exception], message: str) -> None:
    clock = FakeClock()
    connector = ShopifyGraphQL(config(), client=mock(lambda r: answer), sleep=clock.sleep, clock=clock)

    with pytest.raises(error, match=re.escape(message)) as caught:
        connector.get_product("42")

    assert TOKEN not in str(caught.value)
    assert TOKEN not in repr(connector)


def test_get_product_asks_by_gid_and_refuses_a_non_id() -> None:
    clock = FakeClock()
    shop = FakeAdminShop(clock, shop_products(3))
    connector = ShopifyGraphQL(config(), client=mock(shop), sleep=clock.sleep, clock=clock)

    found = connector.get_product("gid://shopify/Product/2")

    assert found is not None and found.product_id == "2"
    assert connector.get_product("3") is not None
    with pytest.raises(SourceError, match="not a Shopify product id"):
        connector.get_product("../admin")


# -- bulk export -----------------------------------------------------------------------------------------------------


def bulk_shop(
    *, count: int, polls: list[dict[str, Any]], jsonl: str = "", run_answers: list[dict[str, Any]] | None = None
) -> tuple[Handler, list[str]]:
    """Answers productsCount, bulkOperationRunQuery (queued `run_answers`, then success), node polls, the file."""
    seen: list[str] = []
    polls_left = iter(polls)
    runs = iter(run_answers or [])
    ok_run = {
        "bulkOperationRunQuery": {
            "bulkOperation": {"id": "gid://shopify/BulkOperation/1", "status": "CREATED"},
            "userErrors": [],
        }
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "storage.example":
            seen.append("download")
            return httpx.Response(200, content=jsonl.encode())
        query = json.loads(request.content)["query"]
        extensions = cost_extension(1, 999)
        if "productsCount" in query:
            seen.append("count")
            return httpx.Response(200, json={"data": {"productsCount": {"count": count}}, "extensions": extensions})
        if "bulkOperationRunQuery" in query:
            seen.append("run")
            return httpx.Response(200, json={"data": next(runs, ok_run), "extensions": extensions})
        if "node(id:" in query:
            seen.append("poll")
            return httpx.Response(200, json={"data": {"node": next(polls_left)}, "extensions": extensions})
        seen.append("page")
        return httpx.Response(
            200,
            json={
                "data": {"products": {"pageInfo": {"hasNextPage": False, "endCursor": None}, "edges": []}},
                "extensions": extensions,
            },
        )

    return handler, seen


COMPLETED = {
    "id": "gid://shopify/BulkOperation/1",
    "status": "COMPLETED",
    "errorCode": None,
    "url": "https://storage.example/r.jsonl",
}
RUNNING = {"id": "gid://shopify/BulkOperation/1", "status": "RUNNING", "errorCode": None, "url": None}


def bulk_jsonl(count: int) -> str:
    lines = []
    for n in range(1, count + 1):
        lines.append(
            json.dumps(
                {
                    "id": f"gid://shopify/Product/{n}",
                    "title": f"P{n}",
                    "status": "ACTIVE",
                    "updatedAt": "2025-01-01T00:00:00Z",
                }
            )
        )
        for i in range(2):
            lines.append(
                json.dumps(
                    {
                        "image": {"url": f"https://cdn.example/{n}/{i}.jpg", "altText": "alt"},
                        "__parentId": f"gid://shopify/Product/{n}",
                    }
                )
            )
    return "\n".join(lines) + "\n"


def test_a_full_read_of_a_small_shop_uses_bulk_and_polls_with_growing_waits() -> None:
    clock = FakeClock()
    handler, seen = bulk_shop(count=3, polls=[RUNNING, RUNNING, RUNNING, COMPLETED], jsonl=bulk_jsonl(3))
    connector = ShopifyGraphQL(config(), client=mock(handler), sleep=clock.sleep, clock=clock)

    products = list(connector.iter_products(None))

    assert seen == ["run", "poll", "poll", "poll", "poll", "download"]
    assert [(p.product_id, len(p.images)) for p in products if isinstance(p, SourceProduct)] == [
        ("1", 2),
        ("2", 2),
        ("3", 2),
    ]
    assert clock.sleeps == sorted(clock.sleeps) and clock.sleeps[0] < clock.sleeps[-1]
    assert connector.notes == {}


@pytest.mark.parametrize(
    ("setting", "override", "since", "expected"),
    [
        ("auto", None, None, ["run", "poll", "download"]),
        ("auto", None, datetime(2025, 1, 1, tzinfo=UTC), ["count", "page"]),
        ("always", None, datetime(2025, 1, 1, tzinfo=UTC), ["run", "poll", "download"]),
        ("never", None, None, ["count", "page"]),
        ("never", "always", None, ["run", "poll", "download"]),
        ("auto", "never", None, ["count", "page"]),
    ],
    ids=["auto-full-bulk", "auto-incremental-pages", "always-incremental-bulk", "never", "flag-forces", "flag-forbids"],
)
def test_bulk_is_chosen_by_the_setting_or_the_runs_override(
    setting: BulkMode, override: BulkMode | None, since: datetime | None, expected: list[str]
) -> None:
    clock = FakeClock()
    handler, seen = bulk_shop(count=10**6, polls=[COMPLETED], jsonl=bulk_jsonl(1))
    connector = ShopifyGraphQL(
        config(bulk=setting), client=mock(handler), bulk=override, sleep=clock.sleep, clock=clock
    )

    list(connector.iter_products(since))

    assert seen == expected


def test_bulk_threshold_is_refused_naming_the_setting_that_replaced_it() -> None:
    with pytest.raises(ConfigError, match=r'bulk_threshold was replaced by bulk = "auto"'):
        parse_sources(
            {"sources": [{"name": "a", "kind": "shopify", "url": SHOP, "access_token": "t", "bulk_threshold": 5}]}
        )


@pytest.mark.parametrize("status", ["FAILED", "CANCELED", "EXPIRED"])
def test_a_bulk_operation_that_ends_badly_falls_back_to_pages_and_says_why(
    status: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    ended = {**RUNNING, "status": status, "errorCode": "INTERNAL_SERVER_ERROR" if status == "FAILED" else None}
    handler, seen = bulk_shop(count=0, polls=[RUNNING, ended])
    connector = ShopifyGraphQL(config(), client=mock(handler), bulk="always", sleep=clock.sleep, clock=clock)

    with caplog.at_level(logging.WARNING, logger="connectors.shopify"):
        list(connector.iter_products(None))

    assert seen == ["run", "poll", "poll", "page"]
    why = "internal_server_error" if status == "FAILED" else status.lower()
    assert connector.notes == {"bulk_fallback": 1, f"bulk_fallback:{why}": 1}
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert status in warning.getMessage() and "page by page" in warning.getMessage()


def test_a_concurrent_bulk_operation_is_waited_for_then_ours_runs() -> None:
    clock = FakeClock()
    busy = {
        "bulkOperationRunQuery": {
            "bulkOperation": None,
            "userErrors": [
                {
                    "field": None,
                    "message": "A bulk query operation for this app and shop is already in progress: gid://shopify/BulkOperation/9.",
                }
            ],
        }
    }
    handler, seen = bulk_shop(count=0, polls=[COMPLETED], jsonl=bulk_jsonl(1), run_answers=[busy, busy])
    connector = ShopifyGraphQL(config(), client=mock(handler), bulk="always", sleep=clock.sleep, clock=clock)

    products = list(connector.iter_products(None))

    assert seen == ["run", "run", "run", "poll", "download"]
    assert len(products) == 1
    assert len(clock.sleeps) == 2


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (
            {
                "data": {
                    "bulkOperationRunQuery": {
                        "bulkOperation": None,
                        "userErrors": [{"field": ["query"], "message": "Invalid bulk query: nope"}],
                    }
                }
            },
            "refused",
        ),
        (
            {
                "errors": [
                    {
                        "message": "Access denied for bulkOperationRunQuery field.",
                        "extensions": {"code": "ACCESS_DENIED"},
                    }
                ]
            },
            "access_denied",
        ),
    ],
    ids=["refused", "access-denied"],
)
def test_a_bulk_export_the_shop_will_not_run_falls_back_to_pages(answer: dict[str, Any], why: str) -> None:
    clock = FakeClock()
    handler, seen = bulk_shop(count=0, polls=[])

    def refusing(request: httpx.Request) -> httpx.Response:
        if "bulkOperationRunQuery" in json.loads(request.content)["query"]:
            seen.append("run")
            return httpx.Response(200, json={**answer, "extensions": cost_extension(10, 990)})
        return handler(request)

    connector = ShopifyGraphQL(config(), client=mock(refusing), sleep=clock.sleep, clock=clock)

    assert list(connector.iter_products(None)) == []

    assert seen == ["run", "page"]
    assert connector.notes == {"bulk_fallback": 1, f"bulk_fallback:{why}": 1}


def test_another_bulk_operation_that_never_finishes_falls_back_to_pages_after_the_wait() -> None:
    clock = FakeClock()
    busy = {
        "bulkOperationRunQuery": {
            "bulkOperation": None,
            "userErrors": [
                {"field": None, "message": "A bulk query operation for this app and shop is already in progress."}
            ],
        }
    }
    handler, seen = bulk_shop(count=0, polls=[], run_answers=[busy] * BULK_BUSY_RETRIES)
    connector = ShopifyGraphQL(config(), client=mock(handler), sleep=clock.sleep, clock=clock)

    list(connector.iter_products(None))

    assert seen == ["run"] * BULK_BUSY_RETRIES + ["page"]
    assert connector.notes == {"bulk_fallback": 1, "bulk_fallback:busy": 1}
    assert sum(clock.sleeps) >= (BULK_BUSY_RETRIES - 1) * BULK_BUSY_WAIT


@pytest.mark.parametrize(("version", "grouped"), [("2025-07", False), ("2026-01", True), ("2026-04", True)])
def test_bulk_asks_for_output_grouped_by_parent_where_it_is_no_longer_the_default(version: str, grouped: bool) -> None:
    clock = FakeClock()
    handler, _ = bulk_shop(count=0, polls=[COMPLETED], jsonl=bulk_jsonl(1))
    mutations: list[str] = []

    def recording(request: httpx.Request) -> httpx.Response:
        if request.url.host != "storage.example":
            query = json.loads(request.content)["query"]
            if query.startswith("mutation"):
                mutations.append(query)
        return handler(request)

    connector = ShopifyGraphQL(
        config(api_version=version), client=mock(recording), bulk="always", sleep=clock.sleep, clock=clock
    )

    list(connector.iter_products(None))

    assert ("groupObjects: true" in mutations[0]) is grouped


def test_a_completed_bulk_operation_without_a_file_yields_nothing() -> None:
    clock = FakeClock()
    handler, seen = bulk_shop(count=0, polls=[{**COMPLETED, "url": None}])
    connector = ShopifyGraphQL(config(), client=mock(handler), bulk="always", sleep=clock.sleep, clock=clock)

    assert list(connector.iter_products(None)) == []
    assert "download" not in seen


def test_an_ungrouped_bulk_file_is_reported_rather_than_losing_images() -> None:
    clock = FakeClock()
    lines = bulk_jsonl(2).splitlines()
    ungrouped = "\n".join([lines[0], lines[3], lines[1]])  # product 1, product 2, then a child of product 1
    handler, _ = bulk_shop(count=0, polls=[COMPLETED], jsonl=ungrouped)
    connector = ShopifyGraphQL(config(), client=mock(handler), bulk="always", sleep=clock.sleep, clock=clock)

    with pytest.raises(SourceError, match="not grouped"):
        list(connector.iter_products(None))


# -- REST ------------------------------------------------------------------------------------------------------------


def rest_product(number: int, *, updated: str = "2025-01-01T00:00:00-05:00") -> dict[str, Any]:
    return {
        "id": number,
        "title": f"Product {number}",
        "body_html": "<p>Hello</p>",
        "handle": f"p-{number}",
        "status": "active",
        "published_at": "2024-01-01T00:00:00-05:00",
        "updated_at": updated,
        "tags": "x, y",
        "images": [{"src": f"https://cdn.example/{number}.jpg", "position": 1, "alt": None}],
        "variants": [{"price": "10.5"}],
    }


def test_rest_follows_the_link_header_url_exactly_as_given() -> None:
    next_url = f"{SHOP}/admin/api/2025-07/products.json?limit=250&page_info=eyJsYXN0X2lkIjo%3D%3D&x=a%2Cb"
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        assert request.headers["X-Shopify-Access-Token"] == TOKEN
        if len(requests) == 1:
            return httpx.Response(
                200,
                json={"products": [rest_product(1)]},
                headers={"Link": f'<{next_url}>; rel="next"', "X-Shopify-Shop-Api-Call-Limit": "1/40"},
            )
        return httpx.Response(
            200, json={"products": [rest_product(2)]}, headers={"Link": f'<{SHOP}/prev>; rel="previous"'}
        )

    connector = ShopifyRest(config("shopify-rest"), client=mock(handler))

    products = list(connector.iter_products(datetime(2024, 12, 31, 23, 0, tzinfo=UTC)))

    assert [p.product_id for p in products if isinstance(p, SourceProduct)] == ["1", "2"]
    assert requests[0].url.params["updated_at_min"] == "2024-12-31T23:00:00Z"
    assert requests[0].url.params["limit"] == "250"
    assert str(requests[1].url) == next_url


@pytest.mark.parametrize("kind", ["shopify", "shopify-rest"])
def test_a_redirect_is_reported_and_the_token_never_follows_it(kind: str) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(301, headers={"Location": "https://acme.example/admin/api/2025-07/x.json?sig=1"})

    client = httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=True)
    connector = connector_for(config(kind), client)

    with pytest.raises(SourceError, match=r"redirects \(301\) to https://acme.example/admin/api/2025-07/x.json;"):
        list(connector.iter_products(None))

    assert [r.url.host for r in requests] == ["acme.myshopify.com"]


def test_rest_refuses_a_next_link_to_another_host() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"products": []}, headers={"Link": '<https://evil.example/steal?page_info=x>; rel="next"'}
        )

    connector = ShopifyRest(config("shopify-rest"), client=mock(handler))

    with pytest.raises(SourceError, match="another host"):
        list(connector.iter_products())


def test_rest_refuses_a_next_link_that_repeats() -> None:
    link = {"Link": f'<{SHOP}/admin/api/2025-07/products.json?page_info=same>; rel="next"'}
    connector = ShopifyRest(
        config("shopify-rest"), client=mock(lambda r: httpx.Response(200, json={"products": []}, headers=link))
    )

    with pytest.raises(SourceError, match="paging loop"):
        list(connector.iter_products())


@pytest.mark.parametrize(
    ("header", "expected"), [("1/40", []), ("37/40", []), ("38/40", [0.5]), ("40/40", [1.5]), ("79/80", [1.0])]
)
def test_rest_paces_by_the_call_limit_header(header: str, expected: list[float]) -> None:
    clock = FakeClock()
    answer = httpx.Response(
        200, json={"products": [rest_product(1)]}, headers={"X-Shopify-Shop-Api-Call-Limit": header}
    )
    connector = ShopifyRest(config("shopify-rest"), client=mock(lambda r: answer), sleep=clock.sleep, clock=clock)

    list(connector.iter_products())

    assert clock.sleeps == pytest.approx(expected)


def test_rest_honours_429_retry_after() -> None:
    clock = FakeClock()
    answers = iter(
        [httpx.Response(429, headers={"Retry-After": "2.0"}), httpx.Response(200, json=[rest_product(1)])]  # bare array
    )
    connector = ShopifyRest(
        config("shopify-rest"), client=mock(lambda r: next(answers)), sleep=clock.sleep, clock=clock
    )

    products = list(connector.iter_products())

    assert clock.sleeps == [2.0]
    assert [p.product_id for p in products if isinstance(p, SourceProduct)] == ["1"]


def test_rest_gives_up_on_a_long_retry_after() -> None:
    clock = FakeClock()
    answer = httpx.Response(429, headers={"Retry-After": "3600"})
    connector = ShopifyRest(config("shopify-rest"), client=mock(lambda r: answer), sleep=clock.sleep, clock=clock)

    with pytest.raises(RateLimited):
        list(connector.iter_products())


def test_rest_get_product_reads_one_and_answers_none_for_404() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/products/5.json"):
            return httpx.Response(200, json={"product": rest_product(5)})
        return httpx.Response(404, json={"errors": "Not Found"})

    connector = ShopifyRest(config("shopify-rest"), client=mock(handler))

    found = connector.get_product("5")
    assert found is not None and found.attributes["price"] == "10.50"
    assert connector.get_product("6") is None


# -- storefront ------------------------------------------------------------------------------------------------------


def storefront_handler(total: int, requests: list[httpx.Request]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        assert "X-Shopify-Access-Token" not in request.headers
        page, limit = int(request.url.params["page"]), int(request.url.params["limit"])
        numbers = range((page - 1) * limit + 1, min(total, page * limit) + 1)
        products = [{**rest_product(n), "status": None, "tags": ["x", "y"]} for n in numbers]
        return httpx.Response(200, json={"products": products})

    return handler


def test_the_storefront_reads_until_an_empty_page_and_counts_everything_active() -> None:
    requests: list[httpx.Request] = []
    connector = ShopifyStorefront(
        config("shopify-storefront", page_size=2), client=mock(storefront_handler(5, requests))
    )

    products = [p for p in connector.iter_products() if isinstance(p, SourceProduct)]

    assert [p.product_id for p in products] == ["1", "2", "3", "4", "5"]
    assert {p.status for p in products} == {"active"}
    assert products[0].url == f"{SHOP}/products/p-1"
    assert products[0].tags == ("x", "y")
    assert [r.url.params["page"] for r in requests] == ["1", "2", "3", "4"]
    assert requests[0].url.path == "/products.json"


def test_the_storefront_says_clearly_when_a_shop_exceeds_its_25000_cap() -> None:
    requests: list[httpx.Request] = []
    connector = ShopifyStorefront(config("shopify-storefront"), client=mock(storefront_handler(30_000, requests)))

    with pytest.raises(SourceError, match=r"more than 25,000 products.*use kind = \"shopify\""):
        for _ in connector.iter_products():
            pass

    assert len(requests) == 100  # page 101 × 250 would pass the cap: never asked


def test_the_storefront_filters_since_on_its_side() -> None:
    requests: list[httpx.Request] = []
    connector = ShopifyStorefront(config("shopify-storefront"), client=mock(storefront_handler(3, requests)))

    assert list(connector.iter_products(datetime(2030, 1, 1, tzinfo=UTC))) == []
    assert len(list(connector.iter_products(datetime(2025, 1, 1, 5, tzinfo=UTC)))) == 3


def test_the_storefront_finds_one_product_by_handle_or_id() -> None:
    requests: list[httpx.Request] = []
    listing = storefront_handler(3, requests)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/products/p-2.json":
            return httpx.Response(200, json={"product": rest_product(2)})
        if request.url.path.startswith("/products/"):
            return httpx.Response(404)
        return listing(request)

    connector = ShopifyStorefront(config("shopify-storefront"), client=mock(handler))

    by_handle = connector.get_product("p-2")
    assert by_handle is not None and by_handle.product_id == "2"
    by_id = connector.get_product("3")
    assert by_id is not None and by_id.handle == "p-3"
    assert connector.get_product("404") is None
    assert connector.get_product("gone-handle") is None


# -- webhooks --------------------------------------------------------------------------------------------------------


def signed(body: bytes, topic: str, secret: str = SECRET, **extra: str) -> dict[str, str]:
    digest = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    return {"X-Shopify-Hmac-Sha256": digest, "X-Shopify-Topic": topic, **extra}


@pytest.fixture(params=["shopify", "shopify-rest", "shopify-storefront"])
def webhook_connector(request: pytest.FixtureRequest) -> Iterator[Any]:
    connector = connector_for(
        config(request.param, webhook_secret=SecretStr(SECRET), webhook_secret_previous=SecretStr("whsec_old")),
        mock(lambda r: httpx.Response(500)),
    )
    yield connector
    connector.close()


def test_an_update_webhook_becomes_an_upsert_of_the_full_product(webhook_connector: Any) -> None:
    body = json.dumps(rest_product(77, updated="2025-02-01T10:00:00Z")).encode()
    headers = {
        k.lower(): v
        for k, v in signed(
            body,
            "products/update",
            **{"X-Shopify-Webhook-Id": "w-1", "X-Shopify-Triggered-At": "2025-02-01T10:00:01.5Z"},
        ).items()
    }

    event = webhook_connector.verify_webhook(headers, body)

    assert (event.topic, event.product_id, event.event_id) == ("upsert", "77", "w-1")
    assert event.triggered_at == datetime(2025, 2, 1, 10, 0, 1, 500000, tzinfo=UTC)
    assert event.updated_at == datetime(2025, 2, 1, 10, tzinfo=UTC)
    assert event.product is not None and event.product.title == "Product 77"
    assert event.platform_topic == "products/update"


def test_a_delete_webhook_carries_only_the_id_and_prefers_the_event_id(webhook_connector: Any) -> None:
    body = b'{"id": 788032119674292900}'
    headers = signed(body, "products/delete", **{"X-Shopify-Event-Id": "e-9", "X-Shopify-Webhook-Id": "w-9"})

    event = webhook_connector.verify_webhook(headers, body)

    assert (event.topic, event.product_id, event.event_id, event.product) == (
        "delete",
        "788032119674292900",
        "e-9",
        None,
    )


def test_the_previous_secret_still_verifies_during_rotation(webhook_connector: Any) -> None:
    body = b'{"id": 5}'

    event = webhook_connector.verify_webhook(signed(body, "products/delete", secret="whsec_old"), body)

    assert event.product_id == "5"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: ({**h, "X-Shopify-Hmac-Sha256": "AAAA"}, b),
        lambda h, b: ({k: v for k, v in h.items() if k != "X-Shopify-Hmac-Sha256"}, b),
        lambda h, b: (h, b + b" "),
        lambda h, b: ({**h, "X-Shopify-Hmac-Sha256": "é"}, b),
    ],
    ids=["wrong-hmac", "missing-header", "changed-body", "non-ascii-header"],
)
def test_a_bad_signature_is_refused_before_anything_is_parsed(
    webhook_connector: Any, tamper: Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]
) -> None:
    body = b"not json at all"
    headers, sent = tamper(signed(body, "shop/redact"), body)

    with pytest.raises(InvalidSignature) as caught:
        webhook_connector.verify_webhook(headers, sent)

    assert str(caught.value) == "webhook signature missing or invalid"


def test_a_source_without_a_webhook_secret_refuses_every_webhook() -> None:
    connector = ShopifyRest(config("shopify-rest"), client=mock(lambda r: httpx.Response(500)))
    body = b'{"id": 1}'

    with pytest.raises(InvalidSignature):
        connector.verify_webhook(signed(body, "products/delete"), body)


@pytest.mark.parametrize(
    ("topic", "body", "reason"),
    [
        ("orders/create", b'{"id": 1}', "unknown_topic"),
        ("products/update", b"{not json", "malformed_payload"),
        ("products/update", b"[1, 2]", "malformed_payload"),
        ("products/delete", b'{"title": "x"}', "malformed_payload"),
        ("products/create", json.dumps({**rest_product(3), "updated_at": "yesterday"}).encode(), "bad_updated_at"),
    ],
    ids=["unknown-topic", "not-json", "not-an-object", "delete-without-id", "bad-updated-at"],
)
def test_a_verified_but_unusable_delivery_is_a_skipped_product_with_a_reason(
    webhook_connector: Any, topic: str, body: bytes, reason: str
) -> None:
    with pytest.raises(SkippedProduct) as caught:
        webhook_connector.verify_webhook(signed(body, topic), body)

    assert caught.value.reason == reason


# -- construction ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "cls"),
    [("shopify", ShopifyGraphQL), ("shopify-rest", ShopifyRest), ("shopify-storefront", ShopifyStorefront)],
)
def test_connector_for_picks_the_flavour_by_kind(kind: str, cls: type) -> None:
    connector = connector_for(config(kind), None)

    assert isinstance(connector, cls)
    assert connector.source == "acme"
    connector.close()


def test_a_connector_refuses_a_source_of_another_kind_or_a_bad_url() -> None:
    with pytest.raises(ConfigError, match="kind"):
        ShopifyRest(config("shopify"))
    with pytest.raises(ConfigError, match="not an http"):
        ShopifyGraphQL(config(url="acme.myshopify.com"))


def test_a_naive_since_is_refused() -> None:
    connector = ShopifyStorefront(config("shopify-storefront"), client=mock(lambda r: httpx.Response(500)))

    with pytest.raises(ValueError, match="timezone-aware"):
        list(connector.iter_products(datetime(2025, 1, 1)))


# -- against the Shopify emulator, over real sockets -------------------------------------------------------------
#
# The emulator's clock is injectable and drives its buckets and bulk timeline; the connectors' sleep advances that
# same clock, so pacing and polling are exercised for real without any test waiting for wall time.

EMULATOR_TOKEN = "shpat_test"
EMULATOR_SECRET = "whsec_emulator"
# Emulated products are updated up to mid-2025; edits are stamped with the (frozen) emulator clock.
EMULATOR_START = datetime(2025, 7, 1, tzinfo=UTC).timestamp()


class EpochClock:
    """Epoch seconds that only move when a connector sleeps: the emulator's clock and the connector's."""

    def __init__(self) -> None:
        self.now = EMULATOR_START
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


@dataclass
class Emulator:
    url: str
    shop: Shop
    clock: EpochClock

    def source(self, kind: str, **extra: Any) -> SourceConfig:
        values: dict[str, Any] = {"name": "emulated", "kind": kind, "url": self.url, **extra}
        if kind != "shopify-storefront":
            values.setdefault("access_token", SecretStr(EMULATOR_TOKEN))
        return parse_source(values)

    def connector(self, kind: str, *, bulk: BulkMode | None = None, **extra: Any) -> Any:
        source = self.source(kind, **extra)
        clock = self.clock
        if kind == "shopify":
            return ShopifyGraphQL(source, bulk=bulk, sleep=clock.sleep, clock=clock)
        if kind == "shopify-rest":
            return ShopifyRest(source, sleep=clock.sleep, clock=clock)
        return ShopifyStorefront(source, sleep=clock.sleep, clock=clock)

    def stats(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.url}/_emulator/stats")
        answer.raise_for_status()
        stats: dict[str, Any] = answer.json()
        return stats

    def control(self, method: str, path: str, body: Any = None) -> httpx.Response:
        answer = httpx.request(method, f"{self.url}/_emulator/{path}", json=body)
        assert answer.status_code < 300, answer.text
        return answer

    def active_count(self) -> int:
        return int(self.shop.store.count_matching(ProductFilter.parse("status:active")))


@contextmanager
def emulator(**options: Any) -> Iterator[Emulator]:
    clock = EpochClock()
    app = create_app(clock=clock, access_token=EMULATOR_TOKEN, **options)
    with running(app) as server:
        yield Emulator(server.url, app.state.shop, clock)


@pytest.fixture(scope="module")
def shared_shop() -> Iterator[Emulator]:
    """One read-only emulated shop for the contract suites."""
    with emulator(products=200, seed=11) as shop:
        yield shop


@pytest.fixture(scope="module")
def shop_with_bad_records() -> Iterator[Emulator]:
    """A shop where two (active) products lost their title: unusable records among good ones."""
    with emulator(products=60, seed=12) as shop:
        for product_id in shop.shop.store.matching_ids("ID", reverse=False, product_filter=ProductFilter.parse(""))[
            3:5
        ]:
            shop.control("PATCH", f"products/{product_id}", {"title": "   ", "status": "active"})
        yield shop


class _EmulatedContract(ConnectorContract):
    kind = ""
    bulk: BulkMode | None = None

    @pytest.fixture
    def connector(self, shared_shop: Emulator) -> Iterator[Connector]:
        connector = shared_shop.connector(self.kind, bulk=self.bulk)
        yield connector
        connector.close()

    @pytest.fixture
    def connector_with_bad_records(self, shop_with_bad_records: Emulator) -> Iterator[Connector]:
        connector = shop_with_bad_records.connector(self.kind, bulk=self.bulk)
        yield connector
        connector.close()

    @pytest.fixture
    def expected_count(self, shared_shop: Emulator) -> int | None:
        return shared_shop.active_count() if self.kind == "shopify-storefront" else len(shared_shop.shop.store)


class TestShopifyGraphQLContract(_EmulatedContract):
    kind = "shopify"
    bulk = "never"


class TestShopifyBulkExportContract(_EmulatedContract):
    kind = "shopify"
    bulk = "always"


class TestShopifyRestContract(_EmulatedContract):
    kind = "shopify-rest"


class TestShopifyStorefrontContract(_EmulatedContract):
    kind = "shopify-storefront"


def test_the_three_flavours_and_bulk_agree_on_every_shared_product(shared_shop: Emulator) -> None:
    def by_id(connector: Any) -> dict[str, SourceProduct]:
        with connector:
            return {p.product_id: p for p in connector.iter_products(None) if isinstance(p, SourceProduct)}

    graphql = by_id(shared_shop.connector("shopify", bulk="never"))
    bulk = by_id(shared_shop.connector("shopify", bulk="always"))
    rest = by_id(shared_shop.connector("shopify-rest"))
    storefront = by_id(shared_shop.connector("shopify-storefront"))

    assert bulk == graphql
    assert rest.keys() == graphql.keys()
    assert storefront.keys() == {pid for pid, p in graphql.items() if p.status == "active"}
    for pid, product in rest.items():
        expected = graphql[pid]
        assert (product.title, product.status, product.updated_at) == (
            expected.title,
            expected.status,
            expected.updated_at,
        )
        assert [i.url for i in product.images] == [i.url for i in expected.images], pid
        assert product.tags == expected.tags and product.handle == expected.handle


def test_a_small_bucket_is_paced_so_the_read_finishes_without_tripping_throttled() -> None:
    with emulator(products=200, seed=5, bucket_size=100, restore_rate=10) as shop:
        connector = shop.connector("shopify", bulk="never")

        products = [p for p in connector.iter_products(None) if isinstance(p, SourceProduct)]

        stats = shop.stats()
    assert len(products) == 200
    assert stats["throttled"] <= 2, stats
    assert stats["max_cost_exceeded"] == 0
    assert shop.clock.slept > 0, "a bucket of 100 restoring 10 points/s cannot serve 200 products without waiting"


def test_an_unpaced_client_on_the_same_bucket_does_trip_throttled() -> None:
    # The control for the test above: the same bucket, asked for the same pages without waiting.
    with emulator(products=200, seed=5, bucket_size=100, restore_rate=10) as shop:
        query = (
            "query($after: String) { products(first: 2, after: $after) { pageInfo { hasNextPage endCursor } edges "
            "{ node { id media(first: 15) { edges { node { ... on MediaImage { image { url altText } } } } } } } } }"
        )
        after = None
        headers = {"X-Shopify-Access-Token": EMULATOR_TOKEN}
        for _ in range(5):
            answer = httpx.post(
                f"{shop.url}/admin/api/2025-07/graphql.json",
                json={"query": query, "variables": {"after": after}},
                headers=headers,
            ).json()
            if "data" in answer:
                after = answer["data"]["products"]["pageInfo"]["endCursor"]

        assert shop.stats()["throttled"] >= 1


def test_rest_honours_429_and_retry_after_from_the_emulator() -> None:
    with emulator(products=30, seed=6, rest_bucket=3, rest_leak=2) as shop:
        headers = {"X-Shopify-Access-Token": EMULATOR_TOKEN}
        for _ in range(3):  # another client fills the bucket; the emulator's clock is frozen, so it stays full
            httpx.get(f"{shop.url}/admin/api/2025-07/products.json?limit=1", headers=headers).raise_for_status()
        connector = shop.connector("shopify-rest", page_size=10)

        products = [p for p in connector.iter_products(None) if isinstance(p, SourceProduct)]

        stats = shop.stats()
    assert len(products) == 30
    assert stats["rest_429"] == 1, stats
    assert shop.clock.slept >= 2.0  # the emulator's Retry-After: 2.0


def test_rest_paced_by_the_call_limit_header_never_earns_a_429() -> None:
    with emulator(products=120, seed=6, rest_bucket=4, rest_leak=2) as shop:
        connector = shop.connector("shopify-rest", page_size=5)

        products = [p for p in connector.iter_products(None) if isinstance(p, SourceProduct)]

        assert len(products) == 120
        assert shop.stats()["rest_429"] == 0


def test_a_wrong_token_is_an_auth_error_naming_the_source_not_the_token() -> None:
    with emulator(products=5) as shop:
        for kind in ("shopify", "shopify-rest"):
            connector = shop.connector(kind, access_token=SecretStr("shpat_wrong_and_secret"))

            with pytest.raises(AuthError) as caught:
                list(connector.iter_products(None))

            assert "'emulated'" in str(caught.value)
            assert "shpat_wrong_and_secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("status", "code"),
    [("FAILED", "INTERNAL_SERVER_ERROR"), ("FAILED", "ACCESS_DENIED"), ("CANCELED", None), ("EXPIRED", None)],
)
def test_a_bulk_fault_falls_back_to_pages_that_read_the_whole_shop(status: str, code: str | None) -> None:
    with emulator(products=20) as shop:
        shop.control("POST", "config", {"bulk_fault": {"status": status, "error_code": code}})
        connector = shop.connector("shopify")

        products = [p for p in connector.iter_products(None) if isinstance(p, SourceProduct)]

        assert len(products) == len(shop.shop.store)
        assert connector.notes["bulk_fallback"] == 1
        assert connector.notes[f"bulk_fallback:{(code or status).lower()}"] == 1
        assert shop.stats()["throttled"] == 0


def test_a_bulk_export_waits_for_another_running_operation_then_runs_its_own() -> None:
    with emulator(products=40, bulk_duration=60.0) as shop:
        mutation = (
            'mutation { bulkOperationRunQuery(query: "{ products { edges { node { id } } } }") '
            "{ bulkOperation { id } userErrors { message } } }"
        )
        first = httpx.post(
            f"{shop.url}/admin/api/2025-07/graphql.json",
            json={"query": mutation},
            headers={"X-Shopify-Access-Token": EMULATOR_TOKEN},
        ).json()
        assert first["data"]["bulkOperationRunQuery"]["userErrors"] == []
        connector = shop.connector("shopify", bulk="always")

        products = [p for p in connector.iter_products(None) if isinstance(p, SourceProduct)]

        operations = shop.stats()["bulk_operations"]
    assert len(products) == 40
    assert [op["status"] for op in operations] == ["COMPLETED", "COMPLETED"]


def test_an_incremental_bulk_export_reads_only_what_changed() -> None:
    with emulator(products=50, seed=8) as shop:
        ids = shop.shop.store.matching_ids("ID", reverse=False, product_filter=ProductFilter.parse(""))[:3]
        shop.clock.now += 3600
        since = datetime.fromtimestamp(shop.clock.now, tz=UTC)
        for product_id in ids:
            shop.control("PATCH", f"products/{product_id}", {"title": f"Edited {product_id}"})
        connector = shop.connector("shopify", bulk="always")

        changed = [p for p in connector.iter_products(since) if isinstance(p, SourceProduct)]

    assert sorted(p.product_id for p in changed) == sorted(str(i) for i in ids)
    assert all(p.title.startswith("Edited") for p in changed)


def test_emulated_webhooks_verify_and_match_what_get_product_reads() -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def receiver(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        return Response(status_code=200)

    hooks = Starlette(routes=[Route("/hooks", receiver, methods=["POST"])])
    with running(hooks) as hook_server, emulator(products=10, seed=9) as shop:
        shop.control("POST", "webhooks", {"url": f"{hook_server.url}/hooks", "secret": EMULATOR_SECRET})
        product_id = shop.shop.store.matching_ids("ID", reverse=False, product_filter=ProductFilter.parse(""))[0]
        shop.control("PATCH", f"products/{product_id}", {"title": "Renamed", "status": "active"})
        shop.control("DELETE", f"products/{product_id}")
        assert shop.shop.webhooks.wait_idle(10.0), "the emulator did not finish its deliveries"
        connector = shop.connector("shopify-rest", webhook_secret=SecretStr(EMULATOR_SECRET))

        update, delete = (connector.verify_webhook(headers, body) for headers, body in received)

    assert (update.topic, update.product_id, update.platform_topic) == ("upsert", str(product_id), "products/update")
    assert update.product is not None and update.product.title == "Renamed"
    assert update.event_id and update.triggered_at is not None
    assert (delete.topic, delete.product_id) == ("delete", str(product_id))
    forged = {**received[0][0], "x-shopify-hmac-sha256": sign_webhook(received[0][1], "not-the-secret")}
    with pytest.raises(InvalidSignature):
        connector.verify_webhook(forged, received[0][1])


# -- page sizing from the actual cost --------------------------------------------------------------------------------


def image_media(count: int, *, video_at: int | None = None) -> list[dict[str, Any]]:
    media: list[dict[str, Any]] = [{"image": {"url": f"https://cdn.example/{n}.jpg"}} for n in range(count)]
    if video_at is not None:
        media.insert(video_at, {})
    return media


def test_the_media_a_product_needs_are_those_holding_its_first_ten_distinct_images() -> None:
    assert media_needed(image_media(3)) == 3
    assert media_needed(image_media(15)) == 10
    assert media_needed(image_media(12, video_at=4)) == 11
    twice = image_media(12)
    twice[2] = twice[1]  # the same picture uploaded twice counts once
    assert media_needed(twice) == 11


def test_the_sizer_starts_at_full_depth_and_grows_pages_when_products_use_fewer_media() -> None:
    sizer = PageSizer(extra_objects=0, wanted=250)
    assert (sizer.media, sizer.first(1000)) == (MEDIA_PER_PRODUCT, 30)

    # A page of 30 products needing at most 4 media: actual cost well under the requested worst case.
    sizer.record_page(first=30, requested=products_page_cost(30) - 1, actual=3 + 30 * 12, needed=[4, 2, 3] * 10)

    assert sizer.media == 5
    assert sizer.first(1000) == (1000 - 3) // product_node_cost(media=5) == 76
    assert sizer.first(200) == (200 - 3) // product_node_cost(media=5)  # bounded by the bucket
    assert PageSizer(extra_objects=0, wanted=40).first(1000) <= 40  # and by the source's page_size


def test_the_sizer_deepens_at_once_for_a_product_needing_more_and_never_past_full_depth() -> None:
    sizer = PageSizer(extra_objects=0, wanted=250)
    sizer.record_page(first=30, requested=None, actual=3 + 30 * 8, needed=[2] * 30)
    assert sizer.media == 3

    sizer.saw(9)
    assert sizer.media == 10
    sizer.saw(40)
    assert sizer.media == MEDIA_PER_PRODUCT


def test_the_sizer_keeps_full_depth_while_products_use_what_is_asked() -> None:
    sizer = PageSizer(extra_objects=0, wanted=250)
    full = product_node_cost(media=MEDIA_PER_PRODUCT)

    sizer.record_page(first=30, requested=3 + 30 * full, actual=3 + 30 * full, needed=[3] * 30)

    assert sizer.media == MEDIA_PER_PRODUCT


def test_a_product_filling_a_shallow_depth_without_ten_images_may_have_more() -> None:
    sizer = PageSizer(extra_objects=0, wanted=250)
    assert not sizer.truncated(MEDIA_PER_PRODUCT, image_media(3, video_at=0) * 5)  # full depth: nothing more to read
    assert sizer.truncated(4, image_media(3, video_at=1))
    assert not sizer.truncated(4, image_media(3))  # fewer than asked: the product is whole
    assert not sizer.truncated(10, image_media(10))  # ten images: the catalog has all it keeps


def test_a_server_counting_differently_corrects_the_estimate_at_any_depth() -> None:
    sizer = PageSizer(extra_objects=0, wanted=250)
    sizer.record_page(first=10, requested=3 + 10 * 66, actual=None, needed=[15] * 10)  # twice what we count

    assert sizer.per_product() == pytest.approx(66)
    assert sizer.first(1000) == (1000 - 3) // 66


def test_pages_grow_over_the_emulator_without_a_throttle_and_lose_no_image() -> None:
    with emulator(products=150, seed=13) as shop:
        products = list(shop.shop.store.iter_products("ID", reverse=False, product_filter=None))
        for product in products[:-1]:
            images = [f"https://cdn.example/{product.id}/{n}.jpg" for n in range(3)]
            shop.control("PATCH", f"products/{product.id}", {"images": images})
        # The last product read (newest) has 14 images: a shallow page must not cut it short.
        shop.clock.now += 60
        deep = [f"https://cdn.example/{products[-1].id}/{n}.jpg" for n in range(14)]
        shop.control("PATCH", f"products/{products[-1].id}", {"images": deep})
        bodies: list[dict[str, Any]] = []
        client = httpx.Client(event_hooks={"request": [lambda r: bodies.append(json.loads(r.read() or b"{}"))]})
        source = shop.source("shopify", bulk="never")
        connector = ShopifyGraphQL(source, client=client, sleep=shop.clock.sleep, clock=shop.clock)

        read = {p.product_id: p for p in connector.iter_products(None) if isinstance(p, SourceProduct)}

        assert len(read) == len(products)
        assert connector.page_sizes[0] == 30
        assert max(connector.page_sizes[1:]) > 60
        pages = [b["variables"] for b in bodies if "products(" in b.get("query", "")]
        assert pages[0]["media"] == MEDIA_PER_PRODUCT and pages[-1]["media"] == 4
        assert [image.url for image in read[str(products[-1].id)].images] == deep[:10]
        assert connector.refetched == 1
        assert shop.stats()["throttled"] == 0 and connector.throttled == 0
        client.close()


# -- deletions from the shop's events -------------------------------------------------------------------------------


def event_node(number: int, created: str, *, subject: str = "PRODUCT", action: str = "destroy") -> dict[str, Any]:
    return {
        "createdAt": created,
        "action": action,
        "subjectId": f"gid://shopify/{subject.title()}/{number}",
        "subjectType": subject,
    }


def test_deletions_are_read_from_destroy_events_since_the_watermark_page_by_page() -> None:
    pages = iter(
        [
            {
                "pageInfo": {"hasNextPage": True, "endCursor": "c1"},
                "edges": [
                    {"node": event_node(7, "2025-03-01T10:00:00Z")},
                    {"node": event_node(8, "2025-03-01T10:00:05Z", subject="COLLECTION")},
                ],
            },
            {
                "pageInfo": {"hasNextPage": False, "endCursor": "c2"},
                "edges": [{"node": event_node(9, "2025-03-02T00:00:00Z")}],
            },
        ]
    )
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        return httpx.Response(200, json={"data": {"events": next(pages)}, "extensions": cost_extension(253, 747)})

    clock = FakeClock()
    connector = ShopifyGraphQL(config(), client=mock(handler), sleep=clock.sleep, clock=clock)
    since = datetime(2025, 3, 1, 9, 59, 30, 500, tzinfo=UTC)

    deletions = list(connector.iter_deletions(since))

    assert isinstance(connector, ReadsDeletions)
    assert deletions == [
        ProductDeletion("acme", "7", datetime(2025, 3, 1, 10, tzinfo=UTC)),
        ProductDeletion("acme", "9", datetime(2025, 3, 2, tzinfo=UTC)),
    ]
    assert [body["variables"]["after"] for body in seen] == [None, "c1"]
    assert (
        seen[0]["variables"]["query"]
        == "subject_type:PRODUCT AND action:destroy AND created_at:>='2025-03-01T09:59:30Z'"
    )
    assert seen[0]["variables"]["query"] == deleted_products_search(since)
    assert "sortKey: CREATED_AT" in seen[0]["query"] and "... on BasicEvent" in seen[0]["query"]
    assert seen[0]["variables"]["first"] == 250 and events_page_cost(250) <= MAX_QUERY_COST


def test_an_api_version_without_events_reads_no_deletions_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    connector = ShopifyGraphQL(config(api_version="2024-07"), client=mock(lambda r: httpx.Response(500)))

    with caplog.at_level(logging.WARNING, logger="connectors.shopify"):
        assert list(connector.iter_deletions(datetime(2025, 1, 1, tzinfo=UTC))) == []

    assert "2024-10" in caplog.text


def test_deletions_are_read_over_the_emulator_for_products_deleted_since() -> None:
    with emulator(products=20, seed=14) as shop:
        ids = [p.id for p in shop.shop.store.iter_products("ID", reverse=False, product_filter=None)][:3]
        shop.control("DELETE", f"products/{ids[0]}")
        shop.clock.now += 3600
        since = datetime.fromtimestamp(shop.clock.now, UTC)
        for product_id in ids[1:]:
            shop.control("DELETE", f"products/{product_id}")
        connector = shop.connector("shopify")

        deletions = list(connector.iter_deletions(since))

    assert [(d.product_id, d.deleted_at) for d in deletions] == [(str(i), since) for i in ids[1:]]
