"""Typed errors of the SRTP layer; each subclasses the project hierarchy so callers may
catch either. Messages name the check that failed, never key material or plaintext."""

from __future__ import annotations

from mstcrypt.errors import DecodeError, MstCryptError, PolicyError, VerificationError

__all__ = [
    "KeyLimitError",
    "ReplayError",
    "SrtpAuthError",
    "SrtpError",
    "SrtpFormatError",
    "SsrcCollisionError",
    "StreamLimitError",
]


class SrtpError(MstCryptError):
    """Base of every SRTP-layer error (``except SrtpError`` catches them all)."""


class SrtpFormatError(SrtpError, DecodeError):
    """The packet is not a well-formed RTP/RTCP/SRTP/SRTCP packet (too short, wrong
    version, header longer than the packet, oversized, bad RTCP lengths)."""


class SrtpAuthError(SrtpError, VerificationError):
    """The authentication tag (HMAC, EIA3 MAC or GCM tag) did not verify."""


class ReplayError(SrtpError, VerificationError):
    """The packet index was already received, or is older than the replay window."""


class SsrcCollisionError(SrtpError, PolicyError):
    """An SSRC is used in both directions under one master key (RFC 3711 §9.1: the
    keystream would repeat), or the two parties of a call picked the same SSRC."""


class KeyLimitError(SrtpError, PolicyError):
    """The master key's packet budget is spent (2^48 SRTP / 2^31 SRTCP indices, or the
    sender would reuse an index): re-key before sending more."""


class StreamLimitError(SrtpError, PolicyError):
    """More SSRCs than the context tracks (``max_streams``)."""
