"""The terminal's local mail store, encrypted under a key that only the soft token
can unwrap.

Layout of a store directory::

    store.key     the 16-byte store key, SM2-encrypted to the user's encryption
                  certificate (GM/T 0009 SM2Cipher): opening it needs the token
    index.enc     nonce(12) ‖ SM4-GCM(store key, JSON index), AAD "mstcrypt-mail-index-v1"
    inbox/ID.p7m  messages as received: S/MIME enveloped for this user
    sent/ID.p7m   messages as sent: the sender is one of the envelope's recipients

The index holds what ``mail list`` shows (protected From/To/Subject/Date, the checks
last made), so listing does not decrypt every message. Nothing in the directory is
plaintext.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from mstcrypt.apps.mail.errors import MailError
from mstcrypt.apps.mail.message import MailIdentity
from mstcrypt.crypto import sm4
from mstcrypt.errors import DecryptionError, KeyStoreError

__all__ = ["FOLDERS", "LocalStore"]

FOLDERS = ("inbox", "sent")
_AAD = b"mstcrypt-mail-index-v1"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class LocalStore:
    def __init__(self, path: Path, identity: MailIdentity) -> None:
        self.path = Path(path)
        self.identity = identity
        self._key: bytes | None = None

    def _store_key(self) -> bytes:
        if self._key is not None:
            return self._key
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        kf = self.path / "store.key"
        if kf.exists():
            try:
                key = self.identity.decrypt(kf.read_bytes())
            except DecryptionError:
                raise KeyStoreError(
                    "the mail store key does not open with this token's encryption key"
                ) from None
            if len(key) != 16:
                raise KeyStoreError("the mail store key is not 16 bytes")
        else:
            key = secrets.token_bytes(16)
            pub = self.identity.encryption_certificate.public_key
            _atomic_write(kf, pub.encrypt(key))
        self._key = key
        return key

    def _index(self) -> dict[str, dict[str, Any]]:
        key = self._store_key()
        f = self.path / "index.enc"
        if not f.exists():
            return {}
        raw = f.read_bytes()
        try:
            plain = sm4.gcm_decrypt(key, raw[:12], raw[12:], _AAD)
        except DecryptionError:
            raise KeyStoreError("the mail store index is corrupt or was tampered with") from None
        return dict(json.loads(plain))

    def _save(self, index: dict[str, dict[str, Any]]) -> None:
        nonce = secrets.token_bytes(12)
        data = json.dumps(index, sort_keys=True).encode()
        _atomic_write(
            self.path / "index.enc", nonce + sm4.gcm_encrypt(self._store_key(), nonce, data, _AAD)
        )

    def add(self, folder: str, src: Path, info: dict[str, Any], *, move: bool = False) -> str:
        """Put the message file ``src`` into ``folder`` with its index entry; returns
        its id."""
        if folder not in FOLDERS:
            raise MailError(f"unknown folder {folder!r}")
        index = self._index()
        mid = secrets.token_hex(8)
        d = self.path / folder
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = d / f"{mid}.p7m"
        if move:
            os.replace(src, target)
        else:
            tmp = d / f".{mid}.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, target)
        index[mid] = {"folder": folder, **info}
        self._save(index)
        return mid

    def update(self, mid: str, **info: Any) -> None:
        index = self._index()
        if mid not in index:
            raise MailError(f"no message {mid!r} in the store")
        index[mid].update(info)
        self._save(index)

    def entries(self, folder: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        items = [(k, v) for k, v in self._index().items() if folder in (None, v["folder"])]
        return sorted(items, key=lambda kv: (str(kv[1].get("received", "")), kv[0]))

    def has_source(self, source: str) -> bool:
        return any(v.get("source") == source for v in self._index().values())

    @contextlib.contextmanager
    def open(self, mid: str) -> Iterator[BinaryIO]:
        index = self._index()
        if mid not in index:
            raise MailError(f"no message {mid!r} in the store")
        with (self.path / index[mid]["folder"] / f"{mid}.p7m").open("rb") as f:
            yield f
