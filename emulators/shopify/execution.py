"""Admin GraphQL requests: parse, validate, cost, throttle, execute with graphql-core, refund what was not used."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from graphql import (
    ExecutionResult,
    GraphQLError,
    GraphQLResolveInfo,
    execute,
    get_named_type,
    get_operation_ast,
    is_leaf_type,
    parse,
    validate,
)

from emulators.shopify.cost import MAX_QUERY_COST, MUTATION_COST, CostCalculator, QueryRejected
from emulators.shopify.defaults import DEFAULT_API_VERSION
from emulators.shopify.events import EventFilter
from emulators.shopify.ids import gid, parse_gid
from emulators.shopify.schema import SCHEMA
from emulators.shopify.search import ProductFilter, SearchQueryError
from emulators.shopify.store import SORT_KEYS
from emulators.shopify.views import Connection, Fields, Node, decode, list_connection, paging_args
from emulators.shopify.webhooks import SubscriptionRefused

if TYPE_CHECKING:
    from emulators.shopify.shop import Shop

RATE_LIMIT_DOCS = "https://shopify.dev/api/usage/rate-limits"
# Shopify's `productsCount` stops counting here unless asked for more.
DEFAULT_COUNT_LIMIT = 10_000
# From this Admin API version a bulk query's JSONL is not grouped by parent unless `groupObjects: true`.
BULK_UNGROUPED_SINCE = "2026-01"
# From this Admin API version a webhook subscription's address is `uri` (`callbackUrl` before it).
WEBHOOK_URI_SINCE = "2025-10"


@dataclass
class ExecutionContext:
    shop: Shop
    url_base: str
    api_version: str = DEFAULT_API_VERSION
    actual_cost: int = 0
    search: list[dict[str, Any]] = field(default_factory=list)


def _type_of(value: Any, info: GraphQLResolveInfo[ExecutionContext], abstract_type: Any) -> str:
    # Objects that hold no record (a webhook's endpoint) are dicts that name their type.
    return str(value["__typename"] if isinstance(value, Mapping) else value.typename)


class Root:
    """QueryRoot and Mutation fields."""

    def products(self, info: GraphQLResolveInfo[ExecutionContext], **args: Any) -> Connection:
        context: ExecutionContext = info.context
        first, last, after, before, reverse = paging_args(args)
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
            after=decode(after),
            before=decode(before),
            product_filter=product_filter,
        )
        nodes = [Node("Product", p) for p in page.items]
        return Connection(nodes, page.keys, page.has_next, page.has_previous)

    def events(self, info: GraphQLResolveInfo[ExecutionContext], **args: Any) -> Connection:
        context: ExecutionContext = info.context
        sort = args.get("sortKey", "ID")
        try:
            event_filter = EventFilter.parse(args.get("query"))
        except SearchQueryError as exc:
            raise GraphQLError(f"Invalid search query: {exc}") from exc
        # `reverse` is applied by the list itself, so the cursors keep one meaning whichever way it is read.
        found = context.shop.events.matching(event_filter, sort=sort)
        keys = [(event.created_at if sort == "CREATED_AT" else event.id, event.id) for event in found]
        return list_connection([Node("BasicEvent", event) for event in found], keys, args, bulk=False)

    def product(self, info: GraphQLResolveInfo[ExecutionContext], id: str) -> Node | None:
        node = self.node(info, id)
        return node if node is not None and node.typename == "Product" else None

    def node(self, info: GraphQLResolveInfo[ExecutionContext], id: str) -> Node | None:
        context: ExecutionContext = info.context
        parsed = parse_gid(id)
        if parsed is None:
            raise GraphQLError(f"Invalid global id '{id}'")
        kind, number = parsed
        if kind == "Product":
            product = context.shop.store.get(number)
            return Node("Product", product) if product is not None else None
        if kind == "BulkOperation":
            op = context.shop.bulk.get(number)
            return Node("BulkOperation", op) if op is not None else None
        if kind == "WebhookSubscription":
            subscription = context.shop.webhooks.app_subscription(number)
            return Node("WebhookSubscription", subscription) if subscription is not None else None
        return None

    def webhookSubscriptions(self, info: GraphQLResolveInfo[ExecutionContext], **args: Any) -> Connection:
        context: ExecutionContext = info.context
        if args.get("first") is None and args.get("last") is None:
            raise GraphQLError("you must provide one of first or last")
        if args.get("uri") is not None:
            _require_uri(context, "webhookSubscriptions(uri:)")
        topics = [_rest_topic(t) for t in args["topics"]] if args.get("topics") else None
        found = context.shop.webhooks.app_subscriptions(topics, args.get("uri") or args.get("callbackUrl"))
        nodes = [Node("WebhookSubscription", s) for s in found]
        return list_connection(nodes, [(s.id, s.id) for s in found], args, bulk=False)

    def webhookSubscription(self, info: GraphQLResolveInfo[ExecutionContext], id: str) -> Node | None:
        node = self.node(info, id)
        return node if node is not None and node.typename == "WebhookSubscription" else None

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

    def currentBulkOperation(self, info: GraphQLResolveInfo[ExecutionContext], type: str = "QUERY") -> Node | None:
        context: ExecutionContext = info.context
        op = context.shop.bulk.current() if type == "QUERY" else None
        return Node("BulkOperation", op) if op is not None else None

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
        return {"bulkOperation": Node("BulkOperation", op) if op is not None else None, "userErrors": errors}

    def bulkOperationCancel(self, info: GraphQLResolveInfo[ExecutionContext], id: str) -> dict[str, Any]:
        context: ExecutionContext = info.context
        parsed = parse_gid(id)
        if parsed is None or parsed[0] != "BulkOperation":
            return {"bulkOperation": None, "userErrors": [{"field": ["id"], "message": "Invalid id"}]}
        op, errors = context.shop.bulk.cancel(parsed[1])
        return {"bulkOperation": Node("BulkOperation", op) if op is not None else None, "userErrors": errors}

    def webhookSubscriptionCreate(
        self, info: GraphQLResolveInfo[ExecutionContext], topic: str, webhookSubscription: dict[str, Any]
    ) -> dict[str, Any]:
        context: ExecutionContext = info.context
        address, field_name = _address(context, webhookSubscription)
        try:
            subscription = context.shop.webhooks.create(_rest_topic(topic), address)
        except SubscriptionRefused as exc:
            return {"webhookSubscription": None, "userErrors": [_user_error(exc, field_name)]}
        return {"webhookSubscription": Node("WebhookSubscription", subscription), "userErrors": []}

    def webhookSubscriptionUpdate(
        self, info: GraphQLResolveInfo[ExecutionContext], id: str, webhookSubscription: dict[str, Any]
    ) -> dict[str, Any]:
        context: ExecutionContext = info.context
        address, field_name = _address(context, webhookSubscription)
        parsed = parse_gid(id)
        try:
            if parsed is None or parsed[0] != "WebhookSubscription":
                raise SubscriptionRefused("id", "Webhook subscription does not exist")
            subscription = context.shop.webhooks.change(parsed[1], address)
        except SubscriptionRefused as exc:
            return {"webhookSubscription": None, "userErrors": [_user_error(exc, field_name)]}
        return {"webhookSubscription": Node("WebhookSubscription", subscription), "userErrors": []}

    def webhookSubscriptionDelete(self, info: GraphQLResolveInfo[ExecutionContext], id: str) -> dict[str, Any]:
        context: ExecutionContext = info.context
        parsed = parse_gid(id)
        if parsed is None or parsed[0] != "WebhookSubscription" or not context.shop.webhooks.delete(parsed[1]):
            error = {"field": ["id"], "message": "Webhook subscription does not exist"}
            return {"deletedWebhookSubscriptionId": None, "userErrors": [error]}
        return {"deletedWebhookSubscriptionId": id, "userErrors": []}


def _rest_topic(topic: str) -> str:
    """PRODUCTS_UPDATE as deliveries name it: `products/update`."""
    return topic.lower().replace("_", "/", 1)


def _uses_uri(context: ExecutionContext) -> bool:
    version = context.api_version
    return not version[:1].isdigit() or version >= WEBHOOK_URI_SINCE


def _require_uri(context: ExecutionContext, where: str) -> None:
    if not _uses_uri(context):
        raise GraphQLError(f"{where} does not exist in API version {context.api_version}; it is new in 2025-10")


def _address(context: ExecutionContext, given: Mapping[str, Any]) -> tuple[str, str]:
    """The address a subscription input gives, and the input field it came in."""
    if given.get("uri") is not None:
        _require_uri(context, "WebhookSubscriptionInput.uri")
        return str(given["uri"]), "uri"
    return str(given.get("callbackUrl") or ""), "callbackUrl"


def _user_error(exc: SubscriptionRefused, field_name: str) -> dict[str, Any]:
    where = (
        ["id"] if exc.field == "id" else ["webhookSubscription", field_name] if exc.field == "address" else [exc.field]
    )
    return {"field": where, "message": str(exc)}


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
            field_resolver=Fields(shop.domain),
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
