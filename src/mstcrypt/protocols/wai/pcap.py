"""Ethernet framing of WAI packets and a minimal pcap (libpcap, LINKTYPE_ETHERNET)
reader/writer over bytes, so captures can be handed to Wireshark/tshark."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from mstcrypt.protocols.wai.constants import ETHERTYPE_WAI
from mstcrypt.protocols.wai.errors import WaiDecodeError

__all__ = ["ethernet_frame", "parse_ethernet", "read_pcap", "write_pcap"]

_MAGIC = 0xA1B2C3D4
_LINKTYPE_ETHERNET = 1
_SNAPLEN = 262144


def ethernet_frame(dst: bytes, src: bytes, payload: bytes, ethertype: int = ETHERTYPE_WAI) -> bytes:
    if len(dst) != 6 or len(src) != 6:
        raise WaiDecodeError("MAC addresses must be 6 bytes")
    return dst + src + struct.pack(">H", ethertype) + payload


def parse_ethernet(frame: bytes) -> tuple[bytes, bytes, int, bytes]:
    """(dst, src, ethertype, payload); no VLAN tags."""
    if len(frame) < 14:
        raise WaiDecodeError("Ethernet frame shorter than its header")
    return frame[0:6], frame[6:12], struct.unpack(">H", frame[12:14])[0], frame[14:]


def write_pcap(frames: Iterable[tuple[float, bytes]]) -> bytes:
    """A pcap file of (timestamp, Ethernet frame) records."""
    out = [struct.pack("<IHHiIII", _MAGIC, 2, 4, 0, 0, _SNAPLEN, _LINKTYPE_ETHERNET)]
    for ts, frame in frames:
        sec = int(ts)
        usec = min(999_999, round((ts - sec) * 1_000_000))
        out.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    return b"".join(out)


def read_pcap(data: bytes) -> Iterator[tuple[float, bytes]]:
    """(timestamp, frame) of a little- or big-endian microsecond pcap of Ethernet frames."""
    if len(data) < 24:
        raise WaiDecodeError("pcap: truncated global header")
    magic = struct.unpack("<I", data[:4])[0]
    if magic == _MAGIC:
        e = "<"
    elif magic == 0xD4C3B2A1:
        e = ">"
    else:
        raise WaiDecodeError("pcap: not a microsecond libpcap file")
    linktype = struct.unpack(e + "I", data[20:24])[0]
    if linktype != _LINKTYPE_ETHERNET:
        raise WaiDecodeError(f"pcap: link type {linktype}, expected Ethernet (1)")
    pos = 24
    while pos < len(data):
        if pos + 16 > len(data):
            raise WaiDecodeError("pcap: truncated record header")
        sec, usec, incl, _orig = struct.unpack(e + "IIII", data[pos : pos + 16])
        pos += 16
        if incl > _SNAPLEN or pos + incl > len(data):
            raise WaiDecodeError("pcap: truncated or oversized record")
        yield sec + usec / 1_000_000, data[pos : pos + incl]
        pos += incl
