"""The OCSP responder (RFC 6960): the status of one certificate in O(1).

A terminal asks about one certificate and gets a small signed answer instead of
downloading the whole CRL. The responder signs with a delegated responder certificate
(profile ``ocsp_signer``: id-kp-OCSPSigning, id-pkix-ocsp-nocheck, 30 days) issued by
the issuing CA, whose key lives in the SS-CC as the service key ``ocsp``; it is
rotated (new key, new certificate, the old one superseded) once less than a third of
its life, or less than two response lifetimes, remains.

Each lookup is one primary-key read of ``certificates`` joined to ``ocsp_responses``
(the pre-signed responses): no CRL is built, read or scanned. A request with one
CertID and no nonce (what RFC 5019 clients and HTTP caches send) is answered from the
pre-signed response of that serial and hash algorithm while the response is in the
first half of its validity, the certificate's status is the one it states and the
responder certificate is the current one; otherwise a new response is signed and
stored (a short write; when the store is busy the answer is still given, just not
kept). Requests with a nonce, or about several certificates, are signed for the
occasion. :meth:`OcspResponder.presign` signs ahead for the certificates that have no
fresh response (the platform's housekeeping calls it), so most lookups never wait for
a signature.

On SQLite the reads and the cache writes go through a side connection that does not
take the platform's ``BEGIN IMMEDIATE`` write lock for reads, and waits at most two
seconds for it when storing, so OCSP neither stalls behind nor stalls enrollments and
logins. On PostgreSQL the platform's engine is used.

Status codes: ``malformedRequest`` for a request that does not parse (or asks about
more than 16 certificates); ``unauthorized`` when no CertID names the issuing CA
(the root's certificates are covered by the root CRL); ``tryLater`` when the CA is
not initialised or the store is unavailable; ``internalError`` otherwise. A serial this
CA never issued is ``unknown``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, bindparam, create_engine, event, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import DecodeError, MstCryptError, PolicyError, UnsupportedError
from mstcrypt.kmc.ca import ISSUING, CaService
from mstcrypt.kmc.context import KmcContext, aware
from mstcrypt.kmc.identities import IdentityService, ServiceIdentity
from mstcrypt.kmc.models import (
    CertificateAuthority,
    IssuedCertificate,
    OcspResponseRecord,
    ServiceKey,
)
from mstcrypt.pki import Certificate, Profile, spec
from mstcrypt.pki.ocsp import (
    OID_OCSP_NOCHECK,
    CertId,
    OcspRequest,
    SingleStatus,
    build_response,
    error_response,
)

__all__ = [
    "DEFAULT_VALIDITY",
    "RESPONDER",
    "RESPONDER_CN",
    "OcspAnswer",
    "OcspResponder",
]

log = logging.getLogger(__name__)

#: Service key name and subject CN of the delegated responder.
RESPONDER = "ocsp"
RESPONDER_CN = "mstcrypt OCSP Responder"
_OWNER = f"service:{RESPONDER}"
#: thisUpdate → nextUpdate of the responses we sign; re-signed after half of it.
DEFAULT_VALIDITY = timedelta(hours=4)
#: how often an instance re-reads the responder identity (another may have rotated it)
RELOAD = timedelta(seconds=60)

_C = IssuedCertificate.__table__
_O = OcspResponseRecord.__table__


@dataclass(frozen=True)
class OcspAnswer:
    """The DER OCSPResponse to send and what HTTP needs to know about it.

    ``status``: the OCSPResponseStatus (``successful`` or an error name);
    ``this_update`` / ``next_update``: of the single response when the answer is about
    one certificate without a nonce — the same for everybody who asks, so HTTP caches
    may keep it (``cacheable``); ``cached``: served from a pre-signed response."""

    der: bytes
    status: str
    this_update: datetime | None = None
    next_update: datetime | None = None
    cacheable: bool = False
    cached: bool = False


@dataclass(frozen=True)
class _Loaded:
    ident: ServiceIdentity
    cert: Certificate
    loaded_at: datetime


def _status_key(status: str, revoked_at: datetime | None, reason: str | None) -> str:
    """What a pre-signed response states about the certificate, comparable with the
    certificate's row: status, revocation time (whole seconds, UTC) and reason."""
    when = (
        aware(revoked_at).astimezone(UTC).replace(microsecond=0).isoformat()
        if revoked_at is not None
        else ""
    )
    return f"{status}|{when}|{reason or ''}"


def _side_engine(url: str) -> Engine:
    """A SQLite engine without the platform's BEGIN IMMEDIATE: reads run as single
    statements on a WAL snapshot, writes take the lock explicitly and wait at most 2 s."""
    eng = create_engine(url, connect_args={"timeout": 2, "check_same_thread": False})

    @event.listens_for(eng, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=2000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return eng


class OcspResponder:
    """The responder of the issuing CA. ``validity``: nextUpdate − thisUpdate of the
    responses (re-signed after half of it)."""

    def __init__(
        self,
        ctx: KmcContext,
        ca: CaService,
        identities: IdentityService,
        *,
        validity: timedelta = DEFAULT_VALIDITY,
    ) -> None:
        self.ctx = ctx
        self.ca = ca
        self.identities = identities
        self.validity = validity
        self._lock = threading.Lock()
        self._engine_lock = threading.Lock()
        self._responder: _Loaded | None = None
        self._issuing: tuple[int, Certificate] | None = None
        self._side_engine: Engine | None = None
        self._lookup = (
            select(
                _C.c.ca_id,
                _C.c.status,
                _C.c.revoked_at,
                _C.c.revocation_reason,
                _O.c.der,
                _O.c.status_key,
                _O.c.responder_serial,
                _O.c.this_update,
                _O.c.next_update,
                _O.c.refresh_at,
            )
            .select_from(
                _C.outerjoin(
                    _O, and_(_O.c.serial == _C.c.serial, _O.c.hash_algorithm == bindparam("alg"))
                )
            )
            .where(_C.c.serial == bindparam("serial"))
        )

    @property
    def _side(self) -> Engine | None:
        """The SQLite side engine (created on first use); None on PostgreSQL."""
        db = self.ctx.db
        if not db.is_sqlite or db.url in ("sqlite://", "sqlite:///:memory:"):
            return None
        if self._side_engine is None:
            with self._engine_lock:
                if self._side_engine is None:
                    self._side_engine = _side_engine(db.url)
        return self._side_engine

    def forget(self) -> None:
        """Drop what is memoised (after a restore)."""
        self._responder = None
        self._issuing = None

    def dispose(self) -> None:
        if self._side_engine is not None:
            self._side_engine.dispose()
            self._side_engine = None

    @property
    def validity(self) -> timedelta:
        return self._validity

    @validity.setter
    def validity(self, value: timedelta) -> None:
        if not isinstance(value, timedelta) or value < timedelta(minutes=2):
            raise PolicyError("the OCSP response validity must be a timedelta of 2 minutes or more")
        if value > timedelta(days=7):
            raise PolicyError("the OCSP response validity must not exceed 7 days")
        self._validity = value

    # -- storage ---------------------------------------------------------------------
    def _read(self, stmt: Any, params: dict[str, Any]) -> list[Any]:
        if self._side is not None:
            with self._side.connect() as conn:
                return list(conn.execute(stmt, params))
        with self.ctx.db.engine.connect() as conn:
            return list(conn.execute(stmt, params))

    def _store(self, rows: list[dict[str, Any]]) -> bool:
        """Upsert pre-signed responses; False (nothing kept) when the store is busy."""
        if not rows:
            return True
        if self.ctx.db.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(_O).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=["serial", "hash_algorithm"],
            set_={
                k: stmt.excluded[k]
                for k in (
                    "der",
                    "status_key",
                    "responder_serial",
                    "this_update",
                    "next_update",
                    "refresh_at",
                )
            },
        )
        try:
            if self._side is not None:
                with self._side.begin() as conn:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                    conn.execute(stmt)
            else:
                with self.ctx.db.tx() as s:
                    s.execute(stmt)
        except OperationalError as exc:  # busy: answer anyway, keep nothing
            log.info("OCSP response not cached (%s)", type(exc).__name__)
            return False
        return True

    # -- the issuing CA and the responder ----------------------------------------------
    def issuing(self) -> tuple[int, Certificate]:
        """(row id, certificate) of the issuing CA (read once)."""
        if self._issuing is None:
            rows = self._read(
                select(CertificateAuthority.id, CertificateAuthority.cert_der).where(
                    CertificateAuthority.name == ISSUING
                ),
                {},
            )
            if not rows:
                raise PolicyError("the CA is not initialised (run `mstcrypt ca init`)")
            self._issuing = (int(rows[0][0]), Certificate.from_der(rows[0][1]))
        return self._issuing

    @property
    def renew_before(self) -> timedelta:
        """Rotate the responder when less than this much of its life remains."""
        life = timedelta(days=spec(Profile.OCSP_SIGNER).default_days)
        return max(life / 3, 2 * self.validity)

    def _usable(self, cert: Certificate | None, public_key: Any, now: datetime) -> bool:
        if cert is None or cert.public_key != public_key:
            return False
        issuer = self.issuing()[1]
        return (
            cert.issued_by_name(issuer)
            and cert.authority_key_id == issuer.subject_key_id
            and "ocsp_signing" in cert.extended_key_usage
            and OID_OCSP_NOCHECK in cert.extensions
            and cert.not_before <= now
            and cert.not_after - now > self.renew_before
        )

    def responder(self) -> tuple[ServiceIdentity, Certificate]:
        """The responder's key handle (SS-CC) and certificate, rotated when due."""
        now = self.ctx.clock()
        r = self._responder
        if (
            r is not None
            and now - r.loaded_at < RELOAD
            and self._usable(r.cert, r.cert.public_key, now)
        ):
            return r.ident, r.cert
        with self._lock:
            ident = self._load()
            if ident is None or not self._usable(ident.certificate, ident.public_key(), now):
                self.rotate()
                ident = self._load()
            if ident is None or ident.certificate is None:
                raise PolicyError("no OCSP responder certificate")
            self._responder = _Loaded(ident, ident.certificate, now)
            return ident, ident.certificate

    def _load(self) -> ServiceIdentity | None:
        with self.ctx.read() as s:
            if s.get(ServiceKey, RESPONDER) is None:
                return None
        return self.identities.key(RESPONDER)

    def rotate(self, *, actor: str = "system:ocsp", force: bool = False) -> Certificate:
        """A new responder key and certificate (the previous certificate superseded), in
        one audited transaction — unless, under the lock, the current one turns out to be
        usable (another instance rotated first) and ``force`` is false."""
        self.issuing()
        # the new key and its certificate are made before the write transaction, so no
        # writer waits for the SS-CC or the CA signature; discarded if not needed
        new_key = self.identities.generate_key(RESPONDER)
        prepared = self.ca.build(
            public_key=new_key[0],
            subject={"CN": RESPONDER_CN},
            profile=Profile.OCSP_SIGNER,
            owner=_OWNER,
            usage="sign",
            key_id=None,
        )
        with self.ctx.unit(actor, audited=False) as u:
            u.lock(_OWNER)
            now = u.now
            key_row = u.s.get(ServiceKey, RESPONDER, with_for_update={"key_share": True})
            current = u.s.scalar(
                select(IssuedCertificate.der)
                .where(IssuedCertificate.owner == _OWNER, IssuedCertificate.status == "active")
                .order_by(IssuedCertificate.issued_at.desc())
                .limit(1)
            )
            if not force and key_row is not None and current is not None:
                cert = Certificate.from_der(current)
                if self._usable(cert, SM2PublicKey.from_bytes(key_row.public_key), now):
                    return cert
            old = self.ca.active_certificates(u, owner=_OWNER)
            self.identities.store_key(u, RESPONDER, new_key)
            self.ca.record(u, [prepared])
            cert = prepared.certificate
            if old:
                self.ca.revoke_rows(u, old, "superseded", why="OCSP responder rotated")
            u.audit(
                "ocsp.responder",
                _OWNER,
                serial=f"{cert.serial:x}",
                not_after=cert.not_after.isoformat(),
                superseded=[r.serial for r in old],
            )
        self._responder = None
        return cert

    # -- answering ---------------------------------------------------------------------
    def respond(self, request_der: bytes) -> OcspAnswer:
        """The answer to one DER OCSPRequest (never raises for a bad request: the error
        is an OCSPResponse status)."""
        try:
            req = OcspRequest.from_der(request_der)
        except (DecodeError, UnsupportedError):
            return OcspAnswer(error_response("malformed_request"), "malformed_request")
        try:
            issuer_id, issuer = self.issuing()
            ours = [cid.matches_issuer(issuer) for cid in req.cert_ids]
            if not any(ours):
                return OcspAnswer(error_response("unauthorized"), "unauthorized")
            if len(req.cert_ids) == 1 and req.nonce is None:
                return self._single(req.cert_ids[0], issuer_id)
            return self._fresh(req, ours, issuer_id)
        except (PolicyError, SQLAlchemyError) as exc:
            log.warning("OCSP: try later (%s)", type(exc).__name__)
            return OcspAnswer(error_response("try_later"), "try_later")
        except MstCryptError as exc:
            log.error("OCSP: internal error (%s)", type(exc).__name__)
            return OcspAnswer(error_response("internal_error"), "internal_error")

    def _statuses(
        self, cert_ids: Sequence[CertId], ours: Sequence[bool], issuer_id: int, now: datetime
    ) -> list[SingleStatus]:
        out = []
        nu = now + self.validity
        for cid, mine in zip(cert_ids, ours, strict=True):
            row = self._read(self._lookup, {"serial": f"{cid.serial:x}", "alg": cid.hash_algorithm})
            if not mine or not row or row[0].ca_id != issuer_id:
                out.append(SingleStatus(cid, "unknown", now, nu))
            elif row[0].status == "revoked":
                out.append(
                    SingleStatus(
                        cid,
                        "revoked",
                        now,
                        nu,
                        aware(row[0].revoked_at or now),
                        row[0].revocation_reason,
                    )
                )
            else:
                out.append(SingleStatus(cid, "good", now, nu))
        return out

    def _sign(
        self, statuses: list[SingleStatus], now: datetime, nonce: bytes | None = None
    ) -> tuple[bytes, Certificate]:
        ident, cert = self.responder()
        der = build_response(
            statuses, responder=cert, signer=ident.sign, produced_at=now, nonce=nonce
        )
        return der, cert

    def _fresh(self, req: OcspRequest, ours: list[bool], issuer_id: int) -> OcspAnswer:
        now = self.ctx.clock().replace(microsecond=0)
        statuses = self._statuses(req.cert_ids, ours, issuer_id, now)
        der, _ = self._sign(statuses, now, req.nonce)
        return OcspAnswer(der, "successful", now, now + self.validity)

    def _single(self, cid: CertId, issuer_id: int) -> OcspAnswer:
        now = self.ctx.clock().replace(microsecond=0)
        serial = f"{cid.serial:x}"
        rows = self._read(self._lookup, {"serial": serial, "alg": cid.hash_algorithm})
        if not rows or rows[0].ca_id != issuer_id:
            der, _ = self._sign([SingleStatus(cid, "unknown", now, now + self.validity)], now)
            return OcspAnswer(der, "successful", now, now + self.validity, cacheable=True)
        row = rows[0]
        key = (
            _status_key("revoked", row.revoked_at, row.revocation_reason)
            if row.status == "revoked"
            else _status_key("good", None, None)
        )
        _, rcert = self.responder()
        if (
            row.der is not None
            and row.status_key == key
            and row.responder_serial == f"{rcert.serial:x}"
            and aware(row.refresh_at) > now
        ):
            return OcspAnswer(
                bytes(row.der),
                "successful",
                aware(row.this_update).astimezone(UTC),
                aware(row.next_update).astimezone(UTC),
                cacheable=True,
                cached=True,
            )
        status = self._statuses([cid], [True], issuer_id, now)[0]
        der, rcert = self._sign([status], now)
        self._store([self._row(serial, cid.hash_algorithm, der, key, rcert, now)])
        return OcspAnswer(der, "successful", now, now + self.validity, cacheable=True)

    def _row(
        self, serial: str, alg: str, der: bytes, key: str, rcert: Certificate, now: datetime
    ) -> dict[str, Any]:
        return {
            "serial": serial,
            "hash_algorithm": alg,
            "der": der,
            "status_key": key,
            "responder_serial": f"{rcert.serial:x}",
            "this_update": now,
            "next_update": now + self.validity,
            "refresh_at": now + self.validity / 2,
        }

    # -- signing ahead -------------------------------------------------------------------
    def presign(self, *, limit: int = 1000, hash_algorithms: Sequence[str] = ("sm3",)) -> int:
        """Sign responses ahead for up to ``limit`` unexpired certificates of the issuing
        CA whose pre-signed response (per hash algorithm) is missing, due for refresh or
        from an earlier responder certificate; drop responses expired for a day. Returns
        how many were signed."""
        if limit <= 0:
            return 0
        issuer_id, issuer = self.issuing()
        _, rcert = self.responder()
        now = self.ctx.clock().replace(microsecond=0)
        done = 0
        for alg in hash_algorithms:
            todo = self._read(
                select(_C.c.serial, _C.c.status, _C.c.revoked_at, _C.c.revocation_reason)
                .select_from(
                    _C.outerjoin(_O, and_(_O.c.serial == _C.c.serial, _O.c.hash_algorithm == alg))
                )
                .where(
                    _C.c.ca_id == issuer_id,
                    _C.c.not_after > now,
                    (_O.c.serial.is_(None))
                    | (_O.c.refresh_at <= now)
                    | (_O.c.responder_serial != f"{rcert.serial:x}"),
                )
                .limit(limit - done),
                {},
            )
            rows = []
            for r in todo:
                cid = CertId.for_certificate(int(r.serial, 16), issuer, alg)
                if r.status == "revoked":
                    revoked_at = aware(r.revoked_at or now)
                    st = SingleStatus(
                        cid, "revoked", now, now + self.validity, revoked_at, r.revocation_reason
                    )
                    key = _status_key("revoked", r.revoked_at, r.revocation_reason)
                else:
                    st = SingleStatus(cid, "good", now, now + self.validity)
                    key = _status_key("good", None, None)
                der, signer_cert = self._sign([st], now)
                rows.append(self._row(r.serial, alg, der, key, signer_cert, now))
                if len(rows) >= 200:
                    self._store(rows)
                    rows = []
            self._store(rows)
            done += len(todo)
            if done >= limit:
                break
        self._prune(now)
        return done

    def _prune(self, now: datetime) -> None:
        try:
            if self._side is not None:
                with self._side.begin() as conn:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                    conn.execute(_O.delete().where(_O.c.next_update < now - timedelta(days=1)))
            else:
                with self.ctx.db.tx() as s:
                    s.execute(_O.delete().where(_O.c.next_update < now - timedelta(days=1)))
        except OperationalError:
            pass
