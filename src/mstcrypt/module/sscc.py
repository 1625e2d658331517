"""SS-CC key store interface (interim soft implementation; replaced by the full module)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mstcrypt.crypto import sm4
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import DEFAULT_ID, SM2PrivateKey, SM2PublicKey
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.formats.envelope import build_enveloped_key
from mstcrypt.module.server import KeyWrapper

__all__ = ["ServerKeyStore", "SoftKeyStore", "SsccConfig", "open_keystore"]


class ServerKeyStore(ABC):
    backend: str

    @abstractmethod
    def generate_sm2(self, context: bytes) -> tuple[SM2PublicKey, bytes]: ...
    @abstractmethod
    def import_sm2(self, key: SM2PrivateKey, context: bytes) -> bytes: ...
    @abstractmethod
    def sign(
        self, blob: bytes, context: bytes, data: bytes, *, signer_id: bytes = DEFAULT_ID
    ) -> bytes: ...
    @abstractmethod
    def signer(self, blob: bytes, context: bytes) -> Callable[[bytes], bytes]: ...
    @abstractmethod
    def decrypt(self, blob: bytes, context: bytes, ciphertext: bytes) -> bytes: ...
    @abstractmethod
    def export_enveloped(self, blob: bytes, context: bytes, recipient: SM2PublicKey) -> bytes: ...
    @abstractmethod
    def generate_secret(self, context: bytes, size: int = 16) -> bytes: ...
    @abstractmethod
    def encrypt_secret_to(self, blob: bytes, context: bytes, recipient: SM2PublicKey) -> bytes: ...
    @abstractmethod
    def wrap_secret(
        self,
        kek_blob: bytes,
        kek_context: bytes,
        blob: bytes,
        context: bytes,
        nonce: bytes,
        aad: bytes,
    ) -> bytes: ...
    @abstractmethod
    def wrap_value(self, value: bytes, context: bytes) -> bytes: ...
    @abstractmethod
    def unwrap_value(self, blob: bytes, context: bytes) -> bytes: ...
    def close(self) -> None:
        return None


class SoftKeyStore(ServerKeyStore):
    backend = "soft"

    def __init__(self, master_key: bytes) -> None:
        self._w = KeyWrapper(master_key)
        self._cache: dict[bytes, SM2PrivateKey] = {}

    def _key(self, blob: bytes, context: bytes) -> SM2PrivateKey:
        k = sm3(blob) + context
        key = self._cache.get(k)
        if key is None:
            key = self._w.unwrap(blob, context)
            if len(self._cache) > 1024:
                self._cache.clear()
            self._cache[k] = key
        return key

    def generate_sm2(self, context: bytes) -> tuple[SM2PublicKey, bytes]:
        key = SM2PrivateKey.generate()
        return key.public_key(), self._w.wrap(key, context)

    def import_sm2(self, key: SM2PrivateKey, context: bytes) -> bytes:
        return self._w.wrap(key, context)

    def sign(
        self, blob: bytes, context: bytes, data: bytes, *, signer_id: bytes = DEFAULT_ID
    ) -> bytes:
        return self._key(blob, context).sign(data, signer_id=signer_id)

    def signer(self, blob: bytes, context: bytes) -> Callable[[bytes], bytes]:
        key = self._key(blob, context)
        return lambda data: key.sign(data)

    def decrypt(self, blob: bytes, context: bytes, ciphertext: bytes) -> bytes:
        return self._key(blob, context).decrypt(ciphertext)

    def export_enveloped(self, blob: bytes, context: bytes, recipient: SM2PublicKey) -> bytes:
        return build_enveloped_key(self._key(blob, context), recipient)

    def generate_secret(self, context: bytes, size: int = 16) -> bytes:
        return self._w.wrap_bytes(random_bytes(size), context)

    def encrypt_secret_to(self, blob: bytes, context: bytes, recipient: SM2PublicKey) -> bytes:
        return recipient.encrypt(self._w.unwrap_bytes(blob, context))

    def wrap_secret(
        self,
        kek_blob: bytes,
        kek_context: bytes,
        blob: bytes,
        context: bytes,
        nonce: bytes,
        aad: bytes,
    ) -> bytes:
        kek = self._w.unwrap_bytes(kek_blob, kek_context)
        return sm4.gcm_encrypt(kek, nonce, self._w.unwrap_bytes(blob, context), aad)

    def wrap_value(self, value: bytes, context: bytes) -> bytes:
        return self._w.wrap_bytes(value, context)

    def unwrap_value(self, blob: bytes, context: bytes) -> bytes:
        return self._w.unwrap_bytes(blob, context)


@dataclass(frozen=True)
class SsccConfig:
    backend: str = "soft"
    master_key_file: Path | None = None

    @classmethod
    def from_env(cls, data_dir: Path) -> SsccConfig:
        d = os.environ.get("MSTCRYPT_SSCC_DIR")
        base = Path(d) if d else Path(str(Path(data_dir).resolve()) + ".sscc")
        old = Path(data_dir) / "master.key"
        return cls("soft", old if old.exists() else base / "master.key")


def open_keystore(config: SsccConfig) -> ServerKeyStore:
    from mstcrypt.module import keystore
    from mstcrypt.module.server import load_master_key

    if os.environ.get("MSTCRYPT_MASTER_KEY") or os.environ.get("MSTCRYPT_MASTER_KEY_FILE"):
        return SoftKeyStore(load_master_key())
    path = config.master_key_file
    assert path is not None
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        keystore.atomic_write(path, random_bytes(32))
    return SoftKeyStore(load_master_key(key_file=path))
