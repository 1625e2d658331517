"""ocsp: pre-signed OCSP responses, one per certificate and CertID hash algorithm

Revision ID: 0004_ocsp
Revises: 0003
Create Date: 2026-11-30 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_ocsp"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ocsp_responses",
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("hash_algorithm", sa.String(length=8), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("status_key", sa.String(length=96), nullable=False),
        sa.Column("responder_serial", sa.String(length=40), nullable=False),
        sa.Column("this_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refresh_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("serial", "hash_algorithm"),
    )
    op.create_index(
        op.f("ix_ocsp_responses_refresh_at"), "ocsp_responses", ["refresh_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_ocsp_responses_refresh_at"), table_name="ocsp_responses")
    op.drop_table("ocsp_responses")
