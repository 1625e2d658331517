"""Voice media without sockets: G.711 µ-law (ITU-T G.711, written here with lookup
tables), RTP packetisation (RFC 3550, payload type 0 PCMU, 8 kHz, 20 ms frames), a
receive buffer that places frames by RTP timestamp (so loss, reordering and duplicates
leave gaps or are ignored rather than shifting the audio), and 8 kHz mono WAV I/O."""

from __future__ import annotations

import array
import sys
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from mstcrypt.apps.voice.errors import CallFormatError
from mstcrypt.protocols.srtp import rtp_header_length

__all__ = [
    "FRAME_SAMPLES",
    "PT_PCMU",
    "SAMPLE_RATE",
    "Depacketizer",
    "Packetizer",
    "SenderReport",
    "mulaw_decode",
    "mulaw_encode",
    "parse_rtcp",
    "read_wav",
    "rtcp_bye",
    "rtcp_sender_report",
    "write_wav",
]

SAMPLE_RATE: Final = 8000
FRAME_SAMPLES: Final = 160  # 20 ms
PT_PCMU: Final = 0
_BIAS: Final = 0x84


def _encode_one(sample: int) -> int:
    """One 16-bit sample to µ-law, on the 14-bit magnitude scale of G.711's reference
    code (the sample is shifted arithmetically first, so -1 encodes like -4)."""
    v = sample >> 2
    if v < 0:
        v, mask = -v, 0x7F
    else:
        mask = 0xFF
    v = min(v, 8159) + 0x21
    seg = 0
    while seg < 8 and v > (0x40 << seg) - 1:
        seg += 1
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((v >> (seg + 1)) & 0x0F)) ^ mask


def _decode_one(byte: int) -> int:
    u = ~byte & 0xFF
    t = (((u & 0x0F) << 3) + _BIAS) << ((u & 0x70) >> 4)
    return _BIAS - t if u & 0x80 else t - _BIAS


_ENC: Final = bytes(_encode_one(s - 65536 if s >= 32768 else s) for s in range(65536))
_DEC: Final = array.array("h", (_decode_one(b) for b in range(256)))


def _samples(pcm: bytes) -> array.array[int]:
    if len(pcm) % 2:
        raise CallFormatError("16-bit PCM must have an even number of bytes")
    a = array.array("H")
    a.frombytes(pcm)
    if sys.byteorder != "little":
        a.byteswap()
    return a


def mulaw_encode(pcm: bytes) -> bytes:
    """16-bit little-endian signed PCM → G.711 µ-law, one byte per sample."""
    enc = _ENC
    return bytes(enc[s] for s in _samples(pcm))


def mulaw_decode(data: bytes) -> bytes:
    """G.711 µ-law → 16-bit little-endian signed PCM."""
    dec = _DEC
    out = array.array("h", (dec[b] for b in data))
    if sys.byteorder != "little":
        out.byteswap()
    return out.tobytes()


@dataclass
class Packetizer:
    """RTP packets of 20 ms PCMU frames for one SSRC; sequence and timestamp start at
    random values (RFC 3550 §5.1) unless given."""

    ssrc: int
    seq: int = 0
    timestamp: int = 0
    payload_type: int = PT_PCMU

    def packet(self, payload: bytes, *, marker: bool = False) -> bytes:
        hdr = bytes([0x80, (0x80 if marker else 0) | self.payload_type])
        hdr += self.seq.to_bytes(2, "big") + self.timestamp.to_bytes(4, "big")
        hdr += self.ssrc.to_bytes(4, "big")
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + len(payload)) & 0xFFFFFFFF
        return hdr + payload

    def packets(self, pcm: bytes) -> list[bytes]:
        """The whole PCM signal as consecutive 20 ms packets (the last one padded)."""
        ulaw = mulaw_encode(pcm)
        frames = [ulaw[i : i + FRAME_SAMPLES] for i in range(0, len(ulaw), FRAME_SAMPLES)]
        if frames and len(frames[-1]) < FRAME_SAMPLES:
            frames[-1] = frames[-1].ljust(FRAME_SAMPLES, b"\xff")  # µ-law silence
        return [self.packet(f, marker=(i == 0)) for i, f in enumerate(frames)]


@dataclass
class Depacketizer:
    """Collects decrypted RTP packets of one SSRC and rebuilds the signal on the RTP
    timestamp axis: a lost frame stays silent, a duplicate is ignored, a late frame
    lands where it belongs. Payload types other than PCMU are counted and skipped."""

    ssrc: int
    max_seconds: int = 3600
    frames: dict[int, bytes] = field(default_factory=dict)
    duplicates: int = 0
    foreign: int = 0
    _base: int | None = None

    def add(self, rtp: bytes) -> None:
        hlen = rtp_header_length(rtp)
        if int.from_bytes(rtp[8:12], "big") != self.ssrc or rtp[1] & 0x7F != PT_PCMU:
            self.foreign += 1
            return
        payload = rtp[hlen:]
        if rtp[0] & 0x20 and payload:  # RTP padding
            payload = payload[: -payload[-1]] if payload[-1] <= len(payload) else b""
        ts = int.from_bytes(rtp[4:8], "big")
        if self._base is None:
            self._base = ts
        offset = (ts - self._base) & 0xFFFFFFFF
        if offset >= 1 << 31:  # earlier than the first packet seen: re-base
            shift = (self._base - ts) & 0xFFFFFFFF
            self.frames = {k + shift: v for k, v in self.frames.items()}
            self._base, offset = ts, 0
        if offset > self.max_seconds * SAMPLE_RATE:
            self.foreign += 1
            return
        if offset in self.frames:
            self.duplicates += 1
            return
        self.frames[offset] = payload

    def pcm(self) -> bytes:
        """The received signal as 16-bit PCM, silence where frames are missing."""
        if not self.frames:
            return b""
        end = max(k + len(v) for k, v in self.frames.items())
        ulaw = bytearray(b"\xff" * end)
        for k, v in self.frames.items():
            ulaw[k : k + len(v)] = v
        return mulaw_decode(bytes(ulaw))


def read_wav(path: str | Path) -> bytes:
    """A mono 16-bit WAV as PCM at 8 kHz (other rates are resampled linearly; stereo is
    mixed down). CallFormatError for anything else."""
    try:
        with wave.open(str(path), "rb") as w:
            ch, width, rate, n = (
                w.getnchannels(),
                w.getsampwidth(),
                w.getframerate(),
                w.getnframes(),
            )
            raw = w.readframes(n)
    except (wave.Error, EOFError) as exc:
        raise CallFormatError(f"not a PCM WAV file: {exc}") from None
    if width != 2 or ch not in (1, 2) or not 4000 <= rate <= 192000:
        raise CallFormatError("expected 16-bit PCM WAV, mono or stereo, 4..192 kHz")
    s = _samples(raw)
    signed = array.array("h", s.tobytes())
    if ch == 2:
        signed = array.array(
            "h", ((signed[i] + signed[i + 1]) // 2 for i in range(0, len(signed) - 1, 2))
        )
    if rate != SAMPLE_RATE:
        step = rate / SAMPLE_RATE
        n_out = int(len(signed) / step)
        out = array.array("h")
        for i in range(n_out):
            x = i * step
            j = int(x)
            f = x - j
            a = signed[j]
            b = signed[j + 1] if j + 1 < len(signed) else a
            out.append(int(a + (b - a) * f))
        signed = out
    if sys.byteorder != "little":
        signed.byteswap()
    return signed.tobytes()


def write_wav(path: str | Path, pcm: bytes, rate: int = SAMPLE_RATE) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


# --- RTCP (RFC 3550 §6.4.1 SR, §6.6 BYE) ------------------------------------------------

_NTP_EPOCH = 2208988800  # seconds from 1900-01-01 to 1970-01-01


@dataclass(frozen=True)
class SenderReport:
    ssrc: int
    ntp: int
    rtp_timestamp: int
    packets: int
    octets: int


def rtcp_sender_report(ssrc: int, now: float, rtp_timestamp: int, packets: int,
                       octets: int) -> bytes:  # fmt: skip
    """An SR without report blocks (28 bytes): what this sender has sent so far."""
    ntp = (int(now) + _NTP_EPOCH) << 32 | int((now % 1) * (1 << 32))
    body = ssrc.to_bytes(4, "big") + (ntp & (1 << 64) - 1).to_bytes(8, "big")
    body += (rtp_timestamp & 0xFFFFFFFF).to_bytes(4, "big")
    body += (packets & 0xFFFFFFFF).to_bytes(4, "big") + (octets & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes([0x80, 200]) + (len(body) // 4).to_bytes(2, "big") + body


def rtcp_bye(ssrc: int) -> bytes:
    return bytes([0x81, 203, 0, 1]) + ssrc.to_bytes(4, "big")


def parse_rtcp(packet: bytes) -> tuple[list[SenderReport], set[int]]:
    """The sender reports and the SSRCs saying BYE in a (decrypted, length-checked)
    compound RTCP packet; other packet types are skipped."""
    reports: list[SenderReport] = []
    byes: set[int] = set()
    off = 0
    while off + 4 <= len(packet):
        count, pt = packet[off] & 0x1F, packet[off + 1]
        end = off + 4 + 4 * int.from_bytes(packet[off + 2 : off + 4], "big")
        if end > len(packet):
            raise CallFormatError("RTCP length runs past the end")
        if pt == 200 and end - off >= 28:
            f = [int.from_bytes(packet[off + i : off + i + n], "big")
                 for i, n in ((4, 4), (8, 8), (16, 4), (20, 4), (24, 4))]  # fmt: skip
            reports.append(SenderReport(*f))
        elif pt == 203:
            for i in range(count):
                if off + 8 + 4 * i <= end:
                    byes.add(int.from_bytes(packet[off + 4 + 4 * i : off + 8 + 4 * i], "big"))
        off = end
    return reports, byes
