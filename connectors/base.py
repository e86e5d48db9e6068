"""What every connector shares: the normalized product, the webhook event, the connector protocol and the text
helpers that turn shop markup into plain catalog text. The paging strategies live in `connectors.paging`, on the
base and page loop of `ground.paging`.

Connectors know shops and nothing of Celery, the state database or the catalog API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final, Literal, Protocol, runtime_checkable

import html_text
from html_text import DOUBLE_NEWLINE_TAGS, NEWLINE_TAGS
from lxml import etree

from config.sources import ProductFilter
from ground.errors import SkippedProduct
from ground.limits import MAX_IMAGES

__all__ = [
    "MAX_PRODUCT_ID_LENGTH",
    "Connector",
    "ImageRef",
    "ProductDeletion",
    "ProductStatus",
    "ReadsDeletions",
    "ReportsNotes",
    "SkippedProduct",
    "SourceProduct",
    "Variant",
    "WebhookEvent",
    "WebhookTopic",
    "clean_text",
    "filter_reason",
    "html_to_text",
    "is_deletion_body",
    "json_payload",
    "normalize_images",
    "parse_datetime",
    "platform_id",
    "product_id_problem",
    "split_tags",
]


# The state database keys a product by (source, product id) in a column of this many characters.
MAX_PRODUCT_ID_LENGTH = 255

ProductStatus = Literal["active", "draft", "archived"]
# What a webhook asks of us, whatever the platform calls it.
WebhookTopic = Literal["upsert", "delete", "ping"]


@dataclass(frozen=True, slots=True)
class ImageRef:
    url: str
    alt: str | None = None


@dataclass(frozen=True, slots=True)
class Variant:
    """One purchasable variant of a shop product, as far as splitting it by an option needs: its option values
    (`(name, value)` in the shop's order), its own image and its price."""

    options: tuple[tuple[str, str], ...]
    image: ImageRef | None = None
    price: str | None = None


@dataclass(frozen=True, slots=True)
class SourceProduct:
    """One shop product, already normalized. `product_id` is the platform's id as a string."""

    source: str
    product_id: str
    updated_at: datetime
    status: ProductStatus
    title: str
    description: str = ""
    images: tuple[ImageRef, ...] = ()
    url: str | None = None
    vendor: str | None = None
    product_type: str | None = None
    tags: tuple[str, ...] = ()
    handle: str | None = None
    # WooCommerce categories (names and slugs) or Shopify collections (handles and titles), for source filters.
    categories: tuple[str, ...] = ()
    # Extra source fields (price, availability, ...) that a source setting may copy into catalog metadata.
    attributes: Mapping[str, str] = field(default_factory=dict)
    # Where the record came from (a GID, a feed line number): for error messages, never sent to the catalog.
    raw_ref: str | None = None
    # The shop's options (`(name, values)`) and variants, read only for a source that splits products by an option
    # (`split_by`, see `connectors.colourways`); never sent to the catalog.
    options: tuple[tuple[str, tuple[str, ...]], ...] = ()
    variants: tuple[Variant, ...] = ()

    def __post_init__(self) -> None:
        if self.updated_at.tzinfo is None:
            raise ValueError("SourceProduct.updated_at must be timezone-aware")


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A verified webhook delivery.

    `product` is set when the payload is a complete product (it becomes the desired row directly);
    when it is None for an upsert, the product must be fetched with `Connector.get_product`.
    """

    source: str
    topic: WebhookTopic
    product_id: str | None
    event_id: str | None = None
    triggered_at: datetime | None = None
    updated_at: datetime | None = None
    product: SourceProduct | None = None
    platform_topic: str = ""


@runtime_checkable
class Connector(Protocol):
    """A shop or feed. Implementations stream: memory is bounded by a page, never by the shop."""

    source: str

    def iter_products(self, since: datetime | None = None) -> Iterator[SourceProduct | SkippedProduct]:
        """Yield every product updated at or after `since` (all of them when None).

        An unusable record is yielded as a `SkippedProduct` (not raised) so the stream goes on;
        a failure of the whole read raises `SourceError`.
        """
        ...

    def get_product(self, product_id: str) -> SourceProduct | None:
        """Fetch one product, or None when the shop no longer has it."""
        ...

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """Check the signature over the raw bytes, then parse. Raises `InvalidSignature` or `SkippedProduct`."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@dataclass(frozen=True, slots=True)
class ProductDeletion:
    """A product the shop says was deleted, and when (its deletion event's time)."""

    source: str
    product_id: str
    deleted_at: datetime


@runtime_checkable
class ReadsDeletions(Protocol):
    """A connector that can list the products deleted since a moment (Shopify's `destroy` events), so an
    incremental run removes them without waiting for a full one."""

    def iter_deletions(self, since: datetime) -> Iterator[ProductDeletion]:
        """Yield every product deleted at or after `since`; a failed read raises `SourceError`."""
        ...


@runtime_checkable
class ReportsNotes(Protocol):
    """A connector that notes how a read went (`bulk_fallback`: the bulk export was unavailable, so it read page by
    page); the run adds the notes to its counts, where `status` shows them."""

    @property
    def notes(self) -> Mapping[str, int]: ...


# Elements that start a new line in a browser: their text must not run into the text around them. Inline elements
# (b, span, a, ...) add nothing, so `Bo<b>ld</b>` stays one word.
_BLOCK_TAGS: Final = frozenset(
    {*NEWLINE_TAGS, *DOUBLE_NEWLINE_TAGS, "td", "th", "section", "address", "caption", "center", "option"}
)
_SPACE = re.compile(r"\s+")
# Characters that tell markup from plain text; without them there is nothing to parse.
_MARKUP = re.compile(r"[<&]")
# Markup that appears only once entities are decoded (a feed that escaped its HTML twice): a tag as HTML writes one
# (a letter right after `<`), so decoded text like "a < b and c > d" is left alone, and a script with its content.
_REVEALED_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
_REVEALED_SCRIPT = re.compile(r"<\s*(script|style)\b[^>]*>.*?<\s*/\s*\1\s*>", re.IGNORECASE | re.DOTALL)


def html_to_text(markup: str | None) -> str:
    """Plain text from shop HTML, whitespace collapsed.

    libxml2 parses the markup (through `html_text`, which also drops scripts, styles, comments and processing
    instructions), so a `>` inside an attribute or a comment is never taken for the end of a tag, and entities are
    decoded exactly once: a double-escaped `&amp;lt;b&amp;gt;` stays the literal text `&lt;b&gt;`, and tags that
    decoding reveals (`&lt;b&gt;` in the markup) are dropped. Block elements and line breaks separate words; inline
    ones do not.
    """
    if not markup:
        return ""
    # libxml2 takes UTF-8: a lone surrogate (from broken JSON escapes) could not even be handed to it.
    markup = clean_text(markup)
    if _MARKUP.search(markup) is None:
        return _SPACE.sub(" ", markup).strip()
    tree = html_text.cleaner.clean_html(html_text.parse_html(markup))
    parts: list[str] = []
    # iterwalk instead of recursion: a hostile document may nest thousands of elements.
    for event, element in etree.iterwalk(tree, events=("start", "end")):
        if not isinstance(element.tag, str):
            continue
        block = element.tag in _BLOCK_TAGS
        if event == "start":
            if block:
                parts.append(" ")
            parts.append(element.text or "")
        else:
            if block:
                parts.append(" ")
            parts.append(element.tail or "")
    text = "".join(parts).replace("\xa0", " ")
    # Whoever shows the catalog's text may render it as HTML: markup revealed by decoding does not survive either.
    text = _REVEALED_TAG.sub("", _REVEALED_SCRIPT.sub(" ", text))
    return _SPACE.sub(" ", text).strip()


def filter_reason(product: SourceProduct, include: ProductFilter | None, exclude: ProductFilter | None) -> str | None:
    """Why a source's filter keeps `product` out of the catalog (the rule, for the operator), or None when it may go
    in. Every `include` field must match one of its values; any `exclude` value that matches keeps it out."""
    for name, patterns in include.fields().items() if include is not None else ():
        values = _filter_values(product, name)
        if not any(_matches(pattern, value) for pattern in patterns for value in values):
            shown = ", ".join(repr(value) for value in values[:5]) or "none"
            return f"include.{name} {list(patterns)} matches none of the product's ({shown})"
    for name, patterns in exclude.fields().items() if exclude is not None else ():
        for value in _filter_values(product, name):
            for pattern in patterns:
                if _matches(pattern, value):
                    return f"exclude.{name} {pattern!r} matches {value!r}"
    return None


def _filter_values(product: SourceProduct, name: str) -> tuple[str, ...]:
    if name == "tag":
        return product.tags
    if name in ("category", "collection"):
        return product.categories
    if name == "google_product_category":
        value = product.attributes.get("google_product_category")
    else:
        value = getattr(product, name)
    return (value,) if value else ()


@lru_cache(maxsize=1024)
def _pattern(pattern: str) -> re.Pattern[str]:
    # Only `*` is special: shop values hold brackets and question marks as plain text.
    return re.compile(".*".join(re.escape(part) for part in pattern.casefold().split("*")), re.DOTALL)


def _matches(pattern: str, value: str) -> bool:
    return _pattern(pattern).fullmatch(value.strip().casefold()) is not None


def normalize_images(images: Iterable[ImageRef], limit: int = MAX_IMAGES) -> tuple[ImageRef, ...]:
    """Keep source order, drop empty and repeated URLs, keep the first `limit`."""
    seen: set[str] = set()
    kept: list[ImageRef] = []
    for image in images:
        url = image.url.strip()
        if not url or url in seen:
            continue
        seen.add(url)
        kept.append(image if url == image.url else ImageRef(url, image.alt))
        if len(kept) == limit:
            break
    return tuple(kept)


def split_tags(tags: str | Iterable[Any] | None) -> tuple[str, ...]:
    """Tags from a comma-separated string or a list, trimmed, without empties or repeats."""
    if tags is None:
        return ()
    parts: Iterable[Any] = tags.split(",") if isinstance(tags, str) else tags
    out: list[str] = []
    for part in parts:
        tag = str(part).strip()
        if tag and tag not in out:
            out.append(tag)
    return tuple(out)


def parse_datetime(value: str | datetime | None, *, assume_utc: bool = True) -> datetime | None:
    """An aware UTC datetime from ISO-8601 (with `Z`, an offset, or none when `assume_utc`)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
    if parsed.tzinfo is None:
        if not assume_utc:
            return None
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # year 1 east of UTC, year 9999 west of it
        return None


# C0 controls and DEL: never part of an id (they end up in catalog URL paths and log lines).
_ID_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Controls that carry no meaning in shop text (tab and line breaks do); PostgreSQL refuses NUL in any text value.
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Half of a UTF-16 pair on its own: JSON may escape one (`"\\ud800"`), but no UTF-8 encoder or database takes it.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def product_id_problem(product_id: str, *, max_length: int = MAX_PRODUCT_ID_LENGTH) -> str | None:
    """Why `product_id` cannot key a product (None when it can): one bad record must be skipped, not fail a page
    write on PostgreSQL or a URL path at the catalog."""
    if not product_id.strip():
        return "the id is blank"
    if len(product_id) > max_length:
        return f"the id has {len(product_id)} characters, more than {max_length}"
    if _SURROGATE.search(product_id):
        return "the id is not valid Unicode (it holds a lone surrogate)"
    if _ID_CONTROL.search(product_id):
        return "the id holds control characters"
    return None


def clean_text(value: str) -> str:
    """Shop text fit to store and send: lone surrogates become U+FFFD, NUL and other meaningless control characters
    are dropped. Tabs and line breaks stay."""
    if _SURROGATE.search(value):
        value = _SURROGATE.sub("\ufffd", value)
    return _TEXT_CONTROL.sub("", value)


# Shop ids are positive 64-bit integers (Shopify and WooCommerce alike).
_MAX_PLATFORM_ID = 2**63 - 1
_ASCII_DIGITS = re.compile(r"[0-9]{1,19}")


def platform_id(value: Any) -> str | None:
    """A shop's numeric id (an int or a string of ASCII digits) in canonical form, or None. `"²"` passes
    `str.isdigit` and 10,000 digits pass it too, but neither is an id (and `int()` raises on both)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value) if 0 < value <= _MAX_PLATFORM_ID else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not _ASCII_DIGITS.fullmatch(text):
        return None
    number = int(text)
    return str(number) if 0 < number <= _MAX_PLATFORM_ID else None


def is_deletion_body(payload: Mapping[str, Any]) -> bool:
    """Whether a body sent under a delete topic can be a deletion: the shops send `{"id": …}` and nothing else.
    Only the body is signed, not the topic header: a signed product body (an id and more) re-sent under a delete
    topic proves a product state, not a deletion, and is read as the update it is. A body without an id is left
    to the deletion path, which refuses it."""
    return "id" not in payload or set(payload) == {"id"}


def json_payload(body: bytes, what: str) -> dict[str, Any]:
    """A webhook body as a JSON object; anything else (invalid UTF-8 or JSON, a number too long to convert, nesting
    too deep to parse) is a `SkippedProduct` with reason `malformed_payload`."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise SkippedProduct(None, "malformed_payload", f"{what} body is not usable JSON: {str(exc)[:120]}") from None
    if not isinstance(payload, dict):
        raise SkippedProduct(None, "malformed_payload", f"{what} body is not a JSON object")
    return payload
