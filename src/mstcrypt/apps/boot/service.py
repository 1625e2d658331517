"""The platform side of attestation: golden values per device model, single-use nonces,
appraisal of quotes, and the verdicts with their audit records (``boot.attest.*``; a
modified or rejected boot is an alarm, ``alarm=True`` in the record's details)."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import delete, select

from mstcrypt.apps.boot.attest import Quote, QuoteError, appraise
from mstcrypt.apps.boot.format import check_name
from mstcrypt.apps.boot.measure import MAX_EVENTS, Event
from mstcrypt.apps.boot.models import BootAttestation, BootDevice, BootGolden, BootNonce
from mstcrypt.errors import DecodeError
from mstcrypt.kmc.context import KmcContext, NotFoundError, new_id
from mstcrypt.kmc.models import IssuedCertificate
from mstcrypt.pki import Certificate

__all__ = ["NONCE_TTL", "AttestationService"]

NONCE_TTL = 300


def _model(model: object) -> str:
    if not isinstance(model, str):
        raise DecodeError("model must be a string")
    try:
        return check_name(model, "model")
    except DecodeError:
        raise DecodeError("model must be 1-32 characters of [a-z0-9._-]") from None


class AttestationService:
    def __init__(self, ctx: KmcContext) -> None:
        self.ctx = ctx

    # -- operators -----------------------------------------------------------------
    def add_golden(self, model: str, stage: str, digest_hex: str, *, actor: str) -> None:
        model = _model(model)
        stage = check_name(stage, "stage")
        try:
            digest = bytes.fromhex(digest_hex)
        except (ValueError, TypeError):
            raise DecodeError("digest must be hex") from None
        if len(digest) != 32:
            raise DecodeError("digest must be a 32-byte SM3 value")
        with self.ctx.unit(actor) as u:
            if u.s.get(BootGolden, (model, stage, digest.hex())) is None:
                u.s.add(BootGolden(model=model, stage=stage, digest=digest.hex(),
                                   created_by=actor, created_at=u.now))  # fmt: skip
            u.audit("boot.golden.add", f"model:{model}", stage=stage, digest=digest.hex())

    def golden(self, model: str) -> dict[str, set[bytes]]:
        """The approved manifest digests of ``model``, per stage."""
        with self.ctx.read() as s:
            return self._golden(s, model)

    @staticmethod
    def _golden(s: Any, model: str) -> dict[str, set[bytes]]:
        rows = s.scalars(select(BootGolden).where(BootGolden.model == model)).all()
        out: dict[str, set[bytes]] = {}
        for r in rows:
            out.setdefault(r.stage, set()).add(bytes.fromhex(r.digest))
        return out

    def set_device_model(self, owner: str, model: str, *, actor: str) -> None:
        model = _model(model)
        if not isinstance(owner, str) or not 0 < len(owner) <= 128:
            raise DecodeError("owner must be 1-128 characters")
        with self.ctx.unit(actor) as u:
            row = u.s.get(BootDevice, owner, with_for_update=True)
            if row is None:
                u.s.add(BootDevice(owner=owner, model=model, updated_by=actor, updated_at=u.now))
            else:
                row.model, row.updated_by, row.updated_at = model, actor, u.now
            u.audit("boot.device.model", f"owner:{owner}", model=model)

    def attestations(self, owner: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self.ctx.read() as s:
            q = select(BootAttestation).order_by(BootAttestation.at.desc()).limit(limit)
            if owner is not None:
                q = q.where(BootAttestation.owner == owner)
            return [
                {"id": r.id, "owner": r.owner, "serial": r.serial, "model": r.model,
                 "status": r.status, "pcr": r.pcr, "reasons": r.reasons, "at": r.at.isoformat()}
                for r in s.scalars(q)
            ]  # fmt: skip

    # -- terminals -------------------------------------------------------------------
    def challenge(self, owner: str, serial: str) -> dict[str, Any]:
        """A fresh nonce for this session's owner and certificate; expired nonces of the
        owner are dropped (bounded table)."""
        nonce = secrets.token_bytes(32)
        with self.ctx.unit(f"terminal:{owner}", audited=False) as u:
            now = int(u.now.timestamp())
            u.s.execute(delete(BootNonce).where(BootNonce.owner == owner, BootNonce.expires < now))
            u.s.add(
                BootNonce(nonce=nonce.hex(), owner=owner, serial=serial, expires=now + NONCE_TTL)
            )
        return {"nonce": nonce.hex(), "expires_in": NONCE_TTL}

    def attest(
        self, owner: str, serial: str, quote_raw: bytes, events_json: object
    ) -> dict[str, Any]:
        """Appraise a quote. The nonce is consumed and the verdict audited in one
        transaction, whatever the outcome; a quote that cannot be accepted raises
        :class:`QuoteError` after its rejection was recorded."""
        rejected: QuoteError | None = None
        actor = f"terminal:{owner}"
        with self.ctx.unit(actor) as u:
            model_row = u.s.get(BootDevice, owner)
            model = model_row.model if model_row else None
            verdict = None
            try:
                quote = Quote.parse(quote_raw)
                events = self._events(events_json)
                row = u.s.get(BootNonce, quote.nonce.hex(), with_for_update=True)
                now = int(u.now.timestamp())
                if row is None or row.owner != owner or row.serial != serial:
                    raise QuoteError("nonce", "quote is not for a nonce issued to this session")
                if row.used_at is not None:
                    raise QuoteError("replay", "this nonce was already used (replayed quote)")
                row.used_at = u.now
                if row.expires < now:
                    raise QuoteError("nonce", "the nonce expired")
                cert_row = u.s.get(IssuedCertificate, serial)
                if cert_row is None or cert_row.status != "active" or cert_row.owner != owner:
                    raise NotFoundError(
                        "the session's certificate is not an active one of this owner"
                    )
                key = Certificate.from_der(cert_row.der).public_key
                golden = self._golden(u.s, model) if model else {}
                verdict = appraise(quote, events, public_key=key, nonce=quote.nonce,
                                   serial=serial, golden=golden)  # fmt: skip
            except QuoteError as exc:
                rejected = exc
            status = verdict.status if verdict else "rejected"
            reasons = list(verdict.reasons) if verdict else [f"{rejected.reason}: {rejected}"]
            if verdict and model is None:
                status = "modified"
            att = BootAttestation(id=new_id(), owner=owner, serial=serial, model=model,
                                  status=status, pcr=verdict.pcr.hex() if verdict else None,
                                  reasons=reasons, at=u.now)  # fmt: skip
            u.s.add(att)
            u.audit(f"boot.attest.{status}", f"owner:{owner}", serial=serial, model=model,
                    alarm=status != "trusted", reasons=reasons[:8], attestation=att.id)  # fmt: skip
        if rejected is not None:
            raise rejected
        return {"id": att.id, "status": status, "reasons": reasons, "pcr": att.pcr, "model": model}

    @staticmethod
    def _events(events_json: object) -> list[Event]:
        if not isinstance(events_json, list) or len(events_json) > MAX_EVENTS:
            raise QuoteError("malformed", f"events must be a list of at most {MAX_EVENTS}")
        try:
            return [Event.from_json(e) for e in events_json]
        except DecodeError as exc:
            raise QuoteError("malformed", f"event log: {exc}") from None
