"""SS-CC: the server-side cryptographic module.

Same interface as the soft token; the keystore's data key is wrapped under a server
master key (32 bytes) taken from configuration: a key file (``MSTCRYPT_MASTER_KEY_FILE``)
or an environment variable (``MSTCRYPT_MASTER_KEY``, hex). The master key is used
through a KDF, never directly. An HSM backend (PKCS#11 or SDF) can implement
:class:`~mstcrypt.module.base.CryptoModule` without callers changing.
"""

from __future__ import annotations

import os
from pathlib import Path

from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.crypto.sm3 import kdf
from mstcrypt.errors import KeyStoreError, PolicyError
from mstcrypt.module import keystore as ks
from mstcrypt.module.base import CryptoModule

__all__ = ["KeyWrapper", "ServerModule", "load_master_key"]

MASTER_KEY_SIZE = 32


def load_master_key(
    *, key_file: str | os.PathLike[str] | None = None, env: str = "MSTCRYPT_MASTER_KEY"
) -> bytes:
    """Read the server master key from a file (raw 32 bytes or 64 hex characters) or from
    the environment variable ``env`` (64 hex characters)."""
    if key_file is None:
        key_file = os.environ.get(env + "_FILE")
    if key_file is not None:
        try:
            raw = Path(key_file).read_bytes()
        except OSError as exc:
            raise KeyStoreError(f"cannot read master key file: {exc.strerror}") from None
        text = raw.strip()
        if len(raw) == MASTER_KEY_SIZE:
            if all(c in b"0123456789abcdefABCDEF" for c in raw):
                raise KeyStoreError(
                    "master key file holds 32 hex characters (a 16-byte key); a 32-byte key "
                    "is needed (32 raw bytes or 64 hex characters)"
                )
            return raw
    else:
        value = os.environ.get(env)
        if value is None:
            raise KeyStoreError(f"no server master key: set {env} or {env}_FILE")
        text = value.strip().encode()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise KeyStoreError("master key must be 32 raw bytes or 64 hex characters") from None
    if len(key) != MASTER_KEY_SIZE:
        raise KeyStoreError("master key must be 32 bytes")
    return key


class ServerModule(CryptoModule):
    """A keystore file whose data key is wrapped under the server master key."""

    def __init__(
        self, path: str | os.PathLike[str], master_key: bytes, *, create: bool = False
    ) -> None:
        super().__init__()
        if not isinstance(master_key, bytes) or len(master_key) != MASTER_KEY_SIZE:
            raise PolicyError("server master key must be 32 bytes")
        self._path = Path(path)
        self._kek = kdf(master_key + b"mstcrypt-ss-cc-kek", 16)
        if not self._path.exists():
            if not create:
                raise KeyStoreError(f"server keystore not found: {self._path}")
            self._dek = random_bytes(16)
            self._header = {
                "format": "mstcrypt-sscc",
                "version": 1,
                "serial": random_bytes(8).hex(),
            }
            self._header["slots"] = {
                "master": {"wrapped": ks.wrap(self._kek, self._dek, self._aad())}
            }
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._persist()
            return
        image = ks.parse(ks.read_file(self._path))
        h = image.header
        if h.get("format") != "mstcrypt-sscc" or h.get("version") != 1:
            raise KeyStoreError("not an mstcrypt server keystore (format/version)")
        self._header = h
        try:
            dek = ks.unwrap(self._kek, h["slots"]["master"]["wrapped"], self._aad())
        except (KeyError, TypeError):
            raise KeyStoreError("server keystore header is malformed") from None
        if dek is None:
            raise KeyStoreError("wrong server master key for this keystore")
        self._dek = dek
        self._load_payload(ks.open_body(image, dek))

    def _aad(self) -> bytes:
        return f"{self._header['serial']}:master".encode()

    def _persist(self) -> None:
        ks.atomic_write(self._path, ks.build(self._header, self._payload(), self._dek))

    def __repr__(self) -> str:
        return f"ServerModule({str(self._path)!r}, containers={len(self._containers)})"


class KeyWrapper:
    """Wraps private keys for storage in a database under the server master key.

    ``wrap(key, context)`` returns nonce(12) ‖ SM4-GCM(KEK, nonce, d, AAD = label ‖ context);
    the context (for example a key id and purpose) binds a blob to its row, so a blob
    moved to another row does not unwrap. Part of the SS-CC: only this object ever sees
    the KEK, and plaintext keys exist only in the returned SM2PrivateKey objects.
    """

    def __init__(self, master_key: bytes, *, label: bytes = b"mstcrypt-kmc-wrap") -> None:
        if not isinstance(master_key, bytes) or len(master_key) != MASTER_KEY_SIZE:
            raise PolicyError("server master key must be 32 bytes")
        self._kek = kdf(master_key + label, 16)
        self._label = label

    def wrap_bytes(self, secret: bytes, context: bytes) -> bytes:
        from mstcrypt.crypto import sm4

        nonce = random_bytes(12)
        return nonce + sm4.gcm_encrypt(self._kek, nonce, secret, self._label + b"|" + context)

    def unwrap_bytes(self, blob: bytes, context: bytes) -> bytes:
        from mstcrypt.crypto import sm4
        from mstcrypt.errors import DecryptionError

        if not isinstance(blob, bytes) or len(blob) < 12 + 16:
            raise KeyStoreError("wrapped key blob is malformed")
        try:
            return sm4.gcm_decrypt(self._kek, blob[:12], blob[12:], self._label + b"|" + context)
        except DecryptionError:
            raise KeyStoreError(
                "wrapped key does not unwrap (wrong master key, or the blob was moved or edited)"
            ) from None

    def wrap(self, key: SM2PrivateKey, context: bytes) -> bytes:
        return self.wrap_bytes(key.private_bytes(), context)

    def unwrap(self, blob: bytes, context: bytes) -> SM2PrivateKey:
        return SM2PrivateKey.from_bytes(self.unwrap_bytes(blob, context))

    def __repr__(self) -> str:
        return "KeyWrapper(<master key hidden>)"
