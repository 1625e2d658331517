"""WAI errors: each carries the reason the state machine refused a packet."""

from __future__ import annotations

from mstcrypt.errors import DecodeError, MstCryptError, VerificationError

__all__ = [
    "WaiDecodeError",
    "WaiError",
    "WaiReplayError",
    "WaiStateError",
    "WaiVerifyError",
    "WpiDecodeError",
    "WpiError",
    "WpiMicError",
    "WpiReplayError",
]


class WaiError(MstCryptError):
    """A WAI packet was refused. Messages never contain key material."""


class WaiDecodeError(WaiError, DecodeError):
    """Malformed WAI packet or field: truncated, oversized, trailing bytes, bad value."""


class WaiVerifyError(WaiError, VerificationError):
    """A signature, MIC or certificate check failed, or echoed values do not match."""


class WaiReplayError(WaiError):
    """A packet was replayed or reordered (sequence number, counter, announcement ID)."""


class WaiStateError(WaiError):
    """A packet arrived that the state machine does not expect now."""


class WpiError(MstCryptError):
    """A WPI data frame was refused (malformed, wrong MIC, PN replay)."""


class WpiDecodeError(WpiError, DecodeError):
    pass


class WpiReplayError(WpiError):
    pass


class WpiMicError(WpiError, VerificationError):
    pass
