"""Typed errors of trusted boot, each with a stable ``code`` (``docs/trusted-boot.md`` §5)
and the ``stage`` at which the boot stopped."""

from __future__ import annotations

from mstcrypt.errors import DecodeError, MstCryptError, PolicyError, VerificationError

__all__ = [
    "CODES",
    "BootError",
    "BootFormatError",
    "BootVerificationError",
    "HashTreeError",
    "RollbackError",
]

CODES = frozenset(
    {
        "malformed-manifest",
        "untrusted-key",
        "bad-signature",
        "stage-mismatch",
        "duplicate-image",
        "rollback",
        "missing-image",
        "image-size",
        "image-digest",
        "tree-size",
        "hashtree",
        "chain-cycle",
        "chain-too-deep",
        "missing-manifest",
    }
)


class BootError(MstCryptError):
    """The boot chain stopped: ``stage`` is the stage being verified (``None`` before a
    manifest was read), ``code`` one of :data:`CODES`."""

    def __init__(self, code: str, message: str, *, stage: str | None = None) -> None:
        if code not in CODES:  # pragma: no cover - programming error
            raise AssertionError(f"unknown boot error code {code!r}")
        super().__init__(f"{stage or '?'}: {message}" if stage else message)
        self.code = code
        self.stage = stage
        self.reason = message

    def at(self, stage: str) -> BootError:
        """The same error, attributed to ``stage``."""
        return type(self)(self.code, self.reason, stage=stage)


class BootFormatError(BootError, DecodeError):
    """A manifest or hash tree is not well formed."""


class BootVerificationError(BootError, VerificationError):
    """A key, signature, digest or hash-tree block did not verify."""


class HashTreeError(BootVerificationError):
    """A block of a hash-tree-verified image, or the tree itself, does not verify;
    ``level`` is the tree level that failed (-1 for the data block), ``block`` the
    data block that was being read."""

    def __init__(self, message: str, *, level: int, block: int, stage: str | None = None) -> None:
        super().__init__("hashtree", message, stage=stage)
        self.level = level
        self.block = block

    def at(self, stage: str) -> HashTreeError:
        return HashTreeError(self.reason, level=self.level, block=self.block, stage=stage)


class RollbackError(BootError, PolicyError):
    """A manifest's rollback index is below the device's stored value."""
