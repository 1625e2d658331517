"""Streaming encryption and decryption in constant memory, and random-access reading.

Streams are binary file objects: the source needs ``read(n)`` (or ``readinto``), the
destination ``write(b)``. Memory use is two chunks whatever the file size.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

from mstcrypt.apps.files.errors import NoMatchingRecipientError, PayloadError
from mstcrypt.apps.files.format import (
    DEFAULT_CHUNK_LOG2,
    FEK_SIZE,
    MAX_CHUNK_LOG2,
    MIN_CHUNK_LOG2,
    SALT_SIZE,
    TAG_SIZE,
    FileKeys,
    Header,
    PayloadGeometry,
    nonce,
    read_header,
)
from mstcrypt.apps.files.recipients import Identity, RecipientLike, identities_of, recipient
from mstcrypt.crypto import sm4
from mstcrypt.crypto.random import random_bytes
from mstcrypt.errors import DecryptionError, PolicyError
from mstcrypt.module.base import KeyHandle

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "EncryptedFileReader",
    "Progress",
    "decrypt",
    "encrypt",
    "open_header",
    "open_range",
]

DEFAULT_CHUNK_SIZE = 1 << DEFAULT_CHUNK_LOG2

#: called with the number of plaintext bytes just processed
Progress = Callable[[int], None]


def _chunk_log2(chunk_size: int) -> int:
    if (
        not isinstance(chunk_size, int)
        or chunk_size <= 0
        or chunk_size & (chunk_size - 1)
        or not MIN_CHUNK_LOG2 <= chunk_size.bit_length() - 1 <= MAX_CHUNK_LOG2
    ):
        raise PolicyError(
            f"chunk_size must be a power of two from {1 << MIN_CHUNK_LOG2} to "
            f"{1 << MAX_CHUNK_LOG2} bytes"
        )
    return chunk_size.bit_length() - 1


def _reader(src: Any) -> Callable[[int], bytes]:
    """A ``read(n)`` that returns exactly n bytes unless the input ends."""
    read = getattr(src, "read", None)
    if read is None:
        raise PolicyError("the source must be a binary file object with read()")

    def read_exact(n: int) -> bytes:
        data = read(n)
        if data is None:
            data = b""
        if not isinstance(data, bytes | bytearray):
            raise PolicyError("the source must be opened in binary mode")
        if len(data) == n or not data:
            return bytes(data)
        parts = [bytes(data)]
        got = len(data)
        while got < n:
            more = read(n - got)
            if not more:
                break
            parts.append(bytes(more))
            got += len(more)
        return b"".join(parts)

    return read_exact


def _writer(dst: Any) -> Callable[[bytes], object]:
    write = getattr(dst, "write", None)
    if write is None:
        raise PolicyError("the destination must be a binary file object with write()")
    return write  # type: ignore[no-any-return]


# --- encryption ---------------------------------------------------------------------------


def _new_header(
    recipients: Sequence[RecipientLike],
    escrow: RecipientLike | None,
    chunk_size: int,
) -> tuple[Header, FileKeys]:
    log2 = _chunk_log2(chunk_size)
    if isinstance(recipients, RecipientLike):  # a single recipient passed by mistake
        recipients = [recipients]
    rs = [recipient(r) for r in recipients]
    if escrow is not None:
        rs.append(recipient(escrow, escrow=True))
    if not rs:
        raise PolicyError("encrypt needs at least one recipient")
    fek = random_bytes(FEK_SIZE)
    salt = random_bytes(SALT_SIZE)
    keys = FileKeys(fek, salt)
    header = Header.build([r.wrap(fek) for r in rs], keys, salt=salt, chunk_log2=log2)
    return header, keys


def encrypt(
    src: BinaryIO,
    dst: BinaryIO,
    recipients: Sequence[RecipientLike],
    *,
    escrow: RecipientLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> Header:
    """Encrypt the stream ``src`` into ``dst`` for ``recipients`` (certificates, SM2
    public keys or :class:`Recipient`), with an escrow stanza when ``escrow`` (the KMC
    file-recovery key) is given. A fresh FEK and salt are drawn for every call. Returns
    the header written."""
    header, keys = _new_header(recipients, escrow, chunk_size)
    write = _writer(dst)
    write(header.raw)
    _encrypt_payload(_reader(src), write, keys, header.chunk_size, progress)
    return header


def _encrypt_payload(
    read: Callable[[int], bytes],
    write: Callable[[bytes], object],
    keys: FileKeys,
    chunk_size: int,
    progress: Progress | None,
) -> None:
    key, prefix = keys.payload_key, keys.nonce_prefix
    cur = read(chunk_size)
    index = 0
    while True:
        nxt = read(chunk_size) if len(cur) == chunk_size else b""
        final = not nxt
        write(sm4.gcm_encrypt(key, nonce(prefix, index, final), cur))
        if progress is not None and cur:
            progress(len(cur))
        if final:
            return
        cur = nxt
        index += 1


# --- header opening -------------------------------------------------------------------------


def open_header(header: Header, identities: Sequence[Identity]) -> FileKeys:
    """Steps 14–16: find the stanza naming one of ``identities``, unwrap the FEK and
    verify the header MAC. Returns the derived keys."""
    for ident in identities:
        stanza = header.stanza_for(ident.key_id)
        if stanza is None:
            continue
        keys = FileKeys(ident.unwrap(stanza.wrapped), header.salt)
        header.verify_mac(keys)
        return keys
    names = ", ".join(f"{i.key_id[:8].hex()}…" for i in identities) or "none"
    raise NoMatchingRecipientError(
        "no-matching-recipient",
        f"the file is not encrypted to this key (tried {names}; the header names "
        f"{len(header.stanzas)} stanza(s))",
    )


def _open(src: Any, module: object, handle: KeyHandle | None) -> tuple[Header, FileKeys]:
    idents = identities_of(module, handle)
    header = read_header(_reader(src))
    return header, open_header(header, idents)


# --- streaming decryption ---------------------------------------------------------------------


def _gcm_open(keys: FileKeys, index: int, final: bool, chunk: bytes) -> bytes | None:
    try:
        return sm4.gcm_decrypt(keys.payload_key, nonce(keys.nonce_prefix, index, final), chunk)
    except DecryptionError:
        return None


def _decrypt_payload(
    read: Callable[[int], bytes],
    write: Callable[[bytes], object],
    keys: FileKeys,
    chunk_size: int,
    progress: Progress | None,
) -> int:
    full = chunk_size + TAG_SIZE
    cur = read(full)
    if not cur:
        raise PayloadError("missing-payload", "payload is empty (no final chunk)")
    index = 0
    total = 0
    while True:
        if len(cur) < TAG_SIZE:
            raise PayloadError(
                "truncated-chunk",
                f"chunk {index} is {len(cur)} bytes, shorter than its 16-byte tag",
            )
        nxt = read(full) if len(cur) == full else b""
        if not nxt:  # cur is the last chunk in the file: it must be the final chunk
            if index > 0 and len(cur) == TAG_SIZE:
                raise PayloadError(
                    "empty-final-chunk", f"chunk {index} is an empty final chunk after a full one"
                )
            pt = _gcm_open(keys, index, True, cur)
            if pt is None:
                if len(cur) == full and _gcm_open(keys, index, False, cur) is not None:
                    raise PayloadError(
                        "missing-final-chunk",
                        f"file truncated: chunk {index} is not the final chunk and nothing "
                        "follows it",
                    )
                raise PayloadError("chunk-auth-failed", f"chunk {index} fails authentication")
            write(pt)
            total += len(pt)
            if progress is not None and pt:
                progress(len(pt))
            return total
        pt = _gcm_open(keys, index, False, cur)
        if pt is None:
            if _gcm_open(keys, index, True, cur) is not None:
                raise PayloadError("trailing-data", f"data follows the final chunk (chunk {index})")
            raise PayloadError("chunk-auth-failed", f"chunk {index} fails authentication")
        write(pt)
        total += len(pt)
        if progress is not None:
            progress(len(pt))
        cur = nxt
        index += 1


def decrypt(
    src: BinaryIO,
    dst: BinaryIO,
    module: object,
    handle: KeyHandle | None = None,
    *,
    progress: Progress | None = None,
) -> int:
    """Decrypt the stream ``src`` into ``dst``; returns the plaintext length.

    ``module, handle``: a :class:`~mstcrypt.module.CryptoModule` and the
    :class:`~mstcrypt.module.KeyHandle` of an encryption key (usage ENCRYPT); with the
    module alone, every container's encryption key is tried. An :class:`Identity` (or
    a list of them) may be passed instead of the module.

    Each chunk is written only after its tag verified, but chunks before a failing one
    have been written already: write to a temporary file and keep it only when this
    returns (or use :func:`decrypt_file`)."""
    header, keys = _open(src, module, handle)
    return _decrypt_payload(_reader(src), _writer(dst), keys, header.chunk_size, progress)


# --- random access ------------------------------------------------------------------------


class EncryptedFileReader(io.RawIOBase):
    """Random-access, authenticated reading of an encrypted file from a seekable binary
    source. Opening authenticates the header and the final chunk, so :attr:`size` is
    authentic; every read authenticates the chunks it touches and nothing else.

    It is a read-only :class:`io.RawIOBase` (``read``, ``readinto``, ``seek``, ``tell``),
    so ``io.BufferedReader(reader)`` works; :meth:`pread` reads at an offset."""

    def __init__(self, src: BinaryIO, module: object, handle: KeyHandle | None = None) -> None:
        super().__init__()
        if not (hasattr(src, "seek") and hasattr(src, "read")):
            raise PolicyError("random access needs a seekable binary source")
        if hasattr(src, "seekable") and not src.seekable():
            raise PolicyError("random access needs a seekable binary source")
        self._src = src
        src.seek(0)
        self.header, self._keys = _open(src, module, handle)
        end = src.seek(0, os.SEEK_END)
        self.geometry = PayloadGeometry.of(self.header.chunk_size, end - self.header.size)
        self._pos = 0
        self._cache: tuple[int, bytes] | None = None
        self._chunk(self.geometry.chunks - 1)

    @property
    def size(self) -> int:
        """The plaintext length (authenticated by the final chunk's tag)."""
        return self.geometry.plaintext_size

    def _chunk(self, index: int) -> bytes:
        if self._cache is not None and self._cache[0] == index:
            return self._cache[1]
        start, length = self.geometry.chunk_span(index)
        self._src.seek(self.header.size + start)
        data = _reader(self._src)(length)
        final = index == self.geometry.chunks - 1
        pt = None if len(data) != length else _gcm_open(self._keys, index, final, data)
        if pt is None:
            raise PayloadError("chunk-auth-failed", f"chunk {index} fails authentication")
        self._cache = (index, pt)
        return pt

    def iter_range(self, offset: int, length: int | None = None) -> Iterator[bytes]:
        """Plaintext pieces covering ``[offset, offset + length)`` (clipped to the end),
        one chunk at a time (constant memory for any range)."""
        if not isinstance(offset, int) or offset < 0:
            raise PolicyError("offset must be a non-negative integer")
        if length is not None and (not isinstance(length, int) or length < 0):
            raise PolicyError("length must be a non-negative integer")
        end = self.size if length is None else min(self.size, offset + length)
        cs = self.header.chunk_size
        pos = offset
        while pos < end:
            index = pos // cs
            pt = self._chunk(index)
            lo = pos - index * cs
            hi = min(len(pt), end - index * cs)
            yield pt[lo:hi]
            pos = index * cs + hi

    def pread(self, offset: int, length: int) -> bytes:
        """The plaintext bytes ``[offset, offset + length)`` (fewer at the end)."""
        return b"".join(self.iter_range(offset, length))

    # io.RawIOBase
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}.get(whence)
        if base is None:
            raise PolicyError("whence must be SEEK_SET, SEEK_CUR or SEEK_END")
        if base + offset < 0:
            raise PolicyError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._pos >= self.size or not len(view):
            return 0
        index = self._pos // self.header.chunk_size
        pt = self._chunk(index)
        lo = self._pos - index * self.header.chunk_size
        n = min(len(view), len(pt) - lo)
        view[:n] = pt[lo : lo + n]
        self._pos += n
        return n

    def __repr__(self) -> str:
        return f"EncryptedFileReader(size={self.size}, chunks={self.geometry.chunks})"


def open_range(
    src: BinaryIO,
    module: object,
    handle: KeyHandle | None = None,
    *,
    offset: int = 0,
    length: int | None = None,
) -> bytes:
    """Decrypt only ``[offset, offset + length)`` of a seekable encrypted file (the
    header, the final chunk and the chunks covering the range are authenticated)."""
    return b"".join(EncryptedFileReader(src, module, handle).iter_range(offset, length))
