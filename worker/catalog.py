"""The catalog API client: request and response models, one status → error table, one retry loop.

The try-on vendor's catalog is reached only through `CatalogClient`:

    POST   /products                upsert keyed on externalId (JSON, or multipart when image bytes are shipped)
    GET    /products?limit&cursor   one page: {items, nextCursor, hasMore, count}
    GET    /products/{externalId}   one product; 404 PRODUCT_NOT_FOUND → None
    DELETE /products/{externalId}   idempotent; 404 PRODUCT_NOT_FOUND → False

`ProductUpsert` validates before anything is sent and keeps "omitted" apart from "null": only the fields that were
set are serialized, so a partial update preserves what it leaves out and `validForDays=None` means "kept forever".
Its `payload_json()` is canonical (sorted keys, compact), so `content_hash()` identifies a desired state.

Failures are raised as the project's error tree (`ground.errors`), chosen by `STATUS_ERRORS`: the caller decides
by class (fix credentials, drop the request, try later). Short faults are retried here by tenacity, the only retry
loop of this layer: 5xx, timeouts, dropped connections, and 429s whose `Retry-After` fits under `max_retry_after`.
A longer `Retry-After` raises `RateLimited` at once so the caller reschedules instead of holding a worker. With a
shared `Limiter`, every attempt first acquires a slot and every 429 starts a cool-down that all workers observe.

The API key is a `SecretStr`: it is only ever put in the request header, never in a repr, a log line or a message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Annotated, Any, Final, Self, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SecretStr,
    SerializerFunctionWrapHandler,
    Strict,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel
from tenacity import RetryCallState, Retrying, retry_if_exception

from config.settings import Settings
from ground.errors import (
    AuthError,
    ConfigError,
    InsufficientCredits,
    PermanentError,
    RateLimited,
    RejectedError,
    RetryableError,
    SyncError,
)
from ground.http import BACKOFF, USER_AGENT, retry_after_seconds
from ground.limits import MAX_IMAGES
from ground.paging import CursorPaginator
from worker import work_metrics
from worker.ratelimit import Limiter


def _observe_call(method: str, path: str, code: str, begun: float) -> None:
    endpoint = work_metrics.endpoint(path)
    work_metrics.catalog_calls.labels(method, endpoint, code).inc()
    work_metrics.catalog_call_seconds.labels(method, endpoint).observe(time.perf_counter() - begun)

__all__ = [
    "STATUS_ERRORS",
    "CatalogClient",
    "CatalogImage",
    "CatalogPage",
    "CatalogProduct",
    "FileSpec",
    "ImageInput",
    "ImageSource",
    "MissingFileError",
    "ProductUpsert",
    "error_for_response",
    "field_path",
]

log = logging.getLogger(__name__)

# Largest image the API accepts per file (documented "10 MB each"; larger is a 413), checked before upload.
MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024
# validForDays bounds, as documented; None means "kept forever".
MIN_VALID_DAYS: Final = 1
MAX_VALID_DAYS: Final = 365
# List page size bounds of GET /products; the largest page means the fewest round trips when iterating.
MIN_PAGE_SIZE: Final = 1
MAX_PAGE_SIZE: Final = 200
DEFAULT_PAGE_SIZE: Final = 50
# The API reserves this externalId prefix for ids it generates (409 RESERVED_EXTERNAL_ID).
RESERVED_PREFIX: Final = "_anon_"
# Longest a bulk call waits for its account's budget inside a push, for a client told nothing about its pacing (the
# runtime passes `ratelimit.bulk_wait`: a few slot intervals of the account). Longer waits give the worker slot back
# (the row is due again when its slot comes): a slot asleep on one account's budget serves no other account.
BULK_MAX_WAIT: Final = 2.0
# The multipart field that carries the JSON payload; an image fileKey must not collide with it.
DATA_FIELD: Final = "data"
# A 429 without Retry-After still pauses every worker this long (seconds).
DEFAULT_COOL_DOWN: Final = 1.0
# How much of an error body is quoted in a message when it is not the documented JSON.
BODY_EXCERPT: Final = 200
# Only this body code on a 404 means "no such product"; any other 404 (a wrong base URL answering its own 404)
# must not pass for an absent product, or every delete would "succeed".
NOT_FOUND_CODE: Final = "PRODUCT_NOT_FOUND"

Sleep = Callable[[float], None]
Clock = Callable[[], float]
Model = TypeVar("Model", bound=BaseModel)
# A file to upload: raw bytes (the field name doubles as file name) or (filename, bytes, content type).
FileSpec = bytes | tuple[str, bytes, str]

# What the caller should do, by status. Statuses not listed fall back by class in `error_for_response`:
# other 5xx → RetryableError, other 4xx → RejectedError.
STATUS_ERRORS: Final[Mapping[int, type[SyncError]]] = MappingProxyType(
    {
        400: RejectedError,
        401: AuthError,
        # INSUFFICIENT_CREDITS: no write passes until the account is topped up, whichever product it is.
        402: InsufficientCredits,
        403: AuthError,
        404: RejectedError,
        # The server gave up waiting for our request: the same request may well pass next time.
        408: RetryableError,
        409: RejectedError,
        413: RejectedError,
        422: RejectedError,
        429: RateLimited,
        500: RetryableError,
        502: RetryableError,
        503: RetryableError,
        504: RetryableError,
    }
)


class MissingFileError(ValueError):
    """An image names a fileKey that has no file in the upload, or a file is given that no image uses."""


# --------------------------------------------------------------------------------------------------------------
# Request models


class _WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; both spellings accepted on input."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid", frozen=True
    )


class ImageSource(_WireModel):
    """Where an image comes from: exactly one of a remote `url` or the `file_key` of a multipart file field."""

    url: str | None = None
    file_key: str | None = None

    @field_validator("url")
    @classmethod
    def _absolute_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url must be an absolute http(s) URL, got {value[:100]!r}")
        return value

    @field_validator("file_key")
    @classmethod
    def _usable_file_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("fileKey must not be empty")
        if value == DATA_FIELD:
            raise ValueError(f"fileKey {DATA_FIELD!r} is reserved for the JSON payload field of the multipart body")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.url is None) == (self.file_key is None):
            raise ValueError("an image source needs exactly one of url or fileKey")
        return self

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The unused half of the pair is never sent, even when it was passed explicitly as None.
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value is not None}


class ImageInput(_WireModel):
    """One image in the current wire shape: `{"source": {"url" | "fileKey": …}, "classifications"?: {…}}`."""

    source: ImageSource
    classifications: dict[str, JsonValue] | None = None

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_url(cls, url: str, classifications: dict[str, JsonValue] | None = None) -> ImageInput:
        return cls(source=ImageSource(url=url), classifications=classifications)

    @classmethod
    def from_file(cls, file_key: str, classifications: dict[str, JsonValue] | None = None) -> ImageInput:
        return cls(source=ImageSource(file_key=file_key), classifications=classifications)


class ProductUpsert(_WireModel):
    """The body of `POST /products`. Only the fields that were set are sent (see the module docstring)."""

    external_id: str
    title: str | None = None
    description: str | None = None
    # Never empty: the API refuses `images: []` (400 PRODUCT_IMAGES_REQUIRED); omit the field to keep the images.
    images: Annotated[list[ImageInput], Field(min_length=1, max_length=MAX_IMAGES)] | None = None
    metadata: dict[str, JsonValue] | None = None
    auto_detect_image_roles: bool | None = None
    valid_for_days: Annotated[int, Strict(), Field(ge=MIN_VALID_DAYS, le=MAX_VALID_DAYS)] | None = None

    @field_validator("external_id")
    @classmethod
    def _usable_external_id(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("externalId must not be empty")
        if value.startswith(RESERVED_PREFIX):
            raise ValueError(f"externalId must not start with {RESERVED_PREFIX!r}: the API reserves that prefix")
        return value

    @field_validator("title", "description", "images", "auto_detect_image_roles", mode="before")
    @classmethod
    def _omit_rather_than_null(cls, value: Any) -> Any:
        # The API documents no null for these: leaving a field out is how a partial update keeps it.
        if value is None:
            raise ValueError("may be omitted (to keep the stored value) but not null")
        return value

    def payload(self) -> dict[str, Any]:
        """The JSON body as a dict: set fields only, wire names."""
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return data

    def payload_json(self) -> str:
        """The canonical JSON body: sorted keys and compact separators, stable across processes."""
        return json.dumps(self.payload(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def content_hash(self) -> str:
        """sha256 hex of `payload_json()`: equal desired states hash equal."""
        return hashlib.sha256(self.payload_json().encode("utf-8")).hexdigest()

    def file_keys(self) -> list[str]:
        """The fileKeys the images reference, in image order."""
        return [image.source.file_key for image in self.images or () if image.source.file_key is not None]


# --------------------------------------------------------------------------------------------------------------
# Response models


class _ResponseModel(BaseModel):
    """Tolerant of fields a newer API adds and of the optional fields older pages omit."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="allow")


class CatalogImage(_ResponseModel):
    """`sourceUrl` is the URL sent, or an opaque `upload://…` for uploaded bytes: an identifier, not a link."""

    source_url: str
    order: int
    role: str | None = None


class CatalogProduct(_ResponseModel):
    """A product as the catalog holds it."""

    external_id: str
    title: str | None = None
    description: str | None = None
    images: list[CatalogImage] = Field(default_factory=list)
    metadata: dict[str, JsonValue] | None = None
    auto_detect_image_roles: bool | None = None
    valid_for_days: int | None = None
    expires_at: AwareDatetime | None = None
    last_used_at: AwareDatetime | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime


class CatalogPage(_ResponseModel):
    """One page of `GET /products`. `next_cursor` is None on the last page; `has_more` None when not sent."""

    items: list[CatalogProduct]
    next_cursor: str | None = None
    has_more: bool | None = None
    count: int | None = None


# --------------------------------------------------------------------------------------------------------------
# Errors


def error_for_response(response: httpx.Response, *, redact: Callable[[str], str] = lambda text: text) -> SyncError:
    """The error for a non-2xx response, chosen by `STATUS_ERRORS`, with the body's `code` and `message`.

    `redact` scrubs the message (the client removes its key, in case a server echoes it back).
    """
    status = response.status_code
    code, detail, details = _error_body(response)
    request = response.request
    where = f"catalog {request.method} {request.url.path}"
    if details:
        detail += " (" + "; ".join(f"{path}: {text}" for path, text in details) + ")"
    message = redact(f"{where} answered {status} {code}: {detail}")
    error_class = STATUS_ERRORS.get(status)
    if error_class is None:
        if status >= 500:
            error_class = RetryableError
        elif 300 <= status < 400:
            # Redirects are not followed: a custom key header would travel to wherever Location points.
            location = redact(response.headers.get("Location", "?"))
            return RejectedError(
                f"{where} answered a redirect {status} to {location}; check the catalog base URL",
                status=status,
                code=code,
            )
        else:
            error_class = RejectedError
    if error_class is RateLimited:
        return RateLimited(
            message,
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            limit=_int_header(response, "X-RateLimit-Limit"),
            remaining=_int_header(response, "X-RateLimit-Remaining"),
            reset=_float_header(response, "X-RateLimit-Reset"),
        )
    if error_class is AuthError:
        return AuthError(message + " (check the catalog API key)", status=status, code=code)
    if error_class is InsufficientCredits:
        return InsufficientCredits(message + " (top up the catalog account)", status=status, code=code)
    if error_class is RejectedError:
        return RejectedError(message, status=status, code=code, details=details)
    return RetryableError(message, status=status)


def _error_body(response: httpx.Response) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """(code, message, details) from the documented `{code, message, status, details?: [{path, message}]}` body,
    with fallbacks for anything else."""
    fallback_code = f"HTTP_{response.status_code}"
    try:
        text = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return fallback_code, response.reason_phrase or "(unreadable body)", ()
    try:
        body = json.loads(text) if text.strip() else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("code")
        detail = body.get("message")
        return (
            code if isinstance(code, str) and code else fallback_code,
            detail if isinstance(detail, str) and detail else _excerpt(text),
            _details(body.get("details")),
        )
    excerpt = _excerpt(text)
    return fallback_code, excerpt or response.reason_phrase or "(empty body)", ()


def _details(raw: Any) -> tuple[tuple[str, str], ...]:
    """The validation `details` as (path, message) pairs; entries of another shape are skipped, not fatal."""
    if not isinstance(raw, list):
        return ()
    pairs = []
    for item in raw:
        if isinstance(item, dict) and isinstance(item.get("message"), str):
            path = item.get("path")
            pairs.append((path if isinstance(path, str) and path else "(product)", item["message"]))
    return tuple(pairs)


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= BODY_EXCERPT else flat[:BODY_EXCERPT] + "…"


def _int_header(response: httpx.Response, name: str) -> int | None:
    value = _float_header(response, name)
    return None if value is None else int(value)


def _float_header(response: httpx.Response, name: str) -> float | None:
    raw = response.headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw.strip())
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------------------
# The client


class CatalogClient:
    """The catalog API. One instance per process: its `httpx.Client` pools connections for every call.

    `sleep` and `clock` are swapped by tests so retries are observed without waiting.
    """

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | str,
        *,
        timeout: float = 30.0,
        max_attempts: int = 4,
        limiter: Limiter | None = None,
        max_retry_after: float = 10.0,
        max_total_time: float = 60.0,
        bulk_max_wait: float = BULK_MAX_WAIT,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"catalog base URL must be an absolute http(s) URL, got {base_url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"catalog base URL must not carry a query or fragment, got {base_url!r}")
        key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        if not key.get_secret_value().strip():
            raise ValueError("catalog API key must not be empty")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if max_retry_after < 0:
            raise ValueError(f"max_retry_after must not be negative, got {max_retry_after}")
        if max_total_time <= 0:
            raise ValueError(f"max_total_time must be positive, got {max_total_time}")
        if not bulk_max_wait >= 0:
            raise ValueError(f"bulk_max_wait must not be negative, got {bulk_max_wait}")
        self.base_url = base_url.rstrip("/")
        # The URL path in front of `products`, for messages and logs that name the endpoint as the server sees it.
        self._base_path = urlsplit(self.base_url).path
        self._key = key
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.max_retry_after = max_retry_after
        self.max_total_time = max_total_time
        self.bulk_max_wait = bulk_max_wait
        self._limiter = limiter
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            headers={"x-api-key": key.get_secret_value(), "User-Agent": USER_AGENT, "Accept": "application/json"},
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            transport=transport,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, limiter: Limiter | None = None, bulk_max_wait: float = BULK_MAX_WAIT
    ) -> CatalogClient:
        """A client configured from `CATALOG_SYNC_CATALOG_*`; a missing key is a `ConfigError`. `bulk_max_wait`:
        the longest a bulk call waits for the budget (`ratelimit.bulk_wait` of the account)."""
        if settings.catalog_api_key is None or not settings.catalog_api_key.get_secret_value().strip():
            raise ConfigError("CATALOG_SYNC_CATALOG_API_KEY is not set: the catalog API needs its x-api-key")
        try:
            return cls(
                settings.catalog_url,
                settings.catalog_api_key,
                timeout=settings.catalog_timeout,
                max_attempts=settings.catalog_max_attempts,
                max_retry_after=settings.catalog_max_retry_after,
                bulk_max_wait=bulk_max_wait,
                limiter=limiter,
            )
        except ValueError as exc:
            raise ConfigError(f"CATALOG_SYNC_CATALOG_URL: {exc}") from None

    def __repr__(self) -> str:
        return f"CatalogClient(base_url={self.base_url!r}, api_key=SecretStr('**********'))"

    __str__ = __repr__

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- endpoints -------------------------------------------------------------------------------------------

    def upsert(
        self, product: ProductUpsert, files: Mapping[str, FileSpec] | None = None, *, priority: bool = False
    ) -> CatalogProduct:
        """Create or update `product`. JSON when `files` is empty; multipart when image bytes are shipped.

        Every fileKey must have a file and every file a fileKey; files over 10 MB are refused before sending.
        `priority` (a webhook, an admin command) may take the budget's reserve, ahead of bulk work.
        """
        if not isinstance(product, ProductUpsert):
            raise TypeError(f"upsert expects a ProductUpsert, got {type(product).__name__}")
        uploads = _prepare_files(product, files or {})
        body = product.payload_json()
        if uploads:
            response = self._request("POST", "products", priority=priority, data={DATA_FIELD: body}, files=uploads)
        else:
            response = self._request(
                "POST",
                "products",
                priority=priority,
                content=body.encode("utf-8"),
                headers={"Content-Type": "application/json"},
            )
        return self._parse(response, CatalogProduct)

    def get(self, external_id: str) -> CatalogProduct | None:
        """The product, or None when the catalog has no product with this id."""
        response = self._request("GET", _product_path(external_id), absent_ok=True)
        if response.status_code == 404:
            return None
        return self._parse(response, CatalogProduct)

    def delete(self, external_id: str, *, priority: bool = False) -> bool:
        """Remove the product; True when it existed, False when it was already gone (deleting is idempotent).

        A delete whose answer was lost and is retried reports False although this call removed it.
        """
        response = self._request("DELETE", _product_path(external_id), absent_ok=True, priority=priority)
        return response.status_code != 404

    def list_page(self, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None) -> CatalogPage:
        """One page of the catalog; pass the previous page's `next_cursor` to continue."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not MIN_PAGE_SIZE <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be an integer from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}, got {limit!r}")
        params: dict[str, str | int] = {"limit": limit}
        if cursor is not None:
            if not cursor:
                raise ValueError("cursor must be a non-empty nextCursor from a previous page, or None")
            params["cursor"] = cursor
        return self._parse(self._request("GET", "products", params=params), CatalogPage)

    def iter_products(self, limit: int = MAX_PAGE_SIZE) -> Iterator[CatalogProduct]:
        """Every product, page by page, until `nextCursor` is null or omitted or `hasMore` is false.

        A server that hands back the cursor it was just given would loop forever: that raises `SourceError`.
        """
        pages = CursorPaginator()
        while True:
            page = self.list_page(limit=limit, cursor=pages.token)
            yield from page.items
            if page.has_more is False:
                return
            pages.advance(page.next_cursor)
            if pages.finished:
                return

    # -- transport and retries -------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, absent_ok: bool = False, priority: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """Send with retries; return a 2xx response (or a 404 PRODUCT_NOT_FOUND when `absent_ok`)."""
        started = self._clock()

        def attempt() -> httpx.Response:
            return self._send_once(method, path, absent_ok=absent_ok, **kwargs)

        retrying = Retrying(
            retry=retry_if_exception(self._is_retryable),
            wait=self._wait,
            stop=lambda state: self._out_of_budget(state, started),
            sleep=self._sleep,
            # Before each attempt, not inside it: a limiter refusal (the wait would exceed the cap) is raised to
            # the caller as is, never retried.
            before=lambda state: self._acquire(priority),
            before_sleep=lambda state: self._log_retry(state, method, path),
            reraise=True,
        )
        response: httpx.Response = retrying(attempt)
        return response

    def _send_once(self, method: str, path: str, *, absent_ok: bool, **kwargs: Any) -> httpx.Response:
        begun = time.perf_counter()
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            _observe_call(method, path, "error", begun)
            # Timeouts, refused or dropped connections: upsert and delete are idempotent, so resending is safe.
            detail = str(exc) or "no detail"
            message = self._redact(f"catalog {method} {self._base_path}/{path}: {type(exc).__name__}: {detail}")
            raise RetryableError(message) from None
        _observe_call(method, path, str(response.status_code), begun)
        if response.is_success:
            return response
        error = error_for_response(response, redact=self._redact)
        if absent_ok and response.status_code == 404 and getattr(error, "code", None) == NOT_FOUND_CODE:
            return response
        if isinstance(error, RateLimited):
            cool_down = error.retry_after if error.retry_after is not None else DEFAULT_COOL_DOWN
            work_metrics.catalog_rate_limited.inc()
            if self._limiter is not None:
                work_metrics.catalog_cool_down_seconds.inc(cool_down)
                self._limiter.cool_down(cool_down)
        raise error

    def _is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, RateLimited):
            return exc.retry_after is None or exc.retry_after <= self.max_retry_after
        return isinstance(exc, RetryableError)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            # With a limiter the cool-down started in `_send_once` is waited out by the next `acquire`;
            # sleeping here as well would pay it twice.
            return 0.0 if self._limiter is not None else exc.retry_after
        return float(BACKOFF(state))

    def _out_of_budget(self, state: RetryCallState, started: float) -> bool:
        if state.attempt_number >= self.max_attempts:
            return True
        # Stop before a sleep that would end past the deadline rather than after a wasted wait.
        return self._clock() - started + state.upcoming_sleep > self.max_total_time

    def _acquire(self, priority: bool) -> None:
        if self._limiter is not None:
            begun = time.perf_counter()
            try:
                wait = self.max_retry_after if priority else min(self.max_retry_after, self.bulk_max_wait)
                self._limiter.acquire(max_wait=wait, priority=priority)
            finally:
                waited = time.perf_counter() - begun
                work_metrics.budget_wait_seconds.labels("priority" if priority else "bulk").observe(waited)

    def _log_retry(self, state: RetryCallState, method: str, path: str) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        status = getattr(exc, "status", None)
        log.warning(
            "catalog %s %s/%s failed (%s), attempt %d of %d; retrying in %.2fs: %s",
            method,
            self._base_path,
            path,
            status if status is not None else "no response",
            state.attempt_number,
            self.max_attempts,
            state.upcoming_sleep,
            exc,
            extra={
                "catalog_method": method,
                "catalog_path": f"{self._base_path}/{path}",
                "catalog_status": status,
                "catalog_attempt": state.attempt_number,
            },
        )

    def _parse(self, response: httpx.Response, model: type[Model]) -> Model:
        try:
            return model.model_validate_json(response.content)
        except ValueError as exc:
            request = response.request
            raise PermanentError(
                f"catalog {request.method} {request.url.path} answered {response.status_code} with a body that "
                f"is not a valid {model.__name__}: {_excerpt(str(exc))}"
            ) from None

    def _redact(self, text: str) -> str:
        secret = self._key.get_secret_value()
        return text.replace(secret, "**********") if secret else text


def field_path(loc: Sequence[int | str]) -> str:
    """A field's location as the catalog's `details[].path` writes it: `images[0].source.url`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(product)"


def _product_path(external_id: str) -> str:
    if not isinstance(external_id, str) or not external_id:
        raise ValueError(f"externalId must be a non-empty string, got {external_id!r}")
    quoted = quote(external_id, safe="")
    # URL normalization would resolve "." and ".." as path segments; escaped, they reach the API as ids.
    if quoted in (".", ".."):
        quoted = quoted.replace(".", "%2E")
    return f"products/{quoted}"


def _prepare_files(product: ProductUpsert, files: Mapping[str, FileSpec]) -> dict[str, tuple[str, bytes, str]]:
    """httpx `files=` entries, after checking that images and files match one to one and fit the size limit."""
    wanted = product.file_keys()
    missing = [key for key in wanted if key not in files]
    if missing:
        raise MissingFileError(
            f"images reference fileKey {', '.join(map(repr, missing))} but no such file was given to upsert()"
        )
    unused = sorted(set(files) - set(wanted))
    if unused:
        raise MissingFileError(f"files {', '.join(map(repr, unused))} are not referenced by any image's fileKey")
    uploads: dict[str, tuple[str, bytes, str]] = {}
    for key in wanted:
        spec = files[key]
        if isinstance(spec, bytes | bytearray):
            filename, data, content_type = key, bytes(spec), _sniff_image_type(spec)
        else:
            filename, data, content_type = spec
        if not data:
            raise ValueError(f"file {key!r} is empty")
        if len(data) > MAX_IMAGE_BYTES:
            raise ValueError(f"file {key!r} is {len(data)} bytes; the catalog accepts at most {MAX_IMAGE_BYTES}")
        uploads[key] = (filename, data, content_type)
    return uploads


def _sniff_image_type(data: bytes) -> str:
    """The content type of common image formats from their magic bytes, for uploads given as bare bytes."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
