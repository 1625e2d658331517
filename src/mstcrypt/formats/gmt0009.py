"""GM/T 0009 (GB/T 35276) SM2 data structures: SM2Signature and SM2Cipher, with
converters between the DER ciphertext and the raw C1C3C2 / legacy C1C2C3 forms."""

from __future__ import annotations

import enum

from asn1crypto.core import Integer, OctetString, Sequence

from mstcrypt.crypto.curve import SIZE, P
from mstcrypt.crypto.hazmat.ec import Point
from mstcrypt.crypto.sm2 import check_cipher_der, signature_from_raw, signature_to_raw
from mstcrypt.errors import DecodeError, InvalidKeyError, PolicyError
from mstcrypt.formats._der import dump, load_strict

__all__ = [
    "CipherOrder",
    "SM2Cipher",
    "SM2CipherParts",
    "SM2Signature",
    "cipher_from_raw",
    "cipher_to_raw",
    "decode_cipher",
    "encode_cipher",
    "signature_from_raw",
    "signature_to_raw",
]

C3_SIZE = 32


class SM2Signature(Sequence):
    _fields = [("r", Integer), ("s", Integer)]


class SM2Cipher(Sequence):
    _fields = [
        ("x", Integer),
        ("y", Integer),
        ("hash", OctetString),
        ("ciphertext", OctetString),
    ]


class CipherOrder(enum.StrEnum):
    C1C3C2 = "c1c3c2"  #: GM/T 0003-2012, GB/T 32918.4-2016
    C1C2C3 = "c1c2c3"  #: the 2010 draft (legacy)


def _order(value: object) -> CipherOrder:
    try:
        return CipherOrder(value)
    except ValueError:
        raise PolicyError(
            f"unknown ciphertext order {value!r}; expected c1c3c2 or c1c2c3"
        ) from None


class SM2CipherParts:
    """The three parts of an SM2 ciphertext: C1 (point), C3 (32-byte hash), C2."""

    __slots__ = ("c1", "c2", "c3")

    def __init__(self, c1: Point, c3: bytes, c2: bytes) -> None:
        if len(c3) != C3_SIZE:
            raise DecodeError(f"SM2 C3 must be {C3_SIZE} bytes, got {len(c3)}")
        if not c2:
            raise DecodeError("SM2 C2 is empty")
        self.c1, self.c3, self.c2 = c1, c3, c2


def decode_cipher(der: bytes) -> SM2CipherParts:
    """Strictly parse a DER SM2Cipher."""
    value = load_strict(SM2Cipher, der, "SM2Cipher")
    check_cipher_der(der)
    x, y = value["x"].native, value["y"].native
    if not (0 <= x < P and 0 <= y < P):
        raise InvalidKeyError("SM2Cipher C1 coordinate out of range")
    c1 = Point.from_xy(x, y)
    return SM2CipherParts(c1, value["hash"].native, value["ciphertext"].native)


def encode_cipher(parts: SM2CipherParts) -> bytes:
    return dump(
        SM2Cipher({"x": parts.c1.x, "y": parts.c1.y, "hash": parts.c3, "ciphertext": parts.c2})
    )


def cipher_to_raw(
    der: bytes, order: CipherOrder | str = CipherOrder.C1C3C2, *, with_04: bool = True
) -> bytes:
    """DER SM2Cipher → raw C1‖C3‖C2 (default) or C1‖C2‖C3, C1 with or without 04."""
    parts = decode_cipher(der)
    c1 = parts.c1.to_bytes()
    if not with_04:
        c1 = c1[1:]
    if _order(order) is CipherOrder.C1C3C2:
        return c1 + parts.c3 + parts.c2
    return c1 + parts.c2 + parts.c3


def cipher_from_raw(
    raw: bytes, order: CipherOrder | str = CipherOrder.C1C3C2, *, with_04: bool = True
) -> bytes:
    """Raw C1C3C2 / C1C2C3 → DER SM2Cipher. The expected form is strict: with_04=True
    needs a leading 04 byte, with_04=False needs none."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise DecodeError("ciphertext must be bytes")
    raw = bytes(raw)
    order = _order(order)
    plen = 1 + 2 * SIZE if with_04 else 2 * SIZE
    if len(raw) < plen + C3_SIZE + 1:
        raise DecodeError(
            f"raw SM2 ciphertext ({order.value}, {'with' if with_04 else 'without'} 04) "
            f"must be at least {plen + C3_SIZE + 1} bytes, got {len(raw)}"
        )
    if with_04 and raw[0] != 4:
        raise DecodeError(
            f"raw SM2 ciphertext expected {order.value} with a leading 04 byte "
            f"(got {raw[0]:#04x}; DER starts with 0x30)"
        )
    c1 = Point.from_bytes(raw[:plen])
    rest = raw[plen:]
    if order is CipherOrder.C1C3C2:
        c3, c2 = rest[:C3_SIZE], rest[C3_SIZE:]
    else:
        c2, c3 = rest[:-C3_SIZE], rest[-C3_SIZE:]
    return encode_cipher(SM2CipherParts(c1, c3, c2))
