"""Converge one product against the catalog.

`push(source, product_id)` leases the row, does what the difference between desired and synced asks (nothing, an
upsert, or a delete), and records the result with a compare-and-set on the desired hash, so a row that changed
meanwhile stays pending and duplicate messages are harmless.

What a failure does is one table, `ACTIONS` (first matching class wins), tested as a table:

    exception                           attempt?  then
    RateLimited (429, or our own limiter)
                                        no        due again after `retry_after` (the limiter's cool-down is shared);
                                                  exactly at the slot our limiter named, a 429's wait spread a little
    InfrastructureError, SQLAlchemyError,
      RedisError (our own Redis or DB)  no        lease released, due again after a backoff: no product is blamed
    RetryableError (5xx, timeout, ...)  yes       backoff; `failed` after `max_attempts`
    AuthError (401/403)                 no        every push of the source pauses for AUTH_PAUSE; `status` says why
    InsufficientCredits (402)           no        the same pause, with the top-up as the fix
    RejectedError (400/404/409/...)     yes       `failed` at once with the API's code and its `details` paths
    PermanentError (a 2xx answer whose
      body cannot be parsed)            yes       backoff; `failed` after `max_attempts` (INVALID_RESPONSE)
    ValidationError (a stored payload
      this version no longer accepts)   yes       backoff; `failed` after `max_attempts` (INVALID_PAYLOAD)
    any other Exception (a bug)         yes       backoff; `failed` after `max_attempts` (INTERNAL_ERROR), logged
                                                  with its traceback
No Celery countdown or ETA: the Redis broker re-delivers long-delayed messages in a loop (celery#5935, kombu#337);
the database schedules retries instead.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pydantic import ValidationError
from redis import RedisError
from sqlalchemy.exc import SQLAlchemyError

from ground.errors import (
    AuthError,
    InfrastructureError,
    InsufficientCredits,
    PermanentError,
    RateLimited,
    RejectedError,
    RetryableError,
)
from worker.catalog import CatalogClient, ProductUpsert, field_path
from worker.state import Claim, Store, utcnow

log = logging.getLogger(__name__)

# Backoff for retryable failures: the first retry after ~RETRY_BASE, doubling, never more than RETRY_CAP.
RETRY_BASE = timedelta(seconds=5)
RETRY_CAP = timedelta(minutes=30)
# How long a source's pushes stop after the catalog refused our credentials before one push tries again.
AUTH_PAUSE = timedelta(minutes=5)
# A 429 without Retry-After waits this long.
DEFAULT_RATE_LIMIT_WAIT = 1.0


class Outcome(enum.StrEnum):
    NOOP = "noop"  # converged already, or leased by another push
    UPSERTED = "upserted"
    DELETED = "deleted"
    CONVERGED_WITHOUT_CALL = "converged_without_call"  # a deletion of something never in the catalog
    SUPERSEDED = "superseded"  # pushed, but the desired state changed meanwhile: another push follows
    RETRY = "retry"
    RATE_LIMITED = "rate_limited"
    FAILED = "failed"
    PAUSED = "paused"


Then = Literal["retry_after", "wait", "backoff", "pause", "fail"]


@dataclass(frozen=True, slots=True)
class Action:
    """What a push does about one kind of exception."""

    count_attempt: bool
    then: Then  # retry_after: the server's wait; wait: release, backoff; backoff: retry, fail after max; pause; fail
    code: str | None = None  # the recorded reason; None: the exception's own (API code, HTTP status)


# The one table of what happens on each exception; the first class that matches wins (see the module docstring).
ACTIONS: tuple[tuple[type[BaseException], Action], ...] = (
    (RateLimited, Action(count_attempt=False, then="retry_after", code="RATE_LIMITED")),
    (InfrastructureError, Action(count_attempt=False, then="wait")),
    (SQLAlchemyError, Action(count_attempt=False, then="wait")),
    (RedisError, Action(count_attempt=False, then="wait")),
    (RetryableError, Action(count_attempt=True, then="backoff")),
    (AuthError, Action(count_attempt=False, then="pause")),
    (InsufficientCredits, Action(count_attempt=False, then="pause")),
    (RejectedError, Action(count_attempt=True, then="fail")),
    (PermanentError, Action(count_attempt=True, then="backoff", code="INVALID_RESPONSE")),
    (ValidationError, Action(count_attempt=True, then="backoff", code="INVALID_PAYLOAD")),
    (Exception, Action(count_attempt=True, then="backoff", code="INTERNAL_ERROR")),
)


def action_for(exc: BaseException) -> Action | None:
    """The row of `ACTIONS` for `exc`; None for what is not an `Exception` (an interrupt, a worker shutting down)."""
    for kind, action in ACTIONS:
        if isinstance(exc, kind):
            return action
    return None


@dataclass(frozen=True, slots=True)
class PushSettings:
    lease_seconds: float = 60.0
    max_attempts: int = 8


def push(
    store: Store,
    catalog: CatalogClient,
    source: str,
    product_id: str,
    *,
    settings: PushSettings = PushSettings(),
    force: bool = False,
    jitter: Callable[[], float] = random.random,
) -> Outcome:
    """Converge one row. `force` ignores a scheduled retry time and a `failed` status (admin re-sync)."""
    if store.source_pause(source) is not None and not force:
        store.mark_dequeued(source, product_id)
        return Outcome.PAUSED
    claim = store.claim(source, product_id, lease_seconds=settings.lease_seconds, force=force)
    if claim is None:
        store.mark_dequeued(source, product_id)
        return Outcome.NOOP
    try:
        outcome, expires_at = _converge(catalog, claim)
    except BaseException as exc:
        action = action_for(exc)
        if action is None:
            # Interrupted: give the lease back so the row is not stuck until the lease expires.
            store.release(claim, retry_at=utcnow() + backoff(claim.attempts + 1, jitter))
            raise
        return _handle(store, claim, exc, action, settings, jitter)
    called = outcome is not Outcome.CONVERGED_WITHOUT_CALL
    if not store.record_success(claim, expires_at=expires_at, called=called):
        return Outcome.SUPERSEDED
    return outcome


def _handle(
    store: Store, claim: Claim, exc: BaseException, action: Action, settings: PushSettings, jitter: Callable[[], float]
) -> Outcome:
    """Do what `action` says about `exc` for this claim (the table's row)."""
    source, product_id = claim.source, claim.product_id
    if action.then == "pause":
        reason = pause_reason(exc, source)
        store.pause_source(source, until=utcnow() + AUTH_PAUSE, reason=reason)
        store.release(claim)
        log.error("%s: %s; pushes paused for %s", source, reason, AUTH_PAUSE)
        return Outcome.PAUSED
    if action.then == "wait":
        # Our own service is down: nothing is counted; the row comes back when it is due (if we can write that).
        log.warning("push %s/%s waits: %s", source, product_id, exc)
        store.release(claim, retry_at=utcnow() + backoff(claim.attempts + 1, jitter))
        return Outcome.RETRY
    code = action.code or _code_of(exc)
    message = _message_of(exc)
    if action.then == "retry_after":
        retry_at = utcnow() + timedelta(seconds=rate_limit_wait(exc, jitter))
    elif action.then == "fail":
        retry_at = None
    else:
        retry_at = utcnow() + backoff(claim.attempts + 1, jitter)
    status = store.record_failure(
        claim,
        code=code,
        message=message,
        retry_at=retry_at,
        count_attempt=action.count_attempt,
        max_attempts=settings.max_attempts,
    )
    if action.then == "retry_after":
        return Outcome.RATE_LIMITED
    if code == "INTERNAL_ERROR":
        log.error("push %s/%s failed unexpectedly (attempt %d)", source, product_id, claim.attempts + 1, exc_info=exc)
    else:
        log.warning("push %s/%s failed (%s, attempt %d): %s", source, product_id, code, claim.attempts + 1, message)
    return Outcome.FAILED if status == "failed" else Outcome.RETRY


def rate_limit_wait(exc: BaseException, jitter: Callable[[], float] = random.random) -> float:
    """Seconds until a rate-limited push is due again. Our own limiter (no HTTP status) names the moment its account's
    slot comes: the row is due exactly then, so the next feeder pass hands it on without an idle gap. A 429's
    Retry-After is spread by up to 20 % so the pushes it stopped do not all return at once."""
    wait = getattr(exc, "retry_after", None)
    if wait is None:
        return DEFAULT_RATE_LIMIT_WAIT * (1 + 0.2 * jitter())
    if getattr(exc, "status", None) is None:
        return float(wait)
    return float(wait) * (1 + 0.2 * jitter())


def pause_reason(exc: BaseException, source: str) -> str:
    """Why a source's pushes stopped, and the fix, as `status` shows it."""
    status, code = getattr(exc, "status", None), getattr(exc, "code", None)
    answer = " ".join(str(part) for part in (status, code) if part)
    if isinstance(exc, InsufficientCredits):
        return f"the catalog account has no credits left ({answer}); top it up, then run `catalog-sync retry {source}`"
    return (
        f"the catalog refused the API key ({answer}); fix CATALOG_SYNC_CATALOG_API_KEY, then run "
        f"`catalog-sync retry {source}`"
    )


def _code_of(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return code
    status = getattr(exc, "status", None)
    return f"HTTP_{status}" if status else "UNAVAILABLE"


def _message_of(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        problems = "; ".join(f"{field_path(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        return f"the stored catalog payload is no longer valid ({problems}); re-sync the product to rebuild it"
    return str(exc) or type(exc).__name__


def _converge(catalog: CatalogClient, claim: Claim) -> tuple[Outcome, datetime | None]:
    """Make the catalog hold the claim's desired state; returns what was done and the catalog's `expiresAt`.

    After a template change the product moves: the new externalId is written first and the old one deleted
    second, so the product is never missing from the catalog and a failure in between is finished by the retry
    (the row still remembers the old id)."""
    held = claim.catalog_external_id
    if claim.payload is None:
        if claim.synced_hash is None:
            # We never put it in the catalog: nothing to remove.
            return Outcome.CONVERGED_WITHOUT_CALL, None
        catalog.delete(held or claim.external_id, priority=claim.priority)
        return Outcome.DELETED, None
    product = catalog.upsert(ProductUpsert.model_validate(claim.payload), priority=claim.priority)
    if held is not None and held != claim.external_id:
        catalog.delete(held, priority=claim.priority)
    return Outcome.UPSERTED, product.expires_at


def backoff(attempt: int, jitter: Callable[[], float] = random.random) -> timedelta:
    """Exponential backoff with jitter: about RETRY_BASE·2^(attempt-1), capped, spread by ±50%."""
    base = min(RETRY_CAP.total_seconds(), RETRY_BASE.total_seconds() * 2 ** (attempt - 1))
    return timedelta(seconds=base * (0.5 + jitter()))
