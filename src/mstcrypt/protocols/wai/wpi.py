"""WPI data protection: SMS4 (SM4) OFB encryption and SMS4-CBC-MAC integrity.

An 802.11 data frame body protected by WPI is::

    KeyIdx(1) ‖ reserved(1)=0 ‖ PN(16, little-endian) ‖ SM4-OFB(EK, IV, data ‖ MIC(16))

* IV = the PN big-endian (the byte reverse of the PN field on the air).
* MIC = SM4-CBC-MAC(CK) with E(IV) as the first chaining block over
  input1 = the pseudo-header, zero-padded to 16, then input2 = the data, zero-padded:
  FC(2, subtype/retry/power-management/more-data cleared, protected set) ‖ A1 ‖ A2 ‖
  SeqCtl(2, fragment number only) ‖ A3 ‖ A4 (6 zero bytes) ‖ [QoS(2)] ‖ KeyIdx ‖
  reserved ‖ data length(2, big-endian).
* EK/CK = UEK/UCK for unicast frames, MEK/MCK for group-addressed frames.
* PN: a 128-bit counter starting at 0x5C365C36…5C36. Unicast: the AE sends odd PNs
  (start + 1) and the ASUE even ones (start), each stepping by 2; multicast steps by 1.
  A receiver takes only a PN greater than the last one it accepted under that key (and
  of the sender's parity for unicast); a sender refuses to wrap (rekey first).
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from mstcrypt.crypto import sm4
from mstcrypt.protocols.wai.errors import WpiDecodeError, WpiError, WpiMicError, WpiReplayError

__all__ = [
    "PN_START",
    "WPI_HEADER_SIZE",
    "WPI_MIC_SIZE",
    "Dot11Header",
    "WpiReceiver",
    "WpiSender",
    "pseudo_header",
    "wpi_mic",
]

PN_START = int.from_bytes(bytes.fromhex("5c36" * 8), "big")
PN_MAX = (1 << 128) - 1
WPI_HEADER_SIZE = 18
WPI_MIC_SIZE = 16
_ZERO = bytes(16)

FC_PROTECTED = 0x40  # second FC octet


@dataclass(frozen=True)
class Dot11Header:
    """The fields of an 802.11 data MAC header that WPI authenticates."""

    fc: bytes  # 2 bytes, as on the air
    addr1: bytes
    addr2: bytes
    addr3: bytes
    seq_ctl: bytes = b"\x00\x00"
    duration: bytes = b"\x00\x00"
    qos: bytes | None = None

    def encode(self) -> bytes:
        out = self.fc + self.duration + self.addr1 + self.addr2 + self.addr3 + self.seq_ctl
        return out + (self.qos or b"")

    @classmethod
    def decode(cls, data: bytes) -> tuple[Dot11Header, bytes]:
        """Split a data frame into its header and body (no address 4 supported)."""
        if len(data) < 24:
            raise WpiDecodeError("802.11 frame shorter than a data header")
        fc = data[0:2]
        if (fc[0] >> 2) & 0x3 != 2:
            raise WpiDecodeError("not an 802.11 data frame")
        if fc[1] & 0x03 == 0x03:
            raise WpiDecodeError("four-address frames are not supported")
        qos = None
        end = 24
        if fc[0] & 0x80:  # QoS data subtypes
            if len(data) < 26:
                raise WpiDecodeError("QoS data frame truncated")
            qos = data[24:26]
            end = 26
        return cls(fc, data[4:10], data[10:16], data[16:22], data[22:24], data[2:4], qos), data[
            end:
        ]


def pseudo_header(h: Dot11Header, key_idx: int, data_len: int) -> bytes:
    fc = bytes([h.fc[0] & ~0x70 & 0xFF, (h.fc[1] & ~0x38 & 0xFF) | FC_PROTECTED])
    seq = bytes([h.seq_ctl[0] & 0x0F, 0])
    out = fc + h.addr1 + h.addr2 + seq + h.addr3 + bytes(6)
    if h.qos is not None:
        out += h.qos
    return out + bytes([key_idx, 0]) + struct.pack(">H", data_len)


def _pad(b: bytes) -> bytes:
    return b + bytes(-len(b) % 16)


def wpi_mic(ck: bytes, pn: int, header: bytes, data: bytes) -> bytes:
    """SM4-CBC-MAC: chaining starts from E(IV); blocks = pad(header) ‖ pad(data)."""
    iv = pn.to_bytes(16, "big")
    return sm4.cbc_encrypt(ck, _ZERO, iv + _pad(header) + _pad(data), padding=False)[-16:]


def _check_key(key: bytes, what: str) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != 16:
        raise WpiError(f"{what} must be 16 bytes")
    return bytes(key)


class WpiSender:
    """Protects frames under one key (EK, CK) with its own PN sequence."""

    def __init__(self, ek: bytes, ck: bytes, key_idx: int, *, unicast: bool, from_ae: bool) -> None:
        self._ek = _check_key(ek, "WPI encryption key")
        self._ck = _check_key(ck, "WPI integrity key")
        if not 0 <= key_idx <= 1:
            raise WpiError("WPI key index must be 0 or 1")
        self.key_idx = key_idx
        self.step = 2 if unicast else 1
        self.pn = PN_START + (1 if unicast and from_ae else 0) - self.step

    def __repr__(self) -> str:
        return f"WpiSender(key_idx={self.key_idx}, step={self.step})"

    def protect_body(self, header: Dot11Header, data: bytes) -> bytes:
        if self.pn + self.step > PN_MAX:
            raise WpiError("WPI packet number exhausted: rekey before sending")
        if len(data) > 0xFFFF:
            raise WpiError("WPI data longer than 65535 bytes")
        self.pn += self.step
        pn = self.pn
        mic = wpi_mic(self._ck, pn, pseudo_header(header, self.key_idx, len(data)), data)
        ct = sm4.ofb(self._ek, pn.to_bytes(16, "big"), data + mic)
        return bytes([self.key_idx, 0]) + pn.to_bytes(16, "little") + ct

    def protect(self, header: Dot11Header, data: bytes) -> bytes:
        """The whole 802.11 frame: header (protected bit set) ‖ WPI body."""
        fc = bytes([header.fc[0], header.fc[1] | FC_PROTECTED])
        h = Dot11Header(
            fc,
            header.addr1,
            header.addr2,
            header.addr3,
            header.seq_ctl,
            header.duration,
            header.qos,
        )
        return h.encode() + self.protect_body(h, data)


class WpiReceiver:
    """Checks and decrypts frames under one key; refuses replays and wrong MICs."""

    def __init__(self, ek: bytes, ck: bytes, key_idx: int, *, unicast: bool, from_ae: bool) -> None:
        self._ek = _check_key(ek, "WPI encryption key")
        self._ck = _check_key(ck, "WPI integrity key")
        self.key_idx = key_idx
        self.unicast = unicast
        self.parity = (PN_START + (1 if from_ae else 0)) & 1
        self.last_pn = -1

    def __repr__(self) -> str:
        return f"WpiReceiver(key_idx={self.key_idx})"

    def unprotect_body(self, header: Dot11Header, body: bytes) -> bytes:
        if len(body) < WPI_HEADER_SIZE + WPI_MIC_SIZE:
            raise WpiDecodeError("WPI frame shorter than its header and MIC")
        if body[0] != self.key_idx:
            raise WpiDecodeError(f"WPI key index {body[0]} is not the installed key {self.key_idx}")
        if body[1] != 0:
            raise WpiDecodeError("WPI reserved octet is not zero")
        if not header.fc[1] & FC_PROTECTED:
            raise WpiDecodeError("802.11 protected bit is clear on a WPI frame")
        pn = int.from_bytes(body[2:18], "little")
        if self.unicast and pn & 1 != self.parity:
            raise WpiReplayError("WPI unicast PN has the wrong parity for its sender")
        if pn <= self.last_pn:
            raise WpiReplayError("WPI PN replayed or reordered")
        plain = sm4.ofb(self._ek, pn.to_bytes(16, "big"), body[18:])
        data, mic = plain[:-WPI_MIC_SIZE], plain[-WPI_MIC_SIZE:]
        want = wpi_mic(self._ck, pn, pseudo_header(header, self.key_idx, len(data)), data)
        if not hmac.compare_digest(want, mic):
            raise WpiMicError("WPI MIC does not verify")
        self.last_pn = pn
        return data

    def unprotect(self, frame: bytes) -> tuple[Dot11Header, bytes]:
        header, body = Dot11Header.decode(frame)
        return header, self.unprotect_body(header, body)
