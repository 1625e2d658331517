"""Certificate login (T/ZSA 37-2020 §7.3): protocol, service, session tokens, operator
access with session tokens, CLI."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mstcrypt.apps.login import tokens
from mstcrypt.apps.login.service import LoginPolicy, LoginService
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import CRL, Issuer, Profile, RevokedEntry, build_csr, name
from mstcrypt.protocols.login import Challenge, LoginClient, LoginError, LoginServer, tbs_m

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
    ):
        d = dict(good)
        mutate(d)
        with pytest.raises(LoginError):
            Challenge.from_json(d)
    with pytest.raises(LoginError):
        Challenge.from_json([1, 2])


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


def test_lockout_per_certificate_and_source(platform: Kmc) -> None:
    svc = LoginService(
        platform,
        server_name="login.example",
        policy=LoginPolicy(max_failures=3, lockout_seconds=600),
    )
    user = _user(platform)
    for _ in range(3):
        ch = svc.challenge(source="s1")
        resp = user.respond(ch, now=datetime.now(UTC), crls=_crls(platform)).to_json()
        resp["r_m"] = base64.b64encode(secrets.token_bytes(32)).decode()  # breaks Token-M
        with pytest.raises(LoginError) as e:
            svc.respond(resp, source="s1")
        assert e.value.reason == "bad_token_m"
    with pytest.raises(LoginError) as e:
        _login(svc, user, platform, source="s2")  # the certificate is locked
    assert e.value.reason == "locked_out"
    other = _user(platform, "bob")
    with pytest.raises(LoginError) as e:
        _login(svc, other, platform, source="s1")  # the source address is locked
    assert e.value.reason == "locked_out"
    _login(svc, other, platform, source="s3")
    real = svc.clock
    svc.clock = lambda: real() + 601
    _login(svc, user, platform, source="s2")  # lock expired


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
        assert r.status_code == 401 and r.json()["error"] == "AuthenticationError"
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

    with running_platform(data) as url:
        token = Settings.from_env(data).kmc().operators.add_static("op", ["registration_officer"])
        with Client(url, operator_token=token) as admin:
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
        )
        assert r.returncode == 0, r.stderr
        r = cli("enroll", "--server", url, "--code", code, "--token", tok)
        assert r.returncode == 0, r.stderr
        r = cli("login", "--server", url, "--token", tok, "--out", str(tmp_path / "s.tok"))
        assert r.returncode == 0, r.stderr
        session = (tmp_path / "s.tok").read_text().strip()
        with Client(url) as c:
            assert c.session(session)["owner"] == "carol"
        r = cli("login", "--server", url, "--token", tok, "--server-name", "evil")
        assert r.returncode == 1 and "another server name" in r.stderr
        env["MSTCRYPT_PIN"] = "000000"
        r = cli("login", "--server", url, "--token", tok)
        assert r.returncode == 2 and "wrong PIN" in r.stderr
