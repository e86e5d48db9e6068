"""What the red team's bad items did to a whole sync (issue 15, findings 4 and 7), each replayed through a full
sync of a real feed on SQLite and PostgreSQL against the catalog emulator: one bad item must not cost its
neighbours, a broken document must fail the run without deleting anything, and a hostile document must not take
the worker's memory or quote a page it was redirected to."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from config.sources import FeedSource
from connectors import feed as feed_module
from connectors.base import SourceProduct, html_to_text
from connectors.feed import FeedConnector
from emulators.server import running
from ground.errors import SourceError
from tests.sync_helpers import SOURCE, SyncWorld, ext, feed_item, sync_world, write_feed
from worker.inline import InlineDispatcher
from worker.operations import run_sync
from worker.plan import RunReport

G = 'xmlns:g="http://base.google.com/ns/1.0"'
GOOD = 40


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> Iterator[SyncWorld]:
    with sync_world(tmp_path, database_url=database_url) as w:
        yield w


def full_sync(world: SyncWorld, source: str = SOURCE) -> RunReport:
    dispatcher = InlineDispatcher(world.runtime)
    report = run_sync(world.runtime, source, "full", dispatcher)
    dispatcher.drain(source, timeout=30)
    return report


def good_items() -> list[dict[str, object]]:
    return [feed_item(f"good-{n}") for n in range(GOOD)]


BAD_ITEMS = {
    "id-300-characters": feed_item("x" * 300),
    "id-10000-characters": feed_item("9" * 10_000),
    "id-with-nul": feed_item("bad\x00id"),
    "id-with-lone-surrogate": feed_item("bad\ud800id"),
    "id-with-control-characters": feed_item("bad\x1b[31mid"),
    "title-with-nul-and-surrogate": feed_item("odd-title", title="Shirt\x00 \udfff"),
    "title-of-100-kb": feed_item("long-title", title="T" * 100_000),
}


# ---- finding 4: one bad item fails a whole source -----------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_ITEMS.values(), ids=BAD_ITEMS.keys())
def test_one_bad_item_does_not_cost_its_forty_good_neighbours(world: SyncWorld, bad: dict[str, object]) -> None:
    items = good_items()
    items.insert(GOOD // 2, bad)
    # ensure_ascii writes lone surrogates as \ud800 escapes, which is how a JSON feed carries them.
    world.feed.write_text(json.dumps(items), encoding="utf-8")

    report = full_sync(world)

    assert report.outcome == "completed", report.error
    catalog = world.catalog_products()
    assert {ext(f"good-{n}") for n in range(GOOD)} <= set(catalog)
    assert report.counts["seen"] == GOOD + 1
    assert all("\x00" not in product["title"] for product in catalog.values())


def test_a_lone_surrogate_and_nul_in_text_are_cleaned_not_fatal(world: SyncWorld) -> None:
    world.feed.write_text(json.dumps([*good_items(), BAD_ITEMS["title-with-nul-and-surrogate"]]), encoding="utf-8")

    full_sync(world)

    assert world.catalog_products()[ext("odd-title")]["title"] == "Shirt \ufffd"


def test_an_unterminated_csv_quote_fails_the_run_instead_of_swallowing_rows(world: SyncWorld, tmp_path: Path) -> None:
    csv_feed = tmp_path / "feed.csv"
    rows = [f"good-{n},Good {n},https://cdn.example/{n}.jpg" for n in range(GOOD)]
    csv_feed.write_text("id,title,image_link\n" + "\n".join(rows) + "\n", encoding="utf-8")
    source = world.runtime.sources[SOURCE].model_copy(update={"url": str(csv_feed), "format": "csv"})
    world.runtime.sources[SOURCE] = source
    assert full_sync(world).outcome == "completed"
    rows[5] = 'good-5,"Good 5 with a quote that never closes,https://cdn.example/5.jpg'
    csv_feed.write_text("id,title,image_link\n" + "\n".join(rows) + "\n", encoding="utf-8")

    with pytest.raises(SourceError, match=r"unterminated quote .* line 7"):
        full_sync(world)

    run = world.runtime.store.recent_runs(SOURCE, limit=1)[0]
    assert run.outcome == "failed"
    assert len(world.catalog_products()) == GOOD  # nothing deleted


def test_a_feed_dated_in_the_year_2999_does_not_make_later_corrections_stale(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item("p", title="Wrong", updated="2999-01-01T00:00:00Z")])
    full_sync(world)
    stored = world.runtime.store.get(SOURCE, "p")
    assert stored is not None and stored.source_updated_at is not None
    assert stored.source_updated_at <= datetime.now(UTC)

    corrected = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    write_feed(world.feed, [feed_item("p", title="Right", updated=corrected)])
    report = full_sync(world)

    assert report.counts["stale"] == 0
    assert world.catalog_products()[ext("p")]["title"] == "Right"


def test_double_escaped_markup_does_not_become_markup_in_the_description(world: SyncWorld, tmp_path: Path) -> None:
    xml_feed = tmp_path / "feed.xml"
    description = (
        "Soft &amp;lt;script&amp;gt;alert(1)&amp;lt;/script&amp;gt; cotton &amp;lt;b&amp;gt;tee&amp;lt;/b&amp;gt;"
    )
    xml_feed.write_text(
        f"<rss {G}><channel><item><g:id>x</g:id><g:title>Tee</g:title><g:description>{description}</g:description>"
        "<g:image_link>https://cdn.example/x.jpg</g:image_link></item></channel></rss>",
        encoding="utf-8",
    )
    world.runtime.sources[SOURCE] = world.runtime.sources[SOURCE].model_copy(
        update={"url": str(xml_feed), "format": "google-merchant"}
    )

    full_sync(world)

    text = world.catalog_products()[ext("x")]["description"]
    assert "<" not in text and "alert(1)" not in text
    assert text == "Soft cotton tee"


def test_html_to_text_drops_markup_revealed_by_decoding() -> None:
    assert html_to_text("&lt;script&gt;alert(1)&lt;/script&gt;ok") == "ok"
    assert html_to_text("a &lt; b and c &gt; d") == "a < b and c > d"


# ---- finding 7: resource limits -----------------------------------------------------------------------------------


def gzip_feed(path: Path, *, item_bytes: int, items: int = 1) -> Path:
    """A gzip feed of `items` items whose descriptions hold `item_bytes` each, written in chunks: a few KB on
    disk for what expands to many MB."""
    chunk = b"a" * (1024 * 1024)
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(f"<rss {G}><channel>".encode())
        for n in range(items):
            out.write(f"<item><g:id>{n}</g:id><g:title>t</g:title><g:description>".encode())
            left = item_bytes
            while left > 0:
                out.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
            out.write(b"</g:description></item>")
        out.write(b"</channel></rss>")
    return path


def read(path: Path) -> list[object]:
    connector = FeedConnector(FeedSource(name="f", kind="feed", url=str(path), format="google-merchant"))
    try:
        return list(connector.iter_products(None))
    finally:
        connector.close()


def test_a_gzip_feed_expanding_to_one_enormous_item_fails_without_holding_it(tmp_path: Path) -> None:
    path = gzip_feed(tmp_path / "bomb.xml.gz", item_bytes=64 * 1024 * 1024)
    assert path.stat().st_size < 1024 * 1024

    tracemalloc.start()
    try:
        with pytest.raises(SourceError, match="without the end of an item"):
            read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < feed_module.MAX_ITEM_BYTES * 3


def test_a_document_larger_than_the_limit_once_decompressed_fails_the_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "MAX_DOCUMENT_BYTES", 4 * 1024 * 1024)
    path = gzip_feed(tmp_path / "big.xml.gz", item_bytes=512 * 1024, items=16)

    with pytest.raises(SourceError, match="larger than 4 MB once decompressed"):
        read(path)


def test_items_within_the_limits_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_module, "MAX_ITEM_BYTES", 2 * 1024 * 1024)
    path = gzip_feed(tmp_path / "ok.xml.gz", item_bytes=1024 * 1024, items=4)

    items = read(path)

    assert [item.product_id for item in items if isinstance(item, SourceProduct)] == ["0", "1", "2", "3"]


INTERNAL_SECRET = "internal-admin-page-S3CRET"


@pytest.fixture
def redirecting_site() -> Iterator[str]:
    async def feed(request: Request) -> Response:
        return RedirectResponse("/internal/admin", status_code=302)

    async def internal(request: Request) -> Response:
        return Response(f"<html><body>{INTERNAL_SECRET}</body></html>", status_code=404)

    app = Starlette(routes=[Route("/feed.xml", feed), Route("/internal/admin", internal)])
    with running(app) as server:
        yield server.url


def test_a_redirect_targets_body_is_never_quoted_in_the_error(redirecting_site: str) -> None:
    connector = FeedConnector(FeedSource(name="f", kind="feed", url=f"{redirecting_site}/feed.xml"))
    try:
        with pytest.raises(SourceError) as caught:
            list(connector.iter_products(None))
    finally:
        connector.close()

    assert INTERNAL_SECRET not in str(caught.value)
    assert "404" in str(caught.value) and "redirect" in str(caught.value)


@pytest.mark.parametrize(
    "target",
    ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:9/admin", "http://10.0.0.5/", "http://[::1]/x"],
)
def test_a_public_feed_redirecting_to_a_private_address_is_refused(target: str) -> None:
    requested: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requested.append(str(request.url))
        return httpx.Response(302, headers={"Location": target})

    source = FeedSource(name="f", kind="feed", url="https://93.184.215.14/feed.xml")
    connector = FeedConnector(source, client=httpx.Client(transport=httpx.MockTransport(handler)))

    with pytest.raises(SourceError, match="redirected to a private address"):
        list(connector.iter_products(None))

    assert requested == ["https://93.184.215.14/feed.xml"]
