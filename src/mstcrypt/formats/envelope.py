"""GB/T 35276 (GM/T 0009) SM2EnvelopedKey: how a KMC delivers an SM2 private key.

::

    SM2EnvelopedKey ::= SEQUENCE {
      symAlgID               AlgorithmIdentifier,  -- sm4-ecb (1.2.156.10197.1.104.1)
      symEncryptedKey        SM2Cipher,            -- 16-byte SM4 key, SM2-encrypted to
                                                   --   the recipient (terminal) key
      sm2PublicKey           BIT STRING,           -- 04‖x‖y of the delivered key pair
      sm2EncryptedPrivateKey BIT STRING }          -- SM4-ECB(d), 32 bytes, no padding

The private key never exists in plaintext outside the builder and the opener. Opening
checks that d·G equals sm2PublicKey.
"""

from __future__ import annotations

from typing import Protocol

from asn1crypto.core import Any, Null, OctetBitString, Sequence

from mstcrypt.crypto import sm4
from mstcrypt.crypto.curve import SIZE, N
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import SM2PrivateKey, SM2PublicKey
from mstcrypt.errors import DecodeError, DecryptionError, InvalidKeyError, UnsupportedError
from mstcrypt.formats import oids
from mstcrypt.formats._der import dump, load_strict
from mstcrypt.formats.gmt0009 import SM2Cipher, decode_cipher
from mstcrypt.formats.keys import AlgorithmIdentifier

__all__ = ["EnvelopedKey", "SM2EnvelopedKey", "build_enveloped_key", "open_enveloped_key"]

_NULL_DER = dump(Null())


class SM2EnvelopedKey(Sequence):
    _fields = [
        ("sym_alg_id", AlgorithmIdentifier),
        ("sym_encrypted_key", SM2Cipher),
        ("sm2_public_key", OctetBitString),
        ("sm2_encrypted_private_key", OctetBitString),
    ]


class _Decryptor(Protocol):
    def decrypt(self, ciphertext: bytes) -> bytes: ...


class EnvelopedKey:
    """A parsed SM2EnvelopedKey (nothing decrypted yet)."""

    __slots__ = ("encrypted_private_key", "public_key", "sym_encrypted_key")

    def __init__(
        self, sym_encrypted_key: bytes, public_key: SM2PublicKey, encrypted_private_key: bytes
    ) -> None:
        self.sym_encrypted_key = sym_encrypted_key
        self.public_key = public_key
        self.encrypted_private_key = encrypted_private_key

    @classmethod
    def from_der(cls, der: bytes) -> EnvelopedKey:
        value = load_strict(SM2EnvelopedKey, der, "SM2EnvelopedKey")
        alg = value["sym_alg_id"]
        oid = alg["algorithm"].dotted
        if oid not in (oids.SM4_ECB, oids.SM4):
            raise UnsupportedError(f"SM2EnvelopedKey symAlgID {oid}; expected SM4-ECB")
        params = alg["parameters"]
        if params.contents and params.dump() != _NULL_DER:
            raise DecodeError("SM2EnvelopedKey SM4-ECB parameters must be NULL or absent")
        sym = value["sym_encrypted_key"].dump(force=True)
        decode_cipher(sym)  # strict: C1 on the curve, C3 32 bytes
        pub = value["sm2_public_key"].native
        if len(pub) != 65:
            raise InvalidKeyError("SM2EnvelopedKey sm2PublicKey must be 65 bytes (04‖x‖y)")
        enc = value["sm2_encrypted_private_key"].native
        if len(enc) not in (SIZE, 2 * SIZE):
            raise DecodeError("SM2EnvelopedKey sm2EncryptedPrivateKey must be 32 (or 64) bytes")
        return cls(sym, SM2PublicKey.from_bytes(pub), enc)

    def to_der(self) -> bytes:
        return dump(
            SM2EnvelopedKey(
                {
                    "sym_alg_id": AlgorithmIdentifier(
                        {"algorithm": oids.SM4_ECB, "parameters": Any.load(_NULL_DER)}
                    ),
                    "sym_encrypted_key": SM2Cipher.load(self.sym_encrypted_key),
                    "sm2_public_key": self.public_key.to_bytes(),
                    "sm2_encrypted_private_key": self.encrypted_private_key,
                }
            )
        )

    def open(self, recipient: _Decryptor) -> SM2PrivateKey:
        """Decrypt with the recipient's SM2 decryption capability (a private key or a
        module handle) and return the delivered key, checked against sm2PublicKey."""
        try:
            sym = recipient.decrypt(self.sym_encrypted_key)
        except DecryptionError:
            raise DecryptionError(
                "SM2EnvelopedKey: the symmetric key does not decrypt with this recipient key"
            ) from None
        if len(sym) != 16:
            raise DecryptionError("SM2EnvelopedKey: symmetric key is not 16 bytes")
        raw = sm4.ecb_decrypt_blocks(sym, self.encrypted_private_key)
        if len(raw) == 2 * SIZE:
            if any(raw[:SIZE]):
                raise DecryptionError(
                    "SM2EnvelopedKey: 64-byte private key field not left-padded with zeros"
                )
            raw = raw[SIZE:]
        d = int.from_bytes(raw, "big")
        if not 1 <= d <= N - 2:
            raise DecryptionError("SM2EnvelopedKey: decrypted private key out of range")
        key = SM2PrivateKey(d)
        if key.public_key() != self.public_key:
            raise DecryptionError("SM2EnvelopedKey: private key does not match sm2PublicKey")
        return key


def build_enveloped_key(key: SM2PrivateKey, recipient: SM2PublicKey) -> bytes:
    """Wrap ``key`` for ``recipient``: a fresh SM4 key encrypts d (ECB, 32 bytes) and is
    itself SM2-encrypted to ``recipient``."""
    sym = random_bytes(16)
    return EnvelopedKey(
        recipient.encrypt(sym),
        key.public_key(),
        sm4.ecb_encrypt_blocks(sym, key.private_bytes()),
    ).to_der()


def open_enveloped_key(der: bytes, recipient: _Decryptor) -> SM2PrivateKey:
    return EnvelopedKey.from_der(der).open(recipient)
