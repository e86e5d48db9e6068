"""Product feeds: Google Merchant XML (RSS 2.0 or Atom), the same feed as CSV or TSV, and a JSON list; read from a
local path, a `file://` URL or an `http(s)` URL.

Formats (the source's `format`, else guessed from the file name, then the HTTP `Content-Type`, then the first bytes):

- `google-merchant` (`.xml`, `.rss`, `.atom`): `<rss><channel><item>` or `<feed><entry>` with
  `xmlns:g="http://base.google.com/ns/1.0"`. `g:title`, `g:description`, `g:link` win over the plain RSS/Atom
  `title`, `description` (Atom `summary`/`content`) and `link` (Atom `<link href=…>`).
- `csv` (`.csv`) and `tsv` (`.tsv`, `.txt`): a header row of attribute names, with or without the `g:` prefix;
  `additional_image_link` holds comma-separated URLs. Text is UTF-8 (a BOM is fine) unless HTTP names a charset.
- `json` (`.json`): a list, or `{"products": [...]}`, of objects
  `{id, title, description, link, image_link, additional_image_links: [...], item_group_id?, brand?, product_type?,
  status?, updated_at?, tags?}` (Google attribute names work too). A JSON list cannot be streamed without another
  dependency, so JSON feeds are read whole and refused above `MAX_JSON_BYTES`; XML, CSV and TSV stream, so a
  100 MB feed never sits in memory. Gzip-compressed documents of any format are recognised by their first bytes.

Column names: a column or element names an attribute whatever its case and punctuation, under its Google name or an
unambiguous alias (`Image`, `image_url`, `picture` for `image_link`; `URL` for `link`; `name` for `title`: the table
`FIELD_ALIASES`, documented in the README); a source's `columns` mapping names its own (`ColumnMap`). A CSV/TSV header
or a JSON feed with no id, no title or no image attribute at all fails the read with the columns found and the
mapping that would fix it, instead of skipping every item.

Mapping: `g:image_link` then the `g:additional_image_link`s become the images (at most `MAX_IMAGES`; URLs that are
not absolute http(s) are dropped); `g:brand` is the vendor; `g:product_type`, else `g:google_product_category`, the
product type; `tags` (comma-separated) the tags; availability, prices and a few stable descriptors go to
`attributes`. Stock is not status: an out-of-stock item stays active. A feed has no publish status, so every item
is `active` unless it carries `g:status` (or a `status` column) saying `draft` or `archived`. `updated_at` is the
item's `g:updated` / `updated` / `updated_at` / `pubDate` when present, else the document's own time (HTTP
`Last-Modified`, a file's mtime) so an unchanged feed yields unchanged products; a URL without `Last-Modified` gets
the fetch time, so an incremental read of such a feed returns every product (the plan's hashes make that cheap).

Variants: items sharing `g:item_group_id` become ONE product whose id is the group id, whose title, description and
link come from the first item that has them, whose images are all the items' images in order (de-duplicated, first
`MAX_IMAGES` kept), attributes from the first item (availability `in stock` when any item is), `updated_at` the newest
item's, and which is active while any item is. Groups need not be adjacent: a group's state is kept until the
document ends, so memory grows with the number of groups (one compact product each: first title and description, at
most ten image URLs), never with the document or its items. Ungrouped items are yielded as they are read; their ids
are remembered (strings only) so a repeated id is caught.

Colourways: with the source's `split_by` (an attribute, e.g. `color`), a group is keyed by the group id and that
attribute's value (`split_id`: `WD~navy-blue`), so each colour becomes its own product with its own items' images;
items without the value stay in the group's own product.

Bad data: a record that cannot be a product is yielded as `SkippedProduct(product_id, reason, detail)` and the rest go
on. Reasons: `missing_id` (neither id nor item_group_id), `missing_title`, `invalid_link` (a link that is not an
absolute http(s) URL), `invalid_status`, `duplicate_id` (the id was listed before; the first one is kept, and the
skip carries no product id so the kept product is untouched), `invalid_record` (a JSON element that is not an
object). A product without a usable image is still yielded, with no images: the sync core records it skipped as
`no_images`. A broken document (malformed XML, an unreadable file, an HTTP 404, an empty CSV) raises `SourceError`,
which fails the run before anything is deleted. Feeds send no webhooks; `get_product` scans the document.

Limits: a document may expand to at most `MAX_DOCUMENT_BYTES` once decompressed, and XML may run at most
`MAX_ITEM_BYTES` without an item ending (the parser holds one item whole); past either the read fails with
`SourceError`, so a few KB of gzip cannot take the worker's memory or keep a run reading for ever. A CSV/TSV quote
that never closes (its cell swallows the rows after it) fails the read rather than losing those rows unnoticed.

HTTP: redirects are followed one hop at a time (at most `MAX_REDIRECTS`), never from a public host to a private,
loopback or link-local address, and an error answer reached through a redirect is not quoted in the message.
The streamed GET goes through the connectors' one retry loop (`connectors.http.retrying`: same attempt budget, backoff
and `Retry-After` cap as every shop request) until the body starts; a body that breaks midway fails the read instead
of restarting, since products already yielded cannot be taken back.
"""

from __future__ import annotations

import csv
import gzip
import io
import ipaddress
import json
import os
import re
import socket
import time
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlsplit
from urllib.request import url2pathname

import httpx
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, iterparse

from config.sources import FeedFormat, FeedSource, SourceConfig
from connectors.base import (
    ImageRef,
    ProductStatus,
    SourceProduct,
    WebhookEvent,
    clean_text,
    html_to_text,
    normalize_images,
    parse_datetime,
    split_tags,
)
from connectors.http import HttpConnector, Sleep, Target, error_for_status, retrying, unreachable
from ground.errors import ConfigError, InvalidSignature, SkippedProduct, SourceError
from ground.http import retry_after_seconds
from ground.limits import MAX_IMAGES

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

    from _typeshed import WriteableBuffer

__all__ = [
    "FEED_ATTRIBUTES",
    "MAX_JSON_BYTES",
    "ColumnMap",
    "FeedConnector",
    "FeedRecord",
    "build_products",
    "guess_format",
    "read_delimited_records",
    "read_json_records",
    "read_xml_records",
    "split_id",
]

GOOGLE_NS: Final = "http://base.google.com/ns/1.0"
# JSON is parsed whole (the standard library has no streaming JSON parser): refuse documents past this size.
MAX_JSON_BYTES = 200 * 1024 * 1024
# Bytes pulled from an HTTP body per read: large enough to keep the parser busy, small enough to stay bounded.
CHUNK_SIZE = 64 * 1024
# Bytes of a sniffed prefix when neither the name nor the Content-Type tells the format.
SNIFF_BYTES = 2048
# Column names quoted when a feed lacks a structural column (a wide export has hundreds).
MAX_SHOWN_COLUMNS = 40
# Characters of an HTTP error body quoted in the error message (control characters and markup removed).
ERROR_EXCERPT = 160
# Bytes of a document after decompression: a few KB of gzip can expand to gigabytes, and a run must end.
MAX_DOCUMENT_BYTES = 2 * 1024**3
# Bytes of XML between the end of one item and the end of the next: a real item is a few KB, and the parser holds
# an item whole, so one endless element must fail the run instead of the worker's memory.
MAX_ITEM_BYTES = 16 * 1024**2
# Redirects followed before the fetch fails (CDNs use one or two).
MAX_REDIRECTS = 5

FORMAT_BY_SUFFIX: Final[Mapping[str, FeedFormat]] = {
    ".xml": "google-merchant",
    ".rss": "google-merchant",
    ".atom": "google-merchant",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",  # Google Merchant Center's own name for a TSV upload
    ".json": "json",
}
FORMAT_BY_CONTENT_TYPE: Final[tuple[tuple[str, FeedFormat], ...]] = (
    ("tab-separated-values", "tsv"),
    ("csv", "csv"),
    ("json", "json"),
    ("xml", "google-merchant"),
    ("rss", "google-merchant"),
    ("atom", "google-merchant"),
)
STATUSES: Final[Mapping[str, ProductStatus]] = {"active": "active", "draft": "draft", "archived": "archived"}
# Feed attributes copied into `SourceProduct.attributes`, which a source's `metadata_fields` may send to the catalog.
ATTRIBUTE_FIELDS: Final = (
    "availability",
    "price",
    "sale_price",
    "condition",
    "color",
    "size",
    "gender",
    "age_group",
    "material",
    "pattern",
    "gtin",
    "mpn",
    "google_product_category",
)
# Google's availability value for an item that can be bought now.
IN_STOCK: Final = "in stock"
# The attributes a feed row may name, as the Google Merchant spec spells them (plus `tags`, `status` and `updated`).
# A source's `columns` mapping may point any of them at a column of its own.
FEED_ATTRIBUTES: Final = (
    "id",
    "item_group_id",
    "title",
    "description",
    "link",
    "image_link",
    "additional_image_link",
    "brand",
    "product_type",
    "tags",
    "status",
    "updated",
    *ATTRIBUTE_FIELDS,
)
# Other names feeds use for those attributes, compared case- and punctuation-insensitively (`Image URL`, `image-url`
# and `ImageURL` are one name). Only names that cannot mean anything else: `sku` (a variant's code, not the
# product's) or `images` (a list in one cell) are left to the source's `columns` mapping.
FIELD_ALIASES: Final[Mapping[str, tuple[str, ...]]] = {
    "id": ("product_id", "item_id", "offer_id"),
    "item_group_id": ("group_id", "item_group", "parent_id"),
    "title": ("name", "product_name", "product_title"),
    "description": ("desc", "product_description", "long_description", "body_html"),
    "link": ("url", "product_url", "product_link", "page_url", "permalink"),
    "image_link": (
        "image",
        "image_url",
        "image_src",
        "main_image",
        "main_image_url",
        "picture",
        "picture_url",
        "photo",
        "photo_url",
        "img",
        "img_url",
    ),
    "additional_image_link": (
        "additional_image_links",
        "additional_image_url",
        "additional_image_urls",
        "additional_images",
        "extra_images",
        "more_images",
        "other_images",
    ),
    "brand": ("vendor", "manufacturer", "brand_name"),
    "product_type": ("type", "category", "categories", "product_category"),
    "tags": ("tag", "keywords"),
    "status": ("product_status",),
    "updated": ("updated_at", "pubdate", "last_updated", "last_modified", "modified", "modified_at", "date_modified"),
    "availability": ("stock_status",),
    "price": ("regular_price",),
    "sale_price": ("special_price",),
    "color": ("colour",),
    "gtin": ("ean", "upc", "barcode"),
}
DATE_FIELDS: Final = ("updated",)
# Fields whose single text value may hold a comma-separated list (in CSV/TSV cells and JSON strings).
LIST_FIELDS: Final = frozenset({"additional_image_link"})
# Between a group id and a split value in a colourway's product id: URL-safe, and rare in shop ids.
SPLIT_SEPARATOR: Final = "~"
# Runs of anything but letters and digits: ignored when column names are compared, `-` in a split value's slug.
_NOT_ALNUM = re.compile(r"[\W_]+")
# Characters no usable URL holds once inner spaces are encoded (Google rejects them too).
_UNSAFE_URL_CHAR = re.compile(r"[\s\x00-\x1f\x7f]")
# Markup in a quoted error body: the excerpt says what the server said, not how its page was built.
_MARKUP = re.compile(r"<[^>]{0,200}>")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class FeedRecord:
    """One feed item as read, before it becomes a product.

    `fields` maps an attribute name (lower case, no `g:` prefix, aliases resolved) to its non-blank values in document
    order. `problem` is a `(reason, detail)` when the reader already knows the record is unusable.
    """

    ref: str
    fields: Mapping[str, tuple[str, ...]]
    problem: tuple[str, str] | None = None

    def first(self, *names: str) -> str:
        """The first value of the first of `names` the record has, or ""."""
        for name in names:
            values = self.fields.get(name)
            if values:
                return values[0]
        return ""

    def values(self, name: str) -> tuple[str, ...]:
        return self.fields.get(name, ())


def _compact(name: str) -> str:
    """The comparison key of a column name: `g:Image Link`, `image_link` and `ImageLink` give `imagelink`."""
    key = name.strip().lstrip("\ufeff").lower().removeprefix("g:")
    return _NOT_ALNUM.sub("", key)


_ALIAS_INDEX: Final[Mapping[str, str]] = {
    _compact(alias): attribute
    for attribute in FEED_ATTRIBUTES
    for alias in (attribute, *FIELD_ALIASES.get(attribute, ()))
}


@lru_cache(maxsize=4096)
def normalize_field_name(name: str) -> str:
    """The attribute a column names (aliases resolved), else the column's own name in lower case, `g:` dropped."""
    attribute = _ALIAS_INDEX.get(_compact(name))
    if attribute is not None:
        return attribute
    return name.strip().lstrip("\ufeff").lower().replace(" ", "_").removeprefix("g:")


# How a missing structural attribute is named in the error.
_COLUMN_LABELS: Final[Mapping[str, str]] = {"id": "'id' column", "title": "title column", "image_link": "image column"}
# Column-name fragments that hint at an attribute, for the suggestion when a feed lacks it.
_HINTS: Final[Mapping[str, tuple[str, ...]]] = {
    "id": ("sku", "code", "ref", "number", "artikel", "nummer"),
    "title": ("titel", "titre", "titulo", "nombre", "bezeichnung", "label", "heading"),
    "image_link": ("image", "img", "photo", "picture", "foto", "bild", "imagen", "immagine"),
}


class ColumnMap:
    """How one source's feed names its attributes: the source's `columns` mapping first, then the alias table.

    A mapped attribute is read from the mapped column only; another column the aliases would also read as that
    attribute is ignored, so `columns = { id = "SKU" }` is not undone by an `ID` column.
    """

    def __init__(self, columns: Mapping[str, str] | None = None, *, source: str = "") -> None:
        self.columns = dict(columns or {})
        unknown = sorted(set(self.columns) - set(FEED_ATTRIBUTES))
        if unknown:
            raise ConfigError(
                f"source {source!r}: field 'columns': unknown attribute(s) {unknown}; the keys are attributes "
                f"({', '.join(FEED_ATTRIBUTES)}) and the values the feed's column names"
            )
        self._mapped = {_compact(column): attribute for attribute, column in self.columns.items()}

    def __call__(self, name: str) -> str:
        attribute = self._mapped.get(_compact(name))
        if attribute is not None:
            return attribute
        normalized = normalize_field_name(name)
        # The empty name makes `_Fields.add` drop the column.
        return "" if normalized in self.columns else normalized

    def require(self, found: Sequence[str], kind: str, *, strict: bool, advice: str = "") -> None:
        """Fail the read when the feed has no id attribute at all (with `strict`: no title or no image either):
        every item would be skipped for the same reason, and the fix is a mapping, not a product edit."""
        names = {self(name) for name in found}
        missing = []
        if "id" not in names and "item_group_id" not in names:
            missing.append("id")
        if strict and "title" not in names:
            missing.append("title")
        if strict and "image_link" not in names and "additional_image_link" not in names:
            missing.append("image_link")
        if not missing:
            return
        shown = ", ".join(repr(name) for name in found[:MAX_SHOWN_COLUMNS])
        if len(found) > MAX_SHOWN_COLUMNS:
            shown += ", ..."
        labels = " and no ".join(_COLUMN_LABELS[attribute] for attribute in missing)
        fix = ", ".join(f'{attribute} = "{_suggest(attribute, found)}"' for attribute in missing)
        raise SourceError(
            f"the {kind} has no {labels} (found {shown}), so every item would be skipped; name the columns in the "
            f"source's settings: columns = {{ {fix} }}{advice}"
        )


def _suggest(attribute: str, found: Sequence[str]) -> str:
    for name in found:
        if any(hint in _compact(name) for hint in _HINTS.get(attribute, ())):
            return name
    return "<column name>"


class _Fields:
    """Builds a record's field map: values in order, blanks dropped, comma lists split where the format allows."""

    def __init__(self, *, split_lists: bool) -> None:
        self._split = split_lists
        self.values: dict[str, list[str]] = {}

    def add(self, name: str, value: str) -> None:
        if not name:
            return
        parts = value.split(",") if self._split and name in LIST_FIELDS else (value,)
        for part in parts:
            text = part.strip()
            if text:
                self.values.setdefault(name, []).append(text)

    def frozen(self) -> dict[str, tuple[str, ...]]:
        return {name: tuple(values) for name, values in self.values.items()}


class _Metered(io.RawIOBase):
    """A byte stream that refuses to hand out more than `limit` bytes between two `restart()`s (or in all, when
    never restarted): the bound on what a parser may be made to hold or a run to read."""

    def __init__(self, stream: IO[bytes], limit: int, refusal: str) -> None:
        self._stream = stream
        self._limit = limit
        self._refusal = refusal
        self._count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._stream.read(len(view))
        size = len(data)
        self._count += size
        if self._count > self._limit:
            raise SourceError(self._refusal)
        view[:size] = data
        return size

    def restart(self, refusal: str | None = None) -> None:
        self._count = 0
        if refusal is not None:
            self._refusal = refusal


# ---- readers: a document's bytes -> FeedRecords ------------------------------------------------------------------


def _split_tag(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return "", tag


def _is_item(element: Element) -> bool:
    namespace, local = _split_tag(element.tag)
    return namespace != GOOGLE_NS and local in ("item", "entry")


def _xml_record(element: Element, ref: str, names: Callable[[str], str]) -> FeedRecord:
    google = _Fields(split_lists=False)
    plain = _Fields(split_lists=False)
    for child in element:
        namespace, local = _split_tag(child.tag)
        name = names(local)
        if namespace != GOOGLE_NS and name == "link" and child.get("href") is not None:
            # Atom links are attributes; only the page itself (no rel, or rel="alternate") is the product's link.
            if child.get("rel", "alternate") == "alternate":
                plain.add(name, child.get("href", ""))
            continue
        text = "".join(child.itertext())
        (google if namespace == GOOGLE_NS else plain).add(name, text)
    # The g: attribute wins over the plain RSS/Atom element of the same name.
    return FeedRecord(ref, {**plain.frozen(), **google.frozen()})


def read_xml_records(
    stream: IO[bytes], *, names: Callable[[str], str] = normalize_field_name, max_item_bytes: int = MAX_ITEM_BYTES
) -> Generator[FeedRecord, None, None]:
    """Stream the items of an RSS 2.0 or Atom feed; each item's elements are freed once it is read, and more than
    `max_item_bytes` of XML without an item ending fails the read. `names` turns an element's local name into an
    attribute (a source's `ColumnMap`)."""
    open_elements: list[Element] = []
    item_depth: int | None = None  # depth of the item being read: elements named "item" inside it are its fields
    count = 0
    refusal = (
        f"more than {max_item_bytes // 1024**2} MB of XML without the end of an item (after item {{count}}); a feed "
        f"item is a few KB, so the document is refused"
    )
    metered = _Metered(stream, max_item_bytes, refusal.format(count=0))
    try:
        for event, element in iterparse(metered, events=("start", "end")):
            if event == "start":
                if not open_elements:
                    _, root = _split_tag(element.tag)
                    if root not in ("rss", "feed"):
                        raise SourceError(f"not an RSS or Atom feed: the document's root element is <{root}>")
                if item_depth is None and _is_item(element):
                    item_depth = len(open_elements)
                open_elements.append(element)
                continue
            open_elements.pop()
            if len(open_elements) != item_depth:
                continue
            item_depth = None
            count += 1
            metered.restart(refusal.format(count=count))
            yield _xml_record(element, f"item {count}", names)
            # Drop the item from the tree so a long feed costs one item of memory, not the whole document.
            element.clear()
            if open_elements:
                open_elements[-1].remove(element)
    except ParseError as exc:
        line, column = getattr(exc, "position", (0, 0))
        raise SourceError(f"broken XML at line {line}, column {column}: {exc}") from None
    except DefusedXmlException as exc:
        raise SourceError(f"the XML declares entities or external references, refused for safety: {exc}") from None


def read_delimited_records(
    stream: IO[bytes],
    *,
    delimiter: str,
    encoding: str = "utf-8-sig",
    columns: ColumnMap | None = None,
    strict: bool = False,
) -> Generator[FeedRecord, None, None]:
    """Stream the rows of a CSV or TSV feed whose first row names the attributes (through `columns`). A header
    without an id column, or with `strict` without a title or an image column, fails the read before any row."""
    column_map = columns or ColumnMap()
    text = io.TextIOWrapper(stream, encoding=encoding, newline="")
    lines = _QuoteCounter(text)
    reader = csv.reader(lines, delimiter=delimiter)
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            header = next(reader, None)
        if header is None:
            raise SourceError(f"the {kind} feed is empty: the first line must name the columns (id, title, ...)")
        found = [cell.strip().lstrip("\ufeff") for cell in header if cell.strip()]
        advice = ". Check too that the format is right: csv separates columns with commas, tsv with tabs"
        column_map.require(found, f"{kind} header", strict=strict, advice=advice)
        names = [column_map(cell) for cell in header]
        last_line = reader.line_num
        lines.quotes = 0
        for row in reader:
            first_line, last_line = last_line + 1, reader.line_num
            if last_line > first_line and lines.quotes % 2:
                # A quoted cell may span lines, but then its quotes pair up. An odd count means a quote that never
                # closed, and the cell swallowed the rows after it: they are not in the feed as the merchant meant.
                raise SourceError(
                    f"unterminated quote in the {kind} record starting at line {first_line}: the lines after it "
                    f'(to line {last_line}) were read as one cell; close the quote or escape it as ""'
                )
            lines.quotes = 0
            if not any(cell.strip() for cell in row):
                continue
            fields = _Fields(split_lists=True)
            for name, cell in zip(names, row, strict=False):
                fields.add(name, cell)
            yield FeedRecord(f"line {reader.line_num}", fields.frozen())
    except csv.Error as exc:
        raise SourceError(f"unreadable {kind} at line {reader.line_num}: {exc}") from None
    except UnicodeDecodeError as exc:
        charset = "UTF-8" if encoding.startswith("utf-8") else encoding
        raise SourceError(
            f"the {kind} feed is not valid {charset} text ({exc.reason}); save it as UTF-8 or serve it with its charset"
        ) from None
    finally:
        # Leave the binary stream to its owner (closing the wrapper would close it under the caller).
        text.detach()


class _QuoteCounter:
    """The lines of a text stream, counting the quote characters handed to the CSV reader since the last reset."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.quotes = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.quotes += line.count('"')
        return line


def read_json_records(
    stream: IO[bytes],
    *,
    max_bytes: int = MAX_JSON_BYTES,
    columns: ColumnMap | None = None,
    require_columns: bool = False,
) -> Generator[FeedRecord, None, None]:
    """The products of a JSON feed: a list of objects, or `{"products": [...]}`. Read whole, up to `max_bytes`.
    With `require_columns`, a feed none of whose objects has an id, a title or an image fails before any product."""
    column_map = columns or ColumnMap()
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SourceError(
            f"the JSON feed is larger than {max_bytes // (1024 * 1024)} MB; JSON feeds are read whole, so split it "
            f"or publish the feed as XML, CSV or TSV, which are streamed"
        )
    if not data.strip():
        raise SourceError("the JSON feed is empty; expected a list of products")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise SourceError(f"not valid JSON: {exc}") from None
    if isinstance(document, dict) and isinstance(document.get("products"), list):
        document = document["products"]
    if not isinstance(document, list):
        raise SourceError('a JSON feed must be a list of products or an object {"products": [...]}')
    if require_columns and document:
        keys = dict.fromkeys(str(key) for entry in document if isinstance(entry, dict) for key in entry)
        column_map.require(list(keys), "JSON feed's objects", strict=True)
    for index, entry in enumerate(document, start=1):
        ref = f"element {index}"
        if not isinstance(entry, dict):
            problem = ("invalid_record", f"{ref} is a JSON {type(entry).__name__}, not an object")
            yield FeedRecord(ref, {}, problem)
            continue
        fields = _Fields(split_lists=True)
        for key, value in entry.items():
            name = column_map(str(key))
            for scalar in value if isinstance(value, list) else (value,):
                text = _json_text(scalar)
                if text is not None:
                    fields.add(name, text)
        yield FeedRecord(ref, fields.frozen())


def _json_text(value: object) -> str | None:
    """A JSON scalar as feed text; objects, nested lists, null and booleans carry no attribute value."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


# ---- records -> products -----------------------------------------------------------------------------------------


def _web_url(value: str) -> str | None:
    """An absolute http(s) URL (inner spaces encoded), or None when the value is not one."""
    url = value.strip().replace(" ", "%20")
    if not url or _UNSAFE_URL_CHAR.search(url):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    return url


def _moment(value: str) -> datetime | None:
    """ISO 8601 (Atom, JSON) or RFC 822 (RSS `pubDate`), as aware UTC; None when unreadable."""
    try:
        moment = parse_datetime(value)
        if moment is None:
            moment = parse_datetime(parsedate_to_datetime(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return moment


@dataclass(slots=True)
class _Draft:
    """A product being assembled from one item, or from every item of a group."""

    product_id: str
    ref: str
    items: int = 0
    title: str = ""
    description: str = ""
    link: str = ""
    vendor: str = ""
    product_type: str = ""
    tags: tuple[str, ...] = ()
    statuses: list[str] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)
    image_urls: list[str] = field(default_factory=list)
    updated_at: datetime | None = None

    def absorb(self, record: FeedRecord) -> None:
        self.items += 1
        if not self.title:
            self.title = html_to_text(record.first("title"))
        if not self.description:
            self.description = html_to_text(record.first("description", "summary", "content"))
        if not self.link:
            self.link = record.first("link")
        if not self.vendor:
            self.vendor = html_to_text(record.first("brand"))
        if not self.product_type:
            self.product_type = html_to_text(record.first("product_type", "google_product_category"))
        if not self.tags:
            self.tags = split_tags(",".join(record.values("tags")))
        status = record.first("status")
        if status:
            self.statuses.append(status)
        if self.items == 1:
            for name in ATTRIBUTE_FIELDS:
                value = record.first(name)
                if value:
                    self.attributes[name] = value
        elif record.first("availability").lower() == IN_STOCK:
            # A product is in stock while any of its variants is; the other attributes are the first item's.
            self.attributes["availability"] = IN_STOCK
        for raw in (*record.values("image_link"), *record.values("additional_image_link")):
            if len(self.image_urls) >= MAX_IMAGES:
                break
            url = _web_url(raw)
            if url is not None and url not in self.image_urls:
                self.image_urls.append(url)
        for name in DATE_FIELDS:
            moment = _moment(record.first(name))
            if moment is not None and (self.updated_at is None or moment > self.updated_at):
                self.updated_at = moment

    def finish(self, source: str, document_time: datetime) -> tuple[SourceProduct | SkippedProduct, datetime]:
        """The product, or why it cannot be one; with the time an incremental read compares to `since`."""
        updated_at = self.updated_at or document_time
        where = self.ref if self.items == 1 else f"{self.ref}, group of {self.items} items"
        if not self.title:
            return SkippedProduct(self.product_id, "missing_title", f"{where} has no title"), updated_at
        url = _web_url(self.link) if self.link else None
        if self.link and url is None:
            detail = f"{where}: link {self.link[:200]!r} is not an absolute http(s) URL"
            return SkippedProduct(self.product_id, "invalid_link", detail), updated_at
        status = self._status()
        if status is None:
            bad = next(s for s in self.statuses if s.strip().lower() not in STATUSES)
            detail = f"{where}: status {bad[:50]!r}; use active, draft or archived"
            return SkippedProduct(self.product_id, "invalid_status", detail), updated_at
        product = SourceProduct(
            source=source,
            product_id=self.product_id,
            updated_at=updated_at,
            status=status,
            title=self.title,
            description=self.description,
            images=normalize_images(ImageRef(url) for url in self.image_urls),
            url=url,
            vendor=self.vendor or None,
            product_type=self.product_type or None,
            tags=self.tags,
            attributes=dict(self.attributes),
            raw_ref=where,
        )
        return product, updated_at

    def _status(self) -> ProductStatus | None:
        """Active unless told otherwise; a group is listed while any of its items is active."""
        if not self.statuses:
            return "active"
        found: list[ProductStatus] = []
        for value in self.statuses:
            status = STATUSES.get(value.strip().lower())
            if status is None:
                return None
            found.append(status)
        if len(found) < self.items or "active" in found:
            return "active"
        return "draft" if "draft" in found else "archived"


def split_id(group_id: str, value: str) -> str:
    """The product id of one value (a colour) of a split group: the group id, `~`, the value in lower case with
    runs of other characters than letters and digits as `-` (`TS-1001~navy-blue`). An item without the value stays
    in the group's own product."""
    slug = _NOT_ALNUM.sub("-", value.casefold()).strip("-")
    return f"{group_id}{SPLIT_SEPARATOR}{slug}" if slug else group_id


def build_products(
    records: Iterable[FeedRecord],
    *,
    source: str,
    document_time: datetime,
    since: datetime | None = None,
    split_by: str | None = None,
) -> Generator[SourceProduct | SkippedProduct, None, None]:
    """Turn feed records into products: group variants, skip what cannot be a product, keep what changed since.
    With `split_by` (an attribute such as `color`), a group becomes one product per value of that attribute."""
    seen_ids: set[str] = set()
    groups: dict[str, _Draft] = {}
    split = normalize_field_name(split_by) if split_by else None

    def wanted(moment: datetime) -> bool:
        return since is None or moment >= since

    for record in records:
        if record.problem is not None:
            if wanted(document_time):
                yield SkippedProduct(None, record.problem[0], record.problem[1])
            continue
        group_id = record.first("item_group_id")
        if group_id:
            key = split_id(group_id, record.first(split)) if split else group_id
            draft = groups.get(key)
            if draft is None:
                draft = groups[key] = _Draft(key, record.ref)
                if key != group_id:
                    draft.attributes["item_group_id"] = group_id
            draft.absorb(record)
            continue
        item_id = record.first("id")
        draft = _Draft(item_id, record.ref)
        draft.absorb(record)
        if not item_id:
            if wanted(draft.updated_at or document_time):
                title = f" ({draft.title[:80]!r})" if draft.title else ""
                yield SkippedProduct(None, "missing_id", f"{record.ref}{title} has neither id nor item_group_id")
            continue
        if item_id in seen_ids:
            if wanted(draft.updated_at or document_time):
                yield SkippedProduct(None, "duplicate_id", f"{record.ref}: id {item_id[:80]!r} was listed before")
            continue
        seen_ids.add(item_id)
        item, moment = draft.finish(source, document_time)
        if wanted(moment):
            yield item

    for key, draft in groups.items():
        item, moment = draft.finish(source, document_time)
        if key in seen_ids:
            detail = f"{draft.ref}: item_group_id {key[:80]!r} is also the id of an ungrouped item"
            item = SkippedProduct(None, "duplicate_id", detail)
        if wanted(moment):
            yield item


# ---- where the document comes from -------------------------------------------------------------------------------


def guess_format(name: str, content_type: str | None = None, head: bytes = b"") -> FeedFormat:
    """The feed format from a file name, else a Content-Type, else the document's first bytes."""
    suffixes = [suffix.lower() for suffix in Path(name).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    if suffixes and suffixes[-1] in FORMAT_BY_SUFFIX:
        return FORMAT_BY_SUFFIX[suffixes[-1]]
    media = (content_type or "").split(";", 1)[0].strip().lower()
    for marker, fmt in FORMAT_BY_CONTENT_TYPE:
        if media and marker in media:
            return fmt
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if start.startswith(b"<"):
        return "google-merchant"
    if start.startswith((b"[", b"{")):
        return "json"
    first_line = start.split(b"\n", 1)[0]
    return "tsv" if b"\t" in first_line else "csv"


class _ResponseStream(io.RawIOBase):
    """An HTTP response body as a binary file, so the XML and CSV parsers pull it chunk by chunk."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.iter_bytes(CHUNK_SIZE)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
            except httpx.HTTPError as exc:
                raise SourceError(f"the connection broke while reading the feed: {type(exc).__name__}: {exc}") from None
        view = memoryview(buffer).cast("B")
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


@dataclass(frozen=True, slots=True)
class _Document:
    stream: io.BufferedReader[Any]
    name: str
    modified: datetime
    content_type: str | None = None
    charset: str | None = None


def _display(location: str) -> str:
    """A URL fit for messages: no credentials, no query string (feed URLs often carry an access key)."""
    parts = urlsplit(location)
    if parts.scheme.lower() not in ("http", "https"):
        return location
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _excerpt(response: httpx.Response) -> str:
    body = b""
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= ERROR_EXCERPT:
                break
    except httpx.HTTPError:
        pass
    text = _MARKUP.sub(" ", clean_text(body[: ERROR_EXCERPT * 4].decode("utf-8", "replace")))
    text = " ".join(text.split())[:ERROR_EXCERPT]
    return text or "(empty body)"


def _is_private_host(host: str) -> bool:
    """Whether a host name or address is (or resolves to) a loopback, private, link-local or reserved address."""
    host = host.strip("[]")
    if not host:
        return False
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return False  # unresolvable: the request itself fails with a clear error
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
    return any(
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
        for address in addresses
    )


class FeedConnector(HttpConnector):
    """A product feed (see the module docstring). Every read fetches and parses the whole document again."""

    kind = "feed"

    def __init__(
        self,
        source: SourceConfig,
        client: httpx.Client | None = None,
        *,
        sleep: Sleep = time.sleep,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        if not isinstance(source, FeedSource):
            raise ConfigError(f"source {source.name!r}: FeedConnector reads kind 'feed', not {source.kind!r}")
        self.source = source.name
        self._config = source
        super().__init__(client, timeout=source.timeout)
        self._sleep = sleep
        self._clock = clock
        location = source.url.strip()
        parts = urlsplit(location)
        scheme = parts.scheme.lower()
        self._url: str | None = None
        self._path: Path | None = None
        if scheme in ("http", "https"):
            if not parts.hostname:
                raise ConfigError(f"source {source.name!r}: field 'url': {_display(location)!r} names no host")
            self._url = location
        elif scheme == "file":
            self._path = Path(url2pathname(parts.path))
        elif scheme and len(scheme) > 1:
            raise ConfigError(
                f"source {source.name!r}: field 'url': unsupported scheme {scheme!r}; use a local path, a file:// "
                f"URL or an http(s):// URL"
            )
        else:
            self._path = Path(location).expanduser()
        self._what = f"feed source {self.source!r} ({_display(location)})"
        self._columns = ColumnMap(source.columns, source=source.name)

    def __repr__(self) -> str:
        return f"FeedConnector(source={self.source!r})"

    def iter_products(self, since: datetime | None = None) -> Generator[SourceProduct | SkippedProduct, None, None]:
        """Stream the feed's products (those updated at or after `since` when given); see the module docstring."""
        since_utc = parse_datetime(since) if since is not None else None
        with self._open() as document:
            try:
                records = self._records(document)
                products = build_products(
                    records,
                    source=self.source,
                    document_time=document.modified,
                    since=since_utc,
                    split_by=self._config.split_by,
                )
                try:
                    yield from products
                finally:
                    # Close the parsers while the document is still open (an abandoned read), not at garbage collection.
                    products.close()
                    records.close()
            except SourceError as exc:
                raise SourceError(f"{self._what}: {exc}") from None
            except (OSError, EOFError, zlib.error) as exc:
                raise SourceError(f"{self._what}: cannot read the document: {exc}") from None

    def get_product(self, product_id: str) -> SourceProduct | None:
        """Scan the feed for one product. None when the feed does not list it; raises `SkippedProduct` when it
        lists it but the record is unusable."""
        wanted = product_id.strip()
        stream = self.iter_products(None)
        try:
            for item in stream:
                if item.product_id != wanted:
                    continue
                if isinstance(item, SkippedProduct):
                    raise item
                return item
        finally:
            stream.close()
        return None

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        raise InvalidSignature(
            f"feeds do not send webhooks: source {self.source!r} is a feed, it is read on its sync schedule"
        )

    # ---- reading -------------------------------------------------------------------------------------------------

    def _records(self, document: _Document) -> Generator[FeedRecord, None, None]:
        fmt = self._config.format
        if fmt is None:
            fmt = guess_format(document.name, document.content_type, document.stream.peek(SNIFF_BYTES))
        if fmt == "google-merchant":
            return read_xml_records(document.stream, names=self._columns, max_item_bytes=MAX_ITEM_BYTES)
        if fmt == "json":
            return read_json_records(document.stream, columns=self._columns, require_columns=True)
        encoding = document.charset if document.charset and document.charset.lower() not in ("utf-8", "utf8") else None
        return read_delimited_records(
            document.stream,
            delimiter="\t" if fmt == "tsv" else ",",
            encoding=encoding or "utf-8-sig",
            columns=self._columns,
            strict=True,
        )

    @contextmanager
    def _open(self) -> Iterator[_Document]:
        with ExitStack() as stack:
            if self._url is not None:
                response = self._get()
                stack.callback(response.close)
                raw = io.BufferedReader(_ResponseStream(response), CHUNK_SIZE)
                modified = parse_datetime(_http_date(response.headers.get("Last-Modified"))) or self._clock()
                name = urlsplit(str(response.url)).path
                content_type = response.headers.get("Content-Type")
                charset = response.charset_encoding
            else:
                assert self._path is not None
                try:
                    handle = stack.enter_context(open(self._path, "rb"))
                    modified = datetime.fromtimestamp(os.fstat(handle.fileno()).st_mtime, UTC)
                except OSError as exc:
                    raise SourceError(f"{self._what}: cannot read the feed file: {exc.strerror or exc}") from None
                raw = io.BufferedReader(handle, CHUNK_SIZE)  # type: ignore[arg-type]
                name, content_type, charset = self._path.name, None, None
            try:
                compressed = raw.peek(2)[:2] == b"\x1f\x8b"
            except (OSError, SourceError) as exc:
                raise SourceError(f"{self._what}: cannot read the document: {exc}") from None
            inner = cast("IO[bytes]", gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw)
            refusal = (
                f"the document is larger than {MAX_DOCUMENT_BYTES // 1024**2} MB"
                + (" once decompressed" if compressed else "")
                + "; refused rather than read without end"
            )
            stream = io.BufferedReader(_Metered(inner, MAX_DOCUMENT_BYTES, refusal), CHUNK_SIZE)
            yield _Document(stream, name, modified, content_type, charset)

    def _fetch(self, client: httpx.Client) -> tuple[httpx.Response, bool]:
        """GET the feed as a stream, following redirects (CDNs use them) but never from a public host to a private
        address: a feed URL must not become a way to read the worker's own network. Returns the response and
        whether it came through a redirect."""
        assert self._url is not None
        origin_private = _is_private_host(urlsplit(self._url).hostname or "")
        response = client.send(client.build_request("GET", self._url), stream=True, follow_redirects=False)
        hops = 0
        while response.is_redirect and response.next_request is not None:
            target = response.next_request
            response.close()
            hops += 1
            if hops > MAX_REDIRECTS:
                raise SourceError(f"{self._what}: more than {MAX_REDIRECTS} redirects; giving up")
            if not origin_private and _is_private_host(target.url.host):
                raise SourceError(
                    f"{self._what}: redirected to a private address ({target.url.host}); refused, a public feed "
                    f"must not lead into the worker's own network"
                )
            response = client.send(target, stream=True, follow_redirects=False)
        return response, hops > 0

    def _get(self) -> httpx.Response:
        """GET the feed as a stream, retrying connection faults, 5xx and 429 briefly (`connectors.http.retrying`)."""
        assert self._url is not None
        # Redirects are followed by `_fetch`, one hop at a time, so each target is checked first.
        client = self._client
        target = Target(
            self._what, unreachable="the feed", refused="the server refused access ({status}); check the feed URL"
        )

        def attempt() -> httpx.Response:
            try:
                response, redirected = self._fetch(client)
            except httpx.TransportError as exc:
                raise unreachable(target, exc) from None
            except httpx.HTTPError as exc:
                raise SourceError(f"{self._what}: {type(exc).__name__}: {exc}") from None
            status = response.status_code
            if status < 300:
                return response
            # A redirect target's body is not ours to show (an internal page, a cloud metadata answer).
            excerpt = "(body not shown: the answer came through a redirect)" if redirected else _excerpt(response)
            response.close()
            retry_after = retry_after_seconds(response.headers.get("Retry-After")) if status == 429 else None
            raise error_for_status(status, target, excerpt=excerpt, retry_after=retry_after)

        return retrying(attempt, target, sleep=self._sleep)


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
