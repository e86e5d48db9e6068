"""The emulator's state: accounts, faults, limits and stats, changed only by methods that never await."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import random
import secrets
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request

from emulators.catalog.contract import (
    CURSOR_SUM_HEX,
    CURSOR_VERSION,
    CatalogError,
    account_id,
    error_response,
    not_found,
    validation_failed,
)
from emulators.catalog.faults import DROP, PASS, Faults, FixedWindow, TokenBucket, Verdict
from emulators.catalog.products import Account, Image, Omitted, Product, UpsertSpec


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

    def admit(self, api_key: str | None = None) -> Verdict:
        """Decide the fate of one API request (sent with `api_key`): served, dropped, or answered with a fault."""
        faults = self.faults
        if faults.drop_next:
            self.faults = faults.model_copy(update={"drop_next": faults.drop_next - 1})
            return DROP
        if faults.fail_next:
            self.faults = faults.model_copy(update={"fail_next": faults.fail_next - 1})
            self.stats.injected_errors += 1
            return Verdict("respond", error_response(503, "SERVICE_UNAVAILABLE", "Injected fault: fail_next."))
        if faults.account_limit is not None and api_key in self.accounts:
            window = self._windows.get(api_key)
            if window is None:
                window = self._windows[api_key] = FixedWindow(faults.account_limit, faults.account_window)
            if window.take(self.monotonic()) > 0:
                self.stats.rate_limited += 1
                message = f"Rate limit exceeded: {faults.account_limit} requests per {faults.account_window:g} s."
                return Verdict("respond", error_response(429, "RATE_LIMITED", message))
        headers: dict[str, str] | None = None
        if self._bucket is not None:
            wait = self._bucket.take(self.monotonic())
            headers = self._bucket.headers()
            if wait > 0:
                self.stats.rate_limited += 1
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
                message = f"Rate limit of {faults.rate_limit:g} requests/s exceeded; retry after the Retry-After delay."
                return Verdict("respond", error_response(429, "RATE_LIMITED", message, headers))
        if faults.drop_rate and self._rng.random() < faults.drop_rate:
            return DROP
        if faults.error_rate and self._rng.random() < faults.error_rate:
            self.stats.injected_errors += 1
            if self._rng.random() < 0.5:
                response = error_response(500, "INTERNAL_ERROR", "Injected fault: error_rate.", headers)
            else:
                response = error_response(503, "SERVICE_UNAVAILABLE", "Injected fault: error_rate.", headers)
            return Verdict("respond", response)
        return Verdict("pass", headers=headers) if headers else PASS

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
        if not key:
            raise CatalogError(401, "MISSING_API_KEY", "The x-api-key header is required.")
        account = self.accounts.get(key)
        if account is None:
            raise CatalogError(401, "INVALID_API_KEY", "The API key is not valid.")
        if self.faults.forbidden:
            raise CatalogError(403, "FORBIDDEN", "This API key may not access this resource.")
        return account

    def now(self) -> datetime:
        moment = self.clock()
        if moment.tzinfo is None:
            raise TypeError("the emulator's clock must return timezone-aware datetimes")
        return moment

    def product_count(self, api_key: str) -> int:
        return len(self.accounts[api_key])

    def upsert(self, account: Account, spec: UpsertSpec, uploads: Mapping[str, str]) -> tuple[Product, bool]:
        now = self.now()
        product = account.live(spec.external_id, now)
        created = product is None
        if product is None:
            if isinstance(spec.images, Omitted):
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
        if not isinstance(spec.title, Omitted):
            product.title = spec.title
        if not isinstance(spec.description, Omitted):
            product.description = spec.description
        if not isinstance(spec.images, Omitted):
            product.images = [
                Image(image.url or uploads[image.file_key or ""], image.role, image.classifications)
                for image in spec.images
            ]
        if not isinstance(spec.metadata, Omitted):
            product.metadata = spec.metadata
        if not isinstance(spec.auto_detect_image_roles, Omitted):
            product.auto_detect_image_roles = spec.auto_detect_image_roles
        if not isinstance(spec.valid_for_days, Omitted):
            product.valid_for_days = spec.valid_for_days
            product.expires_at = None if spec.valid_for_days is None else now + timedelta(days=spec.valid_for_days)
        product.render()
        return product, created

    def get(self, account: Account, external_id: str) -> Product:
        self.stats.gets += 1
        product = account.live(external_id, self.now())
        if product is None:
            raise not_found(external_id)
        return product

    def delete(self, account: Account, external_id: str) -> None:
        product = account.live(external_id, self.now())
        if product is None:
            raise not_found(external_id)
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
        invalid = validation_failed("cursor", "unknown cursor: pass the nextCursor of a previous page.")
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
