"""A local emulator of the try-on vendor's catalog API, for tests, benchmarks and the demo.

It is a real HTTP server (a Starlette app under uvicorn) that answers like the vendor's pages in `shared/seeds/`
describe, keeps products in memory per API key (accounts are isolated) and can inject faults on demand.

API (header `x-api-key`, one of the keys the emulator was started with; a missing key is 401 `MISSING_API_KEY`,
an unknown one 401 `INVALID_API_KEY`):

    POST   /tryon/v1/products                 upsert on `externalId`; 201 when created, 200 when updated
    GET    /tryon/v1/products?limit=&cursor=  `{items, nextCursor, hasMore, count}`; limit 1-200, default 50
    GET    /tryon/v1/products/{externalId}    the product, or 404 `PRODUCT_NOT_FOUND`
    DELETE /tryon/v1/products/{externalId}    204, or 404 `PRODUCT_NOT_FOUND` (callers treat it as done)

Upsert bodies are `application/json`, or `multipart/form-data` with a `data` field holding the JSON and one file
field per `fileKey`. All three image shapes are accepted: the current `{"source": {"url" | "fileKey"},
"classifications"?}`, the deprecated flat `{"url", "role"?}` / `{"fileKey", "classifications"?}`, and the legacy
`imageUrls: [...]`. Omitted fields are preserved on update; `images` replaces the whole list and may not be empty;
`validForDays` omitted keeps the current value, null means kept forever (`expiresAt` null), 1-365 sets a TTL with
`expiresAt` = now + days. A product whose `expiresAt` has passed is gone (purged when next touched). Uploaded bytes
come back as `upload://<first 32 hex digits of their SHA-256>`, the same reference for the same bytes. Timestamps
are ISO-8601 UTC with milliseconds and `Z`. `lastUsedAt` is always null: no try-on generations happen here.

Every error has the body `{"code", "message", "status"}`, plus `details: [{path, message}]` for
`VALIDATION_FAILED`; the codes are exactly those of the vendor's Errors page:

    400 VALIDATION_FAILED        a field of the wrong type or out of range (validForDays, more than 10 images, a bad
                                 image URL, role or classifications, both url and fileKey), a body that is not JSON
                                 or not a readable multipart form, a bad limit or cursor; `details` names each path
    400 EXTERNAL_ID_REQUIRED     missing or empty externalId
    400 PRODUCT_IMAGES_REQUIRED  create without images, or `images: []`
    400 MULTIPART_FILE_NOT_FOUND a fileKey with no file field of that name (always so for a JSON body)
    400 INVALID_IMAGE_INPUT      an image with neither url nor fileKey
    400 INVALID_IMAGE            uploaded bytes that are not an image (empty, or without the signature of JPEG,
                                 PNG, GIF, WebP, HEIC or AVIF)
    401 MISSING_API_KEY          no `x-api-key`
    401 INVALID_API_KEY          an `x-api-key` the emulator does not know
    402 INSUFFICIENT_CREDITS     upserts while the `credits_exhausted` fault is on
    403 FORBIDDEN                every API request while the `forbidden` fault is on
    404 PRODUCT_NOT_FOUND        no such product in this account
    409 RESERVED_EXTERNAL_ID     externalId starting with `_anon_`
    429 RATE_LIMITED             over the account limit (100 a minute by default) or the `rate_limit` fault

HTTP-level answers that no valid client request meets: 413 `PAYLOAD_TOO_LARGE` (a body over the transport limits),
404/405 for routes that do not exist, and the injected 500 `INTERNAL_ERROR` / 503 `SERVICE_UNAVAILABLE` faults.

Paging: every product gets a sequence number from one counter when it is created (kept on update). A cursor is an
opaque base64 encoding of "sequence > N" plus a checksum, so products deleted after they were seen and products
created meanwhile (larger sequences) never make an iteration skip or repeat anything. A page costs O(log n + limit),
whatever the number of stored products.

The account limit is the vendor's documented one and is on by default: 100 requests per minute per account (per API
key), counted in fixed 60-second windows on the server's monotonic clock. Over it, 429 with the documented body
`{"code": "RATE_LIMITED", "message", "status": 429}` and no rate-limit headers (the vendor documents none). Requests
with a missing or unknown key are not counted (they answer 401). `account_limit: null` turns it off, for tests and
benchmarks that measure something else.

Faults apply to the API routes only, set by `create_app(faults=Faults(...))`, the CLI flags, or at run time with
`POST /_emulator/config` (JSON; only the fields sent change). They are checked in this order:

    drop_next    int    the next N API requests lose their connection without any response
    fail_next    int    the next N API requests answer 503 `SERVICE_UNAVAILABLE`
    account_limit int   requests per account per `account_window` seconds (default 100 per 60; null: off)
    rate_limit   float  requests per second (null: off), a token bucket of `burst` tokens (default: the rate,
                        at least 1) on the server's monotonic clock; over it: 429 `RATE_LIMITED` with `Retry-After`
                        (whole seconds, at least 1). While a limit is on, every API response carries
                        `X-RateLimit-Limit` (the bucket size), `X-RateLimit-Remaining` and `X-RateLimit-Reset`
                        (seconds until the bucket is full again)
    forbidden    bool   every API request answers 403 `FORBIDDEN` (a key without access to the account's catalog)
    credits_exhausted bool  upserts answer 402 `INSUFFICIENT_CREDITS` (reads and deletes still pass)
    drop_rate    float  probability of losing the connection without any response
    error_rate   float  probability of a 500 `INTERNAL_ERROR` or 503 `SERVICE_UNAVAILABLE` (even odds)
    latency_ms   float  added before every API response (an `await`, so other requests go on meanwhile)
    seed         int    seeds the randomness of drop_rate and error_rate

Administration (no API key needed):

    GET  /_emulator/config   the current faults (`fail_next`/`drop_next` show what is left)
    POST /_emulator/config   change some faults; answers the new faults, 400 `VALIDATION_ERROR` on a bad value
    GET  /_emulator/stats    requests by endpoint and status (status "dropped" for lost connections), counts of
                             429s, drops, injected errors, upserts (creates, updates), deletes, gets, lists, and the
                             number of products per account (`account_id(api_key)`, never the key itself)
    POST /_emulator/reset    clears products and stats, and puts the faults back to those the emulator was started
                             with (without one-shot `fail_next`/`drop_next`); `{"stats_only": true}` clears only the
                             stats

The emulator's state is also reachable in-process as `app.state.emulator` (a `CatalogEmulator`) for the bench and
demo; tests talk HTTP. State changes happen synchronously within one handler (no `await` between reading and
writing), which is safe in uvicorn's single event loop.
"""

from emulators.catalog.app import CatalogEmulatorApp, create_app, serve
from emulators.catalog.contract import DEFAULT_API_KEYS, MAX_IMAGE_BYTES, PRODUCTS_PATH, account_id, format_timestamp
from emulators.catalog.emulator import CatalogEmulator
from emulators.catalog.faults import Faults
from emulators.catalog.requests import parse_upsert

__all__ = [
    "DEFAULT_API_KEYS",
    "MAX_IMAGE_BYTES",
    "PRODUCTS_PATH",
    "CatalogEmulator",
    "CatalogEmulatorApp",
    "Faults",
    "account_id",
    "create_app",
    "format_timestamp",
    "parse_upsert",
    "serve",
]
