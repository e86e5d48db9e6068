"""Feed columns as merchants name them: aliases, a per-source `columns` mapping, and a run that fails when a feed
has no id or image column at all instead of skipping every product."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.sources import parse_source, parse_sources
from connectors.base import SourceProduct
from connectors.feed import ColumnMap, FeedConnector, normalize_field_name, read_delimited_records
from ground.errors import ConfigError, SkippedProduct, SourceError
from tests.conftest import FIXTURES
from tests.connector_contract import read_all
from tests.sync_helpers import SyncWorld, sources_toml, sync_world
from tests.test_cli import cli

M5ZOON_FEED = FIXTURES / "feeds" / "m5zoon-products-feed" / "products-feed.csv"


def read(path: Path, **fields: Any) -> tuple[dict[str, SourceProduct], list[SkippedProduct]]:
    source = parse_source({"name": "shop-feed", "kind": "feed", "url": str(path), **fields})
    feed = FeedConnector(source)
    try:
        products, skipped = read_all(feed, None)
    finally:
        feed.close()
    return {product.product_id: product for product in products}, skipped


def test_a_real_shop_csv_with_plain_column_names_reads_every_product() -> None:
    products, skipped = read(M5ZOON_FEED)

    assert skipped == []
    assert len(products) == 20
    chanel = products["perfume_1"]
    assert chanel.title == "عطر كوكو شانيل 100 مل"
    assert [image.url for image in chanel.images] == [
        "https://m5zoon.com/public/uploads/products/1722352332177124.webp"
    ]
    assert chanel.url == "https://emirates-gifts.arabsad.com/products/perfume_1"
    assert (chanel.vendor, chanel.product_type) == ("Perfumes", "Perfumes")
    assert chanel.attributes["sale_price"] == "252 AED"
    assert chanel.attributes["availability"] == "in stock"
    assert products["watch_151"].product_type == "Watches"


@pytest.mark.parametrize(
    ("column", "attribute"),
    [
        ("Image", "image_link"),
        ("image_url", "image_link"),
        ("Image URL", "image_link"),
        ("IMAGE-URL", "image_link"),
        ("ImageURL", "image_link"),
        ("picture", "image_link"),
        ("g:image_link", "image_link"),
        ("URL", "link"),
        ("Product URL", "link"),
        ("name", "title"),
        ("Product Name", "title"),
        ("Sale_Price", "sale_price"),
        ("Category", "product_type"),
        ("Vendor", "brand"),
        ("Colour", "color"),
        ("Additional Images", "additional_image_link"),
        ("Item Group ID", "item_group_id"),
        ("Last Modified", "updated"),
    ],
)
def test_common_column_names_are_read_as_their_attribute(column: str, attribute: str) -> None:
    assert normalize_field_name(column) == attribute


@pytest.mark.parametrize("column", ["SKU", "Images", "Foto", "custom_label_0"])
def test_ambiguous_or_unknown_columns_keep_their_own_name(column: str) -> None:
    assert normalize_field_name(column) == column.lower()


def test_a_columns_mapping_names_the_feeds_own_columns_and_wins_over_aliases(tmp_path: Path) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text(
        "ID,SKU,Bezeichnung,Foto\n1,TEE-RED,Tee rot,https://cdn.example/tee.jpg\n2,TEE-BLUE,Tee blau,\n",
        encoding="utf-8",
    )

    products, _ = read(feed, columns={"image_link": "foto", "id": "SKU", "title": "Bezeichnung"})

    assert sorted(products) == ["TEE-BLUE", "TEE-RED"]
    assert products["TEE-RED"].title == "Tee rot"
    assert [image.url for image in products["TEE-RED"].images] == ["https://cdn.example/tee.jpg"]


def test_a_json_feed_uses_the_mapping_too(tmp_path: Path) -> None:
    feed = tmp_path / "feed.json"
    feed.write_text(json.dumps([{"ref": "A1", "Name": "Dress", "Bild": "https://cdn.example/a.jpg"}]))

    products, _ = read(feed, columns={"id": "ref", "image_link": "Bild"})

    assert products["A1"].title == "Dress"
    assert products["A1"].images[0].url == "https://cdn.example/a.jpg"


def test_a_csv_without_an_image_column_fails_naming_its_columns_and_the_fix(tmp_path: Path) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text("ID,Title,Foto,Price\n1,Tee,https://cdn.example/1.jpg,10\n", encoding="utf-8")

    with pytest.raises(SourceError) as caught:
        read(feed)

    message = str(caught.value)
    assert "no image column" in message
    assert "'ID', 'Title', 'Foto', 'Price'" in message
    assert 'columns = { image_link = "Foto" }' in message


def test_a_csv_without_id_and_title_columns_suggests_the_likely_ones(tmp_path: Path) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text("Artikelnummer,Titel,Image\nA1,Tee,https://cdn.example/1.jpg\n", encoding="utf-8")

    with pytest.raises(SourceError) as caught:
        read(feed)

    message = str(caught.value)
    assert "has no 'id' column and no title column" in message
    assert 'columns = { id = "Artikelnummer", title = "Titel" }' in message


def test_a_json_feed_with_no_image_anywhere_fails_before_any_product(tmp_path: Path) -> None:
    feed = tmp_path / "feed.json"
    feed.write_text(json.dumps([{"id": "1", "title": "Tee", "foto": "https://cdn.example/1.jpg"}]))

    with pytest.raises(SourceError, match=r"no image column \(found 'id', 'title', 'foto'\)"):
        read(feed)


def test_the_bare_reader_still_accepts_a_header_without_images() -> None:
    records = list(read_delimited_records(io.BytesIO(b"id,title\n1,Tee\n"), delimiter=","))

    assert records[0].fields == {"id": ("1",), "title": ("Tee",)}


def test_a_mapping_to_an_unknown_attribute_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"field 'columns': unknown attribute\(s\) \['imagelink'\]"):
        ColumnMap({"imagelink": "Foto"}, source="shop-feed")


def test_columns_belong_to_feeds_only() -> None:
    document = {
        "sources": [
            {
                "name": "s",
                "kind": "woocommerce",
                "url": "https://x.example",
                "consumer_key": "k",
                "consumer_secret": "s",
                "columns": {"id": "SKU"},
            }
        ]
    }

    with pytest.raises(ConfigError, match="columns applies to kind 'feed' only"):
        parse_sources(document)


# ---- a run over such a feed ---------------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SyncWorld]:
    with sync_world(tmp_path) as w:
        yield w


def test_a_run_over_a_feed_without_an_image_column_fails_and_the_mapping_fixes_it(
    world: SyncWorld, tmp_path: Path
) -> None:
    feed = tmp_path / "export.csv"
    feed.write_text(M5ZOON_FEED.read_text(encoding="utf-8").replace(",Image,", ",Bild,", 1), encoding="utf-8")
    config = Path(world.runtime.settings.config)
    config.write_text(sources_toml(feed, name="shop").replace('format = "json"', 'format = "csv"'), encoding="utf-8")

    failed = cli(world, "resync", "shop", "--full", "--inline", "--json")

    assert failed.returncode == 1, failed.stderr
    summary = json.loads(failed.stdout)
    assert summary["outcome"] == "failed"
    assert "no image column" in summary["error"]
    assert 'columns = { image_link = "Bild" }' in summary["error"]
    assert world.catalog_products() == {}

    config.write_text(config.read_text(encoding="utf-8") + 'columns = { image_link = "Bild" }\n', encoding="utf-8")
    fixed = cli(world, "resync", "shop", "--full", "--inline", "--json")

    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["synced"] == 20
    assert len(world.catalog_products()) == 20
