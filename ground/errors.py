"""Errors, grouped by what the caller should do about them.

    SyncError                      base of everything catalog-sync raises on purpose
    ├── ConfigError                the operator must fix a setting; the message names the field and the fix
    ├── PermanentError             retrying the same request cannot help
    │   ├── AuthError              credentials refused (401/403): stop pushing for this source, tell a human
    │   ├── InsufficientCredits    402: the account can take no more writes: stop pushing, tell a human
    │   └── RejectedError          the API refused this one request (400/404/409/413/422); carries `code` and
    │                              the API's `details` (field path, message)
    ├── RetryableError             a transient fault (5xx, timeout, connection reset): try again later
    │   ├── RateLimited            429: wait `retry_after` seconds, shared by every worker
    │   └── InfrastructureError    our own Redis or database is unavailable: wait, and blame no product
    ├── SkippedProduct             one source record is unusable; it is recorded with `reason` and the rest go on
    ├── SourceError                a whole source read failed (broken document, unreachable shop): the run fails,
    │                              nothing is deleted
    └── InvalidSignature           a webhook's signature is missing or wrong (answered 401)

Never put a secret in a message: errors are logged and shown to operators.
"""

from __future__ import annotations


class SyncError(Exception):
    """Base class of catalog-sync's own errors."""


class ConfigError(SyncError):
    """A setting is missing or wrong; the message names the field and how to fix it."""


class PermanentError(SyncError):
    """Retrying the same request cannot succeed."""


class AuthError(PermanentError):
    """The remote refused our credentials (401/403)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class InsufficientCredits(PermanentError):
    """The catalog account has no credits left (402): no write can pass until someone tops it up."""

    def __init__(self, message: str, *, status: int | None = 402, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RejectedError(PermanentError):
    """The remote refused this request as invalid; `code` is the API's machine-readable reason and `details` its
    `(path, message)` pairs for a validation failure."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details


class RetryableError(SyncError):
    """A transient failure: the same request may succeed later."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RateLimited(RetryableError):
    """The remote asked us to slow down; `retry_after` is how long, in seconds, when it said."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = 429,
        limit: int | None = None,
        remaining: int | None = None,
        reset: float | None = None,
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        self.limit = limit
        self.remaining = remaining
        self.reset = reset


class InfrastructureError(RetryableError):
    """Our own Redis or database cannot be reached: the work waits for it, and no product is blamed."""


class SkippedProduct(SyncError):
    """One source record cannot become a catalog product; `reason` is a short stable code (e.g. `no_images`)."""

    def __init__(self, product_id: str | None, reason: str, detail: str = "") -> None:
        super().__init__(f"product {product_id or '?'} skipped: {reason}" + (f" ({detail})" if detail else ""))
        self.product_id = product_id
        self.reason = reason
        self.detail = detail


class SourceError(SyncError):
    """Reading a source failed as a whole; the run fails and nothing is deleted."""


class InvalidSignature(SyncError):
    """A webhook delivery's signature is missing or does not match."""
