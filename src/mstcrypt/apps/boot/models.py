"""Attestation tables (same database and migrations as the KMC; migration 0005_boot)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from mstcrypt.kmc.models import Base


class BootGolden(Base):
    """An approved manifest SM3 for one stage of one device model."""

    __tablename__ = "boot_golden"
    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    stage: Mapped[str] = mapped_column(String(32), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BootDevice(Base):
    """The model of a terminal owner's device, set by a registration officer."""

    __tablename__ = "boot_devices"
    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(64))
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BootNonce(Base):
    """A single-use attestation nonce, bound to the session's owner and certificate."""

    __tablename__ = "boot_nonces"
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex
    owner: Mapped[str] = mapped_column(String(128), index=True)
    serial: Mapped[str] = mapped_column(String(40))
    expires: Mapped[int] = mapped_column(BigInteger)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class BootAttestation(Base):
    """One appraisal: trusted, modified or rejected, with the reasons."""

    __tablename__ = "boot_attestations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    serial: Mapped[str] = mapped_column(String(40))
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    pcr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reasons: Mapped[list[str]] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
