"""SM3 (GB/T 32905), HMAC-SM3, the SM2 KDF (GB/T 32918.4 §5.4.3) and PBKDF2-HMAC-SM3.

Backed by pyca/cryptography (OpenSSL).
"""

from __future__ import annotations

import hmac as _hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _chmac
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from mstcrypt.errors import PolicyError, VerificationError

__all__ = [
    "DIGEST_SIZE",
    "SM3",
    "HmacSM3",
    "hmac_sm3",
    "hmac_sm3_verify",
    "kdf",
    "pbkdf2_hmac_sm3",
    "sm3",
]

DIGEST_SIZE = 32
BLOCK_SIZE = 64
_SM3 = hashes.SM3()


def _as_bytes(data: object, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise PolicyError(f"{what} must be bytes, not {type(data).__name__}")


class SM3:
    """Incremental SM3: ``SM3().update(a).update(b).digest()``."""

    __slots__ = ("_ctx",)
    digest_size = DIGEST_SIZE
    block_size = BLOCK_SIZE
    name = "sm3"

    def __init__(self, data: bytes = b"") -> None:
        self._ctx = hashes.Hash(_SM3)
        if data:
            self.update(data)

    def update(self, data: bytes) -> SM3:
        self._ctx.update(_as_bytes(data, "data"))
        return self

    def copy(self) -> SM3:
        other = SM3.__new__(SM3)
        other._ctx = self._ctx.copy()
        return other

    def digest(self) -> bytes:
        """Return the digest of everything hashed so far; the object stays usable."""
        return self._ctx.copy().finalize()

    def hexdigest(self) -> str:
        return self.digest().hex()


def sm3(data: bytes) -> bytes:
    """One-shot SM3 digest."""
    h = hashes.Hash(_SM3)
    h.update(_as_bytes(data, "data"))
    return h.finalize()


class HmacSM3:
    """Incremental HMAC-SM3."""

    __slots__ = ("_ctx",)
    digest_size = DIGEST_SIZE

    def __init__(self, key: bytes, data: bytes = b"") -> None:
        self._ctx = _chmac.HMAC(_as_bytes(key, "key"), _SM3)
        if data:
            self.update(data)

    def update(self, data: bytes) -> HmacSM3:
        self._ctx.update(_as_bytes(data, "data"))
        return self

    def copy(self) -> HmacSM3:
        other = HmacSM3.__new__(HmacSM3)
        other._ctx = self._ctx.copy()
        return other

    def digest(self) -> bytes:
        return self._ctx.copy().finalize()

    def verify(self, tag: bytes) -> None:
        """Constant-time comparison; raises VerificationError on mismatch."""
        if not _hmac.compare_digest(self.digest(), _as_bytes(tag, "tag")):
            raise VerificationError("HMAC-SM3 tag mismatch")


def hmac_sm3(key: bytes, data: bytes) -> bytes:
    h = _chmac.HMAC(_as_bytes(key, "key"), _SM3)
    h.update(_as_bytes(data, "data"))
    return h.finalize()


def hmac_sm3_verify(key: bytes, data: bytes, tag: bytes) -> None:
    if not _hmac.compare_digest(hmac_sm3(key, data), _as_bytes(tag, "tag")):
        raise VerificationError("HMAC-SM3 tag mismatch")


def kdf(z: bytes, klen: int) -> bytes:
    """The SM2 key derivation function: SM3(Z ‖ ct) for ct = 1, 2, ... (32-bit BE),
    concatenated and truncated to ``klen`` bytes."""
    z = _as_bytes(z, "z")
    if not isinstance(klen, int) or klen < 0:
        raise PolicyError("kdf: klen must be a non-negative number of bytes")
    if klen > DIGEST_SIZE * 0xFFFFFFFF:
        raise PolicyError("kdf: klen too large")
    base = hashes.Hash(_SM3)
    base.update(z)
    out = bytearray()
    ct = 1
    while len(out) < klen:
        h = base.copy()
        h.update(ct.to_bytes(4, "big"))
        out += h.finalize()
        ct += 1
    return bytes(out[:klen])


def pbkdf2_hmac_sm3(password: bytes, salt: bytes, iterations: int, length: int = 32) -> bytes:
    """PBKDF2 (RFC 8018) with HMAC-SM3 as the PRF."""
    if not isinstance(iterations, int) or iterations < 1:
        raise PolicyError("pbkdf2: iterations must be >= 1")
    if not isinstance(length, int) or not 1 <= length <= 1 << 20:
        raise PolicyError("pbkdf2: length must be between 1 and 2^20 bytes")
    return PBKDF2HMAC(_SM3, length, _as_bytes(salt, "salt"), iterations).derive(
        _as_bytes(password, "password")
    )
