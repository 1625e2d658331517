"""SM2 key exchange (GB/T 32918.3 §6), initiator (A) and responder (B).

``ephemeral`` (optional) is this side's ephemeral scalar r, or an ephemeral
:class:`~mstcrypt.crypto.sm2.SM2PrivateKey` whose point R = rG is then reused rather
than recomputed (TLCP sends R before the exchange object exists).

Each side is a small state object::

    a = KeyExchangeInitiator(a_key, b_public, klen=16, confirm=True)
    b = KeyExchangeResponder(b_key, a_public, klen=16, confirm=True)
    r_b, s_b = b.respond(a.ephemeral)          # B -> A: R_B (and S_B)
    k_a, s_a = a.finish(r_b, s_b)              # A checks S_B, A -> B: S_A
    k_b = b.confirm(s_a)                       # B checks S_A (k_b also on b.key)

The shared key always puts the initiator's Z first: K = KDF(x ‖ y ‖ Z_A ‖ Z_B, klen).
Confirmations: S_B = SM3(0x02 ‖ y ‖ SM3(x ‖ Z_A ‖ Z_B ‖ x1 ‖ y1 ‖ x2 ‖ y2)) from the
responder, S_A the same with 0x03 from the initiator. Peer points are checked to be on
the curve and the shared point must not be the point at infinity.
"""

from __future__ import annotations

import enum
import hmac

from mstcrypt.crypto.curve import SIZE, N
from mstcrypt.crypto.hazmat.ec import Point, add_mul_public, mul_base
from mstcrypt.crypto.random import random_scalar
from mstcrypt.crypto.sm2 import DEFAULT_ID, SM2PrivateKey, SM2PublicKey
from mstcrypt.crypto.sm3 import kdf, sm3
from mstcrypt.errors import InvalidKeyError, PolicyError, VerificationError

__all__ = ["KeyExchangeInitiator", "KeyExchangeResponder", "Role"]

_W = 127
_MASK = (1 << _W) - 1


def _xbar(x: int) -> int:
    return (1 << _W) | (x & _MASK)


class Role(enum.StrEnum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class _Side:
    def __init__(
        self,
        own_key: SM2PrivateKey,
        peer_public: SM2PublicKey,
        *,
        own_id: bytes,
        peer_id: bytes,
        klen: int,
        confirm: bool,
        ephemeral: int | SM2PrivateKey | None,
        initiator: bool,
    ) -> None:
        if not isinstance(own_key, SM2PrivateKey) or not isinstance(peer_public, SM2PublicKey):
            raise PolicyError("key exchange needs an SM2PrivateKey and the peer's SM2PublicKey")
        if not isinstance(klen, int) or klen < 1 or klen > 1 << 16:
            raise PolicyError("klen must be between 1 and 65536 bytes")
        self._d = own_key.private_int()
        self._own_pub = own_key.public_key()
        self._peer_pub = peer_public
        za = (self._own_pub if initiator else peer_public).z(own_id if initiator else peer_id)
        zb = (peer_public if initiator else self._own_pub).z(peer_id if initiator else own_id)
        self._za, self._zb = za, zb
        self._klen = klen
        self._confirm = confirm
        if isinstance(ephemeral, SM2PrivateKey):
            # An ephemeral key pair whose point R = rG is already computed (and usually
            # already sent): no second fixed-base multiplication.
            self._r = ephemeral.private_int()
            self._R = ephemeral.public_key().point
        else:
            if ephemeral is None:
                ephemeral = random_scalar()
            elif not isinstance(ephemeral, int) or isinstance(ephemeral, bool):
                raise PolicyError("ephemeral must be an int scalar or an SM2PrivateKey")
            elif not 1 <= ephemeral < N:
                raise InvalidKeyError("ephemeral scalar outside [1, n-1]")
            self._r = ephemeral
            self._R = mul_base(ephemeral)
        self.key: bytes | None = None

    @property
    def ephemeral(self) -> bytes:
        """This side's ephemeral public point R (65 bytes, 04‖x‖y)."""
        return self._R.to_bytes()

    @property
    def z_initiator(self) -> bytes:
        return self._za

    @property
    def z_responder(self) -> bytes:
        return self._zb

    def _shared(self, peer_R: Point) -> Point:
        t = (self._d + _xbar(self._R.x) * self._r) % N
        if t == 0:
            raise InvalidKeyError("degenerate key exchange (t = 0)")
        xb = _xbar(peer_R.x)
        try:
            # P + x̄·R has only public inputs (variable-time wNAF is fine); the secret t
            # multiplies through libcrypto's constant-time ladder.
            s = add_mul_public(self._peer_pub.point, peer_R, xb)
            return s * t  # h = 1 for SM2
        except InvalidKeyError:
            raise InvalidKeyError("key exchange produced the point at infinity") from None

    def _derive(self, u: Point, r_a: Point, r_b: Point) -> tuple[bytes, bytes, bytes]:
        """K, S_B (0x02) and S_A (0x03); the confirmations are empty without
        confirmation (nothing would compare them)."""
        xu, yu = u.x.to_bytes(SIZE, "big"), u.y.to_bytes(SIZE, "big")
        key = kdf(xu + yu + self._za + self._zb, self._klen)
        if not self._confirm:
            return key, b"", b""
        inner = sm3(xu + self._za + self._zb + r_a.to_bytes()[1:] + r_b.to_bytes()[1:])
        s2 = sm3(b"\x02" + yu + inner)
        s3 = sm3(b"\x03" + yu + inner)
        return key, s2, s3


class KeyExchangeInitiator(_Side):
    """Side A. Send :attr:`ephemeral` (R_A), then call :meth:`finish` with B's reply."""

    def __init__(
        self,
        own_key: SM2PrivateKey,
        peer_public: SM2PublicKey,
        *,
        own_id: bytes = DEFAULT_ID,
        peer_id: bytes = DEFAULT_ID,
        klen: int = 16,
        confirm: bool = False,
        ephemeral: int | SM2PrivateKey | None = None,
    ) -> None:
        super().__init__(
            own_key,
            peer_public,
            own_id=own_id,
            peer_id=peer_id,
            klen=klen,
            confirm=confirm,
            ephemeral=ephemeral,
            initiator=True,
        )
        self._done = False

    def finish(
        self, peer_ephemeral: bytes, peer_confirm: bytes | None = None
    ) -> tuple[bytes, bytes | None]:
        """Process R_B (and S_B when confirmation is on). Returns (K, S_A); S_A is None
        without confirmation. Raises VerificationError if S_B does not match."""
        if self._done:
            raise PolicyError("key exchange already finished")
        r_b = Point.from_bytes(peer_ephemeral)
        u = self._shared(r_b)
        key, s2, s3 = self._derive(u, self._R, r_b)
        if self._confirm:
            if peer_confirm is None:
                raise VerificationError("responder confirmation S_B is missing")
            if not hmac.compare_digest(s2, bytes(peer_confirm)):
                raise VerificationError("responder confirmation S_B does not match")
        self._done = True
        self.key = key
        return key, (s3 if self._confirm else None)


class KeyExchangeResponder(_Side):
    """Side B. Call :meth:`respond` with R_A; send back R_B (and S_B); when confirmation
    is on, call :meth:`confirm` with S_A before using :attr:`key`."""

    def __init__(
        self,
        own_key: SM2PrivateKey,
        peer_public: SM2PublicKey,
        *,
        own_id: bytes = DEFAULT_ID,
        peer_id: bytes = DEFAULT_ID,
        klen: int = 16,
        confirm: bool = False,
        ephemeral: int | SM2PrivateKey | None = None,
    ) -> None:
        super().__init__(
            own_key,
            peer_public,
            own_id=own_id,
            peer_id=peer_id,
            klen=klen,
            confirm=confirm,
            ephemeral=ephemeral,
            initiator=False,
        )
        self._expect: bytes | None = None
        self._pending: bytes | None = None

    def respond(self, peer_ephemeral: bytes) -> tuple[bytes, bytes | None]:
        """Process R_A; returns (R_B, S_B). S_B is None without confirmation. Without
        confirmation the key is available at once on :attr:`key`."""
        if self._pending is not None or self.key is not None:
            raise PolicyError("respond() may be called only once")
        r_a = Point.from_bytes(peer_ephemeral)
        v = self._shared(r_a)
        key, s2, s3 = self._derive(v, r_a, self._R)
        if self._confirm:
            self._pending, self._expect = key, s3
            return self.ephemeral, s2
        self.key = key
        return self.ephemeral, None

    def confirm(self, peer_confirm: bytes) -> bytes:
        """Check S_A from the initiator; returns K."""
        if self._pending is None or self._expect is None:
            raise PolicyError("confirm() needs a prior respond() with confirm=True")
        if not hmac.compare_digest(self._expect, bytes(peer_confirm)):
            raise VerificationError("initiator confirmation S_A does not match")
        self.key, self._pending = self._pending, None
        return self.key
