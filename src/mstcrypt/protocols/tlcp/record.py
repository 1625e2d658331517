"""The TLCP record layer: framing, limits and record protection.

Record header: type(1) ‖ version(2) = 0x0101 ‖ length(2). Limits (RFC 5246 §6.2, which
TLCP keeps): a plaintext fragment is at most 2^14 bytes, a protected fragment at most
2^14 + 2048; a larger record is refused with ``record_overflow``.

Protection after ChangeCipherSpec:

- SM4-CBC + HMAC-SM3, MAC-then-encrypt (TLS 1.1 style, as TLCP specifies): the fragment
  is ``IV(16) ‖ SM4-CBC(plaintext ‖ MAC(32) ‖ padding)`` with a fresh random IV per
  record, MAC = HMAC-SM3(mac_key, seq(8) ‖ type ‖ version ‖ length(2) ‖ plaintext) and
  TLS padding (pad_len + 1 bytes, each equal to pad_len). On receipt the MAC is always
  computed and compared, whatever the padding (computed as if the padding were empty
  when it is wrong, RFC 5246 §6.2.3.2), and every failure is the same
  ``bad_record_mac``.
- SM4-GCM: the fragment is ``explicit_nonce(8) ‖ ciphertext ‖ tag(16)``; nonce =
  fixed_iv(4) ‖ explicit_nonce, where the sender uses the sequence number as the
  explicit part; AAD = seq(8) ‖ type ‖ version ‖ plaintext length(2).
"""

from __future__ import annotations

import hmac

from mstcrypt.crypto import sm4
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm3 import HmacSM3
from mstcrypt.errors import DecryptionError
from mstcrypt.protocols.tlcp.constants import (
    MAX_CIPHERTEXT,
    MAX_PLAINTEXT,
    TLCP_VERSION,
    AlertDescription,
    CipherSuite,
    ContentType,
)
from mstcrypt.protocols.tlcp.errors import TLCPError

__all__ = [
    "CBCProtection",
    "GCMProtection",
    "NullProtection",
    "RecordLayer",
    "protections_for",
]

HEADER_SIZE = 5
MAC_SIZE = 32
BLOCK = 16
EXPLICIT_NONCE = 8
TAG = 16
_VERSION = TLCP_VERSION.to_bytes(2, "big")
_SEQ_LIMIT = (1 << 64) - 1
_CONTENT_TYPES = frozenset(int(t) for t in ContentType)


def _bad_mac() -> TLCPError:
    return TLCPError(AlertDescription.BAD_RECORD_MAC, "record failed authentication")


class NullProtection:
    """TLS_NULL_WITH_NULL_NULL: the state before the first ChangeCipherSpec."""

    max_fragment = MAX_PLAINTEXT

    def seal(self, content_type: int, plaintext: bytes) -> bytes:
        return plaintext

    def open(self, content_type: int, fragment: bytes) -> bytes:
        return fragment


class _Sequenced:
    __slots__ = ("seq",)
    max_fragment = MAX_CIPHERTEXT

    def __init__(self) -> None:
        self.seq = 0

    def _next(self) -> bytes:
        if self.seq >= _SEQ_LIMIT:
            raise TLCPError(AlertDescription.INTERNAL_ERROR, "record sequence number exhausted")
        s = self.seq.to_bytes(8, "big")
        self.seq += 1
        return s


class CBCProtection(_Sequenced):
    """SM4-CBC with HMAC-SM3, MAC-then-encrypt, explicit random IV per record."""

    __slots__ = ("_key", "_mac")

    def __init__(self, enc_key: bytes, mac_key: bytes) -> None:
        super().__init__()
        self._key = enc_key
        self._mac = HmacSM3(mac_key)

    def _tag(self, seq: bytes, content_type: int, data: bytes) -> bytes:
        h = self._mac.copy()
        h.update(seq + bytes([content_type]) + _VERSION + len(data).to_bytes(2, "big"))
        h.update(data)
        return h.digest()

    def seal(self, content_type: int, plaintext: bytes) -> bytes:
        seq = self._next()
        body = plaintext + self._tag(seq, content_type, plaintext)
        pad = BLOCK - 1 - len(body) % BLOCK
        body += bytes([pad]) * (pad + 1)
        iv = random_bytes(BLOCK)
        return iv + sm4.cbc_encrypt(self._key, iv, body, padding=False)

    def open(self, content_type: int, fragment: bytes) -> bytes:
        seq = self._next()
        n = len(fragment)
        # IV + at least one block holding MAC and the padding-length byte.
        if n % BLOCK or n < BLOCK + MAC_SIZE + BLOCK:
            raise _bad_mac()
        try:
            pt = sm4.cbc_decrypt(self._key, fragment[:BLOCK], fragment[BLOCK:], padding=False)
        except DecryptionError:  # pragma: no cover - lengths are checked above
            raise _bad_mac() from None
        total = len(pt)
        pad = pt[-1]
        if pad + 1 + MAC_SIZE <= total:
            pad_ok = hmac.compare_digest(pt[total - pad - 1 :], bytes([pad]) * (pad + 1))
        else:
            pad_ok = False
        if not pad_ok:
            pad = 0  # MAC as if the padding were empty: same work either way
        end = total - pad - 1 - MAC_SIZE
        data = pt[:end]
        mac_ok = hmac.compare_digest(self._tag(seq, content_type, data), pt[end : end + MAC_SIZE])
        if not (mac_ok & pad_ok):
            raise _bad_mac()
        return data


class GCMProtection(_Sequenced):
    """SM4-GCM with a 4-byte implicit and an 8-byte explicit nonce part."""

    __slots__ = ("_fixed", "_key")

    def __init__(self, key: bytes, fixed_iv: bytes) -> None:
        super().__init__()
        self._key = key
        self._fixed = fixed_iv

    def seal(self, content_type: int, plaintext: bytes) -> bytes:
        seq = self._next()
        aad = seq + bytes([content_type]) + _VERSION + len(plaintext).to_bytes(2, "big")
        return seq + sm4.gcm_encrypt(self._key, self._fixed + seq, plaintext, aad)

    def open(self, content_type: int, fragment: bytes) -> bytes:
        seq = self._next()
        if len(fragment) < EXPLICIT_NONCE + TAG:
            raise _bad_mac()
        explicit = fragment[:EXPLICIT_NONCE]
        length = len(fragment) - EXPLICIT_NONCE - TAG
        aad = seq + bytes([content_type]) + _VERSION + length.to_bytes(2, "big")
        try:
            return sm4.gcm_decrypt(
                self._key, self._fixed + explicit, fragment[EXPLICIT_NONCE:], aad
            )
        except DecryptionError:
            raise _bad_mac() from None


Protection = NullProtection | CBCProtection | GCMProtection


def key_block_size(suite: CipherSuite) -> int:
    return 2 * (16 + 4) if suite.is_gcm else 2 * (MAC_SIZE + 16 + 16)


def protections_for(
    suite: CipherSuite, block: bytes
) -> tuple[CBCProtection | GCMProtection, CBCProtection | GCMProtection]:
    """(client_write, server_write) protections from the key block."""
    if suite.is_gcm:
        ck, sk, civ, siv = block[0:16], block[16:32], block[32:36], block[36:40]
        return GCMProtection(ck, civ), GCMProtection(sk, siv)
    cm, sm, ck, sk = block[0:32], block[32:64], block[64:80], block[80:96]
    return CBCProtection(ck, cm), CBCProtection(sk, sm)


class RecordLayer:
    """Parses records out of a byte stream and protects outgoing ones. Pure: no I/O."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.read: Protection = NullProtection()
        self.write: Protection = NullProtection()

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_record(self) -> tuple[ContentType, bytes] | None:
        """The next complete record, unprotected, or None when more bytes are needed.
        Raises TLCPError with the alert to send."""
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            return None
        ctype = buf[0]
        if ctype not in _CONTENT_TYPES:
            raise TLCPError(
                AlertDescription.UNEXPECTED_MESSAGE, f"unknown record content type {ctype}"
            )
        version = (buf[1] << 8) | buf[2]
        if version != TLCP_VERSION:
            raise TLCPError(
                AlertDescription.PROTOCOL_VERSION,
                f"record version 0x{version:04x}, expected 0x0101 (TLCP)",
            )
        length = (buf[3] << 8) | buf[4]
        if length > self.read.max_fragment:
            raise TLCPError(
                AlertDescription.RECORD_OVERFLOW,
                f"record of {length} bytes exceeds {self.read.max_fragment}",
            )
        if len(buf) < HEADER_SIZE + length:
            return None
        fragment = bytes(buf[HEADER_SIZE : HEADER_SIZE + length])
        del buf[: HEADER_SIZE + length]
        ct = ContentType(ctype)
        plaintext = self.read.open(ct, fragment)
        if len(plaintext) > MAX_PLAINTEXT:
            raise TLCPError(
                AlertDescription.RECORD_OVERFLOW,
                f"record plaintext of {len(plaintext)} bytes exceeds 2^14",
            )
        if not plaintext and ct is not ContentType.APPLICATION_DATA:
            raise TLCPError(AlertDescription.DECODE_ERROR, f"empty {ct.name.lower()} record")
        return ct, plaintext

    def seal(self, content_type: ContentType, data: bytes) -> bytes:
        """One or more protected records carrying ``data`` (split at 2^14)."""
        out = bytearray()
        view = memoryview(data)
        pos = 0
        while True:
            chunk = bytes(view[pos : pos + MAX_PLAINTEXT])
            frag = self.write.seal(content_type, chunk)
            out += bytes([content_type]) + _VERSION + len(frag).to_bytes(2, "big") + frag
            pos += MAX_PLAINTEXT
            if pos >= len(data):
                break
        return bytes(out)
