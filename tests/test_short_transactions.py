"""No write transaction waits for a signature: enrollment builds and signs before its
short commit, login verifies before its short transaction, and each commit re-checks
under lock what may have changed meanwhile (SQLite and PostgreSQL)."""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, func, select, text, update

from mstcrypt.apps.login.service import LoginService
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import PolicyError, VerificationError
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.enrollment import PreparedEnrollment, code_hash
from mstcrypt.kmc.models import (
    AuditRecord,
    CertificateAuthority,
    EncryptionKey,
    EnrollmentCode,
    IssuedCertificate,
)
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import CRL, Certificate, CertificationRequest, Profile, build_csr, name
from mstcrypt.protocols.login import LoginClient, LoginError
from platform_helpers import InvariantChecker


@pytest.fixture
def kmc(database_url: str) -> Iterator[Kmc]:
    k = Kmc(Database(database_url), SoftKeyStore(secrets.token_bytes(32)), crl_base_url="http://t")
    k.create_schema()
    k.init_ca(actor="t")
    yield k
    k.db.dispose()


def _code(kmc: Kmc, owner: str) -> str:
    return kmc.create_enrollment_code(owner=owner, subject={"CN": owner}, actor="ra")[0]


def _csr(owner: str) -> tuple[SM2PrivateKey, CertificationRequest]:
    key = SM2PrivateKey.generate()
    return key, build_csr(name(CN=owner), key.public_key(), key.sign)


def _owner_rows(kmc: Kmc, owner: str) -> tuple[list[IssuedCertificate], list[EncryptionKey]]:
    with kmc.db.tx() as s:
        certs = list(s.scalars(select(IssuedCertificate).where(IssuedCertificate.owner == owner)))
        keys = list(s.scalars(select(EncryptionKey).where(EncryptionKey.owner == owner)))
    return certs, keys


def _enroll_audits(kmc: Kmc) -> int:
    with kmc.db.tx() as s:
        return int(
            s.scalar(
                select(func.count()).where(AuditRecord.action == "enroll").select_from(AuditRecord)
            )
            or 0
        )


def _no_write_lock(kmc: Kmc) -> None:
    """Fail unless another connection can take the write lock right now (SQLite)."""
    path = kmc.db.engine.url.database
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:  # "database is locked"
        raise AssertionError(f"signing while a write transaction is open: {exc}") from exc
    finally:
        probe.close()


# ------------------------------------------------------------- enrollment ----------
def test_same_code_prepared_twice_commits_once(kmc: Kmc) -> None:
    code = _code(kmc, "alice")
    _, csr1 = _csr("alice")
    _, csr2 = _csr("alice")
    svc = kmc.enrollment
    p1, p2 = svc.prepare(code, csr1), svc.prepare(code, csr2)  # both pass the early checks
    assert p1.sign.serial != p2.sign.serial and p1.key_id != p2.key_id
    e = svc.commit(p1)
    with pytest.raises(VerificationError, match="already used"):
        svc.commit(p2)
    certs, keys = _owner_rows(kmc, "alice")
    assert sorted(c.serial for c in certs) == sorted([p1.sign.serial, p1.enc.serial])
    assert [k.id for k in keys] == [e.key_id] and keys[0].state == "active"
    assert _enroll_audits(kmc) == 1
    by_serial = {c.serial: c for c in certs}  # recorded as each other's pair
    assert by_serial[p1.sign.serial].pair_serial == p1.enc.serial
    assert by_serial[p1.enc.serial].pair_serial == p1.sign.serial
    InvariantChecker(kmc).check()


def test_same_code_committed_concurrently_once(kmc: Kmc) -> None:
    code = _code(kmc, "bob")
    svc = kmc.enrollment
    prepared = [svc.prepare(code, _csr("bob")[1]) for _ in range(4)]
    start = threading.Barrier(len(prepared))
    outcomes: list[object] = []

    def commit(p: PreparedEnrollment) -> None:
        start.wait()
        try:
            outcomes.append(svc.commit(p))
        except VerificationError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=commit, args=(p,)) for p in prepared]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wins = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(wins) == 1 and len(outcomes) == 4
    certs, keys = _owner_rows(kmc, "bob")
    assert len(certs) == 2 and len(keys) == 1
    InvariantChecker(kmc).check()


@pytest.mark.parametrize("change", ["revoked", "expired"])
def test_code_withdrawn_between_prepare_and_commit(kmc: Kmc, change: str) -> None:
    code = _code(kmc, "carol")
    p = kmc.enrollment.prepare(code, _csr("carol")[1])
    with kmc.db.tx() as s:
        if change == "revoked":  # the officer withdraws the code
            s.execute(delete(EnrollmentCode).where(EnrollmentCode.code_hash == code_hash(code)))
        else:
            s.execute(
                update(EnrollmentCode)
                .where(EnrollmentCode.code_hash == code_hash(code))
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
    with pytest.raises(VerificationError, match=r"unknown|expired"):
        kmc.enrollment.commit(p)
    certs, keys = _owner_rows(kmc, "carol")
    assert certs == [] and keys == []  # no orphan certificate, no escrowed key left
    assert _enroll_audits(kmc) == 0
    InvariantChecker(kmc).check()


def test_issuing_ca_revoked_between_prepare_and_commit(kmc: Kmc) -> None:
    code = _code(kmc, "dave")
    p = kmc.enrollment.prepare(code, _csr("dave")[1])
    with kmc.db.tx() as s:
        ca = s.scalar(select(CertificateAuthority).where(CertificateAuthority.name == "issuing"))
        ca_serial = f"{Certificate.from_der(ca.cert_der).serial:x}"
        s.execute(
            update(IssuedCertificate)
            .where(IssuedCertificate.serial == ca_serial)
            .values(status="revoked")
        )
    with pytest.raises(PolicyError, match="issuing CA"):
        kmc.enrollment.commit(p)
    certs, keys = _owner_rows(kmc, "dave")
    assert certs == [] and keys == []
    with kmc.db.tx() as s:  # the refused commit left the code unused
        assert (
            s.scalar(
                select(EnrollmentCode.used_at).where(EnrollmentCode.code_hash == code_hash(code))
            )
            is None
        )


def test_prepared_for_another_ca_refused(kmc: Kmc, database_url: str) -> None:
    """Material signed by a CA that is not this platform's issuing CA is never recorded."""
    if not database_url.startswith("sqlite"):
        pytest.skip("a second platform needs a second database: a SQLite file here")
    other = Kmc(Database(database_url.replace("kmc.db", "other.db")), kmc.keystore)
    other.create_schema()
    other.init_ca(actor="t")
    code = _code(kmc, "erin")
    p = kmc.enrollment.prepare(code, _csr("erin")[1])
    foreign = other.ca.build_pair(
        sign_public_key=SM2PrivateKey.generate().public_key(),
        enc_public_key=SM2PrivateKey.generate().public_key(),
        subject={"CN": "erin"},
        profiles=(p.sign.profile, p.enc.profile),
        owner="erin",
        key_id=p.key_id,
    )
    other.db.dispose()
    forged = PreparedEnrollment(**{**p.__dict__, "sign": foreign[0], "enc": foreign[1]})
    with pytest.raises(PolicyError, match="issuing CA changed"):
        kmc.enrollment.commit(forged)
    assert _owner_rows(kmc, "erin") == ([], [])


def test_enrollment_signs_outside_the_write_lock(
    kmc: Kmc, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the probe takes SQLite's database-wide write lock")
    store = kmc.keystore
    calls: list[str] = []
    for op in ("generate_sm2", "sign", "export_enveloped"):
        real = getattr(store, op)

        def probed(*a: Any, _real: Any = real, _op: str = op, **kw: Any) -> Any:
            _no_write_lock(kmc)
            calls.append(_op)
            return _real(*a, **kw)

        monkeypatch.setattr(store, op, probed)
    kmc.ca._issuers.clear()  # signers made after the probe is in place
    code = _code(kmc, "frank")
    calls.clear()
    kmc.enroll(code, _csr("frank")[1].der)
    assert calls.count("sign") == 2 and "generate_sm2" in calls and "export_enveloped" in calls


def _probe_keystore(kmc: Kmc, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    store = kmc.keystore
    calls: list[str] = []
    for op in ("generate_sm2", "sign"):
        real = getattr(store, op)

        def probed(*a: Any, _real: Any = real, _op: str = op, **kw: Any) -> Any:
            _no_write_lock(kmc)
            calls.append(_op)
            return _real(*a, **kw)

        monkeypatch.setattr(store, op, probed)
    kmc.ca._issuers.clear()  # signers made after the probe is in place
    return calls


@pytest.mark.parametrize("what", ["service identity", "ocsp responder"])
def test_service_certificates_signed_outside_the_write_lock(
    kmc: Kmc, monkeypatch: pytest.MonkeyPatch, database_url: str, what: str
) -> None:
    """A service identity (made, then renewed for new names) and the OCSP responder's
    rotation generate their key and take the CA's signature before the short write
    transaction that records them."""
    if not database_url.startswith("sqlite"):
        pytest.skip("the probe takes SQLite's database-wide write lock")
    calls = _probe_keystore(kmc, monkeypatch)
    if what == "service identity":
        _, cert1 = kmc.service_identity(
            "probe", Profile.LOGIN_SERVER_SIGN, "probe.example", subject_alt_names=["probe.example"]
        )
        assert calls.count("generate_sm2") == 1 and calls.count("sign") == 1
        calls.clear()
        _, cert2 = kmc.service_identity(
            "probe",
            Profile.LOGIN_SERVER_SIGN,
            "probe.example",
            subject_alt_names=["probe.example", "alt.example"],
        )
        assert calls == ["sign"]  # renewed for the new name: same key, a new signature
        assert cert2.public_key == cert1.public_key and cert2.serial != cert1.serial
        assert set(cert2.subject_alt_names) == {"probe.example", "alt.example"}
        with kmc.db.tx() as s:
            status = s.scalar(
                select(IssuedCertificate.status).where(
                    IssuedCertificate.serial == f"{cert1.serial:x}"
                )
            )
        assert status == "revoked"  # superseded in the same transaction
    else:
        before = kmc.ocsp.responder()[1]
        calls.clear()
        cert = kmc.ocsp.rotate(force=True)
        assert calls.count("generate_sm2") == 1 and calls.count("sign") == 1
        assert cert.public_key != before.public_key
        assert kmc.ocsp.responder()[1].serial == cert.serial


def test_concurrent_first_certification_of_a_service_identity(kmc: Kmc, database_url: str) -> None:
    """Two instances certify a new service identity at once (PostgreSQL). B reads the
    key row (none yet) in its write transaction; A then makes and certifies its own key;
    B goes on. One key and one certificate come out, shared by both: B never replaces
    A's key or supersedes the certificate A is already presenting (CI caught a TLCP
    endpoint of one instance left with a revoked certificate)."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite serialises the two transactions whole (BEGIN IMMEDIATE)")
    other = Kmc(Database(database_url), kmc.ctx.keys, crl_base_url="http://t")
    args = ("probe", Profile.GATEWAY_SIGN, "probe.example")
    first: list[Any] = []
    fired = threading.Event()

    def a_certifies() -> None:
        first.append(kmc.service_identity(*args, subject_alt_names=["probe.example"])[1])

    def waiting_on_a_lock() -> bool:
        with kmc.db.engine.connect() as conn:
            n = conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
            )
        return bool(n)

    def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if fired.is_set() or "FROM service_keys" not in statement or "FOR" not in statement:
            return
        fired.set()  # B has read the key row under its lock: A runs now
        t = threading.Thread(target=a_certifies)
        t.start()
        deadline = time.monotonic() + 30
        while t.is_alive() and not waiting_on_a_lock() and time.monotonic() < deadline:
            time.sleep(0.02)

    event.listen(other.db.engine, "after_cursor_execute", after)
    try:
        second = other.service_identity(*args, subject_alt_names=["probe.example"])[1]
    finally:
        event.remove(other.db.engine, "after_cursor_execute", after)
        other.db.dispose()
    deadline = time.monotonic() + 30
    while not first and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fired.is_set() and first
    assert first[0].serial == second.serial
    with kmc.db.tx() as s:
        rows = list(
            s.execute(
                select(IssuedCertificate.serial, IssuedCertificate.status).where(
                    IssuedCertificate.owner == "service:probe"
                )
            )
        )
    assert rows == [(f"{second.serial:x}", "active")]
    assert kmc.identities.key("probe").public_key() == second.public_key


# ------------------------------------------------------------------ login ----------
def _user(kmc: Kmc, owner: str) -> LoginClient:
    key, csr = _csr(owner)
    e = kmc.enroll(_code(kmc, owner), csr.der)
    chain = kmc.chain()
    return LoginClient(
        expected_server_name="login.example",
        certificate=e.sign_certificate,
        signer=key.sign,
        chain=chain[:-1],
        anchors=chain[-1:],
    )


def _response(svc: LoginService, user: LoginClient, kmc: Kmc) -> dict[str, Any]:
    ch = svc.challenge(source="10.0.0.1")
    crls = [CRL.from_der(kmc.crl()), CRL.from_der(kmc.crl("root"))]
    return user.respond(ch, now=datetime.now(UTC), crls=crls).to_json()


def _login_actions(kmc: Kmc) -> list[str]:
    with kmc.db.tx() as s:
        return [
            a
            for a in s.scalars(select(AuditRecord.action).order_by(AuditRecord.seq))
            if a.startswith("login.")
        ]


def test_certificate_revoked_during_verification_refused(
    kmc: Kmc, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = LoginService(kmc, server_name="login.example")
    user = _user(kmc, "gina")
    resp = _response(svc, user, kmc)
    real = svc.protocol.verify

    def verify_then_revoke(*a: Any, **kw: Any) -> Any:
        cert = real(*a, **kw)  # the path was valid against the cached CRL
        kmc.revoke_certificate(f"{cert.serial:x}", reason="key_compromise", actor="ra")
        return cert

    monkeypatch.setattr(svc.protocol, "verify", verify_then_revoke)
    with pytest.raises(LoginError) as e:
        svc.respond(resp, source="10.0.0.1")
    assert e.value.reason == "user_certificate_revoked"
    assert _login_actions(kmc) == ["login.failure"]
    monkeypatch.setattr(svc.protocol, "verify", real)
    with pytest.raises(LoginError) as e:  # and its challenge is used up
        svc.respond(resp, source="10.0.0.1")
    assert e.value.reason == "replayed"


def test_one_challenge_verified_twice_concurrently_logs_in_once(
    kmc: Kmc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two copies of one response both pass verification before either commits:
    exactly one consumes the challenge and gets a session."""
    svc = LoginService(kmc, server_name="login.example")
    user = _user(kmc, "hana")
    resp = _response(svc, user, kmc)
    real = svc.protocol.verify
    both_verified = threading.Barrier(2, timeout=30)

    def verify_and_wait(*a: Any, **kw: Any) -> Any:
        cert = real(*a, **kw)
        both_verified.wait()
        return cert

    monkeypatch.setattr(svc.protocol, "verify", verify_and_wait)
    outcomes: list[object] = []

    def attempt() -> None:
        try:
            outcomes.append(svc.respond(resp, source="10.0.0.1"))
        except LoginError as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sessions = [o for o in outcomes if isinstance(o, dict)]
    assert len(sessions) == 1 and outcomes.count("replayed") == 1
    assert sorted(_login_actions(kmc)) == ["login.failure", "login.success"]


def test_password_changed_during_login_checked_again(
    kmc: Kmc, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = LoginService(kmc, server_name="login.example")
    user = _user(kmc, "ivan")
    svc.set_password("ivan", "old-password-1", actor="ra")
    resp = _response(svc, user, kmc)
    real = svc._check_password
    changed: list[bool] = []

    def check_then_change(row: Any, password: str | None) -> None:
        real(row, password)
        if not changed:  # the owner changes the password right after the check
            changed.append(True)
            svc.set_password("ivan", "new-password-2", actor="ivan")

    monkeypatch.setattr(svc, "_check_password", check_then_change)
    with pytest.raises(LoginError) as e:
        svc.respond(resp, source="10.0.0.1", password="old-password-1")
    assert e.value.reason == "bad_password"
    assert "login.success" not in _login_actions(kmc)


def test_login_verifies_outside_the_write_lock(
    kmc: Kmc, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the probe takes SQLite's database-wide write lock")
    svc = LoginService(kmc, server_name="login.example")
    user = _user(kmc, "judy")
    svc.set_password("judy", "a-password-1", actor="ra")
    resp = _response(svc, user, kmc)
    probed: list[str] = []
    for attr in ("verify",):
        real = getattr(svc.protocol, attr)

        def wrapped(*a: Any, _real: Any = real, **kw: Any) -> Any:
            _no_write_lock(kmc)
            probed.append("verify")
            return _real(*a, **kw)

        monkeypatch.setattr(svc.protocol, attr, wrapped)
    real_pw = svc._check_password

    def pw(*a: Any) -> None:
        _no_write_lock(kmc)
        probed.append("password")
        real_pw(*a)

    monkeypatch.setattr(svc, "_check_password", pw)
    r = svc.respond(resp, source="10.0.0.1", password="a-password-1")
    assert r["claims"]["amr"] == ["cert", "pin", "pwd"]
    assert probed == ["verify", "password"]
