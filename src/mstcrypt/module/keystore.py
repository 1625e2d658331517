"""The on-disk keystore file shared by the soft token and the server module.

Layout (all integers big-endian)::

    magic "MSTKEYS1" (8) ‖ header_len (4) ‖ header (canonical JSON, UTF-8)
    ‖ body_nonce (12) ‖ body = SM4-GCM(DEK, body_nonce, payload, AAD = all bytes before)
    ‖ checksum = SM3(all bytes before) (32)

The header holds the KDF parameters and one or more *slots*, each the 16-byte data
encryption key (DEK) wrapped with SM4-GCM under a key-encryption key derived from a
secret (user PIN → MK, administrator code, or server master key). The payload (the
containers and their private keys) is encrypted and authenticated under the DEK with
the whole header as associated data, so any edited byte is detected: first by the SM3
checksum (accidental damage, naive edits), then by the GCM tag once a slot opens.

Writes are atomic: a temporary file in the same directory, fsync, rename, fsync of the
directory. A crash leaves either the old file or the new one.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mstcrypt.crypto import sm4
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm3 import kdf, pbkdf2_hmac_sm3, sm3
from mstcrypt.errors import DecryptionError, KeyStoreError

MAGIC = b"MSTKEYS1"
MAX_FILE = 16 * 1024 * 1024


def b64e(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def b64d(s: Any, what: str) -> bytes:
    if not isinstance(s, str):
        raise KeyStoreError(f"keystore field {what} is not a string")
    try:
        return base64.b64decode(s, validate=True)
    except ValueError:
        raise KeyStoreError(f"keystore field {what} is not base64") from None


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def derive_kek(secret: bytes, salt: bytes, iterations: int, label: bytes) -> bytes:
    """MK = PBKDF2-HMAC-SM3(secret, salt, iterations); KEK = KDF(MK ‖ label, 16)."""
    mk = pbkdf2_hmac_sm3(secret, salt, iterations, 32)
    return kdf(mk + label, 16)


def wrap(kek: bytes, dek: bytes, aad: bytes) -> str:
    nonce = random_bytes(12)
    return b64e(nonce + sm4.gcm_encrypt(kek, nonce, dek, aad))


def unwrap(kek: bytes, blob: str, aad: bytes) -> bytes | None:
    raw = b64d(blob, "slot")
    if len(raw) != 12 + 16 + 16:
        raise KeyStoreError("keystore slot has the wrong length")
    try:
        return sm4.gcm_decrypt(kek, raw[:12], raw[12:], aad)
    except DecryptionError:
        return None


@dataclass
class KeyStoreImage:
    header: dict[str, Any]
    header_bytes: bytes
    prefix: bytes  # magic ‖ len ‖ header
    body_nonce: bytes
    body: bytes


def parse(data: bytes) -> KeyStoreImage:
    if len(data) > MAX_FILE:
        raise KeyStoreError("keystore file is too large")
    if len(data) < 8 + 4 + 2 + 12 + 16 + 32 or data[:8] != MAGIC:
        raise KeyStoreError("not an mstcrypt keystore (bad magic or truncated)")
    if not hmac.compare_digest(sm3(data[:-32]), data[-32:]):
        raise KeyStoreError("keystore is corrupted or was modified (checksum mismatch)")
    (hlen,) = struct.unpack(">I", data[8:12])
    if 12 + hlen + 12 + 16 + 32 > len(data):
        raise KeyStoreError("keystore header length is inconsistent")
    header_bytes = data[12 : 12 + hlen]
    try:
        header = json.loads(header_bytes)
    except ValueError:
        raise KeyStoreError("keystore header is not valid JSON") from None
    if not isinstance(header, dict) or canonical_json(header) != header_bytes:
        raise KeyStoreError("keystore header is not canonical")
    prefix = data[: 12 + hlen]
    nonce = data[12 + hlen : 24 + hlen]
    body = data[24 + hlen : -32]
    return KeyStoreImage(header, header_bytes, prefix, nonce, body)


def open_body(image: KeyStoreImage, dek: bytes, aad: bytes | None = None) -> dict[str, Any]:
    """Decrypt and authenticate the body; its AAD is the file prefix unless ``aad`` is
    given (the soft token binds its body to the token and generation instead, and
    authenticates the header with a digest inside the payload)."""
    return open_blob(dek, image.body_nonce, image.body, image.prefix if aad is None else aad)


def open_blob(dek: bytes, nonce: bytes, body: bytes, aad: bytes) -> dict[str, Any]:
    try:
        payload = sm4.gcm_decrypt(dek, nonce, body, aad)
    except DecryptionError:
        raise KeyStoreError("keystore body failed authentication (tampered)") from None
    try:
        obj = json.loads(payload)
    except ValueError:
        raise KeyStoreError("keystore payload is not valid JSON") from None
    if not isinstance(obj, dict):
        raise KeyStoreError("keystore payload has the wrong shape")
    return obj


def build(
    header: dict[str, Any], payload: dict[str, Any], dek: bytes, aad: bytes | None = None
) -> bytes:
    hb = canonical_json(header)
    prefix = MAGIC + struct.pack(">I", len(hb)) + hb
    nonce = random_bytes(12)
    body = sm4.gcm_encrypt(dek, nonce, canonical_json(payload), prefix if aad is None else aad)
    data = prefix + nonce + body
    return data + sm3(data)


def atomic_write(path: Path, data: bytes, *, crash_hook: Any = None) -> None:
    """Write ``data`` to ``path`` atomically (tmp + fsync + rename + dir fsync)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
                if crash_hook:
                    crash_hook("write")
            os.fsync(fd)
        finally:
            os.close(fd)
        if crash_hook:
            crash_hook("before-rename")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if crash_hook:
        crash_hook("after-rename")
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_FILE + 1)
    except FileNotFoundError:
        raise KeyStoreError(f"keystore not found: {path}") from None
    except OSError as exc:
        raise KeyStoreError(f"cannot read keystore {path}: {exc.strerror or exc}") from None
