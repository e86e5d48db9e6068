"""What one process needs to do the work: settings, sources, the state store, the catalog client and the limiter.

Built lazily once per process and rebuilt in a forked child (Celery prefork), where inherited connections and
sockets must not be reused.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from config.accounts import (
    DEFAULT_ACCOUNT,
    Account,
    AccountConfig,
    check_source_accounts,
    load_accounts,
    resolve_accounts,
)
from config.settings import Settings, get_settings
from config.sources import SourceConfig, load_sources
from connectors import build_connector
from connectors.base import Connector
from ground.errors import ConfigError
from worker import schema
from worker.catalog import CatalogClient
from worker.push import PushSettings
from worker.ratelimit import Limiter, build_limiter, bulk_wait
from worker.state import Store, make_engine


@dataclass
class Runtime:
    settings: Settings
    sources: dict[str, SourceConfig]
    store: Store
    limiter: Limiter  # the default account's
    embedded: bool = False
    # The accounts named in the sources file; the default account comes from the settings.
    account_configs: dict[str, AccountConfig] = field(default_factory=dict)
    _catalogs: dict[str, CatalogClient] = field(default_factory=dict, repr=False)
    _limiters: dict[str, Limiter] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, settings: Settings | None = None, *, embedded: bool = False, check_schema: bool = True) -> Runtime:
        settings = settings or get_settings()
        sources = load_sources(Path(settings.config))
        account_configs = load_accounts(Path(settings.config))
        check_source_accounts(sources, {DEFAULT_ACCOUNT: None, **account_configs}, origin=str(settings.config))
        if check_schema:
            # The embedded SQLite default upgrades itself; a shared database is upgraded by the operator.
            auto_upgrade = settings.database_url.startswith("sqlite")
            engine = schema.open_database(settings.database_url, auto_upgrade=auto_upgrade)
        else:
            engine = make_engine(settings.database_url)
        return cls(
            settings, sources, Store(engine), build_limiter(settings, embedded=embedded), embedded, account_configs
        )

    def source(self, name: str) -> SourceConfig:
        try:
            return self.sources[name]
        except KeyError:
            known = ", ".join(sorted(self.sources)) or "none"
            raise ConfigError(
                f"unknown source {name!r} (configured: {known}); sources are read from {self.settings.config}"
            ) from None

    def connector(self, name: str, *, bulk: bool | None = None) -> Connector:
        return build_connector(self.source(name), bulk=bulk)

    @property
    def accounts(self) -> dict[str, Account]:
        """Every account of the deployment, settings resolved: the default one first."""
        return resolve_accounts(self.account_configs, self.settings)

    def account(self, name: str) -> Account:
        try:
            return self.accounts[name]
        except KeyError:
            known = ", ".join(sorted(self.accounts))
            raise ConfigError(f"unknown catalog account {name!r} (known: {known})") from None

    def limiter_for(self, account: str) -> Limiter:
        """The budget every process writing to `account` shares."""
        if account == DEFAULT_ACCOUNT:
            return self.limiter
        with self._lock:
            if account not in self._limiters:
                self._limiters[account] = build_limiter(
                    self.settings, embedded=self.embedded, account=self.account(account)
                )
            return self._limiters[account]

    def catalog(self, account: str = DEFAULT_ACCOUNT) -> CatalogClient:
        """The catalog client of `account`, paced by its limiter; one per account and process."""
        limiter = self.limiter_for(account)
        resolved = self.account(account)
        wait = bulk_wait(resolved, self.settings.push_lead_slots)
        with self._lock:
            if account not in self._catalogs:
                if account == DEFAULT_ACCOUNT:
                    client = CatalogClient.from_settings(self.settings, limiter=limiter, bulk_max_wait=wait)
                else:
                    settings = self.settings.model_copy(
                        update={"catalog_url": resolved.base_url, "catalog_api_key": resolved.api_key}
                    )
                    client = CatalogClient.from_settings(settings, limiter=limiter, bulk_max_wait=wait)
                self._catalogs[account] = client
            return self._catalogs[account]

    def catalog_for(self, source: str) -> CatalogClient:
        """The catalog client of the account `source` writes to."""
        return self.catalog(self.source(source).account)

    @property
    def push_settings(self) -> PushSettings:
        return PushSettings(lease_seconds=self.settings.lease_seconds, max_attempts=self.settings.push_max_attempts)

    def close(self) -> None:
        for client in self._catalogs.values():
            client.close()
        self.store.close()


_runtime: Runtime | None = None
_runtime_pid: int | None = None
_runtime_lock = threading.Lock()
_embedded = False


def use_embedded(embedded: bool = True) -> None:
    """Select the embedded mode (in-process limiter) for the runtime this process builds."""
    global _embedded
    _embedded = embedded


def get_runtime() -> Runtime:
    global _runtime, _runtime_pid
    with _runtime_lock:
        if _runtime is None or _runtime_pid != os.getpid():
            _runtime = Runtime.build(embedded=_embedded)
            _runtime_pid = os.getpid()
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install a prepared runtime (the embedded mode, tests)."""
    global _runtime, _runtime_pid
    with _runtime_lock:
        _runtime, _runtime_pid = runtime, os.getpid() if runtime is not None else None


def reset_runtime() -> None:
    """Drop this process's runtime (after a fork, inherited connections must not be used)."""
    set_runtime(None)
