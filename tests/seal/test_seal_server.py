"""The seal server over HTTP (in-process platform): two-party key generation with the
share in a soft token, the stamper certificate, seals made by an administrator, stamping
with audit of the document digest, refresh, co-decryption, and the attacks: a stamper
not authorised for the seal, a forged or revoked or expired seal, a replayed request, a
disabled share (lost phone), a request that is not a seal signature (no blind oracle)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from http_helpers import Platform, Terminal, make_kmc, platform
from mstcrypt.apps.seal.terminal import SealTerminal
from mstcrypt.crypto import twoparty as tp
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import (
    AccessDeniedError,
    PolicyError,
    TwoPartyStateError,
    VerificationError,
)
from mstcrypt.formats import ses
from mstcrypt.kmc.models import AuditRecord
from mstcrypt.module.softtoken import SoftToken
from mstcrypt.pki import Certificate

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40


@pytest.fixture
def plat(tmp_path: Path) -> Iterator[Platform]:
    kmc = make_kmc(f"sqlite:///{tmp_path / 'kmc.db'}")
    gen = platform(kmc, tmp_path / "data")
    p = next(gen)
    try:
        yield p
    finally:
        gen.close()
        kmc.db.dispose()


def _token(tmp_path: Path, who: str) -> SoftToken:
    return SoftToken.init(tmp_path / f"{who}.tok", "123456", "admin-code-1", iterations=100_000)


def _stamper(p: Platform, tmp_path: Path, owner: str) -> tuple[Terminal, SealTerminal]:
    t = p.terminal(owner)
    st = SealTerminal(p.c, t.token, _token(tmp_path, owner))
    st.create_key("seal")
    st.certify("seal", owner)
    return t, st


def _make_seal(p: Platform, stampers: list[str], **kw: object) -> str:
    now = datetime.now(UTC)
    body = {
        "name": "示例单位公章",
        "picture": base64.b64encode(PNG).decode(),
        "picture_type": "png",
        "width": 40,
        "height": 40,
        "valid_start": (now - timedelta(days=1)).isoformat(),
        "valid_end": (now + timedelta(days=365)).isoformat(),
        "stampers": stampers,
        **kw,
    }
    r = p.c.post("/admin/seal/seals", json=body, headers=p.auth())
    assert r.status_code == 200, r.text
    return str(r.json()["es_id"])


def _audit(p: Platform, prefix: str) -> list[tuple[str, dict]]:
    with p.kmc.ctx.read() as s:
        rows = s.query(AuditRecord).order_by(AuditRecord.seq).all()
        return [(r.action, r.details) for r in rows if r.action.startswith(prefix)]


def test_keygen_certify_make_seal_stamp_and_audit(plat: Platform, tmp_path: Path) -> None:
    p = plat
    _, st = _stamper(p, tmp_path, "alice")
    cert = Certificate.from_der(st.token.get_certificate("seal", "sign"))
    assert cert.public_key == st.token.twoparty_public_key("seal")
    assert "CN=alice" in cert.subject_str
    es_id = _make_seal(p, ["alice"])
    assert [s["es_id"] for s in st.seals()] == [es_id]
    seal = st.seal(es_id)
    maker = p.kmc.identities.key("seal-maker").certificate
    seal.verify(maker.public_key)
    assert seal.info.lists_certificate(cert.der)
    doc_hash = sm3(b"the contract")
    sig = st.stamp("seal", seal, doc_hash, "contract.pdf")
    sig.verify(cert.public_key)
    assert sig.seal.der == seal.der and sig.data_hash == doc_hash
    # the stamping is audited with the document digest, and completed by SG3
    audits = _audit(p, "seal.cosign")
    seal_rows = [d for a, d in audits if a == "seal.cosign.seal"]
    assert seal_rows and seal_rows[-1]["data_hash"] == doc_hash.hex()
    assert seal_rows[-1]["es_id"] == es_id and seal_rows[-1]["owner"] == "alice"
    assert audits[-1][0] == "seal.cosign.completed"
    log = p.c.get("/admin/seal/stampings", params={"es_id": es_id}, headers=p.auth()).json()
    assert [(x["owner"], x["data_hash"], x["state"]) for x in log] == [
        ("alice", doc_hash.hex(), "completed")
    ]


def test_share_is_persisted_in_the_soft_token(plat: Platform, tmp_path: Path) -> None:
    p = plat
    t = p.terminal("alice")
    st = SealTerminal(p.c, t.token, _token(tmp_path, "alice"))
    _, pub = st.create_key("seal")
    st.certify("seal", "alice")
    reopened = SoftToken.open(tmp_path / "alice.tok")
    reopened.login("123456")
    assert reopened.twoparty_public_key("seal") == pub
    st2 = SealTerminal(p.c, t.token, reopened)
    es_id = _make_seal(p, ["alice"])
    st2.stamp("seal", st2.seal(es_id), sm3(b"d"), "d.pdf").verify(pub)
    assert "d1" not in repr(reopened) and reopened.twoparty_public_key("seal") == pub


def test_refresh_keeps_key_and_codecrypt(plat: Platform, tmp_path: Path) -> None:
    p = plat
    _, st = _stamper(p, tmp_path, "alice")
    pub = st.token.twoparty_public_key("seal")
    assert st.refresh("seal") == 1
    assert st.token.twoparty_public_key("seal") == pub
    es_id = _make_seal(p, ["alice"])
    st.stamp("seal", st.seal(es_id), sm3(b"after refresh"), "doc.pdf").verify(pub)
    ct = pub.encrypt(b"sealed secret")
    assert st.decrypt("seal", ct) == b"sealed secret"
    assert _audit(p, "seal.key.refresh")[-1][1]["version"] == 1


def test_server_is_not_a_blind_signing_oracle(plat: Platform, tmp_path: Path) -> None:
    p = plat
    _, st = _stamper(p, tmp_path, "alice")
    with pytest.raises(AccessDeniedError, match="co-signs only"):
        st.sign("seal", b"transfer 1,000,000 to mallory")
    # a second certificate request once the key is certified is refused as well
    with pytest.raises(AccessDeniedError):
        st.certify("seal", "alice-again")


def test_stamper_not_authorised_for_the_seal(plat: Platform, tmp_path: Path) -> None:
    p = plat
    _stamper(p, tmp_path, "alice")
    _, bob = _stamper(p, tmp_path, "bob")
    es_id = _make_seal(p, ["alice"])
    seal = bob.seal(es_id)  # bob can read it; he may not stamp with it
    with pytest.raises(AccessDeniedError, match="not an authorised stamper"):
        bob.stamp("seal", seal, sm3(b"doc"), "doc.pdf")


def test_forged_seal_is_refused(plat: Platform, tmp_path: Path) -> None:
    """A seal made by somebody else with the same esID (or an altered image) is not the
    one on record."""
    p = plat
    _, st = _stamper(p, tmp_path, "alice")
    es_id = _make_seal(p, ["alice"])
    real = st.seal(es_id)
    from mstcrypt.crypto.sm2 import SM2PrivateKey

    forger = SM2PrivateKey.generate()
    fake = ses.make_seal(real.info, real.maker_cert, forger.sign)
    with pytest.raises(Exception, match="not one this server made"):
        st.stamp("seal", fake, sm3(b"doc"), "doc.pdf")


def test_revoked_and_expired_seals_are_refused(plat: Platform, tmp_path: Path) -> None:
    p = plat
    _, st = _stamper(p, tmp_path, "alice")
    es_id = _make_seal(p, ["alice"])
    r = p.c.post(f"/admin/seal/seals/{es_id}/revoke", headers=p.auth())
    assert r.status_code == 200, r.text
    with pytest.raises(PolicyError, match="revoked"):
        st.stamp("seal", st.seal(es_id), sm3(b"doc"), "doc.pdf")
    now = datetime.now(UTC)
    old = _make_seal(
        p,
        ["alice"],
        valid_start=(now - timedelta(days=30)).isoformat(),
        valid_end=(now - timedelta(days=1)).isoformat(),
    )
    with pytest.raises(PolicyError, match="validity"):
        st.stamp("seal", st.seal(old), sm3(b"doc"), "doc.pdf")


def test_disabled_share_lost_phone(plat: Platform, tmp_path: Path) -> None:
    p = plat
    _, st = _stamper(p, tmp_path, "alice")
    es_id = _make_seal(p, ["alice"])
    seal = st.seal(es_id)
    r = p.c.post(
        "/admin/seal/owners/alice/disable", json={"reason": "phone lost"}, headers=p.auth()
    )
    assert r.status_code == 200 and r.json()["disabled"] == 1
    with pytest.raises(PolicyError, match="disabled"):
        st.stamp("seal", seal, sm3(b"doc"), "doc.pdf")
    key_id = st.key_id("seal")
    r = p.c.post(f"/admin/seal/keys/{key_id}/enable", json={}, headers=p.auth())
    assert r.status_code == 200
    st.stamp("seal", seal, sm3(b"doc"), "doc.pdf")


def test_replayed_sign_request_is_refused(plat: Platform, tmp_path: Path) -> None:
    p = plat
    _, st = _stamper(p, tmp_path, "alice")
    es_id = _make_seal(p, ["alice"])
    seal = st.seal(es_id)
    key_id = st.key_id("seal")
    captured: list[bytes] = []
    send = st._transport(f"/seal/keys/{key_id}/sign")

    def recording(message: bytes) -> bytes:
        captured.append(message)
        return send(message)

    tbs = ses.build_tbs(seal, sm3(b"doc"), "doc.pdf")
    st.token.twoparty_sign("seal", tbs, recording)
    sg1, sg3 = captured
    with pytest.raises(TwoPartyStateError, match="replay"):
        send(sg1)
    with pytest.raises(TwoPartyStateError, match="already confirmed"):
        send(sg3)
    # a final signature that is not for the fresh session's document is refused
    tbs2 = ses.build_tbs(seal, sm3(b"another doc"), "doc2.pdf")
    signer = tp.ClientSigner(
        tp.ClientShare.from_bytes(st.token._get("seal").twoparty["current"]), tbs2
    )
    send(signer.start())
    bad = tp._header(tp.MessageType.SG3, signer.session_id) + bytes([len(sg3) - 21]) + sg3[21:]
    with pytest.raises(VerificationError):
        send(bad)


def test_terminal_cannot_use_anothers_key(plat: Platform, tmp_path: Path) -> None:
    p = plat
    _, alice = _stamper(p, tmp_path, "alice")
    bob = p.terminal("bob")
    key_id = alice.key_id("seal")
    sg1 = tp.ClientSigner(
        tp.ClientShare.from_bytes(alice.token._get("seal").twoparty["current"]), b"x"
    ).start()
    r = p.c.post(
        f"/seal/keys/{key_id}/sign",
        json={"message": base64.b64encode(sg1).decode()},
        headers=bob.headers,
    )
    assert r.status_code == 404, r.text


def test_keygen_with_a_bad_opening_over_http(plat: Platform) -> None:
    """A terminal that opens something else than it committed to is refused, and that
    key generation is over for good (the key is disabled, not retried)."""
    t = plat.terminal("alice")
    c = tp.ClientKeyGen()
    r = plat.c.post(
        "/seal/keys", json={"message": base64.b64encode(c.start()).decode()}, headers=t.headers
    )
    assert r.status_code == 200, r.text
    key_id = r.json()["key_id"]
    kg3 = c.receive_server_share(base64.b64decode(r.json()["message"]))
    forged = kg3[:-1] + bytes([kg3[-1] ^ 1])  # the opening randomness
    url = f"/seal/keys/{key_id}/keygen"
    r = plat.c.post(url, json={"message": base64.b64encode(forged).decode()}, headers=t.headers)
    assert r.status_code == 403 and r.json()["error"] == "TwoPartyProofError", r.text
    r = plat.c.post(url, json={"message": base64.b64encode(kg3).decode()}, headers=t.headers)
    assert r.status_code == 409 and "no key generation" in r.json()["detail"], r.text
    keys = plat.c.get("/seal/keys", headers=t.headers).json()
    assert [(k["key_id"], k["state"]) for k in keys] == [(key_id, "disabled")]
    assert _audit(plat, "seal.key.keygen_abort")
