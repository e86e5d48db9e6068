"""Per-source filters: which products go to the try-on catalog, and why the others do not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from config.sources import BulkMode, ProductFilter, parse_source, parse_sources
from connectors.base import ImageRef, SourceProduct, filter_reason
from connectors.woocommerce import normalize_product
from emulators.shopify import sign_webhook
from emulators.shopify.products import product_collections
from emulators.shopify.shapes import webhook_product
from ground.errors import ConfigError
from tests.conftest import FIXTURES
from tests.sync_helpers import SOURCE, SyncWorld, ext, feed_item, sources_toml, sync_world, write_feed
from tests.test_cli import cli
from tests.test_shopify_connector import Emulator, emulator
from worker import schema
from worker.inline import InlineDispatcher
from worker.operations import run_sync
from worker.plan import FILTERED_OUT, RunReport, desired_row, plan_source
from worker.state import Store, make_engine

WOO_PRODUCT = FIXTURES / "woocommerce" / "rest_api_docs" / "wp-api-v3_products__03_retrieve_a_product.json"


def product(**fields: Any) -> SourceProduct:
    values: dict[str, Any] = {
        "source": "s",
        "product_id": "1",
        "updated_at": datetime(2025, 1, 1, tzinfo=UTC),
        "status": "active",
        "title": "Wrap dress",
        "images": (ImageRef("https://cdn.example/1.jpg"),),
    }
    values.update(fields)
    return SourceProduct(**values)


@pytest.mark.parametrize(
    ("item", "include", "exclude", "reason"),
    [
        (product(product_type="Dresses"), {"product_type": ["dresses", "Tops"]}, None, None),
        (product(product_type="Summer Dresses"), {"product_type": ["*dress*"]}, None, None),
        (
            product(product_type="Mugs"),
            {"product_type": ["Dresses", "Tops"]},
            None,
            "include.product_type ['Dresses', 'Tops'] matches none of the product's ('Mugs')",
        ),
        (
            product(),
            {"product_type": ["Dresses"]},
            None,
            "include.product_type ['Dresses'] matches none of the product's (none)",
        ),
        (
            product(tags=("summer", "No-TryOn")),
            None,
            {"tag": ["no-tryon"]},
            "exclude.tag 'no-tryon' matches 'No-TryOn'",
        ),
        (product(tags=("summer",)), None, {"tag": ["no-tryon"]}, None),
        (product(vendor="Acme", product_type="Tops"), {"vendor": ["Acme"], "product_type": ["Tops"]}, None, None),
        (
            product(vendor="Other", product_type="Tops"),
            {"vendor": ["Acme"], "product_type": ["Tops"]},
            None,
            "include.vendor ['Acme'] matches none of the product's ('Other')",
        ),
        (
            product(product_type="Dresses", tags=("sale",)),
            {"product_type": ["Dresses"]},
            {"tag": ["sale"]},
            "exclude.tag 'sale' matches 'sale'",
        ),
        (product(categories=("Clothing", "clothing")), {"category": ["clothing"]}, None, None),
        (
            product(attributes={"google_product_category": "Apparel & Accessories > Clothing > Dresses"}),
            {"google_product_category": ["Apparel & Accessories > Clothing*"]},
            None,
            None,
        ),
        (product(title="Tee [new]", product_type="Tops [new]"), {"product_type": ["tops [new]"]}, None, None),
    ],
    ids=[
        "include-case-insensitive",
        "include-wildcard",
        "include-misses",
        "include-field-absent",
        "exclude-tag",
        "exclude-misses",
        "include-every-field",
        "include-one-field-misses",
        "exclude-wins-over-include",
        "woo-category-slug",
        "feed-google-category-prefix",
        "brackets-are-plain-text",
    ],
)
def test_a_filter_says_which_rule_keeps_a_product_out(
    item: SourceProduct, include: dict[str, list[str]] | None, exclude: dict[str, list[str]] | None, reason: str | None
) -> None:
    rules_in = ProductFilter.model_validate(include) if include is not None else None
    rules_out = ProductFilter.model_validate(exclude) if exclude is not None else None

    assert filter_reason(item, rules_in, rules_out) == reason


def test_a_filtered_product_is_desired_out_of_the_catalog_with_its_rule() -> None:
    source = parse_source({"name": "s", "kind": "feed", "url": "f.json", "exclude": {"tag": ["no-tryon"]}})

    row = desired_row(product(tags=("no-tryon",)), source)

    assert row.is_deletion
    assert (row.skip_reason, row.skip_detail) == (FILTERED_OUT, "exclude.tag 'no-tryon' matches 'no-tryon'")


def test_woocommerce_categories_are_matched_by_name_or_slug() -> None:
    raw = json.loads(WOO_PRODUCT.read_text(encoding="utf-8"))

    item = normalize_product("woo", raw)

    assert item.categories == ("Clothing", "clothing", "T-shirts", "t-shirts")
    assert filter_reason(item, ProductFilter(category=("t-shirts",)), None) is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "feed", "include": {"category": ["Dresses"]}}, r"include.category applies to kind woocommerce"),
        ({"kind": "feed", "exclude": {"tags": ["x"]}}, r"exclude.tags: unknown field"),
        ({"kind": "feed", "include": {"product_type": [" "]}}, r"an empty value matches nothing"),
        (
            {
                "kind": "woocommerce",
                "consumer_key": "k",
                "consumer_secret": "s",
                "include": {"google_product_category": ["x"]},
            },
            r"include.google_product_category applies to kind feed",
        ),
    ],
    ids=["category-on-a-feed", "misspelt-field", "empty-value", "google-category-on-woocommerce"],
)
def test_a_filter_mistake_is_a_configuration_error(table: dict[str, Any], message: str) -> None:
    document = {"sources": [{"name": "s", "url": "https://shop.example/f.json", **table}]}

    with pytest.raises(ConfigError, match=message):
        parse_sources(document)


def test_the_documented_syntax_parses() -> None:
    document = {
        "sources": [
            {
                "name": "s",
                "kind": "feed",
                "url": "f.json",
                "include": {"product_type": ["Dresses", "Tops"]},
                "exclude": {"tag": "no-tryon", "vendor": ["Mug Co*"]},
            }
        ]
    }

    source = parse_sources(document)["s"]

    assert source.include is not None and source.include.fields() == {"product_type": ("Dresses", "Tops")}
    assert source.exclude is not None and source.exclude.fields() == {"tag": ("no-tryon",), "vendor": ("Mug Co*",)}


# ---- through a run, against the catalog emulator -------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SyncWorld]:
    with sync_world(tmp_path) as w:
        yield w


def set_filters(world: SyncWorld, **filters: dict[str, list[str]]) -> None:
    source = world.runtime.sources[SOURCE]
    update = {side: ProductFilter.model_validate(rules) for side, rules in filters.items()}
    world.runtime.sources[SOURCE] = source.model_copy(update=update)


def full_sync(world: SyncWorld, **kwargs: Any) -> RunReport:
    dispatcher = InlineDispatcher(world.runtime)
    report = run_sync(world.runtime, SOURCE, "full", dispatcher, **kwargs)
    dispatcher.drain(SOURCE, timeout=10)
    return report


def shop(count: int) -> list[dict[str, Any]]:
    items = [feed_item(f"dress-{n}", product_type="Dresses") for n in range(count)]
    items.append(feed_item("mug", product_type="Mugs"))
    items.append(feed_item("hidden-dress", product_type="Dresses", tags=["no-tryon"]))
    return items


def test_filtered_products_never_reach_the_catalog_and_say_why(world: SyncWorld) -> None:
    set_filters(world, include={"product_type": ["Dresses"]}, exclude={"tag": ["no-tryon"]})
    write_feed(world.feed, shop(3))

    report = full_sync(world)

    assert sorted(world.catalog_products()) == [ext("dress-0"), ext("dress-1"), ext("dress-2")]
    assert report.counts[f"skipped:{FILTERED_OUT}"] == 2
    skipped = {row.product_id: row for row in world.runtime.store.skipped(SOURCE)}
    assert skipped["mug"].last_error_code == FILTERED_OUT
    assert skipped["mug"].skip_detail == "include.product_type ['Dresses'] matches none of the product's ('Mugs')"
    assert skipped["hidden-dress"].skip_detail == "exclude.tag 'no-tryon' matches 'no-tryon'"


def test_a_new_filter_removes_products_already_in_the_catalog(world: SyncWorld) -> None:
    write_feed(world.feed, shop(10))
    full_sync(world)
    assert len(world.catalog_products()) == 12

    set_filters(world, exclude={"tag": ["no-tryon"]})
    report = full_sync(world)

    assert report.outcome == "completed"
    assert "hidden-dress" not in world.catalog_products()
    row = world.runtime.store.get(SOURCE, "hidden-dress")
    assert row is not None and (row.status, row.skip_reason) == ("skipped", FILTERED_OUT)


def test_a_filter_that_would_empty_the_catalog_is_held_by_the_deletion_brake(world: SyncWorld) -> None:
    write_feed(world.feed, shop(10))
    full_sync(world)

    set_filters(world, include={"product_type": ["Dreses"]})
    held = full_sync(world)

    assert held.outcome == "deletion_blocked"
    assert held.counts["kept_out_held"] == 12
    assert len(world.catalog_products()) == 12

    confirmed = full_sync(world, allow_mass_delete=True)

    assert confirmed.outcome == "completed"
    assert world.catalog_products() == {}
    assert {row.skip_reason for row in world.runtime.store.skipped(SOURCE)} == {FILTERED_OUT}


def test_the_admin_command_lists_filtered_products_with_the_rule(world: SyncWorld) -> None:
    config = Path(world.runtime.settings.config)
    config.write_text(sources_toml(world.feed, extra='exclude = { tag = ["no-tryon"] }'), encoding="utf-8")
    write_feed(world.feed, shop(10))

    synced = cli(world, "resync", SOURCE, "--full", "--inline", "--json")
    listed = cli(world, "failures", SOURCE, "--skipped", "--json")

    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["skipped"] == 1
    assert json.loads(listed.stdout) == [
        {
            "source": SOURCE,
            "product": "hidden-dress",
            "code": FILTERED_OUT,
            "message": "exclude.tag 'no-tryon' matches 'no-tryon'",
            "attempts": 0,
        }
    ]
    assert "hidden-dress" not in world.catalog_products()


# ---- Shopify collections, against the Shopify emulator ---------------------------------------------------------------


@pytest.fixture(scope="module")
def shopify() -> Iterator[Emulator]:
    with emulator(products=60, seed=5) as shop:
        yield shop


def expected_collections(shop: Emulator) -> dict[str, tuple[str, ...]]:
    products = shop.shop.store.iter_products("ID", reverse=False, product_filter=None)
    return {
        str(p.id): tuple(key for c in product_collections(p) for key in dict.fromkeys((c.handle, c.title)))
        for p in products
    }


@pytest.mark.parametrize("bulk", ["never", "always"], ids=["paged", "bulk"])
def test_shopify_products_carry_their_collections_when_a_filter_needs_them(shopify: Emulator, bulk: BulkMode) -> None:
    connector = shopify.connector("shopify", bulk=bulk, include=ProductFilter(collection=("dress",)))
    try:
        products = [item for item in connector.iter_products(None) if isinstance(item, SourceProduct)]
    finally:
        connector.close()

    expected = expected_collections(shopify)
    assert {product.product_id: product.categories for product in products} == {
        pid: expected[pid] for pid in (product.product_id for product in products)
    }
    assert any("dress" in product.categories for product in products)
    assert any("sale" in product.categories and "Sale" in product.categories for product in products)


def test_shopify_collections_are_not_asked_for_without_a_collection_filter(shopify: Emulator) -> None:
    connector = shopify.connector("shopify", exclude=ProductFilter(tag=("no-tryon",)))
    try:
        products = [item for item in connector.iter_products(None) if isinstance(item, SourceProduct)]
    finally:
        connector.close()

    assert products
    assert all(product.categories == () for product in products)


def test_a_collection_filter_keeps_only_that_collection_through_a_run(shopify: Emulator, database_url: str) -> None:
    source = shopify.source("shopify", include=ProductFilter(collection=("Dress", "sale")))
    connector = shopify.connector("shopify", include=ProductFilter(collection=("Dress", "sale")))
    engine = make_engine(database_url)
    schema.upgrade(engine)
    store = Store(engine)
    try:
        report = plan_source(store, connector, source, mode="full", on_changed=lambda *_: None, mass_delete_share=1.0)
        rows = {row.product_id: row for row in store.products(source.name)}
    finally:
        connector.close()
        engine.dispose()

    expected = expected_collections(shopify)
    wanted = {pid for pid, keys in expected.items() if {"dress", "sale"} & set(keys)}
    kept = {pid for pid, row in rows.items() if row.desired_payload is not None}
    assert kept and kept <= wanted
    assert report.counts[f"skipped:{FILTERED_OUT}"] > 0
    filtered = next(row for row in rows.values() if row.skip_reason == FILTERED_OUT)
    assert filtered.skip_detail is not None and filtered.skip_detail.startswith("include.collection ['Dress', 'sale']")


def test_a_shopify_webhook_is_fetched_whole_when_the_filter_needs_collections(shopify: Emulator) -> None:
    product = next(iter(shopify.shop.store.iter_products("ID", reverse=False, product_filter=None)))
    body = json.dumps(webhook_product(product)).encode()
    headers = {"X-Shopify-Hmac-Sha256": sign_webhook(body, "whsec"), "X-Shopify-Topic": "products/update"}
    filtered = shopify.connector("shopify", webhook_secret="whsec", include=ProductFilter(collection=("dress",)))
    plain = shopify.connector("shopify", webhook_secret="whsec")
    try:
        partial = filtered.verify_webhook(headers, body)
        complete = plain.verify_webhook(headers, body)
    finally:
        filtered.close()
        plain.close()

    assert (partial.topic, partial.product_id, partial.product) == ("upsert", str(product.id), None)
    assert complete.product is not None


@pytest.mark.parametrize("kind", ["shopify-rest", "shopify-storefront"])
def test_a_collection_filter_needs_the_graphql_connector(kind: str) -> None:
    document = {
        "sources": [
            {
                "name": "s",
                "kind": kind,
                "url": "https://x.example",
                # The storefront takes no token: its pages are public.
                **({} if kind == "shopify-storefront" else {"access_token": "t"}),
                "include": {"collection": ["dress"]},
            }
        ]
    }

    with pytest.raises(ConfigError, match=r"include.collection applies to kind shopify, not"):
        parse_sources(document)
