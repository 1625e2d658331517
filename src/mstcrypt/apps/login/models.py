"""Login tables (same database and migrations as the KMC)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from mstcrypt.kmc.models import Base


class LoginChallenge(Base):
    """An issued R_S: single use, expiring; shared by every login server instance."""

    __tablename__ = "login_challenges"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    server_name: Mapped[str] = mapped_column(String(255))
    r_s: Mapped[bytes] = mapped_column(LargeBinary)
    expires: Mapped[int] = mapped_column(BigInteger, index=True)
    source: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RevokedSession(Base):
    __tablename__ = "revoked_sessions"
    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires: Mapped[int] = mapped_column(BigInteger, index=True)
    revoked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LoginFailures(Base):
    """Failure counters for lockout, per certificate serial and per source address."""

    __tablename__ = "login_failures"
    #: the purge finds finished counters through this index (window over, lock over)
    __table_args__ = (Index("ix_login_failures_expiry", "window_start", "locked_until"),)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[int] = mapped_column(BigInteger)
    locked_until: Mapped[int] = mapped_column(BigInteger)


class LoginPassword(Base):
    """Optional password factor: PBKDF2-HMAC-SM3 verifier per owner."""

    __tablename__ = "login_passwords"
    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    salt: Mapped[bytes] = mapped_column(LargeBinary)
    verifier: Mapped[bytes] = mapped_column(LargeBinary)
    iterations: Mapped[int] = mapped_column(Integer)
