"""Image URLs the catalog will be able to load.

The catalog fetches a product's image URLs later, when a shopper tries it on: a dead or private URL is accepted at
upsert and fails at try-on time (`PRODUCT_IMAGE_FETCH_FAILED`). So before a URL is first sent, and again when it
changes (a new URL is a new check), a sync run checks it: it must answer, with an `image/*` type, at most 10 MB.

How one URL is checked: HEAD, following redirects. When the server refuses HEAD (403, 405, 501) or leaves out the
type or the length, a GET of the first byte (`Range: bytes=0-0`), whose `Content-Range` gives the full size; a server
that ignores the range is read up to the limit and no further. Verdicts:

- usable: 2xx, `image/*`, at most `MAX_IMAGE_BYTES`;
- unusable, dropped with a reason: `http_<status>` for 4xx, `not_an_image` (another type), `too_large`,
  `unreachable` (no connection: unknown host, refused), `invalid_url`;
- undecided, kept: a timeout, 5xx or 429 says the host is having a bad moment, not that the image is gone, and
  dropping every image of a product would remove it from the catalog. Undecided URLs are not cached, so the next
  run checks them again.

Requests to one image host start at least `1 / host_rate` seconds apart (a shop's CDN should not see a burst from a
first sync); several hosts are checked at once by a small thread pool. The pacing is per process: one sync of a
source runs at a time, and sources rarely share an image host.

Verdicts are cached by URL in the state database (`image_checks`): a usable image is trusted for `OK_TTL`, an unusable
one is checked again after `BAD_TTL` (a URL that comes back to life is picked up by a later full run). A re-sync of
unchanged products therefore costs no request. This is written here rather than taken from a library because the
check is a few requests whose rules (what counts as dead, what to cache, how to pace per host) are this project's.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from worker.state import Store, utcnow

log = logging.getLogger(__name__)

# The catalog refuses images larger than this (vendor's product page).
MAX_IMAGE_BYTES = 10 * 1024 * 1024
# How long a usable image is trusted before it is checked again.
OK_TTL = timedelta(days=30)
# How long an unusable image stays dropped before it is given another chance.
BAD_TTL = timedelta(hours=12)
# Requests per second to one image host: at 5 images a product, about 4 products a second, well ahead of the
# catalog's default budget (100 requests a minute), so the check does not slow a first sync down.
HOST_RATE = 20.0
# Image hosts checked at the same time.
WORKERS = 8
# Seconds for one check request: an image host slower than this would fail a shopper's try-on too.
TIMEOUT = 10.0
# Statuses that say "not now" rather than "not there": the image is kept and checked again next run.
_UNDECIDED_STATUSES = frozenset({408, 425, 429})
# Statuses with which a server may refuse HEAD alone: 405/501 do not implement it, and a URL signed for GET (S3,
# GCS) answers HEAD with 403.
_NO_HEAD = frozenset({403, 405, 501})
# Bytes read per chunk when a server ignores the range and the size must be counted.
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class ImageVerdict:
    """What a check found. `ok` None means undecided (kept, not cached)."""

    url: str
    ok: bool | None
    reason: str | None = None
    content_type: str | None = None
    size: int | None = None

    def describe(self) -> str:
        """The reason in words, for skip details and logs."""
        if self.ok:
            return "usable"
        extra = []
        if self.reason == "not_an_image" and self.content_type:
            extra.append(self.content_type)
        if self.reason == "too_large" and self.size is not None:
            extra.append(f"{self.size / (1024 * 1024):.1f} MB")
        reason = self.reason or "undecided"
        return f"{reason} ({', '.join(extra)})" if extra else reason


@dataclass
class ImageCheckStats:
    """What a checker did: URLs asked about, answered from the cache, and HTTP requests sent."""

    urls: int = 0
    cache_hits: int = 0
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


class HostPacer:
    """Spaces the requests to each host by a minimum interval, across threads."""

    def __init__(self, rate: float, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._interval = 1.0 / rate
        self._sleep = sleep
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, host: str) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(host, now))
            self._next[host] = slot + self._interval
        if slot > now:
            self._sleep(slot - now)


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


class ImageChecker:
    """Checks image URLs (see the module docstring), cached in the state database."""

    def __init__(
        self,
        store: Store,
        *,
        client: httpx.Client | None = None,
        host_rate: float = HOST_RATE,
        workers: int = WORKERS,
        timeout: float = TIMEOUT,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._store = store
        self._client = client or httpx.Client(timeout=timeout, follow_redirects=True)
        self._owns_client = client is None
        self._pacer = HostPacer(host_rate, sleep=sleep)
        self._workers = workers
        self._clock = clock
        self.stats = ImageCheckStats()

    def __enter__(self) -> ImageChecker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def check(self, urls: Iterable[str]) -> dict[str, ImageVerdict]:
        """A verdict for each distinct URL: from the cache while fresh, else by asking its host."""
        wanted = list(dict.fromkeys(urls))
        if not wanted:
            return {}
        now = self._clock()
        cached = self._store.image_checks([url_hash(url) for url in wanted])
        verdicts: dict[str, ImageVerdict] = {}
        to_check: list[str] = []
        for url in wanted:
            row = cached.get(url_hash(url))
            if row is not None and row.url == url and now - row.checked_at < (OK_TTL if row.ok else BAD_TTL):
                verdicts[url] = ImageVerdict(url, row.ok, row.reason, row.content_type, row.size)
            else:
                to_check.append(url)
        self.stats.add(urls=len(wanted), cache_hits=len(wanted) - len(to_check))
        if to_check:
            with ThreadPoolExecutor(max_workers=min(self._workers, len(to_check))) as pool:
                fresh = list(pool.map(self.check_one, to_check))
            verdicts.update((verdict.url, verdict) for verdict in fresh)
            self._store.record_image_checks([_row(verdict, now) for verdict in fresh if verdict.ok is not None])
            for verdict in fresh:
                if verdict.ok is False:
                    log.info("image %s is unusable: %s", verdict.url, verdict.describe())
        return verdicts

    def check_one(self, url: str) -> ImageVerdict:
        """Ask the host about one URL (no cache)."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError:
            return ImageVerdict(url, False, "invalid_url")
        if not host or parts.scheme.lower() not in ("http", "https"):
            return ImageVerdict(url, False, "invalid_url")
        try:
            head = self._send(self._client.build_request("HEAD", url), host)
            verdict = _judge(url, head.status_code, head.headers, size=_length(head.headers))
            if verdict is not None:
                return verdict
            return self._ranged_get(url, host)
        except httpx.TimeoutException:
            return ImageVerdict(url, None, "timeout")
        except (httpx.ConnectError, httpx.UnsupportedProtocol, httpx.TooManyRedirects):
            return ImageVerdict(url, False, "unreachable")
        except (httpx.HTTPError, httpx.InvalidURL):
            return ImageVerdict(url, None, "transport_error")

    def _send(self, request: httpx.Request, host: str, *, stream: bool = False) -> httpx.Response:
        self._pacer.wait(host)
        self.stats.add(requests=1)
        return self._client.send(request, stream=stream)

    def _ranged_get(self, url: str, host: str) -> ImageVerdict:
        request = self._client.build_request("GET", url, headers={"Range": "bytes=0-0"})
        response = self._send(request, host, stream=True)
        try:
            size = _range_total(response.headers.get("Content-Range")) if response.status_code == 206 else None
            if size is None and response.status_code == 200:
                size = _length(response.headers)
                if size is None and _is_image(response.headers):
                    size = _count(response)
            verdict = _judge(url, response.status_code, response.headers, size=size, final=True)
            assert verdict is not None
            return verdict
        finally:
            response.close()


def _judge(
    url: str, status: int, headers: httpx.Headers, *, size: int | None, final: bool = False
) -> ImageVerdict | None:
    """The verdict from one response; None when HEAD could not tell and the ranged GET should."""
    content_type = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower() or None
    if status in _NO_HEAD and not final:
        return None
    if status in _UNDECIDED_STATUSES or status >= 500:
        return ImageVerdict(url, None, f"http_{status}")
    if status >= 400:
        return ImageVerdict(url, False, f"http_{status}")
    if status >= 300:
        # A redirect httpx did not follow (no Location): nothing to load.
        return ImageVerdict(url, False, f"http_{status}")
    if content_type is None and not final:
        return None
    if content_type is None or not content_type.startswith("image/"):
        return ImageVerdict(url, False, "not_an_image", content_type, size)
    if size is not None and size > MAX_IMAGE_BYTES:
        return ImageVerdict(url, False, "too_large", content_type, size)
    if size is None and not final:
        return None
    return ImageVerdict(url, True, None, content_type, size)


def _is_image(headers: httpx.Headers) -> bool:
    return (headers.get("Content-Type") or "").strip().lower().startswith("image/")


def _length(headers: httpx.Headers) -> int | None:
    value = headers.get("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _range_total(value: str | None) -> int | None:
    """The full size from `Content-Range: bytes 0-0/12345`; None when unknown (`*`)."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _count(response: httpx.Response) -> int:
    """The body's size, reading no more than one byte past the limit."""
    seen = 0
    for chunk in response.iter_raw(_CHUNK):
        seen += len(chunk)
        if seen > MAX_IMAGE_BYTES:
            break
    return seen


def _row(verdict: ImageVerdict, now: datetime) -> dict[str, Any]:
    return {
        "url_hash": url_hash(verdict.url),
        "url": verdict.url,
        "ok": bool(verdict.ok),
        "reason": verdict.reason,
        "content_type": (verdict.content_type or "")[:128] or None,
        "size": verdict.size,
        "checked_at": now,
    }


__all__ = [
    "MAX_IMAGE_BYTES",
    "HostPacer",
    "ImageCheckStats",
    "ImageChecker",
    "ImageVerdict",
    "url_hash",
]
