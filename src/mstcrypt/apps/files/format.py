"""Byte layout of the encrypted file format v1 (``docs/file-format.md``), sans-IO.

Header parsing (strict: every check of §5 steps 1–13), serialisation, the key schedule
(HKDF-SM3), chunk nonces and payload geometry. No file or module I/O happens here.
"""

from __future__ import annotations

import enum
import hmac as _hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mstcrypt.apps.files.errors import FileFormatError, HeaderMacError, PayloadError
from mstcrypt.crypto.sm3 import hmac_sm3
from mstcrypt.errors import MstCryptError, PolicyError
from mstcrypt.formats.gmt0009 import decode_cipher

__all__ = [
    "DEFAULT_CHUNK_LOG2",
    "FEK_SIZE",
    "MAC_SIZE",
    "MAGIC",
    "MAX_CHUNK_LOG2",
    "MAX_STANZAS",
    "MIN_CHUNK_LOG2",
    "SUITE_SM2_SM4GCM_HMACSM3",
    "TAG_SIZE",
    "VERSION",
    "FileKeys",
    "Header",
    "PayloadGeometry",
    "Stanza",
    "StanzaKind",
    "derive_keys",
    "nonce",
    "parse_header",
    "read_header",
]

MAGIC = b"\x89MST\r\n\x1a\n"
VERSION = 1
SUITE_SM2_SM4GCM_HMACSM3 = 1
MIN_CHUNK_LOG2, MAX_CHUNK_LOG2, DEFAULT_CHUNK_LOG2 = 10, 24, 16
FIXED_SIZE = 30
SALT_SIZE = 16
FEK_SIZE = 16
KEY_ID_SIZE = 32
MAC_SIZE = 32
TAG_SIZE = 16
MAX_STANZAS = 256
MAX_WRAPPED = 1024
MAX_CHUNKS = 1 << 56
STANZA_FLAG_CERT = 0x01

LABEL_HEADER = b"mstcrypt/file/v1 header"
LABEL_PAYLOAD = b"mstcrypt/file/v1 payload"
LABEL_NONCE = b"mstcrypt/file/v1 nonce"

#: the largest header a reader accepts
MAX_HEADER_SIZE = FIXED_SIZE + MAX_STANZAS * (2 + 2 * KEY_ID_SIZE + 2 + MAX_WRAPPED) + MAC_SIZE


class StanzaKind(enum.IntEnum):
    RECIPIENT = 1  #: a user's encryption key P_M
    ESCROW = 2  #: the KMC file-recovery key


def _fail(code: str, message: str) -> FileFormatError:
    return FileFormatError(code, message)


def check_wrapped(wrapped: bytes, where: str) -> None:
    """Step 11: strict DER SM2Cipher, C1 on the curve, C2 of exactly FEK_SIZE bytes."""
    try:
        parts = decode_cipher(wrapped)
    except MstCryptError:
        raise _fail(
            "bad-wrapped-key", f"{where}: wrapped key is not a canonical DER SM2Cipher"
        ) from None
    if len(parts.c2) != FEK_SIZE:
        raise _fail(
            "bad-wrapped-key",
            f"{where}: wrapped key holds {len(parts.c2)} bytes, expected a "
            f"{FEK_SIZE}-byte file key",
        )


@dataclass(frozen=True)
class Stanza:
    """One recipient stanza: the FEK SM2-encrypted to the key named by ``key_id``."""

    kind: StanzaKind
    key_id: bytes
    wrapped: bytes
    cert_fingerprint: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, StanzaKind):
            raise PolicyError("Stanza.kind must be a StanzaKind")
        if not isinstance(self.key_id, bytes) or len(self.key_id) != KEY_ID_SIZE:
            raise PolicyError("Stanza.key_id must be 32 bytes (SM3 of the public key)")
        if self.cert_fingerprint is not None and (
            not isinstance(self.cert_fingerprint, bytes)
            or len(self.cert_fingerprint) != KEY_ID_SIZE
        ):
            raise PolicyError("Stanza.cert_fingerprint must be 32 bytes (SM3 of the DER)")
        if not isinstance(self.wrapped, bytes) or not 1 <= len(self.wrapped) <= MAX_WRAPPED:
            raise PolicyError(f"Stanza.wrapped must be 1..{MAX_WRAPPED} bytes")

    def to_bytes(self) -> bytes:
        flags = STANZA_FLAG_CERT if self.cert_fingerprint is not None else 0
        return (
            bytes([self.kind, flags])
            + self.key_id
            + (self.cert_fingerprint or b"")
            + len(self.wrapped).to_bytes(2, "big")
            + self.wrapped
        )

    def describe(self) -> dict[str, object]:
        """A JSON-friendly summary (no secret is in a stanza)."""
        return {
            "kind": self.kind.name.lower(),
            "key_id": self.key_id.hex(),
            "cert_fingerprint": self.cert_fingerprint.hex() if self.cert_fingerprint else None,
            "wrapped_key_size": len(self.wrapped),
        }

    def __repr__(self) -> str:
        return f"Stanza({self.kind.name.lower()}, key_id={self.key_id[:8].hex()}…)"


@dataclass(frozen=True)
class Header:
    """A parsed header. ``raw`` holds the exact bytes (including the MAC)."""

    version: int
    suite: int
    chunk_log2: int
    salt: bytes
    stanzas: tuple[Stanza, ...]
    mac: bytes
    raw: bytes

    @property
    def chunk_size(self) -> int:
        return 1 << self.chunk_log2

    @property
    def size(self) -> int:
        """Length of the header in bytes (the payload starts here)."""
        return len(self.raw)

    @property
    def authenticated_bytes(self) -> bytes:
        return self.raw[:-MAC_SIZE]

    @property
    def escrow(self) -> Stanza | None:
        for s in self.stanzas:
            if s.kind is StanzaKind.ESCROW:
                return s
        return None

    def stanza_for(self, key_id: bytes) -> Stanza | None:
        for s in self.stanzas:
            if s.key_id == key_id:
                return s
        return None

    def verify_mac(self, keys: FileKeys) -> None:
        """Step 16 (constant-time)."""
        expect = hmac_sm3(keys.header_key, self.authenticated_bytes)
        if not _hmac.compare_digest(expect, self.mac):
            raise HeaderMacError(
                "header-mac-mismatch",
                "header MAC does not verify: the header was modified or the stanza "
                "wraps a different file key",
            )

    @classmethod
    def build(
        cls,
        stanzas: Iterable[Stanza],
        keys: FileKeys,
        *,
        salt: bytes,
        chunk_log2: int = DEFAULT_CHUNK_LOG2,
    ) -> Header:
        """Serialise and MAC a header (the writer's side; checks the writer's rules)."""
        stanzas = tuple(stanzas)
        if not MIN_CHUNK_LOG2 <= chunk_log2 <= MAX_CHUNK_LOG2:
            raise PolicyError(f"chunk size must be 2^{MIN_CHUNK_LOG2} … 2^{MAX_CHUNK_LOG2} bytes")
        if len(salt) != SALT_SIZE:
            raise PolicyError("salt must be 16 bytes")
        if not 1 <= len(stanzas) <= MAX_STANZAS:
            raise PolicyError(f"a file needs 1 … {MAX_STANZAS} recipients, got {len(stanzas)}")
        ids = [s.key_id for s in stanzas]
        if len(set(ids)) != len(ids):
            raise PolicyError("the same key is named twice among the recipients")
        if sum(s.kind is StanzaKind.ESCROW for s in stanzas) > 1:
            raise PolicyError("a file has at most one escrow stanza")
        body = (
            MAGIC
            + bytes([VERSION, SUITE_SM2_SM4GCM_HMACSM3, chunk_log2, 0])
            + salt
            + len(stanzas).to_bytes(2, "big")
            + b"".join(s.to_bytes() for s in stanzas)
        )
        mac = hmac_sm3(keys.header_key, body)
        return cls(VERSION, SUITE_SM2_SM4GCM_HMACSM3, chunk_log2, salt, stanzas, mac, body + mac)

    def with_stanzas(self, stanzas: Iterable[Stanza], keys: FileKeys) -> Header:
        """The same file (suite, chunk size, salt) with another stanza list and a new MAC."""
        return Header.build(stanzas, keys, salt=self.salt, chunk_log2=self.chunk_log2)

    def describe(self) -> dict[str, object]:
        return {
            "version": self.version,
            "suite": "SM2(GM/T 0009)/HKDF-SM3/SM4-GCM/HMAC-SM3",
            "chunk_size": self.chunk_size,
            "header_size": self.size,
            "stanzas": [s.describe() for s in self.stanzas],
        }

    def __repr__(self) -> str:
        return f"Header(v{self.version}, chunk={self.chunk_size}, stanzas={len(self.stanzas)})"


# --- parsing --------------------------------------------------------------------------


def read_header(read: Callable[[int], bytes]) -> Header:
    """Parse a header from ``read(n)``, a function returning up to n bytes (fewer only at
    the end of the input). Consumes exactly the header. Steps 1–13 of §5."""
    buf = bytearray()

    def take(n: int, what: str) -> bytes:
        out = b""
        while len(out) < n:
            piece = read(n - len(out))
            if not piece:
                raise _fail("truncated-header", f"file ends inside the header ({what})")
            out += piece
        buf.extend(out)
        return out

    if take(8, "magic") != MAGIC:
        raise _fail("bad-magic", "not an mstcrypt encrypted file (bad magic)")
    version, suite, chunk_log2, flags = take(4, "version, suite, chunk size, flags")
    if version != VERSION:
        raise _fail("unsupported-version", f"unsupported format version {version} (expected 1)")
    if suite != SUITE_SM2_SM4GCM_HMACSM3:
        raise _fail("unsupported-suite", f"unsupported algorithm suite {suite:#04x}")
    if not MIN_CHUNK_LOG2 <= chunk_log2 <= MAX_CHUNK_LOG2:
        raise _fail(
            "bad-chunk-size",
            f"chunk size exponent {chunk_log2} outside {MIN_CHUNK_LOG2}..{MAX_CHUNK_LOG2}",
        )
    if flags:
        raise _fail("bad-header-flags", f"reserved header flags set ({flags:#04x})")
    salt = take(SALT_SIZE, "salt")
    n = int.from_bytes(take(2, "stanza count"), "big")
    if n == 0:
        raise _fail("no-stanzas", "header has no recipient stanza")
    if n > MAX_STANZAS:
        raise _fail("too-many-stanzas", f"header has {n} stanzas (at most {MAX_STANZAS})")
    stanzas: list[Stanza] = []
    seen: set[bytes] = set()
    escrow = False
    for i in range(n):
        where = f"stanza {i}"
        kind_b, sflags = take(2, f"{where} kind and flags")
        if kind_b not in (StanzaKind.RECIPIENT, StanzaKind.ESCROW):
            raise _fail("bad-stanza-kind", f"{where}: unknown kind {kind_b:#04x}")
        if sflags & ~STANZA_FLAG_CERT:
            raise _fail("bad-stanza-flags", f"{where}: reserved flags set ({sflags:#04x})")
        key_id = take(KEY_ID_SIZE, f"{where} key id")
        cert_fp = take(KEY_ID_SIZE, f"{where} certificate fingerprint") if sflags else None
        length = int.from_bytes(take(2, f"{where} length"), "big")
        if not 1 <= length <= MAX_WRAPPED:
            raise _fail(
                "bad-stanza-length",
                f"{where}: wrapped key length {length} outside 1..{MAX_WRAPPED}",
            )
        wrapped = take(length, f"{where} wrapped key")
        check_wrapped(wrapped, where)
        if key_id in seen:
            raise _fail("duplicate-recipient", f"{where}: key {key_id[:8].hex()}… named twice")
        seen.add(key_id)
        kind = StanzaKind(kind_b)
        if kind is StanzaKind.ESCROW:
            if escrow:
                raise _fail("duplicate-escrow", f"{where}: a second escrow stanza")
            escrow = True
        stanzas.append(Stanza(kind, key_id, wrapped, cert_fp))
    mac = take(MAC_SIZE, "header MAC")
    return Header(version, suite, chunk_log2, salt, tuple(stanzas), mac, bytes(buf))


def parse_header(data: bytes) -> Header:
    """Parse the header at the start of ``data`` (trailing payload bytes are ignored;
    use ``Header.size`` to find where the payload starts)."""
    view = memoryview(bytes(data))
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        out = bytes(view[pos : pos + n])
        pos += len(out)
        return out

    return read_header(read)


# --- key schedule ------------------------------------------------------------------------


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    # HKDF-Expand for L ≤ 32: T(1) = HMAC-SM3(PRK, info ‖ 0x01)
    return hmac_sm3(prk, info + b"\x01")[:length]


class FileKeys:
    """The keys derived from one FEK and salt (§4). Holds secrets; shows none."""

    __slots__ = ("_fek", "header_key", "nonce_prefix", "payload_key")

    def __init__(self, fek: bytes, salt: bytes) -> None:
        if len(fek) != FEK_SIZE or len(salt) != SALT_SIZE:
            raise PolicyError("file key must be 16 bytes and salt 16 bytes")
        prk = hmac_sm3(salt, fek)
        self._fek = fek
        self.header_key = _expand(prk, LABEL_HEADER, 32)
        self.payload_key = _expand(prk, LABEL_PAYLOAD, 16)
        self.nonce_prefix = _expand(prk, LABEL_NONCE, 4)

    @property
    def fek(self) -> bytes:
        return self._fek

    def __repr__(self) -> str:
        return "FileKeys(<secret>)"


def derive_keys(fek: bytes, salt: bytes) -> FileKeys:
    return FileKeys(fek, salt)


def nonce(prefix: bytes, index: int, final: bool) -> bytes:
    """nonce_i = N_prefix ‖ i (7 bytes) ‖ final flag."""
    if not 0 <= index < MAX_CHUNKS:
        raise PayloadError("chunk-counter-overflow", f"chunk counter {index} exceeds 2^56 - 1")
    return prefix + index.to_bytes(7, "big") + (b"\x01" if final else b"\x00")


# --- payload geometry (random access) ----------------------------------------------------


@dataclass(frozen=True)
class PayloadGeometry:
    """Chunk layout derived from the payload length (steps 17–19 for seekable input)."""

    chunk_size: int
    payload_size: int
    chunks: int
    plaintext_size: int

    @classmethod
    def of(cls, chunk_size: int, payload_size: int) -> PayloadGeometry:
        full = chunk_size + TAG_SIZE
        if payload_size <= 0:
            raise PayloadError("missing-payload", "payload is empty (no final chunk)")
        chunks = -(-payload_size // full)
        last = payload_size - (chunks - 1) * full
        if last < TAG_SIZE:
            raise PayloadError(
                "truncated-chunk",
                f"chunk {chunks - 1} is {last} bytes, shorter than its 16-byte tag",
            )
        if chunks > 1 and last == TAG_SIZE:
            raise PayloadError(
                "empty-final-chunk", f"chunk {chunks - 1} is an empty final chunk after a full one"
            )
        if chunks > MAX_CHUNKS:
            raise PayloadError("chunk-counter-overflow", "payload has more than 2^56 chunks")
        return cls(chunk_size, payload_size, chunks, payload_size - chunks * TAG_SIZE)

    def chunk_span(self, index: int) -> tuple[int, int]:
        """(offset within the payload, length) of chunk ``index`` (ciphertext + tag)."""
        full = self.chunk_size + TAG_SIZE
        start = index * full
        return start, min(full, self.payload_size - start)
