"""The operations console over HTTP (in process): certificate login through a one-time
console code, the session cookie, CSRF, session fixation, foreign tokens, expiry,
logout, roles, and the actions going through the API's service methods and audit."""

from __future__ import annotations

import base64
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_helpers import browser, code_for, csrf_of, log_in
from sqlalchemy import func, select

from http_helpers import Platform, bearer, csr_pem, make_kmc, platform
from mstcrypt.apps.login import tokens
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.kmc.models import AuditRecord, EnrollmentCode
from mstcrypt.kmc.service import Kmc
from mstcrypt.server.routers.console import COOKIE, CSP, PRE_COOKIE

with warnings.catch_warnings():
    warnings.simplefilter("ignore")

RA, KRO, AUD, ADMIN = "registration_officer", "key_recovery_officer", "auditor", "administrator"
#: tests whose subject does not depend on the store run on SQLite only (the ones that
#: write sessions, codes, revocations, recoveries and read the dashboard run on both)
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def p(database_url: str, tmp_path: Path) -> Iterator[Platform]:
    kmc = make_kmc(database_url)
    gen = platform(kmc, tmp_path / "data")
    try:
        yield next(gen)
    finally:
        gen.close()
        kmc.db.dispose()


def audit_rows(kmc: Kmc, action: str) -> list[AuditRecord]:
    with kmc.db.tx() as s:
        return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))


def is_login_redirect(r: httpx.Response) -> bool:
    return r.status_code == 303 and r.headers["location"] == "/console/login"


# ------------------------------------------------------------------ login and actions ----
def test_login_issue_code_enroll_revoke(p: Platform) -> None:
    op = p.cert_operator("ops-ra", [RA, ADMIN])
    b = browser(p)
    b.get("/console/login")
    pre = b.cookies.get(PRE_COOKIE)
    r = b.post("/console/login", data={"code": code_for(p, op), "pre": pre})
    assert r.status_code == 303
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and COOKIE in v)
    for attr in ("HttpOnly", "Secure", "SameSite=strict", "Path=/"):
        assert attr.lower() in cookie.lower(), cookie
    assert "Domain" not in cookie
    page = b.get("/console")
    assert page.status_code == 200 and "ops-ra" in page.text
    assert page.headers["content-security-policy"] == CSP
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text and " style=" not in page.text
    assert [a.details["session"] for a in audit_rows(p.kmc, "console.login")]

    # issue an enrollment code: shown once
    csrf = csrf_of(b, "/console/codes")
    r = b.post("/console/codes", data={"csrf": csrf, "owner": "zhang", "ttl": "3600"})
    assert r.status_code == 200, r.text
    code = re.search(r'id="issued-code">([^<]+)<', r.text).group(1)  # type: ignore[union-attr]
    assert r.headers["cache-control"] == "no-store"
    assert code not in b.get("/console/codes").text  # never again
    created = audit_rows(p.kmc, "enroll.code")
    assert created and created[-1].actor == "ops-ra"  # the API's audit, the operator as actor
    assert code not in str([a.details for a in created])

    assert re.search(r'id="issued-qr"[^>]*><svg', r.text) and "<path" in r.text  # QR code
    # a second code, expired from the list before use
    r = b.post("/console/codes", data={"csrf": csrf, "owner": "wang", "ttl": "3600"})
    wang = re.search(r'id="issued-code">([^<]+)<', r.text).group(1)  # type: ignore[union-attr]
    page = b.get("/console/codes").text
    code_id = re.search(r'action="/console/codes/([0-9a-f]+)/expire"[^>]*for wang', page)
    assert code_id, page
    r = b.post(f"/console/codes/{code_id.group(1)}/expire", data={"csrf": csrf})
    assert r.status_code == 200 and 'id="expired"' in r.text
    key = SM2PrivateKey.generate()
    refused = p.c.post("/enroll", json={"code": wang, "csr": csr_pem(key, "wang")})
    assert refused.status_code == 403 and "expired" in refused.text
    assert audit_rows(p.kmc, "enroll.code_expire")[-1].actor == "ops-ra"
    r = b.post(f"/console/codes/{code_id.group(1)}/expire", data={"csrf": csrf})
    assert r.status_code == 409  # once

    # the terminal enrolls with it (as from the CLI), and the console sees it
    key = SM2PrivateKey.generate()
    enrolled = p.c.post("/enroll", json={"code": code, "csr": csr_pem(key, "zhang")})
    assert enrolled.status_code == 200, enrolled.text
    listing = b.get("/console/certificates", params={"q": "zhang"})
    serials = re.findall(r'href="/console/certificates/([0-9a-f]+)"', listing.text)
    assert len(serials) == 2  # signing + encryption
    dash = b.get("/console")
    assert re.search(r'id="n-terminals">1<', dash.text)

    # revoke it, confirming with the serial
    sign = next(s for s in serials if p.kmc.certificate(s).public_key == key.public_key())
    detail = b.get(f"/console/certificates/{sign}")
    assert "Revoke" in detail.text
    csrf = csrf_of(b, f"/console/certificates/{sign}")
    r = b.post(
        f"/console/certificates/{sign}/revoke",
        data={"csrf": csrf, "reason": "key_compromise", "confirm": "wrong"},
    )
    assert r.status_code == 409 and p.kmc.certificate_status(sign) == "active"
    r = b.post(
        f"/console/certificates/{sign}/revoke",
        data={"csrf": csrf, "reason": "key_compromise", "confirm": sign},
    )
    assert r.status_code == 200 and 'id="revoked"' in r.text, r.text
    assert p.kmc.certificate_status(sign) == "revoked"
    revokes = audit_rows(p.kmc, "cert.revoke") or audit_rows(p.kmc, "certificate.revoke")
    assert revokes and revokes[-1].actor == "ops-ra"


def test_code_is_single_use_short_lived_and_bound(p: Platform) -> None:
    op = p.cert_operator("ops-ra", [RA])
    code = code_for(p, op)
    b = browser(p)
    b.get("/console/login")
    pre = b.cookies.get(PRE_COOKIE)
    assert b.post("/console/login", data={"code": code, "pre": pre}).status_code == 303
    b2 = browser(p)
    b2.get("/console/login")
    again = b2.post("/console/login", data={"code": code, "pre": b2.cookies.get(PRE_COOKIE)})
    assert again.status_code == 401 and "already used" in again.text, (again.headers, again.text)
    # tampered, expired, and a session token offered as a code
    auth = p.c.app.state.console_auth
    fresh = code_for(p, op)
    for bad in (fresh[:-4] + "AAAA", op.token):
        r = b2.post("/console/login", data={"code": bad, "pre": b2.cookies.get(PRE_COOKIE)})
        assert is_login_redirect(r) or r.status_code == 401, r.text
        assert COOKIE not in r.headers.get("set-cookie", "")
    real = auth.clock
    auth.clock = lambda: real() + auth.policy.code_ttl + 31
    try:
        r = b2.post("/console/login", data={"code": fresh, "pre": b2.cookies.get(PRE_COOKIE)})
        assert COOKIE not in r.headers.get("set-cookie", "")
    finally:
        auth.clock = real


@SQLITE_ONLY
def test_login_csrf_needs_this_browsers_form(p: Platform) -> None:
    """Another site cannot log the browser into a session of the attacker's choosing:
    the login form's pre-login token must match this browser's cookie, and the request
    must come from this origin."""
    op = p.cert_operator("ops-ra", [RA])
    b = browser(p)
    b.get("/console/login")
    r = b.post("/console/login", data={"code": code_for(p, op), "pre": "0" * 32})
    assert r.status_code == 403 and "CsrfError" in r.text
    r = b.post(
        "/console/login",
        data={"code": code_for(p, op), "pre": b.cookies.get(PRE_COOKIE)},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403
    assert COOKIE not in b.cookies


@SQLITE_ONLY
def test_forms_need_the_sessions_csrf_token(p: Platform) -> None:
    op = p.cert_operator("ops-ra", [RA])
    other = p.cert_operator("ops-ra2", [RA])
    b = log_in(p, op)
    mine = csrf_of(b)
    theirs = csrf_of(log_in(p, other))
    assert mine != theirs

    def codes() -> int:
        with p.kmc.db.tx() as s:
            return int(s.scalar(select(func.count()).select_from(EnrollmentCode)) or 0)

    before = codes()
    attempts: list[tuple[dict[str, str], dict[str, str]]] = [
        ({"owner": "x"}, {}),
        ({"owner": "x", "csrf": ""}, {}),
        ({"owner": "x", "csrf": theirs}, {}),
        ({"owner": "x", "csrf": mine}, {"Origin": "https://evil.example"}),
        ({"owner": "x", "csrf": mine}, {"Origin": "null"}),
        ({"owner": "x", "csrf": mine}, {"Sec-Fetch-Site": "cross-site"}),
        ({"owner": "x", "csrf": mine}, {"Sec-Fetch-Site": "same-site"}),
    ]
    for data, headers in attempts:
        r = b.post("/console/codes", data=data, headers=headers)
        assert r.status_code == 403 and "CsrfError" in r.text, (data, headers, r.text)
    r = b.post("/console/codes", json={"owner": "x", "csrf": mine})  # not a form
    assert r.status_code == 400
    r = b.post(
        "/console/codes",
        content=f"owner=x&owner=y&csrf={mine}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400  # a repeated field
    assert codes() == before
    ok = b.post(
        "/console/codes",
        data={"owner": "x", "csrf": mine},
        headers={"Origin": "https://testserver", "Sec-Fetch-Site": "same-origin"},
    )
    assert ok.status_code == 200 and codes() == before + 1


@SQLITE_ONLY
def test_session_fixation_refused(p: Platform) -> None:
    """A session id planted in the browser before the login (made up, or the attacker's
    own valid session) is never the session the login yields."""
    attacker = p.cert_operator("ops-attacker", [RA])
    victim = p.cert_operator("ops-victim", [RA])
    planted_session = log_in(p, attacker).cookies.get(COOKIE)
    for planted in ("fixed-session-id", planted_session):
        b = browser(p)
        b.cookies.set(COOKIE, planted, domain="testserver.local", path="/")
        if planted == "fixed-session-id":
            assert is_login_redirect(b.get("/console"))
        log_in(p, victim, b)
        assert b.cookies.get(COOKIE) != planted
        page = b.get("/console")
        assert "ops-victim" in page.text and "ops-attacker" not in page.text


@SQLITE_ONLY
def test_terminal_and_api_tokens_do_not_open_the_console(p: Platform) -> None:
    terminal = p.terminal("alice")
    op = p.cert_operator("ops-ra", [RA])
    b = browser(p)
    # a terminal's §7.3 session token, as the cookie or as a bearer token
    b.cookies.set(COOKIE, terminal.token, domain="testserver.local", path="/")
    assert is_login_redirect(b.get("/console"))
    b.cookies.clear()
    for who in (terminal, op):
        assert is_login_redirect(b.get("/console", headers=who.headers))
        assert is_login_redirect(b.get("/console/audit", headers=who.headers))
    # a terminal cannot get a console code; nor can a static operator credential
    r = p.c.post("/console/code", headers=terminal.headers)
    assert r.status_code == 401 and "not an operator" in r.json()["detail"]
    r = p.c.post("/console/code", headers=p.auth())
    assert r.status_code == 401 and "certificate" in r.json()["detail"]
    # the console code and the console cookie are not API credentials either
    code = code_for(p, op)
    cookie = log_in(p, op).cookies.get(COOKIE)
    for token in (code, cookie):
        r = p.c.post(
            "/admin/enrollment-codes",
            json={"owner": "x", "subject": {"CN": "x"}},
            headers=bearer(token),
        )
        assert r.status_code == 401, r.text
        r = p.c.get("/login/session", headers=bearer(token))
        assert r.status_code == 401
    # a console code is not a session cookie (audience), even when signed by the console key
    b.cookies.set(COOKIE, code_for(p, op), domain="testserver.local", path="/")
    assert is_login_redirect(b.get("/console"))
    # a cookie the attacker signed with the claims of a real session
    part = cookie.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    assert claims["aud"] == ["mstcrypt-console"] and claims["owner"] == "ops-ra"
    forged = tokens.issue(claims, SM2PrivateKey.generate().sign)
    b.cookies.set(COOKIE, forged, domain="testserver.local", path="/")
    assert is_login_redirect(b.get("/console"))


def test_logout_expiry_and_revocation_end_the_session(p: Platform) -> None:
    op = p.cert_operator("ops-ra", [RA])
    b = log_in(p, op)
    cookie = b.cookies.get(COOKIE)
    r = b.post("/console/logout", data={"csrf": csrf_of(b)})
    assert is_login_redirect(r)
    assert audit_rows(p.kmc, "console.logout")
    b2 = browser(p)
    b2.cookies.set(COOKIE, cookie, domain="testserver.local", path="/")
    assert is_login_redirect(b2.get("/console"))  # the logged-out cookie is refused
    # idle expiry and maximum age
    auth = p.c.app.state.console_auth
    real = auth.clock
    b = log_in(p, op)
    try:
        auth.clock = lambda: real() + auth.policy.idle + 1
        assert is_login_redirect(b.get("/console"))
        auth.clock = real
        b = log_in(p, op)
        # renewed while used: half the idle time later the cookie is replaced
        auth.clock = lambda: real() + auth.policy.idle // 2 + 5
        old = b.cookies.get(COOKIE)
        r = b.get("/console")
        assert r.status_code == 200 and b.cookies.get(COOKIE) != old
        auth.clock = lambda: real() + auth.policy.max_age + 1
        assert is_login_redirect(b.get("/console"))
    finally:
        auth.clock = real
    # revoking the operator's certificate ends the session at once
    b = log_in(p, op)
    assert b.get("/console").status_code == 200
    p.kmc.revoke_certificate(f"{op.sign_cert.serial:x}", reason="key_compromise", actor="t")
    assert is_login_redirect(b.get("/console"))
    # and a disabled operator too
    op2 = p.cert_operator("ops-ra2", [RA])
    b = log_in(p, op2)
    p.kmc.operators.set_status("ops-ra2", "disabled")
    assert is_login_redirect(b.get("/console"))


@SQLITE_ONLY
def test_roles_as_in_the_api(p: Platform) -> None:
    auditor = log_in(p, p.cert_operator("ops-aud", [AUD]))
    ra = log_in(p, p.cert_operator("ops-ra", [RA]))
    csrf = csrf_of(auditor)
    r = auditor.post("/console/codes", data={"csrf": csrf, "owner": "x"})
    assert r.status_code == 403 and "AccessDeniedError" in r.text
    assert auditor.get("/console/codes").status_code == 403
    assert ra.get("/console/audit").status_code == 403
    assert ra.get("/console/recovery").status_code == 403
    v = auditor.get("/console/audit/verify")
    assert v.status_code == 200 and "Verified" in v.text, v.text
    export = auditor.get("/console/audit/export", params={"action": "console."})
    assert export.headers["content-type"].startswith("text/csv")
    assert "console.login" in export.text
    listing = auditor.get("/console/audit", params={"action": "console.login"})
    assert "ops-aud" in listing.text


def test_recovery_is_approved_by_a_second_officer(p: Platform) -> None:
    first = p.cert_operator("ops-kro1", [KRO])
    second = p.cert_operator("ops-kro2", [KRO])
    p.terminal("bob")
    key_id = p.kmc.keys("bob")[0]["id"]
    recipient = SM2PrivateKey.generate().public_key().to_bytes().hex()
    b1 = log_in(p, first)
    bad = b1.post(
        "/console/recovery",
        data={"csrf": csrf_of(b1), "key_id": key_id, "recipient": "zz", "reason": "lost"},
    )
    assert bad.status_code == 400
    r = b1.post(
        "/console/recovery",
        data={"csrf": csrf_of(b1), "key_id": key_id, "recipient": recipient, "reason": "lost"},
    )
    assert r.status_code == 200, r.text
    rid = re.search(r"<h1>Recovery request ([0-9a-f]+)</h1>", r.text).group(1)  # type: ignore[union-attr]
    assert p.kmc.recovery_result(rid)["requested_by"] == "ops-kro1"
    page = b1.get(f"/console/recovery/{rid}")
    assert 'id="approve"' not in page.text  # the requester cannot approve
    csrf = csrf_of(b1)
    fp = re.search(r'id="fingerprint">([0-9a-f]+)<', page.text).group(1)  # type: ignore[union-attr]
    r = b1.post(f"/console/recovery/{rid}/approve", data={"csrf": csrf, "fingerprint": fp})
    assert r.status_code in (403, 409) and p.kmc.recovery_result(rid)["status"] == "pending"
    b2 = log_in(p, second)
    listing = b2.get("/console/recovery")
    assert rid in listing.text
    page = b2.get(f"/console/recovery/{rid}")
    assert 'id="approve"' in page.text
    r = b2.post(
        f"/console/recovery/{rid}/approve", data={"csrf": csrf_of(b2), "fingerprint": "00" * 32}
    )
    assert r.status_code >= 400 and p.kmc.recovery_result(rid)["status"] == "pending"
    r = b2.post(f"/console/recovery/{rid}/approve", data={"csrf": csrf_of(b2), "fingerprint": fp})
    assert r.status_code == 200 and 'id="approved"' in r.text, r.text
    result = p.kmc.recovery_result(rid)
    assert result["status"] == "released" and result["approvals"] == ["ops-kro2"]
    assert result["enveloped_key"] not in r.text  # the released key goes to the API caller


@SQLITE_ONLY
def test_no_secret_or_internal_in_pages(p: Platform) -> None:
    op = p.cert_operator("ops-admin", [RA, ADMIN])
    b = log_in(p, op)
    pages: list[Any] = [
        b.get(u)
        for u in (
            "/console",
            "/console/certificates",
            "/console/operators",
            "/console/keys?owner=ops-admin",
            "/console/codes",
            "/console/audit",
            "/console/certificates/ffff",
        )
    ]
    cookie = b.cookies.get(COOKIE)
    for r in pages:
        assert cookie not in r.text
        assert "Traceback" not in r.text and ".py" not in r.text
    assert pages[-1].status_code == 404


@SQLITE_ONLY
def test_expire_code_over_the_api(p: Platform) -> None:
    from mstcrypt.client import Client, ServiceError

    code = p.code("li")
    with p.kmc.db.tx() as s:
        row = s.scalars(select(EnrollmentCode).where(EnrollmentCode.owner == "li")).one()
        code_id = row.id
    with Client("http://testserver", transport=p.c._transport, operator_token=p.ops["alice"]) as c:
        c.expire_enrollment_code(code_id)
        with pytest.raises(ServiceError) as e:
            c.expire_enrollment_code(code_id)
        assert e.value.status == 409
        with pytest.raises(ServiceError) as e:
            c.expire_enrollment_code("no-such-code")
        assert e.value.status == 404
    r = p.c.post("/enroll", json={"code": code, "csr": csr_pem(SM2PrivateKey.generate(), "li")})
    assert r.status_code == 403 and "expired" in r.text


@SQLITE_ONLY
def test_groups(p: Platform) -> None:
    for who in ("alice", "bob", "carol"):
        p.terminal(who)
    b = log_in(p, p.cert_operator("ops-ra", [RA]))
    csrf = csrf_of(b, "/console/groups")
    r = b.post("/console/groups", data={"csrf": csrf, "id": "team", "members": "alice,\nbob"})
    assert r.status_code == 200 and 'id="group-done"' in r.text, r.text
    assert p.kmc.group_members("team") == ["alice", "bob"]
    r = b.post(
        "/console/groups/team/members", data={"csrf": csrf, "add": "carol", "remove": "alice"}
    )
    assert r.status_code == 200 and "group key version 2" in r.text
    assert p.kmc.group_members("team") == ["bob", "carol"]
    assert audit_rows(p.kmc, "group.change")[-1].actor == "ops-ra"
    listing = b.get("/console/groups")
    assert "/console/groups/team" in listing.text
    r = b.post("/console/groups/team/members", data={"csrf": csrf, "add": "nobody"})
    assert r.status_code in (404, 409) and p.kmc.group_members("team") == ["bob", "carol"]
    aud = log_in(p, p.cert_operator("ops-aud", [AUD]))
    r = aud.post("/console/groups/team/members", data={"csrf": csrf_of(aud), "add": "alice"})
    assert r.status_code == 403


def test_dashboard_counts_expiring_certificates(p: Platform) -> None:
    from datetime import timedelta

    from mstcrypt.apps.console.overview import PAGE, Overview

    p.terminal("alice")
    now = p.kmc.clock()
    with p.kmc.db.tx() as s:  # every terminal certificate expires within the horizon
        from mstcrypt.kmc.models import IssuedCertificate

        rows = list(s.scalars(select(IssuedCertificate).where(IssuedCertificate.owner == "alice")))
        for i, row in enumerate(rows):
            row.not_after = now + timedelta(days=3 + 10 * i)
    d = Overview(p.kmc).dashboard()
    assert d["expiring_total"] >= 2 and len(d["expiring"]) <= PAGE
    assert sum(w["count"] for w in d["expiry_chart"]) == d["expiring_total"]
    assert d["expiry_chart"][0]["count"] >= 1
    b = log_in(p, p.cert_operator("ops-ra", [RA]))
    assert f"within 30 days: {d['expiring_total']}" in b.get("/console").text
