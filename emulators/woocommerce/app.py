"""The WooCommerce emulator's Starlette app: request counting, error answers, the delivery task and the routes."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from emulators.woocommerce import control, rest, webhooks_api
from emulators.woocommerce.defaults import (
    API_PREFIX,
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    DEFAULT_SITE_URL,
    DEFAULT_UTC_OFFSET,
)
from emulators.woocommerce.errors import Answer, EmulatorError
from emulators.woocommerce.store import Clock, Delivery, WooStore
from emulators.woocommerce.webhooks import delivery_loop


class WooEmulatorApp(Starlette):
    """Counts API requests by endpoint and status, and answers authentication verdicts."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await super().__call__(scope, receive, send)
            return
        store: WooStore = self.state.store
        endpoint = re.sub(r"/\d+", "/{id}", scope["path"][len(API_PREFIX) :]) or "/"
        status = 500

        async def counting_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await super().__call__(scope, receive, counting_send)
        finally:
            store.stats.requests[f"{scope['method']} {endpoint} {status}"] += 1


async def _on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, Answer):
        return exc.response
    if isinstance(exc, EmulatorError):
        return exc.response()
    raise exc


def create_app(
    products: int = 100,
    seed: int = 0,
    consumer_key: str = DEFAULT_CONSUMER_KEY,
    consumer_secret: str = DEFAULT_CONSUMER_SECRET,
    clock: Clock = lambda: datetime.now(UTC),
    *,
    site_url: str = DEFAULT_SITE_URL,
    utc_offset: timedelta = DEFAULT_UTC_OFFSET,
    secure: bool | None = None,
    strip_authorization: bool = False,
    key_permissions: str = "read",
    user_can_read: bool = True,
    oauth_clock: Callable[[], float] = time.time,
) -> Starlette:
    """The emulated store as an ASGI app (see the module docstring). `clock` stamps products (aware datetimes);
    `oauth_clock` (Unix seconds) judges OAuth timestamps, so tests may freeze one and not the other."""
    store = WooStore(
        products=products,
        seed=seed,
        consumer_key=consumer_key,
        consumer_secret=consumer_secret,
        clock=clock,
        site_url=site_url,
        utc_offset=utc_offset,
        secure=secure,
        strip_authorization=strip_authorization,
        key_permissions=key_permissions,
        user_can_read=user_can_read,
        oauth_clock=oauth_clock,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        queue: asyncio.Queue[Delivery] = asyncio.Queue()
        store.queue = queue
        task = asyncio.create_task(delivery_loop(store, queue))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            store.queue = None

    app = WooEmulatorApp(
        routes=[*webhooks_api.ROUTES, *rest.ROUTES, *control.ROUTES],
        exception_handlers={Answer: _on_error, EmulatorError: _on_error},
        lifespan=lifespan,
    )
    app.state.store = store
    return app


def serve(
    host: str,
    port: int,
    *,
    products: int = 100,
    seed: int = 0,
    consumer_key: str = DEFAULT_CONSUMER_KEY,
    consumer_secret: str = DEFAULT_CONSUMER_SECRET,
    key_permissions: str = "read",
) -> None:
    """Run the emulator in the foreground until interrupted (`catalog-sync emulate woocommerce`)."""
    from emulators import server

    app = create_app(products, seed, consumer_key, consumer_secret, key_permissions=key_permissions)
    server.serve_forever(app, host=host, port=port)
