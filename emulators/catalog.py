"""A local emulator of the try-on vendor's catalog API, for tests, benchmarks and the demo.

It is a real HTTP server (a Starlette app under uvicorn) that answers like the vendor's pages in `shared/seeds/`
describe, keeps products in memory per API key (accounts are isolated) and can inject faults on demand.

API (header `x-api-key`, one of the keys the emulator was started with; a missing or unknown key is 401
`UNAUTHORIZED`):

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

Every error has the body `{"code", "message", "status"}`:

    400 PRODUCT_IMAGES_REQUIRED  create without images, or `images: []`
    400 TOO_MANY_IMAGES          more than 10 images
    400 INVALID_IMAGE            an image with both or neither of url/fileKey, a bad URL, role or classifications
    400 MISSING_FILE             a fileKey with no file field of that name (always so for a JSON body)
    400 INVALID_VALID_FOR_DAYS   not an integer 1-365 or null
    400 INVALID_LIMIT            limit not an integer 1-200
    400 INVALID_CURSOR           a cursor this emulator did not issue (or for another account)
    400 INVALID_JSON             a body (or `data` field) that is not JSON
    400 INVALID_MULTIPART        a multipart body that cannot be parsed, or without its `data` field
    400 VALIDATION_ERROR         missing or empty externalId, a field of the wrong type
    401 UNAUTHORIZED             missing or unknown `x-api-key`
    404 PRODUCT_NOT_FOUND        no such product in this account
    409 RESERVED_EXTERNAL_ID     externalId starting with `_anon_`
    413 IMAGE_TOO_LARGE          an uploaded file over 10 MB
    413 PAYLOAD_TOO_LARGE        a JSON body over 2 MB or a request larger than any valid upload
    415 UNSUPPORTED_MEDIA_TYPE   neither JSON nor multipart

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

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import time
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

__all__ = [
    "CatalogEmulator",
    "CatalogEmulatorApp",
    "Faults",
    "account_id",
    "create_app",
    "format_timestamp",
    "serve",
]

API_PREFIX = "/tryon/v1"
PRODUCTS_PATH = f"{API_PREFIX}/products"
ADMIN_PREFIX = "/_emulator"
# The vendor's documented limits.
MAX_IMAGES = 10
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MIN_VALID_FOR_DAYS, MAX_VALID_FOR_DAYS = 1, 365
DEFAULT_LIMIT, MAX_LIMIT = 50, 200
# The vendor's documented default limit: 100 requests per minute per account.
ACCOUNT_LIMIT = 100
ACCOUNT_WINDOW = 60.0
# IDs with this prefix are generated by the vendor for one-shot products; clients may not claim them.
RESERVED_PREFIX = "_anon_"
ROLES = frozenset({"top-front", "top-back"})
# A catalog product is a few kB of JSON; anything near this is a client bug, not a product.
MAX_JSON_BYTES = 2 * 1024 * 1024
# Room for one file more than the images allowed, so an oversized single image still reads as IMAGE_TOO_LARGE.
MAX_REQUEST_BYTES = (MAX_IMAGES + 1) * MAX_IMAGE_BYTES + MAX_JSON_BYTES
# Bounds the multipart parser before our own checks run: the images may name up to 10 files, plus slack.
MAX_UPLOAD_FILES = 2 * MAX_IMAGES
MAX_FORM_FIELDS = 10
# Hex digits of SHA-256 in an upload reference: 128 bits, no collisions in any test or benchmark.
UPLOAD_REF_HEX = 32
# Read uploads in pieces so a 10 MB file is hashed without a second in-memory copy.
UPLOAD_CHUNK = 1024 * 1024
CURSOR_VERSION = 1
# Hex digits of the cursor checksum: enough that a hand-made or foreign cursor is refused.
CURSOR_SUM_HEX = 16
DEFAULT_API_KEYS: tuple[str, ...] = ("test-key",)
_DIGITS = re.compile(r"[0-9]{1,9}")
_ENDPOINT_ITEM = f"{PRODUCTS_PATH}/{{externalId}}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and `Z`, as the vendor writes them: `2026-05-13T10:00:00.000Z`."""
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def account_id(api_key: str) -> str:
    """The label an account has in stats: derived from its key so the key itself is never shown."""
    return "acct_" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


class Faults(BaseModel):
    """Faults to inject into API responses (see the module docstring for the order they are checked in)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    account_limit: int | None = Field(
        default=ACCOUNT_LIMIT, ge=1, description="Requests per account per window (the vendor's limit); null: off."
    )
    account_window: float = Field(default=ACCOUNT_WINDOW, gt=0, le=86_400, description="Window length, seconds.")
    rate_limit: float | None = Field(default=None, gt=0, description="Requests per second; null turns it off.")
    burst: int | None = Field(default=None, ge=1, description="Token bucket size; default: the rate, at least 1.")
    latency_ms: float = Field(default=0, ge=0, le=600_000, description="Delay added to every API response.")
    error_rate: float = Field(default=0, ge=0, le=1, description="Probability of a 500 or 503.")
    drop_rate: float = Field(default=0, ge=0, le=1, description="Probability of dropping the connection.")
    fail_next: int = Field(default=0, ge=0, description="The next N API requests answer 503.")
    drop_next: int = Field(default=0, ge=0, description="The next N API requests lose their connection.")
    seed: int | None = Field(default=None, description="Seed for drop_rate and error_rate.")

    @property
    def bucket_size(self) -> int:
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.rate_limit or 1))


class CatalogError(Exception):
    """An API error answered as `{"code", "message", "status"}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "status": status}, status_code=status, headers=headers)


class _Omitted(enum.Enum):
    OMITTED = enum.auto()


# Keeps "the field was not sent" apart from "the field was sent as null".
OMITTED = _Omitted.OMITTED


@dataclass(frozen=True, slots=True)
class _ImageSpec:
    url: str | None
    file_key: str | None
    role: str | None
    classifications: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class _UpsertSpec:
    external_id: str
    title: str | _Omitted
    description: str | _Omitted
    images: list[_ImageSpec] | _Omitted
    metadata: dict[str, Any] | _Omitted | None
    auto_detect_image_roles: bool | _Omitted
    valid_for_days: int | _Omitted | None


@dataclass(frozen=True, slots=True)
class _Image:
    source_url: str
    role: str | None
    classifications: dict[str, Any] | None


@dataclass(slots=True)
class Product:
    """One stored product. `seq` orders the list and never changes; `body` is the response, rebuilt on write."""

    seq: int
    external_id: str
    created_at: datetime
    updated_at: datetime
    title: str = ""
    description: str = ""
    images: list[_Image] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    auto_detect_image_roles: bool = False
    valid_for_days: int | None = None
    expires_at: datetime | None = None
    body: dict[str, Any] = field(default_factory=dict)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def render(self) -> None:
        self.body = {
            "externalId": self.external_id,
            "title": self.title,
            "description": self.description,
            "images": [{"sourceUrl": image.source_url, "order": order} for order, image in enumerate(self.images)],
            "metadata": self.metadata,
            "autoDetectImageRoles": self.auto_detect_image_roles,
            "validForDays": self.valid_for_days,
            "expiresAt": format_timestamp(self.expires_at) if self.expires_at else None,
            "lastUsedAt": None,
            "createdAt": format_timestamp(self.created_at),
            "updatedAt": format_timestamp(self.updated_at),
        }


class Account:
    """The products of one API key: by id for lookups, by sequence (a sorted list) for paging.

    A delete removes one entry from the list (a memmove, microseconds even at 100,000 products); nothing per request
    sorts or scans the whole account."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.by_id: dict[str, Product] = {}
        # Sequences are handed out in increasing order, so appending keeps this sorted without a sort.
        self.seqs: list[int] = []
        self.by_seq: dict[int, Product] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    def live(self, external_id: str, now: datetime) -> Product | None:
        product = self.by_id.get(external_id)
        if product is not None and product.expired(now):
            self.remove(product)
            return None
        return product

    def add(self, product: Product) -> None:
        self.by_id[product.external_id] = product
        self.by_seq[product.seq] = product
        self.seqs.append(product.seq)

    def remove(self, product: Product) -> None:
        del self.by_id[product.external_id]
        del self.by_seq[product.seq]
        index = bisect_right(self.seqs, product.seq) - 1
        del self.seqs[index]

    def page(self, after: int, limit: int, now: datetime) -> tuple[list[Product], bool]:
        """Up to `limit` live products with a sequence above `after`, and whether more follow."""
        items: list[Product] = []
        expired: list[Product] = []
        has_more = False
        for index in range(bisect_right(self.seqs, after), len(self.seqs)):
            product = self.by_seq[self.seqs[index]]
            if product.expired(now):
                expired.append(product)
            elif len(items) < limit:
                items.append(product)
            else:
                has_more = True
                break
        for product in expired:
            self.remove(product)
        return items, has_more


class TokenBucket:
    """`size` tokens, refilled at `rate` per second on a monotonic clock; a request takes one."""

    def __init__(self, rate: float, size: int, now: float) -> None:
        self.rate = rate
        self.size = size
        self.tokens = float(size)
        self.stamp = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one will be there."""
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(float(self.size), self.tokens + elapsed * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.size),
            "X-RateLimit-Remaining": str(math.floor(self.tokens)),
            "X-RateLimit-Reset": str(math.ceil((self.size - self.tokens) / self.rate)),
        }


class FixedWindow:
    """At most `limit` requests in each `window`-second window, windows aligned on the clock, as the vendor counts
    its per-minute limit: a burst at the end of one window and another at the start of the next both pass."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.started = -math.inf
        self.count = 0

    def take(self, now: float) -> float:
        """0.0 when the request counts within the limit, else the seconds until the next window opens."""
        start = math.floor(now / self.window) * self.window
        if start != self.started:
            self.started, self.count = start, 0
        if self.count < self.limit:
            self.count += 1
            return 0.0
        return start + self.window - now


@dataclass(slots=True)
class Stats:
    requests: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    rate_limited: int = 0
    dropped: int = 0
    injected_errors: int = 0
    creates: int = 0
    updates: int = 0
    deletes: int = 0
    gets: int = 0
    lists: int = 0

    def record(self, endpoint: str, status: int | str) -> None:
        self.requests[endpoint][str(status)] += 1


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What the fault injector decided for one API request, before any `await`."""

    action: Literal["pass", "drop", "respond"]
    response: Response | None = None
    headers: Mapping[str, str] | None = None


_PASS = _Verdict("pass")
_DROP = _Verdict("drop")


class CatalogEmulator:
    """All emulator state: accounts, faults, the rate limiter and stats. Methods never await, so each call is atomic
    within the event loop."""

    def __init__(
        self,
        api_keys: Iterable[str],
        faults: Faults,
        *,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        keys = list(api_keys)
        if not keys or not all(isinstance(key, str) and key for key in keys):
            raise ValueError("the catalog emulator needs at least one API key, and keys must be non-empty strings")
        self.accounts: dict[str, Account] = {key: Account(account_id(key)) for key in keys}
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.stats = Stats()
        # Per-process secret: a cursor from another emulator run (or made by hand) fails its checksum.
        self._cursor_secret = secrets.token_bytes(16)
        self._last_seq = 0
        self.faults = Faults()
        self._rng = random.Random()
        self._bucket: TokenBucket | None = None
        self._windows: dict[str, FixedWindow] = {}
        # What `reset` returns to: a server started with `--account-limit 0` stays unlimited after a reset.
        self._initial_faults = faults
        self.configure(faults.model_dump())

    # ---- faults -------------------------------------------------------------------------------------------------

    def configure(self, changes: Mapping[str, Any]) -> Faults:
        """Apply a partial fault update; raises pydantic's ValidationError on a bad value (nothing changes then)."""
        updated = Faults.model_validate({**self.faults.model_dump(), **changes})
        if "seed" in changes:
            self._rng = random.Random(updated.seed)
        if updated.rate_limit is None:
            self._bucket = None
        elif self._bucket is None or "rate_limit" in changes or "burst" in changes:
            self._bucket = TokenBucket(updated.rate_limit, updated.bucket_size, self.monotonic())
        if "account_limit" in changes or "account_window" in changes:
            self._windows.clear()
        self.faults = updated
        return updated

    def admit(self, api_key: str | None = None) -> _Verdict:
        """Decide the fate of one API request (sent with `api_key`): served, dropped, or answered with a fault."""
        faults = self.faults
        if faults.drop_next:
            self.faults = faults.model_copy(update={"drop_next": faults.drop_next - 1})
            return _DROP
        if faults.fail_next:
            self.faults = faults.model_copy(update={"fail_next": faults.fail_next - 1})
            self.stats.injected_errors += 1
            return _Verdict("respond", _error_response(503, "SERVICE_UNAVAILABLE", "Injected fault: fail_next."))
        if faults.account_limit is not None and api_key in self.accounts:
            window = self._windows.get(api_key)
            if window is None:
                window = self._windows[api_key] = FixedWindow(faults.account_limit, faults.account_window)
            if window.take(self.monotonic()) > 0:
                self.stats.rate_limited += 1
                message = f"Rate limit exceeded: {faults.account_limit} requests per {faults.account_window:g} s."
                return _Verdict("respond", _error_response(429, "RATE_LIMITED", message))
        headers: dict[str, str] | None = None
        if self._bucket is not None:
            wait = self._bucket.take(self.monotonic())
            headers = self._bucket.headers()
            if wait > 0:
                self.stats.rate_limited += 1
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
                message = f"Rate limit of {faults.rate_limit:g} requests/s exceeded; retry after the Retry-After delay."
                return _Verdict("respond", _error_response(429, "RATE_LIMITED", message, headers))
        if faults.drop_rate and self._rng.random() < faults.drop_rate:
            return _DROP
        if faults.error_rate and self._rng.random() < faults.error_rate:
            self.stats.injected_errors += 1
            if self._rng.random() < 0.5:
                response = _error_response(500, "INTERNAL_ERROR", "Injected fault: error_rate.", headers)
            else:
                response = _error_response(503, "SERVICE_UNAVAILABLE", "Injected fault: error_rate.", headers)
            return _Verdict("respond", response)
        return _Verdict("pass", headers=headers) if headers else _PASS

    def reset(self, *, stats_only: bool = False) -> None:
        self.stats = Stats()
        if stats_only:
            return
        for key in self.accounts:
            self.accounts[key] = Account(account_id(key))
        self.faults = Faults()
        self._bucket = None
        self._windows.clear()
        self._rng = random.Random()
        self.configure(self._initial_faults.model_dump(exclude={"fail_next", "drop_next"}))

    def stats_body(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "requests": {endpoint: dict(statuses) for endpoint, statuses in stats.requests.items()},
            "total_requests": sum(sum(statuses.values()) for statuses in stats.requests.values()),
            "rate_limited": stats.rate_limited,
            "dropped": stats.dropped,
            "injected_errors": stats.injected_errors,
            "upserts": stats.creates + stats.updates,
            "creates": stats.creates,
            "updates": stats.updates,
            "deletes": stats.deletes,
            "gets": stats.gets,
            "lists": stats.lists,
            "products": {account.label: len(account) for account in self.accounts.values()},
        }

    # ---- the catalog --------------------------------------------------------------------------------------------

    def authenticate(self, request: Request) -> Account:
        key = request.headers.get("x-api-key")
        account = self.accounts.get(key) if key else None
        if account is None:
            raise CatalogError(401, "UNAUTHORIZED", "Missing or unknown API key (header x-api-key).")
        return account

    def now(self) -> datetime:
        moment = self.clock()
        if moment.tzinfo is None:
            raise TypeError("the emulator's clock must return timezone-aware datetimes")
        return moment

    def product_count(self, api_key: str) -> int:
        return len(self.accounts[api_key])

    def upsert(self, account: Account, spec: _UpsertSpec, uploads: Mapping[str, str]) -> tuple[Product, bool]:
        now = self.now()
        product = account.live(spec.external_id, now)
        created = product is None
        if product is None:
            if isinstance(spec.images, _Omitted):
                raise CatalogError(
                    400,
                    "PRODUCT_IMAGES_REQUIRED",
                    f"Product '{spec.external_id}' does not exist yet; at least one image is required to create it.",
                )
            self._last_seq += 1
            product = Product(seq=self._last_seq, external_id=spec.external_id, created_at=now, updated_at=now)
            account.add(product)
            self.stats.creates += 1
        else:
            product.updated_at = now
            self.stats.updates += 1
        if not isinstance(spec.title, _Omitted):
            product.title = spec.title
        if not isinstance(spec.description, _Omitted):
            product.description = spec.description
        if not isinstance(spec.images, _Omitted):
            product.images = [
                _Image(image.url or uploads[image.file_key or ""], image.role, image.classifications)
                for image in spec.images
            ]
        if not isinstance(spec.metadata, _Omitted):
            product.metadata = spec.metadata
        if not isinstance(spec.auto_detect_image_roles, _Omitted):
            product.auto_detect_image_roles = spec.auto_detect_image_roles
        if not isinstance(spec.valid_for_days, _Omitted):
            product.valid_for_days = spec.valid_for_days
            product.expires_at = None if spec.valid_for_days is None else now + timedelta(days=spec.valid_for_days)
        product.render()
        return product, created

    def get(self, account: Account, external_id: str) -> Product:
        self.stats.gets += 1
        product = account.live(external_id, self.now())
        if product is None:
            raise _not_found(external_id)
        return product

    def delete(self, account: Account, external_id: str) -> None:
        product = account.live(external_id, self.now())
        if product is None:
            raise _not_found(external_id)
        account.remove(product)
        self.stats.deletes += 1

    def list_page(self, account: Account, limit: int, cursor: str | None) -> dict[str, Any]:
        after = self._decode_cursor(account, cursor) if cursor else 0
        items, has_more = account.page(after, limit, self.now())
        self.stats.lists += 1
        return {
            "items": [product.body for product in items],
            "nextCursor": self._encode_cursor(account, items[-1].seq) if has_more else None,
            "hasMore": has_more,
            "count": len(items),
        }

    def _checksum(self, account: Account, seq: int) -> str:
        message = f"{CURSOR_VERSION}:{account.label}:{seq}".encode()
        return hmac.new(self._cursor_secret, message, hashlib.sha256).hexdigest()[:CURSOR_SUM_HEX]

    def _encode_cursor(self, account: Account, seq: int) -> str:
        body = {"v": CURSOR_VERSION, "after": seq, "sum": self._checksum(account, seq)}
        raw = json.dumps(body, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def _decode_cursor(self, account: Account, cursor: str) -> int:
        invalid = CatalogError(400, "INVALID_CURSOR", "Unknown cursor: pass the nextCursor of a previous page.")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            body = json.loads(raw)
        except (ValueError, binascii.Error):
            raise invalid from None
        if not isinstance(body, dict) or body.get("v") != CURSOR_VERSION:
            raise invalid
        seq, checksum = body.get("after"), body.get("sum")
        if type(seq) is not int or not isinstance(checksum, str) or not 0 < seq <= self._last_seq:
            raise invalid
        if not hmac.compare_digest(checksum, self._checksum(account, seq)):
            raise invalid
        return seq


def _not_found(external_id: str) -> CatalogError:
    return CatalogError(404, "PRODUCT_NOT_FOUND", f"Product '{external_id}' not found.")


# ---- request parsing ---------------------------------------------------------------------------------------------


def _invalid(message: str) -> CatalogError:
    return CatalogError(400, "VALIDATION_ERROR", message)


def _optional_str(payload: Mapping[str, Any], name: str) -> str | _Omitted:
    if name not in payload:
        return OMITTED
    value = payload[name]
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string.")
    return value


def _parse_valid_for_days(payload: Mapping[str, Any]) -> int | _Omitted | None:
    if "validForDays" not in payload:
        return OMITTED
    value = payload["validForDays"]
    if value is None:
        return None
    if type(value) is not int or not MIN_VALID_FOR_DAYS <= value <= MAX_VALID_FOR_DAYS:
        raise CatalogError(
            400,
            "INVALID_VALID_FOR_DAYS",
            f"validForDays must be an integer from {MIN_VALID_FOR_DAYS} to {MAX_VALID_FOR_DAYS}, or null for "
            f"kept forever; got {json.dumps(value)}.",
        )
    return value


def _check_url(url: Any, where: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise CatalogError(400, "INVALID_IMAGE", f"{where}: url must be a non-empty string.")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CatalogError(400, "INVALID_IMAGE", f"{where}: url must be an absolute http(s) URL.")
    return url


def _parse_image(entry: Any, index: int) -> _ImageSpec:
    where = f"images[{index}]"
    if not isinstance(entry, dict):
        raise CatalogError(400, "INVALID_IMAGE", f"{where} must be an object.")
    if "source" in entry:
        if "url" in entry or "fileKey" in entry:
            raise CatalogError(400, "INVALID_IMAGE", f"{where}: put url or fileKey inside source, not beside it.")
        source = entry["source"]
        if not isinstance(source, dict):
            raise CatalogError(400, "INVALID_IMAGE", f"{where}.source must be an object.")
        where = f"{where}.source"
    else:
        source = entry  # the deprecated flat shape
    url, file_key = source.get("url"), source.get("fileKey")
    if (url is None) == (file_key is None):
        raise CatalogError(400, "INVALID_IMAGE", f"{where} must hold exactly one of url or fileKey.")
    if file_key is not None and (not isinstance(file_key, str) or not file_key):
        raise CatalogError(400, "INVALID_IMAGE", f"{where}: fileKey must be a non-empty string.")
    role = entry.get("role")
    if role is not None and role not in ROLES:
        raise CatalogError(400, "INVALID_IMAGE", f"images[{index}]: role must be top-front, top-back or null.")
    classifications = entry.get("classifications")
    if classifications is not None and not isinstance(classifications, dict):
        raise CatalogError(400, "INVALID_IMAGE", f"images[{index}]: classifications must be an object.")
    return _ImageSpec(
        url=_check_url(url, where) if url is not None else None,
        file_key=file_key,
        role=role,
        classifications=classifications,
    )


def _parse_images(payload: Mapping[str, Any]) -> list[_ImageSpec] | _Omitted:
    if "images" in payload and "imageUrls" in payload:
        raise _invalid("Send images or the deprecated imageUrls, not both.")
    if "imageUrls" in payload:
        urls = payload["imageUrls"]
        if not isinstance(urls, list):
            raise _invalid("imageUrls must be an array of URLs.")
        entries: list[Any] = [{"url": url} for url in urls]
    elif "images" in payload:
        entries = payload["images"]
        if not isinstance(entries, list):
            raise _invalid("images must be an array.")
    else:
        return OMITTED
    if not entries:
        raise CatalogError(400, "PRODUCT_IMAGES_REQUIRED", "A product needs at least one image; images is empty.")
    if len(entries) > MAX_IMAGES:
        raise CatalogError(
            400, "TOO_MANY_IMAGES", f"At most {MAX_IMAGES} images per product; this request has {len(entries)}."
        )
    return [_parse_image(entry, index) for index, entry in enumerate(entries)]


def parse_upsert(payload: Any) -> _UpsertSpec:
    """Validate an upsert body (the JSON, wherever it came from) without looking at the stored state."""
    if not isinstance(payload, dict):
        raise _invalid("The body must be a JSON object.")
    external_id = payload.get("externalId")
    if not isinstance(external_id, str) or not external_id.strip():
        raise _invalid("externalId is required and must be a non-empty string.")
    if external_id.startswith(RESERVED_PREFIX):
        raise CatalogError(
            409,
            "RESERVED_EXTERNAL_ID",
            f"externalId '{external_id}' is reserved — the '{RESERVED_PREFIX}' prefix is for server-generated IDs.",
        )
    metadata: dict[str, Any] | _Omitted | None = payload.get("metadata", OMITTED)
    if metadata is not None and not isinstance(metadata, dict | _Omitted):
        raise _invalid("metadata must be a JSON object or null.")
    auto_detect: bool | _Omitted = payload.get("autoDetectImageRoles", OMITTED)
    if not isinstance(auto_detect, bool | _Omitted):
        raise _invalid("autoDetectImageRoles must be a boolean.")
    return _UpsertSpec(
        external_id=external_id,
        title=_optional_str(payload, "title"),
        description=_optional_str(payload, "description"),
        images=_parse_images(payload),
        metadata=metadata,
        auto_detect_image_roles=auto_detect,
        valid_for_days=_parse_valid_for_days(payload),
    )


def _parse_json(raw: bytes | str, where: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise CatalogError(400, "INVALID_JSON", f"{where} is not valid JSON: {exc}.") from None


async def _read_capped(request: Request, cap: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise CatalogError(413, "PAYLOAD_TOO_LARGE", f"The JSON body is larger than {cap} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _check_content_length(request: Request) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise CatalogError(413, "PAYLOAD_TOO_LARGE", f"The request is larger than {MAX_REQUEST_BYTES} bytes.")


async def _read_form(request: Request) -> FormData:
    try:
        return await request.form(max_files=MAX_UPLOAD_FILES, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_JSON_BYTES)
    except (HTTPException, MultiPartException) as exc:
        detail = exc.detail if isinstance(exc, HTTPException) else exc.message
        raise CatalogError(400, "INVALID_MULTIPART", f"The multipart body cannot be read: {detail}") from None


async def _form_payload(form: FormData) -> Any:
    data = form.get("data")
    if data is None:
        raise CatalogError(400, "INVALID_MULTIPART", "A multipart upsert needs a 'data' field holding the JSON body.")
    if isinstance(data, UploadFile):
        if data.size is not None and data.size > MAX_JSON_BYTES:
            raise CatalogError(413, "PAYLOAD_TOO_LARGE", f"The data field is larger than {MAX_JSON_BYTES} bytes.")
        return _parse_json(await data.read(), "The data field")
    return _parse_json(data, "The data field")


async def _upload_refs(spec: _UpsertSpec, form: FormData | None) -> dict[str, str]:
    """Read every file the images name and return fileKey -> `upload://…` reference."""
    refs: dict[str, str] = {}
    if isinstance(spec.images, _Omitted):
        return refs
    for index, image in enumerate(spec.images):
        key = image.file_key
        if key is None or key in refs:
            continue
        upload = form.get(key) if form is not None else None
        if upload is None:
            how = "no file field of that name" if form is not None else "a JSON body (use multipart/form-data)"
            raise CatalogError(400, "MISSING_FILE", f"images[{index}] names fileKey '{key}' but the request has {how}.")
        if not isinstance(upload, UploadFile):
            raise CatalogError(400, "MISSING_FILE", f"images[{index}]: form field '{key}' is not a file upload.")
        if upload.size is not None and upload.size > MAX_IMAGE_BYTES:
            raise CatalogError(
                413, "IMAGE_TOO_LARGE", f"File '{key}' is {upload.size} bytes; at most {MAX_IMAGE_BYTES} are accepted."
            )
        digest = hashlib.sha256()
        size = 0
        while chunk := await upload.read(UPLOAD_CHUNK):
            size += len(chunk)
            digest.update(chunk)
        if size > MAX_IMAGE_BYTES:
            raise CatalogError(
                413, "IMAGE_TOO_LARGE", f"File '{key}' is {size} bytes; at most {MAX_IMAGE_BYTES} are accepted."
            )
        if size == 0:
            raise CatalogError(400, "INVALID_IMAGE", f"images[{index}]: file '{key}' is empty.")
        refs[key] = "upload://" + digest.hexdigest()[:UPLOAD_REF_HEX]
    return refs


def _parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise CatalogError(400, "INVALID_LIMIT", f"limit must be an integer from 1 to {MAX_LIMIT}; got '{raw[:20]}'.")
    return int(raw)


def _external_id(request: Request) -> str:
    external_id: str = request.path_params["external_id"]
    if not external_id:
        raise _invalid("The path needs an externalId: /tryon/v1/products/{externalId}.")
    return external_id


# ---- handlers ----------------------------------------------------------------------------------------------------


def _emulator(request: Request) -> CatalogEmulator:
    emulator: CatalogEmulator = request.app.state.emulator
    return emulator


async def upsert_product(request: Request) -> Response:
    emulator = _emulator(request)
    account = emulator.authenticate(request)
    _check_content_length(request)
    media_type = _media_type(request)
    if media_type == "multipart/form-data":
        form = await _read_form(request)
        try:
            spec = parse_upsert(await _form_payload(form))
            uploads = await _upload_refs(spec, form)
        finally:
            await form.close()
    elif media_type in ("", "application/json") or media_type.endswith("+json"):
        spec = parse_upsert(_parse_json(await _read_capped(request, MAX_JSON_BYTES), "The body"))
        uploads = await _upload_refs(spec, None)
    else:
        raise CatalogError(
            415, "UNSUPPORTED_MEDIA_TYPE", "Send application/json, or multipart/form-data with a data field."
        )
    # From here on nothing awaits: the read-modify-write of the account is atomic in the event loop.
    product, created = emulator.upsert(account, spec, uploads)
    return JSONResponse(product.body, status_code=201 if created else 200)


async def list_products(request: Request) -> Response:
    emulator = _emulator(request)
    account = emulator.authenticate(request)
    limit = _parse_limit(request.query_params.get("limit"))
    cursor = request.query_params.get("cursor") or None
    return JSONResponse(emulator.list_page(account, limit, cursor))


async def get_product(request: Request) -> Response:
    emulator = _emulator(request)
    account = emulator.authenticate(request)
    return JSONResponse(emulator.get(account, _external_id(request)).body)


async def delete_product(request: Request) -> Response:
    emulator = _emulator(request)
    account = emulator.authenticate(request)
    emulator.delete(account, _external_id(request))
    return Response(status_code=204)


async def admin_config(request: Request) -> Response:
    emulator = _emulator(request)
    if request.method == "POST":
        changes = _parse_json(await _read_capped(request, MAX_JSON_BYTES), "The body")
        if not isinstance(changes, dict):
            raise _invalid("The body must be a JSON object of fault settings.")
        try:
            emulator.configure(changes)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
            )
            raise _invalid(f"Invalid fault settings: {problems}.") from None
    return JSONResponse(emulator.faults.model_dump())


async def admin_stats(request: Request) -> Response:
    return JSONResponse(_emulator(request).stats_body())


async def admin_reset(request: Request) -> Response:
    raw = await _read_capped(request, MAX_JSON_BYTES)
    options = _parse_json(raw, "The body") if raw.strip() else {}
    if not isinstance(options, dict) or not isinstance(options.get("stats_only", False), bool):
        raise _invalid('The body must be empty or {"stats_only": true|false}.')
    _emulator(request).reset(stats_only=options.get("stats_only", False))
    return JSONResponse({"reset": "stats" if options.get("stats_only") else "all"})


async def _on_catalog_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CatalogError)
    return _error_response(exc.status, exc.code, exc.message)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
    return _error_response(exc.status_code, codes.get(exc.status_code, "HTTP_ERROR"), str(exc.detail))


async def _on_unexpected_error(request: Request, exc: Exception) -> Response:
    return _error_response(500, "INTERNAL_ERROR", "The emulator failed on this request; see its log.")


# ---- the ASGI app ------------------------------------------------------------------------------------------------


def _endpoint(method: str, path: str) -> str:
    """The stats label of an API request: the route template, so ids do not blow up the table."""
    if path == PRODUCTS_PATH:
        return f"{method} {PRODUCTS_PATH}"
    if path.startswith(PRODUCTS_PATH + "/"):
        return f"{method} {_ENDPOINT_ITEM}"
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
    clock: Callable[[], datetime] = _utc_now,
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
