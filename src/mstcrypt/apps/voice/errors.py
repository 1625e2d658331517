"""Errors of the voice application, each under the project hierarchy. ``code`` names
the check for the signalling layer (docs/voice.md §4); messages carry no key material."""

from __future__ import annotations

from mstcrypt.errors import DecodeError, MstCryptError, PolicyError, VerificationError

__all__ = ["CallAuthError", "CallError", "CallFormatError", "CallPolicyError", "CallReplayError"]


class CallError(MstCryptError):
    """Base of every voice error; ``code`` is a stable machine-readable name."""

    code: str = "call_error"


class CallFormatError(CallError, DecodeError):
    """A signalling message is malformed (fields, types, lengths, unknown type)."""

    code = "malformed"


class CallAuthError(CallError, VerificationError):
    """The peer is not who the message claims: certificate invalid, revoked, of another
    user, or a key confirmation / transcript MAC failed (forged or altered signalling)."""

    code = "authentication"


class CallReplayError(CallError, VerificationError):
    """A signalling message was seen before or is too old."""

    code = "replay"


class CallPolicyError(CallError, PolicyError):
    """The call cannot proceed by policy: no common profile, SSRC collision, wrong state."""

    code = "policy"
