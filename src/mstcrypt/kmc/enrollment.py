"""Enrollment: one-time codes and the dual-certificate enrollment of a terminal.

A registration officer creates a code for a terminal owner (never for an operator: those
codes come only from the administrator's console, :meth:`OperatorService.add`). The
terminal sends a PKCS#10 request for the signing key generated in its MST-CC; the KMC
generates the encryption key pair in the SS-CC, certifies both, and wraps the encryption
key to the terminal's signing key (SM2EnvelopedKey). Re-enrollment supersedes the
owner's earlier signing and encryption certificates and rotates the owner's KDK.

Names: a code for a gateway or server profile carries the DNS names and IP addresses the
registration officer authorised (at least one for the profiles peers reach by host
name, :class:`mstcrypt.pki.AltNames`); a code for a device carries none. Both
certificates of the pair are issued with exactly those names, unless the CSR asks for
fewer (a subset of them, in a subjectAltName extension request). A CSR that asks for any
name the code did not authorise — another host, an IP address, an e-mail address other
than the subject's, any other kind of name — is refused with
:class:`UnauthorisedNameError` and the code stays unused.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import AccessDeniedError, PolicyError, VerificationError
from mstcrypt.kmc.context import KmcContext, NotFoundError, aware, new_id
from mstcrypt.kmc.models import EncryptionKey, EnrollmentCode, Operator
from mstcrypt.pki import AltNames, Certificate, CertificationRequest, Profile, name, spec
from mstcrypt.pki.hostname import dns_name, ip_address
from mstcrypt.pki.profiles import MAX_ALT_NAMES

if TYPE_CHECKING:
    from mstcrypt.kmc.ca import CaService, PreparedCertificate
    from mstcrypt.kmc.groups import GroupService

__all__ = [
    "ENROLL_PAIRS",
    "Enrollment",
    "EnrollmentService",
    "PreparedEnrollment",
    "UnauthorisedNameError",
    "code_hash",
    "code_names",
]

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

ENROLL_PAIRS: dict[Profile, tuple[Profile, Profile]] = {
    Profile.DEVICE_SIGN: (Profile.DEVICE_SIGN, Profile.DEVICE_ENC),
    Profile.GATEWAY_SIGN: (Profile.GATEWAY_SIGN, Profile.GATEWAY_ENC),
    Profile.IM_SERVER_SIGN: (Profile.IM_SERVER_SIGN, Profile.IM_SERVER_ENC),
    Profile.MAIL_SERVER_SIGN: (Profile.MAIL_SERVER_SIGN, Profile.MAIL_SERVER_ENC),
    Profile.LOGIN_SERVER_SIGN: (Profile.LOGIN_SERVER_SIGN, Profile.LOGIN_SERVER_ENC),
    Profile.SEAL_SERVER_SIGN: (Profile.SEAL_SERVER_SIGN, Profile.SEAL_SERVER_ENC),
    Profile.WLAN_AP_SIGN: (Profile.WLAN_AP_SIGN, Profile.WLAN_AP_ENC),
    Profile.WLAN_ASU_SIGN: (Profile.WLAN_ASU_SIGN, Profile.WLAN_ASU_ENC),
}


class UnauthorisedNameError(AccessDeniedError):
    """A CSR asked for a subjectAltName that its enrollment code does not authorise."""


def code_names(
    profile: Profile | str, dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = ()
) -> list[str]:
    """The subjectAltName entries an enrollment code for ``profile`` authorises, in
    canonical form (DNS names lower-case A-labels, IP addresses compressed), without
    repeats, DNS names first: GmSSL checks a host name against the first dNSName only.
    PolicyError when a name is malformed, when the profile takes no host names (devices)
    or when it needs one and none is given (gateways, IM and mail servers)."""
    profile = Profile(profile)
    for what, given in (("dns_names", dns_names), ("ip_addresses", ip_addresses)):
        if isinstance(given, str):
            raise PolicyError(f"{what} must be a list of strings")
    names = [dns_name(n, allow_wildcard=True) for n in dns_names]
    names += [str(ip_address(n)) for n in ip_addresses]
    names = list(dict.fromkeys(names))
    if len(names) > MAX_ALT_NAMES:
        raise PolicyError(f"an enrollment code authorises at most {MAX_ALT_NAMES} names")
    policy = spec(profile).alt_names
    if names and policy not in (AltNames.HOST, AltNames.HOST_OPTIONAL):
        raise PolicyError(
            f"a {profile.value} certificate carries no DNS name or IP address "
            "(host names are for gateway and server profiles)"
        )
    if not names and policy is AltNames.HOST:
        raise PolicyError(
            f"an enrollment code for {profile.value} needs at least one DNS name or IP "
            "address: peers (GmSSL, Tongsuo, browsers) match host names on "
            "subjectAltName only"
        )
    return names


def _requested_names(
    csr: CertificationRequest, authorised: list[str], email: str | None
) -> list[str]:
    """The names to certify: the authorised ones, or the subset the CSR asks for.
    UnauthorisedNameError for any requested name outside ``authorised`` (or, for an
    e-mail address, other than the subject's)."""
    entries = csr.subject_alt_name_entries
    if not entries:
        return list(authorised)
    wanted: set[str] = set()
    refused: list[str] = []
    for kind, value in entries:
        try:
            if kind == "dns":
                canon = dns_name(value, allow_wildcard=True)
            elif kind == "ip":
                canon = str(ip_address(value))
            elif kind == "email":
                if email is not None and value.lower() == email.lower():
                    continue
                canon = ""
            else:
                canon = ""
        except PolicyError:
            canon = ""
        if canon and canon in authorised:
            wanted.add(canon)
        else:
            refused.append(f"{kind}:{value}"[:80] if value else kind)
    if refused:
        raise UnauthorisedNameError(
            "the certification request asks for names this enrollment code does not "
            f"authorise: {', '.join(refused[:5])}" + (" …" if len(refused) > 5 else "")
        )
    return [n for n in authorised if n in wanted]


def code_hash(code: str) -> str:
    return sm3(b"mstcrypt-enrollment-code|" + code.strip().upper().encode()).hex()


@dataclass
class Enrollment:
    owner: str
    sign_certificate: Certificate
    encryption_certificate: Certificate
    enveloped_key: bytes
    chain: list[Certificate]
    key_id: str


@dataclass(frozen=True)
class PreparedEnrollment:
    """What :meth:`EnrollmentService.prepare` computed, held in memory until
    :meth:`EnrollmentService.commit` records it or it is dropped. The key blob is
    wrapped by the SS-CC (never a plain key); it is kept out of the repr all the same."""

    code_hash: str = field(repr=False)
    code_id: str
    owner: str
    purpose: str
    key_id: str
    enc_public_key: bytes = field(repr=False)
    key_blob: bytes = field(repr=False)
    sign: PreparedCertificate
    enc: PreparedCertificate
    enveloped_key: bytes = field(repr=False)


def check_owner(owner: str) -> None:
    if not owner or len(owner) > 128 or not owner.isprintable():
        raise PolicyError("owner must be 1..128 printable characters")
    if owner.startswith(("service:", "terminal:", "operator:", "user:", "source:")):
        raise PolicyError(f"owner {owner!r} uses a reserved prefix")


class EnrollmentService:
    def __init__(self, ctx: KmcContext, ca: CaService, groups: GroupService) -> None:
        self.ctx = ctx
        self.ca = ca
        self.groups = groups

    def create_code(
        self,
        *,
        owner: str,
        subject: dict[str, str],
        profile: Profile = Profile.DEVICE_SIGN,
        ttl: timedelta = timedelta(hours=24),
        actor: str,
        purpose: str = "terminal",
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> tuple[str, datetime]:
        """A one-time code (returned once, stored only as its SM3 hash). ``purpose``
        ``operator`` is for :class:`OperatorService` alone. ``dns_names`` and
        ``ip_addresses``: the host names a gateway or server is certified for
        (:func:`code_names`)."""
        check_owner(owner)
        if "CN" not in subject:
            raise PolicyError("the subject needs a CN")
        name(**subject)  # validates the attribute names
        if not timedelta(minutes=1) <= ttl <= timedelta(days=30):
            raise PolicyError("enrollment code lifetime must be between 1 minute and 30 days")
        profile = Profile(profile)
        if profile not in ENROLL_PAIRS:
            raise PolicyError(f"profile {profile.value} cannot be enrolled with a code")
        alt_names = code_names(profile, dns_names, ip_addresses)
        if purpose not in ("terminal", "operator"):
            raise PolicyError(f"unknown enrollment purpose {purpose!r}")
        code = "-".join("".join(secrets.choice(CODE_ALPHABET) for _ in range(5)) for _ in range(4))
        with self.ctx.unit(actor) as u:
            op = u.s.get(Operator, owner)
            if purpose == "terminal" and op is not None:
                raise PolicyError(
                    f"{owner!r} is an operator: operator credentials are issued only by an "
                    "administrator at the console (`mstcrypt operator enroll-code`)"
                )
            if purpose == "operator" and op is None:
                raise PolicyError(f"{owner!r} is not a registered operator")
            expires = u.now + ttl
            cid = new_id()
            u.s.add(
                EnrollmentCode(
                    id=cid,
                    code_hash=code_hash(code),
                    owner=owner,
                    subject=subject,
                    profile=profile.value,
                    expires_at=expires,
                    used_at=None,
                    created_by=actor[:64],
                    created_at=u.now,
                    purpose=purpose,
                    alt_names=alt_names or None,
                )
            )
            u.audit(
                "enroll.code",
                f"owner:{owner}",
                enrollment_id=cid,
                profile=profile.value,
                purpose=purpose,
                expires=expires.isoformat(),
                **({"names": alt_names} if alt_names else {}),
            )
        return code, expires

    def expire_code(self, code_id: str, *, actor: str) -> None:
        """End an unused terminal enrollment code now (a code handed to the wrong person,
        a device that will not come). Operator codes are the administrator's, at the
        console. The code's hash stays; it is refused as expired."""
        with self.ctx.unit(actor) as u:
            row = u.s.get(EnrollmentCode, code_id, with_for_update={"key_share": True})
            if row is None or row.purpose != "terminal":
                raise NotFoundError(f"no terminal enrollment code {code_id[:40]}")
            if row.used_at is not None:
                raise PolicyError("this enrollment code was already used")
            if aware(row.expires_at) < u.now:
                raise PolicyError("this enrollment code has already expired")
            row.expires_at = u.now - timedelta(seconds=1)
            u.audit("enroll.code_expire", f"owner:{row.owner}", enrollment_id=row.id)

    def enroll(self, code: str, csr_der: bytes, *, source: str = "-") -> Enrollment:
        """Consume a code and enroll (see the module docstring). Concurrent enrollments
        of one owner are serialised by retrying."""
        csr = (
            CertificationRequest.from_pem(csr_der)
            if csr_der.startswith(b"-----")
            else CertificationRequest.from_der(csr_der)
        )
        csr.verify()
        for attempt in range(5):
            try:
                return self.commit(self.prepare(code, csr), source=source)
            except IntegrityError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def prepare(self, code: str, csr: CertificationRequest) -> PreparedEnrollment:
        """Everything that costs CPU, outside any write transaction: the code is looked
        up (read-only, to refuse early), the encryption key pair is generated in the
        SS-CC (a wrapped blob held in memory, stored only by :meth:`commit`), both
        certificates are built and signed, and the key is enveloped to the terminal.
        Nothing is written: if the commit is refused, all of it is simply dropped."""
        h = code_hash(code)
        with self.ctx.db.read() as s:
            row = s.scalar(select(EnrollmentCode).where(EnrollmentCode.code_hash == h))
            if row is None:
                raise VerificationError("unknown enrollment code")
            if row.used_at is not None:
                raise VerificationError("this enrollment code was already used")
            if aware(row.expires_at) < self.ctx.clock():
                raise VerificationError("this enrollment code has expired")
            if (row.purpose == "operator") != (s.get(Operator, row.owner) is not None):
                raise VerificationError("this enrollment code no longer fits its owner")
            ca = self.ca.issuing_ca(s)
            code_id, owner, subject = row.id, row.owner, dict(row.subject)
            profile, purpose = Profile(row.profile), row.purpose
            # the names the CSR asks for, within those the code authorised (refused
            # here, before anything is written: the code stays usable)
            email_ok = spec(profile).alt_names is AltNames.EMAIL
            alt_names = _requested_names(
                csr, list(row.alt_names or []), subject.get("email") if email_ok else None
            )
        keys = self.ctx.keys
        key_id = new_id()
        enc_pub, blob = keys.generate_sm2(f"enc:{key_id}".encode())
        sign, enc = self.ca.build_pair(
            sign_public_key=csr.public_key,
            enc_public_key=enc_pub,
            subject=subject,
            profiles=ENROLL_PAIRS[profile],
            owner=owner,
            key_id=key_id,
            subject_alt_names=alt_names,
            ca=ca,
        )
        envelope = keys.export_enveloped(blob, f"enc:{key_id}".encode(), csr.public_key)
        return PreparedEnrollment(
            code_hash=h,
            code_id=code_id,
            owner=owner,
            purpose=purpose,
            key_id=key_id,
            enc_public_key=enc_pub.to_bytes(),
            key_blob=blob,
            sign=sign,
            enc=enc,
            enveloped_key=envelope,
        )

    def commit(self, p: PreparedEnrollment, *, source: str = "-") -> Enrollment:
        """The short write transaction of an enrollment: every precondition is checked
        again under the lock (the code unused, unexpired and still the one prepared, its
        owner's kind unchanged, the issuing CA unchanged), then the code is consumed,
        the owner's earlier keys and certificates are superseded and the new key and
        certificates are recorded with the audit record. A refusal records nothing."""
        with self.ctx.unit("enrollment") as u:
            row = u.s.scalar(select(EnrollmentCode).where(EnrollmentCode.code_hash == p.code_hash))
            if row is None or row.id != p.code_id or row.owner != p.owner:
                raise VerificationError("unknown enrollment code")
            # consume exactly once, even with concurrent attempts on several instances
            done = u.s.execute(
                update(EnrollmentCode)
                .where(EnrollmentCode.id == row.id, EnrollmentCode.used_at.is_(None))
                .values(used_at=u.now)
            )
            if done.rowcount != 1:
                raise VerificationError("this enrollment code was already used")
            if aware(row.expires_at) < u.now:
                raise VerificationError("this enrollment code has expired")
            owner = row.owner
            operator = u.s.get(Operator, owner, with_for_update={"key_share": True})
            if row.purpose != p.purpose or (row.purpose == "operator") != (operator is not None):
                raise VerificationError("this enrollment code no longer fits its owner")
            u.lock(f"owner:{owner}")
            previous = list(
                u.s.scalars(
                    select(EncryptionKey)
                    .where(EncryptionKey.owner == owner)
                    .with_for_update(key_share=True)
                )
            )
            version = max((k.version for k in previous), default=0) + 1
            for k in previous:
                if k.state == "active":
                    k.state, k.updated_at = "decrypt_only", u.now
            old_certs = [
                c for c in self.ca.active_certificates(u, owner=owner) if c.usage in ("sign", "enc")
            ]
            u.s.add(
                EncryptionKey(
                    id=p.key_id,
                    owner=owner,
                    version=version,
                    state="active",
                    public_key=p.enc_public_key,
                    key_blob=p.key_blob,
                    created_at=u.now,
                    updated_at=u.now,
                )
            )
            u.s.flush()
            self.ca.record(u, [p.sign, p.enc])
            if old_certs:
                self.ca.revoke_rows(u, old_certs, "superseded", why="re-enrollment")
            elif previous:
                self.groups.identity_changed(u, owner, "re-enrollment")
            if operator is not None:
                operator.cert_serial = p.sign.serial
                operator.status = "active" if operator.status == "pending" else operator.status
                operator.updated_at = u.now
            u.audit(
                "enroll",
                f"owner:{owner}",
                actor=f"operator:{owner}" if operator is not None else f"terminal:{owner}",
                enrollment_id=row.id,
                source=source,
                sign_serial=p.sign.serial,
                enc_serial=p.enc.serial,
                key_id=p.key_id,
                key_version=version,
                superseded=[c.serial for c in old_certs],
            )
        return Enrollment(
            owner,
            p.sign.certificate,
            p.enc.certificate,
            p.enveloped_key,
            self.ca.chain(),
            p.key_id,
        )
