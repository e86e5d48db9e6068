"""The emulated shop's product records and their seeded, deterministic generator: the same `(seed, count, index)`
always builds the same product, so a store can keep only a skeleton and rebuild the rest on demand."""

from __future__ import annotations

import functools
import random
import re
import unicodedata
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

ProductStatus = Literal["ACTIVE", "DRAFT", "ARCHIVED"]

# Generated products' creation times spread over this window, so `updated_at:>` filters have something to cut.
SHOP_EPOCH_START = int(datetime(2023, 9, 1, tzinfo=UTC).timestamp())
SHOP_EPOCH_END = int(datetime(2025, 6, 30, tzinfo=UTC).timestamp())
# A few instants shared by many products (a merchant's bulk edit): UPDATED_AT paging must break ties by id.
BULK_EDIT_INSTANTS = tuple(int(datetime(2025, month, 15, 9, 30, tzinfo=UTC).timestamp()) for month in (1, 2, 3, 4, 5))
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
    # The variant's option values, `(option name, value)` in the product's option order (`selectedOptions`).
    options: tuple[tuple[str, str], ...] = ()
    # The medium (an image of the product) shown for this variant, by media id; None when it has none.
    media_id: int | None = None


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

    @property
    def options(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The product's options (`name`, values in order of first use), from its variants as Shopify keeps them."""
        found: dict[str, list[str]] = {}
        for variant in self.variants:
            for name, value in variant.options:
                values = found.setdefault(name, [])
                if value not in values:
                    values.append(value)
        return tuple((name, tuple(values)) for name, values in found.items())

    def variant_medium(self, variant: Variant) -> MediaItem | None:
        return next((item for item in self.media if item.id == variant.media_id), None)


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


@dataclass(frozen=True, slots=True)
class Collection:
    id: int
    handle: str
    title: str


# Collections a generated shop has besides one per product type: (handle, title, the tag that puts a product in it).
_TAG_COLLECTIONS = (("sale", "Sale", "sale"), ("new-arrivals", "New arrivals", "new"))


def product_collections(product: Product) -> tuple[Collection, ...]:
    """The collections a product is in: its product type's (`dress` for `Dress`), and `sale` / `new-arrivals` by
    tag. Derived, not stored, so every generated, created or edited product has them."""
    found: list[Collection] = []
    if product.product_type:
        handle = slug(product.product_type)
        number = COLLECTION_ID_BASE + zlib.crc32(handle.encode()) % 100_000
        found.append(Collection(number, handle, product.product_type))
    for position, (handle, title, tag) in enumerate(_TAG_COLLECTIONS):
        if tag in product.tags:
            found.append(Collection(COLLECTION_ID_BASE + 100_000 + position, handle, title))
    return tuple(found)


def slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-") or "product"


def rng_for(seed: int, index: int) -> random.Random:
    return random.Random(seed * 1_000_003 + index)


def product_skeleton(rng: random.Random, count: int, index: int) -> tuple[int, int, ProductStatus]:
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
    rng = rng_for(seed, index)
    created, updated, status = product_skeleton(rng, count, index)
    product_id = PRODUCT_ID_BASE + index * PRODUCT_ID_STEP
    noun = rng.choice(_NOUNS)
    title = f"{rng.choice(_ADJECTIVES)} {noun}{rng.choice(_FLOURISHES)}"
    handle = f"{slug(title)}-{index + 1}"
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
            options=(("Title", "Default Title"),) if variant_count == 1 else (("Size", _SIZES[position]),),
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
