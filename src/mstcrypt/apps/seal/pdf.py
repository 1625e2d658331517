"""Electronic seals on PDF documents (pypdf for the file structure, Pillow to decode the
seal picture).

Each stamping is one **incremental update** (earlier bytes, and so earlier seals, stay
untouched) that adds a signature field with a visible widget showing the seal picture,
at a position or on a keyword. The signature dictionary is::

    /Type /Sig /Filter /MSTCrypt.SES /SubFilter /GBT38540.SES_Signature
    /ByteRange [0 a b c] /Contents <DER SES_Signature, zero padded> /M (D:...) /Name (...)

``/Contents`` holds the GB/T 38540 SES_Signature itself, as Chinese seal products do
(FACTS.md §15), whose TBS_Sign.dataHash is **SM3 over the two byte ranges** and whose
propertyInfo is ``pdf:<field name>``. Why not a GM/T 0010 SignedData: the SES structure
carries the seal (picture, maker signature, authorised stampers) that a seal verifier
must check, and a CMS wrapper would only re-sign the same digest; a CMS-in-PDF profile
can be added beside it once the GM/T 0010 module exists. Readers that do not know the
filter show an unknown signature; pypdf, pyHanko and qpdf parse the dictionary and the
byte range as usual.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mstcrypt.apps.seal.errors import SealVerificationError
from mstcrypt.apps.seal.verify import SealReport, Trust, verify_ses_signature
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import DecodeError, PolicyError
from mstcrypt.formats import ses

__all__ = [
    "FILTER",
    "SUBFILTER",
    "PdfReport",
    "find_keyword",
    "sample_pdf",
    "stamp_pdf",
    "verify_pdf",
]

FILTER = "/MSTCrypt.SES"
SUBFILTER = "/GBT38540.SES_Signature"
_PLACEHOLDER_RANGE = 9_999_999_999  # ten digits: files up to ~9 GB
_MM = 72 / 25.4


def _pypdf():  # imported lazily: the seal server does not need it
    try:
        import pypdf
    except ImportError:  # pragma: no cover - a dependency of mstcrypt
        raise PolicyError("PDF stamping needs pypdf (pip install pypdf)") from None
    return pypdf


def _reader(pdf: bytes):
    pypdf = _pypdf()
    try:
        reader = pypdf.PdfReader(io.BytesIO(pdf), strict=False)
        _ = len(reader.pages)
    except Exception as exc:  # pypdf raises many types on malformed input
        raise DecodeError(f"not a readable PDF ({type(exc).__name__})") from None
    if reader.is_encrypted:
        raise PolicyError("encrypted PDFs are not stamped (decrypt first)")
    return reader


# --- the seal picture as an image XObject ------------------------------------------------


def _image_xobject(picture: bytes, picture_type: str):
    """(image stream, soft mask stream or None) for the seal picture."""
    from PIL import Image
    from pypdf.generic import NameObject, NumberObject, StreamObject

    if picture_type.lower() not in ("png", "jpg", "jpeg", "gif", "bmp"):
        raise PolicyError(f"seal picture type {picture_type!r} cannot be drawn on a PDF page")
    try:
        Image.open(io.BytesIO(picture)).verify()  # chunk CRCs and structure
        img = Image.open(io.BytesIO(picture))
        img.load()
    except Exception:
        raise DecodeError("the seal picture is not a readable image") from None
    if img.width * img.height > 16_000_000:
        raise PolicyError("seal picture larger than 16 megapixels")
    rgba = img.convert("RGBA")
    rgb = rgba.convert("RGB")
    alpha = rgba.getchannel("A")

    def stream(data: bytes, colorspace: str) -> StreamObject:
        s = StreamObject()
        s._data = zlib.compress(data, 9)
        s.update(
            {
                NameObject("/Type"): NameObject("/XObject"),
                NameObject("/Subtype"): NameObject("/Image"),
                NameObject("/Width"): NumberObject(img.width),
                NameObject("/Height"): NumberObject(img.height),
                NameObject("/ColorSpace"): NameObject(colorspace),
                NameObject("/BitsPerComponent"): NumberObject(8),
                NameObject("/Filter"): NameObject("/FlateDecode"),
            }
        )
        return s

    image = stream(rgb.tobytes(), "/DeviceRGB")
    mask = None
    if alpha.getextrema() != (255, 255):
        mask = stream(alpha.tobytes(), "/DeviceGray")
    return image, mask


# --- placement ----------------------------------------------------------------------------


def find_keyword(pdf: bytes, keyword: str) -> tuple[int, float, float] | None:
    """(page index, x, y) of the middle of the first occurrence of ``keyword`` in the
    page text, in default user space (estimated from the font size), or None."""
    reader = _reader(pdf)
    for index, page in enumerate(reader.pages):
        hits: list[tuple[float, float]] = []

        def visit(
            text: str,
            cm: list[float],
            tm: list[float],
            _f: object,
            size: object,
            hits: list[tuple[float, float]] = hits,
        ) -> None:
            if keyword in text and not hits:
                pt = float(size) * abs(cm[0] or 1) if isinstance(size, int | float) else 12.0
                before = text.index(keyword)
                # text origin, then the middle of the keyword (glyphs ~0.5 em wide)
                x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4] + (before + len(keyword) / 2) * pt * 0.5
                y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5] + pt * 0.3
                hits.append((x, y))

        page.extract_text(visitor_text=visit)
        if hits:
            return index, hits[0][0], hits[0][1]
    return None


@dataclass(frozen=True)
class _Placement:
    page: int
    rect: tuple[float, float, float, float]  # llx, lly, urx, ury


def _placement(
    reader,
    seal: ses.Seal,
    page: int | None,
    position: tuple[float, float] | None,
    keyword: str | None,
    pdf: bytes,
) -> _Placement:
    w, h = seal.info.width * _MM, seal.info.height * _MM
    if keyword is not None:
        hit = find_keyword(pdf, keyword)
        if hit is None:
            raise PolicyError(f"keyword {keyword!r} not found in the document")
        index, x, y = hit
        return _Placement(index, (x - w / 2, y - h / 2, x + w / 2, y + h / 2))
    index = len(reader.pages) - 1 if page is None else page
    if not 0 <= index < len(reader.pages):
        raise PolicyError(f"page {index + 1} does not exist (the document has {len(reader.pages)})")
    box = reader.pages[index].mediabox
    if position is None:  # bottom right, 20 mm from the edges
        x = float(box.right) - 20 * _MM - w
        y = float(box.bottom) + 20 * _MM
    else:
        x, y = position
    return _Placement(index, (x, y, x + w, y + h))


# --- the incremental update --------------------------------------------------------------


def _write_update(writer, reader, original: bytes) -> bytes:
    """``original`` followed by one update section: the new and changed objects of
    ``writer`` and a cross-reference section of the same kind as the document's last
    one (a table, or a stream that lists itself), with /Prev to it."""
    from pypdf.generic import (
        ArrayObject,
        NameObject,
        NumberObject,
        StreamObject,
    )

    changed = [
        (i + 1, obj)
        for i, obj in enumerate(writer._objects)
        if obj is not None
        and (i >= len(writer._original_hash) or obj.hash_bin() != writer._original_hash[i])
    ]
    out = io.BytesIO()
    out.write(original)
    if not original.endswith((b"\n", b"\r")):
        out.write(b"\n")
    positions: dict[int, int] = {}
    for idnum, obj in changed:
        positions[idnum] = out.tell()
        out.write(f"{idnum} 0 obj\n".encode())
        obj.write_to_stream(out)
        out.write(b"\nendobj\n")
    size = max(len(writer._objects) + 1, int(reader.trailer.get("/Size", 0)))
    prev = reader._startxref
    root = writer._root_object.indirect_reference
    xref_stream = reader.trailer.get("/Type") == "/XRef" or b"/XRef" in original[prev : prev + 4096]
    xref_at = out.tell()
    if xref_stream:
        xr_id = size
        size += 1
        positions[xr_id] = xref_at
    ids = sorted(positions)
    blocks: list[list[int]] = []
    for idnum in ids:
        if blocks and blocks[-1][0] + blocks[-1][1] == idnum:
            blocks[-1][1] += 1
        else:
            blocks.append([idnum, 1])
    trailer: dict = {
        NameObject("/Size"): NumberObject(size),
        NameObject("/Root"): root,
        NameObject("/Prev"): NumberObject(prev),
    }
    for key in ("/Info", "/ID"):
        if key in reader.trailer:
            trailer[NameObject(key)] = reader.trailer.raw_get(key)
    if xref_stream:
        xr = StreamObject()
        xr.update(trailer)
        xr.update(
            {
                NameObject("/Type"): NameObject("/XRef"),
                NameObject("/Index"): ArrayObject([NumberObject(v) for b in blocks for v in b]),
                NameObject("/W"): ArrayObject([NumberObject(1), NumberObject(4), NumberObject(2)]),
            }
        )
        xr._data = b"".join(b"\x01" + positions[i].to_bytes(4, "big") + b"\x00\x00" for i in ids)
        out.write(f"{xr_id} 0 obj\n".encode())
        xr.write_to_stream(out)
        out.write(b"\nendobj\n")
    else:
        out.write(b"xref\n")
        for start, count in blocks:
            out.write(f"{start} {count}\n".encode())
            for i in range(start, start + count):
                out.write(f"{positions[i]:010d} 00000 n\r\n".encode())
        out.write(b"trailer\n")
        from pypdf.generic import DictionaryObject

        DictionaryObject(trailer).write_to_stream(out)
        out.write(b"\n")
    out.write(f"startxref\n{xref_at}\n%%EOF\n".encode())
    return out.getvalue()


# --- stamping -------------------------------------------------------------------------------


def _pdf_date(when: datetime) -> str:
    return when.astimezone(UTC).strftime("D:%Y%m%d%H%M%SZ")


def _field_names(reader) -> set[str]:
    names = set()
    root = reader.trailer["/Root"]
    form = root.get("/AcroForm")
    if form is not None:
        for f in form.get_object().get("/Fields", []):
            t = f.get_object().get("/T")
            if t is not None:
                names.add(str(t))
    return names


def stamp_pdf(
    pdf: bytes,
    *,
    seal: ses.Seal,
    signer_cert: bytes,
    sign: Callable[[bytes], bytes],
    page: int | None = None,
    position: tuple[float, float] | None = None,
    keyword: str | None = None,
    field_name: str | None = None,
    reason: str | None = None,
    time: datetime | None = None,
) -> bytes:
    """Stamp ``pdf`` with ``seal``: an incremental update with a visible seal and a
    signature field whose /Contents is the SES_Signature. ``sign(tbs_der) -> DER`` makes
    the stamper's signature (a two-party one through the seal server, or a local key).
    ``page`` (0-based, default the last) and ``position`` (lower-left corner in points,
    default bottom right) or ``keyword`` (the seal is centred on its first occurrence)
    place the seal. Returns the new document."""
    pypdf = _pypdf()
    from pypdf.generic import (
        ArrayObject,
        ByteStringObject,
        DictionaryObject,
        FloatObject,
        NameObject,
        NumberObject,
        StreamObject,
        TextStringObject,
    )

    if not isinstance(pdf, bytes | bytearray) or not bytes(pdf).startswith(b"%PDF-"):
        raise DecodeError("not a PDF (no %PDF- header)")
    pdf = bytes(pdf)
    reader = _reader(pdf)
    when = (time or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    existing = _field_names(reader)
    if field_name is None:
        n = 1
        while f"Seal{n}" in existing:
            n += 1
        field_name = f"Seal{n}"
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", field_name) or field_name in existing:
        raise PolicyError("field name: 1-64 of A-Z a-z 0-9 _ . - and not already used")
    place = _placement(reader, seal, page, position, keyword, pdf)
    property_info = f"pdf:{field_name}"

    # the size of the SES_Signature, known before the digest (fixed-size fields)
    probe = ses.assemble_signature(
        ses.build_tbs(seal, b"\x00" * 32, property_info, time=when), signer_cert, b"\x30" * 72
    )
    contents_size = len(probe.der) + 64

    writer = pypdf.PdfWriter(reader, incremental=True)
    target = writer.pages[place.page]
    llx, lly, urx, ury = place.rect
    w, h = urx - llx, ury - lly
    image, mask = _image_xobject(seal.info.picture, seal.info.picture_type)
    if mask is not None:
        image[NameObject("/SMask")] = writer._add_object(mask)
    image_ref = writer._add_object(image)
    ap = StreamObject()
    ap._data = f"q {w:.4f} 0 0 {h:.4f} 0 0 cm /SealImg Do Q".encode()
    ap.update(
        {
            NameObject("/Type"): NameObject("/XObject"),
            NameObject("/Subtype"): NameObject("/Form"),
            NameObject("/BBox"): ArrayObject(
                [FloatObject(0), FloatObject(0), FloatObject(w), FloatObject(h)]
            ),
            NameObject("/Resources"): DictionaryObject(
                {NameObject("/XObject"): DictionaryObject({NameObject("/SealImg"): image_ref})}
            ),
        }
    )
    ap_ref = writer._add_object(ap)
    sig = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Sig"),
            NameObject("/Filter"): NameObject(FILTER),
            NameObject("/SubFilter"): NameObject(SUBFILTER),
            NameObject("/ByteRange"): ArrayObject(
                [NumberObject(0)] + [NumberObject(_PLACEHOLDER_RANGE)] * 3
            ),
            NameObject("/Contents"): ByteStringObject(b"\x00" * contents_size),
            NameObject("/M"): TextStringObject(_pdf_date(when)),
            NameObject("/Name"): TextStringObject(seal.info.name),
        }
    )
    if reason:
        sig[NameObject("/Reason")] = TextStringObject(reason)
    sig_ref = writer._add_object(sig)
    widget = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Annot"),
            NameObject("/Subtype"): NameObject("/Widget"),
            NameObject("/FT"): NameObject("/Sig"),
            NameObject("/T"): TextStringObject(field_name),
            NameObject("/V"): sig_ref,
            NameObject("/F"): NumberObject(4 | 128),  # print, locked
            NameObject("/Rect"): ArrayObject([FloatObject(v) for v in place.rect]),
            NameObject("/P"): target.indirect_reference,
            NameObject("/AP"): DictionaryObject({NameObject("/N"): ap_ref}),
        }
    )
    widget_ref = writer._add_object(widget)
    annots = target.get("/Annots")
    if annots is None:
        target[NameObject("/Annots")] = ArrayObject([widget_ref])
    else:
        annots.get_object().append(widget_ref)
    root = writer._root_object
    form = root.get("/AcroForm")
    if form is None:
        form = DictionaryObject()
        root[NameObject("/AcroForm")] = writer._add_object(form)
    form = form.get_object()
    fields = form.get("/Fields")
    if fields is None:
        form[NameObject("/Fields")] = ArrayObject([widget_ref])
    else:
        fields.get_object().append(widget_ref)
    form[NameObject("/SigFlags")] = NumberObject(3)  # signatures exist, append only

    data = bytearray(_write_update(writer, reader, pdf))

    # locate the placeholders in the appended update and fill in the byte range
    hole = b"<" + b"00" * contents_size + b">"
    start = data.rfind(hole)
    br_text = f"[ 0 {_PLACEHOLDER_RANGE} {_PLACEHOLDER_RANGE} {_PLACEHOLDER_RANGE} ]".encode()
    br_pos = data.rfind(br_text)
    if start < len(pdf) or br_pos < len(pdf):
        raise PolicyError("internal: signature placeholders not found")  # pragma: no cover
    end = start + len(hole)
    ranges = (0, start, end, len(data) - end)
    filled = f"[ {ranges[0]} {ranges[1]} {ranges[2]} {ranges[3]} ]".encode()
    data[br_pos : br_pos + len(br_text)] = filled.ljust(len(br_text), b" ")
    digest = sm3(bytes(data[:start]) + bytes(data[end:]))
    tbs = ses.build_tbs(seal, digest, property_info, time=when)
    signature = ses.assemble_signature(tbs, signer_cert, sign(tbs))
    if len(signature.der) > contents_size:
        raise PolicyError("internal: the SES_Signature outgrew its placeholder")  # pragma: no cover
    data[start + 1 : end - 1] = signature.der.hex().upper().encode().ljust(2 * contents_size, b"0")
    return bytes(data)


# --- verification ----------------------------------------------------------------------


@dataclass
class PdfReport:
    """Every seal on a PDF document, and what happened after the last one."""

    seals: list[SealReport] = field(default_factory=list)
    revisions_after_last_seal: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.seals) and all(s.ok for s in self.seals) and not self.problems

    def to_json(self) -> dict[str, object]:
        return {
            "valid": self.ok,
            "seals": [s.to_json() for s in self.seals],
            "revisions_after_last_seal": self.revisions_after_last_seal,
            "problems": list(self.problems),
        }


def _sig_fields(reader) -> list[tuple[str, object]]:
    out = []
    form = reader.trailer["/Root"].get("/AcroForm")
    if form is None:
        return out
    stack = list(form.get_object().get("/Fields", []))
    seen = 0
    while stack and seen < 10_000:
        seen += 1
        f = stack.pop(0).get_object()
        kids = f.get("/Kids")
        if kids is not None:
            stack.extend(kids)
        if f.get("/FT") == "/Sig" and f.get("/V") is not None:
            out.append((str(f.get("/T", "?")), f["/V"].get_object()))
    return out


def _page_fingerprint(reader) -> list[bytes]:
    """What the pages show: content streams, boxes and resources, per page."""
    out = []
    for page in reader.pages:
        contents = page.get_contents()
        body = contents.get_data() if contents is not None else b""
        out.append(sm3(body + repr(list(page.mediabox)).encode()))
    return out


def _byte_range(pdf: bytes, sig) -> tuple[bytes, bytes]:
    """(covered bytes, /Contents bytes) after checking that the byte range is exactly
    the file minus the /Contents hex string of this dictionary."""
    br = sig.get("/ByteRange")
    if br is None or len(br) != 4:
        raise SealVerificationError("byte_range", "missing or malformed /ByteRange")
    try:
        a, b, c, d = (int(x) for x in br)
    except (TypeError, ValueError):
        raise SealVerificationError("byte_range", "non-integer /ByteRange") from None
    if a != 0 or b <= 0 or c <= b or d < 0 or c + d > len(pdf):
        raise SealVerificationError("byte_range", f"/ByteRange [{a} {b} {c} {d}] is not valid")
    if pdf[b : b + 1] != b"<" or pdf[c - 1 : c] != b">":
        raise SealVerificationError("byte_range", "the byte range hole is not the /Contents string")
    hexed = pdf[b + 1 : c - 1]
    if not re.fullmatch(rb"[0-9A-Fa-f]*", hexed) or len(hexed) % 2:
        raise SealVerificationError("byte_range", "the /Contents hole is not a hex string")
    contents = bytes.fromhex(hexed.decode())
    declared = sig.get("/Contents")
    if declared is None or bytes(declared) != contents:
        raise SealVerificationError("byte_range", "/Contents is not where /ByteRange says")
    return pdf[:b] + pdf[c : c + d], contents


def _strip_padding(contents: bytes) -> bytes:
    """The DER value at the start of /Contents; the rest must be zero padding."""
    if len(contents) < 2 or contents[0] != 0x30:
        raise DecodeError("/Contents does not start with a DER SEQUENCE")
    first = contents[1]
    if first < 0x80:
        length, hdr = first, 2
    else:
        n = first & 0x7F
        if not 1 <= n <= 4 or len(contents) < 2 + n:
            raise DecodeError("/Contents has a bad DER length")
        length, hdr = int.from_bytes(contents[2 : 2 + n], "big"), 2 + n
    end = hdr + length
    if end > len(contents) or any(contents[end:]):
        raise DecodeError("/Contents has non-zero bytes after the SES_Signature")
    return contents[:end]


def verify_pdf(
    pdf: bytes,
    trust: Trust,
    *,
    now: datetime | None = None,
    tolerant: bool = False,
) -> PdfReport:
    """Check every seal on ``pdf`` (SES checks, byte range, SM3 digest of the range) and
    whether anything after a seal changed what the pages show."""
    pdf = bytes(pdf)
    report = PdfReport()
    reader = _reader(pdf)
    final = _page_fingerprint(reader)
    last_end = 0
    fields = _sig_fields(reader)
    if not fields:
        report.problems.append("the document carries no seal")
    for name, sig in fields:
        rep = SealReport(location=name)
        report.seals.append(rep)
        if sig.get("/Filter") != FILTER or sig.get("/SubFilter") != SUBFILTER:
            rep.add(
                "ses_format",
                False,
                f"signature field of another kind ({sig.get('/Filter')} {sig.get('/SubFilter')})",
            )
            continue
        try:
            covered, contents = _byte_range(pdf, sig)
            der = _strip_padding(contents)
        except SealVerificationError as exc:
            rep.add(exc.code, False, str(exc))
            continue
        except DecodeError as exc:
            rep.add("byte_range", False, str(exc))
            continue
        br = [int(x) for x in sig["/ByteRange"]]
        end = br[2] + br[3]
        last_end = max(last_end, end)
        rep.add("byte_range", True, f"signed range covers bytes 0..{end} but the signature")
        parsed = verify_ses_signature(
            der, rep, data_hash=sm3(covered), trust=trust, now=now, tolerant=tolerant
        )
        if parsed is not None and parsed.property_info != f"pdf:{name}":
            rep.add(
                "property_info", False, f"propertyInfo {parsed.property_info!r} is not this field"
            )
        # changes after this seal: compare what the pages show then and now
        if end < len(pdf):
            try:
                then = _page_fingerprint(_reader(pdf[:end]))
            except (DecodeError, PolicyError):
                rep.add("changes_after", False, "the stamped revision cannot be read back")
                continue
            if then != final:
                pairs = zip(then, final, strict=False)
                changed = [i + 1 for i, (x, y) in enumerate(pairs) if x != y]
                more = "" if len(then) == len(final) else f"; pages {len(then)} -> {len(final)}"
                rep.add(
                    "changes_after",
                    False,
                    f"page content changed after this seal (pages {changed}{more})",
                )
            else:
                rep.add(
                    "changes_after",
                    True,
                    "later updates add annotations only; page content unchanged",
                )
    report.revisions_after_last_seal = bool(fields) and last_end < len(pdf)
    return report


def sample_pdf(lines: Sequence[str], *, pages: int = 1) -> bytes:
    """A small text PDF (A4, Helvetica) to stamp in demos and tests."""
    pypdf = _pypdf()
    from pypdf.generic import DictionaryObject, NameObject, StreamObject

    writer = pypdf.PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    font_ref = writer._add_object(font)
    for n in range(pages):
        page = writer.add_blank_page(width=595, height=842)
        ops = ["BT", "/F1 14 Tf", "72 770 Td", "18 TL"]
        for line in [*lines, f"Page {n + 1} of {pages}"]:
            text = line.encode("latin-1", "replace").decode("latin-1")
            text = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({text}) Tj T*")
        ops.append("ET")
        content = StreamObject()
        content._data = "\n".join(ops).encode("latin-1")
        page[NameObject("/Contents")] = writer._add_object(content)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font_ref})}
        )
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
