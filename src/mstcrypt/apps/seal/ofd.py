"""Electronic seals on OFD documents (GB/T 33190 §18; FACTS.md §6 and §14).

Stamping adds, for signature N (ofdrw's layout)::

    /Doc_0/Signs/Signatures.xml          MaxSignId + one <ofd:Signature Type="Seal" BaseLoc=…>
    /Doc_0/Signs/Sign_N/Seal.esl         the DER SESeal
    /Doc_0/Signs/Sign_N/Signature.xml    SignedInfo: Provider, SignatureMethod, time,
                                         References (SM3, base64) of every package file
                                         but Signatures.xml, StampAnnot, Seal/BaseLoc
    /Doc_0/Signs/Sign_N/SignedValue.dat  the DER SES_Signature

with ``dataHash = SM3(Signature.xml bytes)`` and ``propertyInfo`` the absolute path of
Signature.xml. Signatures.xml is left out of the references (ofdrw's "continue" mode) so
that further seals can be added; every other file, earlier seals included, is covered.

Verification recomputes every reference, checks that Seal.esl is the seal inside the
signature and that SM3(Signature.xml) is its dataHash, runs the SES checks, and reports
files added after the seal that no seal covers (other than later seals' own files).
"""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from xml.etree import ElementTree as ET

from mstcrypt.apps.seal.verify import SealReport, Trust, verify_ses_signature
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import DecodeError, PolicyError
from mstcrypt.formats import oids, ses

__all__ = ["OfdReport", "is_ofd", "sample_ofd", "stamp_ofd", "verify_ofd"]

NS = "http://www.ofdspec.org/2016"
_Q = f"{{{NS}}}"
MAX_ENTRIES = 10_000
MAX_TOTAL = 512 * 1024 * 1024
_SM3_NAMES = {"SM3", "sm3", oids.SM3}

ET.register_namespace("ofd", NS)


def is_ofd(data: bytes) -> bool:
    return data[:4] == b"PK\x03\x04" and b"OFD.xml" in data[:4096]


# --- package -------------------------------------------------------------------------------


def _read(data: bytes) -> dict[str, bytes]:
    """The package's files by absolute path ("/OFD.xml"), with zip-bomb and path checks."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = z.infolist()
        if len(infos) > MAX_ENTRIES:
            raise DecodeError(f"OFD package has more than {MAX_ENTRIES} entries")
        if sum(i.file_size for i in infos) > MAX_TOTAL:
            raise DecodeError("OFD package expands beyond 512 MiB")
        out: dict[str, bytes] = {}
        for i in infos:
            if i.is_dir():
                continue
            name = i.filename
            if name.startswith("/") or ".." in name.split("/") or "\\" in name:
                raise DecodeError(f"OFD package entry with an unsafe path: {name!r}")
            key = "/" + name
            if key in out:
                raise DecodeError(f"OFD package has {name!r} twice")
            out[key] = z.read(i)
        return out
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise DecodeError(f"not a readable OFD (zip) package ({type(exc).__name__})") from None


def _write(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name.lstrip("/"), date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return out.getvalue()


class _Forbidden(Exception):
    pass


def _forbid(*_: object) -> None:
    raise _Forbidden


def _xml(data: bytes, what: str) -> ET.Element:
    """Parse OFD XML, refusing any DTD, entity declaration or external reference (what
    defusedxml does): a first expat pass with those handlers raising, then ElementTree
    on the same bytes."""
    from xml.parsers import expat

    pre = expat.ParserCreate()
    pre.StartDoctypeDeclHandler = _forbid
    pre.EntityDeclHandler = _forbid
    pre.UnparsedEntityDeclHandler = _forbid
    pre.ExternalEntityRefHandler = _forbid
    try:
        pre.Parse(data, True)
        return ET.fromstring(data)  # noqa: S314 - checked above: no DTD, no entities
    except _Forbidden:
        raise DecodeError(f"{what}: DTDs and entities are not accepted") from None
    except (expat.ExpatError, ET.ParseError) as exc:
        raise DecodeError(f"{what} is not well-formed XML ({exc})") from None


def _dump(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def _abs(path: str, base: str = "/") -> str:
    """Resolve an OFD location (absolute, or relative to ``base``'s directory)."""
    path = path.strip()
    if not path.startswith("/"):
        path = base.rsplit("/", 1)[0] + "/" + path
    parts: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            raise DecodeError(f"OFD location with '..': {path!r}")
        parts.append(p)
    return "/" + "/".join(parts)


def _doc_paths(files: dict[str, bytes]) -> tuple[ET.Element, ET.Element, str, str | None]:
    """(OFD.xml root, DocBody, Document.xml path, Signatures.xml path or None)."""
    if "/OFD.xml" not in files:
        raise DecodeError("OFD package without /OFD.xml")
    root = _xml(files["/OFD.xml"], "OFD.xml")
    body = root.find(f"{_Q}DocBody")
    doc_root = body.find(f"{_Q}DocRoot") if body is not None else None
    if body is None or doc_root is None or not (doc_root.text or "").strip():
        raise DecodeError("OFD.xml has no DocBody/DocRoot")
    doc = _abs(doc_root.text or "")
    sigs = body.find(f"{_Q}Signatures")
    return root, body, doc, _abs(sigs.text or "") if sigs is not None and sigs.text else None


def _first_page(files: dict[str, bytes], doc: str, index: int) -> str:
    """The ID of page ``index`` (0-based) of the document."""
    if doc not in files:
        raise DecodeError(f"the document {doc} is missing")
    pages = _xml(files[doc], "Document.xml").findall(f"{_Q}Pages/{_Q}Page")
    if not pages:
        raise DecodeError("the document has no pages")
    if not -len(pages) <= index < len(pages):
        raise PolicyError(f"page {index + 1} does not exist (the document has {len(pages)})")
    return str(pages[index].get("ID"))


# --- stamping ------------------------------------------------------------------------------


def stamp_ofd(
    ofd: bytes,
    *,
    seal: ses.Seal,
    signer_cert: bytes,
    sign: Callable[[bytes], bytes],
    page: int = -1,
    position: tuple[float, float] = (140.0, 230.0),
    time: datetime | None = None,
) -> bytes:
    """Stamp an OFD document with ``seal``; ``position`` is the seal's top-left corner
    in millimetres on ``page`` (0-based, default the last). Returns the new package."""
    files = _read(ofd)
    root, body, doc, sigs_path = _doc_paths(files)
    doc_dir = doc.rsplit("/", 1)[0]
    if sigs_path is None:
        sigs_path = f"{doc_dir}/Signs/Signatures.xml"
        el = ET.SubElement(body, f"{_Q}Signatures")
        el.text = sigs_path
        files["/OFD.xml"] = _dump(root)
    if sigs_path in files:
        sigs = _xml(files[sigs_path], "Signatures.xml")
    else:
        sigs = ET.Element(f"{_Q}Signatures")
        ET.SubElement(sigs, f"{_Q}MaxSignId").text = "0"
    max_el = sigs.find(f"{_Q}MaxSignId")
    if max_el is None:
        max_el = ET.Element(f"{_Q}MaxSignId")
        sigs.insert(0, max_el)
    try:
        sign_id = int(max_el.text or "0") + 1
    except ValueError:
        raise DecodeError("Signatures.xml MaxSignId is not a number") from None
    n = 0
    while any(k.startswith(f"{doc_dir}/Signs/Sign_{n}/") for k in files):
        n += 1
    sign_dir = f"{doc_dir}/Signs/Sign_{n}"
    sig_xml_path = f"{sign_dir}/Signature.xml"
    max_el.text = str(sign_id)
    ET.SubElement(
        sigs, f"{_Q}Signature", {"ID": str(sign_id), "Type": "Seal", "BaseLoc": sig_xml_path}
    )
    files[sigs_path] = _dump(sigs)
    files[f"{sign_dir}/Seal.esl"] = seal.der
    page_id = _first_page(files, doc, page)
    when = (time or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)

    signature = ET.Element(f"{_Q}Signature")
    info = ET.SubElement(signature, f"{_Q}SignedInfo")
    ET.SubElement(
        info, f"{_Q}Provider", {"ProviderName": "mstcrypt", "Version": "1", "Company": "mstcrypt"}
    )
    ET.SubElement(info, f"{_Q}SignatureMethod").text = oids.SM2_WITH_SM3
    ET.SubElement(info, f"{_Q}SignatureDateTime").text = when.strftime("%Y%m%d%H%M%SZ")
    refs = ET.SubElement(info, f"{_Q}References", {"CheckMethod": oids.SM3})
    for name in sorted(files):
        if name == sigs_path:
            continue
        ref = ET.SubElement(refs, f"{_Q}Reference", {"FileRef": name})
        ET.SubElement(ref, f"{_Q}CheckValue").text = base64.b64encode(sm3(files[name])).decode()
    x, y = position
    ET.SubElement(
        info,
        f"{_Q}StampAnnot",
        {
            "ID": "1",
            "PageRef": page_id,
            "Boundary": f"{x:g} {y:g} {seal.info.width} {seal.info.height}",
        },
    )
    seal_el = ET.SubElement(info, f"{_Q}Seal")
    ET.SubElement(seal_el, f"{_Q}BaseLoc").text = f"{sign_dir}/Seal.esl"
    ET.SubElement(signature, f"{_Q}SignedValue").text = f"{sign_dir}/SignedValue.dat"
    sig_xml = _dump(signature)
    files[sig_xml_path] = sig_xml
    tbs = ses.build_tbs(seal, sm3(sig_xml), sig_xml_path, time=when)
    files[f"{sign_dir}/SignedValue.dat"] = ses.assemble_signature(tbs, signer_cert, sign(tbs)).der
    return _write(files)


# --- verification ----------------------------------------------------------------------------


@dataclass
class OfdReport:
    seals: list[SealReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.seals) and all(s.ok for s in self.seals) and not self.problems

    def to_json(self) -> dict[str, object]:
        return {
            "valid": self.ok,
            "seals": [s.to_json() for s in self.seals],
            "problems": list(self.problems),
        }


def verify_ofd(
    ofd: bytes, trust: Trust, *, now: datetime | None = None, tolerant: bool = False
) -> OfdReport:
    files = _read(ofd)
    report = OfdReport()
    _, _, _, sigs_path = _doc_paths(files)
    if sigs_path is None or sigs_path not in files:
        report.problems.append("the document carries no seal")
        return report
    sigs = _xml(files[sigs_path], "Signatures.xml")
    covered: set[str] = {sigs_path}
    sign_files: set[str] = set()
    for entry in sigs.findall(f"{_Q}Signature"):
        loc = _abs(entry.get("BaseLoc", ""), sigs_path)
        rep = SealReport(location=loc)
        report.seals.append(rep)
        sign_dir = loc.rsplit("/", 1)[0]
        sign_files.update(k for k in files if k.startswith(sign_dir + "/"))
        if entry.get("Type", "Seal") != "Seal":
            rep.add("ses_format", False, "a plain signature (Type=Sign), not a seal")
            continue
        try:
            refs_ok = _check_signature_xml(files, loc, rep, covered)
        except DecodeError as exc:
            rep.add("references", False, str(exc))
            continue
        if refs_ok is None:
            continue
        value_path, seal_path = refs_ok
        der = files.get(value_path)
        if der is None:
            rep.add("ses_format", False, f"{value_path} is missing")
            continue
        parsed = verify_ses_signature(
            der, rep, data_hash=sm3(files[loc]), trust=trust, now=now, tolerant=tolerant
        )
        if parsed is None:
            continue
        if parsed.property_info != loc:
            rep.add("property_info", False, f"propertyInfo {parsed.property_info!r} is not {loc}")
        if seal_path is not None:
            same = files.get(seal_path) == parsed.seal.der
            rep.add(
                "seal_file",
                same,
                "Seal.esl is the seal in the signature"
                if same
                else "Seal.esl differs from the seal inside SignedValue.dat",
            )
    extra = sorted(set(files) - covered - sign_files)
    if extra:
        report.problems.append(
            "files no seal protects (added after stamping): " + ", ".join(extra[:10])
        )
    return report


def _check_signature_xml(
    files: dict[str, bytes], loc: str, rep: SealReport, covered: set[str]
) -> tuple[str, str | None] | None:
    if loc not in files:
        rep.add("references", False, f"{loc} is missing")
        return None
    root = _xml(files[loc], "Signature.xml")
    info = root.find(f"{_Q}SignedInfo")
    value = root.find(f"{_Q}SignedValue")
    if info is None or value is None or not (value.text or "").strip():
        rep.add("references", False, "Signature.xml has no SignedInfo or SignedValue")
        return None
    method = (info.findtext(f"{_Q}SignatureMethod") or "").strip()
    if method != oids.SM2_WITH_SM3:
        rep.add("references", False, f"SignatureMethod {method!r}, expected SM2 with SM3")
        return None
    refs = info.find(f"{_Q}References")
    check = (refs.get("CheckMethod", "") if refs is not None else "").strip()
    if refs is None or check not in _SM3_NAMES:
        rep.add("references", False, f"References CheckMethod {check!r}, expected SM3")
        return None
    bad: list[str] = []
    count = 0
    for ref in refs.findall(f"{_Q}Reference"):
        path = _abs(ref.get("FileRef", ""), loc)
        count += 1
        covered.add(path)
        want = (ref.findtext(f"{_Q}CheckValue") or "").strip()
        data = files.get(path)
        try:
            expected = base64.b64decode(want, validate=True)
        except ValueError:
            expected = b""
        if data is None or sm3(data) != expected:
            bad.append(path)
    rep.add(
        "references",
        not bad and count > 0,
        f"{count} protected files unchanged"
        if not bad and count
        else (
            f"changed or missing after stamping: {', '.join(bad[:5])}" if bad else "no references"
        ),
    )
    seal_loc = info.findtext(f"{_Q}Seal/{_Q}BaseLoc")
    return _abs(value.text or "", loc), _abs(seal_loc, loc) if seal_loc else None


def sample_ofd(lines: Sequence[str]) -> bytes:
    """A one-page OFD document (A4) with ``lines`` of text, for demos and tests."""
    ofd = ET.Element(f"{_Q}OFD", {"Version": "1.0", "DocType": "OFD"})
    body = ET.SubElement(ofd, f"{_Q}DocBody")
    info = ET.SubElement(body, f"{_Q}DocInfo")
    ET.SubElement(info, f"{_Q}DocID").text = "6d737463727970742d73616d706c6531"
    ET.SubElement(info, f"{_Q}Creator").text = "mstcrypt"
    ET.SubElement(body, f"{_Q}DocRoot").text = "Doc_0/Document.xml"
    doc = ET.Element(f"{_Q}Document")
    common = ET.SubElement(doc, f"{_Q}CommonData")
    ET.SubElement(common, f"{_Q}MaxUnitID").text = str(10 + len(lines))
    area = ET.SubElement(common, f"{_Q}PageArea")
    ET.SubElement(area, f"{_Q}PhysicalBox").text = "0 0 210 297"
    ET.SubElement(common, f"{_Q}PublicRes").text = "PublicRes.xml"
    pages = ET.SubElement(doc, f"{_Q}Pages")
    ET.SubElement(pages, f"{_Q}Page", {"ID": "1", "BaseLoc": "Pages/Page_0/Content.xml"})
    res = ET.Element(f"{_Q}Res", {"BaseLoc": "Res"})
    fonts = ET.SubElement(res, f"{_Q}Fonts")
    ET.SubElement(fonts, f"{_Q}Font", {"ID": "2", "FontName": "SimSun", "FamilyName": "SimSun"})
    page = ET.Element(f"{_Q}Page")
    content = ET.SubElement(page, f"{_Q}Content")
    layer = ET.SubElement(content, f"{_Q}Layer", {"ID": "3"})
    for i, line in enumerate(lines):
        y = 30 + 8 * i
        obj = ET.SubElement(
            layer,
            f"{_Q}TextObject",
            {"ID": str(10 + i), "Boundary": f"20 {y} 170 8", "Font": "2", "Size": "4.5"},
        )
        ET.SubElement(obj, f"{_Q}TextCode", {"X": "0", "Y": "5"}).text = line
    files = {
        "/OFD.xml": _dump(ofd),
        "/Doc_0/Document.xml": _dump(doc),
        "/Doc_0/PublicRes.xml": _dump(res),
        "/Doc_0/Pages/Page_0/Content.xml": _dump(page),
    }
    return _write(files)
