"""audit at scale and housekeeping: an index on the expiry of login failure counters

Revision ID: 0004_audit
Revises: 0003
Create Date: 2026-12-02 05:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0004_audit"
down_revision = "0004_ocsp"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.create_index("ix_login_failures_expiry", ["window_start", "locked_until"])


def downgrade() -> None:
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.drop_index("ix_login_failures_expiry")
