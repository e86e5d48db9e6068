"""The emulated Shopify shop's products: a seeded, deterministic generator, a compact store with the orderings the
APIs page over, the Shopify search-syntax filter (`updated_at:>'…' status:active`), and the REST, storefront and
webhook JSON shapes.

Memory stays modest for 20,000+ products because generated products are never kept: the store holds only a small
skeleton per product (created/updated time, status) and rebuilds a full `Product` from `(seed, count, index)` on
demand (an LRU cache keeps the hot ones). Edited and created products are full records held in `_overrides`;
records are immutable, so a reference to one is a snapshot (bulk operations rely on that).
"""

from __future__ import annotations

import base64
import bisect
import functools
import json
import random
import re
import threading
import unicodedata
import zlib
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

__all__ = [
    "SORT_KEYS",
    "Collection",
    "MediaItem",
    "Page",
    "Product",
    "ProductFilter",
    "ProductStore",
    "SearchQueryError",
    "Variant",
    "gid",
    "graphql_time",
    "parse_gid",
    "product_collections",
    "rest_product",
    "rest_time",
    "storefront_product",
    "webhook_product",
]

ProductStatus = Literal["ACTIVE", "DRAFT", "ARCHIVED"]

# Generated products' creation times spread over this window, so `updated_at:>` filters have something to cut.
SHOP_EPOCH_START = int(datetime(2023, 9, 1, tzinfo=UTC).timestamp())
SHOP_EPOCH_END = int(datetime(2025, 6, 30, tzinfo=UTC).timestamp())
# A few instants shared by many products (a merchant's bulk edit): UPDATED_AT paging must break ties by id.
BULK_EDIT_INSTANTS = tuple(int(datetime(2025, month, 15, 9, 30, tzinfo=UTC).timestamp()) for month in (1, 2, 3, 4, 5))
# The REST APIs print times in the shop's zone, like the EST shops in Shopify's documentation fixtures.
SHOP_TIMEZONE = timezone(timedelta(hours=-5))
# Real numeric ids are large and sparse; distinct bases keep product, media, image and variant ids apart.
PRODUCT_ID_BASE = 8_046_210_000_000
PRODUCT_ID_STEP = 1_024
MEDIA_ID_BASE = 31_277_000_000_000
IMAGE_ID_BASE = 40_118_000_000_000
VARIANT_ID_BASE = 45_902_000_000_000
COLLECTION_ID_BASE = 29_410_000_000
# Created (not generated) products draw media, image and variant ids from these counters, above generated ranges.
CREATED_MEDIA_ID_BASE = 39_000_000_000_000
CREATED_IMAGE_ID_BASE = 44_000_000_000_000
CREATED_VARIANT_ID_BASE = 49_000_000_000_000
# Per product: at most 15 images plus one video, so 16 media slots; at most 4 variants.
MEDIA_SLOTS = 16
VARIANT_SLOTS = 4
MAX_IMAGES = 15
# Status shares of a typical shop: mostly active.
STATUS_WEIGHTS: tuple[tuple[ProductStatus, float], ...] = (("ACTIVE", 0.80), ("DRAFT", 0.12), ("ARCHIVED", 0.08))
# How many generated products to keep built; a GraphQL page is at most 250.
GENERATED_CACHE_SIZE = 4_096
CDN_BASE = "https://cdn.shopify.com/s/files/1/0658/4201/8001/files"

STATUSES: tuple[ProductStatus, ...] = ("ACTIVE", "DRAFT", "ARCHIVED")
_STATUS_CODE: dict[str, int] = {name: code for code, name in enumerate(STATUSES)}
SortKey = Literal["UPDATED_AT", "ID", "CREATED_AT"]
SORT_KEYS: tuple[SortKey, ...] = ("UPDATED_AT", "ID", "CREATED_AT")


@dataclass(frozen=True, slots=True)
class MediaItem:
    """A product medium: an image (`MediaImage` + legacy `ProductImage`) or a video with a preview image."""

    id: int
    kind: Literal["IMAGE", "VIDEO"]
    url: str
    alt: str | None
    width: int
    height: int
    # The legacy REST `ProductImage` id (0 for videos, which REST does not list).
    image_id: int


@dataclass(frozen=True, slots=True)
class Variant:
    id: int
    title: str
    price: str
    sku: str
    inventory_quantity: int
    position: int


@dataclass(frozen=True, slots=True)
class Product:
    id: int
    title: str
    handle: str
    description_html: str
    vendor: str
    product_type: str
    status: ProductStatus
    tags: tuple[str, ...]
    created_at: int
    updated_at: int
    published_at: int | None
    media: tuple[MediaItem, ...]
    variants: tuple[Variant, ...]

    @property
    def images(self) -> tuple[MediaItem, ...]:
        return tuple(item for item in self.media if item.kind == "IMAGE")


@dataclass(frozen=True, slots=True)
class Collection:
    id: int
    handle: str
    title: str


# Collections a generated shop has besides one per product type: (handle, title, the tag that puts a product in it).
_TAG_COLLECTIONS = (("sale", "Sale", "sale"), ("new-arrivals", "New arrivals", "new"))


def product_collections(product: Product) -> tuple[Collection, ...]:
    """The collections a product is in: its product type's (`dress` for `Dress`), and `sale` / `new-arrivals` by
    tag. Derived, not stored, so every generated or edited product has them."""
    found: list[Collection] = []
    if product.product_type:
        handle = _slug(product.product_type)
        number = COLLECTION_ID_BASE + zlib.crc32(handle.encode()) % 100_000
        found.append(Collection(number, handle, product.product_type))
    for position, (handle, title, tag) in enumerate(_TAG_COLLECTIONS):
        if tag in product.tags:
            found.append(Collection(COLLECTION_ID_BASE + 100_000 + position, handle, title))
    return tuple(found)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of an ordering: the products and the sort key of each (for cursors)."""

    items: list[Product]
    keys: list[tuple[int, int]]
    has_next: bool
    has_previous: bool


# ----------------------------------------------------------------------------------------------------------------
# Ids and times


def gid(kind: str, number: int) -> str:
    return f"gid://shopify/{kind}/{number}"


_GID = re.compile(r"^gid://shopify/(\w+)/(\d+)$")


def parse_gid(value: str) -> tuple[str, int] | None:
    match = _GID.match(value.strip())
    return (match.group(1), int(match.group(2))) if match else None


def graphql_time(epoch: int | None) -> str | None:
    """Admin GraphQL `DateTime`: UTC with a `Z`, whole seconds."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rest_time(epoch: int | None) -> str | None:
    """REST time: ISO 8601 in the shop's zone with its offset (`2024-04-02T08:59:11-05:00`)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, SHOP_TIMEZONE).isoformat()


def parse_time(text: str) -> int:
    """Epoch seconds from an ISO date or date-time (a bare date or time without zone is UTC). Raises ValueError."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


# ----------------------------------------------------------------------------------------------------------------
# Generation

# fmt: off
_ADJECTIVES = (
    "Classic", "Linen", "Organic", "Vintage", "Oversized", "Slim", "Merino", "Recycled", "Silk", "Denim",
    "Ünïcörn", "Été", "Nordic", "Velvet", "Quilted", "Ribbed", "Cropped", "Pleated", "Waxed", "Striped",
)
_NOUNS = (
    "Dress", "T-Shirt", "Sneakers", "Sunglasses", "Cap", "Jacket", "Hoodie", "Scarf", "Jeans", "Sandals",
    "Kimono", "Trench", "Beanie", "Blazer", "Skirt", "Loafers", "Cardigan", "Parka", "Tote", "Watch",
)
# Unicode the connector must carry through untouched: accents, CJK, RTL, emoji, typographic quotes, markup-like text.
_FLOURISHES = (
    "", "", "", "", "", "", " « Soleil »", " 着物", " – Édition limitée", " 👟", " فستان", " Платье",
    " <Limited> & Co", " ‘Pro’", " Ø 42mm", " 春夏", " Größe M", " ñandú",
)
_VENDORS = (
    "Acme Apparel", "Maison Lumière", "Nordlys", "東京ストリート", "Café & Co", "Greenway Goods", "Ōkami Optics",
)
_PRODUCT_TYPES = ("Dress", "T-Shirt", "Sneakers", "Sunglasses", "Hat", "Jacket", "Jewelry", "Bag", "")
_TAGS = (
    "summer", "winter", "new", "sale", "cotton", "eco friendly", "limited", "bestseller", "unisex", "été",
    "kids", "vegan", "gift", "try-on",
)
_ALTS = ("Front view", "Back view", "Detail of the fabric", "Model wearing it", "Côté gauche", "On a white background")
# fmt: on
_SIZES = ("S", "M", "L", "XL")
_DIMENSIONS = ((2048, 2048), (1200, 1600), (1600, 1200), (800, 800), (3000, 4000))
_PARAGRAPHS = (
    "Soft &amp; light {noun} made for long days.",
    "Caf&eacute; au lait tones with a relaxed fit &mdash; wear it your way.",
    "Our best-seller&#8217;s new look: <strong>better <em>seams</em></strong>, same price.",
    "Machine wash at 30&deg;C. Do not tumble dry.",
    "Designed in Lyon, made in Porto.&nbsp;Fair wages, short supply chain.",
    "5 &lt; 6 &amp;&amp; 7 &gt; 3: sizes run small, order one up.",
    "日本製の生地を使用しています。",
)


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-") or "product"


def _rng(seed: int, index: int) -> random.Random:
    return random.Random(seed * 1_000_003 + index)


def _skeleton(rng: random.Random, count: int, index: int) -> tuple[int, int, ProductStatus]:
    """Creation time (rising with the index, so ids follow creation order), update time, status."""
    span = SHOP_EPOCH_END - SHOP_EPOCH_START - 30 * 86_400
    slot = max(span // max(count, 1), 1)
    created = SHOP_EPOCH_START + index * slot + rng.randrange(slot)
    roll = rng.random()
    if roll < 0.05:
        later = [instant for instant in BULK_EDIT_INSTANTS if instant >= created]
        updated = rng.choice(later) if later else created
    elif roll < 0.15:
        updated = created
    else:
        updated = created + int((SHOP_EPOCH_END - created) * rng.random() ** 2)
    status_roll = rng.random()
    status: ProductStatus = "ARCHIVED"
    cumulative = 0.0
    for name, weight in STATUS_WEIGHTS:
        cumulative += weight
        if status_roll < cumulative:
            status = name
            break
    return created, updated, status


def _description(rng: random.Random, noun: str) -> str:
    roll = rng.random()
    if roll < 0.08:
        return ""
    parts = [f"<p>{rng.choice(_PARAGRAPHS).format(noun=noun.lower())}</p>" for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.4:
        items = "".join(f"<li>Size <b>{size}</b></li>" for size in rng.sample(_SIZES, rng.randint(1, 3)))
        parts.append(f'<div class="specs"><ul>{items}</ul></div>')
    if rng.random() < 0.1:
        parts.append("<script>window.dataLayer = window.dataLayer || []; dataLayer.push({'x': 1 < 2});</script>")
    if rng.random() < 0.05:
        parts.append("<style>.specs li { color: red; }</style>")
    if rng.random() < 0.1:
        parts.append("<table><tr><td>Chest</td><td>96&nbsp;cm</td></tr></table>")
    return "\n".join(parts)


def _image_count(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.05:
        return 0
    if roll < 0.15:
        return 1
    if roll < 0.80:
        return rng.randint(4, 10)
    return rng.randint(11, MAX_IMAGES)


@functools.lru_cache(maxsize=GENERATED_CACHE_SIZE)
def generate_product(seed: int, count: int, index: int) -> Product:
    """The generated product at `index` of a `count`-product shop with `seed`: always the same product."""
    rng = _rng(seed, index)
    created, updated, status = _skeleton(rng, count, index)
    product_id = PRODUCT_ID_BASE + index * PRODUCT_ID_STEP
    noun = rng.choice(_NOUNS)
    title = f"{rng.choice(_ADJECTIVES)} {noun}{rng.choice(_FLOURISHES)}"
    handle = f"{_slug(title)}-{index + 1}"
    media: list[MediaItem] = []
    for position in range(_image_count(rng)):
        if media and rng.random() < 0.08:
            url = rng.choice(media).url  # merchants upload the same picture twice
        else:
            url = f"{CDN_BASE}/{handle}-{position + 1}.jpg?v={created}"
        alt_roll = rng.random()
        alt = None if alt_roll < 0.4 else "" if alt_roll < 0.5 else rng.choice(_ALTS)
        width, height = rng.choice(_DIMENSIONS)
        slot = index * MEDIA_SLOTS + position
        media.append(MediaItem(MEDIA_ID_BASE + slot, "IMAGE", url, alt, width, height, IMAGE_ID_BASE + slot))
    if rng.random() < 0.06:
        slot = index * MEDIA_SLOTS + MEDIA_SLOTS - 1
        video = MediaItem(
            MEDIA_ID_BASE + slot, "VIDEO", f"{CDN_BASE}/preview_images/{handle}-video.jpg", None, 1280, 720, 0
        )
        media.insert(rng.randint(0, len(media)), video)
    variant_count = rng.choice((1, 1, 2, 3, 4))
    base_price = rng.randint(9, 250)
    variants = tuple(
        Variant(
            id=VARIANT_ID_BASE + index * VARIANT_SLOTS + position,
            title="Default Title" if variant_count == 1 else _SIZES[position],
            price=f"{base_price + position * 5}.{rng.choice(('00', '50', '99'))}",
            sku="" if rng.random() < 0.2 else f"SKU-{index + 1}-{position + 1}",
            inventory_quantity=rng.randint(0, 40),
            position=position + 1,
        )
        for position in range(variant_count)
    )
    tags = tuple(sorted(set(rng.sample(_TAGS, rng.randint(0, 5)))))
    published = created + rng.randint(0, 86_400) if status == "ACTIVE" else None
    return Product(
        id=product_id,
        title=title,
        handle=handle,
        description_html=_description(rng, noun),
        vendor=rng.choice(_VENDORS),
        product_type=rng.choice(_PRODUCT_TYPES),
        status=status,
        tags=tags,
        created_at=created,
        updated_at=updated,
        published_at=published,
        media=tuple(media),
        variants=variants,
    )


# ----------------------------------------------------------------------------------------------------------------
# Search syntax: https://shopify.dev/docs/api/usage/search-syntax (the subset the emulator understands)


class SearchQueryError(ValueError):
    """A `query:` argument the emulator cannot understand (bad date, bad number, unbalanced quotes)."""


_DATE_FIELDS = {"updated_at", "created_at", "published_at"}
_TEXT_FIELDS = {"vendor", "product_type", "handle", "title", "tag"}
_SEARCH_TOKEN = re.compile(r"""(-?)(?:(\w+):(>=|<=|>|<)?)?('[^']*'|"[^"]*"|[^\s'"]+)|(\S)""")


@dataclass(frozen=True, slots=True)
class _Term:
    field: str
    op: str  # "=", ">", ">=", "<", "<="
    value: str | int | frozenset[str]
    negated: bool = False


@dataclass(slots=True)
class ProductFilter:
    """A parsed `query:` string: OR-groups of AND-ed terms, plus warnings for terms Shopify would ignore."""

    groups: list[list[_Term]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    text: str = ""

    @classmethod
    def parse(cls, text: str | None) -> ProductFilter:
        result = cls(text=text or "")
        if not text or not text.strip():
            return result
        group: list[_Term] = []
        for match in _SEARCH_TOKEN.finditer(text):
            negated, name, op, raw, stray = match.groups()
            if stray is not None:
                raise SearchQueryError(f"unbalanced quote in query {text!r}")
            value = raw[1:-1] if raw[:1] in "'\"" and len(raw) >= 2 else raw
            if name is None:
                upper = value.upper()
                if upper == "OR" and not negated:
                    if group:
                        result.groups.append(group)
                    group = []
                    continue
                if upper in {"AND", "NOT"} and not negated:
                    continue
                group.append(_Term("title", "~", value.lower(), bool(negated)))
                continue
            term = result._term(name.lower(), op or "=", value, bool(negated))
            if term is not None:
                group.append(term)
        if group:
            result.groups.append(group)
        return result

    def _term(self, name: str, op: str, value: str, negated: bool) -> _Term | None:
        if name in _DATE_FIELDS:
            try:
                return _Term(name, op, parse_time(value), negated)
            except ValueError as exc:
                raise SearchQueryError(f"{name}: {value!r} is not an ISO 8601 date or date-time") from exc
        if name == "id":
            parsed = parse_gid(value)
            try:
                number = parsed[1] if parsed is not None else int(value)
            except ValueError as exc:
                raise SearchQueryError(f"id: {value!r} is not a product id") from exc
            return _Term(name, op, number, negated)
        if name == "status":
            wanted = frozenset(part.strip().upper() for part in value.split(",") if part.strip())
            unknown = wanted - set(STATUSES)
            if unknown:
                self.warnings.append({"field": "status", "message": f"Invalid value: {sorted(unknown)}."})
            return _Term(name, "=", wanted, negated)
        if name in _TEXT_FIELDS:
            return _Term(name, "=", value.lower(), negated)
        # Shopify ignores a filter it does not know and says so in `extensions.search`.
        self.warnings.append({"field": name, "message": "Invalid search field for this query."})
        return None

    @property
    def empty(self) -> bool:
        return not self.groups

    def needs_full_record(self) -> bool:
        return any(term.field in _TEXT_FIELDS or term.op == "~" for group in self.groups for term in group)

    def bounds(self, name: str) -> tuple[int | None, int | None]:
        """Inclusive [low, high] implied for `name` by a single AND group (None: unbounded), to narrow scans."""
        if len(self.groups) != 1:
            return None, None
        low: int | None = None
        high: int | None = None
        for term in self.groups[0]:
            if term.field != name or term.negated or not isinstance(term.value, int):
                continue
            value = term.value
            if term.op in {">", ">=", "="}:
                candidate = value + 1 if term.op == ">" else value
                low = candidate if low is None else max(low, candidate)
            if term.op in {"<", "<=", "="}:
                candidate = value - 1 if term.op == "<" else value
                high = candidate if high is None else min(high, candidate)
        return low, high

    def matches(self, skeleton: tuple[int, int, int, str], load: Callable[[], Product]) -> bool:
        """`skeleton` = (id, created_at, updated_at, status); `load` builds the full record only if a term needs it."""
        if not self.groups:
            return True
        product: list[Product] = []

        def full() -> Product:
            if not product:
                product.append(load())
            return product[0]

        return any(all(_term_matches(term, skeleton, full) != term.negated for term in group) for group in self.groups)


def _compare(left: int, op: str, right: int) -> bool:
    if op == ">":
        return left > right
    if op == ">=":
        return left >= right
    if op == "<":
        return left < right
    if op == "<=":
        return left <= right
    return left == right


def _term_matches(term: _Term, skeleton: tuple[int, int, int, str], full: Callable[[], Product]) -> bool:
    product_id, created, updated, status = skeleton
    if term.field == "status":
        assert isinstance(term.value, frozenset)
        return status in term.value
    if term.field in {"id", "created_at", "updated_at", "published_at"}:
        assert isinstance(term.value, int)
        if term.field == "published_at":
            published = full().published_at
            return published is not None and _compare(published, term.op, term.value)
        left = {"id": product_id, "created_at": created, "updated_at": updated}[term.field]
        return _compare(left, term.op, term.value)
    assert isinstance(term.value, str)
    record = full()
    if term.op == "~":
        return term.value in record.title.lower()
    if term.field == "tag":
        return term.value in (tag.lower() for tag in record.tags)
    actual = {"vendor": record.vendor, "product_type": record.product_type, "handle": record.handle}.get(
        term.field, record.title
    )
    return actual.lower() == term.value


# ----------------------------------------------------------------------------------------------------------------
# The store


def _sort_value(sort: SortKey, product_id: int, created: int, updated: int) -> int:
    if sort == "UPDATED_AT":
        return updated
    if sort == "CREATED_AT":
        return created
    return product_id


class ProductStore:
    """The shop's products, with the three orderings the APIs page over. Thread-safe; records are immutable."""

    def __init__(self, count: int, seed: int) -> None:
        if count < 0:
            raise ValueError("the product count must be zero or more")
        self.count = count
        self.seed = seed
        self._lock = threading.RLock()
        self._created = array("q")
        self._updated = array("q")
        self._status = bytearray()
        for index in range(count):
            created, updated, status = _skeleton(_rng(seed, index), count, index)
            self._created.append(created)
            self._updated.append(updated)
            self._status.append(_STATUS_CODE[status])
        self._overrides: dict[int, Product] = {}
        self._deleted: set[int] = set()
        ids = [PRODUCT_ID_BASE + index * PRODUCT_ID_STEP for index in range(count)]
        self._orders: dict[SortKey, list[tuple[int, int]]] = {
            "ID": [(pid, pid) for pid in ids],
            "CREATED_AT": sorted((self._created[i], ids[i]) for i in range(count)),
            "UPDATED_AT": sorted((self._updated[i], ids[i]) for i in range(count)),
        }
        self._next_id = PRODUCT_ID_BASE + count * PRODUCT_ID_STEP
        self._next_media_id = CREATED_MEDIA_ID_BASE
        self._next_image_id = CREATED_IMAGE_ID_BASE
        self._next_variant_id = CREATED_VARIANT_ID_BASE

    # -- reading ------------------------------------------------------------------------------------------------

    def _index(self, product_id: int) -> int | None:
        offset = product_id - PRODUCT_ID_BASE
        if offset < 0 or offset % PRODUCT_ID_STEP:
            return None
        index = offset // PRODUCT_ID_STEP
        return index if index < self.count else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._orders["ID"])

    def get(self, product_id: int) -> Product | None:
        with self._lock:
            if product_id in self._deleted:
                return None
            record = self._overrides.get(product_id)
            if record is not None:
                return record
            index = self._index(product_id)
        return None if index is None else generate_product(self.seed, self.count, index)

    def skeleton(self, product_id: int) -> tuple[int, int, int, str] | None:
        """(id, created_at, updated_at, status) without building the product."""
        with self._lock:
            if product_id in self._deleted:
                return None
            record = self._overrides.get(product_id)
            if record is not None:
                return record.id, record.created_at, record.updated_at, record.status
            index = self._index(product_id)
            if index is None:
                return None
            return product_id, self._created[index], self._updated[index], STATUSES[self._status[index]]

    def _matching(self, product_id: int, product_filter: ProductFilter | None) -> bool:
        if product_filter is None or product_filter.empty:
            return True
        skeleton = self.skeleton(product_id)
        if skeleton is None:
            return False

        def load() -> Product:
            product = self.get(product_id)
            if product is None:
                raise KeyError(product_id)
            return product

        return product_filter.matches(skeleton, load)

    def _range(self, sort: SortKey, product_filter: ProductFilter | None) -> tuple[int, int]:
        """Index range of the ordering that can match, from the filter's bounds on the sort field."""
        order = self._orders[sort]
        if product_filter is None:
            return 0, len(order)
        field_name = {"UPDATED_AT": "updated_at", "CREATED_AT": "created_at", "ID": "id"}[sort]
        low, high = product_filter.bounds(field_name)
        start = 0 if low is None else bisect.bisect_left(order, (low, -1))
        end = len(order) if high is None else bisect.bisect_right(order, (high, 2**62))
        return start, max(start, end)

    def page(
        self,
        sort: SortKey,
        *,
        reverse: bool = False,
        first: int | None = None,
        last: int | None = None,
        after: tuple[int, int] | None = None,
        before: tuple[int, int] | None = None,
        product_filter: ProductFilter | None = None,
    ) -> Page:
        """A Relay page over `sort` (ties by id): keyset cursors, so edits during paging never skip a product."""
        with self._lock:
            order = self._orders[sort]
            lo, hi = self._range(sort, product_filter)
            # Positions in the ascending list; `after`/`before` are in the direction of travel.
            if not reverse:
                if after is not None:
                    lo = max(lo, bisect.bisect_right(order, after))
                if before is not None:
                    hi = min(hi, bisect.bisect_left(order, before))
                sequence = range(lo, hi)
            else:
                if after is not None:
                    hi = min(hi, bisect.bisect_left(order, after))
                if before is not None:
                    lo = max(lo, bisect.bisect_right(order, before))
                sequence = range(hi - 1, lo - 1, -1)
            full_lo, full_hi = self._range(sort, product_filter)
            if last is not None and first is None:
                picked, more_before = self._take(order, reversed(sequence), last, product_filter)
                picked.reverse()
                outside = range(hi, full_hi) if not reverse else range(lo - 1, full_lo - 1, -1)
                has_next = self._any(order, outside, product_filter)
                has_previous = more_before
            else:
                limit = first if first is not None else len(sequence)
                picked, more_after = self._take(order, iter(sequence), limit, product_filter)
                if last is not None:
                    picked = picked[-last:]
                outside = range(lo - 1, full_lo - 1, -1) if not reverse else range(hi, full_hi)
                has_previous = self._any(order, outside, product_filter)
                has_next = more_after
            keys = [order[position] for position in picked]
        pairs = [(key, self.get(key[1])) for key in keys]
        kept = [(key, item) for key, item in pairs if item is not None]  # deleted since the keys were read
        return Page([item for _, item in kept], [key for key, _ in kept], has_next, has_previous)

    def _take(
        self, order: list[tuple[int, int]], positions: Iterator[int], limit: int, product_filter: ProductFilter | None
    ) -> tuple[list[int], bool]:
        picked: list[int] = []
        for position in positions:
            if not self._matching(order[position][1], product_filter):
                continue
            if len(picked) == limit:
                return picked, True
            picked.append(position)
        return picked, False

    def _any(self, order: list[tuple[int, int]], positions: range, product_filter: ProductFilter | None) -> bool:
        return any(self._matching(order[position][1], product_filter) for position in positions)

    def matching_ids(self, sort: SortKey, *, reverse: bool, product_filter: ProductFilter | None) -> list[int]:
        """Ids in order (for a bulk operation's snapshot): 8 bytes a product."""
        with self._lock:
            order = self._orders[sort]
            lo, hi = self._range(sort, product_filter)
            positions = range(hi - 1, lo - 1, -1) if reverse else range(lo, hi)
            return [order[p][1] for p in positions if self._matching(order[p][1], product_filter)]

    def count_matching(self, product_filter: ProductFilter | None, limit: int | None = None) -> int:
        with self._lock:
            lo, hi = self._range("ID", product_filter)
            order = self._orders["ID"]
            total = 0
            for position in range(lo, hi):
                if self._matching(order[position][1], product_filter):
                    total += 1
                    if limit is not None and total >= limit:
                        break
            return total

    def snapshot(self, product_ids: Sequence[int]) -> list[int | Product]:
        """Stable references: a generated product never changes, and edited ones are immutable records."""
        with self._lock:
            refs: list[int | Product] = []
            for product_id in product_ids:
                record = self._overrides.get(product_id)
                if record is not None:
                    refs.append(record)
                elif product_id not in self._deleted:
                    refs.append(product_id)
            return refs

    def resolve(self, ref: int | Product) -> Product | None:
        if isinstance(ref, Product):
            return ref
        index = self._index(ref)
        return None if index is None else generate_product(self.seed, self.count, index)

    def iter_products(self, sort: SortKey, *, reverse: bool, product_filter: ProductFilter | None) -> Iterator[Product]:
        for ref in self.snapshot(self.matching_ids(sort, reverse=reverse, product_filter=product_filter)):
            product = self.resolve(ref)
            if product is not None:
                yield product

    def offset_page(self, *, offset: int, limit: int, product_filter: ProductFilter | None) -> list[Product]:
        """Products in id order from `offset` (the storefront's page numbers)."""
        with self._lock:
            order = self._orders["ID"]
            ids: list[int] = []
            skipped = 0
            for _, product_id in order:
                if not self._matching(product_id, product_filter):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                ids.append(product_id)
                if len(ids) == limit:
                    break
        return [product for product in (self.get(pid) for pid in ids) if product is not None]

    # -- writing ------------------------------------------------------------------------------------------------

    def _put(self, record: Product, previous: Product | None) -> None:
        """Store `record` and move it in the orderings. Caller holds the lock."""
        if previous is not None:
            self._remove_keys(previous)
        self._overrides[record.id] = record
        for sort in SORT_KEYS:
            bisect.insort(
                self._orders[sort], (_sort_value(sort, record.id, record.created_at, record.updated_at), record.id)
            )

    def _remove_keys(self, record: Product) -> None:
        for sort in SORT_KEYS:
            order = self._orders[sort]
            key = (_sort_value(sort, record.id, record.created_at, record.updated_at), record.id)
            position = bisect.bisect_left(order, key)
            if position < len(order) and order[position] == key:
                del order[position]

    def _media(self, images: Sequence[Mapping[str, Any] | str], keep: Sequence[MediaItem]) -> tuple[MediaItem, ...]:
        """New media from `images` (URLs or {src|url, alt, width, height}); known URLs keep their ids."""
        known = {item.url: item for item in keep if item.kind == "IMAGE"}
        media: list[MediaItem] = []
        for entry in images:
            spec: Mapping[str, Any] = {"src": entry} if isinstance(entry, str) else entry
            url = spec.get("src") or spec.get("url")
            if not isinstance(url, str) or not url.strip():
                raise ValueError("every image needs a non-empty 'src' (or 'url')")
            alt = spec.get("alt", spec.get("altText"))
            if alt is not None and not isinstance(alt, str):
                raise ValueError("an image 'alt' must be a string or null")
            old = known.get(url)
            try:
                width = int(spec.get("width") or (old.width if old else 1024))
                height = int(spec.get("height") or (old.height if old else 1024))
            except (TypeError, ValueError) as exc:
                raise ValueError("image width and height must be integers") from exc
            if old is not None:
                keep_alt = "alt" not in spec and "altText" not in spec
                media.append(replace(old, alt=old.alt if keep_alt else alt, width=width, height=height))
                continue
            media.append(MediaItem(self._next_media_id, "IMAGE", url, alt, width, height, self._next_image_id))
            self._next_media_id += 1
            self._next_image_id += 1
        if len(media) > 250:
            raise ValueError("a product may have at most 250 images")
        return tuple(media)

    def create(self, fields: Mapping[str, Any], *, now: int) -> Product:
        changes = normalize_fields(fields)
        title = changes.get("title")
        if not isinstance(title, str) or not title.strip():
            raise ValueError("a new product needs a non-empty 'title'")
        with self._lock:
            product_id = self._next_id
            self._next_id += PRODUCT_ID_STEP
            status: ProductStatus = changes.get("status", "ACTIVE")
            handle = changes.get("handle") or f"{_slug(title)}-{product_id}"
            variant = Variant(self._next_variant_id, "Default Title", "0.00", "", 0, 1)
            self._next_variant_id += 1
            record = Product(
                id=product_id,
                title=title,
                handle=handle,
                description_html=changes.get("description_html", ""),
                vendor=changes.get("vendor", ""),
                product_type=changes.get("product_type", ""),
                status=status,
                tags=changes.get("tags", ()),
                created_at=now,
                updated_at=now,
                published_at=now if status == "ACTIVE" else None,
                media=self._media(changes.get("images", ()), ()),
                variants=(variant,),
            )
            self._put(record, None)
            return record

    def update(self, product_id: int, fields: Mapping[str, Any], *, now: int) -> Product | None:
        """Apply partial changes and bump `updated_at` (at least one second, so the edit is visible to
        `updated_at:>` filters even under a frozen test clock)."""
        changes = normalize_fields(fields)
        with self._lock:
            current = self.get(product_id)
            if current is None:
                return None
            values: dict[str, Any] = {k: v for k, v in changes.items() if k != "images"}
            if "images" in changes:
                values["media"] = self._media(changes["images"], current.media)
            status = values.get("status", current.status)
            if status == "ACTIVE" and current.published_at is None:
                values["published_at"] = now
            values["updated_at"] = max(now, current.updated_at + 1)
            record = replace(current, **values)
            self._put(record, current)
            return record

    def delete(self, product_id: int) -> Product | None:
        with self._lock:
            current = self.get(product_id)
            if current is None:
                return None
            self._remove_keys(current)
            self._overrides.pop(product_id, None)
            self._deleted.add(product_id)
            return current


_FIELD_ALIASES = {
    "body_html": "description_html",
    "descriptionHtml": "description_html",
    "description_html": "description_html",
    "productType": "product_type",
    "product_type": "product_type",
    "title": "title",
    "vendor": "vendor",
    "handle": "handle",
    "status": "status",
    "tags": "tags",
    "images": "images",
    "media": "images",
}


def normalize_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Control-endpoint product fields (REST or GraphQL spelling) → store fields. Raises ValueError on bad input."""
    if not isinstance(fields, Mapping):
        raise ValueError("the body must be a JSON object of product fields")
    out: dict[str, Any] = {}
    for key, value in fields.items():
        name = _FIELD_ALIASES.get(key)
        if name is None:
            raise ValueError(f"unknown product field {key!r}; use one of {sorted(set(_FIELD_ALIASES))}")
        if name == "status":
            status = str(value).upper()
            if status not in STATUSES:
                raise ValueError(f"status must be one of {list(STATUSES)} (any case), not {value!r}")
            out[name] = status
        elif name == "tags":
            parts = value.split(",") if isinstance(value, str) else value
            if not isinstance(parts, list | tuple):
                raise ValueError("tags must be a comma-separated string or a list of strings")
            out[name] = tuple(sorted({str(part).strip() for part in parts if str(part).strip()}))
        elif name == "images":
            if not isinstance(value, list):
                raise ValueError("images must be a list of URLs or {src, alt} objects")
            out[name] = value
        else:
            if value is None and name == "description_html":
                value = ""
            if not isinstance(value, str):
                raise ValueError(f"{key} must be a string")
            out[name] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# REST, storefront and webhook shapes


def _rest_images(product: Product) -> list[dict[str, Any]]:
    images = product.images
    return [
        {
            "id": image.image_id,
            "alt": image.alt,
            "position": position,
            "product_id": product.id,
            "created_at": rest_time(product.created_at),
            "updated_at": rest_time(product.updated_at),
            "admin_graphql_api_id": gid("ProductImage", image.image_id),
            "width": image.width,
            "height": image.height,
            "src": image.url,
            "variant_ids": [],
        }
        for position, image in enumerate(images, start=1)
    ]


def _rest_variants(product: Product) -> list[dict[str, Any]]:
    return [
        {
            "id": variant.id,
            "product_id": product.id,
            "title": variant.title,
            "price": variant.price,
            "sku": variant.sku,
            "position": variant.position,
            "inventory_policy": "deny",
            "compare_at_price": None,
            "fulfillment_service": "manual",
            "inventory_management": "shopify",
            "option1": variant.title,
            "option2": None,
            "option3": None,
            "created_at": rest_time(product.created_at),
            "updated_at": rest_time(product.updated_at),
            "taxable": True,
            "barcode": None,
            "grams": 0,
            "image_id": None,
            "weight": 0.0,
            "weight_unit": "kg",
            "inventory_item_id": variant.id + 1,
            "inventory_quantity": variant.inventory_quantity,
            "old_inventory_quantity": variant.inventory_quantity,
            "presentment_prices": [
                {"price": {"amount": variant.price, "currency_code": "USD"}, "compare_at_price": None}
            ],
            "requires_shipping": True,
            "admin_graphql_api_id": gid("ProductVariant", variant.id),
        }
        for variant in product.variants
    ]


def _options(product: Product) -> list[dict[str, Any]]:
    name = "Title" if len(product.variants) == 1 else "Size"
    return [
        {
            "id": product.id + 7,
            "product_id": product.id,
            "name": name,
            "position": 1,
            "values": [variant.title for variant in product.variants],
        }
    ]


def rest_product(product: Product, fields: Sequence[str] | None = None) -> dict[str, Any]:
    """The Admin REST product (2024-04 shape); `fields` gives a sparse object as `?fields=` does."""
    images = _rest_images(product)
    body: dict[str, Any] = {
        "id": product.id,
        "title": product.title,
        "body_html": product.description_html,
        "vendor": product.vendor,
        "product_type": product.product_type,
        "created_at": rest_time(product.created_at),
        "handle": product.handle,
        "updated_at": rest_time(product.updated_at),
        "published_at": rest_time(product.published_at),
        "template_suffix": None,
        "published_scope": "web",
        "tags": ", ".join(product.tags),
        "status": product.status.lower(),
        "admin_graphql_api_id": gid("Product", product.id),
        "variants": _rest_variants(product),
        "options": _options(product),
        "images": images,
        "image": images[0] if images else None,
    }
    if fields:
        return {name: body[name] for name in fields if name in body}
    return body


def webhook_product(product: Product) -> dict[str, Any]:
    """A `products/create` / `products/update` delivery body: the REST product plus `variant_gids`."""
    body = rest_product(product)
    body["media"] = [
        {
            "id": item.id,
            "product_id": product.id,
            "position": position,
            "created_at": rest_time(product.created_at),
            "updated_at": rest_time(product.updated_at),
            "alt": item.alt,
            "status": "READY",
            "media_content_type": item.kind,
            "preview_image": {"width": item.width, "height": item.height, "src": item.url, "status": "READY"},
            "variant_ids": [],
            "admin_graphql_api_id": gid("MediaImage" if item.kind == "IMAGE" else "Video", item.id),
        }
        for position, item in enumerate(product.media, start=1)
    ]
    body["variant_gids"] = [
        {
            "admin_graphql_api_id": gid("ProductVariant", variant.id),
            "updated_at": datetime.fromtimestamp(product.updated_at, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        }
        for variant in product.variants
    ]
    return body


def storefront_product(product: Product) -> dict[str, Any]:
    """The public `/products.json` item: tags as a list, images without alt text, lighter variants."""
    return {
        "id": product.id,
        "title": product.title,
        "handle": product.handle,
        "body_html": product.description_html,
        "published_at": rest_time(product.published_at),
        "created_at": rest_time(product.created_at),
        "updated_at": rest_time(product.updated_at),
        "vendor": product.vendor,
        "product_type": product.product_type,
        "tags": list(product.tags),
        "variants": [
            {
                "id": variant.id,
                "title": variant.title,
                "option1": variant.title,
                "option2": None,
                "option3": None,
                "sku": variant.sku,
                "requires_shipping": True,
                "taxable": True,
                "featured_image": None,
                "available": variant.inventory_quantity > 0,
                "price": variant.price,
                "grams": 0,
                "compare_at_price": None,
                "position": variant.position,
                "product_id": product.id,
                "created_at": rest_time(product.created_at),
                "updated_at": rest_time(product.updated_at),
            }
            for variant in product.variants
        ],
        "images": [
            {
                "id": image.image_id,
                "created_at": rest_time(product.created_at),
                "position": position,
                "updated_at": rest_time(product.updated_at),
                "product_id": product.id,
                "variant_ids": [],
                "src": image.url,
                "width": image.width,
                "height": image.height,
            }
            for position, image in enumerate(product.images, start=1)
        ],
        "options": [
            {"name": option["name"], "position": option["position"], "values": option["values"]}
            for option in _options(product)
        ],
    }


# ----------------------------------------------------------------------------------------------------------------
# Opaque cursors (Shopify's are base64 JSON too: {"last_id": …, "last_value": …})


def encode_cursor(key: tuple[int, int]) -> str:
    raw = json.dumps({"last_id": key[1], "last_value": key[0]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, int]:
    """Raises ValueError for anything this emulator did not hand out."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        value, last_id = data["last_value"], data["last_id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc
    if not isinstance(value, int) or not isinstance(last_id, int):
        raise ValueError(f"invalid cursor {cursor!r}")
    return value, last_id
