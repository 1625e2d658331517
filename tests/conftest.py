"""Shared fixtures: the JSON test vectors and the ``openssl`` command line tool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

VECTORS_DIR = Path(__file__).parent / "vectors"

# Platform tests that exercise the admin API with static operator credentials opt in
# here; production default is certificate login (tests/test_login.py covers both).
os.environ.setdefault("MSTCRYPT_STATIC_OPERATORS", "1")


def load_vectors(name: str) -> Any:
    """The parsed content of ``tests/vectors/<name>.json``."""
    return json.loads((VECTORS_DIR / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def vectors() -> Callable[[str], Any]:
    """``vectors("sm2_sign")`` → the parsed vector file."""
    return load_vectors


OpenSSL = Callable[..., bytes]


class OpenSSLFailed(subprocess.CalledProcessError):
    """A failed ``openssl`` run; the message includes its stderr."""

    def __str__(self) -> str:
        err = (self.stderr or b"").decode(errors="replace").strip()
        return f"{super().__str__()}\n{err}"


@pytest.fixture(scope="session")
def openssl() -> OpenSSL:
    """``openssl(*args, input=b"...")`` runs the OpenSSL 3 CLI and returns its stdout; a
    non-zero exit raises ``subprocess.CalledProcessError`` (stderr in the message).
    Skips the test when no OpenSSL 3 ``openssl`` with SM2 is on PATH."""
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("the openssl command line tool (OpenSSL 3) is not on PATH")
    version = subprocess.run([exe, "version"], capture_output=True, check=False).stdout
    if not version.startswith(b"OpenSSL 3."):
        pytest.skip(f"interop tests need OpenSSL 3.x, found {version.decode(errors='replace')}")

    def run(*args: str, input: bytes | None = None) -> bytes:
        proc = subprocess.run([exe, *args], input=input, capture_output=True, check=False)
        if proc.returncode != 0:
            raise OpenSSLFailed(proc.returncode, ["openssl", *args], proc.stdout, proc.stderr)
        return proc.stdout

    try:
        run("genpkey", "-algorithm", "SM2")
    except OpenSSLFailed:
        pytest.skip("this openssl has no SM2 support")
    return run


# --- databases: every storage test runs on SQLite and, when configured, PostgreSQL ------

PG_ENV = "MSTCRYPT_TEST_DATABASE_URL"


def _pg_database(base_url: str) -> Any:
    """Create a fresh PostgreSQL database for one test; returns (url, drop callback)."""
    import secrets

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(base_url)
    name = f"mst_{secrets.token_hex(6)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url.set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A URL of an empty database: a SQLite file, or a new PostgreSQL database when
    MSTCRYPT_TEST_DATABASE_URL points at a server (.ci/run starts one)."""
    import os

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kmc.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://user:pw@host/db)")
    url, drop = _pg_database(base)
    try:
        yield url
    finally:
        drop()
