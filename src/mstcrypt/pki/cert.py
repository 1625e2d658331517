"""X.509 v3 certificates with SM2 keys and SM2-with-SM3 signatures (GM/T 0015).

:class:`Certificate` is an immutable view of one parsed certificate; parsing is strict
(canonical DER, no trailing bytes, no repeated extension) and the public key must be
SM2, in either algorithm form (id-ecPublicKey + sm2p256v1, or the bare SM2 OID).
:func:`build_certificate` issues one through a :data:`Signer`, so the CA key can stay in
a cryptographic module.

What we write: version 3; signatureAlgorithm 1.2.156.10197.1.501 with parameters
absent; SubjectPublicKeyInfo id-ecPublicKey + sm2p256v1; subjectKeyIdentifier = SM3 of
the subjectPublicKey bits (32 bytes, GmSSL's method; see
:func:`mstcrypt.pki.key_identifier`); authorityKeyIdentifier = the issuer's SKI (taken
from the issuer certificate when one is given, otherwise computed the same way from
``issuer_public_key``); keyUsage (critical); basicConstraints (critical for CAs);
extendedKeyUsage; certificatePolicies when the profile names policies;
id-pkix-ocsp-nocheck for the OCSP signer profile; subjectAltName and
cRLDistributionPoints when given.

End-entity certificates carry no basicConstraints at all (RFC 5280 §4.2.1.9 allows
that): the DER of ``CA:FALSE`` is an empty SEQUENCE, which GmSSL 3.x rejects
(x509_basic_constraints_from_der), so writing it would make our TLCP and TLS
certificates unusable with GmSSL peers.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any

from asn1crypto import core, x509

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import DecodeError, PolicyError, VerificationError
from mstcrypt.formats._der import load_strict, pem_decode, pem_encode
from mstcrypt.formats.keys import SubjectPublicKeyInfo, public_key_to_der
from mstcrypt.pki import _common as c
from mstcrypt.pki.errors import CertificateError
from mstcrypt.pki.names import name_to_str, names_equal
from mstcrypt.pki.profiles import Profile, spec

__all__ = [
    "Certificate",
    "build_certificate",
    "load_certificates",
]

ExtraExtension = x509.Extension | tuple[str, bool, bytes]


#: Parsed certificates by DER, least recently used first (bounded; see from_der).
_PARSED: OrderedDict[bytes, Certificate] = OrderedDict()
_PARSED_MAX = 2048
_PARSED_LOCK = threading.Lock()


class Certificate:
    """An immutable, strictly parsed X.509 certificate with an SM2 public key.

    Build one with :meth:`from_der` / :meth:`from_pem` or :func:`build_certificate`.
    Equality and hashing are by DER encoding.
    """

    # Only bytes, strings, numbers and flat tuples of them, besides the public key: the
    # memo holds up to _PARSED_MAX certificates for the life of a server, and an
    # asn1crypto tree kept per certificate (about a hundred objects each) made every full
    # pass of the cyclic garbage collector walk some 250k objects (60-120 ms, every thread
    # paused, a write transaction held meanwhile). Rare accessors re-load the DER.
    __slots__ = (
        "_aki",
        "_cns",
        "_crl_urls",
        "_der",
        "_eku",
        "_ext_critical",
        "_freshest_crl_urls",
        "_is_ca",
        "_issuer_der",
        "_issuer_str",
        "_ku",
        "_not_after",
        "_not_before",
        "_path_len",
        "_policies",
        "_public_key",
        "_san",
        "_san_entries",
        "_serial",
        "_sig_alg",
        "_signature",
        "_ski",
        "_spki_der",
        "_subject_der",
        "_subject_str",
        "_tbs_der",
        "_version",
    )

    def __init__(self, *_: object, **__: object) -> None:
        raise TypeError("use Certificate.from_der() / from_pem() or build_certificate()")

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_der(cls, der: bytes) -> Certificate:
        """Parse one DER certificate. Raises DecodeError when malformed, not canonical DER
        or followed by trailing bytes; UnsupportedError when the key is not SM2 or the
        signature algorithm is not SM2-with-SM3. Parsed certificates are immutable and
        memoised by their DER (servers see the same few certificates again and again):
        the last ``_PARSED_MAX`` used are kept, with their public key objects (and so
        the native key and Z value built for them)."""
        if isinstance(der, bytes | bytearray | memoryview):
            key = bytes(der)
            hit = _PARSED.get(key)
            if hit is not None:
                with _PARSED_LOCK:
                    if key in _PARSED:
                        _PARSED.move_to_end(key)
                return hit
        cert = cls._parse(der)
        with _PARSED_LOCK:
            _PARSED[cert._der] = cert
            _PARSED.move_to_end(cert._der)
            while len(_PARSED) > _PARSED_MAX:
                _PARSED.popitem(last=False)
        return cert

    @classmethod
    def _parse(cls, der: bytes) -> Certificate:
        asn1 = load_strict(c.X509Certificate, der, "certificate")
        self = object.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(self, "_der", bytes(der))
        tbs = asn1["tbs_certificate"]
        c.check_signature_algorithm(asn1["signature_algorithm"], "certificate")
        if tbs["signature"].dump() != asn1["signature_algorithm"].dump():
            raise DecodeError("certificate: signature algorithm differs inside and outside tbs")
        version = tbs["version"].native
        setattr_(self, "_version", {"v1": 1, "v2": 2, "v3": 3}[version])
        setattr_(self, "_tbs_der", bytes(tbs.dump()))
        setattr_(self, "_signature", bytes(asn1["signature_value"].native))
        setattr_(self, "_sig_alg", str(asn1["signature_algorithm"]["algorithm"].dotted))
        setattr_(self, "_spki_der", bytes(tbs["subject_public_key_info"].dump()))
        exts_asn1 = tbs["extensions"]
        has_exts = not isinstance(exts_asn1, core.Void) and len(exts_asn1) > 0
        if has_exts and version != "v3":
            raise DecodeError("certificate: extensions are only allowed in version 3")
        if version == "v1" and (
            not isinstance(tbs["issuer_unique_id"], core.Void)
            or not isinstance(tbs["subject_unique_id"], core.Void)
        ):
            raise DecodeError("certificate: unique identifiers are not allowed in version 1")
        setattr_(self, "_serial", int(tbs["serial_number"].native))
        setattr_(self, "_not_before", c.from_time(tbs["validity"]["not_before"]))
        setattr_(self, "_not_after", c.from_time(tbs["validity"]["not_after"]))
        setattr_(
            self, "_public_key", c.load_spki_key(tbs["subject_public_key_info"], "certificate")
        )
        setattr_(self, "_subject_str", name_to_str(tbs["subject"]))
        setattr_(self, "_issuer_str", name_to_str(tbs["issuer"]))
        setattr_(self, "_subject_der", bytes(tbs["subject"].dump()))
        setattr_(self, "_issuer_der", bytes(tbs["issuer"].dump()))
        setattr_(
            self,
            "_cns",
            tuple(
                str(atv["value"].native)
                for rdn in tbs["subject"].chosen
                for atv in rdn
                if atv["type"].native == "common_name"
            ),
        )
        exts = c.extension_map(exts_asn1 if has_exts else None, "certificate")
        setattr_(self, "_ext_critical", {oid: crit for oid, (crit, _) in exts.items()})
        self._read_extensions(exts)
        return self

    def _read_extensions(self, exts: dict[str, tuple[bool, Any]]) -> None:
        setattr_ = object.__setattr__
        try:
            ku = exts.get(c.OID_KEY_USAGE)
            setattr_(self, "_ku", frozenset(ku[1].native) if ku else frozenset())
            bc = exts.get(c.OID_BASIC_CONSTRAINTS)
            is_ca = bool(bc and bc[1]["ca"].native)
            path_len = bc[1]["path_len_constraint"].native if bc else None
            if path_len is not None and path_len < 0:
                raise DecodeError("certificate: negative pathLenConstraint")
            setattr_(self, "_is_ca", is_ca)
            setattr_(self, "_path_len", path_len if is_ca else None)
            eku = exts.get(c.OID_EXT_KEY_USAGE)
            setattr_(self, "_eku", tuple(c.eku_name(p.dotted) for p in eku[1]) if eku else ())
            ski = exts.get(c.OID_SUBJECT_KEY_ID)
            setattr_(self, "_ski", bytes(ski[1].native) if ski else None)
            aki = exts.get(c.OID_AUTHORITY_KEY_ID)
            aki_id = aki[1]["key_identifier"].native if aki else None
            setattr_(self, "_aki", bytes(aki_id) if aki_id is not None else None)
            pol = exts.get(c.OID_CERT_POLICIES)
            setattr_(
                self,
                "_policies",
                tuple(p["policy_identifier"].dotted for p in pol[1]) if pol else (),
            )
            san = exts.get(c.OID_SUBJECT_ALT_NAME)
            setattr_(self, "_san", c.general_names(san[1]) if san else ())
            setattr_(self, "_san_entries", c.typed_general_names(san[1]) if san else ())
            dps = exts.get(c.OID_CRL_DP)
            setattr_(self, "_crl_urls", c.distribution_point_urls(dps[1]) if dps else ())
            fresh = exts.get(c.OID_FRESHEST_CRL)
            setattr_(
                self, "_freshest_crl_urls", c.distribution_point_urls(fresh[1]) if fresh else ()
            )
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"certificate: malformed extension ({type(exc).__name__})") from None

    @classmethod
    def from_pem(cls, pem: bytes | str) -> Certificate:
        """Parse the first ``CERTIFICATE`` PEM block of ``pem``."""
        _, der = pem_decode(pem, ("CERTIFICATE",))
        return cls.from_der(der)

    @classmethod
    def load(cls, data: bytes | str) -> Certificate:
        """PEM or DER, detected."""
        raw = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
        if raw.lstrip().startswith(b"-----BEGIN"):
            return cls.from_pem(raw)
        return cls.from_der(raw)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Certificate is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Certificate is immutable")

    # --- encodings ----------------------------------------------------------------------

    @property
    def der(self) -> bytes:
        return self._der

    @property
    def pem(self) -> bytes:
        return pem_encode(self._der, "CERTIFICATE")

    @property
    def tbs_der(self) -> bytes:
        """The DER tbsCertificate, the bytes the issuer signed."""
        return self._tbs_der

    @property
    def signature(self) -> bytes:
        """The DER SM2Signature in signatureValue."""
        return self._signature

    @property
    def signature_algorithm(self) -> str:
        return self._sig_alg

    @property
    def fingerprint(self) -> str:
        """SM3 of the DER certificate, lower-case hex."""
        return c.sm3_hex(self._der)

    @property
    def asn1(self) -> x509.Certificate:
        """A fresh asn1crypto object of this certificate (a copy: changing it does not
        change this Certificate)."""
        return c.X509Certificate.load(self._der)

    # --- fields -------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """1, 2 or 3."""
        return self._version

    @property
    def subject(self) -> x509.Name:
        """A fresh asn1crypto Name (a copy, as :attr:`asn1`)."""
        return x509.Name.load(self._subject_der)

    @property
    def issuer(self) -> x509.Name:
        return x509.Name.load(self._issuer_der)

    @property
    def subject_str(self) -> str:
        return self._subject_str

    @property
    def issuer_str(self) -> str:
        return self._issuer_str

    @property
    def serial(self) -> int:
        return self._serial

    @property
    def not_before(self) -> datetime:
        return self._not_before

    @property
    def not_after(self) -> datetime:
        return self._not_after

    @property
    def public_key(self) -> SM2PublicKey:
        return self._public_key

    @property
    def public_key_der(self) -> bytes:
        """The SubjectPublicKeyInfo DER exactly as it appears in the certificate."""
        return self._spki_der

    @property
    def key_usage(self) -> frozenset[str]:
        """asn1crypto KeyUsage names; empty when the extension is absent."""
        return self._ku

    @property
    def extended_key_usage(self) -> tuple[str, ...]:
        """asn1crypto KeyPurposeId names (dotted OIDs for unnamed ones); empty when the
        extension is absent."""
        return self._eku

    @property
    def is_ca(self) -> bool:
        return self._is_ca

    @property
    def path_len(self) -> int | None:
        return self._path_len

    @property
    def subject_key_id(self) -> bytes | None:
        return self._ski

    @property
    def authority_key_id(self) -> bytes | None:
        return self._aki

    @property
    def subject_alt_names(self) -> tuple[str, ...]:
        """The dNSName, rfc822Name, URI and iPAddress entries as strings (their kinds
        are in :attr:`subject_alt_name_entries`)."""
        return self._san

    @property
    def subject_alt_name_entries(self) -> tuple[tuple[str, str], ...]:
        """Every subjectAltName entry as ``(kind, value)``: kind ``dns``, ``ip``
        (compressed address), ``email``, ``uri``, or the asn1crypto name of another
        GeneralName choice with an empty value."""
        return self._san_entries

    @property
    def has_subject_alt_name(self) -> bool:
        """The certificate has a subjectAltName extension (of any content)."""
        return c.OID_SUBJECT_ALT_NAME in self._ext_critical

    @property
    def dns_names(self) -> tuple[str, ...]:
        """The dNSName entries, as written."""
        return tuple(v for k, v in self._san_entries if k == "dns")

    @property
    def ip_addresses(self) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
        """The iPAddress entries."""
        return tuple(ipaddress.ip_address(v) for k, v in self._san_entries if k == "ip")

    @property
    def common_names(self) -> tuple[str, ...]:
        """The subject's commonName values, in order."""
        return self._cns

    @property
    def policies(self) -> tuple[str, ...]:
        """certificatePolicies identifiers (dotted OIDs); empty when absent."""
        return self._policies

    @property
    def crl_urls(self) -> tuple[str, ...]:
        return self._crl_urls

    @property
    def freshest_crl_urls(self) -> tuple[str, ...]:
        """Where the issuer's delta CRLs are published (freshestCRL, RFC 5280 §4.2.1.15)."""
        return self._freshest_crl_urls

    @property
    def extensions(self) -> Mapping[str, bool]:
        """dotted OID → critical, for every extension present."""
        return MappingProxyType(self._ext_critical)

    def extension_value(self, oid: str) -> bytes | None:
        """The DER extnValue contents of extension ``oid``, or None."""
        if oid not in self._ext_critical:
            return None
        exts = c.X509Certificate.load(self._der)["tbs_certificate"]["extensions"]
        for ext in exts:
            if ext["extn_id"].dotted == oid:
                return bytes(ext["extn_value"].contents)
        return None

    @property
    def unsupported_critical_extensions(self) -> tuple[str, ...]:
        """Critical extensions that validation does not understand (dotted OIDs)."""
        return tuple(
            oid
            for oid, crit in self._ext_critical.items()
            if crit and oid not in c.UNDERSTOOD_CERT_EXTENSIONS
        )

    # --- checks -------------------------------------------------------------------------

    def issued_by_name(self, issuer: Certificate) -> bool:
        """True when this certificate's issuer name equals ``issuer``'s subject name
        (RFC 5280 §7.1 comparison)."""
        if self._issuer_der == issuer._subject_der:
            return True
        return names_equal(x509.Name.load(self._issuer_der), x509.Name.load(issuer._subject_der))

    def is_self_issued(self) -> bool:
        """Subject and issuer names are equal (RFC 5280 §6.1: self-issued)."""
        return self.issued_by_name(self)

    def is_self_signed(self) -> bool:
        """Self-issued and the signature verifies with the certificate's own key."""
        if not self.is_self_issued():
            return False
        try:
            self.verify_signature(self._public_key)
        except CertificateError:
            return False
        return True

    def verify_signature(self, issuer_public_key: SM2PublicKey) -> None:
        """Check the SM2-with-SM3 signature (default ID, Z from ``issuer_public_key``).
        Raises CertificateError("bad_signature")."""
        if not isinstance(issuer_public_key, SM2PublicKey):
            raise PolicyError("issuer_public_key must be an SM2PublicKey")
        try:
            issuer_public_key.verify(self.signature, self.tbs_der)
        except VerificationError:
            raise CertificateError(
                "bad_signature",
                "certificate signature does not verify with the issuer key",
                certificate=self._subject_str,
            ) from None

    def is_valid_at(self, at: datetime) -> bool:
        at = c.utc(at, "at")
        return self._not_before <= at <= self._not_after

    # --- dunder -------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Certificate):
            return NotImplemented
        return self._der == other._der

    def __hash__(self) -> int:
        return hash(self._der)

    def __repr__(self) -> str:
        return (
            f"Certificate(subject={self._subject_str!r}, issuer={self._issuer_str!r}, "
            f"serial={self._serial:#x})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (Certificate.from_der, (self._der,))


_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.DOTALL
)


def load_certificates(data: bytes | str) -> list[Certificate]:
    """Every ``CERTIFICATE`` block of a PEM bundle (a chain file, a CA bundle), in order;
    a single DER certificate is accepted too. Raises DecodeError when none is found."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
    if b"-----BEGIN" not in raw:
        return [Certificate.from_der(raw)]
    out = []
    for m in _PEM_CERT_RE.finditer(raw):
        body = m.group(1)
        if b":" in body:
            raise DecodeError("PEM certificate block has headers")
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except ValueError:
            raise DecodeError("PEM certificate block is not valid base64") from None
        out.append(Certificate.from_der(der))
    if not out:
        raise DecodeError("no CERTIFICATE PEM block found")
    return out


# --- building ---------------------------------------------------------------------------------


def _ext(oid_or_name: str, critical: bool, value: Any) -> x509.Extension:
    return x509.Extension({"extn_id": oid_or_name, "critical": critical, "extn_value": value})


def _extra(ext: ExtraExtension) -> x509.Extension:
    if isinstance(ext, x509.Extension):
        return x509.Extension.load(ext.dump())
    if isinstance(ext, tuple) and len(ext) == 3:
        oid, critical, value = ext
        if not isinstance(oid, str) or not re.fullmatch(r"\d+(\.\d+)+", oid):
            raise PolicyError("extra extension OID must be a dotted string")
        if not isinstance(value, bytes):
            raise PolicyError("extra extension value must be the DER bytes of extnValue")
        core.load(value, strict=True)  # must be one well-formed DER value
        out = x509.Extension({"extn_id": oid, "critical": bool(critical)})
        out["extn_value"] = core.ParsableOctetString(value)
        return out
    raise PolicyError("extra_extensions items must be x509.Extension or (oid, critical, der)")


def build_certificate(
    *,
    subject: x509.Name,
    public_key: SM2PublicKey,
    issuer: x509.Name | Certificate,
    issuer_public_key: SM2PublicKey,
    signer: c.Signer,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    profile: Profile | str,
    subject_alt_names: Sequence[str] = (),
    crl_urls: Sequence[str] = (),
    extra_extensions: Iterable[ExtraExtension] = (),
    path_len: int | None = None,
    key_id_method: str = "sm3",
    freshest_crl_urls: Sequence[str] = (),
) -> Certificate:
    """Issue an X.509 v3 certificate for ``public_key`` with the extensions of ``profile``.

    ``issuer`` is the issuer's name, or its :class:`Certificate` (then its subject is the
    issuer name, its SKI becomes the AKI and ``issuer_public_key`` must be its key). For a
    self-signed root pass ``issuer=subject`` and ``issuer_public_key=public_key``.
    ``signer`` signs the DER tbsCertificate (SM2, default ID, issuer key); the result is
    verified with ``issuer_public_key`` before the certificate is returned.
    ``subject_alt_names``: DNS names, e-mail addresses (with ``@``), URIs (with
    ``://``) and IP addresses. ``crl_urls`` become one cRLDistributionPoints entry,
    ``freshest_crl_urls`` (where the issuer's delta CRLs are) one freshestCRL entry.
    ``extra_extensions``: asn1crypto ``x509.Extension`` values or
    ``(dotted_oid, critical, extnValue_der)``. ``path_len`` overrides the profile's
    pathLenConstraint for a CA. ``key_id_method``: ``"sm3"`` (default) or ``"sha1"``,
    see :func:`mstcrypt.pki.key_identifier`.

    Raises PolicyError for invalid arguments (serial not positive or over 20 bytes,
    naive or inverted validity, bad names, a signer that does not match the key).
    """
    prof = spec(profile)
    if not isinstance(subject, x509.Name):
        raise PolicyError("subject must be an asn1crypto.x509.Name (see pki.name())")
    if not isinstance(public_key, SM2PublicKey) or not isinstance(issuer_public_key, SM2PublicKey):
        raise PolicyError("public_key and issuer_public_key must be SM2PublicKey")
    aki: bytes
    if isinstance(issuer, Certificate):
        if issuer.public_key != issuer_public_key:
            raise PolicyError("issuer_public_key is not the key of the issuer certificate")
        issuer_name = issuer.subject
        aki = issuer.subject_key_id or c.key_identifier(issuer_public_key, key_id_method)
    elif isinstance(issuer, x509.Name):
        issuer_name = issuer
        aki = c.key_identifier(issuer_public_key, key_id_method)
    else:
        raise PolicyError("issuer must be an asn1crypto.x509.Name or a Certificate")
    c.check_serial(serial)
    nb = c.utc(not_before, "not_before")
    na = c.utc(not_after, "not_after")
    if na <= nb:
        raise PolicyError("not_after must be later than not_before")
    if path_len is not None:
        if not prof.is_ca:
            raise PolicyError("path_len is only meaningful for a CA profile")
        if not isinstance(path_len, int) or path_len < 0:
            raise PolicyError("path_len must be a non-negative int")
    pl = path_len if path_len is not None else prof.path_len

    exts = []
    if prof.is_ca:
        bc: dict[str, Any] = {"ca": True}
        if pl is not None:
            bc["path_len_constraint"] = pl
        exts.append(_ext("basic_constraints", True, bc))
    exts.append(_ext("key_usage", True, set(prof.key_usage)))
    if prof.extended_key_usage:
        exts.append(
            _ext("extended_key_usage", False, [c.eku_oid(e) for e in prof.extended_key_usage])
        )
    if prof.policies:
        exts.append(
            _ext(
                "certificate_policies",
                False,
                [{"policy_identifier": oid} for oid in prof.policies],
            )
        )
    if prof.ocsp_nocheck:
        exts.append(_ext("ocsp_no_check", False, None))
    exts.append(_ext("key_identifier", False, c.key_identifier(public_key, key_id_method)))
    exts.append(_ext("authority_key_identifier", False, {"key_identifier": aki}))
    if subject_alt_names:
        if isinstance(subject_alt_names, str):
            raise PolicyError("subject_alt_names must be a sequence of strings")
        exts.append(_ext("subject_alt_name", False, [c.general_name(v) for v in subject_alt_names]))
    if crl_urls:
        exts.append(
            _ext("crl_distribution_points", False, c.distribution_points(crl_urls, "crl_urls"))
        )
    if freshest_crl_urls:
        exts.append(
            _ext(
                "freshest_crl", False, c.distribution_points(freshest_crl_urls, "freshest_crl_urls")
            )
        )
    seen = {e["extn_id"].dotted for e in exts}
    for extra in extra_extensions:
        ext = _extra(extra)
        oid = ext["extn_id"].dotted
        if oid in seen:
            raise PolicyError(f"extension {oid} is already set by the profile")
        seen.add(oid)
        exts.append(ext)

    spki = SubjectPublicKeyInfo.load(public_key_to_der(public_key))
    tbs = c.TbsCertificate(
        {
            "version": "v3",
            "serial_number": serial,
            "signature": c.sm2_with_sm3(),
            "issuer": x509.Name.load(issuer_name.dump()),
            "validity": {
                "not_before": c.to_time(nb, "not_before"),
                "not_after": c.to_time(na, "not_after"),
            },
            "subject": x509.Name.load(subject.dump()),
            "subject_public_key_info": spki,
            "extensions": exts,
        }
    )
    # freshly built values encode once (no forced re-encoding); the strict parse of the
    # finished certificate below is what guarantees canonical DER
    tbs_der = bytes(tbs.dump())
    sig = c.sign(tbs_der, signer, issuer_public_key, "certificate")
    try:
        return Certificate.from_der(c.signed_der(tbs_der, sig))
    except DecodeError as exc:  # e.g. an extra extension that is not canonical DER
        raise PolicyError(f"the certificate built is not valid: {exc}") from None
