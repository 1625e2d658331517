"""The CA and key management center as one service object over a database.

Every operation that changes a key, a certificate or a group runs in one database
transaction that also appends its audit record, so a crash leaves the old state or the
new one. Private keys are unwrapped by the SS-CC (:class:`KeyWrapper`) only for the
operation that needs them.

Encryption-key lifecycle (state machine; anything else is refused with PolicyError)::

    generated --distribute--> active --rotate--> decrypt_only --archive--> archived
        \\                     |                   |                         |
         +------revoke--------+-------revoke------+                          |
                              v                                              v
                           revoked --archive--> archived --destroy--> destroyed
                           revoked --destroy--> destroyed

Recovery releases an escrowed key (any state but destroyed) to a new terminal only
after two distinct operators approve it (dual control).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mstcrypt.crypto import sm4
from mstcrypt.crypto.sm2 import SM2PrivateKey, SM2PublicKey
from mstcrypt.crypto.sm3 import kdf, pbkdf2_hmac_sm3, sm3
from mstcrypt.errors import (
    DecryptionError,
    KeyStoreError,
    MstCryptError,
    PolicyError,
    VerificationError,
)
from mstcrypt.formats.envelope import build_enveloped_key
from mstcrypt.kmc import audit
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.models import (
    Base,
    CertificateAuthority,
    CrlRecord,
    EncryptionKey,
    EnrollmentCode,
    Group,
    GroupKey,
    GroupMember,
    IssuedCertificate,
    MemberKdk,
    RateLimit,
    RecoveryRequest,
    ServiceKey,
)
from mstcrypt.module.server import KeyWrapper
from mstcrypt.pki import (
    CRL,
    Certificate,
    CertificationRequest,
    Profile,
    RevokedEntry,
    build_certificate,
    build_crl,
    name,
    spec,
)

__all__ = ["Enrollment", "Kmc", "NotFoundError"]

KEY_TRANSITIONS: dict[str, set[str]] = {
    "distribute": {"generated"},
    "rotate": {"active"},
    "archive": {"decrypt_only", "revoked"},
    "revoke": {"generated", "active", "decrypt_only"},
    "destroy": {"archived", "revoked"},
    "recover": {"generated", "active", "decrypt_only", "archived", "revoked"},
}
CRL_LIFETIME = timedelta(days=1)
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
REVOCATION_REASONS = (
    "unspecified",
    "key_compromise",
    "ca_compromise",
    "affiliation_changed",
    "superseded",
    "cessation_of_operation",
    "certificate_hold",
)


class NotFoundError(PolicyError):
    """The named certificate, key, code, group or request does not exist."""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _new_id() -> str:
    return secrets.token_hex(16)


def _serial() -> int:
    return secrets.randbits(127) | (1 << 126)  # positive, 16 bytes, never zero


@dataclass
class Enrollment:
    owner: str
    sign_certificate: Certificate
    encryption_certificate: Certificate
    enveloped_key: bytes
    chain: list[Certificate]
    key_id: str


class Kmc:
    """CA + KMC over one database and one SS-CC key wrapper."""

    def __init__(
        self,
        db: Database,
        wrapper: KeyWrapper,
        *,
        crl_base_url: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.wrapper = wrapper
        self.crl_base_url = crl_base_url
        self.clock = clock
        self._key_cache: dict[str, SM2PrivateKey] = {}

    # ------------------------------------------------------------------ set-up ----------
    def create_schema(self) -> None:
        from mstcrypt.kmc.db import migrate

        migrate(self.db)
        with self.db.tx() as s:
            audit.ensure_head(s)

    def is_initialised(self) -> bool:
        with self.db.tx() as s:
            return s.scalar(select(func.count()).select_from(CertificateAuthority)) > 0

    def init_ca(
        self,
        *,
        organisation: str = "mstcrypt",
        country: str = "CN",
        root_cn: str = "mstcrypt Root CA",
        sub_cn: str = "mstcrypt Issuing CA",
        actor: str = "system",
    ) -> list[Certificate]:
        """Create the root and the issuing (intermediate) CA and the audit key."""
        now = self.clock()
        root_key, sub_key, audit_key, recovery_key = (SM2PrivateKey.generate() for _ in range(4))
        root_name = name(C=country, O=organisation, CN=root_cn)
        sub_name = name(C=country, O=organisation, CN=sub_cn)
        root_cert = build_certificate(
            subject=root_name,
            public_key=root_key.public_key(),
            issuer=root_name,
            issuer_public_key=root_key.public_key(),
            signer=root_key.sign,
            serial=_serial(),
            not_before=now - timedelta(minutes=5),
            not_after=now + timedelta(days=spec(Profile.ROOT_CA).default_days),
            profile=Profile.ROOT_CA,
        )
        sub_cert = build_certificate(
            subject=sub_name,
            public_key=sub_key.public_key(),
            issuer=root_name,
            issuer_public_key=root_key.public_key(),
            signer=root_key.sign,
            serial=_serial(),
            not_before=now - timedelta(minutes=5),
            not_after=now + timedelta(days=spec(Profile.SUB_CA).default_days),
            profile=Profile.SUB_CA,
            crl_urls=self._crl_urls("root"),
        )
        with self.db.tx() as s:
            if s.scalar(select(func.count()).select_from(CertificateAuthority)):
                raise PolicyError("the CA is already initialised")
            root = CertificateAuthority(
                id=1,
                name="root",
                level="root",
                parent_id=None,
                subject=root_cert.subject_str,
                cert_der=root_cert.der,
                key_blob=self.wrapper.wrap(root_key, b"ca:root"),
                crl_number=0,
                created_at=now,
            )
            sub = CertificateAuthority(
                id=2,
                name="issuing",
                level="sub",
                parent_id=1,
                subject=sub_cert.subject_str,
                cert_der=sub_cert.der,
                key_blob=self.wrapper.wrap(sub_key, b"ca:issuing"),
                crl_number=0,
                created_at=now,
            )
            s.add_all([root, sub])
            s.flush()
            for ca, cert in ((root, root_cert), (sub, sub_cert)):
                s.add(
                    IssuedCertificate(
                        serial=f"{cert.serial:x}",
                        ca_id=1,
                        subject=cert.subject_str,
                        owner=None,
                        profile=(Profile.ROOT_CA if ca.level == "root" else Profile.SUB_CA).value,
                        usage="ca",
                        key_id=None,
                        der=cert.der,
                        fingerprint=cert.fingerprint,
                        not_before=cert.not_before,
                        not_after=cert.not_after,
                        status="active",
                        issued_at=now,
                    )
                )
            s.add(
                ServiceKey(
                    name="audit",
                    public_key=audit_key.public_key().to_bytes(),
                    key_blob=self.wrapper.wrap(audit_key, b"service:audit"),
                    created_at=now,
                )
            )
            s.add(
                ServiceKey(
                    name="file-recovery",
                    public_key=recovery_key.public_key().to_bytes(),
                    key_blob=self.wrapper.wrap(recovery_key, b"service:file-recovery"),
                    created_at=now,
                )
            )
            audit.append(
                s,
                actor=actor,
                action="ca.init",
                target="ca:root,issuing",
                details={
                    "root_serial": f"{root_cert.serial:x}",
                    "issuing_serial": f"{sub_cert.serial:x}",
                    "audit_key": audit_key.public_key().fingerprint().hex(),
                },
            )
            self._publish_crl(s, root, root_key, [])
            self._publish_crl(s, sub, sub_key, [])
        return [sub_cert, root_cert]

    def _crl_urls(self, ca_name: str) -> list[str]:
        return [f"{self.crl_base_url.rstrip('/')}/crl/{ca_name}.crl"] if self.crl_base_url else []

    # ------------------------------------------------------------------ helpers ---------
    def _ca(self, s: Session, ca_name: str = "issuing") -> CertificateAuthority:
        ca = s.scalar(select(CertificateAuthority).where(CertificateAuthority.name == ca_name))
        if ca is None:
            raise PolicyError("the CA is not initialised (run `mstcrypt ca init`)")
        return ca

    def _ca_key(self, ca: CertificateAuthority) -> SM2PrivateKey:
        cache_key = f"ca:{ca.name}:{sm3(ca.key_blob).hex()}"
        key = self._key_cache.get(cache_key)
        if key is None:
            key = self.wrapper.unwrap(ca.key_blob, f"ca:{ca.name}".encode())
            self._key_cache[cache_key] = key
        return key

    def chain(self) -> list[Certificate]:
        """[issuing CA, root CA]."""
        with self.db.tx() as s:
            return [
                Certificate.from_der(self._ca(s, "issuing").cert_der),
                Certificate.from_der(self._ca(s, "root").cert_der),
            ]

    def audit_public_key(self) -> SM2PublicKey | None:
        with self.db.tx() as s:
            row = s.get(ServiceKey, "audit")
            return SM2PublicKey.from_bytes(row.public_key) if row else None

    def _issue(
        self,
        s: Session,
        *,
        public_key: SM2PublicKey,
        subject: dict[str, str],
        profile: Profile,
        owner: str | None,
        usage: str,
        key_id: str | None,
        days: int | None = None,
    ) -> Certificate:
        ca = self._ca(s)
        ca_cert = Certificate.from_der(ca.cert_der)
        now = self.clock()
        cert = build_certificate(
            subject=name(**subject),
            public_key=public_key,
            issuer=ca_cert.subject,
            issuer_public_key=ca_cert.public_key,
            signer=self._ca_key(ca).sign,
            serial=_serial(),
            not_before=now - timedelta(minutes=5),
            not_after=now + timedelta(days=days or spec(profile).default_days),
            profile=profile,
            crl_urls=self._crl_urls("issuing"),
            subject_alt_names=[subject["email"]] if subject.get("email") else (),
        )
        s.add(
            IssuedCertificate(
                serial=f"{cert.serial:x}",
                ca_id=ca.id,
                subject=cert.subject_str,
                owner=owner,
                profile=profile.value,
                usage=usage,
                key_id=key_id,
                der=cert.der,
                fingerprint=cert.fingerprint,
                not_before=cert.not_before,
                not_after=cert.not_after,
                status="active",
                issued_at=now,
            )
        )
        return cert

    def _publish_crl(
        self,
        s: Session,
        ca: CertificateAuthority,
        key: SM2PrivateKey,
        entries: Sequence[RevokedEntry] | None = None,
    ) -> CRL:
        """Sign and store the next CRL of ``ca``. The revoked entries are read after the
        CA row is locked, so a concurrent revocation is never left out of a newer CRL."""
        now = self.clock()
        # lock the CA row and re-read its CRL number: concurrent revocations serialise
        ca = s.execute(
            select(CertificateAuthority)
            .where(CertificateAuthority.id == ca.id)
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        ).scalar_one()
        if entries is None:
            entries = self._revoked_entries(s, ca)
        ca.crl_number += 1
        cert = Certificate.from_der(ca.cert_der)
        crl = build_crl(
            issuer=cert.subject,
            issuer_public_key=cert.public_key,
            signer=key.sign,
            number=ca.crl_number,
            this_update=now,
            next_update=now + CRL_LIFETIME,
            entries=entries,
        )
        s.add(
            CrlRecord(
                ca_id=ca.id,
                number=ca.crl_number,
                der=crl.der,
                this_update=now,
                next_update=now + CRL_LIFETIME,
            )
        )
        return crl

    def _revoked_entries(self, s: Session, ca: CertificateAuthority) -> list[RevokedEntry]:
        rows = s.scalars(
            select(IssuedCertificate).where(
                IssuedCertificate.ca_id == ca.id, IssuedCertificate.status == "revoked"
            )
        )
        return [
            RevokedEntry(
                int(r.serial, 16), _aware(r.revoked_at or self.clock()), r.revocation_reason
            )
            for r in rows
        ]

    def crl(self, ca_name: str = "issuing") -> bytes:
        """The newest CRL (DER), re-signed first when it is older than half its life."""
        with self.db.tx() as s:
            ca = self._ca(s, ca_name)
            rec = s.scalar(
                select(CrlRecord)
                .where(CrlRecord.ca_id == ca.id)
                .order_by(CrlRecord.number.desc())
                .limit(1)
            )
            now = self.clock()
            if rec is None or _aware(rec.next_update) - now < CRL_LIFETIME / 2:
                crl = self._publish_crl(s, ca, self._ca_key(ca))
                audit.append(
                    s,
                    actor="system",
                    action="crl.publish",
                    target=f"ca:{ca.name}",
                    details={"number": ca.crl_number},
                )
                return crl.der
            return rec.der

    # ------------------------------------------------------------------ directory -------
    def certificate(self, serial: str) -> Certificate:
        with self.db.tx() as s:
            row = s.get(IssuedCertificate, serial.lower().lstrip("0") or "0")
            if row is None:
                raise NotFoundError(f"no certificate with serial {serial}")
            return Certificate.from_der(row.der)

    def certificate_status(self, serial: str) -> str:
        with self.db.tx() as s:
            row = s.get(IssuedCertificate, serial.lower().lstrip("0") or "0")
            if row is None:
                raise NotFoundError(f"no certificate with serial {serial}")
            return row.status

    def find_certificates(
        self, *, subject: str | None = None, owner: str | None = None, limit: int = 100
    ) -> list[Certificate]:
        with self.db.tx() as s:
            q = select(IssuedCertificate).order_by(IssuedCertificate.issued_at.desc())
            if subject:
                q = q.where(IssuedCertificate.subject == subject)
            if owner:
                q = q.where(IssuedCertificate.owner == owner)
            return [Certificate.from_der(r.der) for r in s.scalars(q.limit(min(limit, 1000)))]

    def encryption_certificate(self, owner: str) -> Certificate:
        """The owner's current encryption certificate (for email/file encryption)."""
        with self.db.tx() as s:
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

    # ------------------------------------------------------------------ enrollment ------
    def create_enrollment_code(
        self,
        *,
        owner: str,
        subject: dict[str, str],
        profile: Profile = Profile.DEVICE_SIGN,
        ttl: timedelta = timedelta(hours=24),
        actor: str,
    ) -> tuple[str, datetime]:
        """A one-time code (returned once, stored only as its SM3 hash)."""
        if not owner or len(owner) > 128:
            raise PolicyError("owner must be 1..128 characters")
        if "CN" not in subject:
            raise PolicyError("the subject needs a CN")
        name(**subject)  # validates the attribute names
        if not timedelta(minutes=1) <= ttl <= timedelta(days=30):
            raise PolicyError("enrollment code lifetime must be between 1 minute and 30 days")
        profile = Profile(profile)
        if profile not in _ENROLL_PAIRS:
            raise PolicyError(f"profile {profile.value} cannot be enrolled with a code")
        code = "-".join("".join(secrets.choice(CODE_ALPHABET) for _ in range(5)) for _ in range(4))
        expires = self.clock() + ttl
        with self.db.tx() as s:
            cid = _new_id()
            s.add(
                EnrollmentCode(
                    id=cid,
                    code_hash=_code_hash(code),
                    owner=owner,
                    subject=subject,
                    profile=profile.value,
                    expires_at=expires,
                    used_at=None,
                    created_by=actor,
                    created_at=self.clock(),
                )
            )
            audit.append(
                s,
                actor=actor,
                action="enroll.code",
                target=f"owner:{owner}",
                details={
                    "enrollment_id": cid,
                    "profile": profile.value,
                    "expires": expires.isoformat(),
                },
            )
        return code, expires

    def enroll(self, code: str, csr_der: bytes, *, source: str = "-") -> Enrollment:
        """Consume a code: sign the terminal's CSR key, generate and escrow its encryption
        key pair, certify both, and wrap the encryption key to the signing key. An owner's
        previous active encryption key becomes decrypt_only (its certificate is revoked as
        superseded). Concurrent enrollments of one owner are serialised by retrying."""
        from sqlalchemy.exc import IntegrityError

        for attempt in range(5):
            try:
                return self._enroll(code, csr_der, source=source)
            except IntegrityError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _enroll(self, code: str, csr_der: bytes, *, source: str) -> Enrollment:
        csr = (
            CertificationRequest.from_der(csr_der)
            if not csr_der.startswith(b"-----")
            else CertificationRequest.from_pem(csr_der)
        )
        csr.verify()
        sign_pub = csr.public_key
        enc_key = SM2PrivateKey.generate()
        envelope = build_enveloped_key(enc_key, sign_pub)
        now = self.clock()
        with self.db.tx() as s:
            row = s.scalar(
                select(EnrollmentCode).where(
                    EnrollmentCode.code_hash == _code_hash(code.strip().upper())
                )
            )
            if row is None:
                raise VerificationError("unknown enrollment code")
            # consume exactly once, even with concurrent attempts on several instances
            done = s.execute(
                update(EnrollmentCode)
                .where(EnrollmentCode.id == row.id, EnrollmentCode.used_at.is_(None))
                .values(used_at=now)
            )
            if done.rowcount != 1:
                raise VerificationError("this enrollment code was already used")
            if _aware(row.expires_at) < now:
                raise VerificationError("this enrollment code has expired")
            sign_profile, enc_profile = _ENROLL_PAIRS[Profile(row.profile)]
            self.db.lock_name(s, f"owner:{row.owner}")
            previous = list(
                s.scalars(
                    select(EncryptionKey)
                    .where(EncryptionKey.owner == row.owner)
                    .with_for_update(key_share=True)
                )
            )
            version = max((k.version for k in previous), default=0) + 1
            superseded = [k for k in previous if k.state == "active"]
            for k in superseded:
                k.state, k.updated_at = "decrypt_only", now
            key_id = _new_id()
            s.add(
                EncryptionKey(
                    id=key_id,
                    owner=row.owner,
                    version=version,
                    state="active",
                    public_key=enc_key.public_key().to_bytes(),
                    key_blob=self.wrapper.wrap(enc_key, f"enc:{key_id}".encode()),
                    created_at=now,
                    updated_at=now,
                )
            )
            s.flush()
            sign_cert = self._issue(
                s,
                public_key=sign_pub,
                subject=dict(row.subject),
                profile=sign_profile,
                owner=row.owner,
                usage="sign",
                key_id=None,
            )
            enc_cert = self._issue(
                s,
                public_key=enc_key.public_key(),
                subject=dict(row.subject),
                profile=enc_profile,
                owner=row.owner,
                usage="enc",
                key_id=key_id,
            )
            if superseded:
                old_certs = list(
                    s.scalars(
                        select(IssuedCertificate).where(
                            IssuedCertificate.key_id.in_([k.id for k in superseded]),
                            IssuedCertificate.status == "active",
                        )
                    )
                )
                if old_certs:
                    self._revoke_rows(s, old_certs, "superseded")
            audit.append(
                s,
                actor=f"terminal:{row.owner}",
                action="enroll",
                target=f"owner:{row.owner}",
                details={
                    "enrollment_id": row.id,
                    "source": source,
                    "sign_serial": f"{sign_cert.serial:x}",
                    "enc_serial": f"{enc_cert.serial:x}",
                    "key_id": key_id,
                    "key_version": version,
                },
            )
            chain = [
                Certificate.from_der(self._ca(s, "issuing").cert_der),
                Certificate.from_der(self._ca(s, "root").cert_der),
            ]
        return Enrollment(row.owner, sign_cert, enc_cert, envelope, chain, key_id)

    # ------------------------------------------------------------------ revocation ------
    def revoke_certificate(self, serial: str, *, reason: str = "unspecified", actor: str) -> None:
        if reason not in REVOCATION_REASONS:
            raise PolicyError(f"unknown revocation reason {reason!r}")
        with self.db.tx() as s:
            row = s.get(
                IssuedCertificate,
                serial.lower().lstrip("0") or "0",
                with_for_update={"key_share": True},
            )
            if row is None:
                raise NotFoundError(f"no certificate with serial {serial}")
            if row.usage == "ca":
                raise PolicyError("CA certificates are not revoked through this operation")
            if row.status == "revoked":
                raise PolicyError("the certificate is already revoked")
            self._revoke_rows(s, [row], reason)
            audit.append(
                s,
                actor=actor,
                action="cert.revoke",
                target=f"cert:{row.serial}",
                details={"reason": reason},
            )

    def _revoke_rows(self, s: Session, rows: Sequence[IssuedCertificate], reason: str) -> None:
        now = self.clock()
        for row in rows:
            row.status, row.revoked_at, row.revocation_reason = "revoked", now, reason
        s.flush()
        ca = self._ca(s)
        self._publish_crl(s, ca, self._ca_key(ca))

    # ------------------------------------------------------------------ key lifecycle ---
    def _key(self, s: Session, key_id: str, op: str) -> EncryptionKey:
        row = s.get(EncryptionKey, key_id, with_for_update={"key_share": True})
        if row is None:
            raise NotFoundError(f"no encryption key {key_id}")
        if row.state not in KEY_TRANSITIONS[op]:
            raise PolicyError(
                f"cannot {op} a key in state {row.state!r} (allowed from: "
                f"{', '.join(sorted(KEY_TRANSITIONS[op]))})"
            )
        return row

    def keys(self, owner: str) -> list[dict[str, Any]]:
        with self.db.tx() as s:
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
                }
                for r in rows
            ]

    def generate_key(self, owner: str, *, actor: str) -> str:
        """Generate an escrowed encryption key pair (state ``generated``)."""
        key = SM2PrivateKey.generate()
        now = self.clock()
        with self.db.tx() as s:
            self.db.lock_name(s, f"owner:{owner}")
            version = (
                s.scalar(
                    select(func.max(EncryptionKey.version)).where(EncryptionKey.owner == owner)
                )
                or 0
            ) + 1
            key_id = _new_id()
            s.add(
                EncryptionKey(
                    id=key_id,
                    owner=owner,
                    version=version,
                    state="generated",
                    public_key=key.public_key().to_bytes(),
                    key_blob=self.wrapper.wrap(key, f"enc:{key_id}".encode()),
                    created_at=now,
                    updated_at=now,
                )
            )
            audit.append(
                s,
                actor=actor,
                action="key.generate",
                target=f"key:{key_id}",
                details={"owner": owner, "version": version},
            )
        return key_id

    def distribute_key(
        self,
        key_id: str,
        terminal_public_key: SM2PublicKey,
        *,
        subject: dict[str, str],
        profile: Profile = Profile.DEVICE_ENC,
        actor: str,
    ) -> tuple[bytes, Certificate]:
        """generated → active: certify the key and wrap it to the terminal's signing key.
        The owner's previous active key becomes decrypt_only."""
        with self.db.tx() as s:
            row = self._key(s, key_id, "distribute")
            key = self.wrapper.unwrap(row.key_blob or b"", f"enc:{row.id}".encode())
            self._demote_active(s, row.owner, keep=row.id)
            row.state, row.updated_at = "active", self.clock()
            cert = self._issue(
                s,
                public_key=key.public_key(),
                subject=subject,
                profile=profile,
                owner=row.owner,
                usage="enc",
                key_id=row.id,
            )
            envelope = build_enveloped_key(key, terminal_public_key)
            audit.append(
                s,
                actor=actor,
                action="key.distribute",
                target=f"key:{row.id}",
                details={
                    "owner": row.owner,
                    "enc_serial": f"{cert.serial:x}",
                    "recipient": terminal_public_key.fingerprint().hex(),
                },
            )
        return envelope, cert

    def _demote_active(self, s: Session, owner: str, keep: str) -> None:
        for other in s.scalars(
            select(EncryptionKey)
            .where(
                EncryptionKey.owner == owner,
                EncryptionKey.state == "active",
                EncryptionKey.id != keep,
            )
            .with_for_update(key_share=True)
        ):
            other.state, other.updated_at = "decrypt_only", self.clock()

    def rotate_key(
        self,
        owner: str,
        terminal_public_key: SM2PublicKey,
        *,
        subject: dict[str, str],
        profile: Profile = Profile.DEVICE_ENC,
        actor: str,
    ) -> tuple[str, bytes, Certificate]:
        """Update: a new version becomes active (encrypts); old versions decrypt only."""
        new_key = SM2PrivateKey.generate()
        now = self.clock()
        with self.db.tx() as s:
            self.db.lock_name(s, f"owner:{owner}")
            current = s.scalar(
                select(EncryptionKey)
                .where(EncryptionKey.owner == owner, EncryptionKey.state == "active")
                .with_for_update(key_share=True)
            )
            if current is None:
                raise PolicyError(
                    f"{owner!r} has no active encryption key to rotate (a concurrent "
                    "rotation may just have replaced it; list the keys and retry)"
                )
            version = (
                s.scalar(
                    select(func.max(EncryptionKey.version)).where(EncryptionKey.owner == owner)
                )
                or 0
            ) + 1
            key_id = _new_id()
            current.state, current.updated_at = "decrypt_only", now
            s.add(
                EncryptionKey(
                    id=key_id,
                    owner=owner,
                    version=version,
                    state="active",
                    public_key=new_key.public_key().to_bytes(),
                    key_blob=self.wrapper.wrap(new_key, f"enc:{key_id}".encode()),
                    created_at=now,
                    updated_at=now,
                )
            )
            s.flush()
            old_certs = s.scalars(
                select(IssuedCertificate).where(
                    IssuedCertificate.key_id == current.id, IssuedCertificate.status == "active"
                )
            )
            superseded = list(old_certs)
            cert = self._issue(
                s,
                public_key=new_key.public_key(),
                subject=subject,
                profile=profile,
                owner=owner,
                usage="enc",
                key_id=key_id,
            )
            if superseded:
                self._revoke_rows(s, superseded, "superseded")
            envelope = build_enveloped_key(new_key, terminal_public_key)
            audit.append(
                s,
                actor=actor,
                action="key.rotate",
                target=f"key:{key_id}",
                details={
                    "owner": owner,
                    "version": version,
                    "previous_key_id": current.id,
                    "enc_serial": f"{cert.serial:x}",
                },
            )
        return key_id, envelope, cert

    def archive_key(self, key_id: str, *, actor: str) -> None:
        with self.db.tx() as s:
            row = self._key(s, key_id, "archive")
            row.state, row.updated_at = "archived", self.clock()
            audit.append(
                s,
                actor=actor,
                action="key.archive",
                target=f"key:{key_id}",
                details={"owner": row.owner},
            )

    def revoke_key(self, key_id: str, *, reason: str = "key_compromise", actor: str) -> None:
        """Revoke the key and, at the CA, every active certificate of it."""
        if reason not in REVOCATION_REASONS:
            raise PolicyError(f"unknown revocation reason {reason!r}")
        with self.db.tx() as s:
            row = self._key(s, key_id, "revoke")
            row.state, row.updated_at = "revoked", self.clock()
            certs = list(
                s.scalars(
                    select(IssuedCertificate).where(
                        IssuedCertificate.key_id == key_id, IssuedCertificate.status == "active"
                    )
                )
            )
            if certs:
                self._revoke_rows(s, certs, reason)
            audit.append(
                s,
                actor=actor,
                action="key.revoke",
                target=f"key:{key_id}",
                details={
                    "owner": row.owner,
                    "reason": reason,
                    "revoked_serials": [c.serial for c in certs],
                },
            )

    def destroy_key(self, key_id: str, *, actor: str) -> None:
        """Irreversibly erase the escrowed material (the row keeps only the public key)."""
        with self.db.tx() as s:
            row = self._key(s, key_id, "destroy")
            row.key_blob = None
            row.state, row.updated_at = "destroyed", self.clock()
            audit.append(
                s,
                actor=actor,
                action="key.destroy",
                target=f"key:{key_id}",
                details={"owner": row.owner},
            )
        self.db.flush_deleted()

    # ------------------------------------------------------------------ recovery --------
    def _new_recovery(
        self,
        s: Session,
        *,
        kind: str,
        key_id: str | None,
        escrow: bytes | None,
        recipient: SM2PublicKey,
        reason: str,
        actor: str,
    ) -> str:
        rid = _new_id()
        s.add(
            RecoveryRequest(
                id=rid,
                kind=kind,
                key_id=key_id,
                escrow_ciphertext=escrow,
                recipient_public_key=recipient.to_bytes(),
                reason=reason[:500],
                requested_by=actor,
                approvals=[],
                status="pending",
                result=None,
                created_at=self.clock(),
            )
        )
        return rid

    def request_recovery(
        self, key_id: str, recipient: SM2PublicKey, *, reason: str, actor: str
    ) -> str:
        """Ask for an escrowed key to be released to a new terminal (dual control)."""
        with self.db.tx() as s:
            self._key(s, key_id, "recover")
            rid = self._new_recovery(
                s,
                kind="key",
                key_id=key_id,
                escrow=None,
                recipient=recipient,
                reason=reason,
                actor=actor,
            )
            audit.append(
                s,
                actor=actor,
                action="recovery.request",
                target=f"key:{key_id}",
                details={"request_id": rid, "recipient": recipient.fingerprint().hex()},
            )
        return rid

    def file_recovery_public_key(self) -> SM2PublicKey:
        """The KMC's file-recovery (escrow) public key: files encrypted with an escrow
        stanza for it can be recovered under dual control."""
        with self.db.tx() as s:
            row = s.get(ServiceKey, "file-recovery")
            if row is None:
                raise PolicyError("the CA is not initialised (no file-recovery key)")
            return SM2PublicKey.from_bytes(row.public_key)

    def request_file_recovery(
        self, escrow_ciphertext: bytes, recipient: SM2PublicKey, *, reason: str, actor: str
    ) -> str:
        """Ask for a file's FEK (from its escrow stanza) to be re-encrypted to a new
        terminal; released only after two distinct operators approve."""
        from mstcrypt.crypto.sm2 import check_cipher_der

        try:
            check_cipher_der(escrow_ciphertext)
        except MstCryptError:
            raise PolicyError("the escrow stanza is not a DER SM2Cipher") from None
        with self.db.tx() as s:
            rid = self._new_recovery(
                s,
                kind="file",
                key_id=None,
                escrow=escrow_ciphertext,
                recipient=recipient,
                reason=reason,
                actor=actor,
            )
            audit.append(
                s,
                actor=actor,
                action="recovery.request",
                target=f"file:{rid}",
                details={
                    "request_id": rid,
                    "kind": "file",
                    "escrow_digest": sm3(escrow_ciphertext).hex(),
                    "recipient": recipient.fingerprint().hex(),
                },
            )
        return rid

    def approve_recovery(self, request_id: str, *, actor: str, required: int = 2) -> bytes | None:
        """Record an approval. With ``required`` distinct approvers (the requester may be
        one of them) the request is released: a key recovery as an SM2EnvelopedKey, a
        file recovery as the FEK SM2-encrypted to the recipient."""
        with self.db.tx() as s:
            req = s.get(RecoveryRequest, request_id, with_for_update={"key_share": True})
            if req is None:
                raise NotFoundError(f"no recovery request {request_id}")
            if req.status != "pending":
                raise PolicyError(f"recovery request is {req.status}")
            approvals = list(req.approvals or [])
            if actor in approvals:
                raise PolicyError(
                    "this operator already approved; a second, distinct "
                    "operator must approve (dual control)"
                )
            approvals.append(actor)
            req.approvals = approvals
            target = f"key:{req.key_id}" if req.kind == "key" else f"file:{req.id}"
            audit.append(
                s,
                actor=actor,
                action="recovery.approve",
                target=target,
                details={"request_id": req.id, "approvals": len(approvals)},
            )
            if len(approvals) < required:
                return None
            recipient = SM2PublicKey.from_bytes(req.recipient_public_key)
            if req.kind == "file":
                result = self._release_file_key(s, req, recipient)
            else:
                row = self._key(s, req.key_id or "", "recover")
                if row.key_blob is None:
                    raise KeyStoreError("the key material was destroyed")
                key = self.wrapper.unwrap(row.key_blob, f"enc:{row.id}".encode())
                result = build_enveloped_key(key, recipient)
            req.status, req.result = "released", result
            audit.append(
                s,
                actor=actor,
                action="recovery.release",
                target=target,
                details={"request_id": req.id, "approvers": approvals},
            )
            return result

    def _release_file_key(self, s: Session, req: RecoveryRequest, recipient: SM2PublicKey) -> bytes:
        row = s.get(ServiceKey, "file-recovery")
        if row is None or req.escrow_ciphertext is None:
            raise KeyStoreError("this KMC has no file-recovery key")
        rkey = self.wrapper.unwrap(row.key_blob, b"service:file-recovery")
        try:
            fek = rkey.decrypt(req.escrow_ciphertext)
        except DecryptionError:
            raise PolicyError(
                "the escrow stanza was not made for this KMC's recovery key"
            ) from None
        if not 16 <= len(fek) <= 64:
            raise PolicyError("the escrow stanza does not hold a file key")
        return recipient.encrypt(fek)

    def recovery_result(self, request_id: str) -> dict[str, Any]:
        with self.db.tx() as s:
            req = s.get(RecoveryRequest, request_id)
            if req is None:
                raise NotFoundError(f"no recovery request {request_id}")
            result = base64.b64encode(req.result).decode() if req.result else None
            return {
                "id": req.id,
                "kind": req.kind,
                "key_id": req.key_id,
                "status": req.status,
                "approvals": list(req.approvals or []),
                "enveloped_key": result if req.kind == "key" else None,
                "file_key_ciphertext": result if req.kind == "file" else None,
            }

    # ------------------------------------------------------------------ groups (Annex D)
    def _member_enc_public(self, s: Session, member: str) -> SM2PublicKey:
        row = s.scalar(
            select(EncryptionKey).where(
                EncryptionKey.owner == member, EncryptionKey.state == "active"
            )
        )
        if row is None:
            raise PolicyError(f"{member!r} has no active encryption key (enroll first)")
        return SM2PublicKey.from_bytes(row.public_key)

    def _kdk(self, s: Session, member: str, actor: str) -> tuple[int, bytes]:
        row = s.scalar(
            select(MemberKdk)
            .where(MemberKdk.member == member)
            .order_by(MemberKdk.version.desc())
            .limit(1)
        )
        if row is not None:
            return row.version, self.wrapper.unwrap_bytes(
                row.key_blob, f"kdk:{member}:{row.version}".encode()
            )
        kdk = secrets.token_bytes(16)
        s.add(
            MemberKdk(
                member=member,
                version=1,
                created_at=self.clock(),
                key_blob=self.wrapper.wrap_bytes(kdk, f"kdk:{member}:1".encode()),
            )
        )
        audit.append(
            s, actor=actor, action="kdk.generate", target=f"member:{member}", details={"version": 1}
        )
        return 1, kdk

    def kdk_delivery(self, member: str, *, actor: str) -> dict[str, Any]:
        """The member's KDK, SM2-encrypted to the member's current encryption key."""
        with self.db.tx() as s:
            version, kdk = self._kdk(s, member, actor)
            ct = self._member_enc_public(s, member).encrypt(kdk)
            audit.append(
                s,
                actor=actor,
                action="kdk.deliver",
                target=f"member:{member}",
                details={"version": version},
            )
        return {"member": member, "version": version, "ciphertext": base64.b64encode(ct).decode()}

    def _new_group_key(self, s: Session, group: Group, actor: str, why: str) -> int:
        group.current_version += 1
        gk = secrets.token_bytes(16)
        s.add(
            GroupKey(
                group_id=group.id,
                version=group.current_version,
                created_at=self.clock(),
                key_blob=self.wrapper.wrap_bytes(
                    gk, f"gk:{group.id}:{group.current_version}".encode()
                ),
            )
        )
        audit.append(
            s,
            actor=actor,
            action="group.key",
            target=f"group:{group.id}",
            details={"version": group.current_version, "why": why},
        )
        return group.current_version

    def create_group(self, group_id: str, members: Sequence[str], *, actor: str) -> int:
        if not group_id or len(group_id) > 64:
            raise PolicyError("group id must be 1..64 characters")
        members = sorted(set(members))
        if len(members) < 2:
            raise PolicyError("a group has at least two members")
        with self.db.tx() as s:
            if s.get(Group, group_id) is not None:
                raise PolicyError(f"group {group_id!r} already exists")
            for m in members:
                self._member_enc_public(s, m)
            g = Group(id=group_id, current_version=0, created_at=self.clock())
            s.add(g)
            s.flush()
            for m in members:
                s.add(GroupMember(group_id=group_id, member=m, joined_version=1))
            audit.append(
                s,
                actor=actor,
                action="group.create",
                target=f"group:{group_id}",
                details={"members": members},
            )
            return self._new_group_key(s, g, actor, "create")

    def change_group(
        self, group_id: str, *, add: Sequence[str] = (), remove: Sequence[str] = (), actor: str
    ) -> int:
        """Membership change; the group key is always rotated (forward/backward secrecy)."""
        with self.db.tx() as s:
            g = s.get(Group, group_id, with_for_update={"key_share": True})
            if g is None:
                raise NotFoundError(f"no group {group_id!r}")
            current = {
                m.member
                for m in s.scalars(select(GroupMember).where(GroupMember.group_id == group_id))
            }
            for m in add:
                if m in current:
                    raise PolicyError(f"{m!r} is already a member")
                self._member_enc_public(s, m)
                s.add(
                    GroupMember(group_id=group_id, member=m, joined_version=g.current_version + 1)
                )
            for m in remove:
                if m not in current:
                    raise PolicyError(f"{m!r} is not a member")
                s.delete(s.get(GroupMember, (group_id, m)))
            if len(current | set(add)) - len(set(remove)) < 2:
                raise PolicyError("a group keeps at least two members")
            audit.append(
                s,
                actor=actor,
                action="group.change",
                target=f"group:{group_id}",
                details={"added": sorted(add), "removed": sorted(remove)},
            )
            return self._new_group_key(s, g, actor, "membership")

    def group_key_for(
        self, group_id: str, member: str, version: int | None = None
    ) -> dict[str, Any]:
        """GK (current or a given version) wrapped under the member's KDK with SM4-GCM,
        AAD = group ‖ version ‖ member. Only current members get the current key."""
        with self.db.tx() as s:
            g = s.get(Group, group_id)
            if g is None:
                raise NotFoundError(f"no group {group_id!r}")
            membership = s.get(GroupMember, (group_id, member))
            if membership is None:
                raise PolicyError(f"{member!r} is not a member of {group_id!r}")
            version = g.current_version if version is None else version
            if version < membership.joined_version:
                raise PolicyError(
                    f"{member!r} joined at key version {membership.joined_version}"
                    "; earlier group keys are not released (backward secrecy)"
                )
            row = s.get(GroupKey, (group_id, version))
            if row is None:
                raise NotFoundError(f"group {group_id!r} has no key version {version}")
            gk = self.wrapper.unwrap_bytes(row.key_blob, f"gk:{group_id}:{version}".encode())
            kdk_version, kdk = self._kdk(s, member, "system")
            nonce = secrets.token_bytes(12)
            aad = f"{group_id}|{version}|{member}".encode()
            return {
                "group": group_id,
                "version": version,
                "member": member,
                "kdk_version": kdk_version,
                "nonce": nonce.hex(),
                "wrapped": sm4.gcm_encrypt(kdk, nonce, gk, aad).hex(),
            }

    def group_members(self, group_id: str) -> list[str]:
        with self.db.tx() as s:
            return sorted(
                m.member
                for m in s.scalars(select(GroupMember).where(GroupMember.group_id == group_id))
            )

    # ------------------------------------------------------------------ service identities
    def service_identity(
        self, name_: str, profile: Profile, common_name: str, *, actor: str = "system"
    ) -> tuple[SM2PrivateKey, Certificate]:
        """The signing key and certificate of one of our own services (e.g. the login
        server), created once, wrapped by the SS-CC, certified by the issuing CA. When
        several instances create it at the same moment, one wins and the others read it."""
        from sqlalchemy.exc import IntegrityError

        try:
            return self._service_identity(name_, profile, common_name, actor=actor)
        except IntegrityError:
            return self._service_identity(name_, profile, common_name, actor=actor)

    def _service_identity(
        self, name_: str, profile: Profile, common_name: str, *, actor: str = "system"
    ) -> tuple[SM2PrivateKey, Certificate]:
        """The signing key and certificate of one of our own services (e.g. the login
        server), created once, wrapped by the SS-CC, certified by the issuing CA."""
        cached = self._key_cache.get(f"identity:{name_}")
        owner = f"service:{name_}"
        with self.db.tx() as s:
            row = s.get(ServiceKey, name_)
            cert_row = s.scalar(
                select(IssuedCertificate)
                .where(IssuedCertificate.owner == owner, IssuedCertificate.status == "active")
                .order_by(IssuedCertificate.issued_at.desc())
                .limit(1)
            )
            if row is not None and cert_row is not None:
                key = cached or self.wrapper.unwrap(row.key_blob, f"service:{name_}".encode())
                self._key_cache[f"identity:{name_}"] = key
                return key, Certificate.from_der(cert_row.der)
            key = SM2PrivateKey.generate()
            if row is not None:
                s.delete(row)
                s.flush()
            s.add(
                ServiceKey(
                    name=name_,
                    public_key=key.public_key().to_bytes(),
                    key_blob=self.wrapper.wrap(key, f"service:{name_}".encode()),
                    created_at=self.clock(),
                )
            )
            cert = self._issue(
                s,
                public_key=key.public_key(),
                subject={"CN": common_name},
                profile=profile,
                owner=owner,
                usage="sign",
                key_id=None,
            )
            audit.append(
                s,
                actor=actor,
                action="service.identity",
                target=owner,
                details={"serial": f"{cert.serial:x}", "profile": profile.value},
            )
        self._key_cache[f"identity:{name_}"] = key
        return key, cert

    # ------------------------------------------------------------------ audit -----------
    def audit_key(self) -> SM2PrivateKey:
        with self.db.tx() as s:
            row = s.get(ServiceKey, "audit")
            if row is None:
                raise PolicyError("the CA is not initialised (no audit key)")
            return self.wrapper.unwrap(row.key_blob, b"service:audit")

    def checkpoint(self) -> int | None:
        """Sign the current chain head; returns its sequence number."""
        key = self.audit_key()
        with self.db.tx() as s:
            cp = audit.sign_checkpoint(s, key)
            return cp.seq if cp else None

    def verify_audit(self) -> audit.ChainReport:
        pub = self.audit_public_key()
        with self.db.tx() as s:
            return audit.verify_chain(s, pub)

    # ------------------------------------------------------------------ rate limits -----
    def allow(self, bucket: str, *, limit: int, window_seconds: int = 60) -> bool:
        """Fixed-window counter in the database, shared by every server instance."""
        with self.db.tx() as s:
            return self.allow_in(s, bucket, limit=limit, window_seconds=window_seconds)

    def allow_in(self, s: Session, bucket: str, *, limit: int, window_seconds: int = 60) -> bool:
        """:meth:`allow` inside the caller's transaction."""
        window = int(self.clock().timestamp()) // window_seconds
        table = RateLimit.__table__
        count = self.db.upsert_increment(s, table, {"key": bucket[:128], "window": window}, "count")
        if count == 1:
            s.execute(table.delete().where(table.c.window < window - 1))
        return count <= limit

    # ------------------------------------------------------------------ backup ----------
    def backup(self, passphrase: str, *, actor: str) -> bytes:
        """An encrypted export of the whole store. Key blobs stay wrapped under the master
        key, and the export is further encrypted under a key derived from the passphrase
        (PBKDF2-HMAC-SM3, 200,000 iterations, SM4-GCM)."""
        if len(passphrase) < 12:
            raise PolicyError("backup passphrase must be at least 12 characters")
        with self.db.tx() as s:
            audit.append(s, actor=actor, action="kmc.backup", target="kmc", details={})
            tables: dict[str, list[dict[str, Any]]] = {}
            for table in Base.metadata.sorted_tables:
                rows = s.execute(table.select()).mappings().all()
                tables[table.name] = [{k: _enc_value(v) for k, v in r.items()} for r in rows]
        plain = json.dumps(
            {"format": "mstcrypt-kmc-backup", "version": 1, "tables": tables}, separators=(",", ":")
        ).encode()
        salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
        key = kdf(pbkdf2_hmac_sm3(passphrase.encode(), salt, 200_000, 32), 16)
        header = b"MSTKMCB1" + salt + nonce
        return header + sm4.gcm_encrypt(key, nonce, plain, header)

    def restore(self, blob: bytes, passphrase: str, *, actor: str) -> int:
        """Restore a backup into an empty store (one transaction). Returns rows restored."""
        if len(blob) < 8 + 16 + 12 + 16 or blob[:8] != b"MSTKMCB1":
            raise KeyStoreError("not an mstcrypt KMC backup")
        header, body = blob[:36], blob[36:]
        key = kdf(pbkdf2_hmac_sm3(passphrase.encode(), header[8:24], 200_000, 32), 16)
        try:
            data = json.loads(sm4.gcm_decrypt(key, header[24:36], body, header))
        except DecryptionError:
            raise KeyStoreError("wrong backup passphrase or damaged backup") from None
        if data.get("format") != "mstcrypt-kmc-backup":
            raise KeyStoreError("not an mstcrypt KMC backup")
        n = 0
        with self.db.tx() as s:
            for table in Base.metadata.sorted_tables:
                if table.name != "audit_head" and s.execute(table.select().limit(1)).first():
                    raise PolicyError("restore needs an empty store")
            for table in Base.metadata.sorted_tables:
                rows = [
                    {k: _dec_value(v) for k, v in r.items()}
                    for r in data["tables"].get(table.name, [])
                ]
                if table.name == "audit_head":
                    s.execute(table.delete())
                if rows:
                    s.execute(table.insert(), rows)
                    n += len(rows)
            s.flush()
            audit.append(s, actor=actor, action="kmc.restore", target="kmc", details={"rows": n})
        self._key_cache.clear()
        return n


_ENROLL_PAIRS: dict[Profile, tuple[Profile, Profile]] = {
    Profile.DEVICE_SIGN: (Profile.DEVICE_SIGN, Profile.DEVICE_ENC),
    Profile.GATEWAY_SIGN: (Profile.GATEWAY_SIGN, Profile.GATEWAY_ENC),
    Profile.IM_SERVER_SIGN: (Profile.IM_SERVER_SIGN, Profile.IM_SERVER_ENC),
    Profile.MAIL_SERVER_SIGN: (Profile.MAIL_SERVER_SIGN, Profile.MAIL_SERVER_ENC),
    Profile.LOGIN_SERVER_SIGN: (Profile.LOGIN_SERVER_SIGN, Profile.LOGIN_SERVER_ENC),
    Profile.SEAL_SERVER_SIGN: (Profile.SEAL_SERVER_SIGN, Profile.SEAL_SERVER_ENC),
    Profile.WLAN_AP_SIGN: (Profile.WLAN_AP_SIGN, Profile.WLAN_AP_ENC),
    Profile.WLAN_ASU_SIGN: (Profile.WLAN_ASU_SIGN, Profile.WLAN_ASU_ENC),
}


def _code_hash(code: str) -> str:
    return sm3(b"mstcrypt-enrollment-code|" + code.strip().upper().encode()).hex()


def _enc_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"$b": base64.b64encode(v).decode()}
    if isinstance(v, datetime):
        return {"$t": _aware(v).isoformat()}
    return v


def _dec_value(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"$b"}:
        return base64.b64decode(v["$b"])
    if isinstance(v, dict) and set(v) == {"$t"}:
        return datetime.fromisoformat(v["$t"])
    return v
