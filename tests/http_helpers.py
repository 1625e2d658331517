"""The platform's HTTP app in-process (FastAPI TestClient) for the API, access-table and
trust-model tests: a KMC on the test database, static operators officer-alice and
officer-bob, terminals that enroll and log in with their certificates (§7.3), and
operators registered at the console and bound to their certificates."""

from __future__ import annotations

import base64
import textwrap
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.formats.envelope import open_enveloped_key
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import CRL, Certificate, build_csr, name
from mstcrypt.protocols.login import Challenge, LoginClient
from mstcrypt.server.app import create_app
from mstcrypt.server.config import Settings
from platform_helpers import OPERATOR_NAMES, add_operators, master_key

with warnings.catch_warnings():  # starlette warns about httpx at import time
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SUBJECT = {"C": "CN", "O": "Example Unit", "OU": "Mobile", "CN": "alice"}
PEM_CT = "application/x-pem-file"
# the checkout's own location, wherever it is: no error body may reveal file paths
REPO_DIR = str(Path(__file__).resolve().parent.parent)
LEAK_MARKERS = ("Traceback", 'File "', ".py", REPO_DIR, "site-packages", "sqlalchemy", "psycopg")


class RecordingClient(TestClient):
    """A TestClient that keeps every response, so tests can check them all at the end."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.responses: list[httpx.Response] = []
        self._lock = threading.Lock()

    def request(self, *args: Any, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
        r = super().request(*args, **kwargs)
        with self._lock:
            self.responses.append(r)
        return r


def csr_pem(key: SM2PrivateKey, cn: str = "terminal") -> str:
    return build_csr(name(CN=cn), key.public_key(), key.sign).pem.decode()


def pem(der: bytes, label: str) -> str:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def cert_of(pem_text: str) -> Certificate:
    return Certificate.from_pem(pem_text.encode())


def split_pem(data: bytes) -> list[Certificate]:
    return [Certificate.from_pem(b"-----BEGIN" + p) for p in data.split(b"-----BEGIN")[1:]]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(r: httpx.Response, status: int, error: str | None = None) -> dict[str, Any]:
    """An error response in the documented form: JSON {"error", "detail"}, no internals."""
    assert r.status_code == status, (r.request.method, r.request.url.path, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and isinstance(body["detail"], str)
    if error is not None:
        assert body["error"] == error, body
    for marker in LEAK_MARKERS:
        assert marker not in r.text, f"{marker!r} in error body {r.text!r}"
    return dict(body)


def assert_unauthenticated(r: httpx.Response) -> dict[str, Any]:
    """401 with the error type of a refused credential."""
    body = assert_error(r, 401)
    assert body["error"] in ("AuthenticationError", "TokenError"), body
    return body


def make_kmc(url: str, *, recovery_approvals: int = 1) -> Kmc:
    """A KMC with an initialised CA, its SS-CC a soft key store under the tests' fixed
    master key (:func:`platform_helpers.master_key`)."""
    kmc = Kmc(
        Database(url),
        SoftKeyStore(master_key()),
        crl_base_url="http://testserver",
        recovery_approvals=recovery_approvals,
    )
    kmc.create_schema()
    kmc.init_ca(actor="test")
    return kmc


@dataclass
class Terminal:
    """An enrolled terminal: its signing key, the enrollment reply, its decrypted
    encryption key and (after :meth:`Platform.terminal`) a session token."""

    owner: str
    key: SM2PrivateKey
    body: dict[str, Any]
    enc_key: SM2PrivateKey
    token: str

    @property
    def sign_cert(self) -> Certificate:
        return cert_of(self.body["sign_certificate"])

    @property
    def enc_cert(self) -> Certificate:
        return cert_of(self.body["encryption_certificate"])

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


class Platform:
    """The app under test plus what the tests need around it."""

    def __init__(self, kmc: Kmc, settings: Settings, c: RecordingClient, ops: dict[str, str]):
        self.kmc, self.settings, self.c, self.ops = kmc, settings, c, ops

    # -- operators ---------------------------------------------------------------------
    def auth(self, operator: str = "alice") -> dict[str, str]:
        """Static credential of officer-alice / officer-bob (every role but auditor)."""
        return bearer(self.ops[operator])

    @staticmethod
    def op_name(operator: str) -> str:
        return OPERATOR_NAMES[operator]

    def cert_operator(self, op_name: str, roles: Iterable[str]) -> Terminal:
        """An operator registered at the console, enrolled with the operator code the
        console printed (so bound to that signing certificate), logged in."""
        code, _ = self.kmc.operators.add(op_name, list(roles))
        return self.enroll_with(op_name, code)

    # -- terminals ---------------------------------------------------------------------
    def code(self, owner: str, subject: dict[str, str] | None = None, **extra: Any) -> str:
        body = {"owner": owner, "subject": subject or {**SUBJECT, "CN": owner}, **extra}
        r = self.c.post("/admin/enrollment-codes", json=body, headers=self.auth())
        assert r.status_code == 200, r.text
        return str(r.json()["code"])

    def enroll(self, owner: str = "alice") -> tuple[SM2PrivateKey, dict[str, Any]]:
        terminal = SM2PrivateKey.generate()
        r = self.c.post("/enroll", json={"code": self.code(owner), "csr": csr_pem(terminal)})
        assert r.status_code == 200, r.text
        return terminal, r.json()

    def enroll_with(self, owner: str, code: str) -> Terminal:
        key = SM2PrivateKey.generate()
        r = self.c.post("/enroll", json={"code": code, "csr": csr_pem(key, owner)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["owner"] == owner
        enc = open_enveloped_key(base64.b64decode(body["enveloped_key"]), key)
        t = Terminal(owner, key, body, enc, "")
        t.token = self.session(t.key, t.sign_cert)
        return t

    def terminal(self, owner: str) -> Terminal:
        """Enroll ``owner`` with a registration officer's code and log in."""
        return self.enroll_with(owner, self.code(owner))

    # -- certificate login (§7.3) ------------------------------------------------------
    def crls(self) -> list[CRL]:
        return [CRL.from_der(self.c.get(f"/crl/{ca}.crl").content) for ca in ("issuing", "root")]

    def login(self, key: SM2PrivateKey, cert: Certificate, **extra: Any) -> httpx.Response:
        """One certificate login over the API: challenge, the terminal's response (it
        checks the login server's certificate against the root), the session."""
        chain = split_pem(self.c.get("/ca/chain.pem").content)
        client = LoginClient(
            expected_server_name=self.settings.login_server_name,
            certificate=cert,
            signer=key.sign,
            chain=chain[:-1],
            anchors=chain[-1:],
        )
        r = self.c.post("/login/challenge")
        assert r.status_code == 200, r.text
        response = client.respond(
            Challenge.from_json(r.json()), now=datetime.now(UTC), crls=self.crls()
        )
        return self.c.post("/login/response", json={"response": response.to_json(), **extra})

    def session(self, key: SM2PrivateKey, cert: Certificate) -> str:
        r = self.login(key, cert)
        assert r.status_code == 200, r.text
        token = str(r.json()["session_token"])
        assert token.startswith("MST1.")
        return token


def platform(kmc: Kmc, data_dir: Path, **settings: Any) -> Iterator[Platform]:
    """The app over ``kmc`` with static operators officer-alice and officer-bob; after
    the test, checks that no error response carried a traceback or internals."""
    settings.setdefault("static_operators", True)
    s = Settings(data_dir=data_dir, checkpoint_seconds=3600, **settings)
    ops = add_operators(kmc)
    with RecordingClient(create_app(s, kmc), raise_server_exceptions=False) as c:
        yield Platform(kmc, s, c, ops)
    for r in c.responses:
        if r.status_code >= 400:
            for marker in LEAK_MARKERS:
                assert marker not in r.text, (r.request.url, r.text)
