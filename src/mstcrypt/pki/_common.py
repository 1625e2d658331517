"""Internals shared by the PKI modules: ASN.1 types with an SM2-aware
SubjectPublicKeyInfo, the SM2-with-SM3 algorithm identifier, times, key identifiers,
extension tables and the signer plumbing."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from asn1crypto import algos, core, x509
from asn1crypto import csr as _csr
from cryptography.hazmat.primitives import hashes

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import DecodeError, PolicyError, UnsupportedError, VerificationError
from mstcrypt.formats import oids
from mstcrypt.formats.keys import SubjectPublicKeyInfo

#: Takes the DER to be signed (tbsCertificate, certificationRequestInfo, tbsCertList) and
#: returns a DER SM2Signature made with the default ID 1234567812345678, Z computed from
#: the signer's public key. Lets the private key stay inside a cryptographic module.
Signer = Callable[[bytes], bytes]

_NULL_DER = b"\x05\x00"
MAX_SERIAL_BYTES = 20


# --- ASN.1: asn1crypto's structures with our SubjectPublicKeyInfo -----------------------
# asn1crypto's PublicKeyInfo cannot parse a key whose algorithm is the bare SM2 OID
# 1.2.156.10197.1.301 (KeyError in its public-key spec callback), which some CAs write;
# formats.keys.SubjectPublicKeyInfo takes both forms.


class TbsCertificate(x509.TbsCertificate):
    _fields = [
        (n, SubjectPublicKeyInfo if n == "subject_public_key_info" else t, *rest)
        for (n, t, *rest) in x509.TbsCertificate._fields
    ]


class X509Certificate(x509.Certificate):
    _fields = [
        ("tbs_certificate", TbsCertificate),
        ("signature_algorithm", algos.SignedDigestAlgorithm),
        ("signature_value", core.OctetBitString),
    ]


class CertificationRequestInfo(_csr.CertificationRequestInfo):
    _fields = [
        (n, SubjectPublicKeyInfo if n == "subject_pk_info" else t, *rest)
        for (n, t, *rest) in _csr.CertificationRequestInfo._fields
    ]


class CertificationRequestAsn1(_csr.CertificationRequest):
    _fields = [
        ("certification_request_info", CertificationRequestInfo),
        ("signature_algorithm", algos.SignedDigestAlgorithm),
        ("signature", core.OctetBitString),
    ]


# --- algorithm identifiers and signatures --------------------------------------------------


def sm2_with_sm3() -> algos.SignedDigestAlgorithm:
    """AlgorithmIdentifier 1.2.156.10197.1.501 with parameters absent (GM/T 0015)."""
    return algos.SignedDigestAlgorithm({"algorithm": oids.SM2_WITH_SM3})


#: DER of AlgorithmIdentifier { sm2-with-SM3 } (GM/T 0015), as :func:`sm2_with_sm3` dumps it.
SM2_WITH_SM3_DER = bytes(sm2_with_sm3().dump())


def check_signature_algorithm(alg: algos.SignedDigestAlgorithm, what: str) -> None:
    """Accept SM2-with-SM3 with parameters absent (the GM/T form) or NULL (tolerated)."""
    oid = alg["algorithm"].dotted
    if oid != oids.SM2_WITH_SM3:
        raise UnsupportedError(
            f"{what} is signed with {oid}; only SM2-with-SM3 ({oids.SM2_WITH_SM3}) is supported"
        )
    params = alg["parameters"]
    if isinstance(params, core.Void):
        return
    if params.dump() != _NULL_DER:
        raise DecodeError(f"{what}: SM2-with-SM3 AlgorithmIdentifier has parameters")


def sign(tbs_der: bytes, signer: Signer, issuer_public_key: SM2PublicKey, what: str) -> bytes:
    """Call ``signer`` on ``tbs_der`` and check the result verifies with
    ``issuer_public_key`` (a wrong key, a wrong ID or a faulty module is caught here,
    before anything is issued)."""
    if not callable(signer):
        raise PolicyError("signer must be a callable taking the DER to sign")
    sig = signer(tbs_der)
    if not isinstance(sig, bytes | bytearray):
        raise PolicyError("signer must return the DER SM2Signature as bytes")
    sig = bytes(sig)
    try:
        issuer_public_key.verify(sig, tbs_der)
    except VerificationError:
        raise PolicyError(
            f"the signer's {what} signature does not verify with the issuer public key "
            "(wrong key, or not SM2 with the default ID 1234567812345678 over the DER)"
        ) from None
    return sig


def tlv(tag: int, content: bytes) -> bytes:
    """One DER value: ``tag``, the definite length, ``content`` (already DER)."""
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(ln))) + ln + content


def signed_der(tbs_der: bytes, signature: bytes) -> bytes:
    """SEQUENCE { tbs, AlgorithmIdentifier sm2-with-SM3, BIT STRING signature }: the
    outer structure of a certificate or a CRL, assembled from already-DER parts (the
    caller parses the result strictly)."""
    return tlv(0x30, tbs_der + SM2_WITH_SM3_DER + tlv(0x03, b"\x00" + signature))


# --- times ---------------------------------------------------------------------------------


def utc(dt: object, what: str, *, whole_seconds: bool = True) -> datetime:
    """An aware datetime converted to UTC, truncated to whole seconds unless asked not
    to (X.509 times have no fractions). Naive datetimes are refused."""
    if not isinstance(dt, datetime):
        raise PolicyError(f"{what} must be a datetime")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise PolicyError(f"{what} must be timezone-aware (use datetime.now(UTC))")
    out = dt.astimezone(UTC)
    return out.replace(microsecond=0) if whole_seconds else out


def to_time(dt: datetime, what: str) -> x509.Time:
    """RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050."""
    dt = utc(dt, what)
    if 1950 <= dt.year < 2050:
        return x509.Time(name="utc_time", value=dt)
    return x509.Time(name="general_time", value=dt)


def from_time(t: x509.Time) -> datetime:
    value = t.native
    if not isinstance(value, datetime):
        raise DecodeError("time value out of the supported range")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --- key identifiers -------------------------------------------------------------------------


def key_identifier(public_key: SM2PublicKey, method: str = "sm3") -> bytes:
    """Key identifier of an SM2 public key, over the subjectPublicKey BIT STRING value
    (the uncompressed point 04‖x‖y, as in RFC 5280 §4.2.1.2 method 1).

    ``"sm3"`` (default): the full 32-byte SM3 digest, as GmSSL writes with
    ``-gen_subject_key_id``; keeps SHA-1 out of the certificates we issue.
    ``"sha1"``: the 20-byte SHA-1 of RFC 5280 method 1, as the OpenSSL CLI writes.
    """
    point = public_key.to_bytes()
    if method == "sm3":
        h = hashes.Hash(hashes.SM3())
        h.update(point)
        return h.finalize()
    if method == "sha1":
        return hashlib.sha1(point, usedforsecurity=False).digest()
    raise PolicyError(f"unknown key identifier method {method!r}; expected sm3 or sha1")


def sm3_hex(data: bytes) -> str:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize().hex()


# --- serial numbers -------------------------------------------------------------------------


def check_serial(serial: object) -> int:
    if not isinstance(serial, int) or isinstance(serial, bool):
        raise PolicyError("serial must be an int")
    if serial <= 0:
        raise PolicyError("serial must be positive (RFC 5280 §4.1.2.2)")
    if len(core.Integer(serial).contents) > MAX_SERIAL_BYTES:
        raise PolicyError(f"serial must fit in {MAX_SERIAL_BYTES} DER content bytes")
    return serial


# --- extensions -----------------------------------------------------------------------------

OID_KEY_USAGE = "2.5.29.15"
OID_BASIC_CONSTRAINTS = "2.5.29.19"
OID_EXT_KEY_USAGE = "2.5.29.37"
OID_SUBJECT_ALT_NAME = "2.5.29.17"
OID_ISSUER_ALT_NAME = "2.5.29.18"
OID_SUBJECT_KEY_ID = "2.5.29.14"
OID_AUTHORITY_KEY_ID = "2.5.29.35"
OID_CRL_DP = "2.5.29.31"
OID_CERT_POLICIES = "2.5.29.32"
OID_AIA = "1.3.6.1.5.5.7.1.1"
OID_CRL_NUMBER = "2.5.29.20"
OID_DELTA_CRL = "2.5.29.27"
OID_FRESHEST_CRL = "2.5.29.46"
OID_CRL_REASON = "2.5.29.21"
OID_INVALIDITY_DATE = "2.5.29.24"
OID_ANY_EKU = "2.5.29.37.0"

#: Certificate extensions whose semantics validate_path applies (or, for
#: certificatePolicies, needs not apply: RFC 5280 with anyPolicy as the initial policy set
#: and no explicit policy required accepts any policy). A critical extension outside
#: this set fails validation. nameConstraints, policyConstraints and inhibitAnyPolicy
#: are not implemented, so they are deliberately absent.
UNDERSTOOD_CERT_EXTENSIONS = frozenset(
    {
        OID_KEY_USAGE,
        OID_BASIC_CONSTRAINTS,
        OID_EXT_KEY_USAGE,
        OID_SUBJECT_ALT_NAME,
        OID_ISSUER_ALT_NAME,
        OID_SUBJECT_KEY_ID,
        OID_AUTHORITY_KEY_ID,
        OID_CRL_DP,
        OID_CERT_POLICIES,
        OID_AIA,
    }
)
#: CRL extensions understood (issuingDistributionPoint, which scopes the CRL, and indirect
#: CRLs are not supported; deltaCRLIndicator marks a delta CRL, which is only used on top
#: of a complete CRL, never as one).
UNDERSTOOD_CRL_EXTENSIONS = frozenset(
    {
        OID_CRL_NUMBER,
        OID_AUTHORITY_KEY_ID,
        OID_ISSUER_ALT_NAME,
        OID_AIA,
        OID_DELTA_CRL,
        OID_FRESHEST_CRL,
    }
)
UNDERSTOOD_CRL_ENTRY_EXTENSIONS = frozenset({OID_CRL_REASON, OID_INVALIDITY_DATE})


def extension_map(extensions: Any, what: str) -> dict[str, tuple[bool, Any]]:
    """dotted OID → (critical, parsed value) for a SEQUENCE OF Extension; a repeated
    extension is a DecodeError (RFC 5280 §4.2)."""
    out: dict[str, tuple[bool, Any]] = {}
    if extensions is None or isinstance(extensions, core.Void):
        return out
    for ext in extensions:
        oid = ext["extn_id"].dotted
        if oid in out:
            raise DecodeError(f"{what} has extension {oid} more than once")
        try:
            value = ext["extn_value"].parsed
        except Exception as exc:  # asn1crypto: ValueError/TypeError on a bad value
            raise DecodeError(f"{what}: malformed extension {oid}: {type(exc).__name__}") from None
        out[oid] = (bool(ext["critical"].native), value)
    return out


def general_names(values: Any) -> tuple[str, ...]:
    """The dNSName, rfc822Name, URI and iPAddress entries of GeneralNames, as strings."""
    out = []
    for gn in values:
        if gn.name in ("dns_name", "rfc822_name", "uniform_resource_identifier", "ip_address"):
            out.append(str(gn.native))
    return tuple(out)


#: kinds of :func:`typed_general_names` entries besides the four string kinds: the
#: asn1crypto name of the GeneralName choice (``other_name``, ``directory_name``, …)
SAN_KINDS = ("dns", "ip", "email", "uri")


def typed_general_names(values: Any) -> tuple[tuple[str, str], ...]:
    """Every GeneralName as ``(kind, value)``: ``dns`` / ``email`` / ``uri`` with their
    text, ``ip`` with the address in compressed form (from the octets; 4 or 16 of them,
    DecodeError otherwise), and any other choice as ``(asn1crypto choice name, "")``."""
    try:
        return _typed_general_names(values)
    except DecodeError:
        raise
    except Exception as exc:  # asn1crypto: a non-ASCII IA5String, a bad choice
        raise DecodeError(f"malformed subjectAltName ({type(exc).__name__})") from None


def _typed_general_names(values: Any) -> tuple[tuple[str, str], ...]:
    out = []
    text = {"dns_name": "dns", "rfc822_name": "email", "uniform_resource_identifier": "uri"}
    for gn in values:
        kind = gn.name
        if kind in text:
            # the IA5String octets as written (asn1crypto's native value turns A-labels
            # into U-labels, which is not what a peer compares)
            raw = bytes(gn.chosen.contents)
            if not raw.isascii():
                raise DecodeError("subjectAltName: an IA5String holds a non-ASCII octet")
            out.append((text[kind], raw.decode("ascii")))
        elif kind == "ip_address":
            raw = bytes(gn.chosen.contents)
            if len(raw) not in (4, 16):
                raise DecodeError("subjectAltName iPAddress must hold 4 or 16 octets")
            out.append(("ip", str(ipaddress.ip_address(raw))))
        else:
            out.append((str(kind), ""))
    return tuple(out)


def distribution_point_urls(points: Any) -> tuple[str, ...]:
    """The URIs of the fullName of each DistributionPoint (cRLDistributionPoints,
    freshestCRL)."""
    urls: list[str] = []
    for dp in points:
        dpn = dp["distribution_point"]
        if not isinstance(dpn, core.Void) and dpn.name == "full_name":
            urls.extend(
                str(gn.native) for gn in dpn.chosen if gn.name == "uniform_resource_identifier"
            )
    return tuple(urls)


def distribution_points(urls: Any, what: str) -> list[dict[str, Any]]:
    """One DistributionPoint whose fullName lists ``urls`` (asn1crypto native form)."""
    if isinstance(urls, str):
        raise PolicyError(f"{what} must be a sequence of strings")
    for url in urls:
        if not isinstance(url, str) or "://" not in url or not url.isascii():
            raise PolicyError(f"{what}: {url!r} must be an ASCII URI")
    return [
        {
            "distribution_point": x509.DistributionPointName(
                name="full_name",
                value=[x509.GeneralName(name="uniform_resource_identifier", value=u) for u in urls],
            )
        }
    ]


_DNS_RE = re.compile(r"^(\*\.)?([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}\.?$")


def general_name(value: str) -> x509.GeneralName:
    """A SAN entry from a string: ``scheme://...`` → URI, ``x@y`` → rfc822Name, an IP
    address → iPAddress, anything else a dNSName."""
    if not isinstance(value, str) or not value:
        raise PolicyError("subject alternative names must be non-empty strings")
    if not value.isascii():
        raise PolicyError(f"subject alternative name {value!r} must be ASCII (IDNA-encode it)")
    if "://" in value:
        return x509.GeneralName(name="uniform_resource_identifier", value=value)
    if "@" in value:
        return x509.GeneralName(name="rfc822_name", value=value)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return x509.GeneralName(name="ip_address", value=value)
    if not _DNS_RE.match(value):
        raise PolicyError(f"{value!r} is not a DNS name, e-mail address, URI or IP address")
    return x509.GeneralName(name="dns_name", value=value)


def eku_oid(value: str) -> str:
    """Dotted OID of an EKU given as an asn1crypto name or a dotted OID."""
    if not isinstance(value, str) or not value:
        raise PolicyError("extended key usage must be a non-empty string")
    if re.fullmatch(r"\d+(\.\d+)+", value):
        return value
    try:
        return str(x509.KeyPurposeId.unmap(value))
    except ValueError:
        raise PolicyError(f"unknown extended key usage {value!r}") from None


def eku_name(oid: str) -> str:
    """asn1crypto name of a dotted EKU OID, or the OID when it has none."""
    return str(x509.KeyPurposeId.map(oid))


KEY_USAGE_NAMES = frozenset(
    {
        "digital_signature",
        "non_repudiation",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    }
)


def load_spki_key(spki: SubjectPublicKeyInfo, what: str) -> SM2PublicKey:
    """The SM2 key of a parsed SubjectPublicKeyInfo (either algorithm form)."""
    from mstcrypt.formats.keys import public_key_from_der

    try:
        return public_key_from_der(spki.dump())
    except UnsupportedError as exc:
        raise UnsupportedError(f"{what}: {exc}") from None
    except DecodeError as exc:
        raise DecodeError(f"{what}: {exc}") from None
