"""host names in enrollment codes: the subjectAltName entries a code authorises

Revision ID: 0004_sans
Revises: 0003
Create Date: 2026-11-30 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_sans"
down_revision = "0004_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enrollment_codes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("alt_names", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrollment_codes", schema=None) as batch_op:
        batch_op.drop_column("alt_names")
