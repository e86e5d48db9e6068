"""Schema migrations: `catalog-sync db upgrade`, the embedded default's self-upgrade, and the start-up check
that refuses to run a worker against an out-of-date schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from worker.errors import ConfigError

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
