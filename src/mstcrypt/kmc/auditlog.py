"""The audit log as a service: signed checkpoints and verification of the chain."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import PolicyError
from mstcrypt.kmc import audit
from mstcrypt.kmc.context import KmcContext
from mstcrypt.kmc.identities import AUDIT, IdentityService
from mstcrypt.kmc.models import ServiceKey

__all__ = ["AuditService"]


class AuditService:
    def __init__(self, ctx: KmcContext, identities: IdentityService) -> None:
        self.ctx = ctx
        self.identities = identities

    def public_key(self) -> SM2PublicKey | None:
        with self.ctx.read() as s:
            row = s.get(ServiceKey, AUDIT)
            return SM2PublicKey.from_bytes(row.public_key) if row else None

    def checkpoint(self) -> int | None:
        """Sign the current chain head with the audit key (inside the SS-CC). When
        another instance signs the same head at the same moment, its checkpoint stands
        and this call returns None like any call that finds the head already signed."""
        try:
            key = self.identities.key(AUDIT)
        except PolicyError:
            raise PolicyError("the CA is not initialised (no audit key)") from None
        try:
            with self.ctx.read() as s:
                cp = audit.sign_checkpoint(s, key.sign)
                return cp.seq if cp else None
        except IntegrityError:
            return None

    def verify(self) -> audit.ChainReport:
        pub = self.public_key()
        with self.ctx.read() as s:
            return audit.verify_chain(s, pub)
