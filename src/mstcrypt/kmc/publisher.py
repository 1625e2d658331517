"""CRL publication: batched, incremental, one publisher at a time, with delta CRLs.

A revocation only marks its rows (:meth:`mstcrypt.kmc.ca.CaService.revoke_rows`): each
revoked certificate gets the next *revocation sequence number* of its CA and the DER of
its CRL entry, and the CA row records by when the revocation must be published
(``crl_due_at``: now + :attr:`CrlPolicy.max_delay`, or now for key and CA compromise).
The revocation holds the CA row's lock until it commits, so sequence numbers commit in
order: once a reader sees ``ca.revocation_seq = S``, every revocation numbered up to S
is visible.

:class:`CrlPublisher` publishes, per CA, when a publication is due, when there is no CRL,
or when the newest one has lived half its life:

1. take the publisher lease (a row of ``leases`` updated under ``SELECT … FOR UPDATE``,
   expiring after :attr:`CrlPolicy.lease_ttl`): exactly one process publishes at a time
   across every instance on the database;
2. read the CA row and the cached entries numbered up to S on a snapshot
   (:meth:`~mstcrypt.kmc.db.Database.snapshot`: no write lock on SQLite), in index order
   (``ix_certificates_ca_revocation``);
3. outside any transaction, assemble the complete CRL and the delta CRL
   (:mod:`mstcrypt.pki.crl_der`: bytes joined, not re-encoded) and sign them with the CA
   key in the SS-CC;
4. write a large CRL's DER in chunks of :data:`CHUNK_SIZE`, one short transaction each
   (a 100,000-entry CRL is about 5 MB: written at once it would hold SQLite's write
   lock for ~100 ms on an ordinary disk);
5. store the CRL rows in one short transaction that re-checks the CA row's
   ``crl_number`` and the lease (a lost race stores nothing), advances ``crl_number``
   and ``crl_seq``, clears the due time when nothing newer is pending, and writes the
   ``crl.publish`` audit record;
6. prune CRLs beyond the retention policy in small transactions.

Complete and delta CRLs share one numbering sequence (RFC 5280 §5.2.3): each publication
issues complete CRL *n* and delta CRL *n* on the current delta base (a complete CRL,
re-chosen when it is older than :attr:`CrlPolicy.delta_rebase` or the delta would list
more than :attr:`CrlPolicy.delta_max_entries` entries). Complete CRLs carry a
freshestCRL extension pointing at ``<public url>/crl/<ca>-delta.crl``.

The background thread (:meth:`CrlPublisher.start`, run by ``mstcrypt serve``) wakes every
:attr:`CrlPolicy.interval` seconds, or at once when a revocation in this process asks
for immediate publication; :meth:`CrlPublisher.current` (what the HTTP endpoints serve)
publishes first when a publication is overdue, so CRLs stay correct without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select as io_select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from mstcrypt.errors import MstCryptError, PolicyError
from mstcrypt.kmc.context import KmcContext, Unit, aware
from mstcrypt.kmc.models import (
    CertificateAuthority,
    CrlChunk,
    CrlRecord,
    DeltaCrlRecord,
    IssuedCertificate,
    Lease,
)
from mstcrypt.pki.crl_der import entry_der, entry_sort_key, sign_tbs_cert_list, tbs_cert_list_der

if TYPE_CHECKING:
    from mstcrypt.kmc.ca import CaService

__all__ = ["LEASE_NAME", "CrlPolicy", "CrlPublisher", "Publication", "PublishedCrl"]

log = logging.getLogger("mstcrypt.kmc.publisher")

LEASE_NAME = "crl-publisher"
#: legacy rows (revoked before cached entries existed) given their entry DER per run
_BACKFILL_BATCH = 500
#: CRL rows deleted per pruning transaction, and per publisher run
_PRUNE_BATCH = 4
_PRUNE_MAX = 64
#: a CRL larger than this is stored in chunks of this size, one per transaction
CHUNK_SIZE = 256 * 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class CrlPolicy:
    """When and how CRLs are published (see the module documentation).

    ``interval``: seconds between two runs of the background publisher.
    ``max_delay``: seconds a revocation may wait for its CRL (revocations within that
    window are published together); 0 publishes at the next opportunity.
    ``immediate_reasons``: revocation reasons published at once, whatever ``max_delay``.
    ``lifetime``: nextUpdate − thisUpdate; a CRL is re-signed after half of it.
    ``keep`` / ``keep_for``: retention — a CRL is deleted by the publisher once it is
    neither among the newest ``keep`` nor younger than ``keep_for`` (the current delta
    base is always kept).
    ``delta``: publish delta CRLs (and point at them with freshestCRL).
    ``delta_rebase`` / ``delta_max_entries``: when the delta CRLs move to a newer base.
    ``lease_ttl``: seconds the publisher lease lasts (a crashed publisher is replaced
    after that). ``wait``: seconds a reader waits for a publication running elsewhere.
    """

    interval: float = 5.0
    max_delay: float = 0.0
    immediate_reasons: frozenset[str] = frozenset({"key_compromise", "ca_compromise"})
    lifetime: timedelta = timedelta(days=1)
    keep: int = 10
    keep_for: timedelta = timedelta(0)
    delta: bool = True
    delta_rebase: timedelta = timedelta(days=1)
    delta_max_entries: int = 1000
    lease_ttl: float = 30.0
    wait: float = 5.0

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise PolicyError("CRL publisher interval must be positive")
        if self.max_delay < 0:
            raise PolicyError("CRL max delay must not be negative")
        if self.lifetime < timedelta(minutes=2):
            raise PolicyError("CRL lifetime must be at least 2 minutes")
        if self.keep < 1:
            raise PolicyError("keep at least the newest CRL")
        if self.keep_for < timedelta(0) or self.delta_rebase <= timedelta(0):
            raise PolicyError("CRL retention and delta rebase periods must be positive")
        if self.delta_max_entries < 1 or self.lease_ttl <= 0 or self.wait < 0:
            raise PolicyError("invalid CRL publisher limits")


@dataclass(frozen=True)
class Publication:
    """What one publication did, with its costs: ``build_seconds`` / ``build_cpu`` read
    and assemble and sign outside any write transaction; ``stage_seconds`` writes a
    large CRL's chunks (one short transaction each); ``store_seconds`` is the wall time
    of the one transaction that publishes."""

    ca: str
    number: int
    entries: int
    delta_base: int | None
    delta_entries: int | None
    why: str
    read_seconds: float
    build_seconds: float
    build_cpu: float
    stage_seconds: float
    store_seconds: float
    pruned: int = 0
    prune_seconds: float = 0.0


@dataclass(frozen=True)
class PublishedCrl:
    """The newest stored CRL of one kind of one CA."""

    ca: str
    kind: str  # complete | delta
    number: int
    this_update: datetime
    next_update: datetime
    der: bytes = field(repr=False)


@dataclass(frozen=True)
class _State:
    ca_id: int
    number: int
    revocation_seq: int
    crl_seq: int
    due: datetime | None
    delta_base: int | None
    delta_base_seq: int | None
    latest_next_update: datetime | None
    latest_this_update: datetime | None


class _LostRace(Exception):
    """Another publisher stored a CRL (or took the lease) first."""


class CrlPublisher:
    """Publishes the CRLs of the CAs of one database (see the module documentation)."""

    def __init__(
        self,
        ctx: KmcContext,
        ca: CaService,
        policy: CrlPolicy | None = None,
        *,
        holder: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.ca = ca
        self.policy = policy or CrlPolicy()
        self.holder = holder or f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._lock = threading.Lock()  # one publication per process at a time
        self._wake = threading.Event()
        # while run_forever runs, the wake-up is a socket pair too, so that the thread can
        # wait on it and on PostgreSQL's notifications at once (select)
        self._wake_pair: tuple[socket.socket, socket.socket] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cache: dict[tuple[str, str], PublishedCrl] = {}
        self._cache_lock = threading.Lock()
        #: called with each Publication (tests, metrics)
        self.listeners: list[Callable[[Publication], None]] = []

    # -- what revocations call -----------------------------------------------------------
    def due_time(self, now: datetime, reason: str) -> datetime:
        """By when a revocation for ``reason`` made at ``now`` must be published."""
        if reason in self.policy.immediate_reasons:
            return now
        return now + timedelta(seconds=self.policy.max_delay)

    def request(self, u: Unit, ca_row: CertificateAuthority, due: datetime) -> None:
        """Inside ``u`` (which holds ``ca_row``'s lock): ask for a publication by ``due``;
        wakes this process's publisher after the commit when that is sooner than its
        next run."""
        current = ca_row.crl_due_at
        if current is None or aware(current) > due:
            ca_row.crl_due_at = due
        if due <= u.now + timedelta(seconds=self.policy.interval):
            u.after_commit(self.wake)
            if not self.ctx.db.is_sqlite:
                # every instance's publisher listens (the lease holder publishes);
                # PostgreSQL delivers the notification only if this transaction commits
                u.s.execute(
                    text("SELECT pg_notify(:channel, :ca)"),
                    {"channel": NOTIFY_CHANNEL, "ca": ca_row.name},
                )

    def wake(self) -> None:
        self._wake.set()
        pair = self._wake_pair
        if pair is not None:
            with contextlib.suppress(OSError):  # full or closed: a wake-up is pending anyway
                pair[1].send(b"!")

    # -- reading -----------------------------------------------------------------------
    def _state(self, s: Any, ca_name: str) -> _State:
        ca = s.scalar(select(CertificateAuthority).where(CertificateAuthority.name == ca_name))
        if ca is None:
            raise PolicyError("the CA is not initialised (run `mstcrypt ca init`)")
        latest = s.execute(
            select(CrlRecord.this_update, CrlRecord.next_update)
            .where(CrlRecord.ca_id == ca.id)
            .order_by(CrlRecord.number.desc())
            .limit(1)
        ).first()
        return _State(
            ca_id=ca.id,
            number=ca.crl_number,
            revocation_seq=int(ca.revocation_seq or 0),
            crl_seq=int(ca.crl_seq or 0),
            due=aware(ca.crl_due_at) if ca.crl_due_at is not None else None,
            delta_base=ca.delta_base,
            delta_base_seq=ca.delta_base_seq,
            latest_next_update=aware(latest[1]) if latest else None,
            latest_this_update=aware(latest[0]) if latest else None,
        )

    def _why(self, st: _State, now: datetime) -> str | None:
        """Why ``st`` needs a publication now, or None."""
        if st.latest_next_update is None:
            return "missing"
        if st.revocation_seq > st.crl_seq and (st.due is None or st.due <= now):
            return "due"
        if st.latest_next_update - now < self.policy.lifetime / 2:
            return "refresh"
        return None

    def pending(self, ca_name: str = "issuing") -> dict[str, Any]:
        """The publication state of one CA: newest CRL number, revocations not yet on a
        CRL, the due time."""
        with self.ctx.db.snapshot() as s:
            st = self._state(s, ca_name)
        return {
            "ca": ca_name,
            "crl_number": st.number,
            "pending": st.revocation_seq - st.crl_seq,
            "due": st.due,
            "delta_base": st.delta_base,
            "next_update": st.latest_next_update,
        }

    def current(
        self, ca_name: str = "issuing", kind: str = "complete", *, publish: bool = True
    ) -> PublishedCrl:
        """The newest CRL (``kind`` complete or delta), publishing first when one is
        missing or overdue — or waiting (up to :attr:`CrlPolicy.wait`) for the publisher
        that is doing it — and in passing when it is past half its life. With
        ``publish`` false, just the newest stored one (hot paths that must not wait)."""
        if not publish:
            with self.ctx.db.snapshot() as s:
                return self._newest(s, ca_name, kind, self._state(s, ca_name))
        deadline = time.monotonic() + self.policy.wait
        while True:
            with self.ctx.db.snapshot() as s:
                st = self._state(s, ca_name)
                why = self._why(st, self.ctx.clock())
                out = self._newest(s, ca_name, kind, st) if why in (None, "refresh") else None
            if why is None and out is not None:
                return out
            if self.publish(ca_name) is not None:
                continue  # serve what was just published
            if out is not None:
                return out  # a refresh another publisher is doing: the current one is valid
            if time.monotonic() > deadline:
                with self.ctx.db.snapshot() as s:
                    st = self._state(s, ca_name)
                    if st.latest_next_update is None:
                        raise PolicyError(f"no CRL of {ca_name} has been published yet")
                    log.warning(
                        "serving CRL %s of %s while its publication is late", st.number, ca_name
                    )
                    return self._newest(s, ca_name, kind, st)
            time.sleep(0.05)

    def _newest(self, s: Any, ca_name: str, kind: str, st: _State) -> PublishedCrl:
        if kind not in ("complete", "delta"):
            raise PolicyError("kind is complete or delta")
        model: Any = CrlRecord if kind == "complete" else DeltaCrlRecord
        key = (ca_name, kind)
        with self._cache_lock:
            cached = self._cache.get(key)
        row = s.execute(
            select(model.number, model.this_update, model.next_update)
            .where(model.ca_id == st.ca_id)
            .order_by(model.number.desc())
            .limit(1)
        ).first()
        if row is None:
            raise _no_crl(ca_name, kind)
        if cached is not None and cached.number == row[0]:
            return cached
        der, blob = s.execute(
            select(model.der, model.blob_id).where(model.ca_id == st.ca_id, model.number == row[0])
        ).one()
        if blob is not None:
            der = b"".join(
                bytes(d)
                for d in s.scalars(
                    select(CrlChunk.data).where(CrlChunk.blob_id == blob).order_by(CrlChunk.idx)
                )
            )
        out = PublishedCrl(ca_name, kind, int(row[0]), aware(row[1]), aware(row[2]), bytes(der))
        with self._cache_lock:
            self._cache[key] = out
        return out

    # -- publishing ----------------------------------------------------------------------
    def publish(self, ca_name: str = "issuing", *, force: bool = False) -> Publication | None:
        """Publish the CRLs of ``ca_name`` now if a publication is needed (always with
        ``force``). None when there was nothing to do or another publisher holds the
        lease or stored first."""
        if not force:
            with self.ctx.db.snapshot() as s:
                if self._why(self._state(s, ca_name), self.ctx.clock()) is None:
                    return None
        with self._lock:
            if not self._acquire():
                return None
            try:
                pub = self._publish_locked(ca_name, force=force)
            except _LostRace:
                return None
            finally:
                self._release()
        if pub is not None:
            for fn in self.listeners:
                fn(pub)
        return pub

    def _acquire(self) -> bool:
        now = self.ctx.clock()
        until = now + timedelta(seconds=self.policy.lease_ttl)
        try:
            with self.ctx.db.tx() as s:
                row = s.get(Lease, LEASE_NAME, with_for_update=True)
                if row is None:
                    s.add(Lease(name=LEASE_NAME, holder=self.holder, expires_at=until))
                    return True
                if row.holder != self.holder and aware(row.expires_at) > now:
                    return False
                row.holder, row.expires_at = self.holder, until
        except IntegrityError:  # another process created the row first
            return False
        return True

    def _release(self) -> None:
        with self.ctx.db.tx() as s:
            s.execute(
                update(Lease)
                .where(Lease.name == LEASE_NAME, Lease.holder == self.holder)
                .values(expires_at=_EPOCH)
            )

    def _publish_locked(self, ca_name: str, *, force: bool) -> Publication | None:
        t0, c0 = time.perf_counter(), time.process_time()
        now = self.ctx.clock()
        policy = self.policy
        with self.ctx.db.snapshot() as s:
            st = self._state(s, ca_name)
            why = "forced" if force else self._why(st, now)
            if why is None:
                return None
            ca_row = s.get(CertificateAuthority, st.ca_id)
            assert ca_row is not None
            issuer = self.ca.issuer(ca_row)
            base_this_update = None
            if st.delta_base is not None:
                base_this_update = s.scalar(
                    select(CrlRecord.this_update).where(
                        CrlRecord.ca_id == st.ca_id, CrlRecord.number == st.delta_base
                    )
                )
            rows = _entries(s, st.ca_id, st.revocation_seq)
            legacy = s.execute(
                select(
                    IssuedCertificate.serial,
                    IssuedCertificate.revocation_seq,
                    IssuedCertificate.revoked_at,
                    IssuedCertificate.revocation_reason,
                ).where(
                    IssuedCertificate.ca_id == st.ca_id,
                    IssuedCertificate.revocation_seq.is_not(None),
                    IssuedCertificate.revocation_seq <= st.revocation_seq,
                    IssuedCertificate.status == "revoked",
                    IssuedCertificate.crl_entry.is_(None),
                )
            ).all()
        t_read = time.perf_counter() - t0

        # -- build and sign, outside any transaction ----------------------------------
        backfill: list[tuple[str, bytes]] = []
        for serial, seq, revoked_at, reason in legacy:
            der = entry_der(int(serial, 16), aware(revoked_at or now), reason)
            rows.append((serial, der, seq))
            if len(backfill) < _BACKFILL_BATCH:
                backfill.append((serial, der))
        if legacy:  # the rows came in serial order from the database; merge the others
            rows.sort(key=lambda r: entry_sort_key(r[0]))
        entries: list[bytes] = [r[1] for r in rows]
        number = st.number + 1
        this_update = now
        next_update = now + policy.lifetime
        cert = issuer.certificate
        issuer_der = self.ca.issuer_name_der(ca_row)
        aki = cert.subject_key_id or b""
        delta_urls = self.ca.delta_urls(ca_name) if policy.delta else []
        tbs = tbs_cert_list_der(
            issuer_der=issuer_der,
            authority_key_id=aki,
            number=number,
            this_update=this_update,
            next_update=next_update,
            entries=entries,
            freshest_crl_urls=delta_urls,
        )
        complete_der = sign_tbs_cert_list(tbs, issuer.signer, cert.public_key)
        delta_der = None
        delta_base, delta_base_seq = st.delta_base, st.delta_base_seq
        delta_entries = None
        if policy.delta:
            rebase = (
                delta_base is None
                or delta_base_seq is None
                or base_this_update is None
                or now - aware(base_this_update) >= policy.delta_rebase
            )
            if not rebase:
                assert delta_base_seq is not None
                newer = [e for e, r in zip(entries, rows, strict=True) if r[2] > delta_base_seq]
                rebase = len(newer) > policy.delta_max_entries
            if rebase:
                delta_base, delta_base_seq, newer = number, st.revocation_seq, []
            assert delta_base is not None
            delta_entries = len(newer)
            dtbs = tbs_cert_list_der(
                issuer_der=issuer_der,
                authority_key_id=aki,
                number=number,
                this_update=this_update,
                next_update=next_update,
                entries=newer,
                delta_base=delta_base,
            )
            delta_der = sign_tbs_cert_list(dtbs, issuer.signer, cert.public_key)
        t_built = time.perf_counter()
        build_cpu = time.process_time() - c0

        # -- store: large DER in chunks, then one short transaction -------------------
        complete_inline, complete_blob = self._stage(complete_der)
        delta_inline, delta_blob = self._stage(delta_der) if delta_der else (b"", None)
        t_staged = time.perf_counter()
        try:
            self._store(
                ca_name,
                st,
                why,
                number=number,
                this_update=this_update,
                next_update=next_update,
                complete=(complete_inline, complete_blob, len(entries)),
                delta=(delta_inline, delta_blob, delta_entries) if delta_der else None,
                delta_base=(delta_base, delta_base_seq),
                backfill=backfill,
            )
        except BaseException:
            self._unstage([b for b in (complete_blob, delta_blob) if b])
            raise
        t_stored = time.perf_counter()
        with self._cache_lock:
            self._cache[(ca_name, "complete")] = PublishedCrl(
                ca_name, "complete", number, this_update, next_update, complete_der
            )
            if delta_der is not None:
                self._cache[(ca_name, "delta")] = PublishedCrl(
                    ca_name, "delta", number, this_update, next_update, delta_der
                )
        pruned, t_prune = self._prune(st.ca_id, number, delta_base)
        return Publication(
            ca=ca_name,
            number=number,
            entries=len(entries),
            delta_base=delta_base if delta_der is not None else None,
            delta_entries=delta_entries,
            why=why,
            read_seconds=t_read,
            build_seconds=t_built - t0,
            build_cpu=build_cpu,
            stage_seconds=t_staged - t_built,
            store_seconds=t_stored - t_staged,
            pruned=pruned,
            prune_seconds=t_prune,
        )

    def _stage(self, der: bytes) -> tuple[bytes, str | None]:
        """(inline DER, None) for a small CRL; (b"", blob id) after writing a large one
        in chunks, one transaction per chunk."""
        if len(der) <= CHUNK_SIZE:
            return der, None
        blob = secrets.token_hex(16)
        for i in range(0, len(der), CHUNK_SIZE):
            with self.ctx.db.tx() as s:
                s.add(CrlChunk(blob_id=blob, idx=i // CHUNK_SIZE, data=der[i : i + CHUNK_SIZE]))
        return b"", blob

    def _unstage(self, blobs: list[str]) -> None:
        for blob in blobs:
            self._delete_chunks(blob)

    def _delete_chunks(self, blob: str) -> None:
        while True:
            with self.ctx.db.tx() as s:
                idx = list(
                    s.scalars(
                        select(CrlChunk.idx)
                        .where(CrlChunk.blob_id == blob)
                        .order_by(CrlChunk.idx)
                        .limit(_PRUNE_BATCH)
                    )
                )
                if not idx:
                    return
                s.execute(delete(CrlChunk).where(CrlChunk.blob_id == blob, CrlChunk.idx.in_(idx)))

    def _store(
        self,
        ca_name: str,
        st: _State,
        why: str,
        *,
        number: int,
        this_update: datetime,
        next_update: datetime,
        complete: tuple[bytes, str | None, int],
        delta: tuple[bytes, str | None, int | None] | None,
        delta_base: tuple[int | None, int | None],
        backfill: list[tuple[str, bytes]],
    ) -> None:
        """The one write transaction of a publication (raises _LostRace)."""
        with self.ctx.unit(f"system:crl-publisher:{self.holder}"[:128]) as u:
            ca = u.s.execute(
                select(CertificateAuthority)
                .where(CertificateAuthority.id == st.ca_id)
                .with_for_update(key_share=True)
                .execution_options(populate_existing=True)
            ).scalar_one()
            if ca.crl_number != st.number:
                raise _LostRace
            lease = u.s.get(Lease, LEASE_NAME)
            if lease is None or lease.holder != self.holder:
                raise _LostRace
            u.s.add(
                CrlRecord(
                    ca_id=ca.id,
                    number=number,
                    der=complete[0],
                    blob_id=complete[1],
                    this_update=this_update,
                    next_update=next_update,
                    revocation_seq=st.revocation_seq,
                    entries=complete[2],
                )
            )
            if delta is not None:
                assert delta_base[0] is not None and delta[2] is not None
                u.s.add(
                    DeltaCrlRecord(
                        ca_id=ca.id,
                        number=number,
                        base_number=delta_base[0],
                        der=delta[0],
                        blob_id=delta[1],
                        this_update=this_update,
                        next_update=next_update,
                        entries=delta[2],
                    )
                )
                ca.delta_base, ca.delta_base_seq = delta_base
            ca.crl_number = number
            ca.crl_seq = st.revocation_seq
            if int(ca.revocation_seq or 0) == st.revocation_seq:
                ca.crl_due_at = None
            for serial, der in backfill:
                u.s.execute(
                    update(IssuedCertificate)
                    .where(IssuedCertificate.serial == serial)
                    .values(crl_entry=der)
                )
            u.audit(
                "crl.publish",
                f"ca:{ca_name}",
                number=number,
                entries=complete[2],
                delta_base=delta_base[0] if delta is not None else None,
                delta_entries=delta[2] if delta is not None else None,
                why=why,
            )

    def publish_in(self, u: Unit, ca_row: CertificateAuthority) -> bytes:
        """Publish a complete CRL of ``ca_row`` inside ``u`` (CA set-up: the first,
        empty CRL is written with the CAs). Returns its DER."""
        rows = u.s.execute(
            select(
                IssuedCertificate.serial,
                IssuedCertificate.crl_entry,
                IssuedCertificate.revoked_at,
                IssuedCertificate.revocation_reason,
            ).where(
                IssuedCertificate.ca_id == ca_row.id,
                IssuedCertificate.revocation_seq.is_not(None),
                IssuedCertificate.status == "revoked",
            )
        ).all()
        rows.sort(key=lambda r: entry_sort_key(r[0]))
        entries = [
            bytes(d) if d is not None else entry_der(int(sn, 16), aware(at or u.now), reason)
            for sn, d, at, reason in rows
        ]
        issuer = self.ca.issuer(ca_row)
        number = ca_row.crl_number + 1
        tbs = tbs_cert_list_der(
            issuer_der=self.ca.issuer_name_der(ca_row),
            authority_key_id=issuer.certificate.subject_key_id or b"",
            number=number,
            this_update=u.now,
            next_update=u.now + self.policy.lifetime,
            entries=entries,
            freshest_crl_urls=self.ca.delta_urls(ca_row.name) if self.policy.delta else [],
        )
        der = sign_tbs_cert_list(tbs, issuer.signer, issuer.certificate.public_key)
        seq = int(ca_row.revocation_seq or 0)
        u.s.add(
            CrlRecord(
                ca_id=ca_row.id,
                number=number,
                der=der,
                this_update=u.now,
                next_update=u.now + self.policy.lifetime,
                revocation_seq=seq,
                entries=len(entries),
            )
        )
        ca_row.crl_number, ca_row.crl_seq, ca_row.crl_due_at = number, seq, None
        if self.policy.delta:
            dtbs = tbs_cert_list_der(
                issuer_der=self.ca.issuer_name_der(ca_row),
                authority_key_id=issuer.certificate.subject_key_id or b"",
                number=number,
                this_update=u.now,
                next_update=u.now + self.policy.lifetime,
                entries=[],
                delta_base=number,
            )
            u.s.add(
                DeltaCrlRecord(
                    ca_id=ca_row.id,
                    number=number,
                    base_number=number,
                    der=sign_tbs_cert_list(dtbs, issuer.signer, issuer.certificate.public_key),
                    this_update=u.now,
                    next_update=u.now + self.policy.lifetime,
                    entries=0,
                )
            )
            ca_row.delta_base, ca_row.delta_base_seq = number, seq
        return der

    def _prune(self, ca_id: int, newest: int, delta_base: int | None) -> tuple[int, float]:
        """Delete CRLs outside the retention policy (never the delta base) and their
        chunks, a few rows per transaction so that none holds the write lock long; then
        chunks no CRL refers to (a publisher that crashed or lost a race)."""
        t0 = time.perf_counter()
        cutoff = self.ctx.clock() - self.policy.keep_for
        oldest_kept = newest - self.policy.keep + 1
        done = 0
        for model in (CrlRecord, DeltaCrlRecord):
            while done < _PRUNE_MAX:
                with self.ctx.db.tx() as s:
                    q = select(model.number, model.blob_id).where(
                        model.ca_id == ca_id,
                        model.number < oldest_kept,
                        model.this_update <= cutoff,
                    )
                    if model is CrlRecord and delta_base is not None:
                        q = q.where(model.number != delta_base)
                    found = s.execute(q.order_by(model.number).limit(_PRUNE_BATCH)).all()
                    if not found:
                        break
                    s.execute(
                        delete(model).where(
                            model.ca_id == ca_id, model.number.in_([n for n, _ in found])
                        )
                    )
                for _, blob in found:
                    if blob is not None:
                        self._delete_chunks(blob)
                done += len(found)
        with self.ctx.db.snapshot() as s:
            orphans = list(
                s.scalars(
                    select(CrlChunk.blob_id)
                    .where(
                        CrlChunk.idx == 0,
                        CrlChunk.blob_id.not_in(
                            select(CrlRecord.blob_id).where(CrlRecord.blob_id.is_not(None))
                        ),
                        CrlChunk.blob_id.not_in(
                            select(DeltaCrlRecord.blob_id).where(
                                DeltaCrlRecord.blob_id.is_not(None)
                            )
                        ),
                    )
                    .limit(_PRUNE_BATCH)
                )
            )
        for blob in orphans:
            self._delete_chunks(blob)
        return done, time.perf_counter() - t0

    # -- the background loop -----------------------------------------------------------
    def run_once(self) -> list[Publication]:
        """One run over every CA: publish what is due. Errors are logged, not raised."""
        out = []
        try:
            with self.ctx.db.snapshot() as s:
                names = list(s.scalars(select(CertificateAuthority.name)))
        except OperationalError as exc:
            log.warning("CRL publisher: database unavailable: %s", type(exc).__name__)
            return out
        for name in names:
            try:
                pub = self.publish(name)
            except (MstCryptError, OperationalError) as exc:
                log.warning("CRL publication of %s failed: %s", name, type(exc).__name__)
                continue
            if pub is not None:
                out.append(pub)
        return out

    def next_wait(self) -> float:
        """Seconds until the next run: the interval, or sooner when a due time is."""
        wait = self.policy.interval
        try:
            with self.ctx.db.snapshot() as s:
                dues = [aware(d) for d in s.scalars(select(CertificateAuthority.crl_due_at)) if d]
        except OperationalError:
            return wait
        if dues:
            until = (min(dues) - self.ctx.clock()).total_seconds()
            wait = min(wait, max(until, 0.0))
        return wait

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Publish until ``stop`` (or :meth:`stop`) is set. Wakes after
        :attr:`CrlPolicy.interval` seconds, at a due time, when a revocation in this
        process asks (:meth:`wake`), and on PostgreSQL when one in another instance
        does (``LISTEN``)."""
        stop = stop or self._stop
        recv, send = socket.socketpair()
        recv.setblocking(False)
        send.setblocking(False)
        self._wake_pair = (recv, send)
        listener = None if self.ctx.db.is_sqlite else _PgListener(self.ctx.db, self.wake)
        try:
            while not stop.is_set():
                self._wake.clear()
                self._drain_wake(recv)
                self.run_once()
                wait = self.next_wait()
                if wait > 0 and not self._wake.is_set():
                    self._sleep(wait, recv, listener)
                if stop.is_set():
                    return
        finally:
            self._wake_pair = None
            if listener is not None:
                listener.close()
            recv.close()
            send.close()

    @staticmethod
    def _drain_wake(recv: socket.socket) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError: nothing (more) to read
            while recv.recv(4096):
                pass

    def _sleep(self, seconds: float, recv: socket.socket, listener: _PgListener | None) -> None:
        fds: list[Any] = [recv]
        pg = listener.fileno() if listener is not None else None
        if pg is not None:
            fds.append(pg)
        try:
            ready, _, _ = io_select.select(fds, [], [], seconds)
        except (OSError, ValueError):  # a closed descriptor: fall back to the event
            self._wake.wait(seconds)
            return
        if pg is not None and pg in ready and listener is not None:
            listener.drain()  # calls wake() for each notification

    def start(self) -> None:
        """Run :meth:`run_forever` in a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run_forever, name="mstcrypt-crl-publisher", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


#: the PostgreSQL notification channel a revocation that wants its CRL now signals on
NOTIFY_CHANNEL = "mstcrypt_crl_due"


class _PgListener:
    """A dedicated PostgreSQL connection (outside the pool, autocommit) that LISTENs on
    :data:`NOTIFY_CHANNEL` and calls ``on_notify`` for each notification. A lost
    connection is dropped and reopened at the next wait; meanwhile the publisher still
    runs every interval."""

    def __init__(self, db: Any, on_notify: Callable[[], None]) -> None:
        self._db = db
        self._on_notify = on_notify
        self._conn: Any = None
        self._fairy: Any = None

    def _connect(self) -> Any:
        if self._conn is not None:
            return self._conn
        try:
            fairy = self._db.engine.raw_connection()
            conn = fairy.driver_connection  # psycopg's Connection (None once detached)
            fairy.detach()  # this connection never returns to the pool
            conn.rollback()
            conn.autocommit = True
            conn.add_notify_handler(lambda _n: self._on_notify())
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except Exception as exc:  # an unreachable database: poll instead
            log.warning("CRL publisher: cannot listen for notifications (%s)", type(exc).__name__)
            return None
        self._fairy, self._conn = fairy, conn
        return conn

    def fileno(self) -> int | None:
        conn = self._connect()
        if conn is None:
            return None
        try:
            return int(conn.fileno())
        except Exception:  # closed under us
            self.close()
            return None

    def drain(self) -> None:
        """Read what arrived (the notify handler runs for each notification)."""
        if self._conn is None:
            return
        try:
            self._conn.execute("SELECT 1")
        except Exception as exc:  # connection lost: reopen next time
            log.warning("CRL publisher: notification connection lost (%s)", type(exc).__name__)
            self.close()

    def close(self) -> None:
        conn, self._conn, self._fairy = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


_ENTRIES_SQLITE = (
    "SELECT serial, crl_entry, revocation_seq FROM certificates WHERE ca_id = :ca "
    "AND revocation_seq IS NOT NULL AND revocation_seq <= :upto AND status = 'revoked' "
    "AND crl_entry IS NOT NULL ORDER BY length(serial), serial"
)
_ENTRIES_PG = (
    "SELECT serial, crl_entry, revocation_seq FROM certificates WHERE ca_id = %(ca)s "
    "AND revocation_seq IS NOT NULL AND revocation_seq <= %(upto)s AND status = 'revoked' "
    'AND crl_entry IS NOT NULL ORDER BY length(serial), serial COLLATE "C"'
)


def _entries(s: Any, ca_id: int, upto: int) -> list[tuple[str, bytes, int]]:
    """(serial, entry DER, sequence) of the CA's revoked certificates numbered up to
    ``upto`` with a cached entry, in serial order (shorter hex first, then bytewise),
    read on the snapshot's DB-API cursor: ~100,000 rows, no per-row objects."""
    conn = s.connection()
    sql = _ENTRIES_SQLITE if conn.dialect.name == "sqlite" else _ENTRIES_PG
    cur = conn.connection.dbapi_connection.cursor()
    try:
        cur.execute(sql, {"ca": ca_id, "upto": upto})
        return [(r[0], bytes(r[1]), r[2]) for r in cur.fetchall()]
    finally:
        cur.close()


def _no_crl(ca_name: str, kind: str) -> PolicyError:
    from mstcrypt.kmc.context import NotFoundError

    return NotFoundError(f"no {kind} CRL of {ca_name} has been published")
