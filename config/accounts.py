"""Catalog accounts: the `[[accounts]]` tables of the sources file, and the default account of the environment.

A deployment serving several merchants writes to several catalog accounts, each with its own API key, its own
limit and its own products. A source names its account (`account = "acme"`); a source that names none writes to
the default account, configured by `CATALOG_SYNC_CATALOG_*` as before.

```toml
[[accounts]]
name = "acme"
api_key = "env:ACME_CATALOG_KEY"   # any value may be "env:NAME"
rate_limit = "100/minute"          # the account's limit; default CATALOG_SYNC_CATALOG_RATE_LIMIT
# burst = 2                        # default CATALOG_SYNC_CATALOG_BURST
# priority_reserve = 1             # default CATALOG_SYNC_CATALOG_PRIORITY_RESERVE
# base_url = "https://api.genlook.app/tryon/v1"   # default CATALOG_SYNC_CATALOG_URL
```
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from config.settings import Rate
from ground.errors import ConfigError

if TYPE_CHECKING:
    from config.settings import Settings

# The account of every source that names none: the environment's CATALOG_SYNC_CATALOG_* settings.
DEFAULT_ACCOUNT = "default"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class AccountConfig(BaseModel):
    """One `[[accounts]]` table; what it leaves out comes from the environment's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Short unique name: lower-case letters, digits, '-', '_' or '.'.")
    api_key: SecretStr = Field(description="The account's catalog API key (x-api-key); may be env:NAME.")
    rate_limit: Rate | None = Field(None, gt=0, le=10_000, description="The account's limit, e.g. '100/minute'.")
    burst: int | None = Field(None, ge=1, le=10_000)
    priority_reserve: int | None = Field(None, ge=0, le=9_999)
    base_url: str | None = Field(None, description="The catalog API of this account.")

    def __repr__(self) -> str:
        return f"AccountConfig(name={self.name!r}, api_key=SecretStr('**********'), rate_limit={self.rate_limit!r})"

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("use 1-63 lower-case letters, digits, '-', '_' or '.', starting with a letter or digit")
        if value == DEFAULT_ACCOUNT:
            raise ValueError(
                f"{DEFAULT_ACCOUNT!r} is the account of the CATALOG_SYNC_CATALOG_* settings; give this one another name"
            )
        return value


@dataclass(frozen=True, slots=True)
class Account:
    """A catalog account with every setting resolved: what the limiter and the client of its workers use."""

    name: str
    api_key: SecretStr | None
    base_url: str
    rate_limit: float  # requests per second the account is allowed
    burst: int
    priority_reserve: int
    window: float  # seconds of the catalog's counting window

    def __repr__(self) -> str:
        return f"Account(name={self.name!r}, base_url={self.base_url!r}, rate_limit={self.rate_limit!r})"


def parse_accounts(document: Mapping[str, Any], *, origin: str = "sources file") -> dict[str, AccountConfig]:
    """The `[[accounts]]` tables of a parsed sources file, keys resolved from the environment."""
    tables = document.get("accounts", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{origin}: 'accounts' must be an array of tables: write each as [[accounts]]")
    accounts: dict[str, AccountConfig] = {}
    for index, table in enumerate(tables):
        if not isinstance(table, Mapping):
            raise ConfigError(f"{origin}: account #{index + 1} must be a table")
        label = str(table.get("name", f"#{index + 1}"))
        try:
            account = AccountConfig.model_validate(_resolved_key(table, label))
        except ValidationError as exc:
            raise ConfigError(_explain(exc, label, origin)) from None
        if account.name in accounts:
            raise ConfigError(f"{origin}: two accounts are named {account.name!r}; give each a unique name")
        accounts[account.name] = account
    return accounts


def resolve_accounts(configured: Mapping[str, AccountConfig], settings: Settings) -> dict[str, Account]:
    """Every account of the deployment: the default one from the settings, then the configured ones."""
    accounts = {
        DEFAULT_ACCOUNT: Account(
            DEFAULT_ACCOUNT,
            settings.catalog_api_key,
            settings.catalog_url,
            settings.catalog_rate_limit,
            settings.catalog_burst,
            settings.catalog_priority_reserve,
            settings.catalog_rate_window,
        )
    }
    for name, config in configured.items():
        accounts[name] = Account(
            name,
            config.api_key,
            config.base_url or settings.catalog_url,
            config.rate_limit if config.rate_limit is not None else settings.catalog_rate_limit,
            config.burst if config.burst is not None else settings.catalog_burst,
            config.priority_reserve if config.priority_reserve is not None else settings.catalog_priority_reserve,
            settings.catalog_rate_window,
        )
    return accounts


def check_source_accounts(sources: Mapping[str, Any], accounts: Mapping[str, object], *, origin: str) -> None:
    """Every source names an account that exists."""
    for source in sources.values():
        if source.account not in accounts:
            known = ", ".join(sorted(accounts))
            raise ConfigError(
                f"{origin}: source {source.name!r} writes to account {source.account!r}, which no [[accounts]] table "
                f"names (known: {known}); add the account or fix the name"
            )


def _resolved_key(table: Mapping[str, Any], label: str) -> dict[str, Any]:
    resolved = dict(table)
    value = resolved.get("api_key")
    if isinstance(value, str) and value.startswith("env:"):
        variable = value[4:]
        if variable not in os.environ:
            raise ConfigError(
                f"account {label!r}: api_key reads the environment variable {variable}, which is not set; "
                f"export {variable}=… or write the key in the sources file"
            )
        resolved["api_key"] = os.environ[variable]
    return resolved


def _explain(exc: ValidationError, label: str, origin: str) -> str:
    lines = [f"{origin}: account {label!r} is invalid:"]
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(account)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field; remove it or check its spelling"
        # Never echo a value: the key, or a misspelled key field, may be the secret itself.
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)


def load_accounts(path: Path) -> dict[str, AccountConfig]:
    """The `[[accounts]]` of the sources file (none when the file is missing: `load_sources` says so)."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        # The sources file's own loader reports a missing or broken file with the fix; no second message here.
        return {}
    return parse_accounts(document, origin=str(path))
