"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 00:11:34.307271
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('products',
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('product_id', sa.String(length=255), nullable=False),
    sa.Column('external_id', sa.String(length=512), nullable=False),
    sa.Column('desired_payload', sa.JSON(), nullable=True),
    sa.Column('desired_hash', sa.String(length=64), nullable=False),
    sa.Column('source_updated_at', sa.DateTime(), nullable=True),
    sa.Column('synced_hash', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('skip_reason', sa.String(length=64), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=True),
    sa.Column('lease_until', sa.DateTime(), nullable=True),
    sa.Column('lease_token', sa.String(length=32), nullable=True),
    sa.Column('last_error_code', sa.String(length=64), nullable=True),
    sa.Column('last_error_message', sa.Text(), nullable=True),
    sa.Column('last_synced_at', sa.DateTime(), nullable=True),
    sa.Column('seen_run_id', sa.Integer(), nullable=True),
    sa.Column('enqueued_at', sa.DateTime(), nullable=True),
    sa.Column('changed_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('source', 'product_id')
    )
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.create_index('ix_products_due', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_products_source_status', ['source', 'status'], unique=False)

    op.create_table('runs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('outcome', sa.String(length=24), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('watermark', sa.DateTime(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_source'), ['source'], unique=False)

    op.create_table('source_state',
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('paused_until', sa.DateTime(), nullable=True),
    sa.Column('paused_reason', sa.Text(), nullable=True),
    sa.Column('sync_lock_until', sa.DateTime(), nullable=True),
    sa.Column('sync_lock_token', sa.String(length=32), nullable=True),
    sa.PrimaryKeyConstraint('source')
    )
    op.create_table('webhook_deliveries',
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('event_id', sa.String(length=255), nullable=False),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('source', 'event_id')
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_expires_at'), ['expires_at'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_expires_at'))

    op.drop_table('webhook_deliveries')
    op.drop_table('source_state')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_source'))

    op.drop_table('runs')
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_index('ix_products_source_status')
        batch_op.drop_index('ix_products_due')

    op.drop_table('products')

