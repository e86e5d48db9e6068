"""Shared fixtures: the real services (Redis, PostgreSQL) and unique names so parallel runs never collide.

A test that needs a service fails loudly when the service is down; it never skips.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_URL = os.environ.get("CATALOG_SYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("CATALOG_SYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
FIXTURES = Path(__file__).parent / "fixtures"


# Fixtures that reach each service; a test using one (directly or through another fixture) carries its marker, so
# `-m "not postgres"` selects what runs without that server. Markers select; they never skip.
SERVICE_MARKERS = {"redis_url": "redis", "postgres_url": "postgres"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for fixture, marker in SERVICE_MARKERS.items():
            if fixture in fixtures:
                item.add_marker(marker)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("database_url") == "postgres":
            item.add_marker("postgres")


@pytest.fixture
def unique() -> str:
    """A short random token for key prefixes, queue names and schema names."""
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required at {REDIS_URL} and did not answer: {exc}", pytrace=False)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_url() -> str:
    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
    except sqlalchemy.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {POSTGRES_URL} and did not answer: {exc}", pytrace=False)
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CATALOG_SYNC_* variables from the developer's shell leak into a test."""
    for name in list(os.environ):
        if name.startswith("CATALOG_SYNC_"):
            monkeypatch.delenv(name)
    from config.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[str]:
    """A fresh, migrated state database: a SQLite file, or a throwaway PostgreSQL schema."""
    from worker import schema
    from worker.state import make_engine

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
        engine = make_engine(url)
        schema.upgrade(engine)
        engine.dispose()
        yield url
        return
    import sqlalchemy

    base = request.getfixturevalue("postgres_url")
    name = f"t_{unique}"
    admin = sqlalchemy.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{name}"'))
    url = f"{base}?options=-csearch_path%3D{name}"
    engine = make_engine(url)
    schema.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(database_url: str) -> Iterator[object]:
    from worker.state import Store

    s = Store.from_url(database_url)
    yield s
    s.close()
