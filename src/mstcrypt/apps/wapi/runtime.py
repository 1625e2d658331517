"""WAPI on real links: the three roles as blocking event loops over sockets.

* WAI packets travel as Ethernet frames with EtherType 0x88B4 (fragmented to the MTU,
  reassembled per sender) on an AF_PACKET socket bound to one interface (root needed);
* the AE reaches the ASU over UDP (one WAI packet per datagram, as deployed ASUs do);
* what 802.11 management frames do on the air (association with the WAPI IE) and the
  WPI-protected data frames ride on the IEEE local experimental EtherType 0x88B5:
  ``type(1) ‖ body`` with type 1 association request (body: the terminal's WAPI IE),
  2 association response (the AP's IE), 3 data (an 802.11 data frame, WPI body).

Data after association: the terminal sends a file as WPI frames (``ST`` chunks then
``EN`` with the SM3 of the whole) and/or echo requests (``PI``); the AP writes the file
and answers each with a protected ``OK`` + SM3 digest or ``PO`` echo.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mstcrypt.crypto.sm3 import SM3
from mstcrypt.errors import MstCryptError
from mstcrypt.protocols.wai import messages as m
from mstcrypt.protocols.wai import wpi
from mstcrypt.protocols.wai.constants import ETHERTYPE_WAI
from mstcrypt.protocols.wai.errors import WaiDecodeError, WaiError, WpiError
from mstcrypt.protocols.wai.events import (
    Associated,
    AuthenticationFailed,
    Event,
    MulticastKeyInstalled,
    PacketDropped,
    UnicastKeyInstalled,
)
from mstcrypt.protocols.wai.roles import AccessPoint, AeSession, Asu, Asue, State

__all__ = ["ETHERTYPE_LOCAL", "ApRunner", "AsuServer", "RawLink", "StaRunner", "WapiRunError"]

log = logging.getLogger("mstcrypt.wapi")

ETHERTYPE_LOCAL = 0x88B5
ASSOC_REQ, ASSOC_RESP, DATA = 1, 2, 3
BROADCAST = b"\xff" * 6
MTU = 1500
CHUNK = 1400


class WapiRunError(MstCryptError):
    """The role could not complete (authentication refused, timeout, link error)."""


class RawLink:
    """An AF_PACKET socket on one interface for our two EtherTypes."""

    def __init__(self, ifname: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind((ifname, 0))
        self.mac = self.sock.getsockname()[4][:6]
        self.reasm: dict[bytes, m.Reassembler] = {}

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, dst: bytes, ethertype: int, payload: bytes) -> None:
        self.sock.send(dst + self.mac + struct.pack(">H", ethertype) + payload)

    def send_wai(self, dst: bytes, packet: bytes) -> None:
        for frag in m.fragment(packet, MTU):
            self.send(dst, ETHERTYPE_WAI, frag)

    def recv(self) -> tuple[bytes, int, bytes] | None:
        """(source MAC, EtherType, payload) of one frame for us, else None. WAI frames
        come back only when a whole packet is reassembled."""
        frame = self.sock.recv(65535)
        if len(frame) < 14:
            return None
        dst, src, et = frame[0:6], frame[6:12], struct.unpack(">H", frame[12:14])[0]
        if src == self.mac or (dst != self.mac and dst != BROADCAST):
            return None
        payload = frame[14:]
        if et == ETHERTYPE_WAI:
            r = self.reasm.setdefault(src, m.Reassembler())
            if len(self.reasm) > 1024:  # bounded per-sender state
                self.reasm.clear()
            try:
                whole = r.feed(payload)
            except WaiDecodeError as e:
                log.info("WAI fragment from %s dropped: %s", src.hex(":"), e)
                return None
            return None if whole is None else (src, et, whole)
        if et == ETHERTYPE_LOCAL:
            return src, et, payload
        return None

    def close(self) -> None:
        self.sock.close()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise WapiRunError(f"address must be host:port, got {text!r}")
    return host, int(port)


# =============================================================================== ASU
class AsuServer:
    """Answers certificate authentication requests on UDP, ``rate`` per source per second."""

    def __init__(self, asu: Asu, listen: str, *, rate: float = 200.0) -> None:
        self.asu = asu
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(_addr(listen))
        self.rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}
        self.answered = 0

    def _allow(self, src: str, now: float) -> bool:
        tokens, last = self._buckets.get(src, (self.rate, now))
        tokens = min(self.rate, tokens + (now - last) * self.rate)
        if len(self._buckets) > 4096:
            self._buckets.clear()
        if tokens < 1:
            self._buckets[src] = (tokens, now)
            return False
        self._buckets[src] = (tokens - 1, now)
        return True

    def serve(self, *, stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            r, _, _ = select.select([self.sock], [], [], 0.5)
            if not r:
                continue
            data, src = self.sock.recvfrom(65535)
            if not self._allow(src[0], time.monotonic()):
                continue
            try:
                reply = self.asu.handle(data, datetime.now(UTC))
            except WaiError as e:
                log.info("ASU: request from %s refused: %s", src[0], e)
                continue
            self.sock.sendto(reply, src)
            self.answered += 1


# =============================================================================== data
def _dot11(fc1: int, a1: bytes, a2: bytes, a3: bytes, seq: int) -> wpi.Dot11Header:
    return wpi.Dot11Header(bytes([0x08, fc1]), a1, a2, a3, struct.pack("<H", (seq & 0xFFF) << 4))


@dataclass
class _Keys:
    tx: wpi.WpiSender | None = None
    rx: dict[int, wpi.WpiReceiver] = field(default_factory=dict)
    gtx: wpi.WpiSender | None = None
    grx: dict[int, wpi.WpiReceiver] = field(default_factory=dict)


# =============================================================================== AP
class ApRunner:
    """The access point: association, WAI for each terminal via the ASU, then WPI data."""

    def __init__(
        self,
        point: AccessPoint,
        link: RawLink,
        asu_addr: str,
        *,
        receive_dir: Path | None = None,
    ) -> None:
        self.point = point
        self.link = link
        self.asu_addr = _addr(asu_addr)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.keys: dict[bytes, _Keys] = {}
        self.receive_dir = receive_dir
        self._files: dict[bytes, tuple[SM3, bytearray]] = {}
        self._seq = 0
        self.associated: list[bytes] = []
        self.refused: list[tuple[bytes, str]] = []

    def _flush(self, sta: bytes, s: AeSession) -> None:
        for o in s.data_to_send():
            if o.to == "asu":
                self.udp.sendto(o.packet, self.asu_addr)
            else:
                self.link.send_wai(sta, o.packet)

    def _events(self, sta: bytes, events: list[Event]) -> None:
        k = self.keys.setdefault(sta, _Keys())
        for e in events:
            if isinstance(e, UnicastKeyInstalled):
                k.tx = wpi.WpiSender(e.uek, e.uck, e.uskid, unicast=True, from_ae=True)
                k.rx[e.uskid] = wpi.WpiReceiver(e.uek, e.uck, e.uskid, unicast=True, from_ae=False)
            elif isinstance(e, MulticastKeyInstalled):
                k.gtx = wpi.WpiSender(e.mek, e.mck, e.mskid, unicast=False, from_ae=True)
            elif isinstance(e, Associated):
                log.info("AP: terminal %s associated", sta.hex(":"))
                self.associated.append(sta)
            elif isinstance(e, AuthenticationFailed):
                log.info("AP: terminal %s refused: %s", sta.hex(":"), e.reason)
                self.refused.append((sta, e.reason))
            elif isinstance(e, PacketDropped):
                log.info("AP: packet from %s dropped: %s", sta.hex(":"), e.reason)

    def _send_data(self, sta: bytes, payload: bytes) -> None:
        k = self.keys[sta]
        assert k.tx is not None
        self._seq += 1
        frame = k.tx.protect(_dot11(0x02, sta, self.link.mac, self.link.mac, self._seq), payload)
        self.link.send(sta, ETHERTYPE_LOCAL, bytes([DATA]) + frame)

    def _on_data(self, sta: bytes, frame: bytes) -> None:
        s = self.point.sessions.get(sta)
        k = self.keys.get(sta)
        if s is None or k is None or s.state is not State.ESTABLISHED or len(frame) < 27:
            return  # port closed: no data before association
        rx = k.rx.get(frame[24])
        if rx is None:
            return
        try:
            _, data = rx.unprotect(frame)
        except WpiError as e:
            log.info("AP: WPI frame from %s dropped: %s", sta.hex(":"), e)
            return
        kind, body = data[:2], data[2:]
        if kind == b"PI":
            self._send_data(sta, b"PO" + body)
        elif kind == b"ST":
            h, buf = self._files.setdefault(sta, (SM3(), bytearray()))
            h.update(body)
            buf += body
        elif kind == b"EN":
            h, buf = self._files.pop(sta, (SM3(), bytearray()))
            digest = h.digest()
            ok = digest == body
            if ok and self.receive_dir is not None:
                (self.receive_dir / f"{sta.hex()}.bin").write_bytes(bytes(buf))
            self._send_data(sta, (b"OK" if ok else b"NO") + digest)

    def _on_frame(self, src: bytes, et: int, payload: bytes, now: float) -> None:
        if et == ETHERTYPE_WAI:
            s = self.point.sessions.get(src)
            if s is None:
                return
            self._events(src, s.receive(payload, now, source="asue"))
            self._flush(src, s)
            return
        if not payload:
            return
        if payload[0] == ASSOC_REQ:
            try:
                ie = m.WapiIE.decode(payload[1:])
                s = self.point.associate(src, ie, now)
            except WaiError as e:
                log.info("AP: association from %s refused: %s", src.hex(":"), e)
                return
            self.keys.pop(src, None)
            self.link.send(src, ETHERTYPE_LOCAL, bytes([ASSOC_RESP]) + self.point.ie.encode())
            self._flush(src, s)
        elif payload[0] == DATA:
            self._on_data(src, payload[1:])

    def _on_asu(self, data: bytes, now: float) -> None:
        try:
            h = m.Header.decode(data)
            _, msg = m.decode_packet(data)
        except WaiDecodeError:
            return
        if not isinstance(msg, m.CertAuthResponse) or h.subtype != m.Subtype.CERT_AUTH_RESPONSE:
            return
        sta = msg.addid[6:]
        s = self.point.sessions.get(sta)
        if s is None:
            return
        self._events(sta, s.receive(data, now, source="asu"))
        self._flush(sta, s)

    def serve(self, *, stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            now = time.monotonic()
            timers = [
                t for t in (s.next_timer() for s in self.point.sessions.values()) if t is not None
            ]
            if self.point.next_timer() is not None:
                timers.append(self.point.next_timer())  # type: ignore[arg-type]
            wait = max(0.0, min([*timers, now + 0.5]) - now)
            r, _, _ = select.select([self.link, self.udp], [], [], wait)
            now = time.monotonic()
            if self.link in r:
                got = self.link.recv()
                if got is not None:
                    self._on_frame(*got, now)
            if self.udp in r:
                data, _ = self.udp.recvfrom(65535)
                self._on_asu(data, now)
            for sta, s in list(self.point.sessions.items()):
                t = s.next_timer()
                if t is not None and now >= t:
                    self._events(sta, s.handle_timer(now))
                    self._flush(sta, s)
            for o in self.point.handle_timer(now):  # multicast rekey
                self.link.send_wai(bytes.fromhex(o.to), o.packet)


# =============================================================================== STA
class StaRunner:
    """The terminal: associate, authenticate, then move data over WPI."""

    def __init__(self, make_asue: Callable[[bytes], Asue], link: RawLink, ie: m.WapiIE) -> None:
        self.make_asue = make_asue
        self.link = link
        self.ie = ie
        self.asue: Asue | None = None
        self.ap: bytes | None = None
        self.keys = _Keys()
        self._seq = 0
        self.failure: str | None = None
        self.associated = False

    def _events(self, events: list[Event]) -> None:
        for e in events:
            if isinstance(e, UnicastKeyInstalled):
                self.keys.tx = wpi.WpiSender(e.uek, e.uck, e.uskid, unicast=True, from_ae=False)
                self.keys.rx[e.uskid] = wpi.WpiReceiver(
                    e.uek, e.uck, e.uskid, unicast=True, from_ae=True
                )
            elif isinstance(e, MulticastKeyInstalled):
                self.keys.grx[e.mskid] = wpi.WpiReceiver(
                    e.mek, e.mck, e.mskid, unicast=False, from_ae=True
                )
            elif isinstance(e, Associated):
                self.associated = True
            elif isinstance(e, AuthenticationFailed):
                self.failure = e.reason
            elif isinstance(e, PacketDropped):
                log.info("STA: packet dropped: %s", e.reason)

    def _flush(self) -> None:
        assert self.asue is not None and self.ap is not None
        for o in self.asue.data_to_send():
            self.link.send_wai(self.ap, o.packet)

    def _step(self, deadline: float) -> list[bytes]:
        """Wait for one frame (or a timer); return WPI payloads received."""
        now = time.monotonic()
        t = self.asue.next_timer() if self.asue is not None else None
        wait = max(0.0, min(deadline, t if t is not None else deadline) - now)
        r, _, _ = select.select([self.link], [], [], min(wait, 0.5))
        now = time.monotonic()
        out: list[bytes] = []
        if r:
            got = self.link.recv()
            if got is not None:
                out += self._on_frame(*got, now)
        if self.asue is not None:
            t = self.asue.next_timer()
            if t is not None and now >= t:
                self._events(self.asue.handle_timer(now))
                self._flush()
        return out

    def _on_frame(self, src: bytes, et: int, payload: bytes, now: float) -> list[bytes]:
        if et == ETHERTYPE_LOCAL and payload[:1] == bytes([ASSOC_RESP]) and self.asue is None:
            ap_ie = m.WapiIE.decode(payload[1:])
            if self.ie.akm_suites[0] not in ap_ie.akm_suites:
                self.failure = "the AP does not offer our suite"
                return []
            self.ap = src
            self.asue = self.make_asue(src)
            self._ap_ie = ap_ie
            return []
        if src != self.ap or self.asue is None:
            return []
        if et == ETHERTYPE_WAI:
            self._events(self.asue.receive(payload, now))
            self._flush()
            return []
        if payload[:1] == bytes([DATA]) and self.associated and len(payload) > 25:
            frame = payload[1:]
            rx = self.keys.rx.get(frame[24])
            if rx is None:
                return []
            try:
                return [rx.unprotect(frame)[1]]
            except WpiError as e:
                log.info("STA: WPI frame dropped: %s", e)
        return []

    def associate(self, *, timeout: float = 10.0, ap: bytes = BROADCAST) -> None:
        deadline = time.monotonic() + timeout
        next_request = 0.0
        while not self.associated:
            if self.failure is not None:
                raise WapiRunError(f"authentication failed: {self.failure}")
            now = time.monotonic()
            if now > deadline:
                raise WapiRunError("no association before the timeout")
            if self.asue is None and now >= next_request:  # the AP may not be up yet
                self.link.send(ap, ETHERTYPE_LOCAL, bytes([ASSOC_REQ]) + self.ie.encode())
                next_request = now + 1.0
            self._step(min(deadline, next_request) if self.asue is None else deadline)

    def send(self, payload: bytes) -> None:
        assert self.keys.tx is not None and self.ap is not None
        self._seq += 1
        frame = self.keys.tx.protect(
            _dot11(0x01, self.ap, self.link.mac, self.ap, self._seq), payload
        )
        self.link.send(self.ap, ETHERTYPE_LOCAL, bytes([DATA]) + frame)

    def _await(self, prefix: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for data in self._step(deadline):
                if data.startswith(prefix):
                    return data[len(prefix) :]
        raise WapiRunError(f"no {prefix.decode()} reply before the timeout")

    def ping(self, n: int, *, timeout: float = 5.0) -> list[float]:
        rtts = []
        for i in range(n):
            body = struct.pack(">I", i) + bytes(56)
            t0 = time.monotonic()
            self.send(b"PI" + body)
            if self._await(b"PO", timeout) != body:
                raise WapiRunError("echo reply differs from the request")
            rtts.append(time.monotonic() - t0)
        return rtts

    def send_file(self, data: bytes, *, timeout: float = 10.0) -> bytes:
        h = SM3()
        for i in range(0, len(data), CHUNK):
            chunk = data[i : i + CHUNK]
            h.update(chunk)
            self.send(b"ST" + chunk)
        digest = h.digest()
        self.send(b"EN" + digest)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for reply in self._step(deadline):
                if reply[:2] in (b"OK", b"NO"):
                    if reply != b"OK" + digest:
                        raise WapiRunError("the AP received a different file")
                    return digest
        raise WapiRunError("no acknowledgement of the file before the timeout")
