"""What the three WAI roles share: sequence numbers, replay checks, retransmission."""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from typing import Any

from mstcrypt.protocols.wai import messages as m
from mstcrypt.protocols.wai.constants import NONCE_SIZE
from mstcrypt.protocols.wai.errors import (
    WaiDecodeError,
    WaiReplayError,
    WaiStateError,
    WaiVerifyError,
)
from mstcrypt.protocols.wai.events import AuthenticationFailed, Event, Outgoing, PacketDropped
from mstcrypt.protocols.wai.suites import CertInfo, Signer, cert_info

__all__ = ["Credential", "Link", "State"]


class State(enum.Enum):
    IDLE = "idle"
    WAIT_ACCESS_REQUEST = "wait_access_request"
    WAIT_CERT_RESPONSE = "wait_cert_response"
    WAIT_ACCESS_RESPONSE = "wait_access_response"
    WAIT_USK_REQUEST = "wait_usk_request"
    WAIT_USK_RESPONSE = "wait_usk_response"
    WAIT_USK_CONFIRM = "wait_usk_confirm"
    WAIT_MSK_ANNOUNCE = "wait_msk_announce"
    WAIT_MSK_RESPONSE = "wait_msk_response"
    ESTABLISHED = "established"
    FAILED = "failed"


@dataclass(frozen=True)
class Credential:
    """A certificate (DER) and the signer of its private key."""

    cert_der: bytes
    signer: Signer

    @property
    def info(self) -> CertInfo:
        return cert_info(self.cert_der)

    def __repr__(self) -> str:
        return f"Credential({len(self.cert_der)}-byte certificate)"


def random_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


class Link:
    """One direction pair with a peer: outgoing sequence numbers, the last accepted
    incoming one, and the last packet sent (kept for retransmission)."""

    def __init__(self, name: str, *, timeout: float, retries: int) -> None:
        self.name = name
        self.tx_seq = 0
        self.rx_seq = 0
        self.last_rx: bytes | None = None
        self.pending: bytes | None = None  # awaiting an answer: retransmit on timeout
        self.last_tx: bytes | None = None
        self.answer: bytes | None = None  # what we sent in reply to last_rx, if anything
        self._first: bytes | None = None
        self._marking = False
        self.deadline: float | None = None
        self.tries = 0
        self.timeout = timeout
        self.retries = retries

    def build(self, msg: m.Message, now: float, *, expect_answer: bool) -> Outgoing:
        self.tx_seq = self.tx_seq % 0xFFFF + 1
        pkt = m.encode_packet(msg, self.tx_seq)
        self.last_tx = pkt
        if self._marking and self._first is None:
            self._first = pkt
        if expect_answer:
            self.pending = pkt
            self.deadline = now + self.timeout
            self.tries = 0
        return Outgoing(self.name, pkt)

    def answered(self) -> None:
        self.pending = None
        self.deadline = None

    def accept(self, packet: bytes) -> tuple[m.Header, m.Message] | None:
        """Decode and check the sequence number. A verbatim repeat of the last accepted
        packet returns None (the caller resends its last answer); any other old or equal
        sequence number is a replay."""
        h, msg = m.decode_packet(packet)
        if self.last_rx is not None and packet == self.last_rx:
            return None
        if h.seq <= self.rx_seq and not (self.rx_seq > 0xFF00 and h.seq < 0x100):
            raise WaiReplayError(f"WAI packet from {self.name} replayed or reordered (seq {h.seq})")
        return h, msg

    def mark(self) -> None:
        """Start noting the first packet sent: the direct answer to the packet at hand."""
        self._first, self._marking = None, True

    def commit(self, h: m.Header, packet: bytes) -> None:
        self.rx_seq = h.seq
        self.last_rx = packet
        self.answer, self._first, self._marking = self._first, None, False


class Endpoint:
    """Common event queue, outgoing queue, timers and failure handling."""

    state: State

    def __init__(self) -> None:
        self._out: list[Outgoing] = []
        self._links: dict[str, Link] = {}
        self.state = State.IDLE

    def data_to_send(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out

    def next_timer(self) -> float | None:
        ds = [lk.deadline for lk in self._links.values() if lk.deadline is not None]
        return min(ds) if ds else None

    def handle_timer(self, now: float) -> list[Event]:
        events: list[Event] = []
        for lk in self._links.values():
            if lk.deadline is None or now < lk.deadline or lk.pending is None:
                continue
            if lk.tries >= lk.retries:
                lk.answered()
                events += self._fail(f"no answer from {lk.name} after {lk.retries} retransmissions")
                continue
            lk.tries += 1
            lk.deadline = now + lk.timeout
            self._out.append(Outgoing(lk.name, lk.pending))
        return events

    def _fail(self, reason: str, **kw: Any) -> list[Event]:
        self.state = State.FAILED
        for lk in self._links.values():
            lk.answered()
        return [AuthenticationFailed(reason, **kw)]

    def _receive(self, link: str, packet: bytes, now: float) -> list[Event]:
        lk = self._links[link]
        try:
            got = lk.accept(packet)
        except (WaiDecodeError, WaiReplayError) as e:
            return [PacketDropped(str(e))]
        if got is None:
            # the peer did not get our answer: send it again (only an answer to that
            # very packet; nothing when we answered elsewhere or not yet)
            if lk.answer is not None:
                self._out.append(Outgoing(lk.name, lk.answer))
                return [PacketDropped(f"duplicate from {link}: answer resent")]
            return [PacketDropped(f"duplicate from {link}")]
        h, msg = got
        handler = self._handlers().get(type(msg))
        if handler is None:
            return [PacketDropped(f"{type(msg).__name__} not handled by this role")]
        lk.mark()
        try:
            events = handler(msg, now)
        except (WaiStateError, WaiVerifyError, WaiDecodeError) as e:
            # discarded without a state change: a wrong-state packet, a bad MIC or a
            # value that does not match (failures that end the session call _fail)
            lk._marking = False
            return [PacketDropped(str(e))]
        lk.commit(h, packet)
        return events

    def _handlers(self) -> dict[type, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _expect(self, *states: State) -> None:
        if self.state not in states:
            raise WaiStateError(f"unexpected packet in state {self.state.value}")
