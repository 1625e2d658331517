"""AES-128 primitives needed by standard protocol profiles (SRTP AES_CM and AEAD_AES_GCM),
backed by pyca/cryptography (OpenSSL).

Only what interoperability with non-SM peers needs: CTR keystream/XOR and GCM. The SM
applications use :mod:`mstcrypt.crypto.sm4`; these exist so that the same protocol code
can run a standard profile and be checked packet for packet against another
implementation (libsrtp).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mstcrypt.errors import DecodeError, DecryptionError, PolicyError

__all__ = ["AesGcm", "ctr", "gcm_decrypt", "gcm_encrypt"]

_KEY_SIZES = (16, 24, 32)


def _key(key: object) -> bytes:
    if not isinstance(key, bytes):
        raise PolicyError(f"AES key must be bytes, not {type(key).__name__}")
    if len(key) not in _KEY_SIZES:
        raise DecodeError(f"AES key must be 16, 24 or 32 bytes, got {len(key)}")
    return key


def ctr(key: bytes, counter_block: bytes, data: bytes) -> bytes:
    """AES-CTR with a 16-byte initial counter block (big-endian increment of all 128 bits);
    encryption and decryption are the same operation."""
    if not isinstance(counter_block, bytes) or len(counter_block) != 16:
        raise DecodeError("AES-CTR counter block must be 16 bytes")
    e = Cipher(algorithms.AES(_key(key)), modes.CTR(counter_block)).encryptor()
    return e.update(data) + e.finalize()


def gcm_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """AES-GCM with a 12-byte nonce: ciphertext ‖ 16-byte tag."""
    if not isinstance(nonce, bytes) or len(nonce) != 12:
        raise DecodeError("AES-GCM nonce must be 12 bytes")
    return AESGCM(_key(key)).encrypt(nonce, plaintext, aad)


def gcm_decrypt(key: bytes, nonce: bytes, ciphertext_and_tag: bytes, aad: bytes = b"") -> bytes:
    """Inverse of :func:`gcm_encrypt`; DecryptionError when the tag does not verify."""
    if not isinstance(nonce, bytes) or len(nonce) != 12:
        raise DecodeError("AES-GCM nonce must be 12 bytes")
    if len(ciphertext_and_tag) < 16:
        raise DecryptionError("AES-GCM input shorter than the 16-byte tag")
    try:
        return AESGCM(_key(key)).decrypt(nonce, ciphertext_and_tag, aad)
    except InvalidTag:
        raise DecryptionError("AES-GCM authentication tag mismatch") from None


class AesGcm:
    """AES-GCM under one key, set up once (per-packet protocols reuse it)."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(_key(key))

    def __repr__(self) -> str:
        return "<AesGcm>"

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
        if len(nonce) != 12:
            raise DecodeError("AES-GCM nonce must be 12 bytes")
        return self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, nonce: bytes, ciphertext_and_tag: bytes, aad: bytes = b"") -> bytes:
        if len(nonce) != 12:
            raise DecodeError("AES-GCM nonce must be 12 bytes")
        if len(ciphertext_and_tag) < 16:
            raise DecryptionError("AES-GCM input shorter than the 16-byte tag")
        try:
            return self._aead.decrypt(nonce, ciphertext_and_tag, aad)
        except InvalidTag:
            raise DecryptionError("AES-GCM authentication tag mismatch") from None
