"""Key recovery under dual control: escrowed encryption keys (to a new terminal) and file
keys from files' escrow stanzas.

A key-recovery officer files a request naming the key (or the escrow stanza), the new
terminal's public key and a reason. A *different* key-recovery officer reviews it — the
requester, the reason, the key's owner and the recipient key's SM3 fingerprint — and
approves by quoting that fingerprint. Nobody approves their own request, and nobody
requests or approves a recovery of their own key or to a key certified to themselves.
A key released to a new device rotates the owner's derived keys (KDK, group keys).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from mstcrypt.crypto.sm2 import SM2PublicKey, check_cipher_der
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import DecryptionError, KeyStoreError, MstCryptError, PolicyError
from mstcrypt.kmc.context import KmcContext, NotFoundError, Unit, new_id
from mstcrypt.kmc.models import EncryptionKey, IssuedCertificate, RecoveryRequest, ServiceKey
from mstcrypt.pki import Certificate

if TYPE_CHECKING:
    from mstcrypt.kmc.groups import GroupService

__all__ = ["FILE_RECOVERY", "RecoveryService"]

FILE_RECOVERY = "file-recovery"


class RecoveryService:
    def __init__(
        self, ctx: KmcContext, groups: GroupService, *, approvals_required: int = 1
    ) -> None:
        if approvals_required < 1:
            raise PolicyError("recovery needs at least one approver besides the requester")
        self.ctx = ctx
        self.groups = groups
        self.approvals_required = approvals_required

    # -- separation of duties ----------------------------------------------------------
    @staticmethod
    def _certified_to(u: Unit, who: str, public_key: bytes) -> bool:
        for der in u.s.scalars(select(IssuedCertificate.der).where(IssuedCertificate.owner == who)):
            if Certificate.from_der(der).public_key.to_bytes() == public_key:
                return True
        return bool(
            u.s.scalar(
                select(EncryptionKey.id).where(
                    EncryptionKey.owner == who, EncryptionKey.public_key == public_key
                )
            )
        )

    def _not_for_self(self, u: Unit, req_owner: str | None, recipient: bytes, who: str) -> None:
        if req_owner is not None and req_owner == who:
            raise PolicyError("an operator cannot request or approve the recovery of their own key")
        if self._certified_to(u, who, recipient):
            raise PolicyError(
                "the recipient key is certified to this operator: an operator cannot "
                "request or approve a recovery to themselves"
            )

    def _new(
        self,
        u: Unit,
        *,
        kind: str,
        key_id: str | None,
        escrow: bytes | None,
        recipient: SM2PublicKey,
        reason: str,
    ) -> str:
        reason = reason.strip()
        if len(reason) < 3:
            raise PolicyError("give a reason (at least 3 characters)")
        rid = new_id()
        u.s.add(
            RecoveryRequest(
                id=rid,
                kind=kind,
                key_id=key_id,
                escrow_ciphertext=escrow,
                recipient_public_key=recipient.to_bytes(),
                reason=reason[:500],
                requested_by=u.actor[:64],
                approvals=[],
                status="pending",
                result=None,
                created_at=u.now,
            )
        )
        return rid

    # -- requests ----------------------------------------------------------------------
    def request(self, key_id: str, recipient: SM2PublicKey, *, reason: str, actor: str) -> str:
        """Ask for an escrowed key to be released to a new terminal."""
        with self.ctx.unit(actor) as u:
            row = u.key(key_id, "recover")
            self._not_for_self(u, row.owner, recipient.to_bytes(), actor)
            rid = self._new(
                u, kind="key", key_id=key_id, escrow=None, recipient=recipient, reason=reason
            )
            u.audit(
                "recovery.request",
                f"key:{key_id}",
                request_id=rid,
                owner=row.owner,
                recipient=recipient.fingerprint().hex(),
            )
        return rid

    def request_file(
        self, escrow_ciphertext: bytes, recipient: SM2PublicKey, *, reason: str, actor: str
    ) -> str:
        """Ask for a file's key (from its escrow stanza) to be re-encrypted to a terminal."""
        try:
            check_cipher_der(escrow_ciphertext)
        except MstCryptError:
            raise PolicyError("the escrow stanza is not a DER SM2Cipher") from None
        with self.ctx.unit(actor) as u:
            self._not_for_self(u, None, recipient.to_bytes(), actor)
            rid = self._new(
                u,
                kind="file",
                key_id=None,
                escrow=escrow_ciphertext,
                recipient=recipient,
                reason=reason,
            )
            u.audit(
                "recovery.request",
                f"file:{rid}",
                request_id=rid,
                kind="file",
                escrow_digest=sm3(escrow_ciphertext).hex(),
                recipient=recipient.fingerprint().hex(),
            )
        return rid

    # -- review and approval -----------------------------------------------------------
    def approve(
        self, request_id: str, *, actor: str, recipient_fingerprint: str | None = None
    ) -> bytes | None:
        """Approve as a second officer. ``recipient_fingerprint`` (hex SM3 of the
        recipient's public key, as :meth:`describe` shows it) must match when given; the
        HTTP API always requires it. Returns the released result once enough officers
        besides the requester approved."""
        with self.ctx.unit(actor) as u:
            req = u.s.get(RecoveryRequest, request_id, with_for_update={"key_share": True})
            if req is None:
                raise NotFoundError(f"no recovery request {request_id}")
            if req.status != "pending":
                raise PolicyError(f"recovery request is {req.status}")
            recipient = SM2PublicKey.from_bytes(req.recipient_public_key)
            if recipient_fingerprint is not None and (
                recipient_fingerprint.strip().lower() != recipient.fingerprint().hex()
            ):
                raise PolicyError(
                    "the recipient fingerprint does not match this request: review it again"
                )
            if actor == req.requested_by:
                raise PolicyError(
                    "the requester cannot approve their own request; a second, distinct "
                    "operator must approve (dual control)"
                )
            approvals = list(req.approvals or [])
            if actor in approvals:
                raise PolicyError(
                    "this operator already approved; a second, distinct "
                    "operator must approve (dual control)"
                )
            owner = None
            if req.kind == "key":
                owner = u.key(req.key_id or "", "recover").owner
            self._not_for_self(u, owner, req.recipient_public_key, actor)
            approvals.append(actor)
            req.approvals = approvals
            target = f"key:{req.key_id}" if req.kind == "key" else f"file:{req.id}"
            u.audit("recovery.approve", target, request_id=req.id, approvals=len(approvals))
            if len(approvals) < self.approvals_required:
                return None
            if req.kind == "file":
                result = self._release_file_key(u, req, recipient)
            else:
                row = u.key(req.key_id or "", "recover")
                if row.key_blob is None:
                    raise KeyStoreError("the key material was destroyed")
                result = self.ctx.keys.export_enveloped(
                    row.key_blob, f"enc:{row.id}".encode(), recipient
                )
                self.groups.identity_changed(u, row.owner, "key recovered to a new device")
            req.status, req.result = "released", result
            u.audit(
                "recovery.release",
                target,
                request_id=req.id,
                requester=req.requested_by,
                approvers=approvals,
            )
            return result

    def _release_file_key(self, u: Unit, req: RecoveryRequest, recipient: SM2PublicKey) -> bytes:
        row = u.s.get(ServiceKey, FILE_RECOVERY)
        if row is None or req.escrow_ciphertext is None:
            raise KeyStoreError("this KMC has no file-recovery key")
        try:
            fek = self.ctx.keys.decrypt(
                row.key_blob, f"service:{FILE_RECOVERY}".encode(), req.escrow_ciphertext
            )
        except DecryptionError:
            raise PolicyError(
                "the escrow stanza was not made for this KMC's recovery key"
            ) from None
        if not 16 <= len(fek) <= 64:
            raise PolicyError("the escrow stanza does not hold a file key")
        return recipient.encrypt(fek)

    def describe(self, request_id: str) -> dict[str, Any]:
        """What a second officer reviews before approving, and the result once released."""
        with self.ctx.read() as s:
            req = s.get(RecoveryRequest, request_id)
            if req is None:
                raise NotFoundError(f"no recovery request {request_id}")
            owner = None
            if req.key_id:
                key = s.get(EncryptionKey, req.key_id)
                owner = key.owner if key is not None else None
            result = base64.b64encode(req.result).decode() if req.result else None
            return {
                "id": req.id,
                "kind": req.kind,
                "key_id": req.key_id,
                "owner": owner,
                "requested_by": req.requested_by,
                "reason": req.reason,
                "recipient_fingerprint": SM2PublicKey.from_bytes(req.recipient_public_key)
                .fingerprint()
                .hex(),
                "created_at": req.created_at.isoformat(),
                "status": req.status,
                "approvals": list(req.approvals or []),
                "approvals_required": self.approvals_required,
                "enveloped_key": result if req.kind == "key" else None,
                "file_key_ciphertext": result if req.kind == "file" else None,
            }
