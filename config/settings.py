"""Process settings, read from `CATALOG_SYNC_*` environment variables.

Precedence: environment variables, then a `.env` file in the working directory, then these defaults.
`get_settings()` is cached rather than a module-level instance so tests can set the environment first.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from dotenv import dotenv_values
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.rates import parse_rate
from config.redact import MASK, redact_url
from config.urls import check_broker_url, normalize_database_url
from ground.errors import ConfigError

DEFAULT_CATALOG_URL = "https://api.genlook.app/tryon/v1"
# The vendor's documented default: 100 requests per minute per account.
DEFAULT_CATALOG_RATE = parse_rate("100/minute")
# Requests per second, written as "100/minute", "2/second" or a bare number per second.
Rate = Annotated[float, BeforeValidator(parse_rate)]
ENV_PREFIX = "CATALOG_SYNC_"
# Read from the working directory after the environment.
ENV_FILE = ".env"
# Variables under this prefix belong to the test suite (its Redis and PostgreSQL), not to the program.
TEST_ENV_PREFIX = ENV_PREFIX + "TEST_"
# Settings that are URLs and may carry a password: redacted wherever settings are shown.
URL_FIELDS = frozenset({"database_url", "broker_url", "redis_url", "catalog_url"})
# Settings never echoed in an error, even redacted.
SECRET_FIELDS = frozenset({"catalog_api_key"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CATALOG_SYNC_", env_file=ENV_FILE, extra="ignore")

    config: Path = Field(Path("catalog-sync.toml"), description="The sources file (TOML, one [[sources]] each).")
    database_url: str = Field(
        "sqlite:///./catalog-sync.db",
        description="SQLAlchemy URL of the state database: sqlite:///path or postgresql+psycopg://…",
    )
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker URL.")
    redis_url: str | None = Field(
        None, description="Redis for the global rate limiter; defaults to the broker URL when it is Redis."
    )
    catalog_url: str = Field(DEFAULT_CATALOG_URL, description="Base URL of the catalog API.")
    catalog_api_key: SecretStr | None = Field(None, description="The catalog API key (x-api-key).")
    catalog_rate_limit: Rate = Field(
        DEFAULT_CATALOG_RATE,
        gt=0,
        le=10_000,
        description="The catalog's limit for the account, e.g. '100/minute' (a bare number is per second).",
    )
    catalog_burst: int = Field(2, ge=1, le=10_000, description="Requests allowed at once above the steady rate.")
    catalog_priority_reserve: int = Field(
        1, ge=0, le=9_999, description="Slots of the burst only webhooks and admin single products may take."
    )
    catalog_rate_window: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="The catalog counts requests in windows this long; the burst is paid for within one.",
    )
    catalog_timeout: float = Field(30.0, gt=0, le=600, description="Seconds before one catalog request times out.")
    catalog_max_attempts: int = Field(4, ge=1, le=20, description="Tries of one catalog call for short faults.")
    catalog_max_retry_after: float = Field(
        10.0, ge=0, le=600, description="Longest Retry-After waited inside a call; longer ones reschedule."
    )
    push_max_attempts: int = Field(8, ge=1, le=100, description="Pushes of one product before it is `failed`.")
    mass_delete_share: float = Field(
        0.2, ge=0, le=1, description="A run deleting more than this share of a source's products is held."
    )
    mass_delete_window: float = Field(
        86_400.0,
        ge=0,
        le=30 * 86_400,
        description=(
            "Seconds over which the deletion brake adds up removals: a run is held when what it would remove plus "
            "what runs removed in this window exceeds the share (0: each run on its own)."
        ),
    )
    reconcile_interval: float = Field(5.0, gt=0, le=3600, description="Seconds between reconcile passes.")
    reconcile_batch: int = Field(500, ge=1, le=100_000, description="Rows enqueued per reconcile pass at most.")
    lease_seconds: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="How long a push owns a row; a row whose worker died is pushed again once its lease expires.",
    )
    requeue_after: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="Seconds after which a push handed to the queue and never run counts as lost and is sent again.",
    )
    push_horizon: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Bulk pushes handed to the queue per account: at most what the budget serves in this many seconds.",
    )
    push_lead_slots: int = Field(
        4,
        ge=1,
        le=1000,
        description=(
            "Bulk pushes of one account on their way at once: its next this-many budget slots (at least half a "
            "second's worth). A bulk call waits for the budget at most one slot longer, so fewer idle the budget, "
            "more hold worker slots asleep."
        ),
    )
    sync_lock_seconds: float = Field(
        90.0,
        ge=5,
        le=3600,
        description=(
            "Lease of a source's sync lock, renewed by the running sync while it reads: a sync whose process died "
            "lets the next one start after at most this long."
        ),
    )
    audit_interval: float | None = Field(
        None, gt=0, description="Seconds between scheduled audits (with repair) of each catalog account; unset: none."
    )
    webhook_max_body: int = Field(2 * 1024 * 1024, ge=1024, description="Largest webhook body accepted, bytes.")
    webhook_dedupe_days: float = Field(7.0, gt=0, description="How long a processed delivery id is remembered.")
    webhook_max_in_flight: int = Field(
        512, ge=1, le=100_000, description="Deliveries being read or applied at once, all sources; more get 503."
    )
    webhook_max_in_flight_per_source: int = Field(
        256, ge=1, le=100_000, description="Deliveries being read or applied at once for one source; more get 429."
    )
    webhook_header_timeout: float = Field(
        10.0, gt=0, le=600, description="Seconds a connection may take to send a request's headers before it is closed."
    )
    webhook_body_timeout: float = Field(
        30.0, gt=0, le=600, description="Seconds a delivery may take to send its body before it is answered 408."
    )
    webhook_max_connections: int = Field(
        4096, ge=16, le=1_000_000, description="Open connections to the webhook server; more are closed on arrival."
    )
    log_level: str = Field("INFO", description="Python log level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="`json`: one JSON object per log line (with source, product, run where known)."
    )

    @model_validator(mode="after")
    def _recovery_bounds(self) -> Settings:
        # A lease shorter than one catalog call would hand a row to a second push while the first still waits for
        # its answer; a requeue delay under the feeder's horizon would resend bulk pushes still queued.
        if self.lease_seconds < self.catalog_timeout:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds:g}) must be at least catalog_timeout ({self.catalog_timeout:g}): "
                f"raise CATALOG_SYNC_LEASE_SECONDS or lower CATALOG_SYNC_CATALOG_TIMEOUT"
            )
        if 0 < self.requeue_after < 2 * self.push_horizon:
            raise ValueError(
                f"requeue_after ({self.requeue_after:g}) must be 0 or at least twice push_horizon "
                f"({self.push_horizon:g}): raise CATALOG_SYNC_REQUEUE_AFTER or lower CATALOG_SYNC_PUSH_HORIZON"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        return check_broker_url(value)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # The repr is what a traceback, a debugger or a stray print shows: no database or broker password in it.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name in URL_FIELDS and isinstance(value, str) else value


def unknown_variables(names: Iterable[str], *, where: str = "") -> list[str]:
    """One line per `CATALOG_SYNC_*` name that is no setting, with the setting it was probably meant to be."""
    known = sorted(ENV_PREFIX + name.upper() for name in Settings.model_fields)
    lines = []
    for name in sorted(names):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper.startswith(TEST_ENV_PREFIX) or upper in known:
            continue
        guess = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        hint = f"; did you mean {guess[0]}?" if guess else f"; the settings are listed in the README ({known[0]}, …)"
        lines.append(f"  {name}{where}: not a catalog-sync setting{hint}")
    return lines


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    # A mistyped name would otherwise be ignored without a word, and its default (a new SQLite file in the working
    # directory, say) used instead.
    unknown = unknown_variables(os.environ)
    if Path(ENV_FILE).is_file():
        unknown += unknown_variables(dotenv_values(ENV_FILE), where=f" (in {ENV_FILE})")
    if unknown:
        raise ConfigError("\n".join(["unknown environment variable(s):", *unknown]))
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for error in exc.errors():
        field = "_".join(str(part) for part in error["loc"])
        given = error.get("input")
        if not field:
            # A rule between settings (see `_recovery_bounds`): its message names them; the input is every
            # setting, secrets included, so it is not shown.
            lines.append(f"  {error['msg'].removeprefix('Value error, ')}")
            continue
        if field in SECRET_FIELDS:
            shown = MASK
        elif field in URL_FIELDS and isinstance(given, str):
            shown = repr(redact_url(given))
        else:
            shown = repr(given)
        lines.append(f"  {ENV_PREFIX}{field.upper()}: {error['msg'].removeprefix('Value error, ')} (got {shown})")
    return "\n".join(lines)
