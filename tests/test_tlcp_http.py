"""HTTP over TLCP: an ASGI (FastAPI) app served by mstcrypt.apps.tlcp_gateway.asgi and
called through the httpx transport of mstcrypt.protocols.tlcp.http_client — requests
and connection reuse, large and chunked bodies, identity headers, refusals (wrong
anchor, wrong name, pin, plain HTTP, the OpenSSL CLI), graceful shutdown, and the GmSSL
and Tongsuo clients when they are available."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from mstcrypt.apps.tlcp_gateway import SERIAL_HEADER, SUBJECT_HEADER, ASGITLCPServer
from mstcrypt.errors import PolicyError
from mstcrypt.protocols.tlcp import AlertDescription, ClientAuth, TLCPError
from mstcrypt.protocols.tlcp.http_client import TLCPTransport, tlcp_transport
from mstcrypt.protocols.tlcp.testing import TestPKI

NAME = "platform.test"
MIB = 1 << 20


def _tool(env: str, name: str) -> str | None:
    path = os.environ.get(env) or shutil.which(name)
    return path if path and Path(path).is_file() else None


GMSSL = _tool("MSTCRYPT_GMSSL", "gmssl")
TONGSUO = _tool("MSTCRYPT_TONGSUO", "tongsuo")


def make_app(state: dict[str, Any]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["started"] = True
        yield
        state["stopped"] = True

    app = FastAPI(lifespan=lifespan)

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Any:
        state["requests"] = state.get("requests", 0) + 1
        return await call_next(request)

    @app.get("/hello")
    async def hello(request: Request) -> dict[str, Any]:
        h = request.headers
        return {
            "client": request.client.host if request.client else None,
            "scheme": request.url.scheme,
            "subject": h.getlist(SUBJECT_HEADER),
            "serial": h.getlist(SERIAL_HEADER),
            "underscored": [k for k in h if "_" in k],
            "forwarded_for": h.getlist("x-forwarded-for"),
        }

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(body, media_type="application/octet-stream")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(50):
                yield bytes([i]) * 1000
                await asyncio.sleep(0)

        return StreamingResponse(parts(), media_type="application/octet-stream")

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(1.0)
        return {"done": "yes"}

    return app


class ServerThread:
    """An ASGITLCPServer on its own event loop in a thread."""

    def __init__(self, app: Any, **kw: Any) -> None:
        self.server = ASGITLCPServer(app, port=0, **kw)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.server.start()
            except BaseException as exc:
                self.error = exc
                self.ready.set()
                raise
            self.ready.set()
            await self._stop.wait()
            await self.server.close()

        asyncio.run(main())

    def __enter__(self) -> ServerThread:
        self.thread.start()
        assert self.ready.wait(30)
        if self.error is not None:
            raise self.error
        return self

    @property
    def port(self) -> int:
        return self.server.addresses[0][1]

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)
        assert not self.thread.is_alive()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture(scope="module")
def server_id(pki: TestPKI):
    # GmSSL's tlcp_client compares -server_name (else -host) with the first
    # dNSName SAN only (tls_cert_match_server_name in GmSSL 3.3).
    return pki.identity(NAME, names=[NAME, "localhost", "127.0.0.1"])


@pytest.fixture(scope="module")
def device(pki: TestPKI):
    return pki.identity("device 9", server=False)


@pytest.fixture(scope="module")
def served(pki, server_id) -> Iterator[tuple[ServerThread, dict[str, Any]]]:
    state: dict[str, Any] = {}
    with ServerThread(
        make_app(state),
        server_credentials=server_id.credentials(),
        client_auth=ClientAuth.OPTIONAL,
        trust_anchors=[pki.root],
        crls=[pki.issuer.crl(number=1)],
    ) as st:
        yield st, state


def client(pki, port: int, **kw: Any) -> httpx.Client:
    kw.setdefault("anchors", [pki.root.der])
    return httpx.Client(transport=tlcp_transport(**kw), base_url=f"https://127.0.0.1:{port}")


def test_get_and_post_with_connection_reuse(pki, served) -> None:
    st, state = served
    assert state["started"]
    with client(pki, st.port, server_name=NAME) as http:
        streams = set()
        for _ in range(5):
            r = http.get("/hello")
            assert r.status_code == 200
            streams.add(id(r.extensions["network_stream"]))
            body = r.json()
            assert body["scheme"] == "https" and body["client"] == "127.0.0.1"
            assert body["subject"] == [] and body["serial"] == []
        assert len(streams) == 1  # one TLCP connection for all five requests
        transport = http._transport
        assert isinstance(transport, TLCPTransport) and transport.connections == 1

        big = os.urandom(MIB)
        r = http.post("/echo", content=big)
        assert r.status_code == 200 and r.content == big

        def pieces() -> Iterator[bytes]:  # a chunked request body
            for i in range(16):
                yield big[i * 65536 : (i + 1) * 65536]

        r = http.post("/echo", content=pieces())
        assert r.status_code == 200 and hashlib.sha256(r.content).digest() == (
            hashlib.sha256(big).digest()
        )
        r = http.get("/stream")
        assert r.headers.get("transfer-encoding") == "chunked"
        assert r.content == b"".join(bytes([i]) * 1000 for i in range(50))
        assert transport.connections == 1


def test_url_host_is_checked_by_default(pki, served) -> None:
    st, _ = served
    with client(pki, st.port) as http:  # the IP SAN matches 127.0.0.1
        assert http.get("/hello").status_code == 200


def test_client_certificate_reaches_the_app_and_forgeries_do_not(pki, served, device) -> None:
    st, _ = served
    forged = {
        "X-MST-Client-Subject": "CN=forged",
        "x_mst_client_serial": "1337",
        "X-Forwarded-For": "6.6.6.6",
    }
    with client(pki, st.port, server_name=NAME) as http:
        body = http.get("/hello", headers=forged).json()
        assert body["subject"] == [] and body["serial"] == [] and body["underscored"] == []
        assert body["client"] == "127.0.0.1" and body["forwarded_for"] == ["127.0.0.1"]
    creds = device.credentials()
    with client(pki, st.port, server_name=NAME, client_credentials=creds) as http:
        body = http.get("/hello", headers=forged).json()
        assert body["subject"] == ["CN=device 9,O=mstcrypt test,C=CN"]
        assert body["serial"] == [f"{device.sign_certificate.serial:X}"]
        assert body["underscored"] == [] and body["client"] == "127.0.0.1"


def test_wrong_anchor_name_or_pin_refused(pki, served, server_id) -> None:
    st, state = served
    before = state["requests"]
    stranger = TestPKI("elsewhere")
    with client(pki, st.port, anchors=[stranger.root.pem], server_name=NAME) as http:
        with pytest.raises(TLCPError) as info:
            http.get("/hello")
        assert info.value.alert is AlertDescription.UNKNOWN_CA
    with client(pki, st.port, server_name="kmc.elsewhere.test") as http:
        with pytest.raises(TLCPError) as info:
            http.get("/hello")
        assert info.value.alert is AlertDescription.BAD_CERTIFICATE
        assert "kmc.elsewhere.test" in str(info.value)
    other = pki.identity(NAME, names=[NAME])
    pinned = client(pki, st.port, server_name=NAME, pinned=[other.sign_certificate])
    with pinned as http, pytest.raises(TLCPError, match="pinned"):
        http.get("/hello")
    assert state["requests"] == before
    pin = server_id.sign_certificate.fingerprint
    with client(pki, st.port, server_name=NAME, pinned=[pin]) as http:
        assert http.get("/hello").status_code == 200


def test_plain_http_refused_both_ways(pki, served) -> None:
    st, state = served
    before = state["requests"]
    with client(pki, st.port, server_name=NAME) as http, pytest.raises(PolicyError, match="https"):
        http.get(f"http://127.0.0.1:{st.port}/hello")
    with httpx.Client(timeout=10) as plain, pytest.raises(httpx.HTTPError):
        plain.get(f"http://127.0.0.1:{st.port}/hello")
    assert state["requests"] == before


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI is not installed")
def test_openssl_cli_cannot_talk_to_it(served) -> None:
    st, state = served
    before = state["requests"]
    p = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{st.port}", "-servername", NAME],
        input=b"GET /hello HTTP/1.1\r\nHost: platform.test\r\n\r\n",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert p.returncode != 0
    assert b"HTTP/1.1 200" not in p.stdout
    assert state["requests"] == before


def test_graceful_shutdown_finishes_requests_in_progress(pki, server_id) -> None:
    state: dict[str, Any] = {}
    st = ServerThread(make_app(state), server_credentials=server_id.credentials())
    with st:
        port = st.port
        result: dict[str, Any] = {}

        def slow() -> None:
            with client(pki, port, server_name=NAME) as http:
                result["r"] = http.get("/slow", timeout=30)

        t = threading.Thread(target=slow)
        t.start()
        for _ in range(200):
            if state.get("requests"):
                break
            time.sleep(0.01)
        st.stop()
        t.join(30)
    assert result["r"].status_code == 200 and result["r"].json() == {"done": "yes"}
    assert state["stopped"]
    with client(pki, port, server_name=NAME) as http, pytest.raises(httpx.ConnectError):
        http.get("/hello")


def test_connection_closed_by_the_server_is_not_reused(pki, server_id) -> None:
    """uvicorn closes an idle keep-alive connection; the gateway then closes the TLCP
    connection, and the transport notices instead of sending on a dead connection."""
    state: dict[str, Any] = {}
    with ServerThread(
        make_app(state),
        server_credentials=server_id.credentials(),
        uvicorn_options={"timeout_keep_alive": 0.3},
    ) as st:
        limits = httpx.Limits(keepalive_expiry=60)
        with client(pki, st.port, server_name=NAME, limits=limits) as http:
            first = http.get("/hello")
            assert first.status_code == 200
            time.sleep(1.0)
            second = http.get("/hello")
            assert second.status_code == 200
            assert second.extensions["network_stream"] is not first.extensions["network_stream"]
            assert state["requests"] == 2


def test_server_options_checked(server_id) -> None:
    app = make_app({})
    with pytest.raises(PolicyError, match="trust"):
        ASGITLCPServer(app, server_credentials=server_id.credentials(), client_auth="optional")
    with pytest.raises(PolicyError, match="uds"):
        ASGITLCPServer(
            app, server_credentials=server_id.credentials(), uvicorn_options={"uds": "/x"}
        )
    with pytest.raises(PolicyError):
        tlcp_transport(anchors=[])


# --- clients this project did not write ------------------------------------------------


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory, pki) -> Path:
    d = tmp_path_factory.mktemp("tlcp-http")
    (d / "root.pem").write_bytes(pki.root.pem)
    (d / "req").write_bytes(
        b"GET /hello HTTP/1.1\r\nHost: platform.test\r\nConnection: close\r\n\r\n"
    )
    # GmSSL's tlcp_client without a certificate aborts on any CertificateRequest
    # (internal_error), and this server asks for an optional one: give it one.
    from mstcrypt.formats.keys import dump_private_key

    terminal = pki.identity("terminal-http", server=False)
    (d / "client_sign.pem").write_bytes(terminal.sign_certificate.pem)
    (d / "client_sign.key").write_bytes(dump_private_key(terminal.sign_key, password="pw123456"))
    return d


@pytest.mark.skipif(
    GMSSL is None,
    reason="GmSSL not available: build it outside the repository and set "
    "MSTCRYPT_GMSSL=/path/to/bin/gmssl",
)
def test_gmssl_client_gets_a_response(served, pem_files) -> None:
    assert GMSSL is not None
    st, _ = served
    p = subprocess.run(
        [
            *(GMSSL, "tlcp_client", "-host", "127.0.0.1", "-port", str(st.port)),
            # GmSSL checks -server_name (else -host) against the first dNSName only
            *("-server_name", NAME),
            *("-cacert", str(pem_files / "root.pem"), "-in", str(pem_files / "req")),
            *("-cipher_suite", "TLS_ECC_SM4_GCM_SM3"),  # GmSSL needs one
            *("-cert", str(pem_files / "client_sign.pem"), "-pass", "pw123456"),
            *("-key", str(pem_files / "client_sign.key")),
        ],
        env={**os.environ, "LD_LIBRARY_PATH": str(Path(GMSSL).resolve().parent.parent / "lib")},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert b"HTTP/1.1 200" in p.stdout, (p.stdout + p.stderr)[-1500:]


@pytest.mark.skipif(
    TONGSUO is None,
    reason="Tongsuo not available: build it outside the repository and set "
    "MSTCRYPT_TONGSUO=/path/to/bin/tongsuo",
)
def test_tongsuo_client_gets_a_response(served, pem_files) -> None:
    assert TONGSUO is not None
    st, _ = served
    p = subprocess.run(
        [
            *(TONGSUO, "s_client", "-connect", f"127.0.0.1:{st.port}"),
            *("-enable_ntls", "-ntls", "-CAfile", str(pem_files / "root.pem")),
            # Without client certificates only the ECC suites can work; Tongsuo's default
            # list offers ECDHE too, which this server (its own order) would prefer.
            *("-cipher", "ECC-SM2-SM4-GCM-SM3", "-servername", NAME, "-verify_hostname", NAME),
            *("-verify_return_error", "-ign_eof", "-quiet"),
        ],
        input=(pem_files / "req").read_bytes(),
        env={**os.environ, "LD_LIBRARY_PATH": str(Path(TONGSUO).resolve().parent.parent / "lib")},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert b"HTTP/1.1 200" in p.stdout, (p.stdout + p.stderr)[-1500:]


RUN_SCRIPT = """
import sys
from pathlib import Path
from contextlib import asynccontextmanager
from fastapi import FastAPI
from mstcrypt.apps.tlcp_gateway import run_asgi_tlcp
from mstcrypt.formats.keys import load_private_key
from mstcrypt.pki import load_certificates
from mstcrypt.protocols.tlcp import Credentials

d = Path(sys.argv[1])
sign, enc = (load_certificates((d / n).read_bytes())[0] for n in ("sign.pem", "enc.pem"))
keys = [load_private_key((d / n).read_bytes(), "pw-123456") for n in ("sign.key", "enc.key")]

@asynccontextmanager
async def lifespan(app):
    yield
    print("lifespan shutdown", file=sys.stderr, flush=True)

app = FastAPI(lifespan=lifespan)

@app.get("/ping")
def ping():
    return {"pong": True}

def ready(addresses):
    host, port = addresses[0]
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)

run_asgi_tlcp(app, port=0, server_credentials=Credentials.from_keys(sign, keys[0], enc, keys[1]),
              ready=ready)
"""


def test_run_asgi_tlcp_blocks_until_sigterm(tmp_path: Path, pki, server_id) -> None:
    import signal
    import sys

    from mstcrypt.formats.keys import dump_private_key

    for name, data in {
        "sign.pem": server_id.sign_certificate.pem,
        "enc.pem": server_id.enc_certificate.pem,
        "sign.key": dump_private_key(server_id.sign_key, password="pw-123456"),
        "enc.key": dump_private_key(server_id.enc_key, password="pw-123456"),
    }.items():
        (tmp_path / name).write_bytes(data)
    src = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_SCRIPT, str(tmp_path)],
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": src},
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        assert line.startswith("listening on "), line
        port = int(line.rsplit(":", 1)[1])
        with client(pki, port, server_name=NAME) as http:
            assert http.get("/ping").json() == {"pong": True}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "lifespan shutdown" in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
