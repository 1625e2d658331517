"""LOW-LEVEL SM2 curve point arithmetic, backed by OpenSSL libcrypto.

Points are immutable values. Decoding always checks that the point is on the curve and
is not the point at infinity; scalars are checked to be integers in range. Nothing here
is constant-time beyond what libcrypto provides for EC_POINT_mul.
"""

from __future__ import annotations

from typing import Any

from mstcrypt.crypto import _libcrypto as _lc
from mstcrypt.crypto.curve import GX, GY, SIZE, N, P
from mstcrypt.errors import DecodeError, InvalidKeyError

__all__ = ["N", "P", "Point", "add_mul_public", "generator", "mul_base", "multi_mul"]


class _Group:
    """The SM2 group with precomputed multiples of G, shared by all points."""

    def __init__(self) -> None:
        L = _lc.lib()
        group = L.EC_GROUP_new_by_curve_name(_lc.NID_SM2)
        if group == _lc.ffi.NULL:
            raise _lc.fail("EC_GROUP_new_by_curve_name(SM2)")
        self.ptr = _lc.ffi.gc(group, L.EC_GROUP_free)


_GROUP: _Group | None = None


def _group() -> Any:
    global _GROUP
    if _GROUP is None:
        _GROUP = _Group()
    return _GROUP.ptr


def _new_point() -> Any:
    L = _lc.lib()
    p = L.EC_POINT_new(_group())
    if p == _lc.ffi.NULL:
        raise _lc.fail("EC_POINT_new")
    return _lc.ffi.gc(p, L.EC_POINT_clear_free)


def _check_scalar(k: int, *, allow_zero: bool = False) -> None:
    if not isinstance(k, int) or isinstance(k, bool):
        raise InvalidKeyError("scalar must be an int")
    low = 0 if allow_zero else 1
    if not low <= k < N:
        raise InvalidKeyError(f"scalar out of range: expected {low} <= k < n")


class Point:
    """A point of the SM2 curve other than the point at infinity."""

    __slots__ = ("_ptr", "_x", "_y")

    def __init__(self, _ptr: Any) -> None:
        # Internal: use Point.from_bytes / from_xy / mul_base.
        L = _lc.lib()
        if L.EC_POINT_is_at_infinity(_group(), _ptr):
            raise InvalidKeyError("the point at infinity is not allowed here")
        self._ptr = _ptr
        buf = _lc.ffi.new("unsigned char[]", 65)
        n = L.EC_POINT_point2oct(
            _group(), _ptr, _lc.POINT_CONVERSION_UNCOMPRESSED, buf, 65, _lc.ffi.NULL
        )
        if n != 65:
            raise _lc.fail("EC_POINT_point2oct")
        raw = bytes(_lc.ffi.buffer(buf, 65))
        self._x = int.from_bytes(raw[1:33], "big")
        self._y = int.from_bytes(raw[33:], "big")

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes) -> Point:
        """Decode 04‖x‖y (65 bytes), 02/03‖x (33 bytes, compressed) or x‖y (64 bytes)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError("point must be bytes")
        data = bytes(data)
        if len(data) == 64:
            data = b"\x04" + data
        if len(data) == 65:
            if data[0] != 4:
                raise DecodeError("65-byte point must start with 04 (uncompressed form)")
        elif len(data) == 33:
            if data[0] not in (2, 3):
                raise DecodeError("33-byte point must start with 02 or 03 (compressed form)")
        else:
            raise DecodeError(
                f"point has {len(data)} bytes; expected 65 (04‖x‖y), 64 (x‖y) or 33 (compressed)"
            )
        if int.from_bytes(data[1:33], "big") >= P or (
            len(data) == 65 and int.from_bytes(data[33:], "big") >= P
        ):
            raise InvalidKeyError("point coordinate is not a field element (>= p)")
        L = _lc.lib()
        p = _new_point()
        if L.EC_POINT_oct2point(_group(), p, data, len(data), _lc.ffi.NULL) != 1:
            _lc.drain_errors()
            raise InvalidKeyError("point is not on the SM2 curve")
        if L.EC_POINT_is_on_curve(_group(), p, _lc.ffi.NULL) != 1:
            _lc.drain_errors()
            raise InvalidKeyError("point is not on the SM2 curve")
        return cls(p)

    @classmethod
    def from_xy(cls, x: int, y: int) -> Point:
        if not (0 <= x < P and 0 <= y < P):
            raise InvalidKeyError("point coordinate is not a field element")
        return cls.from_bytes(b"\x04" + x.to_bytes(SIZE, "big") + y.to_bytes(SIZE, "big"))

    # -- accessors ---------------------------------------------------------------
    @property
    def x(self) -> int:
        return self._x

    @property
    def y(self) -> int:
        return self._y

    def to_bytes(self, *, compressed: bool = False) -> bytes:
        if compressed:
            return bytes([2 | (self._y & 1)]) + self._x.to_bytes(SIZE, "big")
        return b"\x04" + self._x.to_bytes(SIZE, "big") + self._y.to_bytes(SIZE, "big")

    # -- arithmetic -------------------------------------------------------------------
    def __mul__(self, k: int) -> Point:
        """Scalar multiplication k·P with 1 <= k < n."""
        _check_scalar(k)
        L = _lc.lib()
        r = _new_point()
        if (
            L.EC_POINT_mul(_group(), r, _lc.ffi.NULL, self._ptr, _lc.bn_from_int(k), _lc.ffi.NULL)
            != 1
        ):
            raise _lc.fail("EC_POINT_mul")
        return Point(r)

    __rmul__ = __mul__

    def __add__(self, other: Point) -> Point:
        """Point addition; raises InvalidKeyError if the sum is the point at infinity."""
        if not isinstance(other, Point):
            return NotImplemented
        L = _lc.lib()
        r = _new_point()
        if L.EC_POINT_add(_group(), r, self._ptr, other._ptr, _lc.ffi.NULL) != 1:
            raise _lc.fail("EC_POINT_add")
        return Point(r)

    def __neg__(self) -> Point:
        return Point.from_xy(self._x, (-self._y) % P)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Point):
            return NotImplemented
        return self._x == other._x and self._y == other._y

    def __hash__(self) -> int:
        return hash((self._x, self._y))

    def __repr__(self) -> str:
        return f"Point(x={self._x:#066x}, y={self._y:#066x})"


def mul_base(k: int) -> Point:
    """k·G for 1 <= k < n (uses libcrypto's fixed-base path)."""
    _check_scalar(k)
    L = _lc.lib()
    r = _new_point()
    if (
        L.EC_POINT_mul(_group(), r, _lc.bn_from_int(k), _lc.ffi.NULL, _lc.ffi.NULL, _lc.ffi.NULL)
        != 1
    ):
        raise _lc.fail("EC_POINT_mul")
    return Point(r)


def multi_mul(a: int, p: Point, b: int, q: Point) -> Point:
    """a·P + b·Q (both scalars in [1, n-1])."""
    return p * a + q * b


def add_mul_public(p: Point, q: Point, k: int) -> Point:
    """p + k·q for a PUBLIC scalar k in [1, n-1], in one call to libcrypto's
    interleaved wNAF multiplication. Variable time: k, p and q must not be secret (the
    SM2 key exchange uses it for P + x̄·R, all values on the wire or in certificates).
    Raises InvalidKeyError when the sum is the point at infinity."""
    _check_scalar(k)
    if not isinstance(p, Point) or not isinstance(q, Point):
        raise InvalidKeyError("add_mul_public needs two points")
    L = _lc.lib()
    ffi = _lc.ffi
    try:
        points_mul = L.EC_POINTs_mul
    except AttributeError:  # pragma: no cover - libcrypto built with no-deprecated
        return p + q * k
    r = _new_point()
    pts = ffi.new("const EC_POINT *[2]", [p._ptr, q._ptr])
    one, kb = _lc.bn_from_int(1), _lc.bn_from_int(k)
    bns = ffi.new("const BIGNUM *[2]", [one, kb])
    if points_mul(_group(), r, ffi.NULL, 2, pts, bns, ffi.NULL) != 1:
        raise _lc.fail("EC_POINTs_mul")
    return Point(r)


def generator() -> Point:
    """The base point G."""
    return Point.from_xy(GX, GY)
