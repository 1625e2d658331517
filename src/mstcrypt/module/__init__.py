"""The cryptographic module: one interface (:class:`CryptoModule`) for the terminal's
MST-CC (:class:`SoftToken`, PIN-protected file keystore) and the server's SS-CC
(:class:`ServerModule`, keys wrapped under a server master key).

Private keys never leave a module in plaintext: callers hold :class:`KeyHandle` objects
and ask the module to sign, decrypt, run a key exchange (:class:`KeyExchange`, which
holds public values only) or unwrap an SM2EnvelopedKey.
"""

from mstcrypt.module.base import (
    CryptoModule,
    KeyExchange,
    KeyHandle,
    KeyOrigin,
    KeyProvenance,
    KeyUsage,
    SessionKeyHandle,
)
from mstcrypt.module.server import ServerModule
from mstcrypt.module.softtoken import SealedKeySet, SoftToken, TokenInfo

__all__ = [
    "CryptoModule",
    "KeyExchange",
    "KeyHandle",
    "KeyOrigin",
    "KeyProvenance",
    "KeyUsage",
    "SealedKeySet",
    "ServerModule",
    "SessionKeyHandle",
    "SoftToken",
    "TokenInfo",
]
