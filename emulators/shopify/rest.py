"""The legacy Admin REST API: `products.json` with Link `page_info` paging, one product, the count, and the app's
webhook subscriptions (`webhooks.json`: list, create, update, delete; the app holds few, so a listing is one page);
each call through the REST call bucket (`X-Shopify-Shop-Api-Call-Limit`, 429 with `Retry-After: 2.0`)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from emulators.shopify.ids import parse_time, rest_time
from emulators.shopify.search import ProductFilter, SearchQueryError
from emulators.shopify.shapes import rest_product
from emulators.shopify.web import (
    UNAUTHORIZED_BODY,
    api_headers,
    counted,
    json_response,
    limit_param,
    read_json,
    shop_of,
    url_base,
)
from emulators.shopify.webhooks import WEBHOOK_TOPICS, Subscription, SubscriptionRefused

if TYPE_CHECKING:
    from emulators.shopify.shop import Shop

# `limit` when the client sends none.
REST_DEFAULT_LIMIT = 50
# Shopify's 429 always says this, whatever the bucket state.
REST_RETRY_AFTER = "2.0"
REST_429_BODY = {
    "errors": "Exceeded 2 calls per second for api client. Reduce request rates to resume uninterrupted service."
}


def _rest_gate(request: Request) -> tuple[Shop, dict[str, str], JSONResponse | None]:
    """Auth then the call bucket: the 401 or 429 response, or None to go on."""
    shop = shop_of(request)
    headers = api_headers(request.path_params["version"])
    if not shop.authorized(request):
        return shop, headers, json_response(UNAUTHORIZED_BODY, 401, headers)
    allowed, limit = shop.rest_bucket.hit()
    headers["X-Shopify-Shop-Api-Call-Limit"] = limit
    if not allowed:
        shop.stats.bump("rest_429")
        return shop, headers, json_response(REST_429_BODY, 429, {**headers, "Retry-After": REST_RETRY_AFTER})
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


def _rest_filter(params: Mapping[str, str]) -> ProductFilter:
    """REST query parameters → a ProductFilter, the `ids` allow-list included. Raises ValueError."""
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
        product_filter = ProductFilter.parse(" ".join(parts))
    except SearchQueryError as exc:
        raise ValueError(str(exc)) from exc
    if ids is None:
        return product_filter
    return _and_filter(product_filter, ProductFilter.parse(" OR ".join(f"id:{i}" for i in ids) or "id:0"))


def _fields(params: Mapping[str, str]) -> list[str] | None:
    """`?fields=id,title`: the sparse object's names, or None for the whole product."""
    return [f.strip() for f in params["fields"].split(",") if f.strip()] if params.get("fields") else None


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


@counted("rest")
async def rest_products(request: Request) -> Response:
    shop, headers, refusal = _rest_gate(request)
    if refusal is not None:
        return refusal
    params = dict(request.query_params)
    try:
        limit = limit_param(params, REST_DEFAULT_LIMIT)
        fields = _fields(params)
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
        product_filter = _rest_filter(filters)
    except ValueError as exc:
        field_name = "page_info" if "page_info" in params else "query"
        return json_response({"errors": {field_name: [str(exc)]}}, 400, headers)
    if before is not None:
        page = shop.store.page("ID", last=limit, before=before, product_filter=product_filter)
    else:
        page = shop.store.page("ID", first=limit, after=after, product_filter=product_filter)
    links = []
    base = f"{url_base(request)}{request.url.path}"
    keep = {"limit": str(limit), **({"fields": params["fields"]} if fields else {})}
    if page.items and page.has_previous:
        query = urlencode({**keep, "page_info": _page_info_token(filters, page.items[0].id, "previous")})
        links.append(f'<{base}?{query}>; rel="previous"')
    if page.items and page.has_next:
        query = urlencode({**keep, "page_info": _page_info_token(filters, page.items[-1].id, "next")})
        links.append(f'<{base}?{query}>; rel="next"')
    if links:
        headers["Link"] = ", ".join(links)
    return json_response({"products": [rest_product(p, fields) for p in page.items]}, 200, headers)


def _and_filter(left: ProductFilter, right: ProductFilter) -> ProductFilter:
    """Every combination of an OR-group from each side (both filters must hold)."""
    if left.empty:
        return right
    if right.empty:
        return left
    groups = [a + b for a in left.groups for b in right.groups]
    return ProductFilter(groups=groups, warnings=left.warnings + right.warnings, text=f"({left.text}) ({right.text})")


@counted("rest")
async def rest_product_one(request: Request) -> Response:
    shop, headers, refusal = _rest_gate(request)
    if refusal is not None:
        return refusal
    product = shop.store.get(request.path_params["product_id"])
    if product is None:
        return json_response({"errors": "Not Found"}, 404, headers)
    return json_response({"product": rest_product(product, _fields(request.query_params))}, 200, headers)


@counted("rest")
async def rest_product_delete(request: Request) -> Response:
    """`DELETE products/{id}.json`: 200 with an empty object, as Shopify answers; the shop records the event."""
    shop, headers, refusal = _rest_gate(request)
    if refusal is not None:
        return refusal
    if shop.delete_product(request.path_params["product_id"]) is None:
        return json_response({"errors": "Not Found"}, 404, headers)
    return json_response({}, 200, headers)


@counted("rest")
async def rest_products_count(request: Request) -> Response:
    shop, headers, refusal = _rest_gate(request)
    if refusal is not None:
        return refusal
    try:
        product_filter = _rest_filter(dict(request.query_params))
    except ValueError as exc:
        return json_response({"errors": {"query": [str(exc)]}}, 400, headers)
    return json_response({"count": shop.store.count_matching(product_filter)}, 200, headers)


def _rest_webhook(shop: Shop, subscription: Subscription) -> dict[str, object]:
    return {
        "id": subscription.id,
        "address": subscription.url,
        "topic": subscription.topic,
        "created_at": rest_time(int(subscription.created_at)),
        "updated_at": rest_time(int(subscription.updated_at)),
        "format": "json",
        "fields": [],
        "metafield_namespaces": [],
        "api_version": shop.api_version,
        "private_metafield_namespaces": [],
    }


def _refused(exc: SubscriptionRefused, headers: Mapping[str, str]) -> JSONResponse:
    """Shopify's 422: `{"errors": {"address": ["for this topic has already been taken"]}}`."""
    message = str(exc)
    prefix = exc.field.capitalize() + " "
    reason = message[len(prefix) :] if message.startswith(prefix) else message
    return json_response({"errors": {exc.field: [reason]}}, 422, headers)


async def _webhook_body(request: Request) -> dict[str, object]:
    body = await read_json(request)
    hook = body.get("webhook") if isinstance(body, dict) else None
    if not isinstance(hook, dict):
        raise ValueError("webhook")
    return hook


@counted("rest")
async def rest_webhooks(request: Request) -> Response:
    shop, headers, refusal = _rest_gate(request)
    if refusal is not None:
        return refusal
    if request.method == "GET":
        params = request.query_params
        topic = params.get("topic")
        try:
            limit = limit_param(params, REST_DEFAULT_LIMIT)
        except ValueError as exc:
            return json_response({"errors": {"limit": [str(exc)]}}, 400, headers)
        found = shop.webhooks.app_subscriptions([topic] if topic else None, params.get("address"))[:limit]
        return json_response({"webhooks": [_rest_webhook(shop, s) for s in found]}, 200, headers)
    try:
        hook = await _webhook_body(request)
    except ValueError:
        return json_response({"errors": {"webhook": "Required parameter missing or invalid"}}, 400, headers)
    wanted, address = hook.get("topic"), hook.get("address")
    if not isinstance(wanted, str) or wanted not in WEBHOOK_TOPICS:
        return json_response({"errors": {"topic": [f"Invalid topic specified: {wanted}"]}}, 422, headers)
    try:
        created = shop.webhooks.create(wanted, str(address or ""))
    except SubscriptionRefused as exc:
        return _refused(exc, headers)
    return json_response({"webhook": _rest_webhook(shop, created)}, 201, headers)


@counted("rest")
async def rest_webhook_one(request: Request) -> Response:
    shop, headers, refusal = _rest_gate(request)
    if refusal is not None:
        return refusal
    subscription_id = request.path_params["webhook_id"]
    current = shop.webhooks.app_subscription(subscription_id)
    if current is None:
        return json_response({"errors": "Not Found"}, 404, headers)
    if request.method == "GET":
        return json_response({"webhook": _rest_webhook(shop, current)}, 200, headers)
    if request.method == "DELETE":
        shop.webhooks.delete(subscription_id)
        return json_response({}, 200, headers)
    try:
        hook = await _webhook_body(request)
    except ValueError:
        return json_response({"errors": {"webhook": "Required parameter missing or invalid"}}, 400, headers)
    try:
        changed = shop.webhooks.change(subscription_id, str(hook.get("address") or current.url))
    except SubscriptionRefused as exc:
        return _refused(exc, headers)
    return json_response({"webhook": _rest_webhook(shop, changed)}, 200, headers)


ROUTES = [
    Route("/admin/api/{version}/products.json", rest_products, methods=["GET"]),
    Route("/admin/api/{version}/products/count.json", rest_products_count, methods=["GET"]),
    Route("/admin/api/{version}/products/{product_id:int}.json", rest_product_one, methods=["GET"]),
    Route("/admin/api/{version}/webhooks.json", rest_webhooks, methods=["GET", "POST"]),
    Route("/admin/api/{version}/webhooks/{webhook_id:int}.json", rest_webhook_one, methods=["GET", "PUT", "DELETE"]),
    Route("/admin/api/{version}/products/{product_id:int}.json", rest_product_delete, methods=["DELETE"]),
]
