"""Typed errors of the encrypted file format, each with a stable ``code``.

The codes and the order of the checks are specified in ``docs/file-format.md`` §5; the
malformed-file corpus (``tests/filekit``) asserts class, code and message.
"""

from __future__ import annotations

from mstcrypt.errors import DecodeError, DecryptionError, MstCryptError, VerificationError

__all__ = [
    "FORMAT_CODES",
    "PAYLOAD_CODES",
    "FileError",
    "FileFormatError",
    "HeaderMacError",
    "NoMatchingRecipientError",
    "PayloadError",
    "StanzaUnwrapError",
]

FORMAT_CODES = frozenset(
    {
        "truncated-header",
        "bad-magic",
        "unsupported-version",
        "unsupported-suite",
        "bad-chunk-size",
        "bad-header-flags",
        "no-stanzas",
        "too-many-stanzas",
        "bad-stanza-kind",
        "bad-stanza-flags",
        "bad-stanza-length",
        "bad-wrapped-key",
        "duplicate-recipient",
        "duplicate-escrow",
    }
)

PAYLOAD_CODES = frozenset(
    {
        "missing-payload",
        "truncated-chunk",
        "empty-final-chunk",
        "chunk-auth-failed",
        "missing-final-chunk",
        "trailing-data",
        "chunk-counter-overflow",
    }
)


class FileError(MstCryptError):
    """Base of every error about an encrypted file; ``code`` is a stable identifier
    (``docs/file-format.md`` §5) and the message names the field or chunk."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class FileFormatError(FileError, DecodeError):
    """The file is not a well-formed, authentic file of this format."""


class HeaderMacError(FileFormatError, VerificationError):
    """The header MAC does not verify under the recovered file key."""


class StanzaUnwrapError(FileFormatError, DecryptionError):
    """The stanza naming this key could not be SM2-decrypted (tampered stanza)."""


class PayloadError(FileFormatError, DecryptionError):
    """A payload chunk is missing, truncated, out of place or fails its tag."""


class NoMatchingRecipientError(FileError, DecryptionError):
    """The file is well formed but has no stanza for any of the reader's keys."""
