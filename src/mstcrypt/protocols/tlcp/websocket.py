"""A blocking WebSocket client (RFC 6455) over TLCP.

The WebSocket protocol is websockets' sans-IO :class:`websockets.client.ClientProtocol`;
the bytes go through a :class:`~mstcrypt.protocols.tlcp.sync.TLCPSocket`, so the server
(typically the mobile access gateway, a route with ``websocket = true``) is
authenticated exactly as the HTTP client authenticates it: its certificates must chain
to the context's trust anchors and its signing certificate must match ``server_name``
(sent as SNI); with ``client_credentials`` in the context the terminal presents its
certificate.

One thread drives the connection: :meth:`TLCPWebSocket.recv` reads and answers pings
while it waits, :meth:`~TLCPWebSocket.send` writes. Nothing is read in the background, so
a message is buffered only once it has been received whole, and the server sees TCP
back-pressure while the application does not read.

``wss://`` and ``https://`` URLs are accepted (both mean WebSocket over TLCP here).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from mstcrypt.errors import PolicyError
from mstcrypt.protocols.tlcp.constants import AlertDescription
from mstcrypt.protocols.tlcp.context import TLCPContext
from mstcrypt.protocols.tlcp.errors import TLCPError
from mstcrypt.protocols.tlcp.sync import TLCPSocket

__all__ = ["TLCPWebSocket", "WebSocketHandshakeError"]

#: Default largest message accepted (bytes), as in websockets.
DEFAULT_MAX_SIZE = 1 << 20


class WebSocketHandshakeError(PolicyError):
    """The server did not accept the WebSocket opening handshake. ``status`` is the HTTP
    status it answered with (0 when the answer was not a valid HTTP response)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _ws_uri(url: str) -> tuple[Any, str, int]:
    from websockets.uri import parse_uri

    for prefix in ("https://", "wss://"):
        if url.startswith(prefix):
            uri = parse_uri("wss://" + url[len(prefix) :])
            return uri, uri.host, uri.port
    raise PolicyError("a WebSocket over TLCP needs a wss:// or https:// URL")


class TLCPWebSocket:
    """One WebSocket client connection over TLCP; open it with :meth:`connect`.

    ``recv(timeout)`` returns the next message (``str`` for text, ``bytes`` for binary)
    or raises :class:`TimeoutError`; once the connection is closed both ``recv`` and
    ``send`` raise websockets' :class:`~websockets.exceptions.ConnectionClosed` (as the
    websockets clients do)."""

    #: seconds a send may block on a peer that does not read (then the connection fails)
    write_timeout: float = 30.0

    def __init__(self, tls: TLCPSocket, protocol: Any) -> None:
        self.tls = tls
        self.protocol = protocol
        self._messages: deque[str | bytes] = deque()
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._closed = False

    def __repr__(self) -> str:
        suite = self.cipher_suite
        return f"<TLCPWebSocket {suite.name if suite else '?'} {self.protocol.state.name}>"

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        url: str,
        context: TLCPContext,
        *,
        server_name: str | None = None,
        additional_headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        max_size: int | None = DEFAULT_MAX_SIZE,
        open_timeout: float | None = 30.0,
        pinned: Iterable[str] = (),
        address: tuple[str, int] | None = None,
    ) -> TLCPWebSocket:
        """Connect to ``url`` (``wss://host:port/path`` or ``https://…``), run the TLCP
        handshake with ``context`` (``server_name`` defaults to the URL's host), then the
        WebSocket opening handshake with ``additional_headers`` (for example
        ``Authorization``). ``pinned``: SM3 fingerprints (hex) one of which the server's
        signing certificate must be. ``address`` connects there instead of the URL's
        host and port (the URL still names the server). ``open_timeout`` bounds both
        handshakes."""
        from websockets.client import ClientProtocol

        if not context.trust_anchors:
            raise PolicyError("the TLCP client needs trust anchors to verify the server")
        uri, host, port = _ws_uri(url)
        deadline = None if open_timeout is None else time.monotonic() + open_timeout
        tls = TLCPSocket.connect(
            address or (host, port),
            context,
            server_name=server_name or host,
            timeout=open_timeout,
        )
        try:
            pins = frozenset(pinned)
            peer = tls.conn.peer_certificates
            if pins and (not peer or peer[0].fingerprint not in pins):
                raise TLCPError(
                    AlertDescription.BAD_CERTIFICATE,
                    "the server's signing certificate is not one of the pinned certificates",
                )
            protocol = ClientProtocol(uri, max_size=max_size)
            ws = cls(tls, protocol)
            request = protocol.connect()
            items = (
                additional_headers.items()
                if isinstance(additional_headers, Mapping)
                else additional_headers
            )
            for name, value in items:
                request.headers[name] = value
            protocol.send_request(request)
            ws._flush()
            ws._open(deadline)
        except BaseException:
            tls.close()
            raise
        return ws

    def _open(self, deadline: float | None) -> None:
        from websockets.http11 import Response

        opened = False
        while not opened:
            for event in self._read(deadline, opening=not opened):
                if isinstance(event, Response):
                    exc = self.protocol.handshake_exc
                    if exc is not None:
                        status = getattr(getattr(exc, "response", None), "status_code", 0)
                        raise WebSocketHandshakeError(
                            f"the server refused the WebSocket ({type(exc).__name__}"
                            + (f", HTTP {status})" if status else ")"),
                            status,
                        )
                    opened = True
                else:  # frames that came with the 101
                    self._event(event)

    # -- I/O -----------------------------------------------------------------------------
    @property
    def cipher_suite(self) -> Any:
        """The TLCP cipher suite of the connection."""
        return self.tls.conn.cipher_suite

    @property
    def peer_certificates(self) -> Any:
        """The server's certificates (signing certificate first)."""
        return self.tls.conn.peer_certificates

    def _flush(self) -> None:
        self.tls.sock.settimeout(self.write_timeout)
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.tls.sendall(chunk)
            # b"": the protocol wants the TCP connection half-closed; TLCP has no
            # half-close, the socket is closed in close()

    def _read(self, deadline: float | None, *, opening: bool = False) -> list[Any]:
        """Wait for bytes until ``deadline`` (TimeoutError), feed them to the protocol,
        send what it answers (pongs, the close frame) and return its events."""
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise TimeoutError("no WebSocket data before the timeout")
        self.tls.sock.settimeout(timeout)
        try:
            data = self.tls.recv()
        except TimeoutError:
            if opening:
                raise TimeoutError("the WebSocket opening handshake timed out") from None
            raise TimeoutError("no WebSocket data before the timeout") from None
        except (TLCPError, OSError):
            if opening:
                raise
            data = b""
        if data:
            self.protocol.receive_data(data)
        else:
            if opening:
                raise WebSocketHandshakeError("the server closed the connection")
            self.protocol.receive_eof()
        with contextlib.suppress(OSError, TLCPError, PolicyError):
            self._flush()
        return list(self.protocol.events_received())

    def _event(self, event: Any) -> None:
        from websockets.frames import Opcode

        opcode = getattr(event, "opcode", None)
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._fragments = [event.data]
            self._fragment_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            self._fragments.append(event.data)
        else:
            return  # ping/pong/close: answered by the protocol
        if event.fin:
            data = b"".join(self._fragments)
            self._fragments = []
            self._messages.append(data.decode() if self._fragment_text else data)

    def _raise_if_closed(self) -> None:
        from websockets.exceptions import ConnectionClosedError
        from websockets.protocol import State

        if self.protocol.state is State.CLOSED:
            raise self.protocol.close_exc
        if self._closed:
            raise ConnectionClosedError(None, None)

    def recv(self, timeout: float | None = None) -> str | bytes:
        """The next message; TimeoutError after ``timeout`` seconds without one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._messages:
            self._raise_if_closed()
            for event in self._read(deadline):
                self._event(event)
        return self._messages.popleft()

    def send(self, message: str | bytes) -> None:
        """Send a text (``str``) or binary (``bytes``) message."""
        self._raise_if_closed()
        if isinstance(message, str):
            self.protocol.send_text(message.encode())
        elif isinstance(message, bytes | bytearray | memoryview):
            self.protocol.send_binary(bytes(message))
        else:
            raise PolicyError("a WebSocket message is str or bytes")
        try:
            self._flush()
        except (OSError, TLCPError, PolicyError):
            self.protocol.receive_eof()
            self._raise_if_closed()
            raise

    def close(self, code: int = 1000, reason: str = "", timeout: float = 5.0) -> None:
        """The closing handshake (up to ``timeout`` seconds for the server's close
        frame), then close_notify and the socket."""
        from websockets.protocol import State

        if self._closed:
            return
        try:
            if self.protocol.state is State.OPEN:
                self.protocol.send_close(code, reason)
                self._flush()
            deadline = time.monotonic() + timeout
            while self.protocol.state is not State.CLOSED:
                for event in self._read(deadline):
                    self._event(event)
        except (TimeoutError, OSError, TLCPError, PolicyError):
            pass
        finally:
            self._closed = True
            self.tls.close()

    def __enter__(self) -> TLCPWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
