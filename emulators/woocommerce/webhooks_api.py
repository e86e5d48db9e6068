"""The REST API v3 webhook endpoints as `WC_REST_Webhooks_Controller` answers them: list (with `status` and paging
headers), create (then the ping), read, update and delete (`force=true` only: webhooks cannot be trashed). The
secret is write-only, as in WooCommerce: no answer contains it. Changes need a key with write permission."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from emulators.woocommerce.auth import Authenticator
from emulators.woocommerce.defaults import API_PREFIX
from emulators.woocommerce.errors import EmulatorError
from emulators.woocommerce.rest import DEFAULT_PER_PAGE, MAX_PER_PAGE, int_param, page_headers
from emulators.woocommerce.store import WEBHOOK_STATUSES, Webhook, WooStore, store_of

# Resources and events a topic may name (`wc_is_webhook_valid_topic`), besides `action.<hook>`.
TOPIC_RESOURCES: Final = ("coupon", "customer", "order", "product")
TOPIC_EVENTS: Final = ("created", "updated", "deleted", "restored")
# The WordPress actions behind each product event (`WC_Webhook::get_hooks`), shown in `hooks`.
PRODUCT_HOOKS: Final = {
    "created": ["woocommerce_process_product_meta", "woocommerce_new_product"],
    "updated": ["woocommerce_process_product_meta", "woocommerce_update_product"],
    "deleted": ["wp_trash_post"],
    "restored": ["untrashed_post"],
}
_INVALID_ID: Final = "woocommerce_rest_shop_webhook_invalid_id"


def _valid_topic(topic: str) -> bool:
    resource, _, event = topic.partition(".")
    return (resource in TOPIC_RESOURCES and event in TOPIC_EVENTS) or (resource == "action" and bool(event))


def _valid_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _dates(store: WooStore, name: str, moment: datetime | None) -> dict[str, str | None]:
    if moment is None:
        return {name: None, f"{name}_gmt": None}
    local = moment.astimezone(store.tz).replace(tzinfo=None)
    return {name: local.isoformat(), f"{name}_gmt": moment.astimezone(UTC).replace(tzinfo=None).isoformat()}


def render_webhook(store: WooStore, webhook: Webhook) -> dict[str, Any]:
    resource, _, event = webhook.topic.partition(".")
    link = f"{store.site_url}{API_PREFIX}/webhooks"
    return {
        "id": webhook.id,
        "name": webhook.name,
        "status": webhook.status,
        "topic": webhook.topic,
        "resource": resource,
        "event": event,
        "hooks": PRODUCT_HOOKS.get(event, []) if resource == "product" else [],
        "delivery_url": webhook.url,
        **_dates(store, "date_created", webhook.date_created),
        **_dates(store, "date_modified", webhook.date_modified),
        "_links": {"self": [{"href": f"{link}/{webhook.id}"}], "collection": [{"href": link}]},
    }


async def _body(request: Request) -> dict[str, Any]:
    """The request's parameters: a JSON object, or a form body as WordPress also takes."""
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return dict(await request.form())
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise EmulatorError(400, "rest_invalid_json", "Invalid JSON body passed.") from None
    if not isinstance(body, dict):
        raise EmulatorError(400, "rest_invalid_json", "Invalid JSON body passed.")
    return body


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise EmulatorError(
            400, "rest_invalid_param", f"Invalid parameter(s): {name}", params={name: f"{name} is not of type string."}
        )
    return value.strip()


def _status(value: str) -> str:
    if value not in WEBHOOK_STATUSES:
        raise EmulatorError(400, "woocommerce_rest_shop_webhook_invalid_status", "Webhook status must be valid.")
    return value


def _existing(store: WooStore, request: Request, *, status: int = 400) -> Webhook:
    webhook = store.webhook(int(request.path_params["id"]))
    if webhook is None:
        message = "ID is invalid." if status == 400 else "Invalid ID."
        raise EmulatorError(status, _INVALID_ID, message)
    return webhook


async def webhooks(request: Request) -> Response:
    store = store_of(request)
    if request.method == "GET":
        Authenticator(store).check(request, listing=True)
        per_page = int_param(request, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
        page = int_param(request, "page", 1, 1)
        wanted = request.query_params.get("status", "all")
        if wanted != "all":
            _status(wanted)
        matched = [w for w in store.webhooks if wanted == "all" or w.status == wanted]
        body = [render_webhook(store, w) for w in matched[(page - 1) * per_page : page * per_page]]
        return JSONResponse(body, headers=page_headers(request, len(matched), per_page, page))
    Authenticator(store).check(request, listing=False, write=True)
    params = await _body(request)
    topic, url = _text(params, "topic").lower(), _text(params, "delivery_url")
    if not topic or not _valid_topic(topic):
        raise EmulatorError(
            400, "woocommerce_rest_shop_webhook_invalid_topic", "Webhook topic is required and must be valid."
        )
    if not url or not _valid_url(url):
        raise EmulatorError(
            400,
            "woocommerce_rest_shop_webhook_invalid_delivery_url",
            "Webhook delivery URL must be a valid URL starting with http:// or https://.",
        )
    status = _status(_text(params, "status") or "active")
    # Without a secret WooCommerce makes one up (wp_generate_password(50)), which nobody can then verify with.
    secret = _text(params, "secret") or secrets.token_urlsafe(37)
    webhook = store.add_webhook(url, secret, topic, name=_text(params, "name"), status=status)
    response = JSONResponse(render_webhook(store, webhook), status_code=201)
    response.headers["Location"] = f"{store.site_url}{API_PREFIX}/webhooks/{webhook.id}"
    store.ping(webhook)
    return response


async def webhook_one(request: Request) -> Response:
    store = store_of(request)
    if request.method == "GET":
        Authenticator(store).check(request, listing=False)
        return JSONResponse(render_webhook(store, _existing(store, request, status=404)))
    Authenticator(store).check(request, listing=False, write=True)
    params = await _body(request)
    if request.method == "DELETE":
        if str(params.get("force") or request.query_params.get("force", "")).lower() not in ("true", "1"):
            raise EmulatorError(501, "woocommerce_rest_trash_not_supported", "Webhooks do not support trashing.")
        webhook = _existing(store, request, status=404)
        store.webhooks.remove(webhook)
        return JSONResponse(render_webhook(store, webhook))
    webhook = _existing(store, request)
    topic, url = _text(params, "topic").lower(), _text(params, "delivery_url")
    if topic and not _valid_topic(topic):
        raise EmulatorError(400, "woocommerce_rest_shop_webhook_invalid_topic", "Webhook topic must be valid.")
    if url and not _valid_url(url):
        raise EmulatorError(
            400,
            "woocommerce_rest_shop_webhook_invalid_delivery_url",
            "Webhook delivery URL must be a valid URL starting with http:// or https://.",
        )
    status = _text(params, "status")
    if status:
        _status(status)
    webhook.topic = topic or webhook.topic
    webhook.url = url or webhook.url
    webhook.secret = _text(params, "secret") or webhook.secret
    webhook.name = _text(params, "name") or webhook.name
    if status:
        webhook.status = status
        if status == "active":
            webhook.failures = 0
    webhook.date_modified = store.now()
    return JSONResponse(render_webhook(store, webhook))


ROUTES = [
    Route(f"{API_PREFIX}/webhooks", webhooks, methods=["GET", "POST"]),
    Route(API_PREFIX + "/webhooks/{id:int}", webhook_one, methods=["GET", "PUT", "PATCH", "POST", "DELETE"]),
]
