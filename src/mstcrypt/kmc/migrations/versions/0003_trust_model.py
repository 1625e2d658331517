"""trust model: operators with roles, certificate pairs, enrollment purposes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 03:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("cert_serial", sa.String(length=40), nullable=True),
        sa.Column("salt", sa.LargeBinary(), nullable=True),
        sa.Column("verifier", sa.LargeBinary(), nullable=True),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("cert_serial"),
    )
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pair_serial", sa.String(length=40), nullable=True))
    with op.batch_alter_table("enrollment_codes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("purpose", sa.String(length=16), nullable=False, server_default="terminal")
        )


def downgrade() -> None:
    with op.batch_alter_table("enrollment_codes", schema=None) as batch_op:
        batch_op.drop_column("purpose")
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_column("pair_serial")
    op.drop_table("operators")
