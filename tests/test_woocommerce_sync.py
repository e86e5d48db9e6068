"""The WooCommerce connector against the emulated store over real sockets: the shared connector contract, the
credentials WooCommerce accepts per scheme (OAuth over plain HTTP, Basic behind TLS, the fallback when a host drops
the Authorization header), incremental reads after edits, trashes and restores, changes during a read, variation
images, and signed webhooks verified end to end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from config.sources import SourceConfig, WooCommerceSource
from connectors.base import Connector, SourceProduct, WebhookEvent
from connectors.woocommerce import WooCommerceConnector
from emulators.server import BackgroundServer, running
from emulators.woocommerce import create_app
from ground.errors import AuthError, InvalidSignature, SkippedProduct
from tests.connector_contract import ConnectorContract, read_all

START = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
WEBHOOK_SECRET = "whsec-shop"
# One client for the control API: building one per request (and its TLS context) costs more than the request.
HTTP = httpx.Client(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    HTTP.close()


class FakeClock:
    """The emulator's clock: frozen until a test moves it."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


class TlsTerminatingProxy(httpx.BaseTransport):
    """Stands in for a TLS-terminating proxy in front of the store: an https:// request reaches the emulator over
    plain HTTP with its Host kept and `X-Forwarded-Proto: https`, as WordPress behind a load balancer sees it."""

    def __init__(self, target: str) -> None:
        self._target = httpx.URL(target)
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert request.url.scheme == "https", "the connector must use the https:// address it was given"
        headers = httpx.Headers(request.headers)
        headers["X-Forwarded-Proto"] = "https"
        forwarded = httpx.Request(
            request.method,
            request.url.copy_with(scheme="http", host=self._target.host, port=self._target.port),
            headers=headers,
            content=request.read(),
        )
        return self._inner.handle_request(forwarded)

    def close(self) -> None:
        self._inner.close()


def woo_source(url: str, *, secret: str | None = None, page_size: int | None = 7) -> SourceConfig:
    return WooCommerceSource(
        name="woo",
        kind="woocommerce",
        url=url,
        consumer_key="ck_test",
        consumer_secret=secret or "cs_test",
        webhook_secret=WEBHOOK_SECRET,
        page_size=page_size,
        check_images=False,
    )


@pytest.fixture(scope="module")
def module_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def store_app(module_clock: FakeClock) -> Starlette:
    return create_app(products=60, seed=7, clock=module_clock)


@pytest.fixture(scope="module")
def module_shop(store_app: Starlette) -> Iterator[BackgroundServer]:
    # One server for the module (starting and stopping uvicorn costs more than most tests); reset before each test.
    with running(store_app) as server:
        yield server


@pytest.fixture
def clock(module_clock: FakeClock) -> FakeClock:
    module_clock.now = START
    return module_clock


@pytest.fixture
def shop(module_shop: BackgroundServer, clock: FakeClock) -> BackgroundServer:
    HTTP.post(f"{module_shop.url}/_emulator/webhooks/drain")
    HTTP.post(f"{module_shop.url}/_emulator/reset").raise_for_status()
    return module_shop


@pytest.fixture
def woo(shop: BackgroundServer) -> Iterator[WooCommerceConnector]:
    with WooCommerceConnector(woo_source(shop.url)) as connector:
        yield connector


def control(shop: BackgroundServer, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = HTTP.request(method, f"{shop.url}/_emulator{path}", json=body)
    response.raise_for_status()
    return response.json() if response.content else None


def stats(shop: BackgroundServer) -> dict[str, Any]:
    return dict(control(shop, "GET", "/stats"))


def products_of(items: list[Any]) -> dict[str, SourceProduct]:
    return {item.product_id: item for item in items if isinstance(item, SourceProduct)}


# --- the shared contract ------------------------------------------------------------------------------------------


class TestWooCommerceContract(ConnectorContract):
    @pytest.fixture
    def connector(self, woo: WooCommerceConnector) -> Connector:
        return woo

    @pytest.fixture
    def expected_count(self, shop: BackgroundServer, store_app: Starlette) -> int:
        # Every product, trashed ones included (they come out archived).
        return len(store_app.state.store.products)

    @pytest.fixture
    def connector_with_bad_records(self, shop: BackgroundServer, woo: WooCommerceConnector) -> Connector:
        control(shop, "POST", "/products", {"name": "", "images": ["https://cdn.example/x.jpg"]})
        control(shop, "POST", "/products", {"name": "<p> </p>"})
        return woo


# --- credentials per scheme ---------------------------------------------------------------------------------------


def test_over_plain_http_the_connector_signs_with_oauth_and_warns(shop: BackgroundServer) -> None:
    with WooCommerceConnector(woo_source(shop.url)) as connector:
        products, _ = read_all(connector)

    assert len(products) == 60
    assert set(stats(shop)["auth_methods"]) == {"oauth"}
    assert any("plain http://" in warning for warning in connector.warnings())


def test_behind_tls_basic_auth_is_used_and_accepted(shop: BackgroundServer) -> None:
    client = httpx.Client(transport=TlsTerminatingProxy(shop.url))
    with WooCommerceConnector(woo_source("https://shop.test"), client) as connector:
        products, _ = read_all(connector)

    assert len(products) == 60
    assert set(stats(shop)["auth_methods"]) == {"basic"}
    assert connector.warnings() == []


def test_when_the_host_drops_the_authorization_header_oauth_takes_over(clock: FakeClock) -> None:
    app = create_app(products=20, seed=1, clock=clock, strip_authorization=True)
    with running(app) as shop:
        client = httpx.Client(transport=TlsTerminatingProxy(shop.url))
        with WooCommerceConnector(woo_source("https://shop.test"), client) as connector:
            products, _ = read_all(connector)
            read_stats = stats(shop)

    assert len(products) == 20
    # One anonymous answer to Basic, then OAuth (signed for the https:// address) for everything.
    assert read_stats["auth_failures"] == {"woocommerce_rest_cannot_view": 1}
    assert set(read_stats["auth_methods"]) == {"oauth"}


def test_a_store_that_requires_oauth_refuses_nothing_the_connector_sends_over_http(clock: FakeClock) -> None:
    # secure=False: WordPress sees plain HTTP and, like WooCommerce, ignores Basic and query-string keys.
    with running(create_app(products=10, seed=2, clock=clock, secure=False)) as shop:
        with WooCommerceConnector(woo_source(shop.url)) as connector:
            products, _ = read_all(connector)
        assert stats(shop)["auth_failures"] == {}

    assert len(products) == 10


@pytest.mark.parametrize(
    ("options", "secret", "fragment"),
    [
        ({}, "cs_wrong", "Invalid signature - provided signature does not match."),
        ({"key_permissions": "write"}, "cs_test", "does not have read permissions"),
        ({"user_can_read": False}, "cs_test", "the REST key lacks read access to products"),
    ],
    ids=["wrong-secret", "write-only-key", "user-cannot-read"],
)
def test_refused_credentials_fail_the_read_with_a_clear_message(
    clock: FakeClock, options: dict[str, Any], secret: str, fragment: str
) -> None:
    with (
        running(create_app(products=5, seed=3, clock=clock, **options)) as shop,
        WooCommerceConnector(woo_source(shop.url, secret=secret)) as connector,
        pytest.raises(AuthError) as caught,
    ):
        read_all(connector)

    assert fragment in str(caught.value)
    assert secret not in str(caught.value)


def test_a_wrong_secret_over_tls_is_named_by_the_store(shop: BackgroundServer) -> None:
    client = httpx.Client(transport=TlsTerminatingProxy(shop.url))
    with (
        WooCommerceConnector(woo_source("https://shop.test", secret="cs_nope"), client) as connector,
        pytest.raises(AuthError, match="Consumer secret is invalid"),
    ):
        read_all(connector)


# --- incremental reads --------------------------------------------------------------------------------------------


def test_an_incremental_read_brings_edits_trashes_restores_and_creations(
    shop: BackgroundServer, woo: WooCommerceConnector, clock: FakeClock
) -> None:
    full = products_of(read_all(woo)[0])
    active = sorted(pid for pid, p in full.items() if p.status == "active")
    trashed = sorted(pid for pid, p in full.items() if p.status == "archived")
    edited, gone = active[0], active[1]
    since = clock.advance(3600)

    control(shop, "PATCH", f"/products/{edited}", {"name": "Renamed Tee", "images": ["https://cdn.example/new.jpg"]})
    control(shop, "POST", f"/products/{gone}/trash")
    clock.advance(5)
    control(shop, "POST", f"/products/{trashed[0]}/restore")
    created = control(shop, "POST", "/products", {"name": "Brand New", "images": ["https://cdn.example/b.jpg"]})

    changed = products_of(read_all(woo, since)[0])

    assert set(changed) == {edited, gone, trashed[0], str(created["id"])}
    assert changed[edited].title == "Renamed Tee"
    assert [image.url for image in changed[edited].images] == ["https://cdn.example/new.jpg"]
    assert changed[edited].updated_at == since
    assert changed[gone].status == "archived"
    # WooCommerce restores a product to the status it had when trashed.
    assert changed[trashed[0]].status != "archived"
    assert changed[str(created["id"])].status == "active"
    assert read_all(woo, clock.advance(1))[0] == []


def test_products_changed_during_a_full_read_skip_nothing(shop: BackgroundServer, clock: FakeClock) -> None:
    with WooCommerceConnector(woo_source(shop.url, page_size=5)) as connector:
        before = products_of(read_all(connector)[0])
        order = sorted(before.values(), key=lambda p: (p.updated_at, int(p.product_id)))
        stream = connector.iter_products()
        first = [next(stream) for _ in range(7)]

        # Already-read products change under the reader: one edited, one trashed.
        clock.advance(60)
        control(shop, "PATCH", f"/products/{order[0].product_id}", {"name": "Edited mid-read"})
        control(shop, "POST", f"/products/{order[1].product_id}/trash")
        after = products_of([*first, *stream])

    assert set(after) == set(before)
    assert after[order[0].product_id].title == "Edited mid-read"


def test_a_bulk_import_second_larger_than_a_page_is_read_whole(shop: BackgroundServer, clock: FakeClock) -> None:
    since = clock.advance(600)
    created = {
        str(control(shop, "POST", "/products", {"name": f"Imported {n}"})["id"]) for n in range(12)
    }  # all in one second

    with WooCommerceConnector(woo_source(shop.url, page_size=5)) as connector:
        changed, _ = read_all(connector, since)

    assert sorted(p.product_id for p in changed) == sorted(created)


# --- what a product holds -----------------------------------------------------------------------------------------


def test_variable_products_carry_their_enabled_variations_images(
    store_app: Starlette, woo: WooCommerceConnector
) -> None:
    store = store_app.state.store
    variable = [p for p in store.products.values() if p.variations and p.status != "trash"]
    assert variable, "the generated store holds variable products"

    products = products_of(read_all(woo)[0])

    for raw in variable:
        own = [store.site_url + image.path for image in raw.images]
        extra = [store.site_url + v.image.path for v in raw.variations if v.image and v.status == "publish"]
        expected = list(dict.fromkeys(own + extra))[:10]
        got = [image.url for image in products[str(raw.id)].images]
        assert [httpx.URL(url).path for url in got] == [httpx.URL(url).path for url in expected], raw.id


def test_get_product_reads_one_product_and_a_trashed_one_is_archived(
    shop: BackgroundServer, woo: WooCommerceConnector
) -> None:
    listed = products_of(read_all(woo)[0])
    pid = next(pid for pid, p in listed.items() if p.status == "active")
    control(shop, "POST", f"/products/{pid}/trash")

    found = woo.get_product(pid)

    assert found is not None
    assert found.status == "archived"
    assert found.title == listed[pid].title
    control(shop, "DELETE", f"/products/{pid}")
    assert woo.get_product(pid) is None


# --- webhooks end to end ------------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook endpoint that verifies each delivery with the connector, like the webhook server will."""

    connector: WooCommerceConnector
    events: list[WebhookEvent] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        try:
            event = self.connector.verify_webhook(request.headers, body)
        except InvalidSignature as exc:
            self.refused.append(str(exc))
            return Response(status_code=401)
        except SkippedProduct as exc:
            self.refused.append(exc.reason)
            return Response(status_code=200)
        self.events.append(event)
        return Response(status_code=200)


def test_signed_webhooks_from_the_store_verify_and_parse(
    shop: BackgroundServer, woo: WooCommerceConnector, clock: FakeClock
) -> None:
    receiver = Receiver(woo)
    with running(Starlette(routes=[Route("/hooks", receiver.handle, methods=["POST"])])) as hooks:
        control(shop, "POST", "/webhooks", {"url": f"{hooks.url}/hooks", "secret": WEBHOOK_SECRET})
        pings = control(shop, "POST", "/webhooks/ping")
        listed = products_of(read_all(woo)[0])
        simple = next(p for p in listed.values() if p.status == "active" and p.attributes.get("type") == "simple")
        clock.advance(30)
        control(shop, "PATCH", f"/products/{simple.product_id}", {"name": "Webhook Tee"})
        control(shop, "POST", f"/products/{simple.product_id}/trash")
        control(shop, "POST", f"/products/{simple.product_id}/restore")
        created = control(shop, "POST", "/products", {"name": "Fresh", "images": ["https://cdn.example/f.jpg"]})
        control(shop, "POST", "/webhooks/drain")

    assert all(result["accepted"] for result in pings["results"]), pings
    assert receiver.refused == []
    topics = [(e.topic, e.platform_topic, e.product_id) for e in receiver.events if e.topic != "ping"]
    assert topics == [
        ("upsert", "product.updated", simple.product_id),
        ("delete", "product.deleted", simple.product_id),
        ("upsert", "product.restored", simple.product_id),
        ("upsert", "product.created", str(created["id"])),
    ]
    assert sum(e.topic == "ping" for e in receiver.events) == 4
    updated = receiver.events[4]
    assert updated.product is not None
    # The payload is built at delivery time, as WooCommerce does: by then the product was restored.
    assert updated.product == woo.get_product(simple.product_id)
    assert len({e.event_id for e in receiver.events if e.topic != "ping"}) == 4


def test_a_webhook_signed_with_another_secret_is_refused(shop: BackgroundServer, woo: WooCommerceConnector) -> None:
    receiver = Receiver(woo)
    with running(Starlette(routes=[Route("/hooks", receiver.handle, methods=["POST"])])) as hooks:
        control(
            shop, "POST", "/webhooks", {"url": f"{hooks.url}/hooks", "secret": "not-ours", "topic": "product.created"}
        )
        control(shop, "POST", "/products", {"name": "Sneaky"})
        drained = control(shop, "POST", "/webhooks/drain")

    assert receiver.events == []
    assert len(receiver.refused) == 1
    assert drained["failed"] == 1
