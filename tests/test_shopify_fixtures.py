"""Real third-party Shopify payloads (tests/fixtures/shopify, tests/fixtures/hmac) parse and normalize correctly."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from config.sources import SourceConfig, parse_source
from connectors.base import ImageRef, SourceProduct
from connectors.shopify import (
    ShopifyGraphQL,
    ShopifyRest,
    check_webhook_signature,
    group_bulk_lines,
    normalize_graphql_product,
    normalize_rest_product,
)
from ground.errors import InvalidSignature, SkippedProduct

FIXTURES = Path(__file__).parent / "fixtures"
SHOPIFY = FIXTURES / "shopify"
HMAC = FIXTURES / "hmac"
SHOP = "https://acme.myshopify.com"
IPOD_DESCRIPTION = (
    "It's the small iPod with one very big idea: Video. Now the world's most popular music player, available in "
    "4GB and 8GB models, lets you enjoy TV shows, movies, video podcasts, and more. The larger, brighter display "
    "means amazing picture quality. In six eye-catching colors, iPod nano is stunning all around. And with models "
    "starting at just $149, little speaks volumes."
)


def load(relative: str) -> Any:
    return json.loads((SHOPIFY / relative).read_text(encoding="utf-8"))


def product(item: SourceProduct | SkippedProduct) -> SourceProduct:
    assert isinstance(item, SourceProduct), f"expected a product, got {item}"
    return item


def source(kind: str = "shopify-rest", **extra: Any) -> SourceConfig:
    return parse_source({"name": "acme", "kind": kind, "url": SHOP, "access_token": SecretStr("shpat_test"), **extra})


def serving(body: bytes, content_type: str = "application/json") -> httpx.Client:
    """A client whose every request gets `body`, for running a connector's parsing over a fixture."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": content_type})

    return httpx.Client(transport=httpx.MockTransport(handler))


# -- REST list shapes ----------------------------------------------------------------------------------------------


def test_a_bare_array_from_2011_reads_as_active_products_with_plain_text_and_utc_times() -> None:
    body = (SHOPIFY / "rest/shopify_python_api/products.json").read_bytes()
    connector = ShopifyRest(source(), client=serving(body))

    items = [product(item) for item in connector.iter_products()]

    assert [p.product_id for p in items] == ["1", "2", "3", "4"]
    first = items[0]
    assert first.status == "active"  # no `status` field in 2011: everything listed was live
    assert first.title == "IPod Nano - 8GB"
    assert first.description == IPOD_DESCRIPTION
    assert first.updated_at == datetime(2011, 10, 20, 18, 5, 13, tzinfo=UTC)
    assert first.tags == ("Emotive", "Flash Memory", "MP3", "Music")
    assert first.images == (ImageRef("http://static.shopify.com/s/files/1/6909/3384/products/ipod-nano.png?0"),)
    assert (first.vendor, first.product_type, first.handle) == ("Apple", "Cult Products", "ipod-nano")
    assert first.attributes["price"] == "199.00"


def test_a_wrapped_2024_04_list_orders_images_by_position_and_drops_the_repeated_one() -> None:
    body = (SHOPIFY / "rest/shopify-api-js-2024-04/test_2__GET_products.json").read_bytes()
    connector = ShopifyRest(source(), client=serving(body))

    nano, touch = (product(item) for item in connector.iter_products())

    assert nano.product_id == "632910392"
    assert nano.raw_ref == "gid://shopify/Product/632910392"
    assert nano.status == "active"
    assert [image.url for image in nano.images] == [
        "https://cdn.shopify.com/s/files/1/0005/4838/0009/products/ipod-nano.png?v=1704203951",
        "https://cdn.shopify.com/s/files/1/0005/4838/0009/products/ipod-nano-2.png?v=1704203951",
    ]
    assert nano.updated_at == datetime(2024, 4, 2, 13, 59, 11, tzinfo=UTC)
    assert nano.url == f"{SHOP}/products/ipod-nano"  # active and published
    assert touch.product_id == "921728736"
    assert touch.images == ()


def test_a_wrapped_2015_list_without_status_reads_as_active() -> None:
    raw = load("rest/shopify-api-node/product/res/list.json")["products"]

    items = [product(normalize_rest_product("acme", item, shop_url=SHOP)) for item in raw]

    assert [(p.product_id, p.status, len(p.images)) for p in items] == [
        ("632910392", "active", 2),
        ("921728736", "active", 0),
    ]


def test_a_single_product_answer_matches_the_same_product_in_the_list() -> None:
    listed = load("rest/shopify-api-js-2024-04/test_2__GET_products.json")["products"][0]
    single = load("rest/shopify-api-js-2024-04/test_9__GET_632910392.json")["product"]

    assert normalize_rest_product("acme", single, shop_url=SHOP) == normalize_rest_product(
        "acme", listed, shop_url=SHOP
    )


def test_a_new_draft_without_images_or_tags_normalizes_to_empty_tuples_and_no_url() -> None:
    raw = load("rest/shopify-api-js-2024-04/test_24__POST_products.json")["product"]

    draft = product(normalize_rest_product("acme", raw, shop_url=SHOP))

    assert draft.status == "draft"
    assert draft.images == ()
    assert draft.tags == ()
    assert draft.description == "Good snowboard!"
    assert draft.url is None  # a draft has no public page


def test_a_sparse_fields_answer_without_updated_at_is_skipped_with_a_reason() -> None:
    raw = load("rest/shopify-api-js-2024-04/test_6__GET_products__fields=id,images,title.json")["products"]

    results = [normalize_rest_product("acme", item) for item in raw]

    assert all(isinstance(r, SkippedProduct) and r.reason == "bad_updated_at" for r in results)
    assert [r.product_id for r in results if isinstance(r, SkippedProduct)] == ["632910392", "921728736"]


def test_a_go_shopify_product_with_escaped_html_and_no_images() -> None:
    raw = load("rest/go-shopify/product.json")["product"]

    board = product(normalize_rest_product("acme", raw, shop_url=SHOP))

    assert board.product_id == "1071559748"
    assert board.description == "Good snowboard!"
    assert board.images == ()
    assert board.status == "active"


# -- webhook body --------------------------------------------------------------------------------------------------


def test_a_products_create_body_with_null_html_and_no_images_normalizes() -> None:
    raw = load("webhooks/pipedream/shopify__new-product-created__test-event.products_create.json")

    created = product(normalize_rest_product("acme", raw, shop_url=SHOP))

    assert created.product_id == "9674076979480"
    assert created.description == ""
    assert created.images == ()
    assert created.tags == ()
    assert created.product_type is None
    assert created.updated_at == datetime(2025, 2, 27, 20, 8, 29, tzinfo=UTC)
    assert created.url == f"{SHOP}/products/product"


# -- bulk JSONL ----------------------------------------------------------------------------------------------------


def jsonl(relative: str) -> Iterator[str]:
    return iter((SHOPIFY / relative).read_text(encoding="utf-8").splitlines())


def test_bulk_lines_from_the_shopify_docs_join_each_variant_to_its_product() -> None:
    groups = list(
        group_bulk_lines(jsonl("graphql/shopify_dev_docs_bulk_operations/products_with_variants_bulk_result.jsonl"))
    )

    assert [(parent["id"].rsplit("/", 1)[-1], len(children)) for parent, children in groups] == [
        ("1921569226808", 2),
        ("1921569259576", 1),
        ("1921569292344", 1),
        ("1921569325112", 1),
        ("1921569357880", 1),
    ]
    for parent, children in groups:
        assert all(child["__parentId"] == parent["id"] for child in children)


def test_bulk_lines_from_airbyte_join_media_and_keep_one_image_per_repeated_url() -> None:
    groups = list(
        group_bulk_lines(jsonl("graphql/airbyte_source_shopify_bulk_jsonl/product_images_jsonl_content_example.jsonl"))
    )
    # The export asked only for ids; give each product the fields a real export of ours carries.
    completed = [
        normalize_graphql_product("acme", {**parent, "title": "Tee", "updatedAt": "2023-04-24T17:27:15Z"}, children)
        for parent, children in groups
    ]

    shirt, candle = (product(item) for item in completed)
    assert shirt.product_id == "123"
    assert shirt.images == (
        ImageRef("https://cdn.shopify.com/s/files/1/0580/3317/6765/products/white-t-shirt.jpg?v=1673029759"),
    )
    assert candle.product_id == "456"
    assert [image.url for image in candle.images] == [
        "https://cdn.shopify.com/s/files/1/0580/3317/6765/products/4-ounce-soy-candle.jpg?v=1624410587"
    ]


def test_bulk_products_without_updated_at_are_skipped_not_raised() -> None:
    groups = group_bulk_lines(
        jsonl("graphql/shopify_dev_docs_bulk_operations/products_with_variants_bulk_result.jsonl")
    )

    results = [normalize_graphql_product("acme", parent, children) for parent, children in groups]

    assert {type(r) for r in results} == {SkippedProduct}
    assert {r.reason for r in results if isinstance(r, SkippedProduct)} == {"bad_updated_at"}


def bulk_flow(jsonl_body: bytes) -> Callable[[httpx.Request], httpx.Response]:
    """Shopify's bulk conversation, answered with the airbyte fixtures: created, running, completed, then the file."""
    folder = SHOPIFY / "graphql/airbyte_source_shopify_bulk_jsonl"
    polls = iter(
        [folder / "conftest__bulk_job_running_response.json", folder / "conftest__bulk_job_completed_response.json"]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "some_url":
            assert "X-Shopify-Access-Token" not in request.headers, "the token must not go to the storage host"
            return httpx.Response(200, content=jsonl_body)
        query = json.loads(request.content)["query"]
        if "bulkOperationRunQuery" in query:
            return httpx.Response(200, content=(folder / "conftest__bulk_successful_response.json").read_bytes())
        return httpx.Response(200, content=next(polls).read_bytes())

    return handler


def test_a_bulk_export_answered_by_the_airbyte_fixtures_streams_the_jsonl() -> None:
    body = (
        SHOPIFY / "graphql/airbyte_source_shopify_bulk_jsonl/product_images_jsonl_content_example.jsonl"
    ).read_bytes()
    sleeps: list[float] = []
    client = httpx.Client(transport=httpx.MockTransport(bulk_flow(body)))
    connector = ShopifyGraphQL(source("shopify"), client=client, bulk="always", sleep=sleeps.append)

    results = list(connector.iter_products(None))

    assert [(r.product_id, r.reason) for r in results if isinstance(r, SkippedProduct)] == [
        ("123", "bad_updated_at"),
        ("456", "bad_updated_at"),
    ]
    assert sleeps, "a RUNNING operation is polled again after a wait"


# -- HMAC vectors --------------------------------------------------------------------------------------------------


def vectors(*platforms: str) -> list[dict[str, Any]]:
    every: list[dict[str, Any]] = json.loads((HMAC / "vectors.json").read_text(encoding="utf-8"))
    return [v for v in every if v["platform"] in platforms]


def vector_body(vector: dict[str, Any]) -> bytes:
    return (HMAC / str(vector["body_file"])).read_bytes()


SHOPIFY_VECTORS = vectors("shopify", "generic")


@pytest.mark.parametrize("vector", SHOPIFY_VECTORS, ids=[v["platform"] for v in SHOPIFY_VECTORS])
def test_the_published_vectors_verify(vector: dict[str, Any]) -> None:
    headers = {"X-Shopify-Hmac-Sha256": vector["expected"]}

    check_webhook_signature(headers, vector_body(vector), [SecretStr(vector["secret"])])


@pytest.mark.parametrize("vector", SHOPIFY_VECTORS, ids=[v["platform"] for v in SHOPIFY_VECTORS])
def test_a_changed_byte_does_not_verify(vector: dict[str, Any]) -> None:
    body = bytearray(vector_body(vector))
    body[0] ^= 0x01

    with pytest.raises(InvalidSignature):
        check_webhook_signature(
            {"X-Shopify-Hmac-Sha256": vector["expected"]}, bytes(body), [SecretStr(vector["secret"])]
        )


@pytest.mark.parametrize("vector", SHOPIFY_VECTORS, ids=[v["platform"] for v in SHOPIFY_VECTORS])
def test_a_wrong_secret_does_not_verify(vector: dict[str, Any]) -> None:
    with pytest.raises(InvalidSignature):
        check_webhook_signature(
            {"X-Shopify-Hmac-Sha256": vector["expected"]}, vector_body(vector), [SecretStr(vector["secret"] + "x")]
        )


@pytest.mark.parametrize("vector", SHOPIFY_VECTORS, ids=[v["platform"] for v in SHOPIFY_VECTORS])
def test_a_missing_header_does_not_verify(vector: dict[str, Any]) -> None:
    with pytest.raises(InvalidSignature):
        check_webhook_signature(
            {"X-Shopify-Topic": "products/create"}, vector_body(vector), [SecretStr(vector["secret"])]
        )


def test_an_empty_secret_never_verifies_even_a_correct_empty_key_signature() -> None:
    (woo,) = vectors("woocommerce")  # signed with an empty key: anyone can forge that

    with pytest.raises(InvalidSignature):
        check_webhook_signature({"X-Shopify-Hmac-Sha256": woo["expected"]}, vector_body(woo), [SecretStr("")])


def test_the_shopify_vector_passes_verify_webhook_and_its_toy_body_is_then_refused_as_a_product() -> None:
    (vector,) = vectors("shopify")
    connector = ShopifyRest(source(webhook_secret=SecretStr(vector["secret"])), client=serving(b"{}"))
    headers = {**vector["headers_in_test"], "x-shopify-hmac-sha256": vector["expected"]}

    with pytest.raises(SkippedProduct) as caught:
        connector.verify_webhook(headers, vector_body(vector))

    # Signature accepted (no InvalidSignature); `{"foo": "bar"}` is not a product.
    assert caught.value.reason == "missing_id"
