"""Issuance and revocation: the root and issuing CAs, certificates, CRLs.

Certificates are built by :class:`mstcrypt.pki.Issuer` over a signer that calls into the
SS-CC, so the CA keys never leave the key store. Revoking one half of a dual-certificate
pair (GM/T 0034: signing + encryption, issued together) for a reason that means the
device or the holder is gone (:data:`PAIR_REASONS`) revokes the other half too, revokes
the escrowed encryption key for use, and rotates every key derived for the holder
(KDK and group keys, through :meth:`GroupService.identity_changed`).

A revocation marks rows only — status, time, reason, the CA's next revocation sequence
number and the DER of the certificate's CRL entry — and asks for a CRL by a due time;
:class:`~mstcrypt.kmc.publisher.CrlPublisher` (``self.publisher``) publishes the CRLs,
outside the revocation's transaction. Its cost does not depend on how many
certificates are already revoked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from asn1crypto import x509
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import PolicyError
from mstcrypt.kmc.context import KmcContext, NotFoundError, Unit, aware
from mstcrypt.kmc.models import CertificateAuthority, EncryptionKey, IssuedCertificate
from mstcrypt.kmc.publisher import CrlPolicy, CrlPublisher, PublishedCrl
from mstcrypt.pki import CRL, AltNames, Certificate, Issuer, Profile, name, spec
from mstcrypt.pki.ca import BACKDATE, random_serial
from mstcrypt.pki.crl_der import entry_der
from mstcrypt.pki.ocsp import aia_extension

if TYPE_CHECKING:
    from mstcrypt.kmc.groups import GroupService

__all__ = [
    "CRL_LIFETIME",
    "PAIR_REASONS",
    "REVOCATION_REASONS",
    "CaService",
    "PreparedCertificate",
]

#: the default lifetime of a CRL (:attr:`CrlPolicy.lifetime`)
CRL_LIFETIME = timedelta(days=1)
REVOCATION_REASONS = (
    "unspecified",
    "key_compromise",
    "ca_compromise",
    "affiliation_changed",
    "superseded",
    "cessation_of_operation",
    "certificate_hold",
)
#: reasons that say the device is lost or the holder is gone: the whole pair goes
PAIR_REASONS = frozenset({"key_compromise", "affiliation_changed", "cessation_of_operation"})
ISSUING, ROOT = "issuing", "root"


@dataclass(frozen=True)
class PreparedCertificate:
    """A certificate signed by :meth:`CaService.build`, not yet recorded: it is issued
    only once :meth:`CaService.record` has stored it (until then it is discarded on any
    refusal and no relying party can learn of it)."""

    certificate: Certificate
    ca_id: int
    ca_der: bytes = field(repr=False)
    owner: str | None
    profile: Profile
    usage: str
    key_id: str | None
    pair_serial: str | None = None

    @property
    def serial(self) -> str:
        return f"{self.certificate.serial:x}"


def serial_hex(serial: str) -> str:
    return serial.lower().lstrip("0") or "0"


class CaService:
    def __init__(
        self, ctx: KmcContext, groups: GroupService, crl_policy: CrlPolicy | None = None
    ) -> None:
        self.ctx = ctx
        self.groups = groups
        self._issuers: dict[tuple[str, bytes], Issuer] = {}
        self._issuer_names: dict[bytes, bytes] = {}
        self.publisher = CrlPublisher(ctx, self, crl_policy)

    @property
    def crl_policy(self) -> CrlPolicy:
        return self.publisher.policy

    # -- set-up ------------------------------------------------------------------------
    def is_initialised(self) -> bool:
        with self.ctx.read() as s:
            return bool(s.scalar(select(func.count()).select_from(CertificateAuthority)))

    def init(
        self, u: Unit, *, organisation: str, country: str, root_cn: str, sub_cn: str
    ) -> list[Certificate]:
        """Create the root and the issuing CA inside ``u`` (keys generated in the SS-CC)."""
        s = u.s
        if s.scalar(select(func.count()).select_from(CertificateAuthority)):
            raise PolicyError("the CA is already initialised")
        keys = self.ctx.keys
        root_pub, root_blob = keys.generate_sm2(b"ca:root")
        sub_pub, sub_blob = keys.generate_sm2(b"ca:issuing")
        nb = u.now - BACKDATE
        root = Issuer.self_signed(
            name(C=country, O=organisation, CN=root_cn),
            root_pub,
            keys.signer(root_blob, b"ca:root"),
            not_before=nb,
        )
        sub_cert = root.issue(
            subject=name(C=country, O=organisation, CN=sub_cn),
            public_key=sub_pub,
            profile=Profile.SUB_CA,
            not_before=nb,
            crl_urls=self._crl_urls(ROOT),
        )
        rows = []
        for i, (ca_name, level, cert, blob) in enumerate(
            ((ROOT, "root", root.certificate, root_blob), (ISSUING, "sub", sub_cert, sub_blob)),
            start=1,
        ):
            row = CertificateAuthority(
                id=i,
                name=ca_name,
                level=level,
                parent_id=None if i == 1 else 1,
                subject=cert.subject_str,
                cert_der=cert.der,
                key_blob=blob,
                crl_number=0,
                created_at=u.now,
            )
            s.add(row)
            rows.append(row)
        s.flush()
        for row, cert, profile in (
            (rows[0], root.certificate, Profile.ROOT_CA),
            (rows[1], sub_cert, Profile.SUB_CA),
        ):
            self._record(u, cert, ca_id=1, owner=None, profile=profile, usage="ca", key_id=None)
            self.publisher.publish_in(u, row)
        return [sub_cert, root.certificate]

    def _crl_urls(self, ca_name: str) -> list[str]:
        base = self.ctx.crl_base_url
        return [f"{base.rstrip('/')}/crl/{ca_name}.crl"] if base else []

    def _aia(self, profile: Profile) -> list[x509.Extension]:
        """authorityInfoAccess id-ad-ocsp (the platform's OCSP responder) for the
        end-entity certificates of the issuing CA; none for the responder's own
        certificate (ocsp-nocheck) or when no OCSP URL is configured."""
        if not self.ctx.ocsp_url or Profile(profile) is Profile.OCSP_SIGNER:
            return []
        return [aia_extension([self.ctx.ocsp_url])]

    def delta_urls(self, ca_name: str) -> list[str]:
        """Where the delta CRLs of ``ca_name`` are published (freshestCRL), when delta
        CRLs are on and a public URL is configured."""
        base = self.ctx.crl_base_url
        if not base or not self.crl_policy.delta:
            return []
        return [f"{base.rstrip('/')}/crl/{ca_name}-delta.crl"]

    # -- the CAs -----------------------------------------------------------------------
    def _ca_row(self, s: Session, ca_name: str = ISSUING) -> CertificateAuthority:
        ca = s.scalar(select(CertificateAuthority).where(CertificateAuthority.name == ca_name))
        if ca is None:
            raise PolicyError("the CA is not initialised (run `mstcrypt ca init`)")
        return ca

    def issuer(self, ca: CertificateAuthority) -> Issuer:
        """The :class:`Issuer` of one CA row, its signer inside the SS-CC (memoised)."""
        key = (ca.name, ca.key_blob)
        issuer = self._issuers.get(key)
        if issuer is None:
            issuer = Issuer(
                Certificate.from_der(ca.cert_der),
                self.ctx.keys.signer(ca.key_blob, f"ca:{ca.name}".encode()),
            )
            self._issuers[key] = issuer
        return issuer

    def issuer_name_der(self, ca: CertificateAuthority) -> bytes:
        """The DER of the CA's subject Name, as it is written into its CRLs (memoised)."""
        out = self._issuer_names.get(ca.cert_der)
        if out is None:
            out = bytes(Certificate.from_der(ca.cert_der).subject.dump())
            self._issuer_names[ca.cert_der] = out
        return out

    def chain(self) -> list[Certificate]:
        """[issuing CA, root CA]."""
        with self.ctx.read() as s:
            return [
                Certificate.from_der(self._ca_row(s, ISSUING).cert_der),
                Certificate.from_der(self._ca_row(s, ROOT).cert_der),
            ]

    # -- issuance ----------------------------------------------------------------------
    # Issuance is two steps so that no write transaction waits for the CA's signature:
    # :meth:`build` signs outside any transaction (serials are random, 127 bits, so
    # nothing is allocated from the database) and :meth:`record` stores the result in a
    # short one, after re-checking that the CA that signed it is still the issuing CA.
    def issuing_ca(self, s: Session | None = None) -> CertificateAuthority:
        """The issuing CA's row for :meth:`build`: read in ``s``, or in a read-only
        transaction that takes no write lock."""
        if s is not None:
            return self._ca_row(s, ISSUING)
        with self.ctx.db.read() as rs:
            return self._ca_row(rs, ISSUING)

    def build(
        self,
        *,
        public_key: SM2PublicKey,
        subject: dict[str, str],
        profile: Profile,
        owner: str | None,
        usage: str,
        key_id: str | None,
        pair_serial: str | None = None,
        subject_alt_names: Sequence[str] = (),
        serial: int | None = None,
        u: Unit | None = None,
        ca: CertificateAuthority | None = None,
    ) -> PreparedCertificate:
        """Build and sign a certificate under the issuing CA without recording it. The
        CA row is ``ca`` (from :meth:`issuing_ca`) or read in ``u`` when given, else in
        a read-only transaction that takes no write lock."""
        if u is not None:
            ca, now = ca or self._ca_row(u.s), u.now
        else:
            ca, now = ca or self.issuing_ca(), self.ctx.clock()
        email = subject.get("email") if spec(profile).alt_names is AltNames.EMAIL else None
        cert = self.issuer(ca).issue(
            subject=name(**subject),
            public_key=public_key,
            profile=profile,
            serial=serial if serial is not None else random_serial(),
            not_before=now - BACKDATE,
            crl_urls=self._crl_urls(ISSUING),
            extra_extensions=self._aia(profile),
            freshest_crl_urls=self.delta_urls(ISSUING),
            subject_alt_names=[*([email] if email else []), *subject_alt_names],
        )
        return PreparedCertificate(
            certificate=cert,
            ca_id=ca.id,
            ca_der=ca.cert_der,
            owner=owner,
            profile=Profile(profile),
            usage=usage,
            key_id=key_id,
            pair_serial=pair_serial,
        )

    def build_pair(
        self,
        *,
        sign_public_key: SM2PublicKey,
        enc_public_key: SM2PublicKey,
        subject: dict[str, str],
        profiles: tuple[Profile, Profile],
        owner: str,
        key_id: str,
        subject_alt_names: Sequence[str] = (),
        u: Unit | None = None,
        ca: CertificateAuthority | None = None,
    ) -> tuple[PreparedCertificate, PreparedCertificate]:
        """Dual certificates (signing, encryption), built as each other's pair: both
        serials are drawn first, so each row can name the other when recorded."""
        if u is None and ca is None:
            ca = self.issuing_ca()  # one read for both
        sign_serial, enc_serial = random_serial(), random_serial()
        while enc_serial == sign_serial:  # pragma: no cover - 2**-127
            enc_serial = random_serial()
        sign = self.build(
            public_key=sign_public_key,
            subject=subject,
            profile=profiles[0],
            owner=owner,
            usage="sign",
            key_id=None,
            pair_serial=f"{enc_serial:x}",
            serial=sign_serial,
            subject_alt_names=subject_alt_names,
            u=u,
            ca=ca,
        )
        enc = self.build(
            public_key=enc_public_key,
            subject=subject,
            profile=profiles[1],
            owner=owner,
            usage="enc",
            key_id=key_id,
            pair_serial=f"{sign_serial:x}",
            serial=enc_serial,
            subject_alt_names=subject_alt_names,
            u=u,
            ca=ca,
        )
        return sign, enc

    def record(self, u: Unit, prepared: Sequence[PreparedCertificate]) -> None:
        """Record certificates made by :meth:`build` inside ``u``. Refused (nothing
        recorded) unless the CA that signed them is still the issuing CA, its key and
        certificate unchanged, and its own certificate neither revoked nor expired."""
        if not prepared:
            return
        # read, not locked: CA rows change only by CRL publication (crl_number), and the
        # certificate rows inserted below hold a key-share lock on it through their FK
        ca = u.s.execute(
            select(CertificateAuthority)
            .where(CertificateAuthority.name == ISSUING)
            .execution_options(populate_existing=True)
        ).scalar_one_or_none()
        if ca is None:
            raise PolicyError("the CA is not initialised (run `mstcrypt ca init`)")
        ca_cert = self.issuer(ca).certificate  # parsed once per CA key
        own = u.s.get(IssuedCertificate, f"{ca_cert.serial:x}")
        if own is not None and own.status != "active":
            raise PolicyError("the issuing CA's certificate is revoked; nothing was issued")
        if aware(ca_cert.not_after) <= u.now:
            raise PolicyError("the issuing CA's certificate has expired; nothing was issued")
        for p in prepared:
            if p.ca_id != ca.id or p.ca_der != ca.cert_der:
                raise PolicyError(
                    "the issuing CA changed while the certificate was being built; "
                    "nothing was issued"
                )
        for p in prepared:
            self._record(
                u,
                p.certificate,
                ca_id=ca.id,
                owner=p.owner,
                profile=p.profile,
                usage=p.usage,
                key_id=p.key_id,
                pair_serial=p.pair_serial,
                flush=False,
            )
        u.s.flush()

    def issue(
        self,
        u: Unit,
        *,
        public_key: SM2PublicKey,
        subject: dict[str, str],
        profile: Profile,
        owner: str | None,
        usage: str,
        key_id: str | None,
        pair_serial: str | None = None,
        subject_alt_names: Sequence[str] = (),
    ) -> Certificate:
        """Issue under the issuing CA and record the certificate, inside ``u`` (signing
        in the transaction; hot paths use :meth:`build` then :meth:`record`). The
        subject's e-mail address becomes an rfc822Name SAN where the profile carries
        e-mail addresses (devices); ``subject_alt_names`` must fit the profile
        (:func:`mstcrypt.pki.check_alt_names`, PolicyError otherwise)."""
        prepared = self.build(
            public_key=public_key,
            subject=subject,
            profile=profile,
            owner=owner,
            usage=usage,
            key_id=key_id,
            pair_serial=pair_serial,
            subject_alt_names=subject_alt_names,
            u=u,
        )
        self.record(u, [prepared])
        return prepared.certificate

    def issue_pair(
        self,
        u: Unit,
        *,
        sign_public_key: SM2PublicKey,
        enc_public_key: SM2PublicKey,
        subject: dict[str, str],
        profiles: tuple[Profile, Profile],
        owner: str,
        key_id: str,
        subject_alt_names: Sequence[str] = (),
    ) -> tuple[Certificate, Certificate]:
        """Dual certificates (signing, encryption) recorded as each other's pair, both
        with ``subject_alt_names``."""
        sign, enc = self.build_pair(
            sign_public_key=sign_public_key,
            enc_public_key=enc_public_key,
            subject=subject,
            profiles=profiles,
            owner=owner,
            key_id=key_id,
            subject_alt_names=subject_alt_names,
            u=u,
        )
        self.record(u, [sign, enc])
        return sign.certificate, enc.certificate

    def _record(
        self,
        u: Unit,
        cert: Certificate,
        *,
        ca_id: int,
        owner: str | None,
        profile: Profile,
        usage: str,
        key_id: str | None,
        pair_serial: str | None = None,
        flush: bool = True,
    ) -> None:
        u.s.add(
            IssuedCertificate(
                serial=f"{cert.serial:x}",
                ca_id=ca_id,
                subject=cert.subject_str,
                owner=owner,
                profile=Profile(profile).value,
                usage=usage,
                key_id=key_id,
                der=cert.der,
                fingerprint=cert.fingerprint,
                not_before=cert.not_before,
                not_after=cert.not_after,
                status="active",
                issued_at=u.now,
                pair_serial=pair_serial,
            )
        )
        if flush:
            u.s.flush()

    # -- CRLs --------------------------------------------------------------------------
    def publish_crl(self, u: Unit, ca_name: str = ISSUING) -> CRL:
        """Sign and store the next complete CRL of ``ca_name`` inside ``u`` (the CA row
        is locked first). The publisher does this outside the revocations' transactions;
        this is for set-up and for callers that need it in their own unit."""
        ca = u.s.execute(
            select(CertificateAuthority)
            .where(CertificateAuthority.name == ca_name)
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        ).scalar_one()
        return CRL.from_der(self.publisher.publish_in(u, ca))

    def current_crl(
        self, ca_name: str = ISSUING, kind: str = "complete", *, publish: bool = True
    ) -> PublishedCrl:
        """The newest complete (or delta) CRL with its number and times; published
        first when missing or overdue unless ``publish`` is false (see
        :meth:`CrlPublisher.current`)."""
        return self.publisher.current(ca_name, kind, publish=publish)

    def crl(self, ca_name: str = ISSUING) -> bytes:
        """The newest complete CRL (DER); published first when missing or overdue, and
        re-signed in passing when older than half its life."""
        return self.publisher.current(ca_name).der

    def delta_crl(self, ca_name: str = ISSUING) -> bytes:
        """The newest delta CRL (DER)."""
        return self.publisher.current(ca_name, "delta").der

    def crl_number(self, ca_name: str = ISSUING) -> int:
        with self.ctx.db.snapshot() as s:
            return self._ca_row(s, ca_name).crl_number

    # -- revocation --------------------------------------------------------------------
    def revoke_certificate(
        self, serial: str, *, reason: str = "unspecified", actor: str
    ) -> list[str]:
        """Revoke one certificate (and its pair, for :data:`PAIR_REASONS`). Returns the
        serials revoked."""
        if reason not in REVOCATION_REASONS:
            raise PolicyError(f"unknown revocation reason {reason!r}")
        with self.ctx.unit(actor) as u:
            row = u.s.get(
                IssuedCertificate, serial_hex(serial), with_for_update={"key_share": True}
            )
            if row is None:
                raise NotFoundError(f"no certificate with serial {serial}")
            if row.usage == "ca":
                raise PolicyError("CA certificates are not revoked through this operation")
            if row.status == "revoked":
                raise PolicyError("the certificate is already revoked")
            done = self.revoke_rows(u, [row], reason)
            u.audit("cert.revoke", f"cert:{row.serial}", reason=reason, revoked_serials=done)
        return done

    def revoke_rows(
        self, u: Unit, rows: Sequence[IssuedCertificate], reason: str, *, why: str | None = None
    ) -> list[str]:
        """Revoke ``rows`` inside ``u`` and make keys follow: for :data:`PAIR_REASONS`
        the pairs go too, the escrowed keys of revoked encryption certificates are
        revoked for use, and the holders' derived keys rotate. Each row gets its CA's
        next revocation sequence number and its CRL entry DER; the CA row asks the
        publisher for a CRL by the policy's due time (at once for key or CA
        compromise). No CRL is built here."""
        if reason not in REVOCATION_REASONS:
            raise PolicyError(f"unknown revocation reason {reason!r}")
        todo = {r.serial: r for r in rows}
        if reason in PAIR_REASONS:
            for r in list(todo.values()):
                if r.pair_serial and r.pair_serial not in todo:
                    pair = u.s.get(
                        IssuedCertificate, r.pair_serial, with_for_update={"key_share": True}
                    )
                    if pair is not None and pair.status == "active":
                        todo[pair.serial] = pair
        owners = {
            r.owner
            for r in todo.values()
            if r.status != "revoked" and r.owner and not r.owner.startswith("service:")
        }
        # the holders' derived keys rotate first: the CA row locked below (every
        # revocation of that CA serialises on it) is then held only for the few updates
        for owner in sorted(owners):
            self.groups.identity_changed(u, owner, why or f"revoked:{reason}")
        cas: dict[int, CertificateAuthority] = {}
        due = self.publisher.due_time(u.now, reason)
        for r in sorted(todo.values(), key=lambda x: x.serial):
            if r.status == "revoked":
                continue
            ca = cas.get(r.ca_id)
            if ca is None:
                # the CA row's lock orders the sequence numbers (held until commit)
                ca = u.s.execute(
                    select(CertificateAuthority)
                    .where(CertificateAuthority.id == r.ca_id)
                    .with_for_update(key_share=True)
                    .execution_options(populate_existing=True)
                ).scalar_one()
                cas[r.ca_id] = ca
            ca.revocation_seq = int(ca.revocation_seq or 0) + 1
            r.status, r.revoked_at, r.revocation_reason = "revoked", u.now, reason
            r.revocation_seq = ca.revocation_seq
            r.crl_entry = entry_der(int(r.serial, 16), u.now, reason)
            if reason in PAIR_REASONS and r.key_id:
                key = u.s.get(EncryptionKey, r.key_id, with_for_update={"key_share": True})
                if key is not None and key.state in ("generated", "active", "decrypt_only"):
                    key.state, key.updated_at = "revoked", u.now
        for ca in cas.values():
            self.publisher.request(u, ca, due)
        u.s.flush()
        return sorted(todo)

    def active_certificates(
        self,
        u: Unit,
        *,
        key_ids: Sequence[str] = (),
        owner: str | None = None,
        usage: str | None = None,
    ) -> list[IssuedCertificate]:
        q = select(IssuedCertificate).where(IssuedCertificate.status == "active")
        if key_ids:
            q = q.where(IssuedCertificate.key_id.in_(list(key_ids)))
        if owner is not None:
            q = q.where(IssuedCertificate.owner == owner)
        if usage is not None:
            q = q.where(IssuedCertificate.usage == usage)
        return list(u.s.scalars(q.with_for_update(key_share=True)))
