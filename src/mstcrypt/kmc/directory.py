"""The certificate directory: lookups by serial, subject and owner (read-only)."""

from __future__ import annotations

from sqlalchemy import select

from mstcrypt.kmc.ca import serial_hex
from mstcrypt.kmc.context import KmcContext, NotFoundError
from mstcrypt.kmc.models import EncryptionKey, IssuedCertificate
from mstcrypt.pki import Certificate

__all__ = ["DirectoryService"]


class DirectoryService:
    def __init__(self, ctx: KmcContext) -> None:
        self.ctx = ctx

    def _row(self, serial: str) -> IssuedCertificate:
        with self.ctx.read() as s:
            row = s.get(IssuedCertificate, serial_hex(serial))
        if row is None:
            raise NotFoundError(f"no certificate with serial {serial}")
        return row

    def certificate(self, serial: str) -> Certificate:
        return Certificate.from_der(self._row(serial).der)

    def certificate_status(self, serial: str) -> str:
        return self._row(serial).status

    def find(
        self, *, subject: str | None = None, owner: str | None = None, limit: int = 100
    ) -> list[Certificate]:
        with self.ctx.read() as s:
            q = select(IssuedCertificate).order_by(IssuedCertificate.issued_at.desc())
            if subject:
                q = q.where(IssuedCertificate.subject == subject)
            if owner:
                q = q.where(IssuedCertificate.owner == owner)
            return [Certificate.from_der(r.der) for r in s.scalars(q.limit(min(limit, 1000)))]

    def encryption_certificate(self, owner: str) -> Certificate:
        """The owner's current encryption certificate (for email/file encryption)."""
        with self.ctx.read() as s:
            row = s.scalar(
                select(IssuedCertificate)
                .join(EncryptionKey, EncryptionKey.id == IssuedCertificate.key_id)
                .where(
                    IssuedCertificate.owner == owner,
                    IssuedCertificate.usage == "enc",
                    IssuedCertificate.status == "active",
                    EncryptionKey.state == "active",
                )
                .order_by(EncryptionKey.version.desc())
                .limit(1)
            )
        if row is None:
            raise NotFoundError(f"{owner!r} has no active encryption certificate")
        return Certificate.from_der(row.der)
