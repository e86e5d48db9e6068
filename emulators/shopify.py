"""A local Shopify shop that answers the way the real one does, for tests, benchmarks and the demo.

Surfaces (all on one Starlette app; `create_app()`, state at `app.state.shop`):

- Admin GraphQL `POST /admin/api/{version}/graphql.json`: a schema subset (products, product, node, productsCount,
  currentBulkOperation, shop; bulkOperationRunQuery / bulkOperationCancel) run by graphql-core, with Shopify's
  calculated query cost: the requested cost is computed from the parsed query before running (scalars and enums 0,
  an object 1, a connection `2 + size × (1 + cost of one node)`, so nested connections multiply; an interface costs
  its most expensive possible type; a mutation 10), over 1,000 is refused with `MAX_COST_EXCEEDED`, the requested
  cost must fit in a leaky bucket (`THROTTLED` otherwise, HTTP 200 as Shopify does), and the unused part is refunded
  after execution (`actualQueryCost` counts what was returned).
- Bulk operations (CREATED → RUNNING → COMPLETED on the clock, or a configured FAILED/CANCELED/EXPIRED): the JSONL
  result is generated on the fly from a snapshot of product references and streamed (`GET /_emulator/bulk/{id}.jsonl`,
  the operation's `url`); each nested connection's nodes are separate lines with `__parentId`, right after their
  parent when grouped (`groupObjects`, whose default is true before API version 2026-01 and false from it). The
  validated bulk query is compiled once and projected onto the same views the GraphQL endpoint resolves, because
  graphql-core's executor would take minutes for a 20,000-product shop.
- Legacy REST `GET /admin/api/{version}/products.json` (Link `page_info` paging, `X-Shopify-Shop-Api-Call-Limit`,
  429 + `Retry-After: 2.0`), `products/{id}.json`, `products/count.json`.
- Storefront `GET /products.json?limit=&page=` (active products only; silently empty past page×limit 25,000).
- Control `/_emulator/…`: create, edit, delete products (each sends signed `products/*` webhooks to registered
  receivers from a background task), replay deliveries, stats, runtime config (buckets, latency, bulk faults), reset.

The clock is injectable (epoch seconds): it drives both leaky buckets, the bulk operation timeline and the
timestamps of edits, so tests advance time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import httpx
from graphql import (
    BooleanValueNode,
    DocumentNode,
    EnumValueNode,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    VariableNode,
    build_schema,
    execute,
    get_named_type,
    get_operation_ast,
    is_abstract_type,
    is_leaf_type,
    is_object_type,
    parse,
    validate,
)
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from connectors.base import html_to_text
from emulators.shopify_data import (
    SORT_KEYS,
    Collection,
    MediaItem,
    Product,
    ProductFilter,
    ProductStore,
    SearchQueryError,
    Variant,
    decode_cursor,
    encode_cursor,
    gid,
    graphql_time,
    parse_gid,
    parse_time,
    product_collections,
    rest_product,
    storefront_product,
    webhook_product,
)

__all__ = ["Shop", "create_app", "serve", "sign_webhook"]

# A single query may cost at most this much, whatever the bucket (Shopify's documented limit).
MAX_QUERY_COST = 1_000
# Every mutation field costs this much, regardless of what it selects.
MUTATION_COST = 10
# Connections may ask for at most this many nodes per page, GraphQL and REST alike.
MAX_PAGE_SIZE = 250
# REST `limit` when the client sends none; storefront's default is smaller.
REST_DEFAULT_LIMIT = 50
STOREFRONT_DEFAULT_LIMIT = 30
# The storefront endpoint silently returns nothing past this many products (page × limit).
STOREFRONT_CAP = 25_000
# Shopify's 429 always says this, whatever the bucket state.
REST_RETRY_AFTER = "2.0"
REST_429_BODY = {
    "errors": "Exceeded 2 calls per second for api client. Reduce request rates to resume uninterrupted service."
}
UNAUTHORIZED_BODY = {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}
RATE_LIMIT_DOCS = "https://shopify.dev/api/usage/rate-limits"
# Shopify's `productsCount` stops counting here unless asked for more.
DEFAULT_COUNT_LIMIT = 10_000
# Bulk operation ids look like the real ones.
BULK_ID_BASE = 4_046_733_967_549
# Products per graphql-core execution when generating a bulk export: bounds memory to one chunk.
BULK_CHUNK = 100
# Real receivers must answer within 5 s; a slower one counts as a failed delivery.
WEBHOOK_TIMEOUT = 5.0
# Deliveries (with their bodies, for replays) kept for the stats and replay endpoints.
DELIVERY_HISTORY = 1_000
DEFAULT_API_VERSION = "2025-07"
DEFAULT_DOMAIN = "catalog-sync-demo.myshopify.com"
BULK_STATUSES_FINAL = {"COMPLETED", "FAILED", "CANCELED", "EXPIRED"}
BULK_FAULT_STATUSES = {"FAILED", "CANCELED", "EXPIRED"}
BULK_ERROR_CODES = {"ACCESS_DENIED", "INTERNAL_SERVER_ERROR", "TIMEOUT"}
WEBHOOK_TOPICS = ("products/create", "products/update", "products/delete")
# From this Admin API version a bulk query's JSONL is not grouped by parent unless `groupObjects: true`.
BULK_UNGROUPED_SINCE = "2026-01"
# The emulator's well-known token, printed by the CLI; never a real credential.
DEFAULT_ACCESS_TOKEN = "shpat_test"  # noqa: S105

SCHEMA_SDL = """
schema { query: QueryRoot mutation: Mutation }

scalar DateTime
scalar URL
scalar HTML
scalar Money
scalar UnsignedInt64
scalar Decimal

enum ProductStatus { ACTIVE ARCHIVED DRAFT }
enum ProductSortKeys { CREATED_AT ID INVENTORY_TOTAL PRODUCT_TYPE PUBLISHED_AT RELEVANCE TITLE UPDATED_AT VENDOR }
enum MediaContentType { EXTERNAL_VIDEO IMAGE MODEL_3D VIDEO }
enum MediaStatus { FAILED PROCESSING READY UPLOADED }
enum MediaPreviewImageStatus { FAILED PROCESSING READY UPLOADED }
enum CropRegion { BOTTOM CENTER LEFT REGION RIGHT TOP }
enum ImageContentType { JPG PNG WEBP }
enum CountPrecision { AT_LEAST EXACT }
enum CurrencyCode { CAD EUR GBP JPY USD }
enum BulkOperationStatus { CANCELED CANCELING COMPLETED CREATED EXPIRED FAILED RUNNING }
enum BulkOperationErrorCode { ACCESS_DENIED INTERNAL_SERVER_ERROR TIMEOUT }
enum BulkOperationType { MUTATION QUERY }
enum BulkOperationUserErrorCode { INVALID OPERATION_IN_PROGRESS }

input ImageTransformInput {
  crop: CropRegion
  maxWidth: Int
  maxHeight: Int
  scale: Int = 1
  preferredContentType: ImageContentType
}

interface Node { id: ID! }

interface Media {
  alt: String
  id: ID!
  mediaContentType: MediaContentType!
  preview: MediaPreviewImage
  status: MediaStatus!
}

type PageInfo {
  hasNextPage: Boolean!
  hasPreviousPage: Boolean!
  startCursor: String
  endCursor: String
}

type Image {
  id: ID
  altText: String
  url(transform: ImageTransformInput): URL!
  src: URL!
  originalSrc: URL!
  transformedSrc: URL!
  width: Int
  height: Int
}

type MediaPreviewImage { image: Image status: MediaPreviewImageStatus! }

type MediaImage implements Media & Node {
  alt: String
  id: ID!
  image: Image
  mediaContentType: MediaContentType!
  preview: MediaPreviewImage
  status: MediaStatus!
  mimeType: String
  createdAt: DateTime!
  updatedAt: DateTime!
}

type VideoSource { url: String! mimeType: String! format: String! width: Int! height: Int! }

type Video implements Media & Node {
  alt: String
  id: ID!
  mediaContentType: MediaContentType!
  preview: MediaPreviewImage
  status: MediaStatus!
  filename: String!
  sources: [VideoSource!]!
}

type MediaEdge { cursor: String! node: Media! }
type MediaConnection { edges: [MediaEdge!]! nodes: [Media!]! pageInfo: PageInfo! }
type ImageEdge { cursor: String! node: Image! }
type ImageConnection { edges: [ImageEdge!]! nodes: [Image!]! pageInfo: PageInfo! }

type ProductVariant implements Node {
  id: ID!
  legacyResourceId: UnsignedInt64!
  title: String!
  price: Money!
  compareAtPrice: Money
  sku: String
  availableForSale: Boolean!
  inventoryQuantity: Int
  position: Int!
  createdAt: DateTime!
  updatedAt: DateTime!
}
type ProductVariantEdge { cursor: String! node: ProductVariant! }
type ProductVariantConnection { edges: [ProductVariantEdge!]! nodes: [ProductVariant!]! pageInfo: PageInfo! }

type Collection implements Node { id: ID! handle: String! title: String! }
type CollectionEdge { cursor: String! node: Collection! }
type CollectionConnection { edges: [CollectionEdge!]! nodes: [Collection!]! pageInfo: PageInfo! }

type Count { count: Int! precision: CountPrecision! }
type MoneyV2 { amount: Decimal! currencyCode: CurrencyCode! }
type ProductPriceRangeV2 { minVariantPrice: MoneyV2! maxVariantPrice: MoneyV2! }

type Product implements Node {
  id: ID!
  legacyResourceId: UnsignedInt64!
  title: String!
  handle: String!
  descriptionHtml: HTML!
  description(truncateAt: Int): String!
  vendor: String!
  productType: String!
  status: ProductStatus!
  tags: [String!]!
  onlineStoreUrl: URL
  createdAt: DateTime!
  updatedAt: DateTime!
  publishedAt: DateTime
  totalInventory: Int!
  priceRangeV2: ProductPriceRangeV2!
  featuredImage: Image
  featuredMedia: Media
  mediaCount: Count
  variantsCount: Count
  media(first: Int, after: String, last: Int, before: String, reverse: Boolean = false): MediaConnection!
  images(first: Int, after: String, last: Int, before: String, reverse: Boolean = false): ImageConnection!
  variants(first: Int, after: String, last: Int, before: String, reverse: Boolean = false): ProductVariantConnection!
  collections(first: Int, after: String, last: Int, before: String, reverse: Boolean = false): CollectionConnection!
}
type ProductEdge { cursor: String! node: Product! }
type ProductConnection { edges: [ProductEdge!]! nodes: [Product!]! pageInfo: PageInfo! }

type Domain { host: String! url: URL! }
type Shop implements Node {
  id: ID!
  name: String!
  myshopifyDomain: String!
  primaryDomain: Domain!
  url: URL!
  currencyCode: String!
  ianaTimezone: String!
}

type BulkOperation implements Node {
  id: ID!
  status: BulkOperationStatus!
  errorCode: BulkOperationErrorCode
  createdAt: DateTime!
  completedAt: DateTime
  objectCount: UnsignedInt64!
  rootObjectCount: UnsignedInt64!
  fileSize: UnsignedInt64
  url: URL
  partialDataUrl: URL
  query: String!
  type: BulkOperationType!
}
type BulkOperationUserError { field: [String!] message: String! code: BulkOperationUserErrorCode }
type BulkOperationRunQueryPayload { bulkOperation: BulkOperation userErrors: [BulkOperationUserError!]! }
type UserError { field: [String!] message: String! }
type BulkOperationCancelPayload { bulkOperation: BulkOperation userErrors: [UserError!]! }

type QueryRoot {
  products(
    first: Int, after: String, last: Int, before: String, reverse: Boolean = false,
    sortKey: ProductSortKeys = ID, query: String
  ): ProductConnection!
  product(id: ID!): Product
  node(id: ID!): Node
  productsCount(query: String, limit: Int = 10000): Count
  currentBulkOperation(type: BulkOperationType = QUERY): BulkOperation
  shop: Shop!
}

type Mutation {
  bulkOperationRunQuery(query: String!, groupObjects: Boolean): BulkOperationRunQueryPayload
  bulkOperationCancel(id: ID!): BulkOperationCancelPayload
}
"""

SCHEMA: GraphQLSchema = build_schema(SCHEMA_SDL)


class QueryRejected(Exception):
    """A query refused before execution (bad paging arguments); becomes a top-level GraphQL error."""

    def __init__(self, message: str, nodes: Sequence[FieldNode] = ()) -> None:
        super().__init__(message)
        self.nodes = list(nodes)


# ----------------------------------------------------------------------------------------------------------------
# Query cost: computed from the parsed query before execution


def _argument(node: FieldNode, name: str, variables: Mapping[str, Any]) -> Any:
    for argument in node.arguments or ():
        if argument.name.value != name:
            continue
        value = argument.value
        if isinstance(value, VariableNode):
            return variables.get(value.name.value)
        if isinstance(value, IntValueNode):
            return int(value.value)
        if isinstance(value, StringValueNode | EnumValueNode):
            return value.value
        if isinstance(value, BooleanValueNode):
            return value.value
        return None
    return None


def _included(node: FieldNode | InlineFragmentNode | FragmentSpreadNode, variables: Mapping[str, Any]) -> bool:
    for directive in node.directives or ():
        name = directive.name.value
        if name not in {"skip", "include"}:
            continue
        value: Any = None
        for argument in directive.arguments or ():
            if argument.name.value == "if":
                raw = argument.value
                value = variables.get(raw.name.value) if isinstance(raw, VariableNode) else getattr(raw, "value", None)
        if (name == "skip" and value is True) or (name == "include" and value is not True):
            return False
    return True


class CostCalculator:
    """Shopify's requested query cost for one operation (see the module docstring for the rules)."""

    def __init__(self, schema: GraphQLSchema, document: DocumentNode, variables: Mapping[str, Any]) -> None:
        self.schema = schema
        self.variables = variables
        self.fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}

    def operation_cost(self, operation: OperationDefinitionNode) -> int:
        if operation.operation == OperationType.MUTATION:
            root = self.schema.mutation_type
            assert root is not None
            fields = self.collect(root, [operation.selection_set])
            return sum(MUTATION_COST for key, nodes in fields.items() if not nodes[0].name.value.startswith("__"))
        root = self.schema.query_type
        assert root is not None
        return self.selection_cost(root, [operation.selection_set])

    def _applies(self, condition: str | None, runtime: GraphQLObjectType) -> bool:
        if condition is None or condition == runtime.name:
            return True
        named = self.schema.get_type(condition)
        return named is not None and is_abstract_type(named) and self.schema.is_sub_type(named, runtime)

    def collect(self, runtime: GraphQLObjectType, sets: Iterable[SelectionSetNode]) -> dict[str, list[FieldNode]]:
        """Fields by response key, following fragments that apply to `runtime` (GraphQL's CollectFields)."""
        fields: dict[str, list[FieldNode]] = {}

        def visit(selection_set: SelectionSetNode, seen: set[str]) -> None:
            for selection in selection_set.selections:
                if isinstance(selection, FieldNode):
                    if _included(selection, self.variables):
                        key = selection.alias.value if selection.alias else selection.name.value
                        fields.setdefault(key, []).append(selection)
                elif isinstance(selection, InlineFragmentNode):
                    condition = selection.type_condition.name.value if selection.type_condition else None
                    if _included(selection, self.variables) and self._applies(condition, runtime):
                        visit(selection.selection_set, seen)
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    fragment = self.fragments.get(name)
                    if fragment is None or name in seen or not _included(selection, self.variables):
                        continue
                    if self._applies(fragment.type_condition.name.value, runtime):
                        visit(fragment.selection_set, seen | {name})

        for selection_set in sets:
            visit(selection_set, set())
        return fields

    def selection_cost(self, parent: GraphQLObjectType, sets: Sequence[SelectionSetNode]) -> int:
        total = 0
        for nodes in self.collect(parent, sets).values():
            name = nodes[0].name.value
            if name.startswith("__"):
                continue
            total += self.field_cost(parent.fields[name], nodes)
        return total

    def composite_cost(self, named: GraphQLNamedType, sets: Sequence[SelectionSetNode]) -> int:
        """Children of an object; for an interface, the most expensive of its possible types."""
        if is_abstract_type(named):
            possible = self.schema.get_possible_types(named)
            return max((self.selection_cost(runtime, sets) for runtime in possible), default=0)
        assert is_object_type(named)
        return self.selection_cost(named, sets)

    def field_cost(self, definition: GraphQLField, nodes: Sequence[FieldNode]) -> int:
        named = get_named_type(definition.type)
        if is_leaf_type(named):
            return 0
        sets = [node.selection_set for node in nodes if node.selection_set is not None]
        if _is_connection(named):
            assert isinstance(named, GraphQLObjectType)
            size = connection_size(nodes[0], self.variables)
            return 2 + size * (1 + self.node_cost(named, sets))
        return 1 + self.composite_cost(named, sets)

    def node_cost(self, connection: GraphQLObjectType, sets: Sequence[SelectionSetNode]) -> int:
        """One node's cost inside a connection, through `edges { node }` or `nodes` (the dearer of the two)."""
        fields = self.collect(connection, sets)
        node_type = get_named_type(connection.fields["nodes"].type)
        costs = [0]
        for field_nodes in fields.get("nodes", []), *(fields[k] for k in fields if k != "nodes"):
            if not field_nodes:
                continue
            name = field_nodes[0].name.value
            inner = [n.selection_set for n in field_nodes if n.selection_set is not None]
            if name == "nodes":
                costs.append(self.composite_cost(node_type, inner))
            elif name == "edges":
                edge_type = get_named_type(connection.fields["edges"].type)
                assert isinstance(edge_type, GraphQLObjectType)
                for edge_nodes in self.collect(edge_type, inner).values():
                    if edge_nodes[0].name.value == "node":
                        node_sets = [n.selection_set for n in edge_nodes if n.selection_set is not None]
                        costs.append(self.composite_cost(node_type, node_sets))
        return max(costs)


def _is_connection(named: GraphQLNamedType) -> bool:
    return isinstance(named, GraphQLObjectType) and named.name.endswith("Connection") and "pageInfo" in named.fields


def connection_size(node: FieldNode, variables: Mapping[str, Any]) -> int:
    first = _argument(node, "first", variables)
    last = _argument(node, "last", variables)
    if first is None and last is None:
        raise QueryRejected("you must provide one of first or last", [node])
    for name, value in (("first", first), ("last", last)):
        if value is not None and not 0 <= value <= MAX_PAGE_SIZE:
            raise QueryRejected(
                f"The value of `{name}` for the `{node.name.value}` field must be between 0 and {MAX_PAGE_SIZE}.",
                [node],
            )
    return int(first if first is not None else last)


# ----------------------------------------------------------------------------------------------------------------
# Leaky buckets


class CostBucket:
    """GraphQL points: `maximumAvailable` refilled at `restoreRate` per second on the injectable clock."""

    def __init__(self, size: float, restore_rate: float, clock: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.size = float(size)
        self.restore_rate = float(restore_rate)
        self._available = float(size)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._available = min(self.size, self._available + max(0.0, now - self._at) * self.restore_rate)
        self._at = now

    def take(self, cost: int) -> bool:
        with self._lock:
            self._refill()
            if cost > self._available:
                return False
            self._available -= cost
            return True

    def refund(self, points: int) -> None:
        with self._lock:
            self._refill()
            self._available = min(self.size, self._available + max(points, 0))

    def reconfigure(self, size: float | None = None, restore_rate: float | None = None) -> None:
        with self._lock:
            self._refill()
            if size is not None:
                self.size = float(size)
                self._available = min(self._available, self.size)
            if restore_rate is not None:
                self.restore_rate = float(restore_rate)

    def fill(self) -> None:
        with self._lock:
            self._available = self.size
            self._at = self._clock()

    def status(self) -> dict[str, Any]:
        with self._lock:
            self._refill()
            return {
                "maximumAvailable": self.size,
                "currentlyAvailable": math.floor(self._available),
                "restoreRate": self.restore_rate,
            }


class CallBucket:
    """REST calls: each request adds one; the bucket leaks `leak` per second; a full bucket answers 429."""

    def __init__(self, size: int, leak: float, clock: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.size = int(size)
        self.leak = float(leak)
        self._used = 0.0
        self._at = clock()

    def _drain(self) -> None:
        now = self._clock()
        self._used = max(0.0, self._used - max(0.0, now - self._at) * self.leak)
        self._at = now

    def hit(self) -> tuple[bool, str]:
        """(allowed, the `X-Shopify-Shop-Api-Call-Limit` value)."""
        with self._lock:
            self._drain()
            if self._used + 1 > self.size:
                return False, f"{self.size}/{self.size}"
            self._used += 1
            return True, f"{math.ceil(self._used)}/{self.size}"

    def reconfigure(self, size: int | None = None, leak: float | None = None) -> None:
        with self._lock:
            self._drain()
            if size is not None:
                self.size = int(size)
            if leak is not None:
                self.leak = float(leak)

    def empty(self) -> None:
        with self._lock:
            self._used = 0.0
            self._at = self._clock()


# ----------------------------------------------------------------------------------------------------------------
# GraphQL values: thin views over the immutable records; graphql-core's default resolver reads their attributes


@dataclass(slots=True)
class Connection:
    """A page of nodes; cursors are encoded only when asked for (a bulk export never is)."""

    items: list[Any]
    keys: list[tuple[int, int]]
    has_next: bool
    has_previous: bool

    @property
    def cursors(self) -> list[str]:
        return [encode_cursor(key) for key in self.keys]

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


def _paging_args(args: Mapping[str, Any]) -> tuple[int | None, int | None, str | None, str | None, bool]:
    return args.get("first"), args.get("last"), args.get("after"), args.get("before"), bool(args.get("reverse"))


def _decode(cursor: str | None) -> tuple[int, int] | None:
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor)
    except ValueError as exc:
        raise GraphQLError(f"Invalid cursor for current pagination sort: {cursor!r}.") from exc


def list_connection(
    views: Sequence[Any], keys: Sequence[tuple[int, int]], args: Mapping[str, Any], bulk: bool
) -> Connection:
    """A connection over a product's short list (media, images, variants); a bulk export takes them all."""
    if bulk:
        return Connection(list(views), list(keys), False, False)
    first, last, after, before, reverse = _paging_args(args)
    order = list(range(len(views)))
    if reverse:
        order.reverse()
    after_key, before_key = _decode(after), _decode(before)
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
    return Connection([views[p] for p in window], [keys[p] for p in window], has_next, has_previous)


@dataclass(frozen=True, slots=True)
class ImageView:
    item: MediaItem
    typename = "Image"

    @property
    def id(self) -> str | None:
        return gid("ProductImage", self.item.image_id) if self.item.image_id else None

    @property
    def altText(self) -> str | None:
        return self.item.alt

    def url(self, info: GraphQLResolveInfo[ExecutionContext], transform: Mapping[str, Any] | None = None) -> str:
        return self.item.url

    @property
    def src(self) -> str:
        return self.item.url

    originalSrc = src
    transformedSrc = src

    @property
    def width(self) -> int:
        return self.item.width

    @property
    def height(self) -> int:
        return self.item.height


@dataclass(frozen=True, slots=True)
class MediaView:
    product: Product
    item: MediaItem

    @property
    def typename(self) -> str:
        return "MediaImage" if self.item.kind == "IMAGE" else "Video"

    @property
    def id(self) -> str:
        return gid(self.typename, self.item.id)

    @property
    def alt(self) -> str | None:
        return self.item.alt

    @property
    def mediaContentType(self) -> str:
        return self.item.kind

    @property
    def status(self) -> str:
        return "READY"

    @property
    def preview(self) -> dict[str, Any]:
        return {"image": ImageView(self.item), "status": "READY"}

    @property
    def image(self) -> ImageView | None:
        return ImageView(self.item) if self.item.kind == "IMAGE" else None

    @property
    def mimeType(self) -> str:
        return "image/jpeg"

    @property
    def createdAt(self) -> str | None:
        return graphql_time(self.product.created_at)

    @property
    def updatedAt(self) -> str | None:
        return graphql_time(self.product.updated_at)

    @property
    def filename(self) -> str:
        return f"{self.product.handle}.mp4"

    @property
    def sources(self) -> list[dict[str, Any]]:
        url = self.item.url.replace("preview_images/", "videos/").replace(".jpg", ".mp4")
        return [{"url": url, "mimeType": "video/mp4", "format": "mp4", "width": 1280, "height": 720}]


@dataclass(frozen=True, slots=True)
class VariantView:
    product: Product
    variant: Variant
    typename = "ProductVariant"

    @property
    def id(self) -> str:
        return gid("ProductVariant", self.variant.id)

    @property
    def legacyResourceId(self) -> str:
        return str(self.variant.id)

    @property
    def title(self) -> str:
        return self.variant.title

    @property
    def price(self) -> str:
        return self.variant.price

    compareAtPrice = None

    @property
    def sku(self) -> str:
        return self.variant.sku

    @property
    def availableForSale(self) -> bool:
        return self.variant.inventory_quantity > 0 and self.product.status == "ACTIVE"

    @property
    def inventoryQuantity(self) -> int:
        return self.variant.inventory_quantity

    @property
    def position(self) -> int:
        return self.variant.position

    @property
    def createdAt(self) -> str | None:
        return graphql_time(self.product.created_at)

    @property
    def updatedAt(self) -> str | None:
        return graphql_time(self.product.updated_at)


@dataclass(frozen=True, slots=True)
class CollectionView:
    collection: Collection
    typename = "Collection"

    @property
    def id(self) -> str:
        return gid("Collection", self.collection.id)

    @property
    def handle(self) -> str:
        return self.collection.handle

    @property
    def title(self) -> str:
        return self.collection.title


@dataclass(frozen=True, slots=True)
class ProductView:
    product: Product
    domain: str
    # In a bulk export nested connections are unpaged: every node, whatever `first` says.
    bulk: bool = False
    typename = "Product"

    @property
    def id(self) -> str:
        return gid("Product", self.product.id)

    @property
    def legacyResourceId(self) -> str:
        return str(self.product.id)

    @property
    def title(self) -> str:
        return self.product.title

    @property
    def handle(self) -> str:
        return self.product.handle

    @property
    def descriptionHtml(self) -> str:
        return self.product.description_html

    def description(self, info: GraphQLResolveInfo[ExecutionContext], truncateAt: int | None = None) -> str:
        text = html_to_text(self.product.description_html)
        if truncateAt is not None and len(text) > truncateAt:
            return text[: max(truncateAt - 3, 0)] + "..."
        return text

    @property
    def vendor(self) -> str:
        return self.product.vendor

    @property
    def productType(self) -> str:
        return self.product.product_type

    @property
    def status(self) -> str:
        return self.product.status

    @property
    def tags(self) -> list[str]:
        return list(self.product.tags)

    @property
    def onlineStoreUrl(self) -> str | None:
        if self.product.status != "ACTIVE":
            return None
        return f"https://{self.domain}/products/{self.product.handle}"

    @property
    def createdAt(self) -> str | None:
        return graphql_time(self.product.created_at)

    @property
    def updatedAt(self) -> str | None:
        return graphql_time(self.product.updated_at)

    @property
    def publishedAt(self) -> str | None:
        return graphql_time(self.product.published_at)

    @property
    def totalInventory(self) -> int:
        return sum(variant.inventory_quantity for variant in self.product.variants)

    @property
    def priceRangeV2(self) -> dict[str, Any]:
        prices = sorted(Decimal(variant.price) for variant in self.product.variants) or [Decimal("0.00")]
        return {
            "minVariantPrice": {"amount": str(prices[0]), "currencyCode": "USD"},
            "maxVariantPrice": {"amount": str(prices[-1]), "currencyCode": "USD"},
        }

    @property
    def featuredImage(self) -> ImageView | None:
        images = self.product.images
        return ImageView(images[0]) if images else None

    @property
    def featuredMedia(self) -> MediaView | None:
        return MediaView(self.product, self.product.media[0]) if self.product.media else None

    @property
    def mediaCount(self) -> dict[str, Any]:
        return {"count": len(self.product.media), "precision": "EXACT"}

    @property
    def variantsCount(self) -> dict[str, Any]:
        return {"count": len(self.product.variants), "precision": "EXACT"}

    def media(self, info: GraphQLResolveInfo[ExecutionContext], **args: Any) -> Connection:
        items = self.product.media
        keys = [(position, item.id) for position, item in enumerate(items)]
        return list_connection([MediaView(self.product, item) for item in items], keys, args, self.bulk)

    def images(self, info: GraphQLResolveInfo[ExecutionContext], **args: Any) -> Connection:
        items = self.product.images
        keys = [(position, item.image_id) for position, item in enumerate(items)]
        return list_connection([ImageView(item) for item in items], keys, args, self.bulk)

    def variants(self, info: GraphQLResolveInfo[ExecutionContext], **args: Any) -> Connection:
        items = self.product.variants
        keys = [(variant.position, variant.id) for variant in items]
        return list_connection([VariantView(self.product, variant) for variant in items], keys, args, self.bulk)

    def collections(self, info: GraphQLResolveInfo[ExecutionContext], **args: Any) -> Connection:
        items = product_collections(self.product)
        keys = [(position, item.id) for position, item in enumerate(items)]
        return list_connection([CollectionView(item) for item in items], keys, args, self.bulk)


# ----------------------------------------------------------------------------------------------------------------
# Bulk operations


@dataclass
class BulkOperation:
    id: int
    query: str
    document: DocumentNode
    refs: list[int | Product]
    created_at: float
    url_base: str
    # Children directly after their parent (`groupObjects: true`), or not.
    grouped: bool = True
    status: str = "CREATED"
    error_code: str | None = None
    completed_at: float | None = None
    object_count: int = 0
    file_size: int = 0
    counted: threading.Event = field(default_factory=threading.Event)

    @property
    def gid(self) -> str:
        return gid("BulkOperation", self.id)

    @property
    def running(self) -> bool:
        return self.status in {"CREATED", "RUNNING", "CANCELING"}


@dataclass(frozen=True, slots=True)
class BulkOperationView:
    op: BulkOperation
    typename = "BulkOperation"

    @property
    def id(self) -> str:
        return self.op.gid

    @property
    def status(self) -> str:
        return self.op.status

    @property
    def errorCode(self) -> str | None:
        return self.op.error_code

    @property
    def createdAt(self) -> str | None:
        return graphql_time(int(self.op.created_at))

    @property
    def completedAt(self) -> str | None:
        return graphql_time(int(self.op.completed_at)) if self.op.completed_at is not None else None

    @property
    def objectCount(self) -> str:
        return str(self.op.object_count if self.op.status == "COMPLETED" else 0)

    @property
    def rootObjectCount(self) -> str:
        return str(len(self.op.refs) if self.op.status == "COMPLETED" else 0)

    @property
    def fileSize(self) -> str | None:
        return str(self.op.file_size) if self.op.status == "COMPLETED" and self.op.object_count else None

    @property
    def url(self) -> str | None:
        if self.op.status != "COMPLETED" or not self.op.object_count:
            return None
        return f"{self.op.url_base}/_emulator/bulk/{self.op.id}.jsonl"

    partialDataUrl = None

    @property
    def query(self) -> str:
        return self.op.query

    @property
    def type(self) -> str:
        return "QUERY"


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where the nested connections are in a node's result: response key → the plan of their nodes."""

    connections: dict[str, _Plan]


class BulkOperations:
    """bulkOperationRunQuery and its timeline: CREATED → RUNNING → COMPLETED (or the configured fault)."""

    def __init__(self, shop: Shop) -> None:
        self._shop = shop
        self._lock = threading.Lock()
        self.operations: list[BulkOperation] = []
        self.duration = 2.0
        self.fault: tuple[str, str | None] | None = None

    def current(self) -> BulkOperation | None:
        with self._lock:
            op = self.operations[-1] if self.operations else None
        if op is not None:
            self.advance(op)
        return op

    def get(self, op_id: int) -> BulkOperation | None:
        with self._lock:
            op = next((o for o in self.operations if o.id == op_id), None)
        if op is not None:
            self.advance(op)
        return op

    def advance(self, op: BulkOperation) -> None:
        """Move `op` along its timeline to where the clock says it is (a fault set meanwhile ends it)."""
        now = self._shop.clock()
        with self._lock:
            if op.status == "CANCELING":
                op.status, op.completed_at = "CANCELED", now
                return
            if op.status in BULK_STATUSES_FINAL:
                return
            if now < op.created_at + min(0.5, self.duration / 4):
                return
            op.status = "RUNNING"
            if now < op.created_at + self.duration or not op.counted.is_set():
                return
            if self.fault is not None:
                op.status, op.error_code = self.fault
            else:
                op.status = "COMPLETED"
            op.completed_at = now

    def start(
        self, query: str, url_base: str, *, grouped: bool = True
    ) -> tuple[BulkOperation | None, list[dict[str, Any]]]:
        running = self.current()
        if running is not None and running.running:
            message = f"A bulk query operation for this app and shop is already in progress: {running.gid}."
            return None, [{"field": None, "message": message, "code": "OPERATION_IN_PROGRESS"}]
        try:
            document, products_field = self._check(query)
        except ValueError as exc:
            return None, [{"field": ["query"], "message": str(exc), "code": "INVALID"}]
        sort: Any = _argument(products_field, "sortKey", {}) or "ID"
        if sort not in SORT_KEYS:
            return None, [{"field": ["query"], "message": f"sortKey {sort} is not supported here.", "code": "INVALID"}]
        try:
            product_filter = ProductFilter.parse(_argument(products_field, "query", {}))
        except SearchQueryError as exc:
            return None, [{"field": ["query"], "message": str(exc), "code": "INVALID"}]
        store = self._shop.store
        ids = store.matching_ids(
            sort, reverse=bool(_argument(products_field, "reverse", {})), product_filter=product_filter
        )
        with self._lock:
            op = BulkOperation(
                id=BULK_ID_BASE + len(self.operations) * 97,
                query=query,
                document=document,
                refs=store.snapshot(ids),
                created_at=self._shop.clock(),
                url_base=url_base,
                grouped=grouped,
            )
            self.operations.append(op)
        threading.Thread(target=self._count, args=(op,), name=f"bulk-count-{op.id}", daemon=True).start()
        return op, []

    def cancel(self, op_id: int) -> tuple[BulkOperation | None, list[dict[str, Any]]]:
        op = self.get(op_id)
        if op is None:
            return None, [{"field": ["id"], "message": "Bulk operation does not exist"}]
        with self._lock:
            if op.status in BULK_STATUSES_FINAL:
                return op, [
                    {"field": ["id"], "message": f"A bulk operation cannot be canceled when it is {op.status.lower()}"}
                ]
            op.status = "CANCELING"
        return op, []

    def _check(self, query: str) -> tuple[DocumentNode, FieldNode]:
        """Shopify's bulk query rules (the subset we enforce); ValueError carries the user error message."""
        try:
            document = parse(query)
        except GraphQLError as exc:
            raise ValueError(f"Invalid bulk query: {exc.message}") from exc
        errors = validate(SCHEMA, document)
        if errors:
            raise ValueError(f"Invalid bulk query: {errors[0].message}")
        operation = get_operation_ast(document)
        if operation is None or operation.operation != OperationType.QUERY:
            raise ValueError("Invalid bulk query: it must be a single query operation.")
        calculator = CostCalculator(SCHEMA, document, {})
        root = SCHEMA.query_type
        assert root is not None
        top = calculator.collect(root, [operation.selection_set])
        connections = [nodes for nodes in top.values() if nodes[0].name.value == "products"]
        if not connections:
            raise ValueError("Bulk queries must contain at least one connection.")
        if len(top) != 1:
            raise ValueError("The emulator's bulk queries may only select the top-level `products` connection.")
        products_field = connections[0][0]
        self._plan(calculator, SCHEMA.get_type("ProductConnection"), connections[0], "products")
        return document, products_field

    def _plan(self, calculator: CostCalculator, connection: Any, nodes: Sequence[FieldNode], name: str) -> _Plan:
        """The nested-connection layout under a connection's nodes, checking each parent selects `id`."""
        node_type = get_named_type(connection.fields["nodes"].type)
        node_sets = _node_selection_sets(calculator, connection, nodes)
        runtimes = SCHEMA.get_possible_types(node_type) if is_abstract_type(node_type) else [node_type]
        nested: dict[str, _Plan] = {}
        selects_id = False
        for runtime in runtimes:
            for key, field_nodes in calculator.collect(runtime, node_sets).items():
                field_name = field_nodes[0].name.value
                selects_id = selects_id or (field_name == "id" and key == "id")
                if field_name.startswith("__"):
                    continue
                named = get_named_type(runtime.fields[field_name].type)
                if _is_connection(named):
                    nested[key] = self._plan(calculator, named, field_nodes, field_name)
        if nested and not selects_id:
            raise ValueError(
                f"The parent 'node' field for a nested connection must select the 'id' field. "
                f"Connection fields without 'id': {name}."
            )
        return _Plan(nested)

    def lines(self, op: BulkOperation) -> Iterator[bytes]:
        """The JSONL result, generated a chunk of products at a time (memory bounded by one chunk).

        The query was validated when the operation started, so it is compiled once into a projection and applied
        to the same views the GraphQL endpoint resolves: graphql-core's executor would cost a millisecond or more
        per product, minutes for a large shop.
        """
        operation = get_operation_ast(op.document)
        assert operation is not None and SCHEMA.query_type is not None
        calculator = CostCalculator(SCHEMA, op.document, {})
        (nodes,) = calculator.collect(SCHEMA.query_type, [operation.selection_set]).values()
        connection_type = SCHEMA.get_type("ProductConnection")
        assert connection_type is not None
        plan = self._plan(calculator, connection_type, nodes, "products")
        projection = _compile(calculator, connection_type, [n.selection_set for n in nodes if n.selection_set])
        store, domain = self._shop.store, self._shop.domain
        for start in range(0, len(op.refs), BULK_CHUNK):
            products = [p for p in (store.resolve(ref) for ref in op.refs[start : start + BULK_CHUNK]) if p is not None]
            views = [ProductView(p, domain, bulk=True) for p in products]
            page = Connection(views, [(p.id, p.id) for p in products], False, False)
            out: list[str] = []
            # Ungrouped output puts a chunk's children before their parents: the worst order a reader must take.
            children: list[str] = out if op.grouped else []
            for node in _connection_nodes(_project(page, projection)):
                _flatten(node, plan, None, out, children)
            if not op.grouped:
                out = children + out
            if out:
                yield ("\n".join(out) + "\n").encode()

    def _count(self, op: BulkOperation) -> None:
        """Counts objects and bytes while the operation is RUNNING, as Shopify reports both when it completes."""
        objects = size = 0
        try:
            for chunk in self.lines(op):
                objects += chunk.count(b"\n")
                size += len(chunk)
        except Exception:  # the operation fails like a real one would; the shop keeps serving
            with self._lock:
                op.status, op.error_code, op.completed_at = "FAILED", "INTERNAL_SERVER_ERROR", self._shop.clock()
        op.object_count, op.file_size = objects, size
        op.counted.set()

    def summary(self) -> list[dict[str, Any]]:
        with self._lock:
            ops = list(self.operations)
        for op in ops:
            self.advance(op)
        return [
            {
                "id": op.gid,
                "status": op.status,
                "errorCode": op.error_code,
                "objectCount": op.object_count,
                "rootObjectCount": len(op.refs),
                "fileSize": op.file_size,
            }
            for op in ops
        ]


@dataclass(frozen=True, slots=True)
class _Projected:
    key: str
    name: str
    args: dict[str, Any]
    child: _Projection | None


@dataclass(frozen=True, slots=True)
class _Projection:
    """A compiled selection set: the fields to read for each possible runtime type."""

    by_type: dict[str, tuple[_Projected, ...]]


def _compile(calculator: CostCalculator, named: Any, sets: Sequence[SelectionSetNode]) -> _Projection:
    runtimes = SCHEMA.get_possible_types(named) if is_abstract_type(named) else [named]
    by_type: dict[str, tuple[_Projected, ...]] = {}
    for runtime in runtimes:
        fields: list[_Projected] = []
        for key, nodes in calculator.collect(runtime, sets).items():
            name = nodes[0].name.value
            child: _Projection | None = None
            args: dict[str, Any] = {}
            if name != "__typename":
                child_type = get_named_type(runtime.fields[name].type)
                if not is_leaf_type(child_type):
                    child = _compile(calculator, child_type, [n.selection_set for n in nodes if n.selection_set])
                args = {a.name.value: _argument(nodes[0], a.name.value, {}) for a in nodes[0].arguments or ()}
            fields.append(_Projected(key, name, args, child))
        by_type[runtime.name] = tuple(fields)
    return _Projection(by_type)


def _project(value: Any, projection: _Projection) -> dict[str, Any]:
    """What graphql-core would return for `value` (views, dicts, Connections) under a compiled selection."""
    if len(projection.by_type) == 1:
        ((typename, fields),) = projection.by_type.items()
    else:
        typename = value.typename
        fields = projection.by_type[typename]
    out: dict[str, Any] = {}
    for field_ in fields:
        if field_.name == "__typename":
            out[field_.key] = typename
            continue
        raw = value.get(field_.name) if isinstance(value, dict) else getattr(value, field_.name, None)
        if callable(raw):
            raw = raw(None, **field_.args)
        child = field_.child
        if raw is None or child is None:
            out[field_.key] = raw
        elif isinstance(raw, list):
            out[field_.key] = [_project(item, child) for item in raw]
        else:
            out[field_.key] = _project(raw, child)
    return out


def _node_selection_sets(
    calculator: CostCalculator, connection: Any, nodes: Sequence[FieldNode]
) -> list[SelectionSetNode]:
    sets = [n.selection_set for n in nodes if n.selection_set is not None]
    out: list[SelectionSetNode] = []
    for field_nodes in calculator.collect(connection, sets).values():
        name = field_nodes[0].name.value
        inner = [n.selection_set for n in field_nodes if n.selection_set is not None]
        if name == "nodes":
            out.extend(inner)
        elif name == "edges":
            edge_type = get_named_type(connection.fields["edges"].type)
            for edge_nodes in calculator.collect(edge_type, inner).values():
                if edge_nodes[0].name.value == "node":
                    out.extend(n.selection_set for n in edge_nodes if n.selection_set is not None)
    return out


def _connection_nodes(value: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not value:
        return []
    edges = value.get("edges")
    if edges is not None:
        return [edge["node"] for edge in edges if edge.get("node") is not None]
    return list(value.get("nodes") or [])


def _flatten(node: Mapping[str, Any], plan: _Plan, parent_id: str | None, out: list[str], children: list[str]) -> None:
    """One JSONL line for `node` into `out`, then its nested connections' nodes into `children`."""
    line = {key: value for key, value in node.items() if key not in plan.connections}
    if parent_id is not None:
        line["__parentId"] = parent_id
    out.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
    for key, child_plan in plan.connections.items():
        for child in _connection_nodes(node.get(key)):
            _flatten(child, child_plan, node.get("id"), children, children)


# ----------------------------------------------------------------------------------------------------------------
# Execution


@dataclass
class ExecutionContext:
    shop: Shop
    url_base: str
    api_version: str = DEFAULT_API_VERSION
    actual_cost: int = 0
    search: list[dict[str, Any]] = field(default_factory=list)


def _type_of(value: Any, info: GraphQLResolveInfo[ExecutionContext], abstract_type: Any) -> str:
    return str(value.typename)


class Root:
    """QueryRoot and Mutation fields."""

    def products(self, info: GraphQLResolveInfo[ExecutionContext], **args: Any) -> Connection:
        context: ExecutionContext = info.context
        domain = context.shop.domain
        first, last, after, before, reverse = _paging_args(args)
        sort = args.get("sortKey", "ID")
        if sort not in SORT_KEYS:
            raise GraphQLError(f"The emulator supports sortKey {', '.join(SORT_KEYS)}; {sort} is not implemented.")
        try:
            product_filter = ProductFilter.parse(args.get("query"))
        except SearchQueryError as exc:
            raise GraphQLError(f"Invalid search query: {exc}") from exc
        if product_filter.warnings:
            context.search.append(
                {"path": [info.path.key], "query": product_filter.text, "warnings": product_filter.warnings}
            )
        page = context.shop.store.page(
            sort,
            reverse=reverse,
            first=first,
            last=last,
            after=_decode(after),
            before=_decode(before),
            product_filter=product_filter,
        )
        views = [ProductView(p, domain) for p in page.items]
        return Connection(views, page.keys, page.has_next, page.has_previous)

    def product(self, info: GraphQLResolveInfo[ExecutionContext], id: str) -> ProductView | None:
        node = self.node(info, id)
        return node if isinstance(node, ProductView) else None

    def node(self, info: GraphQLResolveInfo[ExecutionContext], id: str) -> Any:
        context: ExecutionContext = info.context
        parsed = parse_gid(id)
        if parsed is None:
            raise GraphQLError(f"Invalid global id '{id}'")
        kind, number = parsed
        if kind == "Product":
            product = context.shop.store.get(number)
            return ProductView(product, context.shop.domain) if product is not None else None
        if kind == "BulkOperation":
            op = context.shop.bulk.get(number)
            return BulkOperationView(op) if op is not None else None
        return None

    def productsCount(
        self,
        info: GraphQLResolveInfo[ExecutionContext],
        query: str | None = None,
        limit: int | None = DEFAULT_COUNT_LIMIT,
    ) -> dict[str, Any]:
        context: ExecutionContext = info.context
        try:
            product_filter = ProductFilter.parse(query)
        except SearchQueryError as exc:
            raise GraphQLError(f"Invalid search query: {exc}") from exc
        count = context.shop.store.count_matching(product_filter, limit)
        precision = "AT_LEAST" if limit is not None and count >= limit else "EXACT"
        return {"count": count, "precision": precision}

    def currentBulkOperation(
        self, info: GraphQLResolveInfo[ExecutionContext], type: str = "QUERY"
    ) -> BulkOperationView | None:
        context: ExecutionContext = info.context
        op = context.shop.bulk.current() if type == "QUERY" else None
        return BulkOperationView(op) if op is not None else None

    def shop(self, info: GraphQLResolveInfo[ExecutionContext]) -> dict[str, Any]:
        context: ExecutionContext = info.context
        domain = context.shop.domain
        return {
            "id": gid("Shop", 68_719_476_736),
            "name": "catalog-sync demo shop",
            "myshopifyDomain": domain,
            "primaryDomain": {"host": domain, "url": f"https://{domain}"},
            "url": f"https://{domain}",
            "currencyCode": "USD",
            "ianaTimezone": "America/New_York",
        }

    def bulkOperationRunQuery(
        self, info: GraphQLResolveInfo[ExecutionContext], query: str, groupObjects: bool | None = None
    ) -> dict[str, Any]:
        context: ExecutionContext = info.context
        if groupObjects is None:  # the default changed in 2026-01 (`unstable` follows the newest)
            version = context.api_version
            groupObjects = version[:1].isdigit() and version < BULK_UNGROUPED_SINCE
        op, errors = context.shop.bulk.start(query, context.url_base, grouped=groupObjects)
        return {"bulkOperation": BulkOperationView(op) if op is not None else None, "userErrors": errors}

    def bulkOperationCancel(self, info: GraphQLResolveInfo[ExecutionContext], id: str) -> dict[str, Any]:
        context: ExecutionContext = info.context
        parsed = parse_gid(id)
        if parsed is None or parsed[0] != "BulkOperation":
            return {"bulkOperation": None, "userErrors": [{"field": ["id"], "message": "Invalid id"}]}
        op, errors = context.shop.bulk.cancel(parsed[1])
        return {"bulkOperation": BulkOperationView(op) if op is not None else None, "userErrors": errors}


def _cost_middleware(
    next_: Callable[..., Any], root: Any, info: GraphQLResolveInfo[ExecutionContext], **args: Any
) -> Any:
    """Charges what was returned: a connection 2 + its nodes, an object 1, a mutation 10; scalars nothing."""
    result = next_(root, info, **args)
    context: ExecutionContext = info.context
    parent = info.parent_type.name
    if parent == "Mutation":
        context.actual_cost += MUTATION_COST
    elif isinstance(result, Connection):
        context.actual_cost += 2 + len(result.items)
    elif not is_leaf_type(get_named_type(info.return_type)) and not parent.endswith(("Connection", "Edge")):
        context.actual_cost += 1
    return result


def _error(message: str, code: str | None = None, **extensions: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message}
    if code is not None or extensions:
        error["extensions"] = {**({"code": code} if code else {}), **extensions}
    return error


class GraphQLEndpoint:
    """Parse, validate, cost, throttle, execute, refund."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop

    def run(
        self,
        query: str,
        variables: Mapping[str, Any] | None,
        operation_name: str | None,
        url_base: str,
        api_version: str = DEFAULT_API_VERSION,
    ) -> dict[str, Any]:
        shop = self.shop
        try:
            document = parse(query)
        except GraphQLError as exc:
            return {"errors": [exc.formatted]}
        errors = validate(SCHEMA, document)
        if errors:
            return {"errors": [error.formatted for error in errors]}
        operation = get_operation_ast(document, operation_name)
        if operation is None:
            return {"errors": [_error("An operation name is required when the document has several operations.")]}
        variables = dict(variables or {})
        try:
            requested = CostCalculator(SCHEMA, document, variables).operation_cost(operation)
        except QueryRejected as exc:
            return {"errors": [GraphQLError(str(exc), exc.nodes).formatted]}
        if requested > MAX_QUERY_COST:
            shop.stats.bump("max_cost_exceeded")
            message = (
                f"Query cost is {requested}, which exceeds the single query max cost limit ({MAX_QUERY_COST}).\n\n"
                "See https://shopify.dev/concepts/about-apis/rate-limits for more information on how the\n"
                "cost of a query is calculated.\n\n"
                "To query larger amounts of data with fewer limits, bulk operations should be used instead.\n"
                "See https://shopify.dev/tutorials/perform-bulk-operations-with-admin-api for usage details.\n"
            )
            error = _error(
                message, "MAX_COST_EXCEEDED", cost=requested, maxCost=MAX_QUERY_COST, documentation=RATE_LIMIT_DOCS
            )
            return {"errors": [error], "extensions": {"cost": self._cost(requested, None)}}
        if not shop.cost_bucket.take(requested):
            shop.stats.bump("throttled")
            error = _error("Throttled", "THROTTLED", documentation=RATE_LIMIT_DOCS)
            return {"errors": [error], "extensions": {"cost": self._cost(requested, None)}}
        context = ExecutionContext(shop, url_base=url_base, api_version=api_version)
        result = execute(
            SCHEMA,
            document,
            root_value=Root(),
            context_value=context,
            variable_values=variables,
            operation_name=operation_name,
            type_resolver=_type_of,
            middleware=[_cost_middleware],
        )
        assert isinstance(result, ExecutionResult)
        actual = min(context.actual_cost, requested)
        shop.cost_bucket.refund(requested - actual)
        shop.stats.add_cost(requested, actual)
        body: dict[str, Any] = {}
        if result.errors:
            body["errors"] = [error.formatted for error in result.errors]
        body["data"] = result.data
        body["extensions"] = {"cost": self._cost(requested, actual)}
        if context.search:
            body["extensions"]["search"] = context.search
        return body

    def _cost(self, requested: int, actual: int | None) -> dict[str, Any]:
        return {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": self.shop.cost_bucket.status(),
        }


# ----------------------------------------------------------------------------------------------------------------
# Webhooks


def sign_webhook(body: bytes, secret: str) -> str:
    """`X-Shopify-Hmac-Sha256`: base64 of HMAC-SHA256 over the exact raw body with the app secret."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@dataclass(frozen=True)
class Subscription:
    id: int
    url: str
    secret: SecretStr
    topics: frozenset[str]


@dataclass
class Delivery:
    id: str
    subscription_id: int
    url: str
    topic: str
    product_id: int
    body: bytes
    headers: dict[str, str]
    attempts: int = 0
    status: int | None = None
    error: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subscription_id": self.subscription_id,
            "url": self.url,
            "topic": self.topic,
            "product_id": self.product_id,
            "webhook_id": self.headers["X-Shopify-Webhook-Id"],
            "event_id": self.headers["X-Shopify-Event-Id"],
            "triggered_at": self.headers["X-Shopify-Triggered-At"],
            "attempts": self.attempts,
            "status": self.status,
            "error": self.error,
        }


class Webhooks:
    """Registered receivers and signed `products/*` deliveries, sent from background tasks on the server loop."""

    def __init__(self, shop: Shop) -> None:
        self._shop = shop
        self._lock = threading.Lock()
        self.subscriptions: dict[int, Subscription] = {}
        self.deliveries: deque[Delivery] = deque(maxlen=DELIVERY_HISTORY)
        self.results: Counter[str] = Counter()
        self.client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_id = 1
        # Deliveries scheduled but not finished; a Condition so other threads (tests, the CLI) can wait on it.
        self._pending = 0
        self._idle = threading.Condition()

    def subscribe(self, url: str, secret: str, topics: Iterable[str] | None) -> Subscription:
        chosen = frozenset(topics) if topics is not None else frozenset(WEBHOOK_TOPICS)
        unknown = chosen - set(WEBHOOK_TOPICS)
        if unknown:
            raise ValueError(f"unknown topics {sorted(unknown)}; use {list(WEBHOOK_TOPICS)}")
        if not url.startswith(("http://", "https://")):
            raise ValueError("url must be an http(s) URL")
        if not secret:
            raise ValueError("secret must be a non-empty string")
        with self._lock:
            subscription = Subscription(self._next_id, url, SecretStr(secret), chosen)
            self._next_id += 1
            self.subscriptions[subscription.id] = subscription
        return subscription

    def unsubscribe(self, subscription_id: int) -> bool:
        with self._lock:
            return self.subscriptions.pop(subscription_id, None) is not None

    def emit(self, topic: str, product_id: int, payload: Mapping[str, Any]) -> list[Delivery]:
        """One event to every receiver of `topic`: same body and event id, a webhook id and signature each."""
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        event_id = str(uuid.uuid4())
        triggered = datetime.fromtimestamp(self._shop.clock(), UTC).isoformat(timespec="microseconds")
        triggered = triggered.replace("+00:00", "Z")
        with self._lock:
            receivers = [s for s in self.subscriptions.values() if topic in s.topics]
        deliveries = []
        for subscription in receivers:
            headers = {
                "Content-Type": "application/json",
                "X-Shopify-Topic": topic,
                "X-Shopify-Hmac-Sha256": sign_webhook(body, subscription.secret.get_secret_value()),
                "X-Shopify-Shop-Domain": self._shop.domain,
                "X-Shopify-API-Version": self._shop.api_version,
                "X-Shopify-Webhook-Id": str(uuid.uuid4()),
                "X-Shopify-Event-Id": event_id,
                "X-Shopify-Triggered-At": triggered,
            }
            delivery = Delivery(str(uuid.uuid4()), subscription.id, subscription.url, topic, product_id, body, headers)
            with self._lock:
                self.deliveries.append(delivery)
            deliveries.append(delivery)
            self._schedule(delivery)
        return deliveries

    def find(self, delivery_id: str) -> Delivery | None:
        with self._lock:
            return next((d for d in self.deliveries if d.id == delivery_id), None)

    def replay(self, delivery: Delivery) -> None:
        """Send the same bytes and ids again, as a Shopify retry does."""
        self._schedule(delivery)

    def _schedule(self, delivery: Delivery) -> None:
        with self._idle:
            self._pending += 1
        task = asyncio.get_running_loop().create_task(self._send(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, delivery: Delivery) -> None:
        client = self.client
        own_client = client is None
        if client is None:
            client = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT)
        outcome = "not sent"
        try:
            response = await client.post(delivery.url, content=delivery.body, headers=delivery.headers)
            delivery.status, delivery.error = response.status_code, None
            outcome = str(response.status_code)
        except httpx.HTTPError as exc:
            delivery.status, delivery.error = None, f"{type(exc).__name__}: {exc}"
            outcome = type(exc).__name__
        finally:
            if own_client:
                await client.aclose()
            with self._lock:
                delivery.attempts += 1
                self.results[outcome] += 1
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block (from another thread) until every scheduled delivery has its result; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=WEBHOOK_TIMEOUT + 1)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "subscriptions": [
                    {"id": s.id, "url": s.url, "topics": sorted(s.topics)} for s in self.subscriptions.values()
                ],
                "sent": sum(d.attempts for d in self.deliveries),
                "pending": self._pending,
                "results": dict(self.results),
                "recent": [d.public() for d in list(self.deliveries)[-50:]],
            }


# ----------------------------------------------------------------------------------------------------------------
# The shop


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.counters: Counter[str] = Counter()

    def request(self, kind: str, status: int) -> None:
        with self._lock:
            self.requests[(kind, status)] += 1

    def bump(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[name] += amount

    def add_cost(self, requested: int, actual: int) -> None:
        with self._lock:
            self.counters["graphql_requested_cost"] += requested
            self.counters["graphql_actual_cost"] += actual

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            by_kind: dict[str, dict[str, int]] = {}
            for (kind, status), count in sorted(self.requests.items()):
                by_kind.setdefault(kind, {})[str(status)] = count
            return {
                "requests": by_kind,
                "throttled": self.counters["throttled"],
                "max_cost_exceeded": self.counters["max_cost_exceeded"],
                "rest_429": self.counters["rest_429"],
                "graphql_requested_cost": self.counters["graphql_requested_cost"],
                "graphql_actual_cost": self.counters["graphql_actual_cost"],
            }


class Shop:
    """Everything the emulated shop knows: products, buckets, bulk operations, webhooks, stats, runtime config."""

    def __init__(
        self,
        *,
        products: int = 1_000,
        seed: int = 1,
        access_token: str = DEFAULT_ACCESS_TOKEN,
        bucket_size: float = 1_000,
        restore_rate: float = 50,
        rest_bucket: int = 40,
        rest_leak: float = 2,
        clock: Callable[[], float] = time.time,
        bulk_duration: float = 2.0,
        latency: float = 0.0,
        domain: str = DEFAULT_DOMAIN,
        api_version: str = DEFAULT_API_VERSION,
    ) -> None:
        if bucket_size <= 0 or restore_rate < 0 or rest_bucket <= 0 or rest_leak < 0:
            raise ValueError("bucket sizes must be positive and rates zero or more")
        if not access_token:
            raise ValueError("access_token must be non-empty")
        self.clock = clock
        self.access_token = SecretStr(access_token)
        self.domain = domain
        self.api_version = api_version
        self.latency = latency
        self.store = ProductStore(products, seed)
        self.cost_bucket = CostBucket(bucket_size, restore_rate, clock)
        self.rest_bucket = CallBucket(rest_bucket, rest_leak, clock)
        self.bulk = BulkOperations(self)
        self.bulk.duration = bulk_duration
        self.webhooks = Webhooks(self)
        self.stats = Stats()
        self.graphql = GraphQLEndpoint(self)

    def __repr__(self) -> str:
        return f"Shop(products={len(self.store)}, domain={self.domain!r})"

    def authorized(self, request: Request) -> bool:
        supplied = request.headers.get("x-shopify-access-token", "")
        return hmac.compare_digest(supplied.encode(), self.access_token.get_secret_value().encode())

    def now(self) -> int:
        return int(self.clock())

    def config(self) -> dict[str, Any]:
        fault = self.bulk.fault
        return {
            "bucket_size": self.cost_bucket.size,
            "restore_rate": self.cost_bucket.restore_rate,
            "rest_bucket": self.rest_bucket.size,
            "rest_leak": self.rest_bucket.leak,
            "latency": self.latency,
            "bulk_duration": self.bulk.duration,
            "bulk_fault": {"status": fault[0], "error_code": fault[1]} if fault else None,
        }

    def configure(self, changes: Mapping[str, Any]) -> None:
        """Apply `POST /_emulator/config`; raises ValueError naming the bad field."""
        known = {"bucket_size", "restore_rate", "rest_bucket", "rest_leak", "latency", "bulk_duration", "bulk_fault"}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}; use {sorted(known)}")
        numbers: dict[str, float] = {}
        for name in known - {"bulk_fault"}:
            if name in changes:
                value = changes[name]
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ValueError(f"{name} must be a number >= 0")
                numbers[name] = float(value)
        for name in ("bucket_size", "rest_bucket"):
            if numbers.get(name) == 0:
                raise ValueError(f"{name} must be > 0")
        fault: tuple[str, str | None] | None = self.bulk.fault
        if "bulk_fault" in changes:
            fault = _bulk_fault(changes["bulk_fault"])
        self.cost_bucket.reconfigure(numbers.get("bucket_size"), numbers.get("restore_rate"))
        rest_size = numbers.get("rest_bucket")
        self.rest_bucket.reconfigure(int(rest_size) if rest_size is not None else None, numbers.get("rest_leak"))
        self.latency = numbers.get("latency", self.latency)
        self.bulk.duration = numbers.get("bulk_duration", self.bulk.duration)
        self.bulk.fault = fault

    def reset(self, *, products: int | None = None, seed: int | None = None) -> None:
        self.store = ProductStore(
            self.store.count if products is None else products, self.store.seed if seed is None else seed
        )
        self.cost_bucket.fill()
        self.rest_bucket.empty()
        duration, fault = self.bulk.duration, self.bulk.fault
        self.bulk = BulkOperations(self)
        self.bulk.duration, self.bulk.fault = duration, fault
        client = self.webhooks.client
        self.webhooks = Webhooks(self)
        self.webhooks.client = client
        self.stats = Stats()


def _bulk_fault(value: Any) -> tuple[str, str | None] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not isinstance(value.get("status"), str):
        raise ValueError('bulk_fault must be null or {"status": "FAILED|CANCELED|EXPIRED", "error_code": ...}')
    status = value["status"].upper()
    if status not in BULK_FAULT_STATUSES:
        raise ValueError(f"bulk_fault.status must be one of {sorted(BULK_FAULT_STATUSES)}")
    code = value.get("error_code", "INTERNAL_SERVER_ERROR" if status == "FAILED" else None)
    if code is not None and code not in BULK_ERROR_CODES:
        raise ValueError(f"bulk_fault.error_code must be null or one of {sorted(BULK_ERROR_CODES)}")
    return status, code


# ----------------------------------------------------------------------------------------------------------------
# HTTP


def _shop(request: Request) -> Shop:
    shop: Shop = request.app.state.shop
    return shop


def _url_base(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _bad_request(message: str) -> JSONResponse:
    return _json({"errors": message}, 400)


async def _read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from exc


def _counted(kind: str) -> Callable[[Callable[[Request], Any]], Callable[[Request], Any]]:
    """Records every response of an endpoint in the stats by API kind and HTTP status."""

    def wrap(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            shop = _shop(request)
            if shop.latency and kind != "control":
                await asyncio.sleep(shop.latency)
            response: Response = await endpoint(request)
            shop.stats.request(kind, response.status_code)
            return response

        return handler

    return wrap


def _api_headers(shop: Shop, version: str) -> dict[str, str]:
    return {"X-Shopify-API-Version": version, "X-Request-Id": str(uuid.uuid4())}


@_counted("graphql")
async def graphql_endpoint(request: Request) -> Response:
    shop = _shop(request)
    version = request.path_params["version"]
    if not shop.authorized(request):
        return _json(UNAUTHORIZED_BODY, 401)
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    variables: Any = None
    operation_name: Any = None
    if content_type.startswith("application/graphql"):
        query: Any = raw.decode("utf-8", "replace")
    else:
        try:
            payload = json.loads(raw or b"{}")
        except ValueError:
            return _json({"errors": {"query": "Required parameter missing or invalid"}}, 400)
        if not isinstance(payload, dict):
            return _json({"errors": {"query": "Required parameter missing or invalid"}}, 400)
        query, variables, operation_name = payload.get("query"), payload.get("variables"), payload.get("operationName")
    if not isinstance(query, str) or not query.strip():
        return _json({"errors": {"query": "Required parameter missing or invalid"}}, 400)
    if variables is not None and not isinstance(variables, dict):
        return _json({"errors": [{"message": "Variables must be a JSON object"}]}, 200)
    body = await run_in_threadpool(shop.graphql.run, query, variables, operation_name, _url_base(request), version)
    return _json(body, 200, _api_headers(shop, version))


def _rest_gate(request: Request) -> tuple[Shop, dict[str, str], JSONResponse | None]:
    """Auth then the call bucket: the 401 or 429 response, or None to go on."""
    shop = _shop(request)
    headers = _api_headers(shop, request.path_params["version"])
    if not shop.authorized(request):
        return shop, headers, _json(UNAUTHORIZED_BODY, 401, headers)
    allowed, limit = shop.rest_bucket.hit()
    headers["X-Shopify-Shop-Api-Call-Limit"] = limit
    if not allowed:
        shop.stats.bump("rest_429")
        return shop, headers, _json(REST_429_BODY, 429, {**headers, "Retry-After": REST_RETRY_AFTER})
    return shop, headers, None


_REST_FILTERS = {
    "updated_at_min": ("updated_at", ">="),
    "updated_at_max": ("updated_at", "<="),
    "created_at_min": ("created_at", ">="),
    "created_at_max": ("created_at", "<="),
    "published_at_min": ("published_at", ">="),
    "published_at_max": ("published_at", "<="),
    "since_id": ("id", ">"),
}
_REST_TEXT_FILTERS = ("vendor", "product_type", "handle", "title")


def _rest_filter(params: Mapping[str, str]) -> tuple[ProductFilter, list[int] | None]:
    """REST query parameters → a ProductFilter (+ an `ids` allow-list). Raises ValueError."""
    parts: list[str] = []
    for name, (field_name, op) in _REST_FILTERS.items():
        value = params.get(name)
        if value:
            if field_name != "id":
                try:
                    parse_time(value)
                except ValueError as exc:
                    raise ValueError(f"{name}: {value!r} is not an ISO 8601 date-time") from exc
            elif not value.isdigit():
                raise ValueError(f"{name} must be a product id")
            parts.append(f"{field_name}:{op}'{value}'")
    status = params.get("status")
    if status:
        wanted = [s.strip().lower() for s in status.split(",") if s.strip()]
        if not set(wanted) <= {"active", "draft", "archived"}:
            raise ValueError("status must be a comma-separated list of active, draft, archived")
        parts.append(f"status:{','.join(wanted)}")
    for name in _REST_TEXT_FILTERS:
        value = params.get(name)
        if value:
            parts.append(f"{name}:'{value}'")
    ids: list[int] | None = None
    if params.get("ids"):
        try:
            ids = [int(part) for part in params["ids"].split(",") if part.strip()]
        except ValueError as exc:
            raise ValueError("ids must be a comma-separated list of product ids") from exc
    try:
        return ProductFilter.parse(" ".join(parts)), ids
    except SearchQueryError as exc:
        raise ValueError(str(exc)) from exc


def _limit(params: Mapping[str, str], default: int) -> int:
    raw = params.get("limit")
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError("limit must be a whole number from 1 to 250")
    return min(int(raw), MAX_PAGE_SIZE)  # Shopify quietly caps larger limits


def _page_info_token(params: Mapping[str, str], last_id: int, direction: str) -> str:
    state = {
        "filters": {k: v for k, v in params.items() if k not in {"limit", "page_info", "fields"}},
        "last_id": last_id,
        "direction": direction,
    }
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")


def _read_page_info(token: str) -> tuple[dict[str, str], int, str]:
    try:
        state = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        filters, last_id, direction = state["filters"], state["last_id"], state["direction"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError("Invalid value.") from exc
    if not isinstance(filters, dict) or not isinstance(last_id, int) or direction not in {"next", "previous"}:
        raise ValueError("Invalid value.")
    return filters, last_id, direction


@_counted("rest")
async def rest_products(request: Request) -> Response:
    shop, headers, refusal = _rest_gate(request)
    if refusal is not None:
        return refusal
    params = dict(request.query_params)
    try:
        limit = _limit(params, REST_DEFAULT_LIMIT)
        fields = [f.strip() for f in params["fields"].split(",") if f.strip()] if params.get("fields") else None
        token = params.get("page_info")
        after: tuple[int, int] | None = None
        before: tuple[int, int] | None = None
        if token:
            extra = set(params) - {"page_info", "limit", "fields"}
            if extra:
                raise ValueError(f"page_info cannot be combined with {sorted(extra)}; use the Link header URL as is")
            filters, last_id, direction = _read_page_info(token)
            if direction == "next":
                after = (last_id, last_id)
            else:
                before = (last_id, last_id)
        else:
            filters = params
        product_filter, ids = _rest_filter(filters)
    except ValueError as exc:
        field_name = "page_info" if "page_info" in params else "query"
        return _json({"errors": {field_name: [str(exc)]}}, 400, headers)
    if ids is not None:
        id_terms = " OR ".join(f"id:{i}" for i in ids) or "id:0"
        product_filter = _and_filter(product_filter, ProductFilter.parse(id_terms))
    if before is not None:
        page = shop.store.page("ID", last=limit, before=before, product_filter=product_filter)
    else:
        page = shop.store.page("ID", first=limit, after=after, product_filter=product_filter)
    links = []
    base = f"{_url_base(request)}{request.url.path}"
    keep = {"limit": str(limit), **({"fields": params["fields"]} if fields else {})}
    if page.items and page.has_previous:
        query = urlencode({**keep, "page_info": _page_info_token(filters, page.items[0].id, "previous")})
        links.append(f'<{base}?{query}>; rel="previous"')
    if page.items and page.has_next:
        query = urlencode({**keep, "page_info": _page_info_token(filters, page.items[-1].id, "next")})
        links.append(f'<{base}?{query}>; rel="next"')
    if links:
        headers["Link"] = ", ".join(links)
    return _json({"products": [rest_product(p, fields) for p in page.items]}, 200, headers)


def _and_filter(left: ProductFilter, right: ProductFilter) -> ProductFilter:
    """Every combination of an OR-group from each side (both filters must hold)."""
    if left.empty:
        return right
    if right.empty:
        return left
    groups = [a + b for a in left.groups for b in right.groups]
    return ProductFilter(groups=groups, warnings=left.warnings + right.warnings, text=f"({left.text}) ({right.text})")


@_counted("rest")
async def rest_product_one(request: Request) -> Response:
    shop, headers, refusal = _rest_gate(request)
    if refusal is not None:
        return refusal
    product = shop.store.get(request.path_params["product_id"])
    if product is None:
        return _json({"errors": "Not Found"}, 404, headers)
    params = request.query_params
    fields = [f.strip() for f in params["fields"].split(",") if f.strip()] if params.get("fields") else None
    return _json({"product": rest_product(product, fields)}, 200, headers)


@_counted("rest")
async def rest_products_count(request: Request) -> Response:
    shop, headers, refusal = _rest_gate(request)
    if refusal is not None:
        return refusal
    try:
        product_filter, ids = _rest_filter(dict(request.query_params))
    except ValueError as exc:
        return _json({"errors": {"query": [str(exc)]}}, 400, headers)
    if ids is not None:
        product_filter = _and_filter(product_filter, ProductFilter.parse(" OR ".join(f"id:{i}" for i in ids) or "id:0"))
    return _json({"count": shop.store.count_matching(product_filter)}, 200, headers)


@_counted("storefront")
async def storefront_products(request: Request) -> Response:
    shop = _shop(request)
    params = request.query_params
    try:
        limit = _limit(dict(params), STOREFRONT_DEFAULT_LIMIT)
    except ValueError as exc:
        return _bad_request(str(exc))
    raw_page = params.get("page", "1")
    page = int(raw_page) if raw_page.isdigit() and int(raw_page) > 0 else 1
    if page * limit > STOREFRONT_CAP:
        return _json({"products": []})  # the real endpoint stops here without saying so
    active = ProductFilter.parse("status:active")
    products = await run_in_threadpool(
        shop.store.offset_page, offset=(page - 1) * limit, limit=limit, product_filter=active
    )
    return _json({"products": [storefront_product(p) for p in products]})


@_counted("bulk_download")
async def bulk_download(request: Request) -> Response:
    shop = _shop(request)
    op = shop.bulk.get(request.path_params["op_id"])
    if op is None or op.status != "COMPLETED":
        return Response(
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code></Error>",
            404,
            media_type="application/xml",
        )
    return StreamingResponse(shop.bulk.lines(op), media_type="application/jsonl")


# -- control ------------------------------------------------------------------------------------------------------


def _emit(shop: Shop, topic: str, product: Product) -> list[Delivery]:
    payload = {"id": product.id} if topic == "products/delete" else webhook_product(product)
    return shop.webhooks.emit(topic, product.id, payload)


@_counted("control")
async def control_create(request: Request) -> Response:
    shop = _shop(request)
    try:
        product = shop.store.create(await _read_json(request), now=shop.now())
    except ValueError as exc:
        return _bad_request(str(exc))
    _emit(shop, "products/create", product)
    return _json({"product": rest_product(product)}, 201)


@_counted("control")
async def control_product(request: Request) -> Response:
    shop = _shop(request)
    product_id = request.path_params["product_id"]
    if request.method == "GET":
        product = shop.store.get(product_id)
    elif request.method == "DELETE":
        product = shop.store.delete(product_id)
        if product is not None:
            _emit(shop, "products/delete", product)
            return _json({"id": product_id})
    else:
        try:
            product = shop.store.update(product_id, await _read_json(request), now=shop.now())
        except ValueError as exc:
            return _bad_request(str(exc))
        if product is not None:
            _emit(shop, "products/update", product)
    if product is None:
        return _json({"errors": "Not Found"}, 404)
    return _json({"product": rest_product(product)})


@_counted("control")
async def control_webhooks(request: Request) -> Response:
    shop = _shop(request)
    if request.method == "GET":
        return _json(shop.webhooks.summary()["subscriptions"])
    try:
        body = await _read_json(request)
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("url"), str)
            or not isinstance(body.get("secret"), str)
        ):
            raise ValueError('the body must be {"url": "...", "secret": "...", "topics": [...] (optional)}')
        subscription = shop.webhooks.subscribe(body["url"], body["secret"], body.get("topics"))
    except ValueError as exc:
        return _bad_request(str(exc))
    return _json({"id": subscription.id, "url": subscription.url, "topics": sorted(subscription.topics)}, 201)


@_counted("control")
async def control_webhook_delete(request: Request) -> Response:
    if _shop(request).webhooks.unsubscribe(request.path_params["subscription_id"]):
        return _json({"deleted": True})
    return _json({"errors": "Not Found"}, 404)


@_counted("control")
async def control_webhooks_send(request: Request) -> Response:
    """Replay a recorded delivery (`delivery_id`: same bytes and ids) or send a fresh event for a product."""
    shop = _shop(request)
    try:
        body = await _read_json(request)
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
    except ValueError as exc:
        return _bad_request(str(exc))
    if "delivery_id" in body:
        delivery = shop.webhooks.find(str(body["delivery_id"]))
        if delivery is None:
            return _json({"errors": "Not Found"}, 404)
        shop.webhooks.replay(delivery)
        return _json({"deliveries": [delivery.id]}, 202)
    product_id, topic = body.get("product_id"), body.get("topic", "products/update")
    if not isinstance(product_id, int) or topic not in WEBHOOK_TOPICS:
        return _bad_request(
            f'send {{"delivery_id": ...}} or {{"product_id": <int>, "topic": one of {list(WEBHOOK_TOPICS)}}}'
        )
    if topic == "products/delete":
        deliveries = shop.webhooks.emit(topic, product_id, {"id": product_id})
    else:
        product = shop.store.get(product_id)
        if product is None:
            return _json({"errors": "Not Found"}, 404)
        deliveries = _emit(shop, topic, product)
    return _json({"deliveries": [d.id for d in deliveries]}, 202)


@_counted("control")
async def control_stats(request: Request) -> Response:
    shop = _shop(request)
    body = shop.stats.snapshot()
    body["products"] = len(shop.store)
    body["throttle_status"] = shop.cost_bucket.status()
    body["bulk_operations"] = shop.bulk.summary()
    body["webhooks"] = shop.webhooks.summary()
    return _json(body)


@_counted("control")
async def control_config(request: Request) -> Response:
    shop = _shop(request)
    if request.method == "POST":
        try:
            body = await _read_json(request)
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            shop.configure(body)
        except ValueError as exc:
            return _bad_request(str(exc))
    return _json(shop.config())


@_counted("control")
async def control_reset(request: Request) -> Response:
    shop = _shop(request)
    try:
        body = await _read_json(request)
        products, seed = body.get("products"), body.get("seed")
        for name, value in (("products", products), ("seed", seed)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a whole number >= 0")
        await run_in_threadpool(shop.reset, products=products, seed=seed)
    except (ValueError, AttributeError) as exc:
        return _bad_request(str(exc))
    return _json({"products": len(shop.store)})


def create_app(
    shop: Shop | None = None,
    *,
    products: int = 1_000,
    seed: int = 1,
    access_token: str = DEFAULT_ACCESS_TOKEN,
    bucket_size: float = 1_000,
    restore_rate: float = 50,
    rest_bucket: int = 40,
    rest_leak: float = 2,
    clock: Callable[[], float] = time.time,
    bulk_duration: float = 2.0,
) -> Starlette:
    """The emulator app. Pass a ready `Shop`, or the options to build one (ignored when `shop` is given)."""
    if shop is None:
        shop = Shop(
            products=products,
            seed=seed,
            access_token=access_token,
            bucket_size=bucket_size,
            restore_rate=restore_rate,
            rest_bucket=rest_bucket,
            rest_leak=rest_leak,
            clock=clock,
            bulk_duration=bulk_duration,
        )
    the_shop = shop

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT) as client:
            the_shop.webhooks.client = client
            try:
                yield
            finally:
                await the_shop.webhooks.drain()
                the_shop.webhooks.client = None

    routes = [
        Route("/admin/api/{version}/graphql.json", graphql_endpoint, methods=["POST"]),
        Route("/admin/api/{version}/products.json", rest_products, methods=["GET"]),
        Route("/admin/api/{version}/products/count.json", rest_products_count, methods=["GET"]),
        Route("/admin/api/{version}/products/{product_id:int}.json", rest_product_one, methods=["GET"]),
        Route("/products.json", storefront_products, methods=["GET"]),
        Route("/_emulator/bulk/{op_id:int}.jsonl", bulk_download, methods=["GET"]),
        Route("/_emulator/products", control_create, methods=["POST"]),
        Route("/_emulator/products/{product_id:int}", control_product, methods=["GET", "PATCH", "DELETE"]),
        Route("/_emulator/webhooks", control_webhooks, methods=["GET", "POST"]),
        Route("/_emulator/webhooks/send", control_webhooks_send, methods=["POST"]),
        Route("/_emulator/webhooks/{subscription_id:int}", control_webhook_delete, methods=["DELETE"]),
        Route("/_emulator/stats", control_stats, methods=["GET"]),
        Route("/_emulator/config", control_config, methods=["GET", "POST"]),
        Route("/_emulator/reset", control_reset, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.shop = shop
    return app


def serve(
    *,
    products: int = 1_000,
    host: str = "127.0.0.1",
    port: int = 8901,
    seed: int = 1,
    access_token: str = DEFAULT_ACCESS_TOKEN,
    restore_rate: float = 50,
    bucket_size: float = 1_000,
) -> None:
    """Run the emulator in the foreground (the `catalog-sync emulate shopify` command)."""
    from emulators.server import serve_forever

    app = create_app(
        products=products, seed=seed, access_token=access_token, restore_rate=restore_rate, bucket_size=bucket_size
    )
    serve_forever(app, host=host, port=port)
