"""The channel hosted on the platform: developer certificates from the platform's issuing
CA (codeSigning), its directory, revocation through the platform's CRL, and reviews and
countersignatures in the audit chain; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import secrets

import pytest
from appsign_kit import apksign, apksigner_path, build_apk

from http_helpers import assert_error, csr_pem, make_kmc, platform
from mstcrypt.apps import appsign
from mstcrypt.apps.appsign.service import PlatformChannel
from mstcrypt.client import Client, ServiceError
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import PolicyError
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.models import AuditRecord
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import Certificate, build_csr, name

needs_apksigner = pytest.mark.skipif(
    apksigner_path() is None, reason="apksigner not installed (Debian package apksigner)"
)


@pytest.fixture
def kmc(database_url):
    k = Kmc(Database(database_url), SoftKeyStore(secrets.token_bytes(32)))
    k.create_schema()
    k.init_ca(actor="test")
    yield k
    k.db.dispose()


def _csr(cn: str):
    key = SM2PrivateKey.generate()
    return key, build_csr(name(CN=cn), key.public_key(), key.sign)


@needs_apksigner
def test_platform_channel(kmc, tmp_path):
    channel = PlatformChannel(kmc, name="gov-store")
    dev_key, dev_csr = _csr("Example Notes Ltd")
    dev = channel.register_developer(dev_csr, owner="notes-ltd", actor="officer-alice")
    assert "code_signing" in dev.extended_key_usage and dev.issuer == channel.ca_certificate.subject
    ch_key, ch_csr = _csr("gov-store App Signing")
    ch_cert = channel.register_signer(ch_csr, actor="officer-alice")
    with pytest.raises(PolicyError):
        channel.register_developer(dev_csr, owner="channel:x", actor="officer-alice")
    assert [d["owner"] for d in channel.developers()] == ["notes-ltd"]

    build_apk(tmp_path / "u.apk", "cn.gov.notes", 3)
    apksign(tmp_path / "u.apk", tmp_path / "s.apk", tmp_path)
    appsign.sign_developer(
        tmp_path / "s.apk", tmp_path / "d.apk", signer=dev_key.sign, certificates=[dev]
    )
    channel.countersign(
        tmp_path / "d.apk",
        tmp_path / "p.apk",
        signer=ch_key.sign,
        certificates=[ch_cert],
        actor="officer-alice",
    )
    (tmp_path / "ca.pem").write_bytes(channel.ca_certificate.pem)
    policy = appsign.Policy.from_dict(
        {
            "channels": [
                {
                    "name": "gov-store",
                    "ca_file": "ca.pem",
                    "signer_keys": [appsign.key_fingerprint(ch_cert)],
                }
            ]
        },
        base=tmp_path,
    )
    assert (
        appsign.verify_package(tmp_path / "p.apk", policy, crls=[channel.crl()]).version_code == 3
    )

    # revoking the developer on the platform: refused after the next CRL
    kmc.revoke_certificate(f"{dev.serial:x}", reason="key_compromise", actor="officer-alice")
    kmc.publish_crls(force=True)
    with pytest.raises(appsign.AppVerificationError) as e:
        appsign.verify_package(tmp_path / "p.apk", policy, crls=[channel.crl()])
    assert "revoked" in str(e.value)
    with pytest.raises(appsign.AppVerificationError):
        channel.review(tmp_path / "d.apk", actor="officer-bob")
    assert channel.developers()[0]["status"] == "revoked"

    with kmc.ctx.read() as s:
        rows = s.query(AuditRecord).order_by(AuditRecord.seq).all()
        actions = [r.action for r in rows]
        details = [r.details for r in rows]
    assert actions[-1] == "appsign.review"
    assert "appsign.countersign" in actions and "appsign.developer.register" in actions
    last = details[-1] if isinstance(details[-1], dict) else json.loads(details[-1])
    assert last["result"] == "refused" and last["reason"] == "developer-certificate"


def test_http_registration_and_directory(tmp_path):
    kmc = make_kmc(f"sqlite:///{tmp_path / 'kmc.db'}")
    gen = platform(kmc, tmp_path / "data")
    p = next(gen)
    try:
        key = SM2PrivateKey.generate()
        body = {"owner": "notes-ltd", "csr": csr_pem(key, "Example Notes Ltd")}
        assert p.c.post("/admin/appsign/developers", json=body).status_code == 401
        r = p.c.post("/admin/appsign/developers", json=body, headers=p.auth())
        assert r.status_code == 200, r.text
        cert = Certificate.from_pem(r.json()["certificate"].encode())
        assert cert.extended_key_usage == ("code_signing",)
        assert r.json()["key_fingerprint"] == appsign.key_fingerprint(cert)
        listing = p.c.get("/appsign/developers").json()
        assert [(d["owner"], d["serial"], d["status"]) for d in listing] == [
            ("notes-ltd", r.json()["serial"], "active")
        ]
        # a request whose self-signature does not verify, and one that is not a CSR
        forged = csr_pem(key, "Example Notes Ltd").replace("A", "B", 1)
        r = p.c.post(
            "/admin/appsign/developers", json={"owner": "x", "csr": forged}, headers=p.auth()
        )
        assert 400 <= r.status_code < 500, r.text
        r = p.c.post(
            "/admin/appsign/developers", json={"owner": "x", "csr": "junk"}, headers=p.auth()
        )
        assert_error(r, 400)
        assert len(p.c.get("/appsign/developers").json()) == 1
        # the same through the SDK
        with Client(
            "http://testserver", transport=p.c._transport, operator_token=p.ops["alice"]
        ) as c:
            cert2 = c.register_app_developer("mail-ltd", csr_pem(SM2PrivateKey.generate(), "Mail"))
            assert "code_signing" in cert2.extended_key_usage
            assert {d["owner"] for d in c.app_developers()} == {"notes-ltd", "mail-ltd"}
        with Client("http://testserver", transport=p.c._transport) as anonymous:
            with pytest.raises(ServiceError) as e:
                anonymous.register_app_developer("x", csr_pem(SM2PrivateKey.generate(), "X"))
            assert e.value.status == 401
    finally:
        gen.close()
        kmc.db.dispose()
