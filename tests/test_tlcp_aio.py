"""The asyncio adapter (mstcrypt.protocols.tlcp.aio): echo over real sockets for every
suite, client authentication, concurrency, handshake timeout, peer closing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any

import pytest

from mstcrypt.protocols.tlcp import (
    AlertDescription,
    CipherSuite,
    ClientAuth,
    TLCPContext,
    TLCPError,
    aio,
)
from mstcrypt.protocols.tlcp.testing import TestPKI

HOST = "gw.example.com"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture(scope="module")
def server_id(pki: TestPKI):
    return pki.identity("gateway", names=[HOST])


@pytest.fixture(scope="module")
def client_id(pki: TestPKI):
    return pki.identity("device 1", server=False)


async def echo(reader: aio.TLCPStreamReader, writer: aio.TLCPStreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except TLCPError:
        pass
    finally:
        writer.close()
        await writer.wait_closed()


def port_of(server: asyncio.Server) -> int:
    return server.sockets[0].getsockname()[1]


def test_echo_every_suite_in_one_loop(pki, server_id, client_id) -> None:
    async def main() -> None:
        sctx = TLCPContext(
            credentials=server_id.credentials(),
            trust_anchors=[pki.root],
            client_auth=ClientAuth.OPTIONAL,
        )
        server = await aio.start_server(echo, "127.0.0.1", 0, sctx)
        async with server:
            for suite in CipherSuite:
                cctx = TLCPContext(
                    credentials=client_id.credentials(),
                    trust_anchors=[pki.root],
                    cipher_suites=[suite],
                )
                reader, writer = await aio.open_connection(
                    "127.0.0.1", port_of(server), cctx, server_name=HOST
                )
                assert writer.get_extra_info("cipher_suite") == suite
                certs = writer.get_extra_info("peer_certificates")
                assert certs[0] == server_id.sign_certificate
                assert writer.get_extra_info("peername")[0] == "127.0.0.1"
                sock = writer.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                payload = bytes(range(256)) * 300  # several records
                writer.write(b"hello\nworld\n" + payload)
                await writer.drain()
                assert await reader.readline() == b"hello\n"
                assert await reader.readuntil(b"\n") == b"world\n"
                assert await reader.readexactly(len(payload)) == payload
                writer.close()
                await writer.wait_closed()

    run(main())


def test_client_auth_required(pki, server_id, client_id) -> None:
    async def main() -> None:
        seen: list[Any] = []

        async def handler(reader, writer) -> None:
            seen.append(writer.get_extra_info("peer_certificates"))
            await echo(reader, writer)

        failures: list[BaseException] = []
        sctx = TLCPContext(
            credentials=server_id.credentials(),
            trust_anchors=[pki.root],
            client_auth=ClientAuth.REQUIRED,
            cipher_suites=[CipherSuite.ECC_SM4_GCM_SM3],
        )
        server = await aio.start_server(
            handler, "127.0.0.1", 0, sctx, on_handshake_error=lambda e, p: failures.append(e)
        )
        async with server:
            port = port_of(server)
            good = TLCPContext(credentials=client_id.credentials(), trust_anchors=[pki.root])
            reader, writer = await aio.open_connection("127.0.0.1", port, good, server_name=HOST)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
            await writer.wait_closed()
            assert seen and seen[0][0] == client_id.sign_certificate

            anonymous = TLCPContext(trust_anchors=[pki.root])
            with pytest.raises(TLCPError) as info:
                await aio.open_connection("127.0.0.1", port, anonymous, server_name=HOST)
            assert info.value.alert == AlertDescription.HANDSHAKE_FAILURE
            for _ in range(50):
                if failures:
                    break
                await asyncio.sleep(0.02)
            assert isinstance(failures[0], TLCPError)
            assert len(seen) == 1

    run(main())


def test_twenty_concurrent_connections(pki, server_id, client_id) -> None:
    async def main() -> None:
        sctx = TLCPContext(
            credentials=server_id.credentials(),
            trust_anchors=[pki.root],
            client_auth=ClientAuth.REQUIRED,
        )
        cctx = TLCPContext(credentials=client_id.credentials(), trust_anchors=[pki.root])
        server = await aio.start_server(echo, "127.0.0.1", 0, sctx)

        async def one(i: int) -> bytes:
            reader, writer = await aio.open_connection(
                "127.0.0.1", port_of(server), cctx, server_name=HOST
            )
            msg = f"client {i} ".encode() * (i * 100 + 1)
            writer.write(msg)
            await writer.drain()
            back = await reader.readexactly(len(msg))
            writer.close()
            await writer.wait_closed()
            assert back == msg
            return back

        async with server:
            results = await asyncio.gather(*(one(i) for i in range(20)))
        assert len(results) == 20

    run(main())


def test_handshake_timeout(pki, server_id) -> None:
    async def main() -> None:
        # A TCP server that never answers: the client times out.
        async def silent(reader, writer) -> None:
            await reader.read()
            writer.close()

        mute = await asyncio.start_server(silent, "127.0.0.1", 0)
        async with mute:
            cctx = TLCPContext(trust_anchors=[pki.root])
            with pytest.raises(TimeoutError):
                await aio.open_connection(
                    "127.0.0.1", port_of(mute), cctx, server_name=HOST, timeout=0.3
                )

        # A TCP client that never speaks: the server gives up and closes.
        failures: list[BaseException] = []
        sctx = TLCPContext(credentials=server_id.credentials())
        server = await aio.start_server(
            echo,
            "127.0.0.1",
            0,
            sctx,
            handshake_timeout=0.3,
            on_handshake_error=lambda e, p: failures.append(e),
        )
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            assert isinstance(failures[0], TimeoutError)

    run(main())


def test_peer_closing(pki, server_id) -> None:
    async def main() -> None:
        async def say_and_close(reader, writer) -> None:
            writer.write(b"bye")
            writer.close()
            await writer.wait_closed()

        sctx = TLCPContext(credentials=server_id.credentials())
        cctx = TLCPContext(trust_anchors=[pki.root])
        server = await aio.start_server(say_and_close, "127.0.0.1", 0, sctx)
        async with server:
            reader, writer = await aio.open_connection(
                "127.0.0.1", port_of(server), cctx, server_name=HOST
            )
            assert await reader.read() == b"bye"  # until close_notify
            assert reader.at_eof()
            assert await reader.read(10) == b""
            assert not writer.get_extra_info("truncated")
            writer.close()
            await writer.wait_closed()

        # Server that closes TCP in the middle of the handshake.
        async def hang_up(reader, writer) -> None:
            await reader.read(10)
            writer.close()

        rude = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        async with rude:
            with pytest.raises(TLCPError, match="closed the TCP connection"):
                await aio.open_connection("127.0.0.1", port_of(rude), cctx, server_name=HOST)

    run(main())


def test_wrong_server_name_and_session_resumption(pki, server_id, client_id) -> None:
    from mstcrypt.protocols.tlcp import SessionCache

    async def main() -> None:
        sctx = TLCPContext(credentials=server_id.credentials(), session_cache=SessionCache())
        cctx = TLCPContext(trust_anchors=[pki.root], cipher_suites=[CipherSuite.ECC_SM4_CBC_SM3])
        server = await aio.start_server(echo, "127.0.0.1", 0, sctx)
        async with server:
            port = port_of(server)
            with pytest.raises(TLCPError) as info:
                await aio.open_connection("127.0.0.1", port, cctx, server_name="other.example")
            assert info.value.alert == AlertDescription.BAD_CERTIFICATE
            _, w = await aio.open_connection("127.0.0.1", port, cctx, server_name=HOST)
            session = w.get_extra_info("session")
            w.close()
            await w.wait_closed()
            r2, w2 = await aio.open_connection(
                "127.0.0.1", port, cctx, server_name=HOST, session=session
            )
            assert w2.get_extra_info("handshake").resumed
            w2.write(b"x")
            assert await r2.read(1) == b"x"
            w2.close()
            with pytest.raises(Exception):
                w2.write(b"y")

    run(main())
