"""Issue 9's trust-model findings, each performed as an attack against the platform's
HTTP API (in-process, on SQLite and, when configured, PostgreSQL) and shown refused:

1. operators: codes for operator names, a terminal name posing as an operator, an
   operator session from a certificate that is not the bound one, dual control of
   recovery (self-approval, a wrong recipient fingerprint, one's own key, a recipient
   key certified to the approver);
2. keys follow revocation: a lost device (pair revoked, escrowed key revoked, KDK and
   every group key rotated, the session ended), re-enrollment, recovery release and
   leaving the last group all rotate the KDK;
3. key routes: anonymous callers, another member's KDK, group-name probes, out-of-range
   versions, audit growth;
4. X-Forwarded-For picks the rate-limit bucket only through a trusted proxy.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from http_helpers import (
    SUBJECT,
    Platform,
    Terminal,
    assert_error,
    assert_unauthenticated,
    bearer,
    csr_pem,
    make_kmc,
    platform,
)
from mstcrypt.apps.login import tokens
from mstcrypt.crypto import sm4
from mstcrypt.crypto.sm2 import SM2PrivateKey, SM2PublicKey
from mstcrypt.errors import DecryptionError, PolicyError
from mstcrypt.formats.envelope import open_enveloped_key
from mstcrypt.kmc.models import AuditRecord, Group, MemberKdk, Operator, RateLimit
from mstcrypt.kmc.operators import KEY_RECOVERY_OFFICER
from mstcrypt.kmc.service import Kmc
from mstcrypt.pki import CRL, Certificate
from mstcrypt.server.config import Settings
from test_access import ACCESS

KRO = KEY_RECOVERY_OFFICER


@pytest.fixture
def kmc(database_url: str) -> Iterator[Kmc]:
    k = make_kmc(database_url)
    yield k
    k.db.dispose()


@pytest.fixture
def p(kmc: Kmc, tmp_path: Path) -> Iterator[Platform]:
    yield from platform(kmc, tmp_path / "data")


def admin_routes() -> list[tuple[str, str]]:
    return [route for route, audience in ACCESS.items() if isinstance(audience, frozenset)]


def call(p: Platform, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    url = path.format(
        serial="1", owner="x", group="g", key_id="k", request_id="r", es_id="e", code_id="c"
    )
    params = {"owner": "x"} if path == "/admin/keys" and method == "GET" else None
    return p.c.request(
        method, url, headers=headers, params=params, json={} if method == "POST" else None
    )


def kdk(p: Platform, t: Terminal) -> tuple[int, bytes]:
    """(version, KDK) as the member receives it: decrypted with their encryption key."""
    r = p.c.get("/kmc/kdk", headers=t.headers)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["member"] == t.owner
    return d["version"], t.enc_key.decrypt(base64.b64decode(d["ciphertext"]))


def group_key(p: Platform, t: Terminal, group: str, kdk_: bytes) -> tuple[int, bytes]:
    r = p.c.get(f"/kmc/groups/{group}/key", headers=t.headers)
    assert r.status_code == 200, r.text
    g = r.json()
    assert g["member"] == t.owner
    aad = f"{group}|{g['version']}|{t.owner}".encode()
    return g["version"], sm4.gcm_decrypt(
        kdk_, bytes.fromhex(g["nonce"]), bytes.fromhex(g["wrapped"]), aad
    )


def kdk_version(kmc: Kmc, member: str) -> int:
    with kmc.ctx.read() as s:
        return int(
            s.scalar(select(func.max(MemberKdk.version)).where(MemberKdk.member == member)) or 0
        )


def group_version(kmc: Kmc, group: str) -> int:
    with kmc.ctx.read() as s:
        row = s.get(Group, group)
        assert row is not None
        return row.current_version


def make_group(p: Platform, group: str, members: list[str]) -> None:
    r = p.c.post("/admin/groups", json={"id": group, "members": members}, headers=p.auth())
    assert r.status_code == 200, r.text


def cert_status(p: Platform, serial: int) -> str:
    return p.c.get(f"/directory/certificates/{serial:x}").headers["X-Certificate-Status"]


# ======================================================= 1. operators and dual control ===
def test_codes_and_keys_for_operator_names_refused(p: Platform) -> None:
    """A registration officer cannot mint a credential or a key for an operator."""
    cert_op = p.cert_operator("kro-1", [KRO])
    p.kmc.operators.add("pending-op", [KRO])  # registered, not yet enrolled
    h = p.auth("alice")
    for name in ("officer-alice", "officer-bob", "kro-1", "pending-op"):
        r = p.c.post(
            "/admin/enrollment-codes", json={"owner": name, "subject": {"CN": name}}, headers=h
        )
        assert "is an operator" in assert_error(r, 409, "PolicyError")["detail"]
        r = p.c.post("/admin/keys", json={"owner": name}, headers=h)
        assert "is an operator" in assert_error(r, 409, "PolicyError")["detail"]
    attacker = SM2PrivateKey.generate()
    rot = {
        "owner": "kro-1",
        "terminal_public_key": attacker.public_key().to_bytes().hex(),
        "subject": {"CN": "kro-1"},
    }
    r = p.c.post("/admin/keys/rotate", json=rot, headers=h)
    assert "is an operator" in assert_error(r, 409, "PolicyError")["detail"]
    # a key generated for a name that became an operator's cannot be distributed to them
    r = p.c.post("/admin/keys", json={"owner": "carol"}, headers=h)
    key_id = r.json()["key_id"]
    p.kmc.operators.add("carol", [KRO])
    dist = {k: v for k, v in rot.items() if k != "owner"}
    r = p.c.post(f"/admin/keys/{key_id}/distribute", json=dist, headers=h)
    assert "is an operator" in assert_error(r, 409, "PolicyError")["detail"]
    # the operator's own session still works: nothing above touched it
    assert p.c.get("/admin/recovery/none", headers=cert_op.headers).status_code == 404


def test_terminal_code_from_before_operator_registration_is_void(p: Platform) -> None:
    code = p.code("dave")  # a terminal code for a name not yet an operator
    p.kmc.operators.add("dave", [KRO])  # the console registers dave as an operator
    key = SM2PrivateKey.generate()
    r = p.c.post("/enroll", json={"code": code, "csr": csr_pem(key)})
    assert "no longer fits" in assert_error(r, 403, "VerificationError")["detail"]
    with p.kmc.ctx.read() as s:
        assert s.get(Operator, "dave").cert_serial is None  # type: ignore[union-attr]


def test_new_name_with_an_operators_subject_is_no_operator(p: Platform) -> None:
    """bob2 enrolls (even with officer-bob's subject) and logs in: a user, no operator."""
    code = p.code("bob2", subject={**SUBJECT, "CN": "officer-bob"})
    bob2 = p.enroll_with("bob2", code)
    assert "CN=officer-bob" in bob2.sign_cert.subject_str
    assert p.c.get("/login/session", headers=bob2.headers).json()["owner"] == "bob2"
    for method, path in admin_routes():
        r = call(p, method, path, bob2.headers)
        assert "not an operator" in assert_unauthenticated(r)["detail"], (method, path)


def test_operator_session_only_from_the_bound_certificate(p: Platform) -> None:
    op = p.cert_operator("kro-1", [KRO])
    old_serial = f"{op.sign_cert.serial:x}"
    assert p.c.get("/admin/recovery/none", headers=op.headers).status_code == 404
    # a new device: the console's operator code moves the binding to the new certificate
    code, _ = p.kmc.operators.enroll_code("kro-1")
    new = p.enroll_with("kro-1", code)
    with p.kmc.ctx.read() as s:
        row = s.get(Operator, "kro-1")
        assert row is not None and row.cert_serial == f"{new.sign_cert.serial:x}"
    assert p.c.get("/admin/recovery/none", headers=new.headers).status_code == 404
    # the old certificate's session is no operator session any more, on every route
    # (refused for the binding, or, with the session check of revoked certificates, for
    # the superseded certificate)
    for method, path in admin_routes():
        detail = assert_unauthenticated(call(p, method, path, op.headers))["detail"]
        assert "not the one bound" in detail or "revoked" in detail, (method, path, detail)
    # the binding on its own: a genuine session of another active certificate that names
    # the operator as its owner is still refused
    bob = p.terminal("bob")
    claims = p.c.get("/login/session", headers=bob.headers).json()
    forged = tokens.issue({**claims, "owner": "kro-1"}, p.c.app.state.login()._key.sign)
    assert p.c.get("/login/session", headers=bearer(forged)).json()["owner"] == "kro-1"
    for method, path in admin_routes():
        detail = assert_unauthenticated(call(p, method, path, bearer(forged)))["detail"]
        assert "not the one bound" in detail, (method, path, detail)
    # ... and the old certificate (superseded) cannot log in again
    assert cert_status(p, op.sign_cert.serial) == "revoked"
    r = p.login(op.key, op.sign_cert)
    assert r.status_code in (401, 403) and r.json()["error"] == "LoginError", r.text
    # a disabled operator is refused with any credential
    p.kmc.operators.set_status("kro-1", "disabled")
    r = p.c.get("/admin/recovery/none", headers=new.headers)
    assert "disabled" in assert_unauthenticated(r)["detail"]
    assert old_serial != f"{new.sign_cert.serial:x}"


def _recovery(p: Platform, key_id: str, recipient: SM2PublicKey, headers: dict[str, str]) -> Any:
    return p.c.post(
        "/admin/recovery",
        json={
            "key_id": key_id,
            "recipient_public_key": recipient.to_bytes().hex(),
            "reason": "device lost",
        },
        headers=headers,
    )


def _approve(p: Platform, rid: str, fingerprint: str, headers: dict[str, str]) -> httpx.Response:
    return p.c.post(
        f"/admin/recovery/{rid}/approve",
        json={"recipient_fingerprint": fingerprint},
        headers=headers,
    )


def test_recovery_dual_control_attacks(p: Platform) -> None:
    alice = p.terminal("alice")
    kdk_v1, alice_kdk = kdk(p, alice)
    kro1 = p.cert_operator("kro-1", [KRO])
    kro2 = p.cert_operator("kro-2", [KRO])
    new_device = SM2PrivateKey.generate()
    fp = new_device.public_key().fingerprint().hex()
    alice_key = alice.body["key_id"]

    # the requester never approves their own request
    r = _recovery(p, alice_key, new_device.public_key(), kro1.headers)
    assert r.status_code == 200, r.text
    rid = r.json()["request_id"]
    r = _approve(p, rid, fp, kro1.headers)
    assert "requester cannot approve" in assert_error(r, 409, "PolicyError")["detail"]
    # the second officer sees who asked, why, whose key and to which key ...
    review = p.c.get(f"/admin/recovery/{rid}", headers=kro2.headers).json()
    assert review["requested_by"] == "kro-1" and review["reason"] == "device lost"
    assert review["owner"] == "alice" and review["recipient_fingerprint"] == fp
    # ... and must quote that fingerprint: a request swapped to another key is not approved
    other = SM2PrivateKey.generate().public_key().fingerprint().hex()
    r = _approve(p, rid, other, kro2.headers)
    assert "fingerprint does not match" in assert_error(r, 409, "PolicyError")["detail"]
    assert p.c.get(f"/admin/recovery/{rid}", headers=kro2.headers).json()["status"] == "pending"

    # nobody requests or approves a recovery of their own escrowed key
    own_key = kro1.body["key_id"]
    r = _recovery(p, own_key, SM2PrivateKey.generate().public_key(), kro1.headers)
    assert "their own key" in assert_error(r, 409, "PolicyError")["detail"]
    r = _recovery(p, own_key, new_device.public_key(), p.auth("bob"))
    assert r.status_code == 200, r.text
    r = _approve(p, r.json()["request_id"], fp, kro1.headers)
    assert "their own key" in assert_error(r, 409, "PolicyError")["detail"]

    # nobody requests or approves a recovery to a key certified to themselves
    for own in (kro1.enc_cert.public_key, kro1.sign_cert.public_key):
        r = _recovery(p, alice_key, own, kro1.headers)
        assert "certified to this operator" in assert_error(r, 409, "PolicyError")["detail"]
    r = _recovery(p, alice_key, kro2.enc_cert.public_key, p.auth("alice"))
    assert r.status_code == 200, r.text
    r = _approve(
        p, r.json()["request_id"], kro2.enc_cert.public_key.fingerprint().hex(), kro2.headers
    )
    assert "certified to this operator" in assert_error(r, 409, "PolicyError")["detail"]

    # a distinct second officer, quoting the fingerprint, releases to the new device
    r = _approve(p, rid, fp, kro2.headers)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "released" and done["approvals"] == ["kro-2"]
    key = open_enveloped_key(base64.b64decode(done["enveloped_key"]), new_device)
    assert key.public_key() == alice.enc_cert.public_key
    # the release rotated alice's KDK: what the old device holds unwraps nothing new
    assert kdk_version(p.kmc, "alice") == kdk_v1 + 1
    version, new_kdk = kdk(p, alice)
    assert version == kdk_v1 + 1 and new_kdk != alice_kdk
    assert p.c.get("/admin/audit/verify", headers=p.auth()).json()["ok"] is True


def test_recovery_with_two_approvers(database_url: str, tmp_path: Path) -> None:
    kmc = make_kmc(database_url, recovery_approvals=2)
    gen = platform(kmc, tmp_path / "data", recovery_approvals=2)
    p = next(gen)
    try:
        alice = p.terminal("alice")
        officers = [p.cert_operator(f"kro-{i}", [KRO]) for i in (1, 2, 3)]
        device = SM2PrivateKey.generate()
        fp = device.public_key().fingerprint().hex()
        r = _recovery(p, alice.body["key_id"], device.public_key(), officers[0].headers)
        rid = r.json()["request_id"]
        assert r.json()["approvals_required"] == 2
        r = _approve(p, rid, fp, officers[1].headers)
        assert r.json()["status"] == "pending" and r.json()["enveloped_key"] is None
        r = _approve(p, rid, fp, officers[1].headers)
        assert "already approved" in assert_error(r, 409, "PolicyError")["detail"]
        r = _approve(p, rid, fp, officers[0].headers)
        assert "requester cannot approve" in assert_error(r, 409)["detail"]
        r = _approve(p, rid, fp, officers[2].headers)
        assert r.json()["status"] == "released"
        assert r.json()["approvals"] == ["kro-2", "kro-3"]
        key = open_enveloped_key(base64.b64decode(r.json()["enveloped_key"]), device)
        assert key.public_key() == alice.enc_cert.public_key
    finally:
        gen.close()
        kmc.db.dispose()


# ======================================================= 2. keys follow revocation ======
def _lost_device(p: Platform) -> dict[str, Any]:
    """alice, bob and carol, groups g1 {alice, bob}, g2 {alice, carol}, g3 {bob, carol};
    alice's phone is stolen and her signing certificate revoked for key_compromise."""
    t = {who: p.terminal(who) for who in ("alice", "bob", "carol")}
    old_kdk = {who: kdk(p, t[who]) for who in t}
    make_group(p, "g1", ["alice", "bob"])
    make_group(p, "g2", ["alice", "carol"])
    make_group(p, "g3", ["bob", "carol"])
    old_gk = group_key(p, t["alice"], "g1", old_kdk["alice"][1])
    serial = f"{t['alice'].sign_cert.serial:x}"
    r = p.c.post(
        f"/admin/certificates/{serial}/revoke",
        json={"reason": "key_compromise"},
        headers=p.auth("bob"),
    )
    assert r.status_code == 200, r.text
    return {"t": t, "old_kdk": old_kdk, "old_gk": old_gk, "revoked": r.json()["revoked"]}


def test_lost_device_keys_follow_revocation(p: Platform) -> None:
    s = _lost_device(p)
    alice: Terminal = s["t"]["alice"]
    # the pair and the escrowed encryption key are revoked with the signing certificate
    assert s["revoked"] == sorted(f"{c.serial:x}" for c in (alice.sign_cert, alice.enc_cert))
    crl = CRL.from_der(p.c.get("/crl/issuing.crl").content)
    for cert in (alice.sign_cert, alice.enc_cert):
        assert cert_status(p, cert.serial) == "revoked"
        entry = crl.is_revoked(cert.serial)
        assert entry is not None and entry.reason == "key_compromise"
    keys = p.c.get("/admin/keys", params={"owner": "alice"}, headers=p.auth()).json()
    assert [k["state"] for k in keys] == ["revoked"]
    assert_error(p.c.get("/directory/encryption-certificate/alice"), 404)
    # her KDK rotated; every group she is in was rekeyed, the others were not
    assert kdk_version(p.kmc, "alice") == 2
    assert kdk_version(p.kmc, "bob") == kdk_version(p.kmc, "carol") == 1
    assert (group_version(p.kmc, "g1"), group_version(p.kmc, "g2")) == (2, 2)
    assert group_version(p.kmc, "g3") == 1
    # the stolen phone cannot log in again
    r = p.login(alice.key, alice.sign_cert)
    assert r.status_code in (401, 403) and r.json()["error"] == "LoginError", r.text
    # alice re-enrolls on a new device: the old KDK does not unwrap the new group key
    new = p.terminal("alice")
    version, new_kdk = kdk(p, new)
    assert version > 2 and new_kdk != s["old_kdk"]["alice"][1]
    gk_version, gk = group_key(p, new, "g1", new_kdk)
    assert gk_version > s["old_gk"][0] and gk != s["old_gk"][1]
    r = p.c.get("/kmc/groups/g1/key", headers=new.headers).json()
    with pytest.raises(DecryptionError):
        sm4.gcm_decrypt(
            s["old_kdk"]["alice"][1],
            bytes.fromhex(r["nonce"]),
            bytes.fromhex(r["wrapped"]),
            f"g1|{r['version']}|alice".encode(),
        )
    # bob, untouched, follows the rekey with his unchanged KDK
    bob: Terminal = s["t"]["bob"]
    assert group_key(p, bob, "g1", s["old_kdk"]["bob"][1]) == (gk_version, gk)


def test_lost_device_session_ends_at_once(p: Platform) -> None:
    s = _lost_device(p)
    alice: Terminal = s["t"]["alice"]
    assert_unauthenticated(p.c.get("/login/session", headers=alice.headers))
    assert_unauthenticated(p.c.get("/kmc/groups/g1/key", headers=alice.headers))
    assert_unauthenticated(p.c.get("/kmc/kdk", headers=alice.headers))


def test_lost_device_session_gets_no_new_kdk(p: Platform) -> None:
    """Whatever the session check says, the stolen phone's key receives no new KDK: the
    KDK is encrypted only to an active encryption key, and hers is revoked."""
    s = _lost_device(p)
    alice: Terminal = s["t"]["alice"]
    r = p.c.get("/kmc/kdk", headers=alice.headers)
    assert r.status_code in (401, 404), r.text
    r = p.c.get("/kmc/groups/g1/key", headers=alice.headers)
    if r.status_code == 200:  # wrapped under a KDK the phone never received
        g = r.json()
        assert g["kdk_version"] > s["old_kdk"]["alice"][0]
        with pytest.raises(DecryptionError):
            sm4.gcm_decrypt(
                s["old_kdk"]["alice"][1],
                bytes.fromhex(g["nonce"]),
                bytes.fromhex(g["wrapped"]),
                f"g1|{g['version']}|alice".encode(),
            )
    else:
        assert r.status_code == 401, r.text


def test_reenrollment_supersedes_and_rotates_the_kdk(p: Platform) -> None:
    old = p.terminal("alice")
    v1, kdk1 = kdk(p, old)
    new = p.terminal("alice")  # a new device, a new code from the registration officer
    crl = CRL.from_der(p.c.get("/crl/issuing.crl").content)
    for cert in (old.sign_cert, old.enc_cert):
        assert cert_status(p, cert.serial) == "revoked"
        entry = crl.is_revoked(cert.serial)
        assert entry is not None and entry.reason == "superseded"
    for cert in (new.sign_cert, new.enc_cert):
        assert cert_status(p, cert.serial) == "active"
    states = {
        k["id"]: k["state"]
        for k in p.c.get("/admin/keys", params={"owner": "alice"}, headers=p.auth()).json()
    }
    assert states == {old.body["key_id"]: "decrypt_only", new.body["key_id"]: "active"}
    v2, kdk2 = kdk(p, new)
    assert v2 == v1 + 1 and kdk2 != kdk1
    r = p.login(old.key, old.sign_cert)
    assert r.status_code in (401, 403), r.text


def test_key_update_keeps_the_pair(p: Platform) -> None:
    """After a key update the new encryption certificate is the signing certificate's
    pair: a later lost-device revocation still takes both (and the escrowed key)."""
    alice = p.terminal("alice")
    rot = {
        "owner": "alice",
        "terminal_public_key": alice.key.public_key().to_bytes().hex(),
        "subject": {**SUBJECT, "CN": "alice"},
    }
    r = p.c.post("/admin/keys/rotate", json=rot, headers=p.auth())
    assert r.status_code == 200, r.text
    new_key = r.json()["key_id"]
    new_enc = Certificate.from_pem(r.json()["encryption_certificate"].encode())
    r = p.c.post(
        f"/admin/certificates/{alice.sign_cert.serial:x}/revoke",
        json={"reason": "key_compromise"},
        headers=p.auth(),
    )
    assert f"{new_enc.serial:x}" in r.json()["revoked"]
    assert cert_status(p, new_enc.serial) == "revoked"
    keys = p.c.get("/admin/keys", params={"owner": "alice"}, headers=p.auth()).json()
    assert {k["id"]: k["state"] for k in keys}[new_key] == "revoked"


def test_key_revocation_and_leaving_the_last_group_rotate_the_kdk(p: Platform) -> None:
    t = {who: p.terminal(who) for who in ("alice", "bob", "carol")}
    first = {who: kdk(p, t[who]) for who in t}
    make_group(p, "g1", ["alice", "bob", "carol"])
    make_group(p, "g2", ["alice", "carol"])
    h = p.auth()
    # bob leaves his only group: new KDK
    r = p.c.post("/admin/groups/g1/members", json={"remove": ["bob"]}, headers=h)
    assert r.status_code == 200, r.text
    version, bob_kdk = kdk(p, t["bob"])
    assert version == 2 and bob_kdk != first["bob"][1]
    # carol leaves one of two groups: her KDK stays (she still holds g2's key)
    p.c.post("/admin/groups/g1/members", json={"remove": ["carol"], "add": ["bob"]}, headers=h)
    assert kdk(p, t["carol"]) == first["carol"]
    # revoking a member's encryption key (lost device) rotates her KDK and her groups
    g2 = group_version(p.kmc, "g2")
    r = p.c.post(f"/admin/keys/{t['alice'].body['key_id']}/revoke", headers=h)
    assert r.status_code == 200, r.text
    assert kdk_version(p.kmc, "alice") == 2
    assert group_version(p.kmc, "g2") == g2 + 1


# ======================================================= 3. key routes ==================
def test_key_routes_attacks(p: Platform) -> None:
    alice, bob, carol = (p.terminal(w) for w in ("alice", "bob", "carol"))
    make_group(p, "g1", ["alice", "bob"])
    _, alice_kdk = kdk(p, alice)
    _, bob_kdk = kdk(p, bob)
    kdk(p, carol)
    with p.kmc.ctx.read() as s:
        audit_before = s.scalar(select(func.count()).select_from(AuditRecord))
    # nobody: no keys, no answers about names
    for path, params in (
        ("/kmc/kdk", {}),
        ("/kmc/kdk", {"member": "alice"}),
        ("/kmc/groups/g1/key", {}),
        ("/kmc/groups/g1/key", {"member": "alice"}),
        ("/kmc/groups/nope/key", {"member": "alice"}),
    ):
        for _ in range(5):
            assert_unauthenticated(p.c.get(path, params=params))
    # a member's session: only their own KDK, whatever parameter they add
    for params in ({"member": "alice"}, {"owner": "alice"}, {"member": "alice", "x": "1"}):
        r = p.c.get("/kmc/kdk", params=params, headers=bob.headers)
        assert r.status_code == 200 and r.json()["member"] == "bob"
        assert bob.enc_key.decrypt(base64.b64decode(r.json()["ciphertext"])) == bob_kdk
    r = p.c.get("/kmc/groups/g1/key", params={"member": "alice"}, headers=bob.headers)
    assert r.json()["member"] == "bob"
    assert group_key(p, bob, "g1", bob_kdk)[1] == group_key(p, alice, "g1", alice_kdk)[1]
    # a non-member probing names gets the answer of a missing group
    probe = assert_error(p.c.get("/kmc/groups/g1/key", headers=carol.headers), 404)
    missing = assert_error(p.c.get("/kmc/groups/zz/key", headers=carol.headers), 404)
    assert probe["error"] == missing["error"] == "NotFoundError"
    assert probe["detail"].replace("'g1'", "'zz'") == missing["detail"]
    # every number is bounded: a 422, never a 500
    for bad in (10**20, -(10**20), 0, -1, 2**31, 2**63):
        r = p.c.get("/kmc/groups/g1/key", params={"version": bad}, headers=alice.headers)
        assert_error(r, 422, "ValidationError")
    r = p.c.get("/kmc/groups/g1/key", params={"version": 2**31 - 1}, headers=alice.headers)
    assert_error(r, 404, "NotFoundError")
    # the anonymous calls and probes wrote nothing to the audit log
    with p.kmc.ctx.read() as s:
        audit_after = s.scalar(select(func.count()).select_from(AuditRecord))
    # the only records since: bob's three (authenticated) KDK deliveries
    assert audit_after - audit_before == 3


# ======================================================= 4. X-Forwarded-For ==============
def _buckets(kmc: Kmc) -> set[str]:
    with kmc.ctx.read() as s:
        return {r.key for r in s.scalars(select(RateLimit)) if r.key.startswith("enroll:")}


def _enroll_attempts(app: Any, peer: str, forwarded: list[str | None]) -> list[int]:
    from fastapi.testclient import TestClient

    key = SM2PrivateKey.generate()
    body = {"code": "AAAAA-BBBBB-CCCCC-DDDDD", "csr": csr_pem(key)}
    out = []
    with TestClient(app, client=(peer, 40000)) as c:
        for xff in forwarded:
            headers = {"X-Forwarded-For": xff} if xff is not None else {}
            out.append(c.post("/enroll", json=body, headers=headers).status_code)
    return out


def test_forwarded_for_from_an_untrusted_peer_is_ignored(kmc: Kmc, tmp_path: Path) -> None:
    gen = platform(kmc, tmp_path / "data", enroll_rate=2)
    p = next(gen)
    real, fixed = kmc.clock, kmc.clock()
    kmc.clock = lambda: fixed  # one rate-limit window
    try:
        spoofed = ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"]
        statuses = _enroll_attempts(p.c.app, "198.51.100.7", spoofed)  # type: ignore[arg-type]
        assert statuses == [403, 403, 429, 429]
        assert _buckets(kmc) == {"enroll:198.51.100.7"}
    finally:
        kmc.clock = real
        gen.close()


def test_forwarded_for_from_a_trusted_proxy_picks_the_client(kmc: Kmc, tmp_path: Path) -> None:
    gen = platform(kmc, tmp_path / "data", enroll_rate=2, trusted_proxies=["10.0.0.0/8"])
    p = next(gen)
    real, fixed = kmc.clock, kmc.clock()
    kmc.clock = lambda: fixed
    try:
        # each client behind the proxy has its own budget
        statuses = _enroll_attempts(
            p.c.app,
            "10.1.2.3",
            [
                "203.0.113.1",
                "203.0.113.2",
                "203.0.113.1",
                "203.0.113.2",
                # a client-supplied left part is ignored: the right-most untrusted hop counts
                "6.6.6.6, 203.0.113.1",
                # a chain of trusted proxies: the first address outside them
                "203.0.113.9, 10.0.0.5, 10.0.0.6",
            ],
        )
        assert statuses == [403, 403, 403, 403, 429, 403]
        assert _buckets(kmc) == {"enroll:203.0.113.1", "enroll:203.0.113.2", "enroll:203.0.113.9"}
        # only proxies only: the proxy's own address
        assert _enroll_attempts(p.c.app, "10.1.2.3", ["10.0.0.5", None]) == [403, 403]
        assert "enroll:10.1.2.3" in _buckets(kmc)
    finally:
        kmc.clock = real
        gen.close()


def test_trusted_proxies_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSTCRYPT_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1")
    assert Settings.from_env("x").trusted_proxies == ["10.0.0.0/8", "192.0.2.1/32"]
    monkeypatch.setenv("MSTCRYPT_TRUSTED_PROXIES", "10.0.0.0/8,proxy.example")
    with pytest.raises(PolicyError, match="not an address"):
        Settings.from_env("x")
    monkeypatch.delenv("MSTCRYPT_TRUSTED_PROXIES")
    assert Settings.from_env("x").trusted_proxies == []
