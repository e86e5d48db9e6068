"""One catalog product per colourway of a shop product (a source's `split_by`), for Shopify and WooCommerce alike.

Try-on is per colourway: a shopper trying on the red dress must not get the blue photo. The connectors read a
product's options and variants (`SourceProduct.options`, `.variants`) only when their source splits; this module
turns such a product into one product per value of the option named by `split_by`:

- the option is matched by name, case and punctuation aside, WooCommerce's `pa_` prefix dropped, and `color` and
  `colour` taken for the same word (`Color`, `colour`, `pa_color` all match `split_by = "color"`);
- each value becomes a product with the feed rule's id (`connectors.feed.split_id`: `123~navy-blue`; its handle
  likewise, `wrap-dress~navy-blue`, so an `external_id` template built from `{handle}` stays unique), the title
  with the value (`Wrap dress - Navy Blue`), the group (the parent's id) in `attributes["item_group_id"]`, the value
  under the split attribute's name (`attributes["color"]`) and the value's lowest variant price;
- its images are the value's variant images first, then the product's images whose alt text names the value, and
  never another value's: an image some variant of another value shows, or whose alt text names another value, is
  left out. A value with no image of its own gets the product's images that belong to no value (a shop that
  photographed the garment once), so it is not dropped for want of a picture its siblings do not have either;
- a product without that option stays one product, as it was.

Feeds split while they read (their items are the variants); their products carry no variants and pass through.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Final

from config.sources import SourceConfig, SplitSource
from connectors.base import ImageRef, SourceProduct, Variant, normalize_images
from connectors.feed import SPLIT_SEPARATOR, normalize_field_name, split_id
from ground.errors import SkippedProduct

__all__ = ["colourways", "group_of", "matches_option", "split_products", "splits_shop_products", "title_with"]

# Option names that mean the same to a merchant (British and American spelling), after normalizing.
_SYNONYMS: Final = {"colour": "color"}
# WooCommerce names a global attribute's taxonomy `pa_<slug>`; the merchant calls it by its slug.
_TAXONOMY_PREFIX: Final = "pa_"
_NOT_ALNUM: Final = re.compile(r"[\W_]+")
# Between a product's title and its colourway's value.
TITLE_SEPARATOR: Final = " - "


def _key(name: str) -> str:
    text = name.strip().casefold().removeprefix(_TAXONOMY_PREFIX)
    compact = _NOT_ALNUM.sub("", text)
    return _SYNONYMS.get(compact, compact)


def matches_option(name: str, split_by: str) -> bool:
    """Whether a shop option (or attribute) named `name` is the one `split_by` names."""
    wanted = _key(split_by)
    return bool(wanted) and _key(name) == wanted


def splits_shop_products(source: SourceConfig) -> bool:
    """Whether `source` is a shop whose products are split by an option: their colourways converge together, from a
    read of the whole product (feeds split while they read, by item group)."""
    return isinstance(source, SplitSource) and source.split_by is not None and source.kind != "feed"


def group_of(product_id: str) -> str:
    """The shop product a colourway's id belongs to (`123~red` → `123`); a shop id has no separator."""
    return product_id.split(SPLIT_SEPARATOR, 1)[0]


def title_with(title: str, value: str) -> str:
    """A colourway's title: the product's, with the value unless the title already names it."""
    return title if _names(title, value) else f"{title}{TITLE_SEPARATOR}{value}"


def split_products(
    items: Iterable[SourceProduct | SkippedProduct], split_by: str | None
) -> Iterator[SourceProduct | SkippedProduct]:
    """A connector's stream with every product split into its colourways (as it is, when `split_by` is None)."""
    for item in items:
        if split_by is None or isinstance(item, SkippedProduct) or not (item.options or item.variants):
            yield item
        else:
            yield from colourways(item, split_by)


def colourways(product: SourceProduct, split_by: str) -> tuple[SourceProduct, ...]:
    """The catalog products of one shop product split by the option `split_by` (see the module docstring)."""
    option = next((name for name, _ in product.options if matches_option(name, split_by)), None)
    if option is None:
        option = next(
            (name for variant in product.variants for name, _ in variant.options if matches_option(name, split_by)),
            None,
        )
    if option is None:
        return (replace(product, options=(), variants=()),)
    by_value = _variants_by_value(product, option)
    if not by_value:
        return (replace(product, options=(), variants=()),)
    claimed = _claimed_images(product, by_value)
    attribute = normalize_field_name(split_by)
    products: list[SourceProduct] = []
    seen: set[str] = set()
    for value, variants in by_value.items():
        product_id = split_id(product.product_id, value)
        if product_id in seen:  # "Red" and "red " are one colourway
            continue
        seen.add(product_id)
        attributes = {**product.attributes, "item_group_id": product.product_id, attribute: value}
        price = _lowest_price(variants)
        if price is not None:
            attributes["price"] = price
        else:  # the parent's lowest price may be another colour's
            attributes.pop("price", None)
        products.append(
            replace(
                product,
                product_id=product_id,
                title=title_with(product.title, value),
                # Colourways must not share an externalId when the source's template is built from the handle.
                handle=split_id(product.handle, value) if product.handle else None,
                images=_images_of(product, value, variants, claimed),
                attributes=attributes,
                options=(),
                variants=(),
            )
        )
    return tuple(products)


def _variants_by_value(product: SourceProduct, option: str) -> dict[str, list[Variant]]:
    """The option's values in the shop's order (the option's list, then any only a variant names), each with its
    variants. A value no variant has still becomes a colourway: the shop lists it."""
    values: dict[str, list[Variant]] = {}
    for name, listed in product.options:
        if name == option:
            for value in listed:
                if value.strip():
                    values.setdefault(value.strip(), [])
    for variant in product.variants:
        value = dict(variant.options).get(option, "").strip()
        if value:
            values.setdefault(value, []).append(variant)
    return values


def _claimed_images(product: SourceProduct, by_value: dict[str, list[Variant]]) -> dict[str, set[str]]:
    """For each image URL, the values it belongs to: the values of the variants that show it, else the values its
    alt text names (the longest of overlapping names: an image of `Navy Blue` does not name `Blue` too)."""
    claimed: dict[str, set[str]] = {}
    for value, variants in by_value.items():
        for variant in variants:
            if variant.image is not None:
                claimed.setdefault(variant.image.url, set()).add(value)
    for image in product.images:
        if image.url in claimed or not image.alt:
            continue
        named = {value for value in by_value if _names(image.alt, value)}
        named = {value for value in named if not any(value != other and _names(other, value) for other in named)}
        if named:
            claimed[image.url] = named
    return claimed


def _images_of(
    product: SourceProduct, value: str, variants: list[Variant], claimed: dict[str, set[str]]
) -> tuple[ImageRef, ...]:
    own = [variant.image for variant in variants if variant.image is not None]
    named = [image for image in product.images if value in claimed.get(image.url, ())]
    images = normalize_images([*own, *named])
    if images:
        return images
    return normalize_images(image for image in product.images if image.url not in claimed)


def _names(text: str, value: str) -> bool:
    """Whether `text` names `value` as a whole word or phrase, case aside (`Navy Blue front` names `navy blue`)."""
    words = _NOT_ALNUM.sub(" ", value.casefold()).strip()
    if not words:
        return False
    haystack = f" {_NOT_ALNUM.sub(' ', text.casefold()).strip()} "
    return f" {words} " in haystack


def _lowest_price(variants: list[Variant]) -> str | None:
    prices: list[Decimal] = []
    for variant in variants:
        try:
            if variant.price is not None:
                prices.append(Decimal(variant.price))
        except InvalidOperation:
            continue
    return f"{min(prices):.2f}" if prices else None
