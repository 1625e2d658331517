"""The console of a platform that speaks TLCP: ``mstcrypt console open`` serves it to the
local browser on loopback and forwards over TLCP (:class:`LocalConsoleProxy`)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from mstcrypt.apps.console.localproxy import LocalConsoleProxy
from mstcrypt.client import Client, _tlcp_transport
from mstcrypt.module import SoftToken
from mstcrypt.server.routers.console import COOKIE, PRE_COOKIE


def _cookie(r: httpx.Response, name: str) -> str:
    for k, v in r.headers.multi_items():
        if k == "set-cookie" and v.startswith(name + "="):
            return v.split(";", 1)[0].split("=", 1)[1]
    raise AssertionError(f"no {name} cookie in {r.headers}")


def test_console_through_the_local_tlcp_proxy(tmp_path: Path) -> None:
    from mstcrypt.cli.platform import running_platform
    from mstcrypt.server.config import Settings

    data = tmp_path / "data"
    settings = Settings.from_env(data, static_operators=False)
    with running_platform(data, settings, tls=True) as url:
        assert url.startswith("https://")
        kmc = settings.kmc()
        root = kmc.chain()[-1]
        code, _ = kmc.operators.add("ops-ra", ["registration_officer"], actor="console")
        tok = SoftToken.init(
            tmp_path / "op.tok",
            "pin-24680",
            "admin-code-1",
            iterations=100_000,
            anchors=[root.der],
        )
        with Client(url, anchors=[root]) as c:
            c.enroll(code, tok, container="main")
            session = c.login(tok)["session_token"]
            console_code = c.console_code(session)["code"]
        upstream = httpx.Client(transport=_tlcp_transport(url, [root], None), timeout=30)
        with LocalConsoleProxy(url, upstream) as proxy, httpx.Client(base_url=proxy.url) as b:
            page = b.get("/console/login")
            assert page.status_code == 200 and "Operator login" in page.text
            pre = _cookie(page, PRE_COOKIE)
            same = {"Origin": proxy.url, "Sec-Fetch-Site": "same-origin"}
            r = b.post(
                "/console/login",
                data={"code": console_code, "pre": pre},
                headers={**same, "Cookie": f"{PRE_COOKIE}={pre}"},
            )
            assert r.status_code == 303 and r.headers["location"] == "/console", r.text
            jar = {"Cookie": f"{COOKIE}={_cookie(r, COOKIE)}"}
            dash = b.get("/console", headers=jar)
            assert dash.status_code == 200 and "ops-ra" in dash.text
            csrf = re.search(r'name="csrf" value="([^"]+)"', dash.text).group(1)  # type: ignore[union-attr]
            ok = b.post(
                "/console/codes", data={"csrf": csrf, "owner": "li"}, headers={**jar, **same}
            )
            assert ok.status_code == 200 and 'id="issued-code"' in ok.text
            # a foreign origin stays foreign through the proxy
            evil = b.post(
                "/console/codes",
                data={"csrf": csrf, "owner": "li"},
                headers={**jar, "Origin": "http://127.0.0.1:1"},
            )
            assert evil.status_code == 403
            # nothing but the console is served on the loopback port
            for path in ("/admin/keys", "/health", "/console/../admin/keys", "/console/%2e%2e/x"):
                assert b.get(path, headers=jar).status_code == 404, path
        upstream.close()
        kmc.db.dispose()
