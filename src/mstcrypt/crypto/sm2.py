"""SM2 public-key cryptography (GB/T 32918) on the recommended curve sm2p256v1.

Signatures (with the signer ID and Z value), public-key encryption and key objects,
backed by OpenSSL 3 libcrypto through cffi. Per-key state — the libcrypto key object,
its sign/verify/encrypt contexts and the Z value for each signer ID — is built once per
key object and reused, so the hot paths do one SM3 and one libcrypto call.

Standard forms by default: DER ``SM2Signature`` (GM/T 0009), DER ``SM2Cipher``
(GM/T 0009) and the default signer ID ``1234567812345678``. Raw r‖s signatures are
available on request; ciphertext converters (C1C3C2, C1C2C3) are in
:mod:`mstcrypt.formats.gmt0009`.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes

from mstcrypt.crypto import _der, _fixedbase
from mstcrypt.crypto import _libcrypto as _lc
from mstcrypt.crypto.curve import CURVE_Z_PARAMS, SIZE, N, P
from mstcrypt.crypto.hazmat.ec import Point, mul_base
from mstcrypt.crypto.random import random_scalar
from mstcrypt.errors import (
    DecodeError,
    DecryptionError,
    InvalidKeyError,
    PolicyError,
    SignatureFormatError,
    VerificationError,
)

__all__ = [
    "DEFAULT_ID",
    "SM2PrivateKey",
    "SM2PublicKey",
    "SignatureEncoding",
    "check_cipher_der",
    "compute_z",
    "signature_from_raw",
    "signature_to_raw",
]

# Fail at import, with a message naming the library, when SM2 is unavailable.
_lc.lib()

#: The default signer ID of GM/T 0009 / GB/T 35276.
DEFAULT_ID = b"1234567812345678"
MAX_ID_BYTES = 0xFFFF // 8
MAX_SIG_DER = 72


class SignatureEncoding(enum.StrEnum):
    DER = "der"  #: GM/T 0009 SM2Signature ::= SEQUENCE { r INTEGER, s INTEGER }
    RAW = "raw"  #: 64 bytes r‖s, as in SDF/SKF device APIs


def _b(data: object, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise PolicyError(f"{what} must be bytes, not {type(data).__name__}")


def _check_id(signer_id: object) -> bytes:
    if isinstance(signer_id, str):
        signer_id = signer_id.encode("utf-8")
    sid = _b(signer_id, "signer ID")
    if len(sid) > MAX_ID_BYTES:
        raise PolicyError(f"signer ID longer than {MAX_ID_BYTES} bytes (ENTL is 16 bits)")
    return sid


def compute_z(public_key: bytes | SM2PublicKey, signer_id: bytes = DEFAULT_ID) -> bytes:
    """Z = SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA) (GB/T 32918.2 §5.5)."""
    if not isinstance(public_key, SM2PublicKey):
        public_key = SM2PublicKey.from_bytes(public_key)
    return public_key.z(signer_id)


# --- signature encodings (DER handled by libcrypto's own strict codec) -----------------


def signature_to_raw(der: bytes) -> bytes:
    """Strictly decode a DER SM2Signature to 64 bytes r‖s.

    Rejects trailing bytes, non-minimal encodings and r, s outside [1, n-1] with
    :class:`SignatureFormatError`.
    """
    der = _b(der, "signature")
    if not 8 <= len(der) <= MAX_SIG_DER:
        raise SignatureFormatError(
            f"DER SM2Signature must be 8..72 bytes, got {len(der)} (expected DER, not raw r‖s?)"
        )
    L = _lc.lib()
    ffi = _lc.ffi
    buf = ffi.new("unsigned char[]", der)
    pp = ffi.new("const unsigned char **", buf)
    sig = L.d2i_ECDSA_SIG(ffi.NULL, pp, len(der))
    if sig == ffi.NULL:
        _lc.drain_errors()
        raise SignatureFormatError("malformed DER SM2Signature")
    sig = ffi.gc(sig, L.ECDSA_SIG_free)
    consumed = pp[0] - ffi.cast("const unsigned char *", buf)
    if consumed != len(der):
        raise SignatureFormatError("trailing bytes after DER SM2Signature")
    out = ffi.new("unsigned char **")
    n = L.i2d_ECDSA_SIG(sig, ffi.NULL)
    reenc = ffi.new("unsigned char[]", max(n, 1))
    out[0] = reenc
    L.i2d_ECDSA_SIG(sig, out)
    if bytes(ffi.buffer(reenc, n)) != der:
        raise SignatureFormatError("SM2Signature is not in canonical DER")
    pr = ffi.new("const BIGNUM **")
    ps = ffi.new("const BIGNUM **")
    L.ECDSA_SIG_get0(sig, pr, ps)
    r, s = _lc.bn_to_int(pr[0]), _lc.bn_to_int(ps[0])
    if not (1 <= r < N and 1 <= s < N):
        raise SignatureFormatError("SM2Signature r or s outside [1, n-1]")
    return r.to_bytes(SIZE, "big") + s.to_bytes(SIZE, "big")


def signature_from_raw(raw: bytes) -> bytes:
    """Encode 64 bytes r‖s as DER SM2Signature; r, s must be in [1, n-1]."""
    raw = _b(raw, "signature")
    if len(raw) != 2 * SIZE:
        raise SignatureFormatError(f"raw SM2 signature must be 64 bytes (r‖s), got {len(raw)}")
    r, s = int.from_bytes(raw[:SIZE], "big"), int.from_bytes(raw[SIZE:], "big")
    if not (1 <= r < N and 1 <= s < N):
        raise SignatureFormatError("SM2 signature r or s outside [1, n-1]")
    return _der_sig(r, s)


def _der_int(v: int) -> bytes:
    body = v.to_bytes(v.bit_length() // 8 + 1, "big")  # leading 0 when the top bit is set
    return b"\x02" + bytes([len(body)]) + body


def _der_sig(r: int, s: int) -> bytes:
    body = _der_int(r) + _der_int(s)
    return b"\x30" + bytes([len(body)]) + body


# --- context pools -----------------------------------------------------------------


class _CtxPool:
    """A small thread-safe pool of initialised EVP_PKEY_CTX for one key and one
    operation. Contexts are reused across calls (initialised once)."""

    __slots__ = ("_free", "_init", "_pkey")

    def __init__(self, pkey: Any, init: Callable[[Any], int]) -> None:
        self._pkey = pkey
        self._init = init
        self._free: list[Any] = []

    def acquire(self) -> Any:
        try:
            return self._free.pop()
        except IndexError:
            pass
        L = _lc.lib()
        ctx = L.EVP_PKEY_CTX_new_from_pkey(_lc.ffi.NULL, self._pkey, _lc.ffi.NULL)
        if ctx == _lc.ffi.NULL:
            raise _lc.fail("EVP_PKEY_CTX_new_from_pkey")
        ctx = _lc.ffi.gc(ctx, L.EVP_PKEY_CTX_free)
        if self._init(ctx) != 1:
            raise _lc.fail("EVP_PKEY operation init")
        return ctx

    def release(self, ctx: Any) -> None:
        if len(self._free) < 16:
            self._free.append(ctx)


def _pkey_from_params(priv: int | None, pub: bytes) -> Any:
    L = _lc.lib()
    ffi = _lc.ffi
    bld = L.OSSL_PARAM_BLD_new()
    if bld == ffi.NULL:
        raise _lc.fail("OSSL_PARAM_BLD_new")
    try:
        if L.OSSL_PARAM_BLD_push_utf8_string(bld, b"group", b"SM2", 3) != 1:
            raise _lc.fail("OSSL_PARAM_BLD_push_utf8_string")
        if L.OSSL_PARAM_BLD_push_octet_string(bld, b"pub", pub, len(pub)) != 1:
            raise _lc.fail("OSSL_PARAM_BLD_push_octet_string")
        bn = None
        if priv is not None:
            bn = _lc.bn_from_int(priv)
            if L.OSSL_PARAM_BLD_push_BN(bld, b"priv", bn) != 1:
                raise _lc.fail("OSSL_PARAM_BLD_push_BN")
        params = L.OSSL_PARAM_BLD_to_param(bld)
        if params == ffi.NULL:
            raise _lc.fail("OSSL_PARAM_BLD_to_param")
    finally:
        L.OSSL_PARAM_BLD_free(bld)
    return _lc.pkey_fromdata(b"SM2", params, keypair=priv is not None)


# --- keys ---------------------------------------------------------------------------


class SM2PublicKey:
    """An SM2 public key. Immutable; safe to share between threads."""

    __slots__ = ("__weakref__", "_enc", "_lock", "_pkey", "_point", "_raw", "_verify", "_z")

    def __init__(self, point: Point) -> None:
        if not isinstance(point, Point):
            raise PolicyError("SM2PublicKey needs a Point; use SM2PublicKey.from_bytes")
        self._point = point
        self._raw = point.to_bytes()
        self._pkey: Any = None
        self._verify: _CtxPool | None = None
        self._enc: _CtxPool | None = None
        self._z: dict[bytes, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_bytes(cls, data: bytes) -> SM2PublicKey:
        """Accepts 04‖x‖y (65 bytes), x‖y (64 bytes) or a compressed point (33 bytes).
        The point must be on the curve and not the point at infinity."""
        return cls(Point.from_bytes(data))

    def to_bytes(self, form: str = "uncompressed") -> bytes:
        """``uncompressed`` 04‖x‖y (default), ``compressed`` 02/03‖x, or ``xy`` x‖y."""
        if form == "uncompressed":
            return self._raw
        if form == "compressed":
            return self._point.to_bytes(compressed=True)
        if form == "xy":
            return self._raw[1:]
        raise PolicyError(f"unknown point form {form!r}; expected uncompressed, compressed or xy")

    @property
    def point(self) -> Point:
        return self._point

    def _evp(self) -> Any:
        if self._pkey is None:
            with self._lock:
                if self._pkey is None:
                    self._pkey = _pkey_from_params(None, self._raw)
        return self._pkey

    # Z and the message digest e = SM3(Z ‖ M)
    def _zentry(self, signer_id: bytes) -> tuple[bytes, Any]:
        entry = self._z.get(signer_id) if isinstance(signer_id, bytes) else None
        if entry is None:
            sid = _check_id(signer_id)
            z = hashes.Hash(hashes.SM3())
            z.update((len(sid) * 8).to_bytes(2, "big") + sid + CURVE_Z_PARAMS + self._raw[1:])
            zv = z.finalize()
            h = hashes.Hash(hashes.SM3())
            h.update(zv)
            entry = (zv, h)
            if len(self._z) < 64:
                self._z[sid] = entry
        return entry

    def z(self, signer_id: bytes = DEFAULT_ID) -> bytes:
        """The Z value of this key for ``signer_id`` (cached per ID)."""
        return self._zentry(signer_id)[0]

    def message_digest(self, message: bytes, signer_id: bytes = DEFAULT_ID) -> bytes:
        """e = SM3(Z ‖ M), the value actually signed."""
        h = self._zentry(signer_id)[1].copy()
        h.update(_b(message, "message"))
        return h.finalize()

    # verification
    def verify(
        self,
        signature: bytes,
        message: bytes,
        *,
        signer_id: bytes = DEFAULT_ID,
        encoding: SignatureEncoding | str = SignatureEncoding.DER,
    ) -> None:
        """Verify a signature over ``message`` made with ``signer_id``.

        Returns None; raises :class:`VerificationError` when the signature is invalid
        (:class:`SignatureFormatError`, also a DecodeError, when it is not even in the
        requested encoding).
        """
        self.verify_digest(signature, self.message_digest(message, signer_id), encoding=encoding)

    def verify_digest(
        self,
        signature: bytes,
        digest: bytes,
        *,
        encoding: SignatureEncoding | str = SignatureEncoding.DER,
    ) -> None:
        """Verify a signature over a precomputed e = SM3(Z ‖ M) (32 bytes)."""
        digest = _b(digest, "digest")
        if len(digest) != 32:
            raise PolicyError(f"digest must be the 32-byte e = SM3(Z‖M), got {len(digest)}")
        enc = _enum(SignatureEncoding, encoding, "signature encoding")
        if enc is SignatureEncoding.RAW:
            der = signature_from_raw(signature)
        else:
            der = _b(signature, "signature")
            if len(der) > MAX_SIG_DER:
                raise SignatureFormatError(f"DER SM2Signature longer than {MAX_SIG_DER} bytes")
        if _fixedbase.enabled():
            rs = _fixedbase.parse_der_signature(der)
            if rs is None:  # the strict decoder gives the reason (or the values)
                raw = signature_to_raw(der)
                rs = int.from_bytes(raw[:SIZE], "big"), int.from_bytes(raw[SIZE:], "big")
            if not _fixedbase.verify(self._raw, rs[0], rs[1], digest):
                raise VerificationError("SM2 signature does not verify")
            return
        if self._verify is None:
            self._verify = _CtxPool(self._evp(), _lc.lib().EVP_PKEY_verify_init)
        pool = self._verify
        ctx = pool.acquire()
        try:
            rc = _lc.lib().EVP_PKEY_verify(ctx, der, len(der), digest, 32)
        finally:
            pool.release(ctx)
        if rc != 1:
            _lc.drain_errors()
            if enc is SignatureEncoding.DER:
                # libcrypto already rejects non-canonical DER and r, s out of range; tell
                # the caller *why* (malformed vs. wrong) with the strict decoder.
                signature_to_raw(der)
            raise VerificationError("SM2 signature does not verify")

    # encryption
    def encrypt(self, plaintext: bytes) -> bytes:
        """SM2-encrypt ``plaintext`` to this key; returns DER SM2Cipher (GM/T 0009)."""
        plaintext = _b(plaintext, "plaintext")
        if not plaintext:
            raise PolicyError("SM2 cannot encrypt an empty message (klen must be > 0)")
        if self._enc is None:
            self._enc = _CtxPool(self._evp(), _lc.lib().EVP_PKEY_encrypt_init)
        L = _lc.lib()
        ffi = _lc.ffi
        ctx = self._enc.acquire()
        try:
            outlen = ffi.new("size_t *")
            if L.EVP_PKEY_encrypt(ctx, ffi.NULL, outlen, plaintext, len(plaintext)) != 1:
                raise _lc.fail("EVP_PKEY_encrypt (size)")
            out = ffi.new("unsigned char[]", outlen[0])
            if L.EVP_PKEY_encrypt(ctx, out, outlen, plaintext, len(plaintext)) != 1:
                raise _lc.fail("EVP_PKEY_encrypt")
            return bytes(ffi.buffer(out, outlen[0]))
        finally:
            self._enc.release(ctx)

    def fingerprint(self) -> bytes:
        """SM3 of the uncompressed point (a stable identifier, not a secret)."""
        h = hashes.Hash(hashes.SM3())
        h.update(self._raw)
        return h.finalize()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SM2PublicKey):
            return NotImplemented
        return self._raw == other._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"SM2PublicKey(x={self._raw[1:9].hex()}…)"


def check_cipher_der(data: bytes) -> None:
    """Strict structural check of a DER SM2Cipher: canonical DER, no trailing bytes,
    coordinates in [0, p), C3 of 32 bytes, non-empty C2. Raises DecodeError."""
    x, y, c3, c2 = _der.sm2_cipher(data)
    if x >= P or y >= P:
        raise DecodeError("SM2Cipher: C1 coordinate is not a field element")
    if len(c3) != 32:
        raise DecodeError(f"SM2Cipher: C3 must be 32 bytes, got {len(c3)}")
    if not c2:
        raise DecodeError("SM2Cipher: C2 is empty")


def _enum(kind: type[enum.StrEnum], value: object, what: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise PolicyError(f"unknown {what} {value!r}; expected one of: {choices}") from None


class SM2PrivateKey:
    """An SM2 private key d ∈ [1, n-2] with its public key. The repr shows no secret."""

    __slots__ = ("__weakref__", "_d", "_dec", "_lock", "_pkey", "_public", "_sign")

    def __init__(self, d: int, *, _public: SM2PublicKey | None = None) -> None:
        if not isinstance(d, int) or isinstance(d, bool):
            raise InvalidKeyError("SM2 private key must be an int; use from_bytes")
        if not 1 <= d <= N - 2:
            raise InvalidKeyError("SM2 private key outside [1, n-2]")
        self._d = d
        self._public = _public or SM2PublicKey(mul_base(d))
        self._pkey: Any = None
        self._sign: _CtxPool | None = None
        self._dec: _CtxPool | None = None
        self._lock = threading.Lock()

    @classmethod
    def generate(cls) -> SM2PrivateKey:
        """A new key with d drawn uniformly from [1, n-2] by the OS CSPRNG."""
        return cls(random_scalar(N - 2))

    @classmethod
    def from_bytes(cls, data: bytes) -> SM2PrivateKey:
        """From the 32-byte big-endian scalar d."""
        data = _b(data, "private key")
        if len(data) != SIZE:
            raise InvalidKeyError(f"raw SM2 private key must be 32 bytes, got {len(data)}")
        return cls(int.from_bytes(data, "big"))

    def private_bytes(self) -> bytes:
        """The raw 32-byte scalar d. Handle with care: for serialisation layers only."""
        return self._d.to_bytes(SIZE, "big")

    def private_int(self) -> int:
        """d as an int (for low-level protocols such as key exchange)."""
        return self._d

    def public_key(self) -> SM2PublicKey:
        return self._public

    def _evp(self) -> Any:
        if self._pkey is None:
            with self._lock:
                if self._pkey is None:
                    self._pkey = _pkey_from_params(self._d, self._public.to_bytes())
        return self._pkey

    def sign(
        self,
        message: bytes,
        *,
        signer_id: bytes = DEFAULT_ID,
        encoding: SignatureEncoding | str = SignatureEncoding.DER,
    ) -> bytes:
        """Sign ``message`` as signer ``signer_id``: e = SM3(Z ‖ M), then SM2 with a
        fresh random k. DER SM2Signature by default, r‖s with ``encoding="raw"``."""
        return self.sign_digest(self._public.message_digest(message, signer_id), encoding=encoding)

    def sign_digest(
        self, digest: bytes, *, encoding: SignatureEncoding | str = SignatureEncoding.DER
    ) -> bytes:
        """Sign a precomputed e = SM3(Z ‖ M) (32 bytes), as SDF/SKF devices do."""
        digest = _b(digest, "digest")
        if len(digest) != 32:
            raise PolicyError(f"digest must be the 32-byte e = SM3(Z‖M), got {len(digest)}")
        enc = _enum(SignatureEncoding, encoding, "signature encoding")
        if self._sign is None:
            self._sign = _CtxPool(self._evp(), _lc.lib().EVP_PKEY_sign_init)
        L = _lc.lib()
        ffi = _lc.ffi
        pool = self._sign
        ctx = pool.acquire()
        try:
            out = ffi.new("unsigned char[]", 80)
            outlen = ffi.new("size_t *", 80)
            if L.EVP_PKEY_sign(ctx, out, outlen, digest, 32) != 1:
                raise _lc.fail("EVP_PKEY_sign")
            der = bytes(ffi.buffer(out, outlen[0]))
        finally:
            pool.release(ctx)
        if enc is SignatureEncoding.RAW:
            return signature_to_raw(der)
        return der

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Decrypt a DER SM2Cipher (GM/T 0009). C1 must be on the curve and C3 must
        match; anything else raises :class:`DecryptionError`. Use
        :mod:`mstcrypt.formats.gmt0009` to convert raw C1C3C2/C1C2C3 first."""
        ciphertext = _b(ciphertext, "ciphertext")
        try:
            check_cipher_der(ciphertext)
        except DecodeError as exc:
            raise DecryptionError(
                f"SM2 ciphertext is not a canonical DER SM2Cipher ({exc}); raw "
                "C1C3C2/C1C2C3 must be converted with mstcrypt.formats.gmt0009 first"
            ) from None
        if self._dec is None:
            self._dec = _CtxPool(self._evp(), _lc.lib().EVP_PKEY_decrypt_init)
        L = _lc.lib()
        ffi = _lc.ffi
        pool = self._dec
        ctx = pool.acquire()
        try:
            out = ffi.new("unsigned char[]", len(ciphertext))
            outlen = ffi.new("size_t *", len(ciphertext))
            rc = L.EVP_PKEY_decrypt(ctx, out, outlen, ciphertext, len(ciphertext))
            if rc != 1:
                reason = _lc.drain_errors()
                raise DecryptionError(
                    "SM2 decryption failed" + (f" ({reason.rsplit(':', 1)[-1]})" if reason else "")
                )
            return bytes(ffi.buffer(out, outlen[0]))
        finally:
            pool.release(ctx)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SM2PrivateKey):
            return NotImplemented
        import hmac

        return hmac.compare_digest(self.private_bytes(), other.private_bytes())

    def __hash__(self) -> int:
        return hash(self._public)

    def __repr__(self) -> str:
        return f"SM2PrivateKey(public={self._public!r})"

    def __reduce__(self) -> Any:
        raise PolicyError("SM2PrivateKey cannot be pickled; serialise it explicitly")
