"""The control API under `/_emulator/`: create, edit and delete products (each sends signed `products/*` webhooks),
manage receivers, replay deliveries, stats, runtime config and reset. Not part of Shopify: what tests drive."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emulators.shopify.products import Product
from emulators.shopify.shapes import rest_product, webhook_product
from emulators.shopify.shop import Shop
from emulators.shopify.web import bad_request, counted, json_response, read_json, shop_of
from emulators.shopify.webhooks import WEBHOOK_TOPICS, Delivery


def _emit(shop: Shop, topic: str, product: Product) -> list[Delivery]:
    return shop.webhooks.emit(topic, product.id, webhook_product(product))


@counted("control")
async def control_create(request: Request) -> Response:
    shop = shop_of(request)
    try:
        product = shop.store.create(await read_json(request), now=shop.now())
    except ValueError as exc:
        return bad_request(str(exc))
    _emit(shop, "products/create", product)
    return json_response({"product": rest_product(product)}, 201)


@counted("control")
async def control_product(request: Request) -> Response:
    shop = shop_of(request)
    product_id = request.path_params["product_id"]
    if request.method == "GET":
        product = shop.store.get(product_id)
    elif request.method == "DELETE":
        product = shop.delete_product(product_id)
        if product is not None:
            return json_response({"id": product_id})
    else:
        try:
            product = shop.store.update(product_id, await read_json(request), now=shop.now())
        except ValueError as exc:
            return bad_request(str(exc))
        if product is not None:
            _emit(shop, "products/update", product)
    if product is None:
        return json_response({"errors": "Not Found"}, 404)
    return json_response({"product": rest_product(product)})


@counted("control")
async def control_webhooks(request: Request) -> Response:
    shop = shop_of(request)
    if request.method == "GET":
        return json_response(shop.webhooks.summary()["subscriptions"])
    try:
        body = await read_json(request)
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("url"), str)
            or not isinstance(body.get("secret"), str)
        ):
            raise ValueError('the body must be {"url": "...", "secret": "...", "topics": [...] (optional)}')
        subscription = shop.webhooks.subscribe(body["url"], body["secret"], body.get("topics"))
    except ValueError as exc:
        return bad_request(str(exc))
    return json_response({"id": subscription.id, "url": subscription.url, "topics": sorted(subscription.topics)}, 201)


@counted("control")
async def control_webhook_delete(request: Request) -> Response:
    if shop_of(request).webhooks.unsubscribe(request.path_params["subscription_id"]):
        return json_response({"deleted": True})
    return json_response({"errors": "Not Found"}, 404)


@counted("control")
async def control_webhooks_send(request: Request) -> Response:
    """Replay a recorded delivery (`delivery_id`: same bytes and ids) or send a fresh event for a product."""
    shop = shop_of(request)
    try:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
    except ValueError as exc:
        return bad_request(str(exc))
    if "delivery_id" in body:
        delivery = shop.webhooks.find(str(body["delivery_id"]))
        if delivery is None:
            return json_response({"errors": "Not Found"}, 404)
        shop.webhooks.replay(delivery)
        return json_response({"deliveries": [delivery.id]}, 202)
    product_id, topic = body.get("product_id"), body.get("topic", "products/update")
    if not isinstance(product_id, int) or topic not in WEBHOOK_TOPICS:
        return bad_request(
            f'send {{"delivery_id": ...}} or {{"product_id": <int>, "topic": one of {list(WEBHOOK_TOPICS)}}}'
        )
    if topic == "products/delete":
        deliveries = shop.webhooks.emit(topic, product_id, {"id": product_id})
    else:
        product = shop.store.get(product_id)
        if product is None:
            return json_response({"errors": "Not Found"}, 404)
        deliveries = _emit(shop, topic, product)
    return json_response({"deliveries": [d.id for d in deliveries]}, 202)


@counted("control")
async def control_stats(request: Request) -> Response:
    shop = shop_of(request)
    body = shop.stats.snapshot()
    body["products"] = len(shop.store)
    body["throttle_status"] = shop.cost_bucket.status()
    body["bulk_operations"] = shop.bulk.summary()
    body["webhooks"] = shop.webhooks.summary()
    return json_response(body)


@counted("control")
async def control_config(request: Request) -> Response:
    shop = shop_of(request)
    if request.method == "POST":
        try:
            body = await read_json(request)
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            shop.configure(body)
        except ValueError as exc:
            return bad_request(str(exc))
    return json_response(shop.config())


@counted("control")
async def control_reset(request: Request) -> Response:
    shop = shop_of(request)
    try:
        body = await read_json(request)
        products, seed = body.get("products"), body.get("seed")
        for name, value in (("products", products), ("seed", seed)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a whole number >= 0")
        await run_in_threadpool(shop.reset, products=products, seed=seed)
    except (ValueError, AttributeError) as exc:
        return bad_request(str(exc))
    return json_response({"products": len(shop.store)})


ROUTES = [
    Route("/_emulator/products", control_create, methods=["POST"]),
    Route("/_emulator/products/{product_id:int}", control_product, methods=["GET", "PATCH", "DELETE"]),
    Route("/_emulator/webhooks", control_webhooks, methods=["GET", "POST"]),
    Route("/_emulator/webhooks/send", control_webhooks_send, methods=["POST"]),
    Route("/_emulator/webhooks/{subscription_id:int}", control_webhook_delete, methods=["DELETE"]),
    Route("/_emulator/stats", control_stats, methods=["GET"]),
    Route("/_emulator/config", control_config, methods=["GET", "POST"]),
    Route("/_emulator/reset", control_reset, methods=["POST"]),
]
