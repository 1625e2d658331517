"""Typed errors of the seal application, subclasses of the mstcrypt hierarchy (so the
HTTP layer maps them to statuses without knowing them)."""

from __future__ import annotations

from mstcrypt.errors import AccessDeniedError, PolicyError, VerificationError
from mstcrypt.kmc.context import NotFoundError

__all__ = [
    "SealDisabledError",
    "SealNotFoundError",
    "SealVerificationError",
    "StamperNotAuthorisedError",
]


class SealNotFoundError(NotFoundError):
    """No such seal or seal key (or not one of the caller's)."""


class SealDisabledError(PolicyError):
    """The seal is revoked or outside its validity, or the server's share of the seal
    key is disabled (a lost phone): nothing is co-signed with it."""


class StamperNotAuthorisedError(AccessDeniedError):
    """The caller is not an authorised stamper of this seal, or the request is not one
    the seal server co-signs (it is not a blind signing oracle)."""


class SealVerificationError(VerificationError):
    """A stamped document failed verification; ``code`` names the failed check
    (docs/seal.md lists them in order)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
