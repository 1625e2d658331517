"""kill -9 of the platform server in the middle of its work, on SQLite and PostgreSQL.

The real server runs as a subprocess (``python -m mstcrypt serve --init --tls none``:
plain HTTP, so that the driver can tell a refused connection from a request in flight)
with a fixed master key. A driver thread performs issuance (code + enroll), rotation,
certificate revocation (alone, or the dual-certificate pair for a lost device), key
revocation, destruction and recovery (a request by one operator, then two approvals by
two others quoting the recipient's fingerprint: MSTCRYPT_RECOVERY_APPROVALS=2) while
the parent sends SIGKILL after a random delay (fixed seed). After every
kill the store is checked directly through SQLAlchemy (see
:class:`platform_helpers.InvariantChecker`), every reply the client received as a
success must be reflected in it, and the audit log must have grown by exactly the
records of the acknowledged operations, plus those of the one operation in flight at
the kill (all of them, or none: an operation is one transaction). The final restart
uses ``serve``'s default TLCP endpoint, authenticated with the platform's root.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from mstcrypt.crypto.sm2 import SM2PrivateKey, SM2PublicKey
from mstcrypt.formats.envelope import open_enveloped_key
from mstcrypt.kmc.models import AuditCheckpoint
from mstcrypt.pki import Certificate
from platform_helpers import (
    OPERATOR_ROLES,
    InvariantChecker,
    Snapshot,
    add_operators,
    ca_workers_of,
    free_port,
    kmc_for,
    open_release,
    server_env,
    terminal,
    tlcp_client,
    wait_gone,
    wait_health,
)

SEED = 37_2020
KILLS = int(os.environ.get("MSTCRYPT_CRASH_KILLS", "50"))
MAX_DELAY = 0.6  # seconds of driver work before the kill
WEIGHTS = {"issue": 35, "rotate": 20, "revoke": 15, "destroy": 5, "recover": 25}
OPERATORS = ("alice", "bob", "carol")  # a requester and two approvers
APPROVALS = 2  # MSTCRYPT_RECOVERY_APPROVALS of the server

pytestmark = pytest.mark.slow


class Stopped(Exception):
    """The server went away; ``mid`` says the request may have reached it."""

    def __init__(self, mid: bool) -> None:
        super().__init__("server gone")
        self.mid = mid


@dataclass
class Pending:
    key_id: str
    recipient: SM2PrivateKey
    requester: str
    approvals: list[str] = field(default_factory=list)


@dataclass
class Model:
    """What the client knows, across restarts: acknowledged facts and its own view."""

    expected_audit: int = 0
    next_owner: int = 0
    owners: dict[str, str | None] = field(default_factory=dict)  # owner -> active key
    keys: dict[str, str] = field(default_factory=dict)  # key id -> owner
    sign_serials: list[str] = field(default_factory=list)
    pairs: dict[str, str] = field(default_factory=dict)  # sign serial -> enc serial
    revoked_certs: set[str] = field(default_factory=set)
    revoked_keys: set[str] = field(default_factory=set)
    destroyed_keys: set[str] = field(default_factory=set)
    pending: dict[str, Pending] = field(default_factory=dict)
    facts: list[tuple[Any, ...]] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    acked: Counter[str] = field(default_factory=Counter)


class Driver(threading.Thread):
    """Runs random operations until the server dies; ``inflight`` names the request
    outstanding (and the numbers of audit records it may have committed)."""

    def __init__(
        self, model: Model, base_url: str, tokens: dict[str, str], rng: random.Random
    ) -> None:
        super().__init__(daemon=True)
        self.model, self.rng, self.tokens = model, rng, tokens
        self.http = httpx.Client(base_url=base_url, timeout=20.0)
        self.inflight: tuple[str, frozenset[int]] | None = None
        self.stopped: Stopped | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                kinds = list(WEIGHTS)
                op = self.rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
                getattr(self, op)()
        except Stopped as exc:
            self.stopped = exc
        except BaseException as exc:
            self.error = exc
        finally:
            self.http.close()

    # -- plumbing --------------------------------------------------------------------
    def call(
        self,
        kind: str,
        path: str,
        body: Any,
        *,
        who: str | None,
        deltas: frozenset[int] = frozenset({1}),
        refusable: bool = True,
    ) -> dict[str, Any] | None:
        """POST; the JSON of a 200 reply, None for a 409 refusal (a state conflict that
        an unacknowledged, possibly committed earlier operation can cause)."""
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        self.inflight = (kind, deltas)
        try:
            r = self.http.post(path, json=body, headers=headers)
        except httpx.ConnectError:
            self.inflight = None
            raise Stopped(mid=False) from None
        except httpx.TransportError:
            raise Stopped(mid=True) from None
        self.inflight = None
        if r.status_code == 200:
            self.model.acked[kind] += 1
            return dict(r.json())
        if r.status_code == 409 and refusable:
            self.model.refusals[kind] += 1
            return {"refused": r.json().get("detail", "")}
        self.model.problems.append(f"{kind} {path}: HTTP {r.status_code} {r.text[:300]}")
        return None

    # -- operations ----------------------------------------------------------------------
    def issue(self) -> None:
        m = self.model
        owner = f"u{m.next_owner:04d}"
        m.next_owner += 1
        body = {"owner": owner, "subject": {"CN": owner, "O": "crash"}, "ttl_seconds": 3600}
        r = self.call("code", "/admin/enrollment-codes", body, who="alice", refusable=False)
        if r is None:
            return
        code = r["code"]
        m.expected_audit += 1
        m.facts.append(("code", code, owner))
        key, csr = terminal(owner)
        r = self.call("enroll", "/enroll", {"code": code, "csr": csr}, who=None, refusable=False)
        if r is None:
            return
        m.expected_audit += 1
        sign = Certificate.from_pem(r["sign_certificate"].encode())
        enc = Certificate.from_pem(r["encryption_certificate"].encode())
        delivered = open_enveloped_key(base64.b64decode(r["enveloped_key"]), key)
        if sign.public_key != key.public_key() or delivered.public_key() != enc.public_key:
            m.problems.append(f"enroll {owner}: reply does not match the terminal's keys")
        sign_sn, enc_sn, kid = f"{sign.serial:x}", f"{enc.serial:x}", r["key_id"]
        m.facts.append(("enrolled", code, owner, sign_sn, enc_sn, kid))
        m.owners[owner], m.keys[kid] = kid, owner
        m.sign_serials.append(sign_sn)
        m.pairs[sign_sn] = enc_sn

    def rotate(self) -> None:
        m = self.model
        owners = sorted(o for o, k in m.owners.items() if k)
        if not owners:
            return self.issue()
        owner = self.rng.choice(owners)
        prev = m.owners[owner]
        pub = SM2PrivateKey.generate().public_key().to_bytes().hex()
        body = {"owner": owner, "terminal_public_key": pub, "subject": {"CN": owner}}
        r = self.call("rotate", "/admin/keys/rotate", body, who=self.rng.choice(OPERATORS))
        if r is None:
            return
        if "refused" in r:  # an unacknowledged revocation took the active key
            m.owners[owner] = None
            return
        m.expected_audit += 1
        enc = Certificate.from_pem(r["encryption_certificate"].encode())
        m.facts.append(("rotated", owner, r["key_id"], f"{enc.serial:x}", prev))
        m.owners[owner], m.keys[r["key_id"]] = r["key_id"], owner
        return None

    def revoke(self) -> None:
        m = self.model
        who = self.rng.choice(OPERATORS)
        if self.rng.random() < 0.5:
            serials = [s for s in m.sign_serials if s not in m.revoked_certs]
            if not serials:
                return self.issue()
            sn = self.rng.choice(serials)
            # a lost device revokes the pair (and the escrowed key if still certified)
            reason = self.rng.choice(("unspecified", "key_compromise"))
            r = self.call(
                "cert.revoke",
                f"/admin/certificates/{sn}/revoke",
                {"reason": reason},
                who=who,
            )
            if r is not None:
                m.revoked_certs.add(sn)
                if "refused" not in r:
                    m.expected_audit += 1
                    m.facts.append(("cert_revoked", sn))
                    if reason == "key_compromise":
                        enc_sn = m.pairs[sn]
                        m.revoked_certs.update(r["revoked"])
                        m.facts.append(("pair_revoked", sn, enc_sn, sorted(r["revoked"])))
            return None
        kids = sorted(k for k in m.keys if k not in m.revoked_keys | m.destroyed_keys)
        if not kids:
            return self.issue()
        kid = self.rng.choice(kids)
        r = self.call("key.revoke", f"/admin/keys/{kid}/revoke", None, who=who)
        if r is not None:
            m.revoked_keys.add(kid)
            if m.owners.get(m.keys[kid]) == kid:
                m.owners[m.keys[kid]] = None
            if "refused" not in r:
                m.expected_audit += 1
                m.facts.append(("key_revoked", kid))
        return None

    def destroy(self) -> None:
        m = self.model
        kids = sorted(m.revoked_keys - m.destroyed_keys)
        if not kids:
            return self.revoke()
        kid = self.rng.choice(kids)
        r = self.call("key.destroy", f"/admin/keys/{kid}/destroy", None, who="bob")
        if r is not None:
            m.destroyed_keys.add(kid)
            if "refused" not in r:
                m.expected_audit += 1
                m.facts.append(("key_destroyed", kid))
        return None

    def recover(self) -> None:
        m = self.model
        if m.pending and self.rng.random() < 0.5:
            rid = self.rng.choice(sorted(m.pending))
        else:
            kids = sorted(k for k in m.keys if k not in m.destroyed_keys)
            if not kids:
                return self.issue()
            kid = self.rng.choice(kids)
            recipient = SM2PrivateKey.generate()
            requester = self.rng.choice(OPERATORS)
            body = {
                "key_id": kid,
                "recipient_public_key": recipient.public_key().to_bytes().hex(),
                "reason": "terminal lost",
            }
            r = self.call("recovery.request", "/admin/recovery", body, who=requester)
            if r is None or "refused" in r:
                return None
            rid = r["request_id"]
            if r["requested_by"] != f"officer-{requester}" or r["approvals"]:
                m.problems.append(f"recovery request {rid}: reply {r}")
            m.expected_audit += 1
            m.facts.append(("recovery_requested", rid, kid, f"officer-{requester}"))
            m.pending[rid] = Pending(kid, recipient, requester)
        while rid in m.pending:
            p = m.pending[rid]
            if len(p.approvals) >= APPROVALS:  # released by unacknowledged approvals
                del m.pending[rid]
                break
            # a second (and third) officer approves, never the requester
            who = self.rng.choice([o for o in OPERATORS if o not in (p.requester, *p.approvals)])
            fingerprint = p.recipient.public_key().fingerprint().hex()
            r = self.call(
                "recovery.approve",
                f"/admin/recovery/{rid}/approve",
                {"recipient_fingerprint": fingerprint},
                who=who,
                deltas=frozenset({1, 2}),
            )
            if r is None:
                return None
            if "refused" in r:
                if "already approved" in r["refused"]:
                    p.approvals.append(who)  # an unacknowledged approval was committed
                elif "is released" in r["refused"] or "'destroyed'" in r["refused"]:
                    del m.pending[rid]  # released unacknowledged, or the key was destroyed
                else:
                    m.problems.append(f"approve {rid} by {who}: refused {r['refused']}")
                    return None
                continue
            # the reply lists every approval, including unacknowledged ones that committed
            approvals = [a.removeprefix("officer-") for a in r["approvals"]]
            if who not in approvals or not set(p.approvals) <= set(approvals):
                m.problems.append(f"approve {rid} by {who}: reply lists {approvals}")
            p.approvals = approvals
            m.facts.append(("approved", rid, f"officer-{who}"))
            if r["status"] == "released":
                m.expected_audit += 2
                m.facts.append(
                    ("released", rid, p.key_id, r["enveloped_key"], p.recipient, r["approvals"])
                )
                del m.pending[rid]
            else:
                m.expected_audit += 1
        return None


def check_facts(snap: Snapshot, facts: list[tuple[Any, ...]]) -> list[str]:
    """Every acknowledged reply must be reflected in the store."""
    lost: list[str] = []
    certs, keys, recs = snap.certs, snap.keys, snap.recoveries
    for fact in facts:
        kind, args = fact[0], fact[1:]
        ok = True
        if kind == "code":
            row = snap.code(args[0])
            ok = row is not None and row.owner == args[1]
        elif kind == "enrolled":
            code, owner, sign_sn, enc_sn, kid = args
            row = snap.code(code)
            records = snap.enroll_audit.get(row.id, []) if row else []
            ok = (
                row is not None
                and row.used_at is not None
                and len(records) == 1
                and (records[0]["sign_serial"], records[0]["enc_serial"]) == (sign_sn, enc_sn)
                and records[0]["key_id"] == kid
                and sign_sn in certs
                and enc_sn in certs
                and certs[enc_sn].key_id == kid
                and kid in keys
                and keys[kid].owner == owner
            )
        elif kind == "rotated":
            owner, kid, enc_sn, prev = args
            ok = (
                kid in keys
                and keys[kid].owner == owner
                and keys[kid].state != "generated"
                and enc_sn in certs
                and certs[enc_sn].key_id == kid
                and (prev is None or (prev in keys and keys[prev].state != "active"))
            )
        elif kind == "cert_revoked":
            ok = args[0] in certs and certs[args[0]].status == "revoked"
        elif kind == "pair_revoked":
            # the signing certificate went with its current pair: the enrollment's encryption
            # certificate, or the newer one a key update paired it with
            sign_sn, _enrolled_enc_sn, revoked = args
            others = set(revoked) - {sign_sn}
            ok = sign_sn in revoked and len(others) <= 1
            ok = ok and all(sn in certs and certs[sn].status == "revoked" for sn in revoked)
            for enc_sn in others if ok else ():
                enc = certs[enc_sn]
                ok = enc.usage == "enc" and enc.owner == certs[sign_sn].owner
                kid = enc.key_id  # the pair went now: its escrowed key went too
                ok = ok and kid in keys and keys[kid].state in ("revoked", "archived", "destroyed")
        elif kind == "key_revoked":
            kid = args[0]
            ok = kid in keys and keys[kid].state in ("revoked", "archived", "destroyed")
            ok = ok and all(c.status == "revoked" for c in certs.values() if c.key_id == kid)
        elif kind == "key_destroyed":
            kid = args[0]
            ok = kid in keys and keys[kid].state == "destroyed" and keys[kid].key_blob is None
        elif kind == "recovery_requested":
            rid, kid, requester = args
            ok = rid in recs and recs[rid].key_id == kid and recs[rid].requested_by == requester
        elif kind == "approved":
            ok = args[0] in recs and args[1] in (recs[args[0]].approvals or [])
        elif kind == "released":
            rid, kid, envelope, recipient, approvers = args
            req = recs.get(rid)
            ok = (
                req is not None
                and req.status == "released"
                and sorted(req.approvals or []) == sorted(approvers)
                and len(set(approvers)) == APPROVALS
                and req.requested_by not in approvers
                and req.result == base64.b64decode(envelope)
                and kid in keys
                and open_release(envelope, recipient)
                == SM2PublicKey.from_bytes(keys[kid].public_key)
            )
        else:
            raise AssertionError(f"unknown fact {kind}")
        if not ok:
            lost.append(f"acknowledged {kind} {args[:3]} is not in the store")
    return lost


@dataclass
class Rig:
    database_url: str
    data_dir: Path
    log: Path
    env: dict[str, str]
    tokens: dict[str, str]

    def start(
        self, *, anchors: list[Certificate] | None = None
    ) -> tuple[subprocess.Popen[bytes], str]:
        """Start ``serve``: plain HTTP, or (given the root as ``anchors``) its default TLCP."""
        port = free_port()
        cmd = [sys.executable, "-m", "mstcrypt", "serve", "--init", "--port", str(port)]
        cmd += ["--data-dir", str(self.data_dir)]
        if anchors is None:
            cmd += ["--tls", "none"]
        with self.log.open("ab") as log:
            proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        url = f"{'http' if anchors is None else 'https'}://127.0.0.1:{port}"
        try:
            wait_health(url, proc, anchors=anchors)
        except AssertionError as exc:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None
        return proc, url

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def test_kill9_during_platform_operations(database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = server_env(
        database_url,
        MSTCRYPT_ENROLL_RATE="1000000",
        MSTCRYPT_CHECKPOINT_SECONDS="0.25",
        MSTCRYPT_RECOVERY_APPROVALS=str(APPROVALS),
    )
    backend = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    rng = random.Random(f"{SEED}-{backend}")
    model = Model()
    kmc = kmc_for(database_url, recovery_approvals=APPROVALS)
    kmc.create_schema()
    tokens = add_operators(kmc)  # officer-alice, officer-bob
    tokens["carol"] = kmc.operators.add_static("officer-carol", OPERATOR_ROLES)
    rig = Rig(database_url, data_dir, tmp_path / "server.log", env, tokens)
    checker = InvariantChecker(kmc)
    stats: Counter[str] = Counter()
    started = time.monotonic()
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc, url = rig.start()  # the first start initialises the CA
        model.expected_audit = checker.check().operation_records
        for i in range(KILLS):
            if i:
                proc, url = rig.start()
            driver = Driver(model, url, tokens, random.Random(rng.random()))
            driver.start()
            time.sleep(rng.uniform(0.0, MAX_DELAY))
            workers = ca_workers_of(proc.pid)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            # its CA workers go with it (they may finish the transaction in hand first:
            # whole, never partial); the store is checked once they are gone
            wait_gone(workers)
            driver.join(30)
            assert not driver.is_alive(), "the driver did not stop after the kill"
            if driver.error is not None:
                raise driver.error
            stats["kills"] += 1
            inflight = driver.inflight  # the request that got no reply, if it was sent
            assert not model.problems, "unexpected replies:\n" + "\n".join(model.problems)

            snap = checker.check()
            lost = check_facts(snap, model.facts)
            assert not lost, f"after kill {i + 1}:\n" + "\n".join(lost)
            delta = snap.operation_records - model.expected_audit
            if inflight is None:
                stats["between operations"] += 1
                assert delta == 0, f"kill {i + 1}: audit grew by {delta} with nothing in flight"
            else:
                kind, deltas = inflight
                stats["mid-operation"] += 1
                stats[f"mid {kind}"] += 1
                stats["mid, committed" if delta else "mid, not committed"] += 1
                assert delta in deltas | {0}, (
                    f"kill {i + 1} during {kind}: audit grew by {delta} records "
                    f"(acknowledged operations lost, or a partial commit)"
                )
            model.expected_audit = snap.operation_records

        # a clean restart, over TLCP, still serves, verifies its audit chain and signs its
        # head on exit
        root = kmc.chain()[-1]
        before = checker.check().audit_actions
        proc, url = rig.start(anchors=[root])
        up = checker.check()  # the endpoint certified its TLCP keys, nothing else (the
        # CRL publisher may have published revocations left pending by the last kill)
        new = set(up.audit_actions - before) - {"crl.publish"}
        assert new == {"service.identity"}, up.audit_actions
        model.expected_audit = up.operation_records
        auth = {"Authorization": f"Bearer {tokens['alice']}"}
        with tlcp_client(url, [root], timeout=30) as http:
            verify = http.get("/admin/audit/verify", headers=auth).json()
        assert verify["ok"], verify
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM), rig.log_tail()
        final = checker.check()
        assert final.operation_records == model.expected_audit
        with kmc.db.tx() as s:  # the graceful shutdown signed the chain head
            assert s.get(AuditCheckpoint, final.audit_records) is not None
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        kmc.db.dispose()
    elapsed = time.monotonic() - started
    summary = ", ".join(f"{k}={v}" for k, v in sorted(stats.items()))
    print(
        f"\n[{backend}] {elapsed:.0f}s; {summary}; acknowledged: {dict(model.acked)}; "
        f"409 refusals: {dict(model.refusals)}; audit records: {final.audit_records}"
    )
    assert stats["kills"] >= KILLS
    assert stats["mid-operation"] >= KILLS // 2, "too few kills landed mid-operation"
