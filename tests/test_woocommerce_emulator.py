"""The WooCommerce emulator over real sockets: the generated store, the products API's parameters and headers,
WooCommerce's authentication rules and error bodies, the control API, and signed webhook deliveries.

Requests are made with plain httpx (not the connector) so the emulator is checked on its own terms; OAuth requests
are signed with the connector's RFC 5849 signer, itself checked against the RFC's published example.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from connectors.woocommerce import oauth1_signature
from emulators.server import BackgroundServer, running
from emulators.woocommerce import API_PREFIX, create_app, generate_products, php_json
from worker.cli import app as cli_app

START = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
BASIC = ("ck_test", "cs_test")
HTTPS = {"X-Forwarded-Proto": "https"}
# One client for the module: building one per request (and its TLS context) costs more than the request.
HTTP = httpx.Client(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    HTTP.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def module_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def module_shop(module_clock: FakeClock) -> Iterator[BackgroundServer]:
    # One server for the module (starting and stopping uvicorn costs more than most tests); reset before each test.
    with running(create_app(products=40, seed=11, clock=module_clock)) as server:
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


def api(shop: BackgroundServer, path: str, **params: Any) -> httpx.Response:
    """A request over "HTTPS" (behind a proxy) with Basic credentials."""
    return HTTP.get(f"{shop.url}{API_PREFIX}{path}", params=params, auth=BASIC, headers=HTTPS, timeout=10)


def control(shop: BackgroundServer, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return HTTP.request(method, f"{shop.url}/_emulator{path}", json=body, timeout=10)


def oauth_get(
    shop: BackgroundServer,
    path: str,
    *,
    params: dict[str, str] | None = None,
    secret: str | None = None,
    nonce: str = "abc123",
    timestamp: int | None = None,
    method: str = "HMAC-SHA256",
    https: bool = False,
) -> httpx.Response:
    """A GET signed with OAuth 1.0a one-legged, the parameters in the query string."""
    oauth = {
        "oauth_consumer_key": "ck_test",
        "oauth_nonce": nonce,
        "oauth_signature_method": method,
        "oauth_timestamp": str(int(time.time()) if timestamp is None else timestamp),
    }
    query = {**(params or {}), **oauth}
    base = f"{'https' if https else 'http'}://127.0.0.1:{shop.port}{API_PREFIX}{path}"
    key = secret or "cs_test"
    hmac_method = method.startswith("HMAC-")
    query["oauth_signature"] = (
        oauth1_signature("GET", base, query.items(), key, signature_method=method) if hmac_method else f"{key}&"
    )
    headers = HTTPS if https else {}
    return HTTP.get(f"{shop.url}{API_PREFIX}{path}", params=query, headers=headers, timeout=10)


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert body["data"]["status"] == response.status_code
    return response.status_code, body["code"], body["message"]


def all_products(shop: BackgroundServer, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    page = 1
    while True:
        batch = api(shop, "/products", per_page=100, page=page, **params).json()
        if not batch:
            return out
        out += batch
        page += 1


# --- the generated store ------------------------------------------------------------------------------------------


def test_the_same_seed_generates_the_same_store() -> None:
    first, _ = generate_products(50, 5, START)
    second, _ = generate_products(50, 5, START)
    other, _ = generate_products(50, 6, START)

    assert first == second
    assert first != other


def test_a_large_store_covers_what_a_real_one_throws_at_a_connector() -> None:
    products, _ = generate_products(1000, 1, START)

    statuses = Counter(p.status for p in products)
    image_counts = {len(p.images) for p in products}
    modified = sorted(p.date_modified for p in products)
    assert set(statuses) == {"publish", "draft", "pending", "private", "future", "trash"}
    assert statuses["publish"] > len(products) / 2
    assert {0, 12} <= image_counts
    assert max(image_counts) == 12
    assert any(p.type == "variable" and p.variations for p in products)
    assert any(v.status == "private" for p in products for v in p.variations)
    assert any(not p.name.isascii() for p in products)
    assert any("&amp;" in p.name or "<" in p.name for p in products)
    assert any(not p.description and p.short_description for p in products)
    assert modified[-1] - modified[0] > timedelta(days=90)
    assert max(Counter(modified).values()) > 10, "a bulk import shares one modification second"
    assert len({p.id for p in products}) == len(products)


def test_even_a_tiny_store_has_every_status() -> None:
    products, _ = generate_products(6, 0, START)

    assert {p.status for p in products} == {"publish", "draft", "pending", "private", "future", "trash"}


# --- the products API ---------------------------------------------------------------------------------------------


def test_a_listing_has_woocommerces_shape_and_paging_headers(shop: BackgroundServer) -> None:
    response = api(shop, "/products", per_page=7, page=2)

    listed = [p for p in control(shop, "GET", "/stats").json()["products"].items() if p[0] != "trash"]
    total = sum(count for _, count in listed)
    assert response.status_code == 200
    assert response.headers["X-WP-Total"] == str(total)
    assert response.headers["X-WP-TotalPages"] == str(-(-total // 7))
    assert 'rel="next"' in response.headers["Link"]
    assert 'rel="prev"' in response.headers["Link"]
    product = response.json()[0]
    for key in ("id", "name", "permalink", "date_modified", "date_modified_gmt", "status", "images", "variations"):
        assert key in product
    # The store's local time is UTC-3, as in the REST docs' examples.
    local = datetime.fromisoformat(product["date_modified"])
    gmt = datetime.fromisoformat(product["date_modified_gmt"])
    assert gmt - local == timedelta(hours=3)


def test_the_default_listing_leaves_out_the_trash_and_status_trash_lists_only_it(shop: BackgroundServer) -> None:
    default = all_products(shop)
    trash = all_products(shop, status="trash")
    drafts = all_products(shop, status="draft")

    assert default
    assert "trash" not in {p["status"] for p in default}
    assert trash
    assert {p["status"] for p in trash} == {"trash"}
    assert {p["status"] for p in drafts} == {"draft"}


def test_listing_by_modified_ascending_is_ordered_by_time_then_id(shop: BackgroundServer) -> None:
    products = all_products(shop, orderby="modified", order="asc")

    keys = [(p["date_modified_gmt"], p["id"]) for p in products]
    assert keys == sorted(keys)


def test_modified_after_is_strict_and_follows_dates_are_gmt(shop: BackgroundServer) -> None:
    products = all_products(shop, orderby="modified", order="asc")
    middle = products[len(products) // 2]["date_modified_gmt"]
    local_middle = products[len(products) // 2]["date_modified"]

    after_gmt = all_products(shop, modified_after=middle, dates_are_gmt="true")
    after_local = all_products(shop, modified_after=local_middle)

    assert after_gmt
    assert all(p["date_modified_gmt"] > middle for p in after_gmt)
    assert {p["id"] for p in after_gmt} == {p["id"] for p in products if p["date_modified_gmt"] > middle}
    assert {p["id"] for p in after_local} == {p["id"] for p in after_gmt}


def test_offset_overrides_page(shop: BackgroundServer) -> None:
    by_id = api(shop, "/products", per_page=5, orderby="id", order="asc", offset=3).json()
    reference = api(shop, "/products", per_page=10, orderby="id", order="asc").json()

    assert [p["id"] for p in by_id] == [p["id"] for p in reference[3:8]]


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"per_page": 101}, "per_page"),
        ({"per_page": 0}, "per_page"),
        ({"page": "x"}, "page"),
        ({"orderby": "price"}, "orderby"),
        ({"order": "up"}, "order"),
        ({"status": "deleted"}, "status"),
        ({"modified_after": "yesterday"}, "modified_after"),
    ],
    ids=["per-page-high", "per-page-zero", "page-text", "orderby", "order", "status", "date"],
)
def test_bad_parameters_answer_rest_invalid_param(shop: BackgroundServer, params: dict[str, Any], name: str) -> None:
    response = api(shop, "/products", **params)

    assert error_of(response)[:2] == (400, "rest_invalid_param")
    assert name in response.json()["data"]["params"]


def test_one_product_any_status_and_a_variation_as_a_product(shop: BackgroundServer) -> None:
    trashed = all_products(shop, status="trash")[0]
    variable = next(p for p in all_products(shop) if p["variations"])

    assert api(shop, f"/products/{trashed['id']}").json()["status"] == "trash"
    variation = api(shop, f"/products/{variable['variations'][0]}").json()
    assert (variation["type"], variation["parent_id"]) == ("variation", variable["id"])
    assert error_of(api(shop, "/products/999999")) == (404, "woocommerce_rest_product_invalid_id", "Invalid ID.")


def test_variations_are_listed_under_their_product(shop: BackgroundServer) -> None:
    variable = next(p for p in all_products(shop) if len(p["variations"]) >= 2)

    response = api(shop, f"/products/{variable['id']}/variations", per_page=100)

    assert [v["id"] for v in response.json()] == variable["variations"]
    assert response.headers["X-WP-Total"] == str(len(variable["variations"]))
    assert api(shop, "/products/999999/variations").json() == []


def test_an_unknown_route_is_rest_no_route(shop: BackgroundServer) -> None:
    response = api(shop, "/orders")

    assert error_of(response)[:2] == (404, "rest_no_route")


# --- authentication -----------------------------------------------------------------------------------------------


def test_no_credentials_is_an_anonymous_401(shop: BackgroundServer) -> None:
    listing = HTTP.get(f"{shop.url}{API_PREFIX}/products")
    one = HTTP.get(f"{shop.url}{API_PREFIX}/products/12")

    assert error_of(listing) == (401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
    assert error_of(one) == (401, "woocommerce_rest_cannot_view", "Sorry, you cannot view this resource.")


def test_basic_and_query_keys_count_only_over_https(shop: BackgroundServer) -> None:
    url = f"{shop.url}{API_PREFIX}/products"
    keys = {"consumer_key": "ck_test", "consumer_secret": "cs_test"}

    assert HTTP.get(url, auth=BASIC, headers=HTTPS).status_code == 200
    assert HTTP.get(url, params=keys, headers=HTTPS).status_code == 200
    # Over plain HTTP WooCommerce only looks for OAuth: the request is anonymous.
    assert error_of(HTTP.get(url, auth=BASIC))[:2] == (401, "woocommerce_rest_cannot_view")
    assert error_of(HTTP.get(url, params=keys))[:2] == (401, "woocommerce_rest_cannot_view")
    assert control(shop, "GET", "/stats").json()["auth_methods"] == {"basic": 1, "query": 1}


def test_a_wrong_basic_secret_is_named_with_woocommerces_challenge(shop: BackgroundServer) -> None:
    response = HTTP.get(f"{shop.url}{API_PREFIX}/products", auth=("ck_test", "cs_bad"), headers=HTTPS)

    assert error_of(response) == (401, "woocommerce_rest_authentication_error", "Consumer secret is invalid.")
    assert response.headers["WWW-Authenticate"].startswith('Basic realm="WooCommerce API.')


def test_oauth_signed_requests_are_accepted_over_http_and_https(shop: BackgroundServer) -> None:
    plain = oauth_get(shop, "/products", params={"per_page": "3", "orderby": "id"}, nonce="n1")
    tls = oauth_get(shop, "/products", params={"per_page": "3"}, nonce="n2", https=True, method="HMAC-SHA1")

    assert plain.status_code == 200
    assert len(plain.json()) == 3
    assert tls.status_code == 200


def test_oauth_parameters_may_come_in_the_authorization_header(shop: BackgroundServer) -> None:
    stamp = str(int(time.time()))
    oauth = {
        "oauth_consumer_key": "ck_test",
        "oauth_nonce": "hdr1",
        "oauth_signature_method": "HMAC-SHA256",
        "oauth_timestamp": stamp,
    }
    base = f"http://127.0.0.1:{shop.port}{API_PREFIX}/products"
    oauth["oauth_signature"] = oauth1_signature("GET", base, oauth.items(), "cs_test")
    header = "OAuth " + ", ".join(f'{name}="{quote(value, safe="")}"' for name, value in oauth.items())

    response = HTTP.get(base, headers={"Authorization": header})

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"secret": "cs_wrong"}, "Invalid signature - provided signature does not match."),
        ({"timestamp": int(time.time()) - 3600}, "Invalid timestamp."),
        ({"method": "PLAINTEXT"}, "Invalid signature - signature method is invalid."),
    ],
    ids=["wrong-secret", "stale-timestamp", "plaintext"],
)
def test_bad_oauth_signatures_are_refused(shop: BackgroundServer, kwargs: dict[str, Any], message: str) -> None:
    response = oauth_get(shop, "/products", **kwargs)

    assert error_of(response) == (401, "woocommerce_rest_authentication_error", message)


def test_an_oauth_nonce_is_good_once(shop: BackgroundServer) -> None:
    stamp = int(time.time())

    first = oauth_get(shop, "/products", nonce="once", timestamp=stamp)
    again = oauth_get(shop, "/products", nonce="once", timestamp=stamp)

    assert first.status_code == 200
    assert error_of(again)[2] == "Invalid nonce - nonce has already been used."


def test_incomplete_or_foreign_oauth_is_refused(shop: BackgroundServer) -> None:
    url = f"{shop.url}{API_PREFIX}/products"

    partial = HTTP.get(url, params={"oauth_consumer_key": "ck_test", "oauth_nonce": "x"})
    foreign = HTTP.get(
        url,
        params={
            "oauth_consumer_key": "ck_other",
            "oauth_nonce": "x",
            "oauth_signature": "s",
            "oauth_signature_method": "HMAC-SHA256",
            "oauth_timestamp": "1",
        },
    )

    code, text = error_of(partial)[1:]
    assert code == "woocommerce_rest_authentication_missing_parameter"
    assert text == "Missing OAuth parameters oauth_timestamp, oauth_signature, oauth_signature_method"
    assert error_of(foreign)[1:] == ("woocommerce_rest_authentication_error", "Consumer key is invalid.")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"key_permissions": "write"}, (401, "woocommerce_rest_authentication_error")),
        ({"user_can_read": False}, (403, "woocommerce_rest_cannot_view")),
        ({"strip_authorization": True}, (401, "woocommerce_rest_cannot_view")),
    ],
    ids=["write-only-key", "user-cannot-read", "header-dropped"],
)
def test_store_setups_that_refuse_a_valid_key(
    clock: FakeClock, options: dict[str, Any], expected: tuple[int, str]
) -> None:
    with running(create_app(products=3, clock=clock, **options)) as shop:
        response = api(shop, "/products")

    assert error_of(response)[:2] == expected


# --- control API --------------------------------------------------------------------------------------------------


def test_created_edited_trashed_restored_and_deleted_products(shop: BackgroundServer, clock: FakeClock) -> None:
    clock.now = START + timedelta(hours=1)
    created = control(shop, "POST", "/products", {"name": "Nouveau", "status": "private", "images": ["/a.jpg"]})
    pid = created.json()["id"]
    clock.now = START + timedelta(hours=2)
    edited = control(shop, "PATCH", f"/products/{pid}", {"name": "Renommé", "tags": ["été"]}).json()
    trashed = control(shop, "POST", f"/products/{pid}/trash").json()
    restored = control(shop, "POST", f"/products/{pid}/restore").json()
    deleted = control(shop, "DELETE", f"/products/{pid}")

    assert created.status_code == 201
    assert created.json()["date_modified_gmt"] == "2025-03-01T13:00:00"
    assert created.json()["images"][0]["src"] == "https://woo.emulator.test/a.jpg"
    assert (edited["name"], edited["tags"][0]["name"], edited["date_modified_gmt"]) == (
        "Renommé",
        "été",
        "2025-03-01T14:00:00",
    )
    assert trashed["status"] == "trash"
    assert restored["status"] == "private"
    assert deleted.status_code == 204
    assert api(shop, f"/products/{pid}").status_code == 404


@pytest.mark.parametrize(
    "body",
    [{"status": "trash"}, {"status": "gone"}, {"images": "x.jpg"}, {"name": 5}, {"variations": [{}]}],
    ids=["trash-by-patch", "unknown-status", "images-not-list", "name-not-text", "variations-on-simple"],
)
def test_bad_control_edits_are_refused_and_change_nothing(shop: BackgroundServer, body: dict[str, Any]) -> None:
    product = next(p for p in all_products(shop) if p["type"] == "simple")

    response = control(shop, "PATCH", f"/products/{product['id']}", body)

    assert response.status_code == 400
    assert api(shop, f"/products/{product['id']}").json() == product


def test_reset_regenerates_the_store(shop: BackgroundServer) -> None:
    before = all_products(shop)
    control(shop, "POST", "/products", {"name": "Extra"})

    response = control(shop, "POST", "/reset")

    assert response.json() == {"products": 40}
    assert all_products(shop) == before


# --- webhook deliveries -------------------------------------------------------------------------------------------


class Inbox:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: Request) -> Response:
        self.received.append((dict(request.headers), await request.body()))
        return Response(status_code=self.status)


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, str]]:
    box = Inbox()
    with running(Starlette(routes=[Route("/in", box.handle, methods=["POST"])])) as server:
        yield box, f"{server.url}/in"


def test_deliveries_are_signed_and_shaped_like_woocommerces(shop: BackgroundServer, inbox: tuple[Inbox, str]) -> None:
    box, url = inbox
    secret = "s3cr&t"
    control(shop, "POST", "/webhooks", {"url": url, "secret": secret})
    pid = all_products(shop)[0]["id"]

    control(shop, "PATCH", f"/products/{pid}", {"name": "Édition spéciale"})
    control(shop, "POST", f"/products/{pid}/trash")
    control(shop, "DELETE", f"/products/{pid}")
    drained = control(shop, "POST", "/webhooks/drain").json()

    assert drained["sent"] == 2
    (updated_headers, updated), (deleted_headers, deleted) = box.received
    for headers, body in box.received:
        expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
        assert headers["x-wc-webhook-signature"] == expected
        assert headers["x-wc-webhook-source"] == "https://woo.emulator.test/"
        assert headers["x-wc-webhook-resource"] == "product"
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"].startswith("WooCommerce/")
    assert (updated_headers["x-wc-webhook-topic"], updated_headers["x-wc-webhook-event"]) == (
        "product.updated",
        "updated",
    )
    assert deleted_headers["x-wc-webhook-topic"] == "product.deleted"
    # PHP's json_encode escapes slashes and non-ASCII; the signature covers exactly those bytes.
    assert b"\\/" in updated
    assert b"\\u00c9dition sp\\u00e9ciale" in updated
    assert json.loads(updated)["name"] == "Édition spéciale"
    assert deleted == php_json({"id": pid}) == f'{{"id":{pid}}}'.encode()
    # A delivery id hashes the webhook id and the second: the frozen clock gives both the same one per webhook.
    assert updated_headers["x-wc-webhook-id"] != deleted_headers["x-wc-webhook-id"]


def test_a_webhook_for_one_topic_hears_only_that_topic(shop: BackgroundServer, inbox: tuple[Inbox, str]) -> None:
    box, url = inbox
    control(shop, "POST", "/webhooks", {"url": url, "secret": "s", "topic": "product.created"})

    control(shop, "PATCH", f"/products/{all_products(shop)[0]['id']}", {"name": "Quiet"})
    created = control(shop, "POST", "/products", {"name": "Loud"}).json()
    control(shop, "POST", "/webhooks/drain")

    assert [json.loads(body)["id"] for _, body in box.received] == [created["id"]]


def test_the_creation_ping_is_an_unsigned_form_body(shop: BackgroundServer, inbox: tuple[Inbox, str]) -> None:
    box, url = inbox
    ids = control(shop, "POST", "/webhooks", {"url": url, "secret": "s", "topic": "product.updated"}).json()["ids"]

    results = control(shop, "POST", "/webhooks/ping").json()["results"]

    assert results == [{"webhook_id": ids[0], "status": 200, "accepted": True}]
    ((headers, body),) = box.received
    assert body == f"webhook_id={ids[0]}".encode()
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert "x-wc-webhook-signature" not in headers
    assert "x-wc-webhook-topic" not in headers


def test_failed_deliveries_are_recorded_and_not_retried(shop: BackgroundServer) -> None:
    box = Inbox(status=500)
    with running(Starlette(routes=[Route("/in", box.handle, methods=["POST"])])) as receiver:
        control(shop, "POST", "/webhooks", {"url": f"{receiver.url}/in", "secret": "s", "topic": "product.created"})
        control(shop, "POST", "/products", {"name": "Unlucky"})
        drained = control(shop, "POST", "/webhooks/drain").json()

    assert (drained["sent"], drained["failed"]) == (0, 1)
    assert drained["recent"][0]["status"] == 500
    assert len(box.received) == 1


# --- the command --------------------------------------------------------------------------------------------------


def test_the_emulate_command_offers_its_options() -> None:
    result = CliRunner().invoke(cli_app, ["emulate", "woocommerce", "--help"])

    assert result.exit_code == 0
    for option in ("--products", "--port", "--host", "--seed", "--consumer-key", "--consumer-secret"):
        assert option in result.output
    assert "8902" in result.output
