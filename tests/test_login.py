"""Certificate login (T/ZSA 37-2020 §7.3): protocol, service, session tokens, operator
access with session tokens, CLI."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select

from mstcrypt.apps.login import tokens
from mstcrypt.apps.login.fastpath import RawTx
from mstcrypt.apps.login.models import LoginChallenge, LoginFailures, RevokedSession
from mstcrypt.apps.login.service import LoginPolicy, LoginService, source_bucket
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import PolicyError, RateLimitError
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.models import AuditRecord, RateLimit
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import CRL, Certificate, Issuer, Profile, RevokedEntry, build_csr, name
from mstcrypt.protocols.login import (
    Challenge,
    LoginClient,
    LoginError,
    LoginServer,
    Response,
    tbs_m,
)

NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """Protocol tests compare against CRLs made 'now': keep NOW current per test."""
    global NOW
    NOW = datetime.now(UTC)


# --------------------------------------------------------------- protocol level -------
class Pki:
    def __init__(self, cn: str = "Test Root") -> None:
        self.key = SM2PrivateKey.generate()
        self.root = Issuer.self_signed(name(CN=cn), self.key.public_key(), self.key.sign)
        self.revoked: list[RevokedEntry] = []

    def leaf(self, cn: str, profile: Profile, **kw: object) -> tuple[SM2PrivateKey, object]:
        k = SM2PrivateKey.generate()
        return k, self.root.issue(
            subject=name(CN=cn), public_key=k.public_key(), profile=profile, **kw
        )

    def crls(self) -> list[CRL]:
        return [
            self.root.crl(
                number=len(self.revoked) + 1,
                entries=self.revoked,
                this_update=NOW - timedelta(minutes=1),
            )
        ]


@pytest.fixture
def pki() -> Pki:
    return Pki()


def _pair(
    pki: Pki,
    *,
    server_cert: object = None,
    user_cert: object = None,
    server_name: str = "login.test",
) -> tuple[LoginServer, LoginClient]:
    sk, sc = pki.leaf("login.test", Profile.LOGIN_SERVER_SIGN)
    uk, uc = pki.leaf("alice", Profile.DEVICE_SIGN)
    server = LoginServer(
        server_name="login.test",
        certificate=server_cert or sc,
        signer=sk.sign,
        chain=[],
        anchors=[pki.root.certificate],
    )
    client = LoginClient(
        expected_server_name=server_name,
        certificate=user_cert or uc,
        signer=uk.sign,
        chain=[],
        anchors=[pki.root.certificate],
    )
    return server, client


def test_protocol_round_trip(pki: Pki) -> None:
    server, client = _pair(pki)
    ch = server.challenge(NOW)
    assert len(ch.r_s) == 32
    resp = client.respond(
        Challenge.from_json(json.loads(json.dumps(ch.to_json()))), now=NOW, crls=pki.crls()
    )
    assert len(resp.r_m) == 32 and resp.r_m != ch.r_s
    cert = server.verify(resp, ch, now=NOW, crls=pki.crls())
    assert cert.subject_str == "CN=alice"


def test_token_for_another_server_refused(pki: Pki) -> None:
    server, client = _pair(pki, server_name="other.test")
    with pytest.raises(LoginError) as e:
        client.respond(server.challenge(NOW), now=NOW, crls=pki.crls())
    assert e.value.reason == "wrong_server"
    # and a Token-M made for another server name does not verify here
    server, client = _pair(pki)
    ch = server.challenge(NOW)
    resp = client.respond(ch, now=NOW, crls=pki.crls())
    forged = LoginServer(
        server_name="other.test",
        certificate=server.certificate,
        signer=lambda b: b"",
        chain=[],
        anchors=server.anchors,
    )
    with pytest.raises(LoginError) as e:
        forged.verify(
            resp,
            Challenge("other.test", ch.challenge_id, ch.r_s, ch.expires, b"", server.certificate),
            now=NOW,
            crls=pki.crls(),
        )
    assert e.value.reason == "bad_token_m"


def test_rs_from_another_session_refused(pki: Pki) -> None:
    server, client = _pair(pki)
    a, b = server.challenge(NOW), server.challenge(NOW)
    resp_b = client.respond(b, now=NOW, crls=pki.crls())
    # the response signed over B's R_S, presented against A
    moved = type(resp_b)(a.challenge_id, resp_b.r_m, resp_b.token_m, resp_b.cert_m)
    with pytest.raises(LoginError) as e:
        server.verify(moved, a, now=NOW, crls=pki.crls())
    assert e.value.reason == "bad_token_m"
    with pytest.raises(LoginError) as e:
        server.verify(resp_b, a, now=NOW, crls=pki.crls())
    assert e.value.reason == "wrong_challenge"


def test_token_s_and_token_m_are_domain_separated(pki: Pki) -> None:
    server, client = _pair(pki)
    ch = server.challenge(NOW)
    resp = client.respond(ch, now=NOW, crls=pki.crls())
    assert ch.token_s != resp.token_m
    # the user's Token-M cannot stand in for the server's Token-S
    bad = Challenge(ch.server_name, ch.challenge_id, ch.r_s, ch.expires, resp.token_m, ch.cert_s)
    with pytest.raises(LoginError) as e:
        client.respond(bad, now=NOW, crls=pki.crls())
    assert e.value.reason == "bad_token_s"
    assert tbs_m("s", "c", b"r" * 32, b"m" * 32, b"f", b"g").startswith(
        b"\x00\x19mstcrypt-login-v1/token-m"
    )


@pytest.mark.parametrize("side", ["server", "user"])
@pytest.mark.parametrize("problem", ["expired", "not_yet_valid", "revoked", "unknown_issuer"])
def test_bad_certificates_refused_on_both_sides(pki: Pki, side: str, problem: str) -> None:
    profile = Profile.LOGIN_SERVER_SIGN if side == "server" else Profile.DEVICE_SIGN
    kw: dict[str, object] = {}
    if problem == "expired":
        kw = {"not_before": NOW - timedelta(days=30), "not_after": NOW - timedelta(days=1)}
    elif problem == "not_yet_valid":
        kw = {"not_before": NOW + timedelta(days=1), "not_after": NOW + timedelta(days=30)}
    issuer = Pki("Other Root") if problem == "unknown_issuer" else pki
    _, cert = issuer.leaf(side, profile, **kw)
    if problem == "revoked":
        pki.revoked.append(RevokedEntry(cert.serial, NOW - timedelta(minutes=1), None))
    server, client = _pair(
        pki, **({"server_cert": cert} if side == "server" else {"user_cert": cert})
    )
    ch = server.challenge(NOW)
    with pytest.raises(LoginError) as e:
        resp = client.respond(ch, now=NOW, crls=pki.crls())
        server.verify(resp, ch, now=NOW, crls=pki.crls())
    assert e.value.reason == f"{side}_certificate_{problem}"


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _stray_bits(text: str) -> str:
    """``text`` (padded base64 of a length not divisible by 3) with the unused bits of
    its last character set: the same bytes to a lenient decoder, not the canonical
    text."""
    body = text.rstrip("=")
    unused = {1: 2, 2: 4}[len(text) - len(body)]
    out = body[:-1] + _B64[_B64.index(body[-1]) | ((1 << unused) - 1)] + text[len(body) :]
    assert out != text and base64.b64decode(out, validate=True) == base64.b64decode(text)
    return out


def test_malformed_messages(pki: Pki) -> None:
    server, _ = _pair(pki)
    good = server.challenge(NOW).to_json()
    for mutate in (
        lambda d: d.pop("r_s"),
        lambda d: d.update(r_s="@@"),
        lambda d: d.update(r_s=base64.b64encode(b"x").decode()),
        lambda d: d.update(cert_s="junk"),
        lambda d: d.update(expires="soon"),
        lambda d: d.update(chain="x"),
        lambda d: d.update(r_s=_stray_bits(d["r_s"])),
    ):
        d = dict(good)
        mutate(d)
        with pytest.raises(LoginError):
            Challenge.from_json(d)
    with pytest.raises(LoginError):
        Challenge.from_json([1, 2])
    server, client = _pair(pki)
    resp = client.respond(server.challenge(NOW), now=NOW, crls=pki.crls()).to_json()
    with pytest.raises(LoginError, match="canonical"):
        Response.from_json(dict(resp, r_m=_stray_bits(resp["r_m"])))


def test_expired_challenge(pki: Pki) -> None:
    server, client = _pair(pki)
    ch = server.challenge(NOW)
    resp = client.respond(ch, now=NOW, crls=pki.crls())
    with pytest.raises(LoginError) as e:
        server.verify(resp, ch, now=NOW + timedelta(seconds=61), crls=pki.crls())
    assert e.value.reason == "challenge_expired"


# --------------------------------------------------------------- service level -------
@pytest.fixture
def platform(database_url: str) -> Kmc:
    k = Kmc(Database(database_url), SoftKeyStore(secrets.token_bytes(32)), crl_base_url="http://t")
    k.create_schema()
    k.init_ca(actor="t")
    yield k
    k.db.dispose()


def _user(kmc: Kmc, owner: str = "alice", code: str | None = None) -> LoginClient:
    key = SM2PrivateKey.generate()
    if code is None:
        code, _ = kmc.create_enrollment_code(owner=owner, subject={"CN": owner}, actor="op")
    e = kmc.enroll(code, build_csr(name(CN=owner), key.public_key(), key.sign).der)
    chain = kmc.chain()
    return LoginClient(
        expected_server_name="login.example",
        certificate=e.sign_certificate,
        signer=key.sign,
        chain=chain[:-1],
        anchors=chain[-1:],
    )


def _crls(kmc: Kmc) -> list[CRL]:
    return [CRL.from_der(kmc.crl()), CRL.from_der(kmc.crl("root"))]


def _login(svc: LoginService, user: LoginClient, kmc: Kmc, source: str = "10.0.0.1") -> dict:
    ch = svc.challenge(source=source)
    resp = user.respond(ch, now=datetime.now(UTC), crls=_crls(kmc))
    return svc.respond(resp.to_json(), source=source)


def test_login_and_session_token(platform: Kmc) -> None:
    svc = LoginService(platform, server_name="login.example")
    user = _user(platform)
    r = _login(svc, user, platform)
    claims = svc.verify_session(r["session_token"])
    assert claims["owner"] == "alice" and claims["amr"] == ["cert", "pin"]
    assert claims["iss"] == "login.example" and claims["exp"] - claims["iat"] == 3600
    # any service can verify with the login server's public key
    tokens.verify(
        r["session_token"], svc.certificate.public_key, audience="mstcrypt", now=claims["iat"]
    )
    with pytest.raises(tokens.TokenError, match="audience"):
        tokens.verify(
            r["session_token"], svc.certificate.public_key, audience="mail", now=claims["iat"]
        )
    actions = [a for a in _audit_actions(platform) if a.startswith("login.")]
    assert actions == ["login.success"]


def _audit_actions(kmc: Kmc) -> list[str]:
    from sqlalchemy import select

    from mstcrypt.kmc.models import AuditRecord

    with kmc.db.tx() as s:
        return [r.action for r in s.scalars(select(AuditRecord).order_by(AuditRecord.seq))]


def test_replay_refused_across_instances(platform: Kmc, database_url: str) -> None:
    svc1 = LoginService(platform, server_name="login.example")
    other_kmc = Kmc(Database(database_url), platform.keystore)
    svc2 = LoginService(other_kmc, server_name="login.example")
    assert svc2.certificate == svc1.certificate  # the same identity from the shared DB
    user = _user(platform)
    ch = svc1.challenge(source="a")
    resp = user.respond(ch, now=datetime.now(UTC), crls=_crls(platform))
    svc1.respond(resp.to_json(), source="a")
    with pytest.raises(LoginError) as e:
        svc2.respond(resp.to_json(), source="b")
    assert e.value.reason == "replayed"
    # a challenge consumed by a failed attempt cannot be retried either
    ch = svc2.challenge(source="a")
    resp = user.respond(ch, now=datetime.now(UTC), crls=_crls(platform))
    bad = dict(
        resp.to_json(), token_m=base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode()
    )
    with pytest.raises(LoginError):
        svc1.respond(bad, source="a")
    with pytest.raises(LoginError) as e:
        svc1.respond(resp.to_json(), source="a")
    assert e.value.reason == "replayed"
    other_kmc.db.dispose()
    assert "login.failure" in _audit_actions(platform)
    assert platform.verify_audit().ok  # raw-path records chain like the ORM ones


def test_revoked_user_refused(platform: Kmc) -> None:
    svc = LoginService(platform, server_name="login.example")
    user = _user(platform)
    platform.revoke_certificate(f"{user.certificate.serial:x}", reason="key_compromise", actor="op")
    svc._crl_cache.clear()
    with pytest.raises(LoginError) as e:
        _login(svc, user, platform)
    assert e.value.reason == "user_certificate_revoked"


class Clock:
    """An injected clock for the service (the terminal keeps real time)."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def _junk(svc: LoginService, victim: LoginClient, kmc: Kmc, source: str, i: int) -> LoginError:
    """One response presenting ``victim``'s certificate with a signature the attacker can
    make: garbage DER, random bytes, or a valid SM2 signature by another key."""
    ch = svc.challenge(source=source)
    resp = victim.respond(ch, now=datetime.now(UTC), crls=_crls(kmc)).to_json()
    tbs = tbm = base64.b64decode(resp["r_m"])
    if i % 3 == 0:
        token = b"\x30\x06\x02\x01\x01\x02\x01\x01"
    elif i % 3 == 1:
        token = secrets.token_bytes(72)
    else:  # well-formed, over the right bytes, by the attacker's own key
        tbs = tbs_m(
            "login.example",
            ch.challenge_id,
            ch.r_s,
            tbm,
            bytes.fromhex(ch.cert_s.fingerprint),
            bytes.fromhex(victim.certificate.fingerprint),
        )
        token = SM2PrivateKey.generate().sign(tbs)
    resp["token_m"] = base64.b64encode(token).decode()
    with pytest.raises(LoginError) as e:
        svc.respond(resp, source=source)
    return e.value


def _failure_rows(kmc: Kmc) -> dict[str, tuple[int, int]]:
    with kmc.db.tx() as s:
        return {r.key: (r.failures, r.locked_until) for r in s.scalars(select(LoginFailures))}


def test_junk_with_someones_certificate_does_not_lock_them(platform: Kmc) -> None:
    """Finding 4: twenty junk responses presenting alice's certificate (before: five
    locked her out) leave alice able to log in; they count against their source only."""
    svc = LoginService(platform, server_name="login.example")
    alice = _user(platform)
    serial = f"{alice.certificate.serial:x}"
    reasons = {_junk(svc, alice, platform, f"evil-{i % 2}", i).reason for i in range(20)}
    assert reasons == {"bad_token_m"}
    rows = _failure_rows(platform)
    assert f"cert:{serial}" not in rows  # nothing counted against alice
    assert rows["src:evil-0"][0] == rows["src:evil-1"][0] == 10
    r = _login(svc, alice, platform, source="10.0.0.7")
    assert r["claims"]["serial"] == serial
    # the audit says which certificate was presented, and that it was not counted
    with platform.db.tx() as s:
        recs = s.scalars(select(AuditRecord).where(AuditRecord.action == "login.failure")).all()
    assert len(recs) == 20 and {r.target for r in recs} == {f"cert:{serial}"}
    assert not any(r.details["counted_for_certificate"] for r in recs)


def test_source_rate_limit_locks_the_source_only(platform: Kmc) -> None:
    clock = Clock()
    svc = LoginService(
        platform,
        server_name="login.example",
        policy=LoginPolicy(source_max_failures=4, lockout_seconds=600),
        clock=clock,
    )
    alice, bob = _user(platform), _user(platform, "bob")
    for i in range(4):
        _junk(svc, alice, platform, "evil", i)
    assert _failure_rows(platform)["src:evil"][1] == int(clock.t) + 600
    with pytest.raises(PolicyError, match="failed logins from this address"):
        svc.challenge(source="evil")
    # a challenge obtained elsewhere and answered from the locked source: refused
    ch = svc.challenge(source="elsewhere")
    resp = bob.respond(ch, now=datetime.now(UTC), crls=_crls(platform))
    with pytest.raises(LoginError) as e:
        svc.respond(resp.to_json(), source="evil")
    assert e.value.reason == "locked_out"
    _login(svc, alice, platform, source="10.0.0.1")
    _login(svc, bob, platform, source="10.0.0.2")
    # IPv6: one bucket per /64, so rotating through one's own /64 gains nothing
    for i in range(4):
        _junk(svc, alice, platform, f"2001:db8:0:7::{i + 1:x}", i)
    with pytest.raises(PolicyError, match="failed logins from this address"):
        svc.challenge(source="2001:db8:0:7:ffff::1")
    _login(svc, bob, platform, source="2001:db8:0:8::1")


def test_source_bucket() -> None:
    assert source_bucket("192.0.2.7") == "192.0.2.7"
    assert source_bucket("2001:db8:1:2:3:4:5:6") == source_bucket("2001:db8:1:2::1")
    assert source_bucket("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert source_bucket("2001:db8:1:3::1") != source_bucket("2001:db8:1:2::1")
    assert source_bucket("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_bucket("-") == "-" and len(source_bucket("x" * 500)) == 120


def test_wrong_password_after_valid_signature_locks_the_certificate(platform: Kmc) -> None:
    svc = LoginService(
        platform,
        server_name="login.example",
        policy=LoginPolicy(require_password=True, max_failures=3, lockout_seconds=600),
    )
    alice, bob = _user(platform), _user(platform, "bob")
    svc.set_password("alice", "correct horse", actor="op")
    svc.set_password("bob", "battery staple", actor="op")
    for i in range(3):
        with pytest.raises(LoginError) as e:
            _login_pw(svc, alice, platform, "wrong guess", source=f"s{i}")
        assert e.value.reason == "bad_password"
    assert _failure_rows(platform)[f"cert:{alice.certificate.serial:x}"][0] == 3
    with pytest.raises(LoginError) as e:
        _login_pw(svc, alice, platform, "correct horse", source="fresh")
    assert e.value.reason == "locked_out" and "certificate" in str(e.value)
    _login_pw(svc, bob, platform, "battery staple", source="s0")
    assert "login.lockout" in _audit_actions(platform)


def _login_pw(svc: LoginService, user: LoginClient, kmc: Kmc, password: str, source: str) -> dict:
    ch = svc.challenge(source=source)
    resp = user.respond(ch, now=datetime.now(UTC), crls=_crls(kmc))
    return svc.respond(resp.to_json(), source=source, password=password)


def test_active_lock_is_not_extended(platform: Kmc) -> None:
    """Finding 4: attempts during a lock (of a certificate or of a source) neither count
    nor move its end (before: each one restarted the lockout)."""
    clock = Clock()
    svc = LoginService(
        platform,
        server_name="login.example",
        policy=LoginPolicy(
            require_password=True, max_failures=2, source_max_failures=2, lockout_seconds=600
        ),
        clock=clock,
    )
    alice = _user(platform)
    svc.set_password("alice", "correct horse", actor="op")
    t0 = clock.t
    for i in range(2):
        with pytest.raises(LoginError):
            _login_pw(svc, alice, platform, "wrong guess", source=f"a{i}")
    for i in range(2):
        _junk(svc, alice, platform, "evil", i)
    key = f"cert:{alice.certificate.serial:x}"
    before = _failure_rows(platform)
    assert before[key][1] == before["src:evil"][1] == int(t0) + 600
    for dt in (1, 300, 599):
        clock.t = t0 + dt
        for pw in ("wrong guess", "correct horse"):
            with pytest.raises(LoginError) as e:
                _login_pw(svc, alice, platform, pw, source=f"b{dt}")
            assert e.value.reason == "locked_out"
        ch = svc.challenge(source="elsewhere")
        resp = alice.respond(ch, now=datetime.now(UTC), crls=_crls(platform))
        with pytest.raises(LoginError) as e:
            svc.respond(resp.to_json(), source="evil", password="correct horse")
        assert e.value.reason == "locked_out"
    after = _failure_rows(platform)
    assert after[key] == before[key] and after["src:evil"] == before["src:evil"]
    clock.t = t0 + 601
    r = _login_pw(svc, alice, platform, "correct horse", source="evil")
    assert r["claims"]["amr"] == ["cert", "pin", "pwd"]
    assert key not in _failure_rows(platform)  # a success clears the certificate count
    # a finished lock starts a new window: one more wrong password does not re-lock
    with pytest.raises(LoginError) as e:
        _login_pw(svc, alice, platform, "wrong guess", source="c")
    assert e.value.reason == "bad_password"
    _login_pw(svc, alice, platform, "correct horse", source="c")


def test_session_refused_after_logout_expiry_and_tamper(platform: Kmc) -> None:
    svc = LoginService(platform, server_name="login.example", policy=LoginPolicy(session_ttl=120))
    user = _user(platform)
    token = _login(svc, user, platform)["session_token"]
    head, claims, sig = token.split(".")[0], token.split(".")[1], token.split(".")[2]
    forged_claims = json.loads(base64.urlsafe_b64decode(claims + "=="))
    forged_claims["owner"] = "root"
    forged = ".".join(
        [
            head,
            base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=").decode(),
            sig,
        ]
    )
    with pytest.raises(tokens.TokenError, match="signature"):
        svc.verify_session(forged)
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[-1] ^= 1
    with pytest.raises(tokens.TokenError):
        svc.verify_session(
            ".".join([head, claims, base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()])
        )
    real = svc.clock
    svc.clock = lambda: real() + 200
    with pytest.raises(tokens.TokenError, match="expired"):
        svc.verify_session(token)
    svc.clock = real
    svc.logout(token)
    with pytest.raises(tokens.TokenError, match="revoked"):
        svc.verify_session(token)
    assert "login.logout" in _audit_actions(platform)


def test_password_factor(platform: Kmc) -> None:
    svc = LoginService(
        platform, server_name="login.example", policy=LoginPolicy(require_password=True)
    )
    user = _user(platform)
    with pytest.raises(LoginError) as e:
        _login(svc, user, platform)
    assert e.value.reason == "password_required"
    svc.set_password("alice", "correct horse", actor="op")
    ch = svc.challenge(source="x")
    resp = user.respond(ch, now=datetime.now(UTC), crls=_crls(platform))
    r = svc.respond(resp.to_json(), source="x", password="correct horse")
    assert r["claims"]["amr"] == ["cert", "pin", "pwd"]
    ch = svc.challenge(source="x")
    resp = user.respond(ch, now=datetime.now(UTC), crls=_crls(platform))
    with pytest.raises(LoginError) as e:
        svc.respond(resp.to_json(), source="x", password="wrong")
    assert e.value.reason == "bad_password"


# --------------------------------------------------------------- HTTP + operators ----
def test_operator_uses_session_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mstcrypt.server.app import create_app
    from mstcrypt.server.config import Settings

    monkeypatch.setenv("MSTCRYPT_STATIC_OPERATORS", "0")
    settings = Settings.from_env(tmp_path, login_server_name="login.example")
    assert settings.static_operators is False
    kmc = Kmc(settings.database(), settings.keystore(), crl_base_url="http://t")
    kmc.create_schema()
    kmc.init_ca(actor="t")
    static = kmc.operators.add_static("legacy", ["registration_officer"])
    operator_code, _ = kmc.operators.add("alice", ["registration_officer"])
    alice = _user(kmc, "alice", operator_code)
    mallory = _user(kmc, "mallory")
    with TestClient(create_app(settings, kmc)) as http:

        def session(user: LoginClient) -> str:
            ch = Challenge.from_json(http.post("/login/challenge").json())
            resp = user.respond(ch, now=datetime.now(UTC), crls=_crls(kmc))
            r = http.post("/login/response", json={"response": resp.to_json()})
            assert r.status_code == 200, r.text
            return str(r.json()["session_token"])

        body = {"owner": "zhang", "subject": {"CN": "zhang"}}
        r = http.post(
            "/admin/enrollment-codes", json=body, headers={"Authorization": f"Bearer {static}"}
        )
        assert r.status_code == 401 and "certificate" in r.json()["detail"]
        tok = session(alice)
        r = http.post(
            "/admin/enrollment-codes", json=body, headers={"Authorization": f"Bearer {tok}"}
        )
        assert r.status_code == 200, r.text
        r = http.post(
            "/admin/enrollment-codes",
            json=body,
            headers={"Authorization": f"Bearer {session(mallory)}"},
        )
        assert r.status_code == 401 and "not an operator" in r.json()["detail"]
        assert (
            http.get("/login/session", headers={"Authorization": f"Bearer {tok}"}).json()["owner"]
            == "alice"
        )
        assert (
            http.post("/login/logout", headers={"Authorization": f"Bearer {tok}"}).status_code
            == 200
        )
        r = http.post(
            "/admin/enrollment-codes", json=body, headers={"Authorization": f"Bearer {tok}"}
        )
        assert r.status_code == 401
        r = http.get("/login/session", headers={"Authorization": f"Bearer {tok}"})
        assert r.status_code == 401 and r.json()["error"] == "TokenError"
        assert "revoked" in r.json()["detail"]
        ch = http.post("/login/challenge").json()
        resp = alice.respond(Challenge.from_json(ch), now=datetime.now(UTC), crls=_crls(kmc))
        ok = http.post("/login/response", json={"response": resp.to_json()})
        replay = http.post("/login/response", json={"response": resp.to_json()})
        assert ok.status_code == 200 and replay.status_code == 403
        assert "already used" in replay.json()["detail"]
        assert http.get("/login/certificate.pem").content.startswith(b"-----BEGIN CERT")
    kmc.db.dispose()


def test_cli_enroll_and_login(tmp_path: Path) -> None:
    from mstcrypt.cli.platform import running_platform
    from mstcrypt.client import Client
    from mstcrypt.server.config import Settings

    data = tmp_path / "data"
    env = {
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src"),
        "PATH": "/usr/bin:/bin",
        "MSTCRYPT_PIN": "123456",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mstcrypt", *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    settings = Settings.from_env(data, static_operators=True)
    with running_platform(data, settings) as url:
        kmc = settings.kmc()
        token = kmc.operators.add_static("op", ["registration_officer"])
        root = data / "root.pem"
        root.write_bytes(kmc.chain()[-1].pem)
        kmc.db.dispose()
        with Client(
            url, anchors=[Certificate.from_pem(root.read_bytes())], operator_token=token
        ) as admin:
            code = admin.create_enrollment_code("carol", {"CN": "carol"})["code"]
        tok = str(tmp_path / "carol.tok")
        r = cli(
            "token",
            "init",
            "--token",
            tok,
            "--admin-code",
            "admin-code-1",
            "--iterations",
            "100000",
            "--anchor",
            str(root),
        )
        assert r.returncode == 0, r.stderr
        r = cli("enroll", "--server", url, "--code", code, "--token", tok)
        assert r.returncode == 0, r.stderr
        r = cli("login", "--server", url, "--token", tok, "--out", str(tmp_path / "s.tok"))
        assert r.returncode == 0, r.stderr
        session = (tmp_path / "s.tok").read_text().strip()
        with Client(url, anchors=[Certificate.from_pem(root.read_bytes())]) as c:
            assert c.session(session)["owner"] == "carol"
        r = cli("login", "--server", url, "--token", tok, "--server-name", "evil")
        assert r.returncode == 1 and "another server name" in r.stderr
        env["MSTCRYPT_PIN"] = "000000"
        r = cli("login", "--server", url, "--token", tok)
        assert r.returncode == 2 and "wrong PIN" in r.stderr


# --------------------------------------------------------------- server identity (5) --
def test_user_device_certificate_cannot_impersonate_the_login_server(platform: Kmc) -> None:
    """Finding 5: mallory, enrolled like any terminal (even under the server's name),
    signs a perfectly formed challenge with her device key; alice's client refuses it
    (before: the chain and key usage were all it checked)."""
    alice = _user(platform)
    key = SM2PrivateKey.generate()
    code, _ = platform.create_enrollment_code(
        owner="mallory", subject={"CN": "login.example"}, actor="op"
    )
    e = platform.enroll(code, build_csr(name(CN="login.example"), key.public_key(), key.sign).der)
    chain = platform.chain()
    fake = LoginServer(
        server_name="login.example",
        certificate=e.sign_certificate,
        signer=key.sign,
        chain=chain[:-1],
        anchors=chain[-1:],
    )
    ch = Challenge.from_json(fake.challenge(datetime.now(UTC)).to_json())
    with pytest.raises(LoginError) as err:
        alice.respond(ch, now=datetime.now(UTC), crls=_crls(platform))
    assert err.value.reason == "server_certificate_profile"
    assert "not a login-server certificate" in str(err.value)
    # the genuine server's challenge is accepted by the same client
    svc = LoginService(platform, server_name="login.example")
    _login(svc, alice, platform)


def test_login_server_certificate_checks(pki: Pki) -> None:
    sk, login_cert = pki.leaf("login.test", Profile.LOGIN_SERVER_SIGN)
    gk, gateway = pki.leaf(  # serverAuth, no policy
        "login.test", Profile.GATEWAY_SIGN, subject_alt_names=["login.test"]
    )
    ok, other = pki.leaf("other.test", Profile.LOGIN_SERVER_SIGN)
    nk, by_san = pki.leaf(
        "Login Service", Profile.LOGIN_SERVER_SIGN, subject_alt_names=["LOGIN.test"]
    )

    def attempt(cert: object, signer: object, **client_kw: object) -> None:
        server = LoginServer(
            server_name="login.test",
            certificate=cert,
            signer=signer,
            chain=[],
            anchors=[pki.root.certificate],
        )
        uk, uc = pki.leaf("alice", Profile.DEVICE_SIGN)
        client = LoginClient(
            expected_server_name="login.test",
            certificate=uc,
            signer=uk.sign,
            chain=[],
            anchors=[pki.root.certificate],
            **client_kw,
        )
        ch = server.challenge(NOW)
        server.verify(client.respond(ch, now=NOW, crls=pki.crls()), ch, now=NOW, crls=pki.crls())

    attempt(login_cert, sk.sign)
    attempt(by_san, nk.sign)  # a DNS subjectAltName equal to the name (ASCII case-blind)
    for cert, key, reason in (
        (gateway, gk, "server_certificate_profile"),
        (other, ok, "server_certificate_name"),
    ):
        with pytest.raises(LoginError) as e:
            attempt(cert, key.sign)
        assert e.value.reason == reason
    # a pinned certificate is the one accepted, whatever its profile; others are refused
    attempt(gateway, gk.sign, server_fingerprint=gateway.fingerprint.upper())
    with pytest.raises(LoginError) as e:
        attempt(login_cert, sk.sign, server_fingerprint=gateway.fingerprint)
    assert e.value.reason == "server_certificate_not_pinned"


def test_outdated_login_certificate_is_superseded(platform: Kmc) -> None:
    """A login identity issued before the login-server policy (or to another name) is
    replaced at start-up, and the old certificate revoked."""
    _, old = platform.service_identity(
        "login", Profile.GATEWAY_SIGN, "login.example", subject_alt_names=["login.example"]
    )
    svc = LoginService(platform, server_name="login.example")
    assert svc.certificate != old and svc.certificate.policies
    renamed = LoginService(platform, server_name="login2.example")
    assert renamed.certificate != svc.certificate
    revoked = CRL.from_der(platform.crl())
    assert revoked.is_revoked(old.serial) and revoked.is_revoked(svc.certificate.serial)
    user = _user(platform)
    user = LoginClient(
        expected_server_name="login2.example",
        certificate=user.certificate,
        signer=user._signer,
        chain=user.chain,
        anchors=user.anchors,
    )
    _login(renamed, user, platform)


# --------------------------------------------------------------- sessions (2, 11) -----
def test_session_dies_with_its_certificate_across_instances(
    platform: Kmc, database_url: str
) -> None:
    """Finding 2: revoking the signing certificate through the KMC ends its sessions at
    the next call, at every instance (before: they lived until exp)."""
    svc1 = LoginService(platform, server_name="login.example")
    other_kmc = Kmc(Database(database_url), platform.keystore)
    svc2 = LoginService(other_kmc, server_name="login.example")
    alice, bob = _user(platform), _user(platform, "bob")
    tok = _login(svc1, alice, platform)["session_token"]
    bob_tok = _login(svc2, bob, platform)["session_token"]
    for svc in (svc1, svc2):
        assert svc.verify_session(tok)["owner"] == "alice"
    platform.revoke_certificate(
        f"{alice.certificate.serial:x}", reason="key_compromise", actor="op"
    )
    for svc in (svc2, svc1):
        with pytest.raises(tokens.TokenError, match="certificate is revoked"):
            svc.verify_session(tok)
        assert svc.verify_session(bob_tok)["owner"] == "bob"
    other_kmc.db.dispose()


def _retoken(token: str, part: int, text: str) -> str:
    parts = token.split(".")
    parts[part] = text
    return ".".join(parts)


def test_session_token_base64_is_strict(platform: Kmc) -> None:
    """Finding 11: only the canonical unpadded base64url of each part is accepted."""
    svc = LoginService(platform, server_name="login.example")
    user = _user(platform)
    # a token with a part whose last character carries unused bits (len % 4 in {2, 3})
    for _ in range(40):
        token = _login(svc, user, platform)["session_token"]
        loose = [i for i in (1, 2) if len(token.split(".")[i]) % 4]
        if loose:
            break
    assert loose, "no token part with unused bits in 40 logins"
    svc.verify_session(token)
    i = loose[0]
    part = token.split(".")[i]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    bits = 4 if len(part) % 4 == 2 else 2
    last = alphabet.index(part[-1])
    assert last & ((1 << bits) - 1) == 0  # what we issue is canonical
    stray = part[:-1] + alphabet[last | ((1 << bits) - 1)]
    pad = "=" * (-len(part) % 4)
    # the lenient decoder reads these as the same bytes: the signature would still verify
    assert base64.urlsafe_b64decode(stray + pad) == base64.urlsafe_b64decode(part + pad)
    assert base64.urlsafe_b64decode(part[:3] + "\n" + part[3:] + pad) == (
        base64.urlsafe_b64decode(part + pad)
    )
    mutants = {
        "trailing bits": _retoken(token, i, stray),
        "padding": _retoken(token, i, part + pad),
        "newline": _retoken(token, i, part[:3] + "\n" + part[3:]),
        "space": _retoken(token, i, part[:3] + " " + part[3:]),
        "standard alphabet": _retoken(token, i, part.replace("-", "+").replace("_", "/"))
        if ("-" in part or "_" in part)
        else _retoken(token, i, part[:-1] + "+"),
        "non-alphabet": _retoken(token, i, part[:3] + "!" + part[3:]),
        "non-ascii": _retoken(token, i, part[:3] + "\u0661" + part[3:]),
        "impossible length": _retoken(token, i, part + "A" * (5 - len(part) % 4)),
    }
    for what, bad in mutants.items():
        assert bad != token, what
        with pytest.raises(tokens.TokenError, match="base64"):
            svc.verify_session(bad)
    svc.verify_session(token)


def test_session_claims_parse_strictly() -> None:
    key = SM2PrivateKey.generate()

    def token(claims_json: bytes) -> str:
        signed = b"MST1." + base64.urlsafe_b64encode(claims_json).rstrip(b"=")
        sig = base64.urlsafe_b64encode(key.sign(signed)).rstrip(b"=")
        return (signed + b"." + sig).decode()

    now = int(time.time())
    good = b'{"exp":%d,"iat":%d,"jti":"j","serial":"1"}' % (now + 60, now)
    assert tokens.verify(token(good), key.public_key(), audience=None, now=now)["jti"] == "j"
    for bad, why in (
        (b'{"exp":%d,"exp":1,"iat":%d,"jti":"j"}' % (now + 60, now), "repeat"),
        (b'{"exp":NaN,"iat":%d,"jti":"j"}' % now, "NaN"),
        (b'{"exp":true,"iat":%d,"jti":"j"}' % now, "exp/iat"),
        (b"\xff\xfe", "JSON"),
    ):
        with pytest.raises(tokens.TokenError, match=why):
            tokens.verify(token(bad), key.public_key(), audience=None, now=now)


# --------------------------------------------------------------- purge (11) -----------
def _count(kmc: Kmc, model: type) -> int:
    with kmc.db.tx() as s:
        return len(s.scalars(select(model)).all())


def test_expired_rows_are_purged_automatically(platform: Kmc) -> None:
    clock = Clock()
    policy = LoginPolicy(session_ttl=120, purge_every=4, source_max_failures=3)
    svc = LoginService(platform, server_name="login.example", policy=policy, clock=clock)
    alice = _user(platform)
    t0 = clock.t
    svc.logout(_login(svc, alice, platform)["session_token"])
    for i in range(3):  # locks source "evil"
        _junk(svc, alice, platform, "evil", i)
    svc.challenge(source="idle")  # never answered
    stale = {"login_challenges": 5, "login_failures": 1, "revoked_sessions": 1}
    assert _count(platform, LoginChallenge) == stale["login_challenges"]
    assert set(_failure_rows(platform)) == {"src:evil"}
    assert _count(platform, RevokedSession) == 1
    # a purge now keeps all of them: nothing has expired
    assert svc.purge() == dict.fromkeys([*stale, "rate_limits"], 0)
    # later, a source locked just now keeps its row while old rows go
    clock.t = t0 + policy.failure_window + policy.lockout_seconds + 1
    for i in range(3):
        _junk(svc, alice, platform, "evil2", i)
    issued_before = svc._issued
    for _ in range(policy.purge_every):  # one of these triggers the purge
        svc.challenge(source="later")
    assert svc._issued - issued_before == policy.purge_every
    assert set(_failure_rows(platform)) == {"src:evil2"}
    assert _count(platform, RevokedSession) == 0
    with platform.db.tx() as s:
        left = s.scalars(select(LoginChallenge.expires)).all()
    assert left and all(exp >= clock.t for exp in left)


def test_purge_is_bounded(platform: Kmc) -> None:
    clock = Clock()
    svc = LoginService(
        platform,
        server_name="login.example",
        policy=LoginPolicy(purge_every=0),
        clock=clock,
    )
    for _ in range(5):
        svc.challenge(source="x")
    clock.t += 3600
    assert svc.purge(batch=2)["login_challenges"] == 2
    assert _count(platform, LoginChallenge) == 3
    assert svc.purge()["login_challenges"] == 3
    assert _count(platform, LoginChallenge) == 0


def test_refused_challenges_write_nothing(platform: Kmc) -> None:
    """A challenge refused for a locked source or a spent budget stores no challenge
    and counts nothing; a challenge budget of 0 refuses every request."""

    clock = Clock()
    clock.t = (int(clock.t) // 60) * 60 + 1.0
    policy = LoginPolicy(challenges_per_minute=3, source_max_failures=2, purge_every=0)
    svc = LoginService(platform, server_name="login.example", policy=policy, clock=clock)
    alice = _user(platform)
    for i in range(2):  # two junk responses lock the source "evil"
        _junk(svc, alice, platform, "evil", i)
    stored, counts = _count(platform, LoginChallenge), _rate_counts(platform)
    with pytest.raises(RateLimitError, match="too many failed logins"):
        svc.challenge(source="evil")
    assert _count(platform, LoginChallenge) == stored and _rate_counts(platform) == counts
    svc.challenge(source="busy")  # 1 of 3 (another address, its own budget)
    svc.challenge(source="busy")
    svc.challenge(source="busy")
    for _ in range(2):
        with pytest.raises(RateLimitError, match="too many login requests"):
            svc.challenge(source="busy")
    assert _count(platform, LoginChallenge) == stored + 3
    assert _rate_counts(platform)["login:busy"] == 3
    none = LoginService(
        platform,
        server_name="login.example",
        policy=LoginPolicy(challenges_per_minute=0, purge_every=0),
        clock=clock,
    )
    with pytest.raises(RateLimitError, match="too many login requests"):
        none.challenge(source="quiet")
    assert "login:quiet" not in _rate_counts(platform)
    assert _count(platform, LoginChallenge) == stored + 3


def test_the_challenge_commit_skips_the_wal_flush_on_postgresql(platform: Kmc) -> None:
    """On PostgreSQL the challenge's statement commits with ``synchronous_commit`` off
    (a lost challenge costs a retry), for its own transaction only: the pooled
    connection keeps the server's setting for the next transaction (the response's,
    with its audit record, is durable)."""
    if platform.db.is_sqlite:
        pytest.skip("SQLite: test_a_lazy_transaction_skips_the_sync_and_restores_it")
    from mstcrypt.apps.login import fastpath
    from mstcrypt.apps.login import service as login_service

    svc = LoginService(platform, server_name="login.example", policy=LoginPolicy(purge_every=0))
    raw = platform.db.engine.raw_connection()
    try:
        conn = raw.driver_connection
        conn.autocommit = True
        cur = raw.cursor()
        cur.execute("SHOW synchronous_commit")
        assert cur.fetchone()[0] == "on"
        # the statement's own setting, as it runs
        sql = fastpath._NAMED.sub(r"%(\1)s", login_service._CHALLENGE_PG_SQL)
        cur.execute(
            sql,
            {
                "k": "src:probe",
                "now": 0,
                "rk": "login:probe",
                "w": 0,
                "lim": 1,
                "id": "c" * 32,
                "srv": "login.example",
                "rs": b"r" * 32,
                "exp": 1,
                "src": "probe",
            },
        )
        assert cur.fetchone() == (0, 1, 1, "off")
        cur.execute("SHOW synchronous_commit")  # and only for that transaction
        assert cur.fetchone()[0] == "on"
        conn.autocommit = False
    finally:
        raw.close()
    svc.challenge(source="10.0.0.9")
    with platform.db.engine.connect() as c:
        assert c.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"


def _rate_counts(kmc: Kmc) -> dict[str, int]:
    with kmc.db.tx() as s:
        return {r.key: r.count for r in s.scalars(select(RateLimit))}


def test_challenge_budget_is_shared_by_instances(platform: Kmc) -> None:
    """Two login services on one database (two server instances) share one budget of
    challenges per source address and minute, and the spent counters are purged."""
    clock = Clock()
    clock.t = (int(clock.t) // 60) * 60 + 1.0  # the start of a fixed window
    policy = LoginPolicy(challenges_per_minute=5, purge_every=0)
    a, b = (
        LoginService(platform, server_name="login.example", policy=policy, clock=clock)
        for _ in range(2)
    )
    for i in range(5):
        (a, b)[i % 2].challenge(source="198.51.100.9")
    for svc in (a, b):
        with pytest.raises(RateLimitError, match="too many login requests"):
            svc.challenge(source="198.51.100.9")
    b.challenge(source="198.51.100.10")  # another address has its own budget
    clock.t += 60  # the next window
    a.challenge(source="198.51.100.9")
    clock.t += 120
    assert a.purge()["rate_limits"] == 3


def _round_trips(kmc: Kmc, run: Callable[[], object]) -> list[str]:
    """The statements ``run`` sends, one entry per round trip (libpq's protocol trace of
    every pooled connection: a Sync ends an extended-protocol batch, a Query is one
    simple-protocol statement); the first statement of each batch is named."""
    with tempfile.TemporaryFile() as trace:

        def on(dbapi: Any, _rec: Any, _proxy: Any) -> None:
            dbapi.pgconn.trace(trace.fileno())

        def off(dbapi: Any, _rec: Any) -> None:
            dbapi.pgconn.untrace()

        event.listen(kmc.db.engine, "checkout", on)
        event.listen(kmc.db.engine, "checkin", off)
        try:
            run()
        finally:
            event.remove(kmc.db.engine, "checkout", on)
            event.remove(kmc.db.engine, "checkin", off)
        trace.seek(0)
        lines = trace.read().decode(errors="replace").splitlines()
    trips, first = [], None
    for line in lines:
        _, side, _, kind, *rest = [*line.split("\t"), ""]
        if side != "F":
            continue
        statement = (rest[0] if rest else "").strip().strip('" ')[:40]
        if kind == "Parse" and first is None:
            first = statement
        elif kind == "Query":
            trips.append(statement)
        elif kind == "Sync":
            trips.append(first or "?")
            first = None
    return trips


def test_a_postgresql_login_takes_six_round_trips(platform: Kmc) -> None:
    """Challenge: one statement. Response: the read; BEGIN, the challenge consumed and
    the failure counters locked in one pipeline (the server still runs them in that
    order); the audit head locked, the record appended; COMMIT. Each round trip waits
    for the server and, under load, for the interpreter lock."""
    if platform.db.is_sqlite:
        pytest.skip("SQLite has no round trips")
    svc = LoginService(platform, server_name="login.example", policy=LoginPolicy(purge_every=0))
    user = _user(platform)
    _login(svc, user, platform)  # warm: CRLs, the login key, prepared statements
    challenge: list[Any] = []
    trips = _round_trips(platform, lambda: challenge.append(svc.challenge(source="10.0.0.1")))
    assert len(trips) == 1, trips
    resp = user.respond(challenge[0], now=datetime.now(UTC), crls=_crls(platform)).to_json()
    trips = _round_trips(platform, lambda: svc.respond(resp, source="10.0.0.1"))
    assert len(trips) == 5, trips
    assert trips[1].startswith("BEGIN") and trips[-1] == "COMMIT", trips
    assert _audit_actions(platform)[-1] == "login.success"
    # the pooled connection came back as it went out: not autocommit, no transaction
    raw = platform.db.engine.raw_connection()
    try:
        assert raw.driver_connection.autocommit is False
        assert raw.driver_connection.info.transaction_status.name == "IDLE"
    finally:
        raw.close()


def test_a_failed_fast_path_transaction_rolls_back_whole(platform: Kmc) -> None:
    """A statement that fails after others (pipelined with BEGIN on PostgreSQL) ends the
    transaction: nothing it wrote stays, and the connection serves the next one."""
    with pytest.raises(Exception), RawTx(platform.db) as tx:
        tx.rows(
            ("UPDATE audit_head SET seq = seq + 1000 WHERE id = 1", {}),
            ("SELECT * FROM no_such_table", {}),
        )
    with RawTx(platform.db) as tx:
        assert tx.q("SELECT seq FROM audit_head WHERE id = 1").fetchone()[0] < 1000
    raw = platform.db.engine.raw_connection()
    try:
        if not platform.db.is_sqlite:
            assert raw.driver_connection.autocommit is False
            assert raw.driver_connection.info.transaction_status.name == "IDLE"
    finally:
        raw.close()


def test_without_pipelining_the_same_statements_go_one_at_a_time(
    platform: Kmc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a driver that cannot pipeline (libpq before 14), the login sends the same
    statements in the same order, one round trip each, and still succeeds."""
    if platform.db.is_sqlite:
        pytest.skip("SQLite has no round trips")
    from mstcrypt.apps.login import fastpath

    monkeypatch.setattr(fastpath, "_pipelines", lambda: False)
    svc = LoginService(platform, server_name="login.example", policy=LoginPolicy(purge_every=0))
    user = _user(platform)
    _login(svc, user, platform)
    ch = svc.challenge(source="10.0.0.1")
    resp = user.respond(ch, now=datetime.now(UTC), crls=_crls(platform)).to_json()
    trips = _round_trips(platform, lambda: svc.respond(resp, source="10.0.0.1"))
    assert len(trips) == 7, trips
    assert trips[1].startswith("BEGIN") and trips[2].startswith("UPDATE login_challenges")
    assert trips[3].startswith("WITH lk") and trips[-1] == "COMMIT", trips
    assert _audit_actions(platform)[-1] == "login.success"
