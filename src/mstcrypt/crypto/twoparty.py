"""Two-party ("collaborative", 协同) SM2: key generation, signing, decryption and share
refresh between a terminal (client, share d1) and a server (share d2), sans-IO.

The private key d = (d1·d2)⁻¹ − 1 never exists anywhere; the joint public key is
P = d1⁻¹·P2 − G with P2 = d2⁻¹·G. The protocol, the checks it adds to the textbook scheme
and its security argument are in docs/two-party-sm2.md. Each protocol object is
single-use and returns the bytes to send next::

    c, s = ClientKeyGen(), ServerKeyGen()
    kg2 = s.receive_commitment(c.start())
    kg4, server_share = s.receive_opening(c.receive_server_share(kg2))
    client_share = c.finish(kg4)

    signer = ClientSigner(client_share, message)
    co = ServerSigner(server_share)
    signature = signer.finish(co.respond(signer.start()))   # verified DER SM2Signature

All point arithmetic goes through libcrypto (:mod:`mstcrypt.crypto.hazmat.ec`); every
nonce comes from the OS CSPRNG and no API accepts a caller-chosen nonce.
"""

from __future__ import annotations

import hmac
import secrets

from mstcrypt.crypto.curve import SIZE, N
from mstcrypt.crypto.hazmat.ec import Point, add_mul_public, generator, mul_base
from mstcrypt.crypto.random import random_scalar
from mstcrypt.crypto.sm2 import (
    DEFAULT_ID,
    SM2PublicKey,
    check_cipher_der,
    signature_from_raw,
    signature_to_raw,
)
from mstcrypt.crypto.sm3 import hmac_sm3, kdf, sm3
from mstcrypt.errors import (
    DecodeError,
    DecryptionError,
    InvalidKeyError,
    PolicyError,
    SignatureFormatError,
    TwoPartyProofError,
    TwoPartyStateError,
    TwoPartyVersionError,
    VerificationError,
)

__all__ = [
    "MAX_MESSAGE",
    "ClientDecryptor",
    "ClientKeyGen",
    "ClientRefresh",
    "ClientShare",
    "ClientSigner",
    "MessageType",
    "ServerDecryptor",
    "ServerKeyGen",
    "ServerRefresh",
    "ServerShare",
    "ServerSigner",
    "TwoPartyVersionError",
    "message_type",
    "read_confirmation",
    "session_id",
]

#: Largest message a signing request may carry (the seal's TBS_Sign with its picture).
MAX_MESSAGE = 16 * 1024 * 1024

_MAGIC = b"2P"
_VERSION = 1
_SID = 16
_HDR = 4 + _SID
_PT = 65
_DOMAIN = b"mstcrypt two-party SM2 v1 "


class MessageType:
    KG1 = 0x01  #: C → S: commitment to P1 and its proof
    KG2 = 0x02  #: S → C: P2 and its proof
    KG3 = 0x03  #: C → S: opening (P1, proof, randomness)
    KG4 = 0x04  #: S → C: the joint public key P
    SG1 = 0x11  #: C → S: Q1, signer ID, message
    SG2 = 0x12  #: S → C: r, s1
    SG3 = 0x13  #: C → S: the final signature (for the server's check and audit)
    DC1 = 0x21  #: C → S: T1 = w·C1
    DC2 = 0x22  #: S → C: T2 = d2⁻¹·T1
    RF1 = 0x31  #: C → S: ephemeral A
    RF2 = 0x32  #: S → C: ephemeral B and the server's confirmation tag
    RF3 = 0x33  #: C → S: the client's confirmation tag

    NAMES = {
        0x01: "KG1",
        0x02: "KG2",
        0x03: "KG3",
        0x04: "KG4",
        0x11: "SG1",
        0x12: "SG2",
        0x13: "SG3",
        0x21: "DC1",
        0x22: "DC2",
        0x31: "RF1",
        0x32: "RF2",
        0x33: "RF3",
    }


# --- wire helpers -------------------------------------------------------------------


def _bytes(data: object, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise PolicyError(f"{what} must be bytes, not {type(data).__name__}")


def _header(mtype: int, sid: bytes) -> bytes:
    return _MAGIC + bytes([_VERSION, mtype]) + sid


def message_type(msg: bytes) -> int:
    """The type byte of a two-party message (checks magic and version only)."""
    msg = _bytes(msg, "two-party message")
    if len(msg) < _HDR or msg[:2] != _MAGIC:
        raise DecodeError("not a two-party SM2 message (bad magic or too short)")
    if msg[2] != _VERSION:
        raise DecodeError(f"two-party SM2 message version {msg[2]}, expected {_VERSION}")
    return msg[3]


def session_id(msg: bytes) -> bytes:
    """The 16-byte session identifier of a two-party message."""
    message_type(msg)
    return bytes(msg[4:_HDR])


class _Reader:
    """Strict reader of one message body: fixed-length fields, no trailing bytes."""

    def __init__(self, msg: bytes, mtype: int, sid: bytes | None) -> None:
        got = message_type(msg)
        if got != mtype:
            raise TwoPartyStateError(
                f"expected a {MessageType.NAMES[mtype]} message, got "
                f"{MessageType.NAMES.get(got, hex(got))}"
            )
        self.sid = bytes(msg[4:_HDR])
        if sid is not None and not hmac.compare_digest(self.sid, sid):
            raise TwoPartyStateError(
                f"{MessageType.NAMES[mtype]} belongs to another session (replayed or misrouted)"
            )
        self._msg = bytes(msg)
        self._pos = _HDR
        self._what = MessageType.NAMES[mtype]

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._msg):
            raise DecodeError(f"{self._what}: truncated")
        out = self._msg[self._pos : self._pos + n]
        self._pos += n
        return out

    def point(self, name: str) -> Point:
        raw = self.take(_PT)
        if raw[0] != 4:
            raise DecodeError(f"{self._what}.{name}: point must be uncompressed 04‖x‖y")
        try:
            return Point.from_bytes(raw)
        except InvalidKeyError as exc:
            raise InvalidKeyError(f"{self._what}.{name}: {exc}") from None

    def scalar(self, name: str) -> int:
        v = int.from_bytes(self.take(SIZE), "big")
        if not 1 <= v < N:
            raise InvalidKeyError(f"{self._what}.{name}: scalar outside [1, n-1]")
        return v

    def end(self) -> None:
        if self._pos != len(self._msg):
            raise DecodeError(f"{self._what}: {len(self._msg) - self._pos} trailing bytes")


def _pt(p: Point) -> bytes:
    return p.to_bytes()


def _sc(v: int) -> bytes:
    return v.to_bytes(SIZE, "big")


def _inv(v: int) -> int:
    return pow(v, -1, N)


def _new_sid() -> bytes:
    return secrets.token_bytes(_SID)


def _scalar_from_hash(data: bytes) -> int:
    """A scalar in [1, n-1] from 40 bytes of hash output (bias below 2^-64)."""
    return int.from_bytes(data, "big") % (N - 1) + 1


# --- Schnorr proofs of knowledge of a discrete log ----------------------------------

_ROLE_CLIENT = b"C"
_ROLE_SERVER = b"S"
_G_BYTES = b""


def _g_bytes() -> bytes:
    global _G_BYTES
    if not _G_BYTES:
        _G_BYTES = generator().to_bytes()
    return _G_BYTES


def _challenge(sid: bytes, role: bytes, x: Point, r: Point) -> int:
    data = _DOMAIN + b"schnorr" + sid + role + _g_bytes() + _pt(x) + _pt(r)
    return _scalar_from_hash(kdf(data, 40))


def _prove(sid: bytes, role: bytes, secret: int, public: Point) -> bytes:
    while True:
        k = random_scalar()
        r = mul_base(k)
        c = _challenge(sid, role, public, r)
        z = (k + c * secret) % N
        if z:
            return _pt(r) + _sc(z)


def _verify_proof(sid: bytes, role: bytes, public: Point, r: Point, z: int) -> None:
    c = _challenge(sid, role, public, r)
    try:
        expected = add_mul_public(r, public, c)  # R + c·X
    except InvalidKeyError:
        raise TwoPartyProofError("proof of knowledge does not verify") from None
    if mul_base(z) != expected:
        raise TwoPartyProofError("proof of knowledge of the share's discrete log does not verify")


# --- shares ------------------------------------------------------------------------

_SHARE_MAGIC = {b"C": b"2PSC", b"S": b"2PSS"}
_SHARE_LEN = 4 + 1 + 4 + SIZE + _PT + _PT


class _Share:
    __slots__ = ("_d", "_peer", "_public", "_version")
    _ROLE = b""

    def __init__(self, d: int, peer_point: Point, public_key: SM2PublicKey, version: int = 0):
        if not isinstance(d, int) or isinstance(d, bool) or not 1 <= d < N:
            raise InvalidKeyError("two-party share outside [1, n-1]")
        if not isinstance(peer_point, Point) or not isinstance(public_key, SM2PublicKey):
            raise PolicyError("a share needs the peer's public share (Point) and the joint key")
        if not isinstance(version, int) or not 0 <= version < 2**32:
            raise PolicyError("share version must be an int in [0, 2^32)")
        try:
            joint = peer_point * _inv(d) + (-generator())
        except InvalidKeyError:
            raise InvalidKeyError("two-party share gives the point at infinity") from None
        if joint != public_key.point:
            raise InvalidKeyError("two-party share is inconsistent with the joint public key")
        self._d = d
        self._peer = peer_point
        self._public = public_key
        self._version = version

    @property
    def public_key(self) -> SM2PublicKey:
        """The joint public key P (what goes into the CSR and the certificate)."""
        return self._public

    @property
    def peer_point(self) -> Point:
        """The peer's public share (P2 for the client, P1 for the server)."""
        return self._peer

    @property
    def own_point(self) -> Point:
        """This party's public share d⁻¹·G."""
        return mul_base(_inv(self._d))

    @property
    def version(self) -> int:
        """Incremented by every refresh; both sides' shares must have the same version."""
        return self._version

    def to_bytes(self) -> bytes:
        """Serialise (SECRET: wrap it before storing, as keys at rest always are)."""
        return (
            _SHARE_MAGIC[self._ROLE]
            + bytes([1])
            + self._version.to_bytes(4, "big")
            + _sc(self._d)
            + _pt(self._peer)
            + self._public.to_bytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> _Share:
        data = _bytes(data, "two-party share")
        if len(data) != _SHARE_LEN or data[:4] != _SHARE_MAGIC[cls._ROLE] or data[4] != 1:
            raise DecodeError(f"not a serialised two-party {cls.__name__}")
        version = int.from_bytes(data[5:9], "big")
        d = int.from_bytes(data[9 : 9 + SIZE], "big")
        peer = Point.from_bytes(data[9 + SIZE : 9 + SIZE + _PT])
        pub = SM2PublicKey.from_bytes(data[9 + SIZE + _PT :])
        return cls(d, peer, pub, version)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(public_key={self._public!r}, version={self._version})"

    def __reduce__(self) -> object:
        raise PolicyError("two-party shares cannot be pickled; use to_bytes and wrap them")


class ClientShare(_Share):
    """The terminal's share d1 with P2 and the joint key P (kept in the soft token)."""

    __slots__ = ()
    _ROLE = b"C"


class ServerShare(_Share):
    """The server's share d2 with P1 and the joint key P (kept in the SS-CC)."""

    __slots__ = ()
    _ROLE = b"S"


def _joint(d: int, peer: Point) -> SM2PublicKey:
    try:
        return SM2PublicKey(peer * _inv(d) + (-generator()))
    except InvalidKeyError:
        raise TwoPartyProofError("joint public key is the point at infinity") from None


class _OneShot:
    """Single-use state machine: each step may run once and in order."""

    def __init__(self) -> None:
        self._step = 0
        self._dead = False

    def _advance(self, expected: int, what: str) -> None:
        if self._dead:
            raise TwoPartyStateError(f"{what}: this session was aborted; start a new one")
        if self._step != expected:
            raise TwoPartyStateError(f"{what}: out of order or repeated (replay refused)")
        self._step += 1

    def _abort(self) -> None:
        self._dead = True


# --- key generation -------------------------------------------------------------------


class ClientKeyGen(_OneShot):
    """The terminal's side of key generation: commit (KG1), open (KG3), confirm."""

    def __init__(self) -> None:
        super().__init__()
        self._sid = _new_sid()
        self._d1 = random_scalar()
        self._p1 = mul_base(_inv(self._d1))
        self._proof = _prove(self._sid, _ROLE_CLIENT, _inv(self._d1), self._p1)
        self._rho = secrets.token_bytes(32)
        self._share: ClientShare | None = None

    @property
    def session_id(self) -> bytes:
        return self._sid

    def start(self) -> bytes:
        """KG1: the commitment to P1 and its proof."""
        self._advance(0, "KG1")
        c = _commit(self._sid, self._p1, self._proof, self._rho)
        return _header(MessageType.KG1, self._sid) + c

    def receive_server_share(self, kg2: bytes) -> bytes:
        """Check the server's P2 and proof; return KG3 (the opening)."""
        self._advance(1, "KG2")
        try:
            rd = _Reader(kg2, MessageType.KG2, self._sid)
            p2 = rd.point("P2")
            r = rd.point("R")
            z = rd.scalar("z")
            rd.end()
            _verify_proof(self._sid, _ROLE_SERVER, p2, r, z)
            if p2 == self._p1:
                raise TwoPartyProofError("server's share equals ours (reflection refused)")
            pub = _joint(self._d1, p2)
            self._share = ClientShare(self._d1, p2, pub)
        except Exception:
            self._abort()
            raise
        return _header(MessageType.KG3, self._sid) + _pt(self._p1) + self._proof + self._rho

    def finish(self, kg4: bytes) -> ClientShare:
        """Compare the server's joint key with ours; return the client share."""
        self._advance(2, "KG4")
        try:
            rd = _Reader(kg4, MessageType.KG4, self._sid)
            p = rd.point("P")
            rd.end()
            assert self._share is not None
            if p != self._share.public_key.point:
                raise TwoPartyProofError("server computed a different joint public key")
        except Exception:
            self._abort()
            raise
        return self._share


def _commit(sid: bytes, p1: Point, proof: bytes, rho: bytes) -> bytes:
    return sm3(_DOMAIN + b"commit" + sid + _pt(p1) + proof + rho)


class ServerKeyGen(_OneShot):
    """The server's side of key generation: answer the commitment, check the opening."""

    def __init__(self) -> None:
        super().__init__()
        self._sid: bytes | None = None
        self._commitment = b""
        self._d2 = random_scalar()
        self._p2 = mul_base(_inv(self._d2))

    @property
    def session_id(self) -> bytes | None:
        return self._sid

    def receive_commitment(self, kg1: bytes) -> bytes:
        """KG1 → KG2 (P2 and its proof, bound to the client's session)."""
        self._advance(0, "KG1")
        try:
            rd = _Reader(kg1, MessageType.KG1, None)
            commitment = rd.take(32)
            rd.end()
        except Exception:
            self._abort()
            raise
        self._sid = rd.sid
        self._commitment = commitment
        proof = _prove(self._sid, _ROLE_SERVER, _inv(self._d2), self._p2)
        return _header(MessageType.KG2, self._sid) + _pt(self._p2) + proof

    def to_bytes(self) -> bytes:
        """The state between KG2 and KG3 (SECRET: it holds d2; wrap it in the SS-CC), so
        that another server instance can finish the key generation."""
        if self._step != 1 or self._dead or self._sid is None:
            raise TwoPartyStateError("only a key generation waiting for KG3 can be saved")
        return b"2PKG" + self._sid + self._commitment + _sc(self._d2)

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerKeyGen:
        data = _bytes(data, "key generation state")
        if len(data) != 4 + _SID + 32 + SIZE or data[:4] != b"2PKG":
            raise DecodeError("not a saved two-party key generation state")
        d2 = int.from_bytes(data[4 + _SID + 32 :], "big")
        if not 1 <= d2 < N:
            raise InvalidKeyError("saved key generation share outside [1, n-1]")
        self = cls.__new__(cls)
        _OneShot.__init__(self)
        self._step = 1
        self._sid = data[4 : 4 + _SID]
        self._commitment = data[4 + _SID : 4 + _SID + 32]
        self._d2 = d2
        self._p2 = mul_base(_inv(d2))
        return self

    def receive_opening(self, kg3: bytes) -> tuple[bytes, ServerShare]:
        """Check the opening and the client's proof; return (KG4, the server share)."""
        self._advance(1, "KG3")
        try:
            assert self._sid is not None
            rd = _Reader(kg3, MessageType.KG3, self._sid)
            p1 = rd.point("P1")
            r = rd.point("R")
            z = rd.scalar("z")
            rho = rd.take(32)
            rd.end()
            proof = _pt(r) + _sc(z)
            if not hmac.compare_digest(_commit(self._sid, p1, proof, rho), self._commitment):
                raise TwoPartyProofError("the opening does not match the client's commitment")
            _verify_proof(self._sid, _ROLE_CLIENT, p1, r, z)
            if p1 == self._p2:
                raise TwoPartyProofError("client's share equals ours (reflection refused)")
            pub = _joint(self._d2, p1)
            share = ServerShare(self._d2, p1, pub)
        except Exception:
            self._abort()
            raise
        return _header(MessageType.KG4, self._sid) + pub.to_bytes(), share


# --- signing -------------------------------------------------------------------------


def _check_signer_id(signer_id: object) -> bytes:
    if isinstance(signer_id, str):
        signer_id = signer_id.encode("utf-8")
    sid = _bytes(signer_id, "signer ID")
    if len(sid) > 0xFFFF // 8:
        raise PolicyError("signer ID longer than 8191 bytes (ENTL is 16 bits)")
    return sid


class ClientSigner(_OneShot):
    """The terminal's side of one signature over ``message`` (single use)."""

    def __init__(self, share: ClientShare, message: bytes, *, signer_id: bytes = DEFAULT_ID):
        super().__init__()
        if not isinstance(share, ClientShare):
            raise PolicyError("ClientSigner needs a ClientShare")
        self._share = share
        self._message = _bytes(message, "message")
        if len(self._message) > MAX_MESSAGE:
            raise PolicyError(f"message longer than {MAX_MESSAGE} bytes")
        self._id = _check_signer_id(signer_id)
        self._e = share.public_key.message_digest(self._message, self._id)
        self._sid = _new_sid()
        self._w1 = 0
        self._signature = b""

    @property
    def session_id(self) -> bytes:
        return self._sid

    @property
    def digest(self) -> bytes:
        """e = SM3(Z(P, ID) ‖ M), the value being signed."""
        return self._e

    def start(self) -> bytes:
        """SG1: Q1 = w1·G with a fresh w1, the share version, the signer ID and M."""
        self._advance(0, "SG1")
        self._w1 = random_scalar()
        q1 = mul_base(self._w1)
        return (
            _header(MessageType.SG1, self._sid)
            + self._share.version.to_bytes(4, "big")
            + _pt(q1)
            + len(self._id).to_bytes(2, "big")
            + self._id
            + len(self._message).to_bytes(4, "big")
            + self._message
        )

    def finish(self, sg2: bytes) -> bytes:
        """Combine the server's (r, s1); return the DER signature, verified against P."""
        self._advance(1, "SG2")
        try:
            rd = _Reader(sg2, MessageType.SG2, self._sid)
            r = rd.scalar("r")
            s1 = rd.scalar("s1")
            rd.end()
            w1, self._w1 = self._w1, 0  # the nonce is used exactly once
            s = (self._share._d * (s1 + w1) - r) % N
            if s == 0:
                raise TwoPartyProofError("combined s is zero; start a new signing session")
            der = signature_from_raw(_sc(r) + _sc(s))
            try:
                self._share.public_key.verify_digest(der, self._e)
            except VerificationError:
                raise TwoPartyProofError(
                    "the server's partial signature is wrong: the combined signature does not "
                    "verify against the joint public key"
                ) from None
        except Exception:
            self._abort()
            raise
        self._signature = der
        return der

    def confirmation(self) -> bytes:
        """SG3: the final signature, for the server's check and audit record."""
        self._advance(2, "SG3")
        if not self._signature:
            raise TwoPartyStateError("SG3: no signature yet")
        return _header(MessageType.SG3, self._sid) + bytes([len(self._signature)]) + self._signature


class ServerSigner(_OneShot):
    """The server's side of one signature (single use). It computes e itself from the
    message it is shown; :attr:`message` and :attr:`digest` are what to audit."""

    def __init__(self, share: ServerShare, *, enabled: bool = True) -> None:
        super().__init__()
        if not isinstance(share, ServerShare):
            raise PolicyError("ServerSigner needs a ServerShare")
        self._share = share
        self._enabled = enabled
        self._sid: bytes | None = None
        self._message = b""
        self._id = b""
        self._e = b""
        self._q1: Point | None = None

    @property
    def session_id(self) -> bytes | None:
        return self._sid

    @property
    def message(self) -> bytes:
        return self._message

    @property
    def signer_id(self) -> bytes:
        return self._id

    @property
    def digest(self) -> bytes:
        """e = SM3(Z(P, ID) ‖ M), computed here from the message shown."""
        return self._e

    def parse_request(self, sg1: bytes) -> bytes:
        """Parse and check SG1 without answering (so the application can inspect the
        message, e.g. the TBS_Sign of a seal, before :meth:`respond`). Returns M."""
        self._advance(0, "SG1")
        try:
            rd = _Reader(sg1, MessageType.SG1, None)
            version = int.from_bytes(rd.take(4), "big")
            if version != self._share.version:
                raise TwoPartyVersionError(
                    f"SG1 is for share version {version}, the server holds {self._share.version}"
                )
            self._q1 = rd.point("Q1")
            idlen = int.from_bytes(rd.take(2), "big")
            self._id = _check_signer_id(rd.take(idlen))
            mlen = int.from_bytes(rd.take(4), "big")
            if mlen > MAX_MESSAGE:
                raise PolicyError(f"SG1: message longer than {MAX_MESSAGE} bytes")
            self._message = rd.take(mlen)
            rd.end()
            self._sid = rd.sid
            self._e = self._share.public_key.message_digest(self._message, self._id)
        except Exception:
            self._abort()
            raise
        return self._message

    def respond(self, sg1: bytes | None = None) -> bytes:
        """SG2: (r, s1) for the e computed from the message in SG1 (fresh w2)."""
        if sg1 is not None:
            self.parse_request(sg1)
        self._advance(1, "SG2")
        if not self._enabled:
            self._abort()
            raise TwoPartyStateError("this server share is disabled")
        assert self._sid is not None and self._q1 is not None
        d2 = self._share._d
        e = int.from_bytes(self._e, "big")
        x2 = _inv(d2)
        while True:
            w2 = random_scalar()
            try:
                q = mul_base(w2) + self._q1 * x2
            except InvalidKeyError:
                continue  # Q is the point at infinity: draw again
            r = (e + q.x) % N
            if r == 0:
                continue
            s1 = d2 * (r + w2) % N
            if s1:
                break
        del w2
        return _header(MessageType.SG2, self._sid) + _sc(r) + _sc(s1)

    def confirm(self, sg3: bytes) -> bytes:
        """Check the client's final signature against P and e; return it (DER)."""
        self._advance(2, "SG3")
        try:
            assert self._sid is not None
            rd = _Reader(sg3, MessageType.SG3, self._sid)
            n = rd.take(1)[0]
            der = rd.take(n)
            rd.end()
            signature_to_raw(der)
            try:
                self._share.public_key.verify_digest(der, self._e)
            except VerificationError:
                raise TwoPartyProofError(
                    "final signature does not verify for this request"
                ) from None
        except SignatureFormatError as exc:
            self._abort()
            raise TwoPartyProofError(f"SG3: {exc}") from None
        except Exception:
            self._abort()
            raise
        return der


def read_confirmation(sg3: bytes) -> tuple[bytes, bytes]:
    """Parse SG3 statelessly: (session id, DER signature). The caller checks the
    signature against the joint key and the e it computed for that session."""
    rd = _Reader(sg3, MessageType.SG3, None)
    n = rd.take(1)[0]
    der = rd.take(n)
    rd.end()
    try:
        signature_to_raw(der)
    except SignatureFormatError as exc:
        raise TwoPartyProofError(f"SG3: {exc}") from None
    return rd.sid, der


# --- decryption -----------------------------------------------------------------------


class ClientDecryptor(_OneShot):
    """The terminal's side of one SM2 decryption of a DER SM2Cipher (GM/T 0009)."""

    def __init__(self, share: ClientShare, ciphertext: bytes) -> None:
        super().__init__()
        if not isinstance(share, ClientShare):
            raise PolicyError("ClientDecryptor needs a ClientShare")
        ciphertext = _bytes(ciphertext, "ciphertext")
        try:
            check_cipher_der(ciphertext)
            from mstcrypt.crypto import _der

            x, y, c3, c2 = _der.sm2_cipher(ciphertext)
            self._c1 = Point.from_xy(x, y)
        except DecodeError as exc:
            raise DecryptionError(f"not a valid DER SM2Cipher ({exc})") from None
        self._c3, self._c2 = c3, c2
        self._share = share
        self._sid = _new_sid()
        self._w = 0

    def start(self) -> bytes:
        """DC1: T1 = w·C1 (w blinds C1 from the server)."""
        self._advance(0, "DC1")
        self._w = random_scalar()
        t1 = self._c1 * self._w
        return (
            _header(MessageType.DC1, self._sid) + self._share.version.to_bytes(4, "big") + _pt(t1)
        )

    def finish(self, dc2: bytes) -> bytes:
        """Unblind, run the KDF and check C3; return the plaintext."""
        self._advance(1, "DC2")
        try:
            rd = _Reader(dc2, MessageType.DC2, self._sid)
            t2 = rd.point("T2")
            rd.end()
            w, self._w = self._w, 0
            k = _inv(w * self._share._d % N)
            try:
                dc1 = t2 * k + (-self._c1)
            except InvalidKeyError:
                raise DecryptionError(
                    "SM2 decryption failed ([d]C1 is the point at infinity)"
                ) from None
            raw = dc1.to_bytes()[1:]
            t = kdf(raw, len(self._c2))
            if not any(t):
                raise DecryptionError("SM2 decryption failed (KDF output is all zero)")
            m = bytes(a ^ b for a, b in zip(self._c2, t, strict=True))
            u = sm3(raw[:SIZE] + m + raw[SIZE:])
            if not hmac.compare_digest(u, self._c3):
                raise DecryptionError(
                    "SM2 decryption failed (C3 mismatch: wrong ciphertext or a faulty server)"
                )
        except Exception:
            self._abort()
            raise
        return m


class ServerDecryptor(_OneShot):
    """The server's side of one co-decryption: T2 = d2⁻¹·T1 (audit and rate-limit it)."""

    def __init__(self, share: ServerShare, *, enabled: bool = True) -> None:
        super().__init__()
        if not isinstance(share, ServerShare):
            raise PolicyError("ServerDecryptor needs a ServerShare")
        self._share = share
        self._enabled = enabled
        self.session_id: bytes | None = None

    def respond(self, dc1: bytes) -> bytes:
        self._advance(0, "DC1")
        try:
            rd = _Reader(dc1, MessageType.DC1, None)
            version = int.from_bytes(rd.take(4), "big")
            if version != self._share.version:
                raise TwoPartyVersionError(
                    f"DC1 is for share version {version}, the server holds {self._share.version}"
                )
            t1 = rd.point("T1")
            rd.end()
            if not self._enabled:
                raise TwoPartyStateError("this server share is disabled")
        except Exception:
            self._abort()
            raise
        self.session_id = rd.sid
        t2 = t1 * _inv(self._share._d)
        return _header(MessageType.DC2, rd.sid) + _pt(t2)


# --- share refresh ----------------------------------------------------------------------


def _refresh_keys(sid: bytes, a: Point, b: Point, shared: Point, pub: SM2PublicKey):
    transcript = sid + _pt(a) + _pt(b) + pub.to_bytes()
    okm = kdf(_DOMAIN + b"refresh" + _sc(shared.x) + transcript, 40 + 32)
    return _scalar_from_hash(okm[:40]), okm[40:], transcript


class ClientRefresh(_OneShot):
    """Re-randomise the client's share with the server, keeping P: d1' = d1·ρ."""

    def __init__(self, share: ClientShare) -> None:
        super().__init__()
        if not isinstance(share, ClientShare):
            raise PolicyError("ClientRefresh needs a ClientShare")
        self._share = share
        self._sid = _new_sid()
        self._a = random_scalar()
        self._A = mul_base(self._a)

    def start(self) -> bytes:
        self._advance(0, "RF1")
        return (
            _header(MessageType.RF1, self._sid)
            + self._share.version.to_bytes(4, "big")
            + _pt(self._A)
        )

    def finish(self, rf2: bytes) -> tuple[bytes, ClientShare]:
        """Check the server's tag; return (RF3, the new share). Keep the old share until
        the server has accepted RF3 and the new share has been used once."""
        self._advance(1, "RF2")
        try:
            rd = _Reader(rf2, MessageType.RF2, self._sid)
            b = rd.point("B")
            tag = rd.take(32)
            rd.end()
            rho, kc, transcript = _refresh_keys(
                self._sid, self._A, b, b * self._a, self._share.public_key
            )
            self._a = 0
            if not hmac.compare_digest(hmac_sm3(kc, b"S" + transcript), tag):
                raise TwoPartyProofError("server's refresh confirmation does not verify")
            s = self._share
            new = ClientShare(
                s._d * rho % N, s.peer_point * rho, s.public_key, (s.version + 1) % 2**32
            )
        except Exception:
            self._abort()
            raise
        return _header(MessageType.RF3, self._sid) + hmac_sm3(kc, b"C" + transcript), new


class ServerRefresh(_OneShot):
    """Re-randomise the server's share with the client, keeping P: d2' = d2·ρ⁻¹."""

    def __init__(self, share: ServerShare) -> None:
        super().__init__()
        if not isinstance(share, ServerShare):
            raise PolicyError("ServerRefresh needs a ServerShare")
        self._share = share
        self._sid: bytes | None = None
        self._pending: ServerShare | None = None
        self._kc = b""
        self._transcript = b""

    def respond(self, rf1: bytes) -> bytes:
        self._advance(0, "RF1")
        try:
            rd = _Reader(rf1, MessageType.RF1, None)
            version = int.from_bytes(rd.take(4), "big")
            if version != self._share.version:
                raise TwoPartyVersionError(
                    f"RF1 is for share version {version}, the server holds {self._share.version}"
                )
            a = rd.point("A")
            rd.end()
            self._sid = rd.sid
            b = random_scalar()
            big_b = mul_base(b)
            rho, self._kc, self._transcript = _refresh_keys(
                self._sid, a, big_b, a * b, self._share.public_key
            )
            s = self._share
            rho_inv = _inv(rho)
            self._pending = ServerShare(
                s._d * rho_inv % N, s.peer_point * rho_inv, s.public_key, (s.version + 1) % 2**32
            )
        except Exception:
            self._abort()
            raise
        tag = hmac_sm3(self._kc, b"S" + self._transcript)
        return _header(MessageType.RF2, self._sid) + _pt(big_b) + tag

    @property
    def session_id(self) -> bytes | None:
        return self._sid

    def to_bytes(self) -> bytes:
        """The state between RF2 and RF3 (SECRET: the pending share and the confirmation
        key; wrap it in the SS-CC), so that another server instance can finish."""
        if self._step != 1 or self._dead or self._pending is None or self._sid is None:
            raise TwoPartyStateError("only a refresh waiting for RF3 can be saved")
        share = self._pending.to_bytes()
        return (
            b"2PRF"
            + self._sid
            + self._kc
            + len(self._transcript).to_bytes(2, "big")
            + self._transcript
            + share
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerRefresh:
        data = _bytes(data, "refresh state")
        if len(data) < 4 + _SID + 32 + 2 or data[:4] != b"2PRF":
            raise DecodeError("not a saved two-party refresh state")
        pos = 4 + _SID + 32
        tlen = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        if len(data) != pos + tlen + _SHARE_LEN:
            raise DecodeError("saved two-party refresh state has the wrong length")
        pending = ServerShare.from_bytes(data[pos + tlen :])
        self = cls.__new__(cls)
        _OneShot.__init__(self)
        self._step = 1
        self._share = pending
        self._sid = data[4 : 4 + _SID]
        self._kc = data[4 + _SID : 4 + _SID + 32]
        self._transcript = data[pos : pos + tlen]
        self._pending = pending
        return self

    def finish(self, rf3: bytes) -> ServerShare:
        """Check the client's tag; return the new server share."""
        self._advance(1, "RF3")
        try:
            assert self._sid is not None and self._pending is not None
            rd = _Reader(rf3, MessageType.RF3, self._sid)
            tag = rd.take(32)
            rd.end()
            if not hmac.compare_digest(hmac_sm3(self._kc, b"C" + self._transcript), tag):
                raise TwoPartyProofError("client's refresh confirmation does not verify")
        except Exception:
            self._abort()
            raise
        self._kc = b""
        return self._pending
