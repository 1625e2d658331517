"""The package name and version of an APK, read from its binary AndroidManifest.xml.

Only what app signing needs: the central directory entry of ``AndroidManifest.xml``, its
local header and data (stored or deflated, at most :data:`MAX_MANIFEST` bytes once
inflated), and in Android's binary XML the string pool, the resource map and the first
start element, which must be ``<manifest>``: its ``package`` attribute and the
``android:versionCode`` (resource 0x0101021b) and ``android:versionName`` (0x0101021c)
attributes. Every length is checked against its chunk; anything else raises
PackageFormatError("bad-manifest").
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from mstcrypt.apps.appsign.errors import PackageFormatError
from mstcrypt.apps.appsign.package import ApkLayout

__all__ = ["MAX_MANIFEST", "Manifest", "read_manifest"]

MAX_MANIFEST = 4 << 20
_NAME = b"AndroidManifest.xml"
_VERSION_CODE, _VERSION_NAME = 0x0101021B, 0x0101021C
_NONE = 0xFFFFFFFF
_TYPE_STRING, _TYPE_INT_DEC, _TYPE_INT_HEX = 0x03, 0x10, 0x11


@dataclass(frozen=True)
class Manifest:
    package: str
    version_code: int
    version_name: str | None


def _bad(message: str) -> PackageFormatError:
    return PackageFormatError("bad-manifest", f"AndroidManifest.xml: {message}")


def _entry(f: BinaryIO, layout: ApkLayout) -> bytes:
    f.seek(layout.cd_offset)
    cd = f.read(layout.cd_size)
    pos, found = 0, None
    for _ in range(layout.cd_entries):
        (method,) = struct.unpack_from("<H", cd, pos + 10)
        csize, usize, nlen, xlen, clen = struct.unpack_from("<IIHHH", cd, pos + 20)
        (local,) = struct.unpack_from("<I", cd, pos + 42)
        name = cd[pos + 46 : pos + 46 + nlen]
        if name == _NAME:
            if found is not None:
                raise _bad("the package has two entries of this name")
            found = (method, csize, usize, local)
        pos += 46 + nlen + xlen + clen
    if found is None:
        raise _bad("missing from the package")
    method, csize, usize, local = found
    if usize > MAX_MANIFEST or csize > MAX_MANIFEST:
        raise _bad(f"larger than {MAX_MANIFEST} bytes")
    f.seek(local)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise _bad("bad local file header")
    nlen, xlen = struct.unpack_from("<HH", header, 26)
    start = local + 30 + nlen + xlen
    if start + csize > layout.block_offset:
        raise _bad("entry data overruns the ZIP entries")
    f.seek(start)
    data = f.read(csize)
    if method == 0:
        if csize != usize:
            raise _bad("stored entry with different sizes")
        return data
    if method != 8:
        raise _bad(f"unsupported compression method {method}")
    d = zlib.decompressobj(-15)
    try:
        out = d.decompress(data, MAX_MANIFEST + 1)
    except zlib.error:
        raise _bad("corrupt deflate data") from None
    if len(out) != usize or not d.eof:
        raise _bad("inflated size differs from the central directory")
    return out


def _len8(chunk: bytes, p: int) -> tuple[int, int]:
    n = chunk[p]
    if n & 0x80:
        return ((n & 0x7F) << 8) | chunk[p + 1], p + 2
    return n, p + 1


def _strings(chunk: bytes) -> list[str]:
    count, styles, flags, start, _ = struct.unpack_from("<IIIII", chunk, 8)
    header = struct.unpack_from("<H", chunk, 2)[0]
    if count > 65536 or header + 4 * (count + styles) > len(chunk) or start > len(chunk):
        raise _bad("string pool counts overrun the chunk")
    utf8 = bool(flags & 0x100)
    out = []
    for i in range(count):
        (off,) = struct.unpack_from("<I", chunk, header + 4 * i)
        p = start + off
        try:
            if utf8:
                # two lengths, each 1 byte (or 2 with the top bit set): UTF-16 units, bytes
                _, p = _len8(chunk, p)
                n, p = _len8(chunk, p)
                raw = chunk[p : p + n]
                if len(raw) != n:
                    raise IndexError
                out.append(raw.decode("utf-8"))
            else:
                (n,) = struct.unpack_from("<H", chunk, p)
                p += 2
                if n & 0x8000:
                    (lo,) = struct.unpack_from("<H", chunk, p)
                    n = ((n & 0x7FFF) << 16) | lo
                    p += 2
                raw = chunk[p : p + 2 * n]
                if len(raw) != 2 * n:
                    raise IndexError
                out.append(raw.decode("utf-16-le"))
        except (IndexError, struct.error, UnicodeDecodeError):
            raise _bad(f"string {i} of the pool is malformed") from None
    return out


def parse_axml(data: bytes) -> Manifest:
    """The manifest element's package and version from binary XML ``data``."""
    try:
        rtype, hsize, total = struct.unpack_from("<HHI", data, 0)
    except struct.error:
        raise _bad("too short for binary XML") from None
    if rtype != 0x0003 or hsize != 8 or total != len(data):
        raise _bad("not Android binary XML")
    pos = 8
    strings: list[str] | None = None
    rmap: list[int] = []
    while pos < total:
        if total - pos < 8:
            raise _bad("truncated chunk header")
        ctype, chsize, csize = struct.unpack_from("<HHI", data, pos)
        if csize < 8 or chsize < 8 or chsize > csize or pos + csize > total:
            raise _bad(f"chunk at {pos} has a bad size")
        chunk = data[pos : pos + csize]
        try:
            if ctype == 0x0001:
                strings = _strings(chunk)
            elif ctype == 0x0180:
                rmap = [
                    v
                    for (v,) in struct.iter_unpack(
                        "<I", chunk[chsize : csize - (csize - chsize) % 4]
                    )
                ]
            elif ctype == 0x0102:
                if strings is None:
                    raise _bad("element before the string pool")
                return _manifest(chunk, chsize, strings, rmap)
        except struct.error:
            raise _bad(f"chunk at {pos} is truncated") from None
        pos += csize
    raise _bad("no <manifest> element")


def _manifest(chunk: bytes, chsize: int, strings: list[str], rmap: list[int]) -> Manifest:
    def s(i: int) -> str:
        if i >= len(strings):
            raise _bad(f"string index {i} out of range")
        return strings[i]

    _, name, astart, asize, count = struct.unpack_from("<IIHHH", chunk, chsize)
    if s(name) != "manifest":
        raise _bad(f"first element is <{s(name)}>, not <manifest>")
    if asize < 20 or chsize + astart + asize * count > len(chunk):
        raise _bad("attributes overrun the element")
    package = code = vname = None
    for k in range(count):
        base = chsize + astart + asize * k
        ns, aname, raw, _, _, dtype, value = struct.unpack_from("<IIIHBBI", chunk, base)
        rid = rmap[aname] if aname < len(rmap) else None
        if ns == _NONE and s(aname) == "package":
            package = s(raw) if raw != _NONE else s(value) if dtype == _TYPE_STRING else None
        elif rid == _VERSION_CODE:
            if dtype not in (_TYPE_INT_DEC, _TYPE_INT_HEX):
                raise _bad("android:versionCode is not an integer")
            code = value
        elif rid == _VERSION_NAME:
            vname = s(raw) if raw != _NONE else s(value) if dtype == _TYPE_STRING else None
    if not package:
        raise _bad("<manifest> has no package attribute")
    if code is None:
        raise _bad("<manifest> has no android:versionCode")
    return Manifest(package, code, vname)


def read_manifest(f: BinaryIO, layout: ApkLayout) -> Manifest:
    """Package name and version of the APK open in ``f`` (parsed as ``layout``)."""
    return parse_axml(_entry(f, layout))
