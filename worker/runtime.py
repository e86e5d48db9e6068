"""What one process needs to do the work: settings, sources, the state store, the catalog client and the limiter.

Built lazily once per process and rebuilt in a forked child (Celery prefork), where inherited connections and
sockets must not be reused.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from config.settings import Settings, get_settings
from config.sources import SourceConfig, load_sources
from connectors import build_connector
from connectors.base import Connector
from worker import schema
from worker.catalog import CatalogClient
from worker.errors import ConfigError
from worker.push import PushSettings
from worker.ratelimit import Limiter, build_limiter
from worker.state import Store, make_engine


@dataclass
class Runtime:
    settings: Settings
    sources: dict[str, SourceConfig]
    store: Store
    limiter: Limiter
    embedded: bool = False
    _catalog: CatalogClient | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, settings: Settings | None = None, *, embedded: bool = False, check_schema: bool = True) -> Runtime:
        settings = settings or get_settings()
        sources = load_sources(Path(settings.config))
        if check_schema:
            # The embedded SQLite default upgrades itself; a shared database is upgraded by the operator.
            auto_upgrade = settings.database_url.startswith("sqlite")
            engine = schema.open_database(settings.database_url, auto_upgrade=auto_upgrade)
        else:
            engine = make_engine(settings.database_url)
        return cls(settings, sources, Store(engine), build_limiter(settings, embedded=embedded), embedded)

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

    def catalog(self) -> CatalogClient:
        with self._lock:
            if self._catalog is None:
                self._catalog = CatalogClient.from_settings(self.settings, limiter=self.limiter)
            return self._catalog

    @property
    def push_settings(self) -> PushSettings:
        return PushSettings(lease_seconds=self.settings.lease_seconds, max_attempts=self.settings.push_max_attempts)

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
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
