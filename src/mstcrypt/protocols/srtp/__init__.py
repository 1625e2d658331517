"""SRTP and SRTCP (RFC 3711, RFC 7714) as a sans-IO library, with private SM4 and ZUC
profiles for voice calls (guide T/ZSA 37-2020 §7.1; byte-level spec in docs/voice.md)::

    from mstcrypt.protocols import srtp

    tx = srtp.SrtpContext("MST_SM4_CM_128_HMAC_SM3_80", master_key, master_salt)
    rx = srtp.SrtpContext("MST_SM4_CM_128_HMAC_SM3_80", master_key, master_salt)
    wire = tx.protect(rtp_packet)
    assert rx.unprotect(wire) == rtp_packet        # a replay raises srtp.ReplayError

Profiles: ``AES_CM_128_HMAC_SHA1_80`` / ``_32`` and ``AEAD_AES_128_GCM`` (standard, tested
packet for packet against libsrtp), ``MST_SM4_CM_128_HMAC_SM3_80``,
``MST_AEAD_SM4_128_GCM`` and ``MST_ZUC_128_EEA3_EIA3_32`` (private, ids 0xFF01..0xFF03).
"""

from __future__ import annotations

from mstcrypt.protocols.srtp import kdf
from mstcrypt.protocols.srtp.context import (
    DEFAULT_MAX_PACKET,
    DEFAULT_WINDOW,
    ReplayWindow,
    SrtpContext,
    SrtpStats,
    guess_index,
    rtp_header_length,
)
from mstcrypt.protocols.srtp.errors import (
    KeyLimitError,
    ReplayError,
    SrtpAuthError,
    SrtpError,
    SrtpFormatError,
    SsrcCollisionError,
    StreamLimitError,
)
from mstcrypt.protocols.srtp.profiles import (
    AEAD_AES_128_GCM,
    AEAD_SM4_128_GCM,
    AES_CM_128_HMAC_SHA1_32,
    AES_CM_128_HMAC_SHA1_80,
    COLLIDING_IDS,
    PROFILES,
    SM4_CM_128_HMAC_SM3_80,
    ZUC_128_EEA3_EIA3_32,
    Profile,
    profile,
)

__all__ = [
    "AEAD_AES_128_GCM",
    "AEAD_SM4_128_GCM",
    "AES_CM_128_HMAC_SHA1_32",
    "AES_CM_128_HMAC_SHA1_80",
    "COLLIDING_IDS",
    "DEFAULT_MAX_PACKET",
    "DEFAULT_WINDOW",
    "PROFILES",
    "SM4_CM_128_HMAC_SM3_80",
    "ZUC_128_EEA3_EIA3_32",
    "KeyLimitError",
    "Profile",
    "ReplayError",
    "ReplayWindow",
    "SrtpAuthError",
    "SrtpContext",
    "SrtpError",
    "SrtpFormatError",
    "SrtpStats",
    "SsrcCollisionError",
    "StreamLimitError",
    "guess_index",
    "kdf",
    "profile",
    "rtp_header_length",
]
