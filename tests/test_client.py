"""The client SDK and the platform CLI against a real server on a loopback port
(``running_platform``): enrollment into a soft token, root pinning, ServiceError, the
operator API with dual control, all over TLCP with the root as anchor, and ``ca init`` /
``ca root`` / ``operator add`` / ``token init`` / ``enroll`` / ``login`` /
``audit verify`` / ``demo`` run as subprocesses."""

from __future__ import annotations

import base64
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mstcrypt.cli.platform import running_platform
from mstcrypt.client import Client, EnrollResult, ServiceError, token_anchors
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import MstCryptError, PolicyError, VerificationError
from mstcrypt.formats.envelope import open_enveloped_key
from mstcrypt.module import KeyUsage, SoftToken
from mstcrypt.pki import Certificate, CertificateError, Issuer, name
from mstcrypt.protocols.tlcp.errors import TLCPError
from mstcrypt.server.config import Settings
from platform_helpers import add_operators

ROOT = Path(__file__).resolve().parents[1]
SUBJECT = {"C": "CN", "O": "Example Unit", "CN": "alice", "email": "alice@example.cn"}
PIN, ADMIN_CODE = "246810", "admin-unlock-code"


@dataclass
class Running:
    url: str
    ops: dict[str, str]
    data_dir: Path
    root: Certificate

    def client(self, **kw: Any) -> Client:
        """A client of the TLCP endpoint that trusts the platform's root (as a terminal
        whose token has the root preset would)."""
        return Client(self.url, anchors=[self.root], **kw)

    def admin(self, operator: str = "alice") -> Client:
        return self.client(operator_token=self.ops[operator])

    def code(self, owner: str = "alice", **subject: str) -> str:
        with self.admin() as a:
            return str(a.create_enrollment_code(owner, {**SUBJECT, "CN": owner, **subject})["code"])


@pytest.fixture
def platform(database_url: str, tmp_path: Path) -> Iterator[Running]:
    data_dir = tmp_path / "data"
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        checkpoint_seconds=3600,
        static_operators=True,  # add_operators() bearer credentials for the operator API
        crl_max_delay=0,  # these tests read the CRL right after revoking
    )
    with running_platform(data_dir, settings) as url:
        kmc = settings.kmc()
        try:
            ops = add_operators(kmc)  # officer-alice, officer-bob
            root = kmc.chain()[-1]
        finally:
            kmc.db.dispose()
        yield Running(url, ops, data_dir, root)


def new_token(path: Path) -> SoftToken:
    return SoftToken.init(path, PIN, ADMIN_CODE, iterations=100_000)


def foreign_root() -> Certificate:
    key = SM2PrivateKey.generate()
    return Issuer.self_signed(
        name(C="CN", O="mstcrypt", CN="mstcrypt Root CA"), key.public_key(), key.sign
    ).certificate


# ---------------------------------------------------------------- SDK ----------------------
def test_enroll_into_soft_token(platform: Running, tmp_path: Path) -> None:
    tok = new_token(tmp_path / "alice.tok")
    with platform.client() as c:
        assert c.health()["ca"] is True
        r = c.enroll(platform.code(), tok)
        assert isinstance(r, EnrollResult) and r.owner == "alice" and r.container == "main"
        assert [x.der for x in r.chain] == [x.der for x in c.chain()]
        # the token holds both keys and both certificates
        assert tok.list_containers() == ["main"]
        sign_h, enc_h = tok.key("main", KeyUsage.SIGN), tok.key("main", KeyUsage.ENCRYPT)
        assert sign_h.public_key == r.sign_certificate.public_key
        assert enc_h.public_key == r.encryption_certificate.public_key
        assert tok.get_certificate("main", KeyUsage.SIGN) == r.sign_certificate.der
        assert tok.get_certificate("main", KeyUsage.ENCRYPT) == r.encryption_certificate.der
        # ... and they work with what the directory publishes
        sig = tok.sign(sign_h, b"official document")
        r.sign_certificate.public_key.verify(sig, b"official document")
        enc_cert = c.encryption_certificate("alice")
        assert enc_cert.der == r.encryption_certificate.der
        assert c.recipient_certificate("alice").der == enc_cert.der  # validated to the root
        assert tok.decrypt(enc_h, enc_cert.public_key.encrypt(b"memo")) == b"memo"
        cert, status = c.certificate(f"{r.sign_certificate.serial:x}")
        assert cert.der == r.sign_certificate.der and status == "active"
        found = {x.serial for x in c.find_certificates(owner="alice")}
        assert found == {r.sign_certificate.serial, r.encryption_certificate.serial}
        assert c.crl("issuing").number is not None and c.crl("root").number is not None
        # re-enrolling an existing container needs replace=True
        with pytest.raises(MstCryptError, match="replace=True"):
            c.enroll(platform.code(), tok)
        r2 = c.enroll(platform.code(), tok, replace=True)
        assert r2.key_id != r.key_id
        assert tok.key("main", KeyUsage.SIGN).public_key == r2.sign_certificate.public_key
        # re-enrollment supersedes both earlier certificates (directory and CRL)
        crl = c.crl("issuing")
        for old in (r.sign_certificate, r.encryption_certificate):
            assert c.certificate(f"{old.serial:x}")[1] == "revoked"
            assert crl.is_revoked(old.serial)
        assert c.encryption_certificate("alice").der == r2.encryption_certificate.der
        # a second container for another owner
        r3 = c.enroll(platform.code("alice-work"), tok, container="work")
        assert r3.owner == "alice-work" and sorted(tok.list_containers()) == ["main", "work"]
    # persisted: reopen the file and log in again
    again = SoftToken.open(tmp_path / "alice.tok")
    again.login(PIN)
    assert again.get_certificate("main", KeyUsage.SIGN) == r2.sign_certificate.der
    assert again.get_certificate("work", KeyUsage.ENCRYPT) == r3.encryption_certificate.der


def test_anchor_pinning(platform: Running, tmp_path: Path) -> None:
    tok = new_token(tmp_path / "t.tok")
    # an https:// platform without any anchor: refused before connecting
    with pytest.raises(PolicyError, match="root CA"):
        Client(platform.url)
    # a client whose anchor is not the platform's root refuses the TLCP server
    with (
        Client(platform.url, anchors=[foreign_root()]) as c,
        pytest.raises(TLCPError, match="unknown_ca"),
    ):
        c.health()
    with platform.client() as c:
        # the certificates the server returns are checked against the anchor given
        with pytest.raises((VerificationError, CertificateError)):
            c.enroll(platform.code(), tok, anchor=foreign_root())
        assert "main" not in tok.list_containers()  # a refused enrollment changes nothing
        r = c.enroll(platform.code(), tok, anchor=platform.root, replace=True)
        assert r.chain[-1].der == platform.root.der
    # a token with the root preset needs no anchor from the caller
    preset = SoftToken.init(
        tmp_path / "preset.tok", PIN, ADMIN_CODE, iterations=100_000, anchors=[platform.root.der]
    )
    with Client(platform.url, anchors=token_anchors(preset)) as c:
        assert c.enroll(platform.code("carol"), preset).owner == "carol"


def test_service_errors(platform: Running, tmp_path: Path) -> None:
    tok = new_token(tmp_path / "t.tok")
    with platform.client() as c:
        with pytest.raises(ServiceError) as exc:
            c.enroll("AAAAA-BBBBB-CCCCC-DDDDD", tok)
        e = exc.value
        assert (e.status, e.error) == (403, "VerificationError") and "unknown" in e.detail
        assert str(e).startswith("VerificationError (403): ")
        with pytest.raises(ServiceError) as exc:
            c.certificate("abcdef")
        assert (exc.value.status, exc.value.error) == (404, "NotFoundError")
        with pytest.raises(ServiceError) as exc:
            c.encryption_certificate("nobody")
        assert exc.value.status == 404
        with pytest.raises(ServiceError) as exc:
            c.find_certificates()
        assert (exc.value.status, exc.value.error) == (409, "PolicyError")
        with pytest.raises(ServiceError) as exc:
            c.create_enrollment_code("x", {"CN": "x"})  # no operator credential
        assert exc.value.status == 401
    with platform.client(operator_token="op_wrong") as c, pytest.raises(ServiceError) as exc:
        c.keys("alice")
    assert exc.value.status == 401 and exc.value.detail == "invalid operator credential"
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", timeout=2) as c, pytest.raises(ServiceError) as exc:
        c.health()
    assert (exc.value.status, exc.value.error) == (0, "ConnectionError")


def test_operator_api(platform: Running, tmp_path: Path) -> None:
    tok = new_token(tmp_path / "t.tok")
    with platform.client() as c:
        r = c.enroll(platform.code(), tok)
    a, b = platform.admin("alice"), platform.admin("bob")
    try:
        keys = a.keys("alice")
        assert [(k["id"], k["state"]) for k in keys] == [(r.key_id, "active")]
        # recovery under dual control to a new terminal: officer-alice asks ...
        new_terminal = SM2PrivateKey.generate()
        fingerprint = new_terminal.public_key().fingerprint().hex()
        rid = a.request_recovery(r.key_id, new_terminal.public_key().to_bytes(), "device lost")
        # ... and cannot approve her own request
        with pytest.raises(ServiceError, match="dual control") as exc:
            a.approve_recovery(rid, fingerprint)
        assert exc.value.status == 409
        # officer-bob reviews what he approves: requester, reason, owner, recipient
        review = b.recovery(rid)
        assert review["requested_by"] == "officer-alice" and review["reason"] == "device lost"
        assert review["owner"] == "alice" and review["recipient_fingerprint"] == fingerprint
        assert review["status"] == "pending" and review["enveloped_key"] is None
        # an approval quoting another recipient is refused (the request is not released)
        with pytest.raises(ServiceError, match="fingerprint") as exc:
            b.approve_recovery(rid, "00" * 32)
        assert exc.value.status == 409
        assert b.recovery(rid)["status"] == "pending"
        done = b.approve_recovery(rid, fingerprint)
        assert done["status"] == "released" and done["approvals"] == ["officer-bob"]
        key = open_enveloped_key(base64.b64decode(done["enveloped_key"]), new_terminal)
        assert key.public_key() == r.encryption_certificate.public_key
        with pytest.raises(ServiceError) as exc:  # released once
            b.approve_recovery(rid, fingerprint)
        assert exc.value.status == 409
        # key lifecycle: an active key is not destroyed
        with pytest.raises(ServiceError) as exc:
            a.key_operation(r.key_id, "destroy")
        assert exc.value.status == 409
        # revoking the signing certificate because the device is lost revokes the pair
        # and the escrowed key (the directory and the CRL show both certificates)
        serial = f"{r.sign_certificate.serial:x}"
        a.revoke_certificate(serial, "key_compromise")
        with platform.client() as c:
            crl = c.crl()
            for cert in (r.sign_certificate, r.encryption_certificate):
                assert c.certificate(f"{cert.serial:x}")[1] == "revoked"
                assert crl.is_revoked(cert.serial)
        assert a.keys("alice")[0]["state"] == "revoked"
        a.key_operation(r.key_id, "destroy")
        assert a.keys("alice")[0]["state"] == "destroyed"
        assert b.verify_audit()["ok"] is True
    finally:
        a.close()
        b.close()


def test_refused_reenrollment_keeps_the_token_usable(platform: Running, tmp_path: Path) -> None:
    tok = new_token(tmp_path / "t.tok")
    with platform.client() as c:
        r = c.enroll(platform.code(), tok)
        with pytest.raises(ServiceError):
            c.enroll("AAAAA-BBBBB-CCCCC-DDDDD", tok, replace=True)
    assert tok.get_certificate("main", KeyUsage.SIGN) == r.sign_certificate.der
    assert tok.key("main", KeyUsage.SIGN).public_key == r.sign_certificate.public_key


# ---------------------------------------------------------------- CLI ----------------------
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSTCRYPT_")}
    env.update(PYTHONPATH=str(ROOT / "src"), COLUMNS="200", NO_COLOR="1", TERM="dumb")
    return env


def mstcrypt(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mstcrypt", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def test_cli_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "data"
    d = ["--data-dir", str(data)]
    p = mstcrypt("ca", "init", *d)
    assert p.returncode == 0, p.stderr
    assert "CA initialised" in p.stdout and "Root CA" in p.stdout
    # the master key is not stored beside the data by default
    assert (data / "mstcrypt.db").exists() and not (data / "master.key").exists()
    assert (tmp_path / "data.sscc" / "master.key").exists()
    p = mstcrypt("ca", "init", *d)
    assert p.returncode == 2 and "already initialised" in p.stderr
    root = tmp_path / "root.pem"
    p = mstcrypt("ca", "root", *d, "--out", str(root))
    assert p.returncode == 0, p.stderr
    assert "SM3 fingerprint" in p.stderr and root.read_bytes().startswith(b"-----BEGIN CERT")
    # an operator with roles, registered at the console with a one-time code for their
    # own soft token (the code alone on stdout)
    p = mstcrypt("operator", "add", "officer-alice", "--role", "registration_officer", *d)
    assert p.returncode == 0, p.stderr
    op_code = p.stdout.strip()
    assert len(op_code) == 23 and op_code.count("-") == 3
    p = mstcrypt("operator", "add", "officer-carol", "--role", "administrator", "--static", *d)
    assert p.returncode == 0, p.stderr
    static = p.stdout.strip()
    assert static.startswith("op_") and static.encode() not in (data / "mstcrypt.db").read_bytes()
    p = mstcrypt(
        "operator", "add", "officer-dan", "--role", "auditor", "--role", "administrator", *d
    )
    assert p.returncode == 2 and "auditor role cannot be combined" in p.stderr
    op_tok, tok = tmp_path / "operator.tok", tmp_path / "terminal.tok"
    for path in (op_tok, tok):
        p = mstcrypt(
            "token", "init", "--token", str(path), "--pin", PIN, "--admin-code", ADMIN_CODE,
            "--iterations", "100000", "--anchor", str(root),
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
    with running_platform(data, Settings(data_dir=data, checkpoint_seconds=3600)) as url:
        assert url.startswith("https://")
        anchors = [Certificate.from_pem(root.read_bytes())]
        p = mstcrypt(
            "enroll", "--server", url, "--code", op_code, "--token", str(op_tok), "--pin", PIN
        )
        assert p.returncode == 0, p.stderr
        p = mstcrypt("operator", "list", *d)
        assert p.returncode == 0 and "officer-alice" in p.stdout and "active" in p.stdout
        p = mstcrypt("login", "--server", url, "--token", str(op_tok), "--pin", PIN)
        assert p.returncode == 0, p.stderr
        session = p.stdout.strip().splitlines()[-1]
        assert session.startswith("MST1.")
        with (
            Client(url, anchors=anchors, operator_token=static) as c,
            pytest.raises(ServiceError) as exc,
        ):
            c.keys("alice")  # static credentials are off unless MSTCRYPT_STATIC_OPERATORS=1
        assert exc.value.status == 401
        with Client(url, anchors=anchors, operator_token=session) as admin:
            code = admin.create_enrollment_code("zhang", {**SUBJECT, "CN": "zhang"})["code"]
            code2 = admin.create_enrollment_code("bob", {**SUBJECT, "CN": "bob"})["code"]
            # a registration officer holds no administrator role
            with pytest.raises(ServiceError) as exc:
                admin.key_operation("0" * 32, "destroy")
            assert exc.value.status == 403
        chain_out = tmp_path / "chain.pem"
        enroll = ["enroll", "--server", url, "--token", str(tok), "--pin", PIN]
        p = mstcrypt(*enroll, "--code", code, "--chain-out", str(chain_out))
        assert p.returncode == 0, p.stderr
        assert "enrolled zhang" in p.stdout
        chain = chain_out.read_bytes()
        assert chain.count(b"-----BEGIN CERTIFICATE-----") == 2
        # the same code again (into another container): refused by the server, exit 2
        p = mstcrypt(*enroll, "--code", code, "--container", "second")
        assert p.returncode == 2 and "already used" in p.stderr
        # a pinned root that is not the platform's: the TLCP server is not authenticated,
        # nothing is sent (code2 stays usable)
        other = tmp_path / "other-root.pem"
        other.write_bytes(foreign_root().pem)
        p = mstcrypt(*enroll, "--code", code2, "--container", "third", "--ca-file", str(other))
        assert p.returncode != 0, (p.stdout, p.stderr)
        assert "certificate" in p.stderr.lower()
        p = mstcrypt(*enroll, "--code", code2, "--container", "third")
        assert p.returncode == 0, p.stderr
    t = SoftToken.open(tok)
    t.login(PIN)
    sign = Certificate.from_der(t.get_certificate("main", KeyUsage.SIGN) or b"")
    enc = Certificate.from_der(t.get_certificate("main", KeyUsage.ENCRYPT) or b"")
    assert t.key("main", KeyUsage.SIGN).public_key == sign.public_key
    assert t.key("main", KeyUsage.ENCRYPT).public_key == enc.public_key
    assert "CN=zhang" in sign.subject_str
    # the audit chain verifies ...
    p = mstcrypt("audit", "verify", *d)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "audit chain OK" in p.stdout
    # ... until one record is edited in the SQLite file
    with sqlite3.connect(data / "mstcrypt.db") as db:
        n = db.execute("SELECT count(*) FROM audit_log").fetchone()[0]
        assert n >= 5
        db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    p = mstcrypt("audit", "verify", *d)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "BROKEN" in p.stdout and "record 3" in p.stdout


def test_cli_demo() -> None:
    p = mstcrypt("demo", timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "FAILED" not in p.stdout and "demo summary" in p.stdout
