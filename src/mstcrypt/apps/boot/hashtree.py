"""SM3 hash tree, dm-verity format 1 (``docs/trusted-boot.md`` §4).

Building and full verification stream the image in constant memory (one pending hash
block per level, or two block buffers); :meth:`HashTree.read_block` verifies one data
block in O(log n) reads, top-down, so the error names the level that was tampered with.

    info = build(image_file, tree_file, block_size=4096, salt=salt)      # -> TreeInfo
    tree = HashTree(descriptor, image_file, tree_file)
    data = tree.read_block(1234)                                          # verified bytes
"""

from __future__ import annotations

import hmac
import io
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import BinaryIO

from mstcrypt.apps.boot.errors import BootVerificationError, HashTreeError
from mstcrypt.crypto.sm3 import SM3
from mstcrypt.errors import PolicyError

__all__ = ["HashTree", "Layout", "TreeInfo", "build", "file_size", "tree_layout"]

DIGEST = 32
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Layout:
    """Where each level lives in the tree file. ``levels[0]`` is level 0 (hashes of the
    data blocks); the file stores the top level first."""

    block_size: int
    data_blocks: int
    level_blocks: tuple[int, ...]  # blocks per level, level 0 first
    level_offsets: tuple[int, ...]  # byte offset of each level in the tree file
    tree_size: int

    @property
    def per_block_bits(self) -> int:
        return (self.block_size // DIGEST).bit_length() - 1


def tree_layout(image_size: int, block_size: int) -> Layout:
    if block_size < 2 * DIGEST or block_size & (block_size - 1):
        raise PolicyError("hash tree block size must be a power of two of at least 64 bytes")
    if image_size <= 0 or image_size % block_size:
        raise PolicyError("hash tree image size must be a positive multiple of the block size")
    per = block_size // DIGEST
    n = image_size // block_size
    counts: list[int] = []
    hashes = n
    if n > 1:
        while True:
            blocks = -(-hashes // per)
            counts.append(blocks)
            if blocks == 1:
                break
            hashes = blocks
    offsets = [0] * len(counts)
    pos = 0
    for lvl in reversed(range(len(counts))):  # top level first
        offsets[lvl] = pos
        pos += counts[lvl] * block_size
    return Layout(block_size, n, tuple(counts), tuple(offsets), pos)


@dataclass(frozen=True)
class TreeInfo:
    root: bytes
    layout: Layout
    salt: bytes


def file_size(f: BinaryIO) -> int:
    try:
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        pos = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(pos)
        return end


def _pread(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    out = f.read(n)
    return out if out is not None else b""


def _read_full(f: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at end of file (pipes may return short reads)."""
    out = f.read(n) or b""
    while len(out) < n:
        more = f.read(n - len(out))
        if not more:
            break
        out += more
    return out


def build(
    image: BinaryIO,
    tree_out: BinaryIO,
    *,
    block_size: int = 4096,
    salt: bytes = b"",
    image_size: int | None = None,
) -> TreeInfo:
    """Hash ``image`` (read from its current position, ``image_size`` bytes, by default
    to its end) and write the tree to the seekable ``tree_out``. Constant memory."""
    if image_size is None:
        image_size = file_size(image) - image.tell()
    layout = tree_layout(image_size, block_size)
    base = SM3(salt)
    nlev = len(layout.level_blocks)
    pending = [bytearray() for _ in range(nlev)]
    written = [0] * nlev
    root = b""

    def push(level: int, digest: bytes) -> None:
        nonlocal root
        if level == nlev:
            root = digest
            return
        buf = pending[level]
        buf += digest
        if len(buf) == block_size:
            flush(level)

    def flush(level: int) -> None:
        buf = pending[level]
        if not buf:
            return
        buf += bytes(block_size - len(buf))
        tree_out.seek(layout.level_offsets[level] + written[level] * block_size)
        tree_out.write(buf)
        written[level] += 1
        h = base.copy()
        h.update(bytes(buf))
        pending[level] = bytearray()
        push(level + 1, h.digest())

    remaining = image_size
    chunk = max(block_size, (_READ_CHUNK // block_size) * block_size)
    while remaining:
        data = _read_full(image, min(chunk, remaining))
        if len(data) != min(chunk, remaining):
            raise BootVerificationError("image-size", "image shorter than its declared size")
        mv = memoryview(data)
        for off in range(0, len(data), block_size):
            h = base.copy()
            h.update(mv[off : off + block_size])
            push(0, h.digest())
        remaining -= len(data)
    for level in range(nlev):
        flush(level)
    tree_out.flush()
    return TreeInfo(root, layout, salt)


class HashTree:
    """Lazy, verified access to a hash-tree image: every block handed out was checked
    against the signed root. Verified hash blocks are cached (``cache`` blocks)."""

    def __init__(
        self,
        descriptor: object,
        image: BinaryIO,
        tree: BinaryIO,
        *,
        cache: int = 64,
        stage: str | None = None,
    ) -> None:
        from mstcrypt.apps.boot.format import HashTreeDescriptor

        if not isinstance(descriptor, HashTreeDescriptor):
            raise PolicyError("HashTree needs a HashTreeDescriptor")
        self.descriptor = descriptor
        self.stage = stage  # named in the errors of lazy reads
        self.layout = tree_layout(descriptor.image_size, descriptor.block_size)
        self._image, self._tree = image, tree
        self._base = SM3(descriptor.salt)
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._cache_max = cache
        if file_size(image) != descriptor.image_size:
            raise BootVerificationError(
                "image-size",
                f"image {descriptor.name!r} is {file_size(image)} bytes, "
                f"manifest says {descriptor.image_size}",
            )
        if file_size(tree) != self.layout.tree_size:
            raise BootVerificationError(
                "tree-size",
                f"hash tree of {descriptor.name!r} is {file_size(tree)} bytes, "
                f"expected {self.layout.tree_size}",
            )

    @property
    def blocks(self) -> int:
        return self.layout.data_blocks

    def _hash(self, data: bytes | memoryview) -> bytes:
        h = self._base.copy()
        h.update(data)
        return h.digest()

    def _hash_block(self, level: int, index: int, expected: bytes, data_block: int) -> bytes:
        key = (level, index)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        bs = self.layout.block_size
        blk = _pread(self._tree, self.layout.level_offsets[level] + index * bs, bs)
        if len(blk) != bs or not hmac.compare_digest(self._hash(blk), expected):
            raise HashTreeError(
                f"hash block {index} of level {level} does not verify "
                f"(reading data block {data_block})",
                level=level,
                block=data_block,
                stage=self.stage,
            )
        self._cache[key] = blk
        if len(self._cache) > self._cache_max:
            self._cache.popitem(last=False)
        return blk

    def read_block(self, i: int) -> bytes:
        """Data block ``i``, verified top-down against the root: O(log n)."""
        if not isinstance(i, int) or not 0 <= i < self.layout.data_blocks:
            raise PolicyError(f"block index must be 0..{self.layout.data_blocks - 1}")
        bits = self.layout.per_block_bits
        per = 1 << bits
        expected = self.descriptor.root
        for level in reversed(range(len(self.layout.level_blocks))):
            blk = self._hash_block(level, i >> (bits * (level + 1)), expected, i)
            slot = (i >> (bits * level)) & (per - 1)
            expected = blk[slot * DIGEST : (slot + 1) * DIGEST]
        bs = self.layout.block_size
        data = _pread(self._image, i * bs, bs)
        if len(data) != bs or not hmac.compare_digest(self._hash(data), expected):
            raise HashTreeError(
                f"data block {i} does not match the hash tree", level=-1, block=i, stage=self.stage
            )
        return data

    def read(self, offset: int, length: int) -> bytes:
        """``length`` verified bytes at ``offset`` (every block touched is verified)."""
        bs = self.layout.block_size
        if offset < 0 or length < 0 or offset + length > self.descriptor.image_size:
            raise PolicyError("read outside the image")
        out = bytearray()
        for b in range(offset // bs, -(-(offset + length) // bs)):
            out += self.read_block(b)
        start = offset % bs
        return bytes(out[start : start + length])

    def verify_all(self) -> None:
        """Verify every tree level and every data block, top-down, streaming in constant
        memory (a parent block and a child chunk at a time)."""
        lay = self.layout
        bs = lay.block_size
        per = bs // DIGEST
        nlev = len(lay.level_blocks)
        if nlev == 0:
            self.read_block(0)
            return
        top = _pread(self._tree, lay.level_offsets[nlev - 1], bs)
        if len(top) != bs or not hmac.compare_digest(self._hash(top), self.descriptor.root):
            raise HashTreeError(
                f"top hash block (level {nlev - 1}) does not verify",
                level=nlev - 1,
                block=0,
                stage=self.stage,
            )
        # each level (and finally the data) against the level above, both read in order
        for level in range(nlev - 1, -1, -1):
            child_count = lay.level_blocks[level - 1] if level > 0 else lay.data_blocks
            src = self._tree if level > 0 else self._image
            src_off = lay.level_offsets[level - 1] if level > 0 else 0
            chunk = max(1, _READ_CHUNK // bs)
            parent = b""
            for start in range(0, child_count, chunk):
                n = min(chunk, child_count - start)
                data = _pread(src, src_off + start * bs, n * bs)
                if len(data) != n * bs:
                    raise HashTreeError(
                        "truncated read", level=level - 1, block=start, stage=self.stage
                    )
                mv = memoryview(data)
                for k in range(n):
                    j = start + k
                    if j % per == 0:
                        parent = _pread(self._tree, lay.level_offsets[level] + (j // per) * bs, bs)
                    slot = (j % per) * DIGEST
                    if not hmac.compare_digest(
                        self._hash(mv[k * bs : (k + 1) * bs]), parent[slot : slot + DIGEST]
                    ):
                        if level == 0:
                            raise HashTreeError(
                                f"data block {j} does not match the hash tree",
                                level=-1,
                                block=j,
                                stage=self.stage,
                            )
                        raise HashTreeError(
                            f"hash block {j} of level {level - 1} does not verify",
                            level=level - 1,
                            block=j << (lay.per_block_bits * level),
                            stage=self.stage,
                        )
