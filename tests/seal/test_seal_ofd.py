"""Seals on OFD documents (GB/T 33190 §18 layout as ofdrw writes it): stamping twice,
dataHash = SM3(Signature.xml), propertyInfo = its path, references recomputed; attacks:
a page changed after stamping, Signature.xml edited, Seal.esl swapped, a file added,
unsafe zip paths and XML entities."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import zipfile

import pytest
from sealkit import SealPki, make_seal_pki, validity

from mstcrypt.apps.seal import ofd as O
from mstcrypt.apps.seal.verify import Trust
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import DecodeError
from mstcrypt.formats import ses


@pytest.fixture(scope="module")
def seal_pki() -> SealPki:
    return make_seal_pki()


DOC = O.sample_ofd(["合同编号 2026-001", "甲方：示例单位", "甲方盖章："])


def _seal(pki: SealPki) -> ses.Seal:
    vs, ve = validity()
    info = ses.SealInfo(
        es_id="ES-OFD-1",
        name="示例单位合同专用章",
        picture_type="png",
        picture=b"\x89PNG\r\n\x1a\n" + bytes(32),
        width=40,
        height=40,
        valid_start=vs,
        valid_end=ve,
        certs=(pki.stamper_cert.der,),
    )
    return ses.make_seal(info, pki.maker_cert.der, pki.maker_sign)


@pytest.fixture(scope="module")
def stamped(seal_pki: SealPki) -> bytes:
    return O.stamp_ofd(
        DOC, seal=_seal(seal_pki), signer_cert=seal_pki.stamper_cert.der, sign=seal_pki.stamper_sign
    )


def _trust(pki: SealPki) -> Trust:
    return Trust(anchors=[pki.root.certificate], require_revocation_check=False)


def _files(data: bytes) -> dict[str, bytes]:
    z = zipfile.ZipFile(io.BytesIO(data))
    return {n: z.read(n) for n in z.namelist()}


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
    return out.getvalue()


def _codes(report: O.OfdReport, i: int = 0) -> dict[str, bool]:
    return {c.code: c.ok for c in report.seals[i].checks}


def test_stamp_layout_and_verify(seal_pki: SealPki, stamped: bytes) -> None:
    files = _files(stamped)
    assert b"Doc_0/Signs/Signatures.xml" in files["OFD.xml"]
    sig = ses.parse_signature(files["Doc_0/Signs/Sign_0/SignedValue.dat"])
    assert sig.data_hash == sm3(files["Doc_0/Signs/Sign_0/Signature.xml"])
    assert sig.property_info == "/Doc_0/Signs/Sign_0/Signature.xml"
    assert sig.seal.der == files["Doc_0/Signs/Sign_0/Seal.esl"]
    xml = files["Doc_0/Signs/Sign_0/Signature.xml"].decode()
    assert "1.2.156.10197.1.501" in xml and 'CheckMethod="1.2.156.10197.1.401"' in xml
    content = files["Doc_0/Pages/Page_0/Content.xml"]
    assert base64.b64encode(sm3(content)).decode() in xml
    report = O.verify_ofd(stamped, _trust(seal_pki))
    assert report.ok, report.to_json()
    assert next(iter(_codes(report))) == "references" and _codes(report)["seal_file"]


def test_second_seal_keeps_the_first_valid(seal_pki: SealPki, stamped: bytes) -> None:
    twice = O.stamp_ofd(
        stamped, seal=_seal(seal_pki), signer_cert=seal_pki.stamper_cert.der,
        sign=seal_pki.stamper_sign, page=0, position=(20, 200),
    )  # fmt: skip
    report = O.verify_ofd(twice, _trust(seal_pki))
    assert report.ok and len(report.seals) == 2, report.to_json()
    assert b"<ofd:MaxSignId>2</ofd:MaxSignId>" in _files(twice)["Doc_0/Signs/Signatures.xml"]


def test_page_changed_after_stamping(seal_pki: SealPki, stamped: bytes) -> None:
    files = _files(stamped)
    page = "Doc_0/Pages/Page_0/Content.xml"
    files[page] = files[page].replace("示例单位".encode(), "伪造单位".encode())
    report = O.verify_ofd(_zip(files), _trust(seal_pki))
    codes = _codes(report)
    assert codes["references"] is False and not report.ok
    assert codes["signature"] and codes["data_hash"]  # the seal itself is intact


def test_signature_xml_edited(seal_pki: SealPki, stamped: bytes) -> None:
    """Dropping a page from the references (to hide a later change) breaks dataHash."""
    files = _files(stamped)
    sx = "Doc_0/Signs/Sign_0/Signature.xml"
    dropped = re.sub(
        rb'<ofd:Reference FileRef="/Doc_0/Pages/Page_0/Content.xml">.*?</ofd:Reference>',
        b"",
        files[sx],
    )
    assert dropped != files[sx]
    files[sx] = dropped
    report = O.verify_ofd(_zip(files), _trust(seal_pki))
    assert _codes(report)["data_hash"] is False and not report.ok


def test_seal_file_swapped(seal_pki: SealPki, stamped: bytes) -> None:
    files = _files(stamped)
    info = dataclasses.replace(_seal(seal_pki).info, name="另一个章")
    other = ses.make_seal(info, seal_pki.maker_cert.der, seal_pki.maker_sign)
    files["Doc_0/Signs/Sign_0/Seal.esl"] = other.der
    report = O.verify_ofd(_zip(files), _trust(seal_pki))
    codes = _codes(report)
    assert codes["seal_file"] is False and codes["references"] is False


def test_file_added_after_stamping(seal_pki: SealPki, stamped: bytes) -> None:
    files = _files(stamped)
    files["Doc_0/Pages/Page_1/Content.xml"] = b"<ofd:Page xmlns:ofd='http://www.ofdspec.org/2016'/>"
    report = O.verify_ofd(_zip(files), _trust(seal_pki))
    assert not report.ok and "Page_1" in report.problems[0]


def test_unsafe_packages_are_refused(seal_pki: SealPki, stamped: bytes) -> None:
    files = _files(stamped)
    with pytest.raises(DecodeError, match="unsafe path"):
        O.verify_ofd(_zip({**files, "../evil.xml": b"x"}), _trust(seal_pki))
    bomb = files["OFD.xml"].replace(
        b"?>", b'?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>', 1
    )
    with pytest.raises(DecodeError, match="DTD"):
        O.verify_ofd(_zip({**files, "OFD.xml": bomb}), _trust(seal_pki))
    with pytest.raises(DecodeError):
        O.verify_ofd(b"PK\x03\x04 not a zip", _trust(seal_pki))
    report = O.verify_ofd(DOC, _trust(seal_pki))
    assert not report.ok and report.problems == ["the document carries no seal"]


def test_stamper_not_listed_on_ofd(seal_pki: SealPki) -> None:
    doc = O.stamp_ofd(
        DOC, seal=_seal(seal_pki), signer_cert=seal_pki.other_cert.der, sign=seal_pki.other_key.sign
    )
    report = O.verify_ofd(doc, _trust(seal_pki))
    assert _codes(report)["stamper_listed"] is False and _codes(report)["signature"] is True
