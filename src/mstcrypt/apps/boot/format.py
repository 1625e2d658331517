"""The boot manifest, version 1 (``docs/trusted-boot.md`` §3): a bounded, strictly parsed,
SM2-signed list of descriptors (hash, hashtree, chain) for one boot stage.

    m = Manifest.build("kernel", [HashDescriptor.of("vmlinuz", data)], rollback_index=3,
                       rollback_location=1, key=kernel_key)
    blob = m.raw
    same = Manifest.parse(blob)          # structure only; verification is in verify.py
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Union

from mstcrypt.apps.boot.errors import BootFormatError
from mstcrypt.crypto.sm2 import SM2PrivateKey, SM2PublicKey
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import MstCryptError

__all__ = [
    "MAGIC",
    "MAX_MANIFEST",
    "ChainDescriptor",
    "Descriptor",
    "HashDescriptor",
    "HashTreeDescriptor",
    "Manifest",
]

MAGIC = b"\x89MSTBOOT"
VERSION = 1
MAX_MANIFEST = 65536
MAX_DESCRIPTORS = 32
MAX_BODY = 4096
MAX_SALT = 64
ROLLBACK_SLOTS = 32
MAX_HASH_IMAGE = 1 << 40
MAX_TREE_IMAGE = 1 << 48
MIN_BLOCK_LOG2, MAX_BLOCK_LOG2 = 12, 16
TAG_HASH, TAG_HASHTREE, TAG_CHAIN = 1, 2, 3
_NAME = re.compile(rb"[a-z0-9][a-z0-9._-]{0,31}")
_U64 = (1 << 64) - 1


def _fail(msg: str) -> BootFormatError:
    return BootFormatError("malformed-manifest", msg)


def check_name(name: str | bytes, what: str) -> str:
    raw = name.encode("ascii", "replace") if isinstance(name, str) else name
    if not _NAME.fullmatch(raw):
        raise _fail(
            f"{what} must be 1-32 characters of [a-z0-9._-] starting with a letter or digit"
        )
    return raw.decode("ascii")


def _check_salt(salt: bytes) -> bytes:
    if not isinstance(salt, bytes) or len(salt) > MAX_SALT:
        raise _fail(f"salt must be at most {MAX_SALT} bytes")
    return salt


class _Reader:
    """Bounds-checked cursor; every read that would run past the end raises."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, what: str) -> None:
        self.buf, self.pos, self.what = buf, 0, what

    def take(self, n: int, field: str) -> bytes:
        if n > len(self.buf) - self.pos:
            raise _fail(f"{self.what}: truncated at {field}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "big")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "big")

    def u64(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "big")

    def name(self, field: str) -> str:
        return check_name(self.take(self.u8(field), field), f"{self.what} {field}")

    def salt(self) -> bytes:
        n = self.u8("salt length")
        if n > MAX_SALT:
            raise _fail(f"{self.what}: salt longer than {MAX_SALT} bytes")
        return self.take(n, "salt")

    def key(self, field: str) -> SM2PublicKey:
        raw = self.take(65, field)
        if raw[0] != 4:
            raise _fail(f"{self.what}: {field} must be an uncompressed point (04 ‖ x ‖ y)")
        try:
            return SM2PublicKey.from_bytes(raw)
        except MstCryptError:
            raise _fail(f"{self.what}: {field} is not a point on the SM2 curve") from None

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise _fail(f"{self.what}: {len(self.buf) - self.pos} trailing bytes")


def _name(n: str) -> bytes:
    raw = check_name(n, "name").encode("ascii")
    return bytes([len(raw)]) + raw


@dataclass(frozen=True)
class HashDescriptor:
    """A small image verified whole: ``digest = SM3(salt ‖ image)``."""

    name: str
    image_size: int
    salt: bytes
    digest: bytes
    tag = TAG_HASH

    @classmethod
    def of(cls, name: str, image: bytes, salt: bytes = b"") -> HashDescriptor:
        return cls(name, len(image), salt, sm3(_check_salt(salt) + image))

    def body(self) -> bytes:
        return (
            _name(self.name)
            + struct.pack(">Q", self.image_size)
            + bytes([len(_check_salt(self.salt))])
            + self.salt
            + self.digest
        )

    @classmethod
    def parse(cls, r: _Reader) -> HashDescriptor:
        name = r.name("image name")
        size = r.u64("image size")
        if size > MAX_HASH_IMAGE:
            raise _fail(f"{r.what}: image size above 2^40")
        salt = r.salt()
        return cls(name, size, salt, r.take(32, "digest"))


@dataclass(frozen=True)
class HashTreeDescriptor:
    """A large image verified block by block against an SM3 hash tree (§4)."""

    name: str
    image_size: int
    block_log2: int
    salt: bytes
    tree_size: int
    root: bytes
    tag = TAG_HASHTREE

    @property
    def block_size(self) -> int:
        return 1 << self.block_log2

    def body(self) -> bytes:
        return (
            _name(self.name)
            + struct.pack(">QB", self.image_size, self.block_log2)
            + bytes([len(_check_salt(self.salt))])
            + self.salt
            + struct.pack(">Q", self.tree_size)
            + self.root
        )

    @classmethod
    def parse(cls, r: _Reader) -> HashTreeDescriptor:
        from mstcrypt.apps.boot.hashtree import tree_layout

        name = r.name("image name")
        size = r.u64("image size")
        log2 = r.u8("block size")
        if not MIN_BLOCK_LOG2 <= log2 <= MAX_BLOCK_LOG2:
            raise _fail(f"{r.what}: block size must be 2^{MIN_BLOCK_LOG2}..2^{MAX_BLOCK_LOG2}")
        if not 0 < size <= MAX_TREE_IMAGE or size % (1 << log2):
            raise _fail(
                f"{r.what}: image size must be a positive multiple of the block size, at most 2^48"
            )
        salt = r.salt()
        tree_size = r.u64("tree size")
        if tree_size != tree_layout(size, 1 << log2).tree_size:
            raise _fail(f"{r.what}: tree size does not match the image size and block size")
        return cls(name, size, log2, salt, tree_size, r.take(32, "root"))


@dataclass(frozen=True)
class ChainDescriptor:
    """The next stage: its name, rollback slot and the key that must sign its manifest."""

    name: str
    rollback_location: int
    public_key: SM2PublicKey
    tag = TAG_CHAIN

    def body(self) -> bytes:
        if not 0 <= self.rollback_location < ROLLBACK_SLOTS:
            raise _fail(f"rollback location must be 0..{ROLLBACK_SLOTS - 1}")
        return (
            _name(self.name)
            + struct.pack(">H", self.rollback_location)
            + self.public_key.to_bytes()
        )

    @classmethod
    def parse(cls, r: _Reader) -> ChainDescriptor:
        name = r.name("next stage")
        loc = r.u16("rollback location")
        if loc >= ROLLBACK_SLOTS:
            raise _fail(f"{r.what}: rollback location must be 0..{ROLLBACK_SLOTS - 1}")
        return cls(name, loc, r.key("public key"))


Descriptor = Union[HashDescriptor, HashTreeDescriptor, ChainDescriptor]  # noqa: UP007
_PARSERS = {TAG_HASH: HashDescriptor, TAG_HASHTREE: HashTreeDescriptor, TAG_CHAIN: ChainDescriptor}


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest. ``raw`` is the exact bytes; ``tbs`` what the signature covers.
    Parsing checks structure only; :mod:`mstcrypt.apps.boot.verify` checks trust."""

    stage: str
    rollback_location: int
    rollback_index: int
    signer_key: SM2PublicKey
    descriptors: tuple[Descriptor, ...]
    signature: bytes
    tbs: bytes
    raw: bytes

    @property
    def chain(self) -> ChainDescriptor | None:
        for d in self.descriptors:
            if isinstance(d, ChainDescriptor):
                return d
        return None

    @property
    def images(self) -> tuple[HashDescriptor | HashTreeDescriptor, ...]:
        return tuple(d for d in self.descriptors if not isinstance(d, ChainDescriptor))

    @property
    def digest(self) -> bytes:
        """SM3 of the whole manifest: the stage's measurement (§6)."""
        return sm3(self.raw)

    @staticmethod
    def encode_tbs(
        stage: str,
        descriptors: list[Descriptor] | tuple[Descriptor, ...],
        *,
        rollback_index: int,
        rollback_location: int,
        signer_key: SM2PublicKey,
    ) -> bytes:
        if not 0 <= rollback_location < ROLLBACK_SLOTS:
            raise _fail(f"rollback location must be 0..{ROLLBACK_SLOTS - 1}")
        if not 0 <= rollback_index <= _U64:
            raise _fail("rollback index must fit in 64 bits")
        if not 1 <= len(descriptors) <= MAX_DESCRIPTORS:
            raise _fail(f"a manifest holds 1..{MAX_DESCRIPTORS} descriptors")
        out = bytearray(MAGIC)
        out += struct.pack(">BBHQ", VERSION, 0, rollback_location, rollback_index)
        out += signer_key.to_bytes() + _name(stage) + struct.pack(">H", len(descriptors))
        for d in descriptors:
            body = d.body()
            if len(body) > MAX_BODY:
                raise _fail(f"descriptor body longer than {MAX_BODY} bytes")
            out += struct.pack(">HI", d.tag, len(body)) + body
        return bytes(out)

    @classmethod
    def build(
        cls,
        stage: str,
        descriptors: list[Descriptor] | tuple[Descriptor, ...],
        *,
        rollback_index: int,
        rollback_location: int,
        key: SM2PrivateKey,
    ) -> Manifest:
        """Encode and sign a manifest with ``key``; the result is parsed back, so a
        manifest that this module writes is one it accepts."""
        tbs = cls.encode_tbs(
            stage,
            descriptors,
            rollback_index=rollback_index,
            rollback_location=rollback_location,
            signer_key=key.public_key(),
        )
        sig = key.sign(tbs)
        m = cls.parse(tbs + struct.pack(">H", len(sig)) + sig)
        m.signer_key.verify(m.signature, m.tbs)
        return m

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Strict, bounded parse (§3). Raises :class:`BootFormatError`."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise _fail("manifest must be bytes")
        data = bytes(data)
        if len(data) > MAX_MANIFEST:
            raise _fail(f"manifest larger than {MAX_MANIFEST} bytes")
        r = _Reader(data, "manifest")
        if r.take(8, "magic") != MAGIC:
            raise _fail("bad magic (not a boot manifest)")
        if (v := r.u8("version")) != VERSION:
            raise _fail(f"unsupported version {v}")
        if r.u8("flags"):
            raise _fail("reserved flags set")
        loc = r.u16("rollback location")
        if loc >= ROLLBACK_SLOTS:
            raise _fail(f"rollback location must be 0..{ROLLBACK_SLOTS - 1}")
        index = r.u64("rollback index")
        key = r.key("signer key")
        stage = r.name("stage name")
        n = r.u16("descriptor count")
        if not 1 <= n <= MAX_DESCRIPTORS:
            raise _fail(f"descriptor count must be 1..{MAX_DESCRIPTORS}, got {n}")
        descriptors: list[Descriptor] = []
        names: set[str] = set()
        for i in range(n):
            tag = r.u16(f"descriptor {i} tag")
            length = r.u32(f"descriptor {i} length")
            if length > MAX_BODY:
                raise _fail(f"descriptor {i} longer than {MAX_BODY} bytes")
            parser = _PARSERS.get(tag)
            if parser is None:
                raise _fail(f"descriptor {i} has unknown tag {tag}")
            sub = _Reader(r.take(length, f"descriptor {i} body"), f"descriptor {i}")
            d = parser.parse(sub)
            sub.end()
            if isinstance(d, ChainDescriptor):
                if any(isinstance(x, ChainDescriptor) for x in descriptors):
                    raise _fail("more than one chain descriptor")
            elif d.name in names:
                raise _fail(f"image {d.name!r} described twice")
            else:
                names.add(d.name)
            descriptors.append(d)
        tbs = data[: r.pos]
        sig_len = r.u16("signature length")
        if not 8 <= sig_len <= 72:
            raise _fail("signature length must be 8..72")
        sig = r.take(sig_len, "signature")
        r.end()
        return cls(stage, loc, index, key, tuple(descriptors), sig, tbs, data)
