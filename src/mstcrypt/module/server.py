"""SS-CC: the server-side cryptographic module.

Same interface as the soft token; the keystore's data key is wrapped under a server
master key (32 bytes) taken from configuration: a key file (``MSTCRYPT_MASTER_KEY_FILE``)
or an environment variable (``MSTCRYPT_MASTER_KEY``, hex). The master key is used
through a KDF, never directly. Server keys referenced from a database go through
:mod:`mstcrypt.module.sscc` (soft or PKCS#11 backend); :class:`KeyWrapper` is its soft
backend under the former name.
"""

from __future__ import annotations

import os
from pathlib import Path

from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.crypto.sm3 import kdf
from mstcrypt.errors import InvalidKeyError, KeyStoreError, PolicyError
from mstcrypt.module import keystore as ks
from mstcrypt.module.base import CryptoModule
from mstcrypt.module.sscc import MASTER_KEY_SIZE, SoftKeyStore, load_master_key

__all__ = ["MASTER_KEY_SIZE", "KeyWrapper", "ServerModule", "load_master_key"]


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


class KeyWrapper(SoftKeyStore):
    """The soft SS-CC under its former name, with the former methods that hand out
    plaintext keys (``unwrap``, ``unwrap_bytes``). Kept while callers move to the
    :class:`~mstcrypt.module.sscc.ServerKeyStore` operations, which never return a
    private key; blobs are the same bytes either way.

    ``wrap(key, context)`` returns nonce(12) ‖ SM4-GCM(KEK, nonce, d, AAD = label ‖ "|" ‖
    context) with KEK = SM3-KDF(master key ‖ label, 16).
    """

    def wrap_bytes(self, secret: bytes, context: bytes) -> bytes:
        self._check_open()
        return self._seal(secret, self._wrap_label + b"|" + context)

    def unwrap_bytes(self, blob: bytes, context: bytes) -> bytes:
        self._check_open()
        if not isinstance(blob, bytes):
            raise KeyStoreError("wrapped key blob is malformed")
        return self._open(blob, self._wrap_label + b"|" + context)

    def wrap(self, key: SM2PrivateKey, context: bytes) -> bytes:
        return self.wrap_bytes(key.private_bytes(), context)

    def unwrap(self, blob: bytes, context: bytes) -> SM2PrivateKey:
        try:
            return SM2PrivateKey.from_bytes(self.unwrap_bytes(blob, context))
        except InvalidKeyError:
            raise KeyStoreError("blob does not hold a valid SM2 private key") from None

    def __repr__(self) -> str:
        return "KeyWrapper(<master key hidden>)"
