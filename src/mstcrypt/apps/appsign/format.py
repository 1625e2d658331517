"""The two signature layers as APK Signing Block ID-value pairs (docs/app-signing.md §3).

Both pair IDs are private to mstcrypt (not assigned by Android, absent from the known
lists of third-party IDs); Android and apksigner skip pairs they do not know. Integers
are little-endian and ``lp(x)`` is ``uint32 len(x) | x``, as in the v2/v3 blocks.

Pair value (both layers)::

    lp(signed data) | lp(DER SM2Signature over the signed data) | lp(certificates)
    certificates = lp(DER certificate) ... (1 to MAX_CERTIFICATES, signer's first)

Developer signed data::

    lp("mstcrypt-app-developer-v1") | uint32 digest algorithm (0x00010301: chunked SM3)
    | lp(content digest, 32) | lp(package, UTF-8) | uint64 versionCode
    | uint64 signing time (Unix seconds) | lp(SM3 of the signer's certificate)
    | lp(Android signatures) = (uint32 pair ID | SM3 of the pair value)... for each v2,
      v3 and v3.1 pair in the block at signing time, in block order (1 to 3)

Channel signed data::

    lp("mstcrypt-app-channel-v1") | uint32 digest algorithm | lp(content digest, 32)
    | lp(SM3 of the whole developer pair value) | lp(package) | uint64 versionCode
    | uint64 signing time | lp(SM3 of the signer's certificate) | lp(channel name, UTF-8)

The SM2 signatures use the default ID 1234567812345678 and SM3 (e = SM3(Z | signed data)).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes

from mstcrypt.apps.appsign.errors import LayerFormatError
from mstcrypt.apps.appsign.package import APK_SIGNATURE_IDS
from mstcrypt.errors import DecodeError
from mstcrypt.pki import Certificate

__all__ = [
    "CHANNEL_LABEL",
    "CHANNEL_PAIR_ID",
    "DEVELOPER_LABEL",
    "DEVELOPER_PAIR_ID",
    "DIGEST_CHUNKED_SM3",
    "MAX_CERTIFICATES",
    "ChannelLayer",
    "ChannelSignedData",
    "DeveloperLayer",
    "DeveloperSignedData",
    "sm3",
]

#: private pair IDs of mstcrypt's developer and channel layers
DEVELOPER_PAIR_ID = 0x4D534431
CHANNEL_PAIR_ID = 0x4D534332
DIGEST_CHUNKED_SM3 = 0x00010301
DEVELOPER_LABEL = b"mstcrypt-app-developer-v1"
CHANNEL_LABEL = b"mstcrypt-app-channel-v1"
MAX_CERTIFICATES = 8
_MAX_NAME = 1024
_MAX_SIG = 80


def sm3(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def _bad(what: str, message: str) -> LayerFormatError:
    return LayerFormatError("bad-layer", f"{what}: {message}")


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise _bad(self.what, f"truncated at byte {self.pos} (needs {n} more)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def lp(self, limit: int | None = None) -> bytes:
        n = self.u32()
        if limit is not None and n > limit:
            raise _bad(self.what, f"field of {n} bytes at {self.pos} exceeds {limit}")
        return self.take(n)

    def text(self) -> str:
        raw = self.lp(_MAX_NAME)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(self.what, "a name is not UTF-8") from None
        if not value or any(ord(ch) < 0x20 for ch in value):
            raise _bad(self.what, "a name is empty or holds control characters")
        return value

    def end(self) -> None:
        if self.pos != len(self.data):
            raise _bad(self.what, f"{len(self.data) - self.pos} trailing bytes")


def _lp(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _time(seconds: int) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise LayerFormatError("bad-layer", "signing time out of range") from None


def _seconds(at: datetime) -> int:
    return int(at.astimezone(UTC).timestamp())


@dataclass(frozen=True)
class DeveloperSignedData:
    content_digest: bytes
    package: str
    version_code: int
    signed_at: datetime
    certificate_sm3: bytes
    #: (pair ID, SM3 of its value) of Android's own signature pairs when signed
    apk_signatures: tuple[tuple[int, bytes], ...]

    def encode(self) -> bytes:
        sigs = b"".join(struct.pack("<I", i) + d for i, d in self.apk_signatures)
        return b"".join(
            (
                _lp(DEVELOPER_LABEL),
                struct.pack("<I", DIGEST_CHUNKED_SM3),
                _lp(self.content_digest),
                _lp(self.package.encode()),
                struct.pack("<QQ", self.version_code, _seconds(self.signed_at)),
                _lp(self.certificate_sm3),
                _lp(sigs),
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> DeveloperSignedData:
        r = _Reader(data, "developer signed data")
        if r.lp(64) != DEVELOPER_LABEL:
            raise _bad(r.what, "wrong label")
        if r.u32() != DIGEST_CHUNKED_SM3:
            raise _bad(r.what, "digest algorithm is not chunked SM3 (0x00010301)")
        digest = r.lp(32)
        package = r.text()
        code, when = r.u64(), r.u64()
        cert = r.lp(32)
        sigs = r.lp(36 * len(APK_SIGNATURE_IDS))
        r.end()
        if len(digest) != 32 or len(cert) != 32:
            raise _bad(r.what, "digests must be 32 bytes")
        if not sigs or len(sigs) % 36:
            raise _bad(r.what, "the Android signature list must hold 1 to 3 entries of 36 bytes")
        entries = tuple(
            (int(struct.unpack_from("<I", sigs, k)[0]), sigs[k + 4 : k + 36])
            for k in range(0, len(sigs), 36)
        )
        ids = [i for i, _ in entries]
        if len(set(ids)) != len(ids) or not set(ids) <= set(APK_SIGNATURE_IDS):
            raise _bad(r.what, "the Android signature list names unknown or repeated pairs")
        return cls(digest, package, code, _time(when), cert, entries)


@dataclass(frozen=True)
class ChannelSignedData:
    content_digest: bytes
    developer_layer_sm3: bytes
    package: str
    version_code: int
    signed_at: datetime
    certificate_sm3: bytes
    channel: str

    def encode(self) -> bytes:
        return b"".join(
            (
                _lp(CHANNEL_LABEL),
                struct.pack("<I", DIGEST_CHUNKED_SM3),
                _lp(self.content_digest),
                _lp(self.developer_layer_sm3),
                _lp(self.package.encode()),
                struct.pack("<QQ", self.version_code, _seconds(self.signed_at)),
                _lp(self.certificate_sm3),
                _lp(self.channel.encode()),
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> ChannelSignedData:
        r = _Reader(data, "channel signed data")
        if r.lp(64) != CHANNEL_LABEL:
            raise _bad(r.what, "wrong label")
        if r.u32() != DIGEST_CHUNKED_SM3:
            raise _bad(r.what, "digest algorithm is not chunked SM3 (0x00010301)")
        digest, dev = r.lp(32), r.lp(32)
        package = r.text()
        code, when = r.u64(), r.u64()
        cert = r.lp(32)
        channel = r.text()
        r.end()
        if len(digest) != 32 or len(dev) != 32 or len(cert) != 32:
            raise _bad(r.what, "digests must be 32 bytes")
        return cls(digest, dev, package, code, _time(when), cert, channel)


def _encode_value(signed: bytes, signature: bytes, certs: tuple[Certificate, ...]) -> bytes:
    return _lp(signed) + _lp(signature) + _lp(b"".join(_lp(c.der) for c in certs))


def _decode_value(value: bytes, what: str) -> tuple[bytes, bytes, tuple[Certificate, ...]]:
    r = _Reader(value, what)
    signed, signature, blob = r.lp(), r.lp(_MAX_SIG), r.lp()
    r.end()
    cr = _Reader(blob, f"{what} certificates")
    certs = []
    while cr.pos < len(blob):
        if len(certs) == MAX_CERTIFICATES:
            raise _bad(what, f"more than {MAX_CERTIFICATES} certificates")
        der = cr.lp()
        try:
            certs.append(Certificate.from_der(der))
        except DecodeError as exc:
            raise _bad(what, f"certificate {len(certs)} is malformed ({exc})") from None
    if not certs:
        raise _bad(what, "no certificate")
    return signed, signature, tuple(certs)


@dataclass(frozen=True)
class DeveloperLayer:
    """The developer's pair: signed data, SM2 signature, certificates (signer first)."""

    signed: DeveloperSignedData
    signed_bytes: bytes
    signature: bytes
    certificates: tuple[Certificate, ...]

    @property
    def certificate(self) -> Certificate:
        return self.certificates[0]

    def encode(self) -> bytes:
        return _encode_value(self.signed_bytes, self.signature, self.certificates)

    @classmethod
    def decode(cls, value: bytes) -> DeveloperLayer:
        signed, signature, certs = _decode_value(value, "developer layer")
        return cls(DeveloperSignedData.decode(signed), signed, signature, certs)


@dataclass(frozen=True)
class ChannelLayer:
    """The channel's pair: signed data (covering the developer pair), SM2 signature,
    certificates (signer first)."""

    signed: ChannelSignedData
    signed_bytes: bytes
    signature: bytes
    certificates: tuple[Certificate, ...]

    @property
    def certificate(self) -> Certificate:
        return self.certificates[0]

    def encode(self) -> bytes:
        return _encode_value(self.signed_bytes, self.signature, self.certificates)

    @classmethod
    def decode(cls, value: bytes) -> ChannelLayer:
        signed, signature, certs = _decode_value(value, "channel layer")
        return cls(ChannelSignedData.decode(signed), signed, signature, certs)
