"""Alembic environment: runs on the connection `worker.schema` hands over (no alembic.ini needed)."""

from __future__ import annotations

from alembic import context

from worker.state import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `catalog-sync db upgrade` (worker.schema.upgrade)")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
