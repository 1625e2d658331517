"""Two ``mstcrypt serve`` processes on one PostgreSQL database behave as one platform.

Both processes start at the same moment on an empty database, each with its own data
directory (two machines) and the same SS-CC master key, and each terminates TLCP itself.
Against them: an enrollment on A and a login on B; a login challenge from A answered at
B and then replayed at A and at B (refused); one enrollment code raced at A and B (used
once); a session token from B accepted by A and logged out at A (refused by B); an
operator who enrolls at A, logs in at B and works at A; the enrollment rate limit
counted across both; a revocation at A seen by B's CRL, B's login and B's session check;
and both instances' housekeeping (signed audit checkpoints every 0.2 s) racing without
breaking the chain or stopping either loop. A runs its enrollments and revocations in a
CA worker process (``MSTCRYPT_CA_WORKERS=1``), B in its API process (``=0``).

PostgreSQL only (MSTCRYPT_TEST_DATABASE_URL); SQLite is one file on one machine.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from conftest import PG_ENV, _pg_database
from mstcrypt.client import Client, ServiceError
from mstcrypt.kmc.models import (
    AuditCheckpoint,
    AuditHead,
    CertificateAuthority,
    IssuedCertificate,
    RateLimit,
)
from mstcrypt.kmc.service import Kmc
from mstcrypt.module import SoftToken
from mstcrypt.module.base import KeyUsage
from mstcrypt.pki import Certificate
from mstcrypt.protocols.login import Challenge, LoginClient
from platform_helpers import (
    add_operators,
    free_port,
    kmc_for,
    server_env,
    terminal,
    tlcp_client,
    wait_health,
)

PIN, ADMIN_CODE = "123456", "admin-code-1"
ENROLL_RATE = 1000


@dataclass
class Instance:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Cluster:
    a: Instance
    b: Instance
    kmc: Kmc
    root: Certificate
    ops: dict[str, str]
    tmp: Path
    url: str

    def client(self, inst: Instance, operator: str | None = None) -> Client:
        token = self.ops[operator] if operator else None
        return Client(inst.url, anchors=[self.root], operator_token=token, timeout=60)

    def code(self, owner: str, at: Instance | None = None) -> str:
        with self.client(at or self.a, "alice") as c:
            return str(c.create_enrollment_code(owner, {"CN": owner, "O": "cluster"})["code"])

    def token(self, name: str) -> SoftToken:
        return SoftToken.init(self.tmp / f"{name}.tok", PIN, ADMIN_CODE, iterations=100_000)


def _start(name: str, url: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    data_dir = tmp / f"data-{name}"
    env = server_env(
        url,
        MSTCRYPT_ENROLL_RATE=str(ENROLL_RATE),
        MSTCRYPT_CHECKPOINT_SECONDS="0.2",
        MSTCRYPT_PUBLIC_URL="https://cluster.example",
    )
    # A enrolls and revokes in a CA worker process (serve's default with two CPUs), B in
    # its API process
    env["MSTCRYPT_CA_WORKERS"] = "1" if name == "a" else "0"
    cmd = [sys.executable, "-m", "mstcrypt", "serve", "--init", "--port", str(port)]
    cmd += ["--data-dir", str(data_dir), "--server-name", "127.0.0.1"]
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"https://127.0.0.1:{port}", log


def _wait_root(kmc: Kmc, procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> Certificate:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(SQLAlchemyError):  # the schema may not exist yet
            if kmc.is_initialised():
                return kmc.chain()[-1]
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in logs)
            raise AssertionError(f"the instances did not initialise the CA\n{tails}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"several instances need PostgreSQL ({PG_ENV})")
    tmp = tmp_path_factory.mktemp("cluster")
    url, drop = _pg_database(base)
    kmc = kmc_for(url)
    started: list[tuple[subprocess.Popen[bytes], str, Path]] = []
    try:
        # both on an empty database at once: migrations and CA initialisation race
        started = [_start(n, url, tmp) for n in ("a", "b")]
        root = _wait_root(kmc, [s[0] for s in started], [s[2] for s in started])
        a, b = (Instance(n, *s) for n, s in zip(("a", "b"), started, strict=True))
        for inst in (a, b):
            try:
                wait_health(inst.url, inst.proc, timeout=60, anchors=[root])
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{inst.log_text()[-3000:]}") from None
        ops = add_operators(kmc)  # static officer credentials, written at the "console"
        yield Cluster(a, b, kmc, root, ops, tmp, url)
    finally:
        for proc, _, _ in started:
            proc.terminate()
        for proc, _, _ in started:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        kmc.db.dispose()
        drop()


def _enroll(c: Cluster, owner: str, at: Instance) -> SoftToken:
    tok = c.token(owner)
    with c.client(at) as cl:
        cl.enroll(c.code(owner), tok)
    return tok


def _response(c: Cluster, tok: SoftToken, challenge: dict[str, Any], at: Instance) -> Any:
    """Token-M for ``challenge`` (the terminal's step d), validating the server's chain
    fetched from ``at``."""
    cert = Certificate.from_der(tok.get_certificate("main", KeyUsage.SIGN) or b"")
    key = tok.key("main", KeyUsage.SIGN)
    with c.client(at) as cl:
        intermediates, crls = cl.trusted_chain()
    client = LoginClient(
        expected_server_name="mstcrypt-login",
        certificate=cert,
        signer=lambda tbs: tok.sign(key, tbs),
        chain=intermediates,
        anchors=[c.root],
    )
    ch = Challenge.from_json(challenge)
    return client.respond(ch, now=datetime.now(UTC), crls=crls).to_json()


def _post(c: Cluster, at: Instance, path: str, body: Any) -> httpx.Response:
    with tlcp_client(at.url, [c.root], timeout=60) as http:
        return http.post(path, json=body)


# ----------------------------------------------------------------------------- tests --
def _service_certificates(c: Cluster) -> dict[str, list[str]]:
    with c.kmc.db.tx() as s:
        rows = list(
            s.execute(
                select(IssuedCertificate.owner, IssuedCertificate.status).where(
                    IssuedCertificate.owner.like("service:%")
                )
            )
        )
    by_owner: dict[str, list[str]] = {}
    for owner, status in rows:
        by_owner.setdefault(owner, []).append(status)
    return by_owner


def test_concurrent_start_makes_one_platform(cluster: Cluster) -> None:
    c = cluster
    with c.kmc.db.tx() as s:
        assert s.scalar(select(func.count()).select_from(CertificateAuthority)) == 2
    # each endpoint identity certified once: neither instance superseded the other's
    # certificate (which the first would go on presenting, revoked)
    by_owner = _service_certificates(c)
    for owner in ("service:platform-tlcp-sign", "service:platform-tlcp-enc"):
        assert by_owner.get(owner) == ["active"], (owner, by_owner)
    with c.client(c.a) as ca, c.client(c.b) as cb:
        assert [x.der for x in ca.chain()] == [x.der for x in cb.chain()]
        login_a = ca._request("GET", "/login/certificate.pem").content
        login_b = cb._request("GET", "/login/certificate.pem").content
    assert login_a == login_b


def test_enroll_on_a_login_on_b(cluster: Cluster) -> None:
    c = cluster
    tok = _enroll(c, "ada", c.a)
    with c.client(c.b) as cb:
        r = cb.login(tok)
        assert r["owner"] == "ada"
        token = r["session_token"]
        assert cb.session(token)["owner"] == "ada"
    with c.client(c.a) as ca:
        assert ca.session(token)["owner"] == "ada"  # issued by B, accepted by A
        ca.logout(token)
    with c.client(c.b) as cb, pytest.raises(ServiceError) as err:
        cb.session(token)  # logged out at A: refused by B at once
    assert err.value.status == 401


def test_challenge_single_use_across_instances(cluster: Cluster) -> None:
    c = cluster
    tok = _enroll(c, "bea", c.b)
    challenge = _post(c, c.a, "/login/challenge", None).json()
    response = _response(c, tok, challenge, c.b)
    ok = _post(c, c.b, "/login/response", {"response": response})  # issued by A, used at B
    assert ok.status_code == 200, ok.text
    assert ok.json()["owner"] == "bea"
    for inst in (c.a, c.b):  # the same Token-M replayed at either instance
        again = _post(c, inst, "/login/response", {"response": response})
        assert again.status_code == 403, again.text
        assert "already used" in again.json()["detail"]
    # raced: one challenge answered at A and B at the same moment logs in once
    challenge = _post(c, c.b, "/login/challenge", None).json()
    response = _response(c, tok, challenge, c.a)
    with ThreadPoolExecutor(4) as pool:
        replies = list(
            pool.map(
                lambda i: _post(c, (c.a, c.b)[i % 2], "/login/response", {"response": response}),
                range(4),
            )
        )
    assert sorted(r.status_code for r in replies) == [200, 403, 403, 403], [r.text for r in replies]


def test_enrollment_code_used_once_across_instances(cluster: Cluster) -> None:
    c = cluster
    for round_ in range(3):
        code = c.code(f"race{round_}")
        csrs = [terminal(f"race{round_}-{i}")[1] for i in range(6)]
        with ThreadPoolExecutor(6) as pool:
            replies = list(
                pool.map(
                    lambda i, code=code, csrs=csrs: _post(
                        c, (c.a, c.b)[i % 2], "/enroll", {"code": code, "csr": csrs[i]}
                    ),
                    range(6),
                )
            )
        codes = sorted(r.status_code for r in replies)
        assert codes == [200, 403, 403, 403, 403, 403], [r.text for r in replies]


def test_operator_session_from_one_instance_works_at_the_other(cluster: Cluster) -> None:
    c = cluster
    code, _ = c.kmc.operators.add("officer-olga", ["registration_officer"], actor="console")
    tok = c.token("olga")
    with c.client(c.a) as ca:
        ca.enroll(code, tok)
    with c.client(c.b) as cb:
        session = cb.login(tok)["session_token"]
    with Client(c.a.url, anchors=[c.root], operator_token=session) as ca:
        made = ca.create_enrollment_code("olga-device", {"CN": "olga-device"})
        assert made["owner"] == "olga-device"
    c.kmc.operators.set_status("officer-olga", "disabled", actor="console")
    with (
        Client(c.b.url, anchors=[c.root], operator_token=session) as cb,
        pytest.raises(ServiceError) as err,
    ):
        cb.create_enrollment_code("olga-device2", {"CN": "olga-device2"})
    assert err.value.status in (401, 403)


def test_enrollment_rate_limit_counted_across_instances(cluster: Cluster) -> None:
    c = cluster
    bucket = "enroll:127.0.0.1"
    # stay inside one fixed window of the limiter (60 s)
    if 60 - time.time() % 60 < 15:
        time.sleep(60 - time.time() % 60 + 0.5)
    window = int(time.time()) // 60
    with c.kmc.db.tx() as s:  # leave room for exactly three more attempts
        row = s.get(RateLimit, (bucket, window))
        if row is None:
            s.add(RateLimit(key=bucket, window=window, count=ENROLL_RATE - 3))
        else:
            row.count = ENROLL_RATE - 3
    junk = {"code": "AAAAA-AAAAA-AAAAA-AAAAA", "csr": terminal("junk")[1]}
    got = [_post(c, inst, "/enroll", junk).status_code for inst in (c.a, c.b, c.a)]
    assert got == [403, 403, 403], got  # three attempts, wherever they land, are counted
    assert _post(c, c.b, "/enroll", junk).status_code == 429
    assert _post(c, c.a, "/enroll", junk).status_code == 429
    with c.kmc.db.tx() as s:
        row = s.get(RateLimit, (bucket, window))
        assert row.count == ENROLL_RATE + 2
        row.count = 0  # the later tests enroll from this address in this window


def test_revocation_at_a_is_seen_by_b(cluster: Cluster) -> None:
    c = cluster
    tok = _enroll(c, "cyd", c.a)
    with c.client(c.b) as cb:
        session = cb.login(tok)["session_token"]
    serial = Certificate.from_der(tok.get_certificate("main", KeyUsage.SIGN) or b"").serial
    with c.client(c.a, "alice") as ca:
        ca.revoke_certificate(f"{serial:x}", "key_compromise")
    with c.client(c.b) as cb:
        assert cb.crl("issuing").is_revoked(serial)
        assert cb.certificate(f"{serial:x}")[1] == "revoked"
        with pytest.raises(ServiceError) as err:
            cb.session(session)
        assert err.value.status == 401
        with pytest.raises(ServiceError):
            cb.login(tok)


def test_housekeeping_of_both_instances_keeps_one_chain(cluster: Cluster) -> None:
    c = cluster
    # both instances sign checkpoints every 0.2 s; let them race on a growing log
    for i in range(5):
        c.code(f"hk{i}", at=(c.a, c.b)[i % 2])
    deadline = time.monotonic() + 10
    while True:
        with c.kmc.db.tx() as s:
            head = s.get(AuditHead, 1).seq
            signed = s.scalar(select(func.max(AuditCheckpoint.seq)))
        if signed == head:
            break
        assert time.monotonic() < deadline, f"no checkpoint of the head {head} (last {signed})"
        time.sleep(0.1)
    # the login identity, created by whichever instance served the first login
    assert _service_certificates(c).get("service:login") == ["active"]
    report = c.kmc.verify_audit()
    assert report.ok, report.problem
    assert report.checkpoints >= 2
    for inst in (c.a, c.b):
        assert inst.proc.poll() is None, f"instance {inst.name} exited"
        text = inst.log_text()
        assert "Traceback" not in text and "housekeeping failed" not in text, text[-3000:]


def test_instance_with_another_master_key_refuses_to_start(cluster: Cluster) -> None:
    """A third instance whose SS-CC cannot open the database's keys (here a master key
    of its own) stops at start with the reason, instead of serving errors."""
    c = cluster
    env = server_env(c.url)
    env["MSTCRYPT_MASTER_KEY"] = "11" * 32
    cmd = [sys.executable, "-m", "mstcrypt", "serve", "--tls", "none"]
    cmd += ["--port", str(free_port()), "--data-dir", str(c.tmp / "data-c")]
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=60)
    assert done.returncode != 0
    assert b"same master key" in done.stderr, done.stderr[-2000:]


def test_checkpoints_raced_by_two_instances(database_url: str) -> None:
    """Two instances signing the same head at the same moment: one checkpoint stands,
    the other call returns None (it used to fail on the primary key, ending the
    housekeeping loop of that instance)."""
    import threading

    a, b = kmc_for(database_url), kmc_for(database_url)
    try:
        a.create_schema()
        a.init_ca()
        for i in range(15):
            a.create_enrollment_code(owner=f"o{i}", subject={"CN": f"o{i}"}, actor="test")
            barrier = threading.Barrier(2)
            results: list[Any] = []

            def run(k: Kmc, barrier: threading.Barrier = barrier, out: list[Any] = results) -> None:
                barrier.wait()
                try:
                    out.append(k.checkpoint())
                except Exception as exc:  # the assertion reports it
                    out.append(exc)

            threads = [threading.Thread(target=run, args=(k,)) for k in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not [r for r in results if isinstance(r, Exception)], results
            signed = [r for r in results if r is not None]
            assert len(signed) <= 1, results
        report = a.verify_audit()
        assert report.ok and report.checkpoints >= 1, report.problem
    finally:
        a.db.dispose()
        b.db.dispose()
