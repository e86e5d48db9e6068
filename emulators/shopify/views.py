"""How the schema's objects are read from the product records, for graphql-core and the bulk export alike.

A field is resolved generically: a `Node` wraps the record behind an object (a `Product`, a `Variant`, a `MediaItem`,
a `BulkOperation`) and a field reads the record's attribute of the same name in snake_case (`productType` →
`product_type`), or, for a medium or a variant, its product's (`createdAt`); `id` is the record's global id and
`legacyResourceId` its number. Only the fields that are not a plain attribute are written out, in `COMPUTED`. Every
object field of the schema is checked against this at import, so a schema field with no source fails loudly.

Connections and edges are small classes of their own; plain dicts stand for the few objects that hold no record
(`pageInfo`, `priceRangeV2`, counts, `shop`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from graphql import GraphQLError, GraphQLObjectType, GraphQLResolveInfo, default_field_resolver, get_named_type

from connectors.base import html_to_text
from emulators.shopify.ids import decode_cursor, encode_cursor, gid, graphql_time
from emulators.shopify.products import Collection, MediaItem, Product, Variant, product_collections
from emulators.shopify.schema import SCHEMA
from emulators.shopify.webhooks import Subscription


@dataclass(frozen=True, slots=True)
class Node:
    """An object of the schema: its GraphQL type, the record behind it and, for media and variants, their product."""

    typename: str
    record: Any
    owner: Product | None = None


@dataclass(slots=True)
class Connection:
    """A page of nodes; cursors are encoded only when asked for (a bulk export never is)."""

    items: list[Any]
    keys: list[tuple[int, int]]
    has_next: bool
    has_previous: bool

    @property
    def edges(self) -> list[Edge]:
        return [Edge(item, key) for item, key in zip(self.items, self.keys, strict=True)]

    @property
    def nodes(self) -> list[Any]:
        return self.items

    @property
    def pageInfo(self) -> dict[str, Any]:
        return {
            "hasNextPage": self.has_next,
            "hasPreviousPage": self.has_previous,
            "startCursor": encode_cursor(self.keys[0]) if self.keys else None,
            "endCursor": encode_cursor(self.keys[-1]) if self.keys else None,
        }


@dataclass(frozen=True, slots=True)
class Edge:
    node: Any
    key: tuple[int, int]

    @property
    def cursor(self) -> str:
        return encode_cursor(self.key)


def paging_args(args: Mapping[str, Any]) -> tuple[int | None, int | None, str | None, str | None, bool]:
    return args.get("first"), args.get("last"), args.get("after"), args.get("before"), bool(args.get("reverse"))


def decode(cursor: str | None) -> tuple[int, int] | None:
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor)
    except ValueError as exc:
        raise GraphQLError(f"Invalid cursor for current pagination sort: {cursor!r}.") from exc


def list_connection(
    nodes: Sequence[Any], keys: Sequence[tuple[int, int]], args: Mapping[str, Any], bulk: bool
) -> Connection:
    """A connection over a product's short list (media, images, variants); a bulk export takes them all."""
    if bulk:
        return Connection(list(nodes), list(keys), False, False)
    first, last, after, before, reverse = paging_args(args)
    order = list(range(len(nodes)))
    if reverse:
        order.reverse()
    after_key, before_key = decode(after), decode(before)
    start, end = 0, len(order)
    if after_key is not None:
        start = next((i + 1 for i, p in enumerate(order) if keys[p] == after_key), len(order))
    if before_key is not None:
        end = next((i for i, p in enumerate(order) if keys[p] == before_key), len(order))
    window = order[start : max(start, end)]
    has_next, has_previous = end < len(order), start > 0
    if first is not None:
        has_next = has_next or len(window) > first
        window = window[:first]
    if last is not None:
        has_previous = has_previous or len(window) > last
        window = window[-last:] if last else []
    return Connection([nodes[p] for p in window], [keys[p] for p in window], has_next, has_previous)


def medium(product: Product, item: MediaItem) -> Node:
    return Node("MediaImage" if item.kind == "IMAGE" else "Video", item, product)


# ----------------------------------------------------------------------------------------------------------------
# The fields that are not a record's attribute

Getter = Callable[["Fields", Node, Mapping[str, Any]], Any]


def _constant(value: Any) -> Getter:
    return lambda fields, node, args: value


def _description(fields: Fields, node: Node, args: Mapping[str, Any]) -> str:
    text = html_to_text(node.record.description_html)
    truncate_at = args.get("truncateAt")
    if truncate_at is not None and len(text) > truncate_at:
        return text[: max(truncate_at - 3, 0)] + "..."
    return text


def _price_range(fields: Fields, node: Node, args: Mapping[str, Any]) -> dict[str, Any]:
    prices = sorted(Decimal(variant.price) for variant in node.record.variants) or [Decimal("0.00")]
    return {
        "minVariantPrice": {"amount": str(prices[0]), "currencyCode": "USD"},
        "maxVariantPrice": {"amount": str(prices[-1]), "currencyCode": "USD"},
    }


def _media(fields: Fields, node: Node, args: Mapping[str, Any]) -> Connection:
    product: Product = node.record
    keys = [(position, item.id) for position, item in enumerate(product.media)]
    return list_connection([medium(product, item) for item in product.media], keys, args, fields.bulk)


def _images(fields: Fields, node: Node, args: Mapping[str, Any]) -> Connection:
    images = node.record.images
    keys = [(position, item.image_id) for position, item in enumerate(images)]
    return list_connection([Node("Image", item) for item in images], keys, args, fields.bulk)


def _variants(fields: Fields, node: Node, args: Mapping[str, Any]) -> Connection:
    product: Product = node.record
    keys = [(variant.position, variant.id) for variant in product.variants]
    return list_connection([Node("ProductVariant", v, product) for v in product.variants], keys, args, fields.bulk)


def _options(fields: Fields, node: Node, args: Mapping[str, Any]) -> list[dict[str, Any]]:
    product: Product = node.record
    first = args.get("first")
    options = product.options if first is None else product.options[:first]
    return [
        {"id": gid("ProductOption", product.id * 10 + position), "name": name, "position": position, "values": values}
        for position, (name, values) in enumerate(options, start=1)
    ]


def _variant_image(fields: Fields, node: Node, args: Mapping[str, Any]) -> Node | None:
    item = node.owner.variant_medium(node.record) if node.owner is not None else None
    return Node("Image", item) if item is not None and item.kind == "IMAGE" else None


def _collections(fields: Fields, node: Node, args: Mapping[str, Any]) -> Connection:
    collections = product_collections(node.record)
    keys = [(position, collection.id) for position, collection in enumerate(collections)]
    return list_connection([Node("Collection", c) for c in collections], keys, args, fields.bulk)


def _video_sources(fields: Fields, node: Node, args: Mapping[str, Any]) -> list[dict[str, Any]]:
    url = node.record.url.replace("preview_images/", "videos/").replace(".jpg", ".mp4")
    return [{"url": url, "mimeType": "video/mp4", "format": "mp4", "width": 1280, "height": 720}]


def _bulk_url(fields: Fields, node: Node, args: Mapping[str, Any]) -> str | None:
    op = node.record
    if op.status != "COMPLETED" or not op.object_count:
        return None
    return f"{op.url_base}/_emulator/bulk/{op.id}.jsonl"


# Global id kind of an event's subject, by its EventSubjectType.
_SUBJECT_KINDS = {"PRODUCT": "Product", "COLLECTION": "Collection", "PRODUCT_VARIANT": "ProductVariant"}


def _subject_id(fields: Fields, node: Node, args: Mapping[str, Any]) -> str:
    return gid(_SUBJECT_KINDS.get(node.record.subject_type, "Product"), node.record.subject_id)


_MEDIA: dict[str, Getter] = {
    "status": _constant("READY"),
    "preview": lambda fields, node, args: {"image": Node("Image", node.record), "status": "READY"},
}

COMPUTED: dict[str, dict[str, Getter]] = {
    "Product": {
        "description": _description,
        "onlineStoreUrl": lambda fields, node, args: (
            f"https://{fields.domain}/products/{node.record.handle}" if node.record.status == "ACTIVE" else None
        ),
        "totalInventory": lambda fields, node, args: sum(v.inventory_quantity for v in node.record.variants),
        "priceRangeV2": _price_range,
        "featuredImage": lambda fields, node, args: (
            Node("Image", node.record.images[0]) if node.record.images else None
        ),
        "featuredMedia": lambda fields, node, args: (
            medium(node.record, node.record.media[0]) if node.record.media else None
        ),
        "mediaCount": lambda fields, node, args: {"count": len(node.record.media), "precision": "EXACT"},
        "variantsCount": lambda fields, node, args: {"count": len(node.record.variants), "precision": "EXACT"},
        "media": _media,
        "images": _images,
        "variants": _variants,
        "collections": _collections,
        "options": _options,
    },
    "ProductVariant": {
        "compareAtPrice": _constant(None),
        "selectedOptions": lambda fields, node, args: [{"name": n, "value": v} for n, v in node.record.options],
        "image": _variant_image,
        "availableForSale": lambda fields, node, args: (
            node.record.inventory_quantity > 0 and node.owner is not None and node.owner.status == "ACTIVE"
        ),
    },
    "Image": {
        "id": lambda fields, node, args: gid("ProductImage", node.record.image_id) if node.record.image_id else None,
    },
    "MediaImage": {
        **_MEDIA,
        "image": lambda fields, node, args: Node("Image", node.record),
        "mimeType": _constant("image/jpeg"),
    },
    "Video": {
        **_MEDIA,
        "filename": lambda fields, node, args: f"{node.owner.handle if node.owner else 'video'}.mp4",
        "sources": _video_sources,
    },
    "WebhookSubscription": {
        "topic": lambda fields, node, args: node.record.topic.upper().replace("/", "_"),
        "format": _constant("JSON"),
        "callbackUrl": lambda fields, node, args: node.record.url,
        "uri": lambda fields, node, args: node.record.url,
        # A union member: `_type_of` reads the dict's `__typename`.
        "endpoint": lambda fields, node, args: {"__typename": "WebhookHttpEndpoint", "callbackUrl": node.record.url},
        "includeFields": _constant([]),
        "metafieldNamespaces": _constant([]),
        "filter": _constant(None),
    },
    "BulkOperation": {
        "objectCount": lambda fields, node, args: node.record.object_count if node.record.status == "COMPLETED" else 0,
        "rootObjectCount": lambda fields, node, args: len(node.record.refs) if node.record.status == "COMPLETED" else 0,
        "fileSize": lambda fields, node, args: (
            node.record.file_size if node.record.status == "COMPLETED" and node.record.object_count else None
        ),
        "url": _bulk_url,
        "partialDataUrl": _constant(None),
        "type": _constant("QUERY"),
    },
    "BasicEvent": {
        "subjectId": _subject_id,
    },
}

# GraphQL names whose attribute is not their snake_case spelling.
RENAMED = {
    "legacyResourceId": "id",
    "altText": "alt",
    "mediaContentType": "kind",
    "src": "url",
    "originalSrc": "url",
    "transformedSrc": "url",
}


def _has(cls: type, name: str) -> bool:
    if dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}:
        return True
    return isinstance(getattr(cls, name, None), property)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _date_time(value: Any) -> str:
    """Records keep epoch seconds (bulk operations a float clock); the API writes whole seconds in UTC."""
    return str(graphql_time(int(value)))


# Custom scalars whose API form is not the record's value (DateTime, and 64-bit integers, which travel as strings).
SCALARS: dict[str, Callable[[Any], Any]] = {"DateTime": _date_time, "UnsignedInt64": str}


def _written(getter: Getter, scalar: Callable[[Any], Any] | None) -> Getter:
    if scalar is None:
        return getter

    def write(fields: Fields, node: Node, args: Mapping[str, Any]) -> Any:
        value = getter(fields, node, args)
        return None if value is None else scalar(value)

    return write


def _source(type_name: str, record: type, field_name: str) -> Getter:
    computed = COMPUTED.get(type_name, {}).get(field_name)
    if computed is not None:
        return computed
    if field_name == "id":
        return lambda fields, node, args: gid(node.typename, node.record.id)
    attribute = RENAMED.get(field_name, _snake(field_name))
    if _has(record, attribute):
        return lambda fields, node, args: getattr(node.record, attribute)
    if record in (Variant, MediaItem) and _has(Product, attribute):
        return lambda fields, node, args: getattr(node.owner, attribute)
    raise LookupError(f"{type_name}.{field_name}: not in COMPUTED and {record.__name__} has no {attribute!r}")


GETTERS: dict[tuple[str, str], Getter] = {}


def register(type_name: str, record: type) -> None:
    """Resolve the object type `type_name` from `record`s; raises LookupError for a field with no source."""
    object_type = SCHEMA.get_type(type_name)
    assert isinstance(object_type, GraphQLObjectType), type_name
    getters = {
        (type_name, field_name): _written(
            _source(type_name, record, field_name), SCALARS.get(get_named_type(definition.type).name)
        )
        for field_name, definition in object_type.fields.items()
    }
    GETTERS.update(getters)


class Fields:
    """The field resolver: a `Node`'s fields from the table above; dicts, connections and the root as graphql-core's
    default resolver reads them. `domain` makes store URLs; in a bulk export (`bulk`) nested connections are unpaged."""

    domain: str
    bulk: bool

    def __init__(self, domain: str, *, bulk: bool = False) -> None:
        self.domain = domain
        self.bulk = bulk

    def read(self, source: Any, type_name: str, field_name: str, args: Mapping[str, Any]) -> Any:
        """`field_name` of the object `source` (of GraphQL type `type_name`): a leaf as the API writes it."""
        if isinstance(source, Node):
            return GETTERS[type_name, field_name](self, source, args)
        if isinstance(source, Mapping):
            return source.get(field_name)
        return getattr(source, field_name)

    def __call__(self, source: Any, info: GraphQLResolveInfo[Any], **args: Any) -> Any:
        if isinstance(source, Node):
            return GETTERS[info.parent_type.name, info.field_name](self, source, args)
        return default_field_resolver(source, info, **args)


# The record class behind each object type that wraps one (the others are dicts, connections or the root; the bulk
# module registers its own operation record).
for _type_name, _record in (
    ("Product", Product),
    ("ProductVariant", Variant),
    ("MediaImage", MediaItem),
    ("Video", MediaItem),
    ("Image", MediaItem),
    ("Collection", Collection),
    ("WebhookSubscription", Subscription),
):
    register(_type_name, _record)
