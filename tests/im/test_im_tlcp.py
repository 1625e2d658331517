"""Secure messaging through the TLCP gateway: terminals reach the IMS at an ``https://``
URL, so both their HTTP calls and their WebSocket run over TLCP to the gateway (client
certificates from their soft tokens), which relays the WebSocket upgrade to the IMS with
the identity headers. What goes over the wire is TLCP records only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from im_helpers import PIN, World, _Keys, world

from mstcrypt.apps.im import ImError, Text
from mstcrypt.apps.im.terminal import ImClient
from mstcrypt.apps.tlcp_gateway import (
    Gateway,
    GatewayConfig,
    ListenerConfig,
    Route,
    kmc_trust_source,
)
from mstcrypt.errors import PolicyError
from mstcrypt.protocols.tlcp import Credentials, TLCPContext, TLCPError
from mstcrypt.protocols.tlcp.testing import TestPKI
from mstcrypt.protocols.tlcp.websocket import TLCPWebSocket, WebSocketHandshakeError
from mstcrypt.server.ims import running_ims
from mstcrypt.server.tlcp import platform_credentials

NAME = "localhost"


@contextlib.contextmanager
def running_gateway(gw: Gateway) -> Iterator[tuple[str, int]]:
    """The gateway on its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(gw.start(), loop).result(30)
        yield gw.addresses[0]
    finally:
        asyncio.run_coroutine_threadsafe(gw.close(grace=2), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class Tap:
    """A TCP relay between the terminals and the gateway that keeps every byte each
    way, to look at what an observer of the network sees."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up: list[bytearray] = []
        self.down: list[bytearray] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            up, down = bytearray(), bytearray()
            self.up.append(up)
            self.down.append(down)
            for src, dst, buf in ((client, server, up), (server, client, down)):
                threading.Thread(target=self._copy, args=(src, dst, buf), daemon=True).start()

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket, buf: bytearray) -> None:
        try:
            while data := src.recv(65536):
                buf += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


def records(stream: bytes) -> list[tuple[int, int, int]]:
    """(content type, version, length) of each TLCP record; the stream must be nothing
    else."""
    out, i = [], 0
    while i < len(stream):
        assert i + 5 <= len(stream), "a truncated record header"
        ctype, version = stream[i], int.from_bytes(stream[i + 1 : i + 3])
        length = int.from_bytes(stream[i + 3 : i + 5])
        out.append((ctype, version, length))
        i += 5 + length
    assert i == len(stream), "trailing bytes after the last record"
    return out


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("imtlcp")
    with world(tmp) as wd:
        for name in ("alice", "bob", "carol"):
            wd.enroll(name)
        with wd.admin() as a:
            a.create_group("team", ["alice", "bob", "carol"])
        kmc = wd.kmc()
        try:
            with running_ims(kmc, blob_dir=tmp / "blobs") as ims:
                upstream = ims.split("://", 1)[1]
                config = GatewayConfig(
                    listeners=[
                        ListenerConfig(
                            port=0,
                            routes={NAME: Route(upstream, "http", websocket=True)},
                            default=Route(upstream, "http"),  # no SNI: no WebSocket
                        )
                    ]
                )
                gw = Gateway(
                    config,
                    credentials=platform_credentials(kmc, [NAME, "127.0.0.1"]),
                    trust_source=kmc_trust_source(kmc),
                )
                with running_gateway(gw) as (host, port):
                    tap = Tap((host, port))
                    wd.gw = gw  # type: ignore[attr-defined]
                    wd.gw_url = f"https://{NAME}:{port}"  # type: ignore[attr-defined]
                    wd.tap_url = f"https://{NAME}:{tap.port}"  # type: ignore[attr-defined]
                    wd.tap = tap  # type: ignore[attr-defined]
                    yield wd
                    tap.close()
        finally:
            kmc.db.dispose()


def tlcp_im(w: World, name: str, url: str) -> Any:
    m = w.members[name]
    return ImClient(
        url,
        identity=m.identity,
        platform=_Keys(w.client()),
        session_token=m.session,
        anchors=[w.root],
        client_credentials=Credentials.from_module(m.token, "main"),
    )


def texts(items: list[Any]) -> list[str]:
    return [
        r.content.text for r in items if not isinstance(r, ImError) and isinstance(r.content, Text)
    ]


def test_live_messages_over_websocket_through_tlcp(w: World, caplog) -> None:
    """bob and carol listen on WebSockets through the gateway (carol through a tap
    that records the wire); alice sends over HTTP through the gateway; both receive live,
    and the tapped bytes are TLCP records only, with no plaintext in them."""
    caplog.set_level(logging.INFO, logger="mstcrypt.gateway.access")
    alice = tlcp_im(w, "alice", w.gw_url)  # type: ignore[attr-defined]
    bob = tlcp_im(w, "bob", w.gw_url)  # type: ignore[attr-defined]
    carol = tlcp_im(w, "carol", w.tap_url)  # type: ignore[attr-defined]
    for c in (alice, bob, carol):
        c.groups()
    got: dict[str, list[Any]] = {}

    def listen(name: str, client: Any) -> threading.Thread:
        def body() -> None:
            got[name] = client.listen(until=lambda g: len(texts(g)) >= 2, timeout=20)

        t = threading.Thread(target=body, daemon=True)
        t.start()
        return t

    threads = [listen("bob", bob), listen("carol", carol)]
    deadline = time.monotonic() + 20
    while w.gw.connections < 2:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the WebSockets did not connect"
        time.sleep(0.05)
    time.sleep(0.3)
    alice.send_text("team", "secret plan: 会议改到三点")
    alice.send_text("team", "second line")
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    for name in ("bob", "carol"):
        assert texts(got[name])[-2:] == ["secret plan: 会议改到三点", "second line"]
    for c in (alice, bob, carol):
        c.close()

    lines = [r.getMessage() for r in caplog.records if r.name == "mstcrypt.gateway.access"]
    ws_lines = [line for line in lines if "upgrade=websocket" in line]
    assert len(ws_lines) >= 2
    assert all("status=101" in line and "ECC_SM4" in line for line in ws_lines)
    assert any("CN=bob" in line for line in ws_lines)

    # what an observer of carol's connections saw
    tap = w.tap  # type: ignore[attr-defined]
    assert tap.up, "carol did not go through the tap"
    for up, down in zip(tap.up, tap.down, strict=True):
        sent, received = records(bytes(up)), records(bytes(down))
        assert sent[0][:2] == (22, 0x0101)  # a TLCP (1.1) handshake record first
        assert {v for _, v, _ in sent + received} == {0x0101}
        assert {t for t, _, _ in sent + received} <= {20, 21, 22, 23}
        for blob in (bytes(up), bytes(down)):
            for plain in (b"GET /im/ws", b"websocket", b"Bearer", "会议".encode(), b"second"):
                assert plain not in blob


def test_websocket_authenticates_the_gateway(w: World) -> None:
    """The WebSocket checks the gateway as the HTTP client does: a foreign root, or a
    name the gateway's certificate does not carry, is refused before any HTTP."""
    m = w.members["bob"]
    creds = Credentials.from_module(m.token, "main")
    foreign = TestPKI().root
    with pytest.raises(TLCPError):
        TLCPWebSocket.connect(
            w.gw_url + "/im/ws",  # type: ignore[attr-defined]
            TLCPContext(credentials=creds, trust_anchors=[foreign]),
        )
    with pytest.raises(TLCPError):
        TLCPWebSocket.connect(
            w.gw_url + "/im/ws",  # type: ignore[attr-defined]
            TLCPContext(credentials=creds, trust_anchors=[w.root]),
            server_name="other.example",
        )


def test_websocket_refused_without_session_or_on_a_plain_route(w: World) -> None:
    m = w.members["bob"]
    ctx = TLCPContext(credentials=Credentials.from_module(m.token, "main"), trust_anchors=[w.root])
    # no session token: the IMS refuses the upgrade; the gateway relays its answer
    with pytest.raises(WebSocketHandshakeError):
        TLCPWebSocket.connect(w.gw_url + "/im/ws", ctx)  # type: ignore[attr-defined]
    # the listener's default route (no SNI) does not allow WebSockets: the upgrade is
    # stripped, the IMS sees a plain GET and no 101 comes back
    port = int(w.gw_url.rsplit(":", 1)[1])  # type: ignore[attr-defined]
    with pytest.raises(WebSocketHandshakeError):
        TLCPWebSocket.connect(
            f"https://127.0.0.1:{port}/im/ws",
            ctx,
            additional_headers={"Authorization": f"Bearer {m.session}"},
        )


def test_https_ims_url_needs_anchors(w: World) -> None:
    m = w.members["bob"]
    with pytest.raises(PolicyError):
        ImClient(
            w.gw_url,  # type: ignore[attr-defined]
            identity=m.identity,
            platform=_Keys(w.client()),
            session_token=m.session,
        )


def test_tlcp_ws_client_closes_cleanly(w: World) -> None:
    """Closing the WebSocket ends the relay at the gateway (no connection left)."""
    m = w.members["bob"]
    ctx = TLCPContext(credentials=Credentials.from_module(m.token, "main"), trust_anchors=[w.root])
    gw = w.gw  # type: ignore[attr-defined]
    before = gw.connections
    ws = TLCPWebSocket.connect(
        w.gw_url + "/im/ws",  # type: ignore[attr-defined]
        ctx,
        additional_headers={"Authorization": f"Bearer {m.session}", "X-MST-Device": "ab" * 16},
    )
    assert ws.cipher_suite is not None and ws.peer_certificates
    ws.send('{"op": "ping", "ref": "x"}')
    deadline = time.monotonic() + 10
    while True:
        frame = json.loads(ws.recv(timeout=10))
        if frame.get("op") == "pong":
            break
        assert time.monotonic() < deadline
    ws.close()
    deadline = time.monotonic() + 10
    while gw.connections > before:
        assert time.monotonic() < deadline, "the gateway kept the relay open"
        time.sleep(0.05)
    with pytest.raises(Exception) as info:
        ws.send("after close")
    assert type(info.value).__name__.startswith("ConnectionClosed")


def test_record_parser_rejects_plaintext() -> None:
    """The record parser used above rejects a plaintext stream (so the check can fail)."""
    with pytest.raises(AssertionError):
        records(b"GET /im/ws HTTP/1.1\r\nHost: x\r\n\r\n")


def test_cli_send_and_listen_through_the_gateway(
    w: World, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """``mstcrypt im send`` / ``im listen`` with ``--ims https://…``: the terminal's
    token certificate authenticates it to the gateway, the WebSocket runs over TLCP."""
    from mstcrypt.cli import _common
    from mstcrypt.cli import app as cli_app

    (w.tmp / "root.pem").write_bytes(w.root.pem)

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["mstcrypt", *args])
        monkeypatch.setenv("COLUMNS", "200")
        code = _common.run(cli_app)
        out, err = capfd.readouterr()
        return code, out + err

    def term(name: str) -> list[str]:
        return [
            *("--server", w.url, "--ims", w.gw_url),  # type: ignore[attr-defined]
            *("--token", str(w.tmp / f"{name}.tok"), "--pin", PIN),
            *("--ca-file", str(w.tmp / "root.pem")),
        ]

    code, out = run("im", "send", "team", "via the gateway", *term("alice"))
    assert code == 0 and "sent to team at position" in out, out
    code, out = run("im", "listen", "--count", "3", "--timeout", "10", *term("bob"))
    assert code == 0 and "via the gateway" in out, out


def test_chat_over_tlcp(w: World) -> None:
    """The interactive chat's controller on a terminal whose IMS URL is the gateway's:
    what alice types reaches bob, and bob's reply arrives live on alice's WebSocket
    through TLCP and is rendered in her chat."""
    from mstcrypt.apps.im.chat import ChatController

    alice = tlcp_im(w, "alice", w.gw_url)  # type: ignore[attr-defined]
    bob = tlcp_im(w, "bob", w.gw_url)  # type: ignore[attr-defined]
    out: list[str] = []
    ctrl = ChatController(alice, out.append)
    try:
        assert ctrl.start("team")
        assert ctrl.handle("hello through the gateway")
        assert any(line.endswith("<alice> hello through the gateway") for line in out), out
        got = bob.listen(until=lambda g: "hello through the gateway" in texts(g), timeout=20)
        assert "hello through the gateway" in texts(got)

        done = threading.Event()

        def reply() -> None:
            time.sleep(0.5)
            bob.send_text("team", "reply over tlcp")
            done.set()

        threading.Thread(target=reply, daemon=True).start()
        alice.listen(
            until=lambda g: "reply over tlcp" in texts(g),
            timeout=20,
            on_message=ctrl.incoming,
        )
        assert done.is_set()
        assert any(line.endswith("<bob> reply over tlcp") for line in out), out
    finally:
        alice.close()
        bob.close()
