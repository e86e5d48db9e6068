"""Schema migrations: `catalog-sync db upgrade`, the embedded default's self-upgrade, and the start-up check
that refuses to run a worker against an out-of-date schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from config.redact import redact_url
from ground.errors import ConfigError
from worker.state import make_engine

# The setting every start-up database problem is about.
DATABASE_SETTING = "CATALOG_SYNC_DATABASE_URL"

MIGRATIONS = Path(__file__).parent / "migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def check_current(engine: Engine) -> None:
    """Raise `ConfigError` saying what to run when the database is not at the code's schema revision."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        where = "has no catalog-sync tables" if current is None else f"is at revision {current}"
        raise ConfigError(
            f"the state database {engine.url.render_as_string(hide_password=True)} {where}, "
            f"this version needs {head}: run `catalog-sync db upgrade`"
        )


def ensure_current(engine: Engine, *, auto_upgrade: bool) -> None:
    """The embedded SQLite default upgrades itself; anything else must be upgraded by the operator."""
    if auto_upgrade:
        upgrade(engine)
    else:
        check_current(engine)


def open_database(url: str, *, upgrade_to_head: bool = False, auto_upgrade: bool = False) -> Engine:
    """The state database's engine, checked once at start-up: migrated (`upgrade_to_head`, or a SQLite file with
    `auto_upgrade`) or verified current. Every way the database cannot be used (a closed port, a missing database or
    directory, an unknown driver) is a `ConfigError` naming the setting, the URL (password masked) and the fix,
    instead of a driver traceback."""
    try:
        engine = make_engine(url)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError(f"{DATABASE_SETTING} {redact_url(url)} is not a usable database URL: {exc}") from None
    try:
        if upgrade_to_head:
            upgrade(engine)
        else:
            ensure_current(engine, auto_upgrade=auto_upgrade)
    except DBAPIError as exc:
        engine.dispose()
        raise ConfigError(database_problem(url, exc)) from None
    return engine


def database_problem(url: str, exc: DBAPIError) -> str:
    """What went wrong reaching the state database, and what to do about it."""
    detail = " ".join(str(exc.orig).split()) if exc.orig is not None else type(exc).__name__
    parsed = make_url(url)
    if parsed.password:
        detail = detail.replace(parsed.password, "***")
    shown = redact_url(url)
    lowered = detail.lower()
    if parsed.get_backend_name() == "sqlite":
        folder = Path(parsed.database or ".").expanduser().resolve().parent
        if not folder.is_dir():
            fix = f"the directory {folder} does not exist: create it, or point {DATABASE_SETTING} elsewhere"
        else:
            fix = f"check that {folder} is writable by this user"
    elif "does not exist" in lowered and "database" in lowered:
        fix = f"create the database (createdb {parsed.database}) or fix the name in {DATABASE_SETTING}"
    elif "password authentication failed" in lowered or "authentication" in lowered:
        fix = f"check the user and password in {DATABASE_SETTING}"
    elif "connection refused" in lowered or "could not connect" in lowered or "timeout" in lowered:
        fix = f"is PostgreSQL running at {parsed.host}:{parsed.port or 5432}? Start it, or fix {DATABASE_SETTING}"
    else:
        fix = f"fix {DATABASE_SETTING} or the database it names"
    return f"cannot use the state database {shown} ({DATABASE_SETTING}): {detail}; {fix}"
