"""The WooCommerce connector (`kind = "woocommerce"`): REST API v3 reads and webhook verification.

Reading `GET {url}/wp-json/wc/v3/products`:

- Two listings per run: WooCommerce's default `status=any` (every status but the trash) and `status=trash`, so an
  incremental run also sees products trashed since the last run when their `product.deleted` webhook was lost
  (WooCommerce never retries a webhook). Status `publish` is active; `draft`, `pending`, `private` and `future` are
  drafts; `trash` is archived.
- Each listing is `orderby=modified&order=asc&per_page=100&dates_are_gmt=true`, walked as a keyset on the
  modification time: the next request asks for `modified_after` = the newest modification read so far, and products
  already read at that second are skipped. Page numbers alone skip a product whenever another one is edited or
  trashed during the read (the rest of the list shifts up a slot under the reader), and a full sync would then
  delete a live product; the keyset does not shift. `page=N` is still used inside one second that holds more than a
  page of products (bulk imports), and a listing ends on an empty page or when `X-WP-TotalPages` says the page was
  the last. WooCommerce's filter is strict and keeps whole seconds, so we ask for one second before what we want and
  keep everything from the second of `since` on: reading one product twice is harmless, missing one is not.
- A store that ignores `modified_after` (WooCommerce before 5.8 answers with older products) is detected and read
  by page numbers instead, filtering by date on our side.
- A variable product costs one more request, `/products/{id}/variations?per_page=100`: its enabled variations'
  images are appended after the product's own, without repeats, at most 10 in all. For a source that splits
  products by a variation attribute (`split_by`) the product has, every enabled variation is read instead, page by
  page, and kept (attributes, image, price) for `connectors.colourways`.
- WooCommerce orders by local modification time and filters by GMT; in the hour a daylight-saving clock goes back
  the two disagree and an incremental run may miss a product edited in that hour (the next full sync reads it).

Credentials: over HTTPS, HTTP Basic with the consumer key and secret. When the store answers 401
`woocommerce_rest_cannot_view` (it saw no credentials: many PHP setups drop the `Authorization` header) the
connector signs with OAuth 1.0a instead and keeps whichever worked. Over plain HTTP, WooCommerce ignores Basic and
query-string keys (it accepts them only when `is_ssl()`, see `WC_REST_Authentication::authenticate`) and requires
OAuth 1.0a one-legged signatures in the query string, which is what we send: the secret never travels, but the
consumer key and every product do, in clear, which `warnings()` says. No credential is ever put in a URL we log.

Webhooks: `X-WC-Webhook-Signature` is the base64 HMAC-SHA256 of the raw body under the webhook secret (WooCommerce
first decodes HTML entities in the stored secret, so both forms are tried). The ping WooCommerce sends when a
webhook is created (form body `webhook_id=N`) is *not* signed (`WC_Webhook::deliver_ping` adds no signature header)
and must be answered 200, so an unsigned body that is exactly `webhook_id=<digits>` is accepted as a ping: it carries
no product data and triggers nothing, so a forged one gains nothing. Everything else must be signed. WooCommerce's
delivery id is a hash of the webhook id and the current *second*, so two deliveries of one webhook in the same second
share it; the event id is therefore the delivery id plus a digest of the body, which only collapses true repeats.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NoReturn
from urllib.parse import quote, urljoin, urlsplit

import httpx
from pydantic import SecretStr

from config.sources import SourceConfig, WooCommerceSource
from connectors.base import (
    ImageRef,
    ProductStatus,
    SourceProduct,
    Variant,
    WebhookEvent,
    html_to_text,
    is_deletion_body,
    json_payload,
    normalize_images,
    parse_datetime,
    platform_id,
    split_tags,
)
from connectors.colourways import matches_option
from connectors.http import Clock, HttpConnector, Sleep, excerpt, send
from connectors.paging import ListPage, PageNumberPaginator
from connectors.subscriptions import ACTIVE, Subscription
from ground.errors import AuthError, ConfigError, InvalidSignature, SkippedProduct, SourceError
from ground.limits import MAX_IMAGES
from ground.paging import Paginator, iter_pages

__all__ = [
    "API_PATH",
    "WEBHOOK_TOPICS",
    "WooCommerceConnector",
    "check_webhook_signature",
    "is_ping",
    "normalize_product",
    "oauth1_base_string",
    "oauth1_signature",
    "parse_webhook",
    "webhook_signature",
]

log = logging.getLogger(__name__)


# The REST API v3 root, below the store's base URL.
API_PATH: Final = "/wp-json/wc/v3"
# WooCommerce refuses per_page above 100 (rest_invalid_param).
MAX_PAGE_SIZE: Final = 100
# Statuses WooCommerce lists by default (`any` leaves out the trash), then the trash itself.
LISTINGS: Final = ("any", "trash")
STATUS_MAP: Final[Mapping[str, ProductStatus]] = {
    "publish": "active",
    "draft": "draft",
    "pending": "draft",
    "private": "draft",
    "future": "draft",
    "trash": "archived",
}
UPSERT_TOPICS: Final = frozenset({"product.created", "product.updated", "product.restored", "product.published"})
DELETE_TOPIC: Final = "product.deleted"
# WooCommerce accepts HMAC-SHA1 and HMAC-SHA256; the stronger one.
OAUTH_SIGNATURE_METHOD: Final = "HMAC-SHA256"
# The category WooCommerce assigns when none is chosen: it says nothing about the product.
DEFAULT_CATEGORY_SLUG: Final = "uncategorized"
# The product topics catalog-sync needs delivered (`product.restored` brings a product back from the trash).
WEBHOOK_TOPICS: Final = ("product.created", "product.updated", "product.deleted", "product.restored")
# Webhooks per listing page when looking for ours.
WEBHOOK_PAGE_SIZE: Final = 100
# Refusals of the webhooks endpoints by the key's user's capabilities (wc_rest_check_manager_permissions).
_WEBHOOK_REFUSALS: Final = frozenset(
    {"woocommerce_rest_cannot_create", "woocommerce_rest_cannot_edit", "woocommerce_rest_cannot_delete"}
)
# The creation ping's whole body (WC_Webhook::deliver_ping).
_PING_BODY: Final = re.compile(rb"webhook_id=[0-9]{1,20}")
_SIGNATURE_MESSAGE: Final = "the X-WC-Webhook-Signature header is missing or does not match the webhook secret"
# Error codes whose WooCommerce message needs the operator's next step beside it.
_ERROR_HINTS: Final[Mapping[str, str]] = {
    "woocommerce_rest_authentication_error": (
        "check the consumer key and secret (WooCommerce → Settings → Advanced → REST API), that the key has Read "
        "permission, that `url` is the store's own address (OAuth signatures cover it) and that our clock is right"
    ),
    "woocommerce_rest_authentication_missing_parameter": "the store received an incomplete OAuth 1.0a signature",
    "rest_no_route": (
        "there is no WooCommerce REST API v3 at this address: check `url` is the store's home address, that "
        "WooCommerce 3.5 or later is active and that permalinks are not set to Plain"
    ),
    "rest_invalid_param": "the store refused a query parameter; WooCommerce 5.8 or later is needed for modified_after",
    "woocommerce_rest_product_invalid_id": "the product does not exist",
}
_HTML_SPECIALCHARS: Final = (
    ("&lt;", "<"),
    ("&gt;", ">"),
    ("&quot;", '"'),
    ("&#039;", "'"),
    ("&#39;", "'"),
    ("&#x27;", "'"),
    ("&amp;", "&"),
)
# Characters left as they are when repairing an image URL: the reserved set, and '%' so encoded URLs stay encoded.
_URL_SAFE: Final = ":/?#[]@!$&'()*+,;=%~"
_ONE_SECOND: Final = timedelta(seconds=1)
# Modification dates before this year are placeholders, not dates.
MIN_YEAR: Final = 1970


# --- normalization -----------------------------------------------------------------------------------------------


def normalize_product(source: str, raw: Mapping[str, Any], extra_images: Iterable[ImageRef] = ()) -> SourceProduct:
    """One REST v3 product as a `SourceProduct`; raises `SkippedProduct` for a record the catalog cannot use.

    `extra_images` (a variable product's variation images) come after the product's own images.
    """
    product_id = _product_id(raw)
    if product_id is None:
        raise SkippedProduct(None, "missing_id", "the record has no numeric `id`")
    if raw.get("type") == "variation":
        raise SkippedProduct(product_id, "variation", "a variation is part of its parent product")
    updated_at = _modified(raw)
    if updated_at is None:
        raise SkippedProduct(product_id, "missing_updated_at", "no readable date_modified_gmt")
    title = html_to_text(_text(raw.get("name")))
    if not title:
        raise SkippedProduct(product_id, "no_title", "the product has no name")
    status = STATUS_MAP.get(_text(raw.get("status")), "draft")
    description = html_to_text(_text(raw.get("description"))) or html_to_text(_text(raw.get("short_description")))
    own = [_image_ref(entry, _text(raw.get("permalink"))) for entry in _list(raw.get("images"))]
    images = normalize_images([image for image in (*own, *extra_images) if image is not None])
    categories = _names(raw.get("categories"), skip_slug=DEFAULT_CATEGORY_SLUG)
    tags = split_tags(_names(raw.get("tags")))
    # Brands (WooCommerce 9.6+) are the nearest thing to a vendor.
    brands = _names(raw.get("brands"))
    return SourceProduct(
        source=source,
        product_id=product_id,
        updated_at=updated_at,
        status=status,
        title=title,
        description=description,
        images=images,
        url=_text(raw.get("permalink")) or None,
        vendor=next((name for name in brands if name), None),
        product_type=categories[0] if categories else None,
        tags=tags,
        handle=_text(raw.get("slug")) or None,
        categories=_category_keys(raw.get("categories")),
        attributes=_attributes(raw, categories),
        raw_ref=f"{API_PATH}/products/{product_id}",
    )


def variation_images(variations: Iterable[Any], base: str = "") -> list[ImageRef]:
    """The images of a product's enabled variations, in order (disabled variations are `private`)."""
    images: list[ImageRef] = []
    for variation in variations:
        if not isinstance(variation, Mapping) or variation.get("status", "publish") != "publish":
            continue
        image = _image_ref(variation.get("image"), base)
        if image is not None:
            images.append(image)
    return images


def variation_options(raw: Mapping[str, Any], split_by: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A variable product's variation attributes (`(name, values)`) when one of them is the one `split_by` names
    (by name, `Color`, or taxonomy, `pa_color`); empty otherwise, and the product stays one product."""
    options: list[tuple[str, tuple[str, ...]]] = []
    found = False
    for attribute in _list(raw.get("attributes")):
        if not isinstance(attribute, Mapping) or attribute.get("variation") is False:
            continue
        name = html_to_text(_text(attribute.get("name")))
        if not name:
            continue
        found = found or any(matches_option(key, split_by) for key in (name, _text(attribute.get("slug"))))
        values = tuple(text for value in _list(attribute.get("options")) if (text := html_to_text(_text(value))))
        options.append((name, values))
    return tuple(options) if found else ()


def variation_variant(variation: Mapping[str, Any], base: str = "") -> Variant:
    """One variation's attribute values, image and price."""
    options = tuple(
        (name, value)
        for attribute in _list(variation.get("attributes"))
        if isinstance(attribute, Mapping)
        and (name := html_to_text(_text(attribute.get("name"))))
        and (value := html_to_text(_text(attribute.get("option"))))
    )
    price = variation.get("price")
    return Variant(options, _image_ref(variation.get("image"), base), str(price) if price not in (None, "") else None)


def _attributes(raw: Mapping[str, Any], categories: Sequence[str]) -> dict[str, str]:
    """Volatile and secondary fields a source's `metadata_fields` may copy into the catalog."""
    out: dict[str, str] = {}
    for name in ("sku", "price", "regular_price", "sale_price", "stock_status", "type"):
        value = raw.get(name)
        if value not in (None, ""):
            out[name] = str(value)
    if categories:
        out["categories"] = ", ".join(categories)
    return out


def _category_keys(terms: Any) -> tuple[str, ...]:
    """Each category's name and slug, so a source filter may name either."""
    keys: list[str] = []
    for term in _list(terms):
        if isinstance(term, Mapping):
            for key in (html_to_text(_text(term.get("name"))), _text(term.get("slug")).strip()):
                if key and key not in keys:
                    keys.append(key)
    return tuple(keys)


def _names(terms: Any, *, skip_slug: str | None = None) -> list[str]:
    """The plain-text names of a list of terms (`[{"id", "name", "slug"}]`)."""
    names = [
        html_to_text(_text(term.get("name")))
        for term in _list(terms)
        if isinstance(term, Mapping) and (skip_slug is None or term.get("slug") != skip_slug)
    ]
    return [name for name in names if name]


def _product_id(raw: Mapping[str, Any]) -> str | None:
    return platform_id(raw.get("id"))


def _modified(raw: Mapping[str, Any]) -> datetime | None:
    """`date_modified_gmt` (WooCommerce writes it without an offset) as aware UTC, to the second."""
    for name in ("date_modified_gmt", "date_created_gmt"):
        value = raw.get(name)
        if isinstance(value, str):
            parsed = parse_datetime(value)
            # WordPress writes 0000-00-00 for "no date"; anything before 1970 is such a placeholder, and would
            # overflow the paging arithmetic one second below it.
            if parsed is not None and parsed.year >= MIN_YEAR:
                return parsed.replace(microsecond=0)
    return None


def _image_ref(entry: Any, base: str) -> ImageRef | None:
    if not isinstance(entry, Mapping):
        return None
    url = _image_url(_text(entry.get("src")), base)
    if url is None:
        return None
    alt = html_to_text(_text(entry.get("alt"))) or None
    return ImageRef(url, alt)


def _image_url(src: str, base: str) -> str | None:
    """An absolute, percent-encoded http(s) URL, or None: media plugins hand out protocol-relative and relative
    paths, and file names with spaces or accents, which the catalog cannot fetch as they are."""
    src = src.strip()
    if not src:
        return None
    if src.startswith("//"):
        src = "https:" + src
    elif not src.lower().startswith(("http://", "https://")):
        if not base.lower().startswith(("http://", "https://")):
            return None
        src = urljoin(base, src)
    if urlsplit(src).scheme.lower() not in ("http", "https"):
        return None
    return quote(src, safe=_URL_SAFE)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# --- OAuth 1.0a ---------------------------------------------------------------------------------------------------


def _percent(value: str) -> str:
    """RFC 3986 percent-encoding (PHP's rawurlencode), as OAuth 1.0a requires."""
    return quote(value, safe="-._~")


def oauth1_base_string(method: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """The RFC 5849 §3.4.1 signature base string. `url` is the request URL without its query (scheme, host, the
    port only when not the default, path); `params` are every query (and form) parameter plus the `oauth_*` ones."""
    pairs = sorted((_percent(name), _percent(value)) for name, value in params)
    normalized = "&".join(f"{name}={value}" for name, value in pairs)
    return "&".join((method.upper(), _percent(url), _percent(normalized)))


def oauth1_signature(
    method: str,
    url: str,
    params: Iterable[tuple[str, str]],
    consumer_secret: str,
    *,
    token_secret: str = "",
    signature_method: str = OAUTH_SIGNATURE_METHOD,
) -> str:
    """The base64 HMAC signature of a request. WooCommerce has no token: its key is `consumer_secret&`."""
    algorithms = {"HMAC-SHA1": hashlib.sha1, "HMAC-SHA256": hashlib.sha256}
    if signature_method not in algorithms:
        raise ValueError(f"unsupported OAuth signature method {signature_method!r}")
    key = f"{_percent(consumer_secret)}&{_percent(token_secret)}".encode()
    digest = hmac.new(key, oauth1_base_string(method, url, params).encode(), algorithms[signature_method]).digest()
    return base64.b64encode(digest).decode("ascii")


class _OAuth1(httpx.Auth):
    """One-legged OAuth 1.0a with the parameters in the query string, the way WooCommerce reads them."""

    def __init__(self, key: SecretStr, secret: SecretStr, *, clock: Clock, nonce: Callable[[], str]) -> None:
        self._key = key
        self._secret = secret
        self._clock = clock
        self._nonce = nonce

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        url = request.url
        port = f":{url.port}" if url.port is not None else ""
        base = f"{url.scheme}://{url.host}{port}{url.raw_path.split(b'?', 1)[0].decode('ascii')}"
        oauth = {
            "oauth_consumer_key": self._key.get_secret_value(),
            "oauth_nonce": self._nonce(),
            "oauth_signature_method": OAUTH_SIGNATURE_METHOD,
            "oauth_timestamp": str(int(self._clock())),
        }
        params = [*url.params.multi_items(), *oauth.items()]
        oauth["oauth_signature"] = oauth1_signature(request.method, base, params, self._secret.get_secret_value())
        request.url = url.copy_merge_params(oauth)
        yield request

    def __repr__(self) -> str:
        return "_OAuth1()"


# --- webhooks -----------------------------------------------------------------------------------------------------


def webhook_signature(body: bytes, secret: str) -> str:
    """What WooCommerce puts in `X-WC-Webhook-Signature`: base64 HMAC-SHA256 of the raw body (WC_Webhook)."""
    return base64.b64encode(hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()).decode("ascii")


def _secret_forms(secret: str) -> list[str]:
    """The secret as configured and as WooCommerce signs with it (`wp_specialchars_decode(secret, ENT_QUOTES)`)."""
    decoded = secret
    for entity, char in _HTML_SPECIALCHARS:
        decoded = decoded.replace(entity, char)
    return [secret] if decoded == secret else [secret, decoded]


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def is_ping(headers: Mapping[str, str], body: bytes) -> bool:
    """WooCommerce's creation ping: exactly `webhook_id=<digits>` and no topic header (it sends none)."""
    return _PING_BODY.fullmatch(body.strip()) is not None and not _lowered(headers).get("x-wc-webhook-topic")


def check_webhook_signature(headers: Mapping[str, str], body: bytes, secrets_: Sequence[SecretStr]) -> None:
    """Raise `InvalidSignature` unless `X-WC-Webhook-Signature` matches `body` under one of the secrets.

    Every candidate is compared, match or not, so timing does not tell which matched; the message is the same
    whatever was wrong. An empty secret is never accepted: anyone can compute an HMAC under it.
    """
    given = _lowered(headers).get("x-wc-webhook-signature")
    usable = [s.get_secret_value() for s in secrets_ if s.get_secret_value()]
    if not given or not usable:
        raise InvalidSignature(_SIGNATURE_MESSAGE)
    try:
        given_bytes = given.strip().encode("ascii")
    except UnicodeEncodeError:
        raise InvalidSignature(_SIGNATURE_MESSAGE) from None
    matched = False
    for secret in usable:
        for form in _secret_forms(secret):
            matched |= hmac.compare_digest(webhook_signature(body, form).encode("ascii"), given_bytes)
    if not matched:
        raise InvalidSignature(_SIGNATURE_MESSAGE)


def parse_webhook(source: str, headers: Mapping[str, str], body: bytes, secrets_: Sequence[SecretStr]) -> WebhookEvent:
    """Verify one delivery and parse it; nothing is read from the body before the signature checks out.

    Raises `InvalidSignature`, or `SkippedProduct` (`unknown_topic`, `malformed_payload`, or the product's own
    reason) for a verified delivery we cannot use.
    """
    lowered = _lowered(headers)
    if "x-wc-webhook-signature" not in lowered and is_ping(headers, body):
        return WebhookEvent(source=source, topic="ping", product_id=None, platform_topic="ping")
    check_webhook_signature(headers, body, secrets_)
    topic = (lowered.get("x-wc-webhook-topic") or "").strip().lower()
    if not topic and is_ping(headers, body):
        return WebhookEvent(source=source, topic="ping", product_id=None, platform_topic="ping")
    if topic not in UPSERT_TOPICS and topic != DELETE_TOPIC:
        raise SkippedProduct(None, "unknown_topic", f"WooCommerce topic {topic!r} is not a product topic")
    payload = json_payload(body, topic)
    product_id = _product_id(payload)
    if product_id is None:
        raise SkippedProduct(None, "malformed_payload", f"{topic} body has no numeric `id`")
    delivery = (lowered.get("x-wc-webhook-delivery-id") or "").strip()
    event_id = f"{delivery}:{hashlib.sha256(body).hexdigest()[:16]}" if delivery else None
    common: dict[str, Any] = {"source": source, "event_id": event_id, "platform_topic": topic}
    if topic == DELETE_TOPIC and is_deletion_body(payload):
        return WebhookEvent(topic="delete", product_id=product_id, **common)
    parent = _product_id({"id": payload.get("parent_id")})
    if payload.get("type") == "variation" and parent is not None:
        # A variation's change is its parent's: fetch the parent whole.
        return WebhookEvent(topic="upsert", product_id=parent, updated_at=_modified(payload), **common)
    product = normalize_product(source, payload)
    # A variable product's payload lacks its variations' images: the worker fetches it with get_product.
    complete = not (payload.get("type") == "variable" and _list(payload.get("variations")))
    return WebhookEvent(
        topic="upsert",
        product_id=product_id,
        updated_at=product.updated_at,
        product=product if complete else None,
        **common,
    )


# --- the connector ------------------------------------------------------------------------------------------------


class WooCommerceConnector(HttpConnector):
    """A WooCommerce store over REST API v3. See the module docstring for paging, credentials and webhooks."""

    kind = "woocommerce"

    def __init__(
        self,
        source: SourceConfig,
        client: httpx.Client | None = None,
        *,
        sleep: Sleep = time.sleep,
        clock: Clock = time.time,
        nonce: Callable[[], str] | None = None,
    ) -> None:
        if not isinstance(source, WooCommerceSource):
            raise SourceError(
                f"source {source.name!r} has kind {source.kind!r}; WooCommerceConnector reads 'woocommerce'"
            )
        parts = urlsplit(source.url.strip())
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise SourceError(f"source {source.name!r}: url {source.url!r} is not an http(s) store address")
        self.config = source
        self.source = source.name
        self.store_url = source.url.strip().rstrip("/")
        self.secure = parts.scheme.lower() == "https"
        self.page_size = min(source.page_size or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
        super().__init__(client, timeout=source.timeout)
        self._sleep = sleep
        self._what = f"WooCommerce source {source.name!r}"
        oauth = _OAuth1(
            source.consumer_key, source.consumer_secret, clock=clock, nonce=nonce or (lambda: secrets.token_hex(16))
        )
        basic = httpx.BasicAuth(source.consumer_key.get_secret_value(), source.consumer_secret.get_secret_value())
        # In order of preference; the first that the store accepts is kept for the connector's life.
        self._auths: list[tuple[str, httpx.Auth]] = (
            [("Basic", basic), ("OAuth 1.0a", oauth)] if self.secure else [("OAuth 1.0a", oauth)]
        )
        self._auth_settled = False

    # -- public surface --

    def warnings(self) -> list[str]:
        """What an operator should know about this source's settings (printed by `catalog-sync sources`)."""
        notes: list[str] = []
        if not self.secure:
            notes.append(
                f"source {self.source!r}: the store is reached over plain http://, so WooCommerce requires OAuth 1.0a "
                "signatures: the consumer secret is never sent, but the consumer key and every product travel in "
                "clear and can be read or altered on the way; use an https:// url"
            )
        if self.config.page_size is not None and self.config.page_size > MAX_PAGE_SIZE:
            notes.append(
                f"source {self.source!r}: page_size {self.config.page_size} is above WooCommerce's maximum of "
                f"{MAX_PAGE_SIZE} per page; {MAX_PAGE_SIZE} is used"
            )
        return notes

    def iter_products(self, since: datetime | None = None) -> Iterator[SourceProduct | SkippedProduct]:
        """Every product changed at or after `since` (all when None), then trashed ones as archived."""
        for status in LISTINGS:
            yield from self._listing(status, since)

    def get_product(self, product_id: str) -> SourceProduct | None:
        """The product now, or None when the store has no such product (a trashed one comes back archived).

        A variation's id is not a catalog product and answers None too. Raises `SkippedProduct` when the product
        exists but cannot be used (no name).
        """
        if not product_id.isdigit() or int(product_id) <= 0:
            return None
        response = self._request(f"/products/{int(product_id)}", {}, ok_statuses=(404,))
        if response.status_code == 404:
            if self._error_code(response) == "woocommerce_rest_product_invalid_id":
                return None
            self._raise_for_error(response)
        raw = self._json(response)
        if not isinstance(raw, dict):
            raise SourceError(f"{self._what}: product {product_id} answered with a body that is not a JSON object")
        if raw.get("type") == "variation":
            return None
        return self._with_variations(normalize_product(self.source, raw), raw)

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """Verify `X-WC-Webhook-Signature` over the raw bytes (or recognize the unsigned creation ping), then parse."""
        return parse_webhook(self.source, headers, body, self.config.webhook_secrets)

    def __repr__(self) -> str:
        return f"WooCommerceConnector(source={self.source!r}, url={self.store_url!r})"

    # -- reading --

    def _listing(self, status: str, since: datetime | None) -> Iterator[SourceProduct | SkippedProduct]:
        """One status listing, walked as a modified-time keyset (see the module docstring)."""
        floor = since.astimezone(UTC).replace(microsecond=0) if since is not None else None
        pager = _ModifiedKeyset(floor, what=self._what)
        # Ids yielded at or after the window's start, with the modification yielded: skipped when read again unchanged.
        seen: dict[str, datetime] = {}
        resume_after: tuple[datetime, int] | None = None  # page-number fallback: what the keyset already yielded
        previous_ids: list[str] | None = None
        for page in iter_pages(pager, lambda position: self._list_page(status, position)):
            position = page.position
            if pager.ignores_keyset(page):
                log.warning(
                    "%s: the store ignores modified_after (WooCommerce before 5.8?); reading it page by page",
                    self._what,
                )
                resume_after = max(((m, int(pid)) for pid, m in seen.items()), default=None)
                continue
            if position.page == 1:
                # A new window (or the page-number fallback): earlier products cannot come back.
                previous_ids = None
                if position.keyset and position.after is not None:
                    seen = {pid: moment for pid, moment in seen.items() if moment >= position.after}
            ids = [pid for raw in page.items if (pid := _product_id(raw)) is not None]
            if previous_ids is not None and ids and ids == previous_ids:
                raise SourceError(
                    f"{self._what}: page {position.page} of the {status!r} listing repeated the previous page; "
                    f"the store (or a cache in front of it) ignores the `page` parameter"
                )
            previous_ids = ids
            for raw in page.items:
                pid, modified = _product_id(raw), _modified(raw)
                if modified is not None and floor is not None and modified < floor:
                    continue
                if pid is not None and modified is not None:
                    if seen.get(pid) == modified:
                        continue
                    if resume_after is not None and (modified, int(pid)) <= resume_after:
                        continue
                yield self._item(raw)
                if position.keyset and pid is not None and modified is not None:
                    seen[pid] = modified

    def _item(self, raw: Any) -> SourceProduct | SkippedProduct:
        if not isinstance(raw, Mapping):
            return SkippedProduct(None, "malformed_record", f"a list entry is {type(raw).__name__}, not an object")
        try:
            product = normalize_product(self.source, raw)
        except SkippedProduct as skipped:
            return skipped
        return self._with_variations(product, raw)

    def _with_variations(self, product: SourceProduct, raw: Mapping[str, Any]) -> SourceProduct:
        """A variable product with its variations' images after its own (checked first: a skipped record costs no
        request); for a source that splits by a variation attribute the product has, with its variations instead."""
        split_by = self.config.split_by
        options = variation_options(raw, split_by) if split_by and raw.get("type") == "variable" else ()
        if options:
            return replace(product, options=options, variants=self._variants(product, raw))
        extra = self._variation_images(product, raw)
        return replace(product, images=normalize_images((*product.images, *extra))) if extra else product

    def _list_page(self, status: str, position: _Position) -> _ListingPage:
        params: dict[str, str | int] = {
            "per_page": self.page_size,
            "page": position.page,
            "status": status,
            "orderby": "modified",
            "order": "asc",
            "dates_are_gmt": "true",
        }
        if position.after is not None:
            # Strictly after, to the second: one second earlier keeps the products of `position.after`'s second.
            params["modified_after"] = (position.after - _ONE_SECOND).strftime("%Y-%m-%dT%H:%M:%S")
        response = self._request("/products", params)
        return _ListingPage(self._page_of(response), _int_header(response, "X-WP-TotalPages"), position)

    def _variation_images(self, product: SourceProduct, raw: Mapping[str, Any]) -> list[ImageRef]:
        """A variable product's variation images, fetched only when it has variations and room for more images."""
        if raw.get("type") != "variable" or not _list(raw.get("variations")) or len(product.images) >= MAX_IMAGES:
            return []
        base = _text(raw.get("permalink"))
        own = {image.url for image in product.images}
        product_id = product.product_id
        images: list[ImageRef] = []
        for page in iter_pages(
            PageNumberPaginator(what=self._what), lambda number: self._variations(product_id, number)
        ):
            images.extend(variation_images(page.items, base))
            if len(own | {image.url for image in images}) >= MAX_IMAGES:
                break
        return images

    def _variants(self, product: SourceProduct, raw: Mapping[str, Any]) -> tuple[Variant, ...]:
        """Every enabled variation of the product (disabled ones are `private`), read page by page."""
        if not _list(raw.get("variations")):
            return ()
        base = _text(raw.get("permalink"))
        product_id = product.product_id
        variants: list[Variant] = []
        for page in iter_pages(
            PageNumberPaginator(what=self._what), lambda number: self._variations(product_id, number)
        ):
            variants.extend(
                variation_variant(v, base)
                for v in page.items
                if isinstance(v, Mapping) and v.get("status", "publish") == "publish"
            )
        return tuple(variants)

    def _variations(self, product_id: str, page: int) -> ListPage:
        response = self._request(
            f"/products/{product_id}/variations", {"per_page": MAX_PAGE_SIZE, "page": page}, ok_statuses=(404,)
        )
        if response.status_code == 404:
            # The product went away between the listing and this request: an empty page, its own record still stands.
            return ListPage(())
        return ListPage(self._page_of(response), _int_header(response, "X-WP-TotalPages"))

    # -- webhook subscriptions (connectors.subscriptions.SubscriptionApi) ------------------------------------------

    def webhook_topics(self) -> tuple[str, ...]:
        return WEBHOOK_TOPICS

    def list_subscriptions(self) -> list[Subscription]:
        """Every webhook of the store on a product topic we need, whatever its status (`status=all`)."""
        found: list[Subscription] = []
        for page in iter_pages(PageNumberPaginator(what=self._what), self._webhooks_page):
            for hook in page.items:
                subscription = self._subscription(hook)
                if subscription.topic in WEBHOOK_TOPICS:
                    found.append(subscription)
        return found

    def create_subscription(self, topic: str, url: str) -> Subscription:
        body = {
            "name": f"catalog-sync {self.source}: {topic}",
            "topic": topic,
            "delivery_url": url,
            "secret": self._webhook_secret(),
            "status": ACTIVE,
        }
        return self._subscription(self._json(self._request("/webhooks", {}, method="POST", body=body)))

    def update_subscription(self, subscription: Subscription, url: str) -> Subscription:
        # The secret goes along every time: WooCommerce never shows it, so this is how a rotated one gets there.
        body = {"delivery_url": url, "secret": self._webhook_secret(), "status": ACTIVE}
        path = f"/webhooks/{int(subscription.id)}"
        return self._subscription(self._json(self._request(path, {}, method="PUT", body=body)))

    def delete_subscription(self, subscription: Subscription) -> None:
        # Webhooks cannot be trashed (501 without force); 404: already gone, which is what was asked for.
        self._request(f"/webhooks/{int(subscription.id)}", {"force": "true"}, method="DELETE", ok_statuses=(404,))

    def _webhooks_page(self, page: int) -> ListPage:
        response = self._request("/webhooks", {"status": "all", "per_page": WEBHOOK_PAGE_SIZE, "page": page})
        return ListPage(self._page_of(response), _int_header(response, "X-WP-TotalPages"))

    def _webhook_secret(self) -> str:
        secret = self.config.webhook_secret
        if secret is None or not secret.get_secret_value():
            raise ConfigError(
                f"source {self.source!r}: webhook_secret is not set; WooCommerce signs deliveries with the secret "
                "given when the webhook is registered: set webhook_secret (a long random string) first"
            )
        return secret.get_secret_value()

    def _subscription(self, hook: Any) -> Subscription:
        number = _product_id(hook) if isinstance(hook, Mapping) else None
        if not isinstance(hook, Mapping) or number is None:
            raise SourceError(f"{self._what}: a webhook without an id: {str(hook)[:200]}")
        return Subscription(
            id=number,
            topic=_text(hook.get("topic")),
            url=_text(hook.get("delivery_url")),
            status=_text(hook.get("status")) or ACTIVE,
            name=_text(hook.get("name")),
        )

    # -- HTTP --

    def _request(
        self,
        path: str,
        params: Mapping[str, str | int],
        *,
        ok_statuses: tuple[int, ...] = (),
        method: str = "GET",
        body: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """Call an API path with the store's credentials (GET unless told), mapping WooCommerce error bodies to
        clear errors. A JSON `body` is not part of an OAuth 1.0a signature: WooCommerce signs query parameters."""
        url = f"{self.store_url}{API_PATH}{path}"
        while True:
            name, auth = self._auths[0]
            response = send(
                self._client,
                method,
                url,
                what=self._what,
                sleep=self._sleep,
                ok_statuses=(400, 401, 403, 404, 410, *ok_statuses),
                params=params,
                auth=auth,
                headers={"Accept": "application/json"},
                json=dict(body) if body is not None else None,
            )
            status = response.status_code
            if (
                status == 401
                and not self._auth_settled
                and len(self._auths) > 1
                and self._error_code(response) == "woocommerce_rest_cannot_view"
            ):
                # The store saw no credentials: the web server most likely dropped the Authorization header.
                log.info("%s: the store did not see %s credentials; signing with OAuth 1.0a instead", self._what, name)
                self._auths.pop(0)
                continue
            if status < 300 or (status in ok_statuses and status not in (401, 403)):
                self._auth_settled = True
                return response
            self._raise_for_error(response)

    def _error_code(self, response: httpx.Response) -> str | None:
        body = self._error_body(response)
        code = body.get("code") if body else None
        return code if isinstance(code, str) else None

    @staticmethod
    def _error_body(response: httpx.Response) -> dict[str, Any] | None:
        try:
            body = response.json()
        except (ValueError, RecursionError):
            return None
        return body if isinstance(body, dict) else None

    def _raise_for_error(self, response: httpx.Response) -> NoReturn:
        """Raise the error a WooCommerce error response (`{"code", "message", "data": {"status"}}`) stands for."""
        status = response.status_code
        body = self._error_body(response) or {}
        code = body.get("code") if isinstance(body.get("code"), str) else None
        message = str(body.get("message") or "")[:300]
        where = response.request.url.copy_with(query=None)
        said = f"{status} {code}: {message}" if code else f"{status}: {excerpt(response)}"
        redirect = self._redirect_note(response)
        if code == "woocommerce_rest_authentication_error" and "write permission" in message:
            raise AuthError(
                f"{self._what}: the REST key may only read ({where} answered {said}); registering webhooks needs a "
                "key with Read/Write permission: change the key's permissions (WooCommerce → Settings → Advanced → "
                "REST API) or create one for this command" + redirect,
                status=status,
                code=code,
            )
        if code in _WEBHOOK_REFUSALS or (code == "woocommerce_rest_cannot_view" and "/webhooks" in where.path):
            raise AuthError(
                f"{self._what}: the key's WordPress user may not manage webhooks ({where} answered {said}); create "
                "the key for a Shop Manager or an Administrator" + redirect,
                status=status,
                code=code,
            )
        if code == "woocommerce_rest_cannot_view":
            anonymous = status == 401
            raise AuthError(
                f"{self._what}: the REST key lacks read access to products ({where} answered {said}). "
                + (
                    "WooCommerce treated the request as anonymous: check the key exists with Read permission "
                    "(WooCommerce → Settings → Advanced → REST API); if it does, the store never saw our "
                    "credentials (a proxy or the web server drops them)"
                    if anonymous
                    else "The key's WordPress user may not read products: create the key for a Shop Manager or "
                    "an Administrator, with Read permission"
                )
                + redirect,
                status=status,
                code=code,
            )
        hint = _ERROR_HINTS.get(code or "", "")
        text = f"{self._what}: {where} answered {said}" + (f" ({hint})" if hint else "") + redirect
        if status in (401, 403):
            raise AuthError(text, status=status, code=code)
        raise SourceError(text)

    def _redirect_note(self, response: httpx.Response) -> str:
        if not response.history:
            return ""
        first, last = response.history[0].request.url, response.request.url
        if (first.scheme, first.host, first.port) == (last.scheme, last.host, last.port):
            return ""
        target = f"{last.scheme}://{last.host}" + (f":{last.port}" if last.port else "")
        return f"; the store redirected the request to {target}: set `url` to that address"

    def _page_of(self, response: httpx.Response) -> list[Any]:
        page = self._json(response)
        if not isinstance(page, list):
            raise SourceError(
                f"{self._what}: {response.request.url.copy_with(query=None)} answered a {type(page).__name__}, "
                "not the JSON array of a listing"
            )
        return page

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except (ValueError, RecursionError):  # not JSON, not UTF-8, a number too long, nesting too deep
            start = excerpt(response, 80)
            hint = ""
            if start.lstrip().startswith("<"):
                hint = " (an HTML page: a maintenance, security or caching plugin may answer instead of WooCommerce)"
            elif any(word in start for word in ("Warning", "Notice", "Deprecated")):
                hint = " (PHP messages before the JSON: turn off WP_DEBUG_DISPLAY on the store)"
            raise SourceError(
                f"{self._what}: {response.request.url.copy_with(query=None)} answered {response.status_code} with a "
                f"body that is not JSON: {start!r}{hint}"
            ) from None


@dataclass(frozen=True, slots=True)
class _Position:
    """Where a listing request starts: modified after `after` (None: unfiltered), at `page` within that window;
    `keyset` is False once the store was found to ignore `modified_after`."""

    after: datetime | None
    page: int = 1
    keyset: bool = True


@dataclass(frozen=True, slots=True)
class _ListingPage(ListPage):
    position: _Position = _Position(None)


class _ModifiedKeyset(Paginator[_ListingPage, _Position]):
    """WooCommerce's listing as a keyset on the modification time (see the module docstring): a page that ends a
    window's second moves the window to the newest modification read; within one second, page numbers. A store that
    ignores `modified_after` is read by page numbers from `floor` instead."""

    position_name = "listing position"

    def __init__(self, floor: datetime | None, *, what: str = "") -> None:
        super().__init__(_Position(floor), what=what)
        self._floor = floor
        self._newest: datetime | None = None

    def ignores_keyset(self, page: _ListingPage) -> bool:
        """Whether the store answered products older than the window it was asked for."""
        after = page.position.after
        return page.position.keyset and after is not None and any(_older(raw, after) for raw in page.items)

    def has_more(self, page: _ListingPage) -> bool:
        if self.ignores_keyset(page):
            return True
        return bool(page.items) and (page.total_pages is None or page.position.page < page.total_pages)

    def get_next(self, page: _ListingPage) -> _Position | None:
        position = page.position
        if self.ignores_keyset(page):
            return _Position(self._floor, keyset=False)
        if position.keyset:
            for raw in page.items:
                modified = _modified(raw) if _product_id(raw) is not None else None
                if modified is not None and (self._newest is None or modified > self._newest):
                    self._newest = modified
            if self._newest is not None and (position.after is None or self._newest > position.after):
                return _Position(self._newest)
        return replace(position, page=position.page + 1)


def _older(raw: Any, moment: datetime) -> bool:
    modified = _modified(raw) if isinstance(raw, Mapping) else None
    return modified is not None and modified < moment


def _int_header(response: httpx.Response, name: str) -> int | None:
    value = response.headers.get(name, "").strip()
    return int(value) if value.isdigit() else None
