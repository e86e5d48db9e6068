"""The HTTP face: handlers for the API and the control routes, the ASGI app with its fault middleware, `serve`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from emulators.catalog.contract import (
    ADMIN_PREFIX,
    API_PREFIX,
    DEFAULT_API_KEYS,
    ENDPOINT_ITEM,
    MAX_JSON_BYTES,
    PRODUCTS_PATH,
    CatalogError,
    error_response,
    utc_now,
    validation_failed,
)
from emulators.catalog.emulator import CatalogEmulator
from emulators.catalog.faults import Faults
from emulators.catalog.requests import (
    check_content_length,
    external_id,
    form_payload,
    media_type_of,
    parse_json,
    parse_limit,
    parse_upsert,
    read_capped,
    read_form,
    upload_refs,
)

# ---- handlers ----------------------------------------------------------------------------------------------------


def _emulator(request: Request) -> CatalogEmulator:
    emulator: CatalogEmulator = request.app.state.emulator
    return emulator


async def upsert_product(request: Request) -> Response:
    emulator = _emulator(request)
    account = emulator.authenticate(request)
    check_content_length(request)
    media_type = media_type_of(request)
    if media_type == "multipart/form-data":
        form = await read_form(request)
        try:
            spec = parse_upsert(await form_payload(form))
            uploads = await upload_refs(spec, form)
        finally:
            await form.close()
    elif media_type in ("", "application/json") or media_type.endswith("+json"):
        spec = parse_upsert(parse_json(await read_capped(request, MAX_JSON_BYTES), "(body)"))
        uploads = await upload_refs(spec, None)
    else:
        raise validation_failed("(body)", "send application/json, or multipart/form-data with a data field.")
    if emulator.faults.credits_exhausted:
        raise CatalogError(402, "INSUFFICIENT_CREDITS", "The account has no credits left; top it up to continue.")
    # From here on nothing awaits: the read-modify-write of the account is atomic in the event loop.
    product, created = emulator.upsert(account, spec, uploads)
    return JSONResponse(product.body, status_code=201 if created else 200)


async def list_products(request: Request) -> Response:
    emulator = _emulator(request)
    account = emulator.authenticate(request)
    limit = parse_limit(request.query_params.get("limit"))
    cursor = request.query_params.get("cursor") or None
    return JSONResponse(emulator.list_page(account, limit, cursor))


async def get_product(request: Request) -> Response:
    emulator = _emulator(request)
    account = emulator.authenticate(request)
    return JSONResponse(emulator.get(account, external_id(request)).body)


async def delete_product(request: Request) -> Response:
    emulator = _emulator(request)
    account = emulator.authenticate(request)
    emulator.delete(account, external_id(request))
    return Response(status_code=204)


async def admin_config(request: Request) -> Response:
    emulator = _emulator(request)
    if request.method == "POST":
        changes = parse_json(await read_capped(request, MAX_JSON_BYTES), "(body)")
        if not isinstance(changes, dict):
            raise validation_failed("(body)", "must be a JSON object of fault settings.")
        try:
            emulator.configure(changes)
        except ValidationError as exc:
            details = [
                {"path": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
                for error in exc.errors()
            ]
            raise CatalogError(400, "VALIDATION_FAILED", "Invalid fault settings.", details) from None
    return JSONResponse(emulator.faults.model_dump())


async def admin_stats(request: Request) -> Response:
    return JSONResponse(_emulator(request).stats_body())


async def admin_reset(request: Request) -> Response:
    raw = await read_capped(request, MAX_JSON_BYTES)
    options = parse_json(raw, "(body)") if raw.strip() else {}
    if not isinstance(options, dict) or not isinstance(options.get("stats_only", False), bool):
        raise validation_failed("(body)", 'must be empty or {"stats_only": true|false}.')
    _emulator(request).reset(stats_only=options.get("stats_only", False))
    return JSONResponse({"reset": "stats" if options.get("stats_only") else "all"})


async def _on_catalog_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CatalogError)
    return error_response(exc.status, exc.code, exc.message, details=exc.details)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
    return error_response(exc.status_code, codes.get(exc.status_code, "HTTP_ERROR"), str(exc.detail))


async def _on_unexpected_error(request: Request, exc: Exception) -> Response:
    return error_response(500, "INTERNAL_ERROR", "The emulator failed on this request; see its log.")


# ---- the ASGI app ------------------------------------------------------------------------------------------------


def _endpoint(method: str, path: str) -> str:
    """The stats label of an API request: the route template, so ids do not blow up the table."""
    if path == PRODUCTS_PATH:
        return f"{method} {PRODUCTS_PATH}"
    if path.startswith(PRODUCTS_PATH + "/"):
        return f"{method} {ENDPOINT_ITEM}"
    return f"{method} (other)"


async def _drop_connection(send: Send) -> None:
    """Close the connection without writing a byte, as a crashed proxy or a reset would.

    uvicorn answers 500 when an app raises before responding, so raising cannot drop a connection. Its protocol
    objects hand the app a bound `send` whose owner holds the socket's transport; aborting that transport closes the
    socket at once (over HTTP/2 that is the whole connection, every stream on it). Yielding once lets uvicorn see the
    disconnect, so it does not try to answer either.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    abort = getattr(transport, "abort", None)
    if callable(abort):
        abort()
        await asyncio.sleep(0)
        return
    # Another server: start a response and stop, which every server ends by closing the connection.
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]})


def _api_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            return bytes(value).decode("latin-1")
    return None


class CatalogEmulatorApp(Starlette):
    """The Starlette app with fault injection and stats in front of the routes (pure ASGI, so it stays cheap)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX + "/"):
            await super().__call__(scope, receive, send)
            return
        emulator: CatalogEmulator = self.state.emulator
        endpoint = _endpoint(scope["method"], scope["path"])
        verdict = emulator.admit(_api_key(scope))
        latency = emulator.faults.latency_ms
        if latency > 0:
            await emulator.sleep(latency / 1000)
        if verdict.action == "drop":
            emulator.stats.dropped += 1
            emulator.stats.record(endpoint, "dropped")
            await _drop_connection(send)
            return
        if verdict.response is not None:
            emulator.stats.record(endpoint, verdict.response.status_code)
            await verdict.response(scope, receive, send)
            return

        status = 500
        extra = [(name.lower().encode(), value.encode()) for name, value in (verdict.headers or {}).items()]

        async def send_and_count(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await super().__call__(scope, receive, send_and_count)
        finally:
            emulator.stats.record(endpoint, status)


def create_app(
    api_keys: Iterable[str] = DEFAULT_API_KEYS,
    faults: Faults | None = None,
    *,
    clock: Callable[[], datetime] = utc_now,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Starlette:
    """The emulator as an ASGI app. `clock` stamps products (timezone-aware), `monotonic` drives the rate limiter and
    `sleep` the added latency: tests swap them instead of waiting."""
    emulator = CatalogEmulator(api_keys, faults or Faults(), clock=clock, monotonic=monotonic, sleep=sleep)
    app = CatalogEmulatorApp(
        routes=[
            Route(PRODUCTS_PATH, upsert_product, methods=["POST"]),
            Route(PRODUCTS_PATH, list_products, methods=["GET"]),
            Route(PRODUCTS_PATH + "/{external_id:path}", get_product, methods=["GET"]),
            Route(PRODUCTS_PATH + "/{external_id:path}", delete_product, methods=["DELETE"]),
            Route(f"{ADMIN_PREFIX}/config", admin_config, methods=["GET", "POST"]),
            Route(f"{ADMIN_PREFIX}/stats", admin_stats, methods=["GET"]),
            Route(f"{ADMIN_PREFIX}/reset", admin_reset, methods=["POST"]),
        ],
        exception_handlers={
            CatalogError: _on_catalog_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected_error,
        },
    )
    app.state.emulator = emulator
    return app


def serve(host: str, port: int, api_keys: Iterable[str] = DEFAULT_API_KEYS, faults: Faults | None = None) -> None:
    """Run the emulator in the foreground until interrupted (`catalog-sync emulate catalog`)."""
    from emulators import server

    server.serve_forever(create_app(api_keys, faults), host=host, port=port)
