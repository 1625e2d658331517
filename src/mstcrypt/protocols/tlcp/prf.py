"""The TLCP key schedule: the TLS 1.2 PRF with HMAC-SM3 (P_SM3), the master secret,
the key block and the Finished verify_data.

- master_secret = PRF(pre_master_secret, "master secret", client_random ‖ server_random)[0..47]
- key_block = PRF(master_secret, "key expansion", server_random ‖ client_random)
- verify_data = PRF(master_secret, "client finished" | "server finished",
  SM3(handshake_messages))[0..11]
"""

from __future__ import annotations

from mstcrypt.crypto.sm3 import HmacSM3
from mstcrypt.errors import PolicyError

__all__ = ["key_block", "master_secret", "prf", "verify_data"]

MASTER_SECRET_SIZE = 48
VERIFY_DATA_SIZE = 12


def prf(secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """P_SM3(secret, label ‖ seed) truncated to ``length`` bytes (RFC 5246 §5)."""
    if not isinstance(length, int) or not 0 < length <= 1 << 16:
        raise PolicyError("PRF output length must be 1..65536 bytes")
    base = HmacSM3(secret)
    ls = label + seed
    a = ls
    out = bytearray()
    while len(out) < length:
        a = base.copy().update(a).digest()
        out += base.copy().update(a + ls).digest()
    return bytes(out[:length])


def master_secret(pre_master_secret: bytes, client_random: bytes, server_random: bytes) -> bytes:
    return prf(pre_master_secret, b"master secret", client_random + server_random, 48)


def key_block(master: bytes, client_random: bytes, server_random: bytes, length: int) -> bytes:
    """Note the seed order: server_random first (as in TLS)."""
    return prf(master, b"key expansion", server_random + client_random, length)


def verify_data(master: bytes, label: bytes, handshake_hash: bytes) -> bytes:
    return prf(master, label, handshake_hash, VERIFY_DATA_SIZE)
