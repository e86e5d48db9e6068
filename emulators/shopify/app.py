"""The Shopify emulator's Starlette app: the Admin GraphQL endpoint, the bulk result download and the route table."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from emulators.shopify import control, rest, storefront
from emulators.shopify.defaults import DEFAULT_ACCESS_TOKEN, DEFAULT_APP_SECRET
from emulators.shopify.shop import Shop
from emulators.shopify.web import UNAUTHORIZED_BODY, api_headers, counted, json_response, shop_of, url_base
from emulators.shopify.webhooks import WEBHOOK_TIMEOUT


@counted("graphql")
async def graphql_endpoint(request: Request) -> Response:
    shop = shop_of(request)
    version = request.path_params["version"]
    if not shop.authorized(request):
        return json_response(UNAUTHORIZED_BODY, 401)
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
            return json_response({"errors": {"query": "Required parameter missing or invalid"}}, 400)
        if not isinstance(payload, dict):
            return json_response({"errors": {"query": "Required parameter missing or invalid"}}, 400)
        query, variables, operation_name = payload.get("query"), payload.get("variables"), payload.get("operationName")
    if not isinstance(query, str) or not query.strip():
        return json_response({"errors": {"query": "Required parameter missing or invalid"}}, 400)
    if variables is not None and not isinstance(variables, dict):
        return json_response({"errors": [{"message": "Variables must be a JSON object"}]}, 200)
    body = await run_in_threadpool(shop.graphql.run, query, variables, operation_name, url_base(request), version)
    return json_response(body, 200, api_headers(version))



@counted("bulk_download")
async def bulk_download(request: Request) -> Response:
    shop = shop_of(request)
    op = shop.bulk.get(request.path_params["op_id"])
    if op is None or op.status != "COMPLETED":
        return Response(
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code></Error>",
            404,
            media_type="application/xml",
        )
    return StreamingResponse(shop.bulk.lines(op), media_type="application/jsonl")


def create_app(shop: Shop | None = None, **options: Any) -> Starlette:
    """The emulator app. Pass a ready `Shop`, or `Shop`'s keyword options to build one (ignored when `shop` is given):
    `products`, `seed`, `access_token`, `bucket_size`, `restore_rate`, `rest_bucket`, `rest_leak`, `clock`,
    `bulk_duration`, …"""
    the_shop = shop if shop is not None else Shop(**options)

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
        *rest.ROUTES,
        *storefront.ROUTES,
        Route("/_emulator/bulk/{op_id:int}.jsonl", bulk_download, methods=["GET"]),
        *control.ROUTES,
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.shop = the_shop
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
    app_secret: str = DEFAULT_APP_SECRET,
) -> None:
    """Run the emulator in the foreground (the `catalog-sync emulate shopify` command)."""
    from emulators.server import serve_forever

    app = create_app(
        products=products,
        seed=seed,
        access_token=access_token,
        restore_rate=restore_rate,
        bucket_size=bucket_size,
        app_secret=app_secret,
    )
    serve_forever(app, host=host, port=port)
