"""CA + KMC service on SQLite and PostgreSQL: enrollment, lifecycle, recovery, groups,
backup, directory and the audit chain."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from mstcrypt.crypto import sm4
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import DecodeError, KeyStoreError, PolicyError, VerificationError
from mstcrypt.formats.envelope import open_enveloped_key
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.models import AuditRecord, EncryptionKey
from mstcrypt.kmc.service import Kmc, NotFoundError
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import CRL, CertificateError, build_csr, name, validate_path
from mstcrypt.pki.profiles import POLICY_KMC_ESCROW

SUBJECT = {"C": "CN", "O": "Example Unit", "CN": "alice"}


@pytest.fixture
def kmc(database_url: str) -> Kmc:
    k = Kmc(
        Database(database_url),
        SoftKeyStore(secrets.token_bytes(32)),
        crl_base_url="http://kmc.test",
    )
    k.create_schema()
    k.init_ca(actor="test")
    yield k
    k.db.dispose()


def _enroll(kmc: Kmc, owner: str = "alice") -> tuple[SM2PrivateKey, object]:
    terminal = SM2PrivateKey.generate()
    code, _ = kmc.create_enrollment_code(owner=owner, subject={**SUBJECT, "CN": owner}, actor="op1")
    csr = build_csr(name(CN=owner), terminal.public_key(), terminal.sign)
    return terminal, kmc.enroll(code, csr.der)


def _crls(kmc: Kmc) -> list[CRL]:
    return [CRL.from_der(kmc.crl("issuing")), CRL.from_der(kmc.crl("root"))]


def test_init_twice_refused(kmc: Kmc) -> None:
    with pytest.raises(PolicyError, match="already initialised"):
        kmc.init_ca(actor="test")


def test_enrollment_dual_certificates(kmc: Kmc) -> None:
    terminal, e = _enroll(kmc)
    assert e.sign_certificate.public_key == terminal.public_key()
    assert "digital_signature" in e.sign_certificate.key_usage
    assert "key_encipherment" in e.encryption_certificate.key_usage
    enc_key = open_enveloped_key(e.enveloped_key, terminal)
    assert enc_key.public_key() == e.encryption_certificate.public_key
    root = e.chain[-1]
    for cert in (e.sign_certificate, e.encryption_certificate):
        path = validate_path(cert, anchors=[root], intermediates=e.chain[:-1], crls=_crls(kmc))
        assert path[-1].der == root.der
    assert kmc.encryption_certificate("alice").der == e.encryption_certificate.der
    assert kmc.certificate(f"{e.sign_certificate.serial:x}").der == e.sign_certificate.der
    assert kmc.verify_audit().ok


def test_enrollment_code_rules(kmc: Kmc) -> None:
    terminal = SM2PrivateKey.generate()
    csr = build_csr(name(CN="x"), terminal.public_key(), terminal.sign).der
    with pytest.raises(VerificationError, match="unknown"):
        kmc.enroll("AAAAA-BBBBB-CCCCC-DDDDD", csr)
    code, _ = kmc.create_enrollment_code(owner="bob", subject={"CN": "bob"}, actor="op")
    kmc.enroll(code, csr)
    with pytest.raises(VerificationError, match="already used"):
        kmc.enroll(code, csr)
    # expired: move the clock forward
    code2, _ = kmc.create_enrollment_code(
        owner="carol", subject={"CN": "carol"}, actor="op", ttl=timedelta(minutes=1)
    )
    real = kmc.clock
    kmc.clock = lambda: real() + timedelta(minutes=2)
    with pytest.raises(VerificationError, match="expired"):
        kmc.enroll(code2, csr)
    kmc.clock = real
    # a CSR whose self-signature is wrong is refused before the code is consumed
    code3, _ = kmc.create_enrollment_code(owner="dave", subject={"CN": "dave"}, actor="op")
    good = build_csr(name(CN="x"), terminal.public_key(), terminal.sign).der
    bad = good[:-10] + bytes([good[-10] ^ 1]) + good[-9:]  # inside s of the signature
    with pytest.raises((CertificateError, DecodeError)):
        kmc.enroll(code3, bad)
    kmc.enroll(code3, csr)  # still usable


def test_key_lifecycle_state_machine(kmc: Kmc) -> None:
    terminal, e = _enroll(kmc)
    kid = e.key_id
    with pytest.raises(PolicyError, match="cannot destroy"):
        kmc.destroy_key(kid, actor="op")
    with pytest.raises(PolicyError, match="cannot archive"):
        kmc.archive_key(kid, actor="op")
    new_id, env, cert = kmc.rotate_key("alice", terminal.public_key(), subject=SUBJECT, actor="op")
    states = {k["id"]: k["state"] for k in kmc.keys("alice")}
    assert states == {kid: "decrypt_only", new_id: "active"}
    assert kmc.encryption_certificate("alice").der == cert.der
    assert open_enveloped_key(env, terminal).public_key() == cert.public_key
    # the superseded encryption certificate is on the CRL
    assert CRL.from_der(kmc.crl()).is_revoked(e.encryption_certificate.serial)
    kmc.archive_key(kid, actor="op")
    kmc.destroy_key(kid, actor="op")
    for op in (kmc.archive_key, kmc.destroy_key):
        with pytest.raises(PolicyError):
            op(kid, actor="op")
    with pytest.raises(PolicyError):
        kmc.revoke_key(kid, actor="op")
    with pytest.raises(NotFoundError):
        kmc.archive_key("nope", actor="op")


def test_generate_distribute(kmc: Kmc) -> None:
    terminal = SM2PrivateKey.generate()
    kid = kmc.generate_key("erin", actor="op")
    assert kmc.keys("erin")[0]["state"] == "generated"
    env, cert = kmc.distribute_key(kid, terminal.public_key(), subject={"CN": "erin"}, actor="op")
    assert open_enveloped_key(env, terminal).public_key() == cert.public_key
    with pytest.raises(PolicyError):
        kmc.distribute_key(kid, terminal.public_key(), subject={"CN": "erin"}, actor="op")


def test_revoke_key_revokes_certificates(kmc: Kmc) -> None:
    _, e = _enroll(kmc)
    kmc.revoke_key(e.key_id, actor="op")
    crls = _crls(kmc)
    assert crls[0].is_revoked(e.encryption_certificate.serial)
    with pytest.raises(CertificateError) as exc:
        validate_path(
            e.encryption_certificate, anchors=[e.chain[-1]], intermediates=e.chain[:-1], crls=crls
        )
    assert exc.value.reason == "revoked"
    with pytest.raises(NotFoundError):
        kmc.encryption_certificate("alice")


def test_revoke_certificate(kmc: Kmc) -> None:
    _, e = _enroll(kmc)
    serial = f"{e.sign_certificate.serial:x}"
    kmc.revoke_certificate(serial, reason="key_compromise", actor="op")
    assert kmc.certificate_status(serial) == "revoked"
    entry = CRL.from_der(kmc.crl()).is_revoked(e.sign_certificate.serial)
    assert entry is not None and entry.reason == "key_compromise"
    with pytest.raises(PolicyError, match="already revoked"):
        kmc.revoke_certificate(serial, actor="op")
    with pytest.raises(PolicyError, match="unknown revocation reason"):
        kmc.revoke_certificate(serial, reason="because", actor="op")


def test_recovery_needs_two_distinct_operators(kmc: Kmc) -> None:
    _, e = _enroll(kmc)
    escrowed_pub = e.encryption_certificate.public_key
    new_terminal = SM2PrivateKey.generate()
    rid = kmc.request_recovery(e.key_id, new_terminal.public_key(), reason="lost", actor="op1")
    # the requester never approves their own request
    with pytest.raises(PolicyError, match="dual control"):
        kmc.approve_recovery(rid, actor="op1")
    assert kmc.recovery_result(rid)["status"] == "pending"
    # the second officer reviews the recipient fingerprint and must quote it
    shown = kmc.recovery_result(rid)
    assert shown["requested_by"] == "op1" and shown["reason"] == "lost"
    assert shown["owner"] == "alice"
    assert shown["recipient_fingerprint"] == new_terminal.public_key().fingerprint().hex()
    with pytest.raises(PolicyError, match="fingerprint"):
        kmc.approve_recovery(rid, actor="op2", recipient_fingerprint="00" * 32)
    env = kmc.approve_recovery(
        rid, actor="op2", recipient_fingerprint=shown["recipient_fingerprint"]
    )
    assert env is not None
    assert open_enveloped_key(env, new_terminal).public_key() == escrowed_pub
    with pytest.raises(PolicyError, match="released"):
        kmc.approve_recovery(rid, actor="op3")


def test_destroy_removes_material(kmc: Kmc, database_url: str) -> None:
    _, e = _enroll(kmc)
    with kmc.db.tx() as s:
        blob = s.get(EncryptionKey, e.key_id).key_blob
    kmc.revoke_key(e.key_id, actor="op")
    kmc.destroy_key(e.key_id, actor="op")
    with kmc.db.tx() as s:
        assert s.get(EncryptionKey, e.key_id).key_blob is None
    with pytest.raises(PolicyError):
        kmc.request_recovery(
            e.key_id, SM2PrivateKey.generate().public_key(), reason="x", actor="op"
        )
    if database_url.startswith("sqlite"):
        kmc.db.dispose()
        path = Path(database_url.removeprefix("sqlite:///"))
        for f in path.parent.glob(path.name + "*"):
            assert blob not in f.read_bytes(), f"wrapped key still on disk in {f.name}"


def test_groups_annex_d(kmc: Kmc) -> None:
    members = {}
    for who in ("alice", "bob", "carol"):
        t, e = _enroll(kmc, who)
        members[who] = (t, open_enveloped_key(e.enveloped_key, t))
    assert kmc.create_group("g1", ["alice", "bob"], actor="op") == 1

    def group_key(who: str, version: int | None = None) -> bytes:
        d = kmc.kdk_delivery(who, actor="t")
        import base64

        kdk = members[who][1].decrypt(base64.b64decode(d["ciphertext"]))
        g = kmc.group_key_for("g1", who, version)
        aad = f"g1|{g['version']}|{who}".encode()
        return sm4.gcm_decrypt(kdk, bytes.fromhex(g["nonce"]), bytes.fromhex(g["wrapped"]), aad)

    gk1 = group_key("alice")
    assert group_key("bob") == gk1 and len(gk1) == 16
    with pytest.raises(PolicyError, match="not a member"):
        kmc.group_key_for("g1", "carol")
    assert kmc.change_group("g1", add=["carol"], actor="op") == 2
    gk2 = group_key("carol")
    assert gk2 != gk1 and group_key("alice") == gk2
    with pytest.raises(PolicyError, match="backward secrecy"):
        kmc.group_key_for("g1", "carol", 1)
    assert kmc.change_group("g1", remove=["bob"], actor="op") == 3
    with pytest.raises(PolicyError, match="not a member"):
        kmc.group_key_for("g1", "bob")
    assert group_key("alice") not in (gk1, gk2)
    with pytest.raises(PolicyError, match="at least two"):
        kmc.change_group("g1", remove=["alice", "carol"], actor="op")
    with pytest.raises(PolicyError, match="no active encryption key"):
        kmc.create_group("g2", ["alice", "nobody"], actor="op")


def test_backup_and_restore(kmc: Kmc, tmp_path: Path) -> None:
    terminal, e = _enroll(kmc)
    blob = kmc.backup("correct horse battery", actor="op")
    other = Kmc(Database(f"sqlite:///{tmp_path / 'restored.db'}"), kmc.keystore)
    other.create_schema()
    with pytest.raises(KeyStoreError, match="passphrase"):
        other.restore(blob, "wrong passphrase!!", actor="op")
    assert other.restore(blob, "correct horse battery", actor="op") > 0
    assert other.encryption_certificate("alice").der == e.encryption_certificate.der
    rid = other.request_recovery(e.key_id, terminal.public_key(), reason="test", actor="a")
    env = other.approve_recovery(rid, actor="b")
    assert open_enveloped_key(env, terminal).public_key() == e.encryption_certificate.public_key
    assert other.verify_audit().ok
    with pytest.raises(PolicyError, match="empty store"):
        other.restore(blob, "correct horse battery", actor="op")
    other.db.dispose()


def test_master_key_binds_the_store(kmc: Kmc, database_url: str) -> None:
    _enroll(kmc)
    wrong = Kmc(Database(database_url), SoftKeyStore(secrets.token_bytes(32)))
    with pytest.raises(KeyStoreError):
        wrong.checkpoint()
    wrong.db.dispose()


def test_audit_detects_edit_delete_reorder_rewrite(kmc: Kmc) -> None:
    _enroll(kmc)
    _enroll(kmc, "bob")
    assert kmc.checkpoint() is not None
    report = kmc.verify_audit()
    assert report.ok and report.records >= 5 and report.checkpoints == 1

    def mutate(sql: str) -> None:
        with kmc.db.tx() as s:
            s.execute(text(sql))

    with kmc.db.tx() as s:
        n = s.scalar(select(AuditRecord.seq).order_by(AuditRecord.seq.desc()).limit(1))
        original = {r.seq: (r.actor, r.hash, r.prev_hash) for r in s.scalars(select(AuditRecord))}
    # edit
    mutate("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
    r = kmc.verify_audit()
    assert not r.ok and r.first_bad_seq == 3 and "edited" in r.problem
    mutate(f"UPDATE audit_log SET actor = '{original[3][0]}' WHERE seq = 3")
    assert kmc.verify_audit().ok
    # delete
    with kmc.db.tx() as s:
        row = s.get(AuditRecord, 2)
        saved = {c.name: getattr(row, c.name) for c in AuditRecord.__table__.columns}
        s.delete(row)
    r = kmc.verify_audit()
    assert not r.ok and r.first_bad_seq == 2 and "missing" in r.problem
    with kmc.db.tx() as s:
        s.add(AuditRecord(**saved))
    assert kmc.verify_audit().ok
    # reorder: swap the contents of records 3 and 4
    with kmc.db.tx() as s:
        a, b = s.get(AuditRecord, 3), s.get(AuditRecord, 4)
        fields = ("ts", "actor", "action", "target", "details", "prev_hash", "hash")
        va, vb = ({f: getattr(a, f) for f in fields}, {f: getattr(b, f) for f in fields})
        s.execute(update(AuditRecord).where(AuditRecord.seq == 3).values(**vb))
        s.execute(update(AuditRecord).where(AuditRecord.seq == 4).values(**va))
    r = kmc.verify_audit()
    assert not r.ok and r.first_bad_seq == 3
    with kmc.db.tx() as s:
        s.execute(update(AuditRecord).where(AuditRecord.seq == 3).values(**va))
        s.execute(update(AuditRecord).where(AuditRecord.seq == 4).values(**vb))
    assert kmc.verify_audit().ok
    # rewrite history: edit record 2 and recompute every later hash and the head
    from mstcrypt.kmc import audit as audit_mod
    from mstcrypt.kmc.models import AuditHead

    with kmc.db.tx() as s:
        prev = audit_mod.GENESIS
        for rec in s.scalars(select(AuditRecord).order_by(AuditRecord.seq)):
            if rec.seq == 2:
                rec.actor = "mallory"
            rec.prev_hash = prev
            rec.hash = audit_mod.record_hash(
                prev, rec.seq, rec.ts, rec.actor, rec.action, rec.target, dict(rec.details)
            )
            prev = rec.hash
        s.get(AuditHead, 1).hash = prev
    r = kmc.verify_audit()
    assert not r.ok and r.first_bad_seq == 1 and "rewritten" in r.problem
    assert n >= 5


def test_audit_refuses_secret_fields(kmc: Kmc) -> None:
    from mstcrypt.kmc import audit as audit_mod

    with pytest.raises(PolicyError), kmc.db.tx() as s:
        audit_mod.append(s, actor="x", action="y", target="z", details={"private_key": "00"})


def test_rate_limit_window(kmc: Kmc) -> None:
    assert all(kmc.allow("k", limit=3) for _ in range(3))
    assert not kmc.allow("k", limit=3)
    assert kmc.allow("other", limit=3)


def test_directory(kmc: Kmc) -> None:
    _, e = _enroll(kmc)
    found = kmc.find_certificates(owner="alice")
    assert {c.serial for c in found} == {e.sign_certificate.serial, e.encryption_certificate.serial}
    assert kmc.find_certificates(subject=e.sign_certificate.subject_str)
    with pytest.raises(NotFoundError):
        kmc.certificate("abcdef")
    with pytest.raises(NotFoundError):
        kmc.encryption_certificate("nobody")


def test_crl_is_refreshed_when_old(kmc: Kmc) -> None:
    first = CRL.from_der(kmc.crl())
    assert CRL.from_der(kmc.crl()).number == first.number  # still fresh
    real = kmc.clock
    kmc.clock = lambda: real() + timedelta(hours=13)
    later = CRL.from_der(kmc.crl())
    kmc.clock = real
    assert later.number == first.number + 1
    assert later.this_update > first.this_update
    assert datetime.now(UTC) < later.next_update


def test_file_recovery_dual_control(kmc: Kmc) -> None:
    fek = secrets.token_bytes(32)
    escrow_cert = kmc.escrow_certificate()
    assert escrow_cert.public_key == kmc.file_recovery_public_key()
    assert escrow_cert.policies == (POLICY_KMC_ESCROW,) and not escrow_cert.extended_key_usage
    crls = [CRL.from_der(kmc.crl("issuing")), CRL.from_der(kmc.crl("root"))]
    validate_path(escrow_cert, anchors=[kmc.chain()[1]], intermediates=[kmc.chain()[0]], crls=crls)
    escrow = escrow_cert.public_key.encrypt(fek)
    new_terminal = SM2PrivateKey.generate()
    rid = kmc.request_file_recovery(
        escrow, new_terminal.public_key(), reason="lost phone", actor="op1"
    )
    with pytest.raises(PolicyError, match="dual control"):
        kmc.approve_recovery(rid, actor="op1")
    released = kmc.approve_recovery(rid, actor="op2")
    assert new_terminal.decrypt(released) == fek
    assert kmc.recovery_result(rid)["kind"] == "file"
    # an escrow stanza made for another KMC is refused at release time
    other = SM2PrivateKey.generate().public_key().encrypt(fek)
    rid2 = kmc.request_file_recovery(other, new_terminal.public_key(), reason="xyz", actor="a")
    with pytest.raises(PolicyError, match="not made for this KMC"):
        kmc.approve_recovery(rid2, actor="b")
    with pytest.raises(PolicyError, match="not a DER SM2Cipher"):
        kmc.request_file_recovery(b"junk", new_terminal.public_key(), reason="x", actor="a")


# ---------------------------------------------------------------- trust model (issue 9) -
def test_operator_roles_registration_and_binding(kmc: Kmc) -> None:
    from mstcrypt.errors import AuthenticationError

    ops = kmc.operators
    for roles, match in (
        ([], "at least one role"),
        (["root"], "unknown role"),
        (["auditor", "administrator"], "cannot be combined"),
    ):
        with pytest.raises(PolicyError, match=match):
            ops.add("op1", roles)
    with pytest.raises(PolicyError, match="operator name"):
        ops.add("bad name!", ["auditor"])
    _enroll(kmc, "alice")
    with pytest.raises(PolicyError, match="terminal certificates"):
        ops.add("alice", ["auditor"])  # a terminal owner does not become an operator
    code, _ = ops.add("op1", ["key_recovery_officer", "registration_officer"])
    with pytest.raises(PolicyError, match="already exists"):
        ops.add("op1", ["auditor"])
    assert ops.list()[0] | {"certificate": None} == {
        "name": "op1",
        "roles": ["key_recovery_officer", "registration_officer"],
        "status": "pending",
        "certificate": None,
        "static": False,
    }
    # operator codes come from the console only; terminal codes never name an operator
    with pytest.raises(PolicyError, match="is an operator"):
        kmc.create_enrollment_code(owner="op1", subject={"CN": "op1"}, actor="ra")
    with pytest.raises(PolicyError, match="not a registered operator"):
        ops.enroll_code("alice")
    key = SM2PrivateKey.generate()
    e = kmc.enroll(code, build_csr(name(CN="op1"), key.public_key(), key.sign).der)
    serial = f"{e.sign_certificate.serial:x}"
    assert ops.list()[0]["status"] == "active" and ops.list()[0]["certificate"] == serial
    who = ops.from_session({"owner": "op1", "serial": serial})
    assert who.name == "op1" and who.via == "certificate" and who.has("key_recovery_officer")
    for claims, match in (
        ({"owner": "op1", "serial": "1234"}, "not the one bound"),
        ({"owner": "alice", "serial": serial}, "not an operator"),
        ({"owner": None, "serial": serial}, "not an operator"),
    ):
        with pytest.raises(AuthenticationError, match=match):
            ops.from_session(claims)
    ops.set_roles("op1", ["auditor"])
    assert ops.from_session({"owner": "op1", "serial": serial}).roles == {"auditor"}
    ops.set_status("op1", "disabled")
    with pytest.raises(AuthenticationError, match="disabled"):
        ops.from_session({"owner": "op1", "serial": serial})
    # a new device through a new operator code moves the binding
    ops.set_status("op1", "active")
    key2 = SM2PrivateKey.generate()
    code2, _ = ops.enroll_code("op1")
    e2 = kmc.enroll(code2, build_csr(name(CN="op1"), key2.public_key(), key2.sign).der)
    serial2 = f"{e2.sign_certificate.serial:x}"
    assert ops.from_session({"owner": "op1", "serial": serial2}).name == "op1"
    with pytest.raises(AuthenticationError, match="not the one bound"):
        ops.from_session({"owner": "op1", "serial": serial})
    assert kmc.certificate_status(serial) == "revoked"
    # operators' keys are not generated, distributed or rotated for them
    with pytest.raises(PolicyError, match="is an operator"):
        kmc.generate_key("op1", actor="ra")
    with pytest.raises(PolicyError, match="is an operator"):
        kmc.rotate_key("op1", key2.public_key(), subject={"CN": "op1"}, actor="ra")
    assert kmc.verify_audit().ok


def test_key_update_keeps_the_dual_certificate_pair(kmc: Kmc) -> None:
    terminal, e = _enroll(kmc)
    new_id, _, new_enc = kmc.rotate_key("alice", terminal.public_key(), subject=SUBJECT, actor="ra")
    revoked = kmc.revoke_certificate(
        f"{e.sign_certificate.serial:x}", reason="key_compromise", actor="ra"
    )
    assert f"{new_enc.serial:x}" in revoked
    assert kmc.certificate_status(f"{new_enc.serial:x}") == "revoked"
    assert {k["id"]: k["state"] for k in kmc.keys("alice")}[new_id] == "revoked"
    # a certificate revoked for another reason leaves its pair alone
    _, b = _enroll(kmc, "bob")
    kmc.revoke_certificate(f"{b.sign_certificate.serial:x}", reason="superseded", actor="ra")
    assert kmc.certificate_status(f"{b.encryption_certificate.serial:x}") == "active"


def test_recovery_never_for_oneself(kmc: Kmc) -> None:
    _, alice = _enroll(kmc, "alice")
    _, bob = _enroll(kmc, "bob")
    stranger = SM2PrivateKey.generate().public_key()
    with pytest.raises(PolicyError, match="their own key"):
        kmc.request_recovery(alice.key_id, stranger, reason="lost", actor="alice")
    for own in (bob.encryption_certificate.public_key, bob.sign_certificate.public_key):
        with pytest.raises(PolicyError, match="certified to this operator"):
            kmc.request_recovery(alice.key_id, own, reason="lost", actor="bob")
    rid = kmc.request_recovery(alice.key_id, stranger, reason="lost", actor="op1")
    with pytest.raises(PolicyError, match="their own key"):
        kmc.approve_recovery(rid, actor="alice")
    rid = kmc.request_recovery(
        alice.key_id, bob.encryption_certificate.public_key, reason="lost", actor="op1"
    )
    with pytest.raises(PolicyError, match="certified to this operator"):
        kmc.approve_recovery(rid, actor="bob")
    assert kmc.recovery_result(rid)["status"] == "pending"


def test_identity_changes_rotate_kdk_and_groups(kmc: Kmc) -> None:
    from mstcrypt.kmc.models import Group, MemberKdk

    def versions() -> tuple[dict[str, int], dict[str, int]]:
        with kmc.db.tx() as s:
            kdks: dict[str, int] = {}
            for r in s.scalars(select(MemberKdk)):
                kdks[r.member] = max(kdks.get(r.member, 0), r.version)
            return kdks, {g.id: g.current_version for g in s.scalars(select(Group))}

    t = {who: _enroll(kmc, who) for who in ("alice", "bob", "carol")}
    for who in t:
        kmc.kdk_delivery(who, actor=f"terminal:{who}")
    kmc.create_group("ab", ["alice", "bob"], actor="ra")
    kmc.create_group("bc", ["bob", "carol"], actor="ra")
    assert versions() == ({"alice": 1, "bob": 1, "carol": 1}, {"ab": 1, "bc": 1})
    kmc.revoke_key(t["alice"][1].key_id, reason="key_compromise", actor="ra")
    assert versions() == ({"alice": 2, "bob": 1, "carol": 1}, {"ab": 2, "bc": 1})
    _enroll(kmc, "carol")  # re-enrollment
    assert versions() == ({"alice": 2, "bob": 1, "carol": 2}, {"ab": 2, "bc": 2})
    new = SM2PrivateKey.generate().public_key()
    rid = kmc.request_recovery(t["bob"][1].key_id, new, reason="new phone", actor="op1")
    kmc.approve_recovery(rid, actor="op2", recipient_fingerprint=new.fingerprint().hex())
    assert versions() == ({"alice": 2, "bob": 2, "carol": 2}, {"ab": 3, "bc": 3})
    assert kmc.verify_audit().ok
