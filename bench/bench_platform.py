"""Platform load benchmark: the platform populated to N terminals (1k -> 10k -> 100k), then
enrollments/s, logins/s, revocations/s, latencies under a mixed load and the longest
write-lock hold, on SQLite and PostgreSQL, with a growth table per metric.

    .venv/bin/python bench/bench_platform.py [--sizes 1000,10000] [--backends sqlite,postgresql]
        [--pg-url URL] [--ops 200] [--mixed-ops 400] [--threads 8] [--only login,mixed]

PostgreSQL: ``--pg-url`` or MSTCRYPT_TEST_DATABASE_URL (a server where the user may
create databases); a fresh database is created for the run and dropped afterwards.

Population (fast path). Each terminal is what one enrollment leaves in the store: a
one-time code (used), an escrowed encryption key wrapped by the SS-CC, a signing and an
encryption certificate issued by the issuing CA's :class:`~mstcrypt.pki.Issuer` (the
same machinery as :meth:`CaService.issue`, with the CA key in the SS-CC), and the audit
records ``enroll.code`` and ``enroll`` chained with :func:`mstcrypt.kmc.audit.record_hash`
— written in batches of a few thousand rows per transaction instead of one transaction
per terminal. 5 % of the codes stay unused (≈1.9 certificates per terminal) and
``--revoked`` (default 1 %) of the pairs are revoked, then one CRL is published. Terminal
key pairs come from a pool of 64 (the certificates, serials and wrapped blobs are still
all distinct); the terminals used by the measurements have keys of their own.

Measurements are named functions in :data:`MEASUREMENTS` (``@measurement("name")``),
each taking the populated :class:`Bench` and returning ``{metric: value}``; add one to
extend the benchmark (e.g. OCSP responses/s, CRL publication time). Each runs with the
write-lock monitor (:class:`LockMonitor`) reset, so "max write hold" is per measurement.
The mixed measurements also print the longest cyclic-GC pass, the longest pause of
this whole process and the longest sync of a 4 KiB block to the disk
(:class:`StallProbe`), to tell a stall of the process, the machine or the disk from a
slow operation when a p99 jumps.

* enroll: ``EnrollmentService.enroll`` (code consumed, KMC key generated and wrapped, two
  certificates, envelope, audit) — the terminal's CSR and the officer's code are prepared
  outside the timed region.
* login: the login server's half of §7.3 (``LoginService.challenge`` + ``respond``); the
  terminal's half (checking Token-S, signing Token-M) runs between them, untimed.
* revoke: ``CaService.revoke_certificate`` (key_compromise: the pair, the escrowed key,
  the KDK, the CRL).
* mixed: ``--threads`` threads doing logins, enrollments and revocations (80/15/5 %)
  concurrently; latency percentiles per kind.
* mixed-rate: the same mix offered at a fixed rate (``--rate``, default half of what
  ``mixed`` reached), Poisson arrivals, latency from each scheduled arrival.
* mixed-procs: the same load over one forked process per CPU (``--threads`` threads in
  all), as several API instances on one database (docs/deployment.md).
* mixed-workers, mixed-rate-workers: ``mixed`` and ``mixed-rate`` (at the same offered
  rate) with the enrollments and revocations in a CA worker process, through the same
  :class:`~mstcrypt.server.caworkers.CaWorkers` as ``mstcrypt serve --ca-workers 1``;
  the logins stay in this process. The worker's write holds are counted with the
  others, its CPU is reported per operation (``worker CPU ms/op``), and its own stall
  probe gives its longest GC pass and longest pause.

Write-lock hold: on SQLite, from the moment ``BEGIN IMMEDIATE`` has the write lock
(every read-write transaction takes it at BEGIN; the read-only snapshots taken before
one — a deferred ``BEGIN`` — take no lock and are not counted) to the end of
``COMMIT``/``ROLLBACK`` (its WAL sync included), seen by the DB-API trace callback of
every connection and the connection's return to the pool. PostgreSQL locks rows, not
the database: there the hold is from the moment a transaction has locked or written one
of the rows that every writer of a kind serialises on — the audit chain head (every
audited change) or a CA row (every CRL publication) — to the end of its COMMIT (the WAL
flush included). Time spent waiting for a lock is not counted as holding it.

CPU is this process's CPU time (with PostgreSQL, the server's CPU is not included);
wall is elapsed time; rates are per wall second.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import gc
import json
import os
import queue
import random
import re
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, insert, select, update

from mstcrypt.apps.login import fastpath
from mstcrypt.apps.login.service import LoginPolicy, LoginService
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.kmc import audit
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.enrollment import code_hash
from mstcrypt.kmc.models import (
    AuditHead,
    AuditRecord,
    EncryptionKey,
    EnrollmentCode,
    IssuedCertificate,
)
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import Certificate, Profile, build_csr, key_identifier, name
from mstcrypt.pki.ca import BACKDATE
from mstcrypt.pki.crl_der import entry_der
from mstcrypt.protocols.login import Challenge, Response, tbs_m
from mstcrypt.server.caworkers import CaWorkers, InProcessCa
from mstcrypt.server.tuning import freeze_startup_heap

SERVER_NAME = "login.bench"
CRL_URL = "https://bench.example"
BATCH = 2000
KEY_POOL = 64


# ----------------------------------------------------------------------- stall probe --
class StallProbe:
    """Pauses of this whole process, and of the disk, during a measurement, to tell a
    stall of the process, the machine or the disk from a slow operation: the longest
    cyclic-GC pass (``gc.callbacks``); the longest lateness of a thread that wakes
    every 5 ms (a full collection, a C call that keeps the interpreter lock, or the
    machine not running the process); and the longest durable write of one 4 KiB block
    (``pwrite`` + ``fdatasync``, every 50 ms, to a file in the temporary directory).
    Every durable commit — SQLite's WAL sync, PostgreSQL's WAL flush — waits for a sync
    like that one: when the disk stalls, the commits (and the holds that end with them)
    stall with it, and the probe says it was the disk."""

    PERIOD = 0.005
    SYNC_PERIOD = 0.05

    def __init__(self, *, disk: bool = True) -> None:
        self.reset()
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)
        threading.Thread(target=self._tick, name="stall-probe", daemon=True).start()
        if disk:  # one disk probe per machine is enough
            threading.Thread(target=self._sync, name="disk-probe", daemon=True).start()

    def reset(self) -> None:
        self.max_gc = 0.0
        self.max_late = 0.0
        self.max_sync = 0.0

    def _on_gc(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.max_gc = max(self.max_gc, time.perf_counter() - self._gc_started)

    def _tick(self) -> None:
        while True:
            t = time.perf_counter()
            time.sleep(self.PERIOD)
            self.max_late = max(self.max_late, time.perf_counter() - t - self.PERIOD)

    def _sync(self) -> None:
        fd, path = tempfile.mkstemp(prefix="mstcrypt-bench-disk-")
        atexit.register(os.unlink, path)
        block = os.urandom(4096)
        os.pwrite(fd, block, 0)
        os.fsync(fd)  # from here on a write changes no metadata, as a WAL's does
        while True:
            time.sleep(self.SYNC_PERIOD)
            t = time.perf_counter()
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            self.max_sync = max(self.max_sync, time.perf_counter() - t)


# ------------------------------------------------------------------ write-lock monitor --
class LockMonitor:
    """The longest write-lock hold per transaction (see the module docstring), labelled
    with the operation the thread was doing (:meth:`label`)."""

    #: PostgreSQL: the rows every writer of a kind serialises on — the audit chain head
    #: (every audited change) and the CA rows (every CRL publication)
    _GLOBAL = re.compile(r"\b(audit_head|ca)\b")
    #: (upper-cased) DML anywhere, a CTE's included; a row lock; the fast path's
    #: ``{lock}`` marker, seen before :meth:`RawTx.q` fills it in
    _LOCKING = re.compile(r"\b(INSERT|UPDATE|DELETE)\b|\bFOR (KEY )?SHARE\b|\{LOCK\}")

    def __init__(self) -> None:
        self._local = threading.local()
        self._mutex = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._mutex:
            self.max_hold = 0.0
            self.max_label = "-"
            self.holds: list[float] = []

    @contextlib.contextmanager
    def label(self, what: str) -> Iterator[None]:
        old = getattr(self._local, "label", "-")
        self._local.label = what
        try:
            yield
        finally:
            self._local.label = old

    def _record(self, started: float) -> None:
        held = time.perf_counter() - started
        with self._mutex:
            self.holds.append(held)
            if held > self.max_hold:
                self.max_hold, self.max_label = held, getattr(self._local, "label", "-")

    def attach(self, db: Database) -> None:
        if db.is_sqlite:
            self.attach_sqlite(db)
        else:
            self.attach_postgresql(db)

    def merge(self, report: dict[str, Any]) -> None:
        """Add the holds another process recorded (``holds``, ``max_hold``,
        ``max_label``)."""
        with self._mutex:
            self.holds.extend(report["holds"])
            if report["max_hold"] > self.max_hold:
                self.max_hold, self.max_label = report["max_hold"], report["max_label"]

    # SQLite: every statement of every connection, through the DB-API trace callback,
    # and the connection's return to the pool
    def attach_sqlite(self, db: Database) -> None:
        @event.listens_for(db.engine, "connect")
        def _connect(dbapi_conn: Any, record: Any) -> None:
            state: dict[str, float] = {}
            record.info["bench_hold"] = state

            def trace(sql: str) -> None:
                # the callback runs as a statement starts: the lock taken by BEGIN
                # IMMEDIATE is held once the next statement starts (waiting for it is
                # not holding it)
                head = sql.lstrip()[:16].upper()
                if head.startswith("BEGIN"):
                    self._end(state)  # (a transaction ended without a return to the pool)
                    # a deferred BEGIN (read-only snapshot) takes no write lock
                    if head.startswith(("BEGIN IMMEDIATE", "BEGIN EXCLUSIVE")):
                        state["begun"] = 1.0
                    return
                if state.pop("begun", None) is not None:
                    state["t"] = time.perf_counter()
                if head.startswith(("COMMIT", "ROLLBACK", "END")) and "t" in state:
                    # the lock is held until COMMIT has returned, its WAL sync
                    # included; the callback does not see that moment, the
                    # connection's return to the pool just after it is the end
                    state["ending"] = state.pop("t")

            dbapi_conn.set_trace_callback(trace)

        @event.listens_for(db.engine, "checkin")
        def _checkin(_dbapi_conn: Any, record: Any) -> None:
            if record is not None and (state := record.info.get("bench_hold")) is not None:
                self._end(state)

    def serialises(self, sql: str) -> bool:
        """PostgreSQL: whether ``sql`` writes or locks a row every writer of a kind
        serialises on (the hold starts when it has returned)."""
        return bool(self._GLOBAL.search(sql)) and bool(self._LOCKING.search(sql.upper()))

    def _end(self, state: dict[str, Any], key: str = "ending") -> None:
        """Record the hold whose COMMIT started at ``state[key]``, if one is pending."""
        t = state.pop(key, None)
        if t is not None:
            self._record(t)

    # PostgreSQL: SQLAlchemy's statements by engine events, the login fast path by
    # wrapping its RawTx (it runs on the DB-API connection, below SQLAlchemy's events)
    def attach_postgresql(self, db: Database) -> None:
        started: dict[int, float] = {}
        writes = self.serialises

        # from the moment the first writing/locking statement has returned (it holds its
        # row locks then; waiting for them is not holding them) to the end of COMMIT
        # (its WAL flush included): the engine's commit event comes before it, the
        # connection's return to the pool (or its next BEGIN) just after
        @event.listens_for(db.engine, "after_cursor_execute")
        def _after(conn: Any, _cur: Any, sql: str, *_a: Any) -> None:
            if id(conn) not in started and writes(sql):
                started[id(conn)] = time.perf_counter()

        def _ending(conn: Any) -> None:
            t = started.pop(id(conn), None)
            if t is not None:
                conn.info["bench_ending"] = t

        def _begin(conn: Any) -> None:
            self._end(conn.info, "bench_ending")

        @event.listens_for(db.engine, "checkin")
        def _checkin(_dbapi_conn: Any, record: Any) -> None:
            if record is not None:
                self._end(record.info, "bench_ending")

        event.listen(db.engine, "commit", _ending)
        event.listen(db.engine, "rollback", _ending)
        event.listen(db.engine, "begin", _begin)

        monitor = self
        q, rows, exit_ = fastpath.RawTx.q, fastpath.RawTx.rows, fastpath.RawTx.__exit__

        def q_wrapped(tx: Any, sql: str, params: Any = None) -> Any:
            cur = q(tx, sql, params)
            if not hasattr(tx, "_bench_t") and writes(sql):
                tx._bench_t = time.perf_counter()
            return cur

        def rows_wrapped(tx: Any, *statements: tuple[str, Any]) -> Any:
            out = rows(tx, *statements)
            if not hasattr(tx, "_bench_t") and any(writes(sql) for sql, _ in statements):
                tx._bench_t = time.perf_counter()
            return out

        def exit_wrapped(tx: Any, *exc: Any) -> None:
            try:
                exit_(tx, *exc)
            finally:
                t = tx.__dict__.pop("_bench_t", None)
                if t is not None:
                    monitor._record(t)

        fastpath.RawTx.q = q_wrapped  # type: ignore[method-assign]
        fastpath.RawTx.rows = rows_wrapped  # type: ignore[method-assign]
        fastpath.RawTx.__exit__ = exit_wrapped  # type: ignore[method-assign]


# ------------------------------------------------- the CA worker (`serve --ca-workers`) --
_worker_monitor: LockMonitor | None = None
_worker_probe: StallProbe | None = None


def worker_kmc(url: str, master: bytes) -> Kmc:
    """The :class:`Kmc` of a CA worker process (the factory :class:`CaWorkers` runs in
    each worker, as ``Settings.kmc`` in ``mstcrypt serve``): the bench's store, the
    worker's own connections and SS-CC object, with a write-lock monitor and a stall
    probe (GC passes, pauses) of its own."""
    global _worker_monitor, _worker_probe
    _worker_probe = StallProbe(disk=False)
    db = Database(url)
    monitor = LockMonitor()
    monitor.attach(db)
    monitor._local.label = "ca worker"  # the worker runs its jobs in this thread
    _worker_monitor = monitor
    return Kmc(db, SoftKeyStore(master), crl_base_url=CRL_URL)


def worker_holds() -> dict[str, Any]:
    """In the worker: its write holds, longest GC pass and longest pause since the last
    call (then reset)."""
    m, probe = _worker_monitor, _worker_probe
    assert m is not None and probe is not None
    with m._mutex:
        out = {"holds": list(m.holds), "max_hold": m.max_hold, "max_label": m.max_label}
    out["max_gc"], out["max_late"] = probe.max_gc, probe.max_late
    probe.reset()
    m.reset()
    return out


# ------------------------------------------------- certificates from a template (fast path) --
def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def _children(der: bytes) -> list[bytes]:
    """The encodings of the elements of the DER SEQUENCE ``der``."""
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = []
    while i < len(der):
        n, j = der[i + 1], i + 2
        if n >= 0x80:
            k = n & 0x7F
            n, j = int.from_bytes(der[j : j + k], "big"), j + k
        out.append(der[i : j + n])
        i = j + n
    return out


class CertificateTemplate:
    """Certificates of one profile for many terminals at the cost of one SM2 signature
    each: a certificate issued by the CA's :class:`Issuer` for a template terminal, in
    whose tbsCertificate the serial, the subject's CN, the public key and its key
    identifier (all fixed-length) are replaced, then signed by the same CA key in the
    SS-CC. The first certificate of every batch is parsed strictly and its signature
    verified, so a template that drifted from the issuing code fails loudly."""

    CN = "t0000000"

    def __init__(self, issuer: Any, profile: Profile, pub: Any, urls: list[str], now: Any) -> None:
        self.issuer = issuer
        self.serial = self._serial()
        cert = issuer.issue(
            subject=name(CN=self.CN, O="bench"),
            public_key=pub,
            profile=profile,
            serial=int.from_bytes(self.serial, "big"),
            not_before=now - BACKDATE,
            crl_urls=urls,
        )
        self.template = cert
        tbs, self.alg, _sig = _children(cert.der)
        self.tbs = tbs
        self.pub = pub.to_bytes()
        self.ski = key_identifier(pub)
        for part in (self.serial, self.CN.encode(), self.pub, self.ski):
            assert tbs.count(part) == 1, "template field not unique in the tbsCertificate"

    @staticmethod
    def _serial() -> bytes:
        while True:  # 16 content octets, positive, no leading zero octet
            raw = bytearray(secrets.token_bytes(16))
            raw[0] = (raw[0] & 0x7F) | 0x01
            return bytes(raw)

    def issue(self, cn: str, pub: Any, *, check: bool = False) -> dict[str, Any]:
        """The new certificate's row fields (serial, der, subject, fingerprint,
        validity), without parsing it again (except with ``check``)."""
        assert len(cn) == len(self.CN)
        serial = self._serial()
        tbs = (
            self.tbs.replace(self.serial, serial, 1)
            .replace(self.CN.encode(), cn.encode(), 1)
            .replace(self.pub, pub.to_bytes(), 1)
            .replace(self.ski, key_identifier(pub), 1)
        )
        sig = self.issuer.signer(tbs)
        der = _tlv(0x30, tbs + self.alg + _tlv(0x03, b"\x00" + sig))
        t = self.template
        fields = {
            "serial": serial.hex().lstrip("0"),
            "der": der,
            "subject": t.subject_str.replace(f"CN={self.CN}", f"CN={cn}"),
            "fingerprint": sm3(der).hex(),
            "not_before": t.not_before,
            "not_after": t.not_after,
        }
        if check:
            cert = Certificate.from_der(der)
            cert.verify_signature(self.issuer.certificate.public_key)
            assert cert.public_key == pub and cert.subject_str == fields["subject"]
            assert (
                f"{cert.serial:x}" == fields["serial"] and cert.fingerprint == fields["fingerprint"]
            )
        return fields


# ------------------------------------------------------------------------- the platform --
@dataclass
class Terminal:
    owner: str
    key: SM2PrivateKey
    cert: Certificate
    source: str

    @property
    def serial(self) -> str:
        return f"{self.cert.serial:x}"


@dataclass
class Bench:
    backend: str
    kmc: Kmc
    login: LoginService
    monitor: LockMonitor
    rng: random.Random
    #: the database URL and the SS-CC master key (for the CA worker's factory)
    url: str = ""
    master: bytes = b""
    #: where the mixed loads' enrollments and revocations run
    ca: InProcessCa | CaWorkers | None = None
    #: the CA worker, started by the first measurement that uses it
    workers: CaWorkers | None = None
    populated: int = 0
    revoked_pairs: int = 0
    #: enrolled with keys of their own: logged in by the measurements
    terminals: list[Terminal] = field(default_factory=list)
    #: enrolled with keys of their own: revoked by the measurements
    victims: list[Terminal] = field(default_factory=list)
    counter: int = 0
    #: the closed-loop mixed throughput (op/s) last measured, for mixed-rate's default
    last_mixed_rate: float = 0.0
    _pool: list[SM2PrivateKey] = field(default_factory=list)
    _mutex: threading.Lock = field(default_factory=threading.Lock)

    def next_id(self, prefix: str) -> str:
        with self._mutex:
            self.counter += 1
            return f"{prefix}{self.counter:07d}"

    # -- the terminal's side --------------------------------------------------------------
    def enroll_new(self, owner: str) -> Terminal:
        """A terminal enrolled through the service (code by the officer, CSR, enroll)."""
        code, _ = self.kmc.create_enrollment_code(
            owner=owner, subject={"CN": owner, "O": "bench"}, actor="bench-ra"
        )
        key = SM2PrivateKey.generate()
        csr = build_csr(name(CN=owner), key.public_key(), key.sign).der
        e = self.kmc.enroll(code, csr, source="bench")
        return Terminal(owner, key, e.sign_certificate, _source(self.counter))

    def respond(self, t: Terminal, ch: Challenge) -> dict[str, Any]:
        """The terminal's half of the login (Token-M over the challenge); a real terminal
        also validates Cert-S, which is the terminal's CPU, not the server's."""
        r_m = secrets.token_bytes(32)
        token = t.key.sign(
            tbs_m(
                ch.server_name,
                ch.challenge_id,
                ch.r_s,
                r_m,
                bytes.fromhex(ch.cert_s.fingerprint),
                bytes.fromhex(t.cert.fingerprint),
            )
        )
        return Response(ch.challenge_id, r_m, token, t.cert).to_json()

    def login_once(self, t: Terminal) -> float:
        """One login; returns the server's time (challenge + response), in seconds."""
        t0 = time.perf_counter()
        ch = self.login.challenge(source=t.source)
        t1 = time.perf_counter()
        body = self.respond(t, ch)
        t2 = time.perf_counter()
        self.login.respond(body, source=t.source)
        return (t1 - t0) + (time.perf_counter() - t2)

    # -- population (fast path) ------------------------------------------------------------
    def populate_to(self, target: int, *, revoked: float) -> float:
        """Add terminals up to ``target`` (see the module docstring); returns seconds."""
        started = time.perf_counter()
        if not self._pool:
            self._pool = [SM2PrivateKey.generate() for _ in range(KEY_POOL)]
        while self.populated < target:
            n = min(BATCH, target - self.populated)
            self._batch(self.populated, n, revoked)
            self.populated += n
        with self.kmc.ctx.unit("bench") as u:  # one CRL for the batch's revocations
            crl = self.kmc.ca.publish_crl(u)
            u.audit("crl.publish", "ca:issuing", number=crl.number)
        return time.perf_counter() - started

    def _batch(self, first: int, n: int, revoked_fraction: float) -> None:
        kmc, ca = self.kmc, self.kmc.ca
        with kmc.ctx.read() as s:
            ca_row = ca._ca_row(s)
            issuer, ca_id = ca.issuer(ca_row), ca_row.id
        urls = ca._crl_urls("issuing")
        now = kmc.clock()
        templates = {
            p: CertificateTemplate(issuer, p, self._pool[0].public_key(), urls, now)
            for p in (Profile.DEVICE_SIGN, Profile.DEVICE_ENC)
        }
        codes, keys, certs, records = [], [], [], []
        for i in range(first, first + n):
            owner = f"t{i:07d}"
            subject = {"CN": owner, "O": "bench"}
            cid = secrets.token_hex(16)
            expires = now + timedelta(days=1)
            enrolled = i % 20 != 19
            codes.append(
                {
                    "id": cid,
                    "code_hash": code_hash(secrets.token_hex(10)),
                    "owner": owner,
                    "subject": subject,
                    "profile": Profile.DEVICE_SIGN.value,
                    "expires_at": expires,
                    "used_at": now if enrolled else None,
                    "created_by": "bench-ra",
                    "created_at": now,
                    "purpose": "terminal",
                }
            )
            records.append(
                (
                    "bench-ra",
                    "enroll.code",
                    f"owner:{owner}",
                    {
                        "enrollment_id": cid,
                        "profile": Profile.DEVICE_SIGN.value,
                        "purpose": "terminal",
                        "expires": expires.isoformat(),
                    },
                )
            )
            if not enrolled:
                continue
            sign_key = self._pool[i % KEY_POOL]
            enc_key = self._pool[(7 * i + 3) % KEY_POOL]
            key_id = secrets.token_hex(16)
            blob = kmc.keystore.import_sm2(enc_key, f"enc:{key_id}".encode())
            keys.append(
                {
                    "id": key_id,
                    "owner": owner,
                    "version": 1,
                    "state": "active",
                    "public_key": enc_key.public_key().to_bytes(),
                    "key_blob": blob,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            pair = [
                (templates[profile].issue(owner, pub, check=i == first), profile, usage)
                for profile, pub, usage in (
                    (Profile.DEVICE_SIGN, sign_key.public_key(), "sign"),
                    (Profile.DEVICE_ENC, enc_key.public_key(), "enc"),
                )
            ]
            revoke = self.rng.random() < revoked_fraction
            serials = [c["serial"] for c, _, _ in pair]
            for (cert, profile, usage), other in zip(pair, reversed(serials), strict=True):
                certs.append(
                    {
                        **cert,
                        "ca_id": ca_id,
                        "owner": owner,
                        "profile": profile.value,
                        "usage": usage,
                        "key_id": key_id if usage == "enc" else None,
                        "status": "revoked" if revoke else "active",
                        "revoked_at": now if revoke else None,
                        "revocation_reason": "key_compromise" if revoke else None,
                        # as a revocation writes them (publisher: the cached CRL entry;
                        # sequence 0 = revoked before any delta base, on the complete CRL)
                        "revocation_seq": 0 if revoke else None,
                        "crl_entry": (
                            entry_der(int(cert["serial"], 16), now, "key_compromise")
                            if revoke
                            else None
                        ),
                        "issued_at": now,
                        "pair_serial": other,
                    }
                )
            records.append(
                (
                    f"terminal:{owner}",
                    "enroll",
                    f"owner:{owner}",
                    {
                        "enrollment_id": cid,
                        "source": "bench",
                        "sign_serial": serials[0],
                        "enc_serial": serials[1],
                        "key_id": key_id,
                        "key_version": 1,
                        "superseded": [],
                    },
                )
            )
            if revoke:
                keys[-1]["state"] = "revoked"
                self.revoked_pairs += 1
                records.append(
                    (
                        "bench-ra",
                        "cert.revoke",
                        f"cert:{serials[0]}",
                        {"reason": "key_compromise", "revoked_serials": sorted(serials)},
                    )
                )
        with kmc.db.tx() as s:
            s.execute(insert(EnrollmentCode), codes)
            if keys:
                s.execute(insert(EncryptionKey), keys)
                s.execute(insert(IssuedCertificate), certs)
            head = s.get(AuditHead, 1, with_for_update=True)
            assert head is not None
            seq, prev = head.seq, head.hash
            rows = []
            for actor, action, target, details in records:
                seq += 1
                ts = audit.now_iso()
                h = audit.record_hash(prev, seq, ts, actor, action, target, details)
                rows.append(
                    {
                        "seq": seq,
                        "ts": ts,
                        "actor": actor,
                        "action": action,
                        "target": target,
                        "details": details,
                        "prev_hash": prev,
                        "hash": h,
                    }
                )
                prev = h
            s.execute(insert(AuditRecord), rows)
            s.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=seq, hash=prev))

    def table_sizes(self) -> dict[str, int]:
        with self.kmc.db.tx() as s:
            return {
                "certificates": int(s.scalar(select(func.count()).select_from(IssuedCertificate))),
                "revoked": int(
                    s.scalar(
                        select(func.count())
                        .select_from(IssuedCertificate)
                        .where(IssuedCertificate.status == "revoked")
                    )
                ),
                "audit records": int(s.scalar(select(func.count()).select_from(AuditRecord))),
                "codes": int(s.scalar(select(func.count()).select_from(EnrollmentCode))),
            }


def _source(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


# ------------------------------------------------------------------------- measurements --
@dataclass
class Args:
    ops: int
    mixed_ops: int
    threads: int
    rate: float = 0.0


Measurement = Callable[[Bench, Args], dict[str, float | str]]
MEASUREMENTS: dict[str, Measurement] = {}


def measurement(name_: str) -> Callable[[Measurement], Measurement]:
    def register(fn: Measurement) -> Measurement:
        MEASUREMENTS[name_] = fn
        return fn

    return register


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@contextlib.contextmanager
def clocks(out: dict[str, float | str], what: str, count: int) -> Iterator[None]:
    """Wall and CPU of the block: ``<what>/s`` (wall) and ``<what> CPU ms/op``."""
    w, c = time.perf_counter(), time.process_time()
    yield
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    out[f"{what}/s"] = count / wall
    out[f"{what} CPU ms/op"] = 1000 * cpu / count


def _latencies(out: dict[str, float | str], what: str, lat: list[float]) -> None:
    out[f"{what} p50 ms"] = 1000 * pct(lat, 50)
    out[f"{what} p99 ms"] = 1000 * pct(lat, 99)


def _prepare_enrollment(b: Bench) -> tuple[str, bytes]:
    """The officer's code and the terminal's CSR for a new owner (not timed)."""
    owner = b.next_id("e")
    code, _ = b.kmc.create_enrollment_code(
        owner=owner, subject={"CN": owner, "O": "bench"}, actor="bench-ra"
    )
    key = SM2PrivateKey.generate()
    return code, build_csr(name(CN=owner), key.public_key(), key.sign).der


@measurement("enroll")
def measure_enroll(b: Bench, a: Args) -> dict[str, float | str]:
    n = max(10, a.ops // 4)
    with b.monitor.label("enrollment code"):
        prepared = [_prepare_enrollment(b) for _ in range(n)]
    out: dict[str, float | str] = {}
    lat = []
    with clocks(out, "enroll", n), b.monitor.label("enroll"):
        for code, csr in prepared:
            t = time.perf_counter()
            b.kmc.enroll(code, csr, source="bench")
            lat.append(time.perf_counter() - t)
    _latencies(out, "enroll", lat)
    return out


@measurement("login")
def measure_login(b: Bench, a: Args) -> dict[str, float | str]:
    n = a.ops
    picks = [b.rng.choice(b.terminals) for _ in range(n)]
    out: dict[str, float | str] = {}
    with b.monitor.label("login"):
        b.login_once(picks[0])  # the login server's CRL cache, warm
        w, c = time.perf_counter(), time.process_time()
        lat = [b.login_once(t) for t in picks]
        wall, cpu = time.perf_counter() - w, time.process_time() - c
    server = sum(lat)
    out["login/s"] = n / server  # server time only (the terminals' signing excluded)
    out["login CPU ms/op"] = 1000 * cpu / n  # includes the terminals' signing (1 SM2 sign)
    out["login wall ms/op"] = 1000 * wall / n
    _latencies(out, "login", lat)
    return out


@measurement("revoke")
def measure_revoke(b: Bench, a: Args) -> dict[str, float | str]:
    n = max(5, min(a.ops // 10, len(b.victims) // 2))
    victims = [b.victims.pop() for _ in range(n)]
    out: dict[str, float | str] = {}
    lat = []
    with clocks(out, "revoke", n), b.monitor.label("revoke"):
        for t in victims:
            s = time.perf_counter()
            b.kmc.revoke_certificate(t.serial, reason="key_compromise", actor="bench-ra")
            lat.append(time.perf_counter() - s)
    b.revoked_pairs += n
    _latencies(out, "revoke", lat)
    return out


def _mixed_work(b: Bench, n: int) -> list[tuple[str, Any]]:
    """``n`` operations, logins, enrollments and revocations 80/15/5 % (prepared here,
    outside the timed region)."""
    kinds = b.rng.choices(["login", "enroll", "revoke"], weights=[80, 15, 5], k=n)
    victims = [b.victims.pop() for _ in range(min(kinds.count("revoke"), len(b.victims)))]
    work: list[tuple[str, Any]] = []
    short = kinds.count("revoke") - len(victims)
    if short > 0:
        print(f"    warning: {short} revocations run as logins (victims used up)", file=sys.stderr)
    for kind in kinds:
        if kind == "revoke" and not victims:
            kind = "login"
        if kind == "login":
            work.append(("login", b.rng.choice(b.terminals)))
        elif kind == "revoke":
            work.append(("revoke", victims.pop()))
        else:
            with b.monitor.label("enrollment code"):
                work.append(("enroll", _prepare_enrollment(b)))
    return work


def _perform(b: Bench, kind: str, arg: Any) -> float:
    """One operation of the mixed load; its time in seconds (a login: the server's part
    only, as in ``login``)."""
    if kind == "login":
        return b.login_once(arg)
    t = time.perf_counter()
    assert b.ca is not None
    if kind == "enroll":
        b.ca.enroll(arg[0], arg[1], source="bench")
    else:
        b.ca.revoke(arg.serial, reason="key_compromise", actor="bench-ra")
    return time.perf_counter() - t


def _run_threads(
    b: Bench, work: list[tuple[str, Any]], threads: int
) -> tuple[dict[str, list[float]], list[str]]:
    """Run ``work`` from ``threads`` threads; latencies per kind and the errors."""
    lat: dict[str, list[float]] = {"login": [], "enroll": [], "revoke": []}
    errors: list[str] = []
    it = iter(work)
    mutex = threading.Lock()

    def worker() -> None:
        while True:
            with mutex:
                item = next(it, None)
            if item is None:
                return
            kind, arg = item
            try:
                with b.monitor.label(kind):
                    took = _perform(b, kind, arg)
                with mutex:
                    lat[kind].append(took)
            except Exception as exc:  # reported, the load goes on
                with mutex:
                    errors.append(f"{kind}: {type(exc).__name__}: {exc}")

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return lat, errors


def _mixed_report(
    b: Bench, out: dict[str, float | str], prefix: str, lat: dict[str, list[float]],
    errors: list[str],
) -> dict[str, float | str]:  # fmt: skip
    b.revoked_pairs += len(lat["revoke"])
    for kind, values in lat.items():
        _latencies(out, f"{prefix} {kind}", values)
    out[f"{prefix} errors"] = float(len(errors))
    if errors:
        print(f"    {prefix}-load errors ({len(errors)}), first: {errors[0]}", file=sys.stderr)
    return out


@contextlib.contextmanager
def _on_ca_worker(b: Bench, out: dict[str, float | str], prefix: str, n: int) -> Iterator[None]:
    """Within the block, enrollments and revocations run in a CA worker process, as
    with ``mstcrypt serve --ca-workers 1`` (started once, through the same
    :class:`CaWorkers`); its write holds join the monitor's, and its CPU per operation,
    longest GC pass and longest pause are reported (``<prefix> worker CPU ms/op``,
    ``<prefix>: worker's longest …``)."""
    if b.workers is None:
        factory = functools.partial(worker_kmc, b.url, b.master)
        b.workers = CaWorkers(factory, 1, after_job=b.kmc.crl_publisher.wake).start()
        # one enrollment, untimed, as a server's worker has served before: its first
        # one loads the CA's issuer, the SS-CC's keys and the code paths
        code, csr = _prepare_enrollment(b)
        b.workers.enroll(code, csr, source="bench")
    pool = b.workers._get()
    pool.submit(worker_holds).result()  # reset
    c0 = pool.submit(time.process_time).result()
    b.ca = b.workers
    try:
        yield
    finally:
        b.ca = InProcessCa(b.kmc)
    c1 = pool.submit(time.process_time).result()
    rep = pool.submit(worker_holds).result()
    out[f"{prefix} worker CPU ms/op"] = 1000 * (c1 - c0) / n
    out[f"{prefix}: worker's longest GC pass ms"] = 1000 * rep["max_gc"]
    out[f"{prefix}: worker's longest pause ms"] = 1000 * rep["max_late"]
    b.monitor.merge(rep)


def _closed_loop(b: Bench, a: Args, prefix: str, workers: bool) -> dict[str, float | str]:
    work = _mixed_work(b, a.mixed_ops)
    out: dict[str, float | str] = {}
    on = _on_ca_worker(b, out, prefix, len(work)) if workers else contextlib.nullcontext()
    with on, clocks(out, f"{prefix} op", len(work)):
        lat, errors = _run_threads(b, work, a.threads)
    return _mixed_report(b, out, prefix, lat, errors)


@measurement("mixed")
def measure_mixed(b: Bench, a: Args) -> dict[str, float | str]:
    """Logins, enrollments and revocations (80/15/5 %) from ``threads`` threads of one
    process (one API instance with that many requests in flight)."""
    out = _closed_loop(b, a, "mixed", workers=False)
    b.last_mixed_rate = float(out["mixed op/s"])
    return out


@measurement("mixed-workers")
def measure_mixed_workers(b: Bench, a: Args) -> dict[str, float | str]:
    """``mixed`` with the enrollments and revocations in a CA worker process
    (``mstcrypt serve --ca-workers 1``); logins stay in this process."""
    return _closed_loop(b, a, "mixed-workers", workers=True)


@measurement("mixed-rate")
def measure_mixed_rate(b: Bench, a: Args) -> dict[str, float | str]:
    """See :func:`_open_loop`: everything in this process."""
    return _open_loop(b, a, "mixed-rate", workers=False)


@measurement("mixed-rate-workers")
def measure_mixed_rate_workers(b: Bench, a: Args) -> dict[str, float | str]:
    """``mixed-rate`` at the same offered rate, with the enrollments and revocations in
    a CA worker process (``mstcrypt serve --ca-workers 1``)."""
    return _open_loop(b, a, "mixed-rate-workers", workers=True)


def _open_loop(b: Bench, a: Args, prefix: str, workers: bool) -> dict[str, float | str]:
    """The same mix offered at a fixed rate instead of as fast as possible: operations
    arrive on a Poisson schedule at ``--rate`` per second (default: half the throughput
    the closed-loop ``mixed`` measurement just reached, or 40/s if it did not run), are
    served by a pool large enough that arrivals never wait for a free thread, and each
    latency counts from the operation's scheduled arrival (time spent queued included,
    so a stall cannot hide behind the load generator slowing down)."""
    rate = a.rate or b.last_mixed_rate / 2 or 40.0
    work = _mixed_work(b, a.mixed_ops)
    gaps = [b.rng.expovariate(rate) for _ in work]
    lat: dict[str, list[float]] = {"login": [], "enroll": [], "revoke": []}
    errors: list[str] = []
    mutex = threading.Lock()
    jobs: queue.SimpleQueue[tuple[float, str, Any] | None] = queue.SimpleQueue()

    def worker() -> None:
        while (job := jobs.get()) is not None:
            due, kind, arg = job
            try:
                with b.monitor.label(kind):
                    _perform(b, kind, arg)
                took = time.perf_counter() - due
                with mutex:
                    lat[kind].append(took)
            except Exception as exc:  # reported, the load goes on
                with mutex:
                    errors.append(f"{kind}: {type(exc).__name__}: {exc}")

    pool = [threading.Thread(target=worker) for _ in range(32)]
    out: dict[str, float | str] = {f"{prefix} offered op/s": rate}
    on = _on_ca_worker(b, out, prefix, len(work)) if workers else contextlib.nullcontext()
    with on:
        for t in pool:
            t.start()
        w0, c0 = time.perf_counter(), time.process_time()
        due = w0
        for (kind, arg), gap in zip(work, gaps, strict=True):
            due += gap
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            jobs.put((due, kind, arg))
        for _ in pool:
            jobs.put(None)
        for t in pool:
            t.join()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    out[f"{prefix} op/s"] = len(work) / wall
    out[f"{prefix} CPU ms/op"] = 1000 * cpu / len(work)
    return _mixed_report(b, out, prefix, lat, errors)


@measurement("mixed-procs")
def measure_mixed_procs(b: Bench, a: Args) -> dict[str, float | str]:
    """The same load as ``mixed``, spread over one process per CPU (``threads`` in all):
    the production layout of docs/deployment.md, several API instances on one
    database, here forked from the populated bench. Each child writes its latencies,
    errors and write holds back through a pipe; CPU is the children's."""
    procs = max(1, min(os.cpu_count() or 1, a.threads))
    work = _mixed_work(b, a.mixed_ops)
    shares = [work[i::procs] for i in range(procs)]
    per = max(1, a.threads // procs)
    b.kmc.db.engine.dispose()  # no pooled connection crosses a fork
    children: list[tuple[int, int]] = []
    w0 = time.perf_counter()
    c0 = os.times()
    for share in shares:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: run its share, report, exit without cleanup handlers
            code = 0
            try:
                os.close(r)
                b.monitor.reset()
                lat, errors = _run_threads(b, share, per)
                report = {
                    "lat": lat,
                    "errors": errors,
                    "holds": b.monitor.holds,
                    "max_hold": b.monitor.max_hold,
                    "max_label": b.monitor.max_label,
                }
                with os.fdopen(w, "w") as f:
                    json.dump(report, f)
                b.kmc.db.engine.dispose()
            except BaseException:
                code = 1
            os._exit(code)
        os.close(w)
        children.append((pid, r))
    reports = []
    for pid, r in children:
        with os.fdopen(r) as f:
            text = f.read()
        _pid, status = os.waitpid(pid, 0)
        if status != 0 or not text:
            raise RuntimeError("a mixed-load child process failed")
        reports.append(json.loads(text))
    wall = time.perf_counter() - w0
    c1 = os.times()
    cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    out: dict[str, float | str] = {
        "mixed-procs op/s": len(work) / wall,
        "mixed-procs CPU ms/op": 1000 * cpu / len(work),
    }
    lat: dict[str, list[float]] = {"login": [], "enroll": [], "revoke": []}
    errors: list[str] = []
    for rep in reports:
        for kind, values in rep["lat"].items():
            lat[kind].extend(values)
        errors.extend(rep["errors"])
        b.monitor.merge(rep)
    return _mixed_report(b, out, "mixed-procs", lat, errors)


def make_bench(backend: str, url: str, seed: int) -> Bench:
    db = Database(url)
    monitor = LockMonitor()
    monitor.attach(db)
    master = secrets.token_bytes(32)
    kmc = Kmc(db, SoftKeyStore(master), crl_base_url=CRL_URL)
    kmc.create_schema()
    kmc.init_ca(actor="bench")
    policy = LoginPolicy(challenges_per_minute=10**9, source_max_failures=10**6)
    login = LoginService(kmc, server_name=SERVER_NAME, policy=policy)
    db.start_checkpointer()  # as `mstcrypt serve` does (SQLite)
    b = Bench(backend, kmc, login, monitor, random.Random(seed), url=url, master=master)
    b.ca = InProcessCa(kmc)
    return b


def _grow_pools(b: Bench, logins: int, victims: int) -> None:
    while len(b.terminals) < logins:
        t = b.enroll_new(b.next_id("l"))
        t.source = _source(len(b.terminals) + 1)
        b.terminals.append(t)
    while len(b.victims) < victims:
        b.victims.append(b.enroll_new(b.next_id("v")))


@functools.cache
def _stall_probe() -> StallProbe:
    """One per process, started on first use by :func:`run_backend`."""
    return StallProbe()


def run_backend(backend: str, url: str, sizes: list[int], args: argparse.Namespace) -> Any:
    b = make_bench(backend, url, args.seed)
    probe = _stall_probe()
    a = Args(args.ops, args.mixed_ops, args.threads, args.rate)
    names = [n for n in MEASUREMENTS if not args.only or n in args.only]
    table: dict[str, dict[int, float | str]] = {}

    def put(metric: str, size: int, value: float | str) -> None:
        table.setdefault(metric, {})[size] = value

    try:
        for size in sizes:
            before = b.populated
            took = b.populate_to(size, revoked=args.revoked)
            sizes_now = b.table_sizes()
            print(
                f"[{backend}] {size} terminals: populated in {took:.1f} s "
                f"({', '.join(f'{v} {k}' for k, v in sizes_now.items())})",
                file=sys.stderr,
            )
            put("populate terminals/s (fast path)", size, (size - before) / took)
            for k, v in sizes_now.items():
                put(f"rows: {k}", size, float(v))
            # victims: the revoke measurement's, and 5 % of each mixed load's operations
            # (with margin), so that no mix runs out of them and turns revocations into
            # logins
            mixes = sum(1 for n in names if n.startswith("mixed"))
            _grow_pools(b, 32, 40 + mixes * args.mixed_ops // 10)
            freeze_startup_heap()  # as `mstcrypt serve` does once it has started
            for n in names:
                b.monitor.reset()
                probe.reset()
                values = MEASUREMENTS[n](b, a)
                if n.startswith("mixed"):  # where a stall would decide a p99
                    if n != "mixed-procs":  # (this process only waits for its children)
                        put(f"{n}: longest GC pass ms", size, 1000 * probe.max_gc)
                        put(f"{n}: longest process pause ms", size, 1000 * probe.max_late)
                    put(f"{n}: longest disk sync ms", size, 1000 * probe.max_sync)
                for metric, value in values.items():
                    put(metric, size, value)
                put(f"{n}: max write hold ms", size, 1000 * b.monitor.max_hold)
                if b.monitor.holds:
                    put(f"{n}: p99 write hold ms", size, 1000 * pct(b.monitor.holds, 99))
                put(f"{n}: longest hold by", size, b.monitor.max_label)
                print(f"[{backend}] {size}: {n} done", file=sys.stderr)
    finally:
        if b.workers is not None:
            b.workers.close()
        b.kmc.db.dispose()
    return table


def print_table(backend: str, sizes: list[int], table: dict[str, dict[int, Any]]) -> None:
    cols = [f"{s // 1000}k" if s >= 1000 else str(s) for s in sizes]
    width = max(len(m) for m in table) + 2
    print(f"\n== {backend}: growth {' -> '.join(cols)} terminals ==")
    head = "".join(f"{c:>12}" for c in cols)
    print(f"{'metric':<{width}}{head}{'last/first':>12}")
    for metric, by_size in table.items():
        cells, nums = [], []
        for s in sizes:
            v = by_size.get(s, "")
            if isinstance(v, float):
                cells.append(f"{v:>12.{0 if abs(v) >= 100 else 2}f}")
                nums.append(v)
            else:
                cells.append(f"{str(v)[:11]:>12}")
        growth = f"{nums[-1] / nums[0]:>11.2f}x" if len(nums) > 1 and nums[0] else ""
        print(f"{metric:<{width}}{''.join(cells)}{growth:>12}")


def check_targets(backend: str, sizes: list[int], table: dict[str, dict[int, Any]]) -> None:
    last = sizes[-1]
    print(f"-- targets ({backend}, {last} terminals) --")

    def show(ok: bool, text: str) -> None:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")

    # the targets are for the platform as `mstcrypt serve` runs by default (one CA worker
    # with two or more CPUs); the other layouts are printed beside them for comparison
    for prefix, layout, target in (
        ("mixed-rate-workers", "at a rate, CA work in a worker: serve's default", True),
        ("mixed-workers", "closed loop of 8, CA work in a worker: serve's default", True),
        ("mixed-rate", "at the same rate, all in one process: --ca-workers 0", False),
        ("mixed", "closed loop of 8, all in one process: --ca-workers 0", False),
        ("mixed-procs", "closed loop of 8 over two API processes, --ca-workers 0", False),
    ):
        p99 = table.get(f"{prefix} login p99 ms", {}).get(last)
        if not isinstance(p99, float):
            continue
        text = f"login p99 under the mixed load ({layout}) {p99:.1f} ms < 50 ms"
        if target:
            show(p99 < 50, text)
        else:
            print(f"  [{'ok' if p99 < 50 else 'over':>4}] {text} (for comparison)")
    holds = [
        (v[last], m.split(":")[0])
        for m, v in table.items()
        if m.endswith("max write hold ms") and isinstance(v.get(last), float)
    ]
    for default, what in ((True, "serve's default"), (False, "--ca-workers 0")):
        mine = [h for h in holds if h[1].endswith("-workers") == default and "mixed" in h[1]]
        if default:  # the single-operation measurements run the same in both layouts
            mine += [h for h in holds if "mixed" not in h[1]]
        if not mine:
            continue
        worst, where = max(mine)
        label = table.get(f"{where}: longest hold by", {}).get(last, "?")
        text = f"longest write-lock hold ({what}) {worst:.1f} ms < 50 ms (in {where}: {label})"
        if default:
            show(worst < 50, text)
        else:
            print(f"  [{'ok' if worst < 50 else 'over':>4}] {text} (for comparison)")
    rev = table.get("revoke CPU ms/op", {})
    if len(sizes) > 1 and isinstance(rev.get(sizes[0]), float) and isinstance(rev.get(last), float):
        ratio = rev[last] / rev[sizes[0]]
        show(
            ratio < 2,
            f"revocation cost independent of the number revoked: {rev[sizes[0]]:.1f} -> "
            f"{rev[last]:.1f} ms CPU/op ({ratio:.1f}x for {last // sizes[0]}x terminals)",
        )


@contextlib.contextmanager
def pg_database(base: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(base)
    db_name = f"mst_bench_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    try:
        yield url.set(database=db_name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--sizes", default="1000,10000", help="terminal counts, growing")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--pg-url", default=os.environ.get("MSTCRYPT_TEST_DATABASE_URL"))
    ap.add_argument("--ops", type=int, default=200, help="logins per size (others scaled)")
    ap.add_argument("--mixed-ops", type=int, default=400)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument(
        "--rate", type=float, default=0.0, help="mixed-rate: offered op/s (0: half of mixed's)"
    )
    ap.add_argument("--revoked", type=float, default=0.01, help="fraction revoked at populate")
    ap.add_argument("--only", type=lambda s: set(s.split(",")), default=None)
    ap.add_argument("--seed", type=int, default=37)
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    print(
        f"platform load benchmark: {os.cpu_count()} CPUs, sizes {sizes}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{Path(tmp) / 'bench.db'}"
                table = run_backend(backend, url, sizes, args)
        elif backend == "postgresql":
            if not args.pg_url:
                print("postgresql: skipped (no --pg-url / MSTCRYPT_TEST_DATABASE_URL)")
                continue
            with pg_database(args.pg_url) as url:
                table = run_backend(backend, url, sizes, args)
        else:
            print(f"unknown backend {backend!r}", file=sys.stderr)
            return 2
        print_table(backend, sizes, table)
        check_targets(backend, sizes, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
