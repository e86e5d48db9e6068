"""Fuzzing what shops send: Shopify GraphQL, bulk, REST and storefront product JSON, WooCommerce product JSON, and
signed webhook deliveries of both. A payload normalizes to a product the planner can store, or is skipped with a
reason; a verified delivery becomes an event or a `SkippedProduct`; nothing else is raised."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from itertools import islice
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from config.sources import ShopifyRestSource, ShopifySource, SourceConfig, StorefrontSource, WooCommerceSource
from connectors import build_connector, shopify, woocommerce
from connectors.base import WebhookEvent, product_id_problem
from ground.errors import InvalidSignature, SkippedProduct, SourceError
from tests.fuzz_support import FUZZ, HOSTILE_SAMPLES, check_items, hostile_text, or_skip

# A parser that hangs fails here instead of at the suite-wide timeout: the whole file runs in seconds.
pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
SECRET = "fuzz-webhook-secret"
SHOPIFY = ShopifySource(name="shop", kind="shopify", url="https://fuzz.myshopify.com", access_token=SecretStr("t"))
WOO = WooCommerceSource(
    name="woo",
    kind="woocommerce",
    url="https://woo.example",
    consumer_key=SecretStr("k"),
    consumer_secret=SecretStr("s"),
)

ids = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(HOSTILE_SAMPLES),
    st.sampled_from(["gid://shopify/Product/1", "gid://shopify/Product/²", "gid://shopify/Product/" + "9" * 5000]),
    st.text(alphabet="0123456789²³¹٣", max_size=30),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
)
dates = st.one_of(
    st.sampled_from(
        [
            "2025-01-01T00:00:00Z",
            "2999-12-31T23:59:59+00:00",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "2025-13-45",
            "",
            "now",
        ]
    ),
    hostile_text,
    st.integers(),
    st.none(),
)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text
anything = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(hostile_text, kids, max_size=3), max_leaves=8
)
image = st.fixed_dictionaries(
    {},
    optional={
        "src": hostile_text | st.just("https://cdn.shopify.com/a.jpg"),
        "url": hostile_text,
        "alt": anything,
        "position": anything,
    },
)


def product_fields(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=keys)


rest_products = product_fields(
    {
        "id": ids,
        "admin_graphql_api_id": ids,
        "title": hostile_text | anything,
        "body_html": hostile_text | anything,
        "handle": hostile_text | anything,
        "vendor": hostile_text | anything,
        "product_type": anything,
        "status": st.sampled_from(["active", "draft", "ARCHIVED", "unlisted", ""]) | anything,
        "published_at": dates,
        "updated_at": dates,
        "tags": hostile_text | st.lists(anything, max_size=3) | anything,
        "images": st.lists(image | anything, max_size=4) | anything,
        "image": image | anything,
        "variants": st.lists(product_fields({"price": anything, "available": anything}) | anything, max_size=3),
    }
)
graphql_nodes = product_fields(
    {
        "id": ids,
        "title": hostile_text | anything,
        "descriptionHtml": hostile_text | anything,
        "handle": anything,
        "vendor": anything,
        "productType": anything,
        "status": st.sampled_from(["ACTIVE", "DRAFT", "ARCHIVED"]) | anything,
        "updatedAt": dates,
        "onlineStoreUrl": anything,
        "tags": st.lists(anything, max_size=3) | anything,
        "priceRangeV2": product_fields(
            {"minVariantPrice": product_fields({"amount": anything, "currencyCode": anything})}
        ),
        "media": product_fields(
            {"nodes": st.lists(product_fields({"image": image | anything}) | anything, max_size=3) | anything}
        )
        | anything,
    }
)
woo_products = product_fields(
    {
        "id": ids,
        "parent_id": ids,
        "type": st.sampled_from(["simple", "variable", "variation"]) | anything,
        "name": hostile_text | anything,
        "slug": anything,
        "permalink": hostile_text | st.just("https://woo.example/p/1") | anything,
        "status": st.sampled_from(["publish", "draft", "trash"]) | anything,
        "description": hostile_text | anything,
        "short_description": anything,
        "date_modified_gmt": dates,
        "date_created_gmt": dates,
        "images": st.lists(image | anything, max_size=3) | anything,
        "categories": st.lists(product_fields({"name": anything, "slug": anything}) | anything, max_size=3) | anything,
        "tags": st.lists(product_fields({"name": anything}) | anything, max_size=3) | anything,
        "brands": anything,
        "sku": anything,
        "price": anything,
        "variations": anything,
    }
)


@FUZZ
@given(rest_products | anything, st.booleans())
def test_any_shopify_rest_or_storefront_product_normalizes_or_is_skipped(raw: Any, storefront: bool) -> None:
    item = shopify.normalize_rest_product("shop", raw, shop_url=SHOPIFY.url, storefront=storefront)

    check_items([item], SHOPIFY)


@FUZZ
@given(graphql_nodes | anything, st.none() | st.lists(anything, max_size=3))
def test_any_shopify_graphql_node_normalizes_or_is_skipped(node: Any, media: list[Any] | None) -> None:
    item = shopify.normalize_graphql_product("shop", node, media)

    check_items([item], SHOPIFY)


@FUZZ
@given(st.lists(hostile_text | st.builds(json.dumps, graphql_nodes) | st.builds(json.dumps, anything), max_size=5))
def test_any_shopify_bulk_lines_are_grouped_or_refused(lines: list[str]) -> None:
    try:
        for product, children in shopify.group_bulk_lines(lines):
            check_items([shopify.normalize_graphql_product("shop", product, children)], SHOPIFY)
    except SourceError:
        pass


@FUZZ
@given(woo_products | anything)
def test_any_woocommerce_product_normalizes_or_is_skipped(raw: Any) -> None:
    if not isinstance(raw, dict):
        raw = {"value": raw}
    item = or_skip(lambda: woocommerce.normalize_product("woo", raw))
    if isinstance(item, SkippedProduct):
        assert item.reason
        return

    check_items([item], WOO)


# ---- signed webhook deliveries ---------------------------------------------------------------------------------


def shopify_headers(body: bytes, topic: str, extra: dict[str, str]) -> dict[str, str]:
    digest = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    return {"X-Shopify-Hmac-Sha256": digest, "X-Shopify-Topic": topic, **extra}


def woo_headers(body: bytes, topic: str, extra: dict[str, str]) -> dict[str, str]:
    return {"X-WC-Webhook-Signature": woocommerce.webhook_signature(body, SECRET), "X-WC-Webhook-Topic": topic, **extra}


header_values = st.sampled_from(
    ["", "2999-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "x" * 5000, "\u00e9"]
) | st.text(max_size=30)


def check_event(event: WebhookEvent) -> None:
    assert event.topic in ("upsert", "delete", "ping")
    if event.product_id is not None:
        assert product_id_problem(event.product_id) is None
    if event.product is not None:
        check_items([event.product], SHOPIFY)


def body_of(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


payloads = rest_products | woo_products | anything | st.binary(max_size=200)


@FUZZ
@given(
    payloads,
    st.sampled_from(["products/create", "products/update", "products/delete", "orders/create", ""])
    | st.text(max_size=20),
    st.dictionaries(
        st.sampled_from(["X-Shopify-Triggered-At", "X-Shopify-Event-Id", "X-Shopify-Webhook-Id"]), header_values
    ),
)
def test_any_signed_shopify_delivery_is_an_event_or_a_skip(payload: Any, topic: str, extra: dict[str, str]) -> None:
    body = body_of(payload)
    headers = shopify_headers(body, topic, extra)
    shopify.check_webhook_signature(headers, body, [SecretStr(SECRET)])
    event = or_skip(lambda: shopify.parse_webhook("shop", headers, body, shop_url=SHOPIFY.url))
    if isinstance(event, SkippedProduct):
        assert event.reason
        return

    check_event(event)


@FUZZ
@given(
    payloads,
    st.sampled_from(["product.created", "product.updated", "product.deleted", "order.created", ""])
    | st.text(max_size=20),
    st.dictionaries(st.sampled_from(["X-WC-Webhook-Delivery-ID", "X-WC-Webhook-Source"]), header_values),
)
def test_any_signed_woocommerce_delivery_is_an_event_or_a_skip(payload: Any, topic: str, extra: dict[str, str]) -> None:
    body = body_of(payload)
    headers = woo_headers(body, topic, extra)
    event = or_skip(lambda: woocommerce.parse_webhook("woo", headers, body, [SecretStr(SECRET)]))
    if isinstance(event, SkippedProduct):
        assert event.reason
        return

    check_event(event)


@FUZZ
@given(st.dictionaries(st.text(max_size=30), st.text(max_size=60), max_size=5), st.binary(max_size=200))
def test_unsigned_or_forged_deliveries_are_refused_as_invalid_signatures(headers: dict[str, str], body: bytes) -> None:
    with pytest.raises(InvalidSignature):
        shopify.check_webhook_signature(headers, body, [SecretStr(SECRET)])
    try:
        woocommerce.parse_webhook("woo", headers, body, [SecretStr(SECRET)])
    except InvalidSignature:
        pass
    else:  # only WooCommerce's unsigned creation ping gets through, and it carries nothing
        assert woocommerce.is_ping(headers, body)


HOSTILE_BODIES = {
    "nested-100000": b'{"id": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "id-10000-digits": b'{"id": ' + b"9" * 10_000 + b"}",
    "id-string-10000-digits": b'{"id": "' + b"9" * 10_000 + b'"}',
    "id-superscript-two": '{"id": "²"}'.encode(),
    "id-arabic-digits": '{"id": "١٢٣"}'.encode(),
    "id-too-big-for-64-bits": b'{"id": 99999999999999999999999}',
    "lone-surrogate": b'{"id": 1, "title": "\\ud800", "updated_at": "2025-01-01T00:00:00Z"}',
    "invalid-utf8": b'{"id": 1, "title": "\xff\xfe"}',
    "nul": b'{"id": 1, "title": "a\\u0000b", "updated_at": "2025-01-01T00:00:00Z"}',
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
@pytest.mark.parametrize("topic", ["products/update", "products/delete"])
def test_hostile_signed_shopify_bodies_are_events_or_skips(body: bytes, topic: str) -> None:
    headers = shopify_headers(body, topic, {})
    event = or_skip(lambda: shopify.parse_webhook("shop", headers, body, shop_url=SHOPIFY.url))
    if isinstance(event, SkippedProduct):
        assert event.reason
        return
    check_event(event)


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
@pytest.mark.parametrize("topic", ["product.updated", "product.deleted"])
def test_hostile_signed_woocommerce_bodies_are_events_or_skips(body: bytes, topic: str) -> None:
    headers = woo_headers(body, topic, {})
    event = or_skip(lambda: woocommerce.parse_webhook("woo", headers, body, [SecretStr(SECRET)]))
    if isinstance(event, SkippedProduct):
        assert event.reason
        return
    check_event(event)


@pytest.mark.parametrize(
    "line", ["9" * 10_000, "[" * 100_000, '{"id": "gid://shopify/Product/1", "x": ' + "9" * 5000 + "}"]
)
def test_a_bulk_line_that_cannot_be_parsed_fails_the_read_cleanly(line: str) -> None:
    with pytest.raises(SourceError, match="line 1 is not usable JSON"):
        list(shopify.group_bulk_lines([line]))


@pytest.mark.parametrize("value", ["²", "١٢٣", "9" * 10_000, "gid://shopify/Product/²", 2**64, -1, 0, True])
def test_ids_that_are_not_plain_64_bit_numbers_are_not_shopify_ids(value: object) -> None:
    assert shopify.numeric_id(value) is None


# ---- whole listings: a hostile answer fails the read cleanly ----------------------------------------------------

HOSTILE_ANSWERS = {
    "nested-100000": b"[" * 100_000 + b"]" * 100_000,
    "number-10000-digits": b"9" * 10_000,
    "not-json": b"<html>maintenance</html>",
    "invalid-utf8": b'{"products": ["\xff\xfe"]}',
    "graphql-nodes-hostile": json.dumps(
        {"data": {"products": {"nodes": [{"id": "gid://shopify/Product/²"}, {"id": "9" * 300}, None, 7]}}}
    ).encode(),
    "rest-products-hostile": json.dumps(
        {"products": [{"id": "²"}, {"id": 2**70}, {"id": 1, "title": "\ud800", "updated_at": "2025-01-01T00:00:00Z"}]}
    ).encode(),
    "woo-list-hostile": json.dumps(
        [{"id": "²"}, {"id": 3, "name": "a\u0000b", "date_modified_gmt": "0001-01-01T00:00:00", "images": "x"}]
    ).encode(),
}
KINDS: dict[str, SourceConfig] = {
    "shopify": ShopifySource(name="s", kind="shopify", url="https://fuzz.myshopify.com", access_token=SecretStr("t")),
    "shopify-rest": ShopifyRestSource(
        name="s", kind="shopify-rest", url="https://fuzz.myshopify.com", access_token=SecretStr("t")
    ),
    "shopify-storefront": StorefrontSource(name="s", kind="shopify-storefront", url="https://fuzz.myshopify.com"),
    "woocommerce": WOO,
}


@pytest.mark.parametrize("answer", HOSTILE_ANSWERS.values(), ids=HOSTILE_ANSWERS.keys())
@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_listing_yields_products_and_skips_or_fails_the_read(kind: str, answer: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=answer, headers={"Content-Type": "application/json"})

    source = KINDS[kind]
    connector = build_connector(source, client=httpx.Client(transport=httpx.MockTransport(handler)))
    try:
        items = or_source_error(lambda: list(islice(connector.iter_products(None), 50)))
    finally:
        connector.close()
    if not isinstance(items, SourceError):
        check_items(items, source)


def or_source_error(call: Callable[[], T]) -> T | SourceError:
    try:
        return call()
    except SourceError as error:
        return error
