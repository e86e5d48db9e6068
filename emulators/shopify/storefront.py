"""The public storefront `GET /products.json?limit=&page=`: active products only, page numbers, and silence past
page × limit 25,000 as the real endpoint does."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emulators.shopify.search import ProductFilter
from emulators.shopify.shapes import storefront_product
from emulators.shopify.web import bad_request, counted, json_response, limit_param, shop_of

# `limit` when the client sends none (smaller than the Admin REST default).
STOREFRONT_DEFAULT_LIMIT = 30
# The storefront endpoint silently returns nothing past this many products (page × limit).
STOREFRONT_CAP = 25_000


@counted("storefront")
async def storefront_products(request: Request) -> Response:
    shop = shop_of(request)
    params = request.query_params
    try:
        limit = limit_param(dict(params), STOREFRONT_DEFAULT_LIMIT)
    except ValueError as exc:
        return bad_request(str(exc))
    raw_page = params.get("page", "1")
    page = int(raw_page) if raw_page.isdigit() and int(raw_page) > 0 else 1
    if page * limit > STOREFRONT_CAP:
        return json_response({"products": []})  # the real endpoint stops here without saying so
    active = ProductFilter.parse("status:active")
    products = await run_in_threadpool(
        shop.store.offset_page, offset=(page - 1) * limit, limit=limit, product_filter=active
    )
    return json_response({"products": [storefront_product(p) for p in products]})


ROUTES = [Route("/products.json", storefront_products, methods=["GET"])]
