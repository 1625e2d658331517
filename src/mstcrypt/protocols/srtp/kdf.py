"""SRTP key derivation (RFC 3711 §4.3) for every profile.

``x = key_id ⊕ master_salt`` over 112 bits, where ``key_id`` puts the label in byte 7 and
``r = index DIV kdr`` in bytes 8..13 (48 bits); the session key is the first ``n`` bytes
of the PRF keystream started at ``x · 2^16``:

* AES_CM and AEAD_AES_128_GCM: the AES-CM PRF (RFC 3711 §4.3.3); a 96-bit GCM master salt is
  padded on the right with two zero bytes (RFC 7714 §11, as libsrtp does);
* the SM4 profiles: the same construction with SM4 (SM4-CM PRF);
* the ZUC profile: the ZUC-128 keystream with the master key as key and ``x ‖ 0x0000``
  as IV. Its session keys are per stream: bytes 0..3 of ``key_id`` carry the SSRC and
  bytes 4..5 the high 16 bits of the rollover counter (docs/voice.md §2.3), because
  128-EEA3/EIA3's IV holds only a 32-bit COUNT.
"""

from __future__ import annotations

from typing import Final

from mstcrypt.crypto import aes, sm4
from mstcrypt.crypto.zuc import ZUC128
from mstcrypt.errors import DecodeError, PolicyError
from mstcrypt.protocols.srtp.profiles import Cipher, Profile

__all__ = [
    "LABEL_RTCP_AUTH",
    "LABEL_RTCP_ENCRYPTION",
    "LABEL_RTCP_SALT",
    "LABEL_RTP_AUTH",
    "LABEL_RTP_ENCRYPTION",
    "LABEL_RTP_SALT",
    "derive",
    "prf",
]

LABEL_RTP_ENCRYPTION: Final = 0x00
LABEL_RTP_AUTH: Final = 0x01
LABEL_RTP_SALT: Final = 0x02
LABEL_RTCP_ENCRYPTION: Final = 0x03
LABEL_RTCP_AUTH: Final = 0x04
LABEL_RTCP_SALT: Final = 0x05

_ZEROS = bytes(1024)


def prf(cipher: Cipher, master_key: bytes, x: bytes, n: int) -> bytes:
    """The profile's PRF: ``n`` keystream bytes keyed by ``master_key`` from ``x · 2^16``
    (``x`` is 14 bytes)."""
    if len(x) != 14:
        raise DecodeError("SRTP KDF input x must be 14 bytes")
    if not 0 <= n <= len(_ZEROS):
        raise PolicyError("SRTP KDF output length out of range")
    iv = x + b"\x00\x00"
    if cipher in (Cipher.AES_CM, Cipher.AES_GCM):
        return aes.ctr(master_key, iv, _ZEROS[:n])
    if cipher in (Cipher.SM4_CM, Cipher.SM4_GCM):
        return sm4.ctr(master_key, iv, _ZEROS[:n])
    if cipher is Cipher.ZUC_EEA3:
        return ZUC128(master_key, iv).keystream(n)
    raise PolicyError(f"no KDF for cipher {cipher}")  # pragma: no cover - enum is closed


def derive(
    profile: Profile,
    master_key: bytes,
    master_salt: bytes,
    label: int,
    n: int,
    *,
    index: int = 0,
    kdr: int = 0,
    ssrc: int | None = None,
    roc_high: int = 0,
) -> bytes:
    """One session key (``n`` bytes) for ``label`` (RFC 3711 §4.3.1).

    ``kdr`` is the key derivation rate (0, or a power of two up to 2^24); ``ssrc`` and
    ``roc_high`` enter ``key_id`` for the ZUC profile only (they must be None/0 otherwise).
    """
    if not isinstance(master_key, bytes) or len(master_key) != profile.key_len:
        raise DecodeError(f"{profile.name} master key must be {profile.key_len} bytes")
    if not isinstance(master_salt, bytes) or len(master_salt) != profile.salt_len:
        raise DecodeError(f"{profile.name} master salt must be {profile.salt_len} bytes")
    if not 0 <= label <= 0xFF:
        raise PolicyError("SRTP KDF label must be one byte")
    if kdr and (kdr & (kdr - 1) or kdr > 1 << 24):
        raise PolicyError("key derivation rate must be 0 or a power of two up to 2^24")
    if not 0 <= index < 1 << 48:
        raise PolicyError("SRTP index must be below 2^48")
    r = index // kdr if kdr else 0
    prefix = 0
    if profile.cipher is Cipher.ZUC_EEA3:
        if ssrc is None or not 0 <= ssrc <= 0xFFFFFFFF or not 0 <= roc_high <= 0xFFFF:
            raise PolicyError("the ZUC profile derives per-stream keys: give ssrc and roc_high")
        prefix = (ssrc << 16) | roc_high
    elif ssrc is not None or roc_high:
        raise PolicyError(f"{profile.name} session keys do not depend on the SSRC")
    key_id = (prefix << 64) | (label << 48) | r
    salt = master_salt.ljust(14, b"\x00")
    x = (key_id ^ int.from_bytes(salt, "big")).to_bytes(14, "big")
    return prf(profile.cipher, master_key, x, n)
