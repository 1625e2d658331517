"""The console in a real browser: Debian's Chromium, headless, driven by Playwright
(never a browser Playwright downloads). The platform runs in this process on a loopback
port; operators hold soft tokens; the CLI opens the console and enrolls the terminal.

Walks through: ``mstcrypt console open`` → the dashboard at phone width; issue an
enrollment code; enroll a terminal with ``mstcrypt enroll``; find it; revoke it; a
recovery requested by one officer and approved in the browser by a second one; the
audit chain verified. Then the attacks: a cross-origin form (same site, other port) and
a cross-site one, a session id planted before the login, a terminal's session token as
the cookie or as a bearer token, and a logged-out cookie — all refused.

Screenshots go to ``$MSTCRYPT_TEST_ARTEFACTS/console`` (default: the test's tmp dir).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_helpers import launch_chromium, run_cli

from mstcrypt.client import Client
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.kmc.models import EnrollmentCode
from mstcrypt.module import SoftToken
from mstcrypt.server.routers.console import COOKIE
from platform_helpers import free_port

PIN = "op-pin-2468"
PHONE = {"width": 390, "height": 844}

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is needed")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with launch_chromium() as browser:
        yield browser


_cli = functools.partial(run_cli, PIN)


class _Evil(http.server.BaseHTTPRequestHandler):
    """A page of another origin that posts a form to the console as soon as it loads."""

    target = ""

    def do_GET(self) -> None:
        html = (
            f'<form id="f" method="post" action="{self.target}/console/codes">'
            '<input name="owner" value="evil"><input name="csrf" value="guess"></form>'
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(html)))
        self.end_headers()
        self.wfile.write(html)

    def log_message(self, *args: Any) -> None:
        pass


def _cookie(value: str) -> dict[str, Any]:
    """The session cookie as a planted one would be (``__Host-``: Secure, Path=/)."""
    return {
        "name": COOKIE,
        "value": value,
        "domain": "127.0.0.1",
        "path": "/",
        "secure": True,
        "httpOnly": True,
        "sameSite": "Strict",
    }


def test_console_in_chromium(chromium: Any, tmp_path: Path) -> None:
    from mstcrypt.cli.platform import running_platform
    from mstcrypt.server.config import Settings

    shots = Path(os.environ.get("MSTCRYPT_TEST_ARTEFACTS", tmp_path)) / "console"
    shots.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "data"
    settings = Settings.from_env(data, static_operators=False)
    with running_platform(data, settings, tls=False) as url:
        kmc = settings.kmc()
        root = kmc.chain()[-1]
        root_pem = tmp_path / "root.pem"
        root_pem.write_bytes(root.pem)
        public = Client(url, anchors=[root])

        def operator(name: str, roles: list[str]) -> Path:
            code, _ = kmc.operators.add(name, roles, actor="console")
            path = tmp_path / f"{name}.tok"
            tok = SoftToken.init(
                path, PIN, "admin-unlock-code", iterations=100_000, anchors=[root.der]
            )
            public.enroll(code, tok, container="main")
            return path

        ra = operator("ops-ra", ["registration_officer", "administrator"])
        kro1 = operator("ops-kro1", ["key_recovery_officer"])
        kro2 = operator("ops-kro2", ["key_recovery_officer"])
        aud = operator("ops-aud", ["auditor"])

        def console_url(token: Path) -> str:
            """The in-process equivalent of `mstcrypt console open --no-browser`."""
            tok = SoftToken.open(token)
            tok.login(PIN)
            session = public.login(tok)["session_token"]
            code = public.console_code(session)["code"]
            public.logout(session)
            return f"{url}/console/login#code={code}"

        # -- the registration officer opens the console from the CLI ----------------------
        link = _cli("console", "open", "--server", url, "--token", str(ra), "--no-browser")
        link = link.strip().splitlines()[-1]
        assert link.startswith(f"{url}/console/login#code=MST1.")
        ctx = chromium.new_context(viewport=PHONE)
        ctx.add_cookies([_cookie("planted-by-attacker")])
        page = ctx.new_page()
        page.on("dialog", lambda d: d.accept())
        page.goto(link)
        page.wait_for_url(f"{url}/console")
        assert "#code" not in page.url
        assert page.locator("header form.who span").inner_text() == "ops-ra"
        page.screenshot(path=str(shots / "dashboard-phone.png"), full_page=True)
        cookie = next(c for c in ctx.cookies() if c["name"] == COOKIE)
        assert cookie["value"] != "planted-by-attacker"  # session fixation: a new id
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # not readable by script

        # -- issue an enrollment code, shown once ---------------------------------------
        page.click("nav >> text=Enrollment codes")
        page.fill("#owner", "zhang")
        page.click("#issue")
        code = page.locator("#issued-code").inner_text().strip()
        assert code
        page.screenshot(path=str(shots / "code-issued.png"), full_page=True)
        page.goto(f"{url}/console/codes")
        assert code not in page.content()

        # -- the terminal enrolls from the CLI -----------------------------------------------
        term = tmp_path / "zhang.tok"
        _cli(
            "token",
            "init",
            "--token",
            str(term),
            "--admin-code",
            "admin-code-1",
            "--iterations",
            "100000",
            "--anchor",
            str(root_pem),
        )
        _cli("enroll", "--server", url, "--code", code, "--token", str(term))
        _cli("login", "--server", url, "--token", str(term), "--out", str(tmp_path / "s.tok"))
        terminal_token = (tmp_path / "s.tok").read_text().strip()

        # -- see it, revoke it -------------------------------------------------------------
        page.goto(f"{url}/console/certificates?q=zhang")
        rows = page.locator("#certificates tr.active")
        assert rows.count() == 2
        sign_row = rows.filter(has=page.locator("td", has_text=re.compile("^sign$")))
        sign_row.locator("a").click()
        serial = page.locator("h1").inner_text().split()[-1]
        page.select_option("#reason", "key_compromise")
        page.fill("#confirm", serial)
        page.click("#revoke")
        assert "Revoked" in page.locator("#revoked").inner_text()
        assert kmc.certificate_status(serial) == "revoked"
        page.screenshot(path=str(shots / "revoked.png"), full_page=True)

        # -- a recovery requested by one officer, approved by another in the browser -------
        tok1 = SoftToken.open(kro1)
        tok1.login(PIN)
        s1 = public.login(tok1)["session_token"]
        with Client(url, anchors=[root], operator_token=s1) as officer:
            key_id = kmc.keys("zhang")[0]["id"]
            recipient = SM2PrivateKey.generate().public_key().to_bytes()
            rid = officer.request_recovery(key_id, recipient, "lost phone, ticket 42")
        kctx = chromium.new_context(viewport=PHONE)
        kpage = kctx.new_page()
        kpage.on("dialog", lambda d: d.accept())
        kpage.goto(console_url(kro2))
        kpage.wait_for_url(f"{url}/console")
        kpage.click("nav >> text=Recovery")
        kpage.click(f"text={rid}")
        kpage.click("#approve")
        assert kpage.locator("#status").inner_text() == "released"
        kpage.screenshot(path=str(shots / "recovery-approved.png"), full_page=True)
        assert kmc.recovery_result(rid)["approvals"] == ["ops-kro2"]

        # -- the auditor verifies the chain -------------------------------------------------
        actx = chromium.new_context(viewport={"width": 1280, "height": 900})
        apage = actx.new_page()
        apage.goto(console_url(aud))
        apage.wait_for_url(f"{url}/console")
        apage.screenshot(path=str(shots / "dashboard.png"), full_page=True)
        apage.click("nav >> text=Audit log")
        apage.click("#verify")
        assert apage.locator("#verify-report").inner_text().startswith("Verified")
        apage.screenshot(path=str(shots / "audit-verified.png"), full_page=True)

        # -- attacks ---------------------------------------------------------------------------
        def evil_codes() -> int:
            with kmc.db.tx() as s:
                return len(list(s.query(EnrollmentCode).filter_by(owner="evil")))

        _Evil.target = url
        evil_port = free_port()
        evil = http.server.HTTPServer(("127.0.0.1", evil_port), _Evil)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        try:
            # same site (the cookie is sent), other origin: refused by Origin and CSRF
            page.goto(f"http://127.0.0.1:{evil_port}/")
            page.wait_for_load_state()
            assert "CsrfError" in page.content()
            # another site: SameSite=Strict keeps the cookie home; the login page answers
            page.goto(f"http://localhost:{evil_port}/")
            page.wait_for_load_state()
            assert "CsrfError" in page.content() or page.url.endswith("/console/login")
        finally:
            evil.shutdown()
        assert evil_codes() == 0
        page.goto(f"{url}/console")
        assert page.url == f"{url}/console"  # the officer's session is intact

        # a terminal's session token: as the cookie, and as a bearer token
        tctx = chromium.new_context()
        tctx.add_cookies([_cookie(terminal_token)])
        tpage = tctx.new_page()
        tpage.goto(f"{url}/console")
        assert tpage.url == f"{url}/console/login"
        tctx.clear_cookies()
        tctx.set_extra_http_headers({"Authorization": f"Bearer {terminal_token}"})
        tpage.goto(f"{url}/console/audit")
        assert tpage.url == f"{url}/console/login"

        # a logged-out cookie
        old = next(c for c in ctx.cookies() if c["name"] == COOKIE)["value"]
        page.click("#logout")
        page.wait_for_url(f"{url}/console/login")
        assert not [c for c in ctx.cookies() if c["name"] == COOKIE]
        ctx.add_cookies([_cookie(old)])
        page.goto(f"{url}/console")
        assert page.url == f"{url}/console/login"
        for c in (ctx, kctx, actx, tctx):
            c.close()
        public.close()
        kmc.db.dispose()
