"""WebSocket upgrades through the TLCP gateway (http routes with ``websocket = true``):
the upgrade is forwarded with the gateway's identity headers (never the terminal's),
a 101 turns the connection into a byte relay both ways, other upgrades (h2c) and
upgrades on routes that do not allow them are stripped, a refused upgrade is relayed as
a normal response, a slow reader holds the gateway's buffers bounded, and either side
closing closes the other."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from mstcrypt.apps.tlcp_gateway import (
    SERIAL_HEADER,
    SUBJECT_HEADER,
    Gateway,
    GatewayConfig,
    ListenerConfig,
    Route,
    TrustMaterial,
)
from mstcrypt.apps.tlcp_gateway.http import (
    HTTPRequestError,
    parse_request_head,
    parse_response_head,
)
from mstcrypt.errors import PolicyError
from mstcrypt.protocols.tlcp import TLCPContext, aio
from mstcrypt.protocols.tlcp.testing import TestPKI

WS, PLAIN = "ws.internal", "plain.internal"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture(scope="module")
def gw_id(pki: TestPKI) -> Any:
    return pki.identity("gateway", names=[WS, PLAIN])


@pytest.fixture(scope="module")
def device(pki: TestPKI) -> Any:
    return pki.identity("device 7", server=False)


class Upstream:
    """An internal service. Each request head is recorded; the path picks the answer:
    ``/echo`` 101 then echo, ``/flood`` 101 then ``flood`` bytes as fast as the gateway
    takes them, ``/hangup`` 101 then close, ``/sink`` 101 then read until the end of
    stream, ``/refuse`` 403 with a Content-Length body, ``/refuse-chunked`` 403 chunked,
    ``/bad101`` 101 to another protocol, anything else 200 with the head as JSON."""

    def __init__(self, flood: int = 0) -> None:
        self.heads: list[dict[str, Any]] = []
        self.flood = flood
        self.sent = 0
        self.eof = asyncio.Event()
        self.pong = b""
        self.close_reply = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        assert self.server is not None
        self.server.close()

    @staticmethod
    def switching(key: str, upgrade: bytes = b"websocket") -> bytes:
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
        return (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: %s\r\n\r\n" % (upgrade, accept)
        )

    async def frames(
        self, key: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """101, then raw server frames: a ping, a text message in two fragments, a
        binary message; check the client's pong (masked), then close."""
        writer.write(self.switching(key))
        writer.write(b"\x89\x02p1" + b"\x01\x03hel" + b"\x80\x02lo" + b"\x82\x03\x00\x01\x02")
        await writer.drain()
        head = await reader.readexactly(2)
        assert head == b"\x8a\x82", head  # FIN pong, masked, 2 bytes
        mask = await reader.readexactly(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(2)))
        self.pong = body
        writer.write(b"\x88\x02\x03\xe8")  # close 1000
        await writer.drain()
        reply = await reader.readexactly(2)
        self.close_reply = reply[0]
        await reader.readexactly(reply[1] & 0x7F)
        await asyncio.sleep(0)  # the client waits for the end of stream

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            lines = raw.decode().split("\r\n")
            method, path, _ = lines[0].split(" ")
            headers: dict[str, list[str]] = {}
            for line in lines[1:]:
                if line:
                    k, _, v = line.partition(":")
                    headers.setdefault(k.lower(), []).append(v.strip())
            self.heads.append({"method": method, "path": path, "headers": headers})
            key = headers.get("sec-websocket-key", [""])[0]
            if headers.get("upgrade") != ["websocket"]:
                path = "/"  # a plain request: answered with its head
            if path == "/echo":
                writer.write(self.switching(key))
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                return
            if path == "/flood":
                writer.write(self.switching(key))
                block = bytes(range(256)) * 256
                while self.sent < self.flood:
                    writer.write(block)
                    await writer.drain()
                    self.sent += len(block)
                return
            if path == "/hangup":
                writer.write(self.switching(key))
                await writer.drain()
                return
            if path == "/sink":
                writer.write(self.switching(key))
                await writer.drain()
                while await reader.read(65536):
                    pass
                self.eof.set()
                return
            if path == "/frames":
                await self.frames(key, reader, writer)
                return
            if path == "/bad101":
                writer.write(self.switching(key, b"h2c"))
                await writer.drain()
                await reader.read()
                return
            if path == "/refuse":
                writer.write(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\ndenied"
                    b"HTTP/1.1 200 OK\r\n\r\n"  # never asked for: must not reach the terminal
                )
                await writer.drain()
                continue
            if path == "/refuse-chunked":
                writer.write(
                    b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"3\r\nden\r\n3;x=1\r\nied\r\n0\r\nX-T: 1\r\n\r\n"
                )
                await writer.drain()
                continue
            body = json.dumps(self.heads[-1]).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()


async def gateway(pki, gw_id, upstream: str, **kw: Any) -> Gateway:
    config = GatewayConfig(
        listeners=[
            ListenerConfig(
                port=0,
                routes={
                    WS: Route(upstream, "http", websocket=True),
                    PLAIN: Route(upstream, "http"),
                },
            )
        ],
        **kw,
    )
    trust = TrustMaterial((pki.root,), (), (pki.issuer.crl(number=1),))
    gw = Gateway(config, credentials=gw_id.credentials(), trust_source=lambda: trust)
    await gw.start()
    return gw


async def connect(pki, device, gw: Gateway, name: str = WS) -> tuple[Any, Any]:
    host, port = gw.addresses[0]
    ctx = TLCPContext(credentials=device.credentials(), trust_anchors=[pki.root])
    return await aio.open_connection(host, port, ctx, server_name=name)


def upgrade_request(path: str, extra: bytes = b"", upgrade: bytes = b"websocket") -> bytes:
    return (
        b"GET %s HTTP/1.1\r\nHost: ws.internal\r\nUpgrade: %s\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
        % (path.encode(), upgrade, KEY.encode(), extra)
    )


async def read_json(r: Any) -> dict[str, Any]:
    """One 200 response of the upstream (its JSON body)."""
    head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return json.loads(await r.readexactly(length))


async def wait_for(cond: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def test_upgrade_relayed_with_identity_headers_and_bytes_both_ways(
    pki, gw_id, device, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="mstcrypt.gateway.access")

    async def main() -> None:
        up = Upstream()
        gw = await gateway(pki, gw_id, await up.start())
        r, w = await connect(pki, device, gw)
        forged = (
            b"X-MST-Client-Subject: CN=admin\r\nx_mst_client_serial: 01\r\n"
            b"X-Forwarded-For: 10.0.0.1\r\n"
        )
        w.write(upgrade_request("/echo", forged))
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert parse_response_head(head).websocket
        seen = up.heads[0]["headers"]
        assert seen["upgrade"] == ["websocket"] and seen["connection"] == ["Upgrade"]
        assert seen["sec-websocket-key"] == [KEY] and seen["sec-websocket-version"] == ["13"]
        assert "CN=device 7" in seen[SUBJECT_HEADER.lower()][0]
        assert len(seen[SUBJECT_HEADER.lower()]) == 1  # the forged one is gone
        assert "admin" not in json.dumps(seen)
        assert seen[SERIAL_HEADER.lower()] == [f"{device.sign_certificate.serial:X}"]
        assert "x_mst_client_serial" not in seen and seen["x-forwarded-for"] == ["127.0.0.1"]
        # after the 101 the connection is a byte pipe (no HTTP parsing): send what would
        # be a malformed request and a large binary block
        payload = b"GET / HTTP/9\r\n\x00\xff" + bytes(range(256)) * 2000
        w.write(payload)
        await w.drain()
        assert await r.readexactly(len(payload)) == payload
        w.close()
        await wait_for(lambda: gw.active == 0)
        await gw.close()
        up.close()

    run(main())
    line = next(r.getMessage() for r in caplog.records if "upgrade=websocket" in r.getMessage())
    assert "status=101" in line and "result=ok" in line and "device 7" in line


def test_h2c_and_other_upgrades_are_stripped(pki, gw_id, device) -> None:
    async def main() -> None:
        up = Upstream()
        gw = await gateway(pki, gw_id, await up.start())
        r, w = await connect(pki, device, gw)
        w.write(
            b"GET /x HTTP/1.1\r\nHost: ws.internal\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
        )
        await read_json(r)
        # websocket alongside another protocol is not a WebSocket handshake either
        w.write(upgrade_request("/echo", upgrade=b"websocket, h2c"))
        await read_json(r)
        w.close()
        for seen in up.heads:
            names = set(seen["headers"])
            assert not names & {"upgrade", "connection", "http2-settings"}
        await gw.close()
        up.close()

    run(main())


def test_websocket_upgrade_on_a_route_without_websocket_is_stripped(pki, gw_id, device) -> None:
    async def main() -> None:
        up = Upstream()
        gw = await gateway(pki, gw_id, await up.start())
        r, w = await connect(pki, device, gw, PLAIN)
        w.write(upgrade_request("/echo"))
        await read_json(r)  # a plain GET reached the service
        assert up.heads[0]["path"] == "/echo"
        assert "upgrade" not in up.heads[0]["headers"]
        w.close()
        await gw.close()
        up.close()

    run(main())


def test_upgrade_only_as_the_first_request_of_a_connection(pki, gw_id, device) -> None:
    async def main() -> None:
        up = Upstream()
        gw = await gateway(pki, gw_id, await up.start())
        r, w = await connect(pki, device, gw)
        w.write(b"GET /first HTTP/1.1\r\nHost: ws.internal\r\n\r\n" + upgrade_request("/echo"))
        for _ in range(2):
            await read_json(r)
        assert [h["path"] for h in up.heads] == ["/first", "/echo"]
        assert "upgrade" not in up.heads[1]["headers"]
        w.close()
        await gw.close()
        up.close()

    run(main())


@pytest.mark.parametrize("path", ["/refuse", "/refuse-chunked"])
def test_refused_upgrade_is_relayed_as_a_response(pki, gw_id, device, path: str) -> None:
    async def main() -> None:
        up = Upstream()
        gw = await gateway(pki, gw_id, await up.start())
        r, w = await connect(pki, device, gw)
        w.write(upgrade_request(path))
        got = await asyncio.wait_for(r.read(-1), 10)  # the gateway ends the connection
        assert got.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert b"200 OK" not in got
        if path == "/refuse":
            assert got.endswith(b"\r\n\r\ndenied")
        else:
            assert got.endswith(b"3\r\nden\r\n3;x=1\r\nied\r\n0\r\nX-T: 1\r\n\r\n")
        await gw.close()
        up.close()

    run(main())


def test_upstream_switching_to_another_protocol_is_a_502(pki, gw_id, device, caplog) -> None:
    caplog.set_level(logging.INFO, logger="mstcrypt.gateway.access")

    async def main() -> None:
        up = Upstream()
        gw = await gateway(pki, gw_id, await up.start())
        r, w = await connect(pki, device, gw)
        w.write(upgrade_request("/bad101"))
        got = await asyncio.wait_for(r.read(-1), 10)
        assert got.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
        assert b"h2c" not in got
        await gw.close()
        up.close()

    run(main())
    line = next(r.getMessage() for r in caplog.records if "upgrade=websocket" in r.getMessage())
    assert "result=bad_gateway:upstream_switched_to_another_protocol" in line


def test_slow_reader_keeps_gateway_buffers_bounded(pki, gw_id, device) -> None:
    """The upstream pushes 64 MiB into a WebSocket whose terminal reads nothing: the
    gateway stops reading from the upstream (its buffers stay far below the volume),
    and once the terminal reads, every byte arrives."""
    total = 64 << 20

    async def main() -> None:
        up = Upstream(flood=total)
        gw = await gateway(pki, gw_id, await up.start())
        r, w = await connect(pki, device, gw)
        w.write(upgrade_request("/flood"))
        await r.readuntil(b"\r\n\r\n")
        peak = 0
        for _ in range(40):  # 2 s without reading
            await asyncio.sleep(0.05)
            peak = max(peak, gw.buffered_bytes())
        stalled = up.sent
        assert stalled < total // 4, stalled  # back-pressure reached the upstream
        assert peak < 2 << 20, peak  # the gateway's own buffers: about two chunks
        digest, got = hashlib.sha256(), 0
        block = bytes(range(256)) * 256
        while got < total:
            data = await r.read(1 << 20)
            assert data
            digest.update(data)
            got += len(data)
        assert got == total
        assert digest.digest() == hashlib.sha256(block * (total // len(block))).digest()
        w.close()
        await gw.close()
        up.close()

    run(main())


def test_upstream_close_closes_the_terminal(pki, gw_id, device, caplog) -> None:
    caplog.set_level(logging.INFO, logger="mstcrypt.gateway.access")

    async def main() -> None:
        up = Upstream()
        gw = await gateway(pki, gw_id, await up.start())
        r, w = await connect(pki, device, gw)
        w.write(upgrade_request("/hangup"))
        await r.readuntil(b"\r\n\r\n")
        assert await asyncio.wait_for(r.read(), 5) == b""  # close_notify, not a timeout
        assert not w.get_extra_info("truncated")
        await wait_for(lambda: gw.active == 0)
        await gw.close()
        up.close()

    run(main())
    line = next(r.getMessage() for r in caplog.records if "upgrade=websocket" in r.getMessage())
    assert "closed_by=upstream" in line and "result=ok" in line


def test_terminal_close_closes_the_upstream(pki, gw_id, device) -> None:
    async def main() -> None:
        up = Upstream()
        gw = await gateway(pki, gw_id, await up.start())
        r, w = await connect(pki, device, gw)
        w.write(upgrade_request("/sink"))
        await r.readuntil(b"\r\n\r\n")
        w.write(b"some frames")
        await w.drain()
        w.close()  # close_notify
        await asyncio.wait_for(up.eof.wait(), 5)  # the upstream saw its end of stream
        await wait_for(lambda: gw.active == 0)
        await gw.close()
        up.close()

    run(main())


def test_terminal_half_close_lets_the_upstream_finish(pki, gw_id, device, caplog) -> None:
    """A terminal that ends its side with a bare TCP half-close (no close_notify) still
    receives what the upstream sends until the upstream closes: the half-close is
    passed on (write_eof), not turned into a full close."""
    caplog.set_level(logging.INFO, logger="mstcrypt.gateway.access")

    async def main() -> None:
        up = Upstream()
        gw = await gateway(pki, gw_id, await up.start())
        r, w = await connect(pki, device, gw)
        w.write(upgrade_request("/echo"))
        await r.readuntil(b"\r\n\r\n")
        w.write(b"last words")
        await w.drain()
        w.transport.write_eof()  # TCP FIN without close_notify
        assert await asyncio.wait_for(r.readexactly(10), 5) == b"last words"
        await wait_for(lambda: gw.active == 0)  # ended by the upstream's close
        await gw.close()
        up.close()

    run(main())
    line = next(r.getMessage() for r in caplog.records if "upgrade=websocket" in r.getMessage())
    assert "closed_by=terminal" in line and "result=ok" in line


def test_idle_websocket_is_closed(pki, gw_id, device, caplog) -> None:
    caplog.set_level(logging.INFO, logger="mstcrypt.gateway.access")

    async def main() -> None:
        up = Upstream()
        gw = await gateway(pki, gw_id, await up.start(), idle_timeout=0.5)
        r, w = await connect(pki, device, gw)
        w.write(upgrade_request("/echo"))
        await r.readuntil(b"\r\n\r\n")
        assert await asyncio.wait_for(r.read(), 5) == b""
        await wait_for(lambda: gw.active == 0)
        await gw.close()
        up.close()

    run(main())
    line = next(r.getMessage() for r in caplog.records if "upgrade=websocket" in r.getMessage())
    assert "result=idle_timeout" in line


def test_websocket_request_recognition() -> None:
    base = (
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
    )
    assert parse_request_head(base + b"\r\n").websocket
    assert not parse_request_head(base.replace(b"GET", b"POST") + b"\r\n").websocket
    assert not parse_request_head(base + b"Content-Length: 3\r\n\r\n").websocket
    assert not parse_request_head(
        base.replace(b"keep-alive, ", b"").replace(b"Upgrade\r\n", b"close\r\n", 1) + b"\r\n"
    ).websocket
    no_conn = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"
    assert not parse_request_head(no_conn).websocket
    h2c = parse_request_head(base.replace(b"WebSocket", b"h2c") + b"\r\n")
    assert not h2c.websocket
    with pytest.raises(HTTPRequestError):
        h2c.encode([], websocket=True)
    encoded = parse_request_head(base + b"\r\n").encode([], websocket=True)
    assert encoded.endswith(b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    with pytest.raises(HTTPRequestError):
        parse_response_head(
            b"HTTP/1.1 101 X\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
    with pytest.raises(HTTPRequestError):
        parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n")


def test_websocket_route_configuration() -> None:
    with pytest.raises(PolicyError):
        Route("127.0.0.1:1", "tcp", websocket=True)
    config = GatewayConfig.from_dict(
        {
            "listeners": [
                {
                    "port": 0,
                    "routes": {
                        "ims.internal": {
                            "upstream": "127.0.0.1:8700",
                            "mode": "http",
                            "websocket": True,
                        },
                        "web.internal": {"upstream": "127.0.0.1:8080", "mode": "http"},
                    },
                }
            ]
        }
    )
    routes = config.listeners[0].routes
    assert routes["ims.internal"].websocket and not routes["web.internal"].websocket
    with pytest.raises(PolicyError):
        GatewayConfig.from_dict(
            {"listeners": [{"port": 0, "routes": {"a": {"upstream": "h:1", "websocket": "yes"}}}]}
        )


@pytest.mark.parametrize("allowed", [True, False])
def test_asgi_app_websocket_over_tlcp(pki, gw_id, allowed: bool) -> None:
    """An ASGI application served over TLCP (``ASGITLCPServer(websocket=True)``, the
    server terminating TLCP itself) is reachable by TLCPWebSocket; without the switch
    its WebSocket route is not."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    from mstcrypt.apps.tlcp_gateway import ASGITLCPServer
    from mstcrypt.protocols.tlcp.websocket import TLCPWebSocket, WebSocketHandshakeError

    async def echo(ws: Any) -> None:
        await ws.accept()
        who = ws.headers.get(SUBJECT_HEADER.lower(), "-")
        while True:
            msg = await ws.receive_text()
            await ws.send_text(f"{who}|{msg}")

    app = Starlette(routes=[WebSocketRoute("/echo", echo)])

    def client(port: int) -> str:
        ctx = TLCPContext(trust_anchors=[pki.root])
        with TLCPWebSocket.connect(
            f"wss://{WS}:{port}/echo", ctx, address=("127.0.0.1", port)
        ) as ws:
            ws.send("hello")
            return str(ws.recv(timeout=10))

    async def main() -> None:
        server = ASGITLCPServer(
            app, port=0, server_credentials=gw_id.credentials(), websocket=allowed
        )
        async with server:
            port = server.addresses[0][1]
            if allowed:
                assert await asyncio.to_thread(client, port) == "-|hello"
            else:
                with pytest.raises(WebSocketHandshakeError):
                    await asyncio.to_thread(client, port)

    run(main())


def test_tlcp_websocket_client_frames(pki, gw_id, device) -> None:
    """TLCPWebSocket through the gateway: answers a ping with a masked pong, joins a
    fragmented text message, returns a binary one, completes the closing handshake."""
    from websockets.exceptions import ConnectionClosedOK

    from mstcrypt.protocols.tlcp.websocket import TLCPWebSocket

    def client(port: int) -> list[Any]:
        ctx = TLCPContext(credentials=device.credentials(), trust_anchors=[pki.root])
        ws = TLCPWebSocket.connect(
            f"wss://{WS}:{port}/frames", ctx, address=("127.0.0.1", port), max_size=1 << 16
        )
        got: list[Any] = [ws.recv(timeout=10), ws.recv(timeout=10)]
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=10)
        ws.close()
        return got

    async def main() -> None:
        up = Upstream()
        gw = await gateway(pki, gw_id, await up.start())
        port = gw.addresses[0][1]
        got = await asyncio.to_thread(client, port)
        assert got == ["hello", b"\x00\x01\x02"]
        assert up.pong == b"p1" and up.close_reply == 0x88
        await wait_for(lambda: gw.active == 0)
        await gw.close()
        up.close()

    run(main())
