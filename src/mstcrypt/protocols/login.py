"""User certificate login (T/ZSA 37-2020 §7.3, after ISO/IEC 9798-3 two-pass mutual
authentication with signatures), as a sans-IO exchange.

Flow (the guide's steps a–f)::

    terminal                                   information system
    a) LoginRequest(server_name)       ──▶
                                       ◀──     b) Challenge(challenge_id, R_S, expires,
                                                  Token-S = Sign_dS(TBS_S), Cert-S, chain)
    c) validate Cert-S, verify Token-S
    d) Response(challenge_id, R_M,     ──▶     e) validate Cert-M, verify Token-M,
       Token-M = Sign_dM(TBS_M), Cert-M)          check R_S was issued, unused, unexpired
                                       ◀──     f) result (session token or refusal)

Signed byte strings (every field length-prefixed with 2 bytes, big-endian)::

    TBS_S = "mstcrypt-login-v1/token-s" ‖ server_name ‖ challenge_id ‖ R_S ‖ expires
    TBS_M = "mstcrypt-login-v1/token-m" ‖ server_name ‖ challenge_id ‖ R_S ‖ R_M
            ‖ SM3(Cert-S) ‖ SM3(Cert-M)

``expires`` is the challenge expiry as 8 bytes of Unix seconds. The labels separate the
two steps (a Token-S can never pass as a Token-M), ``server_name`` and SM3(Cert-S) bind
the audience, SM3(Cert-M) binds the user, and R_S / challenge_id bind the session.
Signatures are SM2 with the default ID over those bytes. R_S and R_M are 32 bytes from
the CSPRNG. See docs/login.md.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mstcrypt.crypto.random import random_bytes
from mstcrypt.errors import DecodeError, PolicyError, VerificationError
from mstcrypt.pki import Certificate, CertificateError, validate_path
from mstcrypt.pki.profiles import POLICY_LOGIN_SERVER
from mstcrypt.pki.validate import AnyCrl

__all__ = [
    "Challenge",
    "LoginClient",
    "LoginError",
    "LoginServer",
    "Response",
    "check_login_server_certificate",
    "tbs_m",
    "tbs_s",
]

LABEL_S = b"mstcrypt-login-v1/token-s"
LABEL_M = b"mstcrypt-login-v1/token-m"
RANDOM_SIZE = 32
Signer = Callable[[bytes], bytes]


class LoginError(VerificationError):
    """A login step failed. ``reason`` is a short machine-readable code; the message is
    safe to show to the user."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _field(b: bytes) -> bytes:
    if len(b) > 0xFFFF:
        raise PolicyError("login field too long")
    return len(b).to_bytes(2, "big") + b


def tbs_s(server_name: str, challenge_id: str, r_s: bytes, expires: int) -> bytes:
    return b"".join(
        _field(x)
        for x in (
            LABEL_S,
            server_name.encode(),
            challenge_id.encode(),
            r_s,
            expires.to_bytes(8, "big"),
        )
    )


def tbs_m(
    server_name: str, challenge_id: str, r_s: bytes, r_m: bytes, cert_s_fp: bytes, cert_m_fp: bytes
) -> bytes:
    return b"".join(
        _field(x)
        for x in (
            LABEL_M,
            server_name.encode(),
            challenge_id.encode(),
            r_s,
            r_m,
            cert_s_fp,
            cert_m_fp,
        )
    )


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: Any, what: str, size: int | None = None) -> bytes:
    """Strict base64: alphabet and padding checked, and only the canonical encoding
    (no stray bits in the last character) is accepted."""
    if not isinstance(s, str):
        raise LoginError("malformed", f"{what} is missing")
    try:
        raw = base64.b64decode(s, validate=True)
    except ValueError:
        raise LoginError("malformed", f"{what} is not base64") from None
    if base64.b64encode(raw).decode() != s:
        raise LoginError("malformed", f"{what} is not canonical base64")
    if size is not None and len(raw) != size:
        raise LoginError("malformed", f"{what} must be {size} bytes")
    return raw


def _cert(pem: Any, what: str) -> Certificate:
    if not isinstance(pem, str):
        raise LoginError("malformed", f"{what} is missing")
    try:
        return Certificate.from_pem(pem.encode())
    except DecodeError:
        raise LoginError("malformed", f"{what} is not a PEM certificate") from None


@dataclass(frozen=True)
class Challenge:
    """Step b: what the information system sends."""

    server_name: str
    challenge_id: str
    r_s: bytes
    expires: int
    token_s: bytes
    cert_s: Certificate
    chain: tuple[Certificate, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "server_name": self.server_name,
            "challenge_id": self.challenge_id,
            "r_s": _b64(self.r_s),
            "expires": self.expires,
            "token_s": _b64(self.token_s),
            "cert_s": self.cert_s.pem.decode(),
            "chain": [c.pem.decode() for c in self.chain],
        }

    @classmethod
    def from_json(cls, d: Any) -> Challenge:
        if not isinstance(d, dict):
            raise LoginError("malformed", "challenge must be a JSON object")
        expires = d.get("expires")
        if not isinstance(expires, int) or isinstance(expires, bool):
            raise LoginError("malformed", "challenge expiry missing")
        chain = d.get("chain", [])
        if not isinstance(chain, list) or len(chain) > 8:
            raise LoginError("malformed", "challenge chain must be a list of certificates")
        sid, cid = d.get("server_name"), d.get("challenge_id")
        if not isinstance(sid, str) or not isinstance(cid, str) or not 1 <= len(cid) <= 64:
            raise LoginError("malformed", "challenge server name or id missing")
        return cls(
            sid,
            cid,
            _unb64(d.get("r_s"), "R_S", RANDOM_SIZE),
            expires,
            _unb64(d.get("token_s"), "Token-S"),
            _cert(d.get("cert_s"), "Cert-S"),
            tuple(_cert(c, "chain certificate") for c in chain),
        )


@dataclass(frozen=True)
class Response:
    """Step d: what the terminal sends."""

    challenge_id: str
    r_m: bytes
    token_m: bytes
    cert_m: Certificate
    chain: tuple[Certificate, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "challenge_id": self.challenge_id,
            "r_m": _b64(self.r_m),
            "token_m": _b64(self.token_m),
            "cert_m": self.cert_m.pem.decode(),
            "chain": [c.pem.decode() for c in self.chain],
        }

    @classmethod
    def from_json(cls, d: Any) -> Response:
        if not isinstance(d, dict):
            raise LoginError("malformed", "response must be a JSON object")
        cid = d.get("challenge_id")
        if not isinstance(cid, str) or not 1 <= len(cid) <= 64:
            raise LoginError("malformed", "challenge id missing")
        chain = d.get("chain", [])
        if not isinstance(chain, list) or len(chain) > 8:
            raise LoginError("malformed", "chain must be a list of certificates")
        return cls(
            cid,
            _unb64(d.get("r_m"), "R_M", RANDOM_SIZE),
            _unb64(d.get("token_m"), "Token-M"),
            _cert(d.get("cert_m"), "Cert-M"),
            tuple(_cert(c, "chain certificate") for c in chain),
        )


_VALID: dict[tuple[bytes, ...], float] = {}
_VALID_MAX = 4096
_VALID_FOR = 60.0


def _validate(
    cert: Certificate,
    *,
    anchors: Sequence[Certificate],
    intermediates: Sequence[Certificate],
    crls: Sequence[AnyCrl],
    at: datetime,
    who: str,
) -> None:
    """Path validation with a short positive memo: the same certificate against the same
    anchors, intermediates and CRLs stays valid for 60 s of validation time (never past
    the certificate's or a CRL's own limits, which are re-checked at every use)."""
    key = (
        cert.der,
        *(a.der for a in anchors),
        b"|",
        *(i.der for i in intermediates),
        b"|",
        *(c.der for c in crls),
    )
    ts = at.timestamp()
    until = _VALID.get(key)
    if (
        until is not None
        and ts <= until
        and cert.not_before <= at <= cert.not_after
        and all(c.this_update <= at <= c.next_update for c in crls)
    ):
        return
    try:
        validate_path(
            cert,
            anchors=anchors,
            intermediates=intermediates,
            crls=crls,
            at=at,
            key_usage={"digital_signature"},
        )
    except CertificateError as exc:
        _VALID.pop(key, None)
        raise LoginError(
            f"{who}_certificate_{exc.reason}",
            f"the {who} certificate is not acceptable: {exc.reason}",
        ) from None
    if len(_VALID) >= _VALID_MAX:
        _VALID.clear()
    _VALID[key] = ts + _VALID_FOR


class LoginServer:
    """The information system's side. Challenge storage (single use, expiry) is the
    caller's: :meth:`challenge` returns what to store, :meth:`verify` takes it back."""

    def __init__(
        self,
        *,
        server_name: str,
        certificate: Certificate,
        signer: Signer,
        chain: Sequence[Certificate],
        anchors: Sequence[Certificate],
        ttl_seconds: int = 60,
    ) -> None:
        self.server_name = server_name
        self.certificate = certificate
        self._signer = signer
        self.chain = tuple(chain)
        self.anchors = tuple(anchors)
        self.ttl = ttl_seconds
        self._cert_fp = bytes.fromhex(certificate.fingerprint)

    def challenge(self, now: datetime, challenge_id: str | None = None) -> Challenge:
        """Step b: a fresh R_S and Token-S."""
        cid = challenge_id or random_bytes(16).hex()
        r_s = random_bytes(RANDOM_SIZE)
        expires = int(now.timestamp()) + self.ttl
        token = self._signer(tbs_s(self.server_name, cid, r_s, expires))
        return Challenge(self.server_name, cid, r_s, expires, token, self.certificate, self.chain)

    def verify(
        self, response: Response, issued: Challenge, *, now: datetime, crls: Sequence[AnyCrl]
    ) -> Certificate:
        """Step e: ``issued`` is the challenge this server stored under the response's
        challenge id. Returns the authenticated user certificate."""
        if response.challenge_id != issued.challenge_id:
            raise LoginError("wrong_challenge", "the response is for another challenge")
        if int(now.timestamp()) > issued.expires:
            raise LoginError("challenge_expired", "the login challenge has expired")
        _validate(
            response.cert_m,
            anchors=self.anchors,
            intermediates=[*response.chain, *self.chain],
            crls=crls,
            at=now,
            who="user",
        )
        tbs = tbs_m(
            self.server_name,
            issued.challenge_id,
            issued.r_s,
            response.r_m,
            self._cert_fp,
            bytes.fromhex(response.cert_m.fingerprint),
        )
        try:
            response.cert_m.public_key.verify(response.token_m, tbs)
        except VerificationError:
            raise LoginError("bad_token_m", "the login signature (Token-M) is not valid") from None
        return response.cert_m


def _common_names(cert: Certificate) -> list[str]:
    return [
        str(attr["value"].native)
        for rdn in cert.subject.chosen
        for attr in rdn
        if attr["type"].native == "common_name"
    ]


def _dns_names(cert: Certificate) -> list[str]:
    """subjectAltName entries that can be host names (not e-mail addresses or URIs)."""
    return [n for n in cert.subject_alt_names if "@" not in n and "://" not in n]


def check_login_server_certificate(
    cert: Certificate, *, server_name: str, fingerprint: str | None = None
) -> None:
    """Step c: that a valid Cert-S is *the login server's*, not merely a certificate
    of the same CA (a user's device certificate, a gateway's).

    With ``fingerprint`` (SM3 of the DER, hex, e.g. pinned at enrollment) the
    certificate must be exactly that one. Otherwise it must be a login-server
    certificate (certificatePolicies :data:`~mstcrypt.pki.profiles.POLICY_LOGIN_SERVER`
    and EKU serverAuth, both present: an absent EKU does not count) issued to
    ``server_name`` (subject CN equal to it, or a subjectAltName host name equal to it
    ignoring ASCII case). Raises :class:`LoginError` naming what is wrong."""
    if fingerprint is not None:
        pin = fingerprint.strip().lower().replace(":", "")
        if not hmac.compare_digest(cert.fingerprint.encode(), pin.encode()):
            raise LoginError(
                "server_certificate_not_pinned",
                "the server certificate is not the pinned one (its SM3 fingerprint differs)",
            )
        return
    if POLICY_LOGIN_SERVER not in cert.policies:
        raise LoginError(
            "server_certificate_profile",
            "the server certificate is not a login-server certificate (it lacks the "
            f"login-server certificate policy {POLICY_LOGIN_SERVER})",
        )
    if "server_auth" not in cert.extended_key_usage:
        raise LoginError(
            "server_certificate_profile",
            "the server certificate is not a login-server certificate (its extended key "
            "usage lacks serverAuth)",
        )
    wanted = server_name.encode()
    if not any(hmac.compare_digest(cn.encode(), wanted) for cn in _common_names(cert)) and not any(
        dns.isascii() and dns.lower() == server_name.lower() for dns in _dns_names(cert)
    ):
        raise LoginError(
            "server_certificate_name",
            f"the server certificate is not issued to {server_name!r} (neither its CN nor "
            "a DNS subjectAltName matches)",
        )


class LoginClient:
    """The terminal's side; ``signer`` signs with d_M inside the MST-CC (PIN-gated).

    Cert-S must chain to ``anchors`` and be the login server's: a login-server
    certificate issued to ``expected_server_name``, or, when ``server_fingerprint`` is
    given, exactly the certificate with that SM3 fingerprint (see
    :func:`check_login_server_certificate`)."""

    def __init__(
        self,
        *,
        expected_server_name: str,
        certificate: Certificate,
        signer: Signer,
        chain: Sequence[Certificate],
        anchors: Sequence[Certificate],
        server_fingerprint: str | None = None,
    ) -> None:
        self.expected_server_name = expected_server_name
        self.certificate = certificate
        self._signer = signer
        self.chain = tuple(chain)
        self.anchors = tuple(anchors)
        self.server_fingerprint = server_fingerprint

    def respond(self, challenge: Challenge, *, now: datetime, crls: Sequence[AnyCrl]) -> Response:
        """Steps c and d: check the server, then sign R_S ‖ R_M (with both identities)."""
        if not hmac.compare_digest(
            challenge.server_name.encode(), self.expected_server_name.encode()
        ):
            raise LoginError("wrong_server", "the challenge comes from another server name")
        if int(now.timestamp()) > challenge.expires:
            raise LoginError("challenge_expired", "the login challenge has expired")
        _validate(
            challenge.cert_s,
            anchors=self.anchors,
            intermediates=challenge.chain,
            crls=crls,
            at=now,
            who="server",
        )
        check_login_server_certificate(
            challenge.cert_s,
            server_name=self.expected_server_name,
            fingerprint=self.server_fingerprint,
        )
        try:
            challenge.cert_s.public_key.verify(
                challenge.token_s,
                tbs_s(
                    challenge.server_name, challenge.challenge_id, challenge.r_s, challenge.expires
                ),
            )
        except VerificationError:
            raise LoginError(
                "bad_token_s", "the server's signature (Token-S) is not valid"
            ) from None
        r_m = random_bytes(RANDOM_SIZE)
        token = self._signer(
            tbs_m(
                challenge.server_name,
                challenge.challenge_id,
                challenge.r_s,
                r_m,
                bytes.fromhex(challenge.cert_s.fingerprint),
                bytes.fromhex(self.certificate.fingerprint),
            )
        )
        return Response(challenge.challenge_id, r_m, token, self.certificate, self.chain)


def utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
