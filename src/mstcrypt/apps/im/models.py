"""IMS tables (same database and migrations as the KMC): ciphertext and metadata only."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from mstcrypt.kmc.models import Base

__all__ = ["ImBlob", "ImCursor", "ImDevice", "ImMessage"]


class ImMessage(Base):
    """One envelope as stored and forwarded: the server's order (``pos``) and the
    metadata it needs; the envelope itself is opaque signed ciphertext."""

    __tablename__ = "im_messages"
    pos: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    group_id: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[bytes] = mapped_column(LargeBinary(16), unique=True)
    sender: Mapped[str] = mapped_column(String(128))
    device: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(BigInteger)
    key_version: Mapped[int] = mapped_column(Integer)
    content_type: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    envelope: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_im_messages_group_pos", "group_id", "pos"),)


class ImDevice(Base):
    """A member's device in a group: the last sequence number accepted from it (the
    server refuses replays too) and when it last sent."""

    __tablename__ = "im_devices"
    member: Mapped[str] = mapped_column(String(128), primary_key=True)
    device: Mapped[str] = mapped_column(String(32), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ImCursor(Base):
    """Per device and group, the position acknowledged so far: everything after it is
    the device's offline queue."""

    __tablename__ = "im_cursors"
    member: Mapped[str] = mapped_column(String(128), primary_key=True)
    device: Mapped[str] = mapped_column(String(32), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    acked: Mapped[int] = mapped_column(Integer, default=0)


class ImBlob(Base):
    """An encrypted file blob: stored under the blob directory, served to members of
    its group once complete."""

    __tablename__ = "im_blobs"
    blob_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(64))
    uploader: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
