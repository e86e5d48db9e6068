"""What every HTTP surface of the shop shares: the shop behind a request, JSON answers, bodies, and the stats wrapper
that counts each response by API kind and status."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from emulators.shopify.defaults import MAX_PAGE_SIZE

if TYPE_CHECKING:
    from emulators.shopify.shop import Shop

UNAUTHORIZED_BODY = {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}


def shop_of(request: Request) -> Shop:
    shop: Shop = request.app.state.shop
    return shop


def url_base(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def bad_request(message: str) -> JSONResponse:
    return json_response({"errors": message}, 400)


async def read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from exc


def counted(kind: str) -> Callable[[Callable[[Request], Any]], Callable[[Request], Any]]:
    """Records every response of an endpoint in the stats by API kind and HTTP status."""

    def wrap(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            shop = shop_of(request)
            if shop.latency and kind != "control":
                await asyncio.sleep(shop.latency)
            response: Response = await endpoint(request)
            shop.stats.request(kind, response.status_code)
            return response

        return handler

    return wrap


def api_headers(version: str) -> dict[str, str]:
    return {"X-Shopify-API-Version": version, "X-Request-Id": str(uuid.uuid4())}



def limit_param(params: Mapping[str, str], default: int) -> int:
    raw = params.get("limit")
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError("limit must be a whole number from 1 to 250")
    return min(int(raw), MAX_PAGE_SIZE)  # Shopify quietly caps larger limits
