"""A minimal strict DER reader for the two GM/T 0009 structures the primitives check
before handing bytes to libcrypto (which is more lenient). Everything richer lives in
:mod:`mstcrypt.formats` on top of asn1crypto."""

from __future__ import annotations

from mstcrypt.errors import DecodeError


def read_tlv(data: bytes, pos: int, tag: int, what: str) -> tuple[bytes, int]:
    """Read one definite-length, minimally encoded TLV with ``tag`` at ``pos``.
    Returns (contents, next position)."""
    if pos + 2 > len(data) or data[pos] != tag:
        raise DecodeError(f"{what}: expected tag {tag:#04x}")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise DecodeError(f"{what}: bad length")
        length = int.from_bytes(data[pos : pos + n], "big")
        if length < 0x80 or data[pos] == 0:
            raise DecodeError(f"{what}: length not minimally encoded")
        pos += n
    end = pos + length
    if end > len(data):
        raise DecodeError(f"{what}: truncated")
    return data[pos:end], end


def positive_integer(contents: bytes, what: str) -> int:
    if not contents:
        raise DecodeError(f"{what}: empty INTEGER")
    if contents[0] & 0x80:
        raise DecodeError(f"{what}: negative INTEGER")
    if len(contents) > 1 and contents[0] == 0 and not contents[1] & 0x80:
        raise DecodeError(f"{what}: INTEGER not minimally encoded")
    return int.from_bytes(contents, "big")


def sm2_cipher(der: bytes) -> tuple[int, int, bytes, bytes]:
    """Strictly parse SM2Cipher ::= SEQUENCE { x INTEGER, y INTEGER, hash OCTET STRING,
    ciphertext OCTET STRING } → (x, y, C3, C2). No trailing bytes anywhere."""
    body, end = read_tlv(der, 0, 0x30, "SM2Cipher")
    if end != len(der):
        raise DecodeError("SM2Cipher: trailing bytes")
    x, p = read_tlv(body, 0, 0x02, "SM2Cipher.x")
    y, p = read_tlv(body, p, 0x02, "SM2Cipher.y")
    c3, p = read_tlv(body, p, 0x04, "SM2Cipher.hash")
    c2, p = read_tlv(body, p, 0x04, "SM2Cipher.ciphertext")
    if p != len(body):
        raise DecodeError("SM2Cipher: unexpected fields after ciphertext")
    return positive_integer(x, "SM2Cipher.x"), positive_integer(y, "SM2Cipher.y"), c3, c2
