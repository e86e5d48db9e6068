"""The REST API v3 product endpoints: the listing with WooCommerce's filters, ordering and paging headers, one
product (or variation), a product's variations, and `rest_no_route`."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timezone
from typing import Any, Final
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from emulators.woocommerce.auth import Authenticator
from emulators.woocommerce.data import STATUSES, WooProduct
from emulators.woocommerce.defaults import API_PREFIX
from emulators.woocommerce.errors import EmulatorError
from emulators.woocommerce.shapes import render, render_variation
from emulators.woocommerce.store import WooStore, store_of

# WooCommerce's bounds on per_page; its default page size.
MAX_PER_PAGE: Final = 100
DEFAULT_PER_PAGE: Final = 10


def _invalid_param(name: str, why: str) -> EmulatorError:
    return EmulatorError(400, "rest_invalid_param", f"Invalid parameter(s): {name}", params={name: why})


def int_param(request: Request, name: str, default: int, low: int, high: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _invalid_param(name, f"{name} is not of type integer.") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} (inclusive) and {high} (inclusive)" if high is not None else f"at least {low}"
        raise _invalid_param(name, f"{name} must be {bound}")
    return value


def _enum_param(request: Request, name: str, default: str, allowed: Iterable[str]) -> str:
    value = request.query_params.get(name, default)
    options = tuple(allowed)
    if value not in options:
        raise _invalid_param(name, f"{name} is not one of {', '.join(options)}.")
    return value


def _bool_param(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0", ""):
        return False
    raise _invalid_param(name, f"{name} is not of type boolean.")


def _date_param(request: Request, name: str, tz: timezone) -> datetime | None:
    """A date filter as aware UTC. Without an offset it is GMT with dates_are_gmt=true, else the store's time."""
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise _invalid_param(name, "Invalid date.") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC if _bool_param(request, "dates_are_gmt") else tz)
    return parsed.astimezone(UTC)


def page_headers(request: Request, total: int, per_page: int, page: int) -> dict[str, str]:
    pages = math.ceil(total / per_page) if total else 0
    headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
    base = f"{request.url.scheme}://{request.headers.get('host', '')}{request.url.path}"
    query = {k: v for k, v in request.query_params.items() if not k.startswith(("oauth_", "consumer_"))}
    links = []
    if page > 1:
        links.append(f'<{base}?{urlencode({**query, "page": min(page - 1, max(pages, 1))})}>; rel="prev"')
    if pages > page:
        links.append(f'<{base}?{urlencode({**query, "page": page + 1})}>; rel="next"')
    if links:
        headers["Link"] = ", ".join(links)
    return headers



def _auth(request: Request, *, listing: bool) -> WooStore:
    store = store_of(request)
    Authenticator(store).check(request, listing=listing)
    return store


async def list_products(request: Request) -> Response:
    store = _auth(request, listing=True)
    per_page = int_param(request, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
    page = int_param(request, "page", 1, 1)
    offset = int_param(request, "offset", 0, 0) if request.query_params.get("offset") else None
    orderby = _enum_param(request, "orderby", "date", ("date", "id", "include", "title", "slug", "modified"))
    order = _enum_param(request, "order", "desc", ("asc", "desc"))
    status = _enum_param(request, "status", "any", ("any", *STATUSES))
    kind = request.query_params.get("type")
    include = {int(i) for i in re.findall(r"\d+", request.query_params.get("include", ""))}
    bounds = {
        name: _date_param(request, name, store.tz) for name in ("after", "before", "modified_after", "modified_before")
    }

    def wanted(product: WooProduct) -> bool:
        if status == "any" and product.status == "trash":
            return False
        if status != "any" and product.status != status:
            return False
        if kind and product.type != kind:
            return False
        if include and product.id not in include:
            return False
        checks = (
            (bounds["after"], product.date_created, 1),
            (bounds["before"], product.date_created, -1),
            (bounds["modified_after"], product.date_modified, 1),
            (bounds["modified_before"], product.date_modified, -1),
        )
        # Strict comparisons, as WP_Date_Query's non-inclusive `after`/`before`.
        return all(bound is None or (moment > bound if sign > 0 else moment < bound) for bound, moment, sign in checks)

    keys: dict[str, Callable[[WooProduct], Any]] = {
        "date": lambda p: (p.date_created, p.id),
        "modified": lambda p: (p.date_modified, p.id),
        "id": lambda p: p.id,
        "include": lambda p: p.id,
        "title": lambda p: (p.name.lower(), p.id),
        "slug": lambda p: (p.slug, p.id),
    }
    matched = sorted(filter(wanted, store.products.values()), key=keys[orderby], reverse=order == "desc")
    start = offset if offset is not None else (page - 1) * per_page
    body = [render(store, product) for product in matched[start : start + per_page]]
    return JSONResponse(body, headers=page_headers(request, len(matched), per_page, page))


async def get_product(request: Request) -> Response:
    store = _auth(request, listing=False)
    product_id = int(request.path_params["id"])
    if product_id in store.variations:
        parent, variation = store.variations[product_id]
        return JSONResponse(render_variation(store, parent, variation, as_product=True))
    return JSONResponse(render(store, store.product(product_id)))


async def list_variations(request: Request) -> Response:
    store = _auth(request, listing=True)
    per_page = int_param(request, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
    page = int_param(request, "page", 1, 1)
    parent = store.products.get(int(request.path_params["id"]))
    variations = parent.variations if parent is not None else []
    chunk = variations[(page - 1) * per_page : page * per_page]
    body = [render_variation(store, parent, v) for v in chunk] if parent is not None else []
    return JSONResponse(body, headers=page_headers(request, len(variations), per_page, page))


async def no_route(request: Request) -> Response:
    return EmulatorError(404, "rest_no_route", "No route was found matching the URL and request method.").response()


ROUTES = [
    Route(f"{API_PREFIX}/products", list_products, methods=["GET"]),
    Route(API_PREFIX + "/products/{id:int}", get_product, methods=["GET"]),
    Route(API_PREFIX + "/products/{id:int}/variations", list_variations, methods=["GET"]),
    Route(API_PREFIX + "/{rest:path}", no_route),
]
