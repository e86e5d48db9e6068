"""Shopify connectors: Admin GraphQL (kind `shopify`, with bulk export), legacy REST (`shopify-rest`) and the public
storefront `/products.json` (`shopify-storefront`).

One class per API flavour; each owns one paging loop:

- `ShopifyGraphQL`: cursor paging over `products(first:, after:, query:, sortKey: UPDATED_AT)`, paced by the cost
  bucket Shopify reports in `extensions.cost.throttleStatus` (`CostBucket`). Pages are sized by `PageSizer` from the
  query-cost rule (an object costs 1, a connection 2 + its `first`, a nested connection is multiplied by its parent's
  `first`, at most 1,000 per query), corrected by the `requestedQueryCost` the server reports and grown when its
  `actualQueryCost` shows products use fewer media than asked. Media are asked up to 15 deep so the first 10 images
  are the same ones REST and webhooks list even when a video sits among them. Full runs (by default) read a bulk
  operation instead and stream its JSONL result line by line, holding one product (and its media lines) at a time;
  a bulk export the shop will not run falls back to pages. Deleted products are read from the shop's `destroy`
  events (`iter_deletions`), which incremental runs turn into deletions. A source that splits products by an option
  (`split_by`) also asks each product's options and variants (selected options, image, price: see
  `connectors.colourways`), and only such a source pays their cost.
- `ShopifyRest`: `Link: <…>; rel="next"` paging with the URL used exactly as given, paced by
  `X-Shopify-Shop-Api-Call-Limit`; 429 + Retry-After is `connectors.http.send`'s job.
- `ShopifyStorefront`: page numbers, no credentials, and a clear error instead of silently stopping at the endpoint's
  25,000 page × limit cap.

The three receive the same webhooks (REST-shaped product payloads), so webhook verification and REST-payload
normalization are module functions they share. The cost bucket is written here rather than taken from a library:
it is twenty lines of arithmetic over numbers Shopify hands back on every response, and the general rate limiters
we know of count requests, not query cost.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any, Final, Generic, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from config.sources import (
    BulkMode,
    ShopifyAdminSource,
    ShopifyRestSource,
    ShopifySource,
    SourceConfig,
    StorefrontSource,
)
from connectors.base import (
    Connector,
    ImageRef,
    ProductDeletion,
    ProductStatus,
    SourceProduct,
    Variant,
    WebhookEvent,
    html_to_text,
    is_deletion_body,
    json_payload,
    normalize_images,
    parse_datetime,
    platform_id,
    split_tags,
)
from connectors.http import MAX_RETRY_AFTER, Clock, HttpConnector, Sleep, send
from connectors.paging import LinkHeaderPaginator, ListPage, PageNumberPaginator, RelayCursorPaginator
from connectors.subscriptions import Subscription
from ground.errors import AuthError, ConfigError, InvalidSignature, RateLimited, SkippedProduct, SourceError
from ground.http import retry_after_seconds
from ground.limits import MAX_IMAGES
from ground.paging import iter_pages

__all__ = [
    "WEBHOOK_TOPICS",
    "CostBucket",
    "PageSizer",
    "ShopifyGraphQL",
    "ShopifyRest",
    "ShopifyStorefront",
    "check_webhook_signature",
    "connector_for",
    "deleted_products_search",
    "events_page_cost",
    "group_bulk_lines",
    "media_needed",
    "normalize_graphql_product",
    "normalize_rest_product",
    "numeric_id",
    "parse_webhook",
    "product_node_cost",
    "products_page_cost",
]

log = logging.getLogger(__name__)


# Shopify refuses any single query whose requested cost is above this (MAX_COST_EXCEEDED).
MAX_QUERY_COST: Final = 1000
# Shopify's own ceiling for `first` on a connection and for REST/storefront `limit`.
MAX_PAGE_SIZE: Final = 250
# Media asked per product in GraphQL: the catalog keeps the first 10 images, and videos or 3D models may sit among
# them; 5 spare slots keep GraphQL, bulk, REST and webhooks (whose `images` hold images only) on the same 10 images,
# so a product does not flap between them on every sync.
MEDIA_PER_PRODUCT: Final = MAX_IMAGES + 5
# Requested cost of a products page besides its products: the connection's 2 and `pageInfo` (an object, 1).
PAGE_FIXED_COST: Final = 3
# Events read per page when listing deleted products: each is one object of scalars, so a full page is cheap.
EVENTS_PAGE_SIZE: Final = MAX_PAGE_SIZE
# The `events` query exists from this Admin API version (Shopify changelog, 2024-10).
EVENTS_SINCE: Final = "2024-10"
# Standard-plan bucket, assumed until the first response tells the real one.
DEFAULT_BUCKET_SIZE: Final = 1000.0
DEFAULT_RESTORE_RATE: Final = 50.0
# Added to every computed restore wait so rounding on either side never leaves us a point short.
RESTORE_MARGIN_SECONDS: Final = 0.05
# THROTTLED answers retried for one request before the read fails; pacing makes even one rare.
MAX_THROTTLED_RETRIES: Final = 8
# Times a products page is resized after MAX_COST_EXCEEDED before giving up (each resize at least halves it).
MAX_RESIZES: Final = 8
# Requested costs of the small queries, by the same rule (objects only).
COUNT_QUERY_COST: Final = 1
BULK_RUN_COST: Final = 10
BULK_POLL_COST: Final = 1
# Bulk status polling: first wait, growth factor, longest single wait, and the total before the read fails.
BULK_POLL_FIRST: Final = 1.0
BULK_POLL_GROWTH: Final = 1.5
BULK_POLL_CAP: Final = 30.0
BULK_POLL_MAX_TOTAL: Final = 3 * 3600.0
# Another bulk query of this app on this shop is running: retries and wait between them before failing the read.
BULK_BUSY_RETRIES: Final = 10
BULK_BUSY_WAIT: Final = 15.0
# REST leaky bucket: standard plans leak 2 calls a second; slow down when this few slots are left.
REST_LEAK_RATE: Final = 2.0
REST_HEADROOM: Final = 2
# The storefront endpoint stops answering past page × limit = 25,000.
STOREFRONT_MAX_OFFSET: Final = 25_000
# API versions from which bulk output is no longer grouped by parent unless asked (Shopify changelog, 2026-01).
BULK_UNGROUPED_SINCE: Final = "2026-01"

_GID_PREFIX = "gid://shopify/"
_STATUSES: Final[Mapping[str, ProductStatus]] = {
    "active": "active",
    "draft": "draft",
    "archived": "archived",
    # Sold and reachable by URL, just not listed in collections or search: the try-on still applies.
    "unlisted": "active",
}
_REDIRECTS = (301, 302, 303, 307, 308)
_UPSERT_TOPICS = frozenset({"products/create", "products/update"})
_DELETE_TOPIC = "products/delete"
_SIGNATURE_MESSAGE = "webhook signature missing or invalid"

_MEDIA_FIELDS = "... on MediaImage { image { url altText } }"
_PRODUCT_SCALARS = "id title handle descriptionHtml vendor productType status tags onlineStoreUrl updatedAt"
_PRICE_FIELDS = "priceRangeV2 { minVariantPrice { amount currencyCode } }"
# Cost of `priceRangeV2 { minVariantPrice { … } }`: two objects per product.
_PRICE_COST = 2
# Attributes that make the GraphQL query ask for prices (they cost two objects per product).
_PRICE_ATTRIBUTES = frozenset({"price", "currency"})
# Collections read per product, only for a source that filters on them: a product in more is matched on these.
COLLECTIONS_PER_PRODUCT: Final = 25
_COLLECTION_FIELDS = "id handle title"
# Cost of `collections(first: N) { edges { node { … } } }`: a connection, 2 + N nodes of one object each.
_COLLECTIONS_COST = 2 + COLLECTIONS_PER_PRODUCT
_COLLECTION_GID = "gid://shopify/Collection/"
# Variants read per product, only for a source that splits products by an option (`split_by`): apparel rarely has
# more than a few colours times a few sizes; a colour listed by the product's options but none of these variants
# still becomes a colourway, with the images its alt texts name. A bulk export reads every variant.
VARIANTS_PER_PRODUCT: Final = 50
_OPTION_FIELDS = "options { name values }"
_VARIANT_FIELDS = "id price selectedOptions { name value } image { url altText }"
# Cost of the options list (one object) and of `variants(first: N)`: 2 + N × (the node, its selectedOptions list
# and its image: one object each).
_SPLIT_COST = 1 + 2 + VARIANTS_PER_PRODUCT * 3
_VARIANT_GID = "gid://shopify/ProductVariant/"

_COUNT_QUERY = "query ProductsCount { productsCount%s { count } }"
_BULK_RUN = (
    "mutation RunBulk($query: String!) { bulkOperationRunQuery(query: $query%s) "
    "{ bulkOperation { id status } userErrors { field message } } }"
)
_EVENTS_QUERY = (
    "query DeletedProducts($first: Int!, $after: String, $query: String!) { "
    "events(first: $first, after: $after, query: $query, sortKey: CREATED_AT) { "
    "pageInfo { hasNextPage endCursor } "
    "edges { node { createdAt ... on BasicEvent { action subjectId subjectType } } } } }"
)
_BULK_POLL = (
    "query BulkStatus($id: ID!) { node(id: $id) { ... on BulkOperation "
    "{ id status errorCode objectCount url partialDataUrl } } }"
)


# --------------------------------------------------------------------------------------------------------------
# Normalization (shared by all three flavours and by webhooks)


# Webhooks: the product topics catalog-sync needs, as the delivery header names them (GraphQL's enum is the same
# words upper-cased with `_`: PRODUCTS_UPDATE).
WEBHOOK_TOPICS: Final = ("products/create", "products/update", "products/delete")
# From this Admin API version a subscription's address is `uri` (input and object); before it, `callbackUrl` in the
# input and `endpoint { ... on WebhookHttpEndpoint { callbackUrl } }` on the object.
WEBHOOK_URI_SINCE: Final = "2025-10"
# Subscriptions per listing page (Shopify's maximum).
WEBHOOK_PAGE_SIZE: Final = 100
# What a mutation costs in the query-cost model.
MUTATION_COST: Final = 10
_WEBHOOK_FIELDS_URI = "id topic uri"
_WEBHOOK_FIELDS_ENDPOINT = "id topic endpoint { __typename ... on WebhookHttpEndpoint { callbackUrl } }"
_WEBHOOK_LIST = (
    "query WebhookSubscriptions($topics: [WebhookSubscriptionTopic!], $after: String) { "
    f"webhookSubscriptions(first: {WEBHOOK_PAGE_SIZE}, after: $after, topics: $topics) {{ "
    "pageInfo { hasNextPage endCursor } nodes { %s } } }"
)
_WEBHOOK_CREATE = (
    "mutation WebhookSubscriptionCreate($topic: WebhookSubscriptionTopic!, "
    "$webhookSubscription: WebhookSubscriptionInput!) { "
    "webhookSubscriptionCreate(topic: $topic, webhookSubscription: $webhookSubscription) { "
    "webhookSubscription { %s } userErrors { field message } } }"
)
_WEBHOOK_UPDATE = (
    "mutation WebhookSubscriptionUpdate($id: ID!, $webhookSubscription: WebhookSubscriptionInput!) { "
    "webhookSubscriptionUpdate(id: $id, webhookSubscription: $webhookSubscription) { "
    "webhookSubscription { %s } userErrors { field message } } }"
)
_WEBHOOK_DELETE = (
    "mutation WebhookSubscriptionDelete($id: ID!) { webhookSubscriptionDelete(id: $id) { "
    "deletedWebhookSubscriptionId userErrors { field message } } }"
)


def numeric_id(value: Any) -> str | None:
    """The numeric Shopify id from an int, a digit string or a GID (`gid://shopify/Product/123` → `"123"`)."""
    if isinstance(value, str) and value.strip().startswith(_GID_PREFIX):
        value = value.strip().rsplit("/", 1)[-1].split("?", 1)[0]
    return platform_id(value)


def _map_status(value: Any) -> ProductStatus | None:
    if value is None or value == "":
        # 2011-era REST payloads predate `status`; everything the shop listed then was live.
        return "active"
    if not isinstance(value, str):
        return None
    return _STATUSES.get(value.strip().lower())


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _price(value: Any) -> str | None:
    """A price as a fixed two-decimal string, so "199.0" (GraphQL) and "199.00" (REST) hash the same."""
    if value is None or value == "":
        return None
    try:
        return f"{Decimal(str(value)):.2f}"
    except (InvalidOperation, ValueError):
        return None


def _rest_images(raw: Mapping[str, Any]) -> tuple[ImageRef, ...]:
    images = raw.get("images")
    if not isinstance(images, list) or not images:
        single = raw.get("image")
        images = [single] if isinstance(single, Mapping) else []
    entries: list[tuple[float, int, ImageRef]] = []
    for index, image in enumerate(images):
        if not isinstance(image, Mapping):
            continue
        url = image.get("src") or image.get("url")
        if not isinstance(url, str):
            continue
        position = image.get("position")
        # Images without a position keep their place after the positioned ones, in payload order.
        order = float(position) if isinstance(position, int | float) and not isinstance(position, bool) else math.inf
        entries.append((order, index, ImageRef(url, _text(image.get("alt")))))
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return normalize_images(entry[2] for entry in entries)


def _min_variant_price(raw: Mapping[str, Any]) -> str | None:
    variants = raw.get("variants")
    if not isinstance(variants, list):
        return None
    prices = [p for p in (_price(v.get("price")) for v in variants if isinstance(v, Mapping)) if p is not None]
    return min(prices, key=Decimal) if prices else None


def _position(entry: Mapping[str, Any]) -> float:
    position = entry.get("position")
    return float(position) if isinstance(position, int) and not isinstance(position, bool) else math.inf


def _rest_options(raw: Mapping[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The product's options in position order (`option1` of a variant is the first one's value)."""
    options = [option for option in raw.get("options") or () if isinstance(option, Mapping)]
    options.sort(key=_position)
    out: list[tuple[str, tuple[str, ...]]] = []
    for option in options:
        name = _text(option.get("name"))
        values = option.get("values")
        if name is not None:
            listed = values if isinstance(values, list) else ()
            out.append((name, tuple(text for value in listed if (text := _text(value)) is not None)))
    return tuple(out)


def _rest_variants(raw: Mapping[str, Any], option_names: Sequence[str]) -> tuple[Variant, ...]:
    """Each variant's option values (`option1`…`option3`, named by the product's options) and its image, found
    by `image_id` among the product's images."""
    by_id: dict[Any, ImageRef] = {}
    for image in raw.get("images") or ():
        if isinstance(image, Mapping) and isinstance(image.get("src"), str):
            by_id[image.get("id")] = ImageRef(image["src"], _text(image.get("alt")))
    variants: list[Variant] = []
    for variant in raw.get("variants") or ():
        if not isinstance(variant, Mapping):
            continue
        values = [_text(variant.get(f"option{number}")) for number in (1, 2, 3)]
        options = tuple((name, value) for name, value in zip(option_names, values, strict=False) if value)
        image = by_id.get(variant.get("image_id")) if variant.get("image_id") is not None else None
        variants.append(Variant(options, image, _price(variant.get("price"))))
    return tuple(variants)


def normalize_rest_product(
    source: str, raw: Any, *, shop_url: str | None = None, storefront: bool = False, variants: bool = False
) -> SourceProduct | SkippedProduct:
    """A REST, storefront or webhook product payload as a `SourceProduct`, or a `SkippedProduct` saying why not.

    `shop_url` builds the product's page URL (`{shop}/products/{handle}`): always for the storefront, and for admin
    payloads only when the product is active and published, since other pages answer 404 to shoppers. `variants`
    keeps the product's options and variants, for a source that splits products by an option.
    """
    if not isinstance(raw, Mapping):
        return SkippedProduct(None, "malformed_payload", f"expected a product object, got {type(raw).__name__}")
    product_id = numeric_id(raw.get("id")) or numeric_id(raw.get("admin_graphql_api_id"))
    if product_id is None:
        return SkippedProduct(None, "missing_id", f"no usable product id in {sorted(raw)[:8]}")
    updated_at = parse_datetime(_text(raw.get("updated_at")))
    if updated_at is None:
        return SkippedProduct(product_id, "bad_updated_at", f"updated_at {raw.get('updated_at')!r} is not a date")
    status = "active" if storefront else _map_status(raw.get("status"))
    if status is None:
        return SkippedProduct(product_id, "unknown_status", f"status {raw.get('status')!r}")
    title = _text(raw.get("title"))
    if title is None:
        return SkippedProduct(product_id, "missing_title", "the product has no title")
    handle = _text(raw.get("handle"))
    url = None
    if shop_url and handle and (storefront or (status == "active" and raw.get("published_at"))):
        url = f"{shop_url.rstrip('/')}/products/{handle}"
    attributes: dict[str, str] = {}
    price = _min_variant_price(raw)
    if price is not None:
        attributes["price"] = price
    if storefront and isinstance(raw.get("variants"), list):
        available = any(isinstance(v, Mapping) and v.get("available") is True for v in raw["variants"])
        attributes["availability"] = "in_stock" if available else "out_of_stock"
    gid = raw.get("admin_graphql_api_id")
    options = _rest_options(raw) if variants else ()
    return SourceProduct(
        source=source,
        product_id=product_id,
        updated_at=updated_at,
        status=status,
        title=title,
        description=html_to_text(raw.get("body_html") if isinstance(raw.get("body_html"), str) else None),
        images=_rest_images(raw),
        url=url,
        vendor=_text(raw.get("vendor")),
        product_type=_text(raw.get("product_type")),
        tags=split_tags(raw.get("tags") if isinstance(raw.get("tags"), str | list) else None),
        handle=handle,
        attributes=attributes,
        raw_ref=gid if isinstance(gid, str) else f"{_GID_PREFIX}Product/{product_id}",
        options=options,
        variants=_rest_variants(raw, [name for name, _ in options]) if variants else (),
    )


def _connection_nodes(connection: Any) -> list[Any]:
    """Nodes of a GraphQL connection, whether asked as `edges { node }` or `nodes`."""
    if not isinstance(connection, Mapping):
        return []
    nodes = connection.get("nodes")
    if isinstance(nodes, list):
        return nodes
    edges = connection.get("edges")
    if isinstance(edges, list):
        return [edge.get("node") for edge in edges if isinstance(edge, Mapping)]
    return []


def _media_images(media: Iterable[Any]) -> tuple[ImageRef, ...]:
    refs: list[ImageRef] = []
    for node in media:
        if not isinstance(node, Mapping):
            continue
        # MediaImage nodes carry `image { url altText }`; the legacy `images` connection (and airbyte's bulk
        # export) has `url`/`src` and `altText`/`alt` on the node itself. Video and 3D media carry neither.
        nested = node.get("image")
        image: Mapping[str, Any] = nested if isinstance(nested, Mapping) else node
        url = image.get("url") or image.get("src")
        if isinstance(url, str):
            refs.append(ImageRef(url, _text(image.get("altText", image.get("alt")))))
    return normalize_images(refs)


def normalize_graphql_product(
    source: str, node: Any, media: Sequence[Any] | None = None
) -> SourceProduct | SkippedProduct:
    """An Admin GraphQL `Product` node as a `SourceProduct`, or a `SkippedProduct` saying why not.

    `media` is given for bulk results, where media nodes arrive as their own JSONL lines; otherwise they are read
    from the node's `media` connection.
    """
    if not isinstance(node, Mapping):
        return SkippedProduct(None, "malformed_payload", f"expected a product object, got {type(node).__name__}")
    product_id = numeric_id(node.get("id"))
    if product_id is None:
        return SkippedProduct(None, "missing_id", f"no usable product id ({node.get('id')!r})")
    updated_at = parse_datetime(_text(node.get("updatedAt")))
    if updated_at is None:
        return SkippedProduct(product_id, "bad_updated_at", f"updatedAt {node.get('updatedAt')!r} is not a date")
    status = _map_status(node.get("status"))
    if status is None:
        return SkippedProduct(product_id, "unknown_status", f"status {node.get('status')!r}")
    title = _text(node.get("title"))
    if title is None:
        return SkippedProduct(product_id, "missing_title", "the product has no title")
    attributes: dict[str, str] = {}
    price_range = node.get("priceRangeV2")
    minimum = price_range.get("minVariantPrice") if isinstance(price_range, Mapping) else None
    if isinstance(minimum, Mapping):
        price = _price(minimum.get("amount"))
        if price is not None:
            attributes["price"] = price
        currency = _text(minimum.get("currencyCode"))
        if currency:
            attributes["currency"] = currency
    description = node.get("descriptionHtml")
    tags = node.get("tags")
    if media is None:
        collections = _connection_nodes(node.get("collections"))
        variants = _connection_nodes(node.get("variants"))
    else:
        # Bulk output: collection, variant and media lines are all children of the product line.
        collections = [child for child in media if _is_child(child, _COLLECTION_GID)]
        variants = [child for child in media if _is_child(child, _VARIANT_GID)]
        media = [child for child in media if not _is_child(child, _COLLECTION_GID, _VARIANT_GID)]
    return SourceProduct(
        source=source,
        product_id=product_id,
        updated_at=updated_at,
        status=status,
        title=title,
        description=html_to_text(description if isinstance(description, str) else None),
        images=_media_images(media if media is not None else _connection_nodes(node.get("media"))),
        url=_text(node.get("onlineStoreUrl")),
        vendor=_text(node.get("vendor")),
        product_type=_text(node.get("productType")),
        tags=split_tags(tags if isinstance(tags, str | list) else None),
        handle=_text(node.get("handle")),
        categories=_collection_keys(collections),
        attributes=attributes,
        raw_ref=str(node.get("id")),
        options=_graphql_options(node.get("options")),
        variants=tuple(_graphql_variant(variant) for variant in variants if isinstance(variant, Mapping)),
    )


def _is_child(child: Any, *prefixes: str) -> bool:
    return isinstance(child, Mapping) and str(child.get("id") or "").startswith(prefixes)


def _graphql_options(options: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    out: list[tuple[str, tuple[str, ...]]] = []
    for option in options if isinstance(options, list) else ():
        name = _text(option.get("name")) if isinstance(option, Mapping) else None
        if name is not None:
            values = option.get("values")
            listed = values if isinstance(values, list) else ()
            out.append((name, tuple(text for value in listed if (text := _text(value)) is not None)))
    return tuple(out)


def _graphql_variant(variant: Mapping[str, Any]) -> Variant:
    """A `ProductVariant` node: its `selectedOptions`, its `image` and its price."""
    selected = variant.get("selectedOptions")
    options = tuple(
        (name, value)
        for option in (selected if isinstance(selected, list) else ())
        if isinstance(option, Mapping)
        and (name := _text(option.get("name"))) is not None
        and (value := _text(option.get("value"))) is not None
    )
    image = variant.get("image")
    url = image.get("url") if isinstance(image, Mapping) else None
    ref = ImageRef(url, _text(image.get("altText"))) if isinstance(url, str) and isinstance(image, Mapping) else None
    return Variant(options, ref, _price(variant.get("price")))


def _collection_keys(collections: Iterable[Any]) -> tuple[str, ...]:
    """Each collection's handle and title, so a source filter may name either."""
    keys: list[str] = []
    for collection in collections:
        if isinstance(collection, Mapping):
            for key in (_text(collection.get("handle")), _text(collection.get("title"))):
                if key and key not in keys:
                    keys.append(key)
    return tuple(keys)


def group_bulk_lines(lines: Iterable[str]) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Join a bulk operation's JSONL lines into (product, child lines), one product at a time.

    Shopify writes each child (a media node, with `__parentId`) after its parent, so a product is complete when the
    next line without `__parentId` starts; memory holds one product however large the file is. A child whose parent
    is not the product being read means the output is not grouped (`groupObjects: false`): that is reported rather
    than silently dropping images.
    """
    current: dict[str, Any] | None = None
    children: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:  # not JSON, a number too long to convert, nesting too deep
            raise SourceError(f"bulk result line {number} is not usable JSON: {str(exc)[:120]}") from None
        if not isinstance(record, dict):
            raise SourceError(f"bulk result line {number} is not a JSON object")
        parent = record.get("__parentId")
        if parent is None:
            if current is not None:
                yield current, children
            current, children = record, []
            continue
        if current is None or parent != current.get("id"):
            raise SourceError(
                f"bulk result line {number} belongs to {parent!r}, which is not the product being read: the "
                f"result is not grouped by parent (run the bulk query with groupObjects: true)"
            )
        if len(children) < MAX_PAGE_SIZE:
            children.append(record)
    if current is not None:
        yield current, children


# --------------------------------------------------------------------------------------------------------------
# Webhooks (the same for all three flavours)


def check_webhook_signature(headers: Mapping[str, str], body: bytes, secrets: Sequence[SecretStr]) -> None:
    """Raise `InvalidSignature` unless `X-Shopify-Hmac-Sha256` is the base64 HMAC-SHA256 of `body` under a secret.

    Every secret is tried (the current one and the previous one during rotation). The message is the same whatever
    was wrong, so a caller probing the endpoint learns nothing.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    given = lowered.get("x-shopify-hmac-sha256")
    if not given or not secrets:
        raise InvalidSignature(_SIGNATURE_MESSAGE)
    try:
        given_bytes = given.strip().encode("ascii")
    except UnicodeEncodeError:
        raise InvalidSignature(_SIGNATURE_MESSAGE) from None
    matched = False
    for secret in secrets:
        if not secret.get_secret_value():
            # An empty key signs nothing: anyone can compute that HMAC.
            continue
        digest = hmac.new(secret.get_secret_value().encode("utf-8"), body, hashlib.sha256).digest()
        # Every secret is compared, match or not, so timing does not tell which one matched.
        matched |= hmac.compare_digest(base64.b64encode(digest), given_bytes)
    if not matched:
        raise InvalidSignature(_SIGNATURE_MESSAGE)


def parse_webhook(source: str, headers: Mapping[str, str], body: bytes, *, shop_url: str | None) -> WebhookEvent:
    """A verified delivery's body as a `WebhookEvent`; call only after `check_webhook_signature`."""
    lowered = {key.lower(): value for key, value in headers.items()}
    topic = (lowered.get("x-shopify-topic") or "").strip()
    event_id = lowered.get("x-shopify-event-id") or lowered.get("x-shopify-webhook-id") or None
    triggered_at = parse_datetime(lowered.get("x-shopify-triggered-at"))
    if topic not in _UPSERT_TOPICS and topic != _DELETE_TOPIC:
        raise SkippedProduct(None, "unknown_topic", f"Shopify topic {topic!r} is not a product topic")
    payload = json_payload(body, topic)
    if topic == _DELETE_TOPIC and is_deletion_body(payload):
        product_id = numeric_id(payload.get("id"))
        if product_id is None:
            raise SkippedProduct(None, "malformed_payload", "products/delete without a usable id")
        return WebhookEvent(
            source=source,
            topic="delete",
            product_id=product_id,
            event_id=event_id,
            triggered_at=triggered_at,
            platform_topic=topic,
        )
    product = normalize_rest_product(source, payload, shop_url=shop_url)
    if isinstance(product, SkippedProduct):
        raise product
    return WebhookEvent(
        source=source,
        topic="upsert",
        product_id=product.product_id,
        event_id=event_id,
        triggered_at=triggered_at,
        updated_at=product.updated_at,
        product=product,
        platform_topic=topic,
    )


# --------------------------------------------------------------------------------------------------------------
# GraphQL cost accounting


def product_node_cost(*, media: int = MEDIA_PER_PRODUCT, extra_objects: int = 0) -> int:
    """Requested cost of one product node as we query it, by Shopify's rule.

    The node itself is 1; `media(first: M)` is a connection, 2 + M × (1 + its node's cost), and each media node
    selects one object (`image`); `extra_objects` are objects selected on the product (the price range).
    """
    return 1 + (2 + media * (1 + 1)) + extra_objects


def products_page_cost(first: int, *, media: int = MEDIA_PER_PRODUCT, extra_objects: int = 0) -> int:
    """Requested cost of one products page: the connection's 2, `pageInfo` (an object, 1), N product nodes.

    Counting every object errs high: a server that counts fewer tells us so in `requestedQueryCost`, and the next
    page grows; erring low would cost a refused query first.
    """
    return PAGE_FIXED_COST + first * product_node_cost(media=media, extra_objects=extra_objects)


def events_page_cost(first: int) -> int:
    """Requested cost of one events page: the connection's 2, `pageInfo` 1, and N events of scalars only."""
    return PAGE_FIXED_COST + first


def media_needed(media: Sequence[Any]) -> int:
    """How many of a product's media (in order) hold its first 10 images; all of them when it has fewer images."""
    # Counted as the catalog will see them: a picture uploaded twice is one image.
    for position in range(MAX_IMAGES, len(media) + 1):
        if len(_media_images(media[:position])) >= MAX_IMAGES:
            return position
    return len(media)


class PageSizer:
    """How many products a page asks for (`first`) and how deep it reads each product's media (`media`).

    Shopify refuses a query whose *requested* cost, the worst case of every product filling `media(first: M)`, is
    over 1,000 or over the bucket, and charges the *actual* cost of what came back. With 15 media asked a page holds
    30 products, while most products have fewer media: when the actual cost per product is below the requested one,
    the depth shrinks to one more than the deepest any product read so far needed for its first 10 images (so a
    product that returns fewer media than asked is known to be whole), and `first` grows to fill the cap and the
    bucket, up to 250. A product that fills the depth with fewer than 10 images among them may have more: the
    connector reads it again alone at full depth (`truncated`), and its need deepens the pages that follow.

    The server's `requestedQueryCost` corrects our estimate (`ratio`), so a server that counts a little
    differently costs one answer, not a failed read.
    """

    def __init__(self, *, extra_objects: int, wanted: int) -> None:
        self.extra_objects = extra_objects
        self.wanted = max(1, min(wanted, MAX_PAGE_SIZE))
        self.media = MEDIA_PER_PRODUCT
        # The most media any product read so far needed for its first 10 images.
        self.deepest = 0
        # The server's requested cost per product over our estimate at the same depth.
        self.ratio = 1.0
        self.actual_per_product: float | None = None

    def per_product(self, media: int | None = None) -> float:
        """Requested cost of one product at `media` depth (the current one by default)."""
        depth = self.media if media is None else media
        return product_node_cost(media=depth, extra_objects=self.extra_objects) * self.ratio

    def page_cost(self, first: int) -> float:
        return PAGE_FIXED_COST + first * self.per_product()

    def first(self, capacity: float) -> int:
        """Products per page: as many as the per-query cap and the bucket (`capacity`) allow, within `wanted`."""
        fit = math.floor((capacity - PAGE_FIXED_COST) / self.per_product())
        return max(1, min(self.wanted, fit))

    def learn_requested(self, first: int, requested: float | None) -> None:
        if requested is None or first <= 0:
            return
        per_product = (requested - PAGE_FIXED_COST) / first
        if per_product > 0:
            self.ratio = per_product / product_node_cost(media=self.media, extra_objects=self.extra_objects)

    def record_page(
        self, *, first: int, requested: float | None, actual: float | None, needed: Sequence[int]
    ) -> None:
        """What a page of `first` products cost and how deep each product it returned needed its media."""
        self.learn_requested(first, requested)
        if actual is not None and needed:
            self.actual_per_product = max(0.0, actual - PAGE_FIXED_COST) / len(needed)
        self.saw(*needed)

    def saw(self, *needed: int) -> None:
        """Products needing this many media: deepen at once when one needs more than is asked; shrink only once
        the actual cost shows that products leave part of what is asked unused."""
        self.deepest = max(self.deepest, *needed) if needed else self.deepest
        target = min(MEDIA_PER_PRODUCT, self.deepest + 1)
        unused = self.actual_per_product is not None and self.actual_per_product < self.per_product()
        if target > self.media or (target < self.media and unused):
            self.media = target

    def truncated(self, asked: int, media: Sequence[Any]) -> bool:
        """Whether a product read `asked` deep may have more media than it returned, with too few images read."""
        if asked >= MEDIA_PER_PRODUCT or len(media) < asked:
            return False
        return len(_media_images(media)) < MAX_IMAGES


class CostBucket:
    """Shopify's per-app cost bucket as last reported, restored over time, with a wait-before-send.

    `acquire(cost)` sleeps until the bucket should hold `cost` points; `update(throttle_status)` records what the
    server said. Before the first answer the bucket is assumed full.
    """

    def __init__(self, *, sleep: Sleep = time.sleep, clock: Clock = time.monotonic) -> None:
        self._sleep = sleep
        self._clock = clock
        self.maximum = DEFAULT_BUCKET_SIZE
        self.restore_rate = DEFAULT_RESTORE_RATE
        self._available: float | None = None
        self._observed_at = 0.0
        self.known = False

    def update(self, throttle_status: Any) -> None:
        if not isinstance(throttle_status, Mapping):
            return
        try:
            maximum = float(throttle_status["maximumAvailable"])
            available = float(throttle_status["currentlyAvailable"])
            restore = float(throttle_status["restoreRate"])
        except (KeyError, TypeError, ValueError):
            return
        if maximum > 0:
            self.maximum = maximum
        if restore > 0:
            self.restore_rate = restore
        self._available = max(0.0, available)
        self._observed_at = self._clock()
        self.known = True

    def mark_empty(self) -> None:
        """The server throttled us without saying how full the bucket is: assume it is empty now."""
        self._available = 0.0
        self._observed_at = self._clock()

    def available_now(self) -> float:
        if self._available is None:
            return self.maximum
        restored = (self._clock() - self._observed_at) * self.restore_rate
        return min(self.maximum, self._available + restored)

    def wait_needed(self, cost: float) -> float:
        """Seconds until `cost` points should be available (0 when they already are)."""
        missing = min(cost, self.maximum) - self.available_now()
        if missing <= 0:
            return 0.0
        return missing / self.restore_rate + RESTORE_MARGIN_SECONDS

    def acquire(self, cost: float) -> float:
        wait = self.wait_needed(cost)
        if wait > 0:
            self._sleep(wait)
        return wait

    @property
    def capacity(self) -> int:
        """The largest cost one query may request: the bucket's size, and never above Shopify's per-query cap."""
        return int(min(self.maximum, MAX_QUERY_COST))


class _BulkUnavailable(SourceError):
    """The shop will not run our bulk export (`reason`: refused, access_denied, busy, timed_out, or the
    operation's error code or end status); the read falls back to pages."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _CostTooHigh(Exception):
    """A query asked for more points than one query may (or than the bucket holds)."""

    def __init__(self, requested: float | None) -> None:
        super().__init__(f"requested cost {requested}")
        self.requested = requested


# --------------------------------------------------------------------------------------------------------------
# Connectors


# The settings model of a flavour's kind.
_Flavour = TypeVar("_Flavour", ShopifySource, ShopifyRestSource, StorefrontSource)


class _ShopifyBase(HttpConnector, Generic[_Flavour]):
    """What the three flavours share: the HTTP client, the source's name and settings, webhooks, closing."""

    kind: str = ""
    model: type[_Flavour]

    def __init__(
        self,
        config: SourceConfig,
        *,
        client: httpx.Client | None = None,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        if not isinstance(config, self.model):
            raise ConfigError(
                f"source {config.name!r} has kind {config.kind!r}; {type(self).__name__} reads {self.kind!r}"
            )
        self.config: _Flavour = config
        self.source = config.name
        self.shop_url = config.url.rstrip("/")
        parts = urlsplit(self.shop_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"source {config.name!r}: url {config.url!r} is not an http(s) shop address")
        super().__init__(client, timeout=config.timeout)
        # The Admin API root, REST and GraphQL alike; none for the storefront, which reads the shop's public pages.
        self.base = f"{self.shop_url}/admin/api/{config.api_version}" if isinstance(config, ShopifyAdminSource) else ""
        self._sleep = sleep
        self._clock = clock
        self._what = f"Shopify source {config.name!r}"

    def _headers(self) -> dict[str, str]:
        # Per request rather than on the client: a shared client must not carry one shop's token to another host.
        if not isinstance(self.config, ShopifyAdminSource):  # the storefront's pages are public
            return {}
        return {"X-Shopify-Access-Token": self.config.access_token.get_secret_value()}

    def _send_admin(self, method: str, url: str, *, ok: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """A request carrying the access token, which never follows a redirect.

        httpx drops only `Authorization` when a redirect leaves the origin; our token header would travel on to
        wherever the shop's address points, so a redirect is reported instead, with the fix.
        """
        response = send(
            self._client,
            method,
            url,
            what=self._what,
            sleep=self._sleep,
            ok_statuses=ok + _REDIRECTS,
            headers=self._headers(),
            follow_redirects=False,
            **kwargs,
        )
        if response.status_code in _REDIRECTS and response.status_code not in ok:
            target = response.headers.get("Location", "?").split("?", 1)[0]
            raise SourceError(
                f"{self._what}: {url.split('?', 1)[0]} redirects ({response.status_code}) to {target}; set the "
                f"source's url to the shop's admin address (https://<shop>.myshopify.com): the access token is "
                f"never sent on after a redirect"
            )
        return response

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """Verify `X-Shopify-Hmac-Sha256` over the raw bytes, then parse the product topic."""
        check_webhook_signature(headers, body, self.config.webhook_secrets)
        return parse_webhook(self.source, headers, body, shop_url=self.shop_url)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, url={self.shop_url!r})"

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except (ValueError, RecursionError):  # not JSON, not UTF-8, a number too long, nesting too deep
            raise SourceError(
                f"{self._what}: {response.request.url.copy_with(query=None)} answered {response.status_code} "
                f"with a body that is not JSON"
            ) from None


class ShopifyGraphQL(_ShopifyBase[ShopifySource]):
    """The Admin GraphQL API (`kind = "shopify"`), with bulk export.

    `bulk` overrides the source's `bulk` setting for this connector (the admin command's `--bulk/--no-bulk`):
    "auto" reads a full run (`iter_products(None)`) with a bulk export and an incremental one page by page,
    "always" uses bulk for both, "never" pages always. A bulk export the shop will not run (refused, access denied,
    another bulk query of the app that never finishes, an operation that fails) falls back to paged reads, with a
    warning and a `bulk_fallback` note the run counts.
    """

    kind = "shopify"
    model = ShopifySource

    def __init__(
        self,
        config: SourceConfig,
        *,
        client: httpx.Client | None = None,
        bulk: BulkMode | None = None,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(config, client=client, sleep=sleep, clock=clock)
        config = self.config  # a ShopifySource now: the base refused any other kind
        self.bulk: BulkMode = config.bulk if bulk is None else bulk
        self.endpoint = f"{self.base}/graphql.json"
        self.bucket = CostBucket(sleep=sleep, clock=clock)
        self._with_prices = bool(_PRICE_ATTRIBUTES & set(config.metadata_fields))
        # Collections cost a connection per product: asked only when the source filters on them.
        filters = [rules for rules in (config.include, config.exclude) if rules is not None]
        self._with_collections = any(rules.collection for rules in filters)
        # Options and variants cost 150 points a product: asked only when the source splits products by an option.
        self._with_variants = config.split_by is not None
        self._products_query = (
            "query Products($first: Int!, $media: Int!, $after: String, $query: String) { "
            "products(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) { "
            f"pageInfo {{ hasNextPage endCursor }} edges {{ node {{ {self._product_fields('$media')} }} }} }} }}"
        )
        self._product_query = (
            f"query Product($id: ID!) {{ product(id: $id) {{ {self._product_fields(str(MEDIA_PER_PRODUCT))} }} }}"
        )
        extra = (
            (_PRICE_COST if self._with_prices else 0)
            + (_COLLECTIONS_COST if self._with_collections else 0)
            + (_SPLIT_COST if self._with_variants else 0)
        )
        self.sizer = PageSizer(extra_objects=extra, wanted=config.page_size or MAX_PAGE_SIZE)
        self._last_requested: float | None = None
        self._last_actual: float | None = None
        # THROTTLED answers seen by this connector: pacing should keep this near zero.
        self.throttled = 0
        # Products read again alone because a page's media depth may have cut their images short.
        self.refetched = 0
        # `first` of every products page read, in order: how the pages grew.
        self.page_sizes: list[int] = []
        self._notes: Counter[str] = Counter()

    def _product_fields(self, media: str | None) -> str:
        """The fields read per product; `media` is the media depth (a number or a variable), None for all of them
        (a bulk query reads connections whole)."""
        media_args = "" if media is None else f"(first: {media})"
        collections_args = "" if media is None else f"(first: {COLLECTIONS_PER_PRODUCT})"
        collections = (
            f"collections{collections_args} {{ edges {{ node {{ {_COLLECTION_FIELDS} }} }} }}"
            if self._with_collections
            else ""
        )
        variants_args = "" if media is None else f"(first: {VARIANTS_PER_PRODUCT})"
        variants = (
            f"{_OPTION_FIELDS} variants{variants_args} {{ edges {{ node {{ {_VARIANT_FIELDS} }} }} }}"
            if self._with_variants
            else ""
        )
        return (
            f"{_PRODUCT_SCALARS} {_PRICE_FIELDS if self._with_prices else ''} "
            f"media{media_args} {{ edges {{ node {{ {_MEDIA_FIELDS} }} }} }} {collections} {variants}"
        )

    @property
    def notes(self) -> Mapping[str, int]:
        """How the reads went, for the run's counts: `bulk_fallback` (and `bulk_fallback:<why>`)."""
        return dict(self._notes)

    # -- the one GraphQL call -----------------------------------------------------------------------------------

    def _graphql(self, query: str, variables: Mapping[str, Any] | None, *, cost: float) -> Mapping[str, Any]:
        """POST one query, pacing by the bucket and retrying THROTTLED; return `data` or raise."""
        throttled = 0
        while True:
            self.bucket.acquire(cost)
            response = self._send_admin(
                "POST", self.endpoint, ok=(429,), json={"query": query, "variables": dict(variables or {})}
            )
            throttled_status = response.status_code == 429
            # A 429 may come from a proxy in front of the API with a plain-text body: still a throttle.
            payload = self._json(response) if not throttled_status or _is_json(response) else {}
            if not isinstance(payload, Mapping):
                raise SourceError(f"{self._what}: GraphQL answered {response.status_code} with a non-object body")
            extensions = payload.get("extensions")
            cost_info = extensions.get("cost") if isinstance(extensions, Mapping) else None
            requested: float | None = None
            reported = False
            if isinstance(cost_info, Mapping):
                reported = isinstance(cost_info.get("throttleStatus"), Mapping)
                self.bucket.update(cost_info.get("throttleStatus"))
                if isinstance(cost_info.get("requestedQueryCost"), int | float):
                    requested = float(cost_info["requestedQueryCost"])
                    self._last_requested = requested
                if isinstance(cost_info.get("actualQueryCost"), int | float):
                    self._last_actual = float(cost_info["actualQueryCost"])
            errors = payload.get("errors")
            codes = _error_codes(errors)
            if "THROTTLED" in codes or throttled_status:
                throttled += 1
                self.throttled += 1
                need = requested if requested is not None else cost
                if need > self.bucket.maximum:
                    # Waiting cannot help: the bucket never holds this much.
                    raise _CostTooHigh(need)
                if throttled > MAX_THROTTLED_RETRIES:
                    raise SourceError(
                        f"{self._what}: still THROTTLED after {MAX_THROTTLED_RETRIES} waits for the cost bucket"
                    )
                log.info("%s: THROTTLED; waiting for the bucket to restore %.0f points", self._what, need)
                if not reported:
                    self._wait_unreported(response, need)
                cost = need
                continue
            if "MAX_COST_EXCEEDED" in codes:
                raise _CostTooHigh(_reported_cost(errors) or requested)
            if errors:
                self._raise_errors(errors, codes)
            data = payload.get("data")
            if not isinstance(data, Mapping):
                raise SourceError(f"{self._what}: GraphQL answer without data or errors")
            return data

    def _wait_unreported(self, response: httpx.Response, need: float) -> None:
        """A throttle that did not say how full the bucket is: honour Retry-After, else assume it empty."""
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        if retry_after is None:
            self.bucket.mark_empty()
            return
        if retry_after > MAX_RETRY_AFTER:
            raise RateLimited(
                f"{self._what}: throttled for {retry_after:.0f} s; giving up for this run", retry_after=retry_after
            )
        self._sleep(retry_after)

    def _raise_errors(self, errors: Any, codes: set[str]) -> None:
        messages = "; ".join(_error_messages(errors)) or "unknown error"
        if "ACCESS_DENIED" in codes or "UNAUTHORIZED" in codes:
            raise AuthError(
                f"{self._what}: the shop refused access ({messages}); the token needs the read_products scope",
                code="ACCESS_DENIED",
            )
        raise SourceError(f"{self._what}: GraphQL error: {messages}")

    # -- paging ---------------------------------------------------------------------------------------------------

    def page_size(self) -> int:
        """Products the next page asks for: as many as fit the per-query cost cap and the bucket at the current
        media depth, within `page_size`."""
        return self.sizer.first(self.bucket.capacity)

    def _products_page(self, after: str | None, search: str | None) -> tuple[Mapping[str, Any], int]:
        """One products page and the media depth it was read at; resized when the server says the query costs
        more than it can run."""
        first = self.page_size()
        for _ in range(MAX_RESIZES):
            self._last_requested = self._last_actual = None
            media = self.sizer.media
            try:
                data = self._graphql(
                    self._products_query,
                    {"first": first, "media": media, "after": after, "query": search},
                    cost=self.sizer.page_cost(first),
                )
            except _CostTooHigh as exc:
                previous = first
                self.sizer.learn_requested(first, exc.requested)
                first = min(self.page_size(), previous // 2 if exc.requested is None else previous - 1)
                if first < 1:
                    break
                log.info("%s: a page of %d costs too much; asking for %d", self._what, previous, first)
                continue
            connection = data.get("products")
            if not isinstance(connection, Mapping):
                raise SourceError(f"{self._what}: GraphQL answer without products")
            nodes = [node for node in _connection_nodes(connection) if isinstance(node, Mapping)]
            needed = [media_needed(_connection_nodes(node.get("media"))) for node in nodes]
            self.sizer.record_page(
                first=first, requested=self._last_requested, actual=self._last_actual, needed=needed
            )
            self.page_sizes.append(first)
            return connection, media
        raise SourceError(f"{self._what}: no products page fits the shop's per-query cost limit")

    def _iter_pages(self, since: datetime | None) -> Iterator[SourceProduct | SkippedProduct]:
        if not self.bucket.known:
            # A one-point query first, so the first page is sized for the real bucket, not an assumed one.
            self.product_count()
        search = _updated_since(since)
        depths: list[int] = []

        def fetch(after: str | None) -> Mapping[str, Any]:
            connection, media = self._products_page(after, search)
            depths.append(media)
            return connection

        for connection in iter_pages(RelayCursorPaginator(what=self._what), fetch):
            asked = depths[-1]
            for node in _connection_nodes(connection):
                if isinstance(node, Mapping) and self.sizer.truncated(asked, _connection_nodes(node.get("media"))):
                    node = self._whole_product(node)
                yield normalize_graphql_product(self.source, node)

    def _whole_product(self, node: Mapping[str, Any]) -> Any:
        """The product read alone with every media slot, when its page's depth may have cut its images short."""
        self.refetched += 1
        cost = self.sizer.per_product(MEDIA_PER_PRODUCT)
        data = self._graphql(self._product_query, {"id": node.get("id")}, cost=cost)
        whole = data.get("product")
        if not isinstance(whole, Mapping):
            # Deleted since its page was read: the page's copy is all there is; the next run sees it gone.
            return node
        self.sizer.saw(media_needed(_connection_nodes(whole.get("media"))))
        return whole

    # -- deletions ------------------------------------------------------------------------------------------------

    def iter_deletions(self, since: datetime) -> Iterator[ProductDeletion]:
        """Products deleted at or after `since`, from the shop's `destroy` events (as Airbyte's `deleted_products`
        stream reads them). API versions before 2024-10 have no `events` query: nothing is read, with a warning."""
        version = self.config.api_version
        if version[:1].isdigit() and version < EVENTS_SINCE:
            log.warning(
                "%s: API version %s has no events query; deletions are seen by full runs and webhooks only "
                "(set api_version to %s or later)",
                self._what,
                version,
                EVENTS_SINCE,
            )
            return
        search = deleted_products_search(since)
        first = max(1, min(EVENTS_PAGE_SIZE, self.bucket.capacity - events_page_cost(0)))

        def fetch(after: str | None) -> Mapping[str, Any]:
            variables = {"first": first, "after": after, "query": search}
            data = self._graphql(_EVENTS_QUERY, variables, cost=events_page_cost(first))
            connection = data.get("events")
            if not isinstance(connection, Mapping):
                raise SourceError(f"{self._what}: GraphQL answer without events")
            return connection

        for connection in iter_pages(RelayCursorPaginator(what=self._what), fetch):
            for node in _connection_nodes(connection):
                deletion = _product_deletion(self.source, node)
                if deletion is not None:
                    yield deletion

    # -- bulk export ----------------------------------------------------------------------------------------------

    def product_count(self) -> int:
        """The shop's product count (`productsCount`, which Shopify caps at 10,000); one point, so it also tells the
        bucket's size before the first page is sized."""
        data = self._graphql(_COUNT_QUERY % "", None, cost=COUNT_QUERY_COST)
        counted = data.get("productsCount")
        count = counted.get("count") if isinstance(counted, Mapping) else counted
        if isinstance(count, bool) or not isinstance(count, int):
            raise SourceError(f"{self._what}: productsCount answered {counted!r}")
        return count

    def _use_bulk(self, since: datetime | None) -> bool:
        if self.bulk == "always":
            return True
        return self.bulk == "auto" and since is None

    def _bulk_query(self, since: datetime | None) -> str:
        search = _updated_since(since)
        argument = f"(query: {json.dumps(search)})" if search else ""
        # No `first` on connections: a bulk query reads them all.
        return f"{{ products{argument} {{ edges {{ node {{ {self._product_fields(None)} }} }} }} }}"

    def _start_bulk(self, since: datetime | None) -> str:
        # From 2026-01 the JSONL is no longer grouped by parent unless asked; earlier versions group by default.
        version = self.config.api_version
        group = ", groupObjects: true" if version >= BULK_UNGROUPED_SINCE and version[:1].isdigit() else ""
        mutation = _BULK_RUN % group
        for attempt in range(1, BULK_BUSY_RETRIES + 1):
            try:
                data = self._graphql(mutation, {"query": self._bulk_query(since)}, cost=BULK_RUN_COST)
            except AuthError as exc:
                raise _BulkUnavailable("access_denied", str(exc)) from None
            result = data.get("bulkOperationRunQuery")
            if not isinstance(result, Mapping):
                raise SourceError(f"{self._what}: bulkOperationRunQuery answered without a result")
            messages = [m for m in _error_messages(result.get("userErrors")) if m]
            operation = result.get("bulkOperation")
            operation_id = operation.get("id") if isinstance(operation, Mapping) else None
            if not messages and isinstance(operation_id, str):
                return operation_id
            if any("in progress" in message.lower() for message in messages):
                log.info("%s: another bulk query is running; waiting (%d/%d)", self._what, attempt, BULK_BUSY_RETRIES)
                self._sleep(BULK_BUSY_WAIT)
                continue
            raise _BulkUnavailable("refused", f"bulk export refused: {'; '.join(messages) or 'no operation returned'}")
        raise _BulkUnavailable(
            "busy", f"another bulk query of this app kept running for {BULK_BUSY_RETRIES * BULK_BUSY_WAIT:.0f} s"
        )

    def _await_bulk(self, operation_id: str) -> str | None:
        """Poll until the operation completes; its result URL (None when it found nothing)."""
        waited = 0.0
        interval = BULK_POLL_FIRST
        while True:
            data = self._graphql(_BULK_POLL, {"id": operation_id}, cost=BULK_POLL_COST)
            node = data.get("node")
            if not isinstance(node, Mapping):
                raise SourceError(f"{self._what}: bulk operation {operation_id} not found")
            status = str(node.get("status") or "").upper()
            if status == "COMPLETED":
                url = node.get("url")
                return url if isinstance(url, str) and url else None
            if status in ("FAILED", "CANCELED", "CANCELLED", "EXPIRED", "CANCELING"):
                code = node.get("errorCode") or "no error code"
                raise _BulkUnavailable(
                    str(code).lower() if node.get("errorCode") else status.lower(),
                    f"bulk operation {operation_id} ended {status} ({code})",
                )
            if waited >= BULK_POLL_MAX_TOTAL:
                raise _BulkUnavailable(
                    "timed_out", f"bulk operation {operation_id} still {status or 'pending'} after {waited:.0f} s"
                )
            self._sleep(interval)
            waited += interval
            interval = min(BULK_POLL_CAP, interval * BULK_POLL_GROWTH)

    def _stream_bulk(self, url: str) -> Iterator[SourceProduct | SkippedProduct]:
        # The result lives on a storage host, not the shop: no access token goes with this request.
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code >= 300:
                    raise SourceError(f"{self._what}: the bulk result download answered {response.status_code}")
                for record, children in group_bulk_lines(response.iter_lines()):
                    yield normalize_graphql_product(self.source, record, children)
        except httpx.HTTPError as exc:
            raise SourceError(f"{self._what}: the bulk result download failed: {type(exc).__name__}: {exc}") from None

    def _iter_bulk(self, since: datetime | None) -> Iterator[SourceProduct | SkippedProduct]:
        """A bulk export; page by page instead when the shop will not run one. Nothing has been read when that is
        decided, so the paged read is the whole read."""
        try:
            url = self._await_bulk(self._start_bulk(since))
        except _BulkUnavailable as exc:
            log.warning("%s: %s; reading page by page instead", self._what, exc)
            self._notes["bulk_fallback"] += 1
            self._notes[f"bulk_fallback:{exc.reason}"] += 1
            yield from self._iter_pages(since)
            return
        if url is not None:
            yield from self._stream_bulk(url)

    # -- the connector surface -------------------------------------------------------------------------------

    def iter_products(self, since: datetime | None = None) -> Iterator[SourceProduct | SkippedProduct]:
        items = self._iter_bulk(since) if self._use_bulk(since) else self._iter_pages(since)
        yield from _at_or_after(items, since)

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        event = super().verify_webhook(headers, body)
        if self._with_collections and event.product is not None:
            # A webhook's product has no collections, which the source's filter needs: the worker fetches it whole.
            return replace(event, product=None)
        return event

    def get_product(self, product_id: str) -> SourceProduct | None:
        number = _require_id(product_id, self._what)
        gid = f"{_GID_PREFIX}Product/{number}"
        data = self._graphql(self._product_query, {"id": gid}, cost=self.sizer.per_product(MEDIA_PER_PRODUCT))
        node = data.get("product")
        if node is None:
            return None
        product = normalize_graphql_product(self.source, node)
        if isinstance(product, SkippedProduct):
            raise product
        return product

    # -- webhook subscriptions (connectors.subscriptions.SubscriptionApi) ------------------------------------------

    def webhook_topics(self) -> tuple[str, ...]:
        return WEBHOOK_TOPICS

    def _uses_uri(self) -> bool:
        version = self.config.api_version
        # `unstable` follows the newest version.
        return not version[:1].isdigit() or version >= WEBHOOK_URI_SINCE

    def _webhook_fields(self) -> str:
        return _WEBHOOK_FIELDS_URI if self._uses_uri() else _WEBHOOK_FIELDS_ENDPOINT

    def _webhook_input(self, url: str) -> dict[str, str]:
        return {"uri" if self._uses_uri() else "callbackUrl": url, "format": "JSON"}

    def list_subscriptions(self) -> list[Subscription]:
        query = _WEBHOOK_LIST % self._webhook_fields()
        topics = [_graphql_topic(topic) for topic in WEBHOOK_TOPICS]
        cost = products_page_cost(0) + WEBHOOK_PAGE_SIZE * 2

        def fetch(after: str | None) -> Mapping[str, Any]:
            data = self._graphql(query, {"topics": topics, "after": after}, cost=cost)
            connection = data.get("webhookSubscriptions")
            if not isinstance(connection, Mapping):
                raise SourceError(f"{self._what}: GraphQL answer without webhookSubscriptions")
            return connection

        found: list[Subscription] = []
        for connection in iter_pages(RelayCursorPaginator(what=self._what), fetch):
            found.extend(self._subscription(node) for node in _connection_nodes(connection))
        return found

    def create_subscription(self, topic: str, url: str) -> Subscription:
        variables = {"topic": _graphql_topic(topic), "webhookSubscription": self._webhook_input(url)}
        data = self._graphql(_WEBHOOK_CREATE % self._webhook_fields(), variables, cost=MUTATION_COST)
        return self._mutated(data, "webhookSubscriptionCreate", f"registering {topic}")

    def update_subscription(self, subscription: Subscription, url: str) -> Subscription:
        variables = {"id": subscription.id, "webhookSubscription": self._webhook_input(url)}
        data = self._graphql(_WEBHOOK_UPDATE % self._webhook_fields(), variables, cost=MUTATION_COST)
        return self._mutated(data, "webhookSubscriptionUpdate", f"updating {subscription.topic}")

    def delete_subscription(self, subscription: Subscription) -> None:
        data = self._graphql(_WEBHOOK_DELETE, {"id": subscription.id}, cost=MUTATION_COST)
        result = data.get("webhookSubscriptionDelete")
        messages = _error_messages(result.get("userErrors")) if isinstance(result, Mapping) else []
        # A subscription already gone is what was asked for.
        if messages and not any("not exist" in m.lower() or "not found" in m.lower() for m in messages):
            raise SourceError(f"{self._what}: removing {subscription.topic} refused: {'; '.join(messages)}")

    def _mutated(self, data: Mapping[str, Any], field: str, doing: str) -> Subscription:
        result = data.get(field)
        if not isinstance(result, Mapping):
            raise SourceError(f"{self._what}: {field} answered without a result")
        messages = [m for m in _error_messages(result.get("userErrors")) if m]
        node = result.get("webhookSubscription")
        if messages or not isinstance(node, Mapping):
            raise SourceError(f"{self._what}: {doing} refused: {'; '.join(messages) or 'no subscription returned'}")
        return self._subscription(node)

    def _subscription(self, node: Any) -> Subscription:
        if not isinstance(node, Mapping) or not isinstance(node.get("id"), str):
            raise SourceError(f"{self._what}: a webhook subscription without an id: {str(node)[:200]}")
        endpoint = node.get("endpoint")
        url = node.get("uri")
        if url is None and isinstance(endpoint, Mapping):
            # Pub/Sub and EventBridge endpoints have no callback URL: they never reach catalog-sync.
            url = endpoint.get("callbackUrl") or endpoint.get("__typename", "")
        return Subscription(id=node["id"], topic=_rest_topic(str(node.get("topic") or "")), url=str(url or ""))


class ShopifyRest(_ShopifyBase[ShopifyRestSource]):
    """The legacy REST Admin API (`kind = "shopify-rest"`): Link-header paging and the call-limit header."""

    kind = "shopify-rest"
    model = ShopifyRestSource

    @property
    def _with_variants(self) -> bool:
        # REST lists options and variants anyway; they are kept only for a source that splits by an option.
        return self.config.split_by is not None

    def _get(self, url: str, *, params: Mapping[str, str] | None = None, ok: tuple[int, ...] = ()) -> httpx.Response:
        response = self._send_admin("GET", url, ok=ok, params=params)
        self._pace(response.headers.get("X-Shopify-Shop-Api-Call-Limit"))
        return response

    def _pace(self, header: str | None) -> None:
        """Sleep while the leaky bucket is nearly full, so the next call does not earn a 429."""
        if not header or "/" not in header:
            return
        used_text, _, limit_text = header.partition("/")
        try:
            used, limit = int(used_text.strip()), int(limit_text.strip())
        except ValueError:
            return
        over = used - (limit - REST_HEADROOM) + 1
        if limit > 0 and over > 0:
            self._sleep(over / REST_LEAK_RATE)

    def _products(self, response: httpx.Response) -> list[Any]:
        payload = self._json(response)
        # Current API versions wrap the list; old ones (and some client fixtures) send the bare array.
        products = payload.get("products") if isinstance(payload, Mapping) else payload
        if not isinstance(products, list):
            raise SourceError(f"{self._what}: products.json answered without a product list")
        return products

    def iter_products(self, since: datetime | None = None) -> Iterator[SourceProduct | SkippedProduct]:
        return _at_or_after(self._iter_pages(since), since)

    def _iter_pages(self, since: datetime | None) -> Iterator[SourceProduct | SkippedProduct]:
        params = {"limit": str(self.config.page_size or MAX_PAGE_SIZE)}
        if since is not None:
            params["updated_at_min"] = _iso(since)
        first = f"{self.base}/products.json"

        def fetch(next_url: str | None) -> httpx.Response:
            return self._get(first, params=params) if next_url is None else self._get(next_url)

        for response in iter_pages(LinkHeaderPaginator(what=self._what), fetch):
            for raw in self._products(response):
                yield normalize_rest_product(self.source, raw, shop_url=self.shop_url, variants=self._with_variants)

    def get_product(self, product_id: str) -> SourceProduct | None:
        number = _require_id(product_id, self._what)
        response = self._get(f"{self.base}/products/{number}.json", ok=(404,))
        if response.status_code == 404:
            return None
        payload = self._json(response)
        raw = payload.get("product") if isinstance(payload, Mapping) else None
        product = normalize_rest_product(self.source, raw, shop_url=self.shop_url, variants=self._with_variants)
        if isinstance(product, SkippedProduct):
            raise product
        return product

    # -- webhook subscriptions (connectors.subscriptions.SubscriptionApi) ------------------------------------------

    def webhook_topics(self) -> tuple[str, ...]:
        return WEBHOOK_TOPICS

    def list_subscriptions(self) -> list[Subscription]:
        found: list[Subscription] = []
        for topic in WEBHOOK_TOPICS:
            for response in iter_pages(LinkHeaderPaginator(what=self._what), partial(self._webhooks_page, topic)):
                payload = self._json(response)
                hooks = payload.get("webhooks") if isinstance(payload, Mapping) else None
                if not isinstance(hooks, list):
                    raise SourceError(f"{self._what}: webhooks.json answered without a webhook list")
                found.extend(self._subscription(hook) for hook in hooks)
        return found

    def _webhooks_page(self, topic: str, next_url: str | None) -> httpx.Response:
        if next_url is not None:
            return self._get(next_url)
        return self._get(f"{self.base}/webhooks.json", params={"topic": topic, "limit": str(MAX_PAGE_SIZE)})

    def create_subscription(self, topic: str, url: str) -> Subscription:
        body = {"webhook": {"topic": topic, "address": url, "format": "json"}}
        response = self._send_admin("POST", f"{self.base}/webhooks.json", ok=(422,), json=body)
        return self._written(response, f"registering {topic}")

    def update_subscription(self, subscription: Subscription, url: str) -> Subscription:
        body = {"webhook": {"id": int(subscription.id), "address": url}}
        response = self._send_admin("PUT", f"{self.base}/webhooks/{subscription.id}.json", ok=(422,), json=body)
        return self._written(response, f"updating {subscription.topic}")

    def delete_subscription(self, subscription: Subscription) -> None:
        # 404: already gone, which is what was asked for.
        self._send_admin("DELETE", f"{self.base}/webhooks/{subscription.id}.json", ok=(404,))

    def _written(self, response: httpx.Response, doing: str) -> Subscription:
        self._pace(response.headers.get("X-Shopify-Shop-Api-Call-Limit"))
        payload = self._json(response)
        if response.status_code == 422:
            errors = payload.get("errors") if isinstance(payload, Mapping) else payload
            raise SourceError(f"{self._what}: {doing} refused: {_rest_errors(errors)}")
        hook = payload.get("webhook") if isinstance(payload, Mapping) else None
        return self._subscription(hook)

    def _subscription(self, hook: Any) -> Subscription:
        if not isinstance(hook, Mapping) or numeric_id(hook.get("id")) is None:
            raise SourceError(f"{self._what}: a webhook without an id: {str(hook)[:200]}")
        return Subscription(
            id=str(numeric_id(hook.get("id"))), topic=str(hook.get("topic") or ""), url=str(hook.get("address") or "")
        )


class ShopifyStorefront(_ShopifyBase[StorefrontSource]):
    """The public storefront `/products.json` (`kind = "shopify-storefront"`): no credentials, published products.

    Every product it lists is published, hence active. It has no updated-at filter, so `since` is applied here.
    """

    kind = "shopify-storefront"
    model = StorefrontSource

    def _page(self, page: int, limit: int) -> ListPage:
        response = send(
            self._client,
            "GET",
            f"{self.shop_url}/products.json",
            what=self._what,
            sleep=self._sleep,
            params={"limit": str(limit), "page": str(page)},
        )
        payload = self._json(response)
        products = payload.get("products") if isinstance(payload, Mapping) else payload
        if not isinstance(products, list):
            raise SourceError(f"{self._what}: /products.json answered without a product list")
        return ListPage(products)

    def _iter_raw(self) -> Iterator[Any]:
        limit = self.config.page_size or MAX_PAGE_SIZE
        for page in iter_pages(_StorefrontPaginator(limit, what=self._what), lambda number: self._page(number, limit)):
            yield from page.items

    def iter_products(self, since: datetime | None = None) -> Iterator[SourceProduct | SkippedProduct]:
        products = (
            normalize_rest_product(self.source, r, shop_url=self.shop_url, storefront=True) for r in self._iter_raw()
        )
        return _at_or_after(products, since)

    def get_product(self, product_id: str) -> SourceProduct | None:
        """By handle (`/products/{handle}.json`), or by numeric id by reading the listing until it turns up."""
        key = product_id.strip()
        number = numeric_id(key)
        if number is None:
            if not key or "/" in key or "?" in key:
                raise SourceError(f"{self._what}: {product_id!r} is neither a product id nor a handle")
            response = send(
                self._client,
                "GET",
                f"{self.shop_url}/products/{key}.json",
                what=self._what,
                sleep=self._sleep,
                ok_statuses=(404,),
            )
            if response.status_code == 404:
                return None
            payload = self._json(response)
            raw: Any = payload.get("product") if isinstance(payload, Mapping) else None
        else:
            raw = next(
                (r for r in self._iter_raw() if isinstance(r, Mapping) and numeric_id(r.get("id")) == number), None
            )
            if raw is None:
                return None
        product = normalize_rest_product(self.source, raw, shop_url=self.shop_url, storefront=True)
        if isinstance(product, SkippedProduct):
            raise product
        return product


class _StorefrontPaginator(PageNumberPaginator):
    """Page numbers that stop at the storefront's page × limit cap: a clear error rather than a silent cut."""

    def __init__(self, limit: int, *, what: str) -> None:
        super().__init__(what=what)
        self._limit = limit
        self._what = what

    def get_next(self, page: ListPage) -> int | None:
        following = self.current_value + 1
        if following * self._limit <= STOREFRONT_MAX_OFFSET:
            return following
        if len(page.items) < self._limit:
            # A short page right at the cap is the shop's last one: nothing was cut off.
            return None
        raise SourceError(
            f"{self._what}: this shop has more than {STOREFRONT_MAX_OFFSET:,} products; the storefront "
            f'endpoint cannot list them all; use kind = "shopify"'
        )


def connector_for(
    source: SourceConfig, client: httpx.Client | None = None, *, bulk: BulkMode | None = None
) -> Connector:
    """The connector for a Shopify source, by its kind; `bulk` overrides the source's setting for this run."""
    if source.kind == "shopify":
        return ShopifyGraphQL(source, client=client, bulk=bulk)
    if source.kind == "shopify-rest":
        return ShopifyRest(source, client=client)
    if source.kind == "shopify-storefront":
        return ShopifyStorefront(source, client=client)
    raise SourceError(f"source {source.name!r}: kind {source.kind!r} is not a Shopify kind")


# --------------------------------------------------------------------------------------------------------------
# Small helpers


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("since must be timezone-aware")
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _at_or_after(
    items: Iterator[SourceProduct | SkippedProduct], since: datetime | None
) -> Iterator[SourceProduct | SkippedProduct]:
    """Drop products older than `since`: server filters work to the second (or not at all, on the storefront)."""
    if since is not None and since.tzinfo is None:
        raise ValueError("since must be timezone-aware")
    for item in items:
        if since is None or not isinstance(item, SourceProduct) or item.updated_at >= since:
            yield item


def deleted_products_search(since: datetime) -> str:
    """The events search for products deleted at or after `since` (to the second, like `_updated_since`)."""
    return f"subject_type:PRODUCT AND action:destroy AND created_at:>='{_iso(since)}'"


def _product_deletion(source: str, node: Any) -> ProductDeletion | None:
    """A `destroy` event of a product as a deletion; None for any other event, or one without an id or time."""
    if not isinstance(node, Mapping):
        return None
    if str(node.get("subjectType") or "").upper() != "PRODUCT" or str(node.get("action") or "") != "destroy":
        return None
    product_id = numeric_id(node.get("subjectId"))
    deleted_at = parse_datetime(_text(node.get("createdAt")))
    if product_id is None or deleted_at is None:
        log.warning("%s: a product destroy event without a usable id or time: %r", source, dict(node))
        return None
    return ProductDeletion(source, product_id, deleted_at)


def _updated_since(since: datetime | None) -> str | None:
    # Truncated to the second and compared with >=, so a product updated within that second is not missed.
    return None if since is None else f"updated_at:>='{_iso(since)}'"


def _require_id(product_id: str, what: str) -> str:
    number = numeric_id(product_id)
    if number is None:
        raise SourceError(f"{what}: {product_id!r} is not a Shopify product id (digits or a Product GID)")
    return number


def _is_json(response: httpx.Response) -> bool:
    return "json" in response.headers.get("Content-Type", "")


def _error_codes(errors: Any) -> set[str]:
    codes: set[str] = set()
    if isinstance(errors, list):
        for error in errors:
            extensions = error.get("extensions") if isinstance(error, Mapping) else None
            if isinstance(extensions, Mapping) and isinstance(extensions.get("code"), str):
                codes.add(extensions["code"])
            if isinstance(error, Mapping) and str(error.get("message", "")).strip().lower() == "throttled":
                codes.add("THROTTLED")
    elif isinstance(errors, str) and errors.strip().lower() == "throttled":
        codes.add("THROTTLED")
    return codes


def _error_messages(errors: Any) -> list[str]:
    if isinstance(errors, str):
        return [errors]
    if not isinstance(errors, list):
        return []
    return [str(e.get("message", "")) if isinstance(e, Mapping) else str(e) for e in errors]


def _reported_cost(errors: Any) -> float | None:
    """The cost a MAX_COST_EXCEEDED error reports (`extensions.cost`), when it does."""
    if not isinstance(errors, list):
        return None
    for error in errors:
        extensions = error.get("extensions") if isinstance(error, Mapping) else None
        if isinstance(extensions, Mapping) and isinstance(extensions.get("cost"), int | float):
            return float(extensions["cost"])
    return None


def _graphql_topic(topic: str) -> str:
    """`products/update` as the GraphQL enum names it: PRODUCTS_UPDATE."""
    return topic.upper().replace("/", "_")


def _rest_topic(topic: str) -> str:
    """PRODUCTS_UPDATE as the delivery header names it: `products/update`."""
    return topic.lower().replace("_", "/", 1)


def _rest_errors(errors: Any) -> str:
    """REST's 422 body, `{"address": ["for this topic has already been taken"]}`, as one line."""
    if isinstance(errors, Mapping):
        return "; ".join(
            f"{name} {' '.join(map(str, reasons)) if isinstance(reasons, list) else reasons}"
            for name, reasons in errors.items()
        )
    return str(errors)[:300]
