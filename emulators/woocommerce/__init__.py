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
    GET/POST /webhooks              list (status all|active|paused|disabled, per_page, page) or create (`name`,
                                    `topic`, `delivery_url`, `secret`, `status`); a created webhook is pinged
    GET/PUT/DELETE /webhooks/{id}   read, update (any of those fields), delete (`force=true` only); the secret is
                                    never shown; changes need a key with write permission (`key_permissions`)

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
                                      `sku`, `stock_status`, `variations` [{image, status, regular_price, attributes:
                                      {"Color": "Red", "Size": "M"}}]); 201 with the product
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

Every change stamps `date_modified` with `clock()` (whole seconds) and queues a delivery to each active webhook of
its topic. A background task (started with the app) sends them like `WC_Webhook::deliver`: the payload is built when
sent (so it shows the product as it is then), encoded like PHP's `json_encode` (`\\/`, `\\uXXXX`), with the
`X-WC-Webhook-*` headers and a delivery id derived from the webhook id and the current second, as WooCommerce does.
Failed deliveries are recorded, never retried (WooCommerce does not retry either); a webhook whose deliveries fail
more than 5 times in a row is disabled, as WooCommerce does.

`app.state.store` is the `WooStore` for in-process use (bench, demo). State changes happen synchronously within one
handler, which is safe on uvicorn's single event loop.

Modules: `data` (records, generator), `store` (state), `shapes` (JSON), `auth`, `rest`, `webhooks_api`, `control`,
`webhooks`, `errors`, `defaults`, `app`.
"""

from __future__ import annotations

from emulators.woocommerce.app import WooEmulatorApp, create_app, serve
from emulators.woocommerce.auth import wc_oauth_signature
from emulators.woocommerce.data import STATUSES, WooImage, WooProduct, WooVariation, generate_products
from emulators.woocommerce.defaults import (
    ADMIN_PREFIX,
    API_PREFIX,
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    DEFAULT_SITE_URL,
    DEFAULT_UTC_OFFSET,
)
from emulators.woocommerce.errors import EmulatorError
from emulators.woocommerce.store import PRODUCT_TOPICS, WooStore
from emulators.woocommerce.webhooks import php_json

__all__ = [
    "ADMIN_PREFIX",
    "API_PREFIX",
    "DEFAULT_CONSUMER_KEY",
    "DEFAULT_CONSUMER_SECRET",
    "DEFAULT_SITE_URL",
    "DEFAULT_UTC_OFFSET",
    "PRODUCT_TOPICS",
    "STATUSES",
    "EmulatorError",
    "WooEmulatorApp",
    "WooImage",
    "WooProduct",
    "WooStore",
    "WooVariation",
    "create_app",
    "generate_products",
    "php_json",
    "serve",
    "wc_oauth_signature",
]
