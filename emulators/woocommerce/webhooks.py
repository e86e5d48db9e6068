"""Webhook deliveries as `WC_Webhook::deliver` sends them: the payload built when sent, PHP's JSON encoding, the
`X-WC-Webhook-*` headers and signature; failures recorded, never retried."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from typing import Any, Final

import httpx

from emulators.woocommerce.shapes import render
from emulators.woocommerce.store import PING, Delivery, Webhook, WooStore

# Seconds a webhook delivery may take (WooCommerce waits a minute; a test should not).
DELIVERY_TIMEOUT: Final = 10.0
USER_AGENT: Final = "WooCommerce/9.4.0 Hookshot (WordPress/6.7.1)"


def php_json(payload: Any) -> bytes:
    """JSON as PHP's `json_encode` writes it by default (WooCommerce's `wp_json_encode`): `\\/` and `\\uXXXX`."""
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).replace("/", "\\/").encode("ascii")


def _signing_secret(secret: str) -> str:
    """`wp_specialchars_decode($secret, ENT_QUOTES)`, which WooCommerce applies before signing."""
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&#039;", "'"), ("&amp;", "&")):
        secret = secret.replace(entity, char)
    return secret


async def send_ping(client: httpx.AsyncClient, webhook: Webhook) -> int | str:
    """WC_Webhook::deliver_ping: a form body, no signature, no topic header. The answer's status, or the error."""
    try:
        response = await client.post(
            webhook.url,
            content=f"webhook_id={webhook.id}".encode(),
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/x-www-form-urlencoded"},
        )
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return response.status_code


async def _deliver(store: WooStore, client: httpx.AsyncClient, delivery: Delivery) -> None:
    webhook = store.webhook(delivery.webhook_id)
    if webhook is None:
        return
    if delivery.topic == PING:
        answered = await send_ping(client, webhook)
        store.stats.recent.append({"webhook_id": webhook.id, "topic": PING, "status": answered})
        return
    if webhook.status != "active":
        # Paused or disabled after the change was queued: WooCommerce checks when it delivers.
        return
    resource, event = delivery.topic.split(".", 1)
    payload: Any
    if event == "deleted":
        payload = {"id": delivery.product_id}
    elif delivery.product_id in store.products:
        payload = render(store, store.products[delivery.product_id])
    else:
        # Gone before the delivery: WooCommerce sends what its REST API answers then, an error body.
        payload = {"code": "woocommerce_rest_product_invalid_id", "message": "Invalid ID.", "data": {"status": 404}}
    body = php_json(payload)
    signature = base64.b64encode(hmac.new(_signing_secret(webhook.secret).encode(), body, hashlib.sha256).digest())
    # WooCommerce's delivery id hashes the webhook id and the current second (WC_Webhook::get_new_delivery_id).
    second = int(store.clock().timestamp())
    delivery_id = hashlib.blake2b(f"{webhook.id}{second}".encode(), digest_size=16).hexdigest()
    headers = {
        "User-Agent": USER_AGENT,
        "Content-Type": "application/json",
        "X-WC-Webhook-Source": store.site_url + "/",
        "X-WC-Webhook-Topic": delivery.topic,
        "X-WC-Webhook-Resource": resource,
        "X-WC-Webhook-Event": event,
        "X-WC-Webhook-Signature": signature.decode("ascii"),
        "X-WC-Webhook-ID": str(webhook.id),
        "X-WC-Webhook-Delivery-ID": delivery_id,
    }
    try:
        response = await client.post(webhook.url, content=body, headers=headers)
        status: int | str = response.status_code
        ok = 200 <= response.status_code < 303
    except httpx.HTTPError as exc:
        status, ok = type(exc).__name__, False
    store.delivered(webhook, ok)
    if ok:
        store.stats.deliveries_sent += 1
    else:
        store.stats.deliveries_failed += 1
    store.stats.deliveries_by_topic[delivery.topic] += 1
    store.stats.recent.append(
        {
            "webhook_id": webhook.id,
            "topic": delivery.topic,
            "product_id": delivery.product_id,
            "delivery_id": delivery_id,
            "status": status,
        }
    )


async def delivery_loop(store: WooStore, queue: asyncio.Queue[Delivery]) -> None:
    async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT) as client:
        while True:
            delivery = await queue.get()
            try:
                await _deliver(store, client, delivery)
            finally:
                queue.task_done()
