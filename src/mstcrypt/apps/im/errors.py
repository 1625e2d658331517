"""Typed errors of secure instant messaging, each with a stable ``code``.

The codes and the order in which a reader checks an envelope are specified in
``docs/im-format.md`` §6; the negative tests assert class and code.
"""

from __future__ import annotations

from mstcrypt.errors import (
    DecodeError,
    DecryptionError,
    MstCryptError,
    PolicyError,
    VerificationError,
)

__all__ = [
    "FORMAT_CODES",
    "ImContentError",
    "ImDecryptError",
    "ImError",
    "ImFormatError",
    "ImKeyVersionError",
    "ImReplayError",
    "ImSenderError",
    "ImSignatureError",
]

FORMAT_CODES = frozenset(
    {
        "truncated",
        "bad-magic",
        "unsupported-version",
        "bad-content-type",
        "bad-flags",
        "bad-group",
        "bad-key-version",
        "bad-sender",
        "bad-sequence",
        "bad-timestamp",
        "bad-body-length",
        "bad-signature-length",
        "trailing-data",
        "too-large",
    }
)


class ImError(MstCryptError):
    """Base of every messaging error; ``code`` is a stable identifier
    (``docs/im-format.md`` §6). Messages never contain key material or plaintext."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ImFormatError(ImError, DecodeError):
    """The bytes are not a well-formed envelope (structure and bounds, §3)."""


class ImSignatureError(ImError, VerificationError):
    """The sender's SM2 signature over the envelope does not verify."""


class ImSenderError(ImError, VerificationError):
    """The envelope names a sender whose certified signing key is not the one that
    signed it (a forged sender), or the sender is not entitled to the claimed action."""


class ImDecryptError(ImError, DecryptionError):
    """The session key does not unwrap under the group key of the claimed version, or
    the body fails its tag (tampered ciphertext, wrong group key)."""


class ImContentError(ImError, DecodeError):
    """The decrypted payload is not a valid content of its type (§5)."""


class ImKeyVersionError(ImError, PolicyError):
    """The envelope uses a group key version the reader refuses (older than the version
    it knows is current, or one it cannot obtain)."""


class ImReplayError(ImError, PolicyError):
    """A message already seen, or one older than the sender device's last sequence
    number (a replay or a reorder by the server)."""
