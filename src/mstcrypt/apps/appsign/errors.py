"""Typed errors of app signing, each with a stable ``code`` (docs/app-signing.md §6).

:class:`PackageFormatError` (a DecodeError) reports a package whose ZIP end records or
APK Signing Block cannot be parsed strictly; :class:`LayerFormatError` one of our own
signature layers that is malformed; :class:`AppVerificationError` (a VerificationError) a
well-formed package that fails a check (tampered content, wrong signer, policy).
"""

from __future__ import annotations

from mstcrypt.errors import DecodeError, MstCryptError, PolicyError, VerificationError

__all__ = [
    "FORMAT_CODES",
    "VERIFY_CODES",
    "AppPolicyError",
    "AppSignError",
    "AppVerificationError",
    "LayerFormatError",
    "NotSignedError",
    "PackageFormatError",
]

#: codes of PackageFormatError / LayerFormatError / NotSignedError
FORMAT_CODES = frozenset(
    {
        "not-a-zip",
        "zip64-unsupported",
        "multi-disk-unsupported",
        "bad-eocd",
        "bad-central-directory",
        "no-signing-block",
        "no-apk-signature",
        "bad-signing-block",
        "bad-pair",
        "duplicate-pair",
        "pair-too-large",
        "bad-layer",
        "bad-manifest",
    }
)

#: codes of AppVerificationError / AppPolicyError
VERIFY_CODES = frozenset(
    {
        "developer-missing",
        "channel-missing",
        "digest-mismatch",
        "apk-signature-mismatch",
        "developer-signature",
        "developer-certificate",
        "developer-not-allowed",
        "channel-signature",
        "channel-not-designated",
        "channel-covers-other-developer",
        "package-mismatch",
        "downgrade",
        "not-installed",
    }
)


class AppSignError(MstCryptError):
    """Base of every app-signing error; ``code`` is a stable identifier."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class PackageFormatError(AppSignError, DecodeError):
    """The ZIP end records or the APK Signing Block are malformed or hostile."""


class NotSignedError(PackageFormatError):
    """The package has no APK Signing Block or no v2/v3 signature (a plain zip, or a
    v1-only APK): sign it with apksigner first."""


class LayerFormatError(PackageFormatError):
    """One of our own ID-value pairs (developer or channel layer) is malformed."""


class AppVerificationError(AppSignError, VerificationError):
    """A well-formed package fails a check; ``code`` in :data:`VERIFY_CODES`."""


class AppPolicyError(AppSignError, PolicyError):
    """The terminal's policy refuses the package (not designated, downgrade...)."""
