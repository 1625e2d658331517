"""Encrypted blobs for files, images, voice notes and video (``docs/im-format.md`` §4).

A blob is the file in chunks of :data:`CHUNK` plaintext bytes, each sealed with
SM4-GCM under the file's own random 16-byte key (carried inside the signed, encrypted
:class:`~mstcrypt.apps.im.content.FileRef`), nonce = 11-byte chunk counter ‖ final flag,
associated data = label ‖ blob id. Truncation, reordering, dropping or splicing
chunks from another blob all fail. Memory use is one chunk whatever the size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO

from mstcrypt.apps.im.errors import ImDecryptError, ImFormatError
from mstcrypt.crypto import sm4
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm3 import SM3
from mstcrypt.errors import DecryptionError, MstCryptError, PolicyError

__all__ = ["CHUNK", "BlobSealer", "blob_size", "new_blob_id", "open_blob"]

CHUNK = 64 * 1024
TAG = 16
LABEL = b"mstcrypt-im-v1 blob\x00"
MAX_CHUNKS = 1 << 80


def new_blob_id() -> str:
    return random_bytes(16).hex()


def blob_size(plain_size: int) -> int:
    """The encrypted size of a file of ``plain_size`` bytes."""
    chunks = max(1, -(-plain_size // CHUNK))
    return plain_size + chunks * TAG


def _nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def _aad(blob_id: str) -> bytes:
    return LABEL + bytes.fromhex(blob_id)


class BlobSealer:
    """Encrypts ``src`` lazily: iterate to get the encrypted chunks (for an upload body);
    afterwards ``size`` and ``digest`` (SM3 of the plaintext) are set."""

    def __init__(self, src: BinaryIO, *, blob_id: str | None = None) -> None:
        self.src = src
        self.blob_id = blob_id or new_blob_id()
        self.key = random_bytes(16)
        self.size = 0
        self._h = SM3()
        self.digest = b""

    def __repr__(self) -> str:
        return f"BlobSealer(blob_id={self.blob_id!r}, size={self.size})"

    def __iter__(self) -> Iterator[bytes]:
        aad = _aad(self.blob_id)
        index = 0
        chunk = self._read()
        while True:
            # the last chunk is final; a file of a multiple of CHUNK ends on a full one
            nxt = self._read() if len(chunk) == CHUNK else b""
            final = not nxt
            self.size += len(chunk)
            self._h.update(chunk)
            yield sm4.gcm_encrypt(self.key, _nonce(index, final), chunk, aad)
            if final:
                break
            chunk, index = nxt, index + 1
        self.digest = self._h.digest()

    def _read(self) -> bytes:
        out = b""
        while len(out) < CHUNK:
            part = self.src.read(CHUNK - len(out))
            if not part:
                break
            out += part
        return out


def open_blob(
    read: Callable[[int], bytes],
    write: Callable[[bytes], object],
    *,
    blob_id: str,
    key: bytes,
    size: int,
    digest: bytes,
) -> None:
    """Decrypt a blob read with ``read(n)`` into ``write``, checking every chunk, the
    final flag, the size and the SM3 digest named in the signed message. Plaintext is
    written chunk by chunk only after that chunk authenticates; a caller that must not
    keep a partial file on failure writes to a temporary file and renames it."""
    if len(key) != 16:
        raise PolicyError("a blob key is 16 bytes")
    aad, h, done, index = _aad(blob_id), SM3(), 0, 0
    while True:
        want = min(CHUNK, size - done) + TAG
        ct = b""
        while len(ct) < want:
            part = read(want - len(ct))
            if not part:
                raise ImFormatError("truncated", f"the blob ends inside chunk {index}")
            ct += part
        final = done + len(ct) - TAG == size
        try:
            pt = sm4.gcm_decrypt(key, _nonce(index, final), ct, aad)
        except (DecryptionError, MstCryptError):
            raise ImDecryptError(
                "blob-auth-failed", f"blob chunk {index} fails its authentication tag"
            ) from None
        h.update(pt)
        write(pt)
        done += len(pt)
        index += 1
        if final:
            break
    if read(1):
        raise ImFormatError("trailing-data", "bytes follow the final chunk of the blob")
    if h.digest() != digest:
        raise ImDecryptError("blob-digest-mismatch", "the blob is not the file the message names")
