"""The Shopify emulator's product data under its earlier import path; it lives in the `emulators.shopify` package
(`products`, `store`, `search`, `shapes`, `ids`)."""

from __future__ import annotations

from emulators.shopify.ids import decode_cursor, encode_cursor, gid, graphql_time, parse_gid, parse_time, rest_time
from emulators.shopify.products import MediaItem, Product, Variant, generate_product
from emulators.shopify.search import ProductFilter, SearchQueryError
from emulators.shopify.shapes import rest_product, storefront_product, webhook_product
from emulators.shopify.store import SORT_KEYS, Page, ProductStore, normalize_fields

__all__ = [
    "SORT_KEYS",
    "MediaItem",
    "Page",
    "Product",
    "ProductFilter",
    "ProductStore",
    "SearchQueryError",
    "Variant",
    "decode_cursor",
    "encode_cursor",
    "generate_product",
    "gid",
    "graphql_time",
    "normalize_fields",
    "parse_gid",
    "parse_time",
    "rest_product",
    "rest_time",
    "storefront_product",
    "webhook_product",
]
