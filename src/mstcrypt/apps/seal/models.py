"""Seal server tables (same database and migrations as the KMC; migration 0005_seal).

The server's share of each two-party key is a blob wrapped by the SS-CC; so is the
state of a key generation or refresh waiting for the terminal's next message, so that
any server instance can continue it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from mstcrypt.kmc.models import Base


class SealKey(Base):
    """One two-party SM2 key between a terminal (owner) and this server."""

    __tablename__ = "seal_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    #: keygen (waiting for KG3) | active | disabled
    state: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    share_blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=0)
    #: a key generation or refresh in progress: its session id and wrapped state
    pending_sid: Mapped[str | None] = mapped_column(String(32), nullable=True)
    pending_blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    cert_serial: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    disabled_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)


class SealRecord(Base):
    """An electronic seal made by an administrator (the DER SESeal)."""

    __tablename__ = "seal_seals"
    es_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    valid_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    valid_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16))  # active | revoked
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(128))


class SealStamper(Base):
    """An owner authorised to stamp with a seal, with the key certified for it."""

    __tablename__ = "seal_stampers"
    es_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32))


class SealStamping(Base):
    """One co-signing session: what was shown, what was signed, by whom, when."""

    __tablename__ = "seal_stampings"
    __table_args__ = (Index("ix_seal_stampings_owner_time", "owner", "created_at"),)
    sid: Mapped[str] = mapped_column(String(32), primary_key=True)  # single use: replay
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    owner: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # seal | csr | decrypt
    es_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    data_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True)  # e, hex
    state: Mapped[str] = mapped_column(String(16))  # answered | completed
    signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
