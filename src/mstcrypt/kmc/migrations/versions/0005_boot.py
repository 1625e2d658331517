"""trusted boot attestation: golden values, device models, nonces, verdicts

Revision ID: 0005_boot
Revises: 0005_im
Create Date: 2026-11-30 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_boot"
down_revision = "0005_im"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "boot_golden",
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", "stage", "digest"),
    )
    op.create_table(
        "boot_devices",
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner"),
    )
    op.create_table(
        "boot_nonces",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("expires", sa.BigInteger(), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("nonce"),
    )
    with op.batch_alter_table("boot_nonces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_boot_nonces_owner"), ["owner"], unique=False)
    op.create_table(
        "boot_attestations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("pcr", sa.String(length=64), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("boot_attestations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_boot_attestations_owner"), ["owner"], unique=False)


def downgrade() -> None:
    op.drop_table("boot_attestations")
    op.drop_table("boot_nonces")
    op.drop_table("boot_devices")
    op.drop_table("boot_golden")
