"""One catalog product per colour: a feed's item group split by an attribute."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from config.sources import parse_sources
from connectors.base import SourceProduct
from connectors.feed import FeedRecord, build_products, split_id
from ground.errors import ConfigError
from tests.sync_helpers import SOURCE, SyncWorld, ext, feed_item, sync_world, write_feed
from worker.inline import InlineDispatcher
from worker.operations import run_sync
from worker.plan import RunReport


@pytest.mark.parametrize(
    ("group", "value", "product_id"),
    [
        ("TS-1001", "Navy Blue", "TS-1001~navy-blue"),
        ("TS-1001", "  RED ", "TS-1001~red"),
        ("42", "Schwarz/Weiß", "42~schwarz-weiss"),
        ("42", "", "42"),
        ("42", "--", "42"),
    ],
    ids=["words", "case-and-spaces", "unicode-and-slash", "no-value", "no-letters"],
)
def test_a_colourways_id_is_the_group_and_the_value(group: str, value: str, product_id: str) -> None:
    assert split_id(group, value) == product_id


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "shopify-storefront"}, "split_by is not supported for kind 'shopify-storefront'.*use kind 'shopify'"),
        ({"kind": "feed", "split_by": " "}, "split_by names an attribute"),
    ],
    ids=["storefront", "blank"],
)
def test_split_by_mistakes_are_configuration_errors(table: dict[str, Any], message: str) -> None:
    document = {"sources": [{"name": "s", "url": "https://shop.example/f", "split_by": "color", **table}]}

    with pytest.raises(ConfigError, match=message):
        parse_sources(document)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SyncWorld]:
    with sync_world(tmp_path) as w:
        yield w


def variant(pid: str, group: str, color: str, *images: str, **extra: Any) -> dict[str, Any]:
    item = feed_item(pid, images=0, item_group_id=group, color=color, **extra)
    item["title"] = f"Wrap dress {color}".strip()
    item["image_link"] = images[0]
    item["additional_image_links"] = list(images[1:])
    return item


def dress(*colors: str) -> list[dict[str, Any]]:
    items = []
    for color in colors:
        for size in ("S", "M"):
            images = (f"https://cdn.example/wd/{color}-front.jpg", f"https://cdn.example/wd/{color}-{size}.jpg")
            items.append(variant(f"WD-{color}-{size}", "WD", color, *images, size=size))
    return items


def split_sync(world: SyncWorld, **kwargs: Any) -> RunReport:
    source = world.runtime.sources[SOURCE]
    world.runtime.sources[SOURCE] = source.model_copy(update={"split_by": "color", "metadata_fields": ("color",)})
    dispatcher = InlineDispatcher(world.runtime)
    report = run_sync(world.runtime, SOURCE, "full", dispatcher, **kwargs)
    dispatcher.drain(SOURCE, timeout=10)
    return report


def test_each_colour_becomes_its_own_catalog_product_with_its_own_images(world: SyncWorld) -> None:
    write_feed(world.feed, [*dress("Red", "Blue"), feed_item("solo")])

    split_sync(world)

    catalog = world.catalog_products()
    assert sorted(catalog) == [ext("WD~blue"), ext("WD~red"), ext("solo")]
    red = catalog[ext("WD~red")]
    assert [image["sourceUrl"] for image in red["images"]] == [
        "https://cdn.example/wd/Red-front.jpg",
        "https://cdn.example/wd/Red-S.jpg",
        "https://cdn.example/wd/Red-M.jpg",
    ]
    assert red["title"] == "Wrap dress Red"
    assert red["metadata"]["color"] == "Red"


def test_a_colour_that_disappears_is_deleted_like_a_product(world: SyncWorld) -> None:
    items = [*dress("Red", "Blue", "Green", "Black", "White")] + [feed_item(str(n)) for n in range(10)]
    write_feed(world.feed, items)
    split_sync(world)
    assert ext("WD~green") in world.catalog_products()

    write_feed(world.feed, [item for item in items if item.get("color") != "Green"])
    report = split_sync(world)

    assert report.outcome == "completed"
    assert report.counts["removed"] == 1
    catalog = world.catalog_products()
    assert ext("WD~green") not in catalog
    assert {ext("WD~red"), ext("WD~blue"), ext("WD~black"), ext("WD~white")} <= set(catalog)


def test_items_of_a_group_without_the_attribute_stay_one_product(world: SyncWorld) -> None:
    items = [
        variant("A-1", "A", "", "https://cdn.example/a1.jpg"),
        variant("A-2", "A", "", "https://cdn.example/a2.jpg"),
    ]
    for item in items:
        del item["color"]
    write_feed(world.feed, items)

    split_sync(world)

    assert [image["sourceUrl"] for image in world.catalog_products()[ext("A")]["images"]] == [
        "https://cdn.example/a1.jpg",
        "https://cdn.example/a2.jpg",
    ]


def test_the_split_product_remembers_its_group() -> None:
    record = FeedRecord(
        "item 1",
        {
            "id": ("1",),
            "item_group_id": ("G",),
            "title": ("T",),
            "color": ("Red",),
            "image_link": ("https://c.example/1.jpg",),
        },
    )

    (product,) = build_products([record], source="s", document_time=datetime(2025, 1, 1, tzinfo=UTC), split_by="Colour")

    assert isinstance(product, SourceProduct)
    assert product.product_id == "G~red"
    assert product.attributes["item_group_id"] == "G"
