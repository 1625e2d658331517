"""Events returned by :meth:`TLCPClient.receive_data` / :meth:`TLCPServer.receive_data`."""

from __future__ import annotations

from dataclasses import dataclass

from mstcrypt.pki import Certificate
from mstcrypt.protocols.tlcp.constants import AlertDescription, AlertLevel, CipherSuite
from mstcrypt.protocols.tlcp.context import Session

__all__ = [
    "AlertReceived",
    "ApplicationData",
    "ConnectionClosed",
    "Event",
    "HandshakeComplete",
]


class Event:
    """Base class of TLCP events."""

    __slots__ = ()


@dataclass(frozen=True)
class HandshakeComplete(Event):
    """The handshake finished; application data may flow.

    ``peer_certificates`` are the peer's certificates as sent (signing, encryption, then
    CA certificates; empty for a server without client authentication). ``session`` is
    the session to resume later (None when the server gave no session ID).
    """

    peer_certificates: tuple[Certificate, ...]
    cipher_suite: CipherSuite
    session_id: bytes
    resumed: bool = False
    server_name: str | None = None
    session: Session | None = None


@dataclass(frozen=True)
class ApplicationData(Event):
    data: bytes

    def __repr__(self) -> str:
        return f"ApplicationData(<{len(self.data)} bytes>)"


@dataclass(frozen=True)
class AlertReceived(Event):
    """An alert from the peer. ``description`` is an :class:`AlertDescription` when
    known, else the raw number."""

    level: AlertLevel
    description: AlertDescription | int


@dataclass(frozen=True)
class ConnectionClosed(Event):
    """The peer closed the connection: with close_notify (``alert`` CLOSE_NOTIFY) or a
    fatal alert. Nothing more will be received."""

    alert: AlertDescription | int
    by_peer: bool = True
