"""Numbers of WAI (GB 15629.11-2003/XG1-2006 §8.1.4): header, subtypes, flags, attribute
types, identifiers and result codes, plus the WAPI information element."""

from __future__ import annotations

import enum

__all__ = [
    "ETHERTYPE_WAI",
    "HEADER_SIZE",
    "MIC_SIZE",
    "NONCE_SIZE",
    "WAI_TYPE",
    "WAI_VERSION",
    "AccessResult",
    "AttrType",
    "Flag",
    "Subtype",
    "VerifyResult",
]

#: EtherType of WAI frames (IEEE registry: 0x88B4, "WAI").
ETHERTYPE_WAI = 0x88B4
WAI_VERSION = 1
#: Header "type": 1 = WAI protocol package.
WAI_TYPE = 1
#: version(2) type(1) subtype(1) reserved(2) length(2) seq(2) frag-seq(1) flag(1).
HEADER_SIZE = 12
#: Challenges (N_AE, N_ASUE), authentication identifier: 32 bytes.
NONCE_SIZE = 32
#: Message authentication code of the key-negotiation messages: HMAC truncated to 20 bytes.
MIC_SIZE = 20
BKID_SIZE = 16
ADDID_SIZE = 12
#: Data packet number and key announcement identifier: 16 bytes.
PN_SIZE = 16
#: Largest WAI packet (the header's 16-bit length field).
MAX_PACKET = 0xFFFF
#: Header flag bit 0: more fragments follow.
MORE_FRAGMENTS = 0x01


class Subtype(enum.IntEnum):
    PRE_AUTH_START = 1
    STAKEY_REQUEST = 2
    AUTH_ACTIVATION = 3
    ACCESS_AUTH_REQUEST = 4
    ACCESS_AUTH_RESPONSE = 5
    CERT_AUTH_REQUEST = 6
    CERT_AUTH_RESPONSE = 7
    UNICAST_KEY_REQUEST = 8
    UNICAST_KEY_RESPONSE = 9
    UNICAST_KEY_CONFIRM = 10
    MULTICAST_ANNOUNCE = 11
    MULTICAST_ANNOUNCE_RESPONSE = 12


class Flag(enum.IntFlag):
    """The FLAG octet at the start of most WAI messages."""

    BK_REKEYING = 0x01
    PRE_AUTHENTICATION = 0x02
    CERT_AUTH_REQUIRED = 0x04
    OPTIONAL_FIELD = 0x08
    USK_REKEYING = 0x10
    STAKEY_NEGOTIATION = 0x20
    STAKEY_REVOKE = 0x40
    RESERVED = 0x80


class AttrType(enum.IntEnum):
    SIGNATURE = 1
    CERT_VERIFY_RESULT = 2
    IDENTITY_LIST = 3


class VerifyResult(enum.IntEnum):
    """Certificate verification result in the ASU's multiple-certificate result."""

    VALID = 0
    ISSUER_UNKNOWN = 1
    ROOT_UNTRUSTED = 2
    TIME_INVALID = 3
    SIGNATURE_INVALID = 4
    REVOKED = 5
    BAD_USAGE = 6
    REVOCATION_UNKNOWN = 7
    UNKNOWN_ERROR = 8


class AccessResult(enum.IntEnum):
    SUCCESS = 0
    UNIDENTIFIED_CERTIFICATE = 1
    CERTIFICATE_ERROR = 2
    PROHIBITED_BY_AE = 3


#: Certificate identifier: X.509 v3 (1) or GBW (2).
CERT_X509 = 1
CERT_GBW = 2
#: Identity identifier: an X.509 identity (subject ‖ issuer ‖ serial number, DER).
IDENTITY_X509 = 1
#: ECDH parameter identifier: 1 = OID, 2 = explicit parameters.
ECDH_PARAM_OID = 1
