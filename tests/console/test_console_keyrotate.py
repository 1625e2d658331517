"""Key rotation at the console (in process) and the console session settings.

The Rotate action: registration officers only, the owner's name typed to confirm, the
CSRF token, only on the active key; it goes through ``Kmc.rotate_key`` (same audit as
the API) and the Keys page shows "awaiting pickup" until the terminal collects the key.
Session settings: bounds refused with a typed error (Settings, environment, ``serve``
options); a short idle expiry logs the browser out (the sessions' injected clock).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_helpers import browser, csrf_of, log_in
from sqlalchemy import select
from typer.testing import CliRunner

from http_helpers import Platform, make_kmc, platform
from mstcrypt.apps.console.errors import ConsolePolicyError
from mstcrypt.apps.console.sessions import ConsolePolicy
from mstcrypt.errors import PolicyError
from mstcrypt.formats.envelope import open_enveloped_key
from mstcrypt.kmc.models import AuditRecord
from mstcrypt.pki import Certificate
from mstcrypt.server.config import Settings
from mstcrypt.server.routers.console import COOKIE

RA, AUD, ADMIN = "registration_officer", "auditor", "administrator"


@pytest.fixture
def p(database_url: str, tmp_path: Path) -> Iterator[Platform]:
    kmc = make_kmc(database_url)
    gen = platform(kmc, tmp_path / "data", console_idle=60, console_max_age=600)
    try:
        yield next(gen)
    finally:
        gen.close()
        kmc.db.dispose()


def audit_rows(p: Platform, action: str) -> list[AuditRecord]:
    with p.kmc.db.tx() as s:
        return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))


def key_rows(html: str) -> list[tuple[str, str, str]]:
    """(version, state, delivery) of each key row of the Keys page."""
    return re.findall(
        r'<tr class="[a-z_]+" data-version="(\d+)">.*?<td class="state">([a-z_]+)</td>'
        r'.*?<td class="delivery">([^<]+)</td>',
        html,
        re.S,
    )


def is_login_redirect(r: object) -> bool:
    return getattr(r, "status_code", 0) == 303 and r.headers["location"] == "/console/login"  # type: ignore[attr-defined]


def test_rotate_at_the_console_then_the_terminal_collects(p: Platform) -> None:
    ra = p.cert_operator("ops-ra", [RA, ADMIN])
    aud = p.cert_operator("ops-aud", [AUD])
    alice = p.terminal("alice")
    b = log_in(p, ra)
    page = b.get("/console/keys", params={"owner": "alice"})
    assert key_rows(page.text) == [("1", "active", "—")]
    v1_id = p.kmc.keys("alice")[0]["id"]
    assert f'action="/console/keys/{v1_id}/rotate"' in page.text
    csrf = csrf_of(b, "/console/keys?owner=alice")
    url = f"/console/keys/{v1_id}/rotate"

    # refused: no CSRF, a wrong confirmation, not the active key, another role
    for data, status in (
        ({"owner": "alice", "confirm": "alice"}, 403),
        ({"csrf": csrf, "owner": "alice", "confirm": "bob"}, 409),
        ({"csrf": csrf, "owner": "alice"}, 409),
        ({"csrf": csrf, "owner": "bob", "confirm": "bob"}, 409),
    ):
        r = b.post(url, data=data)
        assert r.status_code == status, (data, r.status_code, r.text[:300])
    b_aud = log_in(p, aud)
    r = b_aud.post(url, data={"csrf": csrf_of(b_aud), "owner": "alice", "confirm": "alice"})
    assert r.status_code == 403 and "AccessDenied" in r.text
    assert "/rotate" not in b_aud.get("/console/keys", params={"owner": "alice"}).text
    assert audit_rows(p, "key.rotate") == [] and len(p.kmc.keys("alice")) == 1

    r = b.post(url, data={"csrf": csrf, "owner": "alice", "confirm": "alice"})
    assert r.status_code == 200, r.text
    assert "awaits pickup" in r.text
    assert key_rows(r.text) == [("1", "decrypt_only", "—"), ("2", "active", "awaiting pickup")]
    # the old key cannot be rotated again (it is not the active key)
    r = b.post(url, data={"csrf": csrf, "owner": "alice", "confirm": "alice"})
    assert r.status_code == 409 and "active key (reload the page)" in r.text
    [rot] = audit_rows(p, "key.rotate")
    assert rot.actor == "ops-ra" and rot.details["previous_key_id"] == v1_id

    # the terminal collects with its session (an operator session sees nothing of it)
    assert p.c.get("/kmc/keys/pending", headers=ra.headers).json()["keys"] == []
    pending = p.c.get("/kmc/keys/pending", headers=alice.headers).json()["keys"]
    assert [k["version"] for k in pending] == [2]
    key = open_enveloped_key(base64.b64decode(pending[0]["enveloped_key"]), alice.key)
    cert = Certificate.from_pem(pending[0]["encryption_certificate"].encode())
    assert key.public_key() == cert.public_key
    assert cert.subject_str == alice.enc_cert.subject_str
    r = p.c.post(f"/kmc/keys/{pending[0]['key_id']}/collected", headers=alice.headers)
    assert r.status_code == 200 and r.json()["version"] == 2
    page = b.get("/console/keys", params={"owner": "alice"})
    assert key_rows(page.text) == [("1", "decrypt_only", "—"), ("2", "active", "—")]
    assert [a.actor for a in audit_rows(p, "key.collect")] == ["terminal:alice"]
    audit = b.get("/console/audit", params={"action": "key."})
    assert "key.rotate" in audit.text and "key.collect" in audit.text


# ------------------------------------------------------------------ session settings -------
@pytest.mark.parametrize(
    "kw",
    [
        {"code_ttl": 9},
        {"code_ttl": 301},
        {"idle": 59},
        {"idle": 8 * 3600 + 1, "max_age": 24 * 3600},
        {"idle": 600, "max_age": 599},
        {"max_age": 24 * 3600 + 1},
        {"idle": True},
        {"idle": 90.5},
    ],
)
def test_bad_session_settings_are_refused(kw: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(ConsolePolicyError):
        ConsolePolicy(**kw)  # type: ignore[arg-type]
    with pytest.raises(ConsolePolicyError):
        Settings(data_dir=tmp_path, **{f"console_{k}": v for k, v in kw.items()})  # type: ignore[arg-type]


def test_session_settings_from_env_and_serve(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MSTCRYPT_CONSOLE_IDLE", "120")
    monkeypatch.setenv("MSTCRYPT_CONSOLE_MAX_AGE", "3600")
    monkeypatch.setenv("MSTCRYPT_CONSOLE_CODE_TTL", "30")
    assert Settings.from_env(tmp_path).console_policy() == ConsolePolicy(30, 120, 3600)
    for bad, error in (("30", ConsolePolicyError), ("abc", PolicyError), ("1e3", PolicyError)):
        monkeypatch.setenv("MSTCRYPT_CONSOLE_IDLE", bad)
        with pytest.raises(error, match=r"idle|MSTCRYPT_CONSOLE_IDLE"):
            Settings.from_env(tmp_path)
    monkeypatch.setenv("MSTCRYPT_CONSOLE_IDLE", "120")
    from mstcrypt.cli import app

    r = CliRunner().invoke(
        app, ["serve", "--data-dir", str(tmp_path / "d"), "--console-idle", "10"]
    )
    assert r.exit_code == 2 and "idle expiry 10 s" in r.output, r.output
    r = CliRunner().invoke(
        app, ["serve", "--data-dir", str(tmp_path / "d"), "--console-max-age", "100"]
    )
    assert r.exit_code == 2 and "maximum age 100 s" in r.output, r.output


def test_short_idle_expiry_logs_the_browser_out(p: Platform) -> None:
    op = p.cert_operator("ops-ra", [RA])
    b = log_in(p, op)
    auth = p.c.app.state.console_auth
    assert (auth.policy.idle, auth.policy.max_age) == (60, 600)  # from the settings
    real = auth.clock
    try:
        auth.clock = lambda: real() + 29  # used within the idle time: still in
        assert b.get("/console").status_code == 200
        auth.clock = lambda: real() + 45  # renewed (less than half the idle time left)
        old = b.cookies.get(COOKIE)
        assert b.get("/console").status_code == 200
        assert b.cookies.get(COOKIE) != old
        auth.clock = lambda: real() + 45 + 61  # then idle for longer than 60 s
        assert is_login_redirect(b.get("/console"))
        # a fresh login, then past the maximum age however busy
        auth.clock = real
        b = log_in(p, op, browser(p))
        for step in range(50, 600, 50):
            auth.clock = lambda step=step: real() + step
            assert b.get("/console").status_code == 200, step
        auth.clock = lambda: real() + 601
        assert is_login_redirect(b.get("/console"))
    finally:
        auth.clock = real
