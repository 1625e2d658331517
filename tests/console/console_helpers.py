"""Helpers of the console tests: a cookie-keeping https:// client and the login through a
console code."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from http_helpers import Platform, Terminal
from mstcrypt.server.routers.console import PRE_COOKIE

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


SRC = Path(__file__).resolve().parents[2] / "src"


def run_cli(pin: str, *args: str) -> str:
    """``python -m mstcrypt ARGS`` in a clean environment with MSTCRYPT_PIN=pin; its
    standard output (the test fails on a non-zero exit)."""
    env = {
        "PYTHONPATH": str(SRC),
        "PATH": "/usr/bin:/bin",
        "MSTCRYPT_PIN": pin,
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    r = subprocess.run(
        [sys.executable, "-m", "mstcrypt", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


CHROMIUM = os.environ.get("MSTCRYPT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextlib.contextmanager
def launch_chromium() -> Iterator[Any]:
    """The system Chromium, headless, through Playwright (which never downloads a browser
    here); skips the test when either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is needed")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def browser(p: Platform) -> TestClient:
    """A cookie-keeping client on https:// (the session cookie is Secure)."""
    return TestClient(p.c.app, base_url="https://testserver", follow_redirects=False)


def code_for(p: Platform, op: Terminal) -> str:
    r = p.c.post("/console/code", headers=op.headers)
    assert r.status_code == 200, r.text
    return str(r.json()["code"])


def log_in(p: Platform, op: Terminal, b: TestClient | None = None) -> TestClient:
    b = b or browser(p)
    page = b.get("/console/login")
    assert page.status_code == 200
    pre = b.cookies.get(PRE_COOKIE)
    r = b.post("/console/login", data={"code": code_for(p, op), "pre": pre})
    assert r.status_code == 303 and r.headers["location"] == "/console", r.text
    return b


def csrf_of(b: TestClient, path: str = "/console") -> str:
    r = b.get(path)
    assert r.status_code == 200, r.text
    m = re.search(r'name="csrf" value="([^"]+)"', r.text)
    assert m
    return m.group(1)
