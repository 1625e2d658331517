"""GB/T 38540 SESeal / SES_Signature (mstcrypt.formats.ses): round trips, the layout
checked field for field with ``openssl asn1parse`` against FACTS.md §6, signatures
checked with the OpenSSL CLI, v1 reading, and malformed or tampered structures."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto.core import Any
from sealkit import SealPki, make_seal_pki, validity

from mstcrypt.crypto.sm2 import signature_to_raw
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import DecodeError, PolicyError, UnsupportedError, VerificationError
from mstcrypt.formats import ses
from mstcrypt.formats._der import dump


@pytest.fixture(scope="module")
def seal_pki() -> SealPki:
    return make_seal_pki()


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


def _info(pki: SealPki, **kw: object) -> ses.SealInfo:
    vs, ve = validity()
    args: dict[str, object] = dict(
        es_id="ES-2026-0001",
        name="测试单位合同专用章",
        picture_type="png",
        picture=PNG,
        width=42,
        height=42,
        valid_start=vs,
        valid_end=ve,
        certs=(pki.stamper_cert.der,),
        created=vs,
    )
    args.update(kw)
    return ses.SealInfo(**args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def seal(seal_pki: SealPki) -> ses.Seal:
    return ses.make_seal(_info(seal_pki), seal_pki.maker_cert.der, seal_pki.maker_sign)


@pytest.fixture(scope="module")
def signature(seal_pki: SealPki, seal: ses.Seal) -> ses.SealSignature:
    return ses.make_signature(
        seal,
        sm3(b"document bytes"),
        "/Doc_0/Signs/Sign_0/Signature.xml",
        seal_pki.stamper_cert.der,
        seal_pki.stamper_sign,
        time=datetime(2026, 5, 1, 8, 30, tzinfo=UTC),
    )


def test_seal_round_trip_and_maker_signature(seal_pki: SealPki, seal: ses.Seal) -> None:
    again = ses.parse_seal(seal.der)
    assert again == seal and again.der == seal.der
    assert seal.info.name == "测试单位合同专用章" and seal.info.picture == PNG
    assert seal.signed_bytes == seal.info.to_der()
    seal.verify(seal_pki.maker_cert.public_key)
    with pytest.raises(VerificationError):
        seal.verify(seal_pki.stamper_cert.public_key)
    assert seal.info.lists_certificate(seal_pki.stamper_cert.der)
    assert not seal.info.lists_certificate(seal_pki.other_cert.der)


def test_signature_round_trip_and_two_party_stamper(
    seal_pki: SealPki, signature: ses.SealSignature
) -> None:
    again = ses.parse_signature(signature.der)
    assert again == signature
    assert signature.time_info == datetime(2026, 5, 1, 8, 30, tzinfo=UTC)
    assert signature.data_hash == sm3(b"document bytes")
    signature.verify(seal_pki.stamper_cert.public_key)
    signature.seal.verify(seal_pki.maker_cert.public_key)
    with pytest.raises(VerificationError):
        signature.verify(seal_pki.other_cert.public_key)


_ROW = re.compile(
    r"d=(\d+)\s+hl=\s*\d+\s+l=\s*\d+\s+(?:prim|cons):\s+([A-Z0-9 ]+?)\s*"
    r"(?:\[HEX DUMP\])?(?::(.*))?$"
)


def _asn1parse(openssl: Callable[..., bytes], der: bytes, tmp: Path) -> list[tuple[int, str, str]]:
    f = tmp / "x.der"
    f.write_bytes(der)
    out = openssl("asn1parse", "-inform", "DER", "-in", str(f)).decode()
    rows = []
    for line in out.splitlines():
        m = _ROW.search(line)
        assert m, line
        rows.append((int(m.group(1)), m.group(2), m.group(3) or ""))
    return rows


def test_openssl_asn1parse_matches_facts_layout(
    openssl: Callable[..., bytes], tmp_path: Path, signature: ses.SealSignature
) -> None:
    """SES_Signature ::= { toSign TBS_Sign, cert, signatureAlgID, signature } with
    TBS_Sign ::= { version 4, eseal SESeal, timeInfo GeneralizedTime, dataHash BIT
    STRING, propertyInfo IA5String } and SESeal ::= { SES_SealInfo, cert, signAlgID,
    signedValue } (FACTS.md §6), read by an independent decoder."""
    rows = _asn1parse(openssl, signature.der, tmp_path)
    types = [(d, t) for d, t, _ in rows]
    expected = [
        (0, "SEQUENCE"),  # SES_Signature
        (1, "SEQUENCE"),  # TBS_Sign
        (2, "INTEGER"),  # version
        (2, "SEQUENCE"),  # SESeal
        (3, "SEQUENCE"),  # SES_SealInfo
        (4, "SEQUENCE"),  # SES_Header
        (5, "IA5STRING"),  # id
        (5, "INTEGER"),  # version
        (5, "IA5STRING"),  # vid
        (4, "IA5STRING"),  # esID
        (4, "SEQUENCE"),  # SES_ESPropertyInfo
        (5, "INTEGER"),  # type
        (5, "UTF8STRING"),  # name
        (5, "INTEGER"),  # certListType
        (5, "SEQUENCE"),  # certList: certs SEQUENCE OF OCTET STRING
        (6, "OCTET STRING"),
        (5, "GENERALIZEDTIME"),  # createDate
        (5, "GENERALIZEDTIME"),  # validStart
        (5, "GENERALIZEDTIME"),  # validEnd
        (4, "SEQUENCE"),  # SES_ESPictrueInfo
        (5, "IA5STRING"),  # type
        (5, "OCTET STRING"),  # data
        (5, "INTEGER"),  # width
        (5, "INTEGER"),  # height
        (3, "OCTET STRING"),  # seal maker cert
        (3, "OBJECT"),  # signAlgID
        (3, "BIT STRING"),  # signedValue
        (2, "GENERALIZEDTIME"),  # timeInfo
        (2, "BIT STRING"),  # dataHash
        (2, "IA5STRING"),  # propertyInfo
        (1, "OCTET STRING"),  # signer cert
        (1, "OBJECT"),  # signatureAlgID
        (1, "BIT STRING"),  # signature
    ]
    assert types == expected
    values = [v for _, _, v in rows]
    assert values[2] == "04" and values[6] == "ES" and values[7] == "04"
    assert values[9] == "ES-2026-0001" and values[11] == "01" and values[13] == "01"
    assert values[12] == "测试单位合同专用章"
    assert values[20] == "png" and int(values[22], 16) == 42
    assert values[25] in ("SM2-with-SM3", "1.2.156.10197.1.501") and values[25] == values[31]
    assert values[27] == "20260501083000Z"
    assert values[29] == "/Doc_0/Signs/Sign_0/Signature.xml"
    # the certificates in the OCTET STRINGs are the DER certificates themselves
    assert bytes.fromhex(values[15]) == signature.seal.info.certs[0]
    assert bytes.fromhex(values[30]) == signature.signer_cert


def test_openssl_verifies_seal_and_stamper_signatures(
    openssl: Callable[..., bytes], tmp_path: Path, seal_pki: SealPki, signature: ses.SealSignature
) -> None:
    """The maker's signature is over DER(SES_SealInfo), the stamper's (two-party) over
    DER(TBS_Sign), both SM2/SM3 with the default ID, checked against the certificates."""
    for cert, data, sig in (
        (seal_pki.maker_cert, signature.seal.signed_bytes, signature.seal.signature),
        (seal_pki.stamper_cert, signature.tbs_der, signature.signature),
    ):
        (tmp_path / "c.pem").write_bytes(cert.pem)
        (tmp_path / "d").write_bytes(data)
        (tmp_path / "s").write_bytes(sig)
        out = openssl(
            "pkeyutl", "-verify", "-certin", "-inkey", str(tmp_path / "c.pem"), "-rawin",
            "-digest", "sm3", "-pkeyopt", "distid:1234567812345678",
            "-in", str(tmp_path / "d"), "-sigfile", str(tmp_path / "s"),
        )  # fmt: skip
        assert b"Signature Verified Successfully" in out
        (tmp_path / "d").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        with pytest.raises(subprocess.CalledProcessError):
            openssl(
                "pkeyutl", "-verify", "-certin", "-inkey", str(tmp_path / "c.pem"), "-rawin",
                "-digest", "sm3", "-pkeyopt", "distid:1234567812345678",
                "-in", str(tmp_path / "d"), "-sigfile", str(tmp_path / "s"),
            )  # fmt: skip


def test_cert_digest_list(seal_pki: SealPki) -> None:
    info = _info(seal_pki, certs=(), cert_digests=(("SM3", sm3(seal_pki.stamper_cert.der)),))
    seal = ses.make_seal(info, seal_pki.maker_cert.der, seal_pki.maker_sign)
    again = ses.parse_seal(seal.der)
    assert again.info.cert_list_type == ses.CertListType.DIGESTS
    assert again.info.lists_certificate(seal_pki.stamper_cert.der)
    assert not again.info.lists_certificate(seal_pki.other_cert.der)


def test_extensions_round_trip_with_vendor_explicit_false(seal_pki: SealPki) -> None:
    exts = (
        ses.ExtensionData("1.2.3.4", b"\x04\x01x", critical=True),
        ses.ExtensionData("1.2.3.5", b"v", explicit_false=True),
    )
    seal = ses.make_seal(
        _info(seal_pki, extensions=exts), seal_pki.maker_cert.der, seal_pki.maker_sign
    )
    again = ses.parse_seal(seal.der)
    assert again.der == seal.der and again.info.extensions == exts
    again.verify(seal_pki.maker_cert.public_key)


def test_v1_seal_and_signature_are_read(seal_pki: SealPki) -> None:
    """A GM/T 0031-2014 seal (v1: UTCTime, certList of certs, SES_SignInfo) and its
    signature (TBS_Sign v1 with the cert and algorithm inside)."""
    now = datetime.now(UTC).replace(microsecond=0)
    info = ses._SealInfoV1(
        {
            "header": {"id": "ES", "version": 1, "vid": "legacy"},
            "es_id": "LEGACY-1",
            "property": {
                "type": 1,
                "name": "旧版印章",
                "cert_list": [seal_pki.stamper_cert.der],
                "create_date": now,
                "valid_start": now - timedelta(days=1),
                "valid_end": now + timedelta(days=30),
            },
            "picture": {"type": "gif", "data": b"GIF89a", "width": 30, "height": 30},
        }
    )
    info_der = dump(info)
    alg = "1.2.156.10197.1.501"
    signed = dump(
        ses._SealV1Signed(
            {"seal_info": Any.load(info_der), "cert": seal_pki.maker_cert.der, "alg": alg}
        )
    )
    seal_der = dump(
        ses._SESealV1(
            {
                "seal_info": ses._SealInfoV1.load(info_der),
                "sign_info": {
                    "cert": seal_pki.maker_cert.der,
                    "signature_algorithm": alg,
                    "sign_data": seal_pki.maker_sign(signed),
                },
            }
        )
    )
    seal = ses.parse_seal(seal_der)
    assert seal.version == 1 and seal.info.name == "旧版印章"
    seal.verify(seal_pki.maker_cert.public_key)
    tbs = ses._TBSSignV1(
        {
            "version": 1,
            "eseal": Any.load(seal_der),
            "time_info": now.strftime("%y%m%d%H%M%SZ").encode(),
            "data_hash": sm3(b"doc"),
            "property_info": "doc.ofd",
            "cert": seal_pki.other_cert.der,
            "signature_algorithm": alg,
        }
    )
    tbs_der = dump(tbs)
    sig_der = dump(
        ses._SESSignatureV1(
            {"to_sign": ses._TBSSignV1.load(tbs_der), "signature": seal_pki.other_key.sign(tbs_der)}
        )
    )
    sig = ses.parse_signature(sig_der)
    assert sig.version == 1 and sig.data_hash == sm3(b"doc") and sig.time_info is None
    sig.verify(seal_pki.other_cert.public_key)
    with pytest.raises(PolicyError):
        ses.make_signature(seal, sm3(b"x"), "p", seal_pki.other_cert.der, seal_pki.maker_sign)


def test_vendor_raw_signature_only_when_tolerant(seal_pki: SealPki, seal: ses.Seal) -> None:
    raw = signature_to_raw(seal.signature)
    for variant in (raw, b"\x00" + raw):
        forged = ses.make_seal(seal.info, seal_pki.maker_cert.der, lambda _m, v=variant: v)
        with pytest.raises(VerificationError):
            forged.verify(seal_pki.maker_cert.public_key)
        forged.verify(seal_pki.maker_cert.public_key, tolerant=True)


# --- malformed and tampered structures ---------------------------------------------------


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) >= 1
    return data.replace(old, new, 1)


_HDR4 = b"\x16\x02ES\x02\x01\x04"  # SES_Header id "ES", version 4


def _last_alg(der: bytes, last: bytes) -> bytes:
    oid = b"\x06\x08\x2a\x81\x1c\xcf\x55\x01\x83\x75"
    i = der.rindex(oid) + len(oid) - 1
    return der[:i] + last + der[i + 1 :]


def test_corrupted_seal_image_breaks_the_maker_signature(seal_pki: SealPki, seal: ses.Seal) -> None:
    bad = _replace_once(seal.der, PNG, PNG[:-1] + b"\xff")
    parsed = ses.parse_seal(bad)  # still well-formed
    with pytest.raises(VerificationError):
        parsed.verify(seal_pki.maker_cert.public_key)


def test_altered_seal_inside_signature_is_detected(
    seal_pki: SealPki, signature: ses.SealSignature
) -> None:
    bad = _replace_once(signature.der, "测试单位".encode(), "伪造单位".encode())
    parsed = ses.parse_signature(bad)
    with pytest.raises(VerificationError):
        parsed.verify(seal_pki.stamper_cert.public_key)
    with pytest.raises(VerificationError):
        parsed.seal.verify(seal_pki.maker_cert.public_key)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda d: d + b"\x00", DecodeError),  # trailing byte
        (lambda d: d[:-1], DecodeError),  # truncated
        (lambda d: b"\x30\x84" + len(d[4:]).to_bytes(4, "big") + d[4:], DecodeError),
        (lambda d: _replace_once(d, b"\x16\x02ES", b"\x16\x02EX"), DecodeError),  # header id
        (lambda d: _replace_once(d, _HDR4, _HDR4[:-1] + b"\x03"), DecodeError),
        (lambda d: _last_alg(d, b"\x76"), UnsupportedError),  # signAlgID
        (lambda d: b"\x02\x01\x01", DecodeError),  # not a SEQUENCE
        (lambda d: b"", DecodeError),
    ],
)  # fmt: skip
def test_malformed_seal_is_rejected(seal: ses.Seal, mutate, error: type) -> None:
    with pytest.raises(error):
        ses.parse_seal(mutate(seal.der))


def test_cert_list_type_must_match(seal_pki: SealPki, seal: ses.Seal) -> None:
    # certListType 1 -> 3, and 1 -> 2 over a list of certificates (not digests)
    pos = seal.der.index("测试单位合同专用章".encode()) + len("测试单位合同专用章".encode())
    assert seal.der[pos : pos + 3] == b"\x02\x01\x01"
    for value in (b"\x03", b"\x02"):
        with pytest.raises(DecodeError):
            ses.parse_seal(seal.der[: pos + 2] + value + seal.der[pos + 3 :])


def test_signature_field_checks(seal_pki: SealPki, signature: ses.SealSignature) -> None:
    with pytest.raises(DecodeError, match=r"TBS_Sign\.version"):
        ses.parse_signature(signature.der.replace(b"\x02\x01\x04", b"\x02\x01\x05", 1))
    with pytest.raises(DecodeError):
        ses.parse_signature(signature.der + b"\x00")
    with pytest.raises(PolicyError, match="32-byte"):
        ses.make_signature(
            signature.seal, b"\x00" * 31, "p", seal_pki.stamper_cert.der, seal_pki.stamper_sign
        )
    with pytest.raises(PolicyError):
        ses.make_signature(
            signature.seal, sm3(b"x"), "路径", seal_pki.stamper_cert.der, seal_pki.stamper_sign
        )


def test_seal_info_policy(seal_pki: SealPki) -> None:
    vs, ve = validity()
    with pytest.raises(PolicyError, match="before"):
        _info(seal_pki, valid_start=ve, valid_end=vs)
    with pytest.raises(PolicyError, match="picture type"):
        _info(seal_pki, picture_type="exe")
    with pytest.raises(PolicyError, match="either"):
        _info(seal_pki, certs=())
    with pytest.raises(PolicyError, match="mm"):
        _info(seal_pki, width=0)
    with pytest.raises(PolicyError):
        _info(seal_pki, valid_start=datetime(2026, 1, 1))  # naive time


def test_time_stamp_is_parsed_and_reported_unverified(seal_pki: SealPki, seal: ses.Seal) -> None:
    from mstcrypt.apps.seal.verify import SealReport, Trust, verify_ses_signature

    signature = ses.make_signature(
        seal, sm3(b"d"), "p", seal_pki.stamper_cert.der, seal_pki.stamper_sign
    )
    asn = ses._SESSignature.load(signature.der)
    with_ts = dump(
        ses._SESSignature(
            {
                "to_sign": ses._TBSSign.load(signature.tbs_der),
                "cert": asn["cert"].native,
                "signature_alg_id": asn["signature_alg_id"].dotted,
                "signature": asn["signature"].native,
                "time_stamp": b"\x30\x03\x02\x01\x00",
            }
        )
    )
    parsed = ses.parse_signature(with_ts)
    assert parsed.time_stamp == b"\x30\x03\x02\x01\x00"
    report = SealReport("x")
    trust = Trust(anchors=[seal_pki.root.certificate], require_revocation_check=False)
    verify_ses_signature(with_ts, report, data_hash=signature.data_hash, trust=trust)
    assert report.ok and "not verified" in str(report.to_json()["time_stamp"])
