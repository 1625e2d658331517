"""key deliveries: rotated encryption keys waiting for their terminal

Revision ID: 0006_keydelivery
Revises: 0005_boot
Create Date: 2026-11-30 10:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_keydelivery"
down_revision = "0005_boot"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_deliveries",
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("cert_serial", sa.String(length=40), nullable=False),
        sa.Column("recipient_serial", sa.String(length=40), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("collected_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["key_id"], ["enc_keys.id"]),
        sa.PrimaryKeyConstraint("key_id"),
    )
    with op.batch_alter_table("key_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_key_deliveries_owner"), ["owner"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("key_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_key_deliveries_owner"))
    op.drop_table("key_deliveries")
