"""Building blocks for sync-core tests: a JSON feed on disk, a runtime over a temp database and the catalog
emulator, and a look at what the emulator holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from config.settings import Settings
from emulators import catalog as catalog_emulator
from emulators.server import BackgroundServer, running
from worker import schema
from worker.runtime import Runtime
from worker.state import make_engine

API_KEY = "test-key"
SOURCE = "feed"


def feed_item(
    pid: str, *, title: str | None = None, images: int = 2, status: str = "active", **extra: Any
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": pid,
        "title": title if title is not None else f"Product {pid}",
        "description": f"<p>About {pid} &amp; more</p>",
        "link": f"https://shop.example/p/{pid}",
        "status": status,
    }
    if images:
        item["image_link"] = f"https://cdn.example/{pid}/0.jpg"
        item["additional_image_links"] = [f"https://cdn.example/{pid}/{n}.jpg" for n in range(1, images)]
    item.update(extra)
    return item


def ext(product_id: str, source: str = SOURCE) -> str:
    """The externalId the default template (`{source}-{id}`) gives a product."""
    return f"{source}-{product_id}"


def write_feed(path: Path, items: Sequence[dict[str, Any]]) -> None:
    path.write_text(json.dumps(list(items)), encoding="utf-8")


@dataclass
class SyncWorld:
    runtime: Runtime
    catalog: BackgroundServer
    feed: Path
    admin: httpx.Client

    def stats(self) -> dict[str, Any]:
        body: dict[str, Any] = self.admin.get("/_emulator/stats").json()
        return body

    def reset_stats(self) -> None:
        self.admin.post("/_emulator/reset", json={"stats_only": True})

    def faults(self, **faults: Any) -> None:
        self.admin.post("/_emulator/config", json=faults).raise_for_status()

    def catalog_products(self, api_key: str = API_KEY) -> dict[str, dict[str, Any]]:
        """What the catalog account of `api_key` holds, by externalId."""
        products: dict[str, dict[str, Any]] = {}
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 200}
            if cursor:
                params["cursor"] = cursor
            page = self.admin.get("/tryon/v1/products", params=params, headers={"x-api-key": api_key}).json()
            for item in page["items"]:
                products[item["externalId"]] = item
            cursor = page.get("nextCursor")
            if not cursor:
                return products


@contextmanager
def postgres_schema(postgres_url: str, name: str) -> Iterator[str]:
    """A throwaway PostgreSQL schema; yields `postgres_url` with its search path set to it."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{name}"'))
    try:
        yield f"{postgres_url}?options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


# The admin command as its own process, as an operator runs it.
CLI = (sys.executable, "-c", "from worker.cli import main; main()")
# A guard against a hung command, not a performance assertion.
CLI_TIMEOUT = 120.0


def process_env(world: SyncWorld, extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a `catalog-sync` process sharing this world's sources file, state database and catalog:
    this process's environment without its CATALOG_SYNC_* keys, the world's settings, then `extra` (a None value
    removes a key)."""
    settings = world.runtime.settings
    env: dict[str, str | None] = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CATALOG_SYNC_")},
        "CATALOG_SYNC_CONFIG": str(settings.config),
        "CATALOG_SYNC_DATABASE_URL": settings.database_url,
        "CATALOG_SYNC_CATALOG_URL": settings.catalog_url,
        "CATALOG_SYNC_CATALOG_API_KEY": API_KEY,
        # Wide enough that tables do not wrap what the tests read.
        "COLUMNS": "250",
        **(extra or {}),
    }
    return {key: value for key, value in env.items() if value is not None}


def run_cli(
    env: Mapping[str, str], *args: str, cwd: Path | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """`catalog-sync ARGS` as a process with `env`; its output captured as text."""
    return subprocess.run(
        [*CLI, *args], env=dict(env), capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
    )


def invoke_cli(world: SyncWorld, *args: str) -> Any:
    """`catalog-sync ARGS` in this process (typer's runner), configured for the world's database and emulator."""
    from typer.testing import CliRunner

    from config.settings import get_settings
    from worker import cli

    settings = world.runtime.settings
    env = {
        "CATALOG_SYNC_CONFIG": str(settings.config),
        "CATALOG_SYNC_DATABASE_URL": settings.database_url,
        "CATALOG_SYNC_CATALOG_URL": settings.catalog_url,
        "CATALOG_SYNC_CATALOG_API_KEY": API_KEY,
        "CATALOG_SYNC_CATALOG_RATE_LIMIT": "1000",
        "CATALOG_SYNC_CATALOG_BURST": "100",
    }
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli.app, list(args), env=env)
    finally:
        get_settings.cache_clear()


def sources_toml(feed: Path, *, name: str = SOURCE, extra: str = "") -> str:
    # The feeds' image URLs are placeholders on hosts that do not exist: tests of the image check turn it on.
    return (
        f'[[sources]]\nname = "{name}"\nkind = "feed"\nurl = "{feed}"\nformat = "json"\ncheck_images = false\n{extra}\n'
    )


def make_settings(tmp_path: Path, catalog_url: str, *, database_url: str | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "config": tmp_path / "catalog-sync.toml",
        "database_url": database_url or f"sqlite:///{tmp_path / 'state.db'}",
        "catalog_url": f"{catalog_url}/tryon/v1",
        "catalog_api_key": SecretStr(API_KEY),
        "catalog_rate_limit": 1000.0,
        "catalog_burst": 100,
        "catalog_max_attempts": 1,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def sync_world(
    tmp_path: Path,
    *,
    toml_extra: str = "",
    sources: str | None = None,
    database_url: str | None = None,
    catalog_clock: Callable[[], datetime] | None = None,
    api_keys: Sequence[str] = (API_KEY,),
    **overrides: Any,
) -> Iterator[SyncWorld]:
    """The catalog emulator, a migrated state database and a runtime; the sources file holds one JSON feed source
    (`feed.json`, empty) unless `sources` gives the file's text. `catalog_clock` is the emulator's clock; `api_keys`
    the accounts it serves."""
    feed = tmp_path / "feed.json"
    write_feed(feed, [])
    faults = catalog_emulator.Faults(account_limit=None)
    app = (
        catalog_emulator.create_app(list(api_keys), faults, clock=catalog_clock)
        if catalog_clock is not None
        else catalog_emulator.create_app(list(api_keys), faults)
    )
    with running(app) as catalog:
        settings = make_settings(tmp_path, catalog.url, database_url=database_url, **overrides)
        text = sources if sources is not None else sources_toml(feed, extra=toml_extra)
        Path(settings.config).write_text(text, encoding="utf-8")
        engine = make_engine(settings.database_url)
        schema.upgrade(engine)
        engine.dispose()
        runtime = Runtime.build(settings, embedded=True)
        with httpx.Client(base_url=catalog.url) as admin:
            try:
                yield SyncWorld(runtime, catalog, feed, admin)
            finally:
                runtime.close()
