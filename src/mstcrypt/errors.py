"""The single exception hierarchy of mstcrypt.

Every failure caused by input (bytes, files, keys, PINs, policies) is reported with a
subclass of :class:`MstCryptError`. Messages never contain secrets: no key material,
no PIN, no plaintext.
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "AuthenticationError",
    "BackendError",
    "DecodeError",
    "DecryptionError",
    "InvalidKeyError",
    "KeyStoreError",
    "MstCryptError",
    "PinIncorrectError",
    "PinLockedError",
    "PolicyError",
    "RateLimitError",
    "SignatureFormatError",
    "UnsupportedError",
    "VerificationError",
]


class MstCryptError(Exception):
    """Base class of every error raised by mstcrypt on bad input or failed checks."""


class DecodeError(MstCryptError):
    """Bytes or text could not be parsed as the expected format (wrong length,
    malformed DER, trailing bytes, unknown OID, point not on the curve...)."""


class InvalidKeyError(DecodeError):
    """A key is malformed or out of range (scalar outside [1, n-2], point off curve)."""


class VerificationError(MstCryptError):
    """A signature, MAC or confirmation value did not verify."""


class SignatureFormatError(DecodeError, VerificationError):
    """A signature is not in the expected encoding (malformed or non-canonical DER,
    wrong raw length, r or s out of range). It is both a DecodeError and a
    VerificationError, so a caller checking validity catches it either way."""


class DecryptionError(MstCryptError):
    """Ciphertext could not be decrypted: authentication tag, C3 or padding failed."""


class KeyStoreError(MstCryptError):
    """A key store (soft token, server key store) is missing, corrupt or tampered."""


class PinIncorrectError(KeyStoreError):
    """The PIN (or administrator code) was wrong. ``retries_left`` tells how many
    attempts remain before the token locks."""

    def __init__(self, message: str, retries_left: int) -> None:
        super().__init__(message)
        self.retries_left = retries_left


class PinLockedError(KeyStoreError):
    """Too many wrong PINs: the token is locked until an administrator unlocks it."""


class PolicyError(MstCryptError):
    """An operation is refused by policy (wrong key usage, state, parameter limits)."""


class AuthenticationError(PolicyError):
    """The caller is not authenticated (no, malformed, expired or revoked credential)."""


class AccessDeniedError(PolicyError):
    """The caller is authenticated but their role does not allow this operation."""


class RateLimitError(PolicyError):
    """Too many requests or failures from one source; retry later."""


class UnsupportedError(MstCryptError):
    """A valid but unsupported algorithm, format or option was requested."""


class BackendError(MstCryptError):
    """The native backend (OpenSSL libcrypto) is missing a needed capability or failed
    unexpectedly. The message names the library and the missing function."""


# --- seal ---
__all__ += ["TwoPartyError", "TwoPartyProofError", "TwoPartyStateError", "TwoPartyVersionError"]


class TwoPartyError(MstCryptError):
    """The two-party (collaborative) SM2 protocol was aborted; the message says which
    check failed. The session is unusable afterwards."""


class TwoPartyProofError(TwoPartyError, VerificationError):
    """A peer's commitment, proof of knowledge, confirmation tag or final signature did
    not verify: the peer is faulty or malicious."""


class TwoPartyStateError(TwoPartyError, PolicyError):
    """A two-party message arrived out of order, twice, for another session or for
    another share version (a replay)."""


class TwoPartyVersionError(TwoPartyStateError):
    """The peer holds another version of the share (a refresh happened on one side
    only); the terminal settles it by retrying with its other share."""
