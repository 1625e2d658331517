"""Key rotation in a real browser (Debian's Chromium, headless, through Playwright): a
registration officer rotates a terminal's encryption key at the console, the terminal
collects it with ``mstcrypt keys collect``, and a file encrypted to the old key and one
encrypted to the new key both open with the token. The Keys page shows v2 active and v1
decrypt-only (and "awaiting pickup" in between), the audit page key.rotate and
key.collect. Then a short idle expiry (60 s, from the settings) logs the browser out,
through the console sessions' injected clock.

Screenshots go to ``$MSTCRYPT_TEST_ARTEFACTS/console`` (default: the test's tmp dir).
"""

from __future__ import annotations

import functools
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_helpers import launch_chromium, run_cli

from mstcrypt.apps import files
from mstcrypt.client import Client
from mstcrypt.module import KeyUsage, SoftToken
from platform_helpers import free_port

PIN = "term-pin-1357"
SUBJECT = {"C": "CN", "O": "Example Unit", "CN": "zhang", "email": "zhang@example.cn"}

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is needed")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with launch_chromium() as browser:
        yield browser


_cli = functools.partial(run_cli, PIN)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Any, Any]]:
    """The platform on a loopback port (plain HTTP for the browser), console sessions idle
    after 60 s: (URL, app, kmc)."""
    import uvicorn

    from mstcrypt.server.app import create_app
    from mstcrypt.server.config import Settings

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings.from_env(
        tmp_path / "data",
        static_operators=False,
        public_url=url,
        console_idle=60,
        console_max_age=3600,
        crl_max_delay=0,
    )
    kmc = settings.kmc()
    kmc.create_schema()
    kmc.ensure_initialised(actor="test")
    app = create_app(settings, kmc)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the platform did not start"
        time.sleep(0.05)
    try:
        yield url, app, kmc
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        kmc.db.dispose()


def _encrypt(cert: Any, text: bytes) -> bytes:
    out = io.BytesIO()
    files.encrypt(io.BytesIO(text), out, [cert])
    return out.getvalue()


def _decrypt(tok: SoftToken, blob: bytes) -> bytes:
    out = io.BytesIO()
    files.decrypt(io.BytesIO(blob), out, tok)
    return out.getvalue()


def _keys(page: Any) -> list[tuple[str, str, str]]:
    rows = page.locator("#keys tr[data-version]")
    return [
        (
            rows.nth(i).get_attribute("data-version"),
            rows.nth(i).locator("td.state").inner_text(),
            rows.nth(i).locator("td.delivery").inner_text(),
        )
        for i in range(rows.count())
    ]


def test_rotate_in_chromium_terminal_collects(
    chromium: Any, served: tuple[str, Any, Any], tmp_path: Path
) -> None:
    url, app, kmc = served
    shots = Path(os.environ.get("MSTCRYPT_TEST_ARTEFACTS", tmp_path)) / "console"
    shots.mkdir(parents=True, exist_ok=True)
    root = kmc.chain()[-1]
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(root.pem)
    public = Client(url, anchors=[root])

    # the registration officer (and administrator, to read the audit log)
    code, _ = kmc.operators.add("ops-ra", ["registration_officer", "administrator"], actor="t")
    op_tok = SoftToken.init(
        tmp_path / "ra.tok", PIN, "admin-code", iterations=100_000, anchors=[root.der]
    )
    public.enroll(code, op_tok)
    # the terminal, enrolled from the CLI; a file encrypted to its first key
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
    tcode, _ = kmc.create_enrollment_code(owner="zhang", subject=SUBJECT, actor="t")
    _cli("enroll", "--server", url, "--code", tcode, "--token", str(term))
    v1 = public.recipient_certificate("zhang")
    old_file = _encrypt(v1, b"minutes of the May meeting")

    # the officer opens the console (`mstcrypt console open`, in process) and rotates
    session = public.login(op_tok)["session_token"]
    link = f"{url}/console/login#code={public.console_code(session)['code']}"
    public.logout(session)
    ctx = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    page.goto(link)
    page.wait_for_url(f"{url}/console")
    page.click("nav >> text=Keys")
    page.fill("#owner", "zhang")
    page.click("form.inline button")
    page.wait_for_selector("#keys")
    assert _keys(page) == [("1", "active", "—")]
    page.fill("form.rotate input[name=confirm]", "zhang")
    page.click("form.rotate button")
    page.wait_for_selector("#done")
    assert dialogs and "Rotate zhang's encryption key" in dialogs[-1]
    assert "awaits pickup" in page.locator("#done").inner_text()
    assert _keys(page) == [("1", "decrypt_only", "—"), ("2", "active", "awaiting pickup")]
    page.screenshot(path=str(shots / "key-rotated.png"), full_page=True)
    v2 = public.recipient_certificate("zhang")
    assert v2.serial != v1.serial
    new_file = _encrypt(v2, b"minutes of the June meeting")

    # the terminal collects the new key from the CLI
    out = _cli("keys", "collect", "--server", url, "--token", str(term))
    assert "v2 installed" in out, out
    assert "nothing pending" in _cli("keys", "collect", "--server", url, "--token", str(term))
    page.goto(f"{url}/console/keys?owner=zhang")
    assert _keys(page) == [("1", "decrypt_only", "—"), ("2", "active", "—")]
    page.screenshot(path=str(shots / "key-collected.png"), full_page=True)
    page.goto(f"{url}/console/audit?action=key.")
    audit = page.locator("table").last.inner_text()
    assert "key.rotate" in audit and "key.collect" in audit

    tok = SoftToken.open(term)
    tok.login(PIN)
    assert tok.key("main", KeyUsage.ENCRYPT).public_key == v2.public_key
    assert _decrypt(tok, old_file) == b"minutes of the May meeting"
    assert _decrypt(tok, new_file) == b"minutes of the June meeting"

    # a short idle expiry (60 s from the settings) logs the browser out
    auth = app.state.console_auth
    assert auth.policy.idle == 60
    real = auth.clock
    try:
        auth.clock = lambda: real() + 30
        page.goto(f"{url}/console")
        assert page.url == f"{url}/console"
        auth.clock = lambda: real() + 30 + 61
        page.goto(f"{url}/console/keys?owner=zhang")
        assert page.url == f"{url}/console/login"
    finally:
        auth.clock = real
    ctx.close()
    public.close()
