"""Fuzzing the feed readers with whole documents: Google Merchant XML, CSV, TSV and JSON, plain or gzip, built from
hostile text or raw bytes, and the hostile XML classics. Each document either yields products and skips that the
planner can store, or fails the read with `SourceError`; nothing else escapes, nothing hangs."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.sources import FeedFormat, FeedSource
from connectors.base import SkippedProduct, SourceProduct
from connectors.feed import FeedConnector
from ground.errors import SourceError
from tests.fuzz_support import FUZZ, check_items, hostile_text
from tests.test_feed import KNOWN_FIELDS

# A parser that hangs fails here instead of at the suite-wide timeout: the whole file runs in seconds.
pytestmark = pytest.mark.timeout(60)

G = 'xmlns:g="http://base.google.com/ns/1.0"'
FIELDS = (*KNOWN_FIELDS, "availability")
IMAGE = "https://cdn.example.com/a.jpg"

Outcome = Literal["read", "refused"]


@contextmanager
def feed_file(content: bytes, suffix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"feed{suffix}"
        path.write_bytes(content)
        yield path


def read_document(content: bytes, fmt: FeedFormat | None, suffix: str = ".dat") -> Outcome:
    """Read a document through the real connector; `read` when it yielded, `refused` when it failed cleanly."""
    with feed_file(content, suffix) as path:
        source = FeedSource(name="fuzz", kind="feed", url=str(path), format=fmt)
        connector = FeedConnector(source)
        try:
            check_items(connector.iter_products(None), source)
        except SourceError:
            return "refused"
        finally:
            connector.close()
    return "read"


def xml_escape(value: str) -> str:
    # XML 1.0 has no way to write NUL or a surrogate: such text makes a broken document, which is refused.
    return escape(value)


field = st.sampled_from(FIELDS)
items = st.lists(st.lists(st.tuples(field, hostile_text), max_size=6), max_size=5)


def rss(items_xml: list[str]) -> bytes:
    body = "".join(f"<item>{item}</item>" for item in items_xml)
    document = f'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0" {G}><channel>{body}</channel></rss>'
    return document.encode("utf-8", "surrogatepass")


@FUZZ
@given(items, st.booleans())
def test_any_google_merchant_document_is_read_or_refused(fields: list[list[tuple[str, str]]], gz: bool) -> None:
    document = rss(["".join(f"<g:{name}>{xml_escape(value)}</g:{name}>" for name, value in item) for item in fields])
    if gz:
        document = gzip.compress(document)

    assert read_document(document, "google-merchant") in ("read", "refused")


@FUZZ
@given(
    st.sampled_from([",", "\t"]),
    st.lists(field, min_size=1, max_size=6),
    st.lists(st.lists(hostile_text, max_size=7), max_size=5),
)
def test_any_csv_or_tsv_document_is_read_or_refused(delimiter: str, header: list[str], rows: list[list[str]]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter)
    writer.writerow(["id", *header])
    writer.writerows(rows)
    document = out.getvalue().encode("utf-8", "surrogatepass")

    assert read_document(document, "tsv" if delimiter == "\t" else "csv") in ("read", "refused")


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text


def json_containers(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(children, max_size=3) | st.dictionaries(field | hostile_text, children, max_size=4)


json_values = st.recursive(json_scalars, json_containers, max_leaves=10)


@FUZZ
@given(st.lists(st.dictionaries(field | hostile_text, json_values, max_size=8) | json_values, max_size=5))
def test_any_json_document_is_read_or_refused(document: list[object]) -> None:
    # ensure_ascii writes lone surrogates as \ud800 escapes, which is how they arrive in real JSON.
    content = json.dumps(document).encode()

    assert read_document(content, "json") in ("read", "refused")


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([None, "google-merchant", "csv", "tsv", "json"]), st.booleans())
def test_any_bytes_are_read_or_refused(content: bytes, fmt: FeedFormat | None, gz: bool) -> None:
    assert read_document(gzip.compress(content) if gz else content, fmt) in ("read", "refused")


@FUZZ
@given(st.binary(min_size=2, max_size=200))
def test_a_truncated_or_corrupt_gzip_document_is_refused(tail: bytes) -> None:
    document = gzip.compress(rss([f"<g:id>1</g:id><g:title>t</g:title><g:image_link>{IMAGE}</g:image_link>"]))

    assert read_document(document[: len(document) // 2] + tail, "google-merchant") in ("read", "refused")


# ---- hostile XML: each is refused, quickly and without growing memory ---------------------------------------------

BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{n} "{("&lol" + (str(n - 1) if n > 1 else "") + ";") * 10}">' for n in range(1, 10))
    + f"]><rss {G}><channel><item><g:id>&lol9;</g:id></item></channel></rss>"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    f"<rss {G}><channel><item><g:id>1</g:id><g:title>&xxe;</g:title></item></channel></rss>"
)
EXTERNAL_DTD = f'<?xml version="1.0"?><!DOCTYPE rss SYSTEM "http://127.0.0.1:9/evil.dtd"><rss {G}><channel/></rss>'
PARAMETER_ENTITY = (
    f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]><rss {G}><channel/></rss>'
)


@pytest.mark.parametrize(
    "document",
    [BILLION_LAUGHS, EXTERNAL_ENTITY, PARAMETER_ENTITY],
    ids=["entity-expansion", "external-entity", "parameter-entity"],
)
def test_hostile_xml_declarations_are_refused(document: str) -> None:
    assert read_document(document.encode(), "google-merchant") == "refused"


def test_an_external_dtd_is_never_fetched() -> None:
    with tempfile.TemporaryDirectory() as directory:
        marker = Path(directory) / "fetched.dtd"
        marker.write_text('<!ENTITY leak "leaked">')
        document = EXTERNAL_DTD.replace("http://127.0.0.1:9/evil.dtd", marker.as_uri())
        document = document.replace("<channel/>", "<channel><item><g:id>1</g:id><g:title>t</g:title></item></channel>")
        with feed_file(document.encode(), ".xml") as path:
            source = FeedSource(name="fuzz", kind="feed", url=str(path))
            connector = FeedConnector(source)
            items = check_items(connector.iter_products(None), source)
            connector.close()

    assert [item.title for item in items if isinstance(item, SourceProduct)] == ["t"]


@pytest.mark.parametrize("where", ["outside-items", "inside-an-item"])
def test_a_document_nested_100000_deep_is_read_or_refused_without_crashing(where: str) -> None:
    deep = "<x>" * 100_000 + "</x>" * 100_000
    item = f"<g:id>1</g:id><g:title>t</g:title><g:image_link>{IMAGE}</g:image_link>"
    if where == "outside-items":
        document = f"<rss {G}><channel>{deep}<item>{item}</item></channel></rss>"
    else:
        document = f"<rss {G}><channel><item>{item}<g:description>{deep}</g:description></item></channel></rss>"

    assert read_document(document.encode(), "google-merchant") in ("read", "refused")


def test_a_json_document_nested_100000_deep_is_refused() -> None:
    assert read_document(b"[" * 100_000 + b"]" * 100_000, "json") == "refused"


def test_products_read_from_hostile_text_keep_their_good_neighbours() -> None:
    good = [f"<g:id>good-{n}</g:id><g:title>Good {n}</g:title><g:image_link>{IMAGE}</g:image_link>" for n in range(5)]
    bad = [
        f"<g:id>{'9' * 10_000}</g:id><g:title>long id</g:title><g:image_link>{IMAGE}</g:image_link>",
        f"<g:id>ctl\tid</g:id><g:title>{'T' * 100_000}</g:title><g:image_link>{IMAGE}</g:image_link>",
    ]
    with feed_file(rss(good[:2] + bad + good[2:]), ".xml") as path:
        source = FeedSource(name="fuzz", kind="feed", url=str(path))
        connector = FeedConnector(source)
        items = check_items(connector.iter_products(None), source)
        connector.close()

    products = [item.product_id for item in items if isinstance(item, SourceProduct)]
    assert [pid for pid in products if pid.startswith("good-")] == [f"good-{n}" for n in range(5)]
    assert all(isinstance(item, SourceProduct | SkippedProduct) for item in items)
