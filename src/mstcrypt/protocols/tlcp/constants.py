"""Numbers of TLCP 1.1 (GB/T 38636-2020, formerly GM/T 0024-2014): protocol version,
content types, handshake types, alerts and cipher suites."""

from __future__ import annotations

import enum

__all__ = [
    "DEFAULT_CIPHER_SUITES",
    "MAX_CIPHERTEXT",
    "MAX_PLAINTEXT",
    "TLCP_VERSION",
    "AlertDescription",
    "AlertLevel",
    "CertificateVerifyForm",
    "CipherSuite",
    "ClientAuth",
    "ContentType",
    "ECDHEParamsEncoding",
    "HandshakeType",
]

#: ProtocolVersion {1, 1} in the record layer and in both hellos.
TLCP_VERSION = 0x0101
#: TLSPlaintext.length limit (2^14).
MAX_PLAINTEXT = 1 << 14
#: TLSCiphertext.length limit (2^14 + 2048).
MAX_CIPHERTEXT = MAX_PLAINTEXT + 2048
#: The named curve SM2 (curveSM2 = 41) in ServerECDHParams / ClientECDHEParams.
CURVE_SM2 = 41
#: ECCurveType named_curve.
NAMED_CURVE = 3
#: ClientCertificateType ecdsa_sign, used for SM2 certificates.
CERT_TYPE_ECDSA_SIGN = 64
#: Extensions the 2023 revision lists (GM/T 0024-2023 §6.4.5.2.3).
EXT_SERVER_NAME = 0


class ContentType(enum.IntEnum):
    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


class HandshakeType(enum.IntEnum):
    HELLO_REQUEST = 0
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    CERTIFICATE = 11
    SERVER_KEY_EXCHANGE = 12
    CERTIFICATE_REQUEST = 13
    SERVER_HELLO_DONE = 14
    CERTIFICATE_VERIFY = 15
    CLIENT_KEY_EXCHANGE = 16
    FINISHED = 20


class AlertLevel(enum.IntEnum):
    WARNING = 1
    FATAL = 2


class AlertDescription(enum.IntEnum):
    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    DECRYPTION_FAILED = 21
    RECORD_OVERFLOW = 22
    DECOMPRESSION_FAILURE = 30
    HANDSHAKE_FAILURE = 40
    BAD_CERTIFICATE = 42
    UNSUPPORTED_CERTIFICATE = 43
    CERTIFICATE_REVOKED = 44
    CERTIFICATE_EXPIRED = 45
    CERTIFICATE_UNKNOWN = 46
    ILLEGAL_PARAMETER = 47
    UNKNOWN_CA = 48
    ACCESS_DENIED = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    PROTOCOL_VERSION = 70
    INSUFFICIENT_SECURITY = 71
    INTERNAL_ERROR = 80
    USER_CANCELED = 90
    NO_RENEGOTIATION = 100
    UNSUPPORTED_EXTENSION = 110
    UNRECOGNIZED_NAME = 112
    # TLCP additions (GB/T 38636 §6.4.4.2)
    UNSUPPORTED_SITE2SITE = 200
    NO_AREA = 201
    UNSUPPORTED_AREATYPE = 202
    BAD_IBCPARAM = 203
    UNSUPPORTED_IBCPARAM = 204
    IDENTITY_NEED = 205


class CipherSuite(enum.IntEnum):
    """The four SM2 cipher suites (the SM9 and RSA suites are not implemented)."""

    ECDHE_SM4_CBC_SM3 = 0xE011
    ECDHE_SM4_GCM_SM3 = 0xE051
    ECC_SM4_CBC_SM3 = 0xE013
    ECC_SM4_GCM_SM3 = 0xE053

    @property
    def is_ecdhe(self) -> bool:
        """SM2 key exchange (needs client dual certificates), else SM2 encryption."""
        return self in (CipherSuite.ECDHE_SM4_CBC_SM3, CipherSuite.ECDHE_SM4_GCM_SM3)

    @property
    def is_gcm(self) -> bool:
        return self in (CipherSuite.ECDHE_SM4_GCM_SM3, CipherSuite.ECC_SM4_GCM_SM3)


#: Preference order used when a context does not say: GCM before CBC, ECDHE (forward
#: secrecy) before ECC. A client offers ECDHE only when it has credentials.
DEFAULT_CIPHER_SUITES: tuple[CipherSuite, ...] = (
    CipherSuite.ECDHE_SM4_GCM_SM3,
    CipherSuite.ECC_SM4_GCM_SM3,
    CipherSuite.ECDHE_SM4_CBC_SM3,
    CipherSuite.ECC_SM4_CBC_SM3,
)


class ClientAuth(enum.StrEnum):
    """Whether a server asks for client certificates. ECDHE suites always ask and
    always require them (the client's encryption key takes part in the exchange)."""

    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


class ECDHEParamsEncoding(enum.StrEnum):
    """How a client frames ClientECDHEParams in ClientKeyExchange.

    ``VECTOR`` (default): ``opaque ClientECDHEParams<1..2^16-1>`` — a 2-byte length then
    the 69-byte structure (71 bytes). This is how the standard declares the field (as
    quoted in GmSSL's tlcp.c and gotlcp's key_agreement.go), and what GmSSL sends and
    requires. ``STRUCT``: the bare 69-byte structure, as Tongsuo
    (and gotlcp by default) send and require. A server accepts both.
    """

    VECTOR = "vector"
    STRUCT = "struct"


class CertificateVerifyForm(enum.StrEnum):
    """What the CertificateVerify SM2 signature (with Z, default ID) covers.

    ``SM3`` (default): SM3(handshake_messages), the standard's form, used by Tongsuo,
    gotlcp and GmSSL 3.1. ``TRANSCRIPT``: the handshake messages themselves, as GmSSL
    3.2 and later sign and verify.
    """

    SM3 = "sm3"
    TRANSCRIPT = "transcript"
