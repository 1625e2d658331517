"""The audit log as a service: signed checkpoints and verification of the chain.

Every verification runs inside one read-only snapshot (:meth:`Database.snapshot`), so
writers are never blocked, and streams the log (constant memory). A checkpoint is
signed only after the records since the previous one verify, so the newest signed
checkpoint is where an incremental verification may start.
"""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import PolicyError, VerificationError
from mstcrypt.kmc import audit
from mstcrypt.kmc.context import KmcContext
from mstcrypt.kmc.identities import AUDIT, IdentityService, ServiceIdentity
from mstcrypt.kmc.models import ServiceKey

__all__ = ["AuditService"]

_BINDING = b"mstcrypt-audit-key-binding"


class AuditService:
    def __init__(self, ctx: KmcContext, identities: IdentityService) -> None:
        self.ctx = ctx
        self.identities = identities

    def _row(self) -> tuple[bytes, bytes] | None:
        """(public key, sealed blob) of the audit key, read on a snapshot: verifying
        never waits for a writer, not even for this."""
        t = ServiceKey.__table__
        with self.ctx.db.snapshot() as conn:
            row = conn.execute(
                select(t.c.public_key, t.c.key_blob).where(t.c.name == AUDIT)
            ).first()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    def public_key(self) -> SM2PublicKey | None:
        """The audit public key as stored (None before the CA is initialised)."""
        row = self._row()
        return SM2PublicKey.from_bytes(row[0]) if row else None

    def _key(self) -> ServiceIdentity:
        row = self._row()
        if row is None:
            raise PolicyError("the CA is not initialised (no audit key)")
        return ServiceIdentity(AUDIT, None, SM2PublicKey.from_bytes(row[0]), self.ctx.keys, row[1])

    def trusted_public_key(self) -> SM2PublicKey | None:
        """The audit public key, after proving it is the one sealed in the SS-CC (the
        key store signs a fresh challenge that must verify under it): a public key
        swapped in the database, with which forged checkpoints would verify, is
        refused. None before the CA is initialised."""
        if self._row() is None:
            return None
        key = self._key()
        pub = key.public_key()
        challenge = _BINDING + secrets.token_bytes(16)
        signature = key.sign(challenge)  # KeyStoreError: not this SS-CC's store
        try:
            pub.verify(signature, challenge)
        except VerificationError:
            raise audit.AuditChainError(
                "the stored audit public key is not the key sealed in the SS-CC"
            ) from None
        return pub

    # -- checkpoints -------------------------------------------------------------------
    def checkpoint(self) -> int | None:
        """Verify the records since the newest signed checkpoint (on a snapshot, no
        write lock), then sign the last of them with the audit key in a short write
        transaction. Returns its ``seq``, or None when there is nothing new to sign.
        A chain that does not verify is not signed: :class:`audit.AuditChainError`."""
        key = self._key()
        pub = self.trusted_public_key()
        with self.ctx.db.snapshot() as conn:
            r = audit.verify_incremental(conn, pub)
        if not r.ok:
            raise audit.AuditChainError(
                f"audit chain broken at record {r.first_bad_seq}: {r.problem}; no checkpoint signed"
            )
        if r.to_seq == 0:  # empty log, or the head is already signed
            return None
        try:
            with self.ctx.db.tx() as s:
                stored = audit.store_checkpoint(
                    s, r.to_seq, r.to_hash, key.sign, now=self.ctx.clock()
                )
        except IntegrityError:  # another instance signed the same record meanwhile
            return None
        return r.to_seq if stored else None

    def checkpoint_if_due(self, *, every_records: int, every_seconds: float) -> int | None:
        """:meth:`checkpoint` when the head has moved by ``every_records`` records or
        ``every_seconds`` since the newest checkpoint (the server's housekeeping)."""
        with self.ctx.db.snapshot() as conn:
            due = audit.checkpoint_due(
                conn,
                every_records=every_records,
                every_seconds=every_seconds,
                now=self.ctx.clock(),
            )
        return self.checkpoint() if due else None

    # -- verification ------------------------------------------------------------------
    def verify(self) -> audit.ChainReport:
        """Full verification from the genesis (O(n) time, constant memory)."""
        pub = self.trusted_public_key()
        with self.ctx.db.snapshot() as conn:
            return audit.verify_chain(conn, pub)

    def verify_incremental(self, *, limit: int | None = None) -> audit.ChainReport:
        """The newest signed checkpoint and the records after it (at most ``limit``)."""
        pub = self.trusted_public_key()
        with self.ctx.db.snapshot() as conn:
            return audit.verify_incremental(conn, pub, limit=limit)

    def verify_range(self, from_seq: int, to_seq: int) -> audit.ChainReport:
        """Records ``from_seq``..``to_seq``, linked to the chain at both ends."""
        pub = self.trusted_public_key()
        with self.ctx.db.snapshot() as conn:
            return audit.verify_range(conn, pub, from_seq, to_seq)
