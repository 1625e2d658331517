"""The CA and key management center: one facade over services with one responsibility
each, sharing one :class:`~mstcrypt.kmc.context.KmcContext` (database, SS-CC key store,
clock) and its unit of work (one transaction + its audit record per change)::

    kmc = Kmc(db, keystore)
    kmc.ca           issuance, CRLs, revocation (pairs; keys follow revocation)
    kmc.ca.publisher the CRL publisher (batched, incremental, delta CRLs, one at a time)
    kmc.directory    certificate lookups
    kmc.enrollment   one-time codes, dual-certificate enrollment
    kmc.lifecycle    encryption keys: generate, distribute, rotate, archive, revoke, destroy
    kmc.recovery     dual-control recovery of keys and file keys
    kmc.groups       KDKs and group keys (Annex D), rotated when identities change
    kmc.identities   the platform's own keys (login server, TLCP endpoint, escrow, audit)
    kmc.operators    operators bound to certificates, roles
    kmc.audit        signed checkpoints, chain verification
    kmc.backups      backup and restore
    kmc.limits       rate limits shared by every instance
    kmc.ocsp         the OCSP responder (delegated responder certificate, pre-signed responses)

The methods on :class:`Kmc` itself delegate to these (kept for callers and tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import IO, Any

from sqlalchemy.exc import IntegrityError

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import KeyStoreError, PolicyError
from mstcrypt.kmc import audit as audit_log
from mstcrypt.kmc.auditlog import AuditService
from mstcrypt.kmc.backup import BackupService
from mstcrypt.kmc.ca import CaService
from mstcrypt.kmc.context import KEY_TRANSITIONS, KmcContext, NotFoundError, utcnow
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.directory import DirectoryService
from mstcrypt.kmc.enrollment import Enrollment, EnrollmentService, code_hash
from mstcrypt.kmc.groups import GroupService
from mstcrypt.kmc.identities import AUDIT, FILE_RECOVERY, IdentityService, ServiceIdentity
from mstcrypt.kmc.keys import KeyService
from mstcrypt.kmc.ocsp import OcspResponder
from mstcrypt.kmc.operators import OperatorService
from mstcrypt.kmc.publisher import CrlPolicy, CrlPublisher
from mstcrypt.kmc.ratelimit import RateLimiter
from mstcrypt.kmc.recovery import RecoveryService
from mstcrypt.module.sscc import ServerKeyStore
from mstcrypt.pki import Certificate, Profile

__all__ = ["KEY_TRANSITIONS", "CrlPolicy", "Enrollment", "Kmc", "NotFoundError", "code_hash"]


class Kmc:
    """CA + KMC over one database and one SS-CC key store."""

    def __init__(
        self,
        db: Database,
        keys: ServerKeyStore,
        *,
        crl_base_url: str | None = None,
        ocsp_url: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        recovery_approvals: int = 1,
        crl_policy: CrlPolicy | None = None,
    ) -> None:
        self.ctx = KmcContext(db, keys, crl_base_url=crl_base_url, ocsp_url=ocsp_url, clock=clock)
        self.groups = GroupService(self.ctx)
        self.ca = CaService(self.ctx, self.groups, crl_policy)
        self.directory = DirectoryService(self.ctx)
        self.enrollment = EnrollmentService(self.ctx, self.ca, self.groups)
        self.lifecycle = KeyService(self.ctx, self.ca)
        self.recovery = RecoveryService(
            self.ctx, self.groups, approvals_required=recovery_approvals
        )
        self.identities = IdentityService(self.ctx, self.ca)
        self.operators = OperatorService(self.ctx, self.enrollment)
        self.audit = AuditService(self.ctx, self.identities)
        self.backups = BackupService(self.ctx, self._forget_caches)
        self.limits = RateLimiter(self.ctx)
        self.ocsp = OcspResponder(self.ctx, self.ca, self.identities)

    @property
    def db(self) -> Database:
        return self.ctx.db

    @property
    def crl_publisher(self) -> CrlPublisher:
        return self.ca.publisher

    @property
    def keystore(self) -> ServerKeyStore:
        return self.ctx.keys

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.ctx.clock

    @clock.setter
    def clock(self, value: Callable[[], datetime]) -> None:
        self.ctx.clock = value

    def _forget_caches(self) -> None:
        self.ca._issuers.clear()
        self.ocsp.forget()
        self.ca._issuer_names.clear()
        self.ca.publisher._cache.clear()
        self.ctx.keys.clear_cache()

    # -- set-up ------------------------------------------------------------------------
    def create_schema(self) -> None:
        from mstcrypt.kmc.db import migrate

        migrate(self.db)
        try:
            with self.db.tx() as s:
                audit_log.ensure_head(s)
        except IntegrityError:  # another instance created it at the same moment
            with self.db.tx() as s:
                audit_log.ensure_head(s)

    def is_initialised(self) -> bool:
        return self.ca.is_initialised()

    def ensure_initialised(self, *, actor: str = "system") -> bool:
        """Initialise the CA (:meth:`init_ca`) unless it is; returns whether this call
        did. When several instances start at once on one database, one initialises and
        the others find it done (their attempt fails on the CA rows and rolls back)."""
        if self.is_initialised():
            return False
        try:
            self.init_ca(actor=actor)
        except (IntegrityError, PolicyError):
            if not self.is_initialised():
                raise
            return False
        return True

    def init_ca(
        self,
        *,
        organisation: str = "mstcrypt",
        country: str = "CN",
        root_cn: str = "mstcrypt Root CA",
        sub_cn: str = "mstcrypt Issuing CA",
        actor: str = "system",
    ) -> list[Certificate]:
        """Create the root and issuing CAs, the audit key and the certified key-escrow
        (file-recovery) key, all inside the SS-CC, in one transaction; then the
        delegated OCSP responder."""
        with self.ctx.unit(actor) as u:
            certs = self.ca.init(
                u, organisation=organisation, country=country, root_cn=root_cn, sub_cn=sub_cn
            )
            audit_pub = self.identities.create_key(u, AUDIT)
            self.identities.create_key(u, FILE_RECOVERY)
            u.audit(
                "ca.init",
                "ca:root,issuing",
                root_serial=f"{certs[1].serial:x}",
                issuing_serial=f"{certs[0].serial:x}",
                audit_key=audit_pub.fingerprint().hex(),
            )
        self.identities.escrow_certificate()
        self.ocsp.responder()
        return certs

    def check_keystore(self) -> None:
        """Raise :class:`KeyStoreError` unless the SS-CC opens this database's keys (it
        unwraps the issuing CA's key and compares it with the CA certificate). Every
        instance on one database needs the same master key or PKCS#11 token: an instance
        started with another one (for example a master key file created afresh on a new
        machine) would otherwise serve errors on every operation that uses a key."""
        issuing = self.ca.chain()[0]
        with self.ctx.read() as s:
            blob = self.ca._ca_row(s).key_blob
        try:
            public = self.ctx.keys.public_key(blob, b"ca:issuing")
        except KeyStoreError:
            public = None
        if public != issuing.public_key:
            raise KeyStoreError(
                "the SS-CC does not open this database's keys: every instance on one "
                "database must use the same master key (MSTCRYPT_MASTER_KEY, "
                "MSTCRYPT_MASTER_KEY_FILE) or the same PKCS#11 token and key label"
            )

    # -- delegation (callers and tests) ------------------------------------------------
    def chain(self) -> list[Certificate]:
        return self.ca.chain()

    def crl(self, ca_name: str = "issuing") -> bytes:
        return self.ca.crl(ca_name)

    def delta_crl(self, ca_name: str = "issuing") -> bytes:
        return self.ca.delta_crl(ca_name)

    def publish_crls(self, *, force: bool = False) -> list[Any]:
        """Publish the CRLs that are due now (every CA's with ``force``)."""
        if not force:
            return self.crl_publisher.run_once()
        out = []
        for name in ("root", "issuing"):
            pub = self.crl_publisher.publish(name, force=True)
            if pub is not None:
                out.append(pub)
        return out

    def revoke_certificate(
        self, serial: str, *, reason: str = "unspecified", actor: str
    ) -> list[str]:
        return self.ca.revoke_certificate(serial, reason=reason, actor=actor)

    def certificate(self, serial: str) -> Certificate:
        return self.directory.certificate(serial)

    def certificate_status(self, serial: str) -> str:
        return self.directory.certificate_status(serial)

    def find_certificates(
        self, *, subject: str | None = None, owner: str | None = None, limit: int = 100
    ) -> list[Certificate]:
        return self.directory.find(subject=subject, owner=owner, limit=limit)

    def encryption_certificate(self, owner: str) -> Certificate:
        return self.directory.encryption_certificate(owner)

    def create_enrollment_code(
        self,
        *,
        owner: str,
        subject: dict[str, str],
        profile: Profile = Profile.DEVICE_SIGN,
        ttl: timedelta = timedelta(hours=24),
        actor: str,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> tuple[str, datetime]:
        return self.enrollment.create_code(
            owner=owner,
            subject=subject,
            profile=profile,
            ttl=ttl,
            actor=actor,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )

    def enroll(self, code: str, csr_der: bytes, *, source: str = "-") -> Enrollment:
        return self.enrollment.enroll(code, csr_der, source=source)

    def keys(self, owner: str) -> list[dict[str, Any]]:
        return self.lifecycle.list(owner)

    def generate_key(self, owner: str, *, actor: str) -> str:
        return self.lifecycle.generate(owner, actor=actor)

    def distribute_key(
        self,
        key_id: str,
        terminal_public_key: SM2PublicKey,
        *,
        subject: dict[str, str],
        profile: Profile = Profile.DEVICE_ENC,
        actor: str,
    ) -> tuple[bytes, Certificate]:
        return self.lifecycle.distribute(
            key_id, terminal_public_key, subject=subject, profile=profile, actor=actor
        )

    def rotate_key(
        self,
        owner: str,
        terminal_public_key: SM2PublicKey | None = None,
        *,
        subject: dict[str, Any] | None = None,
        profile: Profile | None = None,
        actor: str,
    ) -> tuple[str, bytes, Certificate]:
        """Rotate ``owner``'s encryption key; without ``terminal_public_key`` the new key
        waits, enveloped to the terminal's signing key, for the terminal to collect it
        (:meth:`pending_keys`, :meth:`collect_key`)."""
        return self.lifecycle.rotate(
            owner, terminal_public_key, subject=subject, profile=profile, actor=actor
        )

    def pending_keys(self, owner: str) -> list[dict[str, Any]]:
        return self.lifecycle.pending(owner)

    def collect_key(self, owner: str, key_id: str, *, actor: str) -> int:
        return self.lifecycle.collect(owner, key_id, actor=actor)

    def archive_key(self, key_id: str, *, actor: str) -> None:
        self.lifecycle.archive(key_id, actor=actor)

    def revoke_key(self, key_id: str, *, reason: str = "key_compromise", actor: str) -> None:
        self.lifecycle.revoke(key_id, reason=reason, actor=actor)

    def destroy_key(self, key_id: str, *, actor: str) -> None:
        self.lifecycle.destroy(key_id, actor=actor)

    def request_recovery(
        self, key_id: str, recipient: SM2PublicKey, *, reason: str, actor: str
    ) -> str:
        return self.recovery.request(key_id, recipient, reason=reason, actor=actor)

    def request_file_recovery(
        self, escrow_ciphertext: bytes, recipient: SM2PublicKey, *, reason: str, actor: str
    ) -> str:
        return self.recovery.request_file(escrow_ciphertext, recipient, reason=reason, actor=actor)

    def approve_recovery(
        self, request_id: str, *, actor: str, recipient_fingerprint: str | None = None
    ) -> bytes | None:
        return self.recovery.approve(
            request_id, actor=actor, recipient_fingerprint=recipient_fingerprint
        )

    def recovery_result(self, request_id: str) -> dict[str, Any]:
        return self.recovery.describe(request_id)

    def file_recovery_public_key(self) -> SM2PublicKey:
        return self.identities.key(FILE_RECOVERY).public_key()

    def escrow_certificate(self) -> Certificate:
        return self.identities.escrow_certificate()

    def kdk_delivery(self, member: str, *, actor: str) -> dict[str, Any]:
        return self.groups.kdk_delivery(member, actor=actor)

    def create_group(self, group_id: str, members: Sequence[str], *, actor: str) -> int:
        return self.groups.create_group(group_id, members, actor=actor)

    def change_group(
        self, group_id: str, *, add: Sequence[str] = (), remove: Sequence[str] = (), actor: str
    ) -> int:
        return self.groups.change_group(group_id, add=add, remove=remove, actor=actor)

    def group_key_for(
        self, group_id: str, member: str, version: int | None = None
    ) -> dict[str, Any]:
        return self.groups.group_key_for(group_id, member, version)

    def group_members(self, group_id: str) -> list[str]:
        return self.groups.group_members(group_id)

    def service_identity(
        self,
        name_: str,
        profile: Profile,
        common_name: str,
        *,
        subject_alt_names: Iterable[str] = (),
        actor: str = "system",
    ) -> tuple[ServiceIdentity, Certificate]:
        """(key handle in the SS-CC, certificate) of one of our services."""
        ident = self.identities.identity(
            name_, profile, common_name, subject_alt_names=list(subject_alt_names), actor=actor
        )
        assert ident.certificate is not None
        return ident, ident.certificate

    def audit_public_key(self) -> SM2PublicKey | None:
        return self.audit.public_key()

    def checkpoint(self) -> int | None:
        return self.audit.checkpoint()

    def verify_audit(
        self,
        *,
        incremental: bool = False,
        from_seq: int | None = None,
        to_seq: int | None = None,
        limit: int | None = None,
    ) -> audit_log.ChainReport:
        """Full verification by default; ``incremental`` from the newest signed
        checkpoint (at most ``limit`` records); a range when ``from_seq`` or ``to_seq``
        is given (open ends: the first record, the head)."""
        if from_seq is not None or to_seq is not None:
            return self.audit.verify_range(from_seq or 1, to_seq or 2**62)
        if incremental:
            return self.audit.verify_incremental(limit=limit)
        return self.audit.verify()

    def allow(self, bucket: str, *, limit: int, window_seconds: int = 60) -> bool:
        return self.limits.allow(bucket, limit=limit, window_seconds=window_seconds)

    def backup(self, passphrase: str, *, actor: str) -> bytes:
        return self.backups.backup(passphrase, actor=actor)

    def backup_stream(self, passphrase: str, *, actor: str) -> Iterator[bytes]:
        return self.backups.backup_stream(passphrase, actor=actor)

    def backup_to(self, out: IO[bytes], passphrase: str, *, actor: str) -> int:
        return self.backups.backup_to(out, passphrase, actor=actor)

    def restore(self, blob: bytes, passphrase: str, *, actor: str) -> int:
        return self.backups.restore(blob, passphrase, actor=actor)

    def restore_from(self, src: IO[bytes], passphrase: str, *, actor: str) -> int:
        return self.backups.restore_from(src, passphrase, actor=actor)
