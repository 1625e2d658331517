"""Events the WAI state machines report, and what they ask to send."""

from __future__ import annotations

from dataclasses import dataclass, field

from mstcrypt.protocols.wai.constants import AccessResult, VerifyResult

__all__ = [
    "Associated",
    "AuthenticationFailed",
    "Event",
    "MulticastKeyInstalled",
    "Outgoing",
    "PacketDropped",
    "UnicastKeyInstalled",
]


class Event:
    """Base of the events."""


@dataclass(frozen=True)
class Outgoing:
    """A whole WAI packet for ``to``: "ae", "asue" or "asu" (fragment it for the link)."""

    to: str
    packet: bytes


@dataclass(frozen=True)
class UnicastKeyInstalled(Event):
    """A USKSA: install UEK/UCK under ``uskid`` for WPI (keys never printed)."""

    uskid: int
    uek: bytes = field(repr=False)
    uck: bytes = field(repr=False)
    rekey: bool = False


@dataclass(frozen=True)
class MulticastKeyInstalled(Event):
    """An MSKSA: MEK/MCK under ``mskid``; ``data_pn`` the first multicast PN."""

    mskid: int
    mek: bytes = field(repr=False)
    mck: bytes = field(repr=False)
    data_pn: int = 0


@dataclass(frozen=True)
class Associated(Event):
    """Authentication and both key negotiations completed; the port may open."""

    peer_identity: bytes = field(repr=False)


@dataclass(frozen=True)
class AuthenticationFailed(Event):
    reason: str
    access_result: AccessResult | None = None
    asue_result: VerifyResult | None = None
    ae_result: VerifyResult | None = None


@dataclass(frozen=True)
class PacketDropped(Event):
    """A packet was discarded without changing state (replay, bad MIC, wrong state)."""

    reason: str
