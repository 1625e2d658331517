"""The boot-chain verifier (``docs/trusted-boot.md`` §5): small on purpose, it is what
each stage runs on the next one, and the same code the CLI and the tests use.

    state = DeviceState.new(rom_key.public_key())
    with verify_chain(state, manifests, images, trees=trees) as result:
        system = result.trees["system"]        # lazily verified blocks
        state.commit(result)                   # rollback indexes move only now
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Union

from mstcrypt.apps.boot.errors import (
    BootError,
    BootFormatError,
    BootVerificationError,
    RollbackError,
)
from mstcrypt.apps.boot.format import (
    ROLLBACK_SLOTS,
    HashDescriptor,
    HashTreeDescriptor,
    Manifest,
)
from mstcrypt.apps.boot.hashtree import HashTree, file_size
from mstcrypt.apps.boot.measure import EventLog
from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.crypto.sm3 import SM3, sm3
from mstcrypt.errors import DecodeError, MstCryptError, VerificationError

__all__ = ["MAX_CHAIN", "BootResult", "DeviceState", "ImageRef", "verify_chain"]

MAX_CHAIN = 8
_U64 = (1 << 64) - 1
ImageRef = Union[bytes, str, os.PathLike, BinaryIO]  # noqa: UP007


@dataclass
class DeviceState:
    """What the device keeps: the fused SM3 hash of the ROM public key (read-only) and
    the 32 rollback index slots (monotonic)."""

    rom_key_hash: bytes
    rollback: list[int] = field(default_factory=lambda: [0] * ROLLBACK_SLOTS)

    def __post_init__(self) -> None:
        if not isinstance(self.rom_key_hash, bytes) or len(self.rom_key_hash) != 32:
            raise DecodeError("rom_key_hash must be the 32-byte SM3 of the ROM public key")
        if len(self.rollback) != ROLLBACK_SLOTS or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _U64 for v in self.rollback
        ):
            raise DecodeError(f"rollback must be {ROLLBACK_SLOTS} integers in 0..2^64-1")

    @classmethod
    def new(cls, rom_key: SM2PublicKey) -> DeviceState:
        return cls(sm3(rom_key.to_bytes()))

    def commit(self, result: BootResult) -> None:
        """Store the rollback values of a chain that verified completely."""
        if not isinstance(result, BootResult) or result.rom_key_hash != self.rom_key_hash:
            raise VerificationError("boot result was not produced for this device")
        self.rollback = [max(a, b) for a, b in zip(self.rollback, result.rollback, strict=True)]

    def to_json(self) -> str:
        return json.dumps({"rom_key_hash": self.rom_key_hash.hex(), "rollback": self.rollback})

    @classmethod
    def from_json(cls, text: str | bytes) -> DeviceState:
        try:
            obj = json.loads(text)
            return cls(bytes.fromhex(obj["rom_key_hash"]), list(obj["rollback"]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise DecodeError(
                "device state must be JSON {rom_key_hash: hex, rollback: [32 ints]}"
            ) from None


@dataclass
class BootResult:
    """A verified chain: its manifests in boot order, the measurements, the rollback
    values to commit and the lazily verified hash-tree images. Close it (or use ``with``)
    to release the files it opened."""

    rom_key_hash: bytes
    manifests: list[Manifest]
    log: EventLog
    rollback: list[int]
    trees: dict[str, HashTree]
    _opened: list[BinaryIO] = field(default_factory=list, repr=False)

    @property
    def stages(self) -> list[str]:
        return [m.stage for m in self.manifests]

    def close(self) -> None:
        for f in self._opened:
            f.close()
        self._opened.clear()

    def __enter__(self) -> BootResult:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open(ref: ImageRef, opened: list[BinaryIO]) -> BinaryIO:
    if isinstance(ref, bytes | bytearray):
        import io

        return io.BytesIO(bytes(ref))
    if isinstance(ref, str | os.PathLike):
        f = open(ref, "rb")  # noqa: SIM115 - closed by BootResult.close
        opened.append(f)
        return f
    return ref


def _check_hash(d: HashDescriptor, f: BinaryIO) -> None:
    size = file_size(f)
    if size != d.image_size:
        raise BootVerificationError(
            "image-size", f"image {d.name!r} is {size} bytes, manifest says {d.image_size}"
        )
    h = SM3(d.salt)
    f.seek(0)
    left = d.image_size
    while left:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            raise BootVerificationError("image-size", f"image {d.name!r} is truncated")
        h.update(chunk)
        left -= len(chunk)
    if not hmac.compare_digest(h.digest(), d.digest):
        raise BootVerificationError(
            "image-digest", f"image {d.name!r} does not match its SM3 digest"
        )


def verify_chain(
    state: DeviceState,
    manifests: Mapping[str, bytes],
    images: Mapping[str, ImageRef],
    *,
    trees: Mapping[str, ImageRef] | None = None,
    first: str = "bootloader",
    full_hashtree: bool = False,
) -> BootResult:
    """Verify the chain starting at stage ``first``, in the order of §5; raise the first
    failure as a :class:`BootError` carrying the stage and code. ``state`` is not
    modified: call ``state.commit(result)`` once the device accepts the boot."""
    trees = trees or {}
    opened: list[BinaryIO] = []
    result = BootResult(state.rom_key_hash, [], EventLog(), list(state.rollback), {}, opened)
    expected_key: SM2PublicKey | None = None
    expected_slot: int | None = None
    stage = first
    seen_images: set[str] = set()
    used_slots: set[int] = set()
    try:
        while True:
            raw = manifests.get(stage)
            if raw is None:
                raise BootFormatError("missing-manifest", "no manifest for this stage")
            m = Manifest.parse(raw)
            # 2. key: fused hash for the first stage, the parent's chain descriptor after
            if expected_key is None:
                if not hmac.compare_digest(sm3(m.signer_key.to_bytes()), state.rom_key_hash):
                    raise BootVerificationError(
                        "untrusted-key", "manifest key is not the fused ROM key"
                    )
            elif m.signer_key != expected_key:
                raise BootVerificationError(
                    "untrusted-key", "manifest key is not the key named by the previous stage"
                )
            # 3. signature
            try:
                m.signer_key.verify(m.signature, m.tbs)
            except MstCryptError:
                raise BootVerificationError(
                    "bad-signature", "manifest signature does not verify"
                ) from None
            # 4. identity within the chain
            if m.stage != stage:
                raise BootVerificationError("stage-mismatch", f"manifest is for stage {m.stage!r}")
            if expected_slot is not None and m.rollback_location != expected_slot:
                raise BootVerificationError(
                    "stage-mismatch",
                    "rollback location differs from the previous stage's chain descriptor",
                )
            for d in m.images:
                if d.name in seen_images:
                    raise BootFormatError(
                        "duplicate-image", f"image {d.name!r} already used by an earlier stage"
                    )
                seen_images.add(d.name)
            # 5. rollback
            slot = m.rollback_location
            if slot in used_slots:
                raise RollbackError("rollback", f"rollback slot {slot} used by two stages")
            used_slots.add(slot)
            if m.rollback_index < state.rollback[slot]:
                raise RollbackError(
                    "rollback",
                    f"rollback index {m.rollback_index} is below the stored "
                    f"{state.rollback[slot]} (slot {slot})",
                )
            result.rollback[slot] = max(result.rollback[slot], m.rollback_index)
            # 6. images
            for d in m.images:
                ref = images.get(d.name)
                if ref is None:
                    raise BootFormatError("missing-image", f"image {d.name!r} not supplied")
                if isinstance(d, HashDescriptor):
                    _check_hash(d, _open(ref, opened))
                else:
                    assert isinstance(d, HashTreeDescriptor)
                    tref = trees.get(d.name)
                    if tref is None:
                        raise BootFormatError(
                            "missing-image", f"hash tree of {d.name!r} not supplied"
                        )
                    tree = HashTree(d, _open(ref, opened), _open(tref, opened), stage=m.stage)
                    if full_hashtree:
                        tree.verify_all()
                    result.trees[d.name] = tree
            # 7. measure
            result.log.extend(m.stage, "manifest", m.digest)
            result.manifests.append(m)
            # 8. next stage
            chain = m.chain
            if chain is None:
                return result
            if chain.name in result.stages:
                raise BootFormatError("chain-cycle", f"chain returns to stage {chain.name!r}")
            if len(result.manifests) >= MAX_CHAIN:
                raise BootFormatError("chain-too-deep", f"chain longer than {MAX_CHAIN} stages")
            expected_key, expected_slot, stage = (
                chain.public_key,
                chain.rollback_location,
                chain.name,
            )
    except BootError as exc:
        result.close()
        if exc.stage is None:
            raise exc.at(stage) from None
        raise
    except BaseException:
        result.close()
        raise
