"""The seal server (T/ZSA 37-2020 Annex C "cloud seal server"): seal management by
administrators, and the server half of every terminal's two-party SM2 seal key.

What the server co-signs is decided here, from the message it is shown (it computes
e = SM3(Z ‖ M) itself, :class:`mstcrypt.crypto.twoparty.ServerSigner`):

* a **TBS_Sign** (GB/T 38540) for a seal kept here, active and within its validity,
  whose embedded SESeal is byte for byte the one on record, for a stamper the seal lists
  with this very key's certificate, dated within ``SealPolicy.clock_skew`` of now;
* the **certificate request** of this key, once, before the key is certified.

Anything else is refused (:class:`StamperNotAuthorisedError`): the server is not a blind
signing oracle. Every co-signature is one audit record with the document digest
(dataHash), the seal, the owner and the session; SG1 session ids are single use (a
replayed request is refused), and the final signature is checked on confirmation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from asn1crypto import csr as asn1_csr
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from mstcrypt.apps.seal.errors import (
    SealDisabledError,
    SealNotFoundError,
    StamperNotAuthorisedError,
)
from mstcrypt.apps.seal.models import SealKey, SealRecord, SealStamper, SealStamping
from mstcrypt.crypto import twoparty as tp
from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import (
    DecodeError,
    PolicyError,
    RateLimitError,
    TwoPartyProofError,
    TwoPartyStateError,
    VerificationError,
)
from mstcrypt.formats import ses
from mstcrypt.formats.keys import public_key_from_der
from mstcrypt.kmc.context import Unit, aware, new_id
from mstcrypt.kmc.ratelimit import RateLimiter
from mstcrypt.kmc.service import Kmc
from mstcrypt.pki import Certificate, CertificationRequest, Profile

__all__ = ["SealPolicy", "SealService"]

MAKER = "seal-maker"


@dataclass(frozen=True)
class SealPolicy:
    cosign_per_minute: int = 120  #: co-signatures per owner and minute
    decrypt_per_minute: int = 30  #: co-decryptions per owner and minute
    keys_per_owner: int = 8
    clock_skew: timedelta = timedelta(minutes=10)
    max_seal_days: int = 3650


def _ctx(key_id: str) -> bytes:
    return f"seal-share:{key_id}".encode()


class SealService:
    def __init__(
        self,
        kmc: Kmc,
        *,
        server_name: str = "seal.mstcrypt.local",
        policy: SealPolicy | None = None,
    ) -> None:
        self.kmc = kmc
        self.ctx = kmc.ctx
        self.server_name = server_name
        self.policy = policy or SealPolicy()
        self.limits = RateLimiter(self.ctx)

    # -- the seal maker ------------------------------------------------------------------
    def maker(self):  # -> ServiceIdentity
        """The seal maker's key (in the SS-CC) and certificate (issuing CA)."""
        return self.kmc.identities.identity(
            MAKER,
            Profile.SEAL_SERVER_SIGN,
            "mstcrypt Seal Maker",
            subject_alt_names=(self.server_name,),
        )

    # -- helpers -------------------------------------------------------------------------
    def _key(self, u_or_s, key_id: str, owner: str | None, *, lock: bool = False) -> SealKey:
        s = u_or_s.s if isinstance(u_or_s, Unit) else u_or_s
        if not isinstance(key_id, str) or len(key_id) != 32:
            raise SealNotFoundError("no such seal key")
        row = s.get(SealKey, key_id, with_for_update={"key_share": True} if lock else None)
        if row is None or (owner is not None and row.owner != owner):
            raise SealNotFoundError("no such seal key for this owner")
        return row

    def _share(self, row: SealKey) -> tp.ServerShare:
        if row.state == "disabled":
            raise SealDisabledError(
                "the server share of this seal key is disabled"
                + (f" ({row.disabled_reason})" if row.disabled_reason else "")
            )
        if row.state != "active" or row.share_blob is None:
            raise TwoPartyStateError("this seal key is not active (key generation unfinished)")
        return tp.ServerShare.from_bytes(self.ctx.keys.unwrap_value(row.share_blob, _ctx(row.id)))

    def _limit(self, u: Unit, bucket: str, limit: int) -> None:
        if not self.limits.allow_in(u.s, bucket, limit=limit, window_seconds=60):
            raise RateLimitError("too many seal operations; retry in a minute")

    # -- key generation (terminal, §7.3 session) -----------------------------------------
    def keygen_start(self, owner: str, kg1: bytes) -> tuple[str, bytes]:
        """KG1 → (key id, KG2). The server's share is made here and kept wrapped."""
        state = tp.ServerKeyGen()
        kg2 = state.receive_commitment(kg1)
        key_id = new_id()
        with self.ctx.unit(f"terminal:{owner}") as u:
            u.lock(f"seal-owner:{owner}")
            count = len(
                u.s.scalars(
                    select(SealKey.id).where(SealKey.owner == owner, SealKey.state != "disabled")
                ).all()
            )
            if count >= self.policy.keys_per_owner:
                raise PolicyError(
                    f"an owner may hold at most {self.policy.keys_per_owner} seal keys"
                )
            u.s.add(
                SealKey(
                    id=key_id,
                    owner=owner,
                    state="keygen",
                    version=0,
                    pending_sid=state.session_id.hex(),
                    pending_blob=self.ctx.keys.wrap_value(state.to_bytes(), _ctx(key_id)),
                    created_at=u.now,
                )
            )
            u.audit("seal.key.keygen", f"seal-key:{key_id}", owner=owner)
        return key_id, kg2

    def keygen_finish(self, owner: str, key_id: str, kg3: bytes) -> bytes:
        """KG3 → KG4: check the opening and proof, store the share, return P."""
        with self.ctx.unit(f"terminal:{owner}") as u:
            row = self._key(u, key_id, owner, lock=True)
            if row.state != "keygen" or row.pending_blob is None:
                raise TwoPartyStateError("no key generation in progress for this key")
            state = tp.ServerKeyGen.from_bytes(
                self.ctx.keys.unwrap_value(row.pending_blob, _ctx(key_id))
            )
            try:
                kg4, share = state.receive_opening(kg3)
            except (TwoPartyProofError, DecodeError) as exc:
                # a failed proof ends this key generation for good (no second try)
                row.state, row.pending_blob, row.pending_sid = "disabled", None, None
                row.disabled_reason = "key generation aborted"
                u.audit("seal.key.keygen_abort", f"seal-key:{key_id}", reason=str(exc)[:200])
                failure = exc
            else:
                failure = None
                row.state = "active"
                row.public_key = share.public_key.to_bytes()
                row.share_blob = self.ctx.keys.wrap_value(share.to_bytes(), _ctx(key_id))
                row.pending_blob = row.pending_sid = None
                u.audit(
                    "seal.key.create",
                    f"seal-key:{key_id}",
                    owner=owner,
                    public_key=share.public_key.fingerprint().hex(),
                )
        if failure is not None:
            raise failure
        return kg4

    # -- co-signing ----------------------------------------------------------------------
    def cosign(self, owner: str, key_id: str, sg1: bytes) -> bytes:
        """SG1 → SG2 after the policy checks; one audit record per co-signature."""
        with self.ctx.read() as s:
            row = self._key(s, key_id, owner)
            share = self._share(row)
            cert_serial = row.cert_serial
        signer = tp.ServerSigner(share)
        message = signer.parse_request(sg1)
        kind, details = self._decide(owner, key_id, share, cert_serial, message)
        sid = signer.session_id
        assert sid is not None
        try:
            with self.ctx.unit(f"terminal:{owner}") as u:
                self._limit(u, f"seal-sign:{owner}", self.policy.cosign_per_minute)
                row = self._key(u, key_id, owner, lock=True)
                self._share_state_ok(row, share)
                u.s.add(
                    SealStamping(
                        sid=sid.hex(),
                        key_id=key_id,
                        owner=owner,
                        kind=kind,
                        es_id=details.get("es_id"),
                        data_hash=details.get("data_hash"),
                        digest=signer.digest.hex(),
                        state="answered",
                        created_at=u.now,
                    )
                )
                u.s.flush()
                u.audit(
                    f"seal.cosign.{kind}",
                    f"seal-key:{key_id}",
                    owner=owner,
                    session=sid.hex(),
                    digest=signer.digest.hex(),
                    **details,
                )
        except IntegrityError:
            raise TwoPartyStateError(
                "this signing session was already used (replay refused)"
            ) from None
        return signer.respond()

    def _share_state_ok(self, row: SealKey, share: tp.ServerShare) -> None:
        if row.state != "active":
            raise SealDisabledError("the server share of this seal key is disabled")
        if row.version != share.version:
            raise TwoPartyStateError("the share was refreshed meanwhile; retry")

    def _decide(
        self,
        owner: str,
        key_id: str,
        share: tp.ServerShare,
        cert_serial: str | None,
        message: bytes,
    ) -> tuple[str, dict[str, str]]:
        try:
            tbs = ses.parse_tbs(message)
        except (DecodeError, PolicyError):
            tbs = None
        if tbs is not None:
            return "seal", self._check_stamp(owner, key_id, cert_serial, tbs)
        if cert_serial is None and _is_csr_for(message, share.public_key):
            return "csr", {}
        raise StamperNotAuthorisedError(
            "the seal server co-signs only a TBS_Sign for a seal the caller may use, or "
            "this key's certificate request"
        )

    def _check_stamp(
        self, owner: str, key_id: str, cert_serial: str | None, tbs: ses.TbsSign
    ) -> dict[str, str]:
        es_id = tbs.seal.info.es_id
        now = self.ctx.clock()
        with self.ctx.read() as s:
            rec = s.get(SealRecord, es_id)
            stamper = s.get(SealStamper, (es_id, owner)) if rec is not None else None
            cert_der = None
            if cert_serial is not None:
                from mstcrypt.kmc.models import IssuedCertificate

                crow = s.get(IssuedCertificate, cert_serial)
                if crow is not None and crow.status == "active":
                    cert_der = crow.der
        if rec is None or rec.der != tbs.seal.der:
            raise SealNotFoundError(f"seal {es_id!r} is not one this server made")
        if rec.state != "active":
            raise SealDisabledError(f"seal {es_id!r} is revoked")
        if not aware(rec.valid_start) <= now <= aware(rec.valid_end):
            raise SealDisabledError(f"seal {es_id!r} is outside its validity period")
        if stamper is None or stamper.key_id != key_id:
            raise StamperNotAuthorisedError(f"{owner!r} is not an authorised stamper of {es_id!r}")
        if cert_der is None or not tbs.seal.info.lists_certificate(cert_der):
            raise StamperNotAuthorisedError(
                "this key's certificate is not active or not listed in the seal"
            )
        if abs(aware(tbs.time_info) - now) > self.policy.clock_skew:
            raise PolicyError("TBS_Sign.timeInfo is too far from the server's clock")
        return {
            "es_id": es_id,
            "data_hash": tbs.data_hash.hex(),
            "property_info": tbs.property_info[:200],
        }

    def confirm(self, owner: str, key_id: str, sg3: bytes) -> dict[str, str]:
        """SG3: the final signature, checked against P and the e of that session."""
        sid, der = tp.read_confirmation(sg3)
        with self.ctx.unit(f"terminal:{owner}") as u:
            row = self._key(u, key_id, owner)
            st = u.s.get(SealStamping, sid.hex(), with_for_update={"key_share": True})
            if st is None or st.key_id != key_id or st.owner != owner:
                raise SealNotFoundError("no such signing session")
            if st.state != "answered" or st.digest is None:
                raise TwoPartyStateError("this signing session is already confirmed")
            assert row.public_key is not None
            try:
                SM2PublicKey.from_bytes(row.public_key).verify_digest(der, bytes.fromhex(st.digest))
            except VerificationError:
                raise TwoPartyProofError(
                    "final signature does not verify for this session"
                ) from None
            st.state, st.signature = "completed", der
            u.audit("seal.cosign.completed", f"seal-key:{key_id}", session=sid.hex(), kind=st.kind)
        return {"session": sid.hex(), "state": "completed"}

    # -- co-decryption -------------------------------------------------------------------
    def codecrypt(self, owner: str, key_id: str, dc1: bytes) -> bytes:
        with self.ctx.read() as s:
            share = self._share(self._key(s, key_id, owner))
        dec = tp.ServerDecryptor(share)
        dc2 = dec.respond(dc1)
        assert dec.session_id is not None
        try:
            with self.ctx.unit(f"terminal:{owner}") as u:
                self._limit(u, f"seal-decrypt:{owner}", self.policy.decrypt_per_minute)
                self._share_state_ok(self._key(u, key_id, owner, lock=True), share)
                u.s.add(
                    SealStamping(
                        sid=dec.session_id.hex(),
                        key_id=key_id,
                        owner=owner,
                        kind="decrypt",
                        state="completed",
                        created_at=u.now,
                    )
                )
                u.s.flush()
                u.audit("seal.codecrypt", f"seal-key:{key_id}", session=dec.session_id.hex())
        except IntegrityError:
            raise TwoPartyStateError(
                "this decryption session was already used (replay refused)"
            ) from None
        return dc2

    # -- refresh -------------------------------------------------------------------------
    def refresh_start(self, owner: str, key_id: str, rf1: bytes) -> bytes:
        with self.ctx.unit(f"terminal:{owner}", audited=False) as u:
            row = self._key(u, key_id, owner, lock=True)
            share = self._share(row)
            ref = tp.ServerRefresh(share)
            rf2 = ref.respond(rf1)
            assert ref.session_id is not None
            row.pending_sid = ref.session_id.hex()
            row.pending_blob = self.ctx.keys.wrap_value(ref.to_bytes(), _ctx(key_id))
        return rf2

    def refresh_finish(self, owner: str, key_id: str, rf3: bytes) -> int:
        """Check the terminal's confirmation and commit the refreshed share; returns
        the new share version."""
        with self.ctx.unit(f"terminal:{owner}") as u:
            row = self._key(u, key_id, owner, lock=True)
            self._share(row)
            if row.pending_blob is None or row.pending_sid != tp.session_id(rf3).hex():
                raise TwoPartyStateError("no refresh in progress for this session")
            ref = tp.ServerRefresh.from_bytes(
                self.ctx.keys.unwrap_value(row.pending_blob, _ctx(key_id))
            )
            row.pending_blob = row.pending_sid = None
            try:
                new = ref.finish(rf3)
            except (TwoPartyProofError, DecodeError) as exc:
                u.audit("seal.key.refresh_abort", f"seal-key:{key_id}", reason=str(exc)[:200])
                failure: Exception | None = exc
            else:
                failure = None
                row.share_blob = self.ctx.keys.wrap_value(new.to_bytes(), _ctx(key_id))
                row.version = new.version
                u.audit("seal.key.refresh", f"seal-key:{key_id}", version=new.version)
        if failure is not None:
            raise failure
        return new.version

    # -- certificate ---------------------------------------------------------------------
    def certify(self, owner: str, key_id: str, csr_der: bytes) -> Certificate:
        """Issue the stamper certificate for the joint key from a CSR that the two
        parties signed together (the server co-signed it as kind "csr")."""
        csr = CertificationRequest.from_der(csr_der)
        with self.ctx.unit(f"terminal:{owner}") as u:
            row = self._key(u, key_id, owner, lock=True)
            self._share(row)
            if row.cert_serial is not None:
                raise PolicyError("this seal key is already certified")
            if row.public_key is None or csr.public_key.to_bytes() != row.public_key:
                raise PolicyError("the request is not for this seal key")
            cert = self.kmc.ca.issue(
                u,
                public_key=csr.public_key,
                subject={"CN": owner, "OU": "seal"},
                profile=Profile.DEVICE_SIGN,
                owner=owner,
                usage="sign",
                key_id=None,
            )
            row.cert_serial = f"{cert.serial:x}"
            u.audit("seal.key.certify", f"seal-key:{key_id}", serial=row.cert_serial)
        return cert

    # -- operators -----------------------------------------------------------------------
    def set_key_state(self, key_id: str, *, enabled: bool, actor: str, reason: str = "") -> None:
        """Disable (lost phone) or re-enable the server share of a seal key."""
        with self.ctx.unit(actor) as u:
            row = self._key(u, key_id, None, lock=True)
            if row.state == "keygen":
                raise PolicyError("the key generation is not finished")
            row.state = "active" if enabled else "disabled"
            row.disabled_reason = None if enabled else (reason[:255] or "disabled by operator")
            u.audit(
                "seal.key.enable" if enabled else "seal.key.disable",
                f"seal-key:{key_id}",
                owner=row.owner,
                reason=reason[:200],
            )

    def disable_owner(self, owner: str, *, actor: str, reason: str = "") -> int:
        """Disable every seal key of an owner (a lost phone); returns how many."""
        with self.ctx.unit(actor) as u:
            rows = u.s.scalars(
                select(SealKey)
                .where(SealKey.owner == owner, SealKey.state != "disabled")
                .with_for_update()
            ).all()
            for row in rows:
                row.state = "disabled"
                row.disabled_reason = reason[:255] or "disabled by operator"
            u.audit("seal.owner.disable", f"owner:{owner}", keys=len(rows), reason=reason[:200])
        return len(rows)

    def make_seal(
        self,
        *,
        name: str,
        picture_type: str,
        picture: bytes,
        width: int,
        height: int,
        valid_start: datetime,
        valid_end: datetime,
        stampers: Sequence[str],
        actor: str,
        seal_type: int = ses.SealType.ORGANIZATION,
        es_id: str | None = None,
    ) -> ses.Seal:
        """Make (and keep) a seal listing the certified seal key of each stamper."""
        if not stampers:
            raise PolicyError("a seal needs at least one authorised stamper")
        if valid_end - valid_start > timedelta(days=self.policy.max_seal_days):
            raise PolicyError(f"a seal is valid for at most {self.policy.max_seal_days} days")
        es_id = es_id or f"ES{new_id()[:24].upper()}"
        certs: list[bytes] = []
        keys: dict[str, str] = {}
        with self.ctx.read() as s:
            from mstcrypt.kmc.models import IssuedCertificate

            for owner in dict.fromkeys(stampers):
                row = s.scalars(
                    select(SealKey)
                    .where(
                        SealKey.owner == owner,
                        SealKey.state == "active",
                        SealKey.cert_serial.is_not(None),
                    )
                    .order_by(SealKey.created_at.desc())
                ).first()
                crow = s.get(IssuedCertificate, row.cert_serial) if row else None
                if row is None or crow is None or crow.status != "active":
                    raise PolicyError(f"stamper {owner!r} has no active certified seal key")
                certs.append(crow.der)
                keys[owner] = row.id
        maker = self.maker()
        assert maker.certificate is not None
        info = ses.SealInfo(
            es_id=es_id,
            name=name,
            picture_type=picture_type,
            picture=picture,
            width=width,
            height=height,
            valid_start=valid_start,
            valid_end=valid_end,
            certs=tuple(certs),
            seal_type=seal_type,
            vid="mstcrypt",
            created=self.ctx.clock(),
        )
        seal = ses.make_seal(info, maker.certificate.der, maker.sign)
        with self.ctx.unit(actor) as u:
            u.s.add(
                SealRecord(
                    es_id=es_id,
                    name=name,
                    der=seal.der,
                    valid_start=valid_start,
                    valid_end=valid_end,
                    state="active",
                    created_at=u.now,
                    created_by=actor[:128],
                )
            )
            for owner, key_id in keys.items():
                u.s.add(SealStamper(es_id=es_id, owner=owner, key_id=key_id))
            u.audit("seal.make", f"seal:{es_id}", name=name, stampers=sorted(keys))
        return seal

    def revoke_seal(self, es_id: str, *, actor: str) -> None:
        with self.ctx.unit(actor) as u:
            rec = u.s.get(SealRecord, es_id, with_for_update={"key_share": True})
            if rec is None:
                raise SealNotFoundError(f"no seal {es_id!r}")
            rec.state = "revoked"
            u.audit("seal.revoke", f"seal:{es_id}")

    def seal(self, es_id: str) -> ses.Seal:
        with self.ctx.read() as s:
            rec = s.get(SealRecord, es_id)
            if rec is None:
                raise SealNotFoundError(f"no seal {es_id!r}")
            return ses.parse_seal(rec.der)

    def seals_for(self, owner: str) -> list[dict[str, object]]:
        """The seals ``owner`` may stamp with."""
        with self.ctx.read() as s:
            rows = s.execute(
                select(SealRecord, SealStamper.key_id)
                .join(SealStamper, SealStamper.es_id == SealRecord.es_id)
                .where(SealStamper.owner == owner)
            ).all()
            return [
                {
                    "es_id": r.es_id,
                    "name": r.name,
                    "state": r.state,
                    "key_id": key_id,
                    "valid_start": aware(r.valid_start).isoformat(),
                    "valid_end": aware(r.valid_end).isoformat(),
                }
                for r, key_id in rows
            ]

    def keys_of(self, owner: str) -> list[dict[str, object]]:
        with self.ctx.read() as s:
            rows = s.scalars(select(SealKey).where(SealKey.owner == owner)).all()
            return [
                {
                    "key_id": r.id,
                    "state": r.state,
                    "version": r.version,
                    "certified": r.cert_serial is not None,
                    "public_key": SM2PublicKey.from_bytes(r.public_key).fingerprint().hex()
                    if r.public_key
                    else None,
                }
                for r in rows
            ]

    def stampings(self, *, es_id: str | None = None, owner: str | None = None) -> list[dict]:
        with self.ctx.read() as s:
            q = select(SealStamping).order_by(SealStamping.created_at)
            if es_id is not None:
                q = q.where(SealStamping.es_id == es_id)
            if owner is not None:
                q = q.where(SealStamping.owner == owner)
            return [
                {
                    "session": r.sid,
                    "owner": r.owner,
                    "kind": r.kind,
                    "es_id": r.es_id,
                    "data_hash": r.data_hash,
                    "state": r.state,
                    "at": aware(r.created_at).isoformat(),
                }
                for r in s.scalars(q.limit(10_000))
            ]


def _is_csr_for(message: bytes, public_key: SM2PublicKey) -> bool:
    """Whether ``message`` is a DER CertificationRequestInfo for ``public_key``."""
    try:
        info = asn1_csr.CertificationRequestInfo.load(message, strict=True)
        spki = info["subject_pk_info"].dump()
        return public_key_from_der(spki) == public_key and info.dump(force=True) == message
    except Exception:
        return False
