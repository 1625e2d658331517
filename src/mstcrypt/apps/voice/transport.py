"""asyncio UDP for voice media: :class:`MediaEndpoint` sends a call's SRTP (paced at
20 ms) and receives, decrypts and buffers the peer's; :class:`UdpRelay` forwards one
direction of a call with injected loss, reordering, duplication and replay, seeded so a
test is reproducible. Both are thin adapters over the sans-IO SRTP contexts and
:mod:`.media`."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from mstcrypt.apps.voice.keyagree import CallKeys
from mstcrypt.apps.voice.media import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    Depacketizer,
    Packetizer,
    SenderReport,
    parse_rtcp,
    rtcp_bye,
    rtcp_sender_report,
)
from mstcrypt.errors import MstCryptError, PolicyError
from mstcrypt.protocols.srtp import SrtpError

__all__ = ["MediaEndpoint", "RelayStats", "UdpRelay", "write_pcap"]

Addr = tuple[str, int]


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, on_packet: Any) -> None:
        self.on_packet = on_packet

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.on_packet(data, addr)


class MediaEndpoint:
    """One terminal's media socket for one call. ``start()`` binds (before the keys
    exist, so the address can go into signalling); ``set_keys`` arms it once the key
    agreement has finished, and packets that arrived earlier (at most 64) are then
    processed. ``send(pcm, peer)`` streams a 16-bit 8 kHz signal as SRTP at real-time
    pace (``pace`` scales it). Received packets from any address are unprotected —
    forged, replayed, malformed and foreign packets are dropped and counted in
    ``rx.stats`` — and buffered in :attr:`received`."""

    EARLY_MAX = 64

    def __init__(
        self, keys: CallKeys | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.host, self.port = host, port
        self.packets_in = 0
        #: the peer's latest RTCP sender report, and whether it said BYE
        self.remote_report: SenderReport | None = None
        self.remote_bye = False
        self._early: list[bytes] = []
        self._transport: asyncio.DatagramTransport | None = None
        self.keys: CallKeys | None = None
        if keys is not None:
            self.set_keys(keys)

    def set_keys(self, keys: CallKeys) -> None:
        if self.keys is not None:
            raise PolicyError("the media endpoint already has its keys")
        self.keys = keys
        self.tx, self.rx = keys.contexts()
        self.sent_packets = self.sent_octets = 0
        self.received = Depacketizer(keys.remote_ssrc)
        rng = random.SystemRandom()
        #: this side's RTP numbering (random start, RFC 3550 §5.1), continued across sends
        self.packetizer = Packetizer(keys.local_ssrc, rng.getrandbits(16), rng.getrandbits(32))
        early, self._early = self._early, []
        for data in early:
            self._receive(data)

    async def start(self) -> Addr:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Proto(self._on_packet), local_addr=(self.host, self.port)
        )
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("sockname")
        self.host, self.port = sock[0], sock[1]
        return self.host, self.port

    def _on_packet(self, data: bytes, addr: Addr) -> None:
        self.packets_in += 1
        if self.keys is None:
            if len(self._early) < self.EARLY_MAX:
                self._early.append(data)
            return
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        if len(data) >= 2 and 192 <= data[1] <= 223:  # RTCP on the RTP port (RFC 5761 §4)
            try:
                reports, byes = parse_rtcp(self.rx.unprotect_rtcp(data))
            except MstCryptError:
                return  # counted in self.rx.stats (SRTCP) or malformed
            for r in reports:
                if r.ssrc == self.received.ssrc:
                    self.remote_report = r
            if self.received.ssrc in byes:
                self.remote_bye = True
            return
        try:
            rtp = self.rx.unprotect(data)
        except SrtpError:
            return  # counted in self.rx.stats; the call goes on
        try:
            self.received.add(rtp)
        except MstCryptError:
            return

    async def send(self, pcm: bytes, peer: Addr, *, pace: float = 1.0) -> int:
        """Send ``pcm`` to ``peer``; returns the number of packets sent."""
        if self._transport is None or self.keys is None:
            raise PolicyError("start() and set_keys() before sending")
        pk = self.packetizer
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        frame = FRAME_SAMPLES / SAMPLE_RATE * pace
        n = 0
        for i, pkt in enumerate(pk.packets(pcm)):
            self._transport.sendto(self.tx.protect(pkt), peer)
            n += 1
            self.sent_packets += 1
            self.sent_octets += len(pkt) - 12
            if n % 250 == 0:  # an SR every 5 s of audio
                self._transport.sendto(self.tx.protect_rtcp(self._sr()), peer)
            delay = t0 + (i + 1) * frame - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        self._transport.sendto(self.tx.protect_rtcp(self._sr()), peer)
        return n

    def _sr(self) -> bytes:
        pk = self.packetizer
        return rtcp_sender_report(pk.ssrc, time.time(), pk.timestamp, self.sent_packets,
                                  self.sent_octets)  # fmt: skip

    def send_bye(self, peer: Addr) -> None:
        """RTCP SR + BYE: this side stops sending."""
        if self._transport is not None and self.keys is not None:
            pkt = self._sr() + rtcp_bye(self.packetizer.ssrc)
            self._transport.sendto(self.tx.protect_rtcp(pkt), peer)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


@dataclass
class RelayStats:
    forwarded: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    replayed: int = 0
    seen: list[bytes] = field(default_factory=list, repr=False)


class UdpRelay:
    """Forwards datagrams received on its socket to ``target`` with impairments:
    ``loss`` (probability a packet is dropped), ``duplicate`` (sent twice),
    ``reorder`` (held back behind the next one), ``replay`` (an old packet, already
    delivered, is sent again later). ``record`` keeps every packet seen (a capture)."""

    def __init__(
        self,
        target: Addr,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        replay: float = 0.0,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = False,
    ) -> None:
        for v in (loss, duplicate, reorder, replay):
            if not 0.0 <= v <= 1.0:
                raise PolicyError("impairment probabilities lie in [0, 1]")
        self.target = target
        self.loss, self.duplicate, self.reorder, self.replay = loss, duplicate, reorder, replay
        self.rng = random.Random(seed)  # noqa: S311 - network simulation, not crypto
        self.host, self.port = host, port
        self.record = record
        self.stats = RelayStats()
        self._held: bytes | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self.address: Addr | None = None

    async def start(self) -> Addr:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Proto(self._on_packet), local_addr=(self.host, self.port)
        )
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("sockname")
        self.address = (sock[0], sock[1])
        return self.address

    def _send(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.sendto(data, self.target)
        self.stats.forwarded += 1

    def _on_packet(self, data: bytes, addr: Addr) -> None:
        st, rng = self.stats, self.rng
        if self.record:
            st.seen.append(data)
        if rng.random() < self.loss:
            st.dropped += 1
            return
        if self._held is not None:
            self._send(data)
            self._send(self._held)
            self._held = None
        elif rng.random() < self.reorder:
            self._held = data
            st.reordered += 1
            return
        else:
            self._send(data)
        if rng.random() < self.duplicate:
            self._send(data)
            st.duplicated += 1
        if st.seen and rng.random() < self.replay:
            self._send(rng.choice(st.seen[-200:-1] or st.seen))
            st.replayed += 1
        if not self.record and self.replay:
            st.seen.append(data)
            del st.seen[:-256]

    def close(self) -> None:
        if self._held is not None and self._transport is not None:
            self._send(self._held)
            self._held = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def write_pcap(
    path: str, packets: list[bytes], src: Addr, dst: Addr, *, start: float = 0.0
) -> None:
    """A classic pcap (link type Ethernet) of UDP datagrams from ``src`` to ``dst``
    (IPv4), 20 ms apart, for tshark/Wireshark. The Ethernet, IP and UDP headers are
    synthesised; the UDP payloads are the captured bytes."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    sip, dip = socket.inet_aton(src[0]), socket.inet_aton(dst[0])
    t0 = start or time.time()
    for i, p in enumerate(packets):
        udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(p), 0) + p
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                         sip, dip)  # fmt: skip
        frame = bytes(12) + b"\x08\x00" + ip + udp
        t = t0 + i * 0.02
        out.append(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)))
        out.append(frame)
    with open(path, "wb") as f:
        f.write(b"".join(out))
