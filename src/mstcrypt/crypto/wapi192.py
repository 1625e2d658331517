"""ECDSA and ECDH on the WAPI 192-bit prime curve, backed by OpenSSL libcrypto.

GB 15629.11-2003/XG1-2006 (WAI) signs with ECDSA over SHA-256 and agrees keys with ECDH
on one named 192-bit curve, OID 1.2.156.11235.1.1.2.1 ("wapip192v1" in BouncyCastle's
GMNamedCurves). It is *not* NIST P-192 / prime192v1: OpenSSL has no name for it, so the
group is built from its explicit parameters once per process.

* keys: :class:`PrivateKey` (``generate()``, ``from_int()``), :class:`PublicKey`
  (``from_bytes(04‖x‖y)``: on-curve and not infinity, checked by libcrypto);
* ECDSA: ``PrivateKey.sign(data) -> r‖s`` (48 bytes, SHA-256 of ``data``),
  ``PublicKey.verify(signature, data)`` raising :class:`VerificationError`;
* ECDH: ``PrivateKey.exchange(peer) -> x`` (24 bytes, the x-coordinate of d·Q).

Nothing here is constant-time beyond what libcrypto provides.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from mstcrypt.crypto import _libcrypto as _lc
from mstcrypt.errors import DecodeError, InvalidKeyError, VerificationError

__all__ = [
    "CURVE_OID",
    "CURVE_OID_DER",
    "SIZE",
    "PrivateKey",
    "PublicKey",
]

P = 0xBDB6F4FE3E8B1D9E0DA8C0D46F4C318CEFE4AFE3B6B8551F
A = 0xBB8E5E8FBC115E139FE6A814FE48AAA6F0ADA1AA5DF91985
B = 0x1854BEBDC31B21B7AEFC80AB0ECD10D5B1B3308E6DBF11C1
GX = 0x4AD5F7048DE709AD51236DE65E4D4B482C836DC6E4106640
GY = 0x02BB3A02D4AAADACAE24817A4CA3A1B014B5270432DB27D2
N = 0xBDB6F4FE3E8B1D9E0DA8C0D40FC962195DFAE76F56564677
H = 1

#: Byte length of a coordinate or scalar.
SIZE = 24
CURVE_OID = "1.2.156.11235.1.1.2.1"
#: The OID as a complete DER TLV, as the WAI ECDH parameter and signature algorithm carry it.
CURVE_OID_DER = bytes.fromhex("06092a811cd76301010201")

_GEN = b"\x04" + GX.to_bytes(SIZE, "big") + GY.to_bytes(SIZE, "big")


class _Group:
    def __init__(self) -> None:
        L = _lc.lib()
        ffi = _lc.ffi
        group = L.EC_GROUP_new_curve_GFp(
            _lc.bn_from_int(P), _lc.bn_from_int(A), _lc.bn_from_int(B), ffi.NULL
        )
        if group == ffi.NULL:
            raise _lc.fail("EC_GROUP_new_curve_GFp")
        self.ptr = ffi.gc(group, L.EC_GROUP_free)
        gen = L.EC_POINT_new(self.ptr)
        if gen == ffi.NULL:
            raise _lc.fail("EC_POINT_new")
        gen = ffi.gc(gen, L.EC_POINT_free)
        if L.EC_POINT_oct2point(self.ptr, gen, _GEN, len(_GEN), ffi.NULL) != 1:
            raise _lc.fail("EC_POINT_oct2point(G)")
        if L.EC_GROUP_set_generator(self.ptr, gen, _lc.bn_from_int(N), _lc.bn_from_int(H)) != 1:
            raise _lc.fail("EC_GROUP_set_generator")
        if L.EC_GROUP_precompute_mult(self.ptr, ffi.NULL) != 1:
            raise _lc.fail("EC_GROUP_precompute_mult")


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


def _encode(point: Any) -> bytes:
    L = _lc.lib()
    buf = _lc.ffi.new("unsigned char[]", 1 + 2 * SIZE)
    n = L.EC_POINT_point2oct(
        _group(), point, _lc.POINT_CONVERSION_UNCOMPRESSED, buf, 1 + 2 * SIZE, _lc.ffi.NULL
    )
    if n != 1 + 2 * SIZE:
        raise _lc.fail("EC_POINT_point2oct")
    return bytes(_lc.ffi.buffer(buf, n))


def _evp_key(pub: bytes, priv: int | None) -> Any:
    """An EVP_PKEY with the curve's explicit parameters (OpenSSL knows no name for it)."""
    L = _lc.lib()
    ffi = _lc.ffi
    bld = L.OSSL_PARAM_BLD_new()
    if bld == ffi.NULL:
        raise _lc.fail("OSSL_PARAM_BLD_new")
    keep = []
    try:
        if L.OSSL_PARAM_BLD_push_utf8_string(bld, b"field-type", b"prime-field", 11) != 1:
            raise _lc.fail("OSSL_PARAM_BLD_push_utf8_string")
        for name, value in ((b"p", P), (b"a", A), (b"b", B), (b"order", N), (b"cofactor", H)):
            bn = _lc.bn_from_int(value)
            keep.append(bn)
            if L.OSSL_PARAM_BLD_push_BN(bld, name, bn) != 1:
                raise _lc.fail("OSSL_PARAM_BLD_push_BN")
        if L.OSSL_PARAM_BLD_push_octet_string(bld, b"generator", _GEN, len(_GEN)) != 1:
            raise _lc.fail("OSSL_PARAM_BLD_push_octet_string")
        if L.OSSL_PARAM_BLD_push_octet_string(bld, b"pub", pub, len(pub)) != 1:
            raise _lc.fail("OSSL_PARAM_BLD_push_octet_string")
        if priv is not None:
            bn = _lc.bn_from_int(priv)
            keep.append(bn)
            if L.OSSL_PARAM_BLD_push_BN(bld, b"priv", bn) != 1:
                raise _lc.fail("OSSL_PARAM_BLD_push_BN")
        params = L.OSSL_PARAM_BLD_to_param(bld)
        if params == ffi.NULL:
            raise _lc.fail("OSSL_PARAM_BLD_to_param")
    finally:
        L.OSSL_PARAM_BLD_free(bld)
    return _lc.pkey_fromdata(b"EC", params, keypair=priv is not None)


def _pkey_ctx(pkey: Any) -> Any:
    L = _lc.lib()
    ctx = L.EVP_PKEY_CTX_new_from_pkey(_lc.ffi.NULL, pkey, _lc.ffi.NULL)
    if ctx == _lc.ffi.NULL:
        raise _lc.fail("EVP_PKEY_CTX_new_from_pkey")
    return _lc.ffi.gc(ctx, L.EVP_PKEY_CTX_free)


def _sig_to_raw(der: bytes) -> bytes:
    L = _lc.lib()
    ffi = _lc.ffi
    buf = ffi.new("unsigned char[]", der)
    pp = ffi.new("const unsigned char **", buf)
    sig = L.d2i_ECDSA_SIG(ffi.NULL, pp, len(der))
    if sig == ffi.NULL:
        raise _lc.fail("d2i_ECDSA_SIG")
    sig = ffi.gc(sig, L.ECDSA_SIG_free)
    r = ffi.new("const BIGNUM **")
    s = ffi.new("const BIGNUM **")
    L.ECDSA_SIG_get0(sig, r, s)
    return _lc.bn_to_int(r[0]).to_bytes(SIZE, "big") + _lc.bn_to_int(s[0]).to_bytes(SIZE, "big")


def _raw_to_der(raw: bytes) -> bytes:
    r = int.from_bytes(raw[:SIZE], "big")
    s = int.from_bytes(raw[SIZE:], "big")
    if not (0 < r < N and 0 < s < N):
        raise VerificationError("ECDSA-192 signature: r or s out of range")

    def _int(v: int) -> bytes:
        body = v.to_bytes(v.bit_length() // 8 + 1, "big")
        return b"\x02" + bytes([len(body)]) + body

    seq = _int(r) + _int(s)
    return b"\x30" + bytes([len(seq)]) + seq


class PublicKey:
    """A point of the WAPI curve other than infinity, checked on decode."""

    __slots__ = ("_evp", "_ptr", "_raw")

    def __init__(self, _ptr: Any, _raw: bytes) -> None:
        self._ptr = _ptr
        self._raw = _raw
        self._evp: Any = None

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicKey:
        """Decode 04‖x‖y (49 bytes); refuse other forms, off-curve points and infinity."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError("WAPI public key must be bytes")
        data = bytes(data)
        if len(data) != 1 + 2 * SIZE or data[0] != 4:
            raise InvalidKeyError(
                f"WAPI public key: expected 04‖x‖y ({1 + 2 * SIZE} bytes), got {len(data)} bytes"
            )
        if (
            int.from_bytes(data[1 : 1 + SIZE], "big") >= P
            or int.from_bytes(data[1 + SIZE :], "big") >= P
        ):
            raise InvalidKeyError("WAPI public key: coordinate not below p")
        L = _lc.lib()
        pt = _new_point()
        if L.EC_POINT_oct2point(_group(), pt, data, len(data), _lc.ffi.NULL) != 1:
            _lc.drain_errors()
            raise InvalidKeyError("WAPI public key: point is not on the curve")
        if L.EC_POINT_is_at_infinity(_group(), pt):
            raise InvalidKeyError("WAPI public key: the point at infinity")
        return cls(pt, data)

    def to_bytes(self) -> bytes:
        return self._raw

    def verify(self, signature: bytes, data: bytes) -> None:
        """Check an r‖s ECDSA signature over SHA-256(data); raise VerificationError."""
        if len(signature) != 2 * SIZE:
            raise VerificationError(f"ECDSA-192 signature: expected {2 * SIZE} bytes (r‖s)")
        der = _raw_to_der(bytes(signature))
        if self._evp is None:
            self._evp = _evp_key(self._raw, None)
        L = _lc.lib()
        ctx = _pkey_ctx(self._evp)
        if L.EVP_PKEY_verify_init(ctx) != 1:
            raise _lc.fail("EVP_PKEY_verify_init")
        digest = hashlib.sha256(data).digest()
        rc = L.EVP_PKEY_verify(ctx, der, len(der), digest, len(digest))
        _lc.drain_errors()
        if rc != 1:
            raise VerificationError("ECDSA-192 signature does not verify")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"wapi192.PublicKey({self._raw[1:9].hex()}…)"


class PrivateKey:
    """A scalar 1 <= d < n with its public point."""

    __slots__ = ("_d", "_evp", "_public")

    def __init__(self, _d: int) -> None:
        if not isinstance(_d, int) or isinstance(_d, bool) or not 1 <= _d < N:
            raise InvalidKeyError("WAPI private key out of range: expected 1 <= d < n")
        self._d = _d
        L = _lc.lib()
        pt = _new_point()
        if (
            L.EC_POINT_mul(
                _group(), pt, _lc.bn_from_int(_d), _lc.ffi.NULL, _lc.ffi.NULL, _lc.ffi.NULL
            )
            != 1
        ):
            raise _lc.fail("EC_POINT_mul")
        self._public = PublicKey(pt, _encode(pt))
        self._evp: Any = None

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(secrets.randbelow(N - 1) + 1)

    @classmethod
    def from_int(cls, d: int) -> PrivateKey:
        return cls(d)

    @classmethod
    def from_bytes(cls, data: bytes) -> PrivateKey:
        if len(data) != SIZE:
            raise InvalidKeyError(f"WAPI private key: expected {SIZE} bytes")
        return cls(int.from_bytes(data, "big"))

    def to_bytes(self) -> bytes:
        return self._d.to_bytes(SIZE, "big")

    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        """ECDSA over SHA-256(data), returned as r‖s (48 bytes)."""
        if self._evp is None:
            self._evp = _evp_key(self._public.to_bytes(), self._d)
        L = _lc.lib()
        ffi = _lc.ffi
        ctx = _pkey_ctx(self._evp)
        if L.EVP_PKEY_sign_init(ctx) != 1:
            raise _lc.fail("EVP_PKEY_sign_init")
        digest = hashlib.sha256(data).digest()
        out = ffi.new("unsigned char[]", 128)
        outlen = ffi.new("size_t *", 128)
        if L.EVP_PKEY_sign(ctx, out, outlen, digest, len(digest)) != 1:
            raise _lc.fail("EVP_PKEY_sign")
        return _sig_to_raw(bytes(ffi.buffer(out, outlen[0])))

    def exchange(self, peer: PublicKey) -> bytes:
        """ECDH: the x-coordinate (24 bytes) of d·Q."""
        if not isinstance(peer, PublicKey):
            raise InvalidKeyError("ECDH peer must be a wapi192.PublicKey")
        L = _lc.lib()
        pt = _new_point()
        if (
            L.EC_POINT_mul(
                _group(), pt, _lc.ffi.NULL, peer._ptr, _lc.bn_from_int(self._d), _lc.ffi.NULL
            )
            != 1
        ):
            raise _lc.fail("EC_POINT_mul")
        if L.EC_POINT_is_at_infinity(_group(), pt):
            raise InvalidKeyError("ECDH result is the point at infinity")
        return _encode(pt)[1 : 1 + SIZE]

    def __repr__(self) -> str:
        return "wapi192.PrivateKey(<secret>)"

    def __reduce__(self) -> Any:
        raise TypeError("WAPI private keys are not picklable")
