"""A complete signed chain ROM → bootloader → kernel (+ initrd) → system (hash tree)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mstcrypt.apps import boot
from mstcrypt.crypto.sm2 import SM2PrivateKey

BLOCKS = 300  # two tree levels at 4 KiB blocks (128 hashes per block)


@dataclass
class Chain:
    dir: Path
    rom: SM2PrivateKey
    kernel_key: SM2PrivateKey
    next_key: SM2PrivateKey
    manifests: dict[str, bytes]
    images: dict[str, Path]
    trees: dict[str, Path]
    state: boot.DeviceState
    system: boot.HashTreeDescriptor
    extra: dict[str, object] = field(default_factory=dict)

    def verify(self, **kw: object) -> boot.BootResult:
        return boot.verify_chain(self.state, self.manifests, self.images, trees=self.trees, **kw)

    def resign(self, which: str, key: SM2PrivateKey | None = None, **changes: object) -> None:
        """Rebuild the manifest of ``which`` with ``changes`` and sign it (by default with
        the stage's own key)."""
        m = boot.Manifest.parse(self.manifests[which])
        keys = {"bootloader": self.rom, "kernel": self.kernel_key, "system": self.next_key}
        args = {
            "stage": m.stage,
            "descriptors": list(m.descriptors),
            "rollback_index": m.rollback_index,
            "rollback_location": m.rollback_location,
        }
        args.update(changes)
        new = boot.Manifest.build(
            args.pop("stage"), args.pop("descriptors"), key=key or keys[which], **args
        )
        self.manifests[which] = new.raw


def make_chain(d: Path, *, versions: tuple[int, int, int] = (1, 1, 1)) -> Chain:
    rom, kk, nk = SM2PrivateKey.generate(), SM2PrivateKey.generate(), SM2PrivateKey.generate()
    images = {}
    for name, size in (("bootloader", 20_000), ("vmlinuz", 70_001), ("initrd", 33_333)):
        p = d / name
        p.write_bytes(os.urandom(size))
        images[name] = p
    system = d / "system.img"
    system.write_bytes(os.urandom(4096 * BLOCKS))
    images["system"] = system
    tree = d / "system.tree"
    salt = bytes(range(32))
    with system.open("rb") as f, tree.open("wb") as t:
        info = boot.build(f, t, block_size=4096, salt=salt)
    sysdesc = boot.HashTreeDescriptor(
        "system", 4096 * BLOCKS, 12, salt, info.layout.tree_size, info.root
    )
    bl = boot.Manifest.build(
        "bootloader",
        [
            boot.HashDescriptor.of("bootloader", images["bootloader"].read_bytes(), b"s1"),
            boot.ChainDescriptor("kernel", 1, kk.public_key()),
        ],
        rollback_index=versions[0],
        rollback_location=0,
        key=rom,
    )
    kern = boot.Manifest.build(
        "kernel",
        [
            boot.HashDescriptor.of("vmlinuz", images["vmlinuz"].read_bytes()),
            boot.HashDescriptor.of("initrd", images["initrd"].read_bytes(), os.urandom(16)),
            boot.ChainDescriptor("system", 2, nk.public_key()),
        ],
        rollback_index=versions[1],
        rollback_location=1,
        key=kk,
    )
    nxt = boot.Manifest.build(
        "system", [sysdesc], rollback_index=versions[2], rollback_location=2, key=nk
    )
    return Chain(
        d,
        rom,
        kk,
        nk,
        {"bootloader": bl.raw, "kernel": kern.raw, "system": nxt.raw},
        images,
        {"system": tree},
        boot.DeviceState.new(rom.public_key()),
        sysdesc,
    )
