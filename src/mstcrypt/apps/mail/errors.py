"""Typed errors of encrypted mail (docs/mail.md, *Errors*)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mstcrypt.errors import DecodeError, MstCryptError, PolicyError, VerificationError

if TYPE_CHECKING:
    from mstcrypt.apps.mail.message import OpenedMail

__all__ = ["MailError", "MailFormatError", "MailVerificationError", "RecipientError"]


class MailError(MstCryptError):
    """Base class of the mail application's errors."""


class RecipientError(MailError, PolicyError):
    """A recipient cannot be written to: unknown to the directory, its certificate
    revoked, expired or not for this address. Raised before anything is sent."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"recipient {address}: {reason}")
        self.address = address
        self.reason = reason


class MailFormatError(MailError, DecodeError):
    """A message is not the S/MIME form this application writes (outer headers,
    base64, inner MIME structure): truncated, malformed or over a limit."""


class MailVerificationError(MailError, VerificationError):
    """Opening a message failed a check; ``report`` lists every check made."""

    def __init__(self, message: str, report: OpenedMail) -> None:
        super().__init__(message)
        self.report = report
