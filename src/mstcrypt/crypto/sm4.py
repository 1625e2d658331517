"""SM4 (GB/T 32907) block cipher modes, backed by pyca/cryptography (OpenSSL).

One-shot functions for the common cases and streaming objects for large data:

* CBC with PKCS#7 padding (:func:`cbc_encrypt`, :func:`cbc_decrypt`)
* CTR (:func:`ctr`), OFB (:func:`ofb`), CFB-128 (:func:`cfb_encrypt`, :func:`cfb_decrypt`)
* GCM, an AEAD with a 12-byte nonce and a 16-byte tag (:func:`gcm_encrypt`,
  :func:`gcm_decrypt`); CCM (:func:`ccm_encrypt`, :func:`ccm_decrypt`) composed from
  native CBC-MAC and CTR
* encrypt-then-MAC SM4-CBC + HMAC-SM3 (:func:`etm_encrypt`, :func:`etm_decrypt`)
* ECB on whole blocks, only for known-answer tests and key wrapping formats that
  demand it (:func:`ecb_encrypt_blocks`, :func:`ecb_decrypt_blocks`)
* streaming: :func:`encryptor` / :func:`decryptor`.
"""

from __future__ import annotations

import hmac as _hmac
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import padding as _padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

try:  # cryptography >= 47 keeps OFB/CFB under "decrepit"
    from cryptography.hazmat.decrepit.ciphers.modes import CFB as _CFB
    from cryptography.hazmat.decrepit.ciphers.modes import OFB as _OFB
except ImportError:  # pragma: no cover - older cryptography
    _CFB, _OFB = modes.CFB, modes.OFB  # type: ignore[misc]

from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm3 import HmacSM3
from mstcrypt.errors import DecodeError, DecryptionError, PolicyError

__all__ = [
    "BLOCK_SIZE",
    "GCM_NONCE_SIZE",
    "GCM_TAG_SIZE",
    "KEY_SIZE",
    "SM4ECB",
    "SM4Decryptor",
    "SM4Encryptor",
    "cbc_decrypt",
    "cbc_encrypt",
    "ccm_decrypt",
    "ccm_encrypt",
    "cfb_decrypt",
    "cfb_encrypt",
    "ctr",
    "decryptor",
    "ecb_decrypt_blocks",
    "ecb_encrypt_blocks",
    "encryptor",
    "etm_decrypt",
    "etm_encrypt",
    "gcm_decrypt",
    "gcm_encrypt",
    "ofb",
]

KEY_SIZE = 16
BLOCK_SIZE = 16
GCM_NONCE_SIZE = 12
GCM_TAG_SIZE = 16
ETM_KEY_SIZE = 32
ETM_TAG_SIZE = 32

Mode = Literal["cbc", "ctr", "gcm", "ofb", "cfb", "ecb"]


def _b(data: object, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise PolicyError(f"{what} must be bytes, not {type(data).__name__}")


def _key(key: object) -> algorithms.SM4:
    k = _b(key, "key")
    if len(k) != KEY_SIZE:
        raise DecodeError(f"SM4 key must be {KEY_SIZE} bytes, got {len(k)}")
    return algorithms.SM4(k)


def _iv(iv: object, size: int = BLOCK_SIZE, what: str = "IV") -> bytes:
    v = _b(iv, what)
    if len(v) != size:
        raise DecodeError(f"SM4 {what} must be {size} bytes, got {len(v)}")
    return v


def _mode(mode: str, iv: bytes | None, tag: bytes | None = None) -> modes.Mode:
    if mode == "cbc":
        return modes.CBC(_iv(iv))
    if mode == "ctr":
        return modes.CTR(_iv(iv, what="counter block"))
    if mode == "ofb":
        return _OFB(_iv(iv))
    if mode == "cfb":
        return _CFB(_iv(iv))
    if mode == "gcm":
        nonce = _iv(iv, GCM_NONCE_SIZE, "GCM nonce")
        if tag is not None:
            return modes.GCM(nonce, _iv(tag, GCM_TAG_SIZE, "GCM tag"))
        return modes.GCM(nonce)
    raise PolicyError(f"unknown SM4 mode {mode!r}; expected cbc, ctr, gcm, ofb or cfb")


# --- one-shot ------------------------------------------------------------------------


def cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes, *, padding: bool = True) -> bytes:
    """SM4-CBC with PKCS#7 padding (or none, then the length must be a block multiple)."""
    plaintext = _b(plaintext, "plaintext")
    if padding:
        p = _padding.PKCS7(128).padder()
        plaintext = p.update(plaintext) + p.finalize()
    elif len(plaintext) % BLOCK_SIZE:
        raise DecodeError("SM4-CBC without padding needs a multiple of 16 bytes")
    e = Cipher(_key(key), modes.CBC(_iv(iv))).encryptor()
    return e.update(plaintext) + e.finalize()


def cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes, *, padding: bool = True) -> bytes:
    """Inverse of :func:`cbc_encrypt`; a bad padding raises DecryptionError."""
    ciphertext = _b(ciphertext, "ciphertext")
    if len(ciphertext) % BLOCK_SIZE or (padding and not ciphertext):
        raise DecryptionError("SM4-CBC ciphertext length must be a non-zero multiple of 16")
    d = Cipher(_key(key), modes.CBC(_iv(iv))).decryptor()
    pt = d.update(ciphertext) + d.finalize()
    if not padding:
        return pt
    u = _padding.PKCS7(128).unpadder()
    try:
        return u.update(pt) + u.finalize()
    except ValueError:
        raise DecryptionError("SM4-CBC: invalid PKCS#7 padding") from None


def ctr(key: bytes, counter_block: bytes, data: bytes) -> bytes:
    """SM4-CTR with a 16-byte initial counter block (big-endian increment of all 128
    bits). Encryption and decryption are the same operation."""
    e = Cipher(_key(key), modes.CTR(_iv(counter_block, what="counter block"))).encryptor()
    return e.update(_b(data, "data")) + e.finalize()


def ofb(key: bytes, iv: bytes, data: bytes) -> bytes:
    """SM4-OFB (encryption and decryption are the same operation)."""
    e = Cipher(_key(key), _OFB(_iv(iv))).encryptor()
    return e.update(_b(data, "data")) + e.finalize()


def cfb_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """SM4-CFB128 encryption."""
    e = Cipher(_key(key), _CFB(_iv(iv))).encryptor()
    return e.update(_b(data, "data")) + e.finalize()


def cfb_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    d = Cipher(_key(key), _CFB(_iv(iv))).decryptor()
    return d.update(_b(data, "data")) + d.finalize()


def gcm_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """SM4-GCM: returns ciphertext ‖ 16-byte tag. Never reuse a nonce under one key."""
    e = Cipher(_key(key), modes.GCM(_iv(nonce, GCM_NONCE_SIZE, "GCM nonce"))).encryptor()
    if aad:
        e.authenticate_additional_data(_b(aad, "aad"))
    ct = e.update(_b(plaintext, "plaintext")) + e.finalize()
    return ct + e.tag


def gcm_decrypt(key: bytes, nonce: bytes, ciphertext_and_tag: bytes, aad: bytes = b"") -> bytes:
    """Inverse of :func:`gcm_encrypt`; raises DecryptionError if the tag does not verify."""
    data = _b(ciphertext_and_tag, "ciphertext")
    if len(data) < GCM_TAG_SIZE:
        raise DecryptionError("SM4-GCM input shorter than the 16-byte tag")
    ct, tag = data[:-GCM_TAG_SIZE], data[-GCM_TAG_SIZE:]
    d = Cipher(_key(key), modes.GCM(_iv(nonce, GCM_NONCE_SIZE, "GCM nonce"), tag)).decryptor()
    if aad:
        d.authenticate_additional_data(_b(aad, "aad"))
    pt = d.update(ct)
    try:
        d.finalize()
    except InvalidTag:
        raise DecryptionError("SM4-GCM authentication tag mismatch") from None
    return pt


def _ccm_parts(
    key: bytes,
    nonce: bytes,
    aad: bytes,
    data: bytes,
    tag_len: int,
) -> tuple[bytes, bytes, bytes]:
    """CCM (NIST SP 800-38C / RFC 3610) built from native SM4-CBC (for CBC-MAC) and
    SM4-CTR. Returns (A0 counter block, A1 counter block, formatted B blocks)."""
    n = _b(nonce, "CCM nonce")
    if not 7 <= len(n) <= 13:
        raise DecodeError(f"SM4-CCM nonce must be 7..13 bytes, got {len(n)}")
    if tag_len not in (4, 6, 8, 10, 12, 14, 16):
        raise PolicyError("SM4-CCM tag length must be an even number in 4..16")
    q = 15 - len(n)
    if len(data) >= 1 << (8 * q):
        raise PolicyError("SM4-CCM message too long for this nonce length")
    flags = (0x40 if aad else 0) | (((tag_len - 2) // 2) << 3) | (q - 1)
    b = bytearray([flags]) + n + len(data).to_bytes(q, "big")
    if aad:
        la = len(aad)
        if la < 0xFF00:
            b += la.to_bytes(2, "big")
        elif la < 1 << 32:
            b += b"\xff\xfe" + la.to_bytes(4, "big")
        else:
            b += b"\xff\xff" + la.to_bytes(8, "big")
        b += aad
        b += bytes(-len(b) % BLOCK_SIZE)
    b += data + bytes(-len(data) % BLOCK_SIZE)
    a0 = bytes([q - 1]) + n + bytes(q)
    a1 = bytes([q - 1]) + n + (1).to_bytes(q, "big")
    return a0, a1, bytes(b)


def ccm_encrypt(
    key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"", *, tag_len: int = 16
) -> bytes:
    """SM4-CCM (as in RFC 8998 TLS_SM4_CCM_SM3): returns ciphertext ‖ tag."""
    plaintext, aad = _b(plaintext, "plaintext"), _b(aad, "aad")
    a0, a1, blocks = _ccm_parts(key, nonce, aad, plaintext, tag_len)
    mac = cbc_encrypt(key, bytes(BLOCK_SIZE), blocks, padding=False)[-BLOCK_SIZE:]
    tag = bytes(x ^ y for x, y in zip(mac, ctr(key, a0, bytes(BLOCK_SIZE)), strict=True))
    return ctr(key, a1, plaintext) + tag[:tag_len]


def ccm_decrypt(
    key: bytes, nonce: bytes, ciphertext_and_tag: bytes, aad: bytes = b"", *, tag_len: int = 16
) -> bytes:
    """Inverse of :func:`ccm_encrypt`; raises DecryptionError if the tag is wrong."""
    data, aad = _b(ciphertext_and_tag, "ciphertext"), _b(aad, "aad")
    if len(data) < tag_len:
        raise DecryptionError("SM4-CCM input shorter than the tag")
    ct, tag = data[:-tag_len], data[-tag_len:]
    a0, a1, _ = _ccm_parts(key, nonce, aad, ct, tag_len)
    pt = ctr(key, a1, ct)
    _, _, blocks = _ccm_parts(key, nonce, aad, pt, tag_len)
    mac = cbc_encrypt(key, bytes(BLOCK_SIZE), blocks, padding=False)[-BLOCK_SIZE:]
    expect = bytes(x ^ y for x, y in zip(mac, ctr(key, a0, bytes(BLOCK_SIZE)), strict=True))
    if not _hmac.compare_digest(expect[:tag_len], tag):
        raise DecryptionError("SM4-CCM authentication tag mismatch")
    return pt


def _etm_keys(key: bytes) -> tuple[bytes, bytes]:
    k = _b(key, "key")
    if len(k) != ETM_KEY_SIZE:
        raise DecodeError(
            f"SM4-CBC+HMAC-SM3 key must be {ETM_KEY_SIZE} bytes (16 SM4 ‖ 16 MAC), got {len(k)}"
        )
    return k[:16], k[16:]


def _etm_tag(mac_key: bytes, aad: bytes, iv: bytes, ct: bytes) -> bytes:
    h = HmacSM3(mac_key)
    h.update(len(aad).to_bytes(8, "big")).update(aad).update(iv).update(ct)
    return h.digest()


def etm_encrypt(
    key: bytes, plaintext: bytes, aad: bytes = b"", *, iv: bytes | None = None
) -> bytes:
    """Encrypt-then-MAC: SM4-CBC (PKCS#7) under key[:16], then
    HMAC-SM3(key[16:], len(aad) as 8 bytes BE ‖ aad ‖ IV ‖ C).

    Returns IV(16) ‖ C ‖ tag(32). The IV is random unless given.
    """
    enc_key, mac_key = _etm_keys(key)
    aad = _b(aad, "aad")
    iv = random_bytes(BLOCK_SIZE) if iv is None else _iv(iv)
    ct = cbc_encrypt(enc_key, iv, plaintext)
    return iv + ct + _etm_tag(mac_key, aad, iv, ct)


def etm_decrypt(key: bytes, data: bytes, aad: bytes = b"") -> bytes:
    """Inverse of :func:`etm_encrypt`. The MAC is checked (in constant time) before any
    decryption, so padding errors are never observable."""
    enc_key, mac_key = _etm_keys(key)
    data = _b(data, "data")
    aad = _b(aad, "aad")
    if len(data) < BLOCK_SIZE * 2 + ETM_TAG_SIZE or (len(data) - ETM_TAG_SIZE) % BLOCK_SIZE:
        raise DecryptionError("SM4-CBC+HMAC-SM3 input has an impossible length")
    iv, ct, tag = data[:BLOCK_SIZE], data[BLOCK_SIZE:-ETM_TAG_SIZE], data[-ETM_TAG_SIZE:]
    if not _hmac.compare_digest(_etm_tag(mac_key, aad, iv, ct), tag):
        raise DecryptionError("SM4-CBC+HMAC-SM3 tag mismatch")
    return cbc_decrypt(enc_key, iv, ct)


class SM4ECB:
    """SM4 on whole blocks with the key schedule built once (ECB, no padding).

    Only for known-answer tests and formats that demand ECB (the GB/T 35276
    SM2EnvelopedKey); never for messages."""

    __slots__ = ("_dec", "_enc")

    def __init__(self, key: bytes) -> None:
        cipher = Cipher(_key(key), modes.ECB())  # noqa: S305 - deliberate, see doc
        self._enc = cipher.encryptor()
        self._dec = cipher.decryptor()

    def encrypt_blocks(self, data: bytes) -> bytes:
        data = _b(data, "data")
        if len(data) % BLOCK_SIZE:
            raise DecodeError("SM4-ECB input must be a multiple of 16 bytes")
        return self._enc.update(data)

    def decrypt_blocks(self, data: bytes) -> bytes:
        data = _b(data, "data")
        if len(data) % BLOCK_SIZE:
            raise DecodeError("SM4-ECB input must be a multiple of 16 bytes")
        return self._dec.update(data)


def ecb_encrypt_blocks(key: bytes, data: bytes) -> bytes:
    """One-shot :class:`SM4ECB` encryption."""
    return SM4ECB(key).encrypt_blocks(data)


def ecb_decrypt_blocks(key: bytes, data: bytes) -> bytes:
    return SM4ECB(key).decrypt_blocks(data)


# --- streaming -----------------------------------------------------------------------


class SM4Encryptor:
    """Streaming encryption: call :meth:`update` any number of times, then
    :meth:`finalize`. For GCM, :attr:`tag` is available after finalize."""

    def __init__(self, mode: Mode, key: bytes, iv: bytes, aad: bytes = b"") -> None:
        if mode == "ecb":
            raise PolicyError("ECB is not offered as a streaming mode")
        self._mode = mode
        self._ctx = Cipher(_key(key), _mode(mode, iv)).encryptor()
        self._padder = _padding.PKCS7(128).padder() if mode == "cbc" else None
        self._tag: bytes | None = None
        if aad:
            if mode != "gcm":
                raise PolicyError("associated data is only supported in GCM mode")
            self._ctx.authenticate_additional_data(_b(aad, "aad"))

    def update(self, data: bytes) -> bytes:
        data = _b(data, "data")
        if self._padder is not None:
            data = self._padder.update(data)
        return self._ctx.update(data)

    def finalize(self) -> bytes:
        out = b""
        if self._padder is not None:
            out = self._ctx.update(self._padder.finalize())
        out += self._ctx.finalize()
        if self._mode == "gcm":
            self._tag = self._ctx.tag  # type: ignore[attr-defined]
        return out

    @property
    def tag(self) -> bytes:
        if self._tag is None:
            raise PolicyError("the GCM tag is only available after finalize()")
        return self._tag


class SM4Decryptor:
    """Streaming decryption. For GCM pass the expected tag to :meth:`finalize`;
    plaintext returned by :meth:`update` must not be trusted until finalize succeeds."""

    def __init__(self, mode: Mode, key: bytes, iv: bytes, aad: bytes = b"") -> None:
        if mode == "ecb":
            raise PolicyError("ECB is not offered as a streaming mode")
        self._mode = mode
        self._key = _key(key)
        self._iv = iv
        self._aad = _b(aad, "aad")
        if aad and mode != "gcm":
            raise PolicyError("associated data is only supported in GCM mode")
        if mode == "gcm":
            # GCM needs the tag at finalize time; use the tag-less constructor path.
            self._ctx = Cipher(self._key, _mode(mode, iv)).decryptor()
            if self._aad:
                self._ctx.authenticate_additional_data(self._aad)
        else:
            self._ctx = Cipher(self._key, _mode(mode, iv)).decryptor()
        self._unpadder = _padding.PKCS7(128).unpadder() if mode == "cbc" else None
        self._seen = 0

    def update(self, data: bytes) -> bytes:
        data = _b(data, "data")
        self._seen += len(data)
        out = self._ctx.update(data)
        if self._unpadder is not None:
            out = self._unpadder.update(out)
        return out

    def finalize(self, tag: bytes | None = None) -> bytes:
        if self._mode == "gcm":
            if tag is None:
                raise PolicyError("GCM decryption needs the tag at finalize()")
            try:
                return self._ctx.finalize_with_tag(  # type: ignore[attr-defined]
                    _iv(tag, GCM_TAG_SIZE, "GCM tag")
                )
            except InvalidTag:
                raise DecryptionError("SM4-GCM authentication tag mismatch") from None
        try:
            out = self._ctx.finalize()
        except ValueError:
            raise DecryptionError("SM4-CBC ciphertext is not a multiple of 16 bytes") from None
        if self._unpadder is not None:
            if self._seen == 0:
                raise DecryptionError("SM4-CBC ciphertext is empty")
            try:
                out = self._unpadder.update(out) + self._unpadder.finalize()
            except ValueError:
                raise DecryptionError("SM4-CBC: invalid PKCS#7 padding") from None
        return out


def encryptor(mode: Mode, key: bytes, iv: bytes, aad: bytes = b"") -> SM4Encryptor:
    """A streaming encryptor for ``mode`` in cbc (PKCS#7), ctr, gcm, ofb, cfb."""
    return SM4Encryptor(mode, key, iv, aad)


def decryptor(mode: Mode, key: bytes, iv: bytes, aad: bytes = b"") -> SM4Decryptor:
    return SM4Decryptor(mode, key, iv, aad)
