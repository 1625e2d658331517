"""OCSP (RFC 6960) with SM2-with-SM3 signatures: requests, responses, and their checks.

A relying party asks about one certificate by its :class:`CertId` (issuer name hash,
issuer key hash, serial) and gets a signed answer: good, revoked (time and reason) or
unknown. This module is sans-IO; the responder service is
:mod:`mstcrypt.kmc.ocsp` and the HTTP binding (RFC 6960 Appendix A) is
``POST /ocsp`` / ``GET /ocsp/{base64}`` on the platform.

What we write:

- CertID hash algorithm SM3 (1.2.156.10197.1.401) by default; SHA-1 and SHA-256 are
  accepted in requests (OpenSSL sends SHA-1 by default) and answered with the same
  algorithm. The AlgorithmIdentifier carries NULL parameters, as OpenSSL and Tongsuo
  write them; absent parameters are accepted.
- BasicOCSPResponse signed with SM2-with-SM3 (1.2.156.10197.1.501, parameters absent),
  SM2 with the default ID 1234567812345678 over the DER tbsResponseData, ResponderID
  byKey (SHA-1 of the responder's subjectPublicKey, as RFC 6960 §4.2.1 defines KeyHash),
  the responder's certificate in ``certs``; a nonce extension (1.3.6.1.5.5.7.48.1.2,
  RFC 8954: 1 to 32 octets) only when the request had one, with the same value.
- A delegated responder certificate (profile ``ocsp_signer``): issued by the CA whose
  certificates it answers for, extendedKeyUsage id-kp-OCSPSigning, and the
  id-pkix-ocsp-nocheck extension (its own status is not checked; it lives briefly).

:func:`verify_response` is the client side: response status, signature, the responder
(the CA itself, or a delegated responder as above), the CertID, the thisUpdate /
nextUpdate window and the nonce. It raises :class:`OcspError` with a machine-readable
``reason``; malformed bytes raise :class:`~mstcrypt.errors.DecodeError`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from asn1crypto import algos, core, crl, ocsp, x509
from cryptography.hazmat.primitives import hashes

from mstcrypt.crypto.random import random_bytes
from mstcrypt.errors import DecodeError, PolicyError, UnsupportedError, VerificationError
from mstcrypt.formats import oids
from mstcrypt.formats._der import dump, load_strict
from mstcrypt.pki import _common as c
from mstcrypt.pki.cert import Certificate
from mstcrypt.pki.crl import REVOCATION_REASONS
from mstcrypt.pki.errors import CertificateError
from mstcrypt.pki.names import names_equal

__all__ = [
    "CERT_ID_HASHES",
    "MAX_NONCE_LENGTH",
    "MAX_REQUESTS",
    "OCSP_ERROR_STATUSES",
    "OID_AD_OCSP",
    "OID_OCSP_NOCHECK",
    "OID_OCSP_NONCE",
    "CertId",
    "OcspError",
    "OcspRequest",
    "OcspResponse",
    "SingleStatus",
    "aia_extension",
    "build_request",
    "build_response",
    "error_response",
    "new_nonce",
    "nocheck_extension",
    "ocsp_urls",
    "verify_response",
]

OID_AD_OCSP = "1.3.6.1.5.5.7.48.1"
OID_OCSP_BASIC = "1.3.6.1.5.5.7.48.1.1"
OID_OCSP_NONCE = "1.3.6.1.5.5.7.48.1.2"
OID_OCSP_NOCHECK = "1.3.6.1.5.5.7.48.1.5"
OID_KP_OCSP_SIGNING = "1.3.6.1.5.5.7.3.9"

#: CertID hash algorithms: name → OID. SM3 is what we send; SHA-1 (OpenSSL's default)
#: and SHA-256 are answered in kind.
CERT_ID_HASHES: dict[str, str] = {
    "sm3": oids.SM3,
    "sha1": "1.3.14.3.2.26",
    "sha256": "2.16.840.1.101.3.4.2.1",
}
_HASH_BY_OID = {oid: n for n, oid in CERT_ID_HASHES.items()}
_DIGEST_LEN = {"sm3": 32, "sha1": 20, "sha256": 32}

#: OCSPResponseStatus values other than successful (asn1crypto names).
OCSP_ERROR_STATUSES = frozenset(
    {"malformed_request", "internal_error", "try_later", "sign_required", "unauthorized"}
)
#: RFC 8954: a nonce is 1 to 32 octets.
MAX_NONCE_LENGTH = 32
#: At most this many CertIDs in one request (each may cost a database lookup).
MAX_REQUESTS = 16
#: thisUpdate / producedAt up to this far in the future are tolerated (clock skew).
CLOCK_SKEW = timedelta(minutes=5)

_NULL = core.Null()


def _digest(alg: str, data: bytes) -> bytes:
    if alg == "sm3":
        h = hashes.Hash(hashes.SM3())
        h.update(data)
        return h.finalize()
    if alg == "sha1":
        return hashlib.sha1(data, usedforsecurity=False).digest()
    return hashlib.sha256(data).digest()


def _hash_name(alg: str) -> str:
    if alg not in CERT_ID_HASHES:
        raise PolicyError(
            f"unknown CertID hash algorithm {alg!r}; expected one of {', '.join(CERT_ID_HASHES)}"
        )
    return alg


def _subject_public_key_bits(cert: Certificate) -> bytes:
    """The subjectPublicKey BIT STRING value (without the unused-bits octet) exactly as
    the certificate encodes it: what RFC 6960 §4.1.1 hashes into issuerKeyHash."""
    return bytes(cert.asn1["tbs_certificate"]["subject_public_key_info"]["public_key"].native)


@lru_cache(maxsize=64)
def _issuer_hashes(issuer_der: bytes, alg: str) -> tuple[bytes, bytes]:
    issuer = Certificate.from_der(issuer_der)
    return (
        _digest(alg, issuer.subject.dump()),
        _digest(alg, _subject_public_key_bits(issuer)),
    )


def _responder_key_hash(cert: Certificate) -> bytes:
    """KeyHash of RFC 6960 §4.2.1: SHA-1 of the subjectPublicKey BIT STRING value (an
    identifier the RFC fixes; no security rests on it)."""
    return hashlib.sha1(_subject_public_key_bits(cert), usedforsecurity=False).digest()


# --- CertID ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertId:
    """Which certificate a request or a SingleResponse is about. ``hash_algorithm`` is
    ``"sm3"``, ``"sha1"`` or ``"sha256"``."""

    hash_algorithm: str
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int

    @classmethod
    def for_certificate(
        cls, cert: Certificate | int, issuer: Certificate, hash_algorithm: str = "sm3"
    ) -> CertId:
        """The CertID of ``cert`` (a Certificate or a serial number) under ``issuer``."""
        alg = _hash_name(hash_algorithm)
        if not isinstance(issuer, Certificate):
            raise PolicyError("issuer must be a Certificate")
        if isinstance(cert, Certificate):
            if not cert.issued_by_name(issuer):
                raise PolicyError("the certificate was not issued by this issuer (names differ)")
            serial = cert.serial
        else:
            serial = c.check_serial(cert)
        name_hash, key_hash = _issuer_hashes(issuer.der, alg)
        return cls(alg, name_hash, key_hash, serial)

    def matches_issuer(self, issuer: Certificate) -> bool:
        """True when the issuer hashes are those of ``issuer``."""
        name_hash, key_hash = _issuer_hashes(issuer.der, self.hash_algorithm)
        return hmac.compare_digest(self.issuer_name_hash, name_hash) & hmac.compare_digest(
            self.issuer_key_hash, key_hash
        )

    def asn1(self) -> ocsp.CertId:
        return ocsp.CertId(
            {
                "hash_algorithm": algos.DigestAlgorithm(
                    {"algorithm": CERT_ID_HASHES[self.hash_algorithm], "parameters": _NULL}
                ),
                "issuer_name_hash": self.issuer_name_hash,
                "issuer_key_hash": self.issuer_key_hash,
                "serial_number": self.serial,
            }
        )

    @classmethod
    def _from_asn1(cls, value: ocsp.CertId, what: str) -> CertId:
        alg = value["hash_algorithm"]
        oid = alg["algorithm"].dotted
        name = _HASH_BY_OID.get(oid)
        if name is None:
            raise UnsupportedError(
                f"{what}: CertID hash algorithm {oid} is not supported "
                "(SM3, SHA-1 or SHA-256 expected)"
            )
        params = alg["parameters"]
        if not isinstance(params, core.Void) and params.dump() != b"\x05\x00":
            raise DecodeError(f"{what}: CertID hash AlgorithmIdentifier has parameters")
        name_hash = bytes(value["issuer_name_hash"].native)
        key_hash = bytes(value["issuer_key_hash"].native)
        if len(name_hash) != _DIGEST_LEN[name] or len(key_hash) != _DIGEST_LEN[name]:
            raise DecodeError(f"{what}: CertID hashes are not {_DIGEST_LEN[name]} octets")
        serial = int(value["serial_number"].native)
        if serial < 0 or len(value["serial_number"].contents) > c.MAX_SERIAL_BYTES:
            raise DecodeError(f"{what}: CertID serial number out of range")
        return cls(name, name_hash, key_hash, serial)


# --- requests ------------------------------------------------------------------------------


def new_nonce() -> bytes:
    """A fresh 32-octet nonce (RFC 8954's recommended size) from the OS CSPRNG."""
    return random_bytes(MAX_NONCE_LENGTH)


def _check_nonce(nonce: object, what: str) -> bytes:
    if not isinstance(nonce, bytes) or not 1 <= len(nonce) <= MAX_NONCE_LENGTH:
        raise PolicyError(f"{what} must be 1 to {MAX_NONCE_LENGTH} bytes (RFC 8954)")
    return nonce


def _nonce_extension(nonce: bytes, spec: type[core.Sequence]) -> core.Sequence:
    ext = spec({"extn_id": OID_OCSP_NONCE, "critical": False})
    ext["extn_value"] = core.ParsableOctetString(core.OctetString(nonce).dump())
    return ext


def build_request(cert_ids: Sequence[CertId], *, nonce: bytes | None = None) -> bytes:
    """A DER OCSPRequest (unsigned, as RFC 5019 profiles it) for ``cert_ids``, with the
    nonce extension when ``nonce`` is given (see :func:`new_nonce`)."""
    ids = list(cert_ids)
    if not ids or not all(isinstance(i, CertId) for i in ids):
        raise PolicyError("cert_ids must be a non-empty sequence of CertId")
    if len(ids) > MAX_REQUESTS:
        raise PolicyError(f"at most {MAX_REQUESTS} certificates per request")
    tbs: dict[str, Any] = {"request_list": [{"req_cert": i.asn1()} for i in ids]}
    if nonce is not None:
        tbs["request_extensions"] = [
            _nonce_extension(_check_nonce(nonce, "nonce"), ocsp.TBSRequestExtension)
        ]
    return dump(ocsp.OCSPRequest({"tbs_request": tbs}))


class _Signature(ocsp.Signature):
    _fields = [
        ("signature_algorithm", algos.SignedDigestAlgorithm),
        ("signature", core.OctetBitString),
        ("certs", core.SequenceOf, {"explicit": 0, "optional": True}),
    ]


class _OCSPRequest(ocsp.OCSPRequest):
    """asn1crypto's OCSPRequest whose optional signature's certificates are not parsed
    (we do not check request signatures; RFC 6960 §4.1.2 leaves that to the responder)."""

    _fields = [
        ("tbs_request", ocsp.TBSRequest),
        ("optional_signature", _Signature, {"explicit": 0, "optional": True}),
    ]


@dataclass(frozen=True)
class OcspRequest:
    """A strictly parsed OCSPRequest: its CertIDs and nonce. A signature on the request,
    if any, is not checked (``signed`` says it was there)."""

    cert_ids: tuple[CertId, ...]
    nonce: bytes | None
    signed: bool
    der: bytes = field(repr=False)

    @classmethod
    def from_der(cls, der: bytes) -> OcspRequest:
        """Parse a DER OCSPRequest. DecodeError when malformed, not canonical DER, with
        more than :data:`MAX_REQUESTS` CertIDs, an unknown critical extension or a nonce
        outside 1..32 octets; UnsupportedError for an unknown CertID hash algorithm."""
        req = load_strict(_OCSPRequest, der, "OCSP request")
        tbs = req["tbs_request"]
        if tbs["version"].native != "v1":
            raise DecodeError("OCSP request: unsupported version")
        items = tbs["request_list"]
        if len(items) == 0:
            raise DecodeError("OCSP request: no certificate asked about")
        if len(items) > MAX_REQUESTS:
            raise DecodeError(f"OCSP request: more than {MAX_REQUESTS} certificates")
        ids = []
        for item in items:
            for ext in item["single_request_extensions"]:
                if ext["critical"].native:
                    raise DecodeError(
                        f"OCSP request: unsupported critical extension {ext['extn_id'].dotted}"
                    )
            ids.append(CertId._from_asn1(item["req_cert"], "OCSP request"))
        nonce = _read_nonce(tbs["request_extensions"], "OCSP request", DecodeError)
        if nonce is not None and not 1 <= len(nonce) <= MAX_NONCE_LENGTH:
            raise DecodeError(
                f"OCSP request: nonce of {len(nonce)} octets (1 to "
                f"{MAX_NONCE_LENGTH} allowed, RFC 8954)"
            )
        signed = not isinstance(req["optional_signature"], core.Void)
        return cls(tuple(ids), nonce, signed, bytes(der))


def _read_nonce(extensions: Any, what: str, critical_error: type[Exception]) -> bytes | None:
    """The nonce of a request's or response's extensions (None when absent). Each
    extension at most once; an unknown critical one raises ``critical_error``."""
    nonce = None
    seen: set[str] = set()
    for ext in extensions:
        oid = ext["extn_id"].dotted
        if oid in seen:
            raise DecodeError(f"{what}: extension {oid} more than once")
        seen.add(oid)
        if oid == OID_OCSP_NONCE:
            try:
                value = core.OctetString.load(ext["extn_value"].contents, strict=True)
                nonce = bytes(value.native)
            except (ValueError, TypeError):
                raise DecodeError(f"{what}: the nonce is not an OCTET STRING") from None
        elif ext["critical"].native:
            raise critical_error(f"{what}: unsupported critical extension {oid}")
    return nonce


# --- responses -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SingleStatus:
    """The status of one certificate as a response states it: ``status`` is ``"good"``,
    ``"revoked"`` (with ``revoked_at`` and, when given, ``reason`` — an asn1crypto
    CRLReason name) or ``"unknown"``."""

    cert_id: CertId
    status: str
    this_update: datetime
    next_update: datetime | None
    revoked_at: datetime | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.status not in ("good", "revoked", "unknown"):
            raise PolicyError("status must be good, revoked or unknown")
        if (self.status == "revoked") != (self.revoked_at is not None):
            raise PolicyError("revoked_at is given exactly when the status is revoked")
        if self.reason is not None and (
            self.status != "revoked" or self.reason not in REVOCATION_REASONS
        ):
            raise PolicyError(f"invalid revocation reason {self.reason!r}")


# DER written directly (asn1crypto's encoder costs ~15 ms per response, mostly
# re-encoding the certificate); tests parse every output back strictly.


_tlv = c.tlv


def _der_int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _der_gtime(dt: datetime, what: str) -> bytes:
    return _tlv(0x18, c.utc(dt, what).strftime("%Y%m%d%H%M%SZ").encode())


_NULL_DER = b"\x05\x00"
_REASON_CODES = {name: code for code, name in crl.CRLReason._map.items()}
_OID_BASIC_DER = core.ObjectIdentifier(OID_OCSP_BASIC).dump()
_OID_NONCE_DER = core.ObjectIdentifier(OID_OCSP_NONCE).dump()
_SM2_SM3_DER = c.sm2_with_sm3().dump()
_HASH_ALG_DER = {
    name: _tlv(0x30, core.ObjectIdentifier(oid).dump() + _NULL_DER)
    for name, oid in CERT_ID_HASHES.items()
}


def _cert_id_der(cid: CertId) -> bytes:
    return _tlv(
        0x30,
        _HASH_ALG_DER[cid.hash_algorithm]
        + _tlv(0x04, cid.issuer_name_hash)
        + _tlv(0x04, cid.issuer_key_hash)
        + _der_int(cid.serial),
    )


def _single_der(s: SingleStatus) -> bytes:
    if s.status == "good":
        status = b"\x80\x00"  # [0] IMPLICIT NULL
    elif s.status == "unknown":
        status = b"\x82\x00"  # [2] IMPLICIT NULL
    else:
        assert s.revoked_at is not None
        info = _der_gtime(s.revoked_at, "revoked_at")
        if s.reason is not None:
            info += _tlv(0xA0, _tlv(0x0A, bytes((_REASON_CODES[s.reason],))))
        status = _tlv(0xA1, info)  # [1] IMPLICIT RevokedInfo
    body = _cert_id_der(s.cert_id) + status + _der_gtime(s.this_update, "this_update")
    if s.next_update is not None:
        if c.utc(s.next_update, "next_update") <= c.utc(s.this_update, "this_update"):
            raise PolicyError("next_update must be later than this_update")
        body += _tlv(0xA0, _der_gtime(s.next_update, "next_update"))
    return _tlv(0x30, body)


def error_response(status: str) -> bytes:
    """An unsuccessful OCSPResponse (no responseBytes): ``malformed_request``,
    ``internal_error``, ``try_later``, ``sign_required`` or ``unauthorized``."""
    if status not in OCSP_ERROR_STATUSES:
        raise PolicyError(f"unknown OCSP error status {status!r}")
    return dump(ocsp.OCSPResponse({"response_status": status}))


def build_response(
    statuses: Sequence[SingleStatus],
    *,
    responder: Certificate,
    signer: c.Signer,
    produced_at: datetime,
    nonce: bytes | None = None,
) -> bytes:
    """A successful DER OCSPResponse carrying a BasicOCSPResponse for ``statuses``, signed
    by ``signer`` (SM2, default ID, the key of ``responder``; the signature is checked
    with ``responder``'s key before it is returned), with ``responder`` in ``certs``, a
    byKey ResponderID, and the nonce extension when ``nonce`` is given."""
    if not isinstance(responder, Certificate):
        raise PolicyError("responder must be a Certificate")
    items = list(statuses)
    if not items or not all(isinstance(s, SingleStatus) for s in items):
        raise PolicyError("statuses must be a non-empty sequence of SingleStatus")
    data = (
        _tlv(0xA2, _tlv(0x04, _responder_key_hash(responder)))  # ResponderID byKey
        + _der_gtime(produced_at, "produced_at")
        + _tlv(0x30, b"".join(_single_der(s) for s in items))
    )
    if nonce is not None:
        ext = _tlv(0x30, _OID_NONCE_DER + _tlv(0x04, _tlv(0x04, _check_nonce(nonce, "nonce"))))
        data += _tlv(0xA1, _tlv(0x30, ext))
    tbs_der = _tlv(0x30, data)
    sig = c.sign(tbs_der, signer, responder.public_key, "OCSP response")
    basic = _tlv(
        0x30,
        tbs_der + _SM2_SM3_DER + _tlv(0x03, b"\x00" + sig) + _tlv(0xA0, _tlv(0x30, responder.der)),
    )
    response_bytes = _tlv(0x30, _OID_BASIC_DER + _tlv(0x04, basic))
    return _tlv(0x30, b"\x0a\x01\x00" + _tlv(0xA0, response_bytes))


class _Certificates(core.SequenceOf):
    _child_spec = c.X509Certificate


class _BasicOCSPResponse(ocsp.BasicOCSPResponse):
    """BasicOCSPResponse whose certificates parse with our SM2-aware certificate type."""

    _fields = [
        ("tbs_response_data", ocsp.ResponseData),
        ("signature_algorithm", algos.SignedDigestAlgorithm),
        ("signature", core.OctetBitString),
        ("certs", _Certificates, {"explicit": 0, "optional": True}),
    ]


class _ResponseBytes(core.Sequence):
    _fields = [("response_type", ocsp.ResponseType), ("response", core.OctetString)]


class _OCSPResponse(core.Sequence):
    _fields = [
        ("response_status", ocsp.OCSPResponseStatus),
        ("response_bytes", _ResponseBytes, {"explicit": 0, "optional": True}),
    ]


@dataclass(frozen=True)
class OcspResponse:
    """A strictly parsed OCSPResponse. ``status`` is ``"successful"`` or one of
    :data:`OCSP_ERROR_STATUSES`; the other fields are set for a successful one only.
    The signature is not checked here (see :func:`verify_response`)."""

    status: str
    der: bytes = field(repr=False)
    responder_id: tuple[str, Any] | None = field(default=None, repr=False)
    produced_at: datetime | None = None
    responses: tuple[SingleStatus, ...] = ()
    nonce: bytes | None = None
    certificates: tuple[Certificate, ...] = field(default=(), repr=False)
    tbs_der: bytes = field(default=b"", repr=False)
    signature: bytes = field(default=b"", repr=False)

    @classmethod
    def from_der(cls, der: bytes) -> OcspResponse:
        """Parse a DER OCSPResponse (DecodeError when malformed or not canonical DER;
        UnsupportedError for a response type other than id-pkix-ocsp-basic, a signature
        algorithm other than SM2-with-SM3 or an unknown critical extension)."""
        outer = load_strict(_OCSPResponse, der, "OCSP response")
        status = str(outer["response_status"].native)
        rb = outer["response_bytes"]
        if status != "successful":
            if not isinstance(rb, core.Void):
                raise DecodeError("OCSP response: an error response carries responseBytes")
            return cls(status, bytes(der))
        if isinstance(rb, core.Void):
            raise DecodeError("OCSP response: successful but without responseBytes")
        if rb["response_type"].dotted != OID_OCSP_BASIC:
            raise UnsupportedError(
                f"OCSP response type {rb['response_type'].dotted} (only basic is supported)"
            )
        basic = load_strict(_BasicOCSPResponse, bytes(rb["response"].native), "BasicOCSPResponse")
        c.check_signature_algorithm(basic["signature_algorithm"], "OCSP response")
        data = basic["tbs_response_data"]
        if data["version"].native != "v1":
            raise DecodeError("OCSP response: unsupported version")
        rid = data["responder_id"]
        responder_id: tuple[str, Any]
        if rid.name == "by_key":
            key_hash = bytes(rid.chosen.native)
            if len(key_hash) != 20:
                raise DecodeError("OCSP response: ResponderID KeyHash is not 20 octets")
            responder_id = ("by_key", key_hash)
        else:
            responder_id = ("by_name", x509.Name.load(rid.chosen.untag().dump()))
        responses = tuple(_single(s) for s in data["responses"])
        if not responses:
            raise DecodeError("OCSP response: no SingleResponse")
        nonce = _read_nonce(data["response_extensions"], "OCSP response", UnsupportedError)
        certs = basic["certs"]
        certificates = (
            ()
            if isinstance(certs, core.Void)
            else tuple(Certificate.from_der(x.dump()) for x in certs)
        )
        return cls(
            status,
            bytes(der),
            responder_id,
            _native_time(data["produced_at"]),
            responses,
            nonce,
            certificates,
            bytes(data.dump()),
            bytes(basic["signature"].native),
        )


def _native_time(t: core.GeneralizedTime) -> datetime:
    value = t.native
    if not isinstance(value, datetime):
        raise DecodeError("OCSP response: time out of the supported range")
    return c.utc(value, "time", whole_seconds=False)


def _single(s: ocsp.SingleResponse) -> SingleStatus:
    for ext in s["single_extensions"]:
        if ext["critical"].native:
            raise UnsupportedError(
                f"OCSP response: unsupported critical extension {ext['extn_id'].dotted}"
            )
    cert_id = CertId._from_asn1(s["cert_id"], "OCSP response")
    st = s["cert_status"]
    nu = s["next_update"]
    revoked_at = reason = None
    if st.name == "revoked":
        revoked_at = _native_time(st.chosen["revocation_time"])
        r = st.chosen["revocation_reason"]
        if not isinstance(r, core.Void):
            reason = str(r.native)
            if reason not in REVOCATION_REASONS:
                raise DecodeError(f"OCSP response: revocation reason {reason!r}")
    return SingleStatus(
        cert_id,
        str(st.name),
        _native_time(s["this_update"]),
        None if isinstance(nu, core.Void) else _native_time(nu),
        revoked_at,
        reason,
    )


# --- verification (client side) -------------------------------------------------------------


class OcspError(VerificationError):
    """An OCSP response that cannot be relied on. ``reason`` is one of :data:`REASONS`;
    ``response_status`` is set when the responder answered with an error status."""

    REASONS = (
        "error_status",
        "bad_signature",
        "unauthorized_responder",
        "no_matching_response",
        "not_yet_valid",
        "expired",
        "no_next_update",
        "nonce_mismatch",
        "unknown_status",
    )

    def __init__(self, reason: str, message: str, *, response_status: str | None = None):
        if reason not in self.REASONS:
            raise ValueError(f"unknown OcspError reason {reason!r}")  # programming error
        self.reason = reason
        self.response_status = response_status
        super().__init__(message)


def _check_responder(
    resp: OcspResponse, issuer: Certificate, at: datetime, require_nocheck: bool
) -> Certificate:
    """The certificate whose key signed ``resp``: the CA itself, or a delegated
    responder issued by it (RFC 6960 §4.2.2.2) that the ResponderID designates."""
    assert resp.responder_id is not None
    kind, value = resp.responder_id

    def designated(cert: Certificate) -> bool:
        if kind == "by_key":
            return hmac.compare_digest(value, _responder_key_hash(cert))
        return names_equal(value, cert.subject)

    candidates = [x for x in (*resp.certificates, issuer) if designated(x)]
    if not candidates:
        raise OcspError("unauthorized_responder", "no certificate matches the ResponderID")
    cert = candidates[0]
    if cert == issuer or cert.public_key == issuer.public_key:
        return issuer
    problems = []
    if not cert.issued_by_name(issuer) or (
        cert.authority_key_id is not None
        and issuer.subject_key_id is not None
        and cert.authority_key_id != issuer.subject_key_id
    ):
        problems.append("not issued by the certificate's issuer")
    else:
        try:
            cert.verify_signature(issuer.public_key)
        except CertificateError:
            problems.append("its signature does not verify with the issuer's key")
    if not cert.is_valid_at(at):
        problems.append("outside its validity period")
    if "ocsp_signing" not in cert.extended_key_usage:
        problems.append("no id-kp-OCSPSigning extended key usage")
    if cert.key_usage and "digital_signature" not in cert.key_usage:
        problems.append("key usage lacks digitalSignature")
    if cert.is_ca:
        problems.append("is a CA certificate")
    if require_nocheck and OID_OCSP_NOCHECK not in cert.extensions:
        problems.append("no id-pkix-ocsp-nocheck extension")
    if cert.unsupported_critical_extensions:
        problems.append("has unsupported critical extensions")
    if problems:
        raise OcspError(
            "unauthorized_responder",
            f"responder certificate {cert.subject_str!r} refused: " + "; ".join(problems),
        )
    return cert


def verify_response(
    response: bytes | OcspResponse,
    *,
    issuer: Certificate,
    cert_id: CertId,
    nonce: bytes | None = None,
    at: datetime | None = None,
    require_nocheck: bool = True,
) -> SingleStatus:
    """Check ``response`` as the answer about ``cert_id`` (issued by ``issuer``, which
    the caller has already validated) and return that certificate's status.

    Checked: the response status is successful; it is signed (SM2-with-SM3, default
    ID) by ``issuer`` or by a delegated responder that ``issuer`` certified for
    OCSPSigning, valid at ``at``, with the ocsp-nocheck extension (``require_nocheck``);
    the ResponderID designates that signer; a SingleResponse is about ``cert_id``
    (hash algorithm, issuer hashes and serial); its thisUpdate is not in the future
    (5 minutes of clock skew allowed) and its nextUpdate is present and not passed;
    the nonce equals ``nonce`` when one was sent, and no nonce is answered to a request
    without one. Raises :class:`OcspError`; DecodeError when malformed."""
    resp = response if isinstance(response, OcspResponse) else OcspResponse.from_der(response)
    if not isinstance(issuer, Certificate) or not isinstance(cert_id, CertId):
        raise PolicyError("issuer must be a Certificate and cert_id a CertId")
    when = c.now() if at is None else c.utc(at, "at", whole_seconds=False)
    if resp.status != "successful":
        raise OcspError(
            "error_status",
            f"the OCSP responder answered {resp.status}",
            response_status=resp.status,
        )
    signer = _check_responder(resp, issuer, when, require_nocheck)
    try:
        signer.public_key.verify(resp.signature, resp.tbs_der)
    except VerificationError:
        raise OcspError(
            "bad_signature", "the OCSP response signature does not verify (SM2, default ID)"
        ) from None
    if nonce is not None:
        if resp.nonce is None or not hmac.compare_digest(resp.nonce, nonce):
            raise OcspError("nonce_mismatch", "the response does not echo the request's nonce")
    elif resp.nonce is not None:
        raise OcspError("nonce_mismatch", "the response has a nonce the request did not send")
    assert resp.produced_at is not None
    if resp.produced_at > when + CLOCK_SKEW:
        raise OcspError("not_yet_valid", "the OCSP response was produced in the future")
    for single in resp.responses:
        if single.cert_id == cert_id:
            break
    else:
        raise OcspError(
            "no_matching_response", "the response says nothing about the certificate asked"
        )
    if single.this_update > when + CLOCK_SKEW:
        raise OcspError("not_yet_valid", "the status's thisUpdate is in the future")
    if single.next_update is None:
        raise OcspError("no_next_update", "the status has no nextUpdate")
    if when > single.next_update:
        raise OcspError("expired", f"the status expired at {single.next_update.isoformat()}")
    return single


# --- certificate extensions ---------------------------------------------------------------


def nocheck_extension() -> x509.Extension:
    """id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1): NULL, non-critical."""
    return x509.Extension({"extn_id": "ocsp_no_check", "critical": False, "extn_value": None})


def aia_extension(ocsp_urls: Sequence[str]) -> x509.Extension:
    """authorityInfoAccess with one id-ad-ocsp access description per URL."""
    if isinstance(ocsp_urls, str) or not ocsp_urls:
        raise PolicyError("ocsp_urls must be a non-empty sequence of URLs")
    for url in ocsp_urls:
        if not isinstance(url, str) or "://" not in url or not url.isascii():
            raise PolicyError(f"OCSP URL {url!r} must be an ASCII URI")
    return x509.Extension(
        {
            "extn_id": "authority_information_access",
            "critical": False,
            "extn_value": [
                {
                    "access_method": "ocsp",
                    "access_location": x509.GeneralName(
                        name="uniform_resource_identifier", value=u
                    ),
                }
                for u in ocsp_urls
            ],
        }
    )


def ocsp_urls(cert: Certificate) -> tuple[str, ...]:
    """The id-ad-ocsp URIs of ``cert``'s authorityInfoAccess (empty when none)."""
    raw = cert.extension_value(c.OID_AIA)
    if raw is None:
        return ()
    try:
        aia = x509.AuthorityInfoAccessSyntax.load(raw, strict=True)
        return tuple(
            str(ad["access_location"].native)
            for ad in aia
            if ad["access_method"].dotted == OID_AD_OCSP
            and ad["access_location"].name == "uniform_resource_identifier"
        )
    except (ValueError, TypeError):
        raise DecodeError("certificate: malformed authorityInfoAccess") from None
