"""HTTP for connectors: one pooled client per connector, one status → error table, and one short retry loop for
transient shop faults.

Shops fail in passing (a reset connection, a 502 from a proxy, a 429 with Retry-After). Those are retried here by
tenacity, the only retry loop of this layer: a few times, within a total wait budget, honouring `Retry-After` up to
`MAX_RETRY_AFTER` and otherwise backing off exponentially with full jitter. Anything longer fails the read
(`RateLimited` for a 429, `SourceError` otherwise) and the scheduled sync tries again later. What a status means is
decided once, by `STATUS_ERRORS` and `error_class`. Platform-specific pacing (Shopify's cost bucket, call-limit
headers) lives in the connector itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Self, TypeVar

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception

from config.redact import redact_url
from ground.errors import AuthError, RateLimited, RetryableError, SourceError, SyncError
from ground.http import BACKOFF, USER_AGENT, retry_after_seconds

log = logging.getLogger(__name__)

# Tries of one shop request before the read fails; the next scheduled run starts over anyway.
MAX_ATTEMPTS: Final = 5
# A Retry-After longer than this fails the read instead of holding a worker.
MAX_RETRY_AFTER: Final = 60.0
# Seconds one request may spend waiting between its tries in all: a shop that keeps asking for the longest pause
# fails the read after two such waits rather than holding a worker for four.
MAX_TOTAL_WAIT: Final = 2 * MAX_RETRY_AFTER

# What the caller should do, by status; statuses not listed fall back by class in `error_class` (other 5xx: try
# again, other 4xx and unfollowed 3xx: the read fails). Transient ones are retried by `retrying` first.
STATUS_ERRORS: Final[Mapping[int, type[SyncError]]] = MappingProxyType(
    {
        401: AuthError,
        403: AuthError,
        429: RateLimited,
    }
)

# How connectors wait and read the time: injected, so tests run without waiting.
Sleep = Callable[[float], None]
Clock = Callable[[], float]
Result = TypeVar("Result")


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


class HttpConnector:
    """What owns a connector's HTTP client. A client the caller gives is theirs to close; otherwise one is made on
    first use (a connector that only checks webhooks, or a feed read from a file, opens no pool) and `close()`
    closes it. A connector is also a context manager that closes on exit."""

    def __init__(self, client: httpx.Client | None, *, timeout: float) -> None:
        self._given_client = client is not None
        self._open_client = client
        self._timeout = timeout

    @property
    def _client(self) -> httpx.Client:
        if self._open_client is None:
            self._open_client = make_client(self._timeout)
        return self._open_client

    def close(self) -> None:
        """Release connections (of a client this connector made; a given one stays open)."""
        if not self._given_client and self._open_client is not None:
            self._open_client.close()
            self._open_client = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Target:
    """Who was asked, for messages: `what` names the source, `where` the address (never a query string, which may
    carry credentials; empty when `what` already shows it), `unreachable` what "cannot reach" names, and `refused`
    what a 401/403 means, with the operator's next step (`{status}` is filled in)."""

    what: str
    where: str = ""
    unreachable: str = "the server"
    refused: str = "the server refused access ({status})"

    @property
    def asked(self) -> str:
        return f"{self.what}: {self.where}" if self.where else self.what


def error_class(status: int) -> type[SyncError]:
    """The error class a non-2xx status stands for: `STATUS_ERRORS`, then by class."""
    listed = STATUS_ERRORS.get(status)
    if listed is not None:
        return listed
    return RetryableError if status >= 500 else SourceError


def error_for_status(status: int, target: Target, *, excerpt: str = "", retry_after: float | None = None) -> SyncError:
    """The error for a non-2xx answer that nobody asked to accept. Transient ones (`RetryableError`, `RateLimited`)
    are what `retrying` tries again; their message is replaced by the give-up message if the tries run out."""
    cls = error_class(status)
    if cls is AuthError:
        return AuthError(f"{target.what}: {target.refused.format(status=status)}", status=status)
    if cls is RateLimited:
        return RateLimited(f"{target.asked} answered {status}", retry_after=retry_after)
    if cls is RetryableError:
        return RetryableError(f"{target.asked} answered {status}", status=status)
    return SourceError(f"{target.asked} answered {status}: {excerpt}")


def retrying(
    attempt: Callable[[], Result],
    target: Target,
    *,
    sleep: Sleep = time.sleep,
    max_attempts: int = MAX_ATTEMPTS,
) -> Result:
    """Call `attempt` until it returns, retrying the transient faults it raises.

    `attempt` raises `RetryableError` (a connection fault: status None; a 5xx) or `RateLimited` (a 429) for what may
    pass, anything else for what will not. Retried at most `max_attempts` times in all and while the waits stay
    within `MAX_TOTAL_WAIT`; a `Retry-After` above `MAX_RETRY_AFTER` is not waited for at all. When the tries run
    out the read fails: `RateLimited` for a 429 (the caller may reschedule), `SourceError` otherwise.
    """
    tries = Retrying(
        retry=retry_if_exception(_worth_retrying),
        wait=_wait,
        stop=lambda state: (
            state.attempt_number >= max_attempts or state.idle_for + state.upcoming_sleep > MAX_TOTAL_WAIT
        ),
        sleep=sleep,
        before_sleep=lambda state: _log_retry(state, target),
        reraise=True,
    )
    try:
        return tries(attempt)
    except RetryableError as exc:
        error = _give_up(exc, target, tries.statistics.get("attempt_number", 1))
        # The transient error, not the traceback of every try, is the cause worth showing.
        raise error from error.__cause__


def _worth_retrying(exc: BaseException) -> bool:
    if isinstance(exc, RateLimited):
        return exc.retry_after is None or exc.retry_after <= MAX_RETRY_AFTER
    return isinstance(exc, RetryableError)


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome is not None else None
    if isinstance(exc, RateLimited) and exc.retry_after is not None:
        return exc.retry_after
    return float(BACKOFF(state))


def _log_retry(state: RetryCallState, target: Target) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    log.info(
        "%s failed (try %d), retrying in %.2f s: %s", target.asked, state.attempt_number, state.upcoming_sleep, exc
    )


def _give_up(exc: RetryableError, target: Target, attempts: int) -> SyncError:
    if exc.status is None:
        # A connection fault: its message already says what could not be reached.
        return SourceError(str(exc))
    message = f"{target.asked} answered {exc.status} {attempts} time(s); giving up for this run"
    if isinstance(exc, RateLimited):
        return RateLimited(message, retry_after=exc.retry_after)
    error = SourceError(message)
    error.__cause__ = RetryableError(message, status=exc.status)
    return error


def unreachable(target: Target, exc: httpx.TransportError) -> RetryableError:
    """A connection fault (refused, reset, timed out) as the transient error `retrying` tries again."""
    return RetryableError(f"{target.what}: cannot reach {target.unreachable}: {type(exc).__name__}: {exc}")


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
    """Send a shop request with `retrying`.

    Returns any 2xx response and any status in `ok_statuses` (e.g. 404 for "gone"). 401/403 raise `AuthError`;
    other 4xx raise `SourceError`. `what` names the source in messages (never a credential).
    """
    place = _safe(url)
    target = Target(
        what,
        where=place,
        unreachable=place,
        refused="the shop refused our credentials ({status}); check the source's key/token and its read access to "
        "products",
    )

    def attempt() -> httpx.Response:
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(target, exc) from None
        status = response.status_code
        if status < 300 or status in ok_statuses:
            return response
        retry_after = retry_after_seconds(response.headers.get("Retry-After")) if status == 429 else None
        raise error_for_status(status, target, excerpt=excerpt(response), retry_after=retry_after)

    return retrying(attempt, target, sleep=sleep, max_attempts=max_attempts)


def _safe(url: str) -> str:
    """A URL without its query string, which may carry credentials (WooCommerce over HTTP)."""
    return url.split("?", 1)[0]


def excerpt(response: httpx.Response, limit: int = 300) -> str:
    """The start of a body for an error message, on one line."""
    try:
        text = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return "(unreadable body)"
    return text[:limit].replace("\n", " ")
