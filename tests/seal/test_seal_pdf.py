"""Seals on PDF documents: incremental stamping with a visible seal and a two-party
signature, verification in the GB/T 38540 order, and the attacks — a byte changed in the
signed range, a later update that changes the page, a forged byte range, a corrupted seal
picture, an expired seal, a revoked stamper, a stamper not listed in the seal. Interop:
qpdf --check, pdftoppm renders the stamp, pypdf reads the signature dictionaries."""

from __future__ import annotations

import io
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from sealkit import SealPki, make_seal_pki, validity

from mstcrypt.apps.seal import pdf as P
from mstcrypt.apps.seal.verify import Trust
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import PolicyError
from mstcrypt.formats import ses
from mstcrypt.pki import RevokedEntry, build_crl


@pytest.fixture(scope="module")
def seal_pki() -> SealPki:
    return make_seal_pki()


def seal_png() -> bytes:
    img = Image.new("RGBA", (240, 240), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse((6, 6, 234, 234), outline=(220, 0, 0, 255), width=14)
    d.regular_polygon((120, 120, 40), 5, fill=(220, 0, 0, 255))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


PNG = seal_png()


def _seal(pki: SealPki, *, start=None, end=None, certs=None) -> ses.Seal:
    vs, ve = validity()
    info = ses.SealInfo(
        es_id="ES-PDF-1",
        name="Example Unit Contract Seal",
        picture_type="png",
        picture=PNG,
        width=40,
        height=40,
        valid_start=start or vs,
        valid_end=end or ve,
        certs=certs or (pki.stamper_cert.der,),
    )
    return ses.make_seal(info, pki.maker_cert.der, pki.maker_sign)


def _trust(pki: SealPki, revoked: tuple[int, ...] = ()) -> Trust:
    now = datetime.now(UTC)
    crl = build_crl(
        issuer=pki.root.certificate,
        issuer_public_key=pki.root.public_key,
        signer=pki.root.signer,
        number=1,
        this_update=now - timedelta(minutes=1),
        next_update=now + timedelta(days=1),
        entries=[RevokedEntry(s, now - timedelta(hours=1), "key_compromise") for s in revoked],
    )
    return Trust(anchors=[pki.root.certificate], crls=[crl])


DOC = P.sample_pdf(["Contract No. 2026-042", "Party A: Example Unit", "Seal of Party A:"])


@pytest.fixture(scope="module")
def stamped(seal_pki: SealPki) -> bytes:
    return P.stamp_pdf(
        DOC,
        seal=_seal(seal_pki),
        signer_cert=seal_pki.stamper_cert.der,
        sign=seal_pki.stamper_sign,
        keyword="Seal of Party A:",
    )


def _codes(report: P.PdfReport, index: int = 0) -> dict[str, bool]:
    return {c.code: c.ok for c in report.seals[index].checks}


def test_stamp_and_verify(seal_pki: SealPki, stamped: bytes) -> None:
    assert stamped.startswith(DOC)  # incremental: the original bytes are untouched
    report = P.verify_pdf(stamped, _trust(seal_pki))
    assert report.ok, report.to_json()
    seal = report.seals[0]
    assert seal.es_id == "ES-PDF-1" and "stamper alice" in (seal.stamper or "")
    assert list(_codes(report)) == [
        "byte_range",
        "ses_format",
        "signature",
        "stamper_listed",
        "seal_signature",
        "maker_certificate",
        "seal_validity",
        "stamper_certificate",
        "data_hash",
    ]
    assert not report.revisions_after_last_seal


def test_two_seals_and_earlier_one_stays_valid(seal_pki: SealPki, stamped: bytes) -> None:
    twice = P.stamp_pdf(
        stamped,
        seal=_seal(seal_pki),
        signer_cert=seal_pki.stamper_cert.der,
        sign=seal_pki.stamper_sign,
        page=0,
        position=(300, 100),
    )
    report = P.verify_pdf(twice, _trust(seal_pki))
    assert report.ok, report.to_json()
    assert [s.location for s in report.seals] == ["Seal1", "Seal2"]
    assert _codes(report, 0)["changes_after"]


def test_pypdf_reads_signature_dictionaries(stamped: bytes) -> None:
    import pypdf

    reader = pypdf.PdfReader(io.BytesIO(stamped))
    fields = reader.get_fields()
    assert fields is not None and "Seal1" in fields
    sig = fields["Seal1"]["/V"].get_object()
    assert sig["/Filter"] == P.FILTER and sig["/SubFilter"] == P.SUBFILTER
    a, b, c, d = (int(x) for x in sig["/ByteRange"])
    assert a == 0 and c + d == len(stamped)
    covered = stamped[:b] + stamped[c : c + d]
    contents = bytes(sig["/Contents"])
    parsed = ses.parse_signature(contents.rstrip(b"\x00"))
    assert parsed.data_hash == sm3(covered)
    assert parsed.property_info == "pdf:Seal1"


@pytest.mark.skipif(shutil.which("qpdf") is None, reason="qpdf not installed (apt qpdf)")
def test_qpdf_check_passes(stamped: bytes, tmp_path: Path) -> None:
    f = tmp_path / "s.pdf"
    f.write_bytes(stamped)
    out = subprocess.run(["qpdf", "--check", str(f)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "WARNING" not in out.stdout + out.stderr


@pytest.mark.skipif(
    shutil.which("pdftoppm") is None, reason="pdftoppm not installed (apt poppler-utils)"
)
def test_rendered_page_shows_the_seal(seal_pki: SealPki, tmp_path: Path) -> None:
    doc = P.stamp_pdf(
        DOC,
        seal=_seal(seal_pki),
        signer_cert=seal_pki.stamper_cert.der,
        sign=seal_pki.maker_sign,
        page=0,
        position=(400, 60),
    )
    (tmp_path / "s.pdf").write_bytes(doc)
    out = str(tmp_path / "p")
    subprocess.run(
        ["pdftoppm", "-r", "72", "-png", "-singlefile", str(tmp_path / "s.pdf"), out], check=True
    )
    img = Image.open(tmp_path / "p.png").convert("RGB")
    # 72 dpi: one pixel per point; the seal is 40 mm (113 pt) square at (400, 60)
    top = img.height - 60 - 113
    region = img.crop((400, top, 513, img.height - 60))
    red = sum(1 for r, g, b in _pixels(region) if r > 180 and g < 80 and b < 80)
    assert red > 500, red
    elsewhere = img.crop((100, top, 213, img.height - 60))
    assert sum(1 for r, g, b in _pixels(elsewhere) if r > 180 and g < 80) == 0


def _pixels(img: Image.Image) -> list[tuple[int, int, int]]:
    raw = img.tobytes()
    return [(raw[i], raw[i + 1], raw[i + 2]) for i in range(0, len(raw), 3)]


def test_xref_stream_document(seal_pki: SealPki, tmp_path: Path) -> None:
    """A PDF 1.5 document with a cross-reference stream gets an xref-stream update."""
    if shutil.which("qpdf") is None:
        pytest.skip("qpdf not installed (apt qpdf)")
    (tmp_path / "in.pdf").write_bytes(DOC)
    subprocess.run(
        ["qpdf", "--object-streams=generate", str(tmp_path / "in.pdf"), str(tmp_path / "x.pdf")],
        check=True,
    )
    src = (tmp_path / "x.pdf").read_bytes()
    out = P.stamp_pdf(
        src, seal=_seal(seal_pki), signer_cert=seal_pki.stamper_cert.der, sign=seal_pki.stamper_sign
    )
    (tmp_path / "o.pdf").write_bytes(out)
    check = subprocess.run(
        ["qpdf", "--check", str(tmp_path / "o.pdf")], capture_output=True, text=True
    )
    assert check.returncode == 0 and "WARNING" not in check.stdout + check.stderr, check.stdout
    assert P.verify_pdf(out, _trust(seal_pki)).ok


# --- tampering ------------------------------------------------------------------------------


def test_byte_changed_in_signed_range(seal_pki: SealPki, stamped: bytes) -> None:
    i = stamped.index(b"Contract No. 2026-042")
    forged = stamped[:i] + b"Contract No. 2026-043" + stamped[i + 21 :]
    report = P.verify_pdf(forged, _trust(seal_pki))
    assert not report.ok
    assert _codes(report)["data_hash"] is False and _codes(report)["signature"] is True


def _append_update(pdf: bytes, change_text: bool) -> bytes:
    """Another incremental update with pypdf: new page text, or only a note annotation."""
    import pypdf
    from pypdf.annotations import FreeText

    w = pypdf.PdfWriter(pypdf.PdfReader(io.BytesIO(pdf)), incremental=True)
    if change_text:
        page = w.pages[0]
        from pypdf.generic import NameObject, StreamObject

        s = StreamObject()
        s._data = b"BT /F1 14 Tf 72 500 Td (Amount: 1,000,000) Tj ET"
        page[NameObject("/Contents")] = w._add_object(s)
    else:
        w.add_annotation(0, FreeText(text="reviewed", rect=(50, 50, 150, 80)))
    out = io.BytesIO()
    w.write(out)
    return out.getvalue()


def test_later_update_that_changes_the_page_is_reported(seal_pki: SealPki, stamped: bytes) -> None:
    changed = _append_update(stamped, change_text=True)
    report = P.verify_pdf(changed, _trust(seal_pki))
    assert not report.ok and report.revisions_after_last_seal
    codes = _codes(report)
    assert codes["data_hash"] and codes["signature"]  # the seal itself is intact ...
    assert codes["changes_after"] is False  # ... but the page changed after it


def test_later_annotation_only_is_not_a_change(seal_pki: SealPki, stamped: bytes) -> None:
    noted = _append_update(stamped, change_text=False)
    report = P.verify_pdf(noted, _trust(seal_pki))
    assert report.ok, report.to_json()
    assert report.revisions_after_last_seal


def test_forged_byte_range(seal_pki: SealPki, stamped: bytes) -> None:
    import re

    m = re.search(rb"/ByteRange \[ 0 (\d+) (\d+) (\d+) \]", stamped)
    assert m
    a, b, c = (int(x) for x in m.groups())
    text = f"/ByteRange [ 0 {a} {b} {c - 10} ]".encode().ljust(len(m.group(0)))
    forged = stamped[: m.start()] + text + stamped[m.end() :]
    report = P.verify_pdf(forged, _trust(seal_pki))
    assert not report.ok


def test_corrupted_seal_picture(seal_pki: SealPki, stamped: bytes) -> None:
    from mstcrypt.errors import DecodeError

    # a seal whose picture is corrupted is not drawn ...
    seal = _seal(seal_pki)
    i = seal.der.index(PNG) + 100
    bad_seal = ses.parse_seal(seal.der[:i] + bytes([seal.der[i] ^ 0xFF]) + seal.der[i + 1 :])
    with pytest.raises(DecodeError, match="picture"):
        P.stamp_pdf(
            DOC, seal=bad_seal, signer_cert=seal_pki.stamper_cert.der, sign=seal_pki.stamper_sign
        )
    # ... and one corrupted inside a stamped document fails the seal and stamper checks
    hexed = PNG[100:116].hex().upper().encode()
    assert stamped.count(hexed) == 1
    j = stamped.index(hexed)
    flipped = b"0" if stamped[j : j + 1] != b"0" else b"1"
    forged = stamped[:j] + flipped + stamped[j + 1 :]
    report = P.verify_pdf(forged, _trust(seal_pki))
    codes = _codes(report)
    assert codes["seal_signature"] is False and codes["signature"] is False
    assert codes["data_hash"] is True and not report.ok


def test_expired_seal(seal_pki: SealPki) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    old = _seal(seal_pki, start=now - timedelta(days=30), end=now - timedelta(days=1))
    doc = P.stamp_pdf(
        DOC, seal=old, signer_cert=seal_pki.stamper_cert.der, sign=seal_pki.stamper_sign
    )
    report = P.verify_pdf(doc, _trust(seal_pki))
    assert _codes(report)["seal_validity"] is False and not report.ok


def test_revoked_stamper(seal_pki: SealPki, stamped: bytes) -> None:
    report = P.verify_pdf(stamped, _trust(seal_pki, revoked=(seal_pki.stamper_cert.serial,)))
    codes = _codes(report)
    assert codes["stamper_certificate"] is False and codes["maker_certificate"] is True
    assert "revoked" in report.seals[0].to_json()["checks"][7]["message"]


def test_stamper_not_listed_in_the_seal(seal_pki: SealPki) -> None:
    seal = _seal(seal_pki, certs=(seal_pki.other_cert.der,))
    doc = P.stamp_pdf(
        DOC, seal=seal, signer_cert=seal_pki.stamper_cert.der, sign=seal_pki.stamper_sign
    )
    report = P.verify_pdf(doc, _trust(seal_pki))
    assert _codes(report)["stamper_listed"] is False and not report.ok


def test_untrusted_root(seal_pki: SealPki, stamped: bytes) -> None:
    from mstcrypt.crypto.sm2 import SM2PrivateKey
    from mstcrypt.pki import Issuer, name

    k = SM2PrivateKey.generate()
    other = Issuer.self_signed(name(CN="Other Root"), k.public_key(), k.sign)
    report = P.verify_pdf(
        stamped, Trust(anchors=[other.certificate], require_revocation_check=False)
    )
    codes = _codes(report)
    assert codes["maker_certificate"] is False and codes["stamper_certificate"] is False


def test_not_a_pdf_and_unsealed(seal_pki: SealPki) -> None:
    from mstcrypt.errors import DecodeError

    with pytest.raises(DecodeError):
        P.stamp_pdf(b"hello", seal=_seal(seal_pki), signer_cert=b"x", sign=seal_pki.stamper_sign)
    with pytest.raises(DecodeError):
        P.verify_pdf(b"%PDF-1.7 garbage", _trust(seal_pki))
    report = P.verify_pdf(DOC, _trust(seal_pki))
    assert not report.ok and report.problems == ["the document carries no seal"]
    with pytest.raises(PolicyError, match="keyword"):
        P.stamp_pdf(
            DOC, seal=_seal(seal_pki), signer_cert=seal_pki.stamper_cert.der,
            sign=seal_pki.stamper_sign, keyword="no such words",
        )  # fmt: skip
