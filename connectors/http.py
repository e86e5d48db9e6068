"""HTTP for connectors: one pooled client per connector, and one short retry loop for transient shop faults.

Shops fail in passing (a reset connection, a 502 from a proxy, a 429 with Retry-After). Those are retried here, a
few times and briefly; anything longer fails the read with `SourceError`, and the scheduled sync tries again later.
Platform-specific pacing (Shopify's cost bucket, call-limit headers) lives in the connector itself.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from config.redact import redact_url
from worker import __version__
from worker.errors import AuthError, RateLimited, RetryableError, SourceError

log = logging.getLogger(__name__)

USER_AGENT = f"catalog-sync/{__version__}"
# Tries of one shop request before the read fails; the next scheduled run starts over anyway.
MAX_ATTEMPTS = 5
# Exponential backoff base and cap for transient faults, seconds.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
# A Retry-After longer than this fails the read instead of holding a worker.
MAX_RETRY_AFTER = 60.0

Sleep = Callable[[float], None]


class RedactUrls(logging.Filter):
    """Masks credentials in the URLs httpx logs with every request (`HTTP Request: GET <url> …`, at INFO): feed
    URLs carry keys and passwords, and WooCommerce over plain HTTP carries its consumer key in the query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(str(arg)) if isinstance(arg, httpx.URL) or _looks_like_url(arg) else arg
                for arg in record.args
            )
        return True


def _looks_like_url(value: object) -> bool:
    return isinstance(value, str) and "://" in value


# On the logger itself, so it holds whatever handlers a process (CLI, worker, server) configures.
logging.getLogger("httpx").addFilter(RedactUrls())


def make_client(
    timeout: float = 30.0,
    *,
    headers: Mapping[str, str] | None = None,
    follow_redirects: bool = False,
    **kwargs: Any,
) -> httpx.Client:
    """A pooled client. Redirects are not followed unless asked: httpx strips only `Authorization` on a redirect to
    another host, so custom credential headers and query-string keys would travel along."""
    merged = {"User-Agent": USER_AGENT, **(headers or {})}
    return httpx.Client(timeout=timeout, headers=merged, follow_redirects=follow_redirects, **kwargs)


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int) -> float:
    """Full-jitter exponential backoff for the `attempt`-th retry (1-based)."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))


def send(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    what: str,
    sleep: Sleep = time.sleep,
    max_attempts: int = MAX_ATTEMPTS,
    ok_statuses: tuple[int, ...] = (),
    **kwargs: Any,
) -> httpx.Response:
    """Send a request, retrying connection faults, 5xx and 429 briefly.

    Returns any 2xx response and any status in `ok_statuses` (e.g. 404 for "gone"). 401/403 raise `AuthError`;
    other 4xx raise `SourceError`. `what` names the source in messages (never a credential).
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            if attempt >= max_attempts:
                raise SourceError(f"{what}: cannot reach {_safe(url)}: {type(exc).__name__}: {exc}") from None
            sleep(backoff_delay(attempt))
            continue
        status = response.status_code
        if status < 300 or status in ok_statuses:
            return response
        if status in (401, 403):
            raise AuthError(
                f"{what}: the shop refused our credentials ({status}); check the source's key/token and its "
                f"read access to products",
                status=status,
            )
        if status == 429 or status >= 500:
            wait = retry_after_seconds(response.headers.get("Retry-After")) if status == 429 else None
            if attempt >= max_attempts or (wait is not None and wait > MAX_RETRY_AFTER):
                error = RateLimited if status == 429 else RetryableError
                message = f"{what}: {_safe(url)} answered {status} {attempt} time(s); giving up for this run"
                if error is RateLimited:
                    raise RateLimited(message, retry_after=wait)
                raise SourceError(message) from RetryableError(message, status=status)
            sleep(wait if wait is not None else backoff_delay(attempt))
            continue
        raise SourceError(f"{what}: {_safe(url)} answered {status}: {_excerpt(response)}")


def _safe(url: str) -> str:
    """A URL without its query string, which may carry credentials (WooCommerce over HTTP)."""
    return url.split("?", 1)[0]


def _excerpt(response: httpx.Response, limit: int = 300) -> str:
    try:
        text = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return "(unreadable body)"
    return text[:limit].replace("\n", " ")
