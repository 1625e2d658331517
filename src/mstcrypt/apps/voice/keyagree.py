"""Per-call key agreement (guide §7.1.4: session keys agreed by the two clients with
public-key cryptography), sans-IO.

The caller A and the callee B each hold an SM2 *encryption* key pair in their module
(MST-CC) with its KMC-issued certificate. A call runs the SM2 key exchange of
GB/T 32918.3 with both confirmations (:mod:`mstcrypt.module` keeps the private and
ephemeral scalars), the SM2 IDs being the two users' identities. The three signalling
messages are::

    Offer   A -> B  call_id, ts, from, to, profiles, ssrc_A, cert_A, R_A
    Answer  B -> A  call_id, profile, ssrc_B, cert_B, R_B, S_B
    Confirm A -> B  call_id, S_A, mac_A

Each side validates the peer's certificate against its trust anchors and CRLs (key
usage keyAgreement) and checks that it names the identity the message claims. From the
exchange's key K (32 bytes) and the transcript hash th = SM3(every field above, each
length-prefixed) comes ``SM3-KDF(K ‖ th)`` = k_conf ‖ master key/salt A→B ‖ B→A.
S_B proves to A that B holds its key and saw R_A; mac_A = HMAC-SM3(k_conf,
"initiator" ‖ th) proves to B that A holds its key and that both saw the same call id,
identities, offered and chosen profiles and SSRCs. A relay or the signalling server
that alters any field makes B refuse the Confirm (and A's keys differ from B's), so the
call fails closed; B plays no media before the Confirm verifies.

Forward secrecy: the SM2 exchange mixes fresh ephemeral keys into K (an MQV-like
construction), so someone who later obtains both long-term keys cannot recompute the
keys of a recorded call without the ephemeral scalars, which the module discards when
the exchange ends (weak forward secrecy; an active attacker holding a long-term key at
call time can still impersonate that user, as with any certificate-based scheme).
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from mstcrypt.apps.voice.errors import (
    CallAuthError,
    CallFormatError,
    CallPolicyError,
    CallReplayError,
)
from mstcrypt.crypto.sm3 import hmac_sm3, kdf, sm3
from mstcrypt.errors import DecodeError, MstCryptError, VerificationError
from mstcrypt.module import CryptoModule, KeyHandle
from mstcrypt.pki import CRL, Certificate, CertificateError, CrlIndex, validate_path
from mstcrypt.protocols import srtp

__all__ = [
    "DEFAULT_PROFILES",
    "Answer",
    "CallKeys",
    "CallParty",
    "CalleeHandshake",
    "CallerHandshake",
    "Confirm",
    "Offer",
    "OfferGuard",
    "parse_message",
]

VERSION: Final = 1
LABEL: Final = b"mstcrypt voice call v1"
DEFAULT_PROFILES: Final = (
    srtp.SM4_CM_128_HMAC_SM3_80.name,
    srtp.AEAD_SM4_128_GCM.name,
    srtp.ZUC_128_EEA3_EIA3_32.name,
)
MAX_SKEW: Final = 120  # seconds an offer's timestamp may differ from the callee's clock
_IDENT = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")
_CALL_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_CERT = 4096


# --- wire helpers -----------------------------------------------------------------------


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(v: object, what: str, *, size: int | None = None, max_size: int = 256) -> bytes:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", v):
        raise CallFormatError(f"{what} must be base64url text")
    try:
        b = base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))
    except ValueError:
        raise CallFormatError(f"{what} is not valid base64url") from None
    if _b64(b) != v:
        raise CallFormatError(f"{what} is not canonical base64url")
    if size is not None and len(b) != size:
        raise CallFormatError(f"{what} must be {size} bytes, got {len(b)}")
    if len(b) > max_size:
        raise CallFormatError(f"{what} longer than {max_size} bytes")
    return b


def _ident(v: object, what: str) -> str:
    if not isinstance(v, str) or not _IDENT.match(v):
        raise CallFormatError(f"{what} must be a user identity ([A-Za-z0-9._@-], 1..128)")
    return v


def _u32(v: object, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFFFFFFFF:
        raise CallFormatError(f"{what} must be an integer in [0, 2^32)")
    return v


def _call_id(v: object) -> str:
    if not isinstance(v, str) or not _CALL_ID.match(v):
        raise CallFormatError("call_id must be 32 lower-case hex digits")
    return v


def _point(v: object, what: str) -> bytes:
    b = _unb64(v, what, size=65)
    if b[0] != 4:
        raise CallFormatError(f"{what} must be an uncompressed SM2 point")
    return b


def _fields(obj: object, kind: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise CallFormatError("a signalling message is a JSON object")
    if obj.get("v") != VERSION:
        raise CallFormatError(f"unsupported signalling version {obj.get('v')!r}")
    if obj.get("type") != kind:
        raise CallFormatError(f"expected a {kind} message")
    have = set(obj) - {"v", "type"}
    if have != keys:
        raise CallFormatError(f"{kind} fields must be exactly {sorted(keys)}; got {sorted(have)}")
    return obj


def _enc(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


# --- messages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    call_id: str
    ts: int
    caller: str
    callee: str
    profiles: tuple[str, ...]
    ssrc: int
    cert: bytes = field(repr=False)
    eph: bytes = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION, "type": "offer", "call_id": self.call_id, "ts": self.ts,
            "from": self.caller, "to": self.callee, "profiles": list(self.profiles),
            "ssrc": self.ssrc, "cert": _b64(self.cert), "eph": _b64(self.eph),
        }  # fmt: skip

    @classmethod
    def from_json(cls, obj: object) -> Offer:
        f = _fields(
            obj, "offer", {"call_id", "ts", "from", "to", "profiles", "ssrc", "cert", "eph"}
        )
        profiles = f["profiles"]
        if (
            not isinstance(profiles, list)
            or not 1 <= len(profiles) <= 16
            or not all(isinstance(p, str) and 0 < len(p) <= 64 for p in profiles)
            or len(set(profiles)) != len(profiles)
        ):
            raise CallFormatError("profiles must be 1..16 distinct profile names")
        ts = f["ts"]
        if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts < 1 << 40:
            raise CallFormatError("ts must be a POSIX time in seconds")
        return cls(
            _call_id(f["call_id"]), ts, _ident(f["from"], "from"), _ident(f["to"], "to"),
            tuple(profiles), _u32(f["ssrc"], "ssrc"),
            _unb64(f["cert"], "cert", max_size=_MAX_CERT), _point(f["eph"], "eph"),
        )  # fmt: skip


@dataclass(frozen=True)
class Answer:
    call_id: str
    profile: str
    ssrc: int
    cert: bytes = field(repr=False)
    eph: bytes = field(repr=False)
    confirm: bytes = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION, "type": "answer", "call_id": self.call_id, "profile": self.profile,
            "ssrc": self.ssrc, "cert": _b64(self.cert), "eph": _b64(self.eph),
            "confirm": _b64(self.confirm),
        }  # fmt: skip

    @classmethod
    def from_json(cls, obj: object) -> Answer:
        f = _fields(obj, "answer", {"call_id", "profile", "ssrc", "cert", "eph", "confirm"})
        if not isinstance(f["profile"], str) or not 0 < len(f["profile"]) <= 64:
            raise CallFormatError("profile must be a profile name")
        return cls(
            _call_id(f["call_id"]), f["profile"], _u32(f["ssrc"], "ssrc"),
            _unb64(f["cert"], "cert", max_size=_MAX_CERT), _point(f["eph"], "eph"),
            _unb64(f["confirm"], "confirm", size=32),
        )  # fmt: skip


@dataclass(frozen=True)
class Confirm:
    call_id: str
    confirm: bytes = field(repr=False)
    mac: bytes = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION, "type": "confirm", "call_id": self.call_id,
            "confirm": _b64(self.confirm), "mac": _b64(self.mac),
        }  # fmt: skip

    @classmethod
    def from_json(cls, obj: object) -> Confirm:
        f = _fields(obj, "confirm", {"call_id", "confirm", "mac"})
        return cls(
            _call_id(f["call_id"]),
            _unb64(f["confirm"], "confirm", size=32),
            _unb64(f["mac"], "mac", size=32),
        )


_TYPES: Final = {"offer": Offer, "answer": Answer, "confirm": Confirm}


def parse_message(data: bytes | str | dict[str, Any]) -> Offer | Answer | Confirm:
    """Parse one signalling message (JSON text or an already-decoded object)."""
    obj: object = data
    if isinstance(data, bytes | str):
        if len(data) > 16384:
            raise CallFormatError("signalling message longer than 16 KiB")
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            raise CallFormatError("signalling message is not JSON") from None
    kind = obj.get("type") if isinstance(obj, dict) else None
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise CallFormatError(f"unknown signalling message type {kind!r}")
    return cls.from_json(obj)  # type: ignore[attr-defined, no-any-return]


# --- parties and results ------------------------------------------------------------------


@dataclass
class CallParty:
    """One side's identity and trust: ``module``/``handle`` hold the SM2 encryption key,
    ``certificate`` is its certificate; the peer's certificate is validated against
    ``anchors`` (+ ``intermediates``) and ``crls`` (revocation checking is mandatory)."""

    identity: str
    module: CryptoModule
    handle: KeyHandle
    certificate: Certificate
    anchors: Sequence[Certificate]
    intermediates: Sequence[Certificate] = ()
    crls: Sequence[CRL | CrlIndex] = ()
    profiles: Sequence[str] = DEFAULT_PROFILES

    def __post_init__(self) -> None:
        _ident(self.identity, "identity")
        if self.certificate.public_key != self.handle.public_key:
            raise CallPolicyError("the certificate does not certify this key handle")
        for p in self.profiles:
            srtp.profile(p)

    def check_peer(self, cert_der: bytes, identity: str, at: datetime) -> Certificate:
        """The peer's encryption certificate, validated and naming ``identity``."""
        try:
            cert = Certificate.from_der(cert_der)
            validate_path(
                cert, anchors=self.anchors, intermediates=self.intermediates, crls=self.crls,
                at=at, key_usage={"key_agreement"},
            )  # fmt: skip
        except CertificateError as exc:
            raise CallAuthError(f"peer certificate refused: {exc.reason}") from None
        except DecodeError:
            raise CallAuthError("peer certificate is malformed") from None
        if identity not in cert.common_names:
            raise CallAuthError(
                f"the certificate names {list(cert.common_names)}, not the caller {identity!r}"
            )
        return cert


@dataclass(frozen=True)
class CallKeys:
    """The outcome of a call's key agreement: the SRTP profile, this side's and the
    peer's SSRC, and one master key/salt per direction (never shown in a repr)."""

    call_id: str
    profile: srtp.Profile
    local_ssrc: int
    remote_ssrc: int
    tx_key: bytes = field(repr=False)
    tx_salt: bytes = field(repr=False)
    rx_key: bytes = field(repr=False)
    rx_salt: bytes = field(repr=False)

    def contexts(self, **kw: Any) -> tuple[srtp.SrtpContext, srtp.SrtpContext]:
        """(sending context, receiving context) for this call."""
        return (
            srtp.SrtpContext(self.profile, self.tx_key, self.tx_salt, **kw),
            srtp.SrtpContext(self.profile, self.rx_key, self.rx_salt, **kw),
        )


def _schedule(
    k: bytes, offer: Offer, profile: srtp.Profile, answer_ssrc: int, cert_b: bytes, r_b: bytes
) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes]:
    th = sm3(
        LABEL + _enc(
            offer.call_id.encode(), offer.ts.to_bytes(8, "big"), offer.caller.encode(),
            offer.callee.encode(), ",".join(offer.profiles).encode(), profile.name.encode(),
            offer.ssrc.to_bytes(4, "big"), answer_ssrc.to_bytes(4, "big"),
            offer.cert, cert_b, offer.eph, r_b,
        )
    )  # fmt: skip
    n = profile.master_len
    okm = kdf(k + th, 32 + 2 * n)
    k_conf = okm[:32]
    ab, ba = okm[32 : 32 + n], okm[32 + n :]
    kl = profile.key_len
    return th, k_conf, ab[:kl], ab[kl:], ba[:kl], ba[kl:]


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else now


# --- the caller -------------------------------------------------------------------------


class CallerHandshake:
    """Side A. ``offer()`` → send; ``receive_answer(answer)`` → send the returned
    :class:`Confirm`; the keys are then on :attr:`keys`."""

    def __init__(
        self,
        party: CallParty,
        callee: str,
        callee_certificate: bytes,
        *,
        now: datetime | None = None,
        ssrc: int | None = None,
        call_id: str | None = None,
    ) -> None:
        self.party = party
        self.callee = _ident(callee, "callee")
        if callee == party.identity:
            raise CallPolicyError("a terminal cannot call itself")
        at = _now(now)
        cert_b = party.check_peer(callee_certificate, callee, at)
        self._cert_b = cert_b.der
        self._kex = party.module.key_exchange_initiator(
            party.handle, cert_b.public_key, own_id=party.identity.encode(),
            peer_id=callee.encode(), klen=32, confirm=True,
        )  # fmt: skip
        self.offer_msg = Offer(
            call_id or secrets.token_hex(16), int(at.timestamp()), party.identity, callee,
            tuple(party.profiles), secrets.randbits(32) if ssrc is None else _u32(ssrc, "ssrc"),
            party.certificate.der, self._kex.ephemeral,
        )  # fmt: skip
        self.keys: CallKeys | None = None

    @property
    def call_id(self) -> str:
        return self.offer_msg.call_id

    def offer(self) -> Offer:
        return self.offer_msg

    def receive_answer(self, answer: Answer, *, now: datetime | None = None) -> Confirm:
        if self.keys is not None:
            raise CallReplayError("the call already has its answer")
        if answer.call_id != self.call_id:
            raise CallReplayError("answer for another call")
        if answer.profile not in self.offer_msg.profiles:
            raise CallAuthError("the answer picked a profile that was not offered")
        prof = srtp.profile(answer.profile)
        if answer.ssrc == self.offer_msg.ssrc:
            raise CallPolicyError("SSRC collision: the callee picked the caller's SSRC")
        if not hmac.compare_digest(answer.cert, self._cert_b):
            raise CallAuthError("the answer carries another certificate than the callee's")
        try:
            k, s_a = self._kex.finish(answer.eph, answer.confirm)
        except VerificationError:
            raise CallAuthError("callee key confirmation S_B does not match") from None
        except MstCryptError as exc:
            raise CallAuthError(f"key exchange failed: {type(exc).__name__}") from None
        assert s_a is not None
        th, k_conf, ab_k, ab_s, ba_k, ba_s = _schedule(
            k, self.offer_msg, prof, answer.ssrc, self._cert_b, answer.eph
        )
        self.keys = CallKeys(self.call_id, prof, self.offer_msg.ssrc, answer.ssrc,
                             ab_k, ab_s, ba_k, ba_s)  # fmt: skip
        return Confirm(self.call_id, s_a, hmac_sm3(k_conf, b"initiator" + th))


# --- the callee -------------------------------------------------------------------------


class OfferGuard:
    """Refuses an offer whose call id was already seen or whose timestamp is off by more
    than ``max_skew`` seconds (bounded memory: ids older than the skew are forgotten)."""

    def __init__(self, max_skew: int = MAX_SKEW, max_entries: int = 10000) -> None:
        self.max_skew = max_skew
        self.max_entries = max_entries
        self._seen: OrderedDict[str, int] = OrderedDict()

    def check(self, offer: Offer, at: datetime) -> None:
        now = int(at.timestamp())
        while self._seen and (
            next(iter(self._seen.values())) < now - 2 * self.max_skew
            or len(self._seen) > self.max_entries
        ):
            self._seen.popitem(last=False)
        if abs(now - offer.ts) > self.max_skew:
            raise CallReplayError("offer timestamp outside the accepted clock skew")
        if offer.call_id in self._seen:
            raise CallReplayError("offer replayed (call id already seen)")
        self._seen[offer.call_id] = now


class CalleeHandshake:
    """Side B, built from the Offer (checks it and the caller's certificate). ``accept()``
    → send the :class:`Answer`; ``receive_confirm`` checks the caller's confirmation and
    the transcript MAC and sets :attr:`keys`. Media must not be sent or played before."""

    def __init__(
        self, party: CallParty, offer: Offer, *, guard: OfferGuard | None = None,
        now: datetime | None = None, ssrc: int | None = None,
    ) -> None:  # fmt: skip
        at = _now(now)
        if offer.callee != party.identity:
            raise CallPolicyError("the offer is addressed to another user")
        if guard is not None:
            guard.check(offer, at)
        self.party = party
        self.offer_msg = offer
        cert_a = party.check_peer(offer.cert, offer.caller, at)
        common = [p for p in party.profiles if p in offer.profiles]
        if not common:
            raise CallPolicyError("no SRTP profile in common with the caller")
        self.profile = srtp.profile(common[0])
        local = secrets.randbits(32) if ssrc is None else _u32(ssrc, "ssrc")
        while local == offer.ssrc:  # RFC 3550 §8.2: never the peer's SSRC
            local = secrets.randbits(32)
        self.local_ssrc = local
        self._kex = party.module.key_exchange_responder(
            party.handle, cert_a.public_key, own_id=party.identity.encode(),
            peer_id=offer.caller.encode(), klen=32, confirm=True,
        )  # fmt: skip
        self._pending: tuple[bytes, ...] | None = None
        self.keys: CallKeys | None = None

    @property
    def call_id(self) -> str:
        return self.offer_msg.call_id

    def accept(self) -> Answer:
        if self._pending is not None or self.keys is not None:
            raise CallPolicyError("accept() runs once per call")
        try:
            r_b, s_b = self._kex.respond(self.offer_msg.eph)
        except MstCryptError as exc:
            raise CallAuthError(f"key exchange failed: {type(exc).__name__}") from None
        assert s_b is not None
        self._r_b = r_b
        self._cert_b = self.party.certificate.der
        self._pending = (r_b, s_b)
        return Answer(self.call_id, self.profile.name, self.local_ssrc, self._cert_b, r_b, s_b)

    def receive_confirm(self, confirm: Confirm) -> CallKeys:
        if self.keys is not None:
            raise CallReplayError("the call is already confirmed")
        if self._pending is None:
            raise CallPolicyError("confirm before answer")
        if confirm.call_id != self.call_id:
            raise CallReplayError("confirm for another call")
        try:
            k = self._kex.confirm(confirm.confirm)
        except VerificationError:
            raise CallAuthError("caller key confirmation S_A does not match") from None
        except MstCryptError as exc:
            raise CallAuthError(f"key exchange failed: {type(exc).__name__}") from None
        th, k_conf, ab_k, ab_s, ba_k, ba_s = _schedule(
            k, self.offer_msg, self.profile, self.local_ssrc, self._cert_b, self._r_b
        )
        if not hmac.compare_digest(hmac_sm3(k_conf, b"initiator" + th), confirm.mac):
            raise CallAuthError("the confirm's transcript MAC does not match (altered signalling)")
        self.keys = CallKeys(self.call_id, self.profile, self.local_ssrc, self.offer_msg.ssrc,
                             ba_k, ba_s, ab_k, ab_s)  # fmt: skip
        return self.keys
