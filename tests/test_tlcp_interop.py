"""TLCP interoperability with implementations this project did not write.

- GmSSL (``gmssl tlcp_server`` / ``gmssl tlcp_client``): point ``MSTCRYPT_GMSSL`` at the
  ``gmssl`` binary (its ``../lib`` is put on LD_LIBRARY_PATH), or put it on PATH.
- Tongsuo (``tongsuo s_server -enable_ntls`` / ``s_client -enable_ntls -ntls``): point
  ``MSTCRYPT_TONGSUO`` at the ``tongsuo`` (or Tongsuo ``openssl``) binary, or put
  ``tongsuo`` on PATH.

Without them the tests skip and say so. Certificates come from mstcrypt.pki (root CA,
server and client dual certificates); keys are PKCS#8 PEM (GmSSL: one encrypted file
holding the signing key then the encryption key).

Known peer behaviour the tests encode (docs/tlcp.md, FACTS.md appendix):
- GmSSL needs ``-cipher_suite`` on both sides and ``-cacert`` for any client
  certificate; its client sends only the signing chain with ECC suites.
- GmSSL (3.2 and later) signs and verifies CertificateVerify over the raw handshake
  messages (our CertificateVerifyForm.TRANSCRIPT); Tongsuo over SM3 of them (SM3). Our
  server accepts both by default; our client sends the peer's form with the ``gmssl`` /
  ``tongsuo`` peer profile.
- ClientECDHEParams: GmSSL frames it as a vector (our default), Tongsuo bare (STRUCT).
- GmSSL's TLCP has no session resumption; Tongsuo's has (session IDs).
- ECDHE suites always authenticate the client (its encryption key takes part in the key
  exchange), so their "auth-none" cases differ from "auth-required" only in the peer's
  options.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mstcrypt.formats.keys import dump_private_key
from mstcrypt.protocols.tlcp import (
    CertificateVerifyForm,
    CipherSuite,
    ClientAuth,
    ECDHEParamsEncoding,
    PeerProfile,
    SessionCache,
    TLCPContext,
    TLCPError,
)
from mstcrypt.protocols.tlcp.sync import TLCPSocket
from mstcrypt.protocols.tlcp.testing import Identity, TestPKI

PASS = "interop-pass"
HOST = "localhost"

GMSSL_NAMES = {
    CipherSuite.ECC_SM4_CBC_SM3: "TLS_ECC_SM4_CBC_SM3",
    CipherSuite.ECC_SM4_GCM_SM3: "TLS_ECC_SM4_GCM_SM3",
    CipherSuite.ECDHE_SM4_CBC_SM3: "TLS_ECDHE_SM4_CBC_SM3",
    CipherSuite.ECDHE_SM4_GCM_SM3: "TLS_ECDHE_SM4_GCM_SM3",
}
TONGSUO_NAMES = {
    CipherSuite.ECC_SM4_CBC_SM3: "ECC-SM2-SM4-CBC-SM3",
    CipherSuite.ECC_SM4_GCM_SM3: "ECC-SM2-SM4-GCM-SM3",
    CipherSuite.ECDHE_SM4_CBC_SM3: "ECDHE-SM2-SM4-CBC-SM3",
    CipherSuite.ECDHE_SM4_GCM_SM3: "ECDHE-SM2-SM4-GCM-SM3",
}
SUITES = list(CipherSuite)
AUTH = [ClientAuth.NONE, ClientAuth.REQUIRED]


def _tool(env: str, name: str) -> str | None:
    path = os.environ.get(env) or shutil.which(name)
    return path if path and Path(path).is_file() else None


GMSSL = _tool("MSTCRYPT_GMSSL", "gmssl")
TONGSUO = _tool("MSTCRYPT_TONGSUO", "tongsuo")
needs_gmssl = pytest.mark.skipif(
    GMSSL is None,
    reason="GmSSL not available: build it outside the repository and set "
    "MSTCRYPT_GMSSL=/path/to/bin/gmssl",
)
needs_tongsuo = pytest.mark.skipif(
    TONGSUO is None,
    reason="Tongsuo not available: build it outside the repository and set "
    "MSTCRYPT_TONGSUO=/path/to/bin/tongsuo",
)


def _env(tool: str) -> dict[str, str]:
    env = dict(os.environ)
    root = Path(tool).resolve().parent.parent
    libs = [str(root / d) for d in ("lib", "lib64") if (root / d).is_dir()]
    env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")])
    return env


# --- PKI on disk ---------------------------------------------------------------------


@dataclass
class PeerFiles:
    dir: Path
    pki: TestPKI
    server: Identity
    client: Identity
    f: dict[str, Path] = field(default_factory=dict)

    def ctx(self, who: str, **kw) -> TLCPContext:
        ident = self.server if who == "server" else self.client
        return TLCPContext(credentials=ident.credentials(), trust_anchors=[self.pki.root], **kw)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> PeerFiles:
    d = tmp_path_factory.mktemp("tlcp-interop")
    pki = TestPKI("Interop")
    server = pki.identity(HOST, names=[HOST, "127.0.0.1"])
    client = pki.identity("terminal-001", server=False)
    pf = PeerFiles(d, pki, server, client)

    def w(name: str, data: bytes) -> Path:
        p = d / name
        p.write_bytes(data)
        pf.f[name] = p
        return p

    w("root.pem", pki.root.pem)
    for who, ident in (("server", server), ("client", client)):
        w(f"{who}_sign.pem", ident.sign_certificate.pem)
        w(f"{who}_enc.pem", ident.enc_certificate.pem)
        w(f"{who}_sign.key", dump_private_key(ident.sign_key))
        w(f"{who}_enc.key", dump_private_key(ident.enc_key))
        w(f"{who}_chain.pem", ident.sign_certificate.pem + ident.enc_certificate.pem)
        w(
            f"{who}_keys_gmssl.pem",
            dump_private_key(ident.sign_key, password=PASS, scheme="gmssl")
            + dump_private_key(ident.enc_key, password=PASS, scheme="gmssl"),
        )
        w(f"{who}_sign_gmssl.pem", dump_private_key(ident.sign_key, password=PASS, scheme="gmssl"))
    return pf


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else b""
            raise AssertionError(f"peer server exited: {out.decode(errors='replace')[-800:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("peer server did not start listening")


@pytest.fixture
def peer_server() -> Iterator:
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        procs.append(p)
        _wait_port(port, p)
        return p

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# --- our server in a thread --------------------------------------------------------


class OurServer:
    """Accepts connections, echoes one chunk of data, then closes (close_notify)."""

    def __init__(self, ctx: TLCPContext) -> None:
        self.ctx = ctx
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.results: list[object] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(20)
            try:
                s = TLCPSocket.accept(conn, self.ctx)
                data = s.recv()
                if data:
                    s.sendall(data)
                self.results.append(s.handshake)
                s.close()
            except (TLCPError, OSError) as exc:
                self.results.append(exc)
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def our_server() -> Iterator:
    servers: list[OurServer] = []

    def start(ctx: TLCPContext) -> OurServer:
        s = OurServer(ctx)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def _handshakes(server: OurServer, n: int = 1, timeout: float = 10) -> list:
    deadline = time.monotonic() + timeout
    while len(server.results) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return server.results


# === our client → GmSSL server =======================================================


def _gmssl_server(files: PeerFiles, peer_server, port: int, cert_request: bool):
    assert GMSSL is not None
    argv = [
        GMSSL,
        "tlcp_server",
        "-port",
        str(port),
        "-cert",
        str(files.f["server_chain.pem"]),
        "-key",
        str(files.f["server_keys_gmssl.pem"]),
        "-pass",
        PASS,
        "-cacert",
        str(files.f["root.pem"]),
    ]
    for s in SUITES:
        argv += ["-cipher_suite", GMSSL_NAMES[s]]
    if cert_request:
        argv.append("-cert_request")
    return peer_server(argv, _env(GMSSL), port)


@needs_gmssl
@pytest.mark.parametrize("auth", AUTH, ids=lambda a: f"auth-{a.value}")
@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_our_client_gmssl_server(files, peer_server, suite, auth) -> None:
    port = _free_port()
    _gmssl_server(files, peer_server, port, cert_request=auth is ClientAuth.REQUIRED)
    ctx = files.ctx("client", cipher_suites=[suite], **PeerProfile.named("gmssl").fields())
    assert ctx.certificate_verify_form is CertificateVerifyForm.TRANSCRIPT
    assert ctx.ecdhe_params_encoding is ECDHEParamsEncoding.VECTOR
    assert not ctx.ecc_client_dual_certificates
    if auth is ClientAuth.NONE and not suite.is_ecdhe:
        ctx.credentials = None
    with TLCPSocket.connect(("127.0.0.1", port), ctx, server_name=HOST) as s:
        assert s.handshake.cipher_suite is suite
        assert s.handshake.peer_certificates[0] == files.server.sign_certificate
        assert s.handshake.peer_certificates[1] == files.server.enc_certificate
        s.sendall(b"hello GmSSL\n")
        assert s.recv_exactly(12) == b"hello GmSSL\n"


@needs_gmssl
def test_gmssl_server_refuses_standard_certificate_verify(files, peer_server) -> None:
    """GmSSL 3.2+ verifies CertificateVerify over the raw transcript: the standard form
    (SM3 of the transcript) is refused — the incompatibility FACTS.md §4 records."""
    port = _free_port()
    _gmssl_server(files, peer_server, port, cert_request=True)
    ctx = files.ctx(
        "client", cipher_suites=[CipherSuite.ECC_SM4_GCM_SM3], ecc_client_dual_certificates=False
    )
    with pytest.raises((TLCPError, OSError)):
        s = TLCPSocket.connect(("127.0.0.1", port), ctx, server_name=HOST, timeout=10)
        s.sendall(b"x")
        s.recv()


# === our client → Tongsuo server ======================================================


def _tongsuo_server(files: PeerFiles, peer_server, port: int, auth: ClientAuth):
    assert TONGSUO is not None
    f = files.f
    argv = [
        TONGSUO,
        "s_server",
        "-accept",
        str(port),
        "-enable_ntls",
        "-sign_cert",
        str(f["server_sign.pem"]),
        "-sign_key",
        str(f["server_sign.key"]),
        "-enc_cert",
        str(f["server_enc.pem"]),
        "-enc_key",
        str(f["server_enc.key"]),
        "-CAfile",
        str(f["root.pem"]),
        "-verify_return_error",
        "-rev",
        "-cipher",
        ":".join(TONGSUO_NAMES[s] for s in SUITES),
    ]
    if auth is ClientAuth.REQUIRED:
        argv += ["-Verify", "2"]
    return peer_server(argv, _env(TONGSUO), port)


@needs_tongsuo
@pytest.mark.parametrize("auth", AUTH, ids=lambda a: f"auth-{a.value}")
@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_our_client_tongsuo_server(files, peer_server, suite, auth) -> None:
    port = _free_port()
    _tongsuo_server(files, peer_server, port, auth)
    ctx = files.ctx("client", cipher_suites=[suite], **PeerProfile.named("tongsuo").fields())
    if auth is ClientAuth.NONE and not suite.is_ecdhe:
        ctx.credentials = None
    with TLCPSocket.connect(("127.0.0.1", port), ctx, server_name=HOST) as s:
        assert s.handshake.cipher_suite is suite
        s.sendall(b"hello Tongsuo\n")  # -rev answers each line reversed
        assert s.recv_exactly(14) == b"ousgnoT olleh\n"


@needs_tongsuo
@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_our_client_resumes_with_tongsuo(files, peer_server, suite) -> None:
    port = _free_port()
    _tongsuo_server(files, peer_server, port, ClientAuth.NONE)
    ctx = files.ctx("client", cipher_suites=[suite], ecdhe_params_encoding="struct")
    with TLCPSocket.connect(("127.0.0.1", port), ctx, server_name=HOST) as s:
        first = s.handshake
        s.sendall(b"one\n")
        assert s.recv_exactly(4) == b"eno\n"
    assert first.session is not None and not first.resumed
    with TLCPSocket.connect(("127.0.0.1", port), ctx, server_name=HOST, session=first.session) as s:
        assert s.handshake.resumed and s.handshake.session_id == first.session_id
        s.sendall(b"two\n")
        assert s.recv_exactly(4) == b"owt\n"


@needs_tongsuo
def test_tongsuo_server_refuses_vector_ecdhe_params(files, peer_server) -> None:
    """Tongsuo requires the bare ClientECDHEParams (issue #838 in Tongsuo)."""
    port = _free_port()
    _tongsuo_server(files, peer_server, port, ClientAuth.NONE)
    ctx = files.ctx("client", cipher_suites=[CipherSuite.ECDHE_SM4_GCM_SM3])
    with pytest.raises((TLCPError, OSError)):
        TLCPSocket.connect(("127.0.0.1", port), ctx, server_name=HOST, timeout=10)


# === GmSSL client → our server ========================================================


def _server_ctx(files: PeerFiles, auth: ClientAuth) -> TLCPContext:
    # No per-peer settings: a server accepts both CertificateVerify forms by default.
    return files.ctx("server", client_auth=auth, session_cache=SessionCache())


@needs_gmssl
@pytest.mark.parametrize("auth", AUTH, ids=lambda a: f"auth-{a.value}")
@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_gmssl_client_our_server(files, our_server, tmp_path, suite, auth) -> None:
    assert GMSSL is not None
    server = our_server(_server_ctx(files, auth))
    msg = tmp_path / "msg"
    msg.write_bytes(b"hello mstcrypt\n")
    f = files.f
    argv = [
        GMSSL,
        "tlcp_client",
        "-host",
        HOST,
        "-port",
        str(server.port),
        "-cipher_suite",
        GMSSL_NAMES[suite],
        "-cacert",
        str(f["root.pem"]),
        "-in",
        str(msg),
    ]
    if suite.is_ecdhe:  # dual certificates, one key file with both keys
        argv += [
            "-cert",
            str(f["client_chain.pem"]),
            "-key",
            str(f["client_keys_gmssl.pem"]),
            "-pass",
            PASS,
        ]
    elif auth is ClientAuth.REQUIRED:  # GmSSL sends only the signing chain with ECC
        argv += [
            "-cert",
            str(f["client_sign.pem"]),
            "-key",
            str(f["client_sign_gmssl.pem"]),
            "-pass",
            PASS,
        ]
    p = subprocess.run(argv, env=_env(GMSSL), capture_output=True, timeout=60, check=False)
    out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    assert p.returncode == 0, out[-1500:]
    assert "hello mstcrypt" in p.stdout.decode(errors="replace"), out[-1500:]
    (hs,) = _handshakes(server)
    assert not isinstance(hs, Exception), hs
    assert hs.cipher_suite is suite
    if suite.is_ecdhe:
        assert hs.peer_certificates[:2] == (
            files.client.sign_certificate,
            files.client.enc_certificate,
        )
    elif auth is ClientAuth.REQUIRED:
        assert hs.peer_certificates[0] == files.client.sign_certificate


# === Tongsuo client → our server =====================================================


def _tongsuo_client(
    files: PeerFiles,
    port: int,
    suite: CipherSuite,
    *,
    certs: bool,
    extra: tuple[str, ...] = (),
    data: bytes = b"hello mstcrypt\n",
):
    assert TONGSUO is not None
    f = files.f
    argv = [
        TONGSUO,
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-enable_ntls",
        "-ntls",
        "-cipher",
        TONGSUO_NAMES[suite],
        "-CAfile",
        str(f["root.pem"]),
        "-verify_return_error",
        *extra,
    ]
    if certs:
        argv += [
            "-sign_cert",
            str(f["client_sign.pem"]),
            "-sign_key",
            str(f["client_sign.key"]),
            "-enc_cert",
            str(f["client_enc.pem"]),
            "-enc_key",
            str(f["client_enc.key"]),
        ]
    return subprocess.run(
        argv, env=_env(TONGSUO), input=data, capture_output=True, timeout=60, check=False
    )


@needs_tongsuo
@pytest.mark.parametrize("auth", AUTH, ids=lambda a: f"auth-{a.value}")
@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_tongsuo_client_our_server(files, our_server, suite, auth) -> None:
    server = our_server(_server_ctx(files, auth))
    certs = suite.is_ecdhe or auth is ClientAuth.REQUIRED
    p = _tongsuo_client(files, server.port, suite, certs=certs, extra=("-ign_eof",))
    out = p.stdout.decode(errors="replace")
    assert "hello mstcrypt" in out.split("---")[-1], out[-1500:] + p.stderr.decode()[-800:]
    assert "Verify return code: 0 (ok)" in out
    (hs,) = _handshakes(server)
    assert not isinstance(hs, Exception), hs
    assert hs.cipher_suite is suite
    if certs:
        assert hs.peer_certificates[:2] == (
            files.client.sign_certificate,
            files.client.enc_certificate,
        )


@needs_tongsuo
@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_tongsuo_client_resumes_with_our_server(files, our_server, suite) -> None:
    server = our_server(_server_ctx(files, ClientAuth.NONE))
    p = _tongsuo_client(
        files,
        server.port,
        suite,
        certs=suite.is_ecdhe,
        extra=("-reconnect", "-no_ticket"),
        data=b"",
    )
    out = p.stdout.decode(errors="replace")
    assert out.count("Reused, ") >= 5, out[-1500:]
    results = _handshakes(server, 6)
    assert all(not isinstance(r, Exception) for r in results), results
    assert [r.resumed for r in results[:6]] == [False] + [True] * 5
