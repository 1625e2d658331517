"""asyncio adapter: TLCP streams shaped like :func:`asyncio.open_connection` and
:func:`asyncio.start_server`.

The reader and writer behave like :class:`asyncio.StreamReader` /
:class:`asyncio.StreamWriter` for application data (``read``, ``readexactly``,
``readline``, ``readuntil``; ``write``, ``drain``, ``close``, ``wait_closed``,
``get_extra_info("peer_certificates" | "cipher_suite" | "session" | "server_name" |
"context" | "retry")``).
The protocol itself is the sans-IO :class:`TLCPClient` / :class:`TLCPServer`; this module
only moves bytes. TCP_NODELAY is set (the handshake is several small flights).

Failures surface as :class:`TLCPError` (a fatal alert sent or received, a peer that closes
the TCP connection during the handshake) and as :class:`TimeoutError` when the handshake
does not finish in time. A TCP end of stream after the handshake without close_notify
reads as end of stream (``truncated`` is then true in ``get_extra_info``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from mstcrypt.errors import PolicyError
from mstcrypt.protocols.tlcp.client import TLCPClient
from mstcrypt.protocols.tlcp.constants import AlertDescription
from mstcrypt.protocols.tlcp.context import Session, TLCPContext
from mstcrypt.protocols.tlcp.errors import TLCPError
from mstcrypt.protocols.tlcp.events import (
    AlertReceived,
    ApplicationData,
    ConnectionClosed,
    HandshakeComplete,
)
from mstcrypt.protocols.tlcp.profiles import FormRetry, retry_for
from mstcrypt.protocols.tlcp.server import TLCPServer

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "TLCPStreamReader",
    "TLCPStreamWriter",
    "client_handshake",
    "open_connection",
    "server_handshake",
    "start_server",
]

log = logging.getLogger(__name__)

RECV_SIZE = 65536
DEFAULT_HANDSHAKE_TIMEOUT = 30.0
DEFAULT_LIMIT = 1 << 16

#: A context, or a callable returning the context to use for each new connection (a
#: gateway swaps contexts when it refreshes its trust anchors and CRLs).
ContextSource = TLCPContext | Callable[[], TLCPContext]


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Channel:
    """The shared state of one connection: the raw TCP streams and the protocol."""

    def __init__(
        self,
        raw_reader: asyncio.StreamReader,
        raw_writer: asyncio.StreamWriter,
        conn: TLCPClient | TLCPServer,
    ) -> None:
        self.raw_reader = raw_reader
        self.raw_writer = raw_writer
        self.conn = conn
        self.handshake: HandshakeComplete | None = None
        self.alerts: list[AlertReceived] = []
        self.plain = bytearray()
        self.eof = False
        self.truncated = False
        self.error: BaseException | None = None
        self.closing = False
        self.retry: FormRetry | None = None
        _set_nodelay(raw_writer)

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out and not self.raw_writer.is_closing():
            self.raw_writer.write(out)

    async def pump(self) -> None:
        """Read once from the transport and process what arrived."""
        if self.error is not None:
            raise self.error
        self.flush()
        try:
            data = await self.raw_reader.read(RECV_SIZE)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.eof = True
            if self.handshake is None:
                self.error = TLCPError(
                    AlertDescription.HANDSHAKE_FAILURE,
                    "peer closed the TCP connection during the handshake",
                    received=True,
                )
                raise self.error
            if not self.conn.closed:
                self.truncated = True
            return
        try:
            events = self.conn.receive_data(data)
        except TLCPError as exc:
            self.error = exc
            self.eof = True
            self.flush()  # the fatal alert
            raise
        for ev in events:
            if isinstance(ev, HandshakeComplete):
                self.handshake = ev
            elif isinstance(ev, ApplicationData):
                self.plain += ev.data
            elif isinstance(ev, AlertReceived):
                self.alerts.append(ev)
            elif isinstance(ev, ConnectionClosed):
                self.eof = True
                if ev.alert != AlertDescription.CLOSE_NOTIFY:
                    known = isinstance(ev.alert, AlertDescription)
                    self.error = TLCPError(
                        ev.alert if known else AlertDescription.HANDSHAKE_FAILURE,
                        "peer sent a fatal alert" + ("" if known else f" ({ev.alert})"),
                        received=True,
                    )
        self.flush()
        if self.error is not None:
            raise self.error

    async def do_handshake(self, timeout: float | None) -> HandshakeComplete:
        async def run() -> HandshakeComplete:
            while self.handshake is None:
                await self.pump()
            await self.raw_writer.drain()
            return self.handshake

        try:
            async with asyncio.timeout(timeout):
                return await run()
        except TimeoutError:
            raise TimeoutError(f"TLCP handshake did not complete in {timeout} s") from None
        except (ConnectionError, OSError) as exc:
            raise TLCPError(
                AlertDescription.HANDSHAKE_FAILURE,
                f"transport failed during the handshake ({type(exc).__name__})",
                received=True,
            ) from None


class TLCPStreamReader:
    """Application data of a TLCP connection, with the StreamReader reading methods."""

    def __init__(self, channel: _Channel, limit: int = DEFAULT_LIMIT) -> None:
        self._ch = channel
        self._limit = limit

    async def _fill(self) -> bool:
        """Wait for more plaintext; False at the end of the stream."""
        ch = self._ch
        if ch.error is not None:
            raise ch.error
        if ch.eof:
            return False
        await ch.pump()
        return True

    def at_eof(self) -> bool:
        return self._ch.eof and not self._ch.plain

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all until the end of the stream when ``n`` < 0); b"" at
        the end of the stream."""
        ch = self._ch
        if n == 0:
            return b""
        if n < 0:
            while await self._fill():
                pass
            out = bytes(ch.plain)
            ch.plain.clear()
            return out
        while not ch.plain and await self._fill():
            pass
        out = bytes(ch.plain[:n])
        del ch.plain[:n]
        return out

    async def readexactly(self, n: int) -> bytes:
        ch = self._ch
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        while len(ch.plain) < n:
            if not await self._fill():
                partial = bytes(ch.plain)
                ch.plain.clear()
                raise asyncio.IncompleteReadError(partial, n)
        out = bytes(ch.plain[:n])
        del ch.plain[:n]
        return out

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        ch = self._ch
        if not separator:
            raise ValueError("separator should be at least one-byte string")
        start = 0
        while True:
            i = ch.plain.find(separator, start)
            if i >= 0:
                end = i + len(separator)
                if end > self._limit:
                    raise asyncio.LimitOverrunError("separator found, but chunk too long", i)
                out = bytes(ch.plain[:end])
                del ch.plain[:end]
                return out
            if len(ch.plain) > self._limit:
                raise asyncio.LimitOverrunError("separator not found, chunk too long", 0)
            start = max(0, len(ch.plain) - len(separator) + 1)
            if not await self._fill():
                partial = bytes(ch.plain)
                ch.plain.clear()
                raise asyncio.IncompleteReadError(partial, None)

    async def readline(self) -> bytes:
        """A line ending with b"\\n", or what is left at the end of the stream."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial

    def __aiter__(self) -> TLCPStreamReader:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


class TLCPStreamWriter:
    """Application data out, with the StreamWriter methods. ``close`` sends close_notify."""

    def __init__(self, channel: _Channel) -> None:
        self._ch = channel

    @property
    def transport(self) -> asyncio.BaseTransport:
        return self._ch.raw_writer.transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        ch = self._ch
        if ch.error is not None:
            raise ch.error
        if ch.closing:
            raise PolicyError("the TLCP connection is closed for sending")
        ch.conn.send_application_data(data)
        ch.flush()

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def can_write_eof(self) -> bool:
        return False

    async def drain(self) -> None:
        if self._ch.error is not None:
            raise self._ch.error
        await self._ch.raw_writer.drain()

    def is_closing(self) -> bool:
        return self._ch.closing or self._ch.raw_writer.is_closing()

    def close(self) -> None:
        """Send close_notify (when the connection is still healthy) and close the socket."""
        ch = self._ch
        if ch.closing:
            return
        ch.closing = True
        if ch.error is None and ch.conn.handshake_complete:
            with contextlib.suppress(Exception):
                ch.conn.close()
                ch.flush()
        ch.raw_writer.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self._ch.raw_writer.wait_closed()

    async def aclose(self) -> None:
        self.close()
        await self.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        ch = self._ch
        conn = ch.conn
        if name == "peer_certificates":
            return conn.peer_certificates
        if name == "cipher_suite":
            return conn.cipher_suite
        if name == "session":
            return conn.session
        if name == "server_name":
            return conn.server_name
        if name == "handshake":
            return ch.handshake
        if name == "alerts":
            return tuple(ch.alerts)
        if name == "truncated":
            return ch.truncated
        if name == "tlcp_connection":
            return conn
        if name == "context":
            return conn._ctx
        if name == "retry":
            return ch.retry
        return ch.raw_writer.get_extra_info(name, default)

    def __repr__(self) -> str:
        suite = self._ch.conn.cipher_suite
        return f"<TLCPStreamWriter {suite.name if suite else 'handshaking'}>"


def _streams(ch: _Channel, limit: int) -> tuple[TLCPStreamReader, TLCPStreamWriter]:
    return TLCPStreamReader(ch, limit), TLCPStreamWriter(ch)


async def client_handshake(
    raw_reader: asyncio.StreamReader,
    raw_writer: asyncio.StreamWriter,
    ctx: TLCPContext,
    *,
    server_name: str | None = None,
    session: Session | None = None,
    timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    now: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
) -> tuple[TLCPStreamReader, TLCPStreamWriter]:
    """Run the client handshake over already connected streams. On failure the raw
    writer is closed and the error raised."""
    client = TLCPClient(ctx, server_name=server_name, session=session, now=now)
    return await _client_handshake(raw_reader, raw_writer, client, timeout, limit)


async def _client_handshake(
    raw_reader: asyncio.StreamReader,
    raw_writer: asyncio.StreamWriter,
    client: TLCPClient,
    timeout: float | None,
    limit: int,
) -> tuple[TLCPStreamReader, TLCPStreamWriter]:
    ch = _Channel(raw_reader, raw_writer, client)
    try:
        await ch.do_handshake(timeout)
    except BaseException:
        raw_writer.close()
        raise
    return _streams(ch, limit)


async def server_handshake(
    raw_reader: asyncio.StreamReader,
    raw_writer: asyncio.StreamWriter,
    ctx: ContextSource,
    *,
    timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    now: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
) -> tuple[TLCPStreamReader, TLCPStreamWriter]:
    """Run the server handshake on an accepted connection (the raw writer is closed on
    failure, after the fatal alert has been written)."""
    context = ctx() if callable(ctx) else ctx
    ch = _Channel(raw_reader, raw_writer, TLCPServer(context, now=now))
    try:
        await ch.do_handshake(timeout)
    except BaseException:
        raw_writer.close()
        raise
    return _streams(ch, limit)


async def open_connection(
    host: str,
    port: int,
    ctx: TLCPContext,
    *,
    server_name: str | None = None,
    session: Session | None = None,
    timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    limit: int = DEFAULT_LIMIT,
    retry: bool = False,
    on_retry: Callable[[FormRetry], None] | None = None,
    **kwargs: Any,
) -> tuple[TLCPStreamReader, TLCPStreamWriter]:
    """Connect to ``host:port`` and run the TLCP client handshake; ``timeout`` bounds the
    TCP connect and the handshake together. ``server_name`` is sent as SNI and checked
    against the server certificate; it is not taken from ``host`` (pass it explicitly).

    ``retry`` (the ``auto`` peer profile): when the server refuses the handshake in a
    way that shows it needs another form
    (:func:`~mstcrypt.protocols.tlcp.profiles.retry_for`), connect once more with that
    form (with a fresh ``timeout``); ``on_retry`` is told why, and the retry is logged.
    ``get_extra_info("retry")`` is then the
    :class:`~mstcrypt.protocols.tlcp.profiles.FormRetry` and ``get_extra_info("context")``
    the context that succeeded. Extra keyword arguments go to
    :func:`asyncio.open_connection`."""
    attempt_ctx = ctx
    done: FormRetry | None = None
    while True:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                raw_reader, raw_writer = await asyncio.open_connection(host, port, **kwargs)
        except TimeoutError:
            raise TimeoutError(f"TCP connect to {host}:{port} timed out") from None
        left = None if deadline is None else max(0.0, deadline - loop.time())
        client = TLCPClient(attempt_ctx, server_name=server_name, session=session)
        try:
            reader, writer = await _client_handshake(raw_reader, raw_writer, client, left, limit)
        except TLCPError:
            again = retry_for(client, attempt_ctx) if retry and done is None else None
            if again is None:
                raise
            log.info("TLCP handshake with %s:%s: %s", host, port, again)
            if on_retry is not None:
                on_retry(again)
            done, attempt_ctx = again, again.context
            continue
        writer._ch.retry = done
        return reader, writer


ClientConnected = Callable[[TLCPStreamReader, TLCPStreamWriter], Awaitable[None] | None]


async def start_server(
    client_connected_cb: ClientConnected,
    host: str | None = None,
    port: int | None = None,
    ctx: ContextSource | None = None,
    *,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    on_handshake_error: Callable[[BaseException, tuple[Any, ...] | None], None] | None = None,
    limit: int = DEFAULT_LIMIT,
    **kwargs: Any,
) -> asyncio.Server:
    """Listen on ``host:port``; for each connection run the server handshake and call
    ``client_connected_cb(reader, writer)`` (a coroutine function or a plain function).
    ``ctx`` may be a callable returning the context for each new connection. Handshake
    failures are logged (and passed to ``on_handshake_error(exc, peername)``); the
    connection is then closed. Extra keyword arguments go to :func:`asyncio.start_server`.
    """
    if ctx is None:
        raise PolicyError("start_server needs a TLCPContext")

    async def handle(raw_reader: asyncio.StreamReader, raw_writer: asyncio.StreamWriter) -> None:
        peer = raw_writer.get_extra_info("peername")
        try:
            reader, writer = await server_handshake(
                raw_reader, raw_writer, ctx, timeout=handshake_timeout, limit=limit
            )
        except (TLCPError, TimeoutError, ConnectionError, OSError) as exc:
            log.info("TLCP handshake with %s failed: %s", peer, exc)
            if on_handshake_error is not None:
                on_handshake_error(exc, peer)
            return
        res = client_connected_cb(reader, writer)
        if inspect.isawaitable(res):
            await res

    return await asyncio.start_server(handle, host, port, **kwargs)
