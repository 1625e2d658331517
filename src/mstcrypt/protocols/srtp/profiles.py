"""SRTP protection profiles: three standard ones (RFC 3711/5764, RFC 7714) and three
private SM profiles.

No IETF/IANA SM4 or ZUC SRTP profile exists. The private profiles below carry ids in the
``0xFFxx`` block, far from the IANA DTLS-SRTP registry (assigned up to 0x0010), and
deliberately *not* the 0x0009/0x000A some GmSSL/OpenSSL patches use for SM4: those
collide with RFC 8723's DOUBLE_AEAD profiles. They are for use between mstcrypt
endpoints that agreed on them in their own signalling; never offer them in a DTLS
``use_srtp`` extension on an open network. ``docs/voice.md`` specifies each one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from mstcrypt.errors import UnsupportedError

__all__ = ["PROFILES", "Cipher", "Mac", "Profile", "profile"]


class Cipher(enum.StrEnum):
    AES_CM = "aes-cm"  # AES-128 counter mode (RFC 3711 §4.1.1)
    SM4_CM = "sm4-cm"  # the same construction with SM4
    AES_GCM = "aes-gcm"  # RFC 7714
    SM4_GCM = "sm4-gcm"  # RFC 7714 with SM4
    ZUC_EEA3 = "zuc-eea3"  # 128-EEA3, per-SSRC session keys (docs/voice.md)


class Mac(enum.StrEnum):
    HMAC_SHA1 = "hmac-sha1"
    HMAC_SM3 = "hmac-sm3"
    EIA3 = "zuc-eia3"
    AEAD = "aead"  # the cipher's own tag


@dataclass(frozen=True)
class Profile:
    """One protection profile; all lengths in bytes."""

    name: str
    id: int
    private: bool
    cipher: Cipher
    mac: Mac
    key_len: int  # master key = session encryption key length
    salt_len: int  # master salt length
    auth_key_len: int  # session authentication key length (0 for AEAD)
    session_salt_len: int  # session salt length (0 when the cipher uses none)
    srtp_tag_len: int
    srtcp_tag_len: int

    @property
    def master_len(self) -> int:
        """Bytes of keying material one direction needs (master key ‖ master salt)."""
        return self.key_len + self.salt_len

    @property
    def aead(self) -> bool:
        return self.mac is Mac.AEAD

    def __repr__(self) -> str:
        return f"<srtp.Profile {self.name} 0x{self.id:04X}>"


AES_CM_128_HMAC_SHA1_80: Final = Profile(
    "AES_CM_128_HMAC_SHA1_80", 0x0001, False, Cipher.AES_CM, Mac.HMAC_SHA1, 16, 14, 20, 14, 10, 10
)
AES_CM_128_HMAC_SHA1_32: Final = Profile(
    "AES_CM_128_HMAC_SHA1_32", 0x0002, False, Cipher.AES_CM, Mac.HMAC_SHA1, 16, 14, 20, 14, 4, 10
)
AEAD_AES_128_GCM: Final = Profile(
    "AEAD_AES_128_GCM", 0x0007, False, Cipher.AES_GCM, Mac.AEAD, 16, 12, 0, 12, 16, 16
)
#: private: SM4 counter mode + HMAC-SM3 (256-bit session auth key), 80-bit tags
SM4_CM_128_HMAC_SM3_80: Final = Profile(
    "MST_SM4_CM_128_HMAC_SM3_80", 0xFF01, True, Cipher.SM4_CM, Mac.HMAC_SM3, 16, 14, 32, 14, 10, 10
)
#: private: RFC 7714 with SM4 in place of AES
AEAD_SM4_128_GCM: Final = Profile(
    "MST_AEAD_SM4_128_GCM", 0xFF02, True, Cipher.SM4_GCM, Mac.AEAD, 16, 12, 0, 12, 16, 16
)
#: private: 128-EEA3 + 128-EIA3 (32-bit MAC, the only length EIA3 defines)
ZUC_128_EEA3_EIA3_32: Final = Profile(
    "MST_ZUC_128_EEA3_EIA3_32", 0xFF03, True, Cipher.ZUC_EEA3, Mac.EIA3, 16, 14, 16, 0, 4, 4
)

PROFILES: Final[dict[str, Profile]] = {
    p.name: p
    for p in (
        AES_CM_128_HMAC_SHA1_80,
        AES_CM_128_HMAC_SHA1_32,
        AEAD_AES_128_GCM,
        SM4_CM_128_HMAC_SM3_80,
        AEAD_SM4_128_GCM,
        ZUC_128_EEA3_EIA3_32,
    )
}
_BY_ID: Final[dict[int, Profile]] = {p.id: p for p in PROFILES.values()}
#: ids that must never name an SM profile (RFC 8723 DOUBLE_AEAD; reused by SM4 patches)
COLLIDING_IDS: Final = frozenset({0x0009, 0x000A})


def profile(value: str | int | Profile) -> Profile:
    """Look a profile up by name (case-insensitive; the ``MST_`` prefix of private names
    is optional) or id; UnsupportedError otherwise."""
    if isinstance(value, Profile):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        p = _BY_ID.get(value)
        if p is None:
            raise UnsupportedError(f"unknown SRTP protection profile id 0x{value:04X}")
        return p
    if isinstance(value, str):
        key = value.strip().upper()
        p = PROFILES.get(key) or PROFILES.get("MST_" + key)
        if p is None:
            raise UnsupportedError(
                f"unknown SRTP protection profile {value!r}; known: {', '.join(PROFILES)}"
            )
        return p
    raise UnsupportedError(f"an SRTP profile is a name or an id, not {type(value).__name__}")
