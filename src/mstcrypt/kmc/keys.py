"""Encryption-key lifecycle (generate, distribute, update, archive, revoke, destroy).

State machine (:data:`~mstcrypt.kmc.context.KEY_TRANSITIONS`; anything else is refused)::

    generated --distribute--> active --rotate--> decrypt_only --archive--> archived
        \\                     |                   |                         |
         +------revoke--------+-------revoke------+                          |
                              v                                              v
                           revoked --archive--> archived --destroy--> destroyed
                           revoked --destroy--> destroyed

Key material is generated in the SS-CC and leaves it only as an SM2EnvelopedKey to a
terminal key. A rotation started where the terminal is not (the console) seals the new
key to the owner's active signing certificate and keeps it as a pending delivery
(:class:`~mstcrypt.kmc.models.KeyDelivery`), which the terminal lists and acknowledges
with its own session (:meth:`KeyService.pending`, :meth:`KeyService.collect`).
Operators' own keys are never generated, distributed or rotated through
here (their credentials are the administrator's business at the console).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import PolicyError
from mstcrypt.kmc.ca import REVOCATION_REASONS, CaService
from mstcrypt.kmc.context import KEY_TRANSITIONS, KmcContext, NotFoundError, Unit, aware, new_id
from mstcrypt.kmc.models import EncryptionKey, IssuedCertificate, KeyDelivery, Operator
from mstcrypt.pki import AltNames, Certificate, Profile, spec
from mstcrypt.pki.names import ATTRIBUTE_ORDER

__all__ = ["KeyService", "subject_of"]

_KEYWORD_OF = {attr: kw for kw, attr in ATTRIBUTE_ORDER}


def subject_of(cert: Certificate) -> dict[str, Any]:
    """A certificate's subject as the keywords :func:`mstcrypt.pki.name` takes (a list
    where an attribute repeats); :class:`PolicyError` for an attribute it cannot write."""
    out: dict[str, Any] = {}
    for rdn in cert.subject.chosen:
        for atv in rdn:
            kw = _KEYWORD_OF.get(atv["type"].native)
            value = atv["value"].native
            if kw is None or not isinstance(value, str):
                raise PolicyError(
                    "the current certificate's subject has an attribute this CA does not "
                    "write; give the subject"
                )
            if kw in out:
                prev = out[kw]
                out[kw] = [*prev, value] if isinstance(prev, list) else [prev, value]
            else:
                out[kw] = value
    if not out:
        raise PolicyError("the current certificate has an empty subject; give the subject")
    return out


class KeyService:
    def __init__(self, ctx: KmcContext, ca: CaService) -> None:
        self.ctx = ctx
        self.ca = ca

    @staticmethod
    def _not_operator(u: Unit, owner: str, op: str) -> None:
        if u.s.get(Operator, owner) is not None:
            raise PolicyError(
                f"{owner!r} is an operator: operator keys are not {op}d through the API"
            )

    def list(self, owner: str) -> list[dict[str, Any]]:
        """The owner's keys by version; ``awaiting_pickup``: rotated to the terminal and
        not collected yet (:meth:`rotate` without a terminal key)."""
        with self.ctx.read() as s:
            waiting = set(
                s.scalars(
                    select(KeyDelivery.key_id).where(
                        KeyDelivery.owner == owner,
                        KeyDelivery.collected_at.is_(None),
                        KeyDelivery.envelope.is_not(None),
                    )
                )
            )
            rows = s.scalars(
                select(EncryptionKey)
                .where(EncryptionKey.owner == owner)
                .order_by(EncryptionKey.version)
            )
            return [
                {
                    "id": r.id,
                    "owner": r.owner,
                    "version": r.version,
                    "state": r.state,
                    "public_key": r.public_key.hex(),
                    "has_material": r.key_blob is not None,
                    "awaiting_pickup": r.id in waiting,
                }
                for r in rows
            ]

    def _new_key(
        self,
        u: Unit,
        owner: str,
        state: str,
        generated: tuple[str, SM2PublicKey, bytes] | None = None,
    ) -> tuple[EncryptionKey, SM2PublicKey]:
        """Store a key made by :meth:`_generate` (before the transaction) or made now."""
        version = (
            u.s.scalar(select(func.max(EncryptionKey.version)).where(EncryptionKey.owner == owner))
            or 0
        ) + 1
        key_id, pub, blob = generated or self._generate()
        row = EncryptionKey(
            id=key_id,
            owner=owner,
            version=version,
            state=state,
            public_key=pub.to_bytes(),
            key_blob=blob,
            created_at=u.now,
            updated_at=u.now,
        )
        u.s.add(row)
        u.s.flush()
        return row, pub

    def _generate(self) -> tuple[str, SM2PublicKey, bytes]:
        """A new key pair in the SS-CC: its id, public key and wrapped blob, held in
        memory only (a refused transaction leaves nothing behind)."""
        key_id = new_id()
        pub, blob = self.ctx.keys.generate_sm2(f"enc:{key_id}".encode())
        return key_id, pub, blob

    def generate(self, owner: str, *, actor: str) -> str:
        """Generate an escrowed encryption key pair (state ``generated``)."""
        generated = self._generate()  # outside the write transaction
        with self.ctx.unit(actor) as u:
            self._not_operator(u, owner, "generate")
            u.lock(f"owner:{owner}")
            row, _ = self._new_key(u, owner, "generated", generated)
            u.audit("key.generate", f"key:{row.id}", owner=owner, version=row.version)
        return row.id

    def distribute(
        self,
        key_id: str,
        terminal_public_key: SM2PublicKey,
        *,
        subject: dict[str, str],
        profile: Profile = Profile.DEVICE_ENC,
        actor: str,
    ) -> tuple[bytes, Certificate]:
        """generated → active: certify the key and wrap it to the terminal's signing key.
        The owner's previous active key becomes decrypt_only (its certificate superseded).
        The certificate and the envelope are made from a read-only snapshot before the
        write transaction, which re-checks the key's state and records them."""
        with self.ctx.db.read() as s:
            seen = s.get(EncryptionKey, key_id)
            if seen is None or seen.state not in KEY_TRANSITIONS["distribute"]:
                with self.ctx.unit(actor) as u:
                    u.key(key_id, "distribute")  # raises the precise error
                raise PolicyError(f"cannot distribute key {key_id}")  # pragma: no cover
            owner, public_key, blob = seen.owner, seen.public_key, seen.key_blob or b""
        prepared = self.ca.build(
            public_key=SM2PublicKey.from_bytes(public_key),
            subject=subject,
            profile=profile,
            owner=owner,
            usage="enc",
            key_id=key_id,
            subject_alt_names=self._host_names(owner, Profile(profile)),
        )
        cert = prepared.certificate
        envelope = self.ctx.keys.export_enveloped(
            blob, f"enc:{key_id}".encode(), terminal_public_key
        )
        with self.ctx.unit(actor) as u:
            row = u.key(key_id, "distribute")
            if row.owner != owner or row.public_key != public_key:  # pragma: no cover
                raise PolicyError("the key changed while it was being certified; retry")
            self._not_operator(u, row.owner, "distribute")
            u.lock(f"owner:{row.owner}")
            previous = self._demote_active(u, row.owner, keep=row.id)
            row.state, row.updated_at = "active", u.now
            self.ca.record(u, [prepared])
            self._pair_with_signing(u, row.owner, cert)
            self._supersede(u, previous, row.owner)
            u.audit(
                "key.distribute",
                f"key:{row.id}",
                owner=row.owner,
                enc_serial=f"{cert.serial:x}",
                recipient=terminal_public_key.fingerprint().hex(),
            )
        return envelope, cert

    def _host_names(self, owner: str, profile: Profile) -> list[str]:
        """For a gateway or server encryption certificate, the host names of the owner's
        current signing certificate (the pair carries the same names); none otherwise.
        Read before the write transaction, with the rest of the certificate's making."""
        if spec(profile).alt_names not in (AltNames.HOST, AltNames.HOST_OPTIONAL):
            return []
        with self.ctx.db.read() as s:
            signs = list(
                s.scalars(
                    select(IssuedCertificate).where(
                        IssuedCertificate.owner == owner,
                        IssuedCertificate.usage == "sign",
                        IssuedCertificate.status == "active",
                    )
                )
            )
        if not signs:
            return []
        sign = Certificate.from_der(max(signs, key=lambda c: aware(c.issued_at)).der)
        return [v for k, v in sign.subject_alt_name_entries if k in ("dns", "ip")]

    def _pair_with_signing(self, u: Unit, owner: str, enc: Certificate) -> None:
        """GM/T 0034 dual certificates: a new encryption certificate becomes the pair of
        the owner's current signing certificate, so a revocation for a lost device
        (:data:`~mstcrypt.kmc.ca.PAIR_REASONS`) still takes both after a key update."""
        signs = self.ca.active_certificates(u, owner=owner, usage="sign")
        row = u.s.get(IssuedCertificate, f"{enc.serial:x}")
        if not signs or row is None:
            return
        sign = max(signs, key=lambda c: aware(c.issued_at))
        row.pair_serial, sign.pair_serial = sign.serial, row.serial

    def _demote_active(self, u: Unit, owner: str, keep: str) -> list[str]:
        demoted = []
        for other in u.s.scalars(
            select(EncryptionKey)
            .where(
                EncryptionKey.owner == owner,
                EncryptionKey.state == "active",
                EncryptionKey.id != keep,
            )
            .with_for_update(key_share=True)
        ):
            other.state, other.updated_at = "decrypt_only", u.now
            demoted.append(other.id)
        return demoted

    def _supersede(self, u: Unit, key_ids: list[str], owner: str) -> None:
        old = self.ca.active_certificates(u, key_ids=key_ids) if key_ids else []
        if old:
            self.ca.revoke_rows(u, old, "superseded", why="key update")
        else:
            self.ca.groups.identity_changed(u, owner, "key update")

    def _rotation_inputs(
        self, owner: str, profile: Profile | None, subject: dict[str, Any] | None
    ) -> tuple[IssuedCertificate | None, Profile, dict[str, Any]]:
        """Read before the write transaction: the owner's newest active signing
        certificate (None: none), and the profile and subject of the new encryption
        certificate (given, else those of the current one)."""
        with self.ctx.db.read() as s:
            if s.get(Operator, owner) is not None:
                raise PolicyError(
                    f"{owner!r} is an operator: operator keys are not rotated through the API"
                )
            signs = list(
                s.scalars(
                    select(IssuedCertificate).where(
                        IssuedCertificate.owner == owner,
                        IssuedCertificate.usage == "sign",
                        IssuedCertificate.status == "active",
                    )
                )
            )
            sign = max(signs, key=lambda c: aware(c.issued_at)) if signs else None
            current = None
            if profile is None or subject is None:
                current = s.scalar(
                    select(IssuedCertificate)
                    .join(EncryptionKey, EncryptionKey.id == IssuedCertificate.key_id)
                    .where(
                        IssuedCertificate.owner == owner,
                        IssuedCertificate.usage == "enc",
                        IssuedCertificate.status == "active",
                        EncryptionKey.state == "active",
                    )
                    .order_by(IssuedCertificate.issued_at.desc())
                    .limit(1)
                )
            if current is not None:
                s.expunge(current)
            if sign is not None:
                s.expunge(sign)
        if profile is None:
            profile = Profile(current.profile) if current is not None else Profile.DEVICE_ENC
        if subject is None:
            if current is None:
                raise PolicyError(
                    f"{owner!r} has no active encryption certificate to take the subject "
                    "from; give the subject"
                )
            subject = subject_of(Certificate.from_der(current.der))
        return sign, Profile(profile), subject

    def rotate(
        self,
        owner: str,
        terminal_public_key: SM2PublicKey | None = None,
        *,
        subject: dict[str, Any] | None = None,
        profile: Profile | None = None,
        actor: str,
    ) -> tuple[str, bytes, Certificate]:
        """Update: a new version becomes active (encrypts); old versions decrypt only.
        The key pair, its certificate and the envelope are made before the write
        transaction, which re-checks the owner and the current key and records them.

        ``terminal_public_key``: the key to envelope the new key to (the caller hands the
        envelope over). Without it, the envelope is sealed to the public key of the
        owner's active signing certificate (the terminal's token unwraps it with its
        signing key, as at enrollment) and kept as a pending delivery in the same
        transaction, for the terminal to collect (:meth:`pending`, :meth:`collect`). No
        active signing certificate: :class:`PolicyError`, nothing changes. A second
        rotation before the pickup adds a second delivery: the terminal collects both,
        in version order (the older one becomes decrypt-only on the token as well).

        ``subject`` and ``profile``: of the new encryption certificate (default: those of
        the current one)."""
        sign, profile, subject = self._rotation_inputs(owner, profile, subject)
        deliver = terminal_public_key is None
        if deliver:
            if sign is None:
                raise PolicyError(
                    f"{owner!r} has no active signing certificate: there is no terminal key "
                    "to deliver a new encryption key to (re-enroll the terminal)"
                )
            terminal_public_key = Certificate.from_der(sign.der).public_key
        assert terminal_public_key is not None
        generated = self._generate()
        key_id, pub, blob = generated
        prepared = self.ca.build(
            public_key=pub,
            subject=subject,
            profile=profile,
            owner=owner,
            usage="enc",
            key_id=key_id,
            subject_alt_names=self._host_names(owner, Profile(profile)),
        )
        envelope = self.ctx.keys.export_enveloped(
            blob, f"enc:{key_id}".encode(), terminal_public_key
        )
        cert = prepared.certificate
        with self.ctx.unit(actor) as u:
            self._not_operator(u, owner, "rotate")
            u.lock(f"owner:{owner}")
            if deliver:
                assert sign is not None
                still = u.s.get(IssuedCertificate, sign.serial, with_for_update={"key_share": True})
                if still is None or still.status != "active" or still.owner != owner:
                    raise PolicyError(
                        f"{owner!r}'s signing certificate {sign.serial} is no longer active: "
                        "there is no terminal key to deliver a new encryption key to"
                    )
            current = u.s.scalar(
                select(EncryptionKey)
                .where(EncryptionKey.owner == owner, EncryptionKey.state == "active")
                .with_for_update(key_share=True)
            )
            if current is None:
                raise PolicyError(
                    f"{owner!r} has no active encryption key to rotate (a concurrent "
                    "rotation may just have replaced it; list the keys and retry)"
                )
            current.state, current.updated_at = "decrypt_only", u.now
            row, _ = self._new_key(u, owner, "active", generated)
            self.ca.record(u, [prepared])
            self._pair_with_signing(u, owner, cert)
            self._supersede(u, [current.id], owner)
            if deliver:
                assert sign is not None
                u.s.add(
                    KeyDelivery(
                        key_id=row.id,
                        owner=owner,
                        cert_serial=f"{cert.serial:x}",
                        recipient_serial=sign.serial,
                        envelope=envelope,
                        created_at=u.now,
                    )
                )
            u.audit(
                "key.rotate",
                f"key:{row.id}",
                owner=owner,
                version=row.version,
                previous_key_id=current.id,
                enc_serial=f"{cert.serial:x}",
                delivery=("pending:" + sign.serial) if deliver and sign else "caller",
                recipient=terminal_public_key.fingerprint().hex(),
            )
        return row.id, envelope, cert

    # -- pickup by the terminal ------------------------------------------------------------
    def pending(self, owner: str) -> list[dict[str, Any]]:
        """``owner``'s rotated keys not collected yet, oldest version first: key id,
        version, the SM2EnvelopedKey (DER) and the encryption certificate (DER). A key
        revoked or destroyed meanwhile is not offered (its envelope was dropped), nor one
        sealed to a signing certificate that is no longer active."""
        with self.ctx.read() as s:
            recipient = aliased(IssuedCertificate)
            rows = s.execute(
                select(KeyDelivery, EncryptionKey.version, IssuedCertificate.der)
                .join(EncryptionKey, EncryptionKey.id == KeyDelivery.key_id)
                .join(IssuedCertificate, IssuedCertificate.serial == KeyDelivery.cert_serial)
                .join(recipient, recipient.serial == KeyDelivery.recipient_serial)
                .where(
                    KeyDelivery.owner == owner,
                    EncryptionKey.owner == owner,
                    KeyDelivery.collected_at.is_(None),
                    KeyDelivery.envelope.is_not(None),
                    EncryptionKey.state.in_(("active", "decrypt_only")),
                    # sealed to a signing key the terminal still holds under an active
                    # certificate (a re-enrolled terminal cannot open the older ones)
                    recipient.status == "active",
                )
                .order_by(EncryptionKey.version)
            ).all()
            return [
                {
                    "key_id": d.key_id,
                    "version": version,
                    "enveloped_key": bytes(d.envelope or b""),
                    "encryption_certificate": bytes(der),
                    "created_at": aware(d.created_at),
                }
                for d, version, der in rows
            ]

    def collect(self, owner: str, key_id: str, *, actor: str) -> int:
        """The terminal of ``owner`` installed ``key_id``: mark the delivery collected
        and drop the envelope. Returns the key's version. Another owner's key, an
        unknown key and a delivery already collected are all "nothing pending"
        (:class:`NotFoundError`, the same answer)."""
        with self.ctx.unit(actor) as u:
            u.lock(f"owner:{owner}")
            d = u.s.get(KeyDelivery, key_id, with_for_update=True) if len(key_id) <= 32 else None
            if d is None or d.owner != owner or d.collected_at is not None or d.envelope is None:
                raise NotFoundError(f"no key delivery {key_id[:32]!r} is pending for this terminal")
            key = u.s.get(EncryptionKey, key_id)
            assert key is not None
            d.collected_at, d.envelope = u.now, None
            u.audit(
                "key.collect",
                f"key:{key_id}",
                owner=owner,
                version=key.version,
                enc_serial=d.cert_serial,
            )
            return key.version

    @staticmethod
    def _drop_delivery(u: Unit, key_id: str) -> None:
        """A revoked or destroyed key is not delivered any more."""
        d = u.s.get(KeyDelivery, key_id)
        if d is not None and d.envelope is not None:
            d.envelope = None

    def archive(self, key_id: str, *, actor: str) -> None:
        with self.ctx.unit(actor) as u:
            row = u.key(key_id, "archive")
            row.state, row.updated_at = "archived", u.now
            u.audit("key.archive", f"key:{key_id}", owner=row.owner)

    def revoke(self, key_id: str, *, reason: str = "key_compromise", actor: str) -> None:
        """Revoke the key and, at the CA, every active certificate of it (and their pairs
        for a lost device); the owner's derived keys rotate."""
        with self.ctx.unit(actor) as u:
            row = u.key(key_id, "revoke")
            row.state, row.updated_at = "revoked", u.now
            self._drop_delivery(u, key_id)
            certs = self.ca.active_certificates(u, key_ids=[key_id])
            if certs:
                revoked = self.ca.revoke_rows(u, certs, reason, why="key revoked")
            else:
                if reason not in REVOCATION_REASONS:
                    raise PolicyError(f"unknown revocation reason {reason!r}")
                revoked = []
                self.ca.groups.identity_changed(u, row.owner, "key revoked")
            u.audit(
                "key.revoke",
                f"key:{key_id}",
                owner=row.owner,
                reason=reason,
                revoked_serials=revoked,
            )

    def destroy(self, key_id: str, *, actor: str) -> None:
        """Irreversibly erase the escrowed material (the row keeps only the public key)."""
        with self.ctx.unit(actor) as u:
            row = u.key(key_id, "destroy")
            row.key_blob = None
            self._drop_delivery(u, key_id)
            row.state, row.updated_at = "destroyed", u.now
            u.audit("key.destroy", f"key:{key_id}", owner=row.owner)
            u.after_commit(self.ctx.db.flush_deleted)
