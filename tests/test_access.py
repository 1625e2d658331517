"""Who may call which route: the platform's authorization table, checked against the app
(every route is listed, nothing else exists) and then exercised route by route with
every kind of caller — nobody, malformed and forged credentials, a terminal's session,
and operators of each role, with static credentials and with certificate sessions.

Audiences:

* ``PUBLIC``  — anybody; trust comes from signatures, so no header changes the answer;
* ``CODE``    — the one-time enrollment code in the body is the credential;
* ``LOGIN``   — the signed §7.3 response in the body is the credential;
* ``SESSION`` — a §7.3 session token of a terminal (or of an operator as a user);
* a set of roles — an operator holding one of them (:mod:`mstcrypt.kmc.operators`);
* ``CONSOLE_CODE`` — an operator's §7.3 session token, certificate login only (the
  web console's one-time code);
* ``CONSOLE`` — the web console's session cookie: no bearer credential of any kind
  reaches these pages (a page sends the browser to the login; a form is refused).
  Their roles are tested in ``tests/console/``.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from http_helpers import (
    Platform,
    Terminal,
    assert_error,
    bearer,
    cert_of,
    csr_pem,
    make_kmc,
    platform,
)
from mstcrypt.apps.login import tokens
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.kmc.operators import ADMINISTRATOR, AUDITOR, KEY_RECOVERY_OFFICER, ROLES
from mstcrypt.kmc.operators import REGISTRATION_OFFICER as RA
from mstcrypt.kmc.service import Kmc

PUBLIC, CODE, LOGIN, SESSION = "PUBLIC", "CODE", "LOGIN", "SESSION"
CONSOLE, CONSOLE_CODE = "CONSOLE", "CONSOLE_CODE"
KRO, ADMIN = KEY_RECOVERY_OFFICER, ADMINISTRATOR

ACCESS: dict[tuple[str, str], str | frozenset[str]] = {
    # public: CA, CRLs, OCSP, directory, the certified escrow key, the login server's certificate
    ("GET", "/health"): PUBLIC,
    ("GET", "/ca/chain.pem"): PUBLIC,
    ("GET", "/ca/escrow.pem"): PUBLIC,
    ("GET", "/ca/{ca}.pem"): PUBLIC,
    ("GET", "/crl/{ca}.crl"): PUBLIC,
    ("GET", "/crl/{ca}-delta.crl"): PUBLIC,
    ("GET", "/directory/certificates/{serial}"): PUBLIC,
    ("GET", "/directory/certificates"): PUBLIC,
    ("GET", "/directory/encryption-certificate/{owner}"): PUBLIC,
    ("GET", "/login/certificate.pem"): PUBLIC,
    ("POST", "/login/challenge"): PUBLIC,
    ("POST", "/ocsp"): PUBLIC,
    ("GET", "/ocsp/{request_b64}"): PUBLIC,
    # the credential is in the body
    ("POST", "/enroll"): CODE,
    ("POST", "/login/response"): LOGIN,
    # a session token: only the caller's own session and keys
    ("GET", "/login/session"): SESSION,
    ("POST", "/login/logout"): SESSION,
    ("GET", "/kmc/kdk"): SESSION,
    ("GET", "/kmc/groups/{group}/key"): SESSION,
    ("GET", "/kmc/keys/pending"): SESSION,
    ("POST", "/kmc/keys/{key_id}/collected"): SESSION,
    # voice call signalling (apps.voice): a terminal's session
    ("POST", "/voice/register"): SESSION,
    ("POST", "/voice/unregister"): SESSION,
    ("POST", "/voice/calls"): SESSION,
    ("GET", "/voice/calls/{call_id}"): SESSION,
    ("POST", "/voice/calls/{call_id}/answer"): SESSION,
    ("POST", "/voice/calls/{call_id}/confirm"): SESSION,
    ("POST", "/voice/calls/{call_id}/bye"): SESSION,
    ("GET", "/voice/events"): SESSION,
    # seal server (terminal side): the caller's own two-party keys, the seals it may use
    ("POST", "/seal/keys"): SESSION,
    ("GET", "/seal/keys"): SESSION,
    ("POST", "/seal/keys/{key_id}/keygen"): SESSION,
    ("POST", "/seal/keys/{key_id}/certificate"): SESSION,
    ("POST", "/seal/keys/{key_id}/sign"): SESSION,
    ("POST", "/seal/keys/{key_id}/decrypt"): SESSION,
    ("POST", "/seal/keys/{key_id}/refresh"): SESSION,
    ("GET", "/seal/seals"): SESSION,
    ("GET", "/seal/seals/{es_id}"): SESSION,
    # registration officers
    ("POST", "/admin/enrollment-codes"): frozenset({RA}),
    ("POST", "/admin/enrollment-codes/{code_id}/expire"): frozenset({RA}),
    ("POST", "/admin/certificates/{serial}/revoke"): frozenset({RA}),
    ("POST", "/admin/keys"): frozenset({RA}),
    ("POST", "/admin/keys/rotate"): frozenset({RA}),
    ("POST", "/admin/keys/{key_id}/distribute"): frozenset({RA}),
    ("POST", "/admin/keys/{key_id}/revoke"): frozenset({RA}),
    ("POST", "/admin/groups"): frozenset({RA}),
    ("POST", "/admin/groups/{group}/members"): frozenset({RA}),
    ("POST", "/admin/login-passwords/{owner}"): frozenset({RA}),
    # key-recovery officers (dual control among themselves)
    ("POST", "/admin/recovery"): frozenset({KRO}),
    ("POST", "/admin/file-recovery"): frozenset({KRO}),
    ("GET", "/admin/recovery/{request_id}"): frozenset({KRO}),
    ("POST", "/admin/recovery/{request_id}/approve"): frozenset({KRO}),
    # administrators
    ("POST", "/admin/keys/{key_id}/archive"): frozenset({ADMIN}),
    ("POST", "/admin/keys/{key_id}/destroy"): frozenset({ADMIN}),
    ("POST", "/admin/backup"): frozenset({ADMIN}),
    ("POST", "/admin/audit/checkpoint"): frozenset({ADMIN}),
    ("POST", "/admin/seal/seals"): frozenset({ADMIN}),
    ("POST", "/admin/seal/seals/{es_id}/revoke"): frozenset({ADMIN}),
    # a lost phone: the server share of a seal key is disabled
    ("POST", "/admin/seal/keys/{key_id}/disable"): frozenset({RA, ADMIN}),
    ("POST", "/admin/seal/keys/{key_id}/enable"): frozenset({RA, ADMIN}),
    ("POST", "/admin/seal/owners/{owner}/disable"): frozenset({RA, ADMIN}),
    # auditors (and administrators): verify the audit chain
    ("GET", "/admin/audit/verify"): frozenset({AUDITOR, ADMIN}),
    ("GET", "/admin/seal/stampings"): frozenset({AUDITOR, ADMIN}),
    # key metadata (public keys and states) for every operator role
    ("GET", "/admin/keys"): frozenset({RA, KRO, AUDITOR, ADMIN}),
    # app signing: the channel's developer directory; registration officers register
    ("GET", "/appsign/developers"): PUBLIC,
    ("POST", "/admin/appsign/developers"): frozenset({RA}),
    # trusted boot: a terminal attests its own boot; golden values, models, verdicts
    ("POST", "/boot/challenge"): SESSION,
    ("POST", "/boot/attest"): SESSION,
    ("POST", "/admin/boot/golden"): frozenset({ADMIN}),
    ("POST", "/admin/boot/devices"): frozenset({RA}),
    ("GET", "/admin/boot/attestations"): frozenset({AUDITOR, ADMIN}),
    # the web console: its assets and login page, the code exchange (the code in the
    # form is the credential), the CLI's code request, and the pages (cookie session)
    ("GET", "/console/static/{name}"): PUBLIC,
    # Prometheus metrics: counts only (a token only when MSTCRYPT_METRICS_TOKEN is set)
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/console/login"): PUBLIC,
    ("POST", "/console/login"): CODE,
    ("POST", "/console/code"): CONSOLE_CODE,
    ("POST", "/console/logout"): CONSOLE,
    ("GET", "/console"): CONSOLE,
    ("GET", "/console/certificates"): CONSOLE,
    ("GET", "/console/certificates/{serial}"): CONSOLE,
    ("POST", "/console/certificates/{serial}/revoke"): CONSOLE,
    ("GET", "/console/codes"): CONSOLE,
    ("POST", "/console/codes"): CONSOLE,
    ("POST", "/console/codes/{code_id}/expire"): CONSOLE,
    ("GET", "/console/keys"): CONSOLE,
    ("POST", "/console/keys/{key_id}/archive"): CONSOLE,
    ("POST", "/console/keys/{key_id}/destroy"): CONSOLE,
    ("POST", "/console/keys/{key_id}/rotate"): CONSOLE,
    ("GET", "/console/recovery"): CONSOLE,
    ("POST", "/console/recovery"): CONSOLE,
    ("GET", "/console/recovery/{request_id}"): CONSOLE,
    ("POST", "/console/recovery/{request_id}/approve"): CONSOLE,
    ("GET", "/console/audit"): CONSOLE,
    ("GET", "/console/audit/verify"): CONSOLE,
    ("GET", "/console/audit/export"): CONSOLE,
    ("GET", "/console/operators"): CONSOLE,
    ("GET", "/console/compliance"): CONSOLE,
    ("GET", "/console/groups"): CONSOLE,
    ("POST", "/console/groups"): CONSOLE,
    ("GET", "/console/groups/{group}"): CONSOLE,
    ("POST", "/console/groups/{group}/members"): CONSOLE,
}

#: framework routes outside the API (not in the OpenAPI document)
DOC_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def app_routes(app: Any) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, ops in app.openapi()["paths"].items()
        for method in ops
        if method.upper() in {"GET", "POST", "PUT", "PATCH", "DELETE"}
    }


def hidden_routes(app: Any) -> list[str]:
    """Routes left out of the OpenAPI document (so they would escape the table)."""
    hidden = []
    for route in app.routes:
        included = getattr(route, "original_router", None)
        inner = included.routes if included is not None else [route]
        for r in inner:
            path = getattr(r, "path", "")
            if not getattr(r, "include_in_schema", True) and path not in DOC_ROUTES:
                hidden.append(path)
    return hidden


# ---------------------------------------------------------------- the table -------------
@pytest.fixture
def sqlite_kmc(tmp_path: Path) -> Iterator[Kmc]:
    k = make_kmc(f"sqlite:///{tmp_path / 'kmc.db'}")
    yield k
    k.db.dispose()


def test_table_is_every_route(sqlite_kmc: Kmc, tmp_path: Path) -> None:
    gen = platform(sqlite_kmc, tmp_path / "data")
    p = next(gen)
    try:
        routes = app_routes(p.c.app)
        assert not routes - set(ACCESS), f"routes missing from ACCESS: {routes - set(ACCESS)}"
        assert not set(ACCESS) - routes, f"ACCESS lists gone routes: {set(ACCESS) - routes}"
        assert hidden_routes(p.c.app) == []
        # operator routes live under /admin, and nothing else does
        for (_, path), audience in ACCESS.items():
            assert isinstance(audience, frozenset) == path.startswith("/admin"), path
            if isinstance(audience, frozenset):
                assert audience and audience <= set(ROLES), path
        # the auditor role reads and verifies; it changes nothing
        for (method, path), audience in ACCESS.items():
            if isinstance(audience, frozenset) and AUDITOR in audience:
                assert method == "GET", path
    finally:
        gen.close()


# ---------------------------------------------------------------- the callers -----------
@dataclass(frozen=True)
class Caller:
    name: str
    headers: dict[str, str]
    #: "none" (no valid credential), "foreign" (a session token for another audience),
    #: "terminal", "static" or "certificate" (operators)
    kind: str
    roles: frozenset[str] = frozenset()


def _sign_claims(p: Platform, claims: dict[str, Any], signer: Any = None) -> str:
    return tokens.issue(claims, signer or p.c.app.state.login()._key.sign)


def _callers(p: Platform, terminal: Terminal, cert_ops: dict[str, Terminal]) -> list[Caller]:
    static = {role: p.kmc.operators.add_static(f"static-{role}", [role]) for role in ROLES}
    claims = p.c.get("/login/session", headers=terminal.headers).json()
    now = int(time.time())
    expired = {**claims, "iat": now - 7200, "exp": now - 3600, "jti": secrets.token_hex(16)}
    other_audience = {**claims, "aud": ["mail"], "jti": secrets.token_hex(16)}
    admin_claims = p.c.get("/login/session", headers=cert_ops[ADMIN].headers).json()
    attacker = SM2PrivateKey.generate()
    logged_out = p.session(terminal.key, terminal.sign_cert)
    assert p.c.post("/login/logout", headers=bearer(logged_out)).status_code == 200
    op_token = p.ops["alice"]
    none = [
        ("anonymous", {}),
        ("basic", {"Authorization": f"Basic {base64.b64encode(b'alice:pw').decode()}"}),
        ("no scheme", {"Authorization": op_token}),
        ("empty bearer", {"Authorization": "Bearer"}),
        ("blank bearer", {"Authorization": "Bearer "}),
        ("huge bearer", bearer("op_" + "A" * 9000)),
        ("unknown static", bearer("op_" + secrets.token_urlsafe(24))),
        ("truncated static", bearer(op_token[:-1])),
        ("garbage session", bearer("MST1.garbage")),
        ("tampered session", bearer(terminal.token[:-4] + "AAAA")),
        ("attacker-signed operator", bearer(_sign_claims(p, admin_claims, attacker.sign))),
        ("expired session", bearer(_sign_claims(p, expired))),
        ("logged out", bearer(logged_out)),
    ]
    out = [Caller(n, h, "none") for n, h in none]
    # a genuine token made for another of our services: not a session here, but its
    # holder may end it (logout takes a token of any audience and ends only that one)
    out.append(Caller("other audience", bearer(_sign_claims(p, other_audience)), "foreign"))
    out.append(Caller("terminal", terminal.headers, "terminal"))
    for role in ROLES:
        out.append(Caller(f"static {role}", bearer(static[role]), "static", frozenset({role})))
        out.append(
            Caller(f"certificate {role}", cert_ops[role].headers, "certificate", frozenset({role}))
        )
    return out


def _request(
    p: Platform, method: str, path: str, caller: Caller, t: Terminal, victim: str
) -> httpx.Response:
    values = {
        "ca": "root",
        # the revocation route revokes for real: not the certificate the callers use
        "serial": victim if path.startswith("/admin") else f"{t.sign_cert.serial:x}",
        "owner": t.owner,
        "group": "no-such-group",
        "key_id": "no-such-key",
        "request_b64": "MAA=",
        "request_id": "no-such-request",
        "call_id": "no-such-call",
        "es_id": "no-such-seal",
        "name": "console.css",
        "code_id": "no-such-code",
    }
    url = path.format(**values)
    params = {"owner": t.owner} if path in ("/admin/keys", "/directory/certificates") else None
    if method == "POST" and ACCESS[(method, path)] == CONSOLE:
        # a well-formed console form (with a CSRF field), so that only the missing
        # console session can refuse it
        return p.c.request(
            method,
            url,
            headers=caller.headers,
            params=params,
            data={"csrf": "x" * 43, "reason": "unspecified", "confirm": "x"},
            follow_redirects=False,
        )
    body = {} if method == "POST" else None
    return p.c.request(
        method, url, headers=caller.headers, params=params, json=body, follow_redirects=False
    )


def _allowed(route: tuple[str, str], audience: str | frozenset[str], caller: Caller) -> bool:
    if audience == SESSION:
        if route == ("POST", "/login/logout") and caller.kind == "foreign":
            return True
        return caller.kind in ("terminal", "certificate")
    if audience == CONSOLE_CODE:
        return caller.kind == "certificate"
    if audience == CONSOLE:
        return False
    assert isinstance(audience, frozenset)
    return caller.kind in ("static", "certificate") and bool(caller.roles & audience)


def test_every_route_with_every_caller(database_url: str, tmp_path: Path) -> None:
    kmc = make_kmc(database_url)
    gen = platform(kmc, tmp_path / "data")
    p = next(gen)
    try:
        terminal = p.terminal("alice")
        cert_ops = {
            role: p.cert_operator(f"cert-{role.replace('_', '-')}", [role]) for role in ROLES
        }
        callers = _callers(p, terminal, cert_ops)
        _, victim = p.enroll("victim")
        victim_serial = f"{cert_of(victim['sign_certificate']).serial:x}"
        assert app_routes(p.c.app) == set(ACCESS)
        # logout last: it ends the sessions the other routes use
        order = sorted(ACCESS, key=lambda route: (route == ("POST", "/login/logout"), route))
        for method, path in order:
            audience = ACCESS[(method, path)]
            row: dict[str, int] = {}  # caller -> status, for this route
            for caller in callers:
                r = _request(p, method, path, caller, terminal, victim_serial)
                where = (method, path, caller.name, r.status_code, r.text[:200])
                row[caller.name] = r.status_code
                assert r.status_code < 500, where
                if audience == CONSOLE:
                    # no bearer credential opens the console: every caller, whatever its
                    # token, is sent to the login page (a well-formed form included)
                    assert r.status_code == 303, where
                    assert r.headers["location"] == "/console/login", where
                    continue
                if audience in (PUBLIC, CODE, LOGIN):
                    # headers change nothing; the credential, if any, is in the body
                    assert r.status_code not in (401, 403), where
                    assert r.status_code == row["anonymous"], where
                elif _allowed((method, path), audience, caller):
                    assert r.status_code not in (401, 403), where
                elif caller.kind in ("none", "foreign", "terminal") or audience in (
                    SESSION,
                    CONSOLE_CODE,
                ):
                    assert r.status_code == 401, where
                    body = assert_error(r, 401)
                    assert body["error"] in ("AuthenticationError", "TokenError"), where
                else:  # an operator without the role
                    assert r.status_code == 403, where
                    assert_error(r, 403, "AccessDeniedError")
        # the credential routes refuse a made-up credential the same way for everybody
        csr = csr_pem(SM2PrivateKey.generate())
        for caller in callers:
            r = p.c.post(
                "/enroll",
                json={"code": "AAAAA-BBBBB-CCCCC-DDDDD", "csr": csr},
                headers=caller.headers,
            )
            assert "unknown" in assert_error(r, 403, "VerificationError")["detail"], caller.name
            r = p.c.post("/login/response", json={"response": {"x": 1}}, headers=caller.headers)
            assert_error(r, 403, "LoginError")
        # the sessions that called /login/logout above are over
        for caller in callers:
            if caller.kind in ("foreign", "terminal", "certificate"):
                r = p.c.post("/login/logout", headers=caller.headers)
                assert_error(r, 401, "TokenError")
    finally:
        gen.close()
        kmc.db.dispose()


def test_operator_session_is_also_a_user_session(database_url: str, tmp_path: Path) -> None:
    """An operator logged in with their certificate reaches the terminal routes as the
    user they are — their own KDK, never anybody else's."""
    kmc = make_kmc(database_url)
    gen = platform(kmc, tmp_path / "data")
    p = next(gen)
    try:
        op = p.cert_operator("cert-officer", [KRO])
        p.terminal("alice")
        r = p.c.get("/kmc/kdk", params={"member": "alice"}, headers=op.headers)
        assert r.status_code == 200, r.text
        assert r.json()["member"] == "cert-officer"
        op.enc_key.decrypt(base64.b64decode(r.json()["ciphertext"]))
    finally:
        gen.close()
        kmc.db.dispose()
