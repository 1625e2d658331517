"""Malformed and unsupported CMS messages: every case is built byte by byte from the
parts of a valid message (so exactly one thing is wrong) and must be refused with an
exact, typed error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import pytest
from asn1crypto.core import GeneralizedTime, Integer, ObjectIdentifier, OctetString, UTCTime
from cmskit import kit

from mstcrypt.errors import (
    DecodeError,
    DecryptionError,
    InvalidKeyError,
    MstCryptError,
    SignatureFormatError,
    UnsupportedError,
    VerificationError,
)
from mstcrypt.formats import cms
from mstcrypt.formats._der import dump

GM_DATA, GM_SIGNED, GM_ENV = cms.GM_DATA, cms.GM_SIGNED, cms.GM_ENVELOPED
P7_DATA = cms.P7_DATA
SM3 = "1.2.156.10197.1.401"
SHA256 = "2.16.840.1.101.3.4.2.1"


def tlv(tag: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return cms._tl(tag, len(body)) + body


def oid(dotted: str) -> bytes:
    return dump(ObjectIdentifier(dotted))


def integer(v: int) -> bytes:
    return dump(Integer(v))


def octets(b: bytes) -> bytes:
    return dump(OctetString(b))


def alg(dotted: str, params: bytes = b"") -> bytes:
    return tlv(0x30, oid(dotted), params)


def set_of(*items: bytes) -> bytes:
    return tlv(0x31, *sorted(items))


def outer(content_type: str, inner: bytes) -> bytes:
    return tlv(0x30, oid(content_type), tlv(0xA0, inner))


@dataclass(frozen=True)
class Parts:
    """The pieces of one valid SignedData and one valid EnvelopedData."""

    cert: bytes
    ias: bytes
    content: bytes
    digest: bytes
    time: bytes
    signature: bytes
    ktri_rid: bytes
    encrypted_key: bytes
    iv: bytes
    ciphertext: bytes


@cache
def parts() -> Parts:
    k = kit()
    content = b"negative corpus content"
    sd = cms.SignedData.from_der(cms.sign(content, k.alice.cert, k.alice.key))
    view = sd.signers[0]
    ed = cms.EnvelopedData.from_der(cms.encrypt(content, [k.bob.cert]))
    return Parts(
        cert=k.alice.cert.der,
        ias=dump(cms._ias(cms._parse_cert(k.alice.cert))),
        content=content,
        digest=view.message_digest or b"",
        time=dump(UTCTime(view.signing_time)),
        signature=view.signature,
        ktri_rid=dump(cms._ias(cms._parse_cert(k.bob.cert))),
        encrypted_key=ed.recipients[0].encrypted_key,
        iv=ed.iv,
        ciphertext=ed.ciphertext,
    )


def attr(attr_oid: str, *values: bytes) -> bytes:
    return tlv(0x30, oid(attr_oid), set_of(*values))


def attrs(
    *,
    ctype: bytes | None = None,
    digest: bytes | None = None,
    time: bytes | None = None,
    extra: tuple[bytes, ...] = (),
) -> list[bytes]:
    p = parts()
    out = [
        attr(cms.ATTR_CONTENT_TYPE, ctype if ctype is not None else oid(GM_DATA)),
        attr(cms.ATTR_MESSAGE_DIGEST, digest if digest is not None else octets(p.digest)),
        attr(cms.ATTR_SIGNING_TIME, time if time is not None else p.time),
    ]
    return out + list(extra)


def signer_info(
    *,
    version: int = 1,
    sid: bytes | None = None,
    dalg: bytes | None = None,
    signed: list[bytes] | None = None,
    no_signed: bool = False,
    salg: bytes | None = None,
    signature: bytes | None = None,
    unsigned: bytes = b"",
) -> bytes:
    p = parts()
    sa = b"" if no_signed else tlv(0xA0, *sorted(signed if signed is not None else attrs()))
    return tlv(
        0x30,
        integer(version),
        sid if sid is not None else p.ias,
        dalg if dalg is not None else alg(SM3),
        sa,
        salg if salg is not None else alg("1.2.156.10197.1.301.1"),
        octets(signature if signature is not None else p.signature),
        unsigned,
    )


def signed_data(
    *,
    version: int = 1,
    dalgs: bytes | None = None,
    content_info: bytes | None = None,
    certs: bytes | None = None,
    crls: bytes = b"",
    signer_infos: bytes | None = None,
    outer_type: str = GM_SIGNED,
) -> bytes:
    p = parts()
    inner = tlv(
        0x30,
        integer(version),
        dalgs if dalgs is not None else set_of(alg(SM3)),
        content_info
        if content_info is not None
        else tlv(0x30, oid(GM_DATA), tlv(0xA0, octets(p.content))),
        certs if certs is not None else tlv(0xA0, p.cert),
        crls,
        signer_infos if signer_infos is not None else set_of(signer_info()),
    )
    return outer(outer_type, inner)


def ktri(
    *,
    version: int = 1,
    rid: bytes | None = None,
    kalg: bytes | None = None,
    ek: bytes | None = None,
) -> bytes:
    p = parts()
    return tlv(
        0x30,
        integer(version),
        rid if rid is not None else p.ktri_rid,
        kalg if kalg is not None else alg("1.2.156.10197.1.301.3"),
        octets(ek if ek is not None else p.encrypted_key),
    )


def enveloped(
    *,
    version: int = 1,
    version_der: bytes | None = None,
    originator: bytes = b"",
    recipients: bytes | None = None,
    ctype: str = GM_DATA,
    calg: bytes | None = None,
    ec: bytes | None = None,
    shared: bytes = b"",
    unprotected: bytes = b"",
) -> bytes:
    p = parts()
    eci = tlv(
        0x30,
        oid(ctype),
        calg if calg is not None else alg("1.2.156.10197.1.104.2", octets(p.iv)),
        ec if ec is not None else tlv(0x80, p.ciphertext),
        shared,
    )
    inner = tlv(
        0x30,
        version_der if version_der is not None else integer(version),
        originator,
        recipients if recipients is not None else set_of(ktri()),
        eci,
        unprotected,
    )
    return outer(GM_ENV, inner)


def _valid_signed() -> bytes:
    return signed_data()


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], bytes]
    error: type[MstCryptError]
    message: str
    verify: bool = False  # the error comes from verify(), not from parsing


INT5 = integer(5)

CASES = [
    # --- ContentInfo ---
    Case("empty", lambda: b"", DecodeError, "ContentInfo is empty"),
    Case(
        "trailing byte",
        lambda: _valid_signed() + b"\x00",
        DecodeError,
        "trailing bytes after ContentInfo",
    ),
    Case("not a sequence", lambda: b"\x31\x00", DecodeError, "ContentInfo must be a SEQUENCE"),
    Case(
        "indefinite length",
        lambda: b"\x30\x80" + _valid_signed()[4:] + b"\x00\x00",
        DecodeError,
        "ContentInfo uses an indefinite length (BER); DER is required",
    ),
    Case(
        "non-minimal length",
        lambda: b"\x30\x81\x03" + oid("1.2.3")[:3],
        DecodeError,
        "ContentInfo length is not minimally encoded (not DER)",
    ),
    Case("truncated", lambda: _valid_signed()[:-1], DecodeError, "ContentInfo is truncated"),
    Case(
        "content type not an OID",
        lambda: tlv(0x30, INT5, tlv(0xA0, INT5)),
        DecodeError,
        "ContentInfo contentType must be an OBJECT IDENTIFIER",
    ),
    Case(
        "no content",
        lambda: tlv(0x30, oid(GM_SIGNED)),
        DecodeError,
        "ContentInfo has no content",
    ),
    Case(
        "content not [0]",
        lambda: tlv(0x30, oid(GM_SIGNED), tlv(0xA1, INT5)),
        DecodeError,
        "ContentInfo content must be [0] EXPLICIT",
    ),
    Case(
        "element after content",
        lambda: tlv(0x30, oid(GM_SIGNED), tlv(0xA0, INT5), INT5),
        DecodeError,
        "trailing bytes inside ContentInfo",
    ),
    Case(
        "unknown content type",
        lambda: outer("1.2.3.4", INT5),
        UnsupportedError,
        "ContentInfo content type 1.2.3.4 is not supported",
    ),
    Case(
        "plain data",
        lambda: outer(GM_DATA, octets(b"x")),
        UnsupportedError,
        "ContentInfo is plain data (1.2.156.10197.6.1.4.2.1); expected signedData or envelopedData",
    ),
    Case(
        "PEM with another label",
        lambda: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        DecodeError,
        "no PEM block found; expected one of: CMS, PKCS7",
    ),
    # --- SignedData ---
    Case(
        "SignedData version 2",
        lambda: signed_data(version=2),
        DecodeError,
        "SignedData version must be 1, got 2",
    ),
    Case(
        "SignedData is not a SEQUENCE",
        lambda: outer(GM_SIGNED, INT5),
        DecodeError,
        "malformed SignedData: ValueError",
    ),
    Case(
        "digestAlgorithms sha256",
        lambda: signed_data(dalgs=set_of(alg(SHA256))),
        UnsupportedError,
        "SignedData digestAlgorithms must be exactly {sm3}",
    ),
    Case(
        "digestAlgorithms empty",
        lambda: signed_data(dalgs=set_of()),
        UnsupportedError,
        "SignedData digestAlgorithms must be exactly {sm3}",
    ),
    Case(
        "digest algorithm parameters",
        lambda: signed_data(dalgs=set_of(alg(SM3, INT5))),
        DecodeError,
        "SignedData digest algorithm parameters must be NULL or absent",
    ),
    Case(
        "inner content type of the other profile",
        lambda: signed_data(
            content_info=tlv(0x30, oid(P7_DATA), tlv(0xA0, octets(parts().content)))
        ),
        UnsupportedError,
        "SignedData content type 1.2.840.113549.1.7.1; expected 1.2.156.10197.6.1.4.2.1",
    ),
    Case(
        "constructed content",
        lambda: signed_data(
            content_info=tlv(0x30, oid(GM_DATA), tlv(0xA0, tlv(0x24, octets(b"ab"))))
        ),
        DecodeError,
        "malformed SignedData: ValueError",
    ),
    Case(
        "garbage certificate",
        lambda: signed_data(certs=tlv(0xA0, tlv(0x30, INT5))),
        DecodeError,
        "malformed SignedData: ValueError",
    ),
    Case(
        "certificate twice",
        lambda: signed_data(certs=tlv(0xA0, parts().cert, parts().cert)),
        DecodeError,
        "SignedData carries two certificates with the same issuer and serial number",
    ),
    Case(
        "crls present",
        lambda: signed_data(crls=tlv(0xA1, tlv(0x30, INT5))),
        UnsupportedError,
        "SignedData crls are not supported; publish CRLs separately",
    ),
    Case(
        "no SignerInfo",
        lambda: signed_data(signer_infos=set_of()),
        DecodeError,
        "SignedData has no SignerInfo",
    ),
    # --- SignerInfo ---
    Case(
        "SignerInfo version 3",
        lambda: signed_data(signer_infos=set_of(signer_info(version=3))),
        DecodeError,
        "SignerInfo version must be 1, got 3",
    ),
    Case(
        "sid subjectKeyIdentifier",
        lambda: signed_data(signer_infos=set_of(signer_info(sid=tlv(0x80, b"\x01" * 20)))),
        UnsupportedError,
        "SignerInfo sid is a subjectKeyIdentifier; GM/T 0010 uses issuerAndSerialNumber",
    ),
    Case(
        "sid serial zero",
        lambda: signed_data(signer_infos=set_of(signer_info(sid=tlv(0x30, _issuer(), integer(0))))),
        DecodeError,
        "SignerInfo sid serial number must be positive",
    ),
    Case(
        "SignerInfo digest sha256",
        lambda: signed_data(signer_infos=set_of(signer_info(dalg=alg(SHA256)))),
        UnsupportedError,
        "SignerInfo digest algorithm 2.16.840.1.101.3.4.2.1; expected sm3",
    ),
    Case(
        "signature algorithm ecdsa",
        lambda: signed_data(signer_infos=set_of(signer_info(salg=alg("1.2.840.10045.4.3.2")))),
        UnsupportedError,
        "SignerInfo signature algorithm 1.2.840.10045.4.3.2; expected sm2-1 or sm2sign-with-sm3",
    ),
    Case(
        "signature algorithm parameters",
        lambda: signed_data(
            signer_infos=set_of(signer_info(salg=alg("1.2.156.10197.1.501", INT5)))
        ),
        DecodeError,
        "SignerInfo signature algorithm parameters must be NULL or absent",
    ),
    Case(
        "empty signature",
        lambda: signed_data(signer_infos=set_of(signer_info(signature=b""))),
        SignatureFormatError,
        "SignerInfo signature is empty",
    ),
    Case(
        "unsigned attributes",
        lambda: signed_data(
            signer_infos=set_of(signer_info(unsigned=tlv(0xA1, attr("1.2.3", INT5))))
        ),
        UnsupportedError,
        "SignerInfo unsignedAttrs are not supported",
    ),
    Case(
        "empty signed attributes",
        lambda: signed_data(signer_infos=set_of(signer_info(signed=[]))),
        DecodeError,
        "SignerInfo signedAttrs is present but empty",
    ),
    Case(
        "duplicate attribute",
        lambda: signed_data(
            signer_infos=set_of(
                signer_info(signed=attrs(extra=(attr(cms.ATTR_SIGNING_TIME, parts().time),)))
            )
        ),
        DecodeError,
        "signed attribute 1.2.840.113549.1.9.5 appears twice",
    ),
    Case(
        "two messageDigest values",
        lambda: signed_data(
            signer_infos=set_of(
                signer_info(
                    signed=[
                        attr(cms.ATTR_CONTENT_TYPE, oid(GM_DATA)),
                        attr(cms.ATTR_MESSAGE_DIGEST, octets(b"a" * 32), octets(b"b" * 32)),
                    ]
                )
            )
        ),
        DecodeError,
        "signed attribute 1.2.840.113549.1.9.4 must have exactly one value",
    ),
    Case(
        "no contentType attribute",
        lambda: signed_data(signer_infos=set_of(signer_info(signed=attrs()[1:]))),
        DecodeError,
        "signed attributes lack contentType",
    ),
    Case(
        "no messageDigest attribute",
        lambda: signed_data(signer_infos=set_of(signer_info(signed=[attrs()[0], attrs()[2]]))),
        DecodeError,
        "signed attributes lack messageDigest",
    ),
    Case(
        "contentType attribute not an OID",
        lambda: signed_data(signer_infos=set_of(signer_info(signed=attrs(ctype=INT5)))),
        DecodeError,
        "contentType attribute must be an OBJECT IDENTIFIER",
    ),
    Case(
        "contentType attribute of the other profile",
        lambda: signed_data(signer_infos=set_of(signer_info(signed=attrs(ctype=oid(P7_DATA))))),
        VerificationError,
        "contentType attribute 1.2.840.113549.1.7.1 does not match 1.2.156.10197.6.1.4.2.1",
    ),
    Case(
        "messageDigest not an OCTET STRING",
        lambda: signed_data(signer_infos=set_of(signer_info(signed=attrs(digest=INT5)))),
        DecodeError,
        "messageDigest attribute must be an OCTET STRING",
    ),
    Case(
        "messageDigest of 20 bytes",
        lambda: signed_data(
            signer_infos=set_of(signer_info(signed=attrs(digest=octets(b"\x01" * 20))))
        ),
        DecodeError,
        "messageDigest attribute must be 32 bytes (SM3), got 20",
    ),
    Case(
        "signingTime an INTEGER",
        lambda: signed_data(signer_infos=set_of(signer_info(signed=attrs(time=INT5)))),
        DecodeError,
        "signingTime must be UTCTime or GeneralizedTime",
    ),
    Case(
        "signingTime GeneralizedTime in 2030",
        lambda: signed_data(
            signer_infos=set_of(signer_info(signed=attrs(time=dump(GeneralizedTime(_t2030())))))
        ),
        DecodeError,
        "signingTime between 1950 and 2049 must be UTCTime",
    ),
    Case(
        "signingTime garbage",
        lambda: signed_data(signer_infos=set_of(signer_info(signed=attrs(time=tlv(0x17, b"x"))))),
        DecodeError,
        "malformed SignedData: ValueError",
    ),
    Case(
        "signature is not DER",
        lambda: signed_data(signer_infos=set_of(signer_info(signature=b"\x30\x02\x02\x00"))),
        SignatureFormatError,
        "DER SM2Signature must be 8..72 bytes, got 4 (expected DER, not raw r‖s?)",
        verify=True,
    ),
    Case(
        "signature by nobody",
        lambda: signed_data(
            signer_infos=set_of(signer_info(signature=kit().mallory.key.sign(b"x")))
        ),
        VerificationError,
        "SM2 signature over the signed attributes does not verify",
        verify=True,
    ),
    Case(
        "signer certificate absent",
        lambda: signed_data(certs=b""),
        VerificationError,
        "the signer certificate is not in the message",
        verify=True,
    ),
    # --- EnvelopedData ---
    Case(
        "EnvelopedData version 3",
        lambda: enveloped(version=3),
        DecodeError,
        "EnvelopedData version must be 0 or 1, got 3",
    ),
    Case(
        "originatorInfo",
        lambda: enveloped(originator=tlv(0xA0, tlv(0xA0, parts().cert))),
        UnsupportedError,
        "EnvelopedData originatorInfo is not supported",
    ),
    Case(
        "unprotectedAttrs",
        lambda: enveloped(unprotected=tlv(0xA1, attr("1.2.3", INT5))),
        UnsupportedError,
        "EnvelopedData unprotectedAttrs are not supported",
    ),
    Case(
        "no RecipientInfo",
        lambda: enveloped(recipients=set_of()),
        DecodeError,
        "EnvelopedData has no RecipientInfo",
    ),
    Case(
        "kari recipient",
        lambda: enveloped(recipients=set_of(tlv(0xA1, INT5))),
        UnsupportedError,
        "RecipientInfo kari is not supported; only KeyTransRecipientInfo",
    ),
    Case(
        "pwri recipient",
        lambda: enveloped(recipients=set_of(tlv(0xA3, INT5))),
        UnsupportedError,
        "RecipientInfo pwri is not supported; only KeyTransRecipientInfo",
    ),
    Case(
        "KTRI version 2",
        lambda: enveloped(recipients=set_of(ktri(version=2))),
        DecodeError,
        "KeyTransRecipientInfo version must be 0 or 1, got 2",
    ),
    Case(
        "KTRI subjectKeyIdentifier",
        lambda: enveloped(recipients=set_of(ktri(rid=tlv(0x80, b"\x02" * 20)))),
        UnsupportedError,
        "KeyTransRecipientInfo rid is a subjectKeyIdentifier; GM/T 0010 uses issuerAndSerialNumber",
    ),
    Case(
        "key encryption rsaEncryption",
        lambda: enveloped(recipients=set_of(ktri(kalg=alg("1.2.840.113549.1.1.1")))),
        UnsupportedError,
        "key encryption algorithm 1.2.840.113549.1.1.1; expected sm2-3 (1.2.156.10197.1.301.3)",
    ),
    Case(
        "key encryption parameters",
        lambda: enveloped(recipients=set_of(ktri(kalg=alg("1.2.156.10197.1.301.3", INT5)))),
        DecodeError,
        "key encryption algorithm parameters must be NULL or absent",
    ),
    Case(
        "empty encryptedKey",
        lambda: enveloped(recipients=set_of(ktri(ek=b""))),
        DecodeError,
        "KeyTransRecipientInfo encryptedKey is empty",
    ),
    Case(
        "encryptedKey not an SM2Cipher",
        lambda: enveloped(recipients=set_of(ktri(ek=b"\x01" * 100))),
        DecodeError,
        "malformed SM2Cipher: ValueError",
    ),
    Case(
        "encryptedKey C1 off the curve",
        lambda: enveloped(recipients=set_of(ktri(ek=_off_curve_cipher()))),
        InvalidKeyError,
        "point is not on the SM2 curve",
    ),
    Case(
        "same recipient twice",
        lambda: enveloped(recipients=set_of(ktri(), ktri(version=0))),
        DecodeError,
        "EnvelopedData names the same recipient twice",
    ),
    Case(
        "encrypted content type of the other profile",
        lambda: enveloped(ctype=P7_DATA),
        UnsupportedError,
        "EncryptedContentInfo content type 1.2.840.113549.1.7.1; expected 1.2.156.10197.6.1.4.2.1",
    ),
    Case(
        "SM4-ECB content encryption",
        lambda: enveloped(calg=alg("1.2.156.10197.1.104.1")),
        UnsupportedError,
        "content encryption algorithm 1.2.156.10197.1.104.1; "
        "expected sm4-cbc (1.2.156.10197.1.104.2)",
    ),
    Case(
        "no IV",
        lambda: enveloped(calg=alg("1.2.156.10197.1.104.2")),
        DecodeError,
        "SM4-CBC parameters must be an OCTET STRING IV",
    ),
    Case(
        "IV of 8 bytes",
        lambda: enveloped(calg=alg("1.2.156.10197.1.104.2", octets(b"\x00" * 8))),
        DecodeError,
        "SM4-CBC IV must be 16 bytes, got 8",
    ),
    Case(
        "no encryptedContent",
        lambda: enveloped(ec=b""),
        UnsupportedError,
        "EnvelopedData without encryptedContent (detached) is not supported",
    ),
    Case(
        "encryptedContent of 15 bytes",
        lambda: enveloped(ec=tlv(0x80, b"\x00" * 15)),
        DecodeError,
        "EnvelopedData encryptedContent must be a non-empty multiple of 16 bytes",
    ),
    Case(
        "sharedInfo1",
        lambda: enveloped(shared=tlv(0x81, b"x")),
        UnsupportedError,
        "EncryptedContentInfo sharedInfo1/2 are not supported",
    ),
]


def _issuer() -> bytes:
    return bytes(cms._parse_cert(kit().alice.cert)["tbs_certificate"]["issuer"].dump())


def _t2030():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime(2030, 1, 1, tzinfo=UTC)


def _off_curve_cipher() -> bytes:
    from mstcrypt.formats.gmt0009 import SM2Cipher

    return dump(SM2Cipher({"x": 1, "y": 1, "hash": b"\x00" * 32, "ciphertext": b"\x01" * 16}))


def test_corpus_size() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


def test_parts_make_valid_messages() -> None:
    """The builders reproduce valid messages, so each case differs in one thing."""
    k = kit()
    sd = cms.SignedData.from_der(signed_data())
    assert sd.verify()[0].certificate_der == k.alice.cert.der
    assert cms.decrypt(enveloped(), k.bob.cert, k.bob.key) == parts().content


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed(case: Case) -> None:
    data = case.build()
    with pytest.raises(case.error) as info:
        msg = cms.load(data)
        if case.verify:
            assert isinstance(msg, cms.SignedData)
            msg.verify()
    assert str(info.value) == case.message
    assert type(info.value) is case.error


def test_signed_loader_refuses_enveloped() -> None:
    k = kit()
    with pytest.raises(UnsupportedError, match="ContentInfo is envelopedData; expected signedData"):
        cms.SignedData.from_der(cms.encrypt(b"x", [k.bob.cert]))
    with pytest.raises(UnsupportedError, match="ContentInfo is signedData; expected envelopedData"):
        cms.EnvelopedData.from_der(cms.sign(b"x", k.alice.cert, k.alice.key))


def test_decrypting_undecryptable_content_is_typed() -> None:
    """A ciphertext whose padding is wrong raises DecryptionError, never ValueError."""
    k = kit()
    der = enveloped(ec=tlv(0x80, b"\x00" * 32))
    with pytest.raises(DecryptionError):
        cms.decrypt(der, k.bob.cert, k.bob.key)


def test_recipient_infos_in_any_order() -> None:
    """GmSSL writes the RecipientInfos in the order given, not sorted as DER requires:
    that one deviation is read; the same message with a second deviation is not."""
    k = kit()
    der = cms.encrypt(parts().content, [k.bob.cert, k.carol.cert])
    ed = cms.EnvelopedData.from_der(der)
    infos = [
        ktri(rid=dump(cms._ias(cms._parse_cert(c))), ek=r.encrypted_key)
        for c, r in zip(
            (k.bob.cert, k.carol.cert),
            sorted(ed.recipients, key=lambda r: r.ref != cms.RecipientRef.of(k.bob.cert)),
            strict=True,
        )
    ]
    ordered = sorted(infos)
    unsorted = tlv(0x31, *reversed(ordered))
    assert unsorted != tlv(0x31, *ordered)
    base = dict(calg=alg("1.2.156.10197.1.104.2", octets(ed.iv)), ec=tlv(0x80, ed.ciphertext))
    msg = enveloped(recipients=unsorted, **base)
    assert cms.decrypt(msg, k.carol.cert, k.carol.key) == parts().content
    # plus a non-minimal INTEGER version: refused
    bad = enveloped(recipients=unsorted, version_der=b"\x02\x02\x00\x01", **base)
    with pytest.raises(DecodeError, match="EnvelopedData is not canonical DER"):
        cms.load(bad)


def test_unsorted_signed_attributes_are_refused() -> None:
    a = attrs()
    unsorted = tlv(0xA0, *sorted(a, reverse=True))
    assert unsorted != tlv(0xA0, *sorted(a))
    si = signer_info(signed=a).replace(tlv(0xA0, *sorted(a)), unsorted)
    with pytest.raises(DecodeError, match="SignedData is not canonical DER"):
        cms.load(signed_data(signer_infos=set_of(si)))
