"""The feed connector: the connector contract over local and HTTP feeds, the Google Merchant XML (RSS and Atom),
CSV, TSV and JSON readers, variant grouping, skipped records, broken documents, HTTP retries over real sockets, and
property tests that odd input never crashes the parsers."""

from __future__ import annotations

import csv
import gc
import gzip
import io
import json
import os
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import escape

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import emulators
from config.sources import FeedSource, parse_source
from connectors import build_connector
from connectors.base import ImageRef, SourceProduct
from connectors.feed import (
    FeedConnector,
    FeedRecord,
    build_products,
    guess_format,
    read_delimited_records,
    read_json_records,
    read_xml_records,
)
from connectors.http import MAX_ATTEMPTS
from emulators.server import free_port, running
from ground.errors import AuthError, ConfigError, InvalidSignature, RateLimited, SkippedProduct, SourceError
from ground.limits import MAX_IMAGES
from tests.conftest import FIXTURES
from tests.connector_contract import ConnectorContract, read_all

DEMO_FEED = Path(emulators.__file__).parent / "data" / "demo-feed.xml"
BOGO_FEED = FIXTURES / "feeds" / "bogo4U-merchant-feed" / "merchant_feed.xml"
G = 'xmlns:g="http://base.google.com/ns/1.0"'
DOCUMENT_TIME = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LAST_MODIFIED = "Wed, 05 Mar 2025 08:00:00 GMT"


_opened: list[FeedConnector] = []


@pytest.fixture(autouse=True)
def _close_connectors() -> Iterator[None]:
    """Every connector a test builds releases its HTTP connections when the test ends."""
    yield
    while _opened:
        _opened.pop().close()


def feed_connector(url: str | Path, *, name: str = "shop-feed", **options: object) -> FeedConnector:
    fmt = options.pop("format", None)
    source = parse_source({"name": name, "kind": "feed", "url": str(url), "format": fmt})
    connector = FeedConnector(source, **options)  # type: ignore[arg-type]
    _opened.append(connector)
    return connector


def by_id(
    connector: FeedConnector, since: datetime | None = None
) -> tuple[dict[str, SourceProduct], list[SkippedProduct]]:
    products, skipped = read_all(connector, since)
    return {product.product_id: product for product in products}, skipped


def rss(*items: str) -> str:
    body = "".join(f"<item>{item}</item>" for item in items)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0" {G}><channel><title>t</title>{body}</channel></rss>'
    )


def g_item(
    pid: str, title: str = "A shirt", *, image: str | None = "https://cdn.example.com/a.jpg", **extra: str
) -> str:
    parts = [f"<g:id>{escape(pid)}</g:id>", f"<g:title>{escape(title)}</g:title>"]
    if image is not None:
        parts.append(f"<g:image_link>{escape(image)}</g:image_link>")
    parts += [f"<g:{key}>{escape(value)}</g:{key}>" for key, value in extra.items()]
    return "".join(parts)


def parse_xml(document: str) -> list[SourceProduct | SkippedProduct]:
    records = read_xml_records(io.BytesIO(document.encode()))
    return list(build_products(records, source="s", document_time=DOCUMENT_TIME))


def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


# ---- a real HTTP server for feeds --------------------------------------------------------------------------------


@dataclass
class FeedSite:
    """Serves feed documents by path; a path may first answer a scripted list of failures."""

    url: str = ""
    documents: dict[str, tuple[bytes, dict[str, str]]] = field(default_factory=dict)
    failures: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def publish(self, path: str, body: str | bytes, **headers: str) -> str:
        self.documents[path] = (body.encode() if isinstance(body, str) else body, headers)
        return self.url + path

    async def serve(self, request: Request) -> Response:
        path = request.url.path
        self.requests.append(path)
        scripted = self.failures.get(path)
        if scripted:
            status, headers = scripted.pop(0)
            return Response("the feed is having a moment", status_code=status, headers=headers)
        if path not in self.documents:
            return Response("no such feed", status_code=404)
        body, headers = self.documents[path]
        return Response(body, headers={k.replace("_", "-"): v for k, v in headers.items()})


@pytest.fixture
def site() -> Iterator[FeedSite]:
    feed_site = FeedSite()
    app = Starlette(routes=[Route("/{path:path}", feed_site.serve)])
    with running(app) as server:
        feed_site.url = server.url
        yield feed_site


# ---- the contract, over three real sources ------------------------------------------------------------------------


class TestDemoFeedContract(ConnectorContract):
    """The demo's own feed, from the package's data directory."""

    @pytest.fixture
    def connector(self) -> Iterator[FeedConnector]:
        connector = feed_connector(DEMO_FEED, name="demo")
        yield connector
        connector.close()

    @pytest.fixture
    def connector_with_bad_records(self, connector: FeedConnector) -> FeedConnector:
        return connector

    @pytest.fixture
    def expected_count(self) -> int:
        return 33


class TestMerchantFixtureContract(ConnectorContract):
    """A real shop's Google Merchant feed (bogo4U/merchant-feed)."""

    @pytest.fixture
    def connector(self) -> Iterator[FeedConnector]:
        connector = feed_connector(BOGO_FEED)
        yield connector
        connector.close()

    @pytest.fixture
    def connector_with_bad_records(self) -> FeedConnector:
        return feed_connector(DEMO_FEED)

    @pytest.fixture
    def expected_count(self) -> int:
        return 12


DATED_CSV = """id,title,description,link,image_link,additional_image_link,item_group_id,brand,updated
P-1,Linen Shirt,Cool linen,https://shop.example.com/p/1,https://cdn.example.com/1.jpg,,,Acme,2025-01-01T10:00:00Z
P-2,Wool Coat,Warm,https://shop.example.com/p/2,https://cdn.example.com/2.jpg,"https://cdn.example.com/2b.jpg,https://cdn.example.com/2c.jpg",,Acme,2025-01-05T10:00:00Z
P-3a,Chino – Khaki,Twill,https://shop.example.com/p/3,https://cdn.example.com/3a.jpg,,P-3,Acme,2025-01-03T10:00:00Z
P-3b,Chino – Navy,Twill,https://shop.example.com/p/3,https://cdn.example.com/3b.jpg,,P-3,Acme,2025-01-09T10:00:00Z
P-4,,No title here,https://shop.example.com/p/4,https://cdn.example.com/4.jpg,,,Acme,2025-01-02T10:00:00Z
P-5,Silk Scarf,Soft,https://shop.example.com/p/5,https://cdn.example.com/5.jpg,,,Acme,2025-01-07T10:00:00Z
P-6,Denim Jacket,Sturdy,https://shop.example.com/p/6,https://cdn.example.com/6.jpg,,,Acme,
"""


class TestHttpCsvFeedContract(ConnectorContract):
    """A dated CSV feed served over a real socket, with `Last-Modified` for the undated row."""

    @pytest.fixture
    def connector(self, site: FeedSite) -> Iterator[FeedConnector]:
        url = site.publish("/exports/products.csv", DATED_CSV, Last_Modified=LAST_MODIFIED)
        connector = feed_connector(url, sleep=lambda _: None)
        yield connector
        connector.close()

    @pytest.fixture
    def connector_with_bad_records(self, connector: FeedConnector) -> FeedConnector:
        return connector

    @pytest.fixture
    def expected_count(self) -> int:
        return 5


# ---- the demo feed -------------------------------------------------------------------------------------------------


def test_the_demo_feed_merges_variants_and_reports_its_broken_items() -> None:
    products, skipped = by_id(feed_connector(DEMO_FEED))

    assert len(products) == 33
    assert sorted((s.reason, s.product_id) for s in skipped) == [
        ("invalid_link", "JK-3009"),
        ("missing_id", None),
        ("missing_title", "TS-1010"),
    ]
    tee = products["TS-1001"]
    assert tee.title == "Organic Cotton Crew-Neck T-Shirt – White"
    assert tee.url == "https://shop.example.com/products/organic-cotton-crew-neck-t-shirt?variant=wht"
    assert [image.url.rsplit("/", 1)[1] for image in tee.images] == [
        "ts-1001-wht-front.jpg",
        "ts-1001-wht-back.jpg",
        "ts-1001-fabric-detail.jpg",
        "ts-1001-blk-front.jpg",
        "ts-1001-blk-back.jpg",
        "ts-1001-gry-front.jpg",
        "ts-1001-gry-back.jpg",
    ]
    assert not any(pid.startswith("TS-1001-") for pid in products)


def test_a_group_whose_items_are_not_adjacent_is_still_one_product() -> None:
    products, _ = by_id(feed_connector(DEMO_FEED))

    jeans = products["TR-4001"]

    assert [image.url.rsplit("/", 1)[1] for image in jeans.images] == [
        "tr-4001-ind-front.jpg",
        "tr-4001-ind-back.jpg",
        "tr-4001-blk-front.jpg",
        "tr-4001-blk-back.jpg",
    ]
    assert "2 items" in (jeans.raw_ref or "")


def test_the_demo_feed_keeps_ten_images_and_yields_an_imageless_product_for_the_plan_to_skip() -> None:
    products, _ = by_id(feed_connector(DEMO_FEED))

    assert [image.url.rsplit("-", 1)[1] for image in products["DR-2002"].images] == [
        f"{n:02d}.jpg" for n in range(1, 11)
    ]
    assert products["JK-3008"].images == ()
    assert products["JK-3008"].status == "active"


def test_the_demo_feed_decodes_entities_and_unicode_and_keeps_stock_out_of_status() -> None:
    products, _ = by_id(feed_connector(DEMO_FEED))

    breton = products["TS-1004"]
    assert breton.description == (
        "Our take on the classic marinière: heavyweight cotton, boat neck & three-quarter sleeves. "
        "Made in Brittany — naturally."
    )
    assert breton.vendor == "Maison Lumière"
    assert breton.attributes["sale_price"] == "45.00 EUR"
    assert products["DR-2006"].title == "Smocked Sundress — Côte d’Azur Print"
    assert products["DR-2002"].description.startswith("Three tiers of cotton broderie anglaise")
    assert products["TS-1006"].attributes["availability"] == "out of stock"
    assert products["TS-1006"].status == "active"
    assert products["DR-2007"].status == "draft"
    assert products["TS-1002"].product_type == "Tops > Shirts"


def test_item_dates_win_and_undated_items_take_the_files_modification_time(tmp_path: Path) -> None:
    copy = write(tmp_path, "feed.xml", DEMO_FEED.read_bytes())
    os.utime(copy, (DOCUMENT_TIME.timestamp(), DOCUMENT_TIME.timestamp()))

    products, _ = by_id(feed_connector(copy))

    assert products["TS-1005"].updated_at == datetime(2025, 6, 3, 9, 15, tzinfo=UTC)
    assert products["DR-2005"].updated_at == datetime(2025, 5, 12, 12, 30, tzinfo=UTC)
    assert products["TS-1002"].updated_at == DOCUMENT_TIME


# ---- the third-party Merchant feed -------------------------------------------------------------------------------


def test_a_real_merchant_feed_parses_with_its_group_and_romanian_text_intact() -> None:
    products, skipped = by_id(feed_connector(BOGO_FEED))

    assert skipped == []
    assert len(products) == 12
    harness = products["c4b_ham"]
    assert len(harness.images) == 3
    assert harness.title.startswith("Ham bebe cu suport tip chilot detasabil, BUFNITA, premergator, Cute4Babies")
    assert harness.product_type == "Baby & Toddler > Baby Safety > Baby Safety Harnesses & Leashes"
    carrier = products["1"]
    assert carrier.title == (
        "Marsupiu bebe ergonomic cu scaunel - fara dureri de spate, 6 pozitii, Cute4Babies , 0-36 luni, 100% Bumbac,"
    )
    assert carrier.description.startswith("Te doare spatele cand tii bebelususl in brate? Marsupiul nostru")
    assert carrier.vendor is not None
    assert carrier.url is not None
    assert carrier.url.startswith("https://www.marsupiu.ro/")
    assert {"price", "sale_price", "availability"} <= set(carrier.attributes)
    # Item 6 of the harness group is out of stock: stock is not status, and its in-stock siblings make the group so.
    assert all(product.status == "active" for product in products.values())
    assert harness.attributes["availability"] == "in stock"


# ---- XML: RSS and Atom details -----------------------------------------------------------------------------------


def test_plain_rss_elements_are_used_when_the_g_attributes_are_absent() -> None:
    document = rss(
        "<g:id>7</g:id><title>Plain &amp; simple tee</title><link>https://shop.example.com/tee</link>"
        "<description>&lt;b&gt;Bold&lt;/b&gt; cotton</description><g:image_link>https://cdn.example.com/t.jpg"
        "</g:image_link><pubDate>Sat, 01 Feb 2025 10:00:00 GMT</pubDate>"
    )

    [product] = parse_xml(document)

    assert isinstance(product, SourceProduct)
    assert (product.title, product.description, product.url) == (
        "Plain & simple tee",
        "Bold cotton",
        "https://shop.example.com/tee",
    )
    assert product.updated_at == datetime(2025, 2, 1, 10, 0, tzinfo=UTC)


def test_g_attributes_win_over_plain_elements_of_the_same_name() -> None:
    document = rss(g_item("8", "Google title") + "<title>RSS title</title><g:link>https://a.example.com/g</g:link>")

    [product] = parse_xml(document)

    assert isinstance(product, SourceProduct)
    assert product.title == "Google title"
    assert product.url == "https://a.example.com/g"


def test_an_atom_feed_reads_entries_links_summaries_and_updated() -> None:
    document = f"""<?xml version="1.0"?>
    <feed xmlns="http://www.w3.org/2005/Atom" {G}>
      <title>Atom shop</title><updated>2025-01-01T00:00:00Z</updated>
      <entry>
        <g:id>A-1</g:id><title>Atom parka</title><summary>Warm &amp; dry</summary>
        <link rel="self" href="https://shop.example.com/feed/a-1"/>
        <link href="https://shop.example.com/parka"/>
        <updated>2025-02-03T04:05:06+01:00</updated>
        <g:image_link>https://cdn.example.com/parka.jpg</g:image_link>
        <g:brand>North</g:brand><g:google_product_category>Outerwear</g:google_product_category>
      </entry>
    </feed>"""

    [product] = parse_xml(document)

    assert isinstance(product, SourceProduct)
    assert product.product_id == "A-1"
    assert product.title == "Atom parka"
    assert product.description == "Warm & dry"
    assert product.url == "https://shop.example.com/parka"
    assert product.updated_at == datetime(2025, 2, 3, 3, 5, 6, tzinfo=UTC)
    assert (product.vendor, product.product_type) == ("North", "Outerwear")


def test_images_are_the_image_link_then_additional_links_deduplicated_and_web_only() -> None:
    extra = "".join(
        f"<g:additional_image_link>{url}</g:additional_image_link>"
        for url in (
            "https://cdn.example.com/a.jpg",  # the main image again
            "https://cdn.example.com/with space.jpg",
            "ftp://cdn.example.com/x.jpg",
            "/relative/y.jpg",
            "https://cdn.example.com/b.jpg",
        )
    )
    document = rss(g_item("9") + extra)

    [product] = parse_xml(document)

    assert isinstance(product, SourceProduct)
    assert product.images == (
        ImageRef("https://cdn.example.com/a.jpg"),
        ImageRef("https://cdn.example.com/with%20space.jpg"),
        ImageRef("https://cdn.example.com/b.jpg"),
    )


# ---- records -> products: grouping, status, skips, since ---------------------------------------------------------


def record(ref: str, **fields: str | tuple[str, ...]) -> FeedRecord:
    return FeedRecord(ref, {k: (v,) if isinstance(v, str) else v for k, v in fields.items()})


def build(*records: FeedRecord, since: datetime | None = None) -> list[SourceProduct | SkippedProduct]:
    return list(build_products(records, source="s", document_time=DOCUMENT_TIME, since=since))


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ((), "active"),
        (("ACTIVE",), "active"),
        (("Draft",), "draft"),
        (("archived",), "archived"),
        (("draft", "active"), "active"),
        (("draft", "archived"), "draft"),
        (("archived", ""), "active"),
    ],
    ids=["none", "upper-case", "draft", "archived", "any-active", "draft-over-archived", "unmarked-item-is-active"],
)
def test_a_groups_status_is_active_while_any_item_is(statuses: tuple[str, ...], expected: str) -> None:
    items = [record(f"item {n}", item_group_id="G", title="Tee", status=status) for n, status in enumerate(statuses)]
    items = items or [record("item 0", item_group_id="G", title="Tee")]

    [product] = build(*items)

    assert isinstance(product, SourceProduct)
    assert product.status == expected


@pytest.mark.parametrize(
    ("fields", "reason", "product_id"),
    [
        ({"title": "No id"}, "missing_id", None),
        ({"id": "1"}, "missing_title", "1"),
        ({"id": "1", "title": "<b> </b>"}, "missing_title", "1"),
        ({"id": "1", "title": "T", "link": "shop.example.com/p/1"}, "invalid_link", "1"),
        ({"id": "1", "title": "T", "link": "javascript:alert(1)"}, "invalid_link", "1"),
        ({"id": "1", "title": "T", "status": "paused"}, "invalid_status", "1"),
    ],
    ids=["missing-id", "missing-title", "markup-only-title", "link-without-scheme", "script-link", "unknown-status"],
)
def test_a_record_that_cannot_be_a_product_is_skipped_with_a_stable_reason(
    fields: dict[str, str], reason: str, product_id: str | None
) -> None:
    good = record("item 2", id="2", title="Good", image_link="https://cdn.example.com/2.jpg")

    skipped, product = build(record("item 1", **fields), good)

    assert isinstance(skipped, SkippedProduct)
    assert (skipped.reason, skipped.product_id) == (reason, product_id)
    assert "item 1" in skipped.detail
    assert isinstance(product, SourceProduct)
    assert product.product_id == "2"


def test_grouped_items_need_no_id_of_their_own_and_take_text_from_the_first_item_that_has_it() -> None:
    first = record(
        "item 1",
        item_group_id="G",
        image_link="https://cdn.example.com/1.jpg",
        price="10 EUR",
        availability="out of stock",
    )
    second = record(
        "item 2",
        item_group_id="G",
        title="Tee",
        description="<p>Soft</p>",
        link="https://s.example.com/g",
        price="12 EUR",
    )
    third = record("item 3", item_group_id="G", availability="In Stock")

    [product] = build(first, second, third)

    assert isinstance(product, SourceProduct)
    assert (product.product_id, product.title, product.description) == ("G", "Tee", "Soft")
    assert product.url == "https://s.example.com/g"
    assert product.attributes == {"price": "10 EUR", "availability": "in stock"}


def test_a_repeated_id_keeps_the_first_and_skips_the_rest_without_touching_the_kept_product() -> None:
    first = record("item 1", id="1", title="First")
    again = record("item 2", id="1", title="Second")
    group = record("item 3", id="9", item_group_id="1", title="A group named like an item")

    product, duplicate, clash = build(first, again, group)

    assert isinstance(product, SourceProduct)
    assert product.title == "First"
    for skip in (duplicate, clash):
        assert isinstance(skip, SkippedProduct)
        assert (skip.reason, skip.product_id) == ("duplicate_id", None)


def test_since_keeps_products_and_skips_changed_at_or_after_it() -> None:
    old = record("item 1", id="old", title="Old", updated="2025-01-01T00:00:00Z")
    edge = record("item 2", id="edge", title="Edge", updated="2025-02-01T00:00:00Z")
    new_bad = record("item 3", id="bad", updated="2025-03-01T00:00:00Z")
    old_bad = record("item 4", id="bad-old", updated="2024-03-01T00:00:00Z")
    undated = record("item 5", id="undated", title="Undated")

    items = build(old, edge, new_bad, old_bad, undated, since=datetime(2025, 2, 1, tzinfo=UTC))

    assert [(type(i).__name__, i.product_id) for i in items] == [
        ("SourceProduct", "edge"),
        ("SkippedProduct", "bad"),
        ("SourceProduct", "undated"),  # no date: the document's time (2025-03-01) stands in
    ]


def test_a_group_is_as_new_as_its_newest_item() -> None:
    items = [
        record("item 1", item_group_id="G", title="Tee", updated="2025-01-01T00:00:00Z"),
        record("item 2", item_group_id="G", updated="Sun, 02 Feb 2025 00:00:00 GMT"),
        record("item 3", item_group_id="G", updated="not a date"),
    ]

    [product] = build(*items)

    assert isinstance(product, SourceProduct)
    assert product.updated_at == datetime(2025, 2, 2, tzinfo=UTC)


# ---- CSV, TSV and JSON -------------------------------------------------------------------------------------------


def test_a_csv_feed_with_g_prefixed_headers_quotes_and_a_bom(tmp_path: Path) -> None:
    text = (
        "\ufeffg:id,g:Title,g:description,g:image link,g:additional_image_link,g:brand,g:product_type,tags\r\n"
        '42,"Parka, waterproof","Line one\nline two",https://cdn.example.com/p.jpg,'
        '"https://cdn.example.com/q.jpg, https://cdn.example.com/r.jpg",Nord,Coats,"winter, outdoor"\r\n'
        "\r\n"
        "43,Short row\r\n"
    )
    path = write(tmp_path, "feed.csv", text)

    products, skipped = by_id(feed_connector(path))

    assert skipped == []
    parka = products["42"]
    assert parka.title == "Parka, waterproof"
    assert parka.description == "Line one line two"
    assert [image.url for image in parka.images] == [
        "https://cdn.example.com/p.jpg",
        "https://cdn.example.com/q.jpg",
        "https://cdn.example.com/r.jpg",
    ]
    assert (parka.vendor, parka.product_type, parka.tags) == ("Nord", "Coats", ("winter", "outdoor"))
    assert products["43"].title == "Short row"
    assert products["43"].images == ()
    assert products["43"].raw_ref == "line 5"


@pytest.mark.parametrize("name", ["feed.tsv", "feed.txt"])
def test_a_tsv_feed_is_read_from_tsv_and_txt_files(tmp_path: Path, name: str) -> None:
    text = "id\ttitle\timage_link\titem_group_id\nA\tTop, red\thttps://cdn.example.com/a.jpg\tG\nB\tTop, blue\t\tG\n"
    path = write(tmp_path, name, text)

    products, _ = by_id(feed_connector(path))

    assert list(products) == ["G"]
    assert products["G"].title == "Top, red"


def test_a_json_feed_in_the_documented_schema(tmp_path: Path) -> None:
    document = {
        "products": [
            {
                "id": 101,
                "title": "Rain jacket",
                "description": "<p>Taped seams</p>",
                "link": "https://shop.example.com/rain",
                "image_link": "https://cdn.example.com/r1.jpg",
                "additional_image_links": ["https://cdn.example.com/r2.jpg", None, {"url": "ignored"}],
                "brand": "Drip",
                "product_type": "Jackets",
                "status": "archived",
                "updated_at": "2025-04-01T08:00:00+02:00",
                "tags": ["rain", "outdoor", "rain"],
                "price": 99.5,
            },
            "not an object",
            {"title": "No id"},
        ]
    }
    path = write(tmp_path, "feed.json", json.dumps(document))

    products, skipped = by_id(feed_connector(path))

    jacket = products["101"]
    assert jacket.description == "Taped seams"
    assert [image.url for image in jacket.images] == [
        "https://cdn.example.com/r1.jpg",
        "https://cdn.example.com/r2.jpg",
    ]
    assert (jacket.status, jacket.vendor, jacket.tags) == ("archived", "Drip", ("rain", "outdoor"))
    assert jacket.updated_at == datetime(2025, 4, 1, 6, 0, tzinfo=UTC)
    assert jacket.attributes["price"] == "99.5"
    assert sorted(s.reason for s in skipped) == ["invalid_record", "missing_id"]


def test_a_bare_json_list_is_a_feed_too() -> None:
    records = list(read_json_records(io.BytesIO(b'[{"id": "1", "title": "T"}]')))

    assert [r.first("id") for r in records] == ["1"]


def test_a_json_feed_over_the_size_cap_is_refused_with_a_clear_error() -> None:
    document = json.dumps([{"id": str(n), "title": "T"} for n in range(100)]).encode()

    with pytest.raises(SourceError, match=r"larger than .* read whole"):
        list(read_json_records(io.BytesIO(document), max_bytes=len(document) - 1))


def test_a_gzipped_feed_is_recognised_by_its_first_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, "feed.xml.gz", gzip.compress(DEMO_FEED.read_bytes()))

    products, _ = by_id(feed_connector(path))

    assert len(products) == 33


@pytest.mark.parametrize(
    ("name", "content_type", "head", "expected"),
    [
        ("feed.xml", None, b"", "google-merchant"),
        ("feed.RSS", None, b"", "google-merchant"),
        ("products.csv.gz", None, b"", "csv"),
        ("products.tsv", None, b"", "tsv"),
        ("products.txt", None, b"", "tsv"),
        ("products.json", None, b"", "json"),
        ("/export", "text/csv; charset=utf-8", b"", "csv"),
        ("/export", "text/tab-separated-values", b"", "tsv"),
        ("/export", "application/rss+xml", b"", "google-merchant"),
        ("/export", "application/json", b"", "json"),
        ("/export", "text/plain", b"\xef\xbb\xbf  <?xml", "google-merchant"),
        ("/export", None, b"\n[{", "json"),
        ("/export", None, b"id\ttitle\n", "tsv"),
        ("/export", None, b"id,title\n", "csv"),
    ],
    ids=[
        "xml",
        "rss-upper",
        "csv-gz",
        "tsv",
        "txt",
        "json",
        "ct-csv",
        "ct-tsv",
        "ct-rss",
        "ct-json",
        "sniff-xml",
        "sniff-json",
        "sniff-tsv",
        "sniff-csv",
    ],
)
def test_the_format_is_guessed_from_the_name_then_content_type_then_first_bytes(
    name: str, content_type: str | None, head: bytes, expected: str
) -> None:
    assert guess_format(name, content_type, head) == expected


def test_an_explicit_format_wins_over_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, "feed.xml", "id,title,image\n1,Tee,https://cdn.example.com/1.jpg\n")

    products, _ = by_id(feed_connector(path, format="csv"))

    assert list(products) == ["1"]


# ---- broken documents --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("feed.xml", rss(g_item("1")).replace("</channel>", ""), r"broken XML at line 1"),
        ("feed.xml", "<html><body>Maintenance</body></html>", r"not an RSS or Atom feed.*<html>"),
        ("feed.xml", "", r"broken XML"),
        (
            "feed.xml",
            '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><rss>&b;</rss>',
            r"entities .* refused for safety",
        ),
        ("feed.csv", "", r"CSV feed is empty"),
        ("feed.csv", "id;title;link\n1;Tee;x\n", r"no 'id' column .* commas"),
        ("feed.csv", b"id,title\n1,Caf\xe9\n", r"not valid UTF-8"),
        ("feed.json", "{not json", r"not valid JSON"),
        ("feed.json", '{"items": []}', r"list of products"),
        ("feed.json", "", r"JSON feed is empty"),
        ("feed.xml.gz", b"\x1f\x8bnot really gzip", r"cannot read the document"),
    ],
    ids=[
        "unclosed-xml",
        "html-page",
        "empty-xml",
        "entity-bomb",
        "empty-csv",
        "wrong-delimiter",
        "latin-1-csv",
        "bad-json",
        "json-wrong-shape",
        "empty-json",
        "bad-gzip",
    ],
)
def test_a_broken_document_fails_the_read_with_a_clear_error(
    tmp_path: Path, name: str, content: str | bytes, message: str
) -> None:
    connector = feed_connector(write(tmp_path, name, content))

    with pytest.raises(SourceError, match=message) as caught:
        list(connector.iter_products())

    assert "feed source 'shop-feed'" in str(caught.value)


def test_a_missing_file_fails_the_read_naming_the_source(tmp_path: Path) -> None:
    connector = feed_connector(tmp_path / "nowhere.xml")

    with pytest.raises(SourceError, match=r"shop-feed.*cannot read the feed file: No such file"):
        list(connector.iter_products())


def test_items_before_a_break_are_yielded_then_the_read_fails() -> None:
    document = rss(g_item("1"), g_item("2")).replace("</channel></rss>", "<item><g:id>3</g:id>")

    stream = build_products(read_xml_records(io.BytesIO(document.encode())), source="s", document_time=DOCUMENT_TIME)

    assert [next(stream).product_id, next(stream).product_id] == ["1", "2"]
    with pytest.raises(SourceError, match="broken XML"):
        next(stream)


# ---- the connector's surface -------------------------------------------------------------------------------------


def test_build_connector_makes_a_feed_connector_from_a_source() -> None:
    source = FeedSource(name="demo", kind="feed", url=str(DEMO_FEED))

    connector = build_connector(source)

    assert isinstance(connector, FeedConnector)
    assert connector.source == "demo"
    assert connector.kind == "feed"


def test_a_file_url_is_a_local_feed() -> None:
    products, _ = by_id(feed_connector(DEMO_FEED.as_uri()))

    assert len(products) == 33


@pytest.mark.parametrize("url", ["ftp://feeds.example.com/feed.xml", "s3://bucket/feed.xml", "https:///feed.xml"])
def test_an_unusable_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigError, match=r"source 'shop-feed': field 'url'"):
        feed_connector(url)


def test_feeds_do_not_send_webhooks() -> None:
    connector = feed_connector(DEMO_FEED)

    with pytest.raises(InvalidSignature, match="feeds do not send webhooks"):
        connector.verify_webhook({"X-Anything": "1"}, b"{}")


def test_get_product_finds_groups_and_reports_an_unusable_record() -> None:
    connector = feed_connector(DEMO_FEED)

    group = connector.get_product("TR-4003")
    with pytest.raises(SkippedProduct) as caught:
        connector.get_product("TS-1010")

    assert group is not None
    assert group.title == "Tapered Chino"
    assert caught.value.reason == "missing_title"
    assert connector.get_product("TR-4003-KHA") is None  # a variant is not a product


def test_a_naive_since_is_taken_as_utc(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "feed.csv",
        "id,title,updated,image\n1,Old,2025-01-01T00:00:00Z,https://c.example/1.jpg\n2,New,2025-03-01T00:00:00Z,https://c.example/2.jpg\n",
    )

    products, _ = by_id(feed_connector(path), since=datetime(2025, 2, 1))

    assert list(products) == ["2"]


# ---- streaming -----------------------------------------------------------------------------------------------------


class CountingStream(io.RawIOBase):
    """A document that counts how much of it the parser has pulled."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        self.consumed += len(chunk)
        return len(chunk)


def big_xml(items: int) -> bytes:
    description = "Soft brushed cotton with a relaxed fit. " * 8
    body = "".join(
        f"<item><g:id>P{n}</g:id><g:title>Product {n}</g:title><g:description>{description}</g:description>"
        f"<g:image_link>https://cdn.example.com/{n}.jpg</g:image_link></item>"
        for n in range(items)
    )
    return f'<?xml version="1.0"?><rss {G}><channel>{body}</channel></rss>'.encode()


def big_csv(rows: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "title", "description", "image_link"])
    for n in range(rows):
        writer.writerow([f"P{n}", f"Product {n}", "Soft brushed cotton. " * 10, f"https://cdn.example.com/{n}.jpg"])
    return out.getvalue().encode()


@pytest.mark.parametrize(
    ("document", "reader"),
    [
        (big_xml(3000), read_xml_records),
        (big_csv(3000), lambda stream: read_delimited_records(stream, delimiter=",")),
    ],
    ids=["xml", "csv"],
)
def test_the_first_product_arrives_before_the_document_is_read(
    document: bytes, reader: Callable[[io.BufferedReader], Iterator[FeedRecord]]
) -> None:
    raw = CountingStream(document)

    stream = build_products(reader(io.BufferedReader(raw)), source="s", document_time=DOCUMENT_TIME)
    first = next(stream)

    assert isinstance(first, SourceProduct)
    assert raw.consumed < len(document) / 10


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("feed.csv", "id,title,image\n1,A,https://c.example/a.jpg\n2,B,\n"),
        ("feed.tsv", "id\ttitle\timage\n1\tA\thttps://c.example/a.jpg\n2\tB\t\n"),
        ("feed.json", '[{"id": 1, "title": "A", "image": "https://c.example/a.jpg"}, {"id": 2, "title": "B"}]'),
        ("feed.xml", rss(g_item("1"), g_item("2"))),
        ("feed.xml.gz", gzip.compress(rss(g_item("1"), g_item("2")).encode())),
    ],
    ids=["csv", "tsv", "json", "xml", "gzip"],
)
def test_an_abandoned_read_closes_its_parser_and_file_cleanly(tmp_path: Path, name: str, content: str | bytes) -> None:
    stream = feed_connector(write(tmp_path, name, content)).iter_products()

    first = next(stream)
    stream.close()
    gc.collect()

    assert first.product_id == "1"


def test_a_long_xml_feed_does_not_sit_in_memory() -> None:
    document = big_xml(4000)
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_xml_records(io.BytesIO(document)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert count == 4000
    # The parsed tree of the whole document would be several times its size; one item at a time is far less.
    assert peak < len(document) / 4, f"peak {peak} bytes while reading a {len(document)}-byte feed"


# ---- over HTTP -----------------------------------------------------------------------------------------------------


def test_an_http_feed_takes_its_time_from_last_modified_and_its_format_from_content_type(site: FeedSite) -> None:
    url = site.publish(
        "/export",
        "id\ttitle\timage\n1\tTee\thttps://c.example/t.jpg\n",
        Content_Type="text/tab-separated-values",
        Last_Modified=LAST_MODIFIED,
    )

    products, _ = by_id(feed_connector(url))

    assert products["1"].updated_at == datetime(2025, 3, 5, 8, 0, tzinfo=UTC)


def test_an_http_feed_without_last_modified_takes_the_fetch_time(site: FeedSite) -> None:
    url = site.publish("/feed.xml", rss(g_item("1")))

    products, _ = by_id(feed_connector(url, clock=lambda: DOCUMENT_TIME))

    assert products["1"].updated_at == DOCUMENT_TIME


def test_an_http_feed_in_a_declared_charset_is_decoded(site: FeedSite) -> None:
    url = site.publish(
        "/feed.csv",
        "id,title,image\n1,Café crème,https://c.example/c.jpg\n".encode("latin-1"),
        Content_Type="text/csv; charset=latin-1",
    )

    products, _ = by_id(feed_connector(url))

    assert products["1"].title == "Café crème"


def test_a_gzip_file_served_over_http_is_read(site: FeedSite) -> None:
    url = site.publish("/feed.xml.gz", gzip.compress(DEMO_FEED.read_bytes()), Content_Type="application/gzip")

    products, _ = by_id(feed_connector(url))

    assert len(products) == 33


def test_transient_http_failures_are_retried_with_backoff_and_retry_after(site: FeedSite) -> None:
    url = site.publish("/feed.xml", rss(g_item("1")))
    site.failures["/feed.xml"] = [(503, {}), (429, {"Retry-After": "2"}), (502, {})]
    sleeps: list[float] = []

    products, _ = by_id(feed_connector(url, sleep=sleeps.append))

    assert list(products) == ["1"]
    assert len(site.requests) == 4
    assert len(sleeps) == 3
    assert sleeps[1] == 2.0


def test_a_feed_that_keeps_failing_gives_up_after_the_attempt_budget(site: FeedSite) -> None:
    url = site.publish("/feed.xml", rss(g_item("1")))
    site.failures["/feed.xml"] = [(500, {})] * MAX_ATTEMPTS
    sleeps: list[float] = []

    with pytest.raises(SourceError, match=r"answered 500 5 time\(s\)"):
        list(feed_connector(url, sleep=sleeps.append).iter_products())

    assert len(sleeps) == MAX_ATTEMPTS - 1


def test_a_long_retry_after_fails_the_read_as_rate_limited(site: FeedSite) -> None:
    url = site.publish("/feed.xml", rss(g_item("1")))
    site.failures["/feed.xml"] = [(429, {"Retry-After": "3600"})]

    with pytest.raises(RateLimited) as caught:
        list(feed_connector(url, sleep=lambda _: None).iter_products())

    assert caught.value.retry_after == 3600


def test_a_missing_http_feed_fails_without_leaking_the_query_string(site: FeedSite) -> None:
    connector = feed_connector(site.url + "/gone.xml?key=s3cr3t-token")

    with pytest.raises(SourceError, match=r"answered 404: no such feed") as caught:
        list(connector.iter_products())

    assert "s3cr3t" not in str(caught.value)
    assert "s3cr3t" not in repr(connector)


def test_a_refused_http_feed_is_an_auth_error(site: FeedSite) -> None:
    url = site.publish("/feed.xml", rss(g_item("1")))
    site.failures["/feed.xml"] = [(401, {})]

    with pytest.raises(AuthError, match="refused access"):
        list(feed_connector(url).iter_products())


def test_an_unreachable_feed_fails_after_retrying_the_connection() -> None:
    sleeps: list[float] = []
    connector = feed_connector(f"http://127.0.0.1:{free_port()}/feed.xml", sleep=sleeps.append)

    with pytest.raises(SourceError, match="cannot reach the feed: ConnectError"):
        list(connector.iter_products())

    assert len(sleeps) == MAX_ATTEMPTS - 1


def test_a_connection_that_breaks_mid_body_fails_the_read() -> None:
    body = big_xml(200)

    def handler(request: httpx.Request) -> httpx.Response:
        def chunks() -> Iterator[bytes]:
            yield body[:5000]
            raise httpx.ReadError("connection reset by peer")

        return httpx.Response(200, content=chunks())

    client = httpx.Client(transport=httpx.MockTransport(handler))
    connector = feed_connector("https://feeds.example.com/feed.xml", client=client)

    with pytest.raises(SourceError, match="connection broke while reading the feed: ReadError"):
        list(connector.iter_products())
    connector.close()
    assert not client.is_closed  # a client the caller passed in stays the caller's


# ---- property tests: odd input never crashes ------------------------------------------------------------------------

KNOWN_FIELDS = [
    "id",
    "title",
    "description",
    "link",
    "image_link",
    "additional_image_link",
    "item_group_id",
    "brand",
    "product_type",
    "status",
    "updated",
    "tags",
    "price",
]
# Text an XML 1.0 document can carry (no surrogates, no control characters but tab and newline).
xml_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff")
    | st.sampled_from("\t\n"),
    max_size=40,
)
field_value = st.one_of(
    xml_text,
    st.sampled_from(["", " ", "draft", "ARCHIVED", "https://cdn.example.com/x.jpg", "2025-01-01", "http://"]),
)


def check_outcome(items: list[SourceProduct | SkippedProduct]) -> None:
    ids = [item.product_id for item in items if isinstance(item, SourceProduct)]
    assert len(ids) == len(set(ids))
    for item in items:
        assert isinstance(item, SourceProduct | SkippedProduct)
        if isinstance(item, SourceProduct):
            assert item.title
            assert item.updated_at.utcoffset() == timedelta(0)
            assert len(item.images) <= MAX_IMAGES
        else:
            assert item.reason


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(KNOWN_FIELDS) | xml_text, st.lists(field_value, max_size=3), max_size=8),
        max_size=8,
    )
)
def test_any_records_become_products_or_skips(rows: list[dict[str, list[str]]]) -> None:
    records = [FeedRecord(f"item {n}", {k: tuple(v) for k, v in row.items()}) for n, row in enumerate(rows)]

    check_outcome(build(*records))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.lists(st.sampled_from(KNOWN_FIELDS) | xml_text, min_size=1, max_size=6),
    rows=st.lists(st.lists(field_value, max_size=8), max_size=6),
    delimiter=st.sampled_from([",", "\t"]),
)
def test_any_csv_or_tsv_rows_become_products_or_skips(header: list[str], rows: list[list[str]], delimiter: str) -> None:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter)
    writer.writerow(["id", *header])
    writer.writerows(rows)

    records = read_delimited_records(io.BytesIO(out.getvalue().encode()), delimiter=delimiter)

    check_outcome(list(build_products(records, source="s", document_time=DOCUMENT_TIME)))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(KNOWN_FIELDS), field_value), max_size=8), max_size=6))
def test_any_xml_items_become_products_or_skips(items: list[list[tuple[str, str]]]) -> None:
    document = rss(*("".join(f"<g:{name}>{escape(value)}</g:{name}>" for name, value in item) for item in items))

    check_outcome(parse_xml(document))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | field_value,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KNOWN_FIELDS), children),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(json_values | st.dictionaries(st.sampled_from(KNOWN_FIELDS) | xml_text, json_values), max_size=6))
def test_any_json_list_becomes_products_or_skips(document: list[object]) -> None:
    records = read_json_records(io.BytesIO(json.dumps(document).encode()))

    check_outcome(list(build_products(records, source="s", document_time=DOCUMENT_TIME)))


plain_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="<>&\ufeff"), max_size=30
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(plain_text.filter(lambda s: s.strip() != ""), plain_text.filter(lambda s: s.strip() != "")),
        max_size=8,
        unique_by=lambda row: row[0].strip(),
    ),
    st.sampled_from([",", "\t"]),
)
def test_well_formed_rows_with_any_unicode_come_through_exactly(rows: list[tuple[str, str]], delimiter: str) -> None:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter)
    writer.writerow(["g:id", "g:title", "g:image_link"])
    writer.writerows((pid, title, "https://cdn.example.com/x.jpg") for pid, title in rows)

    records = read_delimited_records(io.BytesIO(out.getvalue().encode()), delimiter=delimiter)
    items = list(build_products(records, source="s", document_time=DOCUMENT_TIME))

    assert [(item.product_id, getattr(item, "title", None)) for item in items] == [
        (pid.strip(), " ".join(title.split())) for pid, title in rows
    ]
