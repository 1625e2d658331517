"""The platform's own keys: service identities (login server, the platform's TLCP
endpoint, …), the audit key and the key-escrow (file-recovery) certificate.

Each key lives in the SS-CC as a blob in ``service_keys``; a :class:`ServiceIdentity` is
a handle that signs or decrypts through the key store and never holds the scalar. The
escrow key is certified by the issuing CA under the ``kmc_escrow_enc`` profile, so a
terminal validates it against its preset root before it encrypts anything to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from mstcrypt.crypto.sm2 import DEFAULT_ID, SM2PublicKey
from mstcrypt.errors import PolicyError
from mstcrypt.kmc.ca import CaService
from mstcrypt.kmc.context import KmcContext, Unit, aware
from mstcrypt.kmc.models import IssuedCertificate, ServiceKey
from mstcrypt.module.sscc import ServerKeyStore
from mstcrypt.pki import Certificate, Profile, spec

__all__ = ["AUDIT", "FILE_RECOVERY", "IdentityService", "ServiceIdentity"]

AUDIT = "audit"
FILE_RECOVERY = "file-recovery"


@dataclass(frozen=True)
class ServiceIdentity:
    """A service key inside the SS-CC and its certificate (None for the audit key)."""

    name: str
    certificate: Certificate | None
    _public: SM2PublicKey
    _keys: ServerKeyStore = field(repr=False)
    _blob: bytes = field(repr=False)

    @property
    def _context(self) -> bytes:
        return f"service:{self.name}".encode()

    def public_key(self) -> SM2PublicKey:
        return self._public

    def sign(self, data: bytes, *, signer_id: bytes = DEFAULT_ID) -> bytes:
        return self._keys.sign(self._blob, self._context, data, signer_id=signer_id)

    def decrypt(self, ciphertext: bytes) -> bytes:
        return self._keys.decrypt(self._blob, self._context, ciphertext)


class IdentityService:
    def __init__(self, ctx: KmcContext, ca: CaService) -> None:
        self.ctx = ctx
        self.ca = ca

    def create_key(self, u: Unit, name: str) -> SM2PublicKey:
        """A new service key ``name`` inside ``u`` (replacing an earlier one)."""
        return self.store_key(u, name, self.generate_key(name))

    def generate_key(self, name: str) -> tuple[SM2PublicKey, bytes]:
        """A new key for service ``name`` from the SS-CC (public key, wrapped blob), made
        before the transaction that stores it (:meth:`store_key`)."""
        return self.ctx.keys.generate_sm2(f"service:{name}".encode())

    def store_key(self, u: Unit, name: str, key: tuple[SM2PublicKey, bytes]) -> SM2PublicKey:
        """Store a key made by :meth:`generate_key` as service key ``name`` inside ``u``
        (replacing an earlier one)."""
        pub, blob = key
        old = u.s.get(ServiceKey, name)
        if old is not None:
            u.s.delete(old)
            u.s.flush()
        u.s.add(ServiceKey(name=name, public_key=pub.to_bytes(), key_blob=blob, created_at=u.now))
        u.s.flush()
        return pub

    def key(self, name: str) -> ServiceIdentity:
        """The handle of service key ``name`` (with its newest active certificate)."""
        with self.ctx.read() as s:
            row = s.get(ServiceKey, name)
            if row is None:
                raise PolicyError(f"the CA is not initialised (no {name} key)")
            cert_der = s.scalar(
                select(IssuedCertificate.der)
                .where(
                    IssuedCertificate.owner == f"service:{name}",
                    IssuedCertificate.status == "active",
                )
                .order_by(IssuedCertificate.issued_at.desc())
                .limit(1)
            )
        cert = Certificate.from_der(cert_der) if cert_der else None
        return ServiceIdentity(
            name, cert, SM2PublicKey.from_bytes(row.public_key), self.ctx.keys, row.key_blob
        )

    def identity(
        self,
        name: str,
        profile: Profile,
        common_name: str,
        *,
        subject_alt_names: Sequence[str] = (),
        actor: str = "system",
    ) -> ServiceIdentity:
        """The key and certificate of one of our services, created once, certified by
        the issuing CA. When several instances create it at once, one wins."""
        try:
            ident = self._identity(name, profile, common_name, subject_alt_names, actor)
        except IntegrityError:
            ident = self._identity(name, profile, common_name, subject_alt_names, actor)
        return ident

    def _identity(
        self,
        name: str,
        profile: Profile,
        common_name: str,
        sans: Sequence[str],
        actor: str,
    ) -> ServiceIdentity:
        """Reuse the key and its active certificate of the right profile; certify an
        existing key that has none (its escrowed data stays recoverable); create the key
        only when there is none."""
        profile = Profile(profile)
        with self.ctx.read() as s:
            exists = s.get(ServiceKey, name) is not None
        # The key (when there is none) and the certificate are made here, before the
        # write transaction, so that no writer waits for the SS-CC or the CA signature.
        new_key = None
        if exists:
            ident = self.key(name)
            if self._fits(ident.certificate, ident.public_key(), profile, common_name, sans):
                return ident
            pub = ident.public_key()
        else:
            new_key = self.generate_key(name)
            pub = new_key[0]
        issue = {
            "subject": {"CN": common_name},
            "profile": profile,
            "owner": f"service:{name}",
            "usage": "enc" if spec(profile).is_encryption else "sign",
            "key_id": None,
            "subject_alt_names": sans,
        }
        prepared = self.ca.build(public_key=pub, **issue)
        # audited only when it changes something: another instance may have certified
        # the key since the check above (then nothing is done). The name lock serialises
        # the instances' units whole: a row lock cannot, as long as there is no row, and
        # a key stored by another instance after this unit's read would be replaced,
        # its certificate (which that instance is already presenting) superseded.
        with self.ctx.unit(actor, audited=False) as u:
            u.lock(f"service:{name}")
            row = u.s.get(ServiceKey, name, with_for_update={"key_share": True})
            if row is not None:
                stored = SM2PublicKey.from_bytes(row.public_key)
            elif new_key is not None:
                stored = self.store_key(u, name, new_key)
            else:  # deleted since the check above: start again with a new key
                stored = self.create_key(u, name)
            old = self.ca.active_certificates(u, owner=f"service:{name}")
            newest = max(old, key=lambda r: aware(r.issued_at), default=None)
            if row is not None and newest is not None:
                current = Certificate.from_der(newest.der)
                if self._fits(current, stored, profile, common_name, sans, newest.profile):
                    return self.key(name)
            if stored == prepared.certificate.public_key:
                try:  # refused before writing anything when the CA changed
                    self.ca.record(u, [prepared])
                    cert = prepared.certificate
                except PolicyError:  # the issuing CA changed meanwhile: sign under the new one
                    cert = self.ca.issue(u, public_key=stored, **issue)
            else:  # another instance replaced the key: certify the one stored
                cert = self.ca.issue(u, public_key=stored, **issue)
            if old:
                self.ca.revoke_rows(u, old, "superseded", why="service certificate renewed")
            u.audit(
                "service.identity",
                f"service:{name}",
                serial=f"{cert.serial:x}",
                profile=profile.value,
            )
        return self.key(name)

    def _fits(
        self,
        cert: Certificate | None,
        public_key: SM2PublicKey,
        profile: Profile,
        common_name: str,
        sans: Sequence[str],
        recorded_profile: str | None = None,
    ) -> bool:
        """Whether ``cert`` is what :meth:`identity` would issue now (same key, profile,
        name, policies and SANs)."""
        if cert is None or cert.public_key != public_key:
            return False
        if recorded_profile is None:
            recorded_profile = self._profile_of(cert)
        return (
            recorded_profile == profile.value
            and cert.subject_str.endswith(f"CN={common_name}")
            and set(cert.policies) == set(spec(profile).policies)
            and set(cert.subject_alt_names) == set(sans)
        )

    def _profile_of(self, cert: Certificate) -> str | None:
        with self.ctx.read() as s:
            return s.scalar(
                select(IssuedCertificate.profile).where(
                    IssuedCertificate.serial == f"{cert.serial:x}"
                )
            )

    def escrow_certificate(self) -> Certificate:
        """The KMC's key-escrow (file-recovery) encryption certificate."""
        ident = self.identity(FILE_RECOVERY, Profile.KMC_ESCROW_ENC, "mstcrypt KMC Key Escrow")
        assert ident.certificate is not None
        return ident.certificate
