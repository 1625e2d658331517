"""PKCS#10 certification requests (RFC 2986) with SM2 keys, signed with SM2-with-SM3 and
the default ID 1234567812345678 (the ID OpenSSL needs as ``-sigopt distid:...``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asn1crypto import core, x509
from asn1crypto import csr as _csr

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import DecodeError, PolicyError, VerificationError
from mstcrypt.formats._der import dump, load_strict, pem_decode, pem_encode
from mstcrypt.formats.keys import SubjectPublicKeyInfo, public_key_to_der
from mstcrypt.pki import _common as c
from mstcrypt.pki.errors import CertificateError
from mstcrypt.pki.names import name_to_str

__all__ = ["CertificationRequest", "build_csr"]

_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"


class CertificationRequest:
    """An immutable, strictly parsed PKCS#10 request with an SM2 public key.

    The self-signature is not checked on parsing; call :meth:`verify`.
    """

    __slots__ = ("_asn1", "_der", "_exts", "_public_key", "_subject_str")

    def __init__(self, *_: object, **__: object) -> None:
        raise TypeError("use CertificationRequest.from_der() / from_pem() or build_csr()")

    @classmethod
    def from_der(cls, der: bytes) -> CertificationRequest:
        """Parse one DER request (DecodeError when malformed or not canonical,
        UnsupportedError when the key is not SM2 or the algorithm not SM2-with-SM3)."""
        asn1 = load_strict(c.CertificationRequestAsn1, der, "certification request")
        c.check_signature_algorithm(asn1["signature_algorithm"], "certification request")
        info = asn1["certification_request_info"]
        if info["version"].native != "v1":
            raise DecodeError("certification request version must be v1 (0)")
        self = object.__new__(cls)
        set_ = object.__setattr__
        set_(self, "_der", bytes(der))
        set_(self, "_asn1", asn1)
        set_(self, "_public_key", c.load_spki_key(info["subject_pk_info"], "certification request"))
        set_(self, "_subject_str", name_to_str(info["subject"]))
        exts: dict[str, tuple[bool, Any]] = {}
        attrs = info["attributes"]
        for attr in () if isinstance(attrs, core.Void) else attrs:
            if attr["type"].dotted != _EXTENSION_REQUEST:
                continue
            if exts:
                raise DecodeError("certification request has more than one extensionRequest")
            values = attr["values"]
            if len(values) != 1:
                raise DecodeError("extensionRequest must hold exactly one Extensions value")
            exts = c.extension_map(values[0], "certification request")
        set_(self, "_exts", exts)
        return self

    @classmethod
    def from_pem(cls, pem: bytes | str) -> CertificationRequest:
        """Parse the first ``CERTIFICATE REQUEST`` (or ``NEW CERTIFICATE REQUEST``) block."""
        _, der = pem_decode(pem, ("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"))
        return cls.from_der(der)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("CertificationRequest is immutable")

    @property
    def der(self) -> bytes:
        return self._der

    @property
    def pem(self) -> bytes:
        return pem_encode(self._der, "CERTIFICATE REQUEST")

    @property
    def subject(self) -> x509.Name:
        return x509.Name.load(self._asn1["certification_request_info"]["subject"].dump())

    @property
    def subject_str(self) -> str:
        return self._subject_str

    @property
    def public_key(self) -> SM2PublicKey:
        return self._public_key

    @property
    def tbs_der(self) -> bytes:
        """The DER certificationRequestInfo (the bytes the subject signed)."""
        return bytes(self._asn1["certification_request_info"].dump())

    @property
    def signature(self) -> bytes:
        return bytes(self._asn1["signature"].native)

    @property
    def signature_algorithm(self) -> str:
        return str(self._asn1["signature_algorithm"]["algorithm"].dotted)

    @property
    def attribute_types(self) -> tuple[str, ...]:
        """Dotted OIDs of the attributes present (e.g. extensionRequest, challengePassword)."""
        attrs = self._asn1["certification_request_info"]["attributes"]
        return tuple(a["type"].dotted for a in (() if isinstance(attrs, core.Void) else attrs))

    @property
    def requested_extensions(self) -> dict[str, bool]:
        """dotted OID → critical, for the extensions in an extensionRequest attribute."""
        return {oid: crit for oid, (crit, _) in self._exts.items()}

    @property
    def subject_alt_names(self) -> tuple[str, ...]:
        """The subjectAltName entries requested (DNS, e-mail, URI, IP), if any."""
        san = self._exts.get(c.OID_SUBJECT_ALT_NAME)
        return c.general_names(san[1]) if san else ()

    @property
    def subject_alt_name_entries(self) -> tuple[tuple[str, str], ...]:
        """Every requested subjectAltName entry as ``(kind, value)``, as in
        :attr:`mstcrypt.pki.Certificate.subject_alt_name_entries` (kinds other than
        ``dns``, ``ip``, ``email`` and ``uri`` included, so a CA can refuse them)."""
        san = self._exts.get(c.OID_SUBJECT_ALT_NAME)
        return c.typed_general_names(san[1]) if san else ()

    def verify(self) -> None:
        """Check the self-signature (SM2-with-SM3, default ID, Z from the requested key).
        Raises CertificateError("bad_signature")."""
        try:
            self._public_key.verify(self.signature, self.tbs_der)
        except VerificationError:
            raise CertificateError(
                "bad_signature",
                "certification request signature does not verify",
                certificate=self._subject_str,
            ) from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CertificationRequest):
            return NotImplemented
        return self._der == other._der

    def __hash__(self) -> int:
        return hash(self._der)

    def __repr__(self) -> str:
        return f"CertificationRequest(subject={self._subject_str!r})"


def build_csr(
    subject: x509.Name,
    public_key: SM2PublicKey,
    signer: c.Signer,
    *,
    subject_alt_names: Sequence[str] = (),
) -> CertificationRequest:
    """A PKCS#10 request for ``public_key``, signed by ``signer`` (the matching private
    key, SM2 with the default ID over the DER certificationRequestInfo). With
    ``subject_alt_names`` an extensionRequest attribute asks for a subjectAltName.
    The signature is checked before the request is returned (PolicyError otherwise)."""
    if not isinstance(subject, x509.Name):
        raise PolicyError("subject must be an asn1crypto.x509.Name (see pki.name())")
    if not isinstance(public_key, SM2PublicKey):
        raise PolicyError("public_key must be an SM2PublicKey")
    attributes = []
    if subject_alt_names:
        if isinstance(subject_alt_names, str):
            raise PolicyError("subject_alt_names must be a sequence of strings")
        san = x509.Extension(
            {
                "extn_id": "subject_alt_name",
                "critical": False,
                "extn_value": [c.general_name(v) for v in subject_alt_names],
            }
        )
        attributes.append({"type": "extension_request", "values": [[san]]})
    info = c.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": x509.Name.load(subject.dump()),
            "subject_pk_info": SubjectPublicKeyInfo.load(public_key_to_der(public_key)),
            "attributes": _csr.CRIAttributes(attributes),
        }
    )
    info_der = dump(info)
    sig = c.sign(info_der, signer, public_key, "certification request")
    req = c.CertificationRequestAsn1(
        {
            "certification_request_info": c.CertificationRequestInfo.load(info_der),
            "signature_algorithm": c.sm2_with_sm3(),
            "signature": sig,
        }
    )
    return CertificationRequest.from_der(dump(req))
