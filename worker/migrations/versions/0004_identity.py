"""identity: accounts, externalId ownership, what the catalog holds, deferred syncs

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 05:20:00

Adds `products.account` ("default" for every row), `products.catalog_external_id` (the externalId the catalog was
last confirmed to hold: the old `external_id` of every row whose synced hash is a live product),
`products.catalog_expires_at`, the `external_ids` ownership table, and the deferred-sync columns of `source_state`.

An existing database may already hold colliding rows (two sources' products with one `external_id`, written under
the old `{id}` default). The upgrade never fails on them: each id gets one owner, and the others are recorded
`skipped: external_id_conflict` naming the owner, without any catalog call:
- the owner is the row the catalog most probably holds: of the rows whose last push put a live product there, the
  one pushed last (the catalog keeps the last write); failing that, the first row (by source, product) that still
  wants the id;
- a losing row's desired and synced states become "deleted" (so nothing is pushed for it and the owner's product
  is never deleted on its behalf) and its `catalog_external_id` is cleared.
The catalog may still differ from what the owner last sent (the loser's write may have been the last, or a loser's
delete may have removed the owner's product): `catalog-sync audit --repair` after the upgrade finds and fixes it.
A loser comes back on its own as soon as its source's template stops colliding (e.g. `{source}-{id}`).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DELETED = "deleted"
CONFLICT = "external_id_conflict"


def upgrade() -> None:
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('account', sa.String(length=64), server_default='default', nullable=False))
        batch_op.add_column(sa.Column('catalog_external_id', sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column('catalog_expires_at', sa.DateTime(), nullable=True))
        batch_op.create_index('ix_products_catalog_id', ['account', 'catalog_external_id'], unique=False)

    op.create_table('external_ids',
    sa.Column('account', sa.String(length=64), nullable=False),
    sa.Column('external_id', sa.String(length=512), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('product_id', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('account', 'external_id')
    )
    with op.batch_alter_table('external_ids', schema=None) as batch_op:
        batch_op.create_index('ix_external_ids_owner', ['source', 'product_id'], unique=False)

    with op.batch_alter_table('source_state', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deferred_mode', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('deferred_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('deferred_reason', sa.Text(), nullable=True))

    _assign_owners(op.get_bind())


def _assign_owners(conn: Any) -> None:
    products = sa.table(
        'products',
        sa.column('source'), sa.column('product_id'), sa.column('external_id'), sa.column('account'),
        sa.column('desired_hash'), sa.column('synced_hash'), sa.column('last_synced_at'),
        sa.column('desired_payload', sa.JSON()), sa.column('status'), sa.column('skip_reason'),
        sa.column('last_error_code'), sa.column('skip_detail'), sa.column('catalog_external_id'),
        sa.column('changed_at'),
    )
    external_ids = sa.table(
        'external_ids', sa.column('account'), sa.column('external_id'), sa.column('source'), sa.column('product_id')
    )
    in_catalog = sa.and_(products.c.synced_hash.is_not(None), products.c.synced_hash != DELETED)
    conn.execute(sa.update(products).where(in_catalog).values(catalog_external_id=products.c.external_id))

    candidates: dict[str, list[tuple[bool, datetime | None, str, str]]] = defaultdict(list)
    rows = conn.execute(
        sa.select(
            products.c.external_id, products.c.source, products.c.product_id, products.c.desired_hash,
            products.c.synced_hash, products.c.last_synced_at,
        ).where(sa.or_(products.c.desired_hash != DELETED, in_catalog))
    )
    for external_id, source, product_id, _desired, synced, synced_at in rows:
        held = synced is not None and synced != DELETED
        candidates[external_id].append((held, synced_at, source, product_id))

    claims: list[dict[str, str]] = []
    now = datetime.now(UTC).replace(tzinfo=None)
    for external_id, rivals in candidates.items():
        rivals.sort(key=lambda r: (r[2], r[3]))
        held = [r for r in rivals if r[0]]
        owner = max(held, key=lambda r: r[1] or datetime.min) if held else rivals[0]
        claims.append({'account': 'default', 'external_id': external_id, 'source': owner[2], 'product_id': owner[3]})
        for _held, _at, source, product_id in rivals:
            if (source, product_id) == (owner[2], owner[3]):
                continue
            conn.execute(
                sa.update(products)
                .where(products.c.source == source, products.c.product_id == product_id)
                .values(
                    desired_payload=None, desired_hash=DELETED, synced_hash=DELETED, catalog_external_id=None,
                    status='skipped', skip_reason=CONFLICT, last_error_code=CONFLICT,
                    skip_detail=(
                        f"externalId {external_id!r} belongs to source {owner[2]!r} (product {owner[3]}); give the "
                        "sources templates that cannot collide, e.g. external_id = \"{source}-{id}\""
                    ),
                    changed_at=now,
                )
            )
    for start in range(0, len(claims), 500):
        conn.execute(sa.insert(external_ids), claims[start:start + 500])


def downgrade() -> None:
    with op.batch_alter_table('source_state', schema=None) as batch_op:
        batch_op.drop_column('deferred_reason')
        batch_op.drop_column('deferred_at')
        batch_op.drop_column('deferred_mode')

    with op.batch_alter_table('external_ids', schema=None) as batch_op:
        batch_op.drop_index('ix_external_ids_owner')
    op.drop_table('external_ids')

    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_index('ix_products_catalog_id')
        batch_op.drop_column('catalog_expires_at')
        batch_op.drop_column('catalog_external_id')
        batch_op.drop_column('account')
