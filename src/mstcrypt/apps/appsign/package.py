"""The APK container: strict parsing of the ZIP end records and the APK Signing Block,
the chunked SM3 content digest, and the writer that inserts ID-value pairs.

An APK signed with scheme v2/v3 is laid out as (all integers little-endian)::

    ZIP entries (section 1) | APK Signing Block | Central Directory | EOCD

and the block is ``uint64 size | pairs | uint64 size | "APK Sig Block 42"``, each pair
``uint64 len | uint32 id | value`` with ``len = 4 + len(value)``. Everything here reads
through a seekable binary file object and keeps at most one 1 MiB chunk (and the central
directory, bounded by :data:`MAX_CENTRAL_DIRECTORY`) in memory, so multi-gigabyte
packages verify in constant memory.

The content digest is the APK Signature Scheme v2 digest with SM3 in place of SHA-256:
sections 1, 3 and 4 (the EOCD with its central-directory-offset field replaced by the
offset of the signing block) cut into 1 MiB chunks, each hashed as
``SM3(0xa5 | uint32 len | chunk)``, and the top digest
``SM3(0x5a | uint32 count | chunk digests)``. The signing block itself is not covered,
which is why pairs can be added after signing without changing it.

Every malformed or hostile length (EOCD not at the end, central directory not followed
by the EOCD, sizes that disagree or overlap, pairs that overrun the block, more than
:data:`MAX_PAIRS` pairs, duplicate IDs, ZIP64) raises :class:`PackageFormatError` with a
code from docs/app-signing.md §6; a plain zip without a block raises
:class:`NotSignedError`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.hazmat.primitives import hashes

from mstcrypt.apps.appsign.errors import NotSignedError, PackageFormatError

__all__ = [
    "APK_SIGNATURE_IDS",
    "APK_SIG_BLOCK_MAGIC",
    "CHUNK_SIZE",
    "MAX_CENTRAL_DIRECTORY",
    "MAX_PAIRS",
    "MAX_PAIR_VALUE",
    "PADDING_PAIR_ID",
    "V2_PAIR_ID",
    "V3_PAIR_ID",
    "V31_PAIR_ID",
    "ApkLayout",
    "Pair",
    "content_digest",
    "pair_digest",
    "read_layout",
    "read_pair_value",
    "write_with_pairs",
]

APK_SIG_BLOCK_MAGIC = b"APK Sig Block 42"
V2_PAIR_ID = 0x7109871A
V3_PAIR_ID = 0xF05368C0
V31_PAIR_ID = 0x1B93AD61
PADDING_PAIR_ID = 0x42726577
#: the pairs holding Android's own signatures (v2, v3, v3.1)
APK_SIGNATURE_IDS = (V2_PAIR_ID, V3_PAIR_ID, V31_PAIR_ID)

#: the v2/v3 chunk size
CHUNK_SIZE = 1 << 20
#: most ID-value pairs accepted in one block (apksigner writes at most a handful)
MAX_PAIRS = 64
#: largest pair value read into memory (our layers are a few KiB)
MAX_PAIR_VALUE = 1 << 20
#: largest central directory accepted (it is read whole to be checked)
MAX_CENTRAL_DIRECTORY = 64 << 20

_EOCD_SIG = b"PK\x05\x06"
_EOCD_SIZE = 22
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_CDH_SIG = b"PK\x01\x02"
_CDH_SIZE = 46
_BLOCK_MIN = 32
_SM3 = hashes.SM3()


@dataclass(frozen=True)
class Pair:
    """One ID-value pair: ``offset`` is the absolute file offset of its value."""

    id: int
    offset: int
    length: int


@dataclass(frozen=True)
class ApkLayout:
    """Where the parts of a package are. ``block_offset`` is where the APK Signing Block
    starts (the central directory offset when there is none)."""

    size: int
    block_offset: int
    cd_offset: int
    cd_size: int
    cd_entries: int
    eocd_offset: int
    eocd: bytes
    pairs: tuple[Pair, ...]

    @property
    def block_size(self) -> int:
        return self.cd_offset - self.block_offset

    def pair(self, pair_id: int) -> Pair | None:
        for p in self.pairs:
            if p.id == pair_id:
                return p
        return None

    @property
    def has_apk_signature(self) -> bool:
        return any(p.id in APK_SIGNATURE_IDS for p in self.pairs)


def _fail(code: str, message: str) -> PackageFormatError:
    return PackageFormatError(code, message)


def _size(f: BinaryIO) -> int:
    try:
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        pos = f.seek(0, os.SEEK_END)
        return pos


def _read_at(f: BinaryIO, offset: int, length: int) -> bytes:
    f.seek(offset)
    data = f.read(length)
    if len(data) != length:
        raise _fail("not-a-zip", f"file ends before offset {offset + length}")
    return data


def _find_eocd(f: BinaryIO, size: int) -> int:
    if size < _EOCD_SIZE:
        raise _fail("not-a-zip", f"{size} bytes is too short for a ZIP end of central directory")
    # the EOCD is the last 22 bytes plus a comment of up to 65535 bytes; the record whose
    # comment length reaches exactly the end of the file is the one (apksig does the same)
    tail_len = min(size, _EOCD_SIZE + 0xFFFF)
    tail = _read_at(f, size - tail_len, tail_len)
    for i in range(tail_len - _EOCD_SIZE, -1, -1):
        if tail[i : i + 4] == _EOCD_SIG:
            (comment_len,) = struct.unpack_from("<H", tail, i + 20)
            if i + _EOCD_SIZE + comment_len == tail_len:
                return size - tail_len + i
    raise _fail("not-a-zip", "no ZIP end of central directory record at the end of the file")


def _check_central_directory(cd: bytes, entries: int, limit: int) -> None:
    """Walk every central directory header: the count must match the EOCD, the headers
    must fill the directory exactly, and every local header must lie in section 1."""
    pos = 0
    for n in range(entries):
        if pos + _CDH_SIZE > len(cd) or cd[pos : pos + 4] != _CDH_SIG:
            raise _fail("bad-central-directory", f"central directory header {n} is malformed")
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", cd, pos + 28)
        disk = struct.unpack_from("<H", cd, pos + 34)[0]
        csize, usize = struct.unpack_from("<II", cd, pos + 20)
        (local,) = struct.unpack_from("<I", cd, pos + 42)
        if 0xFFFFFFFF in (csize, usize, local):
            raise _fail("zip64-unsupported", "ZIP64 entries are not supported in APKs")
        if disk != 0:
            raise _fail("multi-disk-unsupported", "multi-disk ZIP archives are not supported")
        if local + 30 > limit:
            raise _fail(
                "bad-central-directory",
                f"central directory header {n} points at {local}, past the ZIP entries",
            )
        pos += _CDH_SIZE + name_len + extra_len + comment_len
        if pos > len(cd):
            raise _fail("bad-central-directory", f"central directory header {n} overruns")
    if pos != len(cd):
        raise _fail(
            "bad-central-directory",
            f"{len(cd) - pos} bytes after the {entries} central directory headers",
        )


def read_layout(f: BinaryIO, *, require_block: bool = True) -> ApkLayout:
    """Parse the end records and the APK Signing Block of the package open in ``f``.

    Raises :class:`PackageFormatError` on anything malformed, and :class:`NotSignedError`
    when ``require_block`` and the package has no signing block or no v2/v3 signature.
    """
    size = _size(f)
    eocd_offset = _find_eocd(f, size)
    eocd = _read_at(f, eocd_offset, _EOCD_SIZE)
    disk, cd_disk, n_disk, n_total, cd_size, cd_offset, _ = struct.unpack_from("<HHHHIIH", eocd, 4)
    if 0xFFFF in (n_disk, n_total) or 0xFFFFFFFF in (cd_size, cd_offset):
        raise _fail("zip64-unsupported", "ZIP64 archives are not supported in APKs")
    if eocd_offset >= 20 and _read_at(f, eocd_offset - 20, 4) == _ZIP64_LOCATOR_SIG:
        raise _fail("zip64-unsupported", "ZIP64 archives are not supported in APKs")
    if disk != 0 or cd_disk != 0 or n_disk != n_total:
        raise _fail("multi-disk-unsupported", "multi-disk ZIP archives are not supported")
    if cd_offset + cd_size != eocd_offset:
        raise _fail(
            "bad-eocd",
            f"central directory [{cd_offset}, +{cd_size}) is not immediately followed by "
            f"the end of central directory at {eocd_offset}",
        )
    if cd_size > MAX_CENTRAL_DIRECTORY:
        raise _fail("bad-central-directory", f"central directory of {cd_size} bytes is too large")

    block_offset = cd_offset
    pairs: list[Pair] = []
    if cd_offset >= _BLOCK_MIN and _read_at(f, cd_offset - 16, 16) == APK_SIG_BLOCK_MAGIC:
        (footer_size,) = struct.unpack("<Q", _read_at(f, cd_offset - 24, 8))
        total = footer_size + 8
        if footer_size < _BLOCK_MIN - 8 or total > cd_offset:
            raise _fail(
                "bad-signing-block",
                f"APK Signing Block size {footer_size} does not fit before the central "
                f"directory at {cd_offset}",
            )
        block_offset = cd_offset - total
        (header_size,) = struct.unpack("<Q", _read_at(f, block_offset, 8))
        if header_size != footer_size:
            raise _fail(
                "bad-signing-block",
                f"APK Signing Block sizes disagree (header {header_size}, footer {footer_size})",
            )
        pos, end = block_offset + 8, cd_offset - 24
        seen: set[int] = set()
        while pos < end:
            if len(pairs) == MAX_PAIRS:
                raise _fail("bad-signing-block", f"more than {MAX_PAIRS} ID-value pairs")
            if end - pos < 12:
                raise _fail("bad-pair", f"{end - pos} stray bytes at the end of the pairs")
            plen, pid = struct.unpack("<QI", _read_at(f, pos, 12))
            if plen < 4 or plen > end - pos - 8:
                raise _fail(
                    "bad-pair",
                    f"ID-value pair {len(pairs)} (id 0x{pid:08x}) has length {plen}, "
                    f"outside [4, {end - pos - 8}]",
                )
            if pid in seen:
                raise _fail("duplicate-pair", f"ID 0x{pid:08x} appears twice in the block")
            seen.add(pid)
            pairs.append(Pair(pid, pos + 12, plen - 4))
            pos += 8 + plen
    elif require_block:
        raise NotSignedError(
            "no-signing-block",
            "the package has no APK Signing Block: it is a plain zip or a v1-only APK; "
            "sign it with apksigner (scheme v2 or v3) first",
        )

    cd = _read_at(f, cd_offset, cd_size)
    _check_central_directory(cd, n_total, block_offset)
    layout = ApkLayout(
        size=size,
        block_offset=block_offset,
        cd_offset=cd_offset,
        cd_size=cd_size,
        cd_entries=n_total,
        eocd_offset=eocd_offset,
        eocd=eocd + _read_at(f, eocd_offset + _EOCD_SIZE, size - eocd_offset - _EOCD_SIZE),
        pairs=tuple(pairs),
    )
    if require_block and not layout.has_apk_signature:
        raise NotSignedError(
            "no-apk-signature",
            "the APK Signing Block holds no v2/v3 signature; sign with apksigner first",
        )
    return layout


def read_pair_value(f: BinaryIO, pair: Pair, *, limit: int = MAX_PAIR_VALUE) -> bytes:
    """The value of ``pair``; PackageFormatError("pair-too-large") above ``limit``."""
    if pair.length > limit:
        raise _fail(
            "pair-too-large", f"pair 0x{pair.id:08x} holds {pair.length} bytes (limit {limit})"
        )
    return _read_at(f, pair.offset, pair.length)


def pair_digest(f: BinaryIO, pair: Pair) -> bytes:
    """SM3 of the value of ``pair`` (streamed: no size limit)."""
    h = hashes.Hash(_SM3)
    f.seek(pair.offset)
    left = pair.length
    while left:
        data = f.read(min(left, CHUNK_SIZE))
        if not data:
            raise _fail("not-a-zip", "the file changed or ended while being digested")
        h.update(data)
        left -= len(data)
    return h.finalize()


def _eocd_for_digest(layout: ApkLayout) -> bytes:
    eocd = bytearray(layout.eocd)
    struct.pack_into("<I", eocd, 16, layout.block_offset)
    return bytes(eocd)


def content_digest(f: BinaryIO, layout: ApkLayout) -> bytes:
    """The chunked SM3 digest (32 bytes) of sections 1, 3 and 4 of the package."""
    chunk_digests: list[bytes] = []
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)

    def chunk(data: memoryview | bytes) -> None:
        h = hashes.Hash(_SM3)
        h.update(b"\xa5" + struct.pack("<I", len(data)))
        h.update(data)
        chunk_digests.append(h.finalize())

    for start, length in ((0, layout.block_offset), (layout.cd_offset, layout.cd_size)):
        f.seek(start)
        left = length
        while left:
            n = min(left, CHUNK_SIZE)
            got = f.readinto(view[:n])  # type: ignore[attr-defined]
            if got != n:
                raise _fail("not-a-zip", "the file changed or ended while being digested")
            chunk(view[:n])
            left -= n
    eocd = _eocd_for_digest(layout)
    for i in range(0, len(eocd), CHUNK_SIZE):
        chunk(eocd[i : i + CHUNK_SIZE])
    top = hashes.Hash(_SM3)
    top.update(b"\x5a" + struct.pack("<I", len(chunk_digests)))
    for d in chunk_digests:
        top.update(d)
    return top.finalize()


def _copy(src: BinaryIO, dst: BinaryIO, start: int, length: int) -> None:
    src.seek(start)
    left = length
    while left:
        data = src.read(min(left, CHUNK_SIZE))
        if not data:
            raise _fail("not-a-zip", "the input changed or ended while being copied")
        dst.write(data)
        left -= len(data)


def _padding(total: int) -> bytes:
    """The verity-padding pair that makes a block of ``total`` bytes a multiple of 4096
    (apksigner's rule: at least 12 bytes, so add 4096 when the gap is smaller)."""
    gap = (-total) % 4096
    if gap == 0:
        return b""
    if gap < 12:
        gap += 4096
    return struct.pack("<QI", gap - 8, PADDING_PAIR_ID) + bytes(gap - 12)


def write_with_pairs(
    src: BinaryIO,
    layout: ApkLayout,
    dst: BinaryIO,
    put: Mapping[int, bytes],
    *,
    remove: Iterable[int] = (),
) -> None:
    """Copy the package in ``src`` (parsed as ``layout``) to ``dst`` with the pairs of
    ``put`` added (or replaced, keeping their place) and those of ``remove`` dropped.

    Section 1 and the central directory are copied byte for byte; the EOCD gets the new
    central directory offset. When the input block was padded to a multiple of 4096
    bytes, the padding pair is resized to keep it so. The v2/v3 signatures, which cover
    neither the block nor the EOCD offset field, stay valid.
    """
    removed = set(remove)
    pending = dict(put)
    body: list[bytes] = []
    padded = layout.pair(PADDING_PAIR_ID) is not None
    for p in layout.pairs:
        if p.id == PADDING_PAIR_ID or p.id in removed:
            continue
        if p.id in pending:
            value = pending.pop(p.id)
            body.append(struct.pack("<QI", len(value) + 4, p.id) + value)
            continue
        src.seek(p.offset - 12)
        raw = src.read(p.length + 12)
        if len(raw) != p.length + 12:
            raise _fail("not-a-zip", "the input changed or ended while being copied")
        body.append(raw)
    for pid, value in pending.items():
        body.append(struct.pack("<QI", len(value) + 4, pid) + value)
    pairs = b"".join(body)
    if len(body) > MAX_PAIRS:
        raise _fail("bad-signing-block", f"more than {MAX_PAIRS} ID-value pairs")
    if padded:
        pairs += _padding(8 + len(pairs) + 24)
    size = len(pairs) + 24
    block = struct.pack("<Q", size) + pairs + struct.pack("<Q", size) + APK_SIG_BLOCK_MAGIC
    _copy(src, dst, 0, layout.block_offset)
    dst.write(block)
    _copy(src, dst, layout.cd_offset, layout.cd_size)
    eocd = bytearray(layout.eocd)
    new_cd = layout.block_offset + len(block)
    if new_cd > 0xFFFFFFFF:
        raise _fail("zip64-unsupported", "the output would need ZIP64")
    struct.pack_into("<I", eocd, 16, new_cd)
    dst.write(bytes(eocd))
