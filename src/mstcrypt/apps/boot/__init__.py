"""Trusted boot (T/ZSA 37-2020 §6.1): SM2-signed stage manifests with SM3 hash and
hash-tree descriptors, a chain of keys ROM → bootloader → kernel → next level, rollback
indexes, and measured boot. Specified in ``docs/trusted-boot.md``.

    from mstcrypt.apps import boot

    m = boot.Manifest.build("bootloader", [boot.HashDescriptor.of("bootloader", image),
                            boot.ChainDescriptor("kernel", 1, kernel_key.public_key())],
                            rollback_index=1, rollback_location=0, key=rom_key)
    state = boot.DeviceState.new(rom_key.public_key())
    with boot.verify_chain(state, {"bootloader": m.raw, ...}, images, trees=trees) as r:
        state.commit(r)
"""

from mstcrypt.apps.boot.errors import (
    CODES,
    BootError,
    BootFormatError,
    BootVerificationError,
    HashTreeError,
    RollbackError,
)
from mstcrypt.apps.boot.format import (
    MAGIC,
    ChainDescriptor,
    HashDescriptor,
    HashTreeDescriptor,
    Manifest,
)
from mstcrypt.apps.boot.hashtree import HashTree, TreeInfo, build, tree_layout
from mstcrypt.apps.boot.measure import Event, EventLog, extend, replay
from mstcrypt.apps.boot.verify import BootResult, DeviceState, verify_chain

__all__ = [
    "CODES",
    "MAGIC",
    "BootError",
    "BootFormatError",
    "BootResult",
    "BootVerificationError",
    "ChainDescriptor",
    "DeviceState",
    "Event",
    "EventLog",
    "HashDescriptor",
    "HashTree",
    "HashTreeDescriptor",
    "HashTreeError",
    "Manifest",
    "RollbackError",
    "TreeInfo",
    "build",
    "extend",
    "replay",
    "tree_layout",
    "verify_chain",
]
