"""TLCP handshake messages: strict encoders and decoders.

Every decoder consumes its whole input: a short, long or inconsistent vector, a trailing
byte or a value out of range raises :class:`TLCPError` with ``decode_error`` (or
``illegal_parameter`` for a well-formed but forbidden value). Layouts (GB/T 38636-2020;
the TLS 1.1-style messages have no signature_algorithms fields)::

    ClientHello        version(2) random(32) session_id<0..32> cipher_suites<2..2^16-2>
                       compression_methods<1..2^8-1> [extensions<0..2^16-1>]
    ServerHello        version(2) random(32) session_id<0..32> cipher_suite(2)
                       compression_method(1) [extensions<0..2^16-1>]
    Certificate        certificate_list<0..2^24-1> of ASN.1Cert<1..2^24-1>
                       (signing certificate, encryption certificate, CA certificates)
    ServerKeyExchange  ECC:   signature<1..2^16-1>
                       ECDHE: ServerECDHParams(69) signature<1..2^16-1>
    CertificateRequest certificate_types<1..2^8-1> certificate_authorities<0..2^16-1>
    ServerHelloDone    (empty)
    ClientKeyExchange  ECC:   ECCEncryptedPreMasterSecret<0..2^16-1> (DER SM2Cipher)
                       ECDHE: ClientECDHEParams, as a <1..2^16-1> vector or bare (69)
    CertificateVerify  signature<0..2^16-1> (DER SM2Signature)
    Finished           verify_data[12]

ECParams: curve_type(1) = 3 (named_curve) ‖ named_curve(2) = 41 (SM2) ‖ point<1..2^8-1>
(the 65-byte uncompressed point 04 ‖ x ‖ y).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mstcrypt.protocols.tlcp.constants import (
    CURVE_SM2,
    EXT_SERVER_NAME,
    NAMED_CURVE,
    TLCP_VERSION,
    AlertDescription,
    HandshakeType,
)
from mstcrypt.protocols.tlcp.errors import TLCPError

__all__ = [
    "ClientHello",
    "Reader",
    "ServerHello",
    "decode_certificate_list",
    "decode_certificate_request",
    "decode_client_ecdhe_params",
    "decode_ecdh_params",
    "encode_certificate_list",
    "encode_certificate_request",
    "encode_ecdh_params",
    "handshake",
    "parse_server_name",
    "server_name_extension",
    "vec",
]

RANDOM_SIZE = 32
MAX_SESSION_ID = 32
POINT_SIZE = 65
ECDH_PARAMS_SIZE = 4 + POINT_SIZE


def decode_error(message: str) -> TLCPError:
    return TLCPError(AlertDescription.DECODE_ERROR, message)


class Reader:
    """A bounds-checked cursor over one message body."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        if self.remaining() < n:
            raise decode_error(f"{self._what}: truncated")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, size: int, minimum: int = 0, maximum: int | None = None) -> bytes:
        n = self.uint(size)
        if n < minimum or (maximum is not None and n > maximum):
            raise decode_error(f"{self._what}: vector length {n} out of range")
        return self.take(n)

    def rest(self) -> bytes:
        return self.take(self.remaining())

    def end(self) -> None:
        if self.remaining():
            raise decode_error(f"{self._what}: {self.remaining()} trailing bytes")


def vec(data: bytes, size: int) -> bytes:
    return len(data).to_bytes(size, "big") + data


def handshake(msg_type: HandshakeType, body: bytes) -> bytes:
    """The handshake message header msg_type(1) ‖ length(3) followed by ``body``."""
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


# --- extensions ------------------------------------------------------------------------


def _decode_extensions(data: bytes, what: str) -> list[tuple[int, bytes]]:
    r = Reader(data, what)
    out: list[tuple[int, bytes]] = []
    seen: set[int] = set()
    while r.remaining():
        etype = r.uint(2)
        body = r.vector(2)
        if etype in seen:
            raise TLCPError(
                AlertDescription.ILLEGAL_PARAMETER, f"{what}: extension {etype} appears twice"
            )
        seen.add(etype)
        out.append((etype, body))
    return out


def _encode_extensions(extensions: Sequence[tuple[int, bytes]]) -> bytes:
    if not extensions:
        return b""
    return vec(b"".join(t.to_bytes(2, "big") + vec(b, 2) for t, b in extensions), 2)


def server_name_extension(host_name: str) -> tuple[int, bytes]:
    """server_name (RFC 6066 §3) with one host_name entry."""
    name = host_name.encode("ascii")
    entry = b"\x00" + vec(name, 2)
    return EXT_SERVER_NAME, vec(entry, 2)


def parse_server_name(body: bytes) -> str | None:
    """The host_name of a ClientHello server_name extension (RFC 6066 §3)."""
    r = Reader(body, "server_name")
    lst = Reader(r.vector(2, 1), "server_name list")
    r.end()
    host: str | None = None
    while lst.remaining():
        name_type = lst.uint(1)
        name = lst.vector(2, 1)
        if name_type != 0:
            continue
        if host is not None:
            raise TLCPError(AlertDescription.ILLEGAL_PARAMETER, "server_name: two host names")
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            raise decode_error("server_name: host name is not ASCII") from None
        if not text.isprintable() or "\x00" in text:
            raise TLCPError(AlertDescription.ILLEGAL_PARAMETER, "server_name: bad host name")
        host = text.rstrip(".").lower()
    return host


# --- hellos ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientHello:
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes = b"\x00"
    extensions: tuple[tuple[int, bytes], ...] = ()
    version: int = TLCP_VERSION

    def encode(self) -> bytes:
        suites = b"".join(s.to_bytes(2, "big") for s in self.cipher_suites)
        return (
            self.version.to_bytes(2, "big")
            + self.random
            + vec(self.session_id, 1)
            + vec(suites, 2)
            + vec(self.compression_methods, 1)
            + _encode_extensions(self.extensions)
        )

    @classmethod
    def decode(cls, body: bytes) -> ClientHello:
        r = Reader(body, "ClientHello")
        version = r.uint(2)
        random = r.take(RANDOM_SIZE)
        session_id = r.vector(1, 0, MAX_SESSION_ID)
        suites = r.vector(2, 2, 0xFFFE)
        if len(suites) % 2:
            raise decode_error("ClientHello: odd cipher_suites length")
        compression = r.vector(1, 1)
        extensions: list[tuple[int, bytes]] = []
        if r.remaining():
            extensions = _decode_extensions(r.vector(2), "ClientHello extensions")
        r.end()
        return cls(
            random=random,
            session_id=session_id,
            cipher_suites=tuple(
                int.from_bytes(suites[i : i + 2], "big") for i in range(0, len(suites), 2)
            ),
            compression_methods=compression,
            extensions=tuple(extensions),
            version=version,
        )


@dataclass(frozen=True)
class ServerHello:
    random: bytes
    session_id: bytes
    cipher_suite: int
    compression_method: int = 0
    extensions: tuple[tuple[int, bytes], ...] = ()
    version: int = TLCP_VERSION

    def encode(self) -> bytes:
        return (
            self.version.to_bytes(2, "big")
            + self.random
            + vec(self.session_id, 1)
            + self.cipher_suite.to_bytes(2, "big")
            + bytes([self.compression_method])
            + _encode_extensions(self.extensions)
        )

    @classmethod
    def decode(cls, body: bytes) -> ServerHello:
        r = Reader(body, "ServerHello")
        version = r.uint(2)
        random = r.take(RANDOM_SIZE)
        session_id = r.vector(1, 0, MAX_SESSION_ID)
        suite = r.uint(2)
        compression = r.uint(1)
        extensions: list[tuple[int, bytes]] = []
        if r.remaining():
            extensions = _decode_extensions(r.vector(2), "ServerHello extensions")
        r.end()
        return cls(random, session_id, suite, compression, tuple(extensions), version)


# --- certificates ----------------------------------------------------------------------


def encode_certificate_list(certs: Sequence[bytes]) -> bytes:
    return vec(b"".join(vec(c, 3) for c in certs), 3)


def decode_certificate_list(body: bytes) -> list[bytes]:
    r = Reader(body, "Certificate")
    lst = Reader(r.vector(3), "Certificate list")
    r.end()
    out = []
    while lst.remaining():
        out.append(lst.vector(3, 1))
    return out


@dataclass(frozen=True)
class CertificateRequest:
    certificate_types: bytes
    authorities: tuple[bytes, ...] = field(default_factory=tuple)


def encode_certificate_request(types: bytes, authorities: Sequence[bytes]) -> bytes:
    return vec(types, 1) + vec(b"".join(vec(a, 2) for a in authorities), 2)


def decode_certificate_request(body: bytes) -> CertificateRequest:
    r = Reader(body, "CertificateRequest")
    types = r.vector(1, 1)
    names = Reader(r.vector(2), "CertificateRequest authorities")
    r.end()
    out = []
    while names.remaining():
        out.append(names.vector(2, 1))
    return CertificateRequest(types, tuple(out))


# --- key exchange ----------------------------------------------------------------------


def encode_ecdh_params(point: bytes) -> bytes:
    """ServerECDHParams / ClientECDHEParams: named_curve SM2 and the point."""
    return bytes([NAMED_CURVE]) + CURVE_SM2.to_bytes(2, "big") + vec(point, 1)


def decode_ecdh_params(r: Reader) -> bytes:
    """Read ECParams (named curve SM2) and the 65-byte uncompressed point."""
    curve_type = r.uint(1)
    if curve_type != NAMED_CURVE:
        raise TLCPError(
            AlertDescription.ILLEGAL_PARAMETER, f"ECParameters curve_type {curve_type}, expected 3"
        )
    curve = r.uint(2)
    if curve != CURVE_SM2:
        raise TLCPError(
            AlertDescription.ILLEGAL_PARAMETER, f"named curve {curve}, expected 41 (SM2)"
        )
    point = r.vector(1, 1)
    if len(point) != POINT_SIZE or point[0] != 4:
        raise TLCPError(
            AlertDescription.ILLEGAL_PARAMETER,
            "ECDH point must be the 65-byte uncompressed form 04 ‖ x ‖ y",
        )
    return point


def decode_client_ecdhe_params(body: bytes) -> tuple[bytes, bool]:
    """The client's ephemeral point from a ClientKeyExchange body in either framing;
    returns (point, framed_as_vector). The bare structure starts with curve_type 3,
    the vector with the length's high byte 0, so the two cannot be confused."""
    outer = Reader(body, "ClientKeyExchange")
    if body and body[0] == 0:
        inner = Reader(outer.vector(2, 1), "ClientECDHEParams")
        outer.end()
        point = decode_ecdh_params(inner)
        inner.end()
        return point, True
    point = decode_ecdh_params(outer)
    outer.end()
    return point, False
