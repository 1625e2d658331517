"""The platform's OCSP responder (mstcrypt.kmc.ocsp) and its HTTP binding: statuses,
pre-signed responses and when they are re-signed, the delegated responder and its
rotation, POST/GET /ocsp with caching headers and rate limits, the client's
``certificate_status`` and OCSP-based recipient validation — on SQLite and PostgreSQL.
Attacks: a revoked certificate must never be answered "good" from the cache, requests
that are not OCSP are refused, and a flood is cut off."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from http_helpers import Platform, platform
from mstcrypt.client import Client
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.models import IssuedCertificate, OcspResponseRecord
from mstcrypt.kmc.ocsp import RESPONDER_CN
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import Certificate, CertificateError, Profile
from mstcrypt.pki import _common as c
from mstcrypt.pki.ocsp import (
    OID_OCSP_NOCHECK,
    CertId,
    OcspError,
    OcspResponse,
    build_request,
    new_nonce,
    ocsp_urls,
    verify_response,
)
from platform_helpers import master_key

OCSP_URL = "http://testserver/ocsp"


class Clock:
    def __init__(self) -> None:
        self.now = c.now()

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def kmc(database_url: str) -> Iterator[Kmc]:
    k = Kmc(
        Database(database_url),
        SoftKeyStore(master_key()),
        crl_base_url="http://testserver",
        ocsp_url=OCSP_URL,
    )
    k.create_schema()
    k.init_ca(actor="test")
    yield k
    k.ocsp.dispose()
    k.db.dispose()


def issue(kmc: Kmc, cn: str = "alice", profile: Profile = Profile.DEVICE_SIGN) -> Certificate:
    key = SM2PrivateKey.generate()
    with kmc.ctx.unit("test") as u:
        cert = kmc.ca.issue(
            u,
            public_key=key.public_key(),
            subject={"CN": cn},
            profile=profile,
            owner=cn,
            usage="sign",
            key_id=None,
        )
        u.audit("test.issue", cn)
    return cert


def ask(
    kmc: Kmc, cert: Certificate | int, *, alg: str = "sm3", nonce: bytes | None = None
) -> tuple[Any, Any]:
    issuing = kmc.chain()[0]
    cid = CertId.for_certificate(cert, issuing, alg)
    answer = kmc.ocsp.respond(build_request([cid], nonce=nonce))
    return answer, cid


def status_of(kmc: Kmc, cert: Certificate, **kw: Any) -> str:
    answer, cid = ask(kmc, cert, **kw)
    single = verify_response(
        answer.der, issuer=kmc.chain()[0], cert_id=cid, nonce=kw.get("nonce"), at=kmc.clock()
    )
    return single.status


# ---------------------------------------------------------------- the responder -----------
def test_good_revoked_unknown_and_errors(kmc: Kmc) -> None:
    cert = issue(kmc)
    assert ocsp_urls(cert) == (OCSP_URL,)
    assert status_of(kmc, cert) == "good"
    kmc.revoke_certificate(f"{cert.serial:x}", reason="key_compromise", actor="test")
    answer, cid = ask(kmc, cert)
    single = verify_response(answer.der, issuer=kmc.chain()[0], cert_id=cid)
    assert single.status == "revoked" and single.reason == "key_compromise"
    row_time = kmc.directory.certificate_status(f"{cert.serial:x}")
    assert row_time == "revoked"
    # a serial this CA never issued
    answer, cid = ask(kmc, 0x1234567)
    assert verify_response(answer.der, issuer=kmc.chain()[0], cert_id=cid).status == "unknown"
    # the issuing CA's own certificate (issued by the root): another CA's business
    root, issuing = kmc.chain()[1], kmc.chain()[0]
    req = build_request([CertId.for_certificate(issuing, root)])
    assert OcspResponse.from_der(kmc.ocsp.respond(req).der).status == "unauthorized"
    # not an OCSP request
    for junk in (b"", b"\x30\x00", cert.der, build_request([cid]) + b"\x00"):
        assert kmc.ocsp.respond(junk).status == "malformed_request"


@pytest.mark.parametrize("alg", ["sha1", "sha256"])
def test_answers_in_the_requested_hash(kmc: Kmc, alg: str) -> None:
    cert = issue(kmc)
    answer, cid = ask(kmc, cert, alg=alg)
    resp = OcspResponse.from_der(answer.der)
    assert resp.responses[0].cert_id == cid and cid.hash_algorithm == alg
    assert verify_response(resp, issuer=kmc.chain()[0], cert_id=cid).status == "good"


def test_pre_signed_and_re_signed(kmc: Kmc) -> None:
    clock = Clock()
    kmc.clock = clock
    cert = issue(kmc)
    first, _ = ask(kmc, cert)
    assert not first.cached and first.cacheable
    again, _ = ask(kmc, cert)
    assert again.cached and again.der == first.der  # the pre-signed response
    # each hash algorithm has its own
    assert not ask(kmc, cert, alg="sha1")[0].cached
    assert ask(kmc, cert, alg="sha1")[0].cached
    # a nonce: signed for the occasion, never stored
    nonce = new_nonce()
    fresh, cid = ask(kmc, cert, nonce=nonce)
    assert not fresh.cached and not fresh.cacheable
    assert OcspResponse.from_der(fresh.der).nonce == nonce
    assert ask(kmc, cert)[0].der == first.der
    # past half its validity: re-signed
    clock.now += kmc.ocsp.validity / 2 + timedelta(seconds=1)
    later, cid = ask(kmc, cert)
    assert not later.cached and later.der != first.der
    single = verify_response(later.der, issuer=kmc.chain()[0], cert_id=cid, at=clock.now)
    assert single.this_update == clock.now
    assert ask(kmc, cert)[0].der == later.der


def test_attack_revoked_never_answered_good_from_the_cache(kmc: Kmc) -> None:
    """The pre-signed "good" response is abandoned the moment the certificate is
    revoked (its row's status is compared on every lookup), with or without presign."""
    cert = issue(kmc)
    assert status_of(kmc, cert) == "good"
    assert ask(kmc, cert)[0].cached
    kmc.ocsp.presign()
    kmc.revoke_certificate(f"{cert.serial:x}", reason="cessation_of_operation", actor="test")
    answer, _ = ask(kmc, cert)
    assert not answer.cached
    assert status_of(kmc, cert) == "revoked"
    assert ask(kmc, cert)[0].cached  # the revoked answer is now the pre-signed one


def test_lookup_is_one_primary_key_read(kmc: Kmc) -> None:
    """O(1): a cached answer is one SELECT by primary key (no CRL, no scan); a fresh one
    adds the read of the status and one upsert."""
    for i in range(20):
        issue(kmc, f"user{i}")
    cert = issue(kmc)
    ask(kmc, cert)
    req = build_request([CertId.for_certificate(cert, kmc.chain()[0])])
    statements: list[str] = []
    engines = [kmc.db.engine]
    if kmc.ocsp._side is not None:
        engines.append(kmc.ocsp._side)

    def record(_conn: Any, _cursor: Any, sql: str, *_a: Any) -> None:
        if sql.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
            statements.append(sql)

    for eng in engines:
        event.listen(eng, "before_cursor_execute", record)
    try:
        assert kmc.ocsp.respond(req).cached
        cached = list(statements)
        statements.clear()
        kmc.clock = lambda: c.now() + kmc.ocsp.validity  # past refresh: re-signed
        assert not kmc.ocsp.respond(req).cached
        fresh = list(statements)
    finally:
        for eng in engines:
            event.remove(eng, "before_cursor_execute", record)
    assert len(cached) == 1, cached
    assert "certificates.serial = " in cached[0].replace('"', "") and "crls" not in cached[0]
    assert all("crls" not in s for s in fresh), fresh
    # status read, the responder identity re-read (a minute passed), the upsert
    assert len(fresh) <= 6, fresh
    assert any(s.lstrip().upper().startswith("INSERT INTO OCSP_RESPONSES") for s in fresh)


def test_responder_delegated_and_rotated(kmc: Kmc) -> None:
    clock = Clock()
    kmc.clock = clock
    _, rcert = kmc.ocsp.responder()
    issuing = kmc.chain()[0]
    rcert.verify_signature(issuing.public_key)
    assert rcert.subject_str.endswith(f"CN={RESPONDER_CN}")
    assert rcert.extended_key_usage == ("ocsp_signing",)
    assert OID_OCSP_NOCHECK in rcert.extensions and ocsp_urls(rcert) == ()
    assert rcert.not_after - rcert.not_before <= timedelta(days=31)
    cert = issue(kmc)
    ask(kmc, cert)
    # near the end of its life the responder gets a new key and certificate
    clock.now = rcert.not_after - kmc.ocsp.renew_before + timedelta(minutes=1)
    answer, cid = ask(kmc, cert)
    resp = OcspResponse.from_der(answer.der)
    new = resp.certificates[0]
    assert new != rcert and new.public_key != rcert.public_key
    assert not answer.cached  # the pre-signed response of the old responder is not used
    assert verify_response(resp, issuer=issuing, cert_id=cid, at=clock.now).status == "good"
    assert kmc.directory.certificate_status(f"{rcert.serial:x}") == "revoked"  # superseded
    # and exactly one rotation, audited
    with kmc.db.tx() as s:
        n = s.scalar(
            select(func.count())
            .select_from(IssuedCertificate)
            .where(IssuedCertificate.owner == "service:ocsp")
        )
    assert n == 2
    assert kmc.ocsp.rotate() == new  # usable: nothing to do
    assert kmc.ocsp.rotate(force=True) != new


def test_presign(kmc: Kmc) -> None:
    certs = [issue(kmc, f"u{i}") for i in range(5)]
    n = kmc.ocsp.presign(limit=3)
    assert n == 3
    assert kmc.ocsp.presign() >= 2  # the rest (and the responder's own certificate)
    assert kmc.ocsp.presign() == 0  # all fresh
    for cert in certs:
        assert ask(kmc, cert)[0].cached
    with kmc.db.tx() as s:
        assert s.scalar(select(func.count()).select_from(OcspResponseRecord)) >= 5
    assert kmc.ocsp.presign(hash_algorithms=("sha1",)) >= 5
    assert ask(kmc, certs[0], alg="sha1")[0].cached


# ---------------------------------------------------------------- HTTP -----------------------
@pytest.fixture
def app(kmc: Kmc, tmp_path: Path) -> Iterator[Platform]:
    gen = platform(kmc, tmp_path / "data", ocsp_rate=50)
    p = next(gen)
    try:
        yield p
    finally:
        gen.close()


def test_http_post_and_get(app: Platform) -> None:
    kmc = app.kmc
    _, body = app.enroll("alice")
    cert = Certificate.from_pem(body["sign_certificate"].encode())
    assert ocsp_urls(cert) == (OCSP_URL,)
    issuing = kmc.chain()[0]
    cid = CertId.for_certificate(cert, issuing, "sha1")
    nonce = new_nonce()
    r = app.c.post(
        "/ocsp",
        content=build_request([cid], nonce=nonce),
        headers={"Content-Type": "application/ocsp-request"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/ocsp-response"
    assert r.headers["cache-control"] == "no-store"
    assert verify_response(r.content, issuer=issuing, cert_id=cid, nonce=nonce).status == "good"
    # GET: base64 (with / and + URL-encoded), and base64url without padding
    req = build_request([cid])
    b64 = base64.b64encode(req).decode()
    for path in (
        "/ocsp/" + b64.replace("/", "%2F").replace("+", "%2B").replace("=", "%3D"),
        "/ocsp/" + base64.urlsafe_b64encode(req).decode().rstrip("="),
    ):
        r = app.c.get(path)
        assert r.status_code == 200, r.text
        assert verify_response(r.content, issuer=issuing, cert_id=cid).status == "good"
        cc = r.headers["cache-control"]
        assert cc.startswith("public, max-age=") and "must-revalidate" in cc
        max_age = int(cc.split("max-age=")[1].split(",")[0])
        assert 0 < max_age <= kmc.ocsp.validity.total_seconds()
        assert r.headers["etag"] and r.headers["expires"] and r.headers["last-modified"]
    # a nonce in a GET: not for caches
    r = app.c.get("/ocsp/" + base64.urlsafe_b64encode(build_request([cid], nonce=nonce)).decode())
    assert r.headers["cache-control"] == "no-store"
    assert verify_response(r.content, issuer=issuing, cert_id=cid, nonce=nonce).status == "good"


def test_http_refuses_what_is_not_an_ocsp_request(app: Platform) -> None:
    cert = app.kmc.chain()[0]
    req = build_request([CertId.for_certificate(123, cert)])
    cases = [
        ({"content": req, "headers": {"Content-Type": "application/json"}}),
        ({"content": b"", "headers": {"Content-Type": "application/ocsp-request"}}),
        ({"content": b"\x30" * 5000, "headers": {"Content-Type": "application/ocsp-request"}}),
        ({"content": b"\x01\x02", "headers": {"Content-Type": "application/ocsp-request"}}),
    ]
    for kw in cases:
        r = app.c.post("/ocsp", **kw)
        assert r.status_code == 200
        assert OcspResponse.from_der(r.content).status == "malformed_request"
    for path in ("/ocsp/!!!notbase64", "/ocsp/" + "A" * 6000):
        r = app.c.get(path)
        assert r.status_code in (200, 422), r.status_code
        if r.status_code == 200:
            assert OcspResponse.from_der(r.content).status == "malformed_request"


def test_http_rate_limited(app: Platform) -> None:
    """A flood from one address is cut off with 429 + tryLater (ocsp_rate=50 here)."""
    issuing = app.kmc.chain()[0]
    req = build_request([CertId.for_certificate(99, issuing)], nonce=new_nonce())
    codes = []
    for _ in range(60):
        r = app.c.post("/ocsp", content=req, headers={"Content-Type": "application/ocsp-request"})
        codes.append(r.status_code)
    assert codes[:50] == [200] * 50
    assert set(codes[50:]) == {429}
    assert r.headers["retry-after"] == "60"
    assert OcspResponse.from_der(r.content).status == "try_later"


def test_client_certificate_status_and_ocsp_validation(app: Platform) -> None:
    kmc = app.kmc
    root = kmc.chain()[-1]
    _, body = app.enroll("bob")
    enc = Certificate.from_pem(body["encryption_certificate"].encode())
    transport = app.c._transport  # the app in-process
    with Client("http://testserver", anchors=[root], transport=transport) as crl_client:
        with Client(
            "http://testserver", anchors=[root], transport=transport, revocation="ocsp"
        ) as client:
            st = client.certificate_status(enc)
            assert st.status == "good" and st.cert_id.hash_algorithm == "sm3"
            assert client.recipient_certificate("bob") == enc
            kmc.revoke_certificate(f"{enc.serial:x}", reason="key_compromise", actor="test")
            st = client.certificate_status(enc)
            assert st.status == "revoked" and st.reason == "key_compromise"
            with pytest.raises(CertificateError) as e:
                client.validate(enc, key_usage={"key_encipherment"})
            assert e.value.reason == "revoked" and "OCSP" in str(e.value)
            # the CRL path agrees
            with pytest.raises(CertificateError):
                crl_client.validate(enc, key_usage={"key_encipherment"})
        # a certificate the platform never issued, under the same name: unknown
        foreign_key = SM2PrivateKey.generate()
        with kmc.db.tx() as s:
            issuer = kmc.ca.issuer(kmc.ca._ca_row(s))
        other = issuer.issue(  # signed by the CA's key but never recorded
            subject=enc.subject, public_key=foreign_key.public_key(), profile=Profile.DEVICE_ENC
        )
        with Client("http://testserver", anchors=[root], transport=transport) as cl:
            assert cl.certificate_status(other).status == "unknown"
        with (
            Client(
                "http://testserver", anchors=[root], transport=transport, revocation="ocsp"
            ) as cl,
            pytest.raises(OcspError) as e2,
        ):
            cl.validate(other)
        assert e2.value.reason == "unknown_status"
