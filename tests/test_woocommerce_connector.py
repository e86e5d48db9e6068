"""Unit tests of the WooCommerce connector: normalization of the REST docs' payloads, webhook verification (the
WooCommerce core HMAC vector, the unsigned creation ping), OAuth 1.0a signing (RFC 5849's published example),
credentials per scheme, error mapping, and the keyset walk against fakes that behave like WooCommerce.

Integration over real sockets against the emulator is in `test_woocommerce_sync.py`.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from pydantic import SecretStr

from config.sources import SourceConfig, WooCommerceSource
from connectors import build_connector
from connectors.base import ImageRef, SourceProduct
from connectors.woocommerce import (
    WooCommerceConnector,
    check_webhook_signature,
    normalize_product,
    oauth1_base_string,
    oauth1_signature,
    parse_webhook,
    webhook_signature,
)
from ground.errors import AuthError, InvalidSignature, SkippedProduct, SourceError

FIXTURES = Path(__file__).parent / "fixtures" / "woocommerce"
DOCS = FIXTURES / "rest_api_docs"
SECRET = "whsec-woo"
PRODUCTS = "/wp-json/wc/v3/products"


def load(name: str) -> Any:
    return json.loads((DOCS / name).read_text(encoding="utf-8"))


def source(url: str = "https://shop.example", **extra: Any) -> SourceConfig:
    return WooCommerceSource(
        name="woo",
        kind="woocommerce",
        url=url,
        consumer_key="ck_key",
        consumer_secret="cs_secret",
        webhook_secret=SECRET,
        **extra,
    )


def connector_over(
    handler: Callable[[httpx.Request], httpx.Response], url: str = "https://shop.example", **extra: Any
) -> WooCommerceConnector:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return WooCommerceConnector(source(url, **extra), client, sleep=lambda _: None, nonce=lambda: "n" * 32)


def woo_error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message, "data": {"status": status}})


def signed(body: bytes, topic: str, secret: str = SECRET, delivery: str = "d1") -> dict[str, str]:
    return {
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Signature": webhook_signature(body, secret),
        "X-WC-Webhook-Delivery-ID": delivery,
        "Content-Type": "application/json",
    }


class FakeStore:
    """A WooCommerce products endpoint over a fixed list: orders by (date_modified_gmt, id), filters strictly by
    `modified_after` (unless told to ignore it, like WooCommerce before 5.8) and pages with X-WP-TotalPages."""

    def __init__(self, products: list[dict[str, Any]], *, honour_modified_after: bool = True) -> None:
        self.products = products
        self.honour_modified_after = honour_modified_after
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        params = dict(request.url.params)
        status = params.get("status", "any")
        rows = [p for p in self.products if (p["status"] == "trash") == (status == "trash")]
        after = params.get("modified_after")
        if after and self.honour_modified_after:
            rows = [p for p in rows if p["date_modified_gmt"] > after]
        rows.sort(key=lambda p: (p["date_modified_gmt"], p["id"]))
        per_page, page = int(params["per_page"]), int(params["page"])
        pages = -(-len(rows) // per_page)
        chunk = rows[(page - 1) * per_page : page * per_page]
        return httpx.Response(200, json=chunk, headers={"X-WP-Total": str(len(rows)), "X-WP-TotalPages": str(pages)})


def simple(product_id: int, modified: str, status: str = "publish", name: str | None = None) -> dict[str, Any]:
    return {
        "id": product_id,
        "name": name if name is not None else f"Product {product_id}",
        "type": "simple",
        "status": status,
        "date_modified_gmt": modified,
        "images": [{"src": f"https://shop.example/p{product_id}.jpg", "alt": ""}],
        "variations": [],
    }


# --- normalization ------------------------------------------------------------------------------------------------


def test_the_docs_simple_product_normalizes_to_a_catalog_product() -> None:
    raw = load("wp-api-v3_products__03_retrieve_a_product.json")

    product = normalize_product("woo", raw)

    assert product.product_id == "794"
    assert product.title == "Premium Quality"
    assert product.status == "active"
    assert product.updated_at == datetime(2017, 3, 23, 20, 1, 14, tzinfo=UTC)
    assert product.description.startswith("Pellentesque habitant morbi tristique")
    assert "<p>" not in product.description
    assert [image.url for image in product.images] == [
        "https://example.com/wp-content/uploads/2017/03/T_2_front-4.jpg",
        "https://example.com/wp-content/uploads/2017/03/T_2_back-2.jpg",
    ]
    assert product.url == "https://example.com/product/premium-quality-19/"
    assert product.handle == "premium-quality-19"
    assert product.product_type == "Clothing"
    assert product.tags == ()
    assert product.attributes["categories"] == "Clothing, T-shirts"
    assert product.attributes["price"] == "21.99"
    assert product.raw_ref == "/wp-json/wc/v3/products/794"


def test_the_docs_listing_normalizes_both_products_with_gmt_times() -> None:
    listing = load("wp-api-v3_products__04_list_all_products.json")

    products = [normalize_product("woo", raw) for raw in listing]

    assert [(p.product_id, p.attributes["type"]) for p in products] == [("799", "variable"), ("794", "simple")]
    # date_modified is the store's local time (UTC-3 in the docs); only date_modified_gmt is UTC.
    assert products[0].updated_at == datetime(2017, 3, 23, 20, 3, 12, tzinfo=UTC)
    assert len(products[0].images) == 4


def test_variation_images_follow_the_products_own_without_repeats() -> None:
    raw = copy.deepcopy(load("wp-api-v3_products__02_create_a_product.json"))
    variations = load("wp-api-v3_product-variations__03_list_all_product_variations.json")
    # The docs' variable product lists no variation ids; give it the docs' two variations, one repeating an image.
    raw["variations"] = [733, 732]
    variations[1]["image"]["src"] = raw["images"][0]["src"]
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json=variations, headers={"X-WP-TotalPages": "1"})

    product = connector_over(handler)._item(raw)

    assert isinstance(product, SourceProduct)
    assert seen == ["/wp-json/wc/v3/products/799/variations"]
    assert [image.url for image in product.images] == [
        *(image["src"] for image in raw["images"]),
        "https://example.com/wp-content/uploads/2016/10/T_3_front-12.jpg",
    ]


def test_a_variable_product_without_variations_costs_no_extra_request() -> None:
    raw = load("wp-api-v3_products__02_create_a_product.json")

    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request {request.url}")

    product = connector_over(handler)._item(raw)

    assert isinstance(product, SourceProduct)
    assert len(product.images) == 4


def test_an_unusable_variable_product_is_skipped_before_its_variations_are_fetched() -> None:
    raw = {**simple(6, "2024-05-01T10:00:00", name=""), "type": "variable", "variations": [61, 62]}

    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request {request.url}")

    item = connector_over(handler)._item(raw)

    assert isinstance(item, SkippedProduct)
    assert item.reason == "no_title"


def test_disabled_variations_lend_no_image_and_the_total_stops_at_ten() -> None:
    raw = simple(5, "2024-05-01T10:00:00")
    raw.update(type="variable", variations=list(range(100, 112)))
    raw["images"] = [{"src": f"https://shop.example/own-{n}.jpg"} for n in range(8)]
    variations = [
        {
            "id": 100 + n,
            "status": "private" if n == 0 else "publish",
            "image": {"src": f"https://shop.example/v{n}.jpg"},
        }
        for n in range(12)
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=variations, headers={"X-WP-TotalPages": "1"})

    product = connector_over(handler)._item(raw)

    assert isinstance(product, SourceProduct)
    urls = [image.url for image in product.images]
    assert len(urls) == 10
    assert urls[8:] == ["https://shop.example/v1.jpg", "https://shop.example/v2.jpg"]


@pytest.mark.parametrize(
    ("woo_status", "status"),
    [
        ("publish", "active"),
        ("draft", "draft"),
        ("pending", "draft"),
        ("private", "draft"),
        ("future", "draft"),
        ("trash", "archived"),
        ("some-plugin-status", "draft"),
    ],
    ids=lambda value: str(value),
)
def test_only_published_products_are_active(woo_status: str, status: str) -> None:
    product = normalize_product("woo", simple(7, "2024-01-01T00:00:00", status=woo_status))

    assert product.status == status


def test_text_is_plain_and_the_short_description_stands_in_for_an_empty_one() -> None:
    raw = simple(8, "2024-01-01T00:00:00", name="Salt &amp; Pepper <em>Tee</em>")
    raw.update(
        description="",
        short_description="<p>Crème&nbsp;brûlée <script>alert(1)</script>cotton</p>",
        categories=[{"id": 15, "name": "Uncategorized", "slug": "uncategorized"}, {"id": 3, "name": "Tees & Tops"}],
        tags=[{"id": 1, "name": "summer"}, {"id": 2, "name": " summer "}, {"id": 3, "name": "新作"}],
        brands=[{"id": 4, "name": "Acme &amp; Sons"}],
    )

    product = normalize_product("woo", raw)

    assert product.title == "Salt & Pepper Tee"
    assert product.description == "Crème brûlée cotton"
    assert product.product_type == "Tees & Tops"
    assert product.tags == ("summer", "新作")
    assert product.vendor == "Acme & Sons"


def test_image_urls_are_made_absolute_and_fetchable() -> None:
    raw = simple(9, "2024-01-01T00:00:00")
    raw["permalink"] = "https://shop.example/product/nine/"
    raw["images"] = [
        {"src": "//cdn.example/a.jpg"},
        {"src": "/wp-content/uploads/b c.jpg"},
        {"src": "https://shop.example/wp-content/uploads/café.jpg", "alt": "Café <b>cup</b>"},
        {"src": "https://shop.example/already%20encoded.jpg"},
        {"src": "data:image/png;base64,AAAA"},
        {"src": ""},
        {"src": "//cdn.example/a.jpg"},
    ]

    product = normalize_product("woo", raw)

    assert product.images == (
        ImageRef("https://cdn.example/a.jpg"),
        ImageRef("https://shop.example/wp-content/uploads/b%20c.jpg"),
        ImageRef("https://shop.example/wp-content/uploads/caf%C3%A9.jpg", "Café cup"),
        ImageRef("https://shop.example/already%20encoded.jpg"),
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": None}, "missing_id"),
        ({"id": "abc"}, "missing_id"),
        ({"name": "  <p></p> "}, "no_title"),
        ({"date_modified_gmt": None}, "missing_updated_at"),
        ({"type": "variation"}, "variation"),
    ],
    ids=["no-id", "text-id", "blank-name", "no-date", "variation"],
)
def test_unusable_records_are_skipped_with_a_reason(change: dict[str, Any], reason: str) -> None:
    raw = {**simple(11, "2024-01-01T00:00:00"), **change}

    with pytest.raises(SkippedProduct) as caught:
        normalize_product("woo", raw)

    assert caught.value.reason == reason


# --- webhooks -----------------------------------------------------------------------------------------------------


def woocommerce_vector() -> dict[str, Any]:
    vectors = json.loads((FIXTURES / "hmac" / "vectors.json").read_text(encoding="utf-8"))
    vector: dict[str, Any] = next(v for v in vectors if v["platform"] == "woocommerce")
    return vector


def test_the_woocommerce_core_hmac_vector_is_reproduced() -> None:
    vector = woocommerce_vector()
    body = (FIXTURES / "hmac" / vector["body_file"]).read_bytes()

    # WooCommerce's own test signs the *payload* "secret" with the webhook's default empty secret.
    assert body == b"secret"
    assert webhook_signature(body, vector["secret"]) == vector["expected"]


def test_the_core_vector_is_refused_because_its_key_is_empty() -> None:
    vector = woocommerce_vector()
    body = (FIXTURES / "hmac" / vector["body_file"]).read_bytes()
    headers = {vector["header"]: vector["expected"]}

    # Anyone can compute an HMAC under an empty key, so a source configured with one accepts nothing.
    with pytest.raises(InvalidSignature):
        check_webhook_signature(headers, body, [SecretStr(vector["secret"])])


def test_a_signature_under_the_current_or_previous_secret_verifies() -> None:
    body = b'{"id":1}'

    check_webhook_signature(signed(body, "product.updated"), body, [SecretStr("new"), SecretStr(SECRET)])
    check_webhook_signature({"x-wc-webhook-signature": webhook_signature(body, "new")}, body, [SecretStr("new")])


def test_a_secret_stored_with_html_entities_verifies_as_woocommerce_signs_it() -> None:
    body = b'{"id":1}'
    # WooCommerce signs with wp_specialchars_decode(secret): a secret copied as `a&amp;b` was signed as `a&b`.
    headers = {"X-WC-Webhook-Signature": webhook_signature(body, "a&b<c>")}

    check_webhook_signature(headers, body, [SecretStr("a&amp;b&lt;c&gt;")])


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-WC-Webhook-Signature": ""},
        {"X-WC-Webhook-Signature": webhook_signature(b'{"id":2}', SECRET)},
        {"X-WC-Webhook-Signature": webhook_signature(b'{"id":1}', "other")},
        {"X-WC-Webhook-Signature": "ünïcode"},
        {"X-WC-Webhook-Signature": hashlib.sha256(b'{"id":1}').hexdigest()},
    ],
    ids=["missing", "empty", "other-body", "other-secret", "non-ascii", "hex-not-base64"],
)
def test_a_wrong_or_missing_signature_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(InvalidSignature) as caught:
        parse_webhook("woo", {"X-WC-Webhook-Topic": "product.updated", **headers}, b'{"id":1}', [SecretStr(SECRET)])

    assert SECRET not in str(caught.value)


def test_no_configured_secret_refuses_signed_deliveries() -> None:
    body = b'{"id":1}'

    with pytest.raises(InvalidSignature):
        parse_webhook("woo", signed(body, "product.updated"), body, [])


def test_the_unsigned_creation_ping_is_recognized() -> None:
    # What WC_Webhook::deliver_ping sends: a form body, no signature, no topic header.
    headers = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "WooCommerce/9.4 Hookshot"}

    event = parse_webhook("woo", headers, b"webhook_id=42", [SecretStr(SECRET)])

    assert (event.topic, event.product_id, event.product) == ("ping", None, None)


def test_a_ping_is_recognized_even_with_no_secret_configured() -> None:
    event = parse_webhook("woo", {}, b"webhook_id=7", [])

    assert event.topic == "ping"


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, b"webhook_id=42&id=5"),
        ({}, b"webhook_id=abc"),
        ({}, b'{"webhook_id": 42}'),
        ({"X-WC-Webhook-Topic": "product.updated"}, b"webhook_id=42"),
        ({"X-WC-Webhook-Signature": "forged"}, b"webhook_id=42"),
    ],
    ids=["extra-field", "not-digits", "json", "with-topic", "bad-signature"],
)
def test_anything_else_unsigned_is_not_a_ping(headers: dict[str, str], body: bytes) -> None:
    with pytest.raises(InvalidSignature):
        parse_webhook("woo", headers, body, [SecretStr(SECRET)])


@pytest.mark.parametrize("topic", ["product.created", "product.updated", "product.restored", "product.published"])
def test_product_topics_carry_the_full_normalized_product(topic: str) -> None:
    body = (DOCS / "wp-api-v3_products__03_retrieve_a_product.json").read_bytes()

    event = parse_webhook("woo", signed(body, topic), body, [SecretStr(SECRET)])

    assert event.topic == "upsert"
    assert event.platform_topic == topic
    assert event.product_id == "794"
    assert event.product == normalize_product("woo", json.loads(body))
    assert event.updated_at == datetime(2017, 3, 23, 20, 1, 14, tzinfo=UTC)


def test_a_deleted_product_is_a_deletion_by_id() -> None:
    body = b'{"id":794}'

    event = parse_webhook("woo", signed(body, "product.deleted"), body, [SecretStr(SECRET)])

    assert (event.topic, event.product_id, event.product) == ("delete", "794", None)


def test_a_variable_product_with_variations_is_fetched_whole_by_the_worker() -> None:
    payload = load("wp-api-v3_products__02_create_a_product.json")
    payload["variations"] = [732, 733]
    body = json.dumps(payload).encode()

    event = parse_webhook("woo", signed(body, "product.updated"), body, [SecretStr(SECRET)])

    assert (event.topic, event.product_id, event.product) == ("upsert", "799", None)


def test_a_variation_update_refreshes_its_parent() -> None:
    variation = load("wp-api-v3_product-variations__03_list_all_product_variations.json")[0]
    body = json.dumps({**variation, "type": "variation", "parent_id": 22, "name": "Ship Your Idea - Green"}).encode()

    event = parse_webhook("woo", signed(body, "product.updated"), body, [SecretStr(SECRET)])

    assert (event.topic, event.product_id, event.product) == ("upsert", "22", None)


@pytest.mark.parametrize(
    ("topic", "body", "reason"),
    [
        ("order.created", b'{"id":1}', "unknown_topic"),
        ("", b'{"id":1}', "unknown_topic"),
        ("product.updated", b"{not json", "malformed_payload"),
        ("product.updated", b"[1, 2]", "malformed_payload"),
        ("product.deleted", b'{"sku":"x"}', "malformed_payload"),
        ("product.updated", b'{"id":5,"name":"","date_modified_gmt":"2024-01-01T00:00:00"}', "no_title"),
    ],
    ids=["order-topic", "no-topic", "not-json", "not-object", "no-id", "untitled"],
)
def test_verified_deliveries_we_cannot_use_are_skipped(topic: str, body: bytes, reason: str) -> None:
    with pytest.raises(SkippedProduct) as caught:
        parse_webhook("woo", signed(body, topic), body, [SecretStr(SECRET)])

    assert caught.value.reason == reason


def test_event_ids_tell_apart_deliveries_that_share_woocommerces_per_second_id() -> None:
    first, second = b'{"id":1}', b'{"id":2}'

    a = parse_webhook("woo", signed(first, "product.deleted", delivery="same"), first, [SecretStr(SECRET)])
    b = parse_webhook("woo", signed(second, "product.deleted", delivery="same"), second, [SecretStr(SECRET)])
    again = parse_webhook("woo", signed(first, "product.deleted", delivery="same"), first, [SecretStr(SECRET)])

    assert a.event_id is not None
    assert a.event_id.startswith("same:")
    assert a.event_id != b.event_id
    assert a.event_id == again.event_id


def test_the_connector_verifies_with_its_sources_secrets() -> None:
    connector = WooCommerceConnector(source(webhook_secret_previous="old"), httpx.Client())
    body = b'{"id":3}'

    event = connector.verify_webhook(signed(body, "product.deleted", secret="old"), body)

    assert event.source == "woo"
    assert event.product_id == "3"


# --- OAuth 1.0a ---------------------------------------------------------------------------------------------------

# RFC 5849 §3.4.1's example request: its parameters, published base string and (HMAC-SHA1) signature.
RFC_PARAMS = [
    ("b5", "=%3D"),
    ("a3", "a"),
    ("c@", ""),
    ("a2", "r b"),
    ("c2", ""),
    ("a3", "2 q"),
    ("oauth_consumer_key", "9djdj82h48djs9d2"),
    ("oauth_token", "kkk9d7dh3k39sjv7"),
    ("oauth_signature_method", "HMAC-SHA1"),
    ("oauth_timestamp", "137131201"),
    ("oauth_nonce", "7d8f3e4a"),
]
RFC_BASE_STRING = (
    "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q%26a3%3Da%26b5%3D%253D%25253D%26c%2540%3D"
    "%26c2%3D%26oauth_consumer_key%3D9djdj82h48djs9d2%26oauth_nonce%3D7d8f3e4a%26oauth_signature_method%3DHMAC-SHA1"
    "%26oauth_timestamp%3D137131201%26oauth_token%3Dkkk9d7dh3k39sjv7"
)


def test_the_oauth_base_string_matches_rfc_5849() -> None:
    assert oauth1_base_string("POST", "http://example.com/request", RFC_PARAMS) == RFC_BASE_STRING


def test_the_oauth_signature_matches_the_published_example() -> None:
    signature = oauth1_signature(
        "POST",
        "http://example.com/request",
        RFC_PARAMS,
        "j49sk3j29djd",
        token_secret="dh893hdasih9",
        signature_method="HMAC-SHA1",
    )

    assert signature == "r6/TJjbCOr97/+UU0NsvSne7s5g="


# --- credentials --------------------------------------------------------------------------------------------------


def test_over_https_the_key_goes_as_basic_auth_and_never_in_the_url() -> None:
    store = FakeStore([simple(1, "2024-01-01T00:00:00")])

    list(connector_over(store).iter_products())

    for request in store.requests:
        expected = "Basic " + base64.b64encode(b"ck_key:cs_secret").decode()
        assert request.headers["Authorization"] == expected
        assert "cs_secret" not in str(request.url)
        assert "ck_key" not in str(request.url)


def test_over_http_requests_are_oauth_signed_and_the_secret_never_travels() -> None:
    store = FakeStore([simple(1, "2024-01-01T00:00:00")])
    connector = connector_over(store, url="http://shop.example:8080/store")

    list(connector.iter_products())

    request = store.requests[0]
    assert "authorization" not in request.headers
    assert "cs_secret" not in str(request.url)
    params = dict(parse_qsl(request.url.query.decode()))
    assert params["oauth_consumer_key"] == "ck_key"
    assert params["oauth_signature_method"] == "HMAC-SHA256"
    assert params["oauth_nonce"] == "n" * 32
    signature = params.pop("oauth_signature")
    url = "http://shop.example:8080/store/wp-json/wc/v3/products"
    assert signature == oauth1_signature("GET", url, params.items(), "cs_secret")


def test_plain_http_comes_with_a_warning_and_https_with_none() -> None:
    assert WooCommerceConnector(source(), httpx.Client()).warnings() == []

    (warning,) = WooCommerceConnector(source("http://shop.example"), httpx.Client()).warnings()

    assert "plain http://" in warning
    assert "in clear" in warning
    assert "cs_secret" not in warning


def test_a_page_size_above_woocommerces_maximum_is_capped_with_a_warning() -> None:
    store = FakeStore([simple(1, "2024-01-01T00:00:00")])
    connector = connector_over(store, page_size=250)

    list(connector.iter_products())

    assert {request.url.params["per_page"] for request in store.requests} == {"100"}
    assert any("page_size 250" in note for note in connector.warnings())


def test_when_the_store_sees_no_basic_credentials_the_connector_signs_with_oauth() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        # Like a PHP-CGI host that drops the Authorization header: Basic never arrives, OAuth in the query does.
        if "oauth_signature" not in request.url.params:
            seen.append("basic")
            return woo_error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        seen.append("oauth")
        return httpx.Response(200, json=[], headers={"X-WP-TotalPages": "0"})

    connector = connector_over(handler)
    list(connector.iter_products())

    assert seen == ["basic", "oauth", "oauth"]


def test_refused_credentials_are_not_retried_with_another_scheme() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return woo_error(401, "woocommerce_rest_authentication_error", "Consumer secret is invalid.")

    with pytest.raises(AuthError) as caught:
        list(connector_over(handler).iter_products())

    assert len(calls) == 1
    assert "Consumer secret is invalid." in str(caught.value)
    assert "cs_secret" not in str(caught.value)


def test_the_connector_is_built_from_its_source_and_hides_secrets() -> None:
    connector = build_connector(source(), client=httpx.Client())

    assert isinstance(connector, WooCommerceConnector)
    assert "cs_secret" not in repr(connector)
    assert "ck_key" not in repr(connector)


# --- errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "error", "fragment"),
    [
        (
            woo_error(403, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources."),
            AuthError,
            "the REST key lacks read access",
        ),
        (
            woo_error(
                401, "woocommerce_rest_authentication_error", "The API key provided does not have read permissions."
            ),
            AuthError,
            "does not have read permissions",
        ),
        (woo_error(401, "woocommerce_rest_authentication_error", "Invalid timestamp."), AuthError, "our clock"),
        (
            woo_error(404, "rest_no_route", "No route was found matching the URL and request method."),
            SourceError,
            "Plain",
        ),
        (woo_error(400, "rest_invalid_param", "Invalid parameter(s): per_page"), SourceError, "per_page"),
        (httpx.Response(403, text="<html>Access denied by firewall</html>"), AuthError, "firewall"),
        (httpx.Response(200, text="<!DOCTYPE html><p>Maintenance</p>"), SourceError, "an HTML page"),
        (httpx.Response(200, text="Deprecated: something in x.php\n[]"), SourceError, "WP_DEBUG_DISPLAY"),
        (httpx.Response(200, json={"products": []}), SourceError, "not the JSON array"),
    ],
    ids=[
        "403-cannot-view",
        "401-no-read-permission",
        "401-timestamp",
        "404-no-route",
        "400-invalid-param",
        "403-html",
        "200-html",
        "200-php-notice",
        "200-object",
    ],
)
def test_store_errors_become_clear_errors(response: httpx.Response, error: type[Exception], fragment: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return response

    with pytest.raises(error) as caught:
        list(connector_over(handler).iter_products())

    assert fragment in str(caught.value)
    assert "cs_secret" not in str(caught.value)


def test_an_anonymous_answer_after_every_scheme_says_the_key_lacks_read_access() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return woo_error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")

    with pytest.raises(AuthError) as caught:
        list(connector_over(handler).iter_products())

    assert str(caught.value).startswith("WooCommerce source 'woo': the REST key lacks read access to products")
    assert caught.value.code == "woocommerce_rest_cannot_view"


def test_a_redirect_to_another_address_is_named_in_the_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "shop.example":
            return httpx.Response(301, headers={"Location": f"https://www.shop.example{request.url.raw_path.decode()}"})
        return woo_error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")

    client = httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=True)
    connector = WooCommerceConnector(source(), client, sleep=lambda _: None)

    with pytest.raises(AuthError) as caught:
        list(connector.iter_products())

    assert "set `url` to that address" in str(caught.value)
    assert "https://www.shop.example" in str(caught.value)


def test_get_product_is_none_only_when_woocommerce_says_the_id_is_invalid() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/5"):
            return woo_error(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
        return woo_error(404, "rest_no_route", "No route was found matching the URL and request method.")

    connector = connector_over(handler)

    assert connector.get_product("5") is None
    assert connector.get_product("not-a-number") is None
    with pytest.raises(SourceError):
        # A missing API is not a missing product: answering None would delete it from the catalog.
        connector.get_product("6")


def test_get_product_of_a_variation_id_is_none() -> None:
    variation = load("wp-api-v3_product-variations__03_list_all_product_variations.json")[0]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={**variation, "type": "variation", "parent_id": 22, "name": "Idea - Green"})

    assert connector_over(handler).get_product("733") is None


# --- the keyset walk ----------------------------------------------------------------------------------------------


def stamp(minute: int, second: int = 0) -> str:
    return f"2024-05-01T10:{minute:02d}:{second:02d}"


def ids_of(items: Iterator[Any] | list[Any]) -> list[str]:
    return [item.product_id for item in items if isinstance(item, SourceProduct)]


def test_a_listing_walks_every_product_once_across_windows_and_ties() -> None:
    # 23 products: a bulk import of 9 sharing one second (more than a page of 4), and trashed ones at the end.
    products = [simple(n, stamp(1, n)) for n in range(1, 8)]
    products += [simple(n, stamp(5)) for n in range(20, 29)]
    products += [simple(n, stamp(9, n - 40)) for n in range(40, 45)]
    products += [simple(n, stamp(2, n - 60), status="trash") for n in range(60, 62)]
    store = FakeStore(products)

    items = list(connector_over(store, page_size=4).iter_products())

    expected = [str(p["id"]) for p in sorted(products[:-2], key=lambda p: (p["date_modified_gmt"], p["id"]))]
    assert ids_of(items) == [*expected, "60", "61"]
    assert [p.status for p in items if isinstance(p, SourceProduct)][-2:] == ["archived", "archived"]


def test_since_is_asked_one_second_early_and_its_whole_second_is_kept() -> None:
    products = [simple(1, stamp(1, 0)), simple(2, stamp(1, 1)), simple(3, stamp(1, 2))]
    store = FakeStore(products)
    since = datetime(2024, 5, 1, 10, 1, 1, 500_000, tzinfo=UTC)

    items = list(connector_over(store).iter_products(since))

    assert store.requests[0].url.params["modified_after"] == "2024-05-01T10:01:00"
    assert store.requests[0].url.params["dates_are_gmt"] == "true"
    assert store.requests[0].url.params["orderby"] == "modified"
    assert store.requests[0].url.params["order"] == "asc"
    assert ids_of(items) == ["2", "3"]


def test_a_product_edited_during_the_read_skips_nothing() -> None:
    products = [simple(n, stamp(1, n)) for n in range(1, 13)]
    store = FakeStore(products)
    stream = connector_over(store, page_size=4).iter_products()
    first = [next(stream) for _ in range(4)]

    # Product 2 (already read) is edited: by page numbers, product 5 would slide onto page 1 and be missed.
    products[1]["date_modified_gmt"] = stamp(30)
    rest = list(stream)

    assert ids_of(first) == ["1", "2", "3", "4"]
    assert ids_of(rest) == [str(n) for n in range(5, 13)] + ["2"]


def test_a_product_trashed_during_the_read_skips_nothing() -> None:
    products = [simple(n, stamp(1, n)) for n in range(1, 13)]
    store = FakeStore(products)
    stream = connector_over(store, page_size=4).iter_products()
    first = [next(stream) for _ in range(4)]

    products[0].update(status="trash", date_modified_gmt=stamp(30))
    rest = list(stream)

    assert ids_of(first) == ["1", "2", "3", "4"]
    assert ids_of(rest) == [str(n) for n in range(5, 13)] + ["1"]


def test_a_store_ignoring_modified_after_is_read_page_by_page_without_repeats() -> None:
    products = [simple(n, stamp(1, n)) for n in range(1, 11)]
    store = FakeStore(products, honour_modified_after=False)

    full = ids_of(connector_over(store, page_size=3).iter_products())
    incremental = ids_of(connector_over(store, page_size=3).iter_products(datetime(2024, 5, 1, 10, 1, 6, tzinfo=UTC)))

    assert full == [str(n) for n in range(1, 11)]
    assert incremental == ["6", "7", "8", "9", "10"]


def test_a_store_ignoring_the_page_parameter_fails_the_read_instead_of_looping() -> None:
    products = [simple(n, stamp(1)) for n in range(1, 5)]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=products[:2], headers={"X-WP-Total": "4"})

    with pytest.raises(SourceError, match="ignores the `page` parameter"):
        list(connector_over(handler, page_size=2).iter_products())


def test_a_bad_record_is_skipped_and_the_listing_goes_on() -> None:
    products = [simple(1, stamp(1)), simple(2, stamp(2), name=""), simple(3, stamp(3))]
    store = FakeStore(products)

    items = list(connector_over(store).iter_products())

    assert ids_of(items) == ["1", "3"]
    (skipped,) = [item for item in items if isinstance(item, SkippedProduct)]
    assert (skipped.product_id, skipped.reason) == ("2", "no_title")


def test_transient_store_faults_are_retried() -> None:
    answers = iter([httpx.Response(503), httpx.Response(429, headers={"Retry-After": "1"})])
    store = FakeStore([simple(1, stamp(1))])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers, None) or store(request)

    assert ids_of(connector_over(handler).iter_products()) == ["1"]


def test_a_since_in_another_timezone_is_read_as_utc() -> None:
    store = FakeStore([simple(1, stamp(1))])
    local = datetime(2024, 5, 1, 4, 0, 30, tzinfo=timezone(timedelta(hours=-3)))

    list(connector_over(store).iter_products(local))

    assert store.requests[0].url.params["modified_after"] == "2024-05-01T07:00:29"
