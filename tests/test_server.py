"""The platform's HTTP API (FastAPI TestClient) on SQLite and PostgreSQL: CA, CRL,
directory, enrollment, KMC, every admin endpoint, authentication, rate limiting, the
OpenAPI document, the error format and the absence of secrets in responses and in the
audit log."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
import threading
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from http_helpers import (
    PEM_CT,
    SUBJECT,
    Platform,
    assert_error,
    assert_unauthenticated,
    bearer,
    cert_of,
    csr_pem,
    make_kmc,
    pem,
    platform,
    split_pem,
)
from mstcrypt.crypto import sm4
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.formats.envelope import open_enveloped_key
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.models import (
    AuditCheckpoint,
    AuditRecord,
    CertificateAuthority,
    EnrollmentCode,
    GroupKey,
    MemberKdk,
    ServiceKey,
)
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.server import KeyWrapper
from mstcrypt.pki import CRL, Certificate, build_csr, name, validate_path
from mstcrypt.pki.profiles import POLICY_KMC_ESCROW
from platform_helpers import OPERATOR_ROLES, master_key

with warnings.catch_warnings():  # starlette warns about httpx at import time
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def kmc(database_url: str) -> Iterator[Kmc]:
    k = make_kmc(database_url)
    yield k
    k.db.dispose()


def _platform(kmc: Kmc, data_dir: Path, **settings: Any) -> Iterator[Platform]:
    yield from platform(kmc, data_dir, **settings)


@pytest.fixture
def p(kmc: Kmc, tmp_path: Path) -> Iterator[Platform]:
    yield from _platform(kmc, tmp_path / "data")


@pytest.fixture
def sqlite_p(tmp_path: Path) -> Iterator[Platform]:
    """For tests that do not depend on the database backend."""
    k = make_kmc(f"sqlite:///{tmp_path / 'kmc.db'}")
    yield from _platform(k, tmp_path / "data")
    k.db.dispose()


# ---------------------------------------------------------------- public endpoints ------
def test_health(p: Platform) -> None:
    r = p.c.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["ca"] is True and body["version"]


def test_ca_certificates(p: Platform) -> None:
    r = p.c.get("/ca/chain.pem")
    assert r.status_code == 200 and r.headers["content-type"].startswith(PEM_CT)
    issuing, root = split_pem(r.content)
    assert issuing.is_ca and root.is_ca
    assert issuing.issuer_str == root.subject_str == root.issuer_str
    issuing.verify_signature(root.public_key)
    root.verify_signature(root.public_key)
    for ca, expected in (("root", root), ("issuing", issuing)):
        r = p.c.get(f"/ca/{ca}.pem")
        assert r.status_code == 200 and r.headers["content-type"].startswith(PEM_CT)
        assert Certificate.from_pem(r.content).der == expected.der
    assert "'unknown'" in assert_error(p.c.get("/ca/unknown.pem"), 404, "NotFoundError")["detail"]
    assert_error(p.c.get("/ca/chain2.pem"), 404, "NotFoundError")


def test_crl(p: Platform) -> None:
    issuing, root = split_pem(p.c.get("/ca/chain.pem").content)
    for ca, cert in (("issuing", issuing), ("root", root)):
        r = p.c.get(f"/crl/{ca}.crl")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/pkix-crl"
        crl = CRL.from_der(r.content)
        assert crl.issuer_str == cert.subject_str
        crl.verify_signature(cert.public_key)
        assert crl.number is not None and crl.number >= 1 and not crl.entries
        assert crl.next_update is not None and crl.next_update > crl.this_update
        exe = shutil.which("openssl")
        if exe:
            out = subprocess.run(
                [exe, "crl", "-inform", "DER", "-noout", "-text"],
                input=r.content,
                capture_output=True,
                check=True,
            ).stdout.decode()
            assert "Certificate Revocation List" in out and "No Revoked Certificates" in out
    assert_error(p.c.get("/crl/other.crl"), 404, "NotFoundError")


# ---------------------------------------------------------------- enrollment + directory
def test_enroll_success(p: Platform) -> None:
    terminal, body = p.enroll("alice")
    assert set(body) == {
        "owner",
        "key_id",
        "sign_certificate",
        "encryption_certificate",
        "enveloped_key",
        "chain",
    }
    assert body["owner"] == "alice"
    sign_cert = cert_of(body["sign_certificate"])
    enc_cert = cert_of(body["encryption_certificate"])
    chain = [cert_of(c) for c in body["chain"]]
    assert [c.der for c in chain] == [c.der for c in split_pem(p.c.get("/ca/chain.pem").content)]
    assert sign_cert.public_key == terminal.public_key()
    assert "CN=alice" in sign_cert.subject_str and "CN=alice" in enc_cert.subject_str
    assert "digital_signature" in sign_cert.key_usage
    assert "key_encipherment" in enc_cert.key_usage
    enc_key = open_enveloped_key(base64.b64decode(body["enveloped_key"]), terminal)
    assert enc_key.public_key() == enc_cert.public_key
    crls = [CRL.from_der(p.c.get(f"/crl/{ca}.crl").content) for ca in ("issuing", "root")]
    for cert in (sign_cert, enc_cert):
        path = validate_path(cert, anchors=[chain[-1]], intermediates=chain[:-1], crls=crls)
        assert path[-1].der == chain[-1].der


def test_directory(p: Platform) -> None:
    _, body = p.enroll("alice")
    sign_cert = cert_of(body["sign_certificate"])
    enc_cert = cert_of(body["encryption_certificate"])
    for serial in (f"{sign_cert.serial:x}", f"{sign_cert.serial:X}", f"00{sign_cert.serial:x}"):
        r = p.c.get(f"/directory/certificates/{serial}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(PEM_CT)
        assert r.headers["X-Certificate-Status"] == "active"
        assert Certificate.from_pem(r.content).der == sign_cert.der
    # search by owner: both certificates, with their metadata
    r = p.c.get("/directory/certificates", params={"owner": "alice"})
    assert r.status_code == 200
    found = {e["serial"]: e for e in r.json()}
    assert set(found) == {f"{sign_cert.serial:x}", f"{enc_cert.serial:x}"}
    for e in found.values():
        assert set(e) == {"serial", "subject", "not_after", "pem"}
        assert cert_of(e["pem"]).serial == int(e["serial"], 16)
    # search by subject (exact string) and the limit
    r = p.c.get("/directory/certificates", params={"subject": sign_cert.subject_str})
    assert {e["serial"] for e in r.json()} == set(found)
    r = p.c.get("/directory/certificates", params={"owner": "alice", "limit": 1})
    assert len(r.json()) == 1
    assert p.c.get("/directory/certificates", params={"owner": "nobody"}).json() == []
    # the owner's encryption certificate
    r = p.c.get("/directory/encryption-certificate/alice")
    assert r.status_code == 200 and Certificate.from_pem(r.content).der == enc_cert.der
    # errors
    assert_error(p.c.get("/directory/certificates/abcdef"), 404, "NotFoundError")
    assert_error(p.c.get("/directory/certificates/not-hex"), 404, "NotFoundError")
    assert_error(p.c.get("/directory/certificates"), 409, "PolicyError")
    assert_error(
        p.c.get("/directory/certificates", params={"owner": "alice", "limit": 0}),
        422,
        "ValidationError",
    )
    assert_error(
        p.c.get("/directory/certificates", params={"owner": "alice", "limit": 5000}),
        422,
        "ValidationError",
    )
    assert_error(p.c.get("/directory/encryption-certificate/nobody"), 404, "NotFoundError")


def test_enroll_errors(p: Platform) -> None:
    terminal = SM2PrivateKey.generate()
    good = csr_pem(terminal)
    unknown = "AAAAA-BBBBB-CCCCC-DDDDD"
    # unknown code
    r = p.c.post("/enroll", json={"code": unknown, "csr": good})
    assert "unknown" in assert_error(r, 403, "VerificationError")["detail"]
    # malformed CSRs: a client error, and the code is not consumed
    code = p.code("bob")
    for bad in (
        "-----BEGIN CERTIFICATE REQUEST-----\nzzzz\n-----END CERTIFICATE REQUEST-----\n",
        "-----BEGIN garbage garbage garbage",
        "this is not a certification request",
        pem(b"\x30\x03\x02\x01\x00", "CERTIFICATE REQUEST"),
    ):
        assert_error(p.c.post("/enroll", json={"code": code, "csr": bad}), 400, "DecodeError")
    # a CSR whose self-signature does not verify: 403, code still unused
    der = build_csr(name(CN="x"), terminal.public_key(), terminal.sign).der
    tampered = der[:-10] + bytes([der[-10] ^ 1]) + der[-9:]
    r = p.c.post("/enroll", json={"code": code, "csr": pem(tampered, "CERTIFICATE REQUEST")})
    assert r.status_code in (400, 403), r.text
    assert_error(r, r.status_code)
    other = SM2PrivateKey.generate()
    # the code still works after all those failures (case and whitespace are ignored)
    r = p.c.post("/enroll", json={"code": f"  {code.lower()} ", "csr": good})
    assert r.status_code == 200, r.text
    # reused
    r = p.c.post("/enroll", json={"code": code, "csr": csr_pem(other)})
    assert "already used" in assert_error(r, 403, "VerificationError")["detail"]
    # expired
    short = p.code("carol", ttl_seconds=60)
    real = p.kmc.clock
    p.kmc.clock = lambda: real() + timedelta(minutes=2)
    try:
        r = p.c.post("/enroll", json={"code": short, "csr": csr_pem(other)})
        assert "expired" in assert_error(r, 403, "VerificationError")["detail"]
    finally:
        p.kmc.clock = real
    # malformed request bodies
    for content, ctype in (
        (b"{not json", "application/json"),
        (b"[]", "application/json"),
        (b"code=x&csr=y", "application/x-www-form-urlencoded"),
        (b"", "application/json"),
    ):
        r = p.c.post("/enroll", content=content, headers={"content-type": ctype})
        assert_error(r, 422, "ValidationError")
    for body in ({"code": code}, {"csr": good}, {"code": "ab", "csr": good}, {"code": 1234}):
        assert_error(p.c.post("/enroll", json=body), 422, "ValidationError")
    assert_error(
        p.c.post("/enroll", json={"code": code, "csr": "x" * 20000}), 422, "ValidationError"
    )


def test_enroll_rate_limit(kmc: Kmc, tmp_path: Path) -> None:
    gen = _platform(kmc, tmp_path / "data", enroll_rate=3)
    p = next(gen)
    real = kmc.clock
    fixed = real()
    kmc.clock = lambda: fixed  # all attempts fall in one fixed one-minute window
    try:
        first = p.code("alice")
        spare = p.code("bob")
        t = SM2PrivateKey.generate()
        assert p.c.post("/enroll", json={"code": first, "csr": csr_pem(t)}).status_code == 200
        for _ in range(2):
            r = p.c.post("/enroll", json={"code": "AAAAA-BBBBB-CCCCC-DDDDD", "csr": csr_pem(t)})
            assert_error(r, 403, "VerificationError")
        r = p.c.post("/enroll", json={"code": spare, "csr": csr_pem(t)})
        assert "too many" in assert_error(r, 429, "RateLimitError")["detail"]
        # another address has its own budget
        with TestClient(p.c.app, client=("192.0.2.7", 4242)) as other:
            r = other.post("/enroll", json={"code": "AAAAA-BBBBB-CCCCC-DDDDD", "csr": csr_pem(t)})
            assert_error(r, 403, "VerificationError")
        # the refused attempt did not consume the code: it works in the next window
        kmc.clock = lambda: fixed + timedelta(seconds=61)
        assert p.c.post("/enroll", json={"code": spare, "csr": csr_pem(t)}).status_code == 200
    finally:
        kmc.clock = real
        gen.close()


@pytest.mark.parametrize(("path", "expected"), [("/enroll", 403), ("/login/challenge", 200)])
def test_concurrent_first_requests_never_500(
    kmc: Kmc,
    tmp_path: Path,
    database_url: str,
    request: pytest.FixtureRequest,
    path: str,
    expected: int,
) -> None:
    """Concurrent first requests (a fresh service, a new rate-limit window) must not
    crash: 8 threads x 10 windows."""
    gen = _platform(kmc, tmp_path / "data", enroll_rate=1000)
    p = next(gen)
    t = SM2PrivateKey.generate()
    body = {"code": "AAAAA-BBBBB-CCCCC-DDDDD", "csr": csr_pem(t)}
    real, n = kmc.clock, 8
    statuses: list[int] = []
    try:
        for rnd in range(10):
            base = real() + timedelta(minutes=2 * (rnd + 1))
            kmc.clock = lambda base=base: base
            barrier = threading.Barrier(n)

            def attempt(barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                statuses.append(p.c.post(path, json=body).status_code)

            threads = [threading.Thread(target=attempt) for _ in range(n)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
    finally:
        kmc.clock = real
        gen.close()
    assert len(statuses) == 10 * n
    assert set(statuses) == {expected}, sorted(set(statuses))


# ---------------------------------------------------------------- KMC endpoints ---------
def test_kdk_and_group_keys(p: Platform) -> None:
    """The terminal routes serve the session's owner: their KDK, SM2-encrypted to their
    encryption key, and group keys wrapped under it."""
    members = {who: p.terminal(who) for who in ("alice", "bob", "carol")}
    kdk_versions = {who: 1 for who in members}

    def kdk(who: str) -> bytes:
        r = p.c.get("/kmc/kdk", headers=members[who].headers)
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["member"] == who and d["version"] == kdk_versions[who]
        return members[who].enc_key.decrypt(base64.b64decode(d["ciphertext"]))

    kdks = {who: kdk(who) for who in members}
    assert all(len(k) == 16 for k in kdks.values()) and kdk("alice") == kdks["alice"]
    assert len(set(kdks.values())) == 3

    def get_key(who: str, version: int | None = None, group: str = "g1") -> httpx.Response:
        params = {} if version is None else {"version": version}
        return p.c.get(f"/kmc/groups/{group}/key", params=params, headers=members[who].headers)

    def group_key(who: str, version: int | None = None) -> tuple[int, bytes]:
        r = get_key(who, version)
        assert r.status_code == 200, r.text
        g = r.json()
        assert g["group"] == "g1" and g["member"] == who
        assert g["kdk_version"] == kdk_versions[who]
        aad = f"g1|{g['version']}|{who}".encode()
        nonce, wrapped = bytes.fromhex(g["nonce"]), bytes.fromhex(g["wrapped"])
        return g["version"], sm4.gcm_decrypt(kdks[who], nonce, wrapped, aad)

    # registration officer: create, change
    h = p.auth()
    r = p.c.post("/admin/groups", json={"id": "g1", "members": ["bob", "alice"]}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json() == {"group": "g1", "version": 1, "members": ["alice", "bob"]}
    v1, gk1 = group_key("alice")
    assert v1 == 1 and len(gk1) == 16 and group_key("bob") == (1, gk1)
    # a non-member gets the answer of a missing group
    missing = assert_error(get_key("carol", group="nope"), 404, "NotFoundError")
    probe = assert_error(get_key("carol"), 404, "NotFoundError")
    assert "not a member" in probe["detail"]
    assert probe["detail"].replace("'g1'", "'nope'") == missing["detail"]
    r = p.c.post("/admin/groups/g1/members", json={"add": ["carol"]}, headers=h)
    assert r.json() == {"group": "g1", "version": 2, "members": ["alice", "bob", "carol"]}
    v2, gk2 = group_key("carol")
    assert v2 == 2 and gk2 != gk1 and group_key("alice") == (2, gk2)
    assert group_key("alice", 1) == (1, gk1)
    assert "backward secrecy" in assert_error(get_key("carol", 1), 409, "PolicyError")["detail"]
    r = p.c.post("/admin/groups/g1/members", json={"remove": ["bob"]}, headers=h)
    assert r.json() == {"group": "g1", "version": 3, "members": ["alice", "carol"]}
    assert "not a member" in assert_error(get_key("bob"), 404, "NotFoundError")["detail"]
    assert group_key("alice")[1] not in (gk1, gk2)
    # bob left his last group: his KDK rotated (the old one is useless from now on)
    kdk_versions["bob"] = 2
    assert kdk("bob") != kdks["bob"]
    # errors: unknown versions, bad numbers (never a 500)
    assert_error(get_key("alice", 9), 404, "NotFoundError")
    for bad in ("x", "0", "-1", str(2**31), str(10**20), "1e3"):
        r = p.c.get("/kmc/groups/g1/key", params={"version": bad}, headers=members["alice"].headers)
        assert_error(r, 422, "ValidationError")
    assert_error(get_key("alice", 2**31 - 1), 404, "NotFoundError")
    assert_error(get_key("alice", group="g" * 65), 404, "NotFoundError")
    for body, status in (
        ({"id": "g1", "members": ["alice", "bob"]}, 409),  # exists
        ({"id": "g2", "members": ["alice"]}, 409),  # too small
        ({"id": "g2", "members": ["alice", "nobody"]}, 404),  # not enrolled
        ({"id": "", "members": ["alice", "bob"]}, 422),
        ({"id": "g2"}, 422),
    ):
        assert_error(p.c.post("/admin/groups", json=body, headers=h), status)
    for body, status in (
        ({"add": ["alice"]}, 409),  # already a member
        ({"remove": ["bob"]}, 409),  # not a member
        ({"remove": ["alice"]}, 409),  # would leave one member
        ({"add": ["nobody"]}, 404),  # not enrolled
        ({"add": "alice"}, 422),
    ):
        assert_error(p.c.post("/admin/groups/g1/members", json=body, headers=h), status)
    assert_error(p.c.post("/admin/groups/nope/members", json={"add": ["bob"]}, headers=h), 404)
    # a member whose encryption key is gone has no KDK to receive
    key_id = members["carol"].body["key_id"]
    assert p.c.post(f"/admin/keys/{key_id}/revoke", headers=h).status_code == 200
    carol = p.terminal("carol")  # re-enrolls on a new device, new session
    r = p.c.get("/kmc/kdk", headers=carol.headers)
    assert r.status_code == 200 and r.json()["version"] > 1
    assert p.c.get("/admin/audit/verify", headers=h).json()["ok"] is True


# ---------------------------------------------------------------- admin endpoints -------
def test_admin_enrollment_codes(p: Platform) -> None:
    h = p.auth()
    gw = {"owner": "gw1", "subject": {"CN": "gw1.example"}, "profile": "gateway_sign"}
    # a gateway code names the hosts its certificates are for (peers check SANs only)
    assert (
        "at least one DNS name"
        in assert_error(
            p.c.post("/admin/enrollment-codes", json=gw, headers=h), 409, "PolicyError"
        )["detail"]
    )
    names = {"dns_names": ["GW1.Example", "gw1.example."], "ip_addresses": ["192.0.2.10"]}
    r = p.c.post("/admin/enrollment-codes", json={**gw, **names}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"code", "owner", "expires_at", "names"} and body["owner"] == "gw1"
    assert body["names"] == ["gw1.example", "192.0.2.10"]  # canonical, no repeats
    code = body["code"]
    assert len(code) == 23 and code.count("-") == 3
    t = SM2PrivateKey.generate()
    # a CSR asking for a name the code does not authorise is refused; the code survives
    for asked in (["gw1.example", "evil.example"], ["192.0.2.11"], ["*.example"]):
        bad = build_csr(name(CN="gw"), t.public_key(), t.sign, subject_alt_names=asked)
        r = p.c.post("/enroll", json={"code": code, "csr": bad.pem.decode()})
        assert "does not authorise" in assert_error(r, 403, "UnauthorisedNameError")["detail"]
    r = p.c.post("/enroll", json={"code": code, "csr": csr_pem(t)})
    assert r.status_code == 200, r.text
    sign_cert = cert_of(r.json()["sign_certificate"])
    enc_cert = cert_of(r.json()["encryption_certificate"])
    assert "CN=gw1.example" in sign_cert.subject_str
    for cert in (sign_cert, enc_cert):
        assert cert.subject_alt_name_entries == (("dns", "gw1.example"), ("ip", "192.0.2.10"))
    for body, detail in (
        ({**gw, "dns_names": ["a.*.example"]}, "wildcard"),
        ({**gw, "dns_names": ["10.0.0.1"]}, "looks like an IP address"),
        ({**gw, "ip_addresses": ["gw1.example"]}, "not an IPv4 or IPv6 address"),
        ({**gw, "dns_names": ["bad_name.example"]}, "labels are"),
        ({"owner": "t", "subject": {"CN": "t"}, "dns_names": ["t.example"]}, "no DNS name"),
    ):
        r = p.c.post("/admin/enrollment-codes", json=body, headers=h)
        assert detail in assert_error(r, 409, "PolicyError")["detail"]
    r = p.c.post("/admin/enrollment-codes", json={"owner": "a", "subject": {"CN": "a"}})
    assert_unauthenticated(r)
    # operators get their credentials at the console only
    for op in ("officer-alice", "officer-bob"):
        r = p.c.post(
            "/admin/enrollment-codes", json={"owner": op, "subject": {"CN": op}}, headers=h
        )
        assert "is an operator" in assert_error(r, 409, "PolicyError")["detail"]
    for body, status in (
        ({"owner": "a", "subject": {"CN": "a"}, "profile": "root_ca"}, 409),
        ({"owner": "a", "subject": {"CN": "a"}, "profile": "nonsense"}, 409),
        ({"owner": "a", "subject": {"O": "no common name"}}, 409),
        ({"owner": "a", "subject": {"CN": "a", "bogus": "x"}}, 409),
        ({"owner": "a", "subject": {"CN": "a", "C": "CHINA"}}, 409),
        ({"owner": "a", "subject": {"CN": "a"}, "ttl_seconds": 10}, 422),
        ({"owner": "a", "subject": {"CN": "a"}, "ttl_seconds": 31 * 86400}, 422),
        ({"owner": "", "subject": {"CN": "a"}}, 422),
        ({"owner": "a" * 129, "subject": {"CN": "a"}}, 422),
        ({"subject": {"CN": "a"}}, 422),
        ({"owner": "a", "subject": "CN=a"}, 422),
    ):
        assert_error(p.c.post("/admin/enrollment-codes", json=body, headers=h), status)


def test_admin_revoke_certificate(p: Platform) -> None:
    h = p.auth()
    _, body = p.enroll("alice")
    sign_cert = cert_of(body["sign_certificate"])
    serial = f"{sign_cert.serial:x}"
    before = CRL.from_der(p.c.get("/crl/issuing.crl").content)
    enc_cert = cert_of(body["encryption_certificate"])
    enc_serial = f"{enc_cert.serial:x}"
    r = p.c.post(
        f"/admin/certificates/{serial}/revoke", json={"reason": "key_compromise"}, headers=h
    )
    # a compromised device: the dual-certificate pair goes together
    assert r.status_code == 200, r.text
    assert r.json() == {
        "serial": serial,
        "status": "revoked",
        "revoked": sorted([serial, enc_serial]),
    }
    for sn in (serial, enc_serial):
        assert p.c.get(f"/directory/certificates/{sn}").headers["X-Certificate-Status"] == "revoked"
    crl = CRL.from_der(p.c.get("/crl/issuing.crl").content)
    assert crl.number is not None and before.number is not None and crl.number > before.number
    for cert in (sign_cert, enc_cert):
        entry = crl.is_revoked(cert.serial)
        assert entry is not None and entry.reason == "key_compromise"
    r = p.c.post(f"/admin/certificates/{serial}/revoke", json={}, headers=h)
    assert "already revoked" in assert_error(r, 409, "PolicyError")["detail"]
    r = p.c.post(f"/admin/certificates/{enc_serial}/revoke", json={}, headers=h)
    assert "already revoked" in assert_error(r, 409, "PolicyError")["detail"]
    # other reasons revoke just the one certificate
    _, body = p.enroll("bob")
    bob_sign, bob_enc = cert_of(body["sign_certificate"]), cert_of(body["encryption_certificate"])
    r = p.c.post(f"/admin/certificates/{bob_sign.serial:x}/revoke", json={}, headers=h)
    assert r.json()["revoked"] == [f"{bob_sign.serial:x}"]
    r = p.c.get(f"/directory/certificates/{bob_enc.serial:x}")
    assert r.headers["X-Certificate-Status"] == "active"
    r = p.c.post(f"/admin/certificates/{enc_serial}/revoke", json={"reason": "bad"}, headers=h)
    assert "unknown revocation reason" in assert_error(r, 409)["detail"]
    root = split_pem(p.c.get("/ca/chain.pem").content)[1]
    r = p.c.post(f"/admin/certificates/{root.serial:x}/revoke", json={}, headers=h)
    assert "CA certificates" in assert_error(r, 409)["detail"]
    assert_error(p.c.post("/admin/certificates/abc/revoke", json={}, headers=h), 404)
    assert_error(p.c.post(f"/admin/certificates/{enc_serial}/revoke", headers=h), 422)


def test_admin_key_lifecycle(p: Platform) -> None:
    h = p.auth()
    terminal, body = p.enroll("alice")
    kid = body["key_id"]
    old_enc = cert_of(body["encryption_certificate"])

    def op(key_id: str, name_: str, **kw: Any) -> httpx.Response:
        return p.c.post(f"/admin/keys/{key_id}/{name_}", headers=h, **kw)

    def states() -> dict[str, str]:
        r = p.c.get("/admin/keys", params={"owner": "alice"}, headers=h)
        assert r.status_code == 200
        return {k["id"]: k["state"] for k in r.json()}

    assert states() == {kid: "active"}
    # illegal transitions from active
    assert "cannot destroy" in assert_error(op(kid, "destroy"), 409, "PolicyError")["detail"]
    assert "cannot archive" in assert_error(op(kid, "archive"), 409, "PolicyError")["detail"]
    # rotate
    rot = {
        "owner": "alice",
        "terminal_public_key": terminal.public_key().to_bytes().hex(),
        "subject": SUBJECT,
    }
    r = p.c.post("/admin/keys/rotate", json=rot, headers=h)
    assert r.status_code == 200, r.text
    new = r.json()
    new_cert = cert_of(new["encryption_certificate"])
    new_key = open_enveloped_key(base64.b64decode(new["enveloped_key"]), terminal)
    assert new_key.public_key() == new_cert.public_key
    assert states() == {kid: "decrypt_only", new["key_id"]: "active"}
    directory = p.c.get("/directory/encryption-certificate/alice").content
    assert Certificate.from_pem(directory).der == new_cert.der
    entry = CRL.from_der(p.c.get("/crl/issuing.crl").content).is_revoked(old_enc.serial)
    assert entry is not None and entry.reason == "superseded"
    # decrypt_only -> archived -> destroyed, then nothing more
    for name_ in ("archive", "destroy"):
        r = op(kid, name_)
        assert r.json() == {"key_id": kid, "operation": name_, "status": "done"}
    keys = p.c.get("/admin/keys", params={"owner": "alice"}, headers=h).json()
    old = next(k for k in keys if k["id"] == kid)
    assert old["state"] == "destroyed" and old["has_material"] is False
    assert old["public_key"] == old_enc.public_key.to_bytes().hex()
    for name_ in ("archive", "destroy", "revoke"):
        assert_error(op(kid, name_), 409, "PolicyError")
    # unknown operation (each operation is its own route, per role) / unknown key
    assert_error(op(kid, "frobnicate"), 404, "NotFound")
    assert_error(op("nokey", "archive"), 404, "NotFoundError")
    # revoke the active key: its certificate is revoked, no encryption certificate left
    r = op(new["key_id"], "revoke", json={"reason": "affiliation_changed"})
    assert r.status_code == 200, r.text
    assert states()[new["key_id"]] == "revoked"
    crl = CRL.from_der(p.c.get("/crl/issuing.crl").content)
    entry = crl.is_revoked(new_cert.serial)
    assert entry is not None and entry.reason == "affiliation_changed"
    # the holder is gone: the signing certificate of the pair goes too
    entry = crl.is_revoked(cert_of(body["sign_certificate"]).serial)
    assert entry is not None and entry.reason == "affiliation_changed"
    assert_error(p.c.get("/directory/encryption-certificate/alice"), 404)
    r = p.c.post("/admin/keys/rotate", json=rot, headers=h)
    assert "no active encryption key" in assert_error(r, 409)["detail"]
    assert_error(op(new["key_id"], "revoke"), 409)  # already revoked
    assert_error(op(new["key_id"], "revoke", json={"reason": "because"}), 409)
    assert op(new["key_id"], "destroy").status_code == 200  # revoked -> destroyed
    # rotate input errors
    for bad, status in (
        ({**rot, "terminal_public_key": "zz" * 65}, 400),
        ({**rot, "terminal_public_key": "04" + "00" * 64}, 400),
        ({**rot, "terminal_public_key": "zz"}, 422),
        ({**rot, "owner": ""}, 422),
        ({k: v for k, v in rot.items() if k != "subject"}, 422),
    ):
        assert_error(p.c.post("/admin/keys/rotate", json=bad, headers=h), status)
    assert_error(p.c.get("/admin/keys", headers=h), 422, "ValidationError")
    assert p.c.get("/admin/keys", params={"owner": "nobody"}, headers=h).json() == []


def test_admin_generate_and_distribute(p: Platform) -> None:
    h = p.auth()
    r = p.c.post("/admin/keys", json={"owner": "erin"}, headers=h)
    assert r.status_code == 200, r.text
    kid = r.json()["key_id"]
    keys = p.c.get("/admin/keys", params={"owner": "erin"}, headers=h).json()
    assert [(k["id"], k["state"], k["version"], k["has_material"]) for k in keys] == [
        (kid, "generated", 1, True)
    ]
    assert (
        "cannot archive"
        in assert_error(p.c.post(f"/admin/keys/{kid}/archive", headers=h), 409)["detail"]
    )
    terminal = SM2PrivateKey.generate()
    dist = {"terminal_public_key": terminal.public_key().to_bytes().hex(), "subject": {"CN": "e"}}
    for bad, status in (
        ({**dist, "terminal_public_key": "not hex" + "0" * 123}, 400),
        ({**dist, "terminal_public_key": "04" + "01" * 64}, 400),  # not on the curve
        ({**dist, "terminal_public_key": "0401"}, 422),
        ({**dist, "subject": {"CN": "e", "bogus": "1"}}, 409),
        ({"subject": {"CN": "e"}}, 422),
    ):
        assert_error(p.c.post(f"/admin/keys/{kid}/distribute", json=bad, headers=h), status)
    r = p.c.post(f"/admin/keys/{kid}/distribute", json=dist, headers=h)
    assert r.status_code == 200, r.text
    cert = cert_of(r.json()["encryption_certificate"])
    key = open_enveloped_key(base64.b64decode(r.json()["enveloped_key"]), terminal)
    assert key.public_key() == cert.public_key
    assert p.c.get("/admin/keys", params={"owner": "erin"}, headers=h).json()[0]["state"] == (
        "active"
    )
    r = p.c.post(f"/admin/keys/{kid}/distribute", json=dist, headers=h)
    assert "cannot distribute" in assert_error(r, 409, "PolicyError")["detail"]
    assert_error(p.c.post("/admin/keys/nokey/distribute", json=dist, headers=h), 404)
    assert_error(p.c.post("/admin/keys", json={"owner": ""}, headers=h), 422)
    # revoke without a body: reason defaults to key_compromise
    assert p.c.post(f"/admin/keys/{kid}/revoke", headers=h).status_code == 200
    entry = CRL.from_der(p.c.get("/crl/issuing.crl").content).is_revoked(cert.serial)
    assert entry is not None and entry.reason == "key_compromise"


def _approve(p: Platform, rid: str, operator: str, fingerprint: str) -> httpx.Response:
    return p.c.post(
        f"/admin/recovery/{rid}/approve",
        json={"recipient_fingerprint": fingerprint},
        headers=p.auth(operator),
    )


def test_admin_recovery_dual_control(p: Platform) -> None:
    _, body = p.enroll("alice")
    escrowed = cert_of(body["encryption_certificate"]).public_key
    new_terminal = SM2PrivateKey.generate()
    fingerprint = new_terminal.public_key().fingerprint().hex()
    req = {
        "key_id": body["key_id"],
        "recipient_public_key": new_terminal.public_key().to_bytes().hex(),
        "reason": "device lost",
    }
    r = p.c.post("/admin/recovery", json=req, headers=p.auth("alice"))
    assert r.status_code == 200, r.text
    rid = r.json()["request_id"]
    # what the second officer reviews
    review = {
        "id": rid,
        "kind": "key",
        "key_id": body["key_id"],
        "owner": "alice",
        "requested_by": "officer-alice",
        "reason": "device lost",
        "recipient_fingerprint": fingerprint,
        "status": "pending",
        "approvals": [],
        "approvals_required": 1,
        "enveloped_key": None,
        "file_key_ciphertext": None,
    }
    assert {k: v for k, v in r.json().items() if k != "created_at"} == {
        "request_id": rid,
        **review,
    }
    r = p.c.get(f"/admin/recovery/{rid}", headers=p.auth("bob"))
    assert {k: v for k, v in r.json().items() if k != "created_at"} == review
    # the requester never approves, not even quoting the right fingerprint
    r = _approve(p, rid, "alice", fingerprint)
    assert "dual control" in assert_error(r, 409, "PolicyError")["detail"]
    # the approver quotes the recipient's fingerprint: a wrong one is refused
    r = _approve(p, rid, "bob", "00" * 32)
    assert "fingerprint" in assert_error(r, 409, "PolicyError")["detail"]
    r = p.c.post(f"/admin/recovery/{rid}/approve", headers=p.auth("bob"))
    assert_error(r, 422, "ValidationError")  # no fingerprint at all
    assert p.c.get(f"/admin/recovery/{rid}", headers=p.auth()).json()["status"] == "pending"
    r = _approve(p, rid, "bob", fingerprint.upper())
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "released" and done["approvals"] == ["officer-bob"]
    key = open_enveloped_key(base64.b64decode(done["enveloped_key"]), new_terminal)
    assert key.public_key() == escrowed
    assert p.c.get(f"/admin/recovery/{rid}", headers=p.auth()).json() == done
    r = _approve(p, rid, "bob", fingerprint)
    assert "released" in assert_error(r, 409)["detail"]
    # errors
    assert_error(_approve(p, "nope", "alice", fingerprint), 404)
    assert_error(p.c.get("/admin/recovery/nope", headers=p.auth()), 404)
    for bad, status in (
        ({**req, "key_id": "nokey"}, 404),
        ({**req, "recipient_public_key": "xyz"}, 422),
        ({**req, "recipient_public_key": "zz" * 65}, 400),
        ({**req, "reason": "x"}, 422),
        ({"key_id": body["key_id"]}, 422),
    ):
        assert_error(p.c.post("/admin/recovery", json=bad, headers=p.auth()), status)
    for fp in ("ab", "zz" * 32, "00" * 33):
        assert_error(_approve(p, rid, "bob", fp), 422 if len(fp) != 64 else 409)
    # a destroyed key cannot be recovered
    h = p.auth()
    assert p.c.post(f"/admin/keys/{body['key_id']}/revoke", headers=h).status_code == 200
    assert p.c.post(f"/admin/keys/{body['key_id']}/destroy", headers=h).status_code == 200
    r = p.c.post("/admin/recovery", json=req, headers=h)
    assert "cannot recover" in assert_error(r, 409)["detail"]


def test_file_recovery_dual_control(p: Platform) -> None:
    # the escrow key is a certificate under the CA, for the escrow purpose only
    r = p.c.get("/ca/escrow.pem")
    assert r.status_code == 200 and r.headers["content-type"].startswith(PEM_CT)
    escrow_cert = Certificate.from_pem(r.content)
    issuing, root = split_pem(p.c.get("/ca/chain.pem").content)
    validate_path(escrow_cert, anchors=[root], intermediates=[issuing], crls=p.crls())
    assert escrow_cert.policies == (POLICY_KMC_ESCROW,)
    assert "key_encipherment" in escrow_cert.key_usage
    assert "digital_signature" not in escrow_cert.key_usage
    fek = secrets.token_bytes(16)
    escrow = escrow_cert.public_key.encrypt(fek)
    new_terminal = SM2PrivateKey.generate()
    fingerprint = new_terminal.public_key().fingerprint().hex()
    req = {
        "escrow_stanza": base64.b64encode(escrow).decode(),
        "recipient_public_key": new_terminal.public_key().to_bytes().hex(),
        "reason": "phone lost",
    }
    r = p.c.post("/admin/file-recovery", json=req, headers=p.auth("alice"))
    assert r.status_code == 200, r.text
    first = r.json()
    rid = first["request_id"]
    assert first["status"] == "pending" and first["kind"] == "file"
    assert first["requested_by"] == "officer-alice" and first["owner"] is None
    assert first["recipient_fingerprint"] == fingerprint
    assert first["file_key_ciphertext"] is None
    r = _approve(p, rid, "alice", fingerprint)
    assert "dual control" in assert_error(r, 409)["detail"]
    r = _approve(p, rid, "bob", fingerprint)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "released" and done["enveloped_key"] is None
    assert new_terminal.decrypt(base64.b64decode(done["file_key_ciphertext"])) == fek
    # errors: not base64, not an SM2Cipher, a bad recipient key, a stanza for another key
    for bad, status in (
        ({**req, "escrow_stanza": "@@not base64@@"}, 400),
        ({**req, "escrow_stanza": base64.b64encode(b"junk").decode()}, 409),
        ({**req, "recipient_public_key": "04"}, 422),
        ({**req, "recipient_public_key": "04" + "01" * 64}, 400),
        ({**req, "reason": ""}, 422),
        ({"reason": "lost"}, 422),
    ):
        assert_error(p.c.post("/admin/file-recovery", json=bad, headers=p.auth()), status)
    other = SM2PrivateKey.generate().public_key().encrypt(fek)
    r = p.c.post(
        "/admin/file-recovery",
        json={**req, "escrow_stanza": base64.b64encode(other).decode()},
        headers=p.auth(),
    )
    rid2 = r.json()["request_id"]
    r = _approve(p, rid2, "bob", fingerprint)
    assert "not made for this KMC" in assert_error(r, 409)["detail"]
    assert p.c.get(f"/admin/recovery/{rid2}", headers=p.auth()).json()["status"] == "pending"


def test_admin_backup(p: Platform, tmp_path: Path) -> None:
    _, body = p.enroll("alice")
    r = p.c.post("/admin/backup", json={"passphrase": "correct horse battery"}, headers=p.auth())
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    blob = r.content
    assert blob.startswith(b"MSTKMCB2") and len(blob) > 1000  # format 2: streamed chunks
    restored = Kmc(Database(f"sqlite:///{tmp_path / 'restored.db'}"), p.kmc.keystore)
    restored.create_schema()
    try:
        assert restored.restore(blob, "correct horse battery", actor="test") > 0
        enc = cert_of(body["encryption_certificate"])
        assert restored.encryption_certificate("alice").der == enc.der
        assert restored.verify_audit().ok
    finally:
        restored.db.dispose()
    for bad in ({"passphrase": "short"}, {}, {"passphrase": "x" * 300}):
        assert_error(p.c.post("/admin/backup", json=bad, headers=p.auth()), 422)


def test_admin_audit_checkpoint_and_verify(p: Platform) -> None:
    h = p.auth()
    p.enroll("alice")
    r = p.c.post("/admin/audit/checkpoint", headers=h)
    assert r.status_code == 200
    seq = r.json()["signed_seq"]
    assert isinstance(seq, int) and seq >= 3
    assert p.c.post("/admin/audit/checkpoint", headers=h).json() == {"signed_seq": None}
    # the endpoint verifies incrementally: the checkpoint's signature, then what follows
    r = p.c.get("/admin/audit/verify", headers=p.auth("bob"))
    assert r.json() == {
        "ok": True,
        "mode": "incremental",
        "records": 0,
        "checkpoints": 1,
        "anchor_seq": seq,
        "from_seq": 0,
        "to_seq": 0,
        "head_seq": seq,
        "complete": True,
        "first_bad_seq": None,
        "problem": "",
        "notes": [],
    }
    p.enroll("bob")
    r = p.c.get("/admin/audit/verify", headers=h).json()
    assert r["ok"] is True and r["anchor_seq"] == seq and r["from_seq"] == seq + 1
    assert r["records"] == r["head_seq"] - seq > 0
    # an edit after the checkpoint is caught by the endpoint ...
    with p.kmc.db.tx() as s:
        s.execute(text(f"UPDATE audit_log SET actor = 'mallory' WHERE seq = {seq + 1}"))
    r = p.c.get("/admin/audit/verify", headers=h).json()
    assert r["ok"] is False and r["first_bad_seq"] == seq + 1 and "edited" in r["problem"]
    # ... and the audit key refuses to sign a broken chain
    r = p.c.post("/admin/audit/checkpoint", headers=h)
    assert "no checkpoint signed" in assert_error(r, 409, "AuditChainError")["detail"]


def test_admin_audit_verify_is_bounded(p: Platform) -> None:
    """Without a checkpoint the endpoint recomputes at most MSTCRYPT_AUDIT_VERIFY_LIMIT
    records and says it did not reach the head; an edit before the newest checkpoint is
    the console's full verification's business."""
    p.enroll("alice")
    p.settings.audit_verify_limit = 2
    r = p.c.get("/admin/audit/verify", headers=p.auth()).json()
    assert r["ok"] is True and r["complete"] is False and r["anchor_seq"] is None
    assert (r["from_seq"], r["to_seq"], r["records"]) == (1, 2, 2) and r["head_seq"] > 2
    assert "stopped after 2 records" in r["notes"][-1]
    seq = p.c.post("/admin/audit/checkpoint", headers=p.auth()).json()["signed_seq"]
    with p.kmc.db.tx() as s:
        s.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2"))
    assert p.c.get("/admin/audit/verify", headers=p.auth()).json()["ok"] is True
    full = p.kmc.verify_audit()
    assert not full.ok and full.first_bad_seq == 2 and seq > 2


# ---------------------------------------------------------------- authentication --------
# Which caller reaches which route: tests/test_access.py (the route x caller table).
def test_operator_credential_rotation(sqlite_p: Platform) -> None:
    p = sqlite_p
    old_bob = p.ops["bob"]
    # replaced at the console before it was ever used
    new_bob = p.kmc.operators.add_static("officer-bob", OPERATOR_ROLES)
    assert_unauthenticated(p.c.get("/admin/audit/verify", headers=bearer(old_bob)))
    r = p.c.get("/admin/audit/verify", headers=bearer(new_bob))
    assert r.status_code == 200


def test_replaced_operator_credential_is_refused(sqlite_p: Platform) -> None:
    p = sqlite_p
    old = p.ops["alice"]
    assert p.c.get("/admin/audit/verify", headers=p.auth()).status_code == 200  # now cached
    p.kmc.operators.add_static("officer-alice", OPERATOR_ROLES)  # rotate alice's credential
    assert_unauthenticated(p.c.get("/admin/audit/verify", headers=bearer(old)))


def test_disabled_operator_is_refused(sqlite_p: Platform) -> None:
    p = sqlite_p
    assert p.c.get("/admin/audit/verify", headers=p.auth()).status_code == 200  # now cached
    p.kmc.operators.set_status("officer-alice", "disabled")
    r = p.c.get("/admin/audit/verify", headers=p.auth())
    assert "disabled" in assert_unauthenticated(r)["detail"]
    p.kmc.operators.set_status("officer-alice", "active")
    assert p.c.get("/admin/audit/verify", headers=p.auth()).status_code == 200


def test_role_change_takes_effect_at_once(sqlite_p: Platform) -> None:
    p = sqlite_p
    assert p.c.post("/admin/audit/checkpoint", headers=p.auth()).status_code == 200
    p.kmc.operators.set_roles("officer-alice", ["registration_officer"])
    r = p.c.post("/admin/audit/checkpoint", headers=p.auth())
    assert "lacks the role" in assert_error(r, 403, "AccessDeniedError")["detail"]


def test_static_credentials_disabled_by_default(kmc: Kmc, tmp_path: Path) -> None:
    gen = _platform(kmc, tmp_path / "data", static_operators=False)
    p = next(gen)
    try:
        r = p.c.get("/admin/audit/verify", headers=p.auth())
        assert "static credentials are disabled" in assert_unauthenticated(r)["detail"]
    finally:
        gen.close()


# ---------------------------------------------------------------- certificate login -----
def test_certificate_login_and_operator_sessions(p: Platform) -> None:
    r = p.c.get("/login/certificate.pem")
    assert r.status_code == 200 and r.headers["content-type"].startswith(PEM_CT)
    issuing, root = split_pem(p.c.get("/ca/chain.pem").content)
    login_cert = Certificate.from_pem(r.content)
    validate_path(login_cert, anchors=[root], intermediates=[issuing], crls=p.crls())
    terminal, body = p.enroll("zhang")
    cert = cert_of(body["sign_certificate"])
    r = p.login(terminal, cert)
    assert r.status_code == 200, r.text
    login = r.json()
    assert login["owner"] == "zhang" and "CN=zhang" in login["subject"]
    token = login["session_token"]
    assert token.startswith("MST1.")
    claims = p.c.get("/login/session", headers=bearer(token)).json()
    assert claims["owner"] == "zhang" and claims["serial"] == f"{cert.serial:x}"
    # a user who is not a registered operator cannot use the admin API ...
    r = p.c.get("/admin/audit/verify", headers=bearer(token))
    assert "not an operator" in assert_unauthenticated(r)["detail"]
    # ... an operator registered at the console and enrolled with the operator code can,
    # with the same kind of session token, within their roles
    op = p.cert_operator("op-zhang", ["administrator", "registration_officer"])
    assert p.c.get("/login/session", headers=op.headers).json()["owner"] == "op-zhang"
    assert p.c.get("/admin/audit/verify", headers=op.headers).json()["ok"] is True
    r = p.c.post(
        "/admin/login-passwords/zhang", json={"password": "long enough pw"}, headers=op.headers
    )
    assert r.json() == {"owner": "zhang", "status": "password set"}
    r = p.c.post("/admin/login-passwords/zhang", json={"password": "short"}, headers=op.headers)
    assert_error(r, 422, "ValidationError")
    r = p.c.post("/admin/recovery", json={}, headers=op.headers)
    assert "lacks the role" in assert_error(r, 403, "AccessDeniedError")["detail"]
    # logout revokes the session everywhere
    bearer_op = op.headers
    assert p.c.post("/login/logout", headers=bearer_op).json() == {"status": "logged out"}
    assert_unauthenticated(p.c.get("/login/session", headers=bearer_op))
    assert_unauthenticated(p.c.get("/admin/audit/verify", headers=bearer_op))
    assert_unauthenticated(p.c.post("/login/logout", headers=bearer_op))
    # bad session tokens
    for headers in ({}, bearer("MST1.garbage"), {"Authorization": token}):
        assert_unauthenticated(p.c.get("/login/session", headers=headers))
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert_unauthenticated(p.c.get("/login/session", headers=bearer(forged)))
    # a revoked certificate cannot log in; malformed responses are client errors
    serial = f"{cert.serial:x}"
    p.c.post(f"/admin/certificates/{serial}/revoke", json={}, headers=p.auth())
    r = p.login(terminal, cert)
    assert r.status_code in (401, 403), r.text
    assert_error(r, r.status_code)
    assert_error(p.c.post("/login/response", json={"response": {"x": 1}}), 403, "LoginError")
    assert_error(p.c.post("/login/response", json={}), 422, "ValidationError")
    assert p.c.get("/admin/audit/verify", headers=p.auth()).json()["ok"] is True


# ---------------------------------------------------------------- OpenAPI, error format -
def test_openapi_and_docs(sqlite_p: Platform) -> None:
    r = sqlite_p.c.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["info"]["title"] == "mstcrypt platform"
    # the same document the app builds (tests/test_access.py checks it route by route)
    assert doc["paths"] == json.loads(json.dumps(sqlite_p.c.app.openapi()["paths"]))
    assert "/kmc/kdk" in doc["paths"] and "/ca/escrow.pem" in doc["paths"]
    r = sqlite_p.c.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "swagger" in r.text.lower() and "/openapi.json" in r.text


def test_unknown_route_error_format(sqlite_p: Platform) -> None:
    assert_error(sqlite_p.c.get("/no/such/endpoint"), 404)
    assert_error(sqlite_p.c.delete("/health"), 405)


def test_nul_bytes_are_client_errors(
    p: Platform, database_url: str, request: pytest.FixtureRequest
) -> None:
    h = p.auth()
    alice = p.terminal("alice")
    responses = [
        p.c.get("/directory/certificates/ab%00cd"),
        p.c.get("/directory/certificates", params={"owner": "a\x00b"}),
        p.c.get("/directory/encryption-certificate/a%00b"),
        p.c.get("/kmc/groups/a%00b/key", headers=alice.headers),
        p.c.get("/admin/keys", params={"owner": "a\x00b"}, headers=h),
        p.c.get("/admin/recovery/a%00b", headers=h),
        p.c.post("/admin/keys", json={"owner": "a\x00b"}, headers=h),
        p.c.post("/admin/groups", json={"id": "g\x00", "members": ["a", "b"]}, headers=h),
        p.c.post(
            "/admin/enrollment-codes", json={"owner": "a\x00", "subject": {"CN": "a"}}, headers=h
        ),
    ]
    assert [r.status_code for r in responses if r.status_code >= 500] == []


# ---------------------------------------------------------------- no secrets anywhere ---
def test_no_secret_in_responses_or_audit(p: Platform) -> None:
    h = p.auth()
    codes, terminals = [], []
    secrets_: list[bytes] = []
    kdks: dict[str, bytes] = {}
    sessions: dict[str, str] = {}
    for who in ("alice", "bob"):
        code = p.code(who)
        codes.append(code)
        t = p.enroll_with(who, code)
        terminals.append(t.key)
        sessions[who] = t.token
        secrets_ += [t.key.private_bytes(), t.enc_key.private_bytes()]
        ct = p.c.get("/kmc/kdk", headers=t.headers).json()["ciphertext"]
        kdks[who] = t.enc_key.decrypt(base64.b64decode(ct))
        secrets_.append(kdks[who])
    unused = p.code("carol")  # never used
    codes.append(unused)
    r = p.c.post("/admin/groups", json={"id": "g", "members": ["alice", "bob"]}, headers=h)
    assert r.status_code == 200
    g = p.c.get("/kmc/groups/g/key", headers=bearer(sessions["alice"])).json()
    secrets_.append(
        sm4.gcm_decrypt(
            kdks["alice"], bytes.fromhex(g["nonce"]), bytes.fromhex(g["wrapped"]), b"g|1|alice"
        )
    )
    kid = p.c.post("/admin/keys", json={"owner": "dave"}, headers=h).json()["key_id"]
    dist = {"terminal_public_key": terminals[0].public_key().to_bytes().hex(), "subject": SUBJECT}
    p.c.post(f"/admin/keys/{kid}/distribute", json=dist, headers=h)
    rot = {**dist, "owner": "alice"}
    assert p.c.post("/admin/keys/rotate", json=rot, headers=h).status_code == 200
    req = {"key_id": kid, "recipient_public_key": dist["terminal_public_key"], "reason": "test"}
    rid = p.c.post("/admin/recovery", json=req, headers=h).json()["request_id"]
    fp = terminals[0].public_key().fingerprint().hex()
    r = p.c.post(
        f"/admin/recovery/{rid}/approve", json={"recipient_fingerprint": fp}, headers=p.auth("bob")
    )
    assert r.json()["status"] == "released"
    p.c.post("/admin/login-passwords/alice", json={"password": "a long password"}, headers=h)
    passphrase = "correct horse battery staple"
    assert p.c.post("/admin/backup", json={"passphrase": passphrase}, headers=h).status_code == 200
    p.c.post("/enroll", json={"code": codes[0], "csr": csr_pem(terminals[0])})  # reuse: 403
    p.c.post("/admin/audit/checkpoint", headers=h)
    assert p.c.get("/admin/audit/verify", headers=h).json()["ok"] is True
    # server-side secrets, unwrapped from the SS-CC's blobs: CA keys, service keys
    # (audit, key escrow, login), every KDK and group key
    wrapper = KeyWrapper(master_key())
    with p.kmc.db.tx() as s:
        for ca in s.scalars(select(CertificateAuthority)):
            secrets_.append(wrapper.unwrap(ca.key_blob, f"ca:{ca.name}".encode()).private_bytes())
        services = list(s.scalars(select(ServiceKey)))
        assert {"audit", "file-recovery", "login"} <= {k.name for k in services}
        for sk in services:
            ctx = f"service:{sk.name}".encode()
            secrets_.append(wrapper.unwrap(sk.key_blob, ctx).private_bytes())
        for kdk in s.scalars(select(MemberKdk)):
            ctx = f"kdk:{kdk.member}:{kdk.version}".encode()
            secrets_.append(wrapper.unwrap_bytes(kdk.key_blob, ctx))
        for gk in s.scalars(select(GroupKey)):
            secrets_.append(
                wrapper.unwrap_bytes(gk.key_blob, f"gk:{gk.group_id}:{gk.version}".encode())
            )
    texts = [*codes, *p.ops.values(), passphrase, "a long password"]
    needles_text = [*texts, *(c.replace("-", "") for c in codes)]
    for raw in secrets_:
        needles_text += [raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode()]

    # every response the platform gave during the flow
    assert len(p.c.responses) > 15
    for r in p.c.responses:
        body = r.content
        # a new code is shown once, to the operator who created it, and nowhere else
        own_code = r.json()["code"] if r.request.url.path == "/admin/enrollment-codes" else None
        if own_code:
            body = body.replace(own_code.encode(), b"")
        for raw in secrets_:
            assert raw not in body, r.request.url
        for needle in needles_text:
            assert needle.encode() not in body, (r.request.url, needle[:8])
            assert needle not in json.dumps(dict(r.headers))
    # every audit record and checkpoint
    with p.kmc.db.tx() as s:
        rows = [
            json.dumps({c.name: getattr(a, c.name) for c in AuditRecord.__table__.columns})
            for a in s.scalars(select(AuditRecord))
        ]
        rows += [
            f"{cp.seq}|{cp.hash}|{cp.signature.hex()}" for cp in s.scalars(select(AuditCheckpoint))
        ]
        stored_codes = [repr(e.__dict__) for e in s.scalars(select(EnrollmentCode))]
    assert len(rows) > 20
    dump = "\n".join(rows)
    for needle in needles_text:
        assert needle not in dump, needle[:8]
    # session tokens are bearer secrets too: never in the audit log
    for token in sessions.values():
        assert token not in dump and token.split(".")[2] not in dump
    # enrollment codes are stored only as hashes
    for needle in codes:
        assert all(needle not in row and needle.replace("-", "") not in row for row in stored_codes)
