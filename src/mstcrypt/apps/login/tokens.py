"""Compact SM2-signed session tokens.

    MST1.<base64url(claims JSON)>.<base64url(DER SM2Signature)>

The signature (SM2 with the default ID) covers the ASCII bytes ``MST1.<claims>``.
Claims: ``iss`` (login server name), ``aud`` (list of audiences), ``sub`` (certificate
subject), ``serial`` (certificate serial, hex), ``owner`` (KMC owner when known),
``iat``, ``exp`` (Unix seconds), ``jti`` (unique id, for logout), ``amr`` (methods used:
"cert", "pin", optionally "pwd"). Any of our services can verify a token with the login
server's public key; revocation (logout) is checked against the shared database.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import DecodeError, VerificationError

PREFIX = b"MST1."
MAX_TOKEN = 4096


class TokenError(VerificationError):
    """A session token is malformed, forged, expired, for another audience or revoked."""


def _b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64d(s: str) -> bytes:
    """Strict unpadded base64url: only the alphabet (no padding, whitespace or other
    characters, which the standard decoder skips), no impossible length, and no stray
    bits in the last character — exactly one text per byte string, the one we issue."""
    if not _B64URL.fullmatch(s) or len(s) % 4 == 1:
        raise TokenError("session token is not base64url")
    try:
        raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except (ValueError, binascii.Error):
        raise TokenError("session token is not base64url") from None
    if _b64e(raw) != s:
        raise TokenError("session token is not canonical base64url (stray bits)")
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise TokenError("session token claims repeat a name")
    return out


def _no_constants(name: str) -> Any:
    raise TokenError(f"session token claims contain {name}")


def issue(claims: dict[str, Any], signer: Callable[[bytes], bytes]) -> str:
    payload = _b64e(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode())
    signed = PREFIX + payload.encode()
    return signed.decode() + "." + _b64e(signer(signed))


def verify(
    token: str, public_key: SM2PublicKey, *, audience: str | None, now: int, leeway: int = 30
) -> dict[str, Any]:
    """Check format, signature, expiry and audience; returns the claims."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN or not token.startswith("MST1."):
        raise TokenError("not an mstcrypt session token")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("session token must have three parts")
    signed = (parts[0] + "." + parts[1]).encode()
    payload, signature = _b64d(parts[1]), _b64d(parts[2])
    try:
        public_key.verify(signature, signed)
    except (VerificationError, DecodeError):
        raise TokenError("session token signature is not valid") from None
    try:
        claims = json.loads(payload, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise TokenError("session token claims are not JSON") from None
    if not isinstance(claims, dict):
        raise TokenError("session token claims are not an object")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (exp, iat)):
        raise TokenError("session token lacks exp/iat")
    if now > exp + leeway:
        raise TokenError("session token has expired")
    if iat > now + leeway:
        raise TokenError("session token is not valid yet")
    aud = claims.get("aud")
    if audience is not None and (not isinstance(aud, list) or audience not in aud):
        raise TokenError("session token is for another audience")
    if not isinstance(claims.get("jti"), str):
        raise TokenError("session token lacks an id")
    return claims
