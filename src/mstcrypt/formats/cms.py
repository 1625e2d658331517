"""GM/T 0010 (GB/T 35275) cryptographic message syntax on SM2/SM3/SM4.

Two structures, read and written in DER:

* **SignedData** — SM3 digest, SM2 signature (DER SM2Signature), the signer
  certificate included, signed attributes ``contentType``, ``messageDigest`` (SM3 of
  the content, no Z) and ``signingTime``; the SM2 signature is over DER(SET OF
  attributes) with Z for the default ID ``1234567812345678`` (GM/T 0010 as gmsm and
  Tongsuo read it). Attached or detached.
* **EnvelopedData** — one KeyTransRecipientInfo per recipient (IssuerAndSerialNumber,
  sm2-3 encryption, the 16-byte SM4 content-encryption key as a GM/T 0009 SM2Cipher)
  and SM4-CBC (PKCS#7 padding, 16-byte IV as the OCTET STRING parameter).

Two OID profiles share one codec: :attr:`Profile.GMT0010` (content types under
1.2.156.10197.6.1.4.2) and :attr:`Profile.PKCS7` (RFC 5652 content types with SM
algorithm identifiers, the form OpenSSL/Tongsuo ``cms`` read). Reading detects the
profile from the outer content type and requires the inner one to match.

GmSSL (3.x) differs in ways a reader cannot guess, so they are options, never
defaults (:attr:`SignatureForm.GMSSL`): its signer signs e = SM3(DER(ContentInfo))
with no Z and no signed attributes, and its key-encryption OID is 1.2.156.10197.1.301.2
(accepted when reading in any form, written only in the GmSSL form).

Parsing is strict: canonical DER only, every version, OID and parameter checked,
each failure a typed :mod:`mstcrypt.errors` exception whose message names the field.
This layer checks signatures against the certificate carried in the message; trust
in that certificate (chain, CRL) is the caller's job (:mod:`mstcrypt.pki`).
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any as TAny

from asn1crypto import x509
from asn1crypto.core import (
    Any,
    Choice,
    GeneralizedTime,
    Integer,
    Null,
    ObjectIdentifier,
    OctetString,
    SetOf,
    UTCTime,
    Void,
)
from asn1crypto.core import (
    Sequence as Asn1Sequence,
)

from mstcrypt.crypto import sm4
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import DEFAULT_ID, SM2PublicKey
from mstcrypt.crypto.sm3 import SM3, sm3
from mstcrypt.errors import (
    DecodeError,
    DecryptionError,
    PolicyError,
    SignatureFormatError,
    UnsupportedError,
    VerificationError,
)
from mstcrypt.formats import oids
from mstcrypt.formats._der import dump, load_strict, pem_decode, pem_encode
from mstcrypt.formats.gmt0009 import decode_cipher
from mstcrypt.formats.keys import AlgorithmIdentifier, public_key_from_der

__all__ = [
    "ContentEncryptor",
    "EnvelopeStream",
    "EnvelopedData",
    "PlaintextReader",
    "Profile",
    "RecipientRef",
    "SignatureForm",
    "SignedData",
    "SignedStream",
    "SignerView",
    "VerifiedSigner",
    "decrypt",
    "encrypt",
    "envelope_header",
    "load",
    "pem",
    "sign",
    "sign_digest",
    "signed_stream_parts",
    "verify",
]

PEM_LABELS = ("CMS", "PKCS7")

# --- OIDs -------------------------------------------------------------------------

GM_DATA = "1.2.156.10197.6.1.4.2.1"
GM_SIGNED = "1.2.156.10197.6.1.4.2.2"
GM_ENVELOPED = "1.2.156.10197.6.1.4.2.3"
P7_DATA = "1.2.840.113549.1.7.1"
P7_SIGNED = "1.2.840.113549.1.7.2"
P7_ENVELOPED = "1.2.840.113549.1.7.3"

ATTR_CONTENT_TYPE = "1.2.840.113549.1.9.3"
ATTR_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
ATTR_SIGNING_TIME = "1.2.840.113549.1.9.5"

_SIG_ALGS = (oids.SM2_SIGN, oids.SM2_WITH_SM3)
_KEY_ENC_ALGS = (oids.SM2_ENCRYPT, oids.SM2_EXCHANGE)  # GmSSL writes 301.2 for sm2encrypt
_CONTENT_ENC_ALGS = (oids.SM4_CBC, oids.SM4)  # CFCA writes the bare SM4 OID for CBC


class Profile(enum.StrEnum):
    """Which content-type OIDs a message uses."""

    GMT0010 = "gmt0010"  #: 1.2.156.10197.6.1.4.2.x (GM/T 0010, GmSSL, gmsm)
    PKCS7 = "pkcs7"  #: 1.2.840.113549.1.7.x with SM algorithms (OpenSSL, Tongsuo)


class SignatureForm(enum.StrEnum):
    """How the SM2 signature input is formed."""

    STANDARD = "standard"  #: SM2 with Z over DER(signed attributes) (GM/T 0010)
    GMSSL = "gmssl"  #: GmSSL 3.x: e = SM3(DER(ContentInfo)), no Z, no attributes


_TYPES = {
    Profile.GMT0010: {"data": GM_DATA, "signed": GM_SIGNED, "enveloped": GM_ENVELOPED},
    Profile.PKCS7: {"data": P7_DATA, "signed": P7_SIGNED, "enveloped": P7_ENVELOPED},
}
_OUTER = {
    GM_SIGNED: (Profile.GMT0010, "signed"),
    GM_ENVELOPED: (Profile.GMT0010, "enveloped"),
    P7_SIGNED: (Profile.PKCS7, "signed"),
    P7_ENVELOPED: (Profile.PKCS7, "enveloped"),
}

# --- ASN.1 ------------------------------------------------------------------------


class ContentInfo(Asn1Sequence):
    """The inner ContentInfo of SignedData: content type data, content an OCTET STRING
    (absent when detached). The outer ContentInfo ([0] EXPLICIT ANY) is read by
    :func:`_outer`."""

    _fields = [
        ("content_type", ObjectIdentifier),
        ("content", OctetString, {"explicit": 0, "optional": True}),
    ]


class _Opaque(Asn1Sequence):
    """A constructed element this codec refuses by name (crls, originatorInfo, kari…):
    its contents are not parsed and it dumps exactly as read."""

    _fields: list[tuple[str, TAny]] = []

    def _parse_children(self, recurse: bool = False) -> None:
        del recurse
        self.children = []

    @property
    def native(self) -> None:  # type: ignore[override]
        return None

    def dump(self, force: bool = False) -> bytes:
        del force
        return bytes((self._header or b"") + (self.contents or b"") + (self._trailer or b""))


class _OpaqueSet(SetOf):
    _child_spec = _Opaque


class AlgorithmIdentifiers(SetOf):
    _child_spec = AlgorithmIdentifier


class CertificateSet(SetOf):
    _child_spec = x509.Certificate


class AnySet(SetOf):
    _child_spec = Any


class Attribute(Asn1Sequence):
    _fields = [("type", ObjectIdentifier), ("values", AnySet)]


class Attributes(SetOf):
    _child_spec = Attribute


class IssuerAndSerialNumber(Asn1Sequence):
    _fields = [("issuer", x509.Name), ("serial_number", Integer)]


class SignerIdentifier(Choice):
    _alternatives = [
        ("issuer_and_serial_number", IssuerAndSerialNumber),
        ("subject_key_identifier", OctetString, {"implicit": 0}),
    ]


class SignerInfo(Asn1Sequence):
    _fields = [
        ("version", Integer),
        ("sid", SignerIdentifier),
        ("digest_algorithm", AlgorithmIdentifier),
        ("signed_attrs", Attributes, {"implicit": 0, "optional": True}),
        ("signature_algorithm", AlgorithmIdentifier),
        ("signature", OctetString),
        ("unsigned_attrs", Attributes, {"implicit": 1, "optional": True}),
    ]


class SignerInfos(SetOf):
    _child_spec = SignerInfo


class SignedDataAsn1(Asn1Sequence):
    _fields = [
        ("version", Integer),
        ("digest_algorithms", AlgorithmIdentifiers),
        ("content_info", ContentInfo),
        ("certificates", CertificateSet, {"implicit": 0, "optional": True}),
        ("crls", _OpaqueSet, {"implicit": 1, "optional": True}),
        ("signer_infos", SignerInfos),
    ]


class KeyTransRecipientInfo(Asn1Sequence):
    _fields = [
        ("version", Integer),
        ("rid", SignerIdentifier),
        ("key_encryption_algorithm", AlgorithmIdentifier),
        ("encrypted_key", OctetString),
    ]


class EncryptedContentInfo(Asn1Sequence):
    _fields = [
        ("content_type", ObjectIdentifier),
        ("content_encryption_algorithm", AlgorithmIdentifier),
        ("encrypted_content", OctetString, {"implicit": 0, "optional": True}),
        ("shared_info1", OctetString, {"implicit": 1, "optional": True}),
        ("shared_info2", OctetString, {"implicit": 2, "optional": True}),
    ]


class RecipientInfo(Choice):
    _alternatives = [
        ("ktri", KeyTransRecipientInfo),
        ("kari", _Opaque, {"implicit": 1}),
        ("kekri", _Opaque, {"implicit": 2}),
        ("pwri", _Opaque, {"implicit": 3}),
        ("ori", _Opaque, {"implicit": 4}),
    ]


class RecipientInfos(SetOf):
    _child_spec = RecipientInfo


class EnvelopedDataAsn1(Asn1Sequence):
    _fields = [
        ("version", Integer),
        ("originator_info", _Opaque, {"implicit": 0, "optional": True}),
        ("recipient_infos", RecipientInfos),
        ("encrypted_content_info", EncryptedContentInfo),
        ("unprotected_attrs", _Opaque, {"implicit": 1, "optional": True}),
    ]


# --- helpers ----------------------------------------------------------------------

_NULL = dump(Null())

DigestSigner = Callable[[bytes], bytes]
"""Signs a 32-byte e and returns a DER SM2Signature (``SM2PrivateKey.sign_digest`` or
``lambda e: module.sign_digest(handle, e)``)."""

KeyDecryptor = Callable[[bytes], bytes]
"""Decrypts a DER SM2Cipher (``SM2PrivateKey.decrypt`` or a module handle)."""


def _as_signer(key: TAny) -> DigestSigner:
    fn = getattr(key, "sign_digest", None)
    if callable(fn):
        return fn  # type: ignore[no-any-return]
    if callable(key):
        return key  # type: ignore[no-any-return]
    raise PolicyError("signer must have sign_digest(e) or be a callable e -> DER signature")


def _as_decryptor(key: TAny) -> KeyDecryptor:
    fn = getattr(key, "decrypt", None)
    if callable(fn):
        return fn  # type: ignore[no-any-return]
    if callable(key):
        return key  # type: ignore[no-any-return]
    raise PolicyError("recipient key must have decrypt(ciphertext) or be a callable")


def _alg(oid: str, params: bytes | None = None) -> AlgorithmIdentifier:
    value: dict[str, TAny] = {"algorithm": oid}
    if params is not None:
        value["parameters"] = Any.load(params)
    return AlgorithmIdentifier(value)


def _params(alg: AlgorithmIdentifier) -> bytes | None:
    p = alg["parameters"]
    if isinstance(p, Void):
        return None
    return bytes(p.dump())


def _check_null_or_absent(alg: AlgorithmIdentifier, what: str) -> None:
    params = _params(alg)
    if params is not None and params != _NULL:
        raise DecodeError(f"{what} parameters must be NULL or absent")


def _parse_cert(cert: bytes | x509.Certificate) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    der = getattr(cert, "der", cert)  # accept mstcrypt.pki.Certificate too
    return load_strict(x509.Certificate, der, "certificate")


def _cert_key(cert: x509.Certificate) -> SM2PublicKey:
    return public_key_from_der(cert["tbs_certificate"]["subject_public_key_info"].dump())


def _ias(cert: x509.Certificate) -> IssuerAndSerialNumber:
    tbs = cert["tbs_certificate"]
    return IssuerAndSerialNumber(
        {"issuer": tbs["issuer"].copy(), "serial_number": tbs["serial_number"].native}
    )


@dataclass(frozen=True)
class RecipientRef:
    """Who a RecipientInfo or SignerInfo names: the certificate issuer (DER Name) and
    serial number."""

    issuer_der: bytes
    serial: int

    @classmethod
    def of(cls, cert: TAny) -> RecipientRef:
        c = _parse_cert(cert)
        tbs = c["tbs_certificate"]
        return cls(tbs["issuer"].dump(), tbs["serial_number"].native)

    def matches(self, cert: TAny) -> bool:
        return RecipientRef.of(cert) == self


def _read_ias(sid: SignerIdentifier, what: str) -> RecipientRef:
    if sid.name != "issuer_and_serial_number":
        raise UnsupportedError(
            f"{what} is a subjectKeyIdentifier; GM/T 0010 uses issuerAndSerialNumber"
        )
    ias = sid.chosen
    serial = ias["serial_number"].native
    if serial <= 0:
        raise DecodeError(f"{what} serial number must be positive")
    return RecipientRef(bytes(ias["issuer"].dump()), serial)


def _unwrap(der: bytes | str) -> bytes:
    if isinstance(der, str) or (isinstance(der, bytes | bytearray) and der[:5] == b"-----"):
        return pem_decode(der, PEM_LABELS)[1]
    if not isinstance(der, bytes | bytearray | memoryview):
        raise DecodeError("CMS message must be bytes")
    return bytes(der)


def pem(der: bytes) -> bytes:
    """PEM with the ``CMS`` label (as GmSSL and OpenSSL write it)."""
    return pem_encode(der, "CMS")


def _header(data: bytes, pos: int, what: str) -> tuple[int, int, int]:
    """(tag byte, value start, value end) of the DER element at ``pos``: single-byte
    tag, definite minimal length, inside ``data``."""
    if pos + 2 > len(data):
        raise DecodeError(f"{what} is truncated")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise DecodeError(f"{what} uses a multi-byte tag")
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0:
            raise DecodeError(f"{what} uses an indefinite length (BER); DER is required")
        if n > 8 or pos + n > len(data):
            raise DecodeError(f"{what} length is truncated or too long")
        length = int.from_bytes(data[pos : pos + n], "big")
        if data[pos] == 0 or length < 0x80:
            raise DecodeError(f"{what} length is not minimally encoded (not DER)")
        pos += n
    if pos + length > len(data):
        raise DecodeError(f"{what} is truncated")
    return tag, pos, pos + length


def _outer(der: bytes) -> tuple[str, bytes]:
    """ContentInfo ::= SEQUENCE { contentType OID, content [0] EXPLICIT ANY }."""
    if not der:
        raise DecodeError("ContentInfo is empty")
    tag, start, end = _header(der, 0, "ContentInfo")
    if tag != 0x30:
        raise DecodeError("ContentInfo must be a SEQUENCE")
    if end != len(der):
        raise DecodeError("trailing bytes after ContentInfo")
    otag, _, oend = _header(der, start, "ContentInfo contentType")
    if otag != 0x06:
        raise DecodeError("ContentInfo contentType must be an OBJECT IDENTIFIER")
    oid = load_strict(ObjectIdentifier, der[start:oend], "ContentInfo contentType").dotted
    if oend == end:
        raise DecodeError("ContentInfo has no content")
    ctag, cstart, cend = _header(der, oend, "ContentInfo content")
    if ctag != 0xA0:
        raise DecodeError("ContentInfo content must be [0] EXPLICIT")
    if cend != end:
        raise DecodeError("trailing bytes inside ContentInfo")
    return oid, der[cstart:cend]


def _content_info(data: bytes | str, what: str) -> tuple[Profile, str, bytes]:
    ctype, inner = _outer(_unwrap(data))
    if ctype in (GM_DATA, P7_DATA):
        raise UnsupportedError(f"ContentInfo is plain data ({ctype}); expected {what}")
    if ctype not in _OUTER:
        raise UnsupportedError(f"ContentInfo content type {ctype} is not supported")
    profile, kind = _OUTER[ctype]
    return profile, kind, inner


def _outer_der(oid: str, inner: bytes) -> bytes:
    body = dump(ObjectIdentifier(oid)) + _tl(0xA0, len(inner)) + inner
    return _tl(0x30, len(body)) + body


def _time_value(raw: Any) -> datetime:
    der = bytes(raw.dump())
    if der[:1] not in (b"\x17", b"\x18"):
        raise DecodeError("signingTime must be UTCTime or GeneralizedTime")
    spec: TAny = UTCTime if der[0] == 0x17 else GeneralizedTime
    try:
        value = load_strict(spec, der, "signingTime")
    except DecodeError:
        raise DecodeError("signingTime is not a valid DER time") from None
    t = value.native
    if not isinstance(t, datetime):
        raise DecodeError("signingTime is not a valid time")
    if der[0] == 0x18 and 1950 <= t.year <= 2049:
        raise DecodeError("signingTime between 1950 and 2049 must be UTCTime")
    return t.astimezone(UTC)


def _time_attr(t: datetime) -> Any:
    t = t.astimezone(UTC).replace(microsecond=0)
    v: TAny = UTCTime(t) if 1950 <= t.year <= 2049 else GeneralizedTime(t)
    return Any.load(dump(v))


# --- SignedData -------------------------------------------------------------------


@dataclass(frozen=True)
class SignerView:
    """One parsed SignerInfo (nothing verified yet)."""

    ref: RecipientRef
    signed_attrs_der: bytes | None  # DER SET OF, as signed (tag 0x31)
    signature: bytes
    content_type: str | None
    message_digest: bytes | None
    signing_time: datetime | None


@dataclass(frozen=True)
class VerifiedSigner:
    """A signer whose signature verified: its certificate (DER, taken from the
    message; not yet trusted), the signing time it claims, and the form used."""

    certificate_der: bytes = field(repr=False)
    signing_time: datetime | None
    form: SignatureForm


class SignedData:
    """A strictly parsed SignedData (``load`` or :meth:`from_der`)."""

    __slots__ = ("certificates", "content", "der", "profile", "signers")

    def __init__(
        self,
        der: bytes,
        profile: Profile,
        content: bytes | None,
        certificates: tuple[bytes, ...],
        signers: tuple[SignerView, ...],
    ) -> None:
        self.der = der
        self.profile = profile
        self.content = content
        self.certificates = certificates
        self.signers = signers

    @property
    def detached(self) -> bool:
        return self.content is None

    def __repr__(self) -> str:
        size = "detached" if self.content is None else f"{len(self.content)} bytes"
        return f"<SignedData {self.profile.value} {size} signers={len(self.signers)}>"

    @classmethod
    def from_der(cls, data: bytes | str) -> SignedData:
        der = _unwrap(data)
        profile, kind, inner = _content_info(der, "signedData")
        if kind != "signed":
            raise UnsupportedError("ContentInfo is envelopedData; expected signedData")
        return cls._parse(der, profile, inner)

    @classmethod
    def _parse(cls, der: bytes, profile: Profile, inner: bytes) -> SignedData:
        sd = load_strict(SignedDataAsn1, inner, "SignedData")
        if sd["version"].native != 1:
            raise DecodeError(f"SignedData version must be 1, got {sd['version'].native}")
        algs = sd["digest_algorithms"]
        if len(algs) != 1 or algs[0]["algorithm"].dotted != oids.SM3:
            raise UnsupportedError("SignedData digestAlgorithms must be exactly {sm3}")
        _check_null_or_absent(algs[0], "SignedData digest algorithm")
        ci = sd["content_info"]
        data_oid = _TYPES[profile]["data"]
        if ci["content_type"].dotted != data_oid:
            raise UnsupportedError(
                f"SignedData content type {ci['content_type'].dotted}; expected {data_oid}"
            )
        content: bytes | None = None
        if not isinstance(ci["content"], Void):
            if ci["content"].method != 0:
                raise DecodeError("SignedData content must be a primitive OCTET STRING")
            content = ci["content"].native
        certs = (
            ()
            if isinstance(sd["certificates"], Void)
            else tuple(bytes(c.dump()) for c in sd["certificates"])
        )
        refs = [RecipientRef.of(c) for c in certs]
        if len(set(refs)) != len(refs):
            raise DecodeError(
                "SignedData carries two certificates with the same issuer and serial number"
            )
        if not isinstance(sd["crls"], Void):
            raise UnsupportedError("SignedData crls are not supported; publish CRLs separately")
        if not sd["signer_infos"]:
            raise DecodeError("SignedData has no SignerInfo")
        signers = tuple(_signer_view(si, data_oid) for si in sd["signer_infos"])
        return cls(der, profile, content, certs, signers)

    def _find_cert(self, ref: RecipientRef) -> bytes:
        for c in self.certificates:
            if RecipientRef.of(c) == ref:
                return c
        raise VerificationError("the signer certificate is not in the message")

    def verify(
        self,
        content: bytes | None = None,
        *,
        content_digest: bytes | None = None,
        forms: Sequence[SignatureForm | str] = (SignatureForm.STANDARD,),
        signer_id: bytes = DEFAULT_ID,
    ) -> list[VerifiedSigner]:
        """Verify every SignerInfo against the certificate carried in the message.

        The content is the attached one, or ``content`` / ``content_digest`` (SM3 of
        the content, for streamed data) for a detached signature. ``forms`` lists the
        signature forms accepted (the GmSSL form only when asked for). Raises
        :class:`VerificationError` on the first failure."""
        wanted = {SignatureForm(f) for f in forms}
        if self.content is not None:
            if content is not None or content_digest is not None:
                raise PolicyError("the signature is attached; do not pass content")
            digest = sm3(self.content)
        elif content_digest is not None:
            if len(content_digest) != 32:
                raise PolicyError("content_digest must be the 32-byte SM3 of the content")
            digest = content_digest
        elif content is not None:
            digest = sm3(content)
        else:
            raise PolicyError("detached signature: the content (or its SM3) is needed")
        out = []
        for s in self.signers:
            cert = self._find_cert(s.ref)
            key = _cert_key(_parse_cert(cert))
            if s.signed_attrs_der is None:
                out.append(self._verify_plain(s, cert, key, wanted, signer_id, content))
                continue
            if SignatureForm.STANDARD not in wanted:
                raise VerificationError("signed attributes are only defined for the standard form")
            if s.message_digest is None or len(s.message_digest) != 32:
                raise VerificationError("messageDigest attribute is missing or not 32 bytes")
            if not hmac.compare_digest(s.message_digest, digest):
                raise VerificationError("messageDigest does not match the content")
            try:
                key.verify(s.signature, s.signed_attrs_der, signer_id=signer_id)
            except SignatureFormatError:
                raise
            except VerificationError:
                raise VerificationError(
                    "SM2 signature over the signed attributes does not verify"
                ) from None
            out.append(VerifiedSigner(cert, s.signing_time, SignatureForm.STANDARD))
        return out

    def _verify_plain(
        self,
        s: SignerView,
        cert: bytes,
        key: SM2PublicKey,
        wanted: set[SignatureForm],
        signer_id: bytes,
        content: bytes | None,
    ) -> VerifiedSigner:
        body = self.content if self.content is not None else content
        if body is None:
            raise PolicyError("a signature without signed attributes needs the whole content")
        if SignatureForm.STANDARD in wanted:
            try:
                key.verify(s.signature, body, signer_id=signer_id)
                return VerifiedSigner(cert, None, SignatureForm.STANDARD)
            except SignatureFormatError:
                raise
            except VerificationError:
                pass
        if SignatureForm.GMSSL in wanted and self.content is not None:
            e = sm3(dump(_data_content_info(self.profile, self.content)))
            try:
                key.verify_digest(s.signature, e)
                return VerifiedSigner(cert, None, SignatureForm.GMSSL)
            except SignatureFormatError:
                raise
            except VerificationError:
                pass
        raise VerificationError("SM2 signature over the content does not verify")


def _signer_view(si: SignerInfo, data_oid: str) -> SignerView:
    if si["version"].native != 1:
        raise DecodeError(f"SignerInfo version must be 1, got {si['version'].native}")
    ref = _read_ias(si["sid"], "SignerInfo sid")
    if si["digest_algorithm"]["algorithm"].dotted != oids.SM3:
        raise UnsupportedError(
            f"SignerInfo digest algorithm {si['digest_algorithm']['algorithm'].dotted}; "
            "expected sm3"
        )
    _check_null_or_absent(si["digest_algorithm"], "SignerInfo digest algorithm")
    sig_alg = si["signature_algorithm"]["algorithm"].dotted
    if sig_alg not in _SIG_ALGS:
        raise UnsupportedError(
            f"SignerInfo signature algorithm {sig_alg}; expected sm2-1 or sm2sign-with-sm3"
        )
    _check_null_or_absent(si["signature_algorithm"], "SignerInfo signature algorithm")
    signature = si["signature"].native
    if not signature:
        raise SignatureFormatError("SignerInfo signature is empty")
    if not isinstance(si["unsigned_attrs"], Void):
        raise UnsupportedError("SignerInfo unsignedAttrs are not supported")
    attrs = si["signed_attrs"]
    if isinstance(attrs, Void):
        return SignerView(ref, None, signature, None, None, None)
    if not len(attrs):
        raise DecodeError("SignerInfo signedAttrs is present but empty")
    seen: dict[str, Any] = {}
    for a in attrs:
        oid = a["type"].dotted
        if oid in seen:
            raise DecodeError(f"signed attribute {oid} appears twice")
        values = a["values"]
        if len(values) != 1:
            raise DecodeError(f"signed attribute {oid} must have exactly one value")
        seen[oid] = values[0]
    if ATTR_CONTENT_TYPE not in seen:
        raise DecodeError("signed attributes lack contentType")
    if ATTR_MESSAGE_DIGEST not in seen:
        raise DecodeError("signed attributes lack messageDigest")
    ct_raw = bytes(seen[ATTR_CONTENT_TYPE].dump())
    if ct_raw[:1] != b"\x06":
        raise DecodeError("contentType attribute must be an OBJECT IDENTIFIER")
    ctype = load_strict(ObjectIdentifier, ct_raw, "contentType attribute").dotted
    if ctype != data_oid:
        raise VerificationError(f"contentType attribute {ctype} does not match {data_oid}")
    md_raw = bytes(seen[ATTR_MESSAGE_DIGEST].dump())
    if md_raw[:1] != b"\x04":
        raise DecodeError("messageDigest attribute must be an OCTET STRING")
    md = load_strict(OctetString, md_raw, "messageDigest attribute").native
    if len(md) != 32:
        raise DecodeError(f"messageDigest attribute must be 32 bytes (SM3), got {len(md)}")
    st = _time_value(seen[ATTR_SIGNING_TIME]) if ATTR_SIGNING_TIME in seen else None
    attrs_der = b"\x31" + attrs.dump()[1:]
    return SignerView(ref, attrs_der, signature, ctype, md, st)


def _data_content_info(profile: Profile, content: bytes | None) -> ContentInfo:
    value: dict[str, TAny] = {"content_type": _TYPES[profile]["data"]}
    if content is not None:
        value["content"] = content
    return ContentInfo(value)


def sign_digest(
    content_digest: bytes,
    signer_cert: TAny,
    key: TAny,
    *,
    profile: Profile | str = Profile.GMT0010,
    signing_time: datetime | None = None,
    extra_certs: Sequence[TAny] = (),
    signer_id: bytes = DEFAULT_ID,
    content: bytes | None = None,
) -> bytes:
    """A SignedData over a content already hashed with SM3 (streamed data): detached
    unless ``content`` is given. See :func:`sign`."""
    if not isinstance(content_digest, bytes) or len(content_digest) != 32:
        raise PolicyError("content_digest must be the 32-byte SM3 of the content")
    profile = Profile(profile)
    cert = _parse_cert(signer_cert)
    pub = _cert_key(cert)
    signer = _as_signer(key)
    now = signing_time or datetime.now(UTC)
    attrs = Attributes(
        [
            Attribute(
                {
                    "type": ATTR_CONTENT_TYPE,
                    "values": [Any.load(dump(ObjectIdentifier(_TYPES[profile]["data"])))],
                }
            ),
            Attribute({"type": ATTR_SIGNING_TIME, "values": [_time_attr(now)]}),
            Attribute(
                {
                    "type": ATTR_MESSAGE_DIGEST,
                    "values": [Any.load(dump(OctetString(content_digest)))],
                }
            ),
        ]
    )
    attrs_der = dump(attrs)
    signature = signer(pub.message_digest(attrs_der, signer_id))
    pub.verify(signature, attrs_der, signer_id=signer_id)  # sign-then-verify
    si = SignerInfo(
        {
            "version": 1,
            "sid": SignerIdentifier(name="issuer_and_serial_number", value=_ias(cert)),
            "digest_algorithm": _alg(oids.SM3),
            "signed_attrs": Attributes.load(attrs_der),
            "signature_algorithm": _alg(
                oids.SM2_SIGN if profile is Profile.GMT0010 else oids.SM2_WITH_SM3
            ),
            "signature": signature,
        }
    )
    return _assemble_signed(profile, content, cert, extra_certs, si)


def _assemble_signed(
    profile: Profile,
    content: bytes | None,
    cert: x509.Certificate,
    extra_certs: Sequence[TAny],
    si: SignerInfo,
) -> bytes:
    certs = [cert, *(_parse_cert(c) for c in extra_certs)]
    sd = SignedDataAsn1(
        {
            "version": 1,
            "digest_algorithms": [_alg(oids.SM3)],
            "content_info": _data_content_info(profile, content),
            "certificates": certs,
            "signer_infos": [si],
        }
    )
    return _outer_der(_TYPES[profile]["signed"], dump(sd))


def sign(
    content: bytes,
    signer_cert: TAny,
    key: TAny,
    *,
    detached: bool = False,
    profile: Profile | str = Profile.GMT0010,
    form: SignatureForm | str = SignatureForm.STANDARD,
    signing_time: datetime | None = None,
    extra_certs: Sequence[TAny] = (),
    signer_id: bytes = DEFAULT_ID,
) -> bytes:
    """Sign ``content`` (DER SignedData in a ContentInfo).

    ``signer_cert`` is DER, an asn1crypto or an ``mstcrypt.pki`` certificate; ``key``
    has ``sign_digest(e)`` (an SM2PrivateKey) or is a callable e → DER signature (a
    module handle). The signature is verified before it is returned.
    ``form="gmssl"`` writes what ``gmssl cmsverify`` accepts (attached, no signed
    attributes, e = SM3(DER(ContentInfo)) without Z)."""
    if not isinstance(content, bytes | bytearray | memoryview):
        raise PolicyError("content must be bytes")
    content = bytes(content)
    form = SignatureForm(form)
    profile = Profile(profile)
    if form is SignatureForm.STANDARD:
        return sign_digest(
            sm3(content),
            signer_cert,
            key,
            profile=profile,
            signing_time=signing_time,
            extra_certs=extra_certs,
            signer_id=signer_id,
            content=None if detached else content,
        )
    if detached:
        raise PolicyError("the GmSSL signature form covers the ContentInfo: it cannot be detached")
    cert = _parse_cert(signer_cert)
    pub = _cert_key(cert)
    e = sm3(dump(_data_content_info(profile, content)))
    signature = _as_signer(key)(e)
    pub.verify_digest(signature, e)
    si = SignerInfo(
        {
            "version": 1,
            "sid": SignerIdentifier(name="issuer_and_serial_number", value=_ias(cert)),
            "digest_algorithm": _alg(oids.SM3),
            "signature_algorithm": _alg(oids.SM2_WITH_SM3),
            "signature": signature,
        }
    )
    return _assemble_signed(profile, content, cert, extra_certs, si)


def verify(
    data: bytes | str,
    content: bytes | None = None,
    *,
    forms: Sequence[SignatureForm | str] = (SignatureForm.STANDARD,),
) -> tuple[SignedData, list[VerifiedSigner]]:
    """Parse and verify a SignedData; returns it and its verified signers."""
    sd = SignedData.from_der(data)
    return sd, sd.verify(content, forms=forms)


# --- EnvelopedData ----------------------------------------------------------------


@dataclass(frozen=True)
class _Recipient:
    ref: RecipientRef
    encrypted_key: bytes
    algorithm: str


class EnvelopedData:
    """A strictly parsed EnvelopedData; :meth:`decrypt` opens it for one recipient."""

    __slots__ = ("ciphertext", "der", "iv", "profile", "recipients")

    def __init__(
        self,
        der: bytes,
        profile: Profile,
        recipients: tuple[_Recipient, ...],
        iv: bytes,
        ciphertext: bytes,
    ) -> None:
        self.der = der
        self.profile = profile
        self.recipients = recipients
        self.iv = iv
        self.ciphertext = ciphertext

    def __repr__(self) -> str:
        return (
            f"<EnvelopedData {self.profile.value} recipients={len(self.recipients)} "
            f"ciphertext={len(self.ciphertext)} bytes>"
        )

    @property
    def recipient_refs(self) -> tuple[RecipientRef, ...]:
        return tuple(r.ref for r in self.recipients)

    @classmethod
    def from_der(cls, data: bytes | str) -> EnvelopedData:
        der = _unwrap(data)
        profile, kind, inner = _content_info(der, "envelopedData")
        if kind != "enveloped":
            raise UnsupportedError("ContentInfo is signedData; expected envelopedData")
        ed = _load_enveloped(inner)
        recipients, iv = _check_enveloped_header(ed, profile)
        eci = ed["encrypted_content_info"]
        if isinstance(eci["encrypted_content"], Void):
            raise UnsupportedError(
                "EnvelopedData without encryptedContent (detached) is not supported"
            )
        ct = eci["encrypted_content"].native
        if not ct or len(ct) % 16:
            raise DecodeError(
                "EnvelopedData encryptedContent must be a non-empty multiple of 16 bytes"
            )
        return cls(der, profile, recipients, iv, ct)

    def unwrap_key(self, recipient_cert: TAny, key: TAny) -> bytes:
        """The content-encryption key for this recipient (SM2-decrypted)."""
        ref = RecipientRef.of(recipient_cert)
        for r in self.recipients:
            if r.ref == ref:
                cek = _as_decryptor(key)(r.encrypted_key)
                if len(cek) != 16:
                    raise DecryptionError("the content-encryption key is not 16 bytes")
                return cek
        raise DecryptionError("this certificate is not a recipient of the message")

    def decrypt(self, recipient_cert: TAny, key: TAny) -> bytes:
        """Decrypt for the recipient named by ``recipient_cert`` with ``key``."""
        cek = self.unwrap_key(recipient_cert, key)
        return sm4.cbc_decrypt(cek, self.iv, self.ciphertext)


def _load_enveloped(inner: bytes) -> EnvelopedDataAsn1:
    """Strict DER, except that the RecipientInfos may come in any order: GmSSL writes
    them in the order given, not sorted as DER's SET OF requires. Nothing else may
    differ from the canonical encoding."""
    try:
        return load_strict(EnvelopedDataAsn1, inner, "EnvelopedData")
    except DecodeError as exc:
        if "not canonical" not in str(exc):
            raise
    ed = EnvelopedDataAsn1.load(inner, strict=True)
    try:
        ed.native  # noqa: B018 (parse every field)
        canonical = bytes(ed.dump(force=True))
        ris = EnvelopedDataAsn1.load(inner, strict=True)["recipient_infos"]
        given = bytes(ris.contents)
        ordered = b"".join(sorted(bytes(c.dump(force=True)) for c in ris))
    except Exception:  # asn1crypto's ValueError/TypeError on malformed parts
        raise DecodeError("malformed EnvelopedData") from None
    if inner.count(given) != 1 or inner.replace(given, ordered) != canonical:
        raise DecodeError("EnvelopedData is not canonical DER")
    return ed


def _check_enveloped_header(
    ed: EnvelopedDataAsn1, profile: Profile
) -> tuple[tuple[_Recipient, ...], bytes]:
    version = ed["version"].native
    if version not in (0, 1):
        raise DecodeError(f"EnvelopedData version must be 0 or 1, got {version}")
    if not isinstance(ed["originator_info"], Void):
        raise UnsupportedError("EnvelopedData originatorInfo is not supported")
    if not isinstance(ed["unprotected_attrs"], Void):
        raise UnsupportedError("EnvelopedData unprotectedAttrs are not supported")
    if not ed["recipient_infos"]:
        raise DecodeError("EnvelopedData has no RecipientInfo")
    recipients = []
    for choice in ed["recipient_infos"]:
        if choice.name != "ktri":
            raise UnsupportedError(
                f"RecipientInfo {choice.name} is not supported; only KeyTransRecipientInfo"
            )
        ri = choice.chosen
        rv = ri["version"].native
        if rv not in (0, 1):
            raise DecodeError(f"KeyTransRecipientInfo version must be 0 or 1, got {rv}")
        ref = _read_ias(ri["rid"], "KeyTransRecipientInfo rid")
        alg = ri["key_encryption_algorithm"]["algorithm"].dotted
        if alg not in _KEY_ENC_ALGS:
            raise UnsupportedError(
                f"key encryption algorithm {alg}; expected sm2-3 (1.2.156.10197.1.301.3)"
            )
        _check_null_or_absent(ri["key_encryption_algorithm"], "key encryption algorithm")
        ek = ri["encrypted_key"].native
        if not ek:
            raise DecodeError("KeyTransRecipientInfo encryptedKey is empty")
        decode_cipher(ek)  # strict SM2Cipher, C1 on the curve
        recipients.append(_Recipient(ref, ek, alg))
    refs = [r.ref for r in recipients]
    if len(set(refs)) != len(refs):
        raise DecodeError("EnvelopedData names the same recipient twice")
    eci = ed["encrypted_content_info"]
    data_oid = _TYPES[profile]["data"]
    if eci["content_type"].dotted != data_oid:
        raise UnsupportedError(
            f"EncryptedContentInfo content type {eci['content_type'].dotted}; expected {data_oid}"
        )
    calg = eci["content_encryption_algorithm"]
    if calg["algorithm"].dotted not in _CONTENT_ENC_ALGS:
        raise UnsupportedError(
            f"content encryption algorithm {calg['algorithm'].dotted}; "
            "expected sm4-cbc (1.2.156.10197.1.104.2)"
        )
    params = _params(calg)
    if params is None or params[:1] != b"\x04":
        raise DecodeError("SM4-CBC parameters must be an OCTET STRING IV")
    iv = load_strict(OctetString, params, "SM4-CBC IV").native
    if len(iv) != 16:
        raise DecodeError(f"SM4-CBC IV must be 16 bytes, got {len(iv)}")
    if not isinstance(eci["shared_info1"], Void) or not isinstance(eci["shared_info2"], Void):
        raise UnsupportedError("EncryptedContentInfo sharedInfo1/2 are not supported")
    return tuple(recipients), iv


class ContentEncryptor:
    """Streams the SM4-CBC encryption of an envelope's content: feed the plaintext to
    :meth:`update` (exactly the length announced to :func:`envelope_header`), then
    :meth:`finalize`."""

    __slots__ = ("_enc", "_left")

    def __init__(self, cek: bytes, iv: bytes, length: int) -> None:
        self._enc = sm4.encryptor("cbc", cek, iv)
        self._left = length

    def update(self, data: bytes) -> bytes:
        self._left -= len(data)
        if self._left < 0:
            raise PolicyError("more plaintext than announced in the envelope header")
        return self._enc.update(data)

    def finalize(self) -> bytes:
        if self._left:
            raise PolicyError(f"{self._left} bytes of announced plaintext are missing")
        return self._enc.finalize()


def _tl(tag: int, length: int) -> bytes:
    if length < 0x80:
        return bytes([tag, length])
    n = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | n]) + length.to_bytes(n, "big")


def envelope_header(
    recipients: Sequence[TAny],
    length: int,
    *,
    profile: Profile | str = Profile.GMT0010,
    form: SignatureForm | str = SignatureForm.STANDARD,
) -> tuple[bytes, ContentEncryptor]:
    """Start an EnvelopedData for ``length`` bytes of content, in constant memory:
    returns the DER up to the ciphertext (definite lengths, since the CBC output
    length is known) and the encryptor producing the rest. header ‖ updates ‖
    finalize is exactly :func:`encrypt`'s output."""
    profile = Profile(profile)
    form = SignatureForm(form)
    if not recipients:
        raise PolicyError("an envelope needs at least one recipient")
    if length < 0:
        raise PolicyError("content length must be >= 0")
    key_alg = oids.SM2_EXCHANGE if form is SignatureForm.GMSSL else oids.SM2_ENCRYPT
    version = 1 if profile is Profile.GMT0010 else 0
    cek, iv = random_bytes(16), random_bytes(16)
    infos = []
    seen = set()
    for rc in recipients:
        cert = _parse_cert(rc)
        ref = RecipientRef.of(cert)
        if ref in seen:
            continue
        seen.add(ref)
        infos.append(
            RecipientInfo.load(
                dump(
                    KeyTransRecipientInfo(
                        {
                            "version": version,
                            "rid": SignerIdentifier(
                                name="issuer_and_serial_number", value=_ias(cert)
                            ),
                            "key_encryption_algorithm": _alg(key_alg),
                            "encrypted_key": _cert_key(cert).encrypt(cek),
                        }
                    )
                )
            )
        )
    ct_len = (length // 16 + 1) * 16
    eci_head = dump(ObjectIdentifier(_TYPES[profile]["data"])) + dump(
        _alg(oids.SM4_CBC, dump(OctetString(iv)))
    )
    ec_tl = _tl(0x80, ct_len)
    eci_len = len(eci_head) + len(ec_tl) + ct_len
    body = (
        dump(Integer(version)) + dump(RecipientInfos(infos)) + _tl(0x30, eci_len) + eci_head + ec_tl
    )
    ed_len = len(body) + ct_len
    ed_tl = _tl(0x30, ed_len)
    explicit_tl = _tl(0xA0, len(ed_tl) + ed_len)
    oid = dump(ObjectIdentifier(_TYPES[profile]["enveloped"]))
    outer_tl = _tl(0x30, len(oid) + len(explicit_tl) + len(ed_tl) + ed_len)
    header = outer_tl + oid + explicit_tl + ed_tl + body
    return header, ContentEncryptor(cek, iv, length)


def encrypt(
    content: bytes,
    recipients: Sequence[TAny],
    *,
    profile: Profile | str = Profile.GMT0010,
    form: SignatureForm | str = SignatureForm.STANDARD,
) -> bytes:
    """Envelope ``content`` for every certificate in ``recipients`` (DER EnvelopedData
    in a ContentInfo). ``form="gmssl"`` writes GmSSL's key-encryption OID
    (1.2.156.10197.1.301.2) so that ``gmssl cmsdecrypt`` opens it."""
    if not isinstance(content, bytes | bytearray | memoryview):
        raise PolicyError("content must be bytes")
    content = bytes(content)
    header, enc = envelope_header(recipients, len(content), profile=profile, form=form)
    return header + enc.update(content) + enc.finalize()


def decrypt(data: bytes | str, recipient_cert: TAny, key: TAny) -> bytes:
    return EnvelopedData.from_der(data).decrypt(recipient_cert, key)


def load(data: bytes | str) -> SignedData | EnvelopedData:
    """Parse a ContentInfo (DER or PEM ``CMS``/``PKCS7``) of either kind."""
    der = _unwrap(data)
    profile, kind, inner = _content_info(der, "signedData or envelopedData")
    if kind == "signed":
        return SignedData._parse(der, profile, inner)
    return EnvelopedData.from_der(der)


# --- streaming (constant memory) ---------------------------------------------------

ReadFn = Callable[[int], bytes]
"""``read(n)``: up to n bytes (fewer only at the end), b"" at the end."""

MAX_HEADER = 1 << 20  # certificates, recipient infos, signer infos: bounded


def signed_stream_parts(
    content_digest: bytes,
    content_length: int,
    signer_cert: TAny,
    key: TAny,
    *,
    profile: Profile | str = Profile.GMT0010,
    signing_time: datetime | None = None,
    extra_certs: Sequence[TAny] = (),
    signer_id: bytes = DEFAULT_ID,
) -> tuple[bytes, bytes]:
    """An attached SignedData for a content that is streamed (hashed in a first pass):
    returns (prefix, suffix) with DER = prefix ‖ content ‖ suffix, the same message
    :func:`sign` would build (definite lengths throughout)."""
    if content_length < 0:
        raise PolicyError("content length must be >= 0")
    profile = Profile(profile)
    detached = sign_digest(
        content_digest,
        signer_cert,
        key,
        profile=profile,
        signing_time=signing_time,
        extra_certs=extra_certs,
        signer_id=signer_id,
    )
    sd = SignedDataAsn1.load(_outer(detached)[1])
    head = dump(sd["version"]) + dump(sd["digest_algorithms"])
    tail = dump(sd["certificates"]) + dump(sd["signer_infos"])
    oid = dump(ObjectIdentifier(_TYPES[profile]["data"]))
    octet_tl = _tl(0x04, content_length)
    explicit_tl = _tl(0xA0, len(octet_tl) + content_length)
    ci_len = len(oid) + len(explicit_tl) + len(octet_tl) + content_length
    ci_head = _tl(0x30, ci_len) + oid + explicit_tl + octet_tl
    sd_len = len(head) + len(ci_head) + content_length + len(tail)
    sd_tl = _tl(0x30, sd_len)
    outer_oid = dump(ObjectIdentifier(_TYPES[profile]["signed"]))
    outer_explicit = _tl(0xA0, len(sd_tl) + sd_len)
    outer_tl = _tl(0x30, len(outer_oid) + len(outer_explicit) + len(sd_tl) + sd_len)
    prefix = outer_tl + outer_oid + outer_explicit + sd_tl + head + ci_head
    return prefix, tail


class _Reader:
    """Reads DER headers and bounded elements from a stream, counting bytes."""

    def __init__(self, read: ReadFn, what: str) -> None:
        self._read = read
        self.what = what
        self.pos = 0

    def exact(self, n: int) -> bytes:
        parts = []
        left = n
        while left:
            chunk = self._read(min(left, 1 << 16))
            if not chunk:
                raise DecodeError(f"{self.what} is truncated")
            parts.append(chunk)
            left -= len(chunk)
        self.pos += n
        return b"".join(parts)

    def header(self, name: str) -> tuple[int, int, bytes]:
        """(tag, length, header bytes) of the next element (DER: definite, minimal)."""
        first = self.exact(2)
        tag = first[0]
        if tag & 0x1F == 0x1F:
            raise DecodeError(f"{name} uses a multi-byte tag")
        if first[1] < 0x80:
            return tag, first[1], first
        n = first[1] & 0x7F
        if n == 0:
            raise DecodeError(f"{name} uses an indefinite length (BER); DER is required")
        if n > 8:
            raise DecodeError(f"{name} length is too long")
        extra = self.exact(n)
        length = int.from_bytes(extra, "big")
        if extra[0] == 0 or length < 0x80:
            raise DecodeError(f"{name} length is not minimally encoded (not DER)")
        return tag, length, first + extra

    def element(self, name: str, limit: int = MAX_HEADER) -> bytes:
        """A whole (bounded) element: header and value."""
        _, length, hdr = self.header(name)
        if length > limit:
            raise PolicyError(f"{name} is larger than {limit} bytes")
        return hdr + self.exact(length)

    def end(self) -> None:
        if self._read(1):
            raise DecodeError(f"trailing bytes after {self.what}")


def _expect(tag: int, want: int, name: str) -> None:
    if tag != want:
        raise DecodeError(f"{name} has tag {tag:#04x}, expected {want:#04x}")


def _outer_stream(r: _Reader, kind: str) -> tuple[Profile, int]:
    tag, total, _ = r.header("ContentInfo")
    _expect(tag, 0x30, "ContentInfo")
    start = r.pos
    oid_der = r.element("ContentInfo contentType", 64)
    if oid_der[0] != 0x06:
        raise DecodeError("ContentInfo contentType must be an OBJECT IDENTIFIER")
    ctype = load_strict(ObjectIdentifier, oid_der, "ContentInfo contentType").dotted
    if ctype not in _OUTER:
        raise UnsupportedError(f"ContentInfo content type {ctype} is not supported")
    profile, got = _OUTER[ctype]
    if got != kind:
        raise UnsupportedError(f"ContentInfo is {got}Data; expected {kind}Data")
    tag, explicit_len, _ = r.header("ContentInfo content")
    _expect(tag, 0xA0, "ContentInfo content")
    tag, inner_len, hdr = r.header(f"{kind}Data")
    _expect(tag, 0x30, f"{kind}Data")
    if explicit_len != len(hdr) + inner_len or total != r.pos - start + inner_len:
        raise DecodeError("ContentInfo lengths do not match its content")
    return profile, inner_len


class SignedStream:
    """Reads an attached SignedData from a stream in constant memory: :meth:`read`
    returns the content (hashed as it passes), then :meth:`finish` parses the
    certificates and SignerInfos (strictly, as :meth:`SignedData.from_der`) and returns
    the SignedData, to be verified with :attr:`content_digest`."""

    def __init__(self, read: ReadFn) -> None:
        r = self._r = _Reader(read, "SignedData stream")
        self.profile, sd_len = _outer_stream(r, "signed")
        sd_start = r.pos
        version = r.element("SignedData version", 16)
        dalgs = r.element("SignedData digestAlgorithms", 4096)
        tag, ci_len, _ = r.header("SignedData contentInfo")
        _expect(tag, 0x30, "SignedData contentInfo")
        ci_start = r.pos
        ci_oid = r.element("SignedData content type", 64)
        if r.pos - ci_start == ci_len:
            raise UnsupportedError("a detached SignedData has no content to stream")
        tag, ex_len, _ = r.header("SignedData content")
        _expect(tag, 0xA0, "SignedData content")
        tag, n, oct_hdr = r.header("SignedData content OCTET STRING")
        if tag != 0x04:
            raise DecodeError("SignedData content must be a primitive OCTET STRING")
        if ex_len != len(oct_hdr) + n or ci_len != r.pos - ci_start + n:
            raise DecodeError("SignedData contentInfo lengths do not match its content")
        self.content_length = n
        self._left = n
        self._hash = SM3()
        self._head = (version, dalgs, ci_oid)
        self._sd_end = sd_start + sd_len
        self.content_digest: bytes | None = None

    def read(self, n: int = 1 << 16) -> bytes:
        if self._left == 0:
            return b""
        data = self._r.exact(min(n, self._left))
        self._left -= len(data)
        self._hash.update(data)
        return data

    def finish(self) -> SignedData:
        while self._left:
            self.read()
        self.content_digest = self._hash.digest()
        rest_len = self._sd_end - self._r.pos
        if rest_len < 0 or rest_len > MAX_HEADER:
            raise DecodeError("SignedData certificates and SignerInfos are too large")
        rest = self._r.exact(rest_len)
        self._r.end()
        version, dalgs, ci_oid = self._head
        ci = _tl(0x30, len(ci_oid)) + ci_oid
        body = version + dalgs + ci + rest
        stub = _tl(0x30, len(body)) + body
        return SignedData._parse(
            _outer_der(_TYPES[self.profile]["signed"], stub), self.profile, stub
        )


class EnvelopeStream:
    """Reads an EnvelopedData from a stream in constant memory: the header (recipients,
    algorithm, IV) is parsed strictly at once; :meth:`open` returns a reader of the
    plaintext for one recipient. The stream must end with the ciphertext."""

    def __init__(self, read: ReadFn) -> None:
        r = self._r = _Reader(read, "EnvelopedData stream")
        profile, ed_len = _outer_stream(r, "enveloped")
        ed_start = r.pos
        parts = [r.element("EnvelopedData version", 16)]
        nxt = r.element("EnvelopedData recipientInfos")
        parts.append(nxt)
        if nxt[0] == 0xA0:  # originatorInfo: refused by the strict parse below
            parts.append(r.element("EnvelopedData recipientInfos"))
        tag, eci_len, _ = r.header("EncryptedContentInfo")
        _expect(tag, 0x30, "EncryptedContentInfo")
        eci_start = r.pos
        eci_oid = r.element("EncryptedContentInfo content type", 64)
        calg = r.element("content encryption algorithm", 256)
        tag, ct_len, ct_hdr = r.header("encryptedContent")
        if tag == 0xA0:
            raise DecodeError("encryptedContent must be primitive (DER)")
        _expect(tag, 0x80, "encryptedContent")
        if eci_len != r.pos - eci_start + ct_len or ed_len != r.pos - ed_start + ct_len:
            raise UnsupportedError(
                "fields after encryptedContent (sharedInfo, unprotectedAttrs) are not supported"
            )
        del ct_hdr
        if ct_len == 0 or ct_len % 16:
            raise DecodeError(
                "EnvelopedData encryptedContent must be a non-empty multiple of 16 bytes"
            )
        eci = eci_oid + calg + _tl(0x80, 16) + bytes(16)
        body = b"".join(parts) + _tl(0x30, len(eci)) + eci
        stub = _tl(0x30, len(body)) + body
        self.header = EnvelopedData.from_der(_outer_der(_TYPES[profile]["enveloped"], stub))
        self.profile = profile
        self.ciphertext_length = ct_len

    @property
    def recipient_refs(self) -> tuple[RecipientRef, ...]:
        return self.header.recipient_refs

    def open(self, recipient_cert: TAny, key: TAny) -> PlaintextReader:
        cek = self.header.unwrap_key(recipient_cert, key)
        return PlaintextReader(self._r, self.ciphertext_length, cek, self.header.iv)


class PlaintextReader:
    """``read(n)`` over the decrypted content; the padding is checked at the end (a
    DecryptionError then) and the stream must end there."""

    def __init__(self, r: _Reader, ct_len: int, cek: bytes, iv: bytes) -> None:
        self._r = r
        self._left = ct_len
        self._dec = sm4.decryptor("cbc", cek, iv)
        self._buf = bytearray()
        self._done = False

    def _fill(self, want: int) -> None:
        while len(self._buf) < want and not self._done:
            if self._left:
                chunk = self._r.exact(min(self._left, 1 << 16))
                self._left -= len(chunk)
                self._buf += self._dec.update(chunk)
            else:
                self._buf += self._dec.finalize()
                self._r.end()
                self._done = True

    def read(self, n: int = 1 << 16) -> bytes:
        self._fill(n)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out
