"""Shared helpers for the platform robustness tests (kill -9 and concurrency).

* terminals: an SM2 signing key and its PEM CSR, built directly (no soft token);
* operators and the fixed SS-CC master key, so restarted servers unwrap the same blobs;
* :class:`InvariantChecker`: reads the whole store through SQLAlchemy (a :class:`Kmc` on
  the same URL and master key) and checks the cross-table invariants every operation
  must preserve; it returns a :class:`Snapshot` for checking acknowledged replies.
  Among them: a recovery is released only with ``approvals_required`` distinct approvers
  besides the requester (never the requester); re-enrollment supersedes the owner's
  earlier signing and encryption certificates; operator enrollments (console codes) are
  counted like terminal ones, and an operator's credential is one of their certificates;
  every revoked certificate is on the newest CRL, or its publication is pending (a
  revocation sequence number above the CRL's, a due time set) and not overdue by more
  than ``crl_grace`` seconds; the newest delta CRL updates a stored complete CRL and
  lists every revocation after its base.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from mstcrypt.crypto.sm2 import SM2PrivateKey, SM2PublicKey
from mstcrypt.errors import MstCryptError
from mstcrypt.kmc.context import aware
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.models import (
    AuditRecord,
    CertificateAuthority,
    CrlRecord,
    DeltaCrlRecord,
    EncryptionKey,
    EnrollmentCode,
    IssuedCertificate,
    Operator,
    RateLimit,
    RecoveryRequest,
    ServiceKey,
)
from mstcrypt.kmc.service import Kmc, code_hash
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import CRL, Certificate, build_csr, name

SRC = Path(__file__).resolve().parents[1] / "src"
MASTER_KEY_HEX = "6d737463727970742d746573742d6d61737465722d6b65792d30303030303031"
OPERATORS = ("alice", "bob")
#: the operators' registered names: operators are not terminal owners, so tests can enroll
#: terminals named alice and bob next to them
OPERATOR_NAMES = {"alice": "officer-alice", "bob": "officer-bob"}
CODE_HASH = code_hash
OPERATOR_ROLES = ("administrator", "registration_officer", "key_recovery_officer")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def terminal(cn: str) -> tuple[SM2PrivateKey, str]:
    """A terminal signing key and its PKCS#10 request (PEM) for POST /enroll."""
    key = SM2PrivateKey.generate()
    return key, build_csr(name(CN=cn), key.public_key(), key.sign).pem.decode()


def add_operators(kmc: Kmc) -> dict[str, str]:
    """Static operator credentials (servers run with MSTCRYPT_STATIC_OPERATORS=1):
    "alice" / "bob" -> bearer token of the operators officer-alice / officer-bob, who hold
    every role but auditor."""
    return {op: kmc.operators.add_static(OPERATOR_NAMES[op], OPERATOR_ROLES) for op in OPERATORS}


def master_key() -> bytes:
    return bytes.fromhex(MASTER_KEY_HEX)


def kmc_for(url: str, *, recovery_approvals: int = 1) -> Kmc:
    """A Kmc over the same database and master key as the server under test (with the
    server's MSTCRYPT_RECOVERY_APPROVALS)."""
    return Kmc(Database(url), SoftKeyStore(master_key()), recovery_approvals=recovery_approvals)


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSTCRYPT_")}
    env.update(
        PYTHONPATH=str(SRC),
        MSTCRYPT_DATABASE_URL=database_url,
        MSTCRYPT_MASTER_KEY=MASTER_KEY_HEX,
        MSTCRYPT_STATIC_OPERATORS="1",  # the tests' operators use static credentials
        **extra,
    )
    return env


def ca_workers_of(pid: int) -> list[int]:
    """The CA worker processes of a ``serve`` process (spawned children running
    ``spawn_main``; not multiprocessing's resource tracker). Linux /proc."""
    out = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                        out.append(int(child))
    return out


def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    """Wait until none of ``pids`` runs any more (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while True:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state in ("Z", "X"):
                break
            assert time.monotonic() < deadline, f"process {pid} still runs"
            time.sleep(0.02)


def wait_health(
    base_url: str,
    proc: subprocess.Popen[bytes] | None,
    timeout: float = 30.0,
    *,
    anchors: list[Certificate] | None = None,
) -> None:
    """Wait until /health answers with an initialised CA; an https:// URL is the TLCP
    endpoint, authenticated with ``anchors``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if base_url.startswith("https://"):
                with tlcp_client(base_url, anchors or [], timeout=1.0) as http:
                    r = http.get("/health")
            else:
                r = httpx.get(base_url + "/health", timeout=1.0)
            if r.status_code == 200 and r.json().get("ca"):
                return
        except (httpx.HTTPError, MstCryptError):
            pass
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode} before /health")
        if time.monotonic() > deadline:
            raise AssertionError(f"{base_url}/health did not answer within {timeout}s")
        time.sleep(0.02)


def tlcp_client(base_url: str, anchors: list[Certificate], **kw: Any) -> httpx.Client:
    """A plain httpx client of the platform's TLCP endpoint, the server authenticated
    with ``anchors`` (the platform's root)."""
    from mstcrypt.protocols.tlcp.http_client import tlcp_transport

    transport = tlcp_transport(anchors=[a.der for a in anchors])
    return httpx.Client(base_url=base_url, transport=transport, **kw)


def seed_rate_limit(kmc: Kmc, bucket: str, *, windows: int = 10) -> None:
    """Pre-create the fixed-window rows of ``bucket`` for the next ``windows`` minutes, so
    concurrent first requests in a window do not race on the INSERT (see
    test_platform_concurrency.test_rate_limit_first_request_race)."""
    now = int(time.time()) // 60
    with kmc.db.tx() as s:
        for w in range(now - 1, now + windows):
            if s.get(RateLimit, (bucket, w)) is None:
                s.add(RateLimit(key=bucket, window=w, count=0))


# ------------------------------------------------------------------ invariants ---------
@dataclass
class Snapshot:
    """The store as read by one check (rows detached from their session)."""

    certs: dict[str, IssuedCertificate]
    keys: dict[str, EncryptionKey]
    codes: dict[str, EnrollmentCode]  # by code hash
    recoveries: dict[str, RecoveryRequest]
    enroll_audit: dict[str, list[dict[str, Any]]]  # enrollment id -> details
    audit_actions: Counter[str]
    audit_records: int

    def code(self, code: str) -> EnrollmentCode | None:
        return self.codes.get(CODE_HASH(code))

    @property
    def operation_records(self) -> int:
        """Audit records of operations: all but those the background CRL publisher
        writes on its own schedule (``crl.publish``)."""
        return self.audit_records - self.audit_actions["crl.publish"]


@dataclass
class InvariantChecker:
    """Checks the store's invariants; expensive per-row checks (signatures, unwrapping)
    are cached by content, since certificate DER and key blobs never change in place."""

    kmc: Kmc
    #: approvals besides the requester that release a recovery (default: the Kmc's)
    approvals_required: int | None = None
    #: seconds a pending CRL publication may be past its due time (a server restarting
    #: after a crash publishes at its next run)
    crl_grace: float = 300.0
    _certs_ok: set[tuple[str, bytes]] = field(default_factory=set)
    _blobs_ok: set[tuple[str, bytes]] = field(default_factory=set)

    def check(self) -> Snapshot:
        problems: list[str] = []
        with self.kmc.db.tx() as s:
            cas = {ca.id: ca for ca in s.scalars(select(CertificateAuthority))}
            certs = {c.serial: c for c in s.scalars(select(IssuedCertificate))}
            keys = {k.id: k for k in s.scalars(select(EncryptionKey))}
            codes = {c.code_hash: c for c in s.scalars(select(EnrollmentCode))}
            recs = {r.id: r for r in s.scalars(select(RecoveryRequest))}
            operators = {o.name: o for o in s.scalars(select(Operator))}
            services = {k.name: k.public_key for k in s.scalars(select(ServiceKey))}
            enroll_rows = s.scalars(
                select(AuditRecord).where(AuditRecord.action == "enroll").order_by(AuditRecord.seq)
            )
            enroll_audit: dict[str, list[dict[str, Any]]] = defaultdict(list)
            enrollments: dict[str, list[dict[str, Any]]] = defaultdict(list)  # owner -> in order
            for rec in enroll_rows:
                enroll_audit[str(rec.details["enrollment_id"])].append(dict(rec.details))
                enrollments[rec.target.removeprefix("owner:")].append(dict(rec.details))
            grouped = s.execute(
                select(AuditRecord.action, func.count()).group_by(AuditRecord.action)
            )
            actions = Counter({action: int(n) for action, n in grouped})
            n_audit = int(s.scalar(select(func.count()).select_from(AuditRecord)) or 0)
            latest_crl = s.scalar(
                select(CrlRecord)
                .where(CrlRecord.ca_id == 2)
                .order_by(CrlRecord.number.desc())
                .limit(1)
            )
            latest_delta = s.scalar(
                select(DeltaCrlRecord)
                .where(DeltaCrlRecord.ca_id == 2)
                .order_by(DeltaCrlRecord.number.desc())
                .limit(1)
            )
            delta_base_crl = (
                s.get(CrlRecord, (2, latest_delta.base_number))
                if latest_delta is not None
                else None
            )
        ca_certs = {i: Certificate.from_der(ca.cert_der) for i, ca in cas.items()}
        if set(ca_certs) != {1, 2}:
            problems.append(f"CA rows {sorted(ca_certs)} (expected root 1 and issuing 2)")

        # certificates: parse, match their row, verify with the issuing CA
        for serial, row in certs.items():
            token = (serial, hashlib.sha256(row.der).digest())
            if token in self._certs_ok:
                continue
            try:
                cert = Certificate.from_der(row.der)
                issuer = ca_certs[row.ca_id]
                cert.verify_signature(issuer.public_key)
                assert f"{cert.serial:x}" == serial, "serial differs from the DER"
                assert cert.fingerprint == row.fingerprint, "fingerprint differs"
                assert cert.issuer_str == issuer.subject_str, "issuer name differs"
                if (row.owner or "").startswith("service:"):
                    # the platform's own identities: the key is a service key of the SS-CC
                    svc = services.get((row.owner or "").removeprefix("service:"))
                    assert svc is not None, f"no service key for {row.owner}"
                    if row.status == "active":
                        assert cert.public_key.to_bytes() == svc, "service key != certified key"
                elif row.usage == "enc":
                    key = keys.get(row.key_id or "")
                    assert key is not None, f"enc certificate has no key row {row.key_id}"
                    assert cert.public_key.to_bytes() == key.public_key, "key != certified key"
                    assert key.owner == row.owner, "key owner != certificate owner"
            except Exception as exc:
                problems.append(f"certificate {serial}: {type(exc).__name__}: {exc}")
                continue
            self._certs_ok.add(token)

        # escrowed keys: the blob unwraps to the recorded (and certified) public key
        certified = Counter(c.key_id for c in certs.values() if c.key_id)
        active = Counter(k.owner for k in keys.values() if k.state == "active")
        for kid, key in keys.items():
            if key.state not in ("generated", "destroyed") and not certified[kid]:
                problems.append(f"key {kid} ({key.state}) has no certificate")
            if key.state == "destroyed":
                if key.key_blob is not None:
                    problems.append(f"destroyed key {kid} still holds its blob")
                continue
            if key.key_blob is None:
                problems.append(f"key {kid} ({key.state}) lost its blob")
                continue
            token = (kid, hashlib.sha256(key.key_blob).digest())
            if token in self._blobs_ok:
                continue
            try:
                sig = self.kmc.keystore.sign(key.key_blob, f"enc:{kid}".encode(), b"check")
                SM2PublicKey.from_bytes(key.public_key).verify(sig, b"check")
            except Exception as exc:
                problems.append(f"key {kid}: {type(exc).__name__}: {exc}")
                continue
            self._blobs_ok.add(token)
        problems += [f"owner {o!r} has {n} active keys" for o, n in active.items() if n > 1]

        # enrollment codes: used <=> exactly one enroll record whose certificates exist;
        # console (operator) codes count like terminal codes, for registered operators only
        used_per_owner: Counter[str] = Counter()
        for code in codes.values():
            records = enroll_audit.get(code.id, [])
            if code.used_at is None:
                if records:
                    problems.append(f"unused code {code.id} has an enroll record")
                continue
            used_per_owner[code.owner] += 1
            if (code.purpose == "operator") != (code.owner in operators):
                problems.append(
                    f"used {code.purpose} code {code.id} of {code.owner!r}, "
                    f"{'an' if code.owner in operators else 'not an'} operator"
                )
            if len(records) != 1:
                problems.append(f"used code {code.id} has {len(records)} enroll records")
                continue
            d = records[0]
            sign, enc = certs.get(d["sign_serial"]), certs.get(d["enc_serial"])
            if sign is None or sign.usage != "sign" or sign.owner != code.owner:
                problems.append(f"code {code.id}: signing certificate {d['sign_serial']} wrong")
            if enc is None or enc.usage != "enc" or enc.key_id != d["key_id"]:
                problems.append(f"code {code.id}: encryption certificate {d['enc_serial']} wrong")
            if sign is not None and enc is not None:
                # the enrollment's pair; after a key update the signing certificate's pair
                # is the newer encryption certificate of the same owner, paired back to it
                current = certs.get(sign.pair_serial or "")
                if (
                    enc.pair_serial != sign.serial
                    or current is None
                    or not (
                        current.usage == "enc"
                        and current.owner == sign.owner
                        and current.pair_serial == sign.serial
                    )
                ):
                    problems.append(f"code {code.id}: the certificates are not recorded as a pair")
        for eid in set(enroll_audit) - {c.id for c in codes.values()}:
            problems.append(f"enroll record for unknown enrollment {eid}")
        people = {c.owner for c in certs.values() if c.owner and c.usage != "ca"}
        people = {o for o in people if not o.startswith("service:")}
        sign_per_owner = Counter(c.owner for c in certs.values() if c.usage == "sign")
        for owner in people | set(used_per_owner):
            if sign_per_owner[owner] != used_per_owner[owner]:
                problems.append(
                    f"owner {owner!r}: {sign_per_owner[owner]} signing certificates for "
                    f"{used_per_owner[owner]} used codes"
                )

        # re-enrollment supersedes: only the owner's newest enrollment keeps its
        # certificates; every serial an enrollment superseded is revoked as superseded
        for owner, done in enrollments.items():
            for d in done[:-1]:
                for sn in (d["sign_serial"], d["enc_serial"]):
                    if sn in certs and certs[sn].status != "revoked":
                        problems.append(f"owner {owner!r}: re-enrollment left {sn} active")
            for d in done:
                for sn in d.get("superseded", []):
                    c = certs.get(sn)
                    if c is None or c.status != "revoked" or c.revocation_reason != "superseded":
                        problems.append(
                            f"owner {owner!r}: superseded certificate {sn} is "
                            f"{'missing' if c is None else f'{c.status} ({c.revocation_reason})'}"
                        )
        for owner in people:
            for usage in ("sign", "enc"):
                live = [c for c in certs.values() if c.owner == owner and c.usage == usage]
                live = [c for c in live if c.status == "active"]
                if len(live) > 1:
                    problems.append(f"owner {owner!r} has {len(live)} active {usage} certificates")
        for c in certs.values():
            if c.usage == "enc" and c.status == "active" and c.key_id:
                k = keys.get(c.key_id)
                if k is not None and k.state != "active":
                    problems.append(f"active certificate {c.serial} certifies a {k.state} key")

        # operators: the credential is a signing certificate of the operator
        for op in operators.values():
            if op.cert_serial is None:
                if op.status == "active" and op.verifier is None:
                    problems.append(f"operator {op.name!r} is active with no credential")
                continue
            c = certs.get(op.cert_serial)
            if c is None or c.owner != op.name or c.usage != "sign":
                problems.append(f"operator {op.name!r} is bound to {op.cert_serial}, not theirs")

        # recovery: released only with approvals_required distinct approvers besides the
        # requester (the requester never approves)
        required = self.approvals_required or self.kmc.recovery.approvals_required
        released = 0
        for rid, req in recs.items():
            approvals = list(req.approvals or [])
            if len(set(approvals)) != len(approvals):
                problems.append(f"recovery {rid}: repeated approver {approvals}")
            if req.requested_by in approvals:
                problems.append(f"recovery {rid}: the requester {req.requested_by} approved")
            if req.status == "released":
                released += 1
                if len(set(approvals)) != required or req.result is None:
                    problems.append(f"recovery {rid} released with approvals {approvals}")
            elif req.status == "pending":
                if len(approvals) >= required or req.result is not None:
                    problems.append(f"recovery {rid} pending with approvals {approvals}")
            else:
                problems.append(f"recovery {rid} has status {req.status!r}")
            if req.kind == "key" and req.key_id not in keys:
                problems.append(f"recovery {rid} names unknown key {req.key_id}")
            if req.kind == "file" and (req.key_id is not None or not req.escrow_ciphertext):
                problems.append(f"file recovery {rid} without its escrow stanza")
        if actions["recovery.release"] != released:
            problems.append(
                f"{released} released recoveries, {actions['recovery.release']} release records"
            )

        # the newest issuing-CA CRL is signed and lists every revoked certificate, except
        # revocations still pending publication (numbered after the CRL, a due time set)
        issuing = cas.get(2)
        revoked_rows = {
            int(sn, 16): c for sn, c in certs.items() if c.status == "revoked" and c.ca_id == 2
        }
        seqs = sorted(c.revocation_seq for c in revoked_rows.values() if c.revocation_seq)
        if len(seqs) != len(set(seqs)):
            problems.append("two revocations share a revocation sequence number")
        for serial, c in revoked_rows.items():
            if c.revocation_seq is None or c.crl_entry is None:
                problems.append(f"revoked certificate {serial:x} has no sequence number or entry")
        if latest_crl is None or issuing is None:
            problems.append("the issuing CA has no CRL")
        else:
            crl = CRL.from_der(latest_crl.der)
            try:
                crl.verify_signature(ca_certs[2].public_key)
            except Exception as exc:
                problems.append(f"CRL {latest_crl.number}: {exc}")
            if issuing.crl_number != latest_crl.number:
                problems.append(f"ca.crl_number {issuing.crl_number} != CRL {latest_crl.number}")
            if latest_crl.revocation_seq != issuing.crl_seq:
                problems.append(
                    f"CRL {latest_crl.number} covers {latest_crl.revocation_seq}, "
                    f"ca.crl_seq is {issuing.crl_seq}"
                )
            if (issuing.revocation_seq or 0) < (issuing.crl_seq or 0):
                problems.append("the CRL covers revocations that were never made")
            covered = issuing.crl_seq or 0
            pending = {sn for sn, c in revoked_rows.items() if (c.revocation_seq or 0) > covered}
            missing = set(revoked_rows) - pending - set(crl.entries)
            if missing:
                problems.append(f"CRL {latest_crl.number} misses revoked serials {missing}")
            listed_wrongly = set(crl.entries) - set(revoked_rows)
            if listed_wrongly:
                problems.append(f"CRL {latest_crl.number} lists unrevoked {listed_wrongly}")
            for sn in set(crl.entries) & set(revoked_rows):
                entry, row = crl.entries[sn], revoked_rows[sn]
                if row.revoked_at is None or entry.revoked_at != aware(row.revoked_at):
                    problems.append(f"CRL entry {sn:x}: revocation time differs from the row")
                elif entry.reason != row.revocation_reason:
                    problems.append(f"CRL entry {sn:x}: reason differs from the row")
            if pending:
                due = issuing.crl_due_at
                if due is None:
                    problems.append(f"revocations {pending} are pending with no due time")
                elif (self.kmc.clock() - aware(due)).total_seconds() > self.crl_grace:
                    problems.append(f"revocations {pending} overdue since {due}")
            elif (
                issuing.crl_due_at is not None
                and (issuing.revocation_seq or 0) == covered
                and (self.kmc.clock() - aware(issuing.crl_due_at)).total_seconds()
                > (self.crl_grace)
            ):
                problems.append("a CRL publication is due with nothing pending")
        if latest_delta is not None and issuing is not None:
            delta = CRL.from_der(latest_delta.der)
            try:
                delta.verify_signature(ca_certs[2].public_key)
            except Exception as exc:
                problems.append(f"delta CRL {latest_delta.number}: {exc}")
            if delta.delta_base != latest_delta.base_number or delta.number != latest_delta.number:
                problems.append(f"delta CRL {latest_delta.number} differs from its row")
            if delta_base_crl is None:
                problems.append(f"delta CRL {latest_delta.number}: base CRL is not stored")
            else:
                since = {
                    sn
                    for sn, c in revoked_rows.items()
                    if (delta_base_crl.revocation_seq or 0)
                    < (c.revocation_seq or 0)
                    <= (issuing.crl_seq or 0)
                }
                if latest_delta.number == issuing.crl_number and set(delta.entries) != since:
                    problems.append(
                        f"delta CRL {latest_delta.number} lists {sorted(delta.entries)}, "
                        f"expected {sorted(since)}"
                    )

        report = self.kmc.verify_audit()
        if not report.ok:
            problems.append(f"audit chain: {report.problem} (record {report.first_bad_seq})")
        elif report.records != n_audit:
            problems.append(f"audit verified {report.records} of {n_audit} records")

        assert not problems, "store invariants violated:\n  " + "\n  ".join(problems)
        return Snapshot(certs, keys, codes, recs, dict(enroll_audit), actions, n_audit)


def open_release(envelope_b64: str, recipient: SM2PrivateKey) -> SM2PublicKey:
    """The public key of the private key released by a recovery envelope."""
    import base64

    from mstcrypt.formats.envelope import open_enveloped_key

    return open_enveloped_key(base64.b64decode(envelope_b64), recipient).public_key()
