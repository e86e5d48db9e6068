"""A local emulator of a WooCommerce store's REST API v3 (products), for tests, benchmarks and the demo.

A real HTTP server (Starlette under uvicorn) holding a generated store in memory: seeded, so the same seed gives the
same products whatever the port; simple and variable products (with variations), every status including the trash,
0-12 images, unicode and HTML in names and descriptions, modification dates spread over months, and a burst of
products sharing one modification second (a bulk import). Products are kept compact and rendered in WooCommerce's
JSON shape on the way out.

API (under `/wp-json/wc/v3`, credentials required):

    GET /products                   per_page (1-100, default 10), page, offset, orderby (date|id|modified|title|slug|
                                    include; default date), order (asc|desc; default desc), status (any|trash|publish|
                                    draft|pending|private|future; default any = every status but the trash), type,
                                    include, after/before (created), modified_after/modified_before (strictly
                                    after/before, whole seconds; GMT when dates_are_gmt=true, else the store's local
                                    time), headers X-WP-Total, X-WP-TotalPages and Link
    GET /products/{id}              any status, trash included; a variation's id answers the variation (`type:
                                    variation`, `parent_id`); 404 woocommerce_rest_product_invalid_id
    GET /products/{id}/variations   per_page, page; an unknown parent lists nothing, as WooCommerce does

Errors have WooCommerce's body `{"code", "message", "data": {"status"}}`: 400 rest_invalid_param, 401/403
woocommerce_rest_cannot_view, 401 woocommerce_rest_authentication_error, 404 woocommerce_rest_product_invalid_id,
404 rest_no_route.

Authentication follows `WC_REST_Authentication`: over HTTPS (see `secure`) the key and secret as HTTP Basic or as
`consumer_key`/`consumer_secret` query parameters; over HTTP, and over HTTPS when those are absent, OAuth 1.0a
one-legged (HMAC-SHA1 or HMAC-SHA256, parameters in the query string or an `Authorization: OAuth` header, the
timestamp within 15 minutes, each nonce once), its base string built the way WooCommerce's PHP builds it. With no
usable credentials the request is anonymous and answers 401 `woocommerce_rest_cannot_view`. `secure=None` (default)
takes HTTPS from the request (TLS, or `X-Forwarded-Proto: https` from a proxy); True or False force it. Options
reproduce common store setups: `strip_authorization` (the web server drops the Authorization header),
`key_permissions` (`read`, `write`, `read_write`) and `user_can_read` (the key's WordPress user may read products;
403 otherwise).

Control API (under `/_emulator`, no credentials; JSON bodies):

    POST   /products                  create (`name`, `type`, `status`, `description`, `short_description`, `images`
                                      [src or {src, alt}], `categories`/`tags` [names], `regular_price`, `sale_price`,
                                      `sku`, `stock_status`, `variations` [{image, status}]); 201 with the product
    PATCH  /products/{id}             edit the same fields (not `status: trash`: use /trash)
    POST   /products/{id}/trash       trash it (`product.deleted`, payload `{"id"}`)
    POST   /products/{id}/restore     back to the status it had when trashed (`product.restored`)
    DELETE /products/{id}             delete for good; like WooCommerce, no webhook is sent for it
    POST   /webhooks                  `{"url", "secret", "topic"?}`: one webhook per product topic (or the one given)
    DELETE /webhooks                  remove them all
    POST   /webhooks/ping             send each webhook's creation ping (unsigned form body `webhook_id=N`)
    POST   /webhooks/drain            wait until every queued delivery has been attempted
    GET    /stats                     API requests by endpoint and status, accepted credentials by scheme (basic,
                                      query, oauth), auth failures by code, products by status, deliveries (sent,
                                      failed, by topic, the last 100)
    POST   /reset                     regenerate the store from its seed; clear webhooks, stats and nonces

Every change stamps `date_modified` with `clock()` (whole seconds) and queues a delivery to each webhook of its
topic. A background task (started with the app) sends them like `WC_Webhook::deliver`: the payload is built when
sent (so it shows the product as it is then), encoded like PHP's `json_encode` (`\\/`, `\\uXXXX`), with the
`X-WC-Webhook-*` headers and a delivery id derived from the webhook id and the current second, as WooCommerce does.
Failed deliveries are recorded, never retried (WooCommerce does not retry either).

`app.state.store` is the `WooStore` for in-process use (bench, demo). State changes happen synchronously within one
handler, which is safe on uvicorn's single event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import math
import random
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, Literal
from urllib.parse import quote, unquote, urlencode

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = [
    "DEFAULT_CONSUMER_KEY",
    "DEFAULT_CONSUMER_SECRET",
    "DEFAULT_SITE_URL",
    "EmulatorError",
    "WooProduct",
    "WooStore",
    "create_app",
    "generate_products",
    "serve",
]

API_PREFIX: Final = "/wp-json/wc/v3"
ADMIN_PREFIX: Final = "/_emulator"
DEFAULT_CONSUMER_KEY: Final = "ck_test"
DEFAULT_CONSUMER_SECRET: Final = "cs_test"  # noqa: S105 - the emulator's well-known test secret
# Where permalinks and image URLs point; fixed so the same seed gives the same products on any port.
DEFAULT_SITE_URL: Final = "https://woo.emulator.test"
# The store's local time zone (the REST docs' examples run at UTC-3): non-GMT dates differ from GMT ones.
DEFAULT_UTC_OFFSET: Final = timedelta(hours=-3)
# WooCommerce's bounds on per_page; its default page size.
MAX_PER_PAGE: Final = 100
DEFAULT_PER_PAGE: Final = 10
# OAuth timestamps further than this from the server's clock are refused (WC_REST_Authentication).
OAUTH_WINDOW_SECONDS: Final = 15 * 60
PRODUCT_TOPICS: Final = ("product.created", "product.updated", "product.deleted", "product.restored")
STATUSES: Final = ("publish", "draft", "pending", "private", "future", "trash")
# Deliveries kept in /_emulator/stats.
RECENT_DELIVERIES: Final = 100
# Seconds a webhook delivery may take (WooCommerce waits a minute; a test should not).
DELIVERY_TIMEOUT: Final = 10.0
USER_AGENT: Final = "WooCommerce/9.4.0 Hookshot (WordPress/6.7.1)"
WOO_CATEGORIES: Final = (
    (15, "Uncategorized", "uncategorized"),
    (9, "Clothing", "clothing"),
    (14, "T-shirts", "t-shirts"),
    (16, "Hoodies", "hoodies"),
    (17, "Accessories", "accessories"),
    (18, "Lunettes & Soleil", "lunettes-soleil"),
    (19, "Chaussures", "chaussures"),
)
WOO_TAGS: Final = ("summer", "bestseller", "organic cotton", "limited", "新作", "éco")
_ADJECTIVES: Final = ("Classic", "Vintage", "Café", "Crème Brûlée", "Zürich", "Ōsaka", "Smörgås", "Naïve", "東京")
_NOUNS: Final = ("T-shirt", "Hoodie", "Sunglasses", "Cap", "Sneakers", "Dress", "Scarf", "Jacket", "Tote Bag")
_EXTRAS: Final = ("", "", "", " &amp; Co", " 🌟", " – Édition limitée", " <em>new</em>", " (2-pack)")
_WEEKS: Final = 26
_TYPES = Literal["simple", "variable"]

Clock = Callable[[], datetime]


class EmulatorError(Exception):
    """Answered with WooCommerce's error body `{"code", "message", "data": {"status"}}`."""

    def __init__(self, status: int, code: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.data = data

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        body = {"code": self.code, "message": self.message, "data": {"status": self.status, **self.data}}
        return JSONResponse(body, status_code=self.status, headers=headers)


# --- the store ----------------------------------------------------------------------------------------------------


@dataclass
class WooImage:
    id: int
    path: str  # below the site URL, e.g. /wp-content/uploads/2025/03/cap-1.jpg
    alt: str = ""


@dataclass
class WooVariation:
    id: int
    status: str  # publish (enabled) or private (disabled)
    image: WooImage | None
    regular_price: str
    attribute: str
    date_created: datetime
    date_modified: datetime


@dataclass
class WooProduct:
    id: int
    name: str
    slug: str
    type: _TYPES
    status: str
    description: str
    short_description: str
    sku: str
    regular_price: str
    sale_price: str
    stock_status: str
    categories: list[tuple[int, str, str]]
    tags: list[tuple[int, str, str]]
    images: list[WooImage]
    variations: list[WooVariation]
    date_created: datetime
    date_modified: datetime
    status_before_trash: str | None = None


def _whole(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=0)


def _slug(text: str) -> str:
    slug = re.sub(r"[^0-9a-z]+", "-", text.lower()).strip("-")
    return slug or "product"


def generate_products(count: int, seed: int, now: datetime) -> tuple[list[WooProduct], int]:
    """A seeded store of `count` products modified over the last half year; returns them and the next free id."""
    rng = random.Random(seed)
    now = _whole(now)
    next_id = 10
    products: list[WooProduct] = []
    # Every status appears at least once (when the store is that large), the rest mostly published.
    forced = dict(zip(rng.sample(range(count), min(count, len(STATUSES))), STATUSES, strict=False))
    # A bulk import: a few percent of the products share one modification second (more than a page in big stores).
    burst_second = now - timedelta(days=rng.randint(20, 40), seconds=rng.randint(0, 86_399))
    tags = [(100 + index, name, _slug(name)) for index, name in enumerate(WOO_TAGS)]
    for index in range(count):
        next_id += rng.randint(1, 3)
        product_id = next_id
        status = forced.get(index) or rng.choices(STATUSES, weights=(80, 6, 3, 3, 1, 7))[0]
        name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}{rng.choice(_EXTRAS)}"
        created = now - timedelta(days=rng.randint(190, 400), seconds=rng.randint(0, 86_399))
        bulk = rng.random() < 0.03
        modified = _whole(max(burst_second if bulk else now - timedelta(days=rng.uniform(1, 7 * _WEEKS)), created))
        slug = f"{_slug(name)}-{product_id}"
        month = modified.strftime("%Y/%m")
        images: list[WooImage] = []
        for number in range(rng.choices((0, 1, 3, 6, 11, 12), weights=(5, 25, 35, 20, 8, 7))[0]):
            next_id += 1
            stem = f"{slug}-{number + 1}" if rng.random() > 0.1 else f"café-crème-{product_id}-{number + 1}"
            images.append(WooImage(next_id, f"/wp-content/uploads/{month}/{stem}.jpg", rng.choice(("", name))))
        kind: _TYPES = "variable" if rng.random() < 0.3 else "simple"
        variations: list[WooVariation] = []
        if kind == "variable":
            for number in range(rng.randint(2, 6)):
                next_id += 1
                roll = rng.random()
                if roll < 0.5:
                    next_id += 1
                    image: WooImage | None = WooImage(
                        next_id, f"/wp-content/uploads/{month}/{slug}-variation-{number + 1}.jpg"
                    )
                elif roll < 0.75 and images:
                    image = rng.choice(images)
                else:
                    image = None
                variations.append(
                    WooVariation(
                        id=next_id,
                        status="private" if rng.random() < 0.1 else "publish",
                        image=image,
                        regular_price=f"{rng.randint(5, 150)}.{rng.choice(('00', '50', '99'))}",
                        attribute=rng.choice(("Black", "Green", "Écru", "Navy", "Rouge")) + f" {number + 1}",
                        date_created=created,
                        date_modified=modified,
                    )
                )
        description_roll = rng.random()
        paragraph = (
            f"<p>The <strong>{name}</strong> — soft, durable &amp; made to last.</p>\n"
            "<ul><li>100% coton bio</li><li>Lavable à 30&nbsp;°C</li></ul>\n"
        )
        products.append(
            WooProduct(
                id=product_id,
                name=name,
                slug=slug,
                type=kind,
                status=status,
                description="" if description_roll < 0.15 else paragraph,
                short_description="" if description_roll < 0.03 else f"<p>{name}, short and sweet.</p>",
                sku=f"SKU-{product_id}",
                regular_price=f"{rng.randint(5, 150)}.{rng.choice(('00', '50', '99'))}",
                sale_price=rng.choice(("", "", "", "9.99")),
                stock_status=rng.choices(("instock", "outofstock", "onbackorder"), weights=(85, 12, 3))[0],
                categories=rng.sample(list(WOO_CATEGORIES), rng.randint(1, 2)),
                tags=rng.sample(tags, rng.randint(0, 3)),
                images=images,
                variations=variations,
                date_created=_whole(created),
                date_modified=modified,
                status_before_trash="publish" if status == "trash" else None,
            )
        )
    return products, next_id + 1


@dataclass
class Delivery:
    webhook_id: int
    topic: str
    product_id: int


@dataclass
class Webhook:
    id: int
    url: str
    secret: str
    topic: str


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    auth_failures: Counter[str] = field(default_factory=Counter)
    auth_methods: Counter[str] = field(default_factory=Counter)
    deliveries_sent: int = 0
    deliveries_failed: int = 0
    deliveries_by_topic: Counter[str] = field(default_factory=Counter)
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_DELIVERIES))


class WooStore:
    """The store's state: products, webhooks, the delivery queue, stats. Used by the handlers and in-process."""

    def __init__(
        self,
        *,
        products: int,
        seed: int,
        consumer_key: str,
        consumer_secret: str,
        clock: Clock,
        site_url: str,
        utc_offset: timedelta,
        secure: bool | None,
        strip_authorization: bool,
        key_permissions: str,
        user_can_read: bool,
        oauth_clock: Callable[[], float],
    ) -> None:
        if products < 0:
            raise ValueError("products must be 0 or more")
        if key_permissions not in ("read", "write", "read_write"):
            raise ValueError("key_permissions must be read, write or read_write")
        self.size = products
        self.seed = seed
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.clock = clock
        self.site_url = site_url.rstrip("/")
        self.tz = timezone(utc_offset)
        self.secure = secure
        self.strip_authorization = strip_authorization
        self.key_permissions = key_permissions
        self.user_can_read = user_can_read
        self.oauth_clock = oauth_clock
        self.products: dict[int, WooProduct] = {}
        self.variations: dict[int, tuple[WooProduct, WooVariation]] = {}
        self.webhooks: list[Webhook] = []
        self.stats = Stats()
        self.nonces: dict[str, float] = {}
        self.queue: asyncio.Queue[Delivery] | None = None
        self._next_id = 10
        self._next_webhook_id = 1
        self.reset()

    # -- state --

    def reset(self) -> None:
        products, self._next_id = generate_products(self.size, self.seed, self.clock())
        self.products = {product.id: product for product in products}
        self._index_variations()
        self.webhooks = []
        self.stats = Stats()
        self.nonces = {}

    def _index_variations(self) -> None:
        self.variations = {v.id: (p, v) for p in self.products.values() for v in p.variations}

    def now(self) -> datetime:
        return _whole(self.clock())

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def product(self, product_id: int) -> WooProduct:
        product = self.products.get(product_id)
        if product is None:
            raise EmulatorError(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
        return product

    def touch(self, product: WooProduct, topic: str) -> None:
        product.date_modified = self.now()
        self._index_variations()
        self.notify(topic, product.id)

    def notify(self, topic: str, product_id: int) -> None:
        if self.queue is None:
            return
        for webhook in self.webhooks:
            if webhook.topic == topic:
                self.queue.put_nowait(Delivery(webhook.id, topic, product_id))

    def add_webhooks(self, url: str, secret: str, topic: str | None) -> list[int]:
        ids = []
        for name in (topic,) if topic else PRODUCT_TOPICS:
            self.webhooks.append(Webhook(self._next_webhook_id, url, secret, name))
            ids.append(self._next_webhook_id)
            self._next_webhook_id += 1
        return ids

    # -- rendering, as WooCommerce's REST API shapes it --

    def _dates(self, name: str, moment: datetime) -> dict[str, str]:
        local = moment.astimezone(self.tz).replace(tzinfo=None)
        return {name: local.isoformat(), f"{name}_gmt": moment.astimezone(UTC).replace(tzinfo=None).isoformat()}

    def _image(self, image: WooImage, moment: datetime) -> dict[str, Any]:
        return {
            "id": image.id,
            **self._dates("date_created", moment),
            **self._dates("date_modified", moment),
            "src": image.path if "://" in image.path else self.site_url + image.path,
            "name": image.path.rsplit("/", 1)[-1].rsplit(".", 1)[0],
            "alt": image.alt,
        }

    def render(self, product: WooProduct) -> dict[str, Any]:
        price = product.sale_price or product.regular_price
        return {
            "id": product.id,
            "name": product.name,
            "slug": product.slug,
            "permalink": f"{self.site_url}/product/{product.slug}/",
            **self._dates("date_created", product.date_created),
            **self._dates("date_modified", product.date_modified),
            "type": product.type,
            "status": product.status,
            "featured": False,
            "catalog_visibility": "visible",
            "description": product.description,
            "short_description": product.short_description,
            "sku": product.sku,
            "price": "" if product.type == "variable" else price,
            "regular_price": "" if product.type == "variable" else product.regular_price,
            "sale_price": "" if product.type == "variable" else product.sale_price,
            "on_sale": bool(product.sale_price),
            "purchasable": product.status == "publish",
            "virtual": False,
            "downloadable": False,
            "tax_status": "taxable",
            "manage_stock": False,
            "stock_quantity": None,
            "stock_status": product.stock_status,
            "backorders": "no",
            "weight": "",
            "dimensions": {"length": "", "width": "", "height": ""},
            "reviews_allowed": True,
            "average_rating": "0.00",
            "rating_count": 0,
            "related_ids": [],
            "parent_id": 0,
            "categories": [{"id": i, "name": n, "slug": s} for i, n, s in product.categories],
            "tags": [{"id": i, "name": n, "slug": s} for i, n, s in product.tags],
            "images": [self._image(image, product.date_created) for image in product.images],
            "attributes": [],
            "default_attributes": [],
            "variations": [variation.id for variation in product.variations],
            "grouped_products": [],
            "menu_order": 0,
            "meta_data": [],
            "_links": {
                "self": [{"href": f"{self.site_url}{API_PREFIX}/products/{product.id}"}],
                "collection": [{"href": f"{self.site_url}{API_PREFIX}/products"}],
            },
        }

    def render_variation(
        self, parent: WooProduct, variation: WooVariation, *, as_product: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": variation.id,
            **self._dates("date_created", variation.date_created),
            **self._dates("date_modified", variation.date_modified),
            "description": "",
            "permalink": f"{self.site_url}/product/{parent.slug}/?attribute_pa_color={quote(variation.attribute)}",
            "sku": "",
            "price": variation.regular_price,
            "regular_price": variation.regular_price,
            "sale_price": "",
            "on_sale": False,
            "status": variation.status,
            "purchasable": variation.status == "publish",
            "stock_status": "instock",
            "image": self._image(variation.image, variation.date_created) if variation.image else None,
            "attributes": [{"id": 6, "name": "Color", "option": variation.attribute}],
            "menu_order": 0,
            "meta_data": [],
        }
        if as_product:
            # GET /products/{variation id}: the variation in the product shape, pointing at its parent.
            body.update({"name": f"{parent.name} - {variation.attribute}", "type": "variation", "parent_id": parent.id})
        return body

    def stats_body(self) -> dict[str, Any]:
        return {
            "requests": dict(self.stats.requests),
            "auth_failures": dict(self.stats.auth_failures),
            "auth_methods": dict(self.stats.auth_methods),
            "products": dict(Counter(product.status for product in self.products.values())),
            "webhooks": [{"id": w.id, "topic": w.topic, "url": w.url} for w in self.webhooks],
            "deliveries": {
                "sent": self.stats.deliveries_sent,
                "failed": self.stats.deliveries_failed,
                "queued": self.queue.qsize() if self.queue is not None else 0,
                "by_topic": dict(self.stats.deliveries_by_topic),
                "recent": list(self.stats.recent),
            },
        }


# --- authentication, as WC_REST_Authentication does it --------------------------------------------------------


def _rawurlencode(value: str) -> str:
    return quote(value, safe="-._~")


def wc_oauth_signature(method: str, base_uri: str, params: Mapping[str, str], secret: str, algorithm: str) -> str:
    """The signature WooCommerce expects (`check_oauth_signature`): keys sorted byte-wise, keys and values
    rawurlencoded, each `key=value` rawurlencoded again and joined with `%26`, the key `consumer_secret&`."""
    ordered = sorted(((k, v) for k, v in params.items() if k != "oauth_signature"), key=lambda kv: kv[0].encode())
    query = "%26".join(_rawurlencode(f"{_rawurlencode(k)}={_rawurlencode(v)}") for k, v in ordered)
    string_to_sign = f"{method}&{_rawurlencode(base_uri)}&{query}"
    digest = hmac.new(f"{secret}&".encode(), string_to_sign.encode(), algorithm).digest()
    return base64.b64encode(digest).decode("ascii")


_OAUTH_REQUIRED: Final = (
    "oauth_consumer_key",
    "oauth_timestamp",
    "oauth_nonce",
    "oauth_signature",
    "oauth_signature_method",
)
_OAUTH_HEADER_PARAM: Final = re.compile(r'(oauth_[a-z_-]*)=(?:"([^"]*)"|([^,]*))')


def _auth_error(message: str) -> EmulatorError:
    return EmulatorError(401, "woocommerce_rest_authentication_error", message)


class _Authenticator:
    """Decides who a request is: the key's user, anonymous, or an authentication error."""

    def __init__(self, store: WooStore) -> None:
        self.store = store

    def check(self, request: Request, *, listing: bool) -> None:
        store = self.store
        secure = store.secure
        if secure is None:
            forwarded = request.headers.get("x-forwarded-proto", "").lower()
            secure = request.url.scheme == "https" or forwarded == "https"
        authorization = "" if store.strip_authorization else request.headers.get("authorization", "")
        method = None
        basic_failed = False
        try:
            if secure and self._basic(request, authorization):
                method = "query" if "consumer_key" in request.query_params else "basic"
            elif self._oauth(request, authorization, secure):
                method = "oauth"
        except EmulatorError as error:
            basic_failed = error.data.pop("basic", False)
            store.stats.auth_failures[error.code] += 1
            headers = (
                {
                    "WWW-Authenticate": 'Basic realm="WooCommerce API. Use a consumer key in the username field and a '
                    'consumer secret in the password field."'
                }
                if basic_failed
                else None
            )
            raise _Answer(error.response(headers)) from None
        if method is None:
            store.stats.auth_failures["woocommerce_rest_cannot_view"] += 1
            message = "Sorry, you cannot list resources." if listing else "Sorry, you cannot view this resource."
            raise _Answer(EmulatorError(401, "woocommerce_rest_cannot_view", message).response())
        if store.key_permissions not in ("read", "read_write"):
            store.stats.auth_failures["woocommerce_rest_authentication_error"] += 1
            raise _Answer(_auth_error("The API key provided does not have read permissions.").response())
        if not store.user_can_read:
            store.stats.auth_failures["woocommerce_rest_cannot_view"] += 1
            message = "Sorry, you cannot list resources." if listing else "Sorry, you cannot view this resource."
            raise _Answer(EmulatorError(403, "woocommerce_rest_cannot_view", message).response())
        store.stats.auth_methods[method] += 1

    def _basic(self, request: Request, authorization: str) -> bool:
        key = request.query_params.get("consumer_key", "")
        secret = request.query_params.get("consumer_secret", "")
        if not (key and secret):
            key = secret = ""
            if authorization[:6].lower() == "basic ":
                try:
                    key, _, secret = base64.b64decode(authorization[6:].strip()).decode("utf-8").partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    key = secret = ""
        if not (key and secret) or key != self.store.consumer_key:
            # An unknown key is not an error here: WooCommerce goes on to OAuth, then treats the request as anonymous.
            return False
        if not hmac.compare_digest(secret.encode(), self.store.consumer_secret.encode()):
            raise EmulatorError(401, "woocommerce_rest_authentication_error", "Consumer secret is invalid.", basic=True)
        return True

    def _oauth(self, request: Request, authorization: str, secure: bool) -> bool:
        params = dict(request.query_params)
        if authorization.startswith("OAuth "):
            for name, quoted, bare in _OAUTH_HEADER_PARAM.findall(authorization):
                params[name] = unquote(quoted or bare)
        missing = [name for name in _OAUTH_REQUIRED if not params.get(name)]
        if len(missing) == len(_OAUTH_REQUIRED):
            return False
        if missing:
            plural = "s" if len(missing) > 1 else ""
            raise EmulatorError(
                401,
                "woocommerce_rest_authentication_missing_parameter",
                f"Missing OAuth parameter{plural} " + ", ".join(missing),
            )
        if params["oauth_consumer_key"] != self.store.consumer_key:
            raise _auth_error("Consumer key is invalid.")
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        base_uri = f"{'https' if secure else 'http'}://{request.headers.get('host', '')}{raw_path.decode('latin-1')}"
        method = params["oauth_signature_method"]
        if method not in ("HMAC-SHA1", "HMAC-SHA256"):
            raise _auth_error("Invalid signature - signature method is invalid.")
        given = unquote(params["oauth_signature"].replace(" ", "+"))
        expected = wc_oauth_signature(
            request.method, base_uri, params, self.store.consumer_secret, method.removeprefix("HMAC-").lower()
        )
        if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
            raise _auth_error("Invalid signature - provided signature does not match.")
        now = self.store.oauth_clock()
        try:
            stamp = int(params["oauth_timestamp"])
        except ValueError:
            stamp = -1
        if abs(stamp - now) > OAUTH_WINDOW_SECONDS:
            raise _auth_error("Invalid timestamp.")
        self.store.nonces = {n: t for n, t in self.store.nonces.items() if t >= now - OAUTH_WINDOW_SECONDS}
        if params["oauth_nonce"] in self.store.nonces:
            raise _auth_error("Invalid nonce - nonce has already been used.")
        self.store.nonces[params["oauth_nonce"]] = float(stamp)
        return True


class _Answer(Exception):
    """Not an error: a ready response (an authentication verdict) carried out of the handler."""

    def __init__(self, response: Response) -> None:
        super().__init__("answer")
        self.response = response


# --- request parsing ----------------------------------------------------------------------------------------------


def _invalid_param(name: str, why: str) -> EmulatorError:
    return EmulatorError(400, "rest_invalid_param", f"Invalid parameter(s): {name}", params={name: why})


def _int_param(request: Request, name: str, default: int, low: int, high: int | None = None) -> int:
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


def _page_headers(request: Request, total: int, per_page: int, page: int) -> dict[str, str]:
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


# --- API handlers -------------------------------------------------------------------------------------------------


def _store(request: Request) -> WooStore:
    store: WooStore = request.app.state.store
    return store


def _auth(request: Request, *, listing: bool) -> WooStore:
    store = _store(request)
    _Authenticator(store).check(request, listing=listing)
    return store


async def list_products(request: Request) -> Response:
    store = _auth(request, listing=True)
    per_page = _int_param(request, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
    page = _int_param(request, "page", 1, 1)
    offset = _int_param(request, "offset", 0, 0) if request.query_params.get("offset") else None
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
    body = [store.render(product) for product in matched[start : start + per_page]]
    return JSONResponse(body, headers=_page_headers(request, len(matched), per_page, page))


async def get_product(request: Request) -> Response:
    store = _auth(request, listing=False)
    product_id = int(request.path_params["id"])
    if product_id in store.variations:
        parent, variation = store.variations[product_id]
        return JSONResponse(store.render_variation(parent, variation, as_product=True))
    return JSONResponse(store.render(store.product(product_id)))


async def list_variations(request: Request) -> Response:
    store = _auth(request, listing=True)
    per_page = _int_param(request, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
    page = _int_param(request, "page", 1, 1)
    parent = store.products.get(int(request.path_params["id"]))
    variations = parent.variations if parent is not None else []
    chunk = variations[(page - 1) * per_page : page * per_page]
    body = [store.render_variation(parent, v) for v in chunk] if parent is not None else []
    return JSONResponse(body, headers=_page_headers(request, len(variations), per_page, page))


async def no_route(request: Request) -> Response:
    return EmulatorError(404, "rest_no_route", "No route was found matching the URL and request method.").response()


# --- control API --------------------------------------------------------------------------------------------------


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
            setattr(product, name, [(pool + index, n, _slug(n)) for index, n in enumerate(names)])
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
                    attribute=str(entry.get("attribute", f"Option {number + 1}")),
                    date_created=store.now(),
                    date_modified=store.now(),
                )
            )
        product.variations = variations


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
    store = _store(request)
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
        product.slug = f"{_slug(product.name)}-{product_id}"
    store.products[product_id] = product
    store.touch(product, "product.created")
    return JSONResponse(store.render(product), status_code=201)


async def admin_edit(request: Request) -> Response:
    store = _store(request)
    product = store.product(int(request.path_params["id"]))
    body = await _json_body(request)
    trial = replace(product)
    _apply(store, trial, body)
    product.__dict__.update(trial.__dict__)
    store.touch(product, "product.updated")
    return JSONResponse(store.render(product))


async def admin_trash(request: Request) -> Response:
    store = _store(request)
    product = store.product(int(request.path_params["id"]))
    if product.status == "trash":
        raise EmulatorError(410, "woocommerce_rest_already_trashed", "The product has already been deleted.")
    product.status_before_trash, product.status = product.status, "trash"
    store.touch(product, "product.deleted")
    return JSONResponse(store.render(product))


async def admin_restore(request: Request) -> Response:
    store = _store(request)
    product = store.product(int(request.path_params["id"]))
    if product.status != "trash":
        raise EmulatorError(400, "emulator_not_trashed", "the product is not in the trash")
    # WooCommerce restores products to the status they had (WC_Post_Data::wp_untrash_post_status).
    product.status, product.status_before_trash = product.status_before_trash or "draft", None
    store.touch(product, "product.restored")
    return JSONResponse(store.render(product))


async def admin_delete(request: Request) -> Response:
    store = _store(request)
    product = store.product(int(request.path_params["id"]))
    del store.products[product.id]
    store._index_variations()
    return Response(status_code=204)


async def admin_webhooks(request: Request) -> Response:
    store = _store(request)
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
    store = _store(request)
    results = []
    async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT) as client:
        for webhook in store.webhooks:
            try:
                # Like WC_Webhook::deliver_ping: a form body, no signature, no topic header.
                response = await client.post(
                    webhook.url,
                    content=f"webhook_id={webhook.id}".encode(),
                    headers={"User-Agent": USER_AGENT, "Content-Type": "application/x-www-form-urlencoded"},
                )
                status: int | str = response.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            results.append({"webhook_id": webhook.id, "status": status, "accepted": status == 200})
    return JSONResponse({"results": results})


async def admin_drain(request: Request) -> Response:
    store = _store(request)
    if store.queue is not None:
        await store.queue.join()
    return JSONResponse(store.stats_body()["deliveries"])


async def admin_stats(request: Request) -> Response:
    return JSONResponse(_store(request).stats_body())


async def admin_reset(request: Request) -> Response:
    store = _store(request)
    store.reset()
    return JSONResponse({"products": len(store.products)})


# --- webhook deliveries -------------------------------------------------------------------------------------------


def php_json(payload: Any) -> bytes:
    """JSON as PHP's `json_encode` writes it by default (WooCommerce's `wp_json_encode`): `\\/` and `\\uXXXX`."""
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).replace("/", "\\/").encode("ascii")


def _signing_secret(secret: str) -> str:
    """`wp_specialchars_decode($secret, ENT_QUOTES)`, which WooCommerce applies before signing."""
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&#039;", "'"), ("&amp;", "&")):
        secret = secret.replace(entity, char)
    return secret


async def _deliver(store: WooStore, client: httpx.AsyncClient, delivery: Delivery) -> None:
    webhook = next((w for w in store.webhooks if w.id == delivery.webhook_id), None)
    if webhook is None:
        return
    resource, event = delivery.topic.split(".", 1)
    payload: Any
    if event == "deleted":
        payload = {"id": delivery.product_id}
    elif delivery.product_id in store.products:
        payload = store.render(store.products[delivery.product_id])
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


async def _delivery_loop(store: WooStore, queue: asyncio.Queue[Delivery]) -> None:
    async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT) as client:
        while True:
            delivery = await queue.get()
            try:
                await _deliver(store, client, delivery)
            finally:
                queue.task_done()


# --- the app ------------------------------------------------------------------------------------------------------


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
    if isinstance(exc, _Answer):
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
        task = asyncio.create_task(_delivery_loop(store, queue))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            store.queue = None

    admin = ADMIN_PREFIX
    app = WooEmulatorApp(
        routes=[
            Route(f"{API_PREFIX}/products", list_products, methods=["GET"]),
            Route(API_PREFIX + "/products/{id:int}", get_product, methods=["GET"]),
            Route(API_PREFIX + "/products/{id:int}/variations", list_variations, methods=["GET"]),
            Route(API_PREFIX + "/{rest:path}", no_route),
            Route(f"{admin}/products", admin_create, methods=["POST"]),
            Route(admin + "/products/{id:int}", admin_edit, methods=["PATCH"]),
            Route(admin + "/products/{id:int}", admin_delete, methods=["DELETE"]),
            Route(admin + "/products/{id:int}/trash", admin_trash, methods=["POST"]),
            Route(admin + "/products/{id:int}/restore", admin_restore, methods=["POST"]),
            Route(f"{admin}/webhooks", admin_webhooks, methods=["POST", "DELETE"]),
            Route(f"{admin}/webhooks/ping", admin_ping, methods=["POST"]),
            Route(f"{admin}/webhooks/drain", admin_drain, methods=["POST"]),
            Route(f"{admin}/stats", admin_stats, methods=["GET"]),
            Route(f"{admin}/reset", admin_reset, methods=["POST"]),
        ],
        exception_handlers={_Answer: _on_error, EmulatorError: _on_error},
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
) -> None:
    """Run the emulator in the foreground until interrupted (`catalog-sync emulate woocommerce`)."""
    from emulators import server

    app = create_app(products, seed, consumer_key, consumer_secret)
    server.serve_forever(app, host=host, port=port)
