"""A minimal blocking adapter: one socket around a :class:`TLCPClient` or
:class:`TLCPServer`. For tests, tools and simple services; an asyncio adapter belongs
to the gateway. Sets TCP_NODELAY (the handshake is several small flights)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from datetime import datetime

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

__all__ = ["TLCPSocket"]

RECV_SIZE = 65536


class TLCPSocket:
    """A TLCP connection over a connected stream socket (blocking)."""

    def __init__(self, sock: socket.socket, conn: TLCPClient | TLCPServer) -> None:
        self.sock = sock
        self.conn = conn
        self.handshake: HandshakeComplete | None = None
        self.alerts: list[AlertReceived] = []
        self._plain = bytearray()
        self._eof = False
        self.retry: FormRetry | None = None
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @classmethod
    def connect(
        cls,
        address: tuple[str, int],
        context: TLCPContext,
        *,
        server_name: str | None = None,
        session: Session | None = None,
        timeout: float | None = 30.0,
        now: datetime | None = None,
        retry: bool = False,
        on_retry: Callable[[FormRetry], None] | None = None,
    ) -> TLCPSocket:
        """Connect, run the client handshake and return the connection.

        ``retry`` (the ``auto`` peer profile): when the server refuses the handshake in
        a way that shows it needs another form
        (:func:`~mstcrypt.protocols.tlcp.profiles.retry_for`), connect once more with
        that form; ``on_retry`` is told why and ``.retry`` keeps it."""
        done: FormRetry | None = None
        while True:
            sock = socket.create_connection(address, timeout=timeout)
            conn = None
            try:
                conn = TLCPClient(context, server_name=server_name, session=session, now=now)
                s = cls(sock, conn)
                s.do_handshake()
            except (TLCPError, OSError) as exc:
                sock.close()
                again = None
                if (
                    retry
                    and done is None
                    and conn is not None
                    and not isinstance(exc, TimeoutError)
                ):
                    again = retry_for(conn, context)
                if again is None:
                    raise
                if on_retry is not None:
                    on_retry(again)
                done, context = again, again.context
                continue
            except BaseException:
                sock.close()
                raise
            s.retry = done
            return s

    @classmethod
    def accept(
        cls, sock: socket.socket, context: TLCPContext, *, now: datetime | None = None
    ) -> TLCPSocket:
        """Run the server handshake on an accepted socket."""
        s = cls(sock, TLCPServer(context, now=now))
        s.do_handshake()
        return s

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def _pump(self) -> None:
        """Read once from the socket and process what arrived."""
        self._flush()
        data = self.sock.recv(RECV_SIZE)
        if not data:
            self._eof = True
            if not self.conn.handshake_complete:
                raise TLCPError(
                    AlertDescription.HANDSHAKE_FAILURE,
                    "peer closed the TCP connection during the handshake",
                    received=True,
                )
            return
        try:
            events = self.conn.receive_data(data)
        except TLCPError:
            with contextlib.suppress(OSError):
                self._flush()
            raise
        for ev in events:
            if isinstance(ev, HandshakeComplete):
                self.handshake = ev
            elif isinstance(ev, ApplicationData):
                self._plain += ev.data
            elif isinstance(ev, AlertReceived):
                self.alerts.append(ev)
            elif isinstance(ev, ConnectionClosed):
                self._eof = True
                if ev.alert != AlertDescription.CLOSE_NOTIFY:
                    self._flush()
                    known = isinstance(ev.alert, AlertDescription)
                    raise TLCPError(
                        ev.alert if known else AlertDescription.HANDSHAKE_FAILURE,
                        "peer sent a fatal alert" + ("" if known else f" ({ev.alert})"),
                        received=True,
                    )
        if self.conn.closed:
            # Our close_notify answer to the peer's: the peer may be gone already.
            with contextlib.suppress(OSError):
                self._flush()
        else:
            self._flush()

    @property
    def buffered(self) -> int:
        """Bytes of application data received and not read yet."""
        return len(self._plain)

    def do_handshake(self) -> HandshakeComplete:
        while self.handshake is None:
            if self._eof:
                raise TLCPError(
                    AlertDescription.HANDSHAKE_FAILURE, "connection closed during handshake"
                )
            self._pump()
        return self.handshake

    def sendall(self, data: bytes) -> None:
        if self.handshake is None:
            raise PolicyError("handshake not complete")
        self.conn.send_application_data(data)
        self._flush()

    def recv(self, maximum: int = RECV_SIZE) -> bytes:
        """Up to ``maximum`` bytes of application data; b"" at the end of the stream."""
        while not self._plain and not self._eof:
            self._pump()
        out = bytes(self._plain[:maximum])
        del self._plain[:maximum]
        return out

    def recv_exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.recv(n - len(out))
            if not chunk:
                raise TLCPError(AlertDescription.CLOSE_NOTIFY, "stream ended early", received=True)
            out += chunk
        return bytes(out)

    def close(self) -> None:
        """Send close_notify and close the socket."""
        try:
            self.conn.close()
            self._flush()
        except OSError:
            pass
        finally:
            self.sock.close()

    def __enter__(self) -> TLCPSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
