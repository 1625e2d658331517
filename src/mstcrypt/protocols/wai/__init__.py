"""WAI/WPI (GB 15629.11-2003/XG1-2006): WAPI certificate authentication through an ASU,
unicast and multicast key negotiation, and WPI data protection, as sans-IO machines.

* :mod:`.messages`: strict encoders/decoders of every WAI packet (header, 12 subtypes,
  fragmentation and reassembly) and the WAPI information element;
* :mod:`.suites`: the standard suite (ECDSA/ECDH on the WAPI 192-bit curve, SHA-256,
  KD-HMAC-SHA256) and our SM suite (SM2/SM3), with the BK/USK/MSK key hierarchy;
* :mod:`.wpi`: SM4-OFB encryption and SM4-CBC-MAC MIC of data frames, PN and replay.
"""

from mstcrypt.protocols.wai.constants import (
    ETHERTYPE_WAI,
    AccessResult,
    Flag,
    Subtype,
    VerifyResult,
)
from mstcrypt.protocols.wai.errors import (
    WaiDecodeError,
    WaiError,
    WaiReplayError,
    WaiStateError,
    WaiVerifyError,
    WpiDecodeError,
    WpiError,
    WpiMicError,
    WpiReplayError,
)
from mstcrypt.protocols.wai.suites import SM, STANDARD, Suite

__all__ = [
    "ETHERTYPE_WAI",
    "SM",
    "STANDARD",
    "AccessResult",
    "Flag",
    "Subtype",
    "Suite",
    "VerifyResult",
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
