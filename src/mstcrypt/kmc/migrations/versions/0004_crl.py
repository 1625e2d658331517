"""revocation at scale: revocation sequence and cached CRL entries, delta CRLs, CRL
chunks, leases

Revision ID: 0004_crl
Revises: 0003
Create Date: 2026-12-02 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_crl"
down_revision = "0004_sans"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ca", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("revocation_seq", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("crl_seq", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("crl_due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("delta_base", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("delta_base_seq", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revocation_seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("crl_entry", sa.LargeBinary(), nullable=True))
        batch_op.create_index(
            "ix_certificates_ca_revocation", ["ca_id", "revocation_seq"], unique=False
        )
    # certificates revoked before this revision: sequence 0, covered by every CRL; the
    # publisher writes their entry DER on its first run
    op.execute("UPDATE certificates SET revocation_seq = 0 WHERE status = 'revoked'")
    with op.batch_alter_table("crls", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revocation_seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("entries", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("blob_id", sa.String(length=32), nullable=True))
    op.create_table(
        "delta_crls",
        sa.Column("ca_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("base_number", sa.Integer(), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("this_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("blob_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["ca_id"], ["ca.id"]),
        sa.PrimaryKeyConstraint("ca_id", "number"),
    )
    op.create_table(
        "crl_chunks",
        sa.Column("blob_id", sa.String(length=32), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("blob_id", "idx"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("crl_chunks")
    op.drop_table("delta_crls")
    with op.batch_alter_table("crls", schema=None) as batch_op:
        batch_op.drop_column("blob_id")
        batch_op.drop_column("entries")
        batch_op.drop_column("revocation_seq")
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index("ix_certificates_ca_revocation")
        batch_op.drop_column("crl_entry")
        batch_op.drop_column("revocation_seq")
    with op.batch_alter_table("ca", schema=None) as batch_op:
        batch_op.drop_column("delta_base_seq")
        batch_op.drop_column("delta_base")
        batch_op.drop_column("crl_due_at")
        batch_op.drop_column("crl_seq")
        batch_op.drop_column("revocation_seq")
