"""The TLCP mobile access gateway (mstcrypt.apps.tlcp_gateway): TCP forwarding under
concurrency, the HTTP reverse proxy with identity headers, CRL refresh, foreign CAs,
unknown SNI, limits, configuration files."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from mstcrypt.apps.tlcp_gateway import (
    SERIAL_HEADER,
    SUBJECT_HEADER,
    Gateway,
    GatewayConfig,
    ListenerConfig,
    Route,
    TrustConfig,
    TrustMaterial,
    file_trust_source,
)
from mstcrypt.apps.tlcp_gateway.http import HTTPRequestError, parse_request_head
from mstcrypt.errors import PolicyError
from mstcrypt.formats.keys import dump_private_key
from mstcrypt.pki import RevokedEntry
from mstcrypt.protocols.tlcp import AlertDescription, TLCPContext, TLCPError, aio
from mstcrypt.protocols.tlcp.testing import TestPKI

ECHO, WEB = "echo.internal", "web.internal"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture(scope="module")
def gw_id(pki: TestPKI):
    return pki.identity("gateway", names=[ECHO, WEB])


@pytest.fixture(scope="module")
def device(pki: TestPKI):
    return pki.identity("device 1", server=False)


class MutableTrust:
    """A trust source whose CRL lists whatever is in ``revoked``."""

    def __init__(self, pki: TestPKI) -> None:
        self.pki = pki
        self.revoked: list[RevokedEntry] = []
        self.number = 0
        self.calls = 0

    def __call__(self) -> TrustMaterial:
        self.number += 1
        self.calls += 1
        crl = self.pki.issuer.crl(number=self.number, entries=list(self.revoked))
        return TrustMaterial((self.pki.root,), (), (crl,))


async def echo_service() -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def http_service() -> asyncio.Server:
    """Answers each request with a JSON body: method, path, headers and body length."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers: dict[str, list[str]] = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers.setdefault(k.lower(), []).append(v.strip())
                body = await reader.readexactly(int(headers.get("content-length", ["0"])[0]))
                out = json.dumps(
                    {"method": method, "path": path, "headers": headers, "body": body.decode()}
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(out)}\r\n\r\n".encode()
                    + out
                )
                await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def addr(server: asyncio.Server) -> str:
    return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def read_response(reader: aio.TLCPStreamReader) -> tuple[bytes, dict[str, Any]]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head, json.loads(await reader.readexactly(length))


def client_ctx(pki: TestPKI, ident: Any) -> TLCPContext:
    return TLCPContext(credentials=ident.credentials(), trust_anchors=[pki.root])


async def make_gateway(pki, gw_id, trust, echo, web, **kw: Any) -> Gateway:
    config = GatewayConfig(
        listeners=[
            ListenerConfig(
                port=0,
                routes={ECHO: Route(addr(echo)), WEB: Route(addr(web), "http")},
                name="mobile",
            )
        ],
        **kw,
    )
    gw = Gateway(config, credentials=gw_id.credentials(), trust_source=trust, refresh_interval=0.2)
    await gw.start()
    return gw


def test_tcp_forwarding_twenty_concurrent(pki, gw_id, device, caplog) -> None:
    caplog.set_level(logging.INFO, logger="mstcrypt.gateway.access")

    async def main() -> None:
        echo, web = await echo_service(), await http_service()
        gw = await make_gateway(pki, gw_id, MutableTrust(pki), echo, web)
        host, port = gw.addresses[0]
        cctx = client_ctx(pki, device)

        async def one(i: int) -> None:
            reader, writer = await aio.open_connection(host, port, cctx, server_name=ECHO)
            msg = bytes((i + j) % 256 for j in range(i * 3000 + 1))
            writer.write(msg)
            await writer.drain()
            assert await reader.readexactly(len(msg)) == msg
            writer.write(b"\x00\r\n\xff")
            assert await reader.readexactly(4) == b"\x00\r\n\xff"
            writer.close()
            await writer.wait_closed()

        await asyncio.gather(*(one(i) for i in range(20)))
        for _ in range(100):
            if gw.active == 0:
                break
            await asyncio.sleep(0.02)
        assert gw.active == 0
        await gw.close()
        echo.close()
        web.close()

    run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "mstcrypt.gateway.access"]
    assert len(lines) == 20
    assert all("result=ok" in line and f"sni={ECHO}" in line for line in lines)
    assert all("serial=" in line and "device 1" in line for line in lines)


def test_http_mode_adds_identity_headers(pki, gw_id, device) -> None:
    async def main() -> None:
        echo, web = await echo_service(), await http_service()
        gw = await make_gateway(pki, gw_id, MutableTrust(pki), echo, web)
        host, port = gw.addresses[0]
        reader, writer = await aio.open_connection(
            host, port, client_ctx(pki, device), server_name=WEB
        )
        writer.write(
            b"POST /api/x HTTP/1.1\r\nHost: web.internal\r\n"
            b"X-MST-Client-Subject: CN=forged\r\nx-mst-client-serial: 1\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )
        head, got = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200")
        assert got["method"] == "POST" and got["path"] == "/api/x" and got["body"] == "hello"
        h = got["headers"]
        assert h[SUBJECT_HEADER.lower()] == ["CN=device 1,O=mstcrypt test,C=CN"]
        assert h[SERIAL_HEADER.lower()] == [f"{device.sign_certificate.serial:X}"]
        # a second request on the same connection, chunked, is rewritten too
        writer.write(
            b"PUT /b HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n"
            b"X-MST-Client-Serial: 2\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        head2 = await reader.readuntil(b"\r\n\r\n")
        assert head2.startswith(b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()

        # a malformed request gets 400 and the connection ends
        reader, writer = await aio.open_connection(
            host, port, client_ctx(pki, device), server_name=WEB
        )
        writer.write(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400")
        writer.close()
        await gw.close()
        echo.close()
        web.close()

    run(main())


def test_revoked_terminal_refused_after_refresh(pki, gw_id, device) -> None:
    async def main() -> None:
        echo, web = await echo_service(), await http_service()
        trust = MutableTrust(pki)
        gw = await make_gateway(pki, gw_id, trust, echo, web)
        host, port = gw.addresses[0]
        cctx = client_ctx(pki, device)
        r, w = await aio.open_connection(host, port, cctx, server_name=ECHO)
        w.write(b"ok")
        assert await r.readexactly(2) == b"ok"
        w.close()

        from datetime import UTC, datetime

        trust.revoked.append(
            RevokedEntry(device.sign_certificate.serial, datetime.now(UTC).replace(microsecond=0))
        )
        calls = trust.calls
        for _ in range(100):
            if trust.calls > calls:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(TLCPError) as info:
            r, w = await aio.open_connection(host, port, cctx, server_name=ECHO)
            await r.read()  # the refusal may arrive after our Finished
        assert info.value.alert == AlertDescription.CERTIFICATE_REVOKED
        await gw.close()
        echo.close()
        web.close()

    run(main())


def test_foreign_ca_and_unknown_sni_refused(pki, gw_id, device) -> None:
    async def main() -> None:
        echo, web = await echo_service(), await http_service()
        gw = await make_gateway(pki, gw_id, MutableTrust(pki), echo, web)
        host, port = gw.addresses[0]
        stranger = TestPKI("elsewhere").identity("device x", server=False)
        with pytest.raises(TLCPError) as info:
            r, _ = await aio.open_connection(
                host, port, client_ctx(pki, stranger), server_name=ECHO
            )
            await r.read()
        assert info.value.alert == AlertDescription.UNKNOWN_CA

        with pytest.raises(TLCPError) as info:
            await aio.open_connection(
                host, port, client_ctx(pki, device), server_name="secret.internal"
            )
        assert info.value.alert == AlertDescription.UNRECOGNIZED_NAME

        no_sni = TLCPContext(
            credentials=device.credentials(), trust_anchors=[pki.root], check_hostname=False
        )
        with pytest.raises(TLCPError) as info:  # no SNI and no default route
            await aio.open_connection(host, port, no_sni)
        assert info.value.alert == AlertDescription.UNRECOGNIZED_NAME
        await gw.close()
        echo.close()
        web.close()

    run(main())


def test_limits_and_graceful_shutdown(pki, gw_id, device) -> None:
    async def main() -> None:
        echo, web = await echo_service(), await http_service()
        gw = await make_gateway(
            pki, gw_id, MutableTrust(pki), echo, web, max_connections=1, idle_timeout=0.5
        )
        host, port = gw.addresses[0]
        cctx = client_ctx(pki, device)
        r, w = await aio.open_connection(host, port, cctx, server_name=ECHO)
        w.write(b"a")
        assert await r.readexactly(1) == b"a"
        # the second connection is over the limit: closed before the handshake
        with pytest.raises(TLCPError):
            await aio.open_connection(host, port, cctx, server_name=ECHO)
        # idle: the gateway closes the first connection with close_notify
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()

        r, w = await aio.open_connection(host, port, cctx, server_name=ECHO)
        w.write(b"b")
        assert await r.readexactly(1) == b"b"
        await gw.close(grace=0.1)  # cuts the open connection
        assert await asyncio.wait_for(r.read(), 5) == b""
        with pytest.raises(OSError):
            await asyncio.open_connection(host, port)
        echo.close()
        web.close()

    run(main())


def test_config_from_toml_with_pem_files(tmp_path: Path, pki, gw_id, device) -> None:
    files = {
        "sign.pem": gw_id.sign_certificate.pem,
        "enc.pem": gw_id.enc_certificate.pem,
        "sign.key": dump_private_key(gw_id.sign_key, password="pw123456"),
        "enc.key": dump_private_key(gw_id.enc_key, password="pw123456"),
        "root.pem": pki.root.pem,
        "crl.pem": pki.issuer.crl(number=1).pem,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "gw.toml").write_text(
        """
max_connections = 50
idle_timeout = 60

[credentials]
cert = ["sign.pem", "enc.pem"]
key = "sign.key"
enc_key = "enc.key"
password_env = "TEST_GW_PASS"

[trust]
ca_files = ["root.pem"]
crl_files = ["crl.pem"]
refresh_interval = 30
require_crl = true

[[listeners]]
host = "127.0.0.1"
port = 0
default = "127.0.0.1:1"
[listeners.routes]
"echo.internal" = "127.0.0.1:2"
"web.internal" = { upstream = "127.0.0.1:3", mode = "http" }
""",
        encoding="utf-8",
    )
    config = GatewayConfig.from_file(tmp_path / "gw.toml")
    lc = config.listeners[0]
    assert lc.route_for("Echo.Internal") == Route("127.0.0.1:2")
    assert lc.route_for(WEB).mode == "http"
    assert lc.route_for(None) == Route("127.0.0.1:1")
    assert config.trust and config.trust.require_crl
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEST_GW_PASS", "pw123456")
        assert config.credentials is not None
        creds = config.credentials.load()
    assert creds.sign_certificate == gw_id.sign_certificate

    async def main() -> TrustMaterial:
        t = config.trust
        assert t is not None
        src = file_trust_source(t.ca_files, t.intermediate_files, t.crl_files)
        return await src()  # type: ignore[misc]

    material = run(main())
    assert material.trust_anchors == (pki.root,) and len(material.crls) == 1

    (tmp_path / "gw.json").write_text(
        json.dumps({"listeners": [{"port": 1, "routes": {"a": "h:1"}}], "bogus": 1})
    )
    with pytest.raises(PolicyError, match="bogus"):
        GatewayConfig.from_file(tmp_path / "gw.json")
    with pytest.raises(PolicyError):
        Route("nohost")
    with pytest.raises(PolicyError):
        Route("h:1", "udp")


def test_request_head_is_reframed_and_ambiguous_requests_refused() -> None:
    req = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nX-MST-Client-Serial: 9\r\n\r\n")
    ident = [(b"X-MST-Client-Serial", b"1")]
    assert req.encode(ident) == b"GET / HTTP/1.1\r\nHost: a\r\nX-MST-Client-Serial: 1\r\n\r\n"
    assert (req.content_length, req.chunked, req.close) == (None, False, False)
    for bad in (
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ):
        with pytest.raises(HTTPRequestError):
            parse_request_head(bad)


# --- command line (subprocesses) --------------------------------------------------------

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli(command: str, *args: str) -> list[str]:
    """argv running one typer command of mstcrypt.cli.tlcp_cmd on its own."""
    code = (
        "import typer\n"
        f"from mstcrypt.cli.tlcp_cmd import {command} as f\n"
        "app = typer.Typer(pretty_exceptions_enable=False)\n"
        "app.command()(f)\n"
        "app()\n"
    )
    return [sys.executable, "-c", code, *args]


async def spawn(argv: list[str]) -> tuple[asyncio.subprocess.Process, int]:
    """Start a server command and wait for its "listening on HOST:PORT" line."""
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    assert proc.stderr is not None
    seen = []
    async with asyncio.timeout(30):
        while True:
            line = (await proc.stderr.readline()).decode()
            seen.append(line)
            if not line:
                raise AssertionError("command exited: " + "".join(seen))
            if line.startswith("listening on "):
                return proc, int(line.rsplit(":", 1)[1])


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def write_identity(tmp_path: Path, prefix: str, ident: Any) -> dict[str, str]:
    files = {
        f"{prefix}_sign.pem": ident.sign_certificate.pem,
        f"{prefix}_enc.pem": ident.enc_certificate.pem,
        f"{prefix}_sign.key": dump_private_key(ident.sign_key, password="pass1234"),
        f"{prefix}_enc.key": dump_private_key(ident.enc_key, password="pass1234"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {k.split("_", 1)[1]: str(tmp_path / k) for k in files}


def test_cli_tlcp_server_and_client(tmp_path: Path, pki, gw_id, device) -> None:
    (tmp_path / "root.pem").write_bytes(pki.root.pem)
    s = write_identity(tmp_path, "gw", gw_id)
    c = write_identity(tmp_path, "dev", device)
    payload = b"hello over TLCP\n" * 1000
    (tmp_path / "in.bin").write_bytes(payload)

    async def main() -> None:
        argv = cli(
            "tlcp_server_command",
            *("--cert", s["sign.pem"], "--cert", s["enc.pem"]),
            *("--key", s["sign.key"], "--enc-key", s["enc.key"], "--pass", "pass1234"),
            *("--cacert", str(tmp_path / "root.pem"), "--verify-client", "--echo"),
            *("--port", "0", "--cipher-suite", "ECDHE_SM4_GCM_SM3"),
        )
        proc, port = await spawn(argv)
        try:
            r, w = await aio.open_connection(
                "127.0.0.1", port, client_ctx(pki, device), server_name=ECHO
            )
            assert w.get_extra_info("cipher_suite").name == "ECDHE_SM4_GCM_SM3"
            w.write(b"ping")
            assert await r.readexactly(4) == b"ping"
            w.close()
            await w.wait_closed()

            client = await asyncio.create_subprocess_exec(
                *cli(
                    "tlcp_client_command",
                    *("--cacert", str(tmp_path / "root.pem"), "--port", str(port)),
                    *("--server-name", WEB, "--in", str(tmp_path / "in.bin"), "--wait", "1"),
                    *("--client-cert", c["sign.pem"], "--client-cert", c["enc.pem"]),
                    *("--client-key", c["sign.key"], "--client-enc-key", c["enc.key"]),
                    *("--pass", "pass1234"),
                ),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": SRC},
            )
            out, err = await asyncio.wait_for(client.communicate(), 60)
            assert client.returncode == 0, err.decode()
            assert out == payload
        finally:
            await stop(proc)

    run(main())


def test_cli_gateway_and_tunnel(tmp_path: Path, pki, gw_id) -> None:
    from mstcrypt.module import SoftToken
    from mstcrypt.pki import Profile, name

    (tmp_path / "root.pem").write_bytes(pki.root.pem)
    (tmp_path / "crl.pem").write_bytes(pki.issuer.crl(number=1).pem)
    s = write_identity(tmp_path, "gw", gw_id)
    tok = SoftToken.init(tmp_path / "token", "123456", "admin-code-1", iterations=100_000)
    tok.create_container("vpn")
    subject = name(C="CN", O="mstcrypt test", CN="phone 7")
    serials = []
    for usage, profile in (("sign", Profile.DEVICE_SIGN), ("enc", Profile.DEVICE_ENC)):
        h = tok.generate_key_pair("vpn", usage, escrowed=False)
        cert = pki.issuer.issue(subject=subject, public_key=h.public_key, profile=profile)
        tok.put_certificate("vpn", h.usage, cert.der)
        serials.append(cert.serial)
    tok.logout()

    async def main() -> None:
        echo, web = await echo_service(), await http_service()
        (tmp_path / "gw.toml").write_text(
            f"""
idle_timeout = 30
[credentials]
cert = ["{s["sign.pem"]}", "{s["enc.pem"]}"]
key = "{s["sign.key"]}"
enc_key = "{s["enc.key"]}"
password = "pass1234"
[trust]
ca_files = ["root.pem"]
crl_files = ["crl.pem"]
refresh_interval = 5
[[listeners]]
port = 0
[listeners.routes]
"{ECHO}" = "{addr(echo)}"
"{WEB}" = {{ upstream = "{addr(web)}", mode = "http" }}
""",
            encoding="utf-8",
        )
        gw, gw_port = await spawn(cli("gateway_command", str(tmp_path / "gw.toml")))
        tunnels = []
        try:
            for route in (ECHO, WEB):
                argv = cli(
                    "tunnel_command",
                    *("--token", str(tmp_path / "token"), "--pin", "123456"),
                    *("--gateway", f"127.0.0.1:{gw_port}", "--server-name", route),
                    *("--cacert", str(tmp_path / "root.pem"), "--local-port", "0"),
                    *("--crl", str(tmp_path / "crl.pem")),
                )
                tunnels.append(await spawn(argv))
            r, w = await asyncio.open_connection("127.0.0.1", tunnels[0][1])
            msg = bytes(range(256)) * 100
            w.write(msg)
            await w.drain()
            assert await asyncio.wait_for(r.readexactly(len(msg)), 30) == msg
            w.close()

            r, w = await asyncio.open_connection("127.0.0.1", tunnels[1][1])
            w.write(b"GET /hello HTTP/1.1\r\nHost: web\r\n\r\n")
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            got = json.loads(await r.readexactly(length))
            assert got["headers"][SUBJECT_HEADER.lower()] == ["CN=phone 7,O=mstcrypt test,C=CN"]
            assert got["headers"][SERIAL_HEADER.lower()] == [f"{serials[0]:X}"]
            w.close()
        finally:
            for proc, _ in tunnels:
                await stop(proc)
            await stop(gw)
            echo.close()
            web.close()
        assert gw.returncode == 0
        assert gw.stderr is not None
        log = (await gw.stderr.read()).decode()
        assert "mstcrypt.gateway.access" in log and "phone 7" in log
        assert "pass1234" not in log

    run(main())


def test_kmc_revocation_reaches_the_gateway(tmp_path: Path, pki, gw_id) -> None:
    """Trust from a Kmc object: a terminal enrolled at the KMC gets in; once the KMC
    revokes its certificate it is refused after the next refresh."""
    import secrets

    from mstcrypt.apps.tlcp_gateway import kmc_trust_source
    from mstcrypt.crypto.sm2 import SM2PrivateKey
    from mstcrypt.formats.envelope import open_enveloped_key
    from mstcrypt.kmc.db import Database
    from mstcrypt.kmc.service import Kmc
    from mstcrypt.module.sscc import SoftKeyStore
    from mstcrypt.pki import build_csr, name
    from mstcrypt.protocols.tlcp import Credentials

    kmc = Kmc(Database(f"sqlite:///{tmp_path / 'kmc.db'}"), SoftKeyStore(secrets.token_bytes(32)))
    kmc.create_schema()
    kmc.init_ca(actor="test")
    terminal = SM2PrivateKey.generate()
    code, _ = kmc.create_enrollment_code(
        owner="bob", subject={"C": "CN", "O": "Unit", "CN": "bob"}, actor="op"
    )
    e = kmc.enroll(code, build_csr(name(CN="bob"), terminal.public_key(), terminal.sign).der)
    creds = Credentials.from_keys(
        e.sign_certificate,
        terminal,
        e.encryption_certificate,
        open_enveloped_key(e.enveloped_key, terminal),
    )
    cctx = TLCPContext(credentials=creds, trust_anchors=[pki.root])

    async def main() -> None:
        echo, web = await echo_service(), await http_service()
        source = kmc_trust_source(kmc)
        gw = await make_gateway(pki, gw_id, source, echo, web)
        host, port = gw.addresses[0]
        r, w = await aio.open_connection(host, port, cctx, server_name=ECHO)
        w.write(b"in")
        assert await r.readexactly(2) == b"in"
        w.close()
        kmc.revoke_certificate(f"{e.sign_certificate.serial:x}", actor="op")
        count = gw.refresh_count
        for _ in range(100):
            if gw.refresh_count > count:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(TLCPError) as info:
            r, _ = await aio.open_connection(host, port, cctx, server_name=ECHO)
            await r.read()
        assert info.value.alert == AlertDescription.CERTIFICATE_REVOKED
        await gw.close()
        echo.close()
        web.close()

    try:
        run(main())
    finally:
        kmc.db.dispose()


def test_gateway_requires_crls_by_default(pki, gw_id, device, caplog) -> None:
    """Without a CRL for the terminal's issuer the gateway refuses it; turning the check
    off is possible but logged as a warning."""

    def no_crls() -> TrustMaterial:
        return TrustMaterial((pki.root,))

    async def attempt(**kw: Any) -> None:
        echo, web = await echo_service(), await http_service()
        config = GatewayConfig(listeners=[ListenerConfig(port=0, routes={ECHO: Route(addr(echo))})])
        gw = Gateway(config, credentials=gw_id.credentials(), trust_source=no_crls, **kw)
        await gw.start()
        host, port = gw.addresses[0]
        try:
            r, w = await aio.open_connection(host, port, client_ctx(pki, device), server_name=ECHO)
            w.write(b"x")
            assert await r.readexactly(1) == b"x"
            w.close()
        finally:
            await gw.close()
            echo.close()
            web.close()

    with pytest.raises(TLCPError) as info:
        run(attempt())
    assert info.value.alert == AlertDescription.CERTIFICATE_UNKNOWN
    caplog.set_level(logging.WARNING, logger="mstcrypt.gateway")
    run(attempt(require_crl=False))
    assert any("require_crl is off" in r.getMessage() for r in caplog.records)
    assert TrustConfig(ca_files=("root.pem",)).require_crl is True


def test_cli_tunnel_checks_the_gateway_crl(tmp_path: Path, pki, gw_id) -> None:
    """The tunnel refuses to start without a CRL source, and refuses a gateway whose
    certificate the CRL lists as revoked."""
    from datetime import UTC, datetime

    from mstcrypt.module import SoftToken
    from mstcrypt.pki import Profile, name

    (tmp_path / "root.pem").write_bytes(pki.root.pem)
    revoked_at = datetime.now(UTC).replace(microsecond=0)
    entries = [RevokedEntry(gw_id.sign_certificate.serial, revoked_at)]
    (tmp_path / "revoked.pem").write_bytes(pki.issuer.crl(number=7, entries=entries).pem)
    tok = SoftToken.init(tmp_path / "token", "123456", "admin-code-1", iterations=100_000)
    tok.create_container("vpn")
    for usage, profile in (("sign", Profile.DEVICE_SIGN), ("enc", Profile.DEVICE_ENC)):
        # no KMC in this test PKI: the encryption key is made here, acknowledged unescrowed
        h = tok.generate_key_pair("vpn", usage, escrowed=False)
        subject = name(C="CN", O="mstcrypt test", CN="phone 8")
        cert = pki.issuer.issue(subject=subject, public_key=h.public_key, profile=profile)
        tok.put_certificate("vpn", h.usage, cert.der)
    tok.logout()
    env = {**os.environ, "PYTHONPATH": SRC}

    async def main() -> None:
        echo = await echo_service()
        gw_ctx = TLCPContext(
            credentials=gw_id.credentials(),
            trust_anchors=[pki.root],
            client_auth="required",
        )

        async def relay(r: aio.TLCPStreamReader, w: aio.TLCPStreamWriter) -> None:
            w.write(await r.read(100))
            w.close()

        gw = await aio.start_server(relay, "127.0.0.1", 0, gw_ctx)
        gw_port = gw.sockets[0].getsockname()[1]
        base = [
            *("--token", str(tmp_path / "token"), "--pin", "123456"),
            *("--gateway", f"127.0.0.1:{gw_port}", "--server-name", ECHO),
            *("--cacert", str(tmp_path / "root.pem"), "--local-port", "0"),
        ]
        proc = await asyncio.create_subprocess_exec(
            *cli("tunnel_command", *base), stderr=asyncio.subprocess.PIPE, env=env
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode != 0 and b"--crl" in err

        tunnel, port = await spawn(
            cli("tunnel_command", *base, "--crl", str(tmp_path / "revoked.pem"))
        )
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"secret")
            await w.drain()
            assert await asyncio.wait_for(r.read(), 30) == b""  # never relayed
            w.close()
        finally:
            await stop(tunnel)
        assert tunnel.stderr is not None
        log = (await tunnel.stderr.read()).decode()
        assert "certificate_revoked" in log

        tunnel, port = await spawn(cli("tunnel_command", *base, "--no-crl-check"))
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"hello")
            assert await asyncio.wait_for(r.read(), 30) == b"hello"
            w.close()
        finally:
            await stop(tunnel)
        gw.close()
        echo.close()

    run(main())


def test_listener_and_route_options(gw_id) -> None:
    sock = Route("unix:/run/app/app.sock", "http")
    assert sock.unix_path == "/run/app/app.sock"
    assert Route("127.0.0.1:80").unix_path is None
    for bad in ("unix:relative.sock", "unix:"):
        with pytest.raises(PolicyError, match="absolute"):
            Route(bad)
    lc = ListenerConfig(port=0, default=sock, match_any_name=True, client_auth="optional")
    assert lc.route_for("anything.example") == sock and lc.route_for(None) == sock
    assert ListenerConfig(port=0, default=sock).route_for("anything.example") is None
    with pytest.raises(PolicyError, match="client_auth"):
        ListenerConfig(port=0, default=sock, client_auth="sometimes")
    with pytest.raises(PolicyError, match="default"):
        ListenerConfig(port=0, routes={"a": sock}, match_any_name=True)
    config = GatewayConfig.from_dict(
        {
            "listeners": [
                {"port": 1, "default": "h:1", "client_auth": "none", "match_any_name": True}
            ],
            "trust": {"ca_files": ["root.pem"]},
        }
    )
    assert config.listeners[0].match_any_name
    assert config.trust is not None and config.trust.require_crl is True
    with pytest.raises(PolicyError, match="require_crl"):
        GatewayConfig.from_dict(
            {
                "listeners": [{"port": 1, "default": "h:1"}],
                "trust": {"ca_files": ["root.pem"], "require_crl": "no"},
            }
        )
    # No trust source is needed when no listener asks for client certificates.
    creds = gw_id.credentials()
    with pytest.raises(PolicyError, match="trust source"):
        Gateway(GatewayConfig(listeners=[ListenerConfig(port=0, default=sock)]), credentials=creds)
    open_listener = ListenerConfig(port=0, default=sock, client_auth="none")
    assert Gateway(GatewayConfig(listeners=[open_listener]), credentials=creds).trust_source is None


def test_listener_compat_and_terminals_of_every_implementation(pki, gw_id, device) -> None:
    """Every listener accepts terminals that send GmSSL's CertificateVerify form or
    Tongsuo's ClientECDHEParams, whatever its ``compat``; ``compat`` is validated and
    only orders the CertificateVerify checks."""
    from mstcrypt.protocols.tlcp import CertificateVerifyForm, CipherSuite
    from mstcrypt.protocols.tlcp.profiles import GMSSL, STANDARD

    cfg = GatewayConfig.from_dict(
        {
            "listeners": [
                {"port": 1, "default": "h:1", "compat": "GmSSL"},
                {"port": 2, "default": "h:1", "compat": "auto"},
                {"port": 3, "default": "h:1"},
            ],
            "trust": {"ca_files": ["root.pem"]},
        }
    )
    assert [lc.compat for lc in cfg.listeners] == ["gmssl", "auto", None]
    assert [lc.profile for lc in cfg.listeners] == [GMSSL, STANDARD, STANDARD]
    with pytest.raises(PolicyError, match="compat"):
        GatewayConfig.from_dict({"listeners": [{"port": 1, "default": "h:1", "compat": "ssl"}]})

    async def main() -> None:
        echo = await echo_service()
        listeners = [
            ListenerConfig(port=0, routes={ECHO: Route(addr(echo))}, name=f"l-{c}", compat=c)
            for c in (None, "gmssl", "tongsuo")
        ]
        gw = Gateway(
            GatewayConfig(listeners=listeners),
            credentials=gw_id.credentials(),
            trust_source=MutableTrust(pki),
        )
        await gw.start()
        first = [gw._contexts[lc.name].certificate_verify_accept[0] for lc in listeners]
        assert first == [
            CertificateVerifyForm.SM3,
            CertificateVerifyForm.TRANSCRIPT,
            CertificateVerifyForm.SM3,
        ]
        for host, port in gw.addresses:
            for peer in ("gmssl", "tongsuo", "standard"):
                for suite in (CipherSuite.ECDHE_SM4_GCM_SM3, CipherSuite.ECC_SM4_CBC_SM3):
                    cctx = TLCPContext.for_peer(
                        peer,
                        credentials=device.credentials(),
                        trust_anchors=[pki.root],
                        cipher_suites=[suite],
                    )
                    reader, writer = await aio.open_connection(host, port, cctx, server_name=ECHO)
                    writer.write(b"ping")
                    assert await reader.readexactly(4) == b"ping"
                    writer.close()
                    await writer.wait_closed()
        await gw.close()
        echo.close()

    run(main())


def test_cli_compat_option(tmp_path: Path, pki, gw_id, device) -> None:
    """``mstcrypt tlcp-client`` finds a GmSSL-like server's CertificateVerify form by
    itself (default ``--compat auto``, one retry, said on stderr), fails with
    ``--compat standard`` and succeeds at once with ``--compat gmssl``; unknown values
    are refused by every command."""
    from mstcrypt.protocols.tlcp import CertificateVerifyForm

    (tmp_path / "root.pem").write_bytes(pki.root.pem)
    c = write_identity(tmp_path, "dev", device)
    strict = TLCPContext(
        credentials=gw_id.credentials(),
        trust_anchors=[pki.root],
        client_auth="required",
        certificate_verify_accept=[CertificateVerifyForm.TRANSCRIPT],
    )

    async def main() -> None:
        async def echo(reader, writer) -> None:
            writer.write(await reader.read(100))
            await writer.drain()
            writer.close()

        server = await aio.start_server(echo, "127.0.0.1", 0, strict)
        port = server.sockets[0].getsockname()[1]
        (tmp_path / "msg").write_bytes(b"compat?")

        async def client(*extra: str) -> tuple[int, bytes, str]:
            proc = await asyncio.create_subprocess_exec(
                *cli(
                    "tlcp_client_command",
                    *("--cacert", str(tmp_path / "root.pem"), "--port", str(port)),
                    *("--server-name", ECHO, "--in", str(tmp_path / "msg"), "--wait", "1"),
                    *("--client-cert", c["sign.pem"], "--client-cert", c["enc.pem"]),
                    *("--client-key", c["sign.key"], "--client-enc-key", c["enc.key"]),
                    *("--pass", "pass1234", "--cipher-suite", "ECC_SM4_GCM_SM3", *extra),
                ),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": SRC, "COLUMNS": "200"},
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode is not None
            return proc.returncode, out, err.decode()

        try:
            rc, out, err = await client()
            assert rc == 0 and out == b"compat?", err
            assert "compat auto:" in err and "retrying once" in err, err
            assert "succeeded with certificate_verify_form=transcript" in err, err
            rc, out, err = await client("--compat", "standard")
            assert rc == 1 and out == b"" and "failed" in err, err
            rc, out, err = await client("--compat", "gmssl")
            assert rc == 0 and out == b"compat?" and "compat auto" not in err, err
            rc, _, err = await client("--compat", "openssl")
            assert rc == 2 and "unknown --compat" in err, err
        finally:
            server.close()
            await server.wait_closed()

    run(main())
    for command, args in (
        ("tlcp_server_command", ("--cert", "x", "--key", "x", "--enc-key", "x")),
        ("gateway_command", ("gw.toml",)),
        ("tunnel_command", ("--token", "t", "--gateway", "h:1", "--server-name", "s")),
    ):
        extra = ("--cacert", "x", "--local-port", "0") if command == "tunnel_command" else ()
        p = subprocess.run(
            cli(command, *args, *extra, "--compat", "bogus"),
            capture_output=True,
            env={**os.environ, "PYTHONPATH": SRC, "COLUMNS": "200"},
            timeout=60,
            check=False,
        )
        assert p.returncode == 2 and b"unknown --compat" in p.stderr, (command, p.stderr)


def test_trust_source_scans_each_crl_once(tmp_path: Path, pki) -> None:
    """The trust source indexes CRLs (no strict per-entry parse on every refresh) and
    reuses the index while the bytes are unchanged; a new CRL is scanned afresh, and the
    index still refuses the revoked serial and a tampered CRL."""
    from mstcrypt.apps.tlcp_gateway import file_trust_source, load_crl_index
    from mstcrypt.errors import DecodeError, VerificationError
    from mstcrypt.pki import CrlIndex

    revoked = RevokedEntry(serial=0x5EED, revoked_at=pki.issuer.certificate.not_before)
    first = pki.issuer.crl(number=41, entries=[revoked])
    path = tmp_path / "crl.pem"
    path.write_bytes(first.pem)
    anchors = tmp_path / "root.pem"
    anchors.write_bytes(pki.root.pem)
    source = file_trust_source([anchors], (), [path])
    a = asyncio.run(source()).crls[0]
    b = asyncio.run(source()).crls[0]
    assert isinstance(a, CrlIndex) and a is b  # unchanged bytes: the same index
    assert load_crl_index(first.der) is a  # DER and PEM of one CRL: one index
    assert a.number == 41 and a.is_revoked(0x5EED) is not None and a.is_revoked(1) is None
    path.write_bytes(pki.issuer.crl(number=42).pem)
    c = asyncio.run(source()).crls[0]
    assert c is not a and c.number == 42 and c.is_revoked(0x5EED) is None
    bad = bytearray(first.der)
    bad[-1] ^= 1  # the signature's last byte: framing intact, signature wrong
    tampered = load_crl_index(bytes(bad))
    with pytest.raises(VerificationError):
        tampered.verify_signature(pki.issuer.certificate.public_key)
    with pytest.raises(DecodeError):
        load_crl_index(first.der + b"\x00")
