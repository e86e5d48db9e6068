"""Stored products and accounts: upsert specs, the product's rendered body, and paging by sequence."""

from __future__ import annotations

import enum
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from emulators.catalog.contract import format_timestamp


class Omitted(enum.Enum):
    OMITTED = enum.auto()


# Keeps "the field was not sent" apart from "the field was sent as null".
OMITTED = Omitted.OMITTED


@dataclass(frozen=True, slots=True)
class ImageSpec:
    url: str | None
    file_key: str | None
    role: str | None
    classifications: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class UpsertSpec:
    external_id: str
    title: str | Omitted
    description: str | Omitted
    images: list[ImageSpec] | Omitted
    metadata: dict[str, Any] | Omitted | None
    auto_detect_image_roles: bool | Omitted
    valid_for_days: int | Omitted | None


@dataclass(frozen=True, slots=True)
class Image:
    source_url: str
    role: str | None
    classifications: dict[str, Any] | None


@dataclass(slots=True)
class Product:
    """One stored product. `seq` orders the list and never changes; `body` is the response, rebuilt on write."""

    seq: int
    external_id: str
    created_at: datetime
    updated_at: datetime
    title: str = ""
    description: str = ""
    images: list[Image] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    auto_detect_image_roles: bool = False
    valid_for_days: int | None = None
    expires_at: datetime | None = None
    body: dict[str, Any] = field(default_factory=dict)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def render(self) -> None:
        self.body = {
            "externalId": self.external_id,
            "title": self.title,
            "description": self.description,
            "images": [{"sourceUrl": image.source_url, "order": order} for order, image in enumerate(self.images)],
            "metadata": self.metadata,
            "autoDetectImageRoles": self.auto_detect_image_roles,
            "validForDays": self.valid_for_days,
            "expiresAt": format_timestamp(self.expires_at) if self.expires_at else None,
            "lastUsedAt": None,
            "createdAt": format_timestamp(self.created_at),
            "updatedAt": format_timestamp(self.updated_at),
        }


class Account:
    """The products of one API key: by id for lookups, by sequence (a sorted list) for paging.

    A delete removes one entry from the list (a memmove, microseconds even at 100,000 products); nothing per request
    sorts or scans the whole account."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.by_id: dict[str, Product] = {}
        # Sequences are handed out in increasing order, so appending keeps this sorted without a sort.
        self.seqs: list[int] = []
        self.by_seq: dict[int, Product] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    def live(self, external_id: str, now: datetime) -> Product | None:
        product = self.by_id.get(external_id)
        if product is not None and product.expired(now):
            self.remove(product)
            return None
        return product

    def add(self, product: Product) -> None:
        self.by_id[product.external_id] = product
        self.by_seq[product.seq] = product
        self.seqs.append(product.seq)

    def remove(self, product: Product) -> None:
        del self.by_id[product.external_id]
        del self.by_seq[product.seq]
        index = bisect_right(self.seqs, product.seq) - 1
        del self.seqs[index]

    def page(self, after: int, limit: int, now: datetime) -> tuple[list[Product], bool]:
        """Up to `limit` live products with a sequence above `after`, and whether more follow."""
        items: list[Product] = []
        expired: list[Product] = []
        has_more = False
        for index in range(bisect_right(self.seqs, after), len(self.seqs)):
            product = self.by_seq[self.seqs[index]]
            if product.expired(now):
                expired.append(product)
            elif len(items) < limit:
                items.append(product)
            else:
                has_more = True
                break
        for product in expired:
            self.remove(product)
        return items, has_more
