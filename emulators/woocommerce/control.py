"""The control API under `/_emulator` (no credentials): create, edit, trash, restore and delete products, manage
webhooks, ping, drain, stats and reset. Not part of WooCommerce: what tests drive."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from emulators.woocommerce.data import STATUSES, WooImage, WooProduct, WooVariation, slugify
from emulators.woocommerce.defaults import ADMIN_PREFIX
from emulators.woocommerce.errors import EmulatorError
from emulators.woocommerce.shapes import render
from emulators.woocommerce.store import PRODUCT_TOPICS, WooStore, store_of
from emulators.woocommerce.webhooks import DELIVERY_TIMEOUT, send_ping


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EmulatorError(400, "emulator_invalid_json", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise EmulatorError(400, "emulator_invalid_json", "the body must be a JSON object")
    return body


def _str_field(body: Mapping[str, Any], name: str) -> str | None:
    if name not in body:
        return None
    value = body[name]
    if not isinstance(value, str):
        raise EmulatorError(400, "emulator_invalid_field", f"`{name}` must be a string")
    return value


def _apply(store: WooStore, product: WooProduct, body: Mapping[str, Any]) -> None:
    """Apply the editable fields of a control request to a product."""
    for name in ("name", "slug", "description", "short_description", "sku", "regular_price", "sale_price"):
        value = _str_field(body, name)
        if value is not None:
            setattr(product, name, value)
    stock = _str_field(body, "stock_status")
    if stock is not None:
        if stock not in ("instock", "outofstock", "onbackorder"):
            raise EmulatorError(400, "emulator_invalid_field", "`stock_status` is instock, outofstock or onbackorder")
        product.stock_status = stock
    status = _str_field(body, "status")
    if status is not None:
        if status not in STATUSES or status == "trash":
            raise EmulatorError(400, "emulator_invalid_field", "`status` is publish, draft, pending, private or future")
        product.status = status
    kind = _str_field(body, "type")
    if kind is not None:
        if kind not in ("simple", "variable"):
            raise EmulatorError(400, "emulator_invalid_field", "`type` is simple or variable")
        product.type = "variable" if kind == "variable" else "simple"
    if "images" in body:
        product.images = [_image_of(store, entry, "images") for entry in _entries(body, "images")]
    for name, pool in (("categories", 200), ("tags", 300)):
        if name in body:
            names = [_name_of(entry, name) for entry in _entries(body, name)]
            setattr(product, name, [(pool + index, n, slugify(n)) for index, n in enumerate(names)])
    if "variations" in body:
        if product.type != "variable":
            raise EmulatorError(400, "emulator_invalid_field", "only a variable product has variations")
        variations = []
        for number, entry in enumerate(_entries(body, "variations")):
            if not isinstance(entry, Mapping):
                raise EmulatorError(400, "emulator_invalid_field", "each of `variations` is an object")
            image = entry.get("image")
            variations.append(
                WooVariation(
                    id=store.new_id(),
                    status="private" if entry.get("status") == "private" else "publish",
                    image=_image_of(store, image, "variations[].image") if image else None,
                    regular_price=str(entry.get("regular_price", "10.00")),
                    attributes=_variation_attributes(entry, number),
                    date_created=store.now(),
                    date_modified=store.now(),
                )
            )
        product.variations = variations


def _variation_attributes(entry: Mapping[str, Any], number: int) -> tuple[tuple[str, str], ...]:
    """`attributes` ({"Color": "Red", "Size": "M"}), or `attribute` (a colour), or a numbered colour."""
    attributes = entry.get("attributes")
    if attributes is None:
        return (("Color", str(entry.get("attribute", f"Option {number + 1}"))),)
    if not isinstance(attributes, Mapping) or not all(
        isinstance(name, str) and isinstance(option, str) and name and option for name, option in attributes.items()
    ):
        raise EmulatorError(400, "emulator_invalid_field", '`variations[].attributes` is {"Color": "Red", ...}')
    return tuple(attributes.items())


def _entries(body: Mapping[str, Any], name: str) -> list[Any]:
    value = body[name]
    if not isinstance(value, list):
        raise EmulatorError(400, "emulator_invalid_field", f"`{name}` must be a list")
    return value


def _name_of(entry: Any, where: str) -> str:
    if isinstance(entry, str) and entry:
        return entry
    raise EmulatorError(400, "emulator_invalid_field", f"each of `{where}` is a non-empty string")


def _image_of(store: WooStore, entry: Any, where: str) -> WooImage:
    src, alt = (
        (entry, "")
        if isinstance(entry, str)
        else ((entry.get("src"), entry.get("alt", "")) if isinstance(entry, Mapping) else (None, ""))
    )
    if not isinstance(src, str) or not src or not isinstance(alt, str):
        raise EmulatorError(400, "emulator_invalid_field", f"each of `{where}` is a src string or {{src, alt}}")
    # Kept relative to the site when it is on the site (like generated images), else as given.
    path = src[len(store.site_url) :] if src.startswith(store.site_url + "/") else src
    return WooImage(store.new_id(), path, alt)


async def admin_create(request: Request) -> Response:
    store = store_of(request)
    body = await _json_body(request)
    now = store.now()
    product_id = store.new_id()
    product = WooProduct(
        id=product_id,
        name="",
        slug=f"product-{product_id}",
        type="simple",
        status="publish",
        description="",
        short_description="",
        sku=f"SKU-{product_id}",
        regular_price="10.00",
        sale_price="",
        stock_status="instock",
        categories=[],
        tags=[],
        images=[],
        variations=[],
        date_created=now,
        date_modified=now,
    )
    _apply(store, product, body)
    if "slug" not in body and product.name:
        product.slug = f"{slugify(product.name)}-{product_id}"
    store.products[product_id] = product
    store.touch(product, "product.created")
    return JSONResponse(render(store, product), status_code=201)


async def admin_edit(request: Request) -> Response:
    store = store_of(request)
    product = store.product(int(request.path_params["id"]))
    body = await _json_body(request)
    trial = replace(product)
    _apply(store, trial, body)
    product.__dict__.update(trial.__dict__)
    store.touch(product, "product.updated")
    return JSONResponse(render(store, product))


async def admin_trash(request: Request) -> Response:
    store = store_of(request)
    product = store.product(int(request.path_params["id"]))
    if product.status == "trash":
        raise EmulatorError(410, "woocommerce_rest_already_trashed", "The product has already been deleted.")
    product.status_before_trash, product.status = product.status, "trash"
    store.touch(product, "product.deleted")
    return JSONResponse(render(store, product))


async def admin_restore(request: Request) -> Response:
    store = store_of(request)
    product = store.product(int(request.path_params["id"]))
    if product.status != "trash":
        raise EmulatorError(400, "emulator_not_trashed", "the product is not in the trash")
    # WooCommerce restores products to the status they had (WC_Post_Data::wp_untrash_post_status).
    product.status, product.status_before_trash = product.status_before_trash or "draft", None
    store.touch(product, "product.restored")
    return JSONResponse(render(store, product))


async def admin_delete(request: Request) -> Response:
    store = store_of(request)
    product = store.product(int(request.path_params["id"]))
    del store.products[product.id]
    store.index_variations()
    return Response(status_code=204)


async def admin_webhooks(request: Request) -> Response:
    store = store_of(request)
    if request.method == "DELETE":
        store.webhooks = []
        return Response(status_code=204)
    body = await _json_body(request)
    url, secret, topic = _str_field(body, "url"), _str_field(body, "secret"), _str_field(body, "topic")
    if not url or not url.startswith(("http://", "https://")):
        raise EmulatorError(400, "emulator_invalid_field", "`url` is the http(s) delivery URL")
    if topic is not None and topic not in PRODUCT_TOPICS:
        raise EmulatorError(400, "emulator_invalid_field", f"`topic` is one of {', '.join(PRODUCT_TOPICS)}")
    return JSONResponse({"ids": store.add_webhooks(url, secret or "", topic)}, status_code=201)


async def admin_ping(request: Request) -> Response:
    store = store_of(request)
    results = []
    async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT) as client:
        for webhook in store.webhooks:
            status = await send_ping(client, webhook)
            results.append({"webhook_id": webhook.id, "status": status, "accepted": status == 200})
    return JSONResponse({"results": results})


async def admin_drain(request: Request) -> Response:
    store = store_of(request)
    if store.queue is not None:
        await store.queue.join()
    return JSONResponse(store.stats_body()["deliveries"])


async def admin_stats(request: Request) -> Response:
    return JSONResponse(store_of(request).stats_body())


async def admin_reset(request: Request) -> Response:
    store = store_of(request)
    store.reset()
    return JSONResponse({"products": len(store.products)})


ROUTES = [
    Route(f"{ADMIN_PREFIX}/products", admin_create, methods=["POST"]),
    Route(ADMIN_PREFIX + "/products/{id:int}", admin_edit, methods=["PATCH"]),
    Route(ADMIN_PREFIX + "/products/{id:int}", admin_delete, methods=["DELETE"]),
    Route(ADMIN_PREFIX + "/products/{id:int}/trash", admin_trash, methods=["POST"]),
    Route(ADMIN_PREFIX + "/products/{id:int}/restore", admin_restore, methods=["POST"]),
    Route(f"{ADMIN_PREFIX}/webhooks", admin_webhooks, methods=["POST", "DELETE"]),
    Route(f"{ADMIN_PREFIX}/webhooks/ping", admin_ping, methods=["POST"]),
    Route(f"{ADMIN_PREFIX}/webhooks/drain", admin_drain, methods=["POST"]),
    Route(f"{ADMIN_PREFIX}/stats", admin_stats, methods=["GET"]),
    Route(f"{ADMIN_PREFIX}/reset", admin_reset, methods=["POST"]),
]
