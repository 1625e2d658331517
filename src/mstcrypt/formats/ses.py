"""GB/T 38540-2020 secure electronic seal structures (SES v4), and reading GM/T 0031-2014
(v1/v2) seals and seal signatures. ASN.1 and what is signed: FACTS.md §6.

* :class:`SealInfo` is SES_SealInfo (header, esID, property, picture, extDatas);
  :func:`make_seal` signs DER(SES_SealInfo) with the seal maker's key and returns a
  :class:`Seal` (SESeal); :func:`parse_seal` reads v4 and v1.
* :func:`make_signature` builds TBS_Sign (version 4, the seal, the time, the document
  digest dataHash and propertyInfo), signs DER(TBS_Sign) with the stamper's key and
  returns a :class:`SealSignature` (SES_Signature); :func:`parse_signature` reads it.

Signing goes through a callable ``sign(message) -> DER SM2Signature`` (with the default
signer ID), so the same code serves an ordinary key and a two-party key. Parsing is
strict: one canonical DER value, no trailing bytes, known header and versions, the SM2
signature algorithm, a 32-byte SM3 dataHash; vendor variants (r‖s signatures, 00-prefixed
ones, an explicit critical=FALSE) are accepted only where noted.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from asn1crypto.core import (
    Any,
    Boolean,
    GeneralizedTime,
    IA5String,
    Integer,
    ObjectIdentifier,
    OctetBitString,
    OctetString,
    PrintableString,
    SequenceOf,
    UTCTime,
    UTF8String,
)
from asn1crypto.core import Sequence as Asn1Sequence

from mstcrypt.crypto.sm2 import SM2PublicKey, signature_from_raw
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import DecodeError, PolicyError, UnsupportedError, VerificationError
from mstcrypt.formats import oids
from mstcrypt.formats._der import dump, load_strict

__all__ = [
    "CertListType",
    "ExtensionData",
    "Seal",
    "SealInfo",
    "SealSignature",
    "SealType",
    "TbsSign",
    "assemble_signature",
    "build_tbs",
    "make_seal",
    "make_signature",
    "parse_seal",
    "parse_signature",
    "parse_tbs",
]

#: Picture types named by GB/T 38540 and seen in products.
PICTURE_TYPES = frozenset({"ofd", "png", "jpg", "jpeg", "gif", "bmp", "svg"})
MAX_SES_BYTES = 8 * 1024 * 1024


class SealType(enum.IntEnum):
    ORGANIZATION = 1  #: 单位印章
    PERSONAL = 2  #: 个人印章


class CertListType(enum.IntEnum):
    CERTS = 1  #: the stampers' certificates (DER)
    DIGESTS = 2  #: digests of the stampers' certificates


# --- ASN.1 (asn1crypto) ------------------------------------------------------------


class _Header(Asn1Sequence):
    _fields = [("id", IA5String), ("version", Integer), ("vid", IA5String)]


class _OctetStrings(SequenceOf):
    _child_spec = OctetString


class _CertDigest(Asn1Sequence):
    _fields = [("type", PrintableString), ("value", OctetString)]


class _CertDigests(SequenceOf):
    _child_spec = _CertDigest


class _Property(Asn1Sequence):
    _fields = [
        ("type", Integer),
        ("name", UTF8String),
        ("cert_list_type", Integer),
        ("cert_list", Any),  # CHOICE of two untagged SEQUENCE OF: chosen by certListType
        ("create_date", GeneralizedTime),
        ("valid_start", GeneralizedTime),
        ("valid_end", GeneralizedTime),
    ]


class _PropertyV1(Asn1Sequence):
    _fields = [
        ("type", Integer),
        ("name", UTF8String),
        ("cert_list", _OctetStrings),
        ("create_date", UTCTime),
        ("valid_start", UTCTime),
        ("valid_end", UTCTime),
    ]


class _Picture(Asn1Sequence):
    _fields = [
        ("type", IA5String),
        ("data", OctetString),
        ("width", Integer),
        ("height", Integer),
    ]


class _ExtData(Asn1Sequence):
    # critical BOOLEAN DEFAULT FALSE: written only when TRUE (DER); an explicit FALSE,
    # as some products write, is read and reproduced byte for byte.
    _fields = [
        ("extn_id", ObjectIdentifier),
        ("critical", Boolean, {"optional": True}),
        ("extn_value", OctetString),
    ]


class _ExtDatas(SequenceOf):
    _child_spec = _ExtData


class _SealInfo(Asn1Sequence):
    _fields = [
        ("header", _Header),
        ("es_id", IA5String),
        ("property", _Property),
        ("picture", _Picture),
        ("ext_datas", _ExtDatas, {"optional": True}),
    ]


class _SealInfoV1(Asn1Sequence):
    _fields = [
        ("header", _Header),
        ("es_id", IA5String),
        ("property", _PropertyV1),
        ("picture", _Picture),
        ("ext_datas", _ExtDatas, {"optional": True}),
    ]


class _SESeal(Asn1Sequence):
    _fields = [
        ("seal_info", _SealInfo),
        ("cert", OctetString),
        ("sign_alg_id", ObjectIdentifier),
        ("signed_value", OctetBitString),
    ]


class _SignInfoV1(Asn1Sequence):
    _fields = [
        ("cert", OctetString),
        ("signature_algorithm", ObjectIdentifier),
        ("sign_data", OctetBitString),
    ]


class _SESealV1(Asn1Sequence):
    _fields = [("seal_info", _SealInfoV1), ("sign_info", _SignInfoV1)]


class _SealV1Signed(Asn1Sequence):
    """What a v1 seal maker signs: SEQUENCE { sealInfo, cert, signatureAlgorithm }."""

    _fields = [("seal_info", Any), ("cert", OctetString), ("alg", ObjectIdentifier)]


class _TBSSign(Asn1Sequence):
    _fields = [
        ("version", Integer),
        ("eseal", Any),  # kept as the exact bytes of the SESeal
        ("time_info", GeneralizedTime),
        ("data_hash", OctetBitString),
        ("property_info", IA5String),
        ("ext_datas", _ExtDatas, {"explicit": 0, "optional": True}),
    ]


class _SESSignature(Asn1Sequence):
    _fields = [
        ("to_sign", _TBSSign),
        ("cert", OctetString),
        ("signature_alg_id", ObjectIdentifier),
        ("signature", OctetBitString),
        ("time_stamp", OctetBitString, {"explicit": 0, "optional": True}),
    ]


class _TBSSignV1(Asn1Sequence):
    _fields = [
        ("version", Integer),
        ("eseal", Any),
        ("time_info", OctetBitString),
        ("data_hash", OctetBitString),
        ("property_info", IA5String),
        ("cert", OctetString),
        ("signature_algorithm", ObjectIdentifier),
    ]


class _SESSignatureV1(Asn1Sequence):
    _fields = [("to_sign", _TBSSignV1), ("signature", OctetBitString)]


# --- helpers ----------------------------------------------------------------------------


def _bytes(data: object, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise PolicyError(f"{what} must be bytes, not {type(data).__name__}")


def _utc(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise PolicyError(f"{what} must be a timezone-aware datetime")
    return value.astimezone(UTC).replace(microsecond=0)


def _ia5(text: str, what: str) -> str:
    if not isinstance(text, str) or not text.isascii():
        raise PolicyError(f"{what} must be an ASCII string (IA5String)")
    return text


def _sequence_count(der: bytes, what: str) -> int:
    """Number of elements of a top-level SEQUENCE (to tell SES versions apart)."""
    from asn1crypto import core

    try:
        value = core.load(der, strict=True)
        if not isinstance(value, Asn1Sequence):
            raise TypeError
        return len(value)
    except Exception:
        raise DecodeError(f"{what} is not one DER SEQUENCE") from None


def _check_signature_value(sig: bytes, *, tolerant: bool) -> bytes:
    """The signature as DER SM2Signature. ``tolerant`` also accepts 64-byte r‖s and
    a 00-prefixed r‖s, as some vendors store."""
    if tolerant:
        if len(sig) == 65 and sig[0] == 0:
            sig = sig[1:]
        if len(sig) == 64:
            return signature_from_raw(sig)
    return sig


def _verify(key: SM2PublicKey, sig: bytes, message: bytes, what: str, tolerant: bool) -> None:
    try:
        key.verify(_check_signature_value(sig, tolerant=tolerant), message)
    except VerificationError:
        raise VerificationError(f"{what} does not verify") from None


# --- seal -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtensionData:
    """One vendor extension (ExtensionDatas element)."""

    oid: str
    value: bytes
    critical: bool = False
    explicit_false: bool = field(default=False, repr=False, compare=False)

    def _asn1(self) -> _ExtData:
        v: dict[str, object] = {"extn_id": self.oid, "extn_value": self.value}
        if self.critical or self.explicit_false:
            v["critical"] = self.critical
        return _ExtData(v)


def _exts_out(exts: Sequence[ExtensionData]) -> _ExtDatas:
    return _ExtDatas([e._asn1() for e in exts])


def _exts_in(value: object) -> tuple[ExtensionData, ...]:
    if not isinstance(value, _ExtDatas):
        return ()
    out = []
    for e in value:
        crit = e["critical"]
        present = crit.native is not None
        out.append(
            ExtensionData(
                e["extn_id"].dotted,
                bytes(e["extn_value"].native),
                bool(crit.native) if present else False,
                explicit_false=present and not crit.native,
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class SealInfo:
    """SES_SealInfo: what the seal maker signs. ``width``/``height`` are the display
    size in millimetres; ``certs`` are the DER certificates of the authorised stampers
    (certListType 1), or ``cert_digests`` pairs (type, digest) for certListType 2."""

    es_id: str
    name: str
    picture_type: str
    picture: bytes = field(repr=False)
    width: int
    height: int
    valid_start: datetime
    valid_end: datetime
    certs: tuple[bytes, ...] = field(default=(), repr=False)
    cert_digests: tuple[tuple[str, bytes], ...] = ()
    seal_type: int = SealType.ORGANIZATION
    vid: str = "mstcrypt"
    created: datetime | None = None
    extensions: tuple[ExtensionData, ...] = ()
    version: int = 4

    def __post_init__(self) -> None:
        _ia5(self.es_id, "esID")
        _ia5(self.vid, "vid")
        if not isinstance(self.name, str) or not self.name:
            raise PolicyError("seal name must be a non-empty string")
        if self.picture_type.lower() not in PICTURE_TYPES:
            raise PolicyError(
                f"seal picture type {self.picture_type!r}; expected one of "
                + ", ".join(sorted(PICTURE_TYPES))
            )
        if not self.picture:
            raise PolicyError("seal picture is empty")
        for dim in (self.width, self.height):
            if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 1000:
                raise PolicyError("seal width and height must be 1..1000 mm")
        if bool(self.certs) == bool(self.cert_digests):
            raise PolicyError("a seal lists its stampers either as certs or as cert_digests")
        start = _utc(self.valid_start, "valid_start")
        end = _utc(self.valid_end, "valid_end")
        if end < start:
            raise PolicyError("seal valid_end is before valid_start")
        if self.version not in (1, 4):
            raise UnsupportedError(f"seal version {self.version}")

    @property
    def cert_list_type(self) -> CertListType:
        return CertListType.CERTS if self.certs else CertListType.DIGESTS

    def _asn1(self) -> _SealInfo:
        if self.version != 4:
            raise UnsupportedError("only v4 (GB/T 38540) seals are written")
        if self.certs:
            cert_list = dump(_OctetStrings([bytes(c) for c in self.certs]))
        else:
            cert_list = dump(
                _CertDigests([{"type": t, "value": bytes(v)} for t, v in self.cert_digests])
            )
        created = _utc(self.created or datetime.now(UTC), "created")
        v: dict[str, object] = {
            "header": {"id": "ES", "version": 4, "vid": self.vid},
            "es_id": self.es_id,
            "property": {
                "type": int(self.seal_type),
                "name": self.name,
                "cert_list_type": int(self.cert_list_type),
                "cert_list": Any.load(cert_list),
                "create_date": created,
                "valid_start": _utc(self.valid_start, "valid_start"),
                "valid_end": _utc(self.valid_end, "valid_end"),
            },
            "picture": {
                "type": self.picture_type,
                "data": bytes(self.picture),
                "width": self.width,
                "height": self.height,
            },
        }
        if self.extensions:
            v["ext_datas"] = _exts_out(self.extensions)
        return _SealInfo(v)

    def to_der(self) -> bytes:
        return dump(self._asn1())

    def lists_certificate(self, cert_der: bytes) -> bool:
        """Whether a stamper certificate is in certList (by DER or by SM3 digest)."""
        cert_der = _bytes(cert_der, "certificate")
        if self.certs:
            return any(bytes(c) == cert_der for c in self.certs)
        digest = sm3(cert_der)
        for kind, value in self.cert_digests:
            if kind.upper() not in ("SM3", oids.SM3):
                raise UnsupportedError(f"seal certificate digest type {kind!r} (expected SM3)")
            if bytes(value) == digest:
                return True
        return False


@dataclass(frozen=True)
class Seal:
    """An electronic seal (SESeal): SealInfo signed by the seal maker."""

    info: SealInfo
    maker_cert: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    der: bytes = field(repr=False)
    signed_bytes: bytes = field(repr=False)  #: exactly what the maker signed
    sign_alg: str = oids.SM2_WITH_SM3

    @property
    def version(self) -> int:
        return self.info.version

    def verify(self, maker_public_key: SM2PublicKey, *, tolerant: bool = False) -> None:
        """Verify the maker's signature (raises VerificationError)."""
        _verify(maker_public_key, self.signature, self.signed_bytes, "seal signature", tolerant)

    def valid_at(self, when: datetime) -> bool:
        when = _utc(when, "time")
        return _utc(self.info.valid_start, "s") <= when <= _utc(self.info.valid_end, "e")


def make_seal(info: SealInfo, maker_cert: bytes, sign: Callable[[bytes], bytes]) -> Seal:
    """Sign DER(SES_SealInfo) with ``sign`` (the maker's key; DER SM2Signature with the
    default ID) and return the v4 SESeal."""
    maker_cert = _bytes(maker_cert, "maker certificate")
    info_der = info.to_der()
    signature = _bytes(sign(info_der), "signature")
    der = dump(
        _SESeal(
            {
                "seal_info": _SealInfo.load(info_der),
                "cert": maker_cert,
                "sign_alg_id": oids.SM2_WITH_SM3,
                "signed_value": signature,
            }
        )
    )
    return parse_seal(der)


def _info_from(asn: _SealInfo | _SealInfoV1, version: int) -> SealInfo:
    header = asn["header"]
    if header["id"].native != "ES":
        raise DecodeError(f"SES_Header.id is {header['id'].native!r}, expected 'ES'")
    hv = header["version"].native
    if hv != version and not (version == 1 and hv in (1, 2)):
        raise DecodeError(f"SES_Header.version {hv} in a v{version} structure")
    prop = asn["property"]
    pic = asn["picture"]
    certs: tuple[bytes, ...] = ()
    digests: tuple[tuple[str, bytes], ...] = ()
    if version == 4:
        clt = prop["cert_list_type"].native
        raw = prop["cert_list"].dump()
        if clt == CertListType.CERTS:
            certs = tuple(bytes(c) for c in load_strict(_OctetStrings, raw, "SES_CertList").native)
        elif clt == CertListType.DIGESTS:
            lst = load_strict(_CertDigests, raw, "SES_CertList")
            digests = tuple((d["type"].native, bytes(d["value"].native)) for d in lst)
        else:
            raise DecodeError(f"SES_ESPropertyInfo.certListType {clt}, expected 1 or 2")
    else:
        certs = tuple(bytes(c) for c in prop["cert_list"].native)
    if not certs and not digests:
        raise DecodeError("SES_ESPropertyInfo.certList is empty")
    try:
        return SealInfo(
            es_id=asn["es_id"].native,
            name=prop["name"].native,
            picture_type=pic["type"].native,
            picture=bytes(pic["data"].native),
            width=pic["width"].native,
            height=pic["height"].native,
            valid_start=prop["valid_start"].native,
            valid_end=prop["valid_end"].native,
            certs=certs,
            cert_digests=digests,
            seal_type=prop["type"].native,
            vid=header["vid"].native,
            created=prop["create_date"].native,
            extensions=_exts_in(asn["ext_datas"]),
            version=version,
        )
    except PolicyError as exc:
        raise DecodeError(f"SES_SealInfo: {exc}") from None


def _check_alg(oid: str, what: str) -> None:
    if oid != oids.SM2_WITH_SM3:
        raise UnsupportedError(
            f"{what} algorithm {oid}, expected SM2 with SM3 (1.2.156.10197.1.501)"
        )


def parse_seal(der: bytes) -> Seal:
    """Parse a DER SESeal: GB/T 38540 v4, or GM/T 0031 v1/v2 (read only)."""
    der = _bytes(der, "SESeal")
    if len(der) > MAX_SES_BYTES:
        raise DecodeError(f"SESeal larger than {MAX_SES_BYTES} bytes")
    count = _sequence_count(der, "SESeal")
    if count == 2:
        v1 = load_strict(_SESealV1, der, "SESeal (v1)")
        info = _info_from(v1["seal_info"], 1)
        si = v1["sign_info"]
        alg = si["signature_algorithm"].dotted
        _check_alg(alg, "seal signature")
        cert = bytes(si["cert"].native)
        signed = dump(
            _SealV1Signed({"seal_info": Any.load(v1["seal_info"].dump()), "cert": cert, "alg": alg})
        )
        return Seal(info, cert, bytes(si["sign_data"].native), der, signed, alg)
    if count == 5:
        raise UnsupportedError("SESeal with 5 fields (GM/T 0031-2025 v5) is not supported")
    if count != 4:
        raise DecodeError(f"SESeal has {count} fields; expected 4 (v4) or 2 (v1)")
    v4 = load_strict(_SESeal, der, "SESeal")
    info = _info_from(v4["seal_info"], 4)
    alg = v4["sign_alg_id"].dotted
    _check_alg(alg, "seal signature")
    return Seal(
        info,
        bytes(v4["cert"].native),
        bytes(v4["signed_value"].native),
        der,
        v4["seal_info"].dump(),
        alg,
    )


# --- seal signature ---------------------------------------------------------------------


@dataclass(frozen=True)
class SealSignature:
    """An electronic seal signature (SES_Signature)."""

    seal: Seal
    time_info: datetime | None  #: v4 GeneralizedTime; None for v1 (see time_info_raw)
    data_hash: bytes
    property_info: str
    signer_cert: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    der: bytes = field(repr=False)
    tbs_der: bytes = field(repr=False)  #: exactly what the stamper signed
    version: int = 4
    extensions: tuple[ExtensionData, ...] = ()
    time_stamp: bytes | None = None
    time_info_raw: bytes = b""
    sign_alg: str = oids.SM2_WITH_SM3

    def verify(self, signer_public_key: SM2PublicKey, *, tolerant: bool = False) -> None:
        """Verify the stamper's signature over DER(TBS_Sign) (raises VerificationError)."""
        _verify(signer_public_key, self.signature, self.tbs_der, "seal signature value", tolerant)


def make_signature(
    seal: Seal,
    data_hash: bytes,
    property_info: str,
    signer_cert: bytes,
    sign: Callable[[bytes], bytes],
    *,
    time: datetime | None = None,
    extensions: Sequence[ExtensionData] = (),
) -> SealSignature:
    """Build TBS_Sign v4 over ``data_hash`` (SM3 of the protected data, 32 bytes), sign
    DER(TBS_Sign) with ``sign`` (the stamper's key) and return the SES_Signature."""
    if not isinstance(seal, Seal) or seal.version != 4:
        raise PolicyError("make_signature needs a v4 Seal")
    tbs_der = build_tbs(seal, data_hash, property_info, time=time, extensions=extensions)
    return assemble_signature(tbs_der, signer_cert, _bytes(sign(tbs_der), "signature"))


def parse_signature(der: bytes) -> SealSignature:
    """Parse a DER SES_Signature: v4 (GB/T 38540) or v1 (GM/T 0031, read only)."""
    der = _bytes(der, "SES_Signature")
    if len(der) > MAX_SES_BYTES:
        raise DecodeError(f"SES_Signature larger than {MAX_SES_BYTES} bytes")
    count = _sequence_count(der, "SES_Signature")
    if count == 2:
        v1 = load_strict(_SESSignatureV1, der, "SES_Signature (v1)")
        tbs = v1["to_sign"]
        if tbs["version"].native not in (1, 2):
            raise DecodeError(f"TBS_Sign.version {tbs['version'].native} in a v1 signature")
        alg = tbs["signature_algorithm"].dotted
        _check_alg(alg, "seal signature value")
        data_hash = bytes(tbs["data_hash"].native)
        if len(data_hash) != 32:
            raise DecodeError(f"TBS_Sign.dataHash has {len(data_hash)} bytes, expected 32 (SM3)")
        return SealSignature(
            seal=parse_seal(tbs["eseal"].dump()),
            time_info=None,
            data_hash=data_hash,
            property_info=tbs["property_info"].native,
            signer_cert=bytes(tbs["cert"].native),
            signature=bytes(v1["signature"].native),
            der=der,
            tbs_der=tbs.dump(),
            version=1,
            time_info_raw=bytes(tbs["time_info"].native),
            sign_alg=alg,
        )
    if count not in (4, 5):
        raise DecodeError(f"SES_Signature has {count} fields; expected 4 or 5 (v4) or 2 (v1)")
    v4 = load_strict(_SESSignature, der, "SES_Signature")
    tbs = v4["to_sign"]
    if tbs["version"].native != 4:
        raise DecodeError(f"TBS_Sign.version {tbs['version'].native}, expected 4")
    alg = v4["signature_alg_id"].dotted
    _check_alg(alg, "seal signature value")
    seal = parse_seal(tbs["eseal"].dump())
    if seal.version != 4:
        raise DecodeError("a v4 SES_Signature must carry a v4 SESeal")
    data_hash = bytes(tbs["data_hash"].native)
    if len(data_hash) != 32:
        raise DecodeError(f"TBS_Sign.dataHash has {len(data_hash)} bytes, expected 32 (SM3)")
    ts = v4["time_stamp"]
    return SealSignature(
        seal=seal,
        time_info=tbs["time_info"].native,
        data_hash=data_hash,
        property_info=tbs["property_info"].native,
        signer_cert=bytes(v4["cert"].native),
        signature=bytes(v4["signature"].native),
        der=der,
        tbs_der=tbs.dump(),
        version=4,
        extensions=_exts_in(tbs["ext_datas"]),
        time_stamp=bytes(ts.native) if ts.native is not None else None,
        sign_alg=alg,
    )


@dataclass(frozen=True)
class TbsSign:
    """A v4 TBS_Sign on its own: what a stamper (or a co-signing server) is asked to
    sign. The seal server reads it to decide and to audit what it co-signs."""

    seal: Seal
    time_info: datetime
    data_hash: bytes
    property_info: str
    der: bytes = field(repr=False)
    extensions: tuple[ExtensionData, ...] = ()


def parse_tbs(der: bytes) -> TbsSign:
    """Strictly parse a DER TBS_Sign (v4) with its embedded SESeal."""
    der = _bytes(der, "TBS_Sign")
    if len(der) > MAX_SES_BYTES:
        raise DecodeError(f"TBS_Sign larger than {MAX_SES_BYTES} bytes")
    tbs = load_strict(_TBSSign, der, "TBS_Sign")
    if tbs["version"].native != 4:
        raise DecodeError(f"TBS_Sign.version {tbs['version'].native}, expected 4")
    seal = parse_seal(tbs["eseal"].dump())
    if seal.version != 4:
        raise DecodeError("a v4 TBS_Sign must carry a v4 SESeal")
    data_hash = bytes(tbs["data_hash"].native)
    if len(data_hash) != 32:
        raise DecodeError(f"TBS_Sign.dataHash has {len(data_hash)} bytes, expected 32 (SM3)")
    return TbsSign(
        seal=seal,
        time_info=tbs["time_info"].native,
        data_hash=data_hash,
        property_info=tbs["property_info"].native,
        der=der,
        extensions=_exts_in(tbs["ext_datas"]),
    )


def build_tbs(
    seal: Seal,
    data_hash: bytes,
    property_info: str,
    *,
    time: datetime | None = None,
    extensions: Sequence[ExtensionData] = (),
) -> bytes:
    """DER TBS_Sign v4 (what :func:`make_signature` signs), for remote signing."""
    if not isinstance(seal, Seal) or seal.version != 4:
        raise PolicyError("a TBS_Sign needs a v4 Seal")
    data_hash = _bytes(data_hash, "dataHash")
    if len(data_hash) != 32:
        raise PolicyError(f"dataHash must be a 32-byte SM3 digest, got {len(data_hash)}")
    v: dict[str, object] = {
        "version": 4,
        "eseal": Any.load(seal.der),
        "time_info": _utc(time or datetime.now(UTC), "time"),
        "data_hash": data_hash,
        "property_info": _ia5(property_info, "propertyInfo"),
    }
    if extensions:
        v["ext_datas"] = _exts_out(extensions)
    return dump(_TBSSign(v))


def assemble_signature(tbs_der: bytes, signer_cert: bytes, signature: bytes) -> SealSignature:
    """SES_Signature from a TBS_Sign and its (remotely made) signature."""
    tbs_der = _bytes(tbs_der, "TBS_Sign")
    parse_tbs(tbs_der)
    der = dump(
        _SESSignature(
            {
                "to_sign": _TBSSign.load(tbs_der),
                "cert": _bytes(signer_cert, "signer certificate"),
                "signature_alg_id": oids.SM2_WITH_SM3,
                "signature": _bytes(signature, "signature"),
            }
        )
    )
    return parse_signature(der)
