"""Request smuggling and identity forgery through the gateway's HTTP mode (issue 9,
finding 10). Every variant goes through a real gateway on loopback, over TLCP with a
client certificate, to an upstream that records every byte it receives and parses them
with h11 (an HTTP implementation this project did not write). Each test shows that the
upstream never sees the forged header, the trailer or the smuggled request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

import h11
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
from mstcrypt.protocols.tlcp import TLCPContext, aio
from mstcrypt.protocols.tlcp.testing import TestPKI

WEB = "web.internal"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: web.internal\r\n\r\n"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture(scope="module")
def gw_id(pki: TestPKI):
    return pki.identity("gateway", names=[WEB])


@pytest.fixture(scope="module")
def device(pki: TestPKI):
    return pki.identity("device 1", server=False)


class Upstream:
    """Records the raw bytes and the requests h11 reads; answers each request with JSON
    (method, target, headers, body, trailers)."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self.requests: list[dict[str, Any]] = []
        self.errors: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        current: dict[str, Any] = {}
        try:
            while True:
                data = await reader.read(65536)
                self.raw += data
                conn.receive_data(data)
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA or isinstance(ev, h11.ConnectionClosed):
                        break
                    if isinstance(ev, h11.Request):
                        current = {
                            "method": ev.method.decode(),
                            "target": ev.target.decode(),
                            "headers": [(k.decode(), v.decode()) for k, v in ev.headers],
                            "body": "",
                        }
                    elif isinstance(ev, h11.Data):
                        current["body"] += ev.data.decode()
                    elif isinstance(ev, h11.EndOfMessage):
                        current["trailers"] = [(k.decode(), v.decode()) for k, v in ev.headers]
                        self.requests.append(current)
                        out = json.dumps(current).encode()
                        headers = [("Content-Type", "application/json")]
                        headers.append(("Content-Length", str(len(out))))
                        writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
                        writer.write(conn.send(h11.Data(data=out)))
                        writer.write(conn.send(h11.EndOfMessage()))
                        await writer.drain()
                        if conn.our_state is h11.MUST_CLOSE:
                            return
                        conn.start_next_cycle()
                if not data or conn.their_state is h11.CLOSED:
                    return
        except h11.RemoteProtocolError as exc:
            # the gateway cutting a refused request short is fine; anything else is not
            if "without sending complete message body" not in str(exc):
                self.errors.append(str(exc))
        finally:
            writer.close()


async def with_gateway(pki, gw_id, device, body) -> tuple[Upstream, Any]:
    """Start upstream and gateway, run ``body(reader, writer)`` on one TLCP connection,
    and return the upstream and what ``body`` returned."""
    up = Upstream()
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    crl = pki.issuer.crl(number=1)
    config = GatewayConfig(
        listeners=[ListenerConfig(port=0, routes={WEB: Route(f"127.0.0.1:{port}", "http")})]
    )
    gw = Gateway(
        config,
        credentials=gw_id.credentials(),
        trust_source=lambda: TrustMaterial((pki.root,), (), (crl,)),
    )
    await gw.start()
    host, gport = gw.addresses[0]
    ctx = TLCPContext(credentials=device.credentials(), trust_anchors=[pki.root])
    try:
        reader, writer = await aio.open_connection(host, gport, ctx, server_name=WEB)
        try:
            result = await body(reader, writer)
        finally:
            writer.close()
    finally:
        await gw.close(grace=1)
        server.close()
    return up, result


async def response(reader: aio.TLCPStreamReader) -> tuple[int, dict[str, Any] | None]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length)
    return status, json.loads(body) if body else None


def header(req: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in req["headers"] if k.lower() == name.lower()]


FORGED = [
    b"X-MST-Client-Subject: CN=forged",
    b"x-mst-client-subject: CN=forged",
    b"X_MST_CLIENT_SUBJECT: CN=forged",
    b"x_mst_client_subject: CN=forged",
    b"X-Mst-Client_Serial: 1337",
    b"X-MST-CLIENT-SERIAL: 1337",
    b"x-MsT-cLiEnT-sErIaL: 1337",
    b"X-MST-Client-Role: forged-admin",
    b"X_Mst_Client_Anything: forged",
    b"X-Forwarded-For: 6.6.6.6",
    b"x_forwarded_for: 6.6.6.6",
    b"X-Forwarded-Proto: forged",
    b"Forwarded: for=6.6.6.6;proto=http",
    b"X-Real-IP: 6.6.6.6",
    b"X-Forwarded-Host: forged.example",
]
FORGED_VALUES = (b"forged", b"1337", b"6.6.6.6")


@pytest.mark.parametrize("line", FORGED, ids=[f.split(b":")[0].decode() for f in FORGED])
def test_forged_identity_header_never_reaches_upstream(pki, gw_id, device, line) -> None:
    async def body(reader, writer) -> Any:
        writer.write(b"GET /who HTTP/1.1\r\nHost: web.internal\r\n" + line + b"\r\n\r\n")
        return await response(reader)

    up, (status, _) = run(with_gateway(pki, gw_id, device, body))
    assert status == 200 and len(up.requests) == 1
    assert not any(v in up.raw for v in FORGED_VALUES), bytes(up.raw)
    req = up.requests[0]
    assert header(req, SUBJECT_HEADER) == ["CN=device 1,O=mstcrypt test,C=CN"]
    assert header(req, SERIAL_HEADER) == [f"{device.sign_certificate.serial:X}"]
    assert header(req, "X-Forwarded-For") == ["127.0.0.1"]
    assert header(req, "X-Forwarded-Proto") == ["https"]
    assert not [k for k, _ in req["headers"] if "_" in k]


def test_trailers_and_chunk_extensions_are_dropped_and_chunks_reframed(pki, gw_id, device) -> None:
    async def body(reader, writer) -> Any:
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: web.internal\r\nTransfer-Encoding: Chunked\r\n"
            b"Trailer: X-MST-Client-Subject\r\n\r\n"
            b"0003;name=forged\r\nabc\r\n"
            b'A;q="forged;\\"x"\r\n0123456789\r\n'
            b"0\r\nX-MST-Client-Subject: CN=forged\r\nx_mst_client_serial: 1337\r\n"
            b"X-Forwarded-For: 6.6.6.6\r\n\r\n"
        )
        return await response(reader)

    up, (status, _) = run(with_gateway(pki, gw_id, device, body))
    assert status == 200 and len(up.requests) == 1
    req = up.requests[0]
    assert req["body"] == "abc0123456789" and req["trailers"] == []
    assert not any(v in up.raw for v in FORGED_VALUES), bytes(up.raw)
    assert b"\r\n\r\n3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n" in up.raw
    assert header(req, "Transfer-Encoding") == ["chunked"] and not header(req, "Trailer")
    assert header(req, SUBJECT_HEADER) == ["CN=device 1,O=mstcrypt test,C=CN"]


def test_hop_by_hop_headers_cannot_drop_identity_or_switch_protocols(pki, gw_id, device) -> None:
    async def body(reader, writer) -> Any:
        writer.write(
            b"GET / HTTP/1.1\r\nHost: web.internal\r\n"
            b"Connection: X-MST-Client-Subject, x-mst-client-serial, Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nTE: trailers\r\n"
            b"Keep-Alive: timeout=999\r\nProxy-Authorization: Basic Zm9yZ2VkOng=\r\n\r\n"
        )
        return await response(reader)

    up, (status, _) = run(with_gateway(pki, gw_id, device, body))
    assert status == 200 and len(up.requests) == 1
    req = up.requests[0]
    names = {k.lower() for k, _ in req["headers"]}
    assert not names & {"connection", "upgrade", "http2-settings", "te", "keep-alive"}
    assert "proxy-authorization" not in names
    assert header(req, SUBJECT_HEADER) == ["CN=device 1,O=mstcrypt test,C=CN"]
    assert b"h2c" not in up.raw


def _chunked(size_line: bytes, data: bytes = b"hello") -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: web.internal\r\nTransfer-Encoding: chunked\r\n\r\n"
        + size_line
        + data
        + b"\r\n0\r\n\r\n"
        + SMUGGLED
    )


def _cl(*lines: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    head = (
        b"POST / " + version + b"\r\nHost: web.internal\r\n" + b"".join(x + b"\r\n" for x in lines)
    )
    return head + b"\r\n" + b"0\r\n\r\n" + SMUGGLED


REFUSED = {
    # both framings, in either order, and framing headers spelled with '_'
    "cl-and-te": _cl(b"Content-Length: 5", b"Transfer-Encoding: chunked"),
    "te-and-cl": _cl(b"Transfer-Encoding: chunked", b"Content-Length: 48"),
    "te-underscore": _cl(b"Content-Length: 5", b"Transfer_Encoding: chunked"),
    "cl-underscore": _cl(b"Transfer-Encoding: chunked", b"Content_Length: 5"),
    "cl-underscore-lower": _cl(b"content_length: 5"),
    # Content-Length forms
    "cl-duplicate-same": _cl(b"Content-Length: 5", b"Content-Length: 5"),
    "cl-duplicate-differ": _cl(b"Content-Length: 5", b"Content-Length: 53"),
    "cl-list": _cl(b"Content-Length: 5, 5"),
    "cl-plus": _cl(b"Content-Length: +5"),
    "cl-hex": _cl(b"Content-Length: 0x5"),
    "cl-negative": _cl(b"Content-Length: -1"),
    "cl-inner-space": _cl(b"Content-Length: 5 3"),
    "cl-too-long": _cl(b"Content-Length: 0000000000000000005"),
    "cl-space-before-colon": _cl(b"Content-Length : 53"),
    # Transfer-Encoding forms
    "te-twice-in-one": _cl(b"Transfer-Encoding: chunked, chunked"),
    "te-gzip-chunked": _cl(b"Transfer-Encoding: gzip, chunked"),
    "te-xchunked": _cl(b"Transfer-Encoding: xchunked"),
    "te-vertical-tab": _cl(b"Transfer-Encoding: chunked\x0b"),
    "te-two-headers": _cl(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
    "te-http10": _cl(b"Transfer-Encoding: chunked", version=b"HTTP/1.0"),
    # line folding, control characters, malformed names
    "obs-fold": _cl(b"X-Note: a", b" Transfer-Encoding: chunked"),
    "obs-fold-tab": _cl(b"X-Note: a", b"\tContent-Length: 53"),
    "nul-in-value": _cl(b"X-Note: a\x00b"),
    "bare-cr-in-value": _cl(b"X-Note: a\rContent-Length: 53"),
    "bare-lf-in-head": _cl(b"X-Note: a\nContent-Length: 53"),
    "bad-name": _cl(b"X[Note]: a"),
    "connection-lists-framing": _cl(b"Content-Length: 5", b"Connection: content-length"),
    # Host
    "two-hosts": _cl(b"Host: other.internal"),
    "no-host": b"GET / HTTP/1.1\r\nX: y\r\n\r\n" + SMUGGLED,
    # request line
    "double-space": b"GET  / HTTP/1.1\r\nHost: web.internal\r\n\r\n" + SMUGGLED,
    "extra-token": b"GET / HTTP/1.1 x\r\nHost: web.internal\r\n\r\n" + SMUGGLED,
    "http2-version": b"GET / HTTP/2.0\r\nHost: web.internal\r\n\r\n" + SMUGGLED,
    "lowercase-version": b"GET / http/1.1\r\nHost: web.internal\r\n\r\n" + SMUGGLED,
    "tab-in-target": b"GET /\tx HTTP/1.1\r\nHost: web.internal\r\n\r\n" + SMUGGLED,
    # chunk-size lines
    "chunk-plus": _chunked(b"+5\r\n"),
    "chunk-0x": _chunked(b"0x5\r\n"),
    "chunk-leading-space": _chunked(b" 5\r\n"),
    "chunk-trailing-space": _chunked(b"5 \r\n"),
    "chunk-underscore": _chunked(b"5_0\r\n"),
    "chunk-negative": _chunked(b"-5\r\n"),
    "chunk-space-before-ext": _chunked(b"5 ;x\r\n"),
    "chunk-empty-ext": _chunked(b"5;\r\n"),
    "chunk-ext-no-value": _chunked(b"5;x=\r\n"),
    "chunk-ext-bad-quote": _chunked(b'5;x="a\r\n'),
    "chunk-bare-lf": _chunked(b"5\n"),
    "chunk-empty": _chunked(b"\r\n"),
    "chunk-17-digits": _chunked(b"00000000000000005\r\n"),
    "chunk-huge": _chunked(b"fffffffffffffffff\r\n"),
    "chunk-long-ext": _chunked(b"5;" + b"x" * 2000 + b"\r\n"),
    "chunk-no-crlf-after-data": (
        b"POST / HTTP/1.1\r\nHost: web.internal\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhelloXX" + SMUGGLED
    ),
    "chunk-short-data": (
        b"POST / HTTP/1.1\r\nHost: web.internal\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED
    ),
    "trailer-folded": (
        b"POST / HTTP/1.1\r\nHost: web.internal\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n" + SMUGGLED
    ),
    "trailer-bad-name": (
        b"POST / HTTP/1.1\r\nHost: web.internal\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX Y: a\r\n\r\n" + SMUGGLED
    ),
}


@pytest.mark.parametrize("raw", list(REFUSED.values()), ids=list(REFUSED))
def test_smuggling_variant_refused_and_never_forwarded(pki, gw_id, device, raw) -> None:
    async def body(reader, writer) -> Any:
        # A good request first: it must be answered; then the attack on the same
        # connection.
        writer.write(b"GET /first HTTP/1.1\r\nHost: web.internal\r\n\r\n")
        first = await response(reader)
        writer.write(raw)
        rest = await asyncio.wait_for(reader.read(), 20)
        return first, rest

    up, (first, rest) = run(with_gateway(pki, gw_id, device, body))
    assert first[0] == 200
    assert rest.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")), rest[:100]
    assert b"/smuggled" not in up.raw, bytes(up.raw)
    assert [r["target"] for r in up.requests] == ["/first"]
    assert up.errors == []


def test_pipelined_requests_are_each_reframed(pki, gw_id, device) -> None:
    """Several requests in one write (pipelining) are parsed one by one, never as one
    opaque block: each gets the gateway's identity."""

    async def body(reader, writer) -> Any:
        writer.write(
            b"POST /a HTTP/1.1\r\nHost: web.internal\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /b HTTP/1.1\r\nHost: web.internal\r\nX-MST-Client-Serial: 1337\r\n\r\n"
            b"GET /c HTTP/1.1\r\nHost: web.internal\r\nConnection: close\r\n\r\n"
        )
        return [await response(reader) for _ in range(3)], await reader.read()

    up, (answers, tail) = run(with_gateway(pki, gw_id, device, body))
    assert [a[0] for a in answers] == [200, 200, 200] and tail == b""
    assert [r["target"] for r in up.requests] == ["/a", "/b", "/c"]
    assert up.requests[0]["body"] == "hello"
    serial = f"{device.sign_certificate.serial:X}"
    assert all(header(r, SERIAL_HEADER) == [serial] for r in up.requests)
    assert b"1337" not in up.raw
