"""seal server: two-party keys, seals, stampers, stampings

Revision ID: 0005_seal
Revises: 0004_crl
Create Date: 2026-11-30 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_seal"
down_revision = "0004_crl"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "seal_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=True),
        sa.Column("share_blob", sa.LargeBinary(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("pending_sid", sa.String(length=32), nullable=True),
        sa.Column("pending_blob", sa.LargeBinary(), nullable=True),
        sa.Column("cert_serial", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_reason", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("seal_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_seal_keys_owner"), ["owner"], unique=False)
    op.create_table(
        "seal_seals",
        sa.Column("es_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("valid_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("es_id"),
    )
    op.create_table(
        "seal_stampers",
        sa.Column("es_id", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("es_id", "owner"),
    )
    op.create_table(
        "seal_stampings",
        sa.Column("sid", sa.String(length=32), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("es_id", sa.String(length=64), nullable=True),
        sa.Column("data_hash", sa.String(length=64), nullable=True),
        sa.Column("digest", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sid"),
    )
    with op.batch_alter_table("seal_stampings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_seal_stampings_key_id"), ["key_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_seal_stampings_es_id"), ["es_id"], unique=False)
        batch_op.create_index("ix_seal_stampings_owner_time", ["owner", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("seal_stampings", schema=None) as batch_op:
        batch_op.drop_index("ix_seal_stampings_owner_time")
        batch_op.drop_index(batch_op.f("ix_seal_stampings_es_id"))
        batch_op.drop_index(batch_op.f("ix_seal_stampings_key_id"))
    op.drop_table("seal_stampings")
    op.drop_table("seal_stampers")
    op.drop_table("seal_seals")
    with op.batch_alter_table("seal_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_seal_keys_owner"))
    op.drop_table("seal_keys")
