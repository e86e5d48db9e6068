"""The store's product records and their seeded generator: simple and variable products, every status, unicode
and HTML in names, modification dates spread over months and a burst sharing one second (a bulk import)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

STATUSES: Final = ("publish", "draft", "pending", "private", "future", "trash")
WOO_CATEGORIES: Final = (
    (15, "Uncategorized", "uncategorized"),
    (9, "Clothing", "clothing"),
    (14, "T-shirts", "t-shirts"),
    (16, "Hoodies", "hoodies"),
    (17, "Accessories", "accessories"),
    (18, "Lunettes & Soleil", "lunettes-soleil"),
    (19, "Chaussures", "chaussures"),
)
WOO_TAGS: Final = ("summer", "bestseller", "organic cotton", "limited", "新作", "éco")
_ADJECTIVES: Final = ("Classic", "Vintage", "Café", "Crème Brûlée", "Zürich", "Ōsaka", "Smörgås", "Naïve", "東京")
_NOUNS: Final = ("T-shirt", "Hoodie", "Sunglasses", "Cap", "Sneakers", "Dress", "Scarf", "Jacket", "Tote Bag")
_EXTRAS: Final = ("", "", "", " &amp; Co", " 🌟", " – Édition limitée", " <em>new</em>", " (2-pack)")
_WEEKS: Final = 26
_TYPES = Literal["simple", "variable"]


@dataclass
class WooImage:
    id: int
    path: str  # below the site URL, e.g. /wp-content/uploads/2025/03/cap-1.jpg
    alt: str = ""


@dataclass
class WooVariation:
    id: int
    status: str  # publish (enabled) or private (disabled)
    image: WooImage | None
    regular_price: str
    # The variation's attribute values, `(attribute name, option)`, e.g. (("Color", "Navy"), ("Size", "M")).
    attributes: tuple[tuple[str, str], ...]
    date_created: datetime
    date_modified: datetime

    @property
    def label(self) -> str:
        return ", ".join(option for _, option in self.attributes)


@dataclass
class WooProduct:
    id: int
    name: str
    slug: str
    type: _TYPES
    status: str
    description: str
    short_description: str
    sku: str
    regular_price: str
    sale_price: str
    stock_status: str
    categories: list[tuple[int, str, str]]
    tags: list[tuple[int, str, str]]
    images: list[WooImage]
    variations: list[WooVariation]
    date_created: datetime
    date_modified: datetime
    status_before_trash: str | None = None


def whole_second(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=0)


def slugify(text: str) -> str:
    slug = re.sub(r"[^0-9a-z]+", "-", text.lower()).strip("-")
    return slug or "product"


def generate_products(count: int, seed: int, now: datetime) -> tuple[list[WooProduct], int]:
    """A seeded store of `count` products modified over the last half year; returns them and the next free id."""
    rng = random.Random(seed)
    now = whole_second(now)
    next_id = 10
    products: list[WooProduct] = []
    # Every status appears at least once (when the store is that large), the rest mostly published.
    forced = dict(zip(rng.sample(range(count), min(count, len(STATUSES))), STATUSES, strict=False))
    # A bulk import: a few percent of the products share one modification second (more than a page in big stores).
    burst_second = now - timedelta(days=rng.randint(20, 40), seconds=rng.randint(0, 86_399))
    tags = [(100 + index, name, slugify(name)) for index, name in enumerate(WOO_TAGS)]
    for index in range(count):
        next_id += rng.randint(1, 3)
        product_id = next_id
        status = forced.get(index) or rng.choices(STATUSES, weights=(80, 6, 3, 3, 1, 7))[0]
        name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}{rng.choice(_EXTRAS)}"
        created = now - timedelta(days=rng.randint(190, 400), seconds=rng.randint(0, 86_399))
        bulk = rng.random() < 0.03
        # Only a product outside the burst draws a day from the generator: the seeded sequence depends on it.
        moment = burst_second if bulk else now - timedelta(days=rng.uniform(1, 7 * _WEEKS))
        modified = whole_second(max(moment, created))
        slug = f"{slugify(name)}-{product_id}"
        month = modified.strftime("%Y/%m")
        images: list[WooImage] = []
        for number in range(rng.choices((0, 1, 3, 6, 11, 12), weights=(5, 25, 35, 20, 8, 7))[0]):
            next_id += 1
            stem = f"{slug}-{number + 1}" if rng.random() > 0.1 else f"café-crème-{product_id}-{number + 1}"
            images.append(WooImage(next_id, f"/wp-content/uploads/{month}/{stem}.jpg", rng.choice(("", name))))
        kind: _TYPES = "variable" if rng.random() < 0.3 else "simple"
        variations: list[WooVariation] = []
        if kind == "variable":
            for number in range(rng.randint(2, 6)):
                next_id += 1
                roll = rng.random()
                if roll < 0.5:
                    next_id += 1
                    image: WooImage | None = WooImage(
                        next_id, f"/wp-content/uploads/{month}/{slug}-variation-{number + 1}.jpg"
                    )
                elif roll < 0.75 and images:
                    image = rng.choice(images)
                else:
                    image = None
                variations.append(
                    WooVariation(
                        id=next_id,
                        status="private" if rng.random() < 0.1 else "publish",
                        image=image,
                        regular_price=f"{rng.randint(5, 150)}.{rng.choice(('00', '50', '99'))}",
                        attributes=(
                            ("Color", rng.choice(("Black", "Green", "Écru", "Navy", "Rouge")) + f" {number + 1}"),
                        ),
                        date_created=created,
                        date_modified=modified,
                    )
                )
        description_roll = rng.random()
        paragraph = (
            f"<p>The <strong>{name}</strong> — soft, durable &amp; made to last.</p>\n"
            "<ul><li>100% coton bio</li><li>Lavable à 30&nbsp;°C</li></ul>\n"
        )
        products.append(
            WooProduct(
                id=product_id,
                name=name,
                slug=slug,
                type=kind,
                status=status,
                description="" if description_roll < 0.15 else paragraph,
                short_description="" if description_roll < 0.03 else f"<p>{name}, short and sweet.</p>",
                sku=f"SKU-{product_id}",
                regular_price=f"{rng.randint(5, 150)}.{rng.choice(('00', '50', '99'))}",
                sale_price=rng.choice(("", "", "", "9.99")),
                stock_status=rng.choices(("instock", "outofstock", "onbackorder"), weights=(85, 12, 3))[0],
                categories=rng.sample(list(WOO_CATEGORIES), rng.randint(1, 2)),
                tags=rng.sample(tags, rng.randint(0, 3)),
                images=images,
                variations=variations,
                date_created=whole_second(created),
                date_modified=modified,
                status_before_trash="publish" if status == "trash" else None,
            )
        )
    return products, next_id + 1
