"""Converge one product against the catalog.

`push(source, product_id)` leases the row, does what the difference between desired and synced asks (nothing, an
upsert, or a delete), and records the result with a compare-and-set on the desired hash, so a row that changed
meanwhile stays pending and duplicate messages are harmless.

What a failure does, by what the caller should do (worker/errors.py):
- RetryableError: `next_attempt_at` with exponential backoff and jitter; `reconcile` re-enqueues when due.
- RateLimited: the limiter's shared cool-down is already set; the row is due again after `retry_after`. Not counted
  as an attempt: the product did nothing wrong.
- RejectedError: `failed` with the API's code; no retry until an operator runs `catalog-sync retry`.
- AuthError: every push of the source pauses (and says why in `status`) for AUTH_PAUSE, then tries again.
- After `max_attempts` retryable failures: `failed`.
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

from worker.catalog import CatalogClient, ProductUpsert
from worker.errors import AuthError, RateLimited, RejectedError, RetryableError
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


@dataclass(frozen=True, slots=True)
class PushSettings:
    lease_seconds: float = 300.0
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
    except RateLimited as exc:
        wait = exc.retry_after if exc.retry_after is not None else DEFAULT_RATE_LIMIT_WAIT
        retry_at = utcnow() + timedelta(seconds=wait * (1 + 0.2 * jitter()))
        store.record_failure(
            claim,
            code="RATE_LIMITED",
            message=str(exc),
            retry_at=retry_at,
            count_attempt=False,
            max_attempts=settings.max_attempts,
        )
        return Outcome.RATE_LIMITED
    except RetryableError as exc:
        status = store.record_failure(
            claim,
            code=f"HTTP_{exc.status}" if exc.status else "UNAVAILABLE",
            message=str(exc),
            retry_at=utcnow() + backoff(claim.attempts + 1, jitter),
            max_attempts=settings.max_attempts,
        )
        log.warning("push %s/%s failed (attempt %d): %s", source, product_id, claim.attempts + 1, exc)
        return Outcome.FAILED if status == "failed" else Outcome.RETRY
    except RejectedError as exc:
        store.record_failure(
            claim, code=exc.code or "REJECTED", message=str(exc), retry_at=None, max_attempts=settings.max_attempts
        )
        log.warning("push %s/%s rejected: %s %s", source, product_id, exc.code, exc)
        return Outcome.FAILED
    except AuthError as exc:
        reason = f"the catalog refused the API key ({exc.status}); fix CATALOG_SYNC_CATALOG_API_KEY"
        store.pause_source(source, until=utcnow() + AUTH_PAUSE, reason=reason)
        store.release(claim)
        log.error("%s: %s; pushes paused for %s", source, reason, AUTH_PAUSE)
        return Outcome.PAUSED
    except BaseException:
        # Anything unexpected: give the lease back so the row is not stuck until the lease expires.
        store.release(claim, retry_at=utcnow() + backoff(claim.attempts + 1, jitter))
        raise
    if not store.record_success(claim, expires_at=expires_at):
        return Outcome.SUPERSEDED
    return outcome


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
