"""instant messaging: stored envelopes, devices, per-device cursors, blobs

Revision ID: 0005_im
Revises: 0005_seal
Create Date: 2026-11-30 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_im"
down_revision = "0005_seal"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "im_messages",
        sa.Column("pos", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("group_id", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("sender", sa.String(length=128), nullable=False),
        sa.Column("device", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("content_type", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("pos"),
        sa.UniqueConstraint("message_id"),
    )
    op.create_index("ix_im_messages_group_pos", "im_messages", ["group_id", "pos"])
    op.create_table(
        "im_devices",
        sa.Column("member", sa.String(length=128), nullable=False),
        sa.Column("device", sa.String(length=32), nullable=False),
        sa.Column("group_id", sa.String(length=64), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("member", "device", "group_id"),
    )
    op.create_table(
        "im_cursors",
        sa.Column("member", sa.String(length=128), nullable=False),
        sa.Column("device", sa.String(length=32), nullable=False),
        sa.Column("group_id", sa.String(length=64), nullable=False),
        sa.Column("acked", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("member", "device", "group_id"),
    )
    op.create_table(
        "im_blobs",
        sa.Column("blob_id", sa.String(length=32), nullable=False),
        sa.Column("group_id", sa.String(length=64), nullable=False),
        sa.Column("uploader", sa.String(length=128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("blob_id"),
    )


def downgrade() -> None:
    op.drop_table("im_blobs")
    op.drop_table("im_cursors")
    op.drop_table("im_devices")
    op.drop_index("ix_im_messages_group_pos", table_name="im_messages")
    op.drop_table("im_messages")
