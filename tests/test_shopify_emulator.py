"""The Shopify emulator over real sockets: GraphQL paging, search filters, query cost and throttling, bulk export,
REST Link paging and call limits, the storefront cap, control edits and signed webhooks.

Every test runs its own small shop (`emulators.server.running`) with raw httpx, and a fake clock wherever time
matters (buckets, bulk timeline, edit timestamps): time is advanced, never waited for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from emulators.server import running
from emulators.shopify import Shop, create_app, sign_webhook
from emulators.shopify_data import ProductStore, generate_product

FIXTURES = Path(__file__).parent / "fixtures" / "shopify_emulator"
TOKEN = "shpat_test"
VERSION = "2025-07"
GRAPHQL = f"/admin/api/{VERSION}/graphql.json"
REST = f"/admin/api/{VERSION}/products.json"
# 2026-01-01: later than every generated timestamp, so an edit is the newest product.
CLOCK_START = 1_767_225_600.0

PAGE_QUERY = """
query Page($first: Int, $last: Int, $after: String, $before: String, $sortKey: ProductSortKeys, $query: String,
           $reverse: Boolean) {
  products(first: $first, last: $last, after: $after, before: $before, sortKey: $sortKey, query: $query,
           reverse: $reverse) {
    edges { cursor node { id legacyResourceId status updatedAt } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""


class FakeClock:
    def __init__(self, start: float = CLOCK_START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def emulator(**options: Any) -> Iterator[tuple[httpx.Client, Shop]]:
    app = create_app(**options)
    with running(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client, app.state.shop


def gql(client: httpx.Client, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    response = client.post(GRAPHQL, json={"query": query, "variables": variables or {}}, headers=_auth())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _auth() -> dict[str, str]:
    return {"X-Shopify-Access-Token": TOKEN}


def _walk_graphql(client: httpx.Client, **variables: Any) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    after = None
    while True:
        body = gql(client, PAGE_QUERY, {**variables, "after": after})
        assert "errors" not in body, body
        connection = body["data"]["products"]
        nodes.extend(edge["node"] for edge in connection["edges"])
        if not connection["pageInfo"]["hasNextPage"]:
            return nodes
        after = connection["pageInfo"]["endCursor"]


def _rest_all(client: httpx.Client, **params: str) -> list[dict[str, Any]]:
    products: list[dict[str, Any]] = []
    response = client.get(REST, params={"limit": "250", **params}, headers=_auth())
    while True:
        assert response.status_code == 200, response.text
        products.extend(response.json()["products"])
        match = re.search(r'<([^>]+)>; rel="next"', response.headers.get("link", ""))
        if match is None:
            return products
        response = client.get(match.group(1), headers=_auth())


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ----------------------------------------------------------------------------------------------------------------
# The generated shop


def test_generated_shop_is_deterministic_and_as_varied_as_a_real_one() -> None:
    first = list(ProductStore(2_000, seed=9).iter_products("ID", reverse=False, product_filter=None))
    again = list(ProductStore(2_000, seed=9).iter_products("ID", reverse=False, product_filter=None))
    other = list(ProductStore(2_000, seed=10).iter_products("ID", reverse=False, product_filter=None))

    assert first == again
    assert first != other
    statuses = [p.status for p in first]
    assert {"ACTIVE", "DRAFT", "ARCHIVED"} <= set(statuses)
    assert statuses.count("ACTIVE") > len(first) / 2
    image_counts = [len(p.images) for p in first]
    assert min(image_counts) == 0
    assert 10 < max(image_counts) <= 15
    assert any(len({i.url for i in p.images}) < len(p.images) for p in first), "some products repeat an image URL"
    assert any(item.kind == "VIDEO" for p in first for item in p.media)
    assert any(not p.title.isascii() for p in first)
    assert any("<script" in p.description_html for p in first)
    assert any("&amp;" in p.description_html or "&eacute;" in p.description_html for p in first)
    assert len({p.handle for p in first}) == len(first)
    assert len({p.id for p in first}) == len(first)
    assert all(p.updated_at >= p.created_at for p in first)
    months = {datetime.fromtimestamp(p.updated_at).strftime("%Y-%m") for p in first}
    assert len(months) > 12, "updatedAt spreads over months"


def test_a_large_shop_is_generated_lazily_in_little_memory() -> None:
    generate_product.cache_clear()
    tracemalloc.start()
    try:
        store = ProductStore(20_000, seed=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(store) == 20_000
    assert generate_product.cache_info().currsize == 0, "no product is built until asked for"
    assert peak < 16 * 1024 * 1024
    assert store.get(store.matching_ids("ID", reverse=False, product_filter=None)[-1]) is not None


# ----------------------------------------------------------------------------------------------------------------
# GraphQL paging and search


def test_cursor_paging_in_updated_order_visits_every_product_exactly_once() -> None:
    with emulator(products=57, seed=5) as (client, _):
        nodes = _walk_graphql(client, first=10, sortKey="UPDATED_AT")
        rest_ids = {p["id"] for p in _rest_all(client)}

    ids = [int(n["legacyResourceId"]) for n in nodes]
    assert len(ids) == len(set(ids)) == 57
    assert set(ids) == rest_ids
    keys = [(_epoch(n["updatedAt"]), int(n["legacyResourceId"])) for n in nodes]
    assert keys == sorted(keys)
    assert all(n["id"] == f"gid://shopify/Product/{n['legacyResourceId']}" for n in nodes)


def test_backward_and_reverse_paging_give_the_same_sequence() -> None:
    with emulator(products=23, seed=8) as (client, _):
        forward = [n["id"] for n in _walk_graphql(client, first=5, sortKey="ID")]
        reverse = [n["id"] for n in _walk_graphql(client, first=5, sortKey="ID", reverse=True)]
        backward: list[str] = []
        before = None
        while True:
            body = gql(client, PAGE_QUERY, {"last": 5, "before": before, "sortKey": "ID"})
            connection = body["data"]["products"]
            backward = [edge["node"]["id"] for edge in connection["edges"]] + backward
            if not connection["pageInfo"]["hasPreviousPage"]:
                break
            before = connection["pageInfo"]["startCursor"]

    assert reverse == forward[::-1]
    assert backward == forward
    assert forward == sorted(forward, key=lambda g: int(g.rsplit("/", 1)[1]))


def test_products_edited_at_the_same_second_are_ordered_by_id_without_skips() -> None:
    clock = FakeClock()
    with emulator(products=12, seed=2, clock=clock) as (client, shop):
        ids = sorted(shop.store.matching_ids("ID", reverse=False, product_filter=None))[3:8]
        for product_id in reversed(ids):
            assert client.patch(f"/_emulator/products/{product_id}", json={"vendor": "Same Second"}).status_code == 200
        tail = _walk_graphql(client, first=1, sortKey="UPDATED_AT", query="vendor:'Same Second'")

    assert [int(n["legacyResourceId"]) for n in tail] == ids
    assert len({n["updatedAt"] for n in tail}) == 1


@pytest.mark.parametrize(
    ("template", "op"),
    [("updated_at:>'{}'", ">"), ("updated_at:>{}", ">"), ('updated_at:>"{}"', ">"), ("updated_at:>='{}'", ">=")],
    ids=["single-quotes", "bare", "double-quotes", "at-or-after"],
)
def test_updated_at_filter_returns_exactly_the_products_changed_after_the_watermark(template: str, op: str) -> None:
    with emulator(products=60, seed=6) as (client, _):
        everything = _rest_all(client)
        times = sorted(_epoch(p["updated_at"]) for p in everything)
        watermark = times[len(times) // 2]
        iso = datetime.fromtimestamp(watermark, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        nodes = _walk_graphql(client, first=7, sortKey="UPDATED_AT", query=template.format(iso))

    def wanted(updated: float) -> bool:
        return updated > watermark or (op == ">=" and updated == watermark)

    newer = {p["id"] for p in everything if wanted(_epoch(p["updated_at"]))}
    assert {int(n["legacyResourceId"]) for n in nodes} == newer
    assert 0 < len(newer) < len(everything)


def test_status_and_date_filters_combine() -> None:
    with emulator(products=80, seed=7) as (client, _):
        everything = _rest_all(client)
        watermark = sorted(_epoch(p["updated_at"]) for p in everything)[20]
        iso = datetime.fromtimestamp(watermark, UTC).isoformat()
        active = _walk_graphql(client, first=30, query="status:active")
        both = _walk_graphql(client, first=30, sortKey="UPDATED_AT", query=f"updated_at:>'{iso}' status:active")

    assert {int(n["legacyResourceId"]) for n in active} == {p["id"] for p in everything if p["status"] == "active"}
    expected = {p["id"] for p in everything if p["status"] == "active" and _epoch(p["updated_at"]) > watermark}
    assert {int(n["legacyResourceId"]) for n in both} == expected
    assert all(n["status"] == "ACTIVE" for n in both)


def test_bad_queries_get_clear_graphql_errors() -> None:
    with emulator(products=5) as (client, _):
        no_size = gql(client, "{ products { nodes { id } } }")
        too_big = gql(client, "{ products(first: 251) { nodes { id } } }")
        bad_cursor = gql(client, '{ products(first: 2, after: "not-a-cursor") { nodes { id } } }')
        bad_date = gql(client, "{ products(first: 2, query: \"updated_at:>'yesterday-ish'\") { nodes { id } } }")
        unknown_field = gql(client, '{ products(first: 2, query: "colour:red") { nodes { id } } }')
        not_in_schema = gql(client, "{ products(first: 2) { nodes { price } } }")
        no_token = client.post(GRAPHQL, json={"query": "{ shop { name } }"})
        wrong_token = client.post(GRAPHQL, json={"query": "{ shop { name } }"}, headers={"X-Shopify-Access-Token": "x"})
        not_json = client.post(GRAPHQL, content=b"{", headers={**_auth(), "Content-Type": "application/json"})
        raw_graphql = client.post(
            GRAPHQL, content=b"{ shop { name } }", headers={**_auth(), "Content-Type": "application/graphql"}
        )

    assert no_size["errors"][0]["message"] == "you must provide one of first or last"
    assert "between 0 and 250" in too_big["errors"][0]["message"]
    assert "Invalid cursor" in bad_cursor["errors"][0]["message"]
    assert bad_cursor["data"] is None
    assert "not an ISO 8601 date" in bad_date["errors"][0]["message"]
    assert "errors" not in unknown_field
    assert unknown_field["extensions"]["search"][0]["warnings"][0]["field"] == "colour"
    assert "price" in not_in_schema["errors"][0]["message"]
    for response in (no_token, wrong_token):
        assert response.status_code == 401
        assert response.json() == {
            "errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"
        }
    assert not_json.status_code == 400
    assert raw_graphql.json()["data"] == {"shop": {"name": "catalog-sync demo shop"}}
    assert raw_graphql.headers["x-shopify-api-version"] == VERSION


# ----------------------------------------------------------------------------------------------------------------
# Query cost and throttling


def test_250_products_with_10_media_each_exceed_the_single_query_cost_limit() -> None:
    query = "{ products(first: 250) { edges { node { id media(first: 10) { edges { node { id } } } } } } }"
    with emulator(products=10) as (client, _):
        body = gql(client, query)

    error = body["errors"][0]
    assert error["extensions"]["code"] == "MAX_COST_EXCEEDED"
    assert error["extensions"]["cost"] == 2 + 250 * (1 + 2 + 10)
    assert error["message"].startswith(f"Query cost is {2 + 250 * 13}, which exceeds the single query max cost limit")
    assert "data" not in body
    assert body["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"] == 1000, "a refused query costs nothing"


def test_requested_cost_is_computed_before_running_and_the_unused_part_is_refunded() -> None:
    query = """{ products(first: 50) { edges { node { id title descriptionHtml status tags
                  media(first: 10) { edges { node { id mediaContentType alt } } } } } } }"""
    with emulator(products=30, seed=3, clock=FakeClock()) as (client, _):
        body = gql(client, query)

    cost = body["extensions"]["cost"]
    assert cost["requestedQueryCost"] == 2 + 50 + 50 * (2 + 10)
    edges = body["data"]["products"]["edges"]
    media_counts = [len(edge["node"]["media"]["edges"]) for edge in edges]
    assert len(edges) == 30
    assert cost["actualQueryCost"] == 2 + len(edges) + sum(2 + count for count in media_counts)
    assert cost["throttleStatus"] == {
        "maximumAvailable": 1000.0,
        "currentlyAvailable": 1000 - cost["actualQueryCost"],
        "restoreRate": 50.0,
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("{ shop { name myshopifyDomain } }", 1),
        ("{ products(first: 3) { nodes { id title } } }", 2 + 3),
        ('{ product(id: "gid://shopify/Product/1") { title featuredImage { url } } }', 1 + 1),
        (
            "{ products(first: 40) { nodes { id media(first: 10) { nodes { id "
            "... on MediaImage { image { url } } } } } } }",
            2 + 40 * (1 + 2 + 10 * (1 + 1)),
        ),
        (
            "{ products(first: 5) { nodes { media(first: 4) { nodes { ... on Video { preview { image { url } } } "
            "... on MediaImage { id } } } } } }",
            2 + 5 * (1 + 2 + 4 * (1 + 2)),
        ),
        ('query { productsCount(query: "status:active") { count } }', 1),
        ("{ products(first: 2) { nodes { priceRangeV2 { minVariantPrice { amount currencyCode } } } } }", 2 + 2 * 3),
        (
            'mutation { bulkOperationRunQuery(query: "{ products { edges { node { id } } } }") '
            "{ userErrors { message } } }",
            10,
        ),
        (
            "{ events(first: 100) { edges { node { createdAt ... on BasicEvent { subjectId subjectType } } } } }",
            2 + 100,
        ),
    ],
    ids=[
        "object",
        "connection",
        "nested-objects",
        "interface-fragment",
        "dearest-possible-type",
        "count",
        "price-range",
        "mutation",
        "events",
    ],
)
def test_query_cost_rules(query: str, expected: int) -> None:
    with emulator(products=3) as (client, _):
        body = gql(client, query)

    assert "errors" not in body, body
    assert body["extensions"]["cost"]["requestedQueryCost"] == expected


def test_a_small_bucket_throttles_and_recovers_as_the_clock_advances() -> None:
    clock = FakeClock()
    query = "{ products(first: 50) { nodes { id } } }"  # requested 52, and 52 actual with 80 products
    with emulator(products=80, bucket_size=100, restore_rate=10, clock=clock) as (client, shop):
        first = gql(client, query)
        throttled = gql(client, query)
        clock.advance(0.25)  # +2.5 points: 50.5 available, still short of 52
        still = gql(client, query)
        clock.advance(0.25)
        recovered = gql(client, query)
        stats = client.get("/_emulator/stats").json()

    assert first["extensions"]["cost"]["actualQueryCost"] == 52
    assert throttled["errors"] == [
        {
            "message": "Throttled",
            "extensions": {"code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"},
        }
    ]
    assert "data" not in throttled
    assert throttled["extensions"]["cost"]["actualQueryCost"] is None
    assert throttled["extensions"]["cost"]["throttleStatus"] == {
        "maximumAvailable": 100.0,
        "currentlyAvailable": 48,
        "restoreRate": 10.0,
    }
    assert still["errors"][0]["extensions"]["code"] == "THROTTLED"
    assert "errors" not in recovered
    assert len(recovered["data"]["products"]["nodes"]) == 50
    assert stats["throttled"] == 2
    assert shop.cost_bucket.status()["currentlyAvailable"] == 1


# ----------------------------------------------------------------------------------------------------------------
# Bulk operations

BULK_QUERY = """{ products(query: "status:active") { edges { node { id title
  media { edges { node { id mediaContentType ... on MediaImage { image { url } } } } } } } } }"""


def _run_bulk(client: httpx.Client, query: str = BULK_QUERY) -> dict[str, Any]:
    mutation = """mutation Run($q: String!) { bulkOperationRunQuery(query: $q) {
        bulkOperation { id status } userErrors { field message } } }"""
    body = gql(client, mutation, {"q": query})
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["bulkOperationRunQuery"]
    return result


CURRENT = "{ currentBulkOperation { id status errorCode objectCount rootObjectCount fileSize url partialDataUrl } }"


def test_bulk_operation_runs_through_its_lifecycle_and_streams_jsonl_with_parent_ids() -> None:
    clock = FakeClock()
    with emulator(products=40, seed=11, clock=clock, bulk_duration=30) as (client, shop):
        started = _run_bulk(client)
        op_id = started["bulkOperation"]["id"]
        second = _run_bulk(client)
        created = gql(client, CURRENT)["data"]["currentBulkOperation"]
        clock.advance(1)
        running_ = gql(client, CURRENT)["data"]["currentBulkOperation"]
        assert shop.bulk.operations[-1].counted.wait(10)
        clock.advance(30)
        done = gql(client, CURRENT)["data"]["currentBulkOperation"]
        by_node = gql(
            client, "query($id: ID!) { node(id: $id) { ... on BulkOperation { url status } } }", {"id": op_id}
        )
        with client.stream("GET", done["url"]) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/jsonl")
            assert response.headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in response.headers
            raw = b"".join(response.iter_bytes())
        media_by_product = {
            node["id"]: [m["id"] for m in node["media"]["nodes"]]
            for node in _nodes(client, "status:active", "id media(first: 20) { nodes { id } }")
        }

    assert started == {"bulkOperation": {"id": op_id, "status": "CREATED"}, "userErrors": []}
    assert second["bulkOperation"] is None
    assert second["userErrors"][0]["message"] == (
        f"A bulk query operation for this app and shop is already in progress: {op_id}."
    )
    assert created["status"] == "CREATED"
    assert running_["status"] == "RUNNING"
    assert running_["url"] is None
    assert done["status"] == "COMPLETED"
    assert done["errorCode"] is None
    assert by_node["data"]["node"] == {"url": done["url"], "status": "COMPLETED"}
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert done["objectCount"] == str(len(lines))
    assert done["fileSize"] == str(len(raw))
    parents = [line for line in lines if "__parentId" not in line]
    assert done["rootObjectCount"] == str(len(parents)) == str(len(media_by_product))
    grouped: dict[str, list[str]] = {}
    current = ""
    for line in lines:
        if "__parentId" in line:
            assert line["__parentId"] == current, "children follow their parent"
            assert list(line)[-1] == "__parentId"
            grouped[current].append(line["id"])
        else:
            assert set(line) == {"id", "title"}
            current = line["id"]
            grouped[current] = []
    assert grouped == media_by_product
    assert any(line.get("image", {}).get("url") for line in lines if "__parentId" in line)


def _nodes(client: httpx.Client, query: str, selection: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = None
    while True:
        body = gql(
            client,
            f"query($after: String, $q: String) {{ products(first: 20, after: $after, query: $q) "
            f"{{ nodes {{ {selection} }} pageInfo {{ hasNextPage endCursor }} }} }}",
            {"after": after, "q": query},
        )
        out.extend(body["data"]["products"]["nodes"])
        if not body["data"]["products"]["pageInfo"]["hasNextPage"]:
            return out
        after = body["data"]["products"]["pageInfo"]["endCursor"]


def test_bulk_lines_hold_exactly_what_graphql_returns_for_the_same_selection() -> None:
    node_fields = """__typename id name: title status tags onlineStoreUrl updatedAt descriptionHtml
        featuredImage { url altText }
        media(first: 16) { edges { node { __typename id alt mediaContentType
            ... on MediaImage { image { url width } } ... on Video { preview { image { url } } } } } }"""
    clock = FakeClock()
    with emulator(products=60, seed=21, clock=clock, bulk_duration=1) as (client, shop):
        _run_bulk(client, f"{{ products(sortKey: UPDATED_AT) {{ edges {{ node {{ {node_fields} }} }} }} }}")
        assert shop.bulk.operations[-1].counted.wait(10)
        clock.advance(1)
        url = gql(client, CURRENT)["data"]["currentBulkOperation"]["url"]
        lines = [json.loads(line) for line in client.get(url).text.splitlines()]
        paged = _nodes_sorted(client, node_fields, clock)

    expected: list[dict[str, Any]] = []
    for node in paged:
        expected.append({key: value for key, value in node.items() if key != "media"})
        expected.extend({**edge["node"], "__parentId": node["id"]} for edge in node["media"]["edges"])
    assert lines == expected
    assert {line["__typename"] for line in lines} == {"Product", "MediaImage", "Video"}


def _nodes_sorted(client: httpx.Client, selection: str, clock: FakeClock) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = None
    while True:
        clock.advance(20)  # a full bucket again: each page requests 2 + 10 × 52 points
        body = gql(
            client,
            f"query($after: String) {{ products(first: 10, after: $after, sortKey: UPDATED_AT) "
            f"{{ nodes {{ {selection} }} pageInfo {{ hasNextPage endCursor }} }} }}",
            {"after": after},
        )
        assert "errors" not in body, body
        out.extend(body["data"]["products"]["nodes"])
        if not body["data"]["products"]["pageInfo"]["hasNextPage"]:
            return out
        after = body["data"]["products"]["pageInfo"]["endCursor"]


@pytest.mark.parametrize(
    ("version", "group_objects", "grouped"),
    [("2025-07", None, True), ("2025-10", False, False), ("2026-01", None, False), ("2026-01", True, True)],
    ids=["2025-07-default", "2025-10-false", "2026-01-default", "2026-01-true"],
)
def test_bulk_output_grouping_follows_group_objects_and_its_default_per_api_version(
    version: str, group_objects: bool | None, grouped: bool
) -> None:
    argument = "" if group_objects is None else f", groupObjects: {str(group_objects).lower()}"
    mutation = (
        f"mutation($q: String!) {{ bulkOperationRunQuery(query: $q{argument}) {{ bulkOperation {{ id }} "
        "userErrors { message } } }"
    )
    query = "{ products { edges { node { id media { edges { node { id } } } } } } }"
    clock = FakeClock()
    with emulator(products=30, seed=22, clock=clock, bulk_duration=1) as (client, shop):
        answer = client.post(
            f"/admin/api/{version}/graphql.json", json={"query": mutation, "variables": {"q": query}}, headers=_auth()
        ).json()
        assert answer["data"]["bulkOperationRunQuery"]["userErrors"] == []
        assert shop.bulk.operations[-1].counted.wait(10)
        clock.advance(1)
        url = gql(client, CURRENT)["data"]["currentBulkOperation"]["url"]
        lines = [json.loads(line) for line in client.get(url).text.splitlines()]

    parents_seen: list[str] = []
    follows_parent = True
    for line in lines:
        if "__parentId" in line:
            follows_parent = follows_parent and bool(parents_seen) and line["__parentId"] == parents_seen[-1]
        else:
            parents_seen.append(line["id"])
    assert len(parents_seen) == 30
    assert {line["__parentId"] for line in lines if "__parentId" in line} <= set(parents_seen)
    assert follows_parent is grouped


def test_bulk_export_is_a_snapshot_taken_when_the_operation_starts() -> None:
    clock = FakeClock()
    with emulator(products=10, seed=12, clock=clock, bulk_duration=5) as (client, shop):
        victim = shop.store.matching_ids("ID", reverse=False, product_filter=None)[0]
        _run_bulk(client, "{ products { edges { node { id title } } } }")
        client.patch(f"/_emulator/products/{victim}", json={"title": "Edited after the export started"})
        assert shop.bulk.operations[-1].counted.wait(10)
        clock.advance(5)
        url = gql(client, CURRENT)["data"]["currentBulkOperation"]["url"]
        lines = [json.loads(line) for line in client.get(url).text.splitlines()]

    assert len(lines) == 10
    assert "Edited after the export started" not in {line["title"] for line in lines}


@pytest.mark.parametrize(
    ("fault", "status", "error_code"),
    [
        ({"status": "FAILED"}, "FAILED", "INTERNAL_SERVER_ERROR"),
        ({"status": "FAILED", "error_code": "TIMEOUT"}, "FAILED", "TIMEOUT"),
        ({"status": "CANCELED"}, "CANCELED", None),
        ({"status": "EXPIRED"}, "EXPIRED", None),
    ],
    ids=["failed", "timeout", "canceled", "expired"],
)
def test_a_configured_bulk_fault_ends_the_operation_without_a_file(
    fault: dict[str, str], status: str, error_code: str | None
) -> None:
    clock = FakeClock()
    with emulator(products=5, clock=clock, bulk_duration=3) as (client, shop):
        assert client.post("/_emulator/config", json={"bulk_fault": fault}).status_code == 200
        op_id = _run_bulk(client)["bulkOperation"]["id"]
        assert shop.bulk.operations[-1].counted.wait(10)
        clock.advance(3)
        ended = gql(client, CURRENT)["data"]["currentBulkOperation"]
        download = client.get(f"/_emulator/bulk/{op_id.rsplit('/', 1)[1]}.jsonl")
        next_one = _run_bulk(client)

    assert (ended["status"], ended["errorCode"], ended["url"]) == (status, error_code, None)
    assert download.status_code == 404
    assert next_one["userErrors"] == [], "a finished operation no longer blocks the next"


def test_bulk_queries_are_checked_like_shopify_does() -> None:
    with emulator(products=3) as (client, _):
        no_connection = _run_bulk(client, "{ shop { name } }")
        parent_without_id = _run_bulk(
            client, "{ products { edges { node { title media { edges { node { id } } } } } } }"
        )
        broken = _run_bulk(client, "{ products { edges { node { id ")
        cancel = gql(
            client, 'mutation { bulkOperationCancel(id: "gid://shopify/BulkOperation/1") { userErrors { message } } }'
        )

    assert no_connection["userErrors"][0]["message"] == "Bulk queries must contain at least one connection."
    assert parent_without_id["userErrors"][0]["message"].startswith(
        "The parent 'node' field for a nested connection must select the 'id' field."
    )
    assert broken["userErrors"][0]["field"] == ["query"]
    assert broken["userErrors"][0]["message"].startswith("Invalid bulk query:")
    assert cancel["data"]["bulkOperationCancel"]["userErrors"][0]["message"] == "Bulk operation does not exist"


def test_a_running_bulk_operation_can_be_canceled() -> None:
    clock = FakeClock()
    with emulator(products=5, clock=clock, bulk_duration=60) as (client, _):
        op_id = _run_bulk(client)["bulkOperation"]["id"]
        canceling = gql(
            client, "mutation($id: ID!) { bulkOperationCancel(id: $id) { bulkOperation { status } } }", {"id": op_id}
        )
        canceled = gql(client, CURRENT)["data"]["currentBulkOperation"]

    assert canceling["data"]["bulkOperationCancel"]["bulkOperation"]["status"] == "CANCELING"
    assert canceled["status"] == "CANCELED"


def test_bulk_answers_have_the_shapes_of_the_real_api() -> None:
    successful = json.loads((FIXTURES / "bulk_successful_response.json").read_text())
    completed = json.loads((FIXTURES / "bulk_job_completed_response.json").read_text())
    concurrent = json.loads((FIXTURES / "bulk_error_with_concurrent_job.json").read_text())
    documented = [json.loads(line) for line in (FIXTURES / "products_with_variants_bulk_result.jsonl").open()]
    clock = FakeClock()
    with emulator(products=4, clock=clock, bulk_duration=1) as (client, shop):
        inner = "{ products { edges { node { id variants { edges { node { id title } } } } } } }"
        mutation = f"""mutation {{ bulkOperationRunQuery(query: "{inner}") {{
            bulkOperation {{ id status }} userErrors {{ field message }} }} }}"""
        started = gql(client, mutation)
        refused = gql(client, mutation)
        assert shop.bulk.operations[-1].counted.wait(10)
        clock.advance(1)
        fields = " ".join(completed["data"]["node"])
        node = gql(
            client,
            f'{{ node(id: "{started["data"]["bulkOperationRunQuery"]["bulkOperation"]["id"]}") '
            f"{{ ... on BulkOperation {{ {fields} }} }} }}",
        )
        lines = [json.loads(line) for line in client.get(node["data"]["node"]["url"]).text.splitlines()]

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: shape(item) for key, item in value.items()}
        return type(value).__name__ if not isinstance(value, float | int) or isinstance(value, bool) else "number"

    assert shape(started["data"]) == shape(successful["data"])
    assert shape(started["extensions"]) == shape(successful["extensions"])
    assert set(node["data"]["node"]) == set(completed["data"]["node"])
    assert isinstance(node["data"]["node"]["objectCount"], str)
    assert refused["data"]["bulkOperationRunQuery"]["bulkOperation"] is None
    pattern = r"A bulk query operation for this app and shop is already in progress: gid://shopify/BulkOperation/\d+\."
    assert re.fullmatch(pattern, concurrent["data"]["bulkOperationRunQuery"]["userErrors"][1]["message"])
    assert re.fullmatch(pattern, refused["data"]["bulkOperationRunQuery"]["userErrors"][0]["message"])
    assert {tuple(line) for line in lines} == {tuple(line) for line in documented}


# ----------------------------------------------------------------------------------------------------------------
# Legacy REST


def test_rest_link_paging_walks_every_product_and_back_again() -> None:
    with emulator(products=23, seed=13, clock=FakeClock()) as (client, _):
        pages: list[httpx.Response] = [client.get(REST, params={"limit": "5"}, headers=_auth())]
        while 'rel="next"' in pages[-1].headers.get("link", ""):
            link = re.search(r'<([^>]+)>; rel="next"', pages[-1].headers["link"])
            assert link is not None
            pages.append(client.get(link.group(1), headers=_auth()))
        previous = re.search(r'<([^>]+)>; rel="previous"', pages[2].headers["link"])
        assert previous is not None
        back = client.get(previous.group(1), headers=_auth())

    ids = [p["id"] for page in pages for p in page.json()["products"]]
    assert len(pages) == 5
    assert len(ids) == len(set(ids)) == 23
    assert ids == sorted(ids)
    assert 'rel="previous"' not in pages[0].headers.get("link", "")
    assert back.json() == pages[1].json()
    assert [page.headers["x-shopify-shop-api-call-limit"] for page in pages] == [f"{n}/40" for n in range(1, 6)]
    assert all("page_info=" in page.request.url.query.decode() for page in pages[1:])


def test_rest_answers_429_with_retry_after_when_the_call_bucket_is_full() -> None:
    clock = FakeClock()
    with emulator(products=3, rest_bucket=3, rest_leak=1, clock=clock) as (client, _):
        allowed = [client.get(REST, headers=_auth()) for _ in range(3)]
        refused = client.get(REST, headers=_auth())
        clock.advance(1)
        again = client.get(REST, headers=_auth())
        stats = client.get("/_emulator/stats").json()

    assert [r.headers["x-shopify-shop-api-call-limit"] for r in allowed] == ["1/3", "2/3", "3/3"]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2.0"
    assert refused.headers["x-shopify-shop-api-call-limit"] == "3/3"
    assert refused.json()["errors"].startswith("Exceeded 2 calls per second for api client.")
    assert again.status_code == 200
    assert stats["rest_429"] == 1
    assert stats["requests"]["rest"] == {"200": 4, "429": 1}


def test_rest_filters_fields_single_product_and_errors() -> None:
    with emulator(products=30, seed=14) as (client, _):
        everything = _rest_all(client)
        watermark = sorted(p["updated_at"] for p in everything)[15]
        newer = _rest_all(client, updated_at_min=watermark)
        active = _rest_all(client, status="active")
        sparse = client.get(REST, params={"fields": "id,title", "limit": "3"}, headers=_auth()).json()["products"]
        one = client.get(f"/admin/api/{VERSION}/products/{everything[0]['id']}.json", headers=_auth())
        missing = client.get(f"/admin/api/{VERSION}/products/1.json", headers=_auth())
        count = client.get(f"/admin/api/{VERSION}/products/count.json", params={"status": "active"}, headers=_auth())
        unauthorized = client.get(REST)
        bad_limit = client.get(REST, params={"limit": "many"}, headers=_auth())
        bad_date = client.get(REST, params={"updated_at_min": "last week"}, headers=_auth())

    assert {p["id"] for p in newer} == {p["id"] for p in everything if _epoch(p["updated_at"]) >= _epoch(watermark)}
    assert {p["id"] for p in active} == {p["id"] for p in everything if p["status"] == "active"}
    assert all(set(p) == {"id", "title"} for p in sparse)
    assert one.json()["product"] == everything[0]
    assert (missing.status_code, missing.json()) == (404, {"errors": "Not Found"})
    assert count.json() == {"count": len(active)}
    assert unauthorized.status_code == 401
    assert bad_limit.status_code == 400
    assert bad_date.status_code == 400


def test_price_range_matches_the_variant_prices() -> None:
    query = """{ products(first: 30) { nodes { legacyResourceId
        priceRangeV2 { minVariantPrice { amount currencyCode } maxVariantPrice { amount } } } } }"""
    with emulator(products=30, seed=23) as (client, _):
        nodes = gql(client, query)["data"]["products"]["nodes"]
        variants = {p["id"]: [Decimal(v["price"]) for v in p["variants"]] for p in _rest_all(client)}

    for node in nodes:
        prices = variants[int(node["legacyResourceId"])]
        assert Decimal(node["priceRangeV2"]["minVariantPrice"]["amount"]) == min(prices)
        assert Decimal(node["priceRangeV2"]["maxVariantPrice"]["amount"]) == max(prices)
        assert node["priceRangeV2"]["minVariantPrice"]["currencyCode"] == "USD"


def test_rest_product_has_the_fields_of_the_real_2024_04_shape() -> None:
    real = json.loads((FIXTURES / "rest_get_product_2024-04.json").read_text())["product"]
    with emulator(products=40, seed=15) as (client, _):
        product = next(p for p in _rest_all(client) if p["images"] and p["status"] == "active")

    assert set(real) <= set(product)
    assert set(real["images"][0]) <= set(product["images"][0])
    assert set(real["variants"][0]) <= set(product["variants"][0])
    assert isinstance(product["tags"], str)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[-+]\d\d:\d\d", product["updated_at"])
    assert [image["position"] for image in product["images"]] == list(range(1, len(product["images"]) + 1))


# ----------------------------------------------------------------------------------------------------------------
# Storefront


def test_storefront_pages_only_active_products_until_an_empty_page() -> None:
    with emulator(products=40, seed=16) as (client, _):
        active = {p["id"] for p in _rest_all(client, status="active")}
        seen: list[dict[str, Any]] = []
        page = 1
        while True:
            response = client.get("/products.json", params={"limit": "7", "page": str(page)})
            assert response.status_code == 200
            products = response.json()["products"]
            if not products:
                break
            seen.extend(products)
            page += 1

    assert [p["id"] for p in seen] == sorted(active)
    assert all(isinstance(p["tags"], list) for p in seen)
    assert all("status" not in p and "alt" not in image for p in seen for image in p["images"])


def test_storefront_silently_returns_nothing_past_page_times_limit_25000() -> None:
    with emulator(products=32_500, seed=17) as (client, _):
        active_count = client.get(
            f"/admin/api/{VERSION}/products/count.json", params={"status": "active"}, headers=_auth()
        ).json()["count"]
        last_allowed = client.get("/products.json", params={"limit": "250", "page": "100"})
        past_cap = client.get("/products.json", params={"limit": "250", "page": "101"})
        small_pages = client.get("/products.json", params={"limit": "200", "page": "126"})
        small_last = client.get("/products.json", params={"limit": "200", "page": "125"})

    assert active_count > 25_250, "the shop has more active products than the endpoint will ever show"
    assert len(last_allowed.json()["products"]) == 250
    assert past_cap.status_code == 200
    assert past_cap.json() == {"products": []}
    assert small_pages.json() == {"products": []}
    assert len(small_last.json()["products"]) == 200


# ----------------------------------------------------------------------------------------------------------------
# Control endpoints and webhooks


PRODUCT_QUERY = """query($id: ID!) { product(id: $id) { title status tags updatedAt onlineStoreUrl descriptionHtml
  description media(first: 5) { nodes { ... on MediaImage { image { url altText } } } } } }"""


def test_a_control_edit_changes_the_product_and_bumps_updated_at() -> None:
    clock = FakeClock()
    with emulator(products=20, seed=18, clock=clock) as (client, shop):
        product_id = shop.store.matching_ids("ID", reverse=False, product_filter=None)[4]
        gid = f"gid://shopify/Product/{product_id}"
        before = gql(client, PRODUCT_QUERY, {"id": gid})["data"]["product"]
        watermark = max(n["updatedAt"] for n in _walk_graphql(client, first=50))
        clock.advance(60)
        edited = client.patch(
            f"/_emulator/products/{product_id}",
            json={
                "title": "Robe d’été ✨",
                "body_html": "<p>Light &amp; airy</p><script>x()</script>",
                "status": "draft",
                "tags": "linen, summer",
                "images": [{"src": "https://cdn.example/a.jpg", "alt": "Front"}, "https://cdn.example/b.jpg"],
            },
        )
        after = gql(client, PRODUCT_QUERY, {"id": gid})["data"]["product"]
        newest = gql(client, PAGE_QUERY, {"last": 1, "sortKey": "UPDATED_AT"})["data"]["products"]["edges"][0]["node"]
        changed = _walk_graphql(client, first=10, query=f"updated_at:>'{watermark}'")

    assert edited.status_code == 200
    assert _epoch(after["updatedAt"]) == CLOCK_START + 60 > _epoch(before["updatedAt"])
    assert after["title"] == "Robe d’été ✨"
    assert after["status"] == "DRAFT"
    assert after["onlineStoreUrl"] is None
    assert after["tags"] == ["linen", "summer"]
    assert after["description"] == "Light & airy"
    assert after["media"]["nodes"] == [
        {"image": {"url": "https://cdn.example/a.jpg", "altText": "Front"}},
        {"image": {"url": "https://cdn.example/b.jpg", "altText": None}},
    ]
    assert newest["id"] == gid
    assert [n["id"] for n in changed] == [gid]


def test_control_creates_and_deletes_products() -> None:
    with emulator(products=3, clock=FakeClock()) as (client, _):
        created = client.post(
            "/_emulator/products", json={"title": "Brand new", "images": ["https://cdn.example/n.jpg"]}
        )
        product_id = created.json()["product"]["id"]
        listed = {p["id"] for p in _rest_all(client)}
        deleted = client.delete(f"/_emulator/products/{product_id}")
        gone = gql(client, "query($id: ID!) { product(id: $id) { id } }", {"id": f"gid://shopify/Product/{product_id}"})
        rest_gone = client.get(f"/admin/api/{VERSION}/products/{product_id}.json", headers=_auth())
        deleted_twice = client.delete(f"/_emulator/products/{product_id}")
        bad_status = client.patch(f"/_emulator/products/{next(iter(listed - {product_id}))}", json={"status": "gone"})
        bad_field = client.post("/_emulator/products", json={"title": "x", "colour": "red"})
        no_title = client.post("/_emulator/products", json={"vendor": "x"})

    assert created.status_code == 201
    assert created.json()["product"]["status"] == "active"
    assert product_id in listed and len(listed) == 4
    assert deleted.json() == {"id": product_id}
    assert gone["data"]["product"] is None
    assert rest_gone.status_code == 404
    assert deleted_twice.status_code == 404
    for refused in (bad_status, bad_field, no_title):
        assert refused.status_code == 400
        assert refused.json()["errors"]


class Receiver:
    """A local webhook endpoint recording raw bodies and headers."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self._arrived = threading.Condition()
        self.app = Starlette(routes=[Route("/hooks", self._hook, methods=["POST"])])

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        with self._arrived:
            self.requests.append((dict(request.headers), body))
            self._arrived.notify_all()
        return Response(status_code=self.status)

    def wait_for(self, count: int) -> list[tuple[dict[str, str], bytes]]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.requests) >= count, timeout=10), self.requests
            return list(self.requests)


def _expected_hmac(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def test_edits_send_signed_webhooks_that_can_be_replayed() -> None:
    receiver = Receiver()
    with running(receiver.app) as hooks, emulator(products=5, seed=19, clock=FakeClock()) as (client, shop):
        registered = client.post("/_emulator/webhooks", json={"url": f"{hooks.url}/hooks", "secret": "s3cret"})
        product_id = shop.store.matching_ids("ID", reverse=False, product_filter=None)[1]
        client.patch(f"/_emulator/products/{product_id}", json={"title": "Webhook me"})
        created = client.post("/_emulator/products", json={"title": "Fresh"}).json()["product"]["id"]
        client.delete(f"/_emulator/products/{created}")
        first_three = receiver.wait_for(3)
        delivery_id = client.get("/_emulator/stats").json()["webhooks"]["recent"][0]["id"]
        replay = client.post("/_emulator/webhooks/send", json={"delivery_id": delivery_id})
        received = receiver.wait_for(4)
        assert shop.webhooks.wait_idle(10)
        stats = client.get("/_emulator/stats").json()["webhooks"]

    assert registered.status_code == 201
    assert replay.status_code == 202
    # Deliveries travel concurrently, as Shopify's do: match them by topic, not by arrival order.
    by_topic = {headers["x-shopify-topic"]: (headers, body) for headers, body in first_three}
    assert set(by_topic) == {"products/update", "products/create", "products/delete"}
    for headers, body in received:
        assert headers["x-shopify-hmac-sha256"] == _expected_hmac("s3cret", body)
        assert headers["content-type"] == "application/json"
        assert headers["x-shopify-shop-domain"] == shop.domain
        assert headers["x-shopify-api-version"] == shop.api_version
        assert headers["x-shopify-webhook-id"] and headers["x-shopify-event-id"]
        assert datetime.fromisoformat(headers["x-shopify-triggered-at"].replace("Z", "+00:00"))
    update = json.loads(by_topic["products/update"][1])
    assert (update["id"], update["title"]) == (product_id, "Webhook me")
    assert json.loads(by_topic["products/create"][1])["id"] == created
    assert json.loads(by_topic["products/delete"][1]) == {"id": created}
    replayed_headers, replayed_body = received[3]
    original_headers, original_body = by_topic["products/update"]
    assert replayed_body == original_body
    for name in ("x-shopify-webhook-id", "x-shopify-event-id", "x-shopify-hmac-sha256"):
        assert replayed_headers[name] == original_headers[name]
    assert stats["results"] == {"200": 4}
    assert "s3cret" not in json.dumps(stats)


def test_webhook_bodies_have_the_fields_of_a_real_products_create_delivery() -> None:
    real = json.loads((FIXTURES / "webhook_products_create.json").read_text())
    receiver = Receiver()
    with running(receiver.app) as hooks, emulator(products=2, clock=FakeClock()) as (client, _):
        client.post(
            "/_emulator/webhooks", json={"url": f"{hooks.url}/hooks", "secret": "k", "topics": ["products/create"]}
        )
        client.post("/_emulator/products", json={"title": "Shape check", "body_html": None})
        ((_, body),) = receiver.wait_for(1)

    delivered = json.loads(body)
    assert set(real) <= set(delivered)
    assert delivered["images"] == [] and delivered["image"] is None
    assert delivered["body_html"] == ""


def test_failed_deliveries_are_recorded_and_can_be_sent_on_demand() -> None:
    failing = Receiver(status=500)
    with running(failing.app) as hooks, emulator(products=3, clock=FakeClock()) as (client, shop):
        client.post("/_emulator/webhooks", json={"url": f"{hooks.url}/hooks", "secret": "k"})
        client.post("/_emulator/webhooks", json={"url": "http://127.0.0.1:9/nowhere", "secret": "k"})
        product_id = shop.store.matching_ids("ID", reverse=False, product_filter=None)[0]
        sent = client.post("/_emulator/webhooks/send", json={"product_id": product_id, "topic": "products/update"})
        assert shop.webhooks.wait_idle(10)
        stats = client.get("/_emulator/stats").json()["webhooks"]
        bad = client.post("/_emulator/webhooks", json={"url": "ftp://x", "secret": "k"})
        unknown = client.post("/_emulator/webhooks/send", json={"product_id": 1})

    assert sent.status_code == 202 and len(sent.json()["deliveries"]) == 2
    assert stats["results"] == {"500": 1, "ConnectError": 1}
    assert {d["status"] for d in stats["recent"]} == {500, None}
    assert bad.status_code == 400
    assert unknown.status_code == 404


def test_signature_matches_shopifys_own_test_vector() -> None:
    (vector,) = json.loads((FIXTURES / "hmac_vectors.json").read_text())
    body = (FIXTURES / vector["body_file"]).read_bytes()

    assert sign_webhook(body, vector["secret"]) == vector["expected"]


def test_config_changes_buckets_and_reset_restores_the_generated_shop() -> None:
    with emulator(products=6, clock=FakeClock()) as (client, shop):
        victim = shop.store.matching_ids("ID", reverse=False, product_filter=None)[0]
        configured = client.post(
            "/_emulator/config", json={"bucket_size": 60, "restore_rate": 5, "rest_bucket": 10, "latency": 0}
        )
        status = gql(client, "{ shop { name } }")["extensions"]["cost"]["throttleStatus"]
        rejected = [
            client.post("/_emulator/config", json=body)
            for body in ({"bucket_size": -1}, {"speed": 1}, {"bulk_fault": {"status": "SLOW"}}, {"bucket_size": 0})
        ]
        client.delete(f"/_emulator/products/{victim}")
        reset = client.post("/_emulator/reset", json={})
        restored = client.get(f"/admin/api/{VERSION}/products/{victim}.json", headers=_auth())
        stats = client.get("/_emulator/stats").json()
        resized = client.post("/_emulator/reset", json={"products": 9})

    assert configured.json() == {
        "bucket_size": 60.0,
        "restore_rate": 5.0,
        "rest_bucket": 10,
        "rest_leak": 2.0,
        "latency": 0.0,
        "bulk_duration": 2.0,
        "bulk_fault": None,
    }
    assert status == {"maximumAvailable": 60.0, "currentlyAvailable": 59, "restoreRate": 5.0}
    assert all(r.status_code == 400 for r in rejected)
    assert reset.json() == {"products": 6}
    assert restored.status_code == 200
    assert stats["requests"]["rest"] == {"200": 1}
    assert resized.json() == {"products": 9}


def test_the_emulate_shopify_command_documents_its_options() -> None:
    from worker.cli import app

    result = CliRunner().invoke(app, ["emulate", "shopify", "--help"])

    assert result.exit_code == 0
    for option in ("--products", "--port", "--host", "--seed", "--access-token", "--restore-rate", "--bucket-size"):
        assert option in result.output


def test_actual_cost_counts_what_came_back_whatever_depth_was_asked() -> None:
    # The connector's page shape: media images each select one object (`image`); videos select none.
    query = """query Page($media: Int!) { products(first: 25) { pageInfo { hasNextPage endCursor } edges { node { id
                 media(first: $media) { edges { node { ... on MediaImage { image { url altText } } } } } } } } }"""
    with emulator(products=25, seed=8, clock=FakeClock()) as (client, _):
        deep, shallow = gql(client, query, {"media": 15}), gql(client, query, {"media": 4})

    for body, depth in ((deep, 15), (shallow, 4)):
        cost = body["extensions"]["cost"]
        assert cost["requestedQueryCost"] == 2 + 25 * (1 + 2 + depth * (1 + 1))
        medias = [[edge["node"] for edge in e["node"]["media"]["edges"]] for e in body["data"]["products"]["edges"]]
        returned = sum(2 + len(media) + sum(1 for node in media if node.get("image")) for media in medias)
        assert cost["actualQueryCost"] == 2 + len(medias) + returned
        assert all(len(media) <= depth for media in medias)
    assert shallow["extensions"]["cost"]["actualQueryCost"] < deep["extensions"]["cost"]["actualQueryCost"]


EVENTS_QUERY = """
query Events($first: Int!, $after: String, $query: String, $sortKey: EventSortKeys) {
  events(first: $first, after: $after, query: $query, sortKey: $sortKey) {
    pageInfo { hasNextPage endCursor }
    edges { node { id action createdAt message ... on BasicEvent { subjectId subjectType } } }
  }
}
"""


def _events(client: httpx.Client, query: str | None, first: int = 250) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = None
    while True:
        variables = {"first": first, "after": after, "query": query, "sortKey": "CREATED_AT"}
        body = gql(client, EVENTS_QUERY, variables)
        assert "errors" not in body, body
        connection = body["data"]["events"]
        found += [edge["node"] for edge in connection["edges"]]
        if not connection["pageInfo"]["hasNextPage"]:
            return found
        after = connection["pageInfo"]["endCursor"]


def test_deleting_a_product_records_a_destroy_event_whichever_api_deleted_it() -> None:
    clock = FakeClock()
    with emulator(products=10, seed=3, clock=clock) as (client, shop):
        first, second, kept = (
            p.id for p in list(shop.store.iter_products("ID", reverse=False, product_filter=None))[:3]
        )
        title = shop.store.get(first).title  # type: ignore[union-attr]
        assert client.delete(f"/_emulator/products/{first}").status_code == 200
        clock.advance(60)
        rest = client.delete(f"/admin/api/{VERSION}/products/{second}.json", headers=_auth())
        assert (rest.status_code, rest.json()) == (200, {})
        assert client.delete(f"/admin/api/{VERSION}/products/{second}.json", headers=_auth()).status_code == 404
        assert client.delete(f"/admin/api/{VERSION}/products/{kept}.json").status_code == 401

        events = _events(client, "subject_type:PRODUCT AND action:destroy")

    assert [(e["subjectId"], e["subjectType"], e["action"]) for e in events] == [
        (f"gid://shopify/Product/{first}", "PRODUCT", "destroy"),
        (f"gid://shopify/Product/{second}", "PRODUCT", "destroy"),
    ]
    assert events[0]["createdAt"] == datetime.fromtimestamp(CLOCK_START, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert _epoch(events[1]["createdAt"]) == CLOCK_START + 60
    assert title in events[0]["message"]
    assert events[0]["id"].startswith("gid://shopify/BasicEvent/")


def test_events_filter_by_creation_time_and_page_with_cursors() -> None:
    clock = FakeClock()
    with emulator(products=30, seed=3, clock=clock) as (client, shop):
        ids = [p.id for p in shop.store.iter_products("ID", reverse=False, product_filter=None)][:12]
        for product_id in ids:
            client.delete(f"/_emulator/products/{product_id}").raise_for_status()
            clock.advance(10)
        since = datetime.fromtimestamp(CLOCK_START + 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        recent = _events(client, f"subject_type:PRODUCT AND action:destroy AND created_at:>='{since}'", first=5)
        nothing = _events(client, "subject_type:COLLECTION")
        refused = gql(client, EVENTS_QUERY, {"first": 5, "query": "action:destroy OR action:create"})

    assert [e["subjectId"] for e in recent] == [f"gid://shopify/Product/{i}" for i in ids[6:]]
    assert nothing == []
    assert "Invalid search query" in refused["errors"][0]["message"]


def test_reset_forgets_the_events() -> None:
    with emulator(products=5, seed=3, clock=FakeClock()) as (client, shop):
        product_id = next(iter(shop.store.iter_products("ID", reverse=False, product_filter=None))).id
        client.delete(f"/_emulator/products/{product_id}").raise_for_status()
        assert len(_events(client, None)) == 1

        client.post("/_emulator/reset", json={}).raise_for_status()

        assert _events(client, None) == []
