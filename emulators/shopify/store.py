"""The emulated shop's product store: the three orderings the APIs page over, keyset pages, counts, snapshots for
bulk operations, and the control API's edits.

Memory stays modest for 20,000+ products because generated products are never kept: the store holds only a small
skeleton per product (created/updated time, status) and rebuilds a full `Product` from `(seed, count, index)` on
demand (an LRU cache keeps the hot ones). Edited and created products are full records held in `_overrides`;
records are immutable, so a reference to one is a snapshot (bulk operations rely on that).
"""

from __future__ import annotations

import bisect
import threading
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from emulators.shopify.products import (
    CREATED_IMAGE_ID_BASE,
    CREATED_MEDIA_ID_BASE,
    CREATED_VARIANT_ID_BASE,
    PRODUCT_ID_BASE,
    PRODUCT_ID_STEP,
    STATUSES,
    MediaItem,
    Product,
    ProductStatus,
    Variant,
    generate_product,
    product_skeleton,
    rng_for,
    slug,
)
from emulators.shopify.search import ProductFilter

_STATUS_CODE: dict[str, int] = {name: code for code, name in enumerate(STATUSES)}
SortKey = Literal["UPDATED_AT", "ID", "CREATED_AT"]
SORT_KEYS: tuple[SortKey, ...] = ("UPDATED_AT", "ID", "CREATED_AT")


@dataclass(frozen=True, slots=True)
class Page:
    """One page of an ordering: the products and the sort key of each (for cursors)."""

    items: list[Product]
    keys: list[tuple[int, int]]
    has_next: bool
    has_previous: bool



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
            created, updated, status = product_skeleton(rng_for(seed, index), count, index)
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

    def _variants(self, specs: Sequence[Any], media: Sequence[MediaItem]) -> tuple[Variant, ...]:
        """New variants from `specs` ({options: {name: value}, price, sku, inventory_quantity, image: a URL of one of
        the product's images}), in order."""
        by_url = {item.url: item for item in media if item.kind == "IMAGE"}
        variants: list[Variant] = []
        for position, spec in enumerate(specs, start=1):
            if not isinstance(spec, Mapping):
                raise ValueError("each of variants is an object {options, price, sku, inventory_quantity, image}")
            options = spec.get("options") or {"Title": "Default Title"}
            if not isinstance(options, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) and k and v for k, v in options.items()
            ):
                raise ValueError('a variant\'s options map option names to values: {"Color": "Red", "Size": "S"}')
            image = spec.get("image")
            medium = by_url.get(image) if isinstance(image, str) else None
            if image is not None and medium is None:
                raise ValueError(f"a variant's image must be one of the product's images, not {image!r}")
            try:
                price = f"{float(spec.get('price', '0.00')):.2f}"
                quantity = int(spec.get("inventory_quantity", 0))
            except (TypeError, ValueError) as exc:
                raise ValueError("a variant's price is a number and its inventory_quantity an integer") from exc
            variants.append(
                Variant(
                    id=self._next_variant_id,
                    title=" / ".join(options.values()),
                    price=price,
                    sku=str(spec.get("sku", "")),
                    inventory_quantity=quantity,
                    position=position,
                    options=tuple(options.items()),
                    media_id=medium.id if medium is not None else None,
                )
            )
            self._next_variant_id += 1
        if not variants:
            raise ValueError("a product has at least one variant")
        return tuple(variants)

    def create(self, fields: Mapping[str, Any], *, now: int) -> Product:
        changes = normalize_fields(fields)
        title = changes.get("title")
        if not isinstance(title, str) or not title.strip():
            raise ValueError("a new product needs a non-empty 'title'")
        with self._lock:
            product_id = self._next_id
            self._next_id += PRODUCT_ID_STEP
            status: ProductStatus = changes.get("status", "ACTIVE")
            handle = changes.get("handle") or f"{slug(title)}-{product_id}"
            media = self._media(changes.get("images", ()), ())
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
                media=media,
                variants=self._variants(changes.get("variants", ({},)), media),
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
            values: dict[str, Any] = {k: v for k, v in changes.items() if k not in ("images", "variants")}
            if "images" in changes:
                values["media"] = self._media(changes["images"], current.media)
            if "variants" in changes:
                values["variants"] = self._variants(changes["variants"], values.get("media", current.media))
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
    "variants": "variants",
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
        elif name == "variants":
            if not isinstance(value, list):
                raise ValueError("variants must be a list of {options, price, sku, inventory_quantity, image} objects")
            out[name] = value
        else:
            if value is None and name == "description_html":
                value = ""
            if not isinstance(value, str):
                raise ValueError(f"{key} must be a string")
            out[name] = value
    return out
